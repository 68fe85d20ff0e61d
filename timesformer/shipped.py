"""What the repository ships beside the code: a trained default model and sample clips (assets/)."""

from __future__ import annotations

from pathlib import Path

from .video import VIDEO_EXTENSIONS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS / "default_model"  # tiny divided_space_time on SynthMotion temporal (docs/results.md)
SAMPLES = ASSETS / "samples"


def sample_clips(folder: Path = SAMPLES) -> list[Path]:
    """The video files of `folder` (default: the shipped samples), sorted by name; [] if it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
