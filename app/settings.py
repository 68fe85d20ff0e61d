"""Where the app finds its models, sample clips and training runs, where its models run, and its limits.

TSLAB_MODELS (the folder of shipped models, one sub-folder each), TSLAB_DEFAULT_MODEL (the model the app opens
on), TSLAB_SAMPLES and TSLAB_RUNS point the app elsewhere (the tests do); TSLAB_DEVICE says where its models
run (`auto`, the default: the first GPU where there is one, else the CPU; or `cpu`, `cuda`, `cuda:N`). Read
these as `settings.NAME` at the time of use, so a changed setting takes effect.
"""

from __future__ import annotations

import os
from pathlib import Path

from timesformer import shipped

ROOT = Path(__file__).resolve().parents[1]  # relative paths typed in the app are taken from the repository
MODELS = Path(os.environ.get("TSLAB_MODELS", shipped.MODELS))
DEFAULT_MODEL = Path(os.environ.get("TSLAB_DEFAULT_MODEL", shipped.DEFAULT_MODEL))
SAMPLES = Path(os.environ.get("TSLAB_SAMPLES", shipped.SAMPLES))
RUNS = Path(os.environ.get("TSLAB_RUNS", ROOT / "runs"))
DEVICE = os.environ.get("TSLAB_DEVICE", "auto")
# scores of every explanation method on the shipped models (`tslab bench explain`)
EXPLAIN_RESULTS = Path(os.environ.get("TSLAB_EXPLAIN_RESULTS", ROOT / "bench" / "results" / "explain.json"))
MAX_VIDEO_FRAMES = 20_000  # about 11 minutes at 30 fps: longer videos are refused before any model runs
DISPLAY_PX = 128  # frames are upscaled (nearest) to at least this side for display
HEAVY_PARAMS = 20e6  # above this many parameters, five-scheme runs on a CPU wait for a button (ViT-B: 86M-157M)
