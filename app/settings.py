"""Where the app finds its models, sample clips and training runs, and the limits it enforces.

TSLAB_DEFAULT_MODEL, TSLAB_SAMPLES and TSLAB_RUNS point the app elsewhere (the tests do). Read these as
`settings.NAME` at the time of use, so a changed setting takes effect.
"""

from __future__ import annotations

import os
from pathlib import Path

from timesformer import shipped

ROOT = Path(__file__).resolve().parents[1]  # relative paths typed in the app are taken from the repository
DEFAULT_MODEL = Path(os.environ.get("TSLAB_DEFAULT_MODEL", shipped.DEFAULT_MODEL))
SAMPLES = Path(os.environ.get("TSLAB_SAMPLES", shipped.SAMPLES))
RUNS = Path(os.environ.get("TSLAB_RUNS", ROOT / "runs"))
MAX_VIDEO_FRAMES = 20_000  # about 11 minutes at 30 fps: longer videos are refused before any model runs
DISPLAY_PX = 128  # frames are upscaled (nearest) to at least this side for display
HEAVY_PARAMS = 20e6  # above this many parameters, five-scheme runs wait for a button (ViT-B: 86M-157M)
