"""What the repository ships beside the code (assets/): trained models, each with a model card, and sample clips.

`load_model(name)` opens a shipped model by its name (its folder under assets/models/); a path always wins
over a name. Each folder holds `config.json`, `model.safetensors` (fp16 weights, cast to the fp32 model on
loading) and `README.md`, the model card: YAML front matter with the machine-readable facts (task, held-out
accuracy and how it was measured, the training command, hardware and wall time), then prose for people.
`bench/shipped_models.py` trains, exports and writes every one of them.
"""

from __future__ import annotations

from pathlib import Path

from .config import ATTENTION_TYPES
from .video import VIDEO_EXTENSIONS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MODELS = ASSETS / "models"  # one folder per trained model: model.safetensors, config.json, README.md (its card)
SAMPLES = ASSETS / "samples"
TEMPORAL = "synthmotion-temporal"  # the task of the five per-scheme models (Table 1 in miniature)
DEFAULT_NAME = f"{TEMPORAL}-divided_space_time"  # the app's default: the paper's scheme on the temporal task
DEFAULT_MODEL = MODELS / DEFAULT_NAME
CARD = "README.md"


def models(folder: Path | None = None) -> dict[str, Path]:
    """{name: folder} of the shipped models (default folder: assets/models/), sorted by name."""
    folder = Path(folder) if folder is not None else MODELS
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "config.json").is_file()}


def find_model(name: str) -> Path | None:
    """The folder of the shipped model called `name`, or None."""
    return models().get(name)


def card(model: str | Path) -> dict:
    """The front matter of a model's card (a shipped name or a folder) as a dict; {} when it has none.

    Keys written by bench/shipped_models.py: `name`, `task`, `attention_type`, `parameters`, `held_out`
    (`accuracy`, `clips`, `split`, `seed`, `command`), `validation_accuracy`, `train` (`command`, `steps`,
    `wall_s`, `hardware`), `weights`.
    """
    import yaml

    folder = Path(model)
    if not folder.is_dir():
        folder = find_model(str(model)) or folder
    path = folder / CARD
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    head, sep, _ = text[4:].partition("\n---")
    if not sep:
        return {}
    try:
        data = yaml.safe_load(head)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def scheme_models(task: str = TEMPORAL, folder: Path | None = None) -> dict[str, Path]:
    """{attention_type: folder} of the shipped models trained on `task` (by their cards), one per scheme, in
    the order of ATTENTION_TYPES; the first by name where a scheme has several."""
    found: dict[str, Path] = {}
    for path in models(folder).values():
        meta = card(path)
        scheme = meta.get("attention_type")
        if meta.get("task") == task and scheme in ATTENTION_TYPES:
            found.setdefault(scheme, path)
    return {s: found[s] for s in ATTENTION_TYPES if s in found}


def held_out_accuracy(model: str | Path) -> float | None:
    """The held-out accuracy its card reports (a fraction), or None."""
    value = card(model).get("held_out", {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) else None


def summary(meta: dict) -> str:
    """One line for people from a card's front matter: the held-out accuracy and what it was measured on."""
    held = meta.get("held_out") or {}
    if not isinstance(held.get("accuracy"), (int, float)):
        return "its model card gives no held-out accuracy"
    task = str(meta.get("task", "")).replace("synthmotion-", "SynthMotion ")
    clips = f"{held['clips']:,} " if isinstance(held.get("clips"), int) else ""
    return f"held-out accuracy {held['accuracy']:.1%} on {clips}fresh {task} clips (its model card)"


def sample_clips(folder: Path = SAMPLES) -> list[Path]:
    """The video files of `folder` (default: the shipped samples), sorted by name; [] if it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
