"""Data throughput: clips/s per CPU core of SynthMotion and of mp4 decoding, and of DataLoader workers.

    python bench/data.py [--sizes 224 32] [--workers 0 1 2] [--seconds 5] [--json out.json]

Per core: one process, one torch thread, `dataset[i]` in a loop (what one DataLoader worker does), clips per
second of the process's CPU time, which other jobs on a shared machine do not inflate.
- SynthMotion temporal at each size (8 frames; the clip a training step gets);
- mp4: Kinetics-like files (`--video-frames` frames of 340×256 at 30 fps, H.264 crf 23, textured and noisy
  like SynthMotion) read as training does: 8 frames 32 apart from a random start, short side rescaled to
  224–280, a random 224² crop (decord, seeking).
Loaders: `--workers W` runs a DataLoader over SynthMotion at the first size, batch 16, as `tslab train` builds
it (persistent workers, collate into shared memory), and reports clips/s reaching the training loop.
Writes bench/results/data-<cores>cores.json unless --json names another file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from table1 import cpu_name

from timesformer.cli import HelpFormatter
from timesformer.data import TrainLoader, VideoListDataset
from timesformer.synthmotion import SynthMotion
from timesformer.video import write_video

ROOT = Path(__file__).resolve().parent.parent


def rate(get, seconds: float) -> tuple[float, int]:
    """Items per CPU second of `get(i)` for i = 0, 1, ... over about `seconds` of CPU time (after a warm-up)."""
    get(0)
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds or n < 3:
        get(1 + n)
        n += 1
    return n / (time.process_time() - start), n


def kinetics_like_videos(folder: Path, count: int, frames: int) -> list[Path]:
    """`count` mp4 files of `frames` frames, 340×256 at 30 fps: SynthMotion's textured, noisy background with
    its object crossing the frame, which compresses about as badly as real footage."""
    out = []
    for i in range(count):
        clip = SynthMotion("temporal", "train", count, num_frames=frames, size=340, seed=i).frames(0)[0]
        path = folder / f"{i:03d}.mp4"
        write_video(path, np.ascontiguousarray(clip[:, 42:298]), fps=30, crf=23)  # (T, 256, 340, 3)
        out.append(path)
    return out


def loader_rate(size: int, workers: int, seconds: float, batch: int = 16) -> float:
    ds = SynthMotion("temporal", "train", 100_000, 8, size, 0)
    loader = TrainLoader(ds, range(len(ds)), batches_per_epoch=len(ds) // batch, batch_size=batch, workers=workers,
                         prefetch=4, seed=0)  # as tslab train feeds itself
    it = loader.start(0)
    for _ in range(max(2, workers)):  # the workers' start and first batches are not the steady state
        next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += next(it)["video"].shape[0]
    return n / (time.perf_counter() - start)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="tslab bench data", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[224, 32], help="SynthMotion frame sizes")
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="DataLoader worker counts to time")
    ap.add_argument("--videos", type=int, default=8, help="mp4 files (0: skip decoding)")
    ap.add_argument("--video-frames", type=int, default=300, help="frames of each mp4 file")
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--json", type=Path, help="the result file (default: bench/results/data-<cores>cores.json)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = {"cpu": cpu_name(), "cores": os.cpu_count(),
              "torch": torch.__version__, "per_core": {}, "loader": {}}
    for size in a.sizes:
        ds = SynthMotion("temporal", "train", 1_000_000, 8, size, 0)
        r, n = rate(lambda i, ds=ds: ds[i], a.seconds)
        result["per_core"][f"synthmotion {size}"] = round(r, 1)
        print(f"SynthMotion {size}²: {r:8.1f} clips/s per core ({1e3 / r:.2f} ms/clip, {n} clips)", flush=True)
    if a.videos:
        with tempfile.TemporaryDirectory() as d:
            paths = kinetics_like_videos(Path(d), a.videos, a.video_frames)
            ds = VideoListDataset([(str(p), 0) for p in paths], ["x"], num_frames=8, sampling_rate=32, size=224,
                                  train=True)
            r, n = rate(lambda i: ds[i % len(paths)], a.seconds)
            backend = "decord" if _has("decord") else "pyav"
            key = f"mp4 340x256 {a.video_frames} frames -> 8x224 ({backend})"
            result["per_core"][key] = round(r, 1)
            print(f"{key}: {r:8.1f} clips/s per core ({1e3 / r:.2f} ms/clip, {n} clips)", flush=True)
    for w in a.workers:
        r = loader_rate(a.sizes[0], w, a.seconds)
        result["loader"][f"synthmotion {a.sizes[0]}, {w} workers"] = round(r, 1)
        print(f"DataLoader, SynthMotion {a.sizes[0]}², {w} workers: {r:8.1f} clips/s", flush=True)
    out = a.json or ROOT / "bench" / "results" / f"data-{os.cpu_count()}cores.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
