"""The explanation benchmark: every explanation method on every shipped model, scored against ground truth.

    tslab bench explain [--models NAME_OR_PATH ...] [--clips 32] [--methods gae lrp ...]
    tslab bench explain --models CHECKPOINT --data DATA [--split val]   # your model on your clips
    tslab bench explain --report     # rewrite bench/results/explain.md from explain.json

For each model, on held-out SynthMotion clips of its task (`test` split, a seed never trained on): pointing
(in all frames, and in the frames the model uses: those whose removal into the temporal median costs at least
a tenth of the largest frame's logit drop; each ± 1.96 standard errors over clips), path pointing, mass and
rank accuracy on the object that carries the class, the share against the distractor
(distractor task), deletion and insertion AUC (patches removed into the clip's temporal mean), the
model-randomisation sanity check, and the cost; methods that take a baseline are scored with the constant one
and with each video baseline; a random map is the row to beat. Also the temporal evidence: the target's
probability with the frames reversed, shuffled and frozen, the share of LRP relevance through each kind of
attention step, layer by layer, the vacancy test (is where the object has just been evidence too?) and the
logit drop when each frame is removed (which frames the decision rests on).
Writes bench/results/explain.json (read by the app) and bench/results/explain.md.

With `--data` (what `tslab evaluate` takes: a folder of `<split>/<class>/<clip>`, a CSV list), the methods are
scored on the first `--clips` readable clips of that data, whose evidence has no known place: faithfulness
(deletion and insertion AUC), the sanity check, the cost, which frames the decision rests on and the evidence
about time, into `explain-<data>.json` and `.md` in the working folder unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from analysis.attribution import timed_forward
from analysis.benchmark import all_rows, benchmark, clips, estimated_seconds
from analysis.explanations import EXPLANATIONS
from analysis.sanity import PASS_BELOW
from analysis.temporal import temporal_evidence
from timesformer import CheckpointError, load_model
from timesformer.cli import HelpFormatter, at_least
from timesformer.data import open_split, synthmotion_task
from timesformer.distributed import device_name, resolve_device
from timesformer.shipped import models
from timesformer.synthmotion import TASKS, SynthMotion
from timesformer.video import transform_frames

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [("pointing", "pointing ↑"), ("used_pointing", "pointing, used frames ↑"),
           ("path_pointing", "path pointing ↑"), ("mass", "mass ↑"),
           ("rank_accuracy", "rank acc. ↑"), ("signal_share", "signal share ↑"), ("auc_deletion", "deletion AUC ↓"),
           ("auc_insertion", "insertion AUC ↑"), ("sanity", "sanity check"), ("ms_per_clip", "ms / clip"),
           ("cost", "forwards + backwards")]
WITH_INTERVAL = ("pointing", "used_pointing")  # shown with ± 1.96 standard errors over clips


def task_of(name: str, default: str) -> str:
    found = re.match(r"synthmotion-(\w+?)-", Path(name).name)
    return found.group(1) if found and found.group(1) in TASKS else default


def logit(model, frames: np.ndarray, label: int, size: int) -> float:
    """The model's logit of `label` for uint8 frames (T, H, W, 3), on the model's device."""
    return model(transform_frames(frames, size).to(model.device))[0, label].item()


@torch.no_grad()
def vacancy_test(model, data, count: int) -> dict:
    """Is where the signal object has just been evidence too? In every frame, paint the object back on the
    pixels it covered one frame earlier and has left, or — the control — the same shape at a random empty
    place of the frame; the mean drop of the target logit for each."""
    drops = {"vacated": [], "elsewhere": []}
    for i in range(count):
        frames, label = data.frames(i)
        masks = data.object_masks(i)
        sig, occupied = masks["signal"], np.logical_or.reduce(list(masks.values()))
        colour = frames[sig][0]
        base = logit(model, frames, label, data.size)
        rng = np.random.default_rng(i)
        for t in range(1, len(frames)):
            vacated = sig[t - 1] & ~sig[t]
            if vacated.sum() < 8:
                continue
            for _ in range(50):  # the control: the same shape, shifted to where no object is in frame t
                shifted = np.roll(vacated, tuple(rng.integers(-data.size // 3, data.size // 3 + 1, 2)), axis=(0, 1))
                if not (shifted & (occupied[t] | vacated)).any():
                    break
            else:
                continue
            for kind, where in (("vacated", vacated), ("elsewhere", shifted)):
                painted = frames.copy()
                painted[t][where] = colour
                drops[kind].append(base - logit(model, painted, label, data.size))
    return {k: float(np.mean(v)) for k, v in drops.items()} | {"frames": len(drops["vacated"])}


def cell(text: str) -> str:
    """A method row name ("occlusion|blur") as a markdown table cell."""
    return text.replace("|", "\\|")


def table(name: str, result: dict) -> str:
    have = [(k, label) for k, label in COLUMNS if k in ("sanity", "cost") or any(k in r for r in result.values())]
    info = result["_model"]
    where = f"clips of {info['data']}" if "data" in info else "held-out clips"
    lines = [f"**{name}** ({info['clips']} {where}, accuracy {info['accuracy']:.1%})", "",
             "| method | " + " | ".join(label for _, label in have) + " |", "|---" * (len(have) + 1) + "|"]
    for method, r in result.items():
        if method.startswith("_"):
            continue
        cells = []
        for key, _ in have:
            if key == "sanity":
                cells.append("" if "sanity_pass" not in r else
                             f"{'pass' if r['sanity_pass'] else 'FAIL'} ({r['randomisation'][-1]['spearman']:.2f})")
            elif key == "cost":
                cells.append(f"{r['forwards']} + {r['backwards']}" if "forwards" in r else "")
            elif key == "ms_per_clip":
                cells.append(f"{r[key]:.1f}")
            elif key in WITH_INTERVAL and key in r.get("stderr", {}):
                cells.append(f"{r[key]:.3f} ± {1.96 * r['stderr'][key]:.3f}")
            else:
                cells.append(f"{r[key]:.3f}" if key in r else "")
        lines.append(f"| {cell(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="tslab bench explain", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--models", nargs="*", help="shipped model names or checkpoint paths (default: every shipped model)")
    p.add_argument("--task", default="temporal", help="SynthMotion task of models whose name does not say it")
    p.add_argument("--data", help="score on these clips instead of SynthMotion's: ROOT (ROOT/<split>/<class>/<clip> "
                                  "or ROOT/<split>.csv) or a CSV list of path,label (default: SynthMotion)")
    p.add_argument("--split", default="val", help="split folder or CSV name of --data")
    p.add_argument("--sampling-rate", type=at_least(1), default=32, help="frame stride of a clip of --data")
    p.add_argument("--clips", type=at_least(1), default=32, help="held-out clips per model")
    p.add_argument("--methods", nargs="*", choices=list(EXPLANATIONS), help="the explanations scored (default: all)")
    p.add_argument("--seed", type=int, default=31337, help="SynthMotion seed of the held-out clips")
    p.add_argument("--threads", type=at_least(1), default=1, help="CPU threads")
    p.add_argument("--device", default="auto", help="auto (the GPU where there is one), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, help="the result file, the .md beside it (default: bench/results/explain.json; "
                                            "with --data, explain-<data>.json)")
    p.add_argument("--report", action="store_true", help="only rewrite the .md beside --out from its JSON, and exit")
    a = p.parse_args(argv)
    videos = a.data is not None and synthmotion_task(a.data) is None  # else SynthMotion, with its ground truth
    task_of_model = {}  # name → SynthMotion task: --data synthmotion-<task>, else the name's, else --task
    out = a.out or (Path(f"explain-{Path(a.data.rstrip('/')).stem}.json") if videos else RESULTS / "explain.json")
    if a.report:
        if not out.is_file():
            p.error(f"no results at {out}: run the benchmark first")
        write(json.loads(out.read_text()), out)
        print(f"wrote {out.with_suffix('.md')}")
        return None
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    names = a.models or list(models())
    if not names:
        p.error("no shipped models found: give --models")
    report = {"clips": a.clips, "seed": a.seed, "pass_below": PASS_BELOW, "models": {}}
    if videos:
        report.update(data=str(a.data), split=a.split, sampling_rate=a.sampling_rate)
    data = {}
    try:  # every model and its clips open before the first is benchmarked: a wrong name stops the run at once
        loaded = {name: load_model(name, device) for name in names}
        for name, model in loaded.items():
            cfg = model.config
            if videos:
                data[name] = open_split(a.data, a.split, model.class_names, num_frames=cfg.num_frames,
                                        size=cfg.img_size, sampling_rate=a.sampling_rate)
                continue
            task = task_of_model[name] = synthmotion_task(a.data) if a.data else task_of(name, a.task)
            data[name] = SynthMotion(task, "test", a.clips, cfg.num_frames, cfg.img_size, seed=a.seed)
    except (CheckpointError, OSError, ValueError) as e:
        p.error(str(e))
    refused = clash(out, report)
    if refused:
        p.error(refused)
    for name, model in loaded.items():
        cfg = model.config
        task = task_of_model.get(name)
        t0 = time.perf_counter()
        skipped = []
        try:
            held = clips(data[name], a.clips, skipped)
        except ValueError as e:  # not one clip of --data could be read
            p.error(f"{a.data}: {e}")
        for s in skipped:
            print(f"skipped {s.path}: {s.reason}", flush=True)
        forward_s = timed_forward(model, held[0][:1].to(device))
        minutes = estimated_seconds(model, len(held[0]), a.methods, forward_s) / 60
        print(f"{name}: {len(held[0])} clips, about {minutes:.0f} min on {device_name(device)} at most (one clip's "
              f"forward takes {forward_s * 1000:.0f} ms)" if minutes >= 1 else
              f"{name}: {len(held[0])} clips, under a minute on {device_name(device)}", flush=True)
        result = benchmark(model, held, a.methods, progress=lambda m, n=name: print(f"{n}: {m}", flush=True))
        result["_model"].update(attention_type=cfg.attention_type, seconds=time.perf_counter() - t0,
                                device=device_name(device), **({"data": f"{a.data} ({a.split})"} if videos
                                                               else {"task": task}))
        if skipped:
            result["_model"]["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
        e = temporal_evidence(model, held[0].to(device))
        result["_temporal"] = {"order_effects": {k: float(v.mean()) for k, v in e["order_effects"].items()},
                               "step_shares": e["step_shares"]}
        if task in ("temporal", "distractor"):
            result["_temporal"]["vacancy"] = vacancy_test(model, data[name], a.clips)
        report["models"][Path(name).name] = result
        print(table(Path(name).name, result), flush=True)
        write(report, out)  # after every model: a long run that is stopped keeps what it finished
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def identity(report: dict) -> dict:
    """What makes two runs' results comparable: the clips they were scored on."""
    return {k: report.get(k) for k in ("clips", "seed", "data", "split", "sampling_rate")}


