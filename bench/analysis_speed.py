"""Speed of the attention analysis (docs/analysis.md#speed).

    tslab bench analysis_speed [--checkpoint NAME_OR_PATH] [--json out.json]

One forward of the default model with and without recording, then rollout (the cls row and the full
matrix), GAE and the summary numbers of ViT-B/16 8×224 for divided and joint attention (random weights:
speed does not depend on them). Best of 3. The faithfulness and ground-truth scores of every explanation
are `tslab bench explain`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from analysis.maps import recorded_forward, summary_table
from analysis.rollout import gae, rollout
from timesformer import TimeSformer, TimeSformerConfig, load_model
from timesformer.cli import HelpFormatter
from timesformer.shipped import DEFAULT_MODEL


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def speed(model) -> dict:
    cfg = model.config
    clip = torch.randn(1, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    out = {}
    with torch.no_grad():
        model(clip)
        out["default_forward_s"] = best_of(lambda: model(clip))
    out["default_recorded_forward_s"] = best_of(lambda: recorded_forward(model, clip))
    out["default_gae_s"] = best_of(lambda: gae(model, clip))
    for scheme in ("divided_space_time", "joint_space_time"):
        big = TimeSformer(TimeSformerConfig.base(attention_type=scheme)).eval()
        _, rec = recorded_forward(big, torch.randn(1, 3, 8, 224, 224))
        out[f"vitb_{scheme}_rollout_cls_s"] = best_of(lambda rec=rec: rollout(rec, query="cls"))
        out[f"vitb_{scheme}_rollout_full_s"] = best_of(lambda rec=rec: rollout(rec), repeats=1)
        out[f"vitb_{scheme}_summary_s"] = best_of(lambda rec=rec: summary_table(rec), repeats=1)
        clip = torch.randn(1, 3, 8, 224, 224)
        out[f"vitb_{scheme}_gae_s"] = best_of(lambda big=big, clip=clip: gae(big, clip), repeats=1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tslab bench analysis_speed", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_MODEL),
                    help="the model timed: any checkpoint load_model opens (default: the shipped default model)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    args = ap.parse_args(argv)
    result = {"checkpoint": args.checkpoint, "speed": speed(load_model(args.checkpoint))}
    for k, v in result["speed"].items():
        print(f"{k:45s} {v:7.3f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
