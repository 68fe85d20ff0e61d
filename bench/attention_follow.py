"""Does the default model's attention follow the moving object? For 32 fresh SynthMotion clips and each
frame: is the patch that the cls token attends to most (space step, mean over heads) one that the object
covers (> 20% of its pixels)? Chance = the fraction of such patches.

    .venv/bin/python bench/attention_follow.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from timesformer import load_model, record_attention
from timesformer.shipped import DEFAULT_MODEL
from timesformer.synthmotion import SynthMotion

ROOT = Path(__file__).resolve().parent.parent


def main():
    model = load_model(DEFAULT_MODEL)
    cfg = model.config
    T, side = cfg.num_frames, cfg.img_size // cfg.patch_size
    N, P = side * side, cfg.patch_size
    ds = SynthMotion("temporal", "test", 32, T, cfg.img_size, seed=99)
    hits, chance, count = np.zeros(cfg.depth), 0.0, 0
    for i in range(len(ds)):
        frames, _ = ds.frames(i)
        with record_attention(model) as rec:
            model(ds[i][0])
        dense = [rec.get(layer, "space").dense()[0].mean(0) for layer in range(cfg.depth)]  # (1+T·N, 1+T·N)
        for t in range(T):
            frame = frames[t].astype(int)
            mask = np.abs(frame - np.median(frame, (0, 1))).sum(-1) > 90  # the object's pixels
            covered = mask.reshape(side, P, side, P).mean((1, 3)).reshape(-1) > 0.2  # (N,) frame-major patches
            chance += covered.mean()
            count += 1
            for layer in range(cfg.depth):
                hits[layer] += covered[int(dense[layer][0, 1 + t * N: 1 + (t + 1) * N].argmax())]
    out = {"frames": count, "chance": round(chance / count, 3),
           "cls_argmax_on_object_per_layer": [round(h / count, 3) for h in hits]}
    (ROOT / "bench" / "results" / "attention_follow.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
