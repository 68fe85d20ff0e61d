"""SynthMotion: a procedural video dataset (no download) that makes the paper's point in miniature.

- `appearance`: the class is the colour of a moving object, visible in any single frame (like most of
  Kinetics);
- `temporal`: the class is the *order* in which the object visits one fixed set of positions (moving right,
  moving left, right and back, left and back), like Something-Something. The four orders are permutations
  of the same frames: for any clip of one class, the same random draw gives a clip of every other class made
  of exactly the same multiset of frames. A model that ignores frame order therefore cannot beat chance
  (25%), by construction — and `space_only`, which averages per-frame features, is such a model;
- `distractor`: two discs, a red one whose visiting order is the class (as in `temporal`) and a blue one that
  follows a random order of its own, in the other half of the frame: evidence with a known place, for
  scoring explanations (`object_masks` gives both objects' pixels).
Clips are generated on the fly from `(seed, split, index)`, so they are deterministic, and
`export_synthmotion` (`python -m timesformer.synthmotion OUT`) writes them as mp4 files in the folder layout
that `--data` takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .files import make_folder
from .video import transform_frames, write_video

TEMPORAL_CLASSES = ["moving right", "moving left", "right and back", "left and back"]
APPEARANCE_CLASSES = ["red", "green", "blue", "yellow"]
# SynthMotion's tasks and their classes; `distractor` is classed by the visiting order, as `temporal`
TASKS = {"temporal": TEMPORAL_CLASSES, "appearance": APPEARANCE_CLASSES, "distractor": TEMPORAL_CLASSES}
_COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 210, 40]], dtype=np.float32)
SIGNAL_COLOUR, DISTRACTOR_COLOUR = _COLOURS[0], _COLOURS[2]  # distractor task: red carries the class, blue not
_SHAPES = ("square", "disc", "diamond")
_SPLITS = {"train": 0, "val": 1, "test": 2}  # disjoint random streams
_BANK_FRAMES = 8  # frames' worth of standard normals in the noise bank


def motion_order(kind: int, T: int) -> np.ndarray:
    """Which of the T positions (0 = left .. T-1 = right) the object is at in each frame.

    All four orders are permutations of range(T): the clips of every class share the same frames.
    """
    forward = np.arange(T)
    there_and_back = np.concatenate([forward[0::2], forward[1::2][::-1]])  # 0 2 4 6 7 5 3 1
    return [forward, forward[::-1], there_and_back, there_and_back[::-1]][kind]


def _shape_masks(shape: str, radius: float, xs: np.ndarray, ys: np.ndarray, S: int) -> np.ndarray:
    """(T, S, S) bool: the object centred at (xs[i], ys[i]) in frame i."""
    grid = np.arange(S, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - xs[:, None, None]  # (T, 1, S)
    dy = grid[None, :, None] - ys[:, None, None]  # (T, S, 1)
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.85
    if shape == "disc":
        return dx**2 + dy**2 <= radius**2
    return np.abs(dx) + np.abs(dy) <= radius * 1.2


class SynthMotion(Dataset):
    """Procedural clips of moving objects on a noisy background; see the module docstring.

    `task`: "temporal", "appearance" or "distractor"; `split`: "train", "val" or "test" (disjoint random
    streams); `num_clips`: the dataset length (clips are generated on the fly from (seed, split, index)).
    """

    def __init__(self, task: str = "temporal", split: str = "train", num_clips: int = 1024, num_frames: int = 8,
                 size: int = 64, seed: int = 0, spatial_crops: int = 1, **_ignored):
        if task not in TASKS:
            raise ValueError(f"SynthMotion task must be one of {', '.join(TASKS)}, not {task!r}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {', '.join(_SPLITS)}, not {split!r}")
        for name, value, low in (("num_clips", num_clips, 0), ("num_frames", num_frames, 1), ("size", size, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"SynthMotion's {name} must be an integer ≥ {low}, got {value!r}")
        self.num_frames, self.size, self.spatial_crops, self.seed = num_frames, size, spatial_crops, seed
        self.task, self.split, self.num_clips = task, split, num_clips
        self.classes = list(TASKS[task])
        self._bank: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_clips

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs: a clip is a fixed draw from (seed, split, index), and needs no
        training augmentation."""

    def label(self, index: int) -> int:
        return int(np.random.default_rng([self.seed, _SPLITS[self.split], index, 1]).integers(len(self.classes)))

    def _noise(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """(count, S, S, 3) standard normal noise: windows of a fixed bank at random offsets. Drawing fresh
        normals was most of a clip's cost; the windows are as random for a model that cannot see the bank."""
        n = self.size * self.size * 3
        if self._bank is None:
            bank_rng = np.random.default_rng([self.seed, _SPLITS[self.split], 0xB4])
            self._bank = bank_rng.standard_normal(n * _BANK_FRAMES, dtype=np.float32)
        starts = rng.integers(0, n * (_BANK_FRAMES - 1), size=count)
        return np.stack([self._bank[s : s + n] for s in starts]).reshape(count, self.size, self.size, 3)

    def _draw(self, index: int, label: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """float32 (T, S, S, 3) frames and {object: (T, S, S) bool mask} of clip `index` with class `label`."""
        S, T = self.size, self.num_frames
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 2])
        # every nuisance parameter is drawn independently of the label
        bg = rng.uniform(10, 70, size=3).astype(np.float32)
        texture = 10 * self._noise(rng, 1)[0]  # static background texture
        noise = 6 * self._noise(rng, T)  # per path position of the object that carries the class
        objects = []  # (name, shape masks in path order, colour, visiting order), drawn in order
        if self.task == "distractor":
            signal_low = bool(rng.integers(2))  # the two objects keep to opposite halves: they never touch
            for name, colour, low in (("distractor", DISTRACTOR_COLOUR, not signal_low),
                                      ("signal", SIGNAL_COLOUR, signal_low)):
                radius = rng.uniform(0.12, 0.16) * S
                x0, x1 = rng.uniform(0.12, 0.25) * S, rng.uniform(0.75, 0.88) * S
                y = (rng.uniform(0.68, 0.78) if low else rng.uniform(0.22, 0.32)) * S
                ys = y + rng.normal(0, 0.02 * S, size=T)
                kind = label if name == "signal" else int(rng.integers(4))  # the distractor's own order
                masks = _shape_masks("disc", radius, np.linspace(x0, x1, T), ys, S)
                objects.append((name, masks, colour + rng.normal(0, 12, size=3).astype(np.float32), kind))
        else:
            radius = rng.uniform(0.18, 0.24) * S
            shape = _SHAPES[rng.integers(len(_SHAPES))]
            x0, x1 = rng.uniform(0.12, 0.25) * S, rng.uniform(0.75, 0.88) * S  # the path spans the frame
            y = rng.uniform(0.25, 0.75) * S
            ys = y + rng.normal(0, 0.02 * S, size=T)  # small vertical jitter
            colour = rng.uniform(60, 255, size=3).astype(np.float32)
            nuisance_kind = int(rng.integers(4))
            if self.task == "temporal":
                kind = label
            else:  # the colour is the class, the motion a nuisance
                colour = _COLOURS[label] + rng.normal(0, 12, size=3).astype(np.float32)
                kind = nuisance_kind
            objects.append(("signal", _shape_masks(shape, radius, np.linspace(x0, x1, T), ys, S), colour, kind))
        # the background of each frame goes with the signal's path position, so in `temporal` the clips of
        # all classes are permutations of the same frames
        signal_order = motion_order(objects[-1][3], T)
        video = bg + texture + noise[signal_order]  # (T, S, S, 3) in frame order
        masks = {}
        for name, shape_masks, colour, kind in objects:
            mask = shape_masks[motion_order(kind, T)]  # (T, S, S) in frame order
            video = np.where(mask[..., None], colour, video)
            for other in masks:  # a later object covers an earlier one
                masks[other] &= ~mask
            masks[name] = mask
        return video, masks

    def frames(self, index: int, label: int | None = None) -> tuple[np.ndarray, int]:
        """uint8 (T, size, size, 3) and the label of clip `index` (`label` forces the class, same draw)."""
        label = self.label(index) if label is None else label
        video, _ = self._draw(index, label)
        return np.clip(video, 0, 255).round().astype(np.uint8), label

    def object_masks(self, index: int, label: int | None = None) -> dict[str, np.ndarray]:
        """{"signal": bool (T, size, size)} — and "distractor" in the distractor task — the pixels each object
        covers in `frames(index)`, frame by frame: the ground truth an explanation is scored against."""
        return self._draw(index, self.label(index) if label is None else label)[1]

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        frames, label = self.frames(index)
        return transform_frames(frames, self.size, self.spatial_crops), label, index


