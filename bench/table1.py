"""The paper's Table 1 in miniature: the five schemes at the tiny preset on SynthMotion appearance and
temporal, 3 seeds each, trained with `tslab train` (RECIPE below), two runs at a time, each on 1 thread.

    nohup .venv/bin/python bench/table1.py > bench/results/table1.log 2>&1 &
    .venv/bin/python bench/table1.py --held-out    # each run on 2,048 fresh test clips, into table1.jsonl
    .venv/bin/python bench/table1.py --report      # the tables of docs/results.md from table1.jsonl

Accuracy in the tables is held out (SynthMotion's `test` split, which no run trains or validates on) where
--held-out has measured it, else the last validation. Results are appended to bench/results/table1.jsonl as
each run finishes (a restarted script skips the runs already there), and bench/results/table1.md is rewritten
after every run. Run folders go to runs/table1/ (not committed); the seed-0 temporal runs are the shipped
per-scheme models (bench/shipped_models.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timesformer.cli import HelpFormatter
from timesformer.config import ATTENTION_TYPES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "table1"

# The recipe of every cell (docs/results.md says why): the tiny preset (time and position embeddings drawn at
# std 1.0) at 32², 8 frames; AdamW, peak lr 1e-3, the default warm-up (5% of the steps) and cosine decay; batch
# 16; 4,096 distinct training clips × 4 epochs = 1,024 steps.
RECIPE = ["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--train-clips", "4096", "--val-clips", "512",
          "--epochs", "4", "--batch-size", "16", "--lr", "1e-3", "--threads", "1", "--no-progress"]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> str:
    """The CPU (model name, logical cores) and torch build a run used."""
    import torch

    return f"{cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; 1 thread per run"


def shown(out: Path) -> str:
    """A run folder as one types it in the repository: relative to it where inside."""
    return str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)


def command(args: list[str], out: Path) -> str:
    """The `tslab train` command line of a run (recorded in its bench.json)."""
    return " ".join(["tslab train", *args, "--out", shown(out)])


def train(args: list[str], out: Path) -> dict:
    """Run `python -m timesformer.train ARGS --out OUT --resume` on one thread (a run an earlier call left
    unfinished goes on); writes OUT/bench.json (the command, wall time, hardware) and returns it, with the last
    val/train metrics rows, or an `error`."""
    cmd = [sys.executable, "-m", "timesformer.train", *args, "--out", shown(out), "--resume"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    info = {"command": command(args, out), "wall_s": round(time.time() - t0, 1), "hardware": hardware()}
    if proc.returncode != 0:
        return {**info, "error": proc.stderr[-800:]}
    (out / "bench.json").write_text(json.dumps(info, indent=2))
    return {**info, **metrics(out)}


def metrics(out: Path) -> dict:
    """The final val row, the val accuracy after each epoch and the training throughput of a run folder."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    train_rows = [r for r in rows if r["split"] == "train"]
    return {"val_acc1": val[-1]["acc1"], "val_loss": val[-1]["loss"],
            "val_curve": [(r["step"], r["acc1"]) for r in val], "steps": val[-1]["step"],
            "train_wall_s": round(train_rows[-1]["wall_s"], 1),
            "train_clips_per_s": round(sum(r["clips"] for r in train_rows) / train_rows[-1]["wall_s"], 1)}


def run_one(task: str, scheme: str, seed: int, runs: Path = RUNS) -> dict:
    out = runs / f"{task}-{scheme}-s{seed}"
    args = ["--data", f"synthmotion-{task}", "--attention", scheme, "--seed", str(seed), *RECIPE]
    return {"task": task, "scheme": scheme, "seed": seed, **train(args, out)}


# The paper's Table 1 (ViT-B/16, 8 × 224²): parameters, Kinetics-400 and Something-Something-v2 top-1 (%)
PAPER = {"space_only": ("S", 85.9, 76.9, 36.6), "joint_space_time": ("ST", 85.9, 77.4, 58.5),
         "divided_space_time": ("T+S", 121.4, 78.0, 59.5), "sparse_local_global": ("L+G", 121.4, 75.9, 56.3),
         "axial": ("T+W+H", 156.8, 73.5, 56.2)}


