"""HuggingFace folders and hub ids: `TimesformerForVideoClassification` (a video model) and `ViTModel` /
`ViTForImageClassification` (an image model to start from), renamed to the official layout.

Both share the `transformers` ViT module names (`encoder.layer.i.attention.output.dense`, `layernorm_before`,
...); ViT keeps `query`/`key`/`value` apart where Timesformer packs them into `qkv`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .common import Checkpoint, CheckpointError, read_json, safetensors_load, torch_load

_RENAMES = [  # (HuggingFace pattern, official), applied in order after dropping "timesformer." / "vit."
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
# ViT tensors with no counterpart: ViTModel's pooler (dense + tanh on cls, unused by the classifier) and
# the mask token of masked-image pre-training
_VIT_UNUSED = re.compile(r"^(pooler\.|embeddings\.mask_token$)")
_SUPPORTED = {"timesformer": "huggingface", "vit": "huggingface-vit"}  # model_type → format


def hf_key(key: str) -> str:
    key = key.removeprefix("timesformer.").removeprefix("vit.")
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _pack_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViT's separate query, key and value linears → one `qkv` with the rows q; k; v, as the official one."""
    out = {}
    for key, value in state.items():
        m = re.match(r"(.*\.attention\.attention\.)(query|key|value)\.(weight|bias)$", key)
        if m is None:
            out[key] = value
        elif m.group(2) == "query":
            parts = [state.get(f"{m.group(1)}{name}.{m.group(3)}") for name in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise CheckpointError(f"{key} has no matching key/value tensors")
            out[f"{m.group(1)}qkv.{m.group(3)}"] = torch.cat(parts)  # (3D, D) or (3D,)
    return out


def hf_fields(hf: dict) -> dict:
    """The config fields of a HuggingFace Timesformer or ViT config.json."""
    model_type = hf.get("model_type")
    if model_type not in _SUPPORTED:
        raise CheckpointError(f"config.json has model_type {model_type!r}, not 'timesformer' or 'vit'")
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
        in_chans=hf.get("num_channels", 3),
        num_classes=len(names) if names else hf.get("num_labels", 2),
        embed_dim=dim,
        depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        mlp_ratio=hf.get("intermediate_size", 4 * dim) / dim,
        qkv_bias=hf.get("qkv_bias", True),
        drop_rate=hf.get("hidden_dropout_prob", 0.0),
        attn_drop_rate=hf.get("attention_probs_dropout_prob", 0.0),
        # the transformers defaults when config.json leaves them out: ViT 1e-12, Timesformer 1e-6
        norm_eps=hf.get("layer_norm_eps", 1e-12 if model_type == "vit" else 1e-6),
        class_names=names,
    )
    if model_type == "timesformer":
        fields.update(num_frames=hf.get("num_frames", 8), drop_path_rate=hf.get("drop_path_rate", 0.0),
                      attention_type=hf.get("attention_type", "divided_space_time"))
    else:  # an image model is one ViT per frame until asked for another scheme
        fields.update(attention_type="space_only")
    return fields


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        return safetensors_load(folder / "model.safetensors")[0]
    if (folder / "model.safetensors.index.json").is_file():
        shards = sorted(set(read_json(folder / "model.safetensors.index.json").get("weight_map", {}).values()))
        state = {}
        for shard in shards:
            state.update(safetensors_load(folder / shard)[0])
        return state
    if (folder / "pytorch_model.bin").is_file():
        state = torch_load(folder / "pytorch_model.bin")
        if not isinstance(state, dict):
            raise CheckpointError(f"{folder / 'pytorch_model.bin'} holds no state dict")
        return state
    raise CheckpointError(f"{folder} has a config.json but no model.safetensors or pytorch_model.bin")


def read_folder(folder: Path, hf: dict) -> Checkpoint:
    """A HuggingFace Timesformer or ViT folder (config.json + weights) in the official layout."""
    fields = hf_fields(hf)
    state = _read_weights(folder)
    if hf["model_type"] == "vit":
        state = _pack_qkv({k.removeprefix("vit."): v for k, v in state.items() if not _VIT_UNUSED.match(k)})
        if "classifier.weight" not in state:  # a ViTModel: its id2label is the default, not classes
            fields.pop("num_classes")
            fields.pop("class_names")
    state = {hf_key(k): v for k, v in state.items()}
    return Checkpoint(_SUPPORTED[hf["model_type"]], state, fields, str(folder))


def hub_folder(repo_id: str) -> Path:
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
