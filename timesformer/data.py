"""Datasets: your own videos (a class folder tree or CSV lists) and SynthMotion, a procedural dataset.

Every dataset returns `(video, label, index)` with `video` `(views, 3, T, size, size)` normalised as
`read_clip` does, or a `Skipped(index, path, reason)` for a clip that cannot be read; `collate` drops the
skipped ones and counts them, so one broken file never ends an epoch.

SynthMotion (no download) makes the paper's point in miniature:
- `appearance`: the class is the colour of a moving object, visible in any single frame (like most of
  Kinetics);
- `temporal`: the class is the *order* in which the object visits one fixed set of positions (moving right,
  moving left, right and back, left and back), like Something-Something. The four orders are permutations
  of the same frames: for any clip of one class, the same random draw gives a clip of every other class made
  of exactly the same multiset of frames. A model that ignores frame order therefore cannot beat chance
  (25%), by construction — and `space_only`, which averages per-frame predictions, is such a model.
Clips are generated on the fly from `(seed, split, index)`, so they are deterministic, and
`export_synthmotion` writes them as mp4 files in the folder layout.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .video import VideoError, read_clip, transform_frames, write_video

VIDEO_EXTENSIONS = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv"}


@dataclass
class Skipped:
    """A clip that could not be read; `collate` drops it and counts it."""

    index: int
    path: str
    reason: str


def collate(batch: list) -> dict:
    """List of `(video, label, index)` or `Skipped` → dict(video, label, index, skipped: list[Skipped])."""
    good = [b for b in batch if not isinstance(b, Skipped)]
    skipped = [b for b in batch if isinstance(b, Skipped)]
    if not good:
        return {"video": None, "label": None, "index": None, "skipped": skipped}
    return {
        "video": torch.stack([b[0] for b in good]),  # (B, views, 3, T, S, S)
        "label": torch.tensor([b[1] for b in good], dtype=torch.long),
        "index": torch.tensor([b[2] for b in good], dtype=torch.long),
        "skipped": skipped,
    }


class ClipDataset(Dataset):
    """Base class: sampling options, per-(seed, epoch, index) randomness, and error handling."""

    classes: list[str]

    def __init__(self, num_frames=8, sampling_rate=32, size=224, train=False, spatial_crops=1, seed=0):
        self.num_frames, self.sampling_rate, self.size = num_frames, sampling_rate, size
        self.train, self.spatial_crops, self.seed = train, spatial_crops, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Training randomness depends on (seed, epoch, index) only: resumable and worker-independent."""
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, 0x5EED])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class VideoListDataset(ClipDataset):
    """Clips given as (path, label index) pairs, decoded with `read_clip`."""

    def __init__(self, items: list[tuple[str, int]], classes: list[str], **kw):
        super().__init__(**kw)
        self.items, self.classes = items, classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            video, _ = read_clip(path, self.num_frames, self.sampling_rate, self.size,
                                 1 if self.train else self.spatial_crops, train=self.train,
                                 rng=self.rng(index) if self.train else None)
        except (VideoError, OSError) as e:
            return Skipped(index, str(path), str(e))
        return video, label, index


def video_folder(root, split: str = "train", classes: list[str] | None = None, **kw) -> VideoListDataset:
    """`ROOT/<split>/<class>/<clip>`; classes are the sorted folder names of the split (or given, to keep the
    training split's order for validation)."""
    root = Path(root)
    base = root / split
    if not base.is_dir():
        splits = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(f"no split folder {base} (found: {', '.join(splits) or 'nothing'})")
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{base} has classes the training split lacks: {', '.join(unknown)}")
    items = []
    for label, name in enumerate(classes):
        folder = base / name
        if folder.is_dir():
            items += [(str(p), label) for p in sorted(folder.iterdir())
                      if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
    if not items:
        raise ValueError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) under {base}/<class>/")
    return VideoListDataset(items, list(classes), **kw)


