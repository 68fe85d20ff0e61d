"""SynthMotion: a procedural video dataset (no download) that makes the paper's point in miniature.

- `appearance`: the class is the colour of a moving object, visible in any single frame (like most of
  Kinetics);
- `temporal`: the class is the *order* in which the object visits one fixed set of positions (moving right,
  moving left, right and back, left and back), like Something-Something. The four orders are permutations
  of the same frames: for any clip of one class, the same random draw gives a clip of every other class made
  of exactly the same multiset of frames. A model that ignores frame order therefore cannot beat chance
  (25%), by construction — and `space_only`, which averages per-frame predictions, is such a model.
Clips are generated on the fly from `(seed, split, index)`, so they are deterministic, and
`export_synthmotion` (`python -m timesformer.synthmotion OUT`) writes them as mp4 files in the folder layout
that `--data` takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .video import transform_frames, write_video

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


class SynthMotion(Dataset):
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
        self.num_frames, self.size, self.spatial_crops, self.seed = num_frames, size, spatial_crops, seed
        self.task, self.split, self.num_clips = task, split, num_clips
        self.classes = list(TASKS[task])

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


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m timesformer.synthmotion",
                                description="Export SynthMotion clips as mp4 files (ROOT/<split>/<class>/<clip>)")
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
