"""The five schemes as data: which tokens attend to each other in every attention step, and how the model
moves tokens into those groups and back.

Every scheme is a sequence of *steps*. A step gives each axis of the (T, H_p, W_p) patch grid a role, which
partitions the patch tokens into groups (a token attends only to tokens of its own group), and says whether
the `cls` token takes part. Nothing else distinguishes the schemes: the model runs the same code for all of
them, and `attention_pattern` derives its masks from the same groupings.

Token order, everywhere in this package: index 0..C-1 are the `cls` token(s) (C = 1, or T for
`space_only`, whose frames keep their own `cls` as in the official code), then the patches frame-major,
patch (t, h, w) at C + t·N + h·W_p + w.

`cls` rule. In a step with `with_cls`, every group gets the `cls` token prepended as query and key; with
C = 1 its outputs over the G groups are averaged back into one token (the official rule of the divided space
step, which also copies cls into every frame *before* the step's norm and qkv, as we do), with C = G each
group has its own `cls`. In a step without it, `cls` is neither query nor key and is left unchanged (the
official divided time step). Time steps skip `cls`; every other step includes it, so in L+G `cls` sees each
local window and each stride-2 subset (averaged over them), and in axial it sees every row, then every column.

Moving tokens. Where every group has the same size (always, except L+G on most grids with an odd side), a step's
groups are a reshape and a permutation of the patch grid (`Layout`): the model regroups by views and one
strided copy, and adds the result back through a permuted view, with no index tensors. Elsewhere it gathers
by `Grouping.index` and scatters back by `Grouping.inverse`. Both give the same groups in the same slot order
(tested), which is also the order of recorded attention maps.

Odd sizes. Groups need not be equal: a split of an odd dimension gives windows of ceil and floor size (local
windows of a 7-wide grid span 4 and 3 columns) and stride-2 subsets of an odd dimension differ in size by
one. Unequal groups are padded to the longest and the padding is masked out of the keys, so no token ever
sees a padding slot and no group is ever empty.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# --------------------------------------------------------------------------------------------------
# The steps as data: a role for each grid axis (t, h, w)
#   "group":  tokens that differ in this coordinate never meet (each value its own group)
#   "slot":   the whole axis lies inside one group
#   "window": the axis is cut into `local_split` contiguous windows: the window is part of the group,
#             the position inside it a slot (paper: the F × H/2 × W/2 neighbourhood)
#   "stride": the residue mod `global_stride` is part of the group, the quotient a slot (paper: the clip
#             at stride 2)
ROLES: dict[str, tuple[str, str, str]] = {
    "space": ("group", "slot", "slot"),  # one group per frame: N keys
    "time": ("slot", "group", "group"),  # one group per position: T keys
    "joint": ("slot", "slot", "slot"),  # the whole clip: T·N keys
    "local": ("slot", "window", "window"),  # F × H/2 × W/2 windows: T·N/4 keys
    "global": ("stride", "stride", "stride"),  # the clip at stride 2 in t, h and w: T·N/8 keys
    "width": ("group", "group", "slot"),  # a row of one frame: W_p keys
    "height": ("group", "slot", "group"),  # a column of one frame: H_p keys
}
STEP_NAMES = tuple(ROLES)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _group_key(roles: tuple[str, str, str], t, h, w, T: int, H: int, W: int, s):
    """Group id of patches (t, h, w) (numpy arrays or tensors): the group parts of the three axes in
    lexicographic order, so that group ids sort as the reshaped layout orders its groups."""
    key = t * 0
    for role, c, n in zip(roles, (t, h, w), (T, H, W)):
        if role == "group":
            key = key * n + c
        elif role == "window":
            key = key * s.local_split + c // _ceil_div(n, s.local_split)
        elif role == "stride":
            key = key * s.global_stride + c % s.global_stride
    return key


# key(t, h, w, T, H, W, split) → group id; tokens with equal ids attend to each other (`analysis.cost`
# counts group sizes with these, `_build_grouping` builds the gather indices from them)
GroupKey = Callable[..., object]
KEYS: dict[str, GroupKey] = {name: functools.partial(_group_key, roles) for name, roles in ROLES.items()}


@dataclass(frozen=True)
class Step:
    name: str  # a key of ROLES
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


# --------------------------------------------------------------------------------------------------
# Groupings


@dataclass(frozen=True)
class Layout:
    """A step's groups as a reshape of the patch grid: patches (B, T·N, D) viewed as (B, *shape, D), the
    sub-axes permuted by `perm` into (B, *group_shape, *slot_shape, D) (group sub-axes first, each part in
    t, h, w order) and flattened into (B, G, L0, D), L0 the patch slots of a group."""

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    group_shape: tuple[int, ...]
    slot_shape: tuple[int, ...]

    @property
    def groups(self) -> int:
        return math.prod(self.group_shape)

    @property
    def slots(self) -> int:
        return math.prod(self.slot_shape)

    inverse_perm: tuple[int, ...]  # (B, *group_shape, *slot_shape, D) → (B, *shape, D)


def _layout(roles: tuple[str, str, str], grid: tuple[int, int, int], split: _Split) -> Layout | None:
    """The reshape that forms the step's groups, or None when they are unequal (a split of an odd side):
    exactly when `_build_grouping` pads."""
    shape, group_axes, slot_axes = [], [], []

    def axis(size: int, part: str) -> None:
        (group_axes if part == "group" else slot_axes).append(len(shape))
        shape.append(size)

    for role, n in zip(roles, grid):
        if role in ("group", "slot"):
            axis(n, role)
        elif role == "window":  # (window, position inside it): windows of ceil(n / split), as the key
            size = _ceil_div(n, split.local_split)
            if n % size:
                return None
            axis(n // size, "group")
            axis(size, "slot")
        else:  # stride: (quotient, residue); fewer than `stride` positions are one residue each
            g = min(split.global_stride, n)
            if n % g:
                return None
            axis(n // g, "slot")
            axis(g, "group")
    perm = tuple(group_axes + slot_axes)
    return Layout(tuple(shape), perm, tuple(shape[i] for i in group_axes), tuple(shape[i] for i in slot_axes),
                  tuple(perm.index(i) for i in range(len(perm))))


@dataclass(frozen=True)
class Grouping:
    """How one step regroups the tokens of a (T, H_p, W_p) clip.

    The index tensors describe a sequence of length (C if with_cls else 0) + T·N (cls first, then the
    patches): index[g, i] is the sequence position of slot i of group g (slot 0 is cls when with_cls);
    valid[g, i] is False for padding slots (None when all groups are full); inverse[p] is the flat slot
    g·L + i that holds patch p. Recorded maps and `lift` read them; the model moves tokens by `layout`
    where there is one and by `patch_index` / `inverse` elsewhere.
    """

    step: str
    grid: tuple[int, int, int]
    num_cls: int
    with_cls: bool
    index: torch.Tensor  # (G, L) long
    valid: torch.Tensor | None  # (G, L) bool
    inverse: torch.Tensor  # (T·N,) long
    layout: Layout | None = None  # the reshape that forms the groups, when they are equal
    patch_index: torch.Tensor | None = None  # (G, L0) patch of each patch slot (padding: 0), gather path only

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

    # ----------------------------------------------------------------------------------------------
    # moving tokens: (cls, patches) → (B, G, L, D) groups and back
    def is_sequence(self, whole: torch.Tensor | None) -> bool:
        """Whether the step's groups are the token sequence `whole` itself: one group, holding the one cls
        and then every patch in frame-major order."""
        return whole is not None and self.with_cls and self.num_cls == 1 and self.num_groups == 1

    def regroup(self, cls: torch.Tensor, patches: torch.Tensor, whole: torch.Tensor | None = None) -> torch.Tensor:
        """The step's token groups (B, G, L, D), cls first in every group when the step has it.

        cls: (B, C, D); patches: (B, T·N, D) frame-major; `whole`, when given, is the sequence (B, C + T·N, D)
        whose views cls and patches are: a step whose one group is that sequence then copies nothing.
        """
        B, _, D = patches.shape
        lay = self.layout
        if self.is_sequence(whole):
            return whole[:, None]  # (B, 1, 1 + T·N, D): e.g. joint attention, whose one group is the sequence
        if lay is None:  # unequal groups: gather, padding slots hold patch 0
            grouped = patches[:, self.patch_index]  # (B, G, L0, D)
            group_shape = grouped.shape[1:2]
        else:
            group_shape = lay.group_shape
            grouped = patches.view(B, *lay.shape, D).permute(0, *(1 + i for i in lay.perm), len(lay.perm) + 1)
            # (B, *group_shape, L0, D): a view, except for L+G, whose slot sub-axes lie strided apart
            grouped = grouped.reshape(B, *group_shape, lay.slots, D)
        G = math.prod(group_shape)
        if not self.with_cls:  # the norm needs contiguous tokens: one strided copy where the order changes
            return grouped.reshape(B, G, -1, D).contiguous()
        # (B, *group_shape, 1, D): the one cls copied into every group, or each group's own
        ones = (1,) * len(group_shape)
        head = cls.view(B, *ones, 1, D).expand(B, *group_shape, 1, D) if self.num_cls == 1 \
            else cls.view(B, *group_shape, 1, D)
        # the cat writes the permuted tokens and the cls copies in one pass; (B, G, L, D) is a view of it
        return torch.cat([head, grouped], dim=-2).view(B, G, -1, D)

    def add_back(self, cls: torch.Tensor, patches: torch.Tensor, y: torch.Tensor, whole: torch.Tensor | None = None):
        """The residual update: (cls, patches, whole) + the step's outputs `y` (B, G, L, D) in group layout.

        cls outputs are averaged over the groups (C = 1) or kept per group (C = G); patch outputs go back
        to frame-major order through a permuted view (or the `inverse` gather). Returns the new
        (cls, patches, whole); `whole` is None unless the new tokens are one sequence again.
        """
        B, _, D = patches.shape
        if self.is_sequence(whole):
            whole = whole + y.squeeze(1)  # (B, 1 + T·N, D); a view, whose backward copies nothing
            return whole[:, :1], whole[:, 1:], whole
        lay = self.layout
        if lay is None:  # unequal groups: `inverse` indexes the slots of every group, cls slot included
            if self.with_cls:
                cls = self.add_cls(cls, y[:, :, 0])
            return cls, patches + y.reshape(B, -1, D)[:, self.inverse], None  # (B, T·N, D)
        if self.with_cls:  # split, not sliced: the backward writes both parts' gradients into one tensor
            y_cls, y = y.split([1, y.shape[2] - 1], dim=2)
            cls = self.add_cls(cls, y_cls.squeeze(2))
        back = y.view(B, *lay.group_shape, *lay.slot_shape, D)
        back = back.permute(0, *(1 + i for i in lay.inverse_perm), len(lay.perm) + 1)  # (B, *shape, D)
        # the addition reads the permuted view and writes frame-major tokens: (B, T·N, D)
        return cls, (patches.view(B, *lay.shape, D) + back).reshape(B, -1, D), None

    def add_cls(self, cls: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """cls + the step's cls outputs `out` (B, G, D): averaged over the groups for one cls, else per group."""
        return cls + (out.mean(1, keepdim=True) if self.num_cls == 1 else out)


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
    patch_index = torch.zeros(G * L, dtype=torch.long)
    patch_index[slot] = p
    valid = torch.zeros(G * L, dtype=torch.bool)
    valid[slot] = True
    patch_index, valid = patch_index.view(G, L), valid.view(G, L)
    index = patch_index + (num_cls if step.with_cls else 0)
    if step.with_cls:
        if num_cls not in (1, G):
            raise ValueError(f"{num_cls} cls tokens cannot be spread over {G} groups of the {step.name} step")
        index[:, 0] = torch.arange(G) if num_cls == G else 0
        valid[:, 0] = True
    layout = _layout(ROLES[step.name], grid, split)
    return Grouping(step.name, grid, num_cls, step.with_cls, index, None if bool(valid.all()) else valid, slot,
                    layout, None if layout is not None else patch_index[:, off:].contiguous())


