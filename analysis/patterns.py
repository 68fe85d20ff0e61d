"""The paper's Figure 1 — which patches a query attends to in each step — as data from the model's masks.

Nothing here is drawn by hand: the cells come from `timesformer.attention_pattern`, the masks of the
groupings the model itself runs, for any scheme, frame count, grid and query. `receptive_field` composes
the step masks (with the residual) to show what a query can reach after whole blocks. The pictures are
`analysis.figures.pattern_figure` (plotly) and `analysis.media.save_pattern` (PNG, SVG).
"""

from __future__ import annotations

import numpy as np
import torch

from analysis.maps import query_index
from timesformer.attention import SCHEMES, attention_pattern

QUERY_COLOUR = "#1f4fd8"  # blue, as in the paper
STEP_COLOURS = {  # one colour per step
    "space": "#d62728", "time": "#2ca02c", "joint": "#ff7f0e", "local": "#e6b400",
    "global": "#9c27b0", "width": "#ff7f0e", "height": "#e377c2",
}
EMPTY_COLOUR = "#f2f2f2"
REACHED_COLOUR = "#d62728"  # receptive-field pictures: a cell that can influence the query


def pattern_codes(attention_type: str, grid: tuple[int, int, int], query=(0, 0, 0), local_split: int = 2,
                  global_stride: int = 2) -> tuple[np.ndarray, list[str]]:
    """(T, H_p, W_p) int codes — 0 unseen, i+1 first seen by step i, -1 the query — and the step names.

    A cell seen by several steps takes the colour of the first; `steps_seeing` lists them all.
    """
    T, H, W = grid
    q = query_index(query, grid)
    masks = attention_pattern(attention_type, T, H, W, local_split, global_stride)
    codes = np.zeros((T, H, W), dtype=np.int64)
    for i, mask in enumerate(masks.values()):
        seen = mask[q, 1:].reshape(T, H, W).numpy()
        codes[(codes == 0) & seen] = i + 1
    if q > 0:
        codes.reshape(-1)[q - 1] = -1
    return codes, list(masks)


def steps_seeing(attention_type: str, grid, query, local_split: int = 2, global_stride: int = 2) -> np.ndarray:
    """(T, H_p, W_p) object array: for each cell, the list of steps in which the query sees it."""
    T, H, W = grid
    q = query_index(query, grid)
    masks = attention_pattern(attention_type, T, H, W, local_split, global_stride)
    out = np.empty((T, H, W), dtype=object)
    for idx in np.ndindex(T, H, W):
        out[idx] = []
    for step, mask in masks.items():
        for idx in zip(*np.nonzero(mask[q, 1:].reshape(T, H, W).numpy())):
            out[idx].append(step)
    return out


def receptive_field(attention_type: str, grid, query=(0, 0, 0), blocks: int = 1, local_split: int = 2,
                    global_stride: int = 2) -> np.ndarray:
    """(T, H_p, W_p) bool: the input patches that can influence `query` after `blocks` whole blocks.

    Walks the steps backwards: a step's output at token i depends on i itself (the residual) and on the
    keys i sees; the MLP is per token. The cls token counts as a path (a patch sees cls, which
    saw other patches in the previous block).
    """
    T, H, W = grid
    masks = list(attention_pattern(attention_type, T, H, W, local_split, global_stride).values())
    if SCHEMES[attention_type].cls_per_frame:
        # the masks map every frame's own cls to index 0; as one token it would be a false bridge
        # between frames, so leave cls out (frame t's cls only carries frame t, which t already sees)
        masks = [m.clone().index_fill_(0, torch.tensor([0]), False).index_fill_(1, torch.tensor([0]), False)
                 for m in masks]
    v = torch.zeros(1 + T * H * W)
    v[query_index(query, grid)] = 1
    for _ in range(blocks):
        for mask in reversed(masks):
            v = ((v @ mask.float()) + v).clamp(max=1)
    return v[1:].reshape(T, H, W).bool().numpy()


def receptive_codes(attention_type: str, grid, query=(0, 0, 0), blocks: int = 1, local_split: int = 2,
                    global_stride: int = 2) -> np.ndarray:
    """(T, H_p, W_p) int codes of `receptive_field` in `pattern_codes`' convention: 1 reached, 0 not, -1 the
    query."""
    codes = receptive_field(attention_type, grid, query, blocks, local_split, global_stride).astype(np.int64)
    q = query_index(query, grid)
    if q > 0:
        codes.reshape(-1)[q - 1] = -1
    return codes


def blocks_to_full_clip(attention_type: str, grid, query=(0, 0, 0), max_blocks: int = 12) -> int | None:
    """How many blocks until `query` can be influenced by every patch (None if not within max_blocks)."""
    for b in range(1, max_blocks + 1):
        if receptive_field(attention_type, grid, query, b).all():
            return b
    return None


def palette(steps: list[str]) -> list[str]:
    """Colours of the codes -1 (query), 0 (unseen), 1.. (each step), in that order."""
    return [QUERY_COLOUR, EMPTY_COLOUR] + [STEP_COLOURS[s] for s in steps]
