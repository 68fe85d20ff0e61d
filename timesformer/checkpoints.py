"""Loading and saving models without executing code from the file.

`load_model(source)` opens
- our own format: a folder written by `save_model` (`model.safetensors` + `config.json`), or such a
  `model.safetensors` alone (its metadata carries the config);
- an official TimeSformer checkpoint (`.pyth`/`.pth`: weights under `model_state`, keys `model.…`),
  the configuration inferred from the tensors;
- a HuggingFace `TimesformerForVideoClassification` folder or hub id;
- the name of a model shipped in assets/models/ (`timesformer.shipped.models()`).
Every path goes through safetensors or `torch.load(weights_only=True)`, and through a strict key and
shape check that names what does not fit.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import pickletools
import re
import warnings
from pathlib import Path

import torch

from .config import ATTENTION_TYPES, TimeSformerConfig
from .files import atomic_folder
from .model import TimeSformer
from .shipped import find_model

FORMAT = "timesformer-lab"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OFFICIAL_HEAD_DIM = 64  # every released TimeSformer has 64-channel heads; heads are not in the tensors


class CheckpointError(ValueError):
    """A checkpoint that cannot be opened, with the reason in words."""


# --------------------------------------------------------------------------------------------------
# Saving


def save_model(model: TimeSformer, path) -> Path:
    """Write `path/` with `model.safetensors` (config also in its metadata) and `config.json`.

    The folder is written next to its destination and renamed into place, so a crash never leaves
    a half-written checkpoint under `path`.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = {"format": FORMAT, "version": 1, "config": model.config.to_dict()}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_folder(path) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "config": json.dumps(config)})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    return path


# --------------------------------------------------------------------------------------------------
# Reading files safely


