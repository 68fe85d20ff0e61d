"""What every checkpoint reader shares: the error type, reading files without executing code from them,
and the `Checkpoint` a reader returns (the weights renamed to this model's layout, and the config
fields the file tells)."""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TimeSformerConfig


class CheckpointError(ValueError):
    """A checkpoint that cannot be opened, with the reason in words."""


# An extra attention step's parameters (`temporal_norm1`, `local_attn`, `width_fc`, ...); the main step is
# plain `norm1`/`attn`, exactly an image ViT's block.
EXTRA_STEP = re.compile(r"^blocks\.\d+\.[a-z]+_(norm1|attn|fc)\.")


@dataclass
class Checkpoint:
    """Weights read from a file and renamed to this model's layout (`blocks.i.attn.qkv.weight`, ...), with
    the config fields the file tells (the rest come from the defaults or the caller's overrides)."""

    format: str  # a key of timesformer.checkpoints.FORMATS
    state: dict[str, torch.Tensor]
    fields: dict
    source: str

    @property
    def is_image(self) -> bool:
        """No time embedding and no extra attention step: an image ViT (a space-only model is one too)."""
        return "time_embed" not in self.state and not any(EXTRA_STEP.match(k) for k in self.state)


# --------------------------------------------------------------------------------------------------
# Reading files


def _numpy_globals() -> list:
    """numpy scalars and arrays, which mmcv and mmengine leave in checkpoint metadata (scores as
    np.float64). Rebuilding one reads raw bytes into a fresh array and calls nothing else, so they join
    torch's weights-only set; numpy 1.x pickles name the same functions under numpy.core."""
    core = np._core.multiarray
    allowed = [np.ndarray, np.dtype, core.scalar, core._reconstruct]
    allowed += [type(np.dtype(code)) for code in "?bhilqpBHILQPefdgFDG"]  # the numeric dtypes' classes
    return allowed + [(core.scalar, "numpy.core.multiarray.scalar"),
                      (core._reconstruct, "numpy.core.multiarray._reconstruct")]


def _refusal(path: Path, what: str) -> CheckpointError:
    hint = "Save the weights alone (torch.save(model.state_dict())) or as safetensors."
    if re.search(r"\bimport (mmengine|mmcv|mmaction)\.", what):
        hint = ("This looks like an mmaction2 training checkpoint; where mmengine is installed and you trust the "
                "file, keep its weights: torch.save({'state_dict': torch.load(f, weights_only=False)"
                "['state_dict']}, 'weights.pth').")
    return CheckpointError(
        f"refusing to load {path}: unpickling it would {what}, and a checkpoint must hold only tensors and "
        f"plain containers (unpickling objects can run code). {hint}"
    )


def torch_load(path: Path) -> object:
    """`torch.load(weights_only=True)`: tensors, plain containers and numpy numbers, never code."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # warned before refusing
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"import {found.group(1)}" if found else None
        if what is None:
            try:  # a well-formed pickle that the safe loader rejects? (genops parses, it never executes)
                globals_ = [arg for op, arg, _ in pickletools.genops(path.read_bytes()) if "GLOBAL" in op.name]
                what = f"import {globals_[0]}" if globals_ and globals_[0] else "build Python objects"
            except Exception:
                raise CheckpointError(f"{path} is not a readable PyTorch checkpoint") from None
        raise _refusal(path, what) from None
    except Exception as e:  # truncated zip, not a checkpoint at all, ...
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (older ones a pickle)
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is neither a zip archive nor a pickle, "
                                  "as torch.save writes") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from None


def safetensors_load(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def make_config(fields: dict, overrides: dict, what: str) -> TimeSformerConfig:
    """The file's fields with the caller's overrides on top. Class names that no longer fit an overridden
    class count are dropped (the head is then new, or the load fails naming it); names that do not fit the
    file's own count are an error (a broken config, whose names would otherwise become '0', '1', ...)."""
    merged = {**fields, **overrides}
    names = merged.get("class_names")
    if ("num_classes" in overrides and "class_names" not in overrides and names is not None
            and len(names) != merged["num_classes"]):
        merged["class_names"] = None
    try:
        return TimeSformerConfig.from_dict(merged)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build a config for {what}: {e}") from None
