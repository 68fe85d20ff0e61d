"""The one attention core, attention recording, and the dense maps and patterns of recorded attention.

Which tokens attend to each other in every step of the five schemes is data (`timesformer.groupings`: the
steps, their groupings, the `cls` rule, odd sizes; re-exported here). `attend` is the only attention code:
it takes the projections of a step's token groups and runs `scaled_dot_product_attention` within each
group, or materialises the probabilities for `record_attention`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .groupings import KEYS, ROLES, SCHEMES, STEP_NAMES, Grouping, Layout, Scheme, Step, scheme_groupings

# --------------------------------------------------------------------------------------------------
# The attention core

# Groups of at most this many tokens are attended with matmul + softmax instead of the fused kernel. 0 (the
# default) keeps the fused kernel everywhere: on a 2-core CPU it was the faster at 8 and at 197 tokens. On an
# H100 a probe of divided attention under torch.compile trained at 218 clips/s with its 8-token time groups
# done this way against 192 with cuDNN's flash kernel; `tslab bench gpu --math-below 16` measures it here.
MATH_BELOW = 0

# Groups shorter than PACK_TO tokens (all of one size, so no padding) go to the fused kernel packed: as many
# whole groups as fit in PACK_TO tokens form one sequence, whose block-diagonal mask keeps each group to
# itself. A fused kernel works in tiles of 64 or 128 queries, most of which an 8- or 15-token group leaves
# empty; packed, the tiles are full and there are P times fewer of them, for P times the (tiny) score work.
# 0 (the default) packs nothing: on a 2-core CPU packed groups were 1.4-1.8× slower (`tslab bench attention`).
PACK_TO = 0

# Groups of at most SHORT_BELOW tokens go to one Triton kernel (`timesformer.short_attention`): a program
# attends as many whole groups as fit in 64 rows, for one head, straight from qkv's layout, and the backward
# writes dq, dk and dv into one tensor of that layout (CUDA in fp16/bf16, no dropout; elsewhere, and in fp32,
# the fused kernel as usual); where it runs, PACK_TO leaves these groups to it. On an H200, ViT-B divided
# 8×224, batch 8, against PyTorch's kernels (`tslab bench gpu --short-below 0` times both): inference 1.30×
# eager, 1.35× compiled, 1.37× with CUDA graphs; training 1.34× with CUDA graphs, the same compiled without
# them, and eager within its run-to-run noise (docs/benchmarks.md). 0: PyTorch's kernels for every group.
SHORT_BELOW = 16


def attend(
    qkv: torch.Tensor,
    grouping: Grouping,
    num_heads: int,
    dropout_p: float = 0.0,
    record: Callable[[torch.Tensor], None] | None = None,
    cls_only: bool = False,
) -> torch.Tensor:
    """Multi-head attention within each group of one step.

    qkv: (B, G, L, 3·D) projections of the step's token groups (`Grouping.regroup`: cls in slot 0 when
    the step has it). Returns the attention output (B, G, L, D) in the same layout, before the output
    projection. With `record`, the probabilities are materialised, passed to `record` as
    (B, G, heads, L, L) and used; otherwise the fused `scaled_dot_product_attention` runs (on groups packed
    into sequences of up to PACK_TO tokens; for groups of at most MATH_BELOW tokens, matmul and softmax; for
    groups of at most SHORT_BELOW tokens, the Triton kernel of `timesformer.short_attention`).
    `record` returns the probabilities to go on with (the same tensor, or a detached one for conservative
    propagation). With `cls_only` (a step with cls, not recorded) only the cls queries are computed and
    (B, G, D) is returned: all the classifier needs from a model's last step.
    """
    B, G, L, three_d = qkv.shape
    D = three_d // 3
    hd = D // num_heads
    fused = record is None and L > MATH_BELOW
    if fused and L <= SHORT_BELOW and not cls_only and grouping.valid is None and dropout_p == 0.0:
        from . import short_attention as short

        if short.usable(qkv, L, hd):  # (B·G·L, 3D) → (B·G·L, D): rows in group order, as `attend` returns them
            return short.short_attention(qkv.reshape(B * G * L, three_d), num_heads, L).view(B, G, L, D)
    P = packing(B * G, L) if fused and not cls_only and grouping.valid is None else 1
    # (B, G, L, 3D) → 3 × (B·G/P, heads, P·L, hd): strided views, no copy. Unbinding the `3` axis in place (not
    # after moving it first) lets the backward stack dq, dk, dv straight into qkv's layout: one copy fewer.
    q, k, v = (t.transpose(1, 2) for t in qkv.view(B * G // P, P * L, 3, num_heads, hd).unbind(2))
    mask = None
    if grouping.valid is not None:  # (B·G, 1, 1, L): padding is never a key
        mask = grouping.valid[:, None, None, :].repeat(B, 1, 1, 1)
    if P > 1:  # (P·L, P·L): the packed groups do not see each other
        group = torch.arange(P * L, device=qkv.device) // L
        mask = group[:, None] == group[None, :]
    if cls_only:
        if record is not None or not grouping.with_cls:
            raise ValueError("cls_only needs a step with cls and no recording")
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v, attn_mask=mask, dropout_p=dropout_p)
        return out.reshape(B, G, D)  # (B·G, heads, 1, hd) → (B, G, D)
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    else:
        scores = (q @ k.transpose(-2, -1)) * hd**-0.5  # (B·G, heads, L, L)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1).view(B, G, num_heads, L, L)
        if record is not None:
            probs = record(probs)  # the tensor used below, so that its .grad can be retained
        out = F.dropout(probs, dropout_p).view(B * G, num_heads, L, L) @ v
    # (B·G/P, heads, P·L, hd) → (B, G, L, D); a view where the kernel wrote (B·G/P, P·L, heads, hd), as flash does
    return out.transpose(1, 2).reshape(B, G, L, D)


@contextlib.contextmanager
def short_groups(math_below: int = 0, pack_to: int = 0, short_below: int = 0) -> Iterator[None]:
    """MATH_BELOW, PACK_TO and SHORT_BELOW as given (0: off) inside the block, as they were after it: how the
    benchmarks time each way of attending short groups."""
    global MATH_BELOW, PACK_TO, SHORT_BELOW
    saved = MATH_BELOW, PACK_TO, SHORT_BELOW
    MATH_BELOW, PACK_TO, SHORT_BELOW = math_below, pack_to, short_below
    try:
        yield
    finally:
        MATH_BELOW, PACK_TO, SHORT_BELOW = saved


def packing(groups: int, L: int) -> int:
    """How many of `groups` groups of L tokens `attend` packs into one sequence: the most that fit in PACK_TO
    tokens and divide `groups` (1: none)."""
    if PACK_TO <= L:
        return 1
    return max(p for p in range(1, min(PACK_TO // L, groups) + 1) if groups % p == 0)


# --------------------------------------------------------------------------------------------------
# Dense maps, patterns and recording


def lift(grouping: Grouping, values: torch.Tensor) -> torch.Tensor:
    """Scatter per-group (..., G, L, L) values into a dense (..., M, M) frame-major matrix.

    cls query rows are averaged over the groups, as the model averages the cls outputs (for space_only
    the T per-frame cls tokens all map to index 0).
    """
    T, H, W = grouping.grid
    M = 1 + T * H * W
    G, L = grouping.index.shape
    slots = grouping.dense_slots().to(values.device)  # (G, L)
    pair = (slots[:, :, None] >= 0) & (slots[:, None, :] >= 0)  # (G, L, L)
    flat = (slots[:, :, None] * M + slots[:, None, :])[pair]  # (P,)
    weight = torch.ones(G, L, 1, dtype=values.dtype, device=values.device)
    if grouping.with_cls:
        weight[:, 0] = 1.0 / G
    lead = values.shape[:-3]
    vals = (values * weight).reshape(*lead, G * L * L)[..., pair.view(-1)]
    dense = torch.zeros(*lead, M * M, dtype=values.dtype, device=values.device)
    dense.index_add_(dense.dim() - 1, flat, vals)
    return dense.view(*lead, M, M)


def attention_pattern(
    attention_type: str, T: int, H_p: int, W_p: int, local_split: int = 2, global_stride: int = 2
) -> dict[str, torch.Tensor]:
    """{step: bool (1+T·N, 1+T·N) mask} of which key (column) each query (row) sees, frame-major."""
    out = {}
    for g in scheme_groupings(attention_type, (T, H_p, W_p), "cpu", local_split, global_stride):
        out[g.step] = lift(g, torch.ones(g.index.shape + g.index.shape[1:])) > 0
    return out


@dataclass
class AttentionMap:
    """The attention probabilities of one step of one layer, as the model computed them."""

    layer: int
    step: str
    probs: torch.Tensor  # (B, G, heads, L, L) raw, in the step's group/slot layout
    grouping: Grouping

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.grouping.grid

    def dense(self) -> torch.Tensor:
        """(B, heads, 1+T·N, 1+T·N) in frame-major order (0 = cls, 1 + t·N + h·W_p + w)."""
        return lift(self.grouping, self.probs.float().transpose(1, 2))  # (B, heads, G, L, L)

    def __repr__(self) -> str:
        return f"AttentionMap(layer={self.layer}, step={self.step!r}, probs={tuple(self.probs.shape)})"


class AttentionRecorder:
    """What `record_attention` yields: the recorded maps in forward order."""

    def __init__(self, keep_grad: bool = False, detach: bool = False, depth: int | None = None):
        self.maps: list[AttentionMap] = []
        self.keep_grad, self.detach = keep_grad, detach
        self.depth = depth  # the model's blocks, so that get(-1, ...) is the last layer, as layers=[-1] is

    def _add(self, layer: int, grouping: Grouping, probs: torch.Tensor) -> torch.Tensor:
        """Keep a map of `probs` and return the tensor the forward goes on with."""
        if self.detach:  # the forward goes on with constants; the kept map is the one gradients reach
            used = probs.detach().requires_grad_(self.keep_grad and probs.requires_grad)
            self.maps.append(AttentionMap(layer, grouping.step, used, grouping))
            return used
        if self.keep_grad and probs.requires_grad:
            probs.retain_grad()
            kept = probs
        else:
            kept = probs.detach()
        self.maps.append(AttentionMap(layer, grouping.step, kept, grouping))
        return probs

    def __iter__(self) -> Iterator[AttentionMap]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    def get(self, layer: int, step: str) -> AttentionMap:
        """The latest map of `layer`'s `step` (a negative layer counts from the end, as in Python)."""
        if self.depth is not None and -self.depth <= layer < 0:
            layer += self.depth
        for m in reversed(self.maps):
            if m.layer == layer and m.step == step:
                return m
        have = sorted({(m.layer, m.step) for m in self.maps})
        raise KeyError(f"no attention recorded for layer {layer}, step {step!r}; recorded: {have}")

    def clear(self) -> None:
        self.maps.clear()


