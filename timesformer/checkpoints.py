"""Loading and saving models without executing code from the file.

`load_model(source, **overrides)` opens every format of `FORMATS`: our own folders (`save_model`; a training
run's folder opens as its `checkpoint-last`), official TimeSformer checkpoints, mmaction2 checkpoints,
HuggingFace Timesformer folders and hub ids, and image ViTs (timm state dicts, HuggingFace ViT folders) to start
from; also the name of a model shipped in assets/models/ (`timesformer.shipped.models()`). Loading is two
steps, which `--init` uses apart: `read_checkpoint(source)` reads the file into a `Checkpoint` (weights in the
official layout, the config fields the file tells), and `from_checkpoint(checkpoint, **overrides)` builds the
model:
- from an image layout (no time embedding, no extra steps) it builds any scheme (`formats.vit`);
- `time_embed` and `pos_embed` are resized to an overridden `num_frames` / `img_size`, with one log line;
- then a strict key and shape check names whatever does not fit.
Every file goes through safetensors or `torch.load(weights_only=True)` (`formats.common.torch_load`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import torch

from .attention import SCHEMES
from .config import ATTENTION_TYPES, TimeSformerConfig
from .files import atomic_folder
from .formats import huggingface, mmaction
from .formats.common import Checkpoint, CheckpointError, make_config, read_json, safetensors_load, torch_load
from .formats.official import fields_from_tensors, unwrap
from .formats.vit import init_from_image
from .model import TimeSformer, resize_positions, resize_times
from .runinfo import holds_run
from .shipped import find_model

__all__ = ["FORMATS", "IMAGE_FORMATS", "Checkpoint", "CheckpointError", "from_checkpoint", "load_model",
           "read_checkpoint", "save_model", "transfer"]

FORMAT = "timesformer-lab"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LAST = "checkpoint-last"  # a training run's newest checkpoint (timesformer.runs writes it)
STATE = "train_state.pt"  # beside a training checkpoint's model: everything else --resume needs
FORMATS = {  # what load_model opens (docs/model.md has a table of what each tells)
    FORMAT: "a folder written by save_model, or its model.safetensors alone",
    "official": "an official TimeSformer checkpoint (.pyth/.pth, weights under model_state)",
    "mmaction2": "an mmaction2 TimeSformer checkpoint ({'meta', 'state_dict'}) or its pretrained backbone",
    "huggingface": "a HuggingFace TimesformerForVideoClassification folder or hub id",
    "timm-vit": "an image ViT state dict in timm's layout (.pth/.bin/.safetensors, bare or under model/state_dict)",
    "huggingface-vit": "a HuggingFace ViTModel or ViTForImageClassification folder",
}
IMAGE_FORMATS = ("timm-vit", "huggingface-vit")  # image models: the scheme and frame count are the caller's
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Saving


SAVE_FORMATS = (FORMAT, "huggingface")  # what save_model writes


def save_model(model: TimeSformer, path, format: str = FORMAT) -> Path:
    """Write `path/` with `model.safetensors` (config also in its metadata) and `config.json`; with
    `format="huggingface"`, the folder `transformers.TimesformerForVideoClassification.from_pretrained` loads
    (divided and joint space-time attention: `formats.huggingface.write_folder`).

    The folder is written next to its destination and renamed into place, so a crash never leaves
    a half-written checkpoint under `path`. A checkpoint already at `path` (one this function wrote) is
    replaced; anything else there — a file, a folder of other things, a training run's checkpoint or its
    `checkpoint-last` link — is a FileExistsError, never lost.
    """
    if format not in SAVE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(SAVE_FORMATS)}, got {format!r}")
    path = Path(path)
    if path.is_symlink() or (path / STATE).exists():  # `checkpoint-last`, a `ckpt-*` folder of a run
        raise FileExistsError(f"{path} is a training run's checkpoint{' link' * path.is_symlink()}: save_model does "
                              "not replace it (its run resumes from it); choose another path")
    if run := holds_run(path):  # a run trained into a folder save_model wrote: never replace the run with it
        raise FileExistsError(f"{path} is a training run's folder ({run}): save_model does not replace it; choose "
                              "another path")
    if path.exists() and not (path.is_dir() and (_is_ours(path) or not any(path.iterdir()))):
        what = "a folder that is not a TimeSformer Lab checkpoint" if path.is_dir() else "a file"
        raise FileExistsError(f"{path} is {what}: save_model replaces only a checkpoint it wrote; choose another "
                              "path or remove it")
    with atomic_folder(path) as tmp:
        (write_model if format == FORMAT else huggingface.write_folder)(model, tmp)
    return path


def _is_ours(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint `save_model` wrote, in either format (its config.json says so)."""
    try:
        config = read_json(folder / CONFIG)
    except CheckpointError:  # no config.json, or not a JSON object
        return False
    return config.get("format") == FORMAT or config.get("exported_by") == huggingface.EXPORTED_BY


