"""Which tokens meet in each attention step, as group counts and sizes, from the model's own grouping rules.

Group counts and sizes are never re-derived: they come from the scheme's key functions in
`timesformer.attention`, the ones the model groups tokens with.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import numpy as np
import torch

from timesformer.attention import KEYS, SCHEMES


@dataclass(frozen=True)
class StepShape:
    name: str  # "space", "time", ...
    with_cls: bool
    extra: bool  # an extra step with its own fc (temporal_fc, local_fc, width_fc)
    groups: int  # G
    length: int  # L: slots per group, cls included when with_cls, padded to the longest group


@functools.lru_cache(maxsize=4096)
def step_shapes(attention_type: str, grid: tuple[int, int, int], local_split: int = 2,
                global_stride: int = 2) -> tuple[StepShape, ...]:
    """(G, L) of every step of a scheme on a (T, H_p, W_p) grid.

    Equal to `scheme_groupings(...)[i].index.shape` (tested), but counts group sizes with a bincount of
    the same key functions instead of building the gather indices, which keeps sweeps fast.
    """
    if attention_type not in SCHEMES:
        raise ValueError(f"unknown attention_type {attention_type!r}; choose one of {', '.join(SCHEMES)}")
    T, H, W = grid
    # numpy first: the keys are integer arithmetic, and single-threaded numpy stays fast on a busy CPU
    # where torch's thread pool does not; a key written with torch-only calls falls back to torch.
    p = np.arange(T * H * W)
    t, h, w = p // (H * W), (p // W) % H, p % W
    split = types.SimpleNamespace(local_split=local_split, global_stride=global_stride)  # what KEYS reads
    out = []
    for step in SCHEMES[attention_type].steps:
        try:
            key = np.asarray(KEYS[step.name](t, h, w, T, H, W, split))
        except TypeError:
            key = KEYS[step.name](*(torch.from_numpy(a) for a in (t, h, w)), T, H, W, split).numpy()
        counts = np.bincount(np.broadcast_to(key, p.shape))
        counts = counts[counts > 0]
        out.append(StepShape(step.name, step.with_cls, step.prefix is not None, len(counts),
                             int(counts.max()) + int(step.with_cls)))
    return tuple(out)
