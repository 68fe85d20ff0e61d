"""`tslab export CHECKPOINT --out DIR` (also `python -m timesformer.export`): any checkpoint `load_model` opens,
written again as this project's folder or as a HuggingFace Timesformer folder.

`--to huggingface` writes what `transformers.TimesformerForVideoClassification.from_pretrained(DIR)` loads (the
divided and joint space-time schemes, which HuggingFace's Timesformer runs as the paper does): a model trained
here, or converted from an official or mmaction2 checkpoint, goes to the hub as any Timesformer does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from timesformer.checkpoints import FORMAT, SAVE_FORMATS, CheckpointError, load_model, save_model
from timesformer.cli import HelpFormatter


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "python -m timesformer.export", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="anything load_model opens: a run's folder, a .pyth, an mmaction2 .pth, a "
                                      "HuggingFace folder or hub id, a shipped model's name")
    p.add_argument("--out", required=True, type=Path, help="the folder to write (replaced only if it was written so)")
    p.add_argument("--to", default=FORMAT, choices=SAVE_FORMATS,
                   help="timesformer-lab: this project's folder (every scheme); huggingface: a "
                        "TimesformerForVideoClassification folder (divided and joint space-time)")
    return p


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        model = load_model(args.checkpoint)
        save_model(model, args.out, format=args.to)
    except (CheckpointError, OSError) as e:  # FileExistsError among them: nothing of the user's is replaced
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = model.config
    load = (f"transformers.TimesformerForVideoClassification.from_pretrained({str(args.out)!r})"
            if args.to == "huggingface" else f"timesformer.load_model({str(args.out)!r})")
    print(f"wrote {args.out}: {cfg.attention_type}, {cfg.num_frames}×{cfg.img_size}², {len(model.class_names)} "
          f"classes, as a {args.to} folder; {load} opens it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