def write_model(model: TimeSformer, folder: Path) -> None:
    """The files of `save_model` into an existing `folder` (for a caller that already writes atomically)."""
    from safetensors.torch import save_file

    config = {"format": FORMAT, "version": 1, "config": model.config.to_dict()}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT, "config": json.dumps(config)})
    (folder / CONFIG).write_text(json.dumps(config, indent=2))


# --------------------------------------------------------------------------------------------------
# Reading: every format into a Checkpoint


def _ours(state: dict, config_json: dict, source: Path) -> Checkpoint:
    if not isinstance(config_json.get("config"), dict):
        raise CheckpointError(f"the config of {source} has no 'config' object")
    return Checkpoint(FORMAT, state, dict(config_json["config"]), str(source))


def _state_dict(state: dict, source: Path, wrapper: str | None, meta: object = None) -> Checkpoint:
    """A checkpoint from tensors in the official, timm or mmaction2 layout."""
    if mmaction.is_mmaction(state):
        state = mmaction.to_official(state)
        fields = fields_from_tensors(state)
        if names := mmaction.class_names(meta, fields.get("num_classes")):
            fields["class_names"] = names
        return Checkpoint("mmaction2", state, fields, str(source))
    checkpoint = Checkpoint("official", state, fields_from_tensors(state), str(source))
    if wrapper != "model_state" and checkpoint.is_image:
        checkpoint.format = "timm-vit"
    return checkpoint


def _file(path: Path) -> Checkpoint:
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    if path.suffix == ".safetensors":
        state, meta = safetensors_load(path)
        sidecar = path.parent / CONFIG
        ours = json.loads(meta["config"]) if meta.get("format") == FORMAT and "config" in meta else None
        if ours is None and sidecar.is_file() and (cfg := read_json(sidecar)).get("format") == FORMAT:
            ours = cfg
        if ours is None and meta.get("format") == FORMAT:
            raise CheckpointError(f"{path} carries no config; keep the config.json written beside it")
        return _ours(state, ours, path) if ours is not None else _state_dict(state, path, None)
    data = torch_load(path)
    wrapper, state = unwrap(data, path)
    return _state_dict(state, path, wrapper, data.get("meta"))