@contextlib.contextmanager
def record_attention(model, layers=None, keep_grad: bool = False, detach: bool = False):
    """Record the attention probabilities of `layers` (default: all) during forward passes.

    >>> with record_attention(model, layers=[11]) as rec:
    ...     model(video)
    >>> rec.get(11, "space").dense().shape  # (B, heads, 1+T·N, 1+T·N)

    Inside the context the selected layers materialise their probabilities (the other layers keep
    the fused path); `keep_grad=True` keeps them in the graph with `.grad` retained, for
    gradient-weighted rollout. `detach=True` makes the probabilities constants of the forward (no gradient
    flows through the softmax into queries and keys), as conservative LRP propagation needs (Ali et al.,
    ICML 2022); with `keep_grad` too, each map's `.grad` is still the gradient with respect to it.
    `layers`: None or "all", an index or a list of them (negative ones count from the end, in `rec.get` too).
    Raises if nothing was recorded.
    """
    blocks = model.blocks
    depth = len(blocks)
    if layers is None or layers == "all":
        layers = range(depth)
    elif isinstance(layers, int) or not isinstance(layers, Iterable) or isinstance(layers, str):
        layers = [layers]
    given = list(layers)
    if not given:  # else nothing is recorded, and the error at the end blames the forward pass
        raise ValueError("layers is empty: give at least one layer index, or None for all")
    for i in given:
        if isinstance(i, bool) or not hasattr(i, "__index__"):  # 1.5 would have been layer 1
            raise ValueError(f"layers must be None, 'all', or layer indices (int); got {i!r}")
    bad = [int(i) for i in given if not -depth <= int(i) < depth]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {depth} blocks (0 to {depth - 1}; -1: the last)")
    layers = sorted({int(i) % depth for i in given})
    rec = AttentionRecorder(keep_grad, detach, depth)
    modules = []
    for i in layers:
        for attn in blocks[i].step_attentions():
            if attn.recorder is not None:
                raise RuntimeError("record_attention is already active on this model")
            attn.recorder = functools.partial(rec._add, i)
            modules.append(attn)
    try:
        yield rec
    finally:
        for attn in modules:
            attn.recorder = None
    if not rec.maps:
        raise RuntimeError("record_attention recorded nothing: run a forward pass of the model inside the block")


__all__ = [
    "KEYS", "ROLES", "SCHEMES", "STEP_NAMES", "Step", "Scheme", "Grouping", "Layout", "AttentionMap",
    "AttentionRecorder", "attend", "attention_pattern", "lift", "record_attention", "scheme_groupings",
]