def beside_the_paper(results: list[dict]) -> str:
    """The paper's Table 1 and this one side by side: K400 ~ appearance, SSv2 ~ temporal."""
    from timesformer import TimeSformer, TimeSformerConfig

    lines = ["| scheme | paper: params | K400 | SSv2 | tiny: params | SynthMotion appearance | SynthMotion temporal |",
             "|---|---|---|---|---|---|---|"]
    for scheme, (short, params, k400, ssv2) in PAPER.items():
        mine = [r for r in results if r["scheme"] == scheme and "val_acc1" in r]
        cells = [cell([acc(r) for r in mine if r["task"] == t]) for t in ("appearance", "temporal")]
        model = TimeSformer(TimeSformerConfig.tiny(img_size=32, num_classes=4, attention_type=scheme))
        ours = sum(p.numel() for p in model.parameters()) / 1e6
        lines.append(f"| {short} `{scheme}` | {params}M | {k400} | {ssv2} | {ours:.2f}M | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


HELD_OUT_CLIPS, HELD_OUT_SEED = 2048, 12345  # `tslab evaluate`'s default seed; the test split trains nothing


def held_out(r: dict, runs: Path = RUNS) -> dict:
    """`r` with `test_acc1`: the run's last checkpoint on fresh clips of SynthMotion's `test` split (the clip
    accuracy that `tslab evaluate` prints first, without its 3-crop pass)."""
    import torch

    from timesformer import load_model
    from timesformer.data import open_split
    from timesformer.engine import eval_loader, evaluate

    ckpt = runs / f"{r['task']}-{r['scheme']}-s{r['seed']}" / "checkpoint-last"
    model = load_model(ckpt)
    ds = open_split(f"synthmotion-{r['task']}", "test", model.class_names, num_frames=model.config.num_frames,
                    size=model.config.img_size, sampling_rate=32, seed=HELD_OUT_SEED, num_clips=HELD_OUT_CLIPS)
    ev = evaluate(model, eval_loader(ds, 64, 0), torch.device("cpu"))
    return {**r, "test_acc1": ev["acc1"], "test_loss": ev["loss"], "test_clips": ev["clips"],
            "test_command": f"tslab evaluate {shown(ckpt)} synthmotion-{r['task']} --num-clips {HELD_OUT_CLIPS} "
                            f"--seed {HELD_OUT_SEED}"}


def acc(r: dict) -> float:
    """A run's accuracy in %: held out where measured, else validation."""
    return 100 * r.get("test_acc1", r["val_acc1"])


def cell(accs: list[float]) -> str:
    if not accs:
        return "—"
    if len(accs) == 1:
        return f"{accs[0]:.1f} (1 seed)"
    mean, sd = statistics.mean(accs), statistics.stdev(accs)
    return f"{mean:.1f} ± {sd:.1f} (n={len(accs)}; {min(accs):.1f}–{max(accs):.1f})"


def table(results: list[dict]) -> str:
    lines = ["| scheme | appearance acc (%) | temporal acc (%) | wall time per run (s) | train clips/s |",
             "|---|---|---|---|---|"]
    for scheme in ATTENTION_TYPES:
        mine = [r for r in results if r["scheme"] == scheme and "val_acc1" in r]
        cells = [cell([acc(r) for r in mine if r["task"] == task]) for task in ("appearance", "temporal")]
        wall = f"{statistics.mean(r['wall_s'] for r in mine):.0f}" if mine else "—"
        rate = f"{statistics.mean(r['train_clips_per_s'] for r in mine):.0f}" if mine else "—"
        lines.append(f"| `{scheme}` | {cells[0]} | {cells[1]} | {wall} | {rate} |")
    return "\n".join(lines) + "\n"


def per_run(results: list[dict]) -> str:
    lines = ["| task | scheme | seed | held-out acc (%) | val acc (%) per epoch | steps | wall (s) | train clips/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["task"], ATTENTION_TYPES.index(r["scheme"]), r["seed"])):
        if "val_acc1" not in r:
            lines.append(f"| {r['task']} | `{r['scheme']}` | {r['seed']} | failed | | | {r['wall_s']:.0f} | |")
            continue
        curve = " → ".join(f"{a * 100:.1f}" for _, a in r["val_curve"])
        test = f"{r['test_acc1'] * 100:.1f}" if "test_acc1" in r else "—"
        lines.append(f"| {r['task']} | `{r['scheme']}` | {r['seed']} | {test} | {curve} | {r['steps']} | "
                     f"{r['wall_s']:.0f} | {r['train_clips_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def report(results: list[dict]) -> str:
    return beside_the_paper(results) + "\n" + table(results) + "\n" + per_run(results)


def load(path: Path = RESULTS / "table1.jsonl") -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def main(argv=None):
    p = argparse.ArgumentParser(prog="tslab bench table1", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="training seeds of each cell")
    p.add_argument("--schemes", nargs="*", default=list(ATTENTION_TYPES), help="the schemes trained (default: all)")
    p.add_argument("--tasks", nargs="*", default=["temporal", "appearance"], help="SynthMotion tasks")
    p.add_argument("--runs", default=str(RUNS), help="the folder of the run folders (default: runs/table1)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (each 1 thread)")
    p.add_argument("--report", action="store_true", help="print the tables from table1.jsonl and exit")
    p.add_argument("--held-out", action="store_true",
                   help=f"add each finished run's accuracy on {HELD_OUT_CLIPS} fresh test clips to table1.jsonl, exit")
    a = p.parse_args(argv)
    path = RESULTS / "table1.jsonl"
    done = load(path)
    if a.report:
        print(report(done))
        return
    if a.held_out:  # a.parallel runs at a time, one torch thread each
        import torch

        torch.set_num_threads(1)
        todo = [r for r in done if "val_acc1" in r and "test_acc1" not in r]
        with ThreadPoolExecutor(a.parallel) as pool:
            measured = dict(zip(map(id, todo), pool.map(lambda r: held_out(r, Path(a.runs).resolve()), todo)))
        done = [measured.get(id(r), r) for r in done]
        path.write_text("".join(json.dumps(r) + "\n" for r in done))
        (RESULTS / "table1.md").write_text(report(done))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    have = {(r["task"], r["scheme"], r["seed"]) for r in done if "val_acc1" in r}
    # seeds outermost: a partial table already covers every cell
    todo = [(t, s, seed) for seed in a.seeds for t in a.tasks for s in a.schemes if (t, s, seed) not in have]

    lock = threading.Lock()

    def one(job):
        r = run_one(*job, runs=Path(a.runs).resolve())
        with lock:
            print(json.dumps(r), flush=True)
            with open(path, "a") as f:
                f.write(json.dumps(r) + "\n")
            done.append(r)
            (RESULTS / "table1.md").write_text(report(done))

    with ThreadPoolExecutor(a.parallel) as pool:
        list(pool.map(one, todo))
    print(table(done))


if __name__ == "__main__":
    main()
