"""Train, export and card every shipped model (assets/models/), and write the sample clips (assets/samples/).

    nohup .venv/bin/python bench/shipped_models.py > bench/results/shipped_models.log 2>&1 &
    .venv/bin/python bench/shipped_models.py --skip-train    # export, evaluate and card the existing runs

The five `synthmotion-temporal-<scheme>` models are the seed-0 temporal runs of bench/table1.py (its RECIPE and
run folders: running both scripts trains each once); `synthmotion-distractor-divided_space_time` follows
DISTRACTOR below, starting from the temporal divided model. Each model is stored as fp16 safetensors (half the
bytes; `load_model` casts them into the fp32 model), evaluated on fresh held-out clips (SynthMotion's `test`
split, seed EVAL_SEED, which neither training nor validation draws from) and given a README.md model card
whose YAML front matter `timesformer.shipped.card()` reads. The samples are one fresh clip per temporal class
(`test` split, seed 2026) rendered at the models' 32² and enlarged 4× (nearest) to 128², so that each 32×32
block of a sample is one 8×8 patch of the model. Summary: bench/results/shipped_models.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from table1 import RECIPE, RUNS, command, hardware, metrics, train

from timesformer import load_model, save_model
from timesformer.cli import HelpFormatter
from timesformer.config import ATTENTION_TYPES
from timesformer.evaluate import run as evaluate
from timesformer.shipped import DEFAULT_NAME, MODELS, SAMPLES, TEMPORAL

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
EVAL_CLIPS, EVAL_SEED = 2048, 12345  # `tslab evaluate`'s default seed: its command line reproduces the card
DISTRACTOR_NAME = "synthmotion-distractor-divided_space_time"
# A curriculum: the temporal divided model already reads one object's visiting order; on two discs it learns to
# keep to the red one (from scratch the task sits at chance for thousands of steps, docs/results.md). Three of
# the eight frames settle the order, and trained on whole clips the model read only those; with --frame-drop it
# has to use whichever frames it gets, so there is evidence to explain in every frame (docs/analysis.md).
DISTRACTOR = ["--data", "synthmotion-distractor", "--init", f"{TEMPORAL}-divided_space_time", "--seed", "0",
              "--img-size", "32", "--num-frames", "8", "--train-clips", "4096", "--val-clips", "512", "--epochs", "2",
              "--batch-size", "16", "--lr", "1e-3", "--frame-drop", "0.5", "--threads", "1", "--no-progress"]


def specs() -> dict[str, dict]:
    """{name: {task, args, run}} of every shipped model, in training order (the distractor starts from one)."""
    out = {f"{TEMPORAL}-{s}": {"task": TEMPORAL, "run": RUNS / f"temporal-{s}-s0",
                               "args": ["--data", TEMPORAL, "--attention", s, "--seed", "0", *RECIPE]}
           for s in ATTENTION_TYPES}
    out[DISTRACTOR_NAME] = {"task": "synthmotion-distractor", "args": DISTRACTOR,
                            "run": ROOT / "runs" / "shipped" / DISTRACTOR_NAME}
    return out


def recorded_command(run: Path) -> str | None:
    """The `tslab train` command a run folder was trained with (its bench.json), or None."""
    info = run / "bench.json"
    return json.loads(info.read_text())["command"] if info.is_file() else None


def finished(run: Path, args: list[str]) -> bool:
    """A run folder of this recipe (`args`) whose training ended (its last checkpoint is an end-of-epoch one of
    the final step)."""
    cfg = run / "train_config.yaml"
    if recorded_command(run) != command(args, run) or not cfg.is_file() or not (run / "checkpoint-last").exists():
        return False
    import yaml

    total = yaml.safe_load(cfg.read_text())["total_steps"]
    return any(r.get("split") == "val" and r["step"] >= total
               for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion p measured on n trials."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def export(name: str, spec: dict) -> dict:
    """assets/models/NAME/ from the run's last checkpoint (fp16), evaluated as users will load it; the card."""
    run, dest = spec["run"], MODELS / name
    model = load_model(run / "checkpoint-last")
    shutil.rmtree(dest, ignore_errors=True)
    save_model(model.half(), dest)  # fp16 weights; load_model casts them into the fp32 model
    loaded = load_model(dest)
    assert next(loaded.parameters()).dtype.is_floating_point and next(loaded.parameters()).dtype.itemsize == 4
    t0 = time.time()
    ev = evaluate(name, spec["task"], num_clips=EVAL_CLIPS, seed=EVAL_SEED)["clip"]
    info = {**json.loads((run / "bench.json").read_text()), **metrics(run)}
    acc, drop = ev["acc1"], _flag(spec["args"], "--frame-drop")
    meta = {
        "name": name, "task": spec["task"], "attention_type": loaded.config.attention_type,
        "parameters": sum(p.numel() for p in loaded.parameters()), "frames": loaded.config.num_frames,
        "img_size": loaded.config.img_size, "patch_size": loaded.config.patch_size, "classes": loaded.class_names,
        "held_out": {"accuracy": round(acc, 4), "interval95": [round(x, 4) for x in wilson(acc, ev["clips"])],
                     "loss": round(ev["loss"], 4), "clips": ev["clips"], "split": "test", "seed": EVAL_SEED,
                     "command": f"tslab evaluate {name} {spec['task']} --num-clips {EVAL_CLIPS} --seed {EVAL_SEED}"},
        "validation_accuracy": round(info["val_acc1"], 4),
        "validation_curve": [[s, round(a, 4)] for s, a in info["val_curve"]],
        "train": {"command": info["command"], "init": _flag(spec["args"], "--init"), "steps": info["steps"],
                  "wall_s": info["wall_s"],
                  "train_wall_s": info["train_wall_s"], "clips_per_s": info["train_clips_per_s"],
                  "hardware": info["hardware"], **({"frame_drop": float(drop)} if drop else {})},
        "weights": {"format": "safetensors", "dtype": "float16", "loaded_as": "float32",
                    "bytes": (dest / "model.safetensors").stat().st_size},
    }
    (dest / "README.md").write_text(card_text(meta))
    return {**meta, "eval_s": round(time.time() - t0, 1), "eval_hardware": hardware()}


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def card_text(meta: dict) -> str:
    """The README.md of a shipped model: the front matter, then the same facts for people."""
    import yaml

    h, t = meta["held_out"], meta["train"]
    scheme, task = meta["attention_type"], meta["task"].replace("synthmotion-", "")
    what = {"temporal": "the order in which one object visits the same 8 positions (4 classes: " +
                        ", ".join(meta["classes"]) + "); every class is a permutation of the same frames, so a "
                        "model that ignores frame order is at 25% by construction",
            "distractor": "the visiting order of the red disc (4 classes, as in `temporal`) while a blue disc in the "
                          "other half of the frame follows a random order of its own"}[task]
    chance = (" This is chance: `space_only` averages per-frame features, so it cannot see the order that "
              "carries the class — the paper's point in miniature." if scheme == "space_only" else "")
    lo, hi = h["interval95"]
    intro = (f"A tiny TimeSformer ({meta['parameters'] / 1e6:.2f}M parameters, `{scheme}` attention, 4 blocks of "
             f"width 128 with 4 heads, {meta['frames']} frames of {meta['img_size']}², patch {meta['patch_size']}: a "
             f"4×4 grid) trained on SynthMotion `{task}`: {what}. "
             + (f"Training started from the shipped `{t['init']}` model (a curriculum: one object first, then two). "
                if t.get("init") else "Trained from scratch. ")
             + (f"Each training frame was replaced, with probability {t['frame_drop']}, by the clip's median over "
                "time (`--frame-drop`: the discs are gone from it), so that its decision cannot rest on a few fixed "
                "frames. " if t.get("frame_drop") else "")
             + "It shows what its attention scheme does; it knows SynthMotion only, not real videos.")
    held = (f"Held out: **{h['accuracy']:.1%}** (95% interval {lo:.1%}–{hi:.1%}) on {h['clips']:,} fresh clips of "
            f"the `test` split, seed {h['seed']}, which neither training nor validation draws from: `{h['command']}` "
            f"(clip accuracy: the middle clip, centre crop).{chance}")
    val = ("Validation during training (512 clips), after each epoch: "
           + " → ".join(f"{a:.1%}" for _, a in meta["validation_curve"]) + ".")
    trained = (f"{t['steps']:,} optimizer steps in {t['train_wall_s']:.0f} s of training ({t['wall_s']:.0f} s for "
               f"the whole command, {t['clips_per_s']:.0f} clips/s) on {t['hardware']}, a CPU shared with other "
               "jobs. CPU time is what kept these models at 32²: a GPU trains larger ones in minutes. SynthMotion "
               "is generated on the fly (no download); docs/training.md describes it and docs/results.md gives "
               "the recipe's reasons and the other shipped models.")
    files = (f"`model.safetensors` ({meta['weights']['bytes'] / 2**20:.1f} MiB of fp16 weights; `load_model` casts "
             f"them into the fp32 model) and `config.json`. Open it with `load_model(\"{meta['name']}\")` (by "
             "name) or by this folder's path; the app lists it under *Shipped model*. Written by "
             "`python bench/shipped_models.py`.")
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=10_000).strip()  # one line each
    return (f"---\n{front}\n---\n# {meta['name']}\n\n{intro}\n\n## Accuracy\n- {held}\n- {val}\n\n"
            f"## Training\n```\n{t['command']}\n```\n{trained}\n\n## Files\n{files}\n")


