"""Where the app finds its models, sample clips and training runs, where its models run, and its limits.

TSLAB_MODELS (the folder of shipped models, one sub-folder each), TSLAB_DEFAULT_MODEL (the model the app opens
on), TSLAB_SAMPLES, TSLAB_RUNS and TSLAB_EXPLAIN_RESULTS point the app elsewhere (the tests do);
TSLAB_MAX_RECORDING_GIB bounds the memory of one clip's attention recording; TSLAB_DEVICE
says where its models run (`auto`, the default: the first GPU where there is one, else the CPU; or `cpu`,
`cuda`, `cuda:N`). Relative paths, in these and typed in the app, are taken from the folder `tslab app` was
started in (TSLAB_WORKDIR, which it sets; else the app's working folder: the repository's for `make app`).
Read these as `settings.NAME` at the time of use, so a changed setting takes effect.
"""

from __future__ import annotations

import os
from pathlib import Path

from timesformer import shipped

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = Path(os.environ.get("TSLAB_WORKDIR") or os.getcwd())


def here(path: str | Path) -> Path:
    """A path typed by the user, taken from WORKDIR when it is relative."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else WORKDIR / p


def _setting(name: str, default: Path) -> Path:
    return here(os.environ[name]) if os.environ.get(name) else default


MODELS = _setting("TSLAB_MODELS", shipped.MODELS)
DEFAULT_MODEL = _setting("TSLAB_DEFAULT_MODEL", shipped.DEFAULT_MODEL)
SAMPLES = _setting("TSLAB_SAMPLES", shipped.SAMPLES)
RUNS = _setting("TSLAB_RUNS", WORKDIR / "runs")  # where `tslab train` puts its runs (--out runs/...)
DEVICE = os.environ.get("TSLAB_DEVICE", "auto")
# scores of every explanation method on the shipped models (`tslab bench explain`)
EXPLAIN_RESULTS = _setting("TSLAB_EXPLAIN_RESULTS", ROOT / "bench" / "results" / "explain.json")
MAX_VIDEO_FRAMES = 20_000  # about 11 minutes at 30 fps: longer videos are refused before any model runs
DISPLAY_PX = 128  # frames are upscaled (nearest) to at least this side for display
HEAVY_PARAMS = 20e6  # above this many parameters, five-scheme runs on a CPU wait for a button (ViT-B: 86M-157M)
# the memory one clip's attention recording (every layer, as rollout needs) may take; unset: half the memory of
# the device the models run on. Frames × crop sizes past it are refused in the sidebar before any model runs.
MAX_RECORDING_GIB = float(os.environ["TSLAB_MAX_RECORDING_GIB"]) if os.environ.get("TSLAB_MAX_RECORDING_GIB") else None
