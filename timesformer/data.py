"""Datasets: your own videos (a class folder tree or CSV lists), SynthMotion (`timesformer.synthmotion`, a
procedural dataset), and `--data` resolved into them for training and evaluation alike.

Every dataset returns `(video, label, index)` with `video` `(views, 3, T, size, size)` normalised as
`read_clip` does, or a `Skipped(index, path, reason)` for a clip that cannot be read; `collate` drops the
skipped ones and counts them, so one broken file never ends an epoch.
"""

from __future__ import annotations

import argparse
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .csvlist import read_csv_list
from .synthmotion import APPEARANCE_CLASSES, TASKS, TEMPORAL_CLASSES, SynthMotion, export_synthmotion
from .video import VIDEO_EXTENSIONS, VideoError, read_clip, temporal_median

__all__ = ["APPEARANCE_CLASSES", "TASKS", "TEMPORAL_CLASSES", "SynthMotion", "export_synthmotion", "Skipped",
           "collate", "ClipDataset", "VideoListDataset", "video_folder", "video_csv", "Relabeled",
           "synthmotion_task", "open_split", "build_datasets", "auto_workers", "workers_arg", "EpochBatches",
           "AtEpoch", "TrainLoader", "FrameDrop"]


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
        # in a worker, default_collate stacks straight into shared memory: no second copy to send the batch
        "video": default_collate([b[0] for b in good]),  # (B, views, 3, T, S, S)
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

    def missing(self) -> list[str]:
        """The listed files that are not there (a partial download): each is skipped when drawn."""
        return [path for path, _ in self.items if not os.path.exists(path)]

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
    # hidden folders (.ipynb_checkpoints, .DS_Store's kin) are no classes
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    from_folders = classes is None  # the training split: every folder is a class
    if from_folders:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{base} has class folders that none of the known classes (the training split's, or the "
                         f"checkpoint's) names: {', '.join(unknown)}")
    items = []
    for label, name in enumerate(classes):
        folder = base / name
        clips = [(str(p), label) for p in sorted(folder.iterdir())
                 if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS] if folder.is_dir() else []
        if not clips and from_folders:  # a class without clips would change the class count and the labels
            raise ValueError(f"class folder {folder} holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}): "
                             "add its clips or remove the folder")
        items += clips
    if not items:
        raise ValueError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) under {base}/<class>/")
    return VideoListDataset(items, list(classes), **kw)


def video_csv(path, classes: list[str] | None = None, root=None, **kw) -> VideoListDataset:
    """A Kinetics-style list: one `path,label` (or `path label`) per line; a header line is allowed.

    Labels are class names or integer indices; relative paths are taken relative to `root` (default: the
    list's folder). Classes are the sorted names (or 0..max for integer labels) unless given
    (`timesformer.csvlist.read_csv_list`).
    """
    items, classes = read_csv_list(path, classes, root)
    return VideoListDataset(items, classes, **kw)


# ---------------------------------------------------------------------------------------------
# feeding a training loop: how many workers, and one loader whose workers live for the whole run
MAX_AUTO_WORKERS = 16  # beyond this, more processes mostly add memory (each holds its prefetched batches)


def auto_workers(device: torch.device, processes_per_node: int = 1, decodes: bool = False) -> int:
    """`--workers auto`: on a GPU, every core this process may use except one (the training loop's), split
    between the processes of this node, at most MAX_AUTO_WORKERS. On the CPU, where the model computes on every
    core already, one worker where clips are decoded from video files (`decodes`) and the process has two cores
    or more, else none: SynthMotion's clips cost little beside a step, decoding does not (docs/training.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores //= max(1, processes_per_node)
    if device.type == "cpu":
        return int(decodes and cores >= 2)
    return max(1, min(MAX_AUTO_WORKERS, cores - 1))


def workers_arg(value: str) -> int | str:
    """argparse type of `--workers`: "auto" or a number ≥ 0."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number ≥ 0, got {value!r}")
    return n


class EpochBatches(Sampler):
    """A batch sampler that yields one epoch's batches at a time (`set` them before iterating), each index
    paired with its epoch, so that one DataLoader with persistent workers serves every epoch (`AtEpoch`)."""

    def __init__(self):
        self.epoch, self.batches = 0, []

    def set(self, epoch: int, batches: list[list[int]]) -> None:
        self.epoch, self.batches = epoch, batches

    def __iter__(self):
        for batch in self.batches:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.batches)


