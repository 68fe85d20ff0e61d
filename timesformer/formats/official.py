"""The official TimeSformer layout (facebookresearch/TimeSformer `vit.py`), which is also timm's ViT layout
and this model's own: `patch_embed.proj`, `cls_token`, `pos_embed`, `time_embed`, `blocks.i.{norm1, attn.qkv,
attn.proj, temporal_norm1, temporal_attn, temporal_fc, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`.

Official checkpoints keep the weights under `model_state` with a `model.` prefix; timm and other image ViT
files hold them bare or under `model` / `state_dict`. The config is read off the tensors' shapes.
"""

from __future__ import annotations

import math
import re

import torch

from ..config import TimeSformerConfig
from .common import CheckpointError

OFFICIAL_HEAD_DIM = 64  # every released TimeSformer and ViT-B/L has 64-channel heads; heads are not in the tensors
_WRAPPERS = ("model_state", "state_dict", "model")  # official; mmcv / mmengine / timm; timm, DeiT, MAE
_FOREIGN_HINTS = [  # a key that tells which loader a file needs, when it is not in this layout
    ("embeddings.patch_embeddings", "HuggingFace weights: load the folder with its config.json"),
    ("transformer_layers.layers", "mmaction2 weights in an unexpected wrapper"),
]


def unwrap(data: object, source) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(the key the weights were under, or None; the tensors) of a loaded `torch.load` result."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source} holds no state dict (a {type(data).__name__}, not a dict of tensors)")
    wrapper = next((k for k in _WRAPPERS if isinstance(data.get(k), dict)), None)
    state = data[wrapper] if wrapper else data
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(state):
        others = sorted(str(k) for k in state if not isinstance(state[k], torch.Tensor))[:5]
        raise CheckpointError(
            f"{source} holds no state dict: expected tensors under one of {', '.join(_WRAPPERS)} or at the top "
            f"level" + (f" (found {', '.join(others)})" if others else "")
        )
    # DDP wraps the model in `module.`; the official code names its model `model.`
    return wrapper, {k.removeprefix("module.").removeprefix("model."): v for k, v in tensors.items()}


def fields_from_tensors(state: dict) -> dict:
    """The config fields a state dict in this layout implies: width, depth, patch, image size, frames,
    classes (none without a head), heads (64 channels each) and the scheme from the keys."""
    try:
        pos = state["pos_embed"]
        proj = state["patch_embed.proj.weight"]
        fc1 = state["blocks.0.mlp.fc1.weight"]
    except KeyError as e:
        hint = next((h for key, h in _FOREIGN_HINTS if any(key in k for k in state)), None)
        raise CheckpointError(
            f"not a TimeSformer or ViT state dict: key {e.args[0]!r} is missing" + (f" ({hint})" if hint else "")
        ) from None
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
        attention = "space_only"  # also what an image ViT is: one ViT per frame
    else:
        attention = "joint_space_time"
    fields = dict(
        img_size=side * patch,
        patch_size=patch,
        num_frames=state["time_embed"].shape[1] if "time_embed" in state else TimeSformerConfig.num_frames,
        in_chans=proj.shape[1],
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // OFFICIAL_HEAD_DIM),
        mlp_ratio=fc1.shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        attention_type=attention,
    )
    if "head.weight" in state:
        fields["num_classes"] = state["head.weight"].shape[0]
    return fields
