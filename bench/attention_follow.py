"""Does a model's cls attention follow the moving object, layer by layer?

    tslab bench attention_follow [--checkpoint NAME_OR_PATH] [--clips 32]

For fresh SynthMotion temporal clips and each frame: is the patch the cls token attends to most in each
layer's main (last) attention step, mean over heads, one that the object covers (≥ 20% of its pixels,
`SynthMotion.object_masks`)? Chance = the share of such patches. Writes bench/results/attention_follow.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from analysis.grounding import object_cells
from analysis.maps import query_map, recorded_forward
from timesformer import load_model
from timesformer.cli import HelpFormatter
from timesformer.shipped import DEFAULT_MODEL
from timesformer.synthmotion import SynthMotion

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    p = argparse.ArgumentParser(prog="tslab bench attention_follow", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_MODEL),
                   help="a model of SynthMotion's temporal task (default: the shipped default model)")
    p.add_argument("--clips", type=int, default=32, help="SynthMotion test clips")
    a = p.parse_args(argv)
    model = load_model(a.checkpoint)
    cfg = model.config
    ds = SynthMotion("temporal", "test", a.clips, cfg.num_frames, cfg.img_size, seed=99)
    hits, chance, frames = np.zeros(cfg.depth), 0.0, 0
    for i in range(len(ds)):
        cells = object_cells(ds.object_masks(i), cfg.patch_size)["signal"]  # (T, H_p, W_p)
        _, rec = recorded_forward(model, ds[i][0])
        main_steps = [m for m in rec if m.step == model.blocks[0].steps[-1].name]
        T = cells.shape[0]
        chance += cells.mean() * T
        frames += T
        for m in main_steps:  # one per layer, in order
            top = query_map(m, "cls")[0].flatten(1).argmax(1).numpy()  # each frame's most attended patch
            hits[m.layer] += cells.reshape(T, -1)[np.arange(T), top].sum()
    out = {"checkpoint": a.checkpoint, "frames": frames, "chance": round(chance / frames, 3),
           "cls_argmax_on_object_per_layer": [round(h / frames, 3) for h in hits]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_follow.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
