"""Training throughput (clips/s, forward + backward + AdamW step) of the tiny preset, per scheme.

    .venv/bin/python bench/throughput.py --threads 2 --img-size 64 32

Synthetic input (random clips: the data pipeline is not timed). Prints a markdown table and writes
bench/results/throughput-<N>threads.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from timesformer import ATTENTION_TYPES, TimeSformer, TimeSformerConfig
from timesformer.cli import HelpFormatter

ROOT = Path(__file__).resolve().parent.parent


def measure(scheme: str, img_size: int, batch: int, steps: int, warmup: int = 2) -> float:
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig.tiny(attention_type=scheme, img_size=img_size, num_classes=4)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 8, img_size, img_size)
    y = torch.randint(0, 4, (batch,))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(prog="tslab bench throughput", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--img-size", type=int, nargs="*", default=[64, 32], help="crop sizes timed")
    p.add_argument("--batch-size", type=int, default=16, help="clips per training step")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for size in a.img_size:
        for scheme in ATTENTION_TYPES:
            rate = measure(scheme, size, a.batch_size, a.steps)
            rows.append({"scheme": scheme, "img_size": size, "threads": a.threads, "batch": a.batch_size,
                         "clips_per_s": round(rate, 1)})
            print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "bench" / "results" / f"throughput-{a.threads}threads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print("| scheme | " + " | ".join(f"{s}² clips/s" for s in a.img_size) + " |")
    print("|---|" + "---|" * len(a.img_size))
    for scheme in ATTENTION_TYPES:
        cells = [next(r["clips_per_s"] for r in rows if r["scheme"] == scheme and r["img_size"] == s)
                 for s in a.img_size]
        print(f"| `{scheme}` | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
