"""Evaluate a checkpoint: `python -m timesformer.evaluate CHECKPOINT DATA`.

Prints two numbers, as the paper reports them:
- clip accuracy: one view per video (the middle clip, centre crop);
- video accuracy: the paper's test protocol, 1 temporal clip × 3 spatial crops along the long side, softmax
  scores averaged over the views.
DATA is `synthmotion-temporal` / `synthmotion-appearance` (fresh `test` clips), a folder
`ROOT/<split>/<class>/<clip>`, a folder with `<split>.csv`, or a CSV list. The checkpoint's class names fix
the label order; clips of classes it does not know are an error, unreadable clips are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from timesformer.checkpoints import load_model
from timesformer.data import SynthMotion, video_csv, video_folder
from timesformer.train import eval_loader, evaluate


class Relabeled(torch.utils.data.Dataset):
    """A dataset whose labels are mapped into the checkpoint's class order (e.g. a model trained on exported
    SynthMotion folders, whose classes are sorted by name)."""

    def __init__(self, dataset, mapping: list[int]):
        self.dataset, self.mapping = dataset, mapping

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return item if not isinstance(item, tuple) else (item[0], self.mapping[item[1]], item[2])


def eval_dataset(data: str, classes: list[str], *, split: str, num_frames: int, size: int, sampling_rate: int,
                 spatial_crops: int, num_clips: int, seed: int):
    if data.startswith("synthmotion"):
        kind = data.split("-", 1)[1] if "-" in data else "temporal"
        ds = SynthMotion(kind, "test", num_clips, num_frames, size, seed, spatial_crops=spatial_crops)
        if sorted(ds.classes) != sorted(classes):
            raise SystemExit(f"the checkpoint's classes {classes} are not SynthMotion {kind}'s {ds.classes}")
        return Relabeled(ds, [list(classes).index(c) for c in ds.classes])
    kw = dict(num_frames=num_frames, size=size, sampling_rate=sampling_rate, spatial_crops=spatial_crops)
    path = Path(data)
    if path.is_dir() and (path / split).is_dir():
        return video_folder(path, split, classes, **kw)
    if path.is_dir() and (path / f"{split}.csv").is_file():
        path = path / f"{split}.csv"
    if path.is_file():
        return video_csv(path, classes, **kw)
    raise SystemExit(f"{data}: expected synthmotion-*, a folder with {split}/<class>/<clip> or {split}.csv, "
                     "or a CSV list")


def run(checkpoint, data: str, split: str = "val", batch_size: int = 8, num_frames: int | None = None,
        size: int | None = None, sampling_rate: int = 32, num_clips: int = 512, seed: int = 12345,
        device: str = "cpu", workers: int = 0) -> dict:
    """{'clip': metrics with 1 view, 'video': metrics with 3 crops averaged} (loss, acc1, [acc5], clips)."""
    model = load_model(checkpoint).to(device).eval()
    cfg = model.config
    num_frames, size = num_frames or cfg.num_frames, size or cfg.img_size
    out = {}
    for name, crops in (("clip", 1), ("video", 3)):
        ds = eval_dataset(data, model.class_names, split=split, num_frames=num_frames, size=size,
                          sampling_rate=sampling_rate, spatial_crops=crops, num_clips=num_clips, seed=seed)
        t0 = time.time()
        out[name] = evaluate(model, eval_loader(ds, batch_size, workers), torch.device(device))
        out[name]["seconds"] = round(time.time() - t0, 2)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m timesformer.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="anything load_model opens (a run's checkpoint-last, a .pyth, a HF folder)")
    p.add_argument("data")
    p.add_argument("--split", default="val", help="split folder or CSV name (folders/CSV lists)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-frames", type=int, help="default: the checkpoint's")
    p.add_argument("--img-size", type=int, help="default: the checkpoint's")
    p.add_argument("--sampling-rate", type=int, default=32)
    p.add_argument("--num-clips", type=int, default=512, help="SynthMotion test clips")
    p.add_argument("--seed", type=int, default=12345, help="SynthMotion seed (differs from training's by default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    a = p.parse_args(argv)
    res = run(a.checkpoint, a.data, a.split, a.batch_size, a.num_frames, a.img_size, a.sampling_rate, a.num_clips,
              a.seed, a.device, a.workers)
    if a.json:
        print(json.dumps(res))
        return
    for name, label in (("clip", "clip accuracy (1 clip, centre crop)"),
                        ("video", "video accuracy (1 clip × 3 crops)")):
        m = res[name]
        top5 = f", top-5 {m['acc5']:.2%}" if "acc5" in m else ""
        skipped = f", {m['skipped']} unreadable clips skipped" if m.get("skipped") else ""
        print(f"{label}: top-1 {m['acc1']:.2%}{top5} over {m['clips']} clips (loss {m['loss']:.4f}){skipped}")


if __name__ == "__main__":
    main()