def video_csv(path, classes: list[str] | None = None, root=None, **kw) -> VideoListDataset:
    """A Kinetics-style list: one `path,label` (or `path label`) per line; a header line is allowed.

    Labels are class names or integer indices; relative paths are taken relative to `root` (default: the
    list's folder). Classes are the sorted names (or 0..max for integer labels) unless given.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    rows = []
    with open(path, newline="") as f:
        for n, line in enumerate(f):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = next(csv.reader([line])) if "," in line else line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n + 1}: expected 'path,label', got {line!r}")
            clip, label = parts[0].strip(), parts[1].strip()
            if n == 0 and label.lower() in ("label", "class", "labels") and clip.lower() in ("path", "video", "file"):
                continue  # header
            rows.append((clip, label))
    if not rows:
        raise ValueError(f"{path} lists no clips")
    numeric = all(label.lstrip("-").isdigit() for _, label in rows)
    if classes is None:
        classes = ([str(i) for i in range(max(int(lb) for _, lb in rows) + 1)] if numeric
                   else sorted({lb for _, lb in rows}))
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for clip, label in rows:
        if numeric and label not in index:
            label_idx = int(label)
            if not 0 <= label_idx < len(classes):
                raise ValueError(f"{path}: label {label} is outside 0..{len(classes) - 1}")
        elif label not in index:
            raise ValueError(f"{path}: class {label!r} is not one of the training classes")
        else:
            label_idx = index[label]
        p = Path(clip)
        items.append((str(p if p.is_absolute() else root / p), label_idx))
    return VideoListDataset(items, list(classes), **kw)


# ---------------------------------------------------------------------------------------------
# SynthMotion
TEMPORAL_CLASSES = ["moving right", "moving left", "right and back", "left and back"]
APPEARANCE_CLASSES = ["red", "green", "blue", "yellow"]
TASKS = {"temporal": TEMPORAL_CLASSES, "appearance": APPEARANCE_CLASSES}  # SynthMotion's tasks and their classes
_COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 210, 40]], dtype=np.float32)
_SHAPES = ("square", "disc", "diamond")
_SPLITS = {"train": 0, "val": 1, "test": 2}  # disjoint random streams


def motion_order(kind: int, T: int) -> np.ndarray:
    """Which of the T positions (0 = left .. T-1 = right) the object is at in each frame.

    All four orders are permutations of range(T): the clips of every class share the same frames.
    """
    forward = np.arange(T)
    there_and_back = np.concatenate([forward[0::2], forward[1::2][::-1]])  # 0 2 4 6 7 5 3 1
    return [forward, forward[::-1], there_and_back, there_and_back[::-1]][kind]


class SynthMotion(ClipDataset):
    """Procedural clips of one object on a noisy background; see the module docstring.

    `task`: "temporal" or "appearance"; `split`: "train", "val" or "test" (disjoint random streams);
    `num_clips`: the dataset length (clips are generated on the fly from (seed, split, index)).
    """

    def __init__(self, task: str = "temporal", split: str = "train", num_clips: int = 1024, num_frames: int = 8,
                 size: int = 64, seed: int = 0, spatial_crops: int = 1, **_ignored):
        if task not in TASKS:
            raise ValueError(f"SynthMotion task must be one of {', '.join(TASKS)}, not {task!r}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {', '.join(_SPLITS)}, not {split!r}")
        # generated clips need no training augmentation: every index is already a fresh draw
        super().__init__(num_frames=num_frames, sampling_rate=1, size=size, train=False,
                         spatial_crops=spatial_crops, seed=seed)
        self.task, self.split, self.num_clips = task, split, num_clips
        self.classes = list(TASKS[task])

    def __len__(self) -> int:
        return self.num_clips

    def label(self, index: int) -> int:
        return int(np.random.default_rng([self.seed, _SPLITS[self.split], index, 1]).integers(len(self.classes)))

    def frames(self, index: int, label: int | None = None) -> tuple[np.ndarray, int]:
        """uint8 (T, size, size, 3) and the label of clip `index` (`label` forces the class, same draw)."""
        S, T = self.size, self.num_frames
        label = self.label(index) if label is None else label
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 2])
        # every nuisance parameter is drawn independently of the label
        radius = rng.uniform(0.18, 0.24) * S
        shape = _SHAPES[rng.integers(len(_SHAPES))]
        x0, x1 = rng.uniform(0.12, 0.25) * S, rng.uniform(0.75, 0.88) * S  # the path spans the frame
        y = rng.uniform(0.25, 0.75) * S
        bg = rng.uniform(10, 70, size=3).astype(np.float32)
        texture = rng.normal(0, 10, size=(S, S, 3)).astype(np.float32)  # static background texture
        noise = rng.normal(0, 6, size=(T, S, S, 3)).astype(np.float32)
        ys = y + rng.normal(0, 0.02 * S, size=T)  # small vertical jitter
        colour = rng.uniform(60, 255, size=3).astype(np.float32)
        nuisance_kind = int(rng.integers(4))
        if self.task == "temporal":
            kind = label
        else:  # the colour is the class, the motion a nuisance
            colour = _COLOURS[label] + rng.normal(0, 12, size=3).astype(np.float32)
            kind = nuisance_kind
        # render the T path positions (left to right, each with its own noise), then order them by class:
        # the clips of all classes are permutations of the same frames
        xs = np.linspace(x0, x1, T)
        grid = np.arange(S, dtype=np.float32) + 0.5
        dx = grid[None, None, :] - xs[:, None, None]  # (T, 1, S)
        dy = grid[None, :, None] - ys[:, None, None]  # (T, S, 1)
        if shape == "square":
            mask = np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.85
        elif shape == "disc":
            mask = dx**2 + dy**2 <= radius**2
        else:
            mask = np.abs(dx) + np.abs(dy) <= radius * 1.2
        base = np.where(mask[..., None], colour, bg + texture + noise)  # (T, S, S, 3) in path order
        video = base[motion_order(kind, T)]
        return np.clip(video, 0, 255).round().astype(np.uint8), label

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        frames, label = self.frames(index)
        return transform_frames(frames, self.size, self.spatial_crops), label, index


def export_synthmotion(out, task: str = "temporal", num_train: int = 256, num_val: int = 64, seed: int = 0,
                       num_frames: int = 8, size: int = 64, fps: float = 8.0) -> Path:
    """Write SynthMotion clips as `OUT/<train|val>/<class>/<index>.mp4` (the folder layout)."""
    out = Path(out)
    for split, n in (("train", num_train), ("val", num_val)):
        ds = SynthMotion(task, split, n, num_frames, size, seed)
        for i in range(n):
            frames, label = ds.frames(i)
            folder = out / split / ds.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / f"{i:05d}.mp4", frames, fps=fps)
    return out


# ---------------------------------------------------------------------------------------------
# `--data` → datasets (training and evaluation resolve it alike)
class Relabeled(Dataset):
    """A dataset whose labels are mapped into another class order (e.g. SynthMotion clips scored by a model
    trained on exported SynthMotion folders, whose classes are sorted by name)."""

    def __init__(self, dataset, mapping: list[int]):
        self.dataset, self.mapping = dataset, mapping

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return item if not isinstance(item, tuple) else (item[0], self.mapping[item[1]], item[2])


def synthmotion_task(data: str) -> str | None:
    """`synthmotion-appearance` → "appearance" (`synthmotion` alone: "temporal"); None for other data."""
    if not data.startswith("synthmotion"):
        return None
    return data.split("-", 1)[1] if "-" in data else "temporal"


def open_split(data: str, split: str, classes: list[str] | None = None, *, num_frames: int, size: int,
               sampling_rate: int = 32, seed: int = 0, num_clips: int = 512, spatial_crops: int = 1,
               train: bool = False) -> Dataset:
    """One split of `data`: SynthMotion's `split` stream (`num_clips` clips), `DATA/<split>/<class>/<clip>`,
    `DATA/<split>.csv`, or DATA itself when it is a CSV list.

    `classes` fixes the label order (the training split's, or a checkpoint's); a clip of another class is an
    error, except that SynthMotion's labels are mapped into that order when the names agree. `train` takes
    random crops of real videos (SynthMotion clips are fresh draws already).
    """
    task = synthmotion_task(data)
    if task is not None:
        ds = SynthMotion(task, split, num_clips, num_frames, size, seed, spatial_crops=spatial_crops)
        if classes is None or list(classes) == ds.classes:
            return ds
        if sorted(classes) != sorted(ds.classes):
            raise ValueError(f"the classes {list(classes)} are not SynthMotion {task}'s {ds.classes}")
        return Relabeled(ds, [list(classes).index(c) for c in ds.classes])
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{data}: no such file or folder (or use synthmotion-temporal / -appearance)")
    kw = dict(num_frames=num_frames, size=size, sampling_rate=sampling_rate, seed=seed, train=train,
              spatial_crops=spatial_crops)
    if path.is_dir() and (path / split).is_dir():
        return video_folder(path, split, classes, **kw)
    if path.is_dir() and (path / f"{split}.csv").is_file():
        path = path / f"{split}.csv"
    if path.is_file():
        return video_csv(path, classes, **kw)
    raise ValueError(f"{data}: expected a folder with {split}/<class>/<clip> or {split}.csv, a CSV list, "
                     "or synthmotion-temporal / synthmotion-appearance")


def build_datasets(data: str, *, num_frames: int, size: int, sampling_rate: int = 32, seed: int = 0,
                   train_clips: int = 2048, val_clips: int = 512, val_data: str | None = None, spatial_crops=1,
                   classes: list[str] | None = None):
    """`--data` → (train, val, class names).

    `synthmotion-temporal` / `synthmotion-appearance`; a folder with `train/<class>/` (and `val/` or `test/`);
    a folder with `train.csv` (and `val.csv` / `test.csv`); or a CSV file (validation from `val_data`, or the
    same name with train→val when that file exists). `val` may be None when there is no validation data.
    """
    kw = dict(num_frames=num_frames, size=size, sampling_rate=sampling_rate, seed=seed)
    train = open_split(data, "train", classes, num_clips=train_clips, train=True, **kw)
    source = _validation_source(data, val_data)
    val = (open_split(source[0], source[1], train.classes, num_clips=val_clips, spatial_crops=spatial_crops, **kw)
           if source else None)
    return train, val, train.classes


def _validation_source(data: str, val_data: str | None) -> tuple[str, str] | None:
    """(data, split) of the validation clips that go with the training split of `data`."""
    if synthmotion_task(data) is not None:
        return data, "val"
    path = Path(data)
    if path.is_dir() and (path / "train").is_dir():
        split = next((s for s in ("val", "test") if (path / s).is_dir()), None)
        return (data, split) if split else None
    if val_data is not None:  # only CSV lists take --val-data
        return val_data, "val"
    if path.is_dir():
        path = path / "train.csv"
    siblings = (path.with_name(path.name.replace("train", s)) for s in ("val", "test"))
    found = next((p for p in siblings if p != path and p.is_file()), None)
    return (str(found), "val") if found else None


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Export SynthMotion clips as mp4 files (ROOT/<split>/<class>/<clip>)")
    p.add_argument("out")
    p.add_argument("--task", default="temporal", choices=list(TASKS))
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--val", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args(argv)
    export_synthmotion(a.out, a.task, a.train, a.val, a.seed, a.num_frames, a.size)
    print(f"wrote {a.train} + {a.val} clips to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