def describe(report: dict) -> str:
    where = (f"{report['data']} ({report['split']}, sampling rate {report['sampling_rate']})" if report.get("data")
             else f"SynthMotion, seed {report.get('seed')}")
    return f"{report.get('clips')} clips of {where}"


def clash(out: Path, report: dict) -> str | None:
    """Why this run's results cannot go into `out` (None: they can): it holds results scored on other clips,
    which `write` would otherwise replace."""
    if not out.exists():
        return None
    try:
        old = json.loads(out.read_text())
        held = old["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"--out {out} is not a results file of this benchmark; choose another --out"
    if held and identity(old) != identity(report):
        return (f"--out {out} holds results on {describe(old)} ({', '.join(held)}); this run scores "
                f"{describe(report)}: choose another --out (nothing was run)")
    return None


SUMMARY_METHODS = ("attention", "rollout", "grad_rollout", "gae", "lrp", "saliency",
                   "integrated_gradients|temporal_mean", "integrated_gradients|temporal_median",
                   "occlusion|temporal_median", "ablation_tubes|temporal_mean", "random")


def summary(models: dict) -> str:
    """One row per model: mass on the signal object (and the share against the distractor, where there is one)
    for the interactive methods, the best perturbation ones and the random map; then the evidence about time."""
    lines = ["| model | " + " | ".join(map(cell, SUMMARY_METHODS)) + " |", "|---" * (len(SUMMARY_METHODS) + 1) + "|"]
    for name, result in models.items():
        if not result.get("_model", {}).get("ground_truth", True):
            continue  # clips whose evidence has no known place: no mass to show
        cells = []
        for m in SUMMARY_METHODS:
            r = result.get(m, {})
            mass = f"{r['mass']:.2f}" if "mass" in r else ""
            cells.append(mass + (f" ({r['signal_share']:.2f})" if "signal_share" in r else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines = lines + [""] if len(lines) > 2 else []  # (the header alone: no model with ground truth)
    lines += ["| model | p(target): as is | reversed | shuffled | frozen | relevance through time steps, "
              "blocks 0→3 | vacancy: logit drop, vacated / elsewhere | frame removed: logit drop, frames 0→T−1 "
              "(share of frames used) |", "|---|---|---|---|---|---|---|---|"]
    for name, result in models.items():
        t = result.get("_temporal", {})
        o = t.get("order_effects", {})
        shares = " / ".join(f"{r['share']:.2f}" for r in t.get("step_shares", []) if r["step"] == "time") or "—"
        v = t.get("vacancy")
        vac = f"{v['vacated']:.2f} / {v['elsewhere']:.2f} ({v['frames']} frames)" if v else "—"
        probs = [f"{o[k]:.3f}" if k in o else "—" for k in ("original", "reversed", "shuffled", "frozen")]
        info = result.get("_model", {})
        used = (" / ".join(f"{d:.2f}" for d in info["frame_drop"]) + f" ({info['used_frames']:.2f})"
                if "frame_drop" in info else "—")
        lines.append(f"| {name} | " + " | ".join(probs) + f" | {shares} | {vac} | {used} |")
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    """Merge into `out`: models benchmarked earlier on the same clips are kept (two runs may share a file), and
    so are a model's rows that this run did not compute (a run with --methods updates only those)."""
    merged = dict(report, models={})
    if out.exists():
        old = json.loads(out.read_text())
        if identity(old) == identity(report):
            merged["models"] = old["models"]
    order = ["_model", "_temporal", *all_rows()]
    for name, result in report["models"].items():
        rows = {**merged["models"].get(name, {}), **result}
        merged["models"][name] = {k: rows[k] for k in sorted(rows, key=lambda k: order.index(k) if k in order
                                                              else len(order))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1))
    tables = [table(n, r) for n, r in merged["models"].items()]
    out.with_suffix(".md").write_text("\n\n".join([summary(merged["models"]), *tables]) + "\n")


if __name__ == "__main__":
    main()
