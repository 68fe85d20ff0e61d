"""Evaluate a checkpoint: `python -m timesformer.evaluate CHECKPOINT DATA`.

Prints two numbers, as the paper reports them:
- clip accuracy: one view per video (the middle clip, centre crop);
- video accuracy: the paper's test protocol, 1 temporal clip × 3 spatial crops along the long side, softmax
  scores averaged over the views.
DATA is `synthmotion-temporal` / `synthmotion-appearance` (fresh `test` clips), a folder
`ROOT/<split>/<class>/<clip>`, a folder with `<split>.csv`, or a CSV list. The checkpoint's class names fix
the label order; clips of classes it does not know are an error, unreadable clips are skipped and counted
(none readable at all is an error).
`--predictions FILE.csv` writes every clip's prediction (to find the clips a model gets wrong, and look at
them with `tslab explain`), `--per-class` prints the accuracy of each class.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from timesformer.checkpoints import CheckpointError, load_model
from timesformer.cli import HelpFormatter, at_least
from timesformer.data import auto_workers, open_split, synthmotion_task, workers_arg
from timesformer.distributed import Dist, out_of_memory
from timesformer.engine import eval_loader, evaluate
from timesformer.files import write_csv
from timesformer.optim import AMP, amp_dtype


def run(checkpoint, data: str, split: str = "val", batch_size: int = 8, num_frames: int | None = None,
        size: int | None = None, sampling_rate: int = 32, num_clips: int = 512, seed: int = 12345,
        device: str = "cpu", workers: int | str = "auto", amp: str = "auto", progress: bool = False,
        per_clip: bool = False) -> dict:
    """{'clip': metrics of the centre crop, 'video': of 3 crops averaged} (loss, acc1, [acc5], clips; both
    from one pass, whose time both report as `seconds`), and 'amp', the precision the model ran in. With
    `per_clip`, also 'predictions', a row per clip in the data's order (`prediction_rows`), and 'per_class',
    each class's clips and accuracies.
    `workers`: loader processes, or "auto" (as `tslab train`: on the CPU one for video files, none for
    SynthMotion; the free cores on a GPU).
    `amp`: as `tslab train --amp`: "auto" is bf16 autocast on CUDA (fp16 where bf16 is missing), none on the
    CPU; "none", "bf16" or "fp16". `progress`: a progress bar of the batches on stderr (rank 0's, under torchrun)."""
    if amp not in AMP:
        raise ValueError(f"amp must be one of {', '.join(AMP)}, got {amp!r}")
    with Dist(device) as dist:  # under torchrun, each process evaluates every world-th clip on its own device
        device = dist.device
        dtype = amp_dtype(argparse.Namespace(amp=amp), device)
        if workers == "auto":
            workers = auto_workers(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                   decodes=synthmotion_task(data) is None)
        try:
            model = load_model(checkpoint)
        except (CheckpointError, OSError) as e:
            raise SystemExit(str(e)) from None
        model = model.to(device).eval()
        cfg = model.config
        num_frames, size = num_frames or cfg.num_frames, size or cfg.img_size
        if size % cfg.patch_size:
            raise SystemExit(f"--img-size {size} is not a multiple of the model's patch size {cfg.patch_size}")
        if synthmotion_task(data) is not None:
            if split not in ("val", "test"):  # --split names a folder's or a list's split
                raise SystemExit(f"--split {split}: {data} has no such split (it evaluates fresh test clips)")
            split = "test"  # a stream that neither training nor validation draws from
        try:  # the paper's 3 crops; the middle one is the centre crop that a single view takes
            ds = open_split(data, split, model.class_names, num_frames=num_frames, size=size,
                            sampling_rate=sampling_rate, seed=seed, num_clips=num_clips, spatial_crops=3)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
        t0 = time.time()
        loader = seen = FirstSkipped(eval_loader(ds, batch_size, workers, dist, pin_memory=device.type == "cuda"))
        if progress and dist.main:
            from tqdm import tqdm

            loader = tqdm(loader, total=len(loader), desc="evaluating", unit="batch", dynamic_ncols=True, leave=False)
        try:
            video = evaluate(model, loader, device, dtype, dist, view=1,  # every clip decoded and run once for both
                             per_clip=per_clip)
        except torch.OutOfMemoryError as e:
            raise SystemExit(f"the GPU ran out of memory at --batch-size {batch_size} (3 crops of each clip in one "
                             f"forward): {out_of_memory(e)}; try a smaller --batch-size") from None
        if not video["clips"]:  # every clip unreadable (summed over the processes: all of them stop here)
            n, first = video.get("skipped", 0), seen.first
            reason = f" (the first, {first.path}: {first.reason})" if first is not None else ""
            raise SystemExit(f"no clip of {data} could be read: "
                             f"{'the only clip is' if n == 1 else f'all {n} clips are'} unreadable{reason}")
        seconds = round(time.time() - t0, 2)
        out = {"amp": {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype], "processes": dist.world}
        if per_clip:
            parts = dist.gather(video.pop("per_clip"))  # every process's clips, for rank 0 to write
            kept = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
            out["predictions"] = prediction_rows(kept, ds, model.class_names, data, seed)
            out["per_class"] = per_class(out["predictions"], model.class_names)
        return {"clip": {**video.pop("view"), "seconds": seconds}, "video": {**video, "seconds": seconds}, **out}


class FirstSkipped:
    """A loader's batches, keeping the first unreadable clip (`Skipped`): the error when none could be read
    names it."""

    def __init__(self, loader):
        self.loader, self.first = loader, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.first is None and batch["skipped"]:
                self.first = batch["skipped"][0]
            yield batch


def prediction_rows(kept: dict, ds, names: list[str], data: str, seed: int) -> list[dict]:
    """A row per clip, in the data's order, from `engine.evaluate(per_clip=True)`'s tensors: the clip (its path;
    for SynthMotion, the test clip's seed and index), its label, the prediction of the 3 crops averaged with its
    probability and the label's, the centre crop's prediction and probability, and whether the first is right."""
    items = getattr(ds, "items", None)  # (path, label) of a folder or CSV list
    rows = []
    for n in kept["index"].argsort().tolist():
        i, label = int(kept["index"][n]), int(kept["label"][n])
        probs, centre = kept["probs"][n], kept["view_probs"][n]
        top, centre_top = int(probs.argmax()), int(centre.argmax())
        rows.append({"clip": items[i][0] if items is not None else f"{data} test clip {i} (seed {seed})",
                     "label": names[label], "predicted": names[top], "probability": round(float(probs[top]), 6),
                     "label_probability": round(float(probs[label]), 6), "centre_predicted": names[centre_top],
                     "centre_probability": round(float(centre[centre_top]), 6), "correct": int(top == label)})
    return rows


def per_class(rows: list[dict], names: list[str]) -> list[dict]:
    """Each class with clips: how many, and the accuracy of the 3 crops averaged and of the centre crop."""
    out = []
    for name in names:
        mine = [r for r in rows if r["label"] == name]
        if mine:
            out.append({"class": name, "clips": len(mine), "acc1": sum(r["correct"] for r in mine) / len(mine),
                        "centre_acc1": sum(r["centre_predicted"] == name for r in mine) / len(mine)})
    return out


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "python -m timesformer.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="anything load_model opens (a run's checkpoint-last, a .pyth, a HF folder)")
    p.add_argument("data", help="synthmotion-temporal, synthmotion-appearance, synthmotion-distractor, ROOT "
                                "(ROOT/<split>/<class>/<clip> or ROOT/<split>.csv), or a CSV list (path,label)")
    p.add_argument("--split", default="val", help="split folder or CSV name (folders/CSV lists)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="clips per forward (3 crops each)")
    p.add_argument("--num-frames", type=at_least(1), help="frames per clip (default: the checkpoint's)")
    p.add_argument("--img-size", type=at_least(1), help="crop side (default: the checkpoint's)")
    p.add_argument("--sampling-rate", type=at_least(1), default=32, help="frame stride of a clip (real videos)")
    p.add_argument("--num-clips", type=at_least(1), default=512, help="SynthMotion test clips")
    p.add_argument("--seed", type=int, default=12345, help="SynthMotion seed (not training's: clips it never saw)")
    p.add_argument("--device", default="auto", help="auto (CUDA where available, else the CPU), cpu, cuda:1, ...")
    p.add_argument("--workers", type=workers_arg, default="auto",
                   help="data loader processes, or auto: on the CPU 1 for video files (0 for SynthMotion), the free "
                        "cores on a GPU")
    p.add_argument("--amp", default="auto", choices=AMP,
                   help="mixed precision, as tslab train's: auto is bf16 on CUDA (else fp16), none on the CPU")
    p.add_argument("--predictions", type=Path, metavar="FILE.csv",
                   help="write every clip's prediction: clip, label, predicted, probability, label_probability, "
                        "centre_predicted, centre_probability, correct")
    p.add_argument("--per-class", action="store_true", help="also print the accuracy of each class")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None, prog: str | None = None) -> None:
    p = build_parser(prog)
    a = p.parse_args(argv)
    if a.predictions is not None:  # before the evaluation, not after it: a file that cannot be written
        if a.predictions.is_dir():
            p.error(f"--predictions {a.predictions} is a folder: name a file ({a.predictions / 'predictions.csv'}?)")
        folder = next(f for f in a.predictions.resolve().parents if f.exists())
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            p.error(f"--predictions {a.predictions}: cannot write in {folder}")
    res = run(a.checkpoint, a.data, a.split, a.batch_size, a.num_frames, a.img_size, a.sampling_rate, a.num_clips,
              a.seed, a.device, a.workers, a.amp, progress=not a.no_progress,
              per_clip=a.predictions is not None or a.per_class)
    if int(os.environ.get("RANK", "0")):  # under torchrun, rank 0 prints the metrics of all processes
        return
    rows = res.pop("predictions", None)
    if a.predictions is not None:
        try:
            a.predictions.parent.mkdir(parents=True, exist_ok=True)
            write_csv(a.predictions, rows, None if rows else ["clip"])
        except OSError as e:
            raise SystemExit(f"--predictions {a.predictions}: {e.strerror or e}") from None
    if not a.per_class:
        res.pop("per_class", None)
    if a.json:
        print(json.dumps(res))
        return
    for name, label in (("clip", "clip accuracy (1 clip, centre crop)"),
                        ("video", "video accuracy (1 clip × 3 crops)")):
        m = res[name]
        top5 = f", top-5 {m['acc5']:.2%}" if "acc5" in m else ""
        skipped = f", {m['skipped']} unreadable clip{'s' * (m['skipped'] != 1)} skipped" if m.get("skipped") else ""
        amp = f", {res['amp']} autocast" if res["amp"] != "none" else ""
        clips = f"{m['clips']} clip{'s' * (m['clips'] != 1)}"
        print(f"{label}: top-1 {m['acc1']:.2%}{top5} over {clips} (loss {m['loss']:.4f}{amp}){skipped}")
    if a.per_class:
        width = max(len(c["class"]) for c in res["per_class"]) if res["per_class"] else 0
        print("per class: top-1 of 1 clip × 3 crops (centre crop), clips")
        for c in res["per_class"]:
            print(f"  {c['class']:<{width}}  {c['acc1']:7.2%} ({c['centre_acc1']:.2%})  {c['clips']}")
    if a.predictions is not None:
        wrong = sum(1 - r["correct"] for r in rows)
        print(f"wrote {a.predictions}: {len(rows)} clips, {wrong} predicted wrong (3 crops)")


if __name__ == "__main__":
    main()
