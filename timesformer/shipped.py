"""What the repository ships beside the code (assets/): trained models, each with a model card, and sample clips.

`load_model(name)` opens a shipped model by its name (its folder under assets/models/); a path always wins
over a name.
"""

from __future__ import annotations

from pathlib import Path

from .video import VIDEO_EXTENSIONS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS / "default_model"  # tiny divided_space_time on SynthMotion temporal (docs/results.md)
SAMPLES = ASSETS / "samples"
MODELS = ASSETS / "models"  # one folder per trained model: model.safetensors, config.json, README.md (its card)


def models() -> dict[str, Path]:
    """{name: folder} of the shipped models, by name."""
    if not MODELS.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS.iterdir()) if (p / "config.json").is_file()}


def find_model(name: str) -> Path | None:
    """The folder of the shipped model called `name`, or None."""
    return models().get(name)


def sample_clips(folder: Path = SAMPLES) -> list[Path]:
    """The video files of `folder` (default: the shipped samples), sorted by name; [] if it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
