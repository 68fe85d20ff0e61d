"""Starting a TimeSformer of any scheme from an image ViT: the paper's recipe (every result in it starts from
ImageNet weights), as the official `load_pretrained` does for divided attention.

The image ViT gives each block's main step (`norm1`/`attn`), the MLP, the patch and position embeddings,
`cls`, the final norm and, when the classes match, the head. Each extra step (`temporal_*`, `local_*`,
`width_*`) gets copies of its block's `norm1` and `attn`, and its output linear `*_fc` and the time
embedding start at zero, so every block computes exactly its main step until trained. What that main step
is decides how close the start is to the image model (docs/model.md, "Starting from an image ViT").
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..config import TimeSformerConfig
from ..model import TimeSformer

_EXTRA_COPY = re.compile(r"^(blocks\.\d+\.)[a-z]+_(norm1|attn)\.(.+)$")  # ← the block's norm1 / attn
_EXTRA_ZERO = re.compile(r"^blocks\.\d+\.[a-z]+_fc\.")


def init_from_image(state: dict[str, torch.Tensor], config: TimeSformerConfig) -> tuple[dict, list[str]]:
    """(state dict for a `config` TimeSformer, what was made up) from an image ViT's state dict in the official
    layout. Keys the ViT lacks and the recipe does not make stay missing, for the strict check to name."""
    with torch.device("meta"):  # names and shapes only: no memory, no random draws
        shapes = {k: v.shape for k, v in TimeSformer(config).state_dict().items()}
    dtype = state["pos_embed"].dtype
    out = dict(state)
    notes = []
    for key, shape in shapes.items():
        if key in state:
            continue
        if (m := _EXTRA_COPY.match(key)) and f"{m[1]}{m[2]}.{m[3]}" in state:
            out[key] = state[f"{m[1]}{m[2]}.{m[3]}"]  # load_state_dict copies, so sharing the tensor is safe
        elif _EXTRA_ZERO.match(key) or key == "time_embed":
            out[key] = torch.zeros(shape, dtype=dtype)
    if any(_EXTRA_ZERO.match(k) for k in shapes):
        notes.append("extra steps copied from each block's attention, their output linear at zero")
    if "time_embed" in shapes:
        notes.append(f"time embedding at zero for {config.num_frames} frames")
    head = state.get("head.weight")
    if head is None or head.shape != shapes["head.weight"]:
        weight = torch.empty(shapes["head.weight"], dtype=dtype)
        nn.init.trunc_normal_(weight, std=0.02)  # a fresh model's head initialisation
        out["head.weight"], out["head.bias"] = weight, torch.zeros(shapes["head.bias"], dtype=dtype)
        had = "no head" if head is None else f"{head.shape[0]} classes"
        notes.append(f"new head for {config.num_classes} classes (the ViT had {had})")
    return out, notes