def _torch_load(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
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
        raise CheckpointError(
            f"refusing to load {path}: unpickling it would {what}, and a checkpoint must hold only tensors and "
            "plain containers (unpickling objects can run code). Save the weights alone "
            "(torch.save(model.state_dict())) or as safetensors."
        ) from None
    except Exception as e:  # truncated zip, not a checkpoint at all, ...
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from None


def _safetensors_load(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


# --------------------------------------------------------------------------------------------------
# Building the model from a state dict


def _build(config: TimeSformerConfig, state: dict, source) -> TimeSformer:
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


def _make_config(fields: dict, overrides: dict, what: str) -> TimeSformerConfig:
    try:
        return TimeSformerConfig.from_dict({**fields, **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build a config for {what}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Official checkpoints


def infer_official_config(state: dict, **overrides) -> TimeSformerConfig:
    """A config for a state dict in the official layout (prefix already removed), from its shapes."""
    try:
        pos = state["pos_embed"]
        proj = state["patch_embed.proj.weight"]
        head = state["head.weight"]
        fc1 = state["blocks.0.mlp.fc1.weight"]
    except KeyError as e:
        raise CheckpointError(f"not a TimeSformer state dict: key {e.args[0]!r} is missing") from None
    dim, n = pos.shape[-1], pos.shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"pos_embed has {n} patch positions, not a square grid")
    patch = proj.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if "blocks.0.width_attn.qkv.weight" in state:
        attention = "axial"
    elif "blocks.0.local_attn.qkv.weight" in state:
        attention = "sparse_local_global"
    elif "blocks.0.temporal_attn.qkv.weight" in state:
        attention = "divided_space_time"
    elif "time_embed" not in state:
        attention = "space_only"
    else:
        attention = "joint_space_time"
    fields = dict(
        img_size=side * patch,
        patch_size=patch,
        num_frames=state["time_embed"].shape[1] if "time_embed" in state else 8,
        in_chans=proj.shape[1],
        num_classes=head.shape[0],
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // OFFICIAL_HEAD_DIM),
        mlp_ratio=fc1.shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        attention_type=attention,
    )
    return _make_config(fields, overrides, "this checkpoint")


def _load_official(path: Path, overrides: dict) -> TimeSformer:
    data = _torch_load(path)
    if isinstance(data, dict) and "model_state" in data:
        data = data["model_state"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors under 'model_state')")
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in data.items()}
    return _build(infer_official_config(state, **overrides), state, path)


# --------------------------------------------------------------------------------------------------
# HuggingFace

_HF_RENAMES = [  # (HuggingFace pattern, ours), applied in order after dropping "timesformer."
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.time_embeddings$", "time_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"\.temporal_attention\.attention\.qkv\.", ".temporal_attn.qkv."),
    (r"\.temporal_attention\.output\.dense\.", ".temporal_attn.proj."),
    (r"\.temporal_layernorm\.", ".temporal_norm1."),
    (r"\.temporal_dense\.", ".temporal_fc."),
    (r"\.attention\.attention\.qkv\.", ".attn.qkv."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def _hf_key(key: str) -> str:
    key = key.removeprefix("timesformer.")
    for pattern, repl in _HF_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def hf_config(hf: dict, **overrides) -> TimeSformerConfig:
    """Our config from a HuggingFace TimesformerConfig dict (config.json)."""
    if hf.get("model_type") != "timesformer":
        raise CheckpointError(f"config.json has model_type {hf.get('model_type')!r}, not 'timesformer'")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {hf['hidden_act']!r} is not supported (only 'gelu')")
    size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise CheckpointError(f"non-square image_size {size} is not supported")
        size = size[0]
    if isinstance(patch, list | tuple):
        patch = patch[0]
    dim = hf.get("hidden_size", 768)
    id2label = hf.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    fields = dict(
        img_size=size,
        patch_size=patch,
        num_frames=hf.get("num_frames", 8),
        in_chans=hf.get("num_channels", 3),
        num_classes=len(names) if names else hf.get("num_labels", 2),
        embed_dim=dim,
        depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        mlp_ratio=hf.get("intermediate_size", 4 * dim) / dim,
        qkv_bias=hf.get("qkv_bias", True),
        attention_type=hf.get("attention_type", "divided_space_time"),
        drop_rate=hf.get("hidden_dropout_prob", 0.0),
        attn_drop_rate=hf.get("attention_probs_dropout_prob", 0.0),
        drop_path_rate=hf.get("drop_path_rate", 0.0),
        norm_eps=hf.get("layer_norm_eps", 1e-6),
        class_names=names,
    )
    return _make_config(fields, overrides, "this HuggingFace config")


def _load_hf_folder(folder: Path, overrides: dict) -> TimeSformer:
    config = hf_config(_read_json(folder / CONFIG), **overrides)
    if (folder / "model.safetensors").is_file():
        state, _ = _safetensors_load(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():
        shards = sorted(set(_read_json(folder / "model.safetensors.index.json").get("weight_map", {}).values()))
        state = {}
        for shard in shards:
            state.update(_safetensors_load(folder / shard)[0])
    elif (folder / "pytorch_model.bin").is_file():
        state = _torch_load(folder / "pytorch_model.bin")
        if not isinstance(state, dict):
            raise CheckpointError(f"{folder / 'pytorch_model.bin'} holds no state dict")
    else:
        raise CheckpointError(f"{folder} has a config.json but no model.safetensors or pytorch_model.bin")
    return _build(config, {_hf_key(k): v for k, v in state.items()}, folder)


def _hub_folder(repo_id: str) -> Path:
    """The local snapshot of a hub model: the cache first, then the hub when it is reachable."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id!r} is not a local path and huggingface_hub is not installed") from None
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        raise CheckpointError(
            f"{repo_id!r} is neither a local path nor in the HuggingFace cache, and the hub could not be "
            f"reached ({type(e).__name__}). Download it where there is network and copy the folder here."
        ) from None


# --------------------------------------------------------------------------------------------------
# Our format


def _load_ours(weights: Path, config_json: dict | None, overrides: dict) -> TimeSformer:
    state, meta = _safetensors_load(weights)
    if config_json is None:
        if "config" not in meta:
            raise CheckpointError(f"{weights} carries no config; keep the config.json written beside it")
        config_json = json.loads(meta["config"])
    if not isinstance(config_json.get("config"), dict):
        raise CheckpointError(f"the config of {weights} has no 'config' object")
    return _build(_make_config(config_json["config"], overrides, str(weights)), state, weights)


# --------------------------------------------------------------------------------------------------


def load_model(source, device=None, **overrides) -> TimeSformer:
    """A TimeSformer in eval mode from any supported checkpoint; `overrides` replace config fields
    (e.g. `num_heads=`, `attention_type=` for an official checkpoint whose shapes do not say)."""
    unknown = set(overrides) - set(TimeSformerConfig.__dataclass_fields__)
    if unknown:
        raise CheckpointError(f"unknown config fields: {', '.join(sorted(unknown))}")
    if "attention_type" in overrides and overrides["attention_type"] not in ATTENTION_TYPES:
        raise CheckpointError(f"unknown attention_type {overrides['attention_type']!r}")
    path = Path(os.fspath(source)).expanduser()
    if not path.exists() and (shipped := find_model(str(source))) is not None:
        path = shipped
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"{path} is a folder without a config.json: not a checkpoint folder")
        cfg = _read_json(path / CONFIG)
        if cfg.get("format") == FORMAT:
            model = _load_ours(path / WEIGHTS, cfg, overrides)
        elif cfg.get("model_type") == "timesformer":
            model = _load_hf_folder(path, overrides)
        else:
            raise CheckpointError(f"{path / CONFIG} is neither a TimeSformer Lab nor a HuggingFace Timesformer config")
    elif path.is_file():
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty")
        if path.suffix == ".safetensors":
            sidecar = path.parent / CONFIG
            cfg = _read_json(sidecar) if sidecar.is_file() else None
            if cfg is not None and cfg.get("format") != FORMAT:
                cfg = None
            model = _load_ours(path, cfg, overrides)
        else:
            model = _load_official(path, overrides)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not str(source).startswith((".", "/")):
        model = _load_hf_folder(_hub_folder(str(source)), overrides)
    else:
        raise CheckpointError(f"no such checkpoint: {source}")
    return model.to(device) if device is not None else model


def transfer(model: TimeSformer, **changes) -> tuple[TimeSformer, int, int]:
    """A new model with `changes` to the config (e.g. another `attention_type`), initialised from
    `model`: every weight whose name and shape match is copied; the rest keep their fresh
    initialisation — a new scheme's extra steps start with their output linear at zero, so they add
    nothing until trained (the paper's way of starting from an image ViT).

    Returns (new model in eval mode, tensors copied, tensors in the new model).
    """
    new = TimeSformer(model.config.replace(**changes)).to(next(model.parameters()).device).eval()
    own = new.state_dict()
    state = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
    new.load_state_dict(state, strict=False)
    return new, len(state), len(own)