def export_synthmotion(out, task: str = "temporal", num_train: int = 256, num_val: int = 64, seed: int = 0,
                       num_frames: int = 8, size: int = 64, fps: float = 8.0) -> Path:
    """Write SynthMotion clips as `OUT/<train|val>/<class>/<index>.mp4` (the folder layout)."""
    out = make_folder(out)
    for split, n in (("train", num_train), ("val", num_val)):
        ds = SynthMotion(task, split, n, num_frames, size, seed)
        for i in range(n):
            frames, label = ds.frames(i)
            folder = out / split / ds.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / f"{i:05d}.mp4", frames, fps=fps)
    return out


def main(argv=None) -> None:
    import argparse

    from .cli import at_least

    p = argparse.ArgumentParser(prog="python -m timesformer.synthmotion",
                                description="Export SynthMotion clips as mp4 files (ROOT/<split>/<class>/<clip>)")
    p.add_argument("out")
    p.add_argument("--task", default="temporal", choices=list(TASKS))
    p.add_argument("--train", type=at_least(0), default=256)
    p.add_argument("--val", type=at_least(0), default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=at_least(1), default=8)
    p.add_argument("--size", type=at_least(1), default=64)
    a = p.parse_args(argv)
    try:
        export_synthmotion(a.out, a.task, a.train, a.val, a.seed, a.num_frames, a.size)
    except OSError as e:  # a file where the folder should be, a full disk, ...
        p.exit(1, f"{p.prog}: error: {e}\n")
    print(f"wrote {a.train} + {a.val} clips to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
