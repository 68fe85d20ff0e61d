"""mmaction2 TimeSformer checkpoints, renamed to the official layout.

Written from open-mmlab/mmaction2 `mmaction/models/backbones/timesformer.py` (the backbone),
`mmaction/models/common/transformer.py` (the divided steps) and mmcv `cnn/bricks/transformer.py`
(`BaseTransformerLayer`, `FFN`). A checkpoint is `{'meta', 'state_dict'}` (training checkpoints add the
optimizer and schedulers); a recogniser's weights sit under `backbone.` and `cls_head.`, its ImageNet
`pretrained` file has the backbone's names without the prefix. Per block `transformer_layers.layers.i`:
- divided: `attentions.0` is the time step (`norm`, `attn`, `temporal_fc`), `attentions.1` the space step,
  `ffns.0.norm` the second LayerNorm;
- space only and joint: `norms.0` / `norms.1` are norm1 / norm2 and `attentions.0` the one attention;
- `ffns.0.layers.0.0` / `ffns.0.layers.1` are fc1 / fc2.
`attn` is an `nn.MultiheadAttention`: its packed `in_proj_weight` (3D, D) holds the q; k; v rows in the
order of the official `qkv`, so it maps without reordering. The computation is the official one (same token
order, `cls` rule, time embedding and `space_only` averaging), so the logits are the official model's.
"""

from __future__ import annotations

import re

import torch

MARKER = "transformer_layers.layers."  # in every mmaction2 TimeSformer key of a block

_RENAMES = [  # (mmaction2 pattern, official), in order, after dropping "backbone."
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^cls_head\.fc_cls\.", "head."),
    (r"^transformer_layers\.layers\.(\d+)\.", r"blocks.\1."),
    (r"\.attentions\.0\.temporal_fc\.", ".temporal_fc."),
    (r"\.ffns\.0\.norm\.", ".norm2."),
    (r"\.ffns\.0\.layers\.0\.0\.", ".mlp.fc1."),
    (r"\.ffns\.0\.layers\.1\.", ".mlp.fc2."),
    (r"\.norms\.0\.", ".norm1."),
    (r"\.norms\.1\.", ".norm2."),
    (r"\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
    (r"\.attn\.out_proj\.", ".attn.proj."),
]


def is_mmaction(state: dict) -> bool:
    return any(MARKER in k for k in state)


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmaction2 names → official names (the tensors are shared, not copied)."""
    # divided models have a second attention per block, and their first one is the time step
    divided = any(re.search(r"\.attentions\.1\.", k) for k in state)
    out = {}
    for key, value in state.items():
        k = key.removeprefix("backbone.")
        for pattern, repl in _RENAMES:
            k = re.sub(pattern, repl, k)
        for j, step in ((0, "temporal_" if divided else ""), (1, "")):
            k = re.sub(rf"\.attentions\.{j}\.norm\.", f".{step}norm1.", k)
            k = re.sub(rf"\.attentions\.{j}\.attn\.", f".{step}attn.", k)
        out[k] = value
    return out


def class_names(meta: object, num_classes: int | None) -> list[str] | None:
    """Class names an mmengine (`dataset_meta.classes`) or mmcv (`CLASSES`) checkpoint's meta carries."""
    if not isinstance(meta, dict):
        return None
    dataset = meta.get("dataset_meta")
    names = (dataset.get("classes") if isinstance(dataset, dict) else None) or meta.get("CLASSES")
    if isinstance(names, list | tuple) and len(names) == num_classes and all(isinstance(c, str) for c in names):
        return list(names)
    return None
