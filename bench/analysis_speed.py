"""Figures for docs/analysis.md: analysis speed and the faithfulness of each explanation.

    python bench/analysis.py [--checkpoint assets/default_model] [--clips assets/samples] [--json out.json]

1. Speed: one forward with recording for the default model; rollout (cls row and full matrix) and the
   summary numbers of ViT-B/16 8×224 for divided and joint attention (random weights: speed does not
   depend on them).
2. Faithfulness on the default model and every sample clip: deletion and insertion AUCs for raw
   last-layer cls attention, rollout, gradient-weighted rollout, each attribution method and a random
   ranking (mean of 5 seeds), as the mean over clips.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from analysis.attribution import METHODS, attribute
from analysis.faithfulness import deletion_insertion, random_map
from analysis.maps import query_map, recorded_forward, summary_table
from analysis.rollout import grad_rollout, rollout
from timesformer import TimeSformer, TimeSformerConfig, load_model, record_attention
from timesformer.shipped import DEFAULT_MODEL, SAMPLES, sample_clips
from timesformer.video import SPREAD, read_clip


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def speed(model, clip) -> dict:
    out = {}
    with torch.no_grad():
        model(clip)
        out["default_forward_s"] = best_of(lambda: model(clip))

        def recorded():
            with record_attention(model):
                model(clip)

        out["default_recorded_forward_s"] = best_of(recorded)
    for scheme in ("divided_space_time", "joint_space_time"):
        big = TimeSformer(TimeSformerConfig.base(attention_type=scheme)).eval()
        with torch.no_grad(), record_attention(big) as rec:
            big(torch.randn(1, 3, 8, 224, 224))
        out[f"vitb_{scheme}_rollout_cls_s"] = best_of(lambda: rollout(rec, query="cls"))
        out[f"vitb_{scheme}_rollout_full_s"] = best_of(lambda: rollout(rec), repeats=1)
        out[f"vitb_{scheme}_summary_s"] = best_of(lambda: summary_table(rec), repeats=1)
    return out


def explanations(model, clip) -> dict:
    _, rec = recorded_forward(model, clip)
    last = model.config.depth - 1
    maps = {f"attention L{last} {m.step}": query_map(m, "cls") for m in rec if m.layer == last and m.grouping.with_cls}
    maps["rollout"] = rollout(rec, query="cls")
    maps["grad rollout"] = grad_rollout(model, clip)
    for method in METHODS:
        maps[method] = attribute(model, clip, method, n_steps=32, window=(1, 1))
    return maps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_MODEL))
    ap.add_argument("--clips", type=Path, default=SAMPLES)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    model = load_model(args.checkpoint)
    cfg = model.config
    clips = sample_clips(args.clips)
    videos = [read_clip(p, num_frames=cfg.num_frames, size=cfg.img_size, sampling_rate=SPREAD)[0] for p in clips]
    result = {"checkpoint": args.checkpoint, "clips": [p.name for p in clips]}
    if not args.skip_speed:
        result["speed"] = speed(model, videos[0])
        for k, v in result["speed"].items():
            print(f"{k:45s} {v:7.3f} s")
    scores: dict[str, list] = {}
    for path, video in zip(clips, videos):
        t = time.perf_counter()
        maps = explanations(model, video)
        for name, m in maps.items():
            c = deletion_insertion(model, video, m, steps=16)
            scores.setdefault(name, []).append((c.auc_deletion, c.auc_insertion))
        rand = [deletion_insertion(model, video, random_map(cfg.grid, seed), steps=16) for seed in range(5)]
        scores.setdefault("random (5 seeds)", []).append(
            (statistics.mean(c.auc_deletion for c in rand), statistics.mean(c.auc_insertion for c in rand)))
        print(f"{path.name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    table = {name: {"auc_deletion": statistics.mean(d for d, _ in v), "auc_insertion": statistics.mean(i for _, i in v)}
             for name, v in scores.items()}
    result["faithfulness"] = table
    print(f"\n{'explanation':28s} deletion AUC (lower better)  insertion AUC (higher better)   [{len(clips)} clips]")
    for name, v in table.items():
        print(f"{name:28s} {v['auc_deletion']:10.3f} {v['auc_insertion']:28.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