def write_samples(model_name: str = DEFAULT_NAME) -> dict:
    """assets/samples/<class>.mp4: one fresh temporal clip per class, and what `model_name` predicts for each."""
    from timesformer.synthmotion import SynthMotion
    from timesformer.video import read_clip, write_video

    model = load_model(model_name)
    size = model.config.img_size
    shutil.rmtree(SAMPLES, ignore_errors=True)
    SAMPLES.mkdir(parents=True)
    ds = SynthMotion("temporal", "test", 64, num_frames=8, size=size, seed=2026)
    written = {}
    for i in range(len(ds)):
        name = ds.classes[ds.label(i)]
        if name in written:
            continue
        frames, _ = ds.frames(i)
        frames = frames.repeat(128 // size, axis=1).repeat(128 // size, axis=2)  # (T, 128, 128, 3)
        path = SAMPLES / f"{name.replace(' ', '_')}.mp4"
        write_video(path, frames, fps=4, crf=23)
        video, _ = read_clip(path, num_frames=8, size=size)
        pred = model.class_names[model(video).argmax(1).item()]
        written[name] = {"file": path.name, "predicted": pred, "bytes": path.stat().st_size}
        if len(written) == len(ds.classes):
            break
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="tslab bench shipped_models", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--skip-train", action="store_true", help="export, evaluate and card the runs already there")
    p.add_argument("--only", nargs="*", help="these models only (names)")
    a = p.parse_args(argv)
    todo = {n: s for n, s in specs().items() if not a.only or n in a.only}
    summary_path = RESULTS / "shipped_models.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"models": {}}
    for name, spec in todo.items():
        if not finished(spec["run"], spec["args"]):
            if a.skip_train:
                raise SystemExit(f"{name}: no finished run of this recipe in {spec['run']}; run without --skip-train")
            run = spec["run"]
            if recorded_command(run) not in (None, command(spec["args"], run)):  # kept, not trained over
                old = run.with_name(run.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                run.rename(old)
                print(f"{run}: trained with another recipe, moved to {old}", flush=True)
            r = train(spec["args"], run)
            if "error" in r:
                raise SystemExit(f"{name}: training failed: {r['error']}")
        summary["models"][name] = export(name, spec)
        print(json.dumps(summary["models"][name]["held_out"]), flush=True)
        summary_path.write_text(json.dumps(summary, indent=2))
    if (MODELS / DEFAULT_NAME).is_dir():
        summary["samples"] = write_samples()
    summary["total_bytes"] = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    summary_path.write_text(json.dumps(summary, indent=2))
    print(json.dumps({"samples": summary.get("samples"), "total_bytes": summary["total_bytes"]}, indent=2))


if __name__ == "__main__":
    main()
