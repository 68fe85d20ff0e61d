"""The one attention core, the five schemes as data, and attention recording.

Every scheme is a sequence of *steps*. A step partitions the patch tokens of a clip into groups (a
token attends only to tokens of its own group) by a key computed from its (t, h, w) position, and says
whether the `cls` token takes part. Nothing else distinguishes the schemes: the model runs the same
code for all of them, and `attention_pattern` derives its masks from the same groupings.

Token order, everywhere in this package: index 0..C-1 are the `cls` token(s) (C = 1, or T for
`space_only`, whose frames keep their own `cls` as in the official code), then the patches
frame-major, patch (t, h, w) at C + t·N + h·W_p + w.

`cls` rule. In a step with `with_cls`, every group gets the `cls` token prepended as query and key;
with C = 1 its outputs over the G groups are averaged back into one token (the official rule of the
divided space step), with C = G each group has its own `cls`. In a step without it, `cls` is neither
query nor key and is left unchanged (the official divided time step). Time steps skip `cls`; every
other step includes it, so in L+G `cls` sees each local window and each stride-2 subset (averaged over
them), and in axial it sees every row, then every column.

Odd sizes. Groups need not be equal: a split of an odd dimension gives windows of ceil and floor size
(local windows of a 7-wide grid span 4 and 3 columns) and stride-2 subsets of an odd dimension differ
in size by one. Unequal groups are padded to the longest and the padding is masked out of the keys, so
no token ever sees a padding slot and no group is ever empty.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# The schemes as data


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# Each key maps patch coordinates (t, h, w) of a (T, H, W) grid to a group id; tokens with equal ids
# attend to each other. `s` carries the L+G window split and stride.
GroupKey = Callable[..., torch.Tensor]
KEYS: dict[str, GroupKey] = {
    "space": lambda t, h, w, T, H, W, s: t,  # one group per frame: N keys
    "time": lambda t, h, w, T, H, W, s: h * W + w,  # one group per position: T keys
    "joint": lambda t, h, w, T, H, W, s: torch.zeros_like(t),  # the whole clip: T·N keys
    # F × H/2 × W/2 windows: T·N/4 keys
    "local": lambda t, h, w, T, H, W, s: (h // _ceil_div(H, s.local_split)) * s.local_split
    + w // _ceil_div(W, s.local_split),
    # the clip at stride 2 in t, h and w: T·N/8 keys
    "global": lambda t, h, w, T, H, W, s: ((t % s.global_stride) * s.global_stride + h % s.global_stride)
    * s.global_stride
    + w % s.global_stride,
    "width": lambda t, h, w, T, H, W, s: t * H + h,  # a row of one frame: W_p keys
    "height": lambda t, h, w, T, H, W, s: t * W + w,  # a column of one frame: H_p keys
}
STEP_NAMES = tuple(KEYS)


@dataclass(frozen=True)
class Step:
    name: str  # a key of KEYS
    with_cls: bool  # whether cls is a query and key of this step
    # Module-name prefix of an extra step ("temporal" → temporal_norm1 / temporal_attn / temporal_fc,
    # with a zero-initialised fc). None: the block's main ViT attention, norm1 / attn.
    prefix: str | None


@dataclass(frozen=True)
class Scheme:
    steps: tuple[Step, ...]
    cls_per_frame: bool = False  # space_only keeps one cls per frame, averaged at the end


# The last step of each block is its main attention (norm1/attn, initialisable from an image ViT);
# earlier steps are extra steps with their own norm, qkv, proj and zero-initialised fc.
SCHEMES: dict[str, Scheme] = {
    "space_only": Scheme((Step("space", True, None),), cls_per_frame=True),
    "joint_space_time": Scheme((Step("joint", True, None),)),
    "divided_space_time": Scheme((Step("time", False, "temporal"), Step("space", True, None))),
    "sparse_local_global": Scheme((Step("local", True, "local"), Step("global", True, None))),
    "axial": Scheme((Step("time", False, "temporal"), Step("width", True, "width"), Step("height", True, None))),
}


@dataclass(frozen=True)
class _Split:
    local_split: int = 2
    global_stride: int = 2


@dataclass(frozen=True)
class Grouping:
    """How one step regroups a token sequence of length (C if with_cls else 0) + T·N.

    index[g, i] is the sequence position of slot i of group g (slot 0 is cls when with_cls);
    valid[g, i] is False for padding slots (None when all groups are full);
    inverse[p] is the flat slot g·L + i that holds patch p.
    """

    step: str
    grid: tuple[int, int, int]
    num_cls: int
    with_cls: bool
    index: torch.Tensor  # (G, L) long
    valid: torch.Tensor | None  # (G, L) bool
    inverse: torch.Tensor  # (T·N,) long

    @property
    def num_groups(self) -> int:
        return self.index.shape[0]

    def dense_slots(self) -> torch.Tensor:
        """(G, L) frame-major dense index (0 = cls, 1 + t·N + h·W_p + w) of each slot, -1 for padding."""
        offset = self.num_cls if self.with_cls else 0
        slots = self.index - offset + 1  # patch p → 1 + p; cls slots become ≤ 0
        if self.with_cls:
            slots[:, 0] = 0
        if self.valid is not None:
            slots = slots.masked_fill(~self.valid, -1)
        return slots


def _build_grouping(step: Step, grid: tuple[int, int, int], num_cls: int, split: _Split) -> Grouping:
    T, H, W = grid
    n = T * H * W
    p = torch.arange(n)
    t, h, w = p // (H * W), (p // W) % H, p % W
    _, gid = torch.unique(KEYS[step.name](t, h, w, T, H, W, split), return_inverse=True)
    G = int(gid.max()) + 1
    counts = torch.bincount(gid, minlength=G)
    order = torch.argsort(gid * n + p)  # patches grouped, frame-major inside each group
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - starts[gid[order]]
    off = 1 if step.with_cls else 0
    L = int(counts.max()) + off
    slot = gid * L + off + rank  # (n,) flat slot of each patch
    index = torch.zeros(G * L, dtype=torch.long)
    index[slot] = p + (num_cls if step.with_cls else 0)
    valid = torch.zeros(G * L, dtype=torch.bool)
    valid[slot] = True
    index, valid = index.view(G, L), valid.view(G, L)
    if step.with_cls:
        if num_cls not in (1, G):
            raise ValueError(f"{num_cls} cls tokens cannot be spread over {G} groups of the {step.name} step")
        index[:, 0] = torch.arange(G) if num_cls == G else 0
        valid[:, 0] = True
    return Grouping(step.name, grid, num_cls, step.with_cls, index, None if bool(valid.all()) else valid, slot)


@functools.lru_cache(maxsize=256)
def scheme_groupings(
    attention_type: str,
    grid: tuple[int, int, int],
    device: str = "cpu",
    local_split: int = 2,
    global_stride: int = 2,
) -> tuple[Grouping, ...]:
    """The groupings of each step of a scheme for a (T, H_p, W_p) grid, cached per device."""
    if attention_type not in SCHEMES:
        raise ValueError(f"unknown attention_type {attention_type!r}; choose one of {', '.join(SCHEMES)}")
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive sizes (T, H_p, W_p), got {grid}")
    scheme = SCHEMES[attention_type]
    num_cls = grid[0] if scheme.cls_per_frame else 1
    out = []
    for step in scheme.steps:
        g = _build_grouping(step, tuple(grid), num_cls, _Split(local_split, global_stride))
        out.append(
            Grouping(
                g.step, g.grid, g.num_cls, g.with_cls, g.index.to(device),
                None if g.valid is None else g.valid.to(device), g.inverse.to(device),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# The attention core


def attend(
    qkv: torch.Tensor,
    grouping: Grouping,
    num_heads: int,
    dropout_p: float = 0.0,
    record: Callable[[torch.Tensor], None] | None = None,
    cls_only: bool = False,
) -> torch.Tensor:
    """Multi-head attention within the groups of one step.

    qkv: (B, S, 3·D) projections of the step's token sequence (S = C + T·N with cls, else T·N).
    Returns the attention output (B, S, D) in the same order, before the output projection; with
    C = 1 the cls outputs of all groups are averaged. With `record`, the probabilities are
    materialised, passed to `record` as (B, G, heads, L, L) and used; otherwise the fused
    `scaled_dot_product_attention` runs; `record` returns the probabilities to go on with (the same
    tensor, or a detached one for conservative propagation). With `cls_only` (a step with cls, not
    recorded) only the cls queries are computed and (B, C, D) is returned: all the classifier needs from a
    model's last step.
    """
    B, S, three_d = qkv.shape
    D = three_d // 3
    hd = D // num_heads
    G, L = grouping.index.shape
    # (B, G·L, 3D) → (3, B·G, heads, L, hd)
    q, k, v = qkv[:, grouping.index.view(-1)].view(B * G, L, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
    mask = None
    if grouping.valid is not None:  # (B·G, 1, 1, L): padding is never a key
        mask = grouping.valid[:, None, None, :].repeat(B, 1, 1, 1)
    if cls_only:
        if record is not None or not grouping.with_cls:
            raise ValueError("cls_only needs a step with cls and no recording")
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v, attn_mask=mask, dropout_p=dropout_p)
        cls = out.reshape(B, G, D)  # (B·G, heads, 1, hd) → (B, G, D)
        return cls.mean(1, keepdim=True) if grouping.num_cls == 1 else cls
    if record is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    else:
        scores = (q @ k.transpose(-2, -1)) * hd**-0.5  # (B·G, heads, L, L)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1).view(B, G, num_heads, L, L)
        probs = record(probs)  # the tensor used below, so that its .grad can be retained
        out = F.dropout(probs, dropout_p).view(B * G, num_heads, L, L) @ v
    out = out.transpose(1, 2).reshape(B, G * L, D)  # (B, G·L, D), slot order
    patches = out[:, grouping.inverse]  # (B, T·N, D)
    if not grouping.with_cls:
        return patches
    cls = out.view(B, G, L, D)[:, :, 0]  # (B, G, D)
    if grouping.num_cls == 1:
        cls = cls.mean(1, keepdim=True)
    return torch.cat([cls, patches], dim=1)


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

    def __init__(self, keep_grad: bool = False, detach: bool = False):
        self.maps: list[AttentionMap] = []
        self.keep_grad, self.detach = keep_grad, detach

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
        """The latest map of `layer`'s `step`."""
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
    Raises if nothing was recorded.
    """
    blocks = model.blocks
    depth = len(blocks)
    if layers is None:
        layers = range(depth)
    elif isinstance(layers, int):
        layers = [layers]
    layers = sorted({int(i) + depth if int(i) < 0 else int(i) for i in layers})
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {depth} blocks")
    rec = AttentionRecorder(keep_grad, detach)
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


def full_recording_bytes(attention_type: str, grid: tuple[int, int, int], num_heads: int, depth: int,
                         batch: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes of the raw probabilities a full recording keeps (before any dense())."""
    total = 0
    for g in scheme_groupings(attention_type, tuple(grid)):
        G, L = g.index.shape
        total += G * L * L
    return total * num_heads * depth * batch * bytes_per_value


__all__ = [
    "SCHEMES", "STEP_NAMES", "Step", "Scheme", "Grouping", "AttentionMap", "AttentionRecorder",
    "attend", "attention_pattern", "lift", "record_attention", "scheme_groupings", "full_recording_bytes",
]