class AtEpoch(Dataset):
    """`dataset[(epoch, index)]`: item `index` with the training randomness of `epoch`. Persistent workers
    keep their own copy of the dataset, which never sees `set_epoch` in the main process; the epoch travels
    with each index instead."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def ignore_interrupts(worker_id: int) -> None:
    """A loader worker's start: Ctrl-C and a scheduler's SIGTERM reach every process of the job, and the workers
    leave both to the main process, which stops them (else a worker ends and the loader fails for it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainLoader:
    """The training loader of a run: one DataLoader whose workers start once and stay (`persistent_workers`),
    each preparing `prefetch` batches ahead, fed one epoch's batches at a time (`EpochBatches`, `AtEpoch`).

    `start(epoch)` hands the loader that epoch's batches and returns their iterator: the workers begin on them
    at once. The training loop starts the next epoch before it validates and saves, so that its first batches
    are ready when it begins. `sampler`: the run's order of indices (a `DistributedSampler`, or any iterable;
    `set_epoch` is called where it has one); an epoch is its first `batches_per_epoch` batches.
    """

    def __init__(self, dataset, sampler, *, batches_per_epoch: int, batch_size: int, workers: int, prefetch: int,
                 seed: int, pin_memory: bool = False):
        self.dataset, self.sampler = dataset, sampler
        self.batches_per_epoch, self.batch_size = batches_per_epoch, batch_size
        self.batches = EpochBatches()
        kw = dict(persistent_workers=True, prefetch_factor=prefetch) if workers else {}
        # a private generator: creating a loader must not draw from the global RNG (resume = same stream)
        self.loader = DataLoader(AtEpoch(dataset), batch_sampler=self.batches, num_workers=workers,
                                 collate_fn=collate, pin_memory=pin_memory, worker_init_fn=ignore_interrupts,
                                 generator=torch.Generator().manual_seed(seed), **kw)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches of `epoch`."""
        for part in (self.sampler, self.dataset):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        # whole optimizer steps only: leftover micro-batches would leak gradients into the next epoch
        indices = list(self.sampler)[: self.batches_per_epoch * self.batch_size]
        return [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]

    def start(self, epoch: int, skip: int = 0):
        """An iterator over `epoch`'s batches after the first `skip` (the micro-batches a resumed epoch has done)."""
        self.batches.set(epoch, self.epoch_batches(epoch)[skip:])
        return iter(self.loader)


class FrameDrop(Dataset):
    """Training augmentation (`--frame-drop P`): each frame of a clip becomes, with probability `p`, the clip's
    per-pixel median over time (`temporal_median`: the still background, without what moves), so the
    evidence in that frame is gone. A model trained so cannot rest its decision on a few fixed frames while
    ignoring the rest. At least one frame is always kept; the draw depends on (seed, epoch, index) only, so
    a resumed run and any number of workers see the same clips."""

    def __init__(self, dataset, p: float, seed: int = 0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"--frame-drop must be at least 0 and below 1, got {p}")
        self.dataset, self.p, self.seed, self.epoch = dataset, p, seed, 0
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def dropped(self, index: int, num_frames: int) -> np.ndarray:
        """bool (T,): the frames of clip `index` that this epoch replaces."""
        rng = np.random.default_rng([self.seed, self.epoch, index, 0xF4D])
        drop = rng.random(num_frames) < self.p
        if drop.all():
            drop[rng.integers(num_frames)] = False
        return drop

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, Skipped):
            return item
        video, label, idx = item  # video (views, 3, T, S, S)
        drop = torch.from_numpy(self.dropped(index, video.shape[2]))
        if drop.any():
            video = torch.where(drop[:, None, None], temporal_median(video), video)
        return video, label, idx


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
        raise FileNotFoundError(f"{data}: no such file or folder (or use synthmotion-temporal / -appearance / "
                                "-distractor)")
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
    if synthmotion_task(data) is not None and val_clips == 0:
        source = None  # --val-clips 0: no validation, rather than rows of 0 clips scored 0
    val = (open_split(source[0], source[1], train.classes, num_clips=val_clips, spatial_crops=spatial_crops, **kw)
           if source else None)
    return train, val, train.classes


def _validation_source(data: str, val_data: str | None) -> tuple[str, str] | None:
    """(data, split) of the validation clips that go with the training split of `data`."""
    path = Path(data)
    if val_data is not None and (synthmotion_task(data) is not None or (path / "train").is_dir()):
        raise ValueError(f"--val-data {val_data} goes with a CSV list; {data} has a validation split of its own")
    if synthmotion_task(data) is not None:
        return data, "val"
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


if __name__ == "__main__":  # the earlier home of the SynthMotion export command
    from timesformer.synthmotion import main

    main()