@functools.lru_cache(maxsize=256)
def scheme_groupings(
    attention_type: str,
    grid: tuple[int, int, int],
    device: str = "cpu",
    local_split: int = 2,
    global_stride: int = 2,
) -> tuple[Grouping, ...]:
    """The groupings of each step of a scheme for a (T, H_p, W_p) grid, cached per device.

    Built outside inference mode whatever mode the caller is in: the cached index tensors are then ordinary
    tensors, which later forwards may save for backward (an inference tensor could not be).
    """
    if attention_type not in SCHEMES:
        raise ValueError(f"unknown attention_type {attention_type!r}; choose one of {', '.join(SCHEMES)}")
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive sizes (T, H_p, W_p), got {grid}")
    scheme = SCHEMES[attention_type]
    num_cls = grid[0] if scheme.cls_per_frame else 1
    out = []
    with torch.inference_mode(False), torch.no_grad():
        for step in scheme.steps:
            g = _build_grouping(step, tuple(grid), num_cls, _Split(local_split, global_stride))
            out.append(dataclasses.replace(g, index=_to(g.index, device), valid=_to(g.valid, device),
                                           inverse=_to(g.inverse, device), patch_index=_to(g.patch_index, device)))
    return tuple(out)


def _to(x: torch.Tensor | None, device: str) -> torch.Tensor | None:
    return None if x is None else x.to(device)
