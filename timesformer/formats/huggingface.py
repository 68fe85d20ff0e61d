"""HuggingFace folders and hub ids: `TimesformerForVideoClassification` (a video model) and `ViTModel` /
`ViTForImageClassification` (an image model to start from), renamed to the official layout; and the way back:
`write_folder` exports a model of the schemes HuggingFace's Timesformer has as a folder it loads
(`TimesformerForVideoClassification.from_pretrained`).

Both share the `transformers` ViT module names (`encoder.layer.i.attention.output.dense`, `layernorm_before`,
...); ViT keeps `query`/`key`/`value` apart where Timesformer packs them into `qkv`.
"""

from __future__ import annotations

import json
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


# official → HuggingFace Timesformer, for `write_folder`; every name it gives is checked against `hf_key`
_EXPORT_RENAMES = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^time_embed$", "embeddings.time_embeddings"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.temporal_attn\.qkv\.", ".temporal_attention.attention.qkv."),
    (r"\.temporal_attn\.proj\.", ".temporal_attention.output.dense."),
    (r"\.temporal_norm1\.", ".temporal_layernorm."),
    (r"\.temporal_fc\.", ".temporal_dense."),
    (r"\.attn\.qkv\.", ".attention.attention.qkv."),
    (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
    (r"^norm\.", "layernorm."),
]
# the schemes transformers' Timesformer runs as the paper does (its space_only gives one prediction per frame)
HF_SCHEMES = ("divided_space_time", "joint_space_time")
EXPORTED_BY = "timesformer-lab"  # in the config.json of a folder `write_folder` wrote


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


def export_key(key: str) -> str:
    """An official-layout name → its `TimesformerForVideoClassification` name."""
    if key.startswith("head."):
        return "classifier." + key.removeprefix("head.")
    for pattern, repl in _EXPORT_RENAMES:
        key = re.sub(pattern, repl, key)
    return "timesformer." + key


def write_folder(model, folder: Path) -> None:
    """`config.json` and `model.safetensors` of `model` (a TimeSformer) as `TimesformerForVideoClassification`
    writes them, into the existing `folder`. HuggingFace's Timesformer runs two of the five schemes as the paper
    does (`HF_SCHEMES`); the others are a CheckpointError."""
    from safetensors.torch import save_file

    cfg = model.config
    if cfg.attention_type not in HF_SCHEMES:
        raise CheckpointError(f"HuggingFace's Timesformer runs only {' and '.join(HF_SCHEMES)} as the paper does, "
                              f"not {cfg.attention_type}: save it in this project's format")
    state = {}
    for key, value in model.state_dict().items():
        name = export_key(key)
        if hf_key(name) != key:  # the import table reads it back as another tensor: a gap in _EXPORT_RENAMES
            raise CheckpointError(f"{key} has no HuggingFace name (exported as {name}, read back as {hf_key(name)})")
        state[name] = value.detach().to("cpu").contiguous()
    names = model.class_names
    config = {
        "model_type": "timesformer", "architectures": ["TimesformerForVideoClassification"],
        "image_size": cfg.img_size, "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "num_frames": cfg.num_frames, "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads, "intermediate_size": int(cfg.embed_dim * cfg.mlp_ratio),
        "hidden_act": "gelu", "hidden_dropout_prob": cfg.drop_rate, "attention_probs_dropout_prob": cfg.attn_drop_rate,
        "initializer_range": 0.02, "layer_norm_eps": cfg.norm_eps, "qkv_bias": cfg.qkv_bias,
        # a training setting, and transformers (5.x) types it as an integer: not exported
        "attention_type": cfg.attention_type, "drop_path_rate": 0,
        "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
        "exported_by": EXPORTED_BY,
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))


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
