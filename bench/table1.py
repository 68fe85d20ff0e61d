"""The paper's Table 1 in miniature: the five schemes at the tiny preset on SynthMotion appearance and
temporal, 3 seeds each, trained with timesformer.train one run at a time (each run 1 thread).

    nohup .venv/bin/python bench/table1.py > bench/results/table1.log 2>&1 &

Results are appended to bench/results/table1.jsonl as each run finishes (a restarted script skips the runs
already there), and bench/results/table1.md is rewritten after every run. Run folders go to runs/table1/
(not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from timesformer.config import ATTENTION_TYPES

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
RECIPE = ["--preset", "tiny", "--img-size", "32", "--num-frames", "8", "--train-clips", "2048", "--val-clips", "512",
          "--epochs", "4", "--batch-size", "16", "--threads", "1", "--no-progress", "--eval-every", "4"]


def run_one(task: str, scheme: str, seed: int, runs: Path) -> dict:
    out = runs / f"{task}-{scheme}-s{seed}"
    cmd = [sys.executable, "-m", "timesformer.train", "--data", f"synthmotion-{task}", "--attention", scheme,
           "--seed", str(seed), "--out", str(out), *RECIPE]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"task": task, "scheme": scheme, "seed": seed, "error": proc.stderr[-500:], "wall_s": wall}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"][-1]
    train = [r for r in rows if r["split"] == "train"]
    return {"task": task, "scheme": scheme, "seed": seed, "val_acc1": val["acc1"], "val_loss": val["loss"],
            "train_acc1_last_epoch": train[-1]["acc1"], "steps": val["step"], "wall_s": round(wall, 1),
            "train_wall_s": round(train[-1]["wall_s"], 1),
            "train_clips_per_s": round(sum(r["clips"] for r in train) / train[-1]["wall_s"], 1),
            "command": "python -m timesformer.train " + " ".join(cmd[3:])}


def table(results: list[dict]) -> str:
    lines = ["| scheme | appearance acc (%) | temporal acc (%) | wall time per run (s) | train clips/s |",
             "|---|---|---|---|---|"]
    for scheme in ATTENTION_TYPES:
        cells = []
        walls, rates = [], []
        for task in ("appearance", "temporal"):
            accs = [r["val_acc1"] * 100 for r in results if r["scheme"] == scheme and r["task"] == task
                    and "val_acc1" in r]
            walls += [r["wall_s"] for r in results if r["scheme"] == scheme and r["task"] == task and "wall_s" in r]
            rates += [r["train_clips_per_s"] for r in results if r["scheme"] == scheme and r["task"] == task
                      and "train_clips_per_s" in r]
            if not accs:
                cells.append("—")
            elif len(accs) == 1:
                cells.append(f"{accs[0]:.1f} (1 seed)")
            else:
                cells.append(f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs):.1f} "
                             f"(n={len(accs)}; {min(accs):.1f}–{max(accs):.1f})")
        wall = f"{statistics.mean(walls):.0f}" if walls else "—"
        rate = f"{statistics.mean(rates):.0f}" if rates else "—"
        lines.append(f"| `{scheme}` | {cells[0]} | {cells[1]} | {wall} | {rate} |")
    return "\n".join(lines) + "\n"


def per_run(results: list[dict]) -> str:
    lines = ["| task | scheme | seed | val acc (%) | val loss | steps | wall (s) | train clips/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["task"], ATTENTION_TYPES.index(r["scheme"]), r["seed"])):
        if "val_acc1" not in r:
            lines.append(f"| {r['task']} | `{r['scheme']}` | {r['seed']} | failed | | | {r['wall_s']:.0f} | |")
            continue
        lines.append(f"| {r['task']} | `{r['scheme']}` | {r['seed']} | {r['val_acc1'] * 100:.1f} | "
                     f"{r['val_loss']:.3f} | {r['steps']} | {r['wall_s']:.0f} | {r['train_clips_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--schemes", nargs="*", default=list(ATTENTION_TYPES))
    p.add_argument("--tasks", nargs="*", default=["temporal", "appearance"])
    p.add_argument("--runs", default=str(ROOT / "runs" / "table1"))
    p.add_argument("--report", action="store_true", help="print the tables from table1.jsonl and exit")
    a = p.parse_args(argv)
    if a.report:
        done = [json.loads(x) for x in (RESULTS / "table1.jsonl").read_text().splitlines()]
        print(table(done) + "\n" + per_run(done))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "table1.jsonl"
    done = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    have = {(r["task"], r["scheme"], r["seed"]) for r in done if "val_acc1" in r}
    for seed in a.seeds:  # seeds outermost: a partial table already covers every cell
        for task in a.tasks:
            for scheme in a.schemes:
                if (task, scheme, seed) in have:
                    continue
                r = run_one(task, scheme, seed, Path(a.runs))
                print(json.dumps(r), flush=True)
                with open(path, "a") as f:
                    f.write(json.dumps(r) + "\n")
                done.append(r)
                (RESULTS / "table1.md").write_text(table(done) + "\n" + per_run(done))
    print(table(done))


if __name__ == "__main__":
    main()