def read_checkpoint(source) -> Checkpoint:
    """The weights and config fields of any supported checkpoint (a path, a hub id or a shipped model's name)."""
    path = Path(os.fspath(source)).expanduser()
    if not path.exists() and (shipped := find_model(str(source))) is not None:
        path = shipped
    if path.is_dir():
        if not (path / CONFIG).is_file() and (path / LAST / CONFIG).is_file():
            path = path / LAST  # a training run's folder opens as its newest checkpoint
        if not (path / CONFIG).is_file() and (run := holds_run(path)):  # its checkpoint-last gone or broken
            names = sorted(p.parent.name for p in path.glob(f"ckpt-*/{CONFIG}"))
            what = f"open one of its checkpoints, {path / names[-1]}" if names else "no checkpoint there opens"
            raise CheckpointError(f"{path} is a training run ({run}) without a working {LAST}: {what}")
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"{path} is a folder without a config.json: not a checkpoint folder")
        cfg = read_json(path / CONFIG)
        if cfg.get("format") == FORMAT:
            return _ours(safetensors_load(path / WEIGHTS)[0], cfg, path)
        if cfg.get("model_type") in ("timesformer", "vit"):
            return huggingface.read_folder(path, cfg)
        raise CheckpointError(
            f"{path / CONFIG} is neither a TimeSformer Lab nor a HuggingFace Timesformer or ViT config")
    if path.is_file():
        return _file(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not str(source).startswith((".", "/")):
        folder = huggingface.hub_folder(str(source))
        return huggingface.read_folder(folder, read_json(folder / CONFIG))
    raise CheckpointError(f"no such checkpoint: {source}")


# --------------------------------------------------------------------------------------------------
# Building the model


def fit_embeddings(state: dict, config: TimeSformerConfig) -> tuple[dict, list[str]]:
    """`time_embed` and `pos_embed` resized to the config's frames and patch grid, and what was resized.

    Nearest-neighbour in time and on the 2-D grid, exactly what the model does for a clip of another size,
    so a model loaded at 16 frames gives the logits the 8-frame model gives for the same 16-frame clip."""
    out, changes = dict(state), []
    te, pe = state.get("time_embed"), state.get("pos_embed")
    T, gh, gw = config.grid
    # a width cannot be interpolated: a tensor of another width is left for the strict check to name
    fits = [t is not None and t.dim() == 3 and t.shape[2] == config.embed_dim for t in (te, pe)]
    # a model with one cls per frame has no time embedding: the strict check names a file's
    if fits[0] and te.shape[1] != T and not SCHEMES[config.attention_type].cls_per_frame:
        out["time_embed"] = resize_times(te.float(), T).to(te.dtype)
        changes.append(f"time_embed from {te.shape[1]} to {T} frames")
    n = pe.shape[1] - 1 if fits[1] else gh * gw
    side = math.isqrt(n)
    if n != gh * gw and side * side == n:
        grid = resize_positions(pe[:, 1:].float(), (side, side), (gh, gw))
        out["pos_embed"] = torch.cat([pe[:, :1], grid.to(pe.dtype)], dim=1)  # cls position kept
        changes.append(f"pos_embed from {side}×{side} to {gh}×{gw} patches")
    return out, changes


def _strict_build(config: TimeSformerConfig, state: dict, source: str) -> TimeSformer:
    """The model with exactly these weights, or an error naming every key that does not fit."""
    model = TimeSformer(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
        if items:
            more = f" and {len(items) - 8} more" if len(items) > 8 else ""
            problems.append(f"{what}: {', '.join(items[:8])}{more}")
    if problems:
        raise CheckpointError(
            f"the weights in {source} do not fit a {config.attention_type} model "
            f"(depth {config.depth}, width {config.embed_dim}, {config.num_frames} frames, "
            f"{config.num_classes} classes) — " + "; ".join(problems)
        )
    model.load_state_dict(state)
    return model.eval()


def _check_overrides(overrides: dict) -> None:
    unknown = set(overrides) - set(TimeSformerConfig.__dataclass_fields__)
    if unknown:
        raise CheckpointError(f"unknown config fields: {', '.join(sorted(unknown))}")
    if "attention_type" in overrides and overrides["attention_type"] not in ATTENTION_TYPES:
        raise CheckpointError(f"unknown attention_type {overrides['attention_type']!r}")


def from_checkpoint(checkpoint: Checkpoint, device=None, **overrides) -> TimeSformer:
    """A TimeSformer in eval mode from a read checkpoint, `overrides` replacing config fields."""
    _check_overrides(overrides)
    config = make_config(checkpoint.fields, overrides, checkpoint.source)
    state = checkpoint.state
    if checkpoint.is_image:
        state, notes = init_from_image(state, config)
        if notes:
            log.info("%s: an image model started as attention_type=%s: %s", checkpoint.source,
                     config.attention_type, "; ".join(notes))
    state, resized = fit_embeddings(state, config)
    renamed = "" if checkpoint.format in (FORMAT, "official") else f" ({checkpoint.format}, in official names)"
    model = _strict_build(config, state, checkpoint.source + renamed)
    if resized:  # said once the weights fit, so a failed load never reports a resize
        log.warning("%s: resized %s (nearest neighbour, as the model does for clips of other sizes)",
                    checkpoint.source, " and ".join(resized))
    return model.to(device) if device is not None else model


def load_model(source, device=None, **overrides) -> TimeSformer:
    """A TimeSformer in eval mode from any supported checkpoint; `overrides` replace config fields, e.g.
    `num_frames=16` (embeddings resized), `num_heads=` (official files do not say), or `attention_type=`,
    `num_classes=` for an image ViT (the extra steps and a new head are initialised as the paper does)."""
    _check_overrides(overrides)  # before reading a large file
    return from_checkpoint(read_checkpoint(source), device, **overrides)


def transfer(model: TimeSformer, **changes) -> tuple[TimeSformer, int, int]:
    """A new model with `changes` to the config (e.g. another `attention_type`), initialised from
    `model`: every weight whose name and shape match is copied; the rest keep their fresh
    initialisation — a new scheme's extra steps start with their output linear at zero, so they add
    nothing until trained (the paper's way of starting from an image ViT).

    Returns (new model in eval mode, tensors copied, tensors in the new model).
    """
    new = TimeSformer(model.config.replace(**changes)).to(model.device).eval()
    own = new.state_dict()
    state = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
    new.load_state_dict(state, strict=False)
    return new, len(state), len(own)
