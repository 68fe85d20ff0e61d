"""Attention flow through every step of every scheme: attention rollout (Abnar & Zuidema, 2020), its
gradient-weighted variant, and Generic Attention-model Explainability (GAE, Chefer et al., ICCV 2021). A
factorised block contributes the product of its steps, each applied group by group — never as a dense
(1+T·N)² matrix."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from analysis.maps import fuse_heads, query_index, recorded_forward, target_classes
from timesformer.attention import AttentionMap, Grouping, record_attention


def fused_probs(m: AttentionMap, head="mean", weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, G, L, L) probabilities of one step with heads fused, in its group layout.

    `weights` (same shape as m.probs) multiplies the probabilities first, as gradient-weighted rollout
    does; the product is then clamped at zero.
    """
    probs = m.probs.detach().float()
    if weights is not None:
        probs = (probs * weights.float()).clamp(min=0)
    return fuse_heads(probs, head, dim=2)


def _discard(p: torch.Tensor, g: Grouping, ratio: float) -> torch.Tensor:
    """Zero the weakest `ratio` share of the keys each query sees (never cls), before renormalising."""
    if ratio <= 0:
        return p
    valid = g.valid if g.valid is not None else torch.ones(g.index.shape, dtype=torch.bool)
    keys = valid.clone().to(p.device)
    if g.with_cls:
        keys[:, 0] = False
    k = int(keys.sum(1).min()) if keys.any() else 0
    k = int(k * ratio)
    if k == 0:
        return p
    scored = p.masked_fill(~keys[None, :, None, :], float("inf"))  # only real, non-cls keys can go
    low = scored.topk(k, dim=-1, largest=False).indices
    return p.scatter(-1, low, 0.0)


def _slots(g: Grouping, device, cls_mean: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(G, L) dense index of each slot (-1 padding), validity, and the weight of each slot's row in the
    dense matrix. `cls` is a query in each of the G groups and the model averages its G outputs: its row of
    the attention matrix is therefore the mean of its G group rows (`cls_mean`), while a product with the
    gradient, ∇A ⊙ A, is the same whether taken per group or on that mean row, and adds up (weight 1)."""
    slots = g.dense_slots().to(device)
    valid = slots >= 0
    weight = valid.float()
    if g.with_cls and cls_mean:
        weight[:, 0] = 1.0 / slots.shape[0]
    return slots, valid, weight


def _times(v: torch.Tensor, p: torch.Tensor, g: Grouping, cls_mean: bool = True) -> torch.Tensor:
    """v @ A for rows v (B, R, M), where A is the dense matrix of one step's (B, G, L, L) values `p`."""
    slots, valid, weight = _slots(g, v.device, cls_mean)
    us = v[:, :, slots.clamp(min=0)] * weight  # (B, R, G, L): each row's entries at every slot
    with torch.autocast(v.device.type, enabled=False):  # in fp32 even inside a mixed-precision caller
        y = torch.einsum("brgi,bgij->brgj", us, p.to(us.dtype))  # (B, R, G, L)
    return v.new_zeros(v.shape).index_add_(2, slots[valid], y[:, :, valid])


def _apply(v: torch.Tensor, p: torch.Tensor, g: Grouping, cls_mean: bool = True) -> torch.Tensor:
    """v @ A' for rows v (B, R, M), where A' = rows-renormalised 0.5·A + 0.5·I (Abnar & Zuidema's
    residual mixing): v @ A' = 0.5·(u @ A) + 0.5·u with u = v / rowsum(0.5·A + 0.5·I)."""
    slots, valid, weight = _slots(g, v.device, cls_mean)
    rowsum = v.new_zeros(v.shape[0], v.shape[-1]).index_add_(1, slots[valid], (p.sum(-1) * weight)[:, valid])
    u = v / (0.5 * rowsum[:, None] + 0.5)  # (B, R, M)
    return 0.5 * _times(u, p, g, cls_mean) + 0.5 * u


def rollout(maps: Iterable[AttentionMap], head="mean", discard_ratio: float = 0.0, query=None,
            weights: dict | None = None) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through every recorded step, in forward order.

    Each step's matrix (heads fused) is mixed with its residual, 0.5·A + 0.5·I, rows renormalised, and
    the steps are multiplied in forward order, so a factorised block (time then space, …) contributes
    the product of its steps. `discard_ratio` zeroes the weakest share of each query's keys first.
    With `query` (e.g. "cls" or (t, h, w)) only that row is rolled out and the result is
    (B, T, H_p, W_p) over the patches; without it, the full (B, M, M) matrix. Steps are applied group
    by group, never as dense matrices. `weights` maps (layer, step) to gradients for
    gradient-weighted rollout (see `grad_rollout`).
    """
    if not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio is the share of weights dropped: at least 0 and below 1, got {discard_ratio}")
    maps = list(maps)
    if not maps:
        raise ValueError("rollout needs recorded attention maps: record the model's forward first")
    layers = sorted({m.layer for m in maps})
    if layers != list(range(len(layers))):
        raise ValueError(f"rollout needs every layer from 0 recorded; got layers {layers}")
    T, H, W = grid = maps[0].grid
    M = 1 + T * H * W
    B = maps[0].probs.shape[0]
    if query is None:
        v = torch.eye(M).expand(B, M, M).clone()
    else:
        v = torch.zeros(B, 1, M)
        v[:, 0, query_index(query, grid)] = 1
    for m in reversed(maps):  # row-vector products from the last step back to the first
        p = fused_probs(m, head, None if weights is None else weights[(m.layer, m.step)])
        v = _apply(v.to(p.device), _discard(p, m.grouping, discard_ratio), m.grouping, cls_mean=weights is None)
    return v if query is None else v[:, 0, 1:].reshape(B, T, H, W)


def attention_rollout(model, video: torch.Tensor, head="mean", discard_ratio: float = 0.0,
                      query="cls") -> torch.Tensor:
    """(B, T, H_p, W_p) rollout of `query`'s attention on `video`: one recorded forward, then `rollout`."""
    _, rec = recorded_forward(model, video)
    return rollout(rec, head, discard_ratio, query)


def attention_gradients(model, video: torch.Tensor, target=None) -> tuple[list[AttentionMap], dict]:
    """Every step's recorded probabilities and {(layer, step): gradient of the target logit with respect to
    them}, from one forward and backward. `target`: class index (int or (B,) tensor); default the
    predicted class. The model's parameters get no gradient, and need none: the clip is made to require one, so
    the graph exists even for a frozen model (requires_grad False)."""
    video = video.detach().requires_grad_()
    with torch.enable_grad(), record_attention(model, keep_grad=True) as rec:
        logits = model(video)
        score = logits.gather(1, target_classes(logits, target)[:, None]).sum()
        grads = torch.autograd.grad(score, [m.probs for m in rec])
    return list(rec), {(m.layer, m.step): g for m, g in zip(rec, grads)}


def grad_rollout(model, video: torch.Tensor, target=None, head="mean", discard_ratio: float = 0.0,
                 query="cls") -> torch.Tensor:
    """Gradient-weighted rollout: each step's probabilities weighted by the gradient of the target
    logit with respect to them, clamped at zero, heads fused, then rolled out. Returns (B, T, H_p, W_p)."""
    maps, weights = attention_gradients(model, video, target)
    return rollout(maps, head, discard_ratio, query, weights=weights)


def gae_flow(maps: list[AttentionMap], grads: dict, query="cls") -> torch.Tensor:
    """The `query` row of GAE's relevance matrix, (B, T, H_p, W_p) over the patches.

    Chefer et al. (ICCV 2021), rule for self-attention: R = I, then for every attention step in forward
    order R ← R + Ā·R with Ā = mean over heads of (∇A ⊙ A)⁺, so R = (I + Ā_n)···(I + Ā_1) and its row is
    propagated from the last step back to the first, group by group. Each step of a factorised block
    is a step here. `cls`, a query in each of a step's G groups, gets the sum of its G rows' products (none
    in time steps, where it takes no part).
    """
    T, H, W = grid = maps[0].grid
    B = maps[0].probs.shape[0]
    v = torch.zeros(B, 1, 1 + T * H * W, device=maps[0].probs.device)
    v[:, 0, query_index(query, grid)] = 1
    for m in reversed(maps):
        v = v + _times(v, fused_probs(m, "mean", grads[(m.layer, m.step)]), m.grouping, cls_mean=False)
    return v[:, 0, 1:].reshape(B, T, H, W)


def gae(model, video: torch.Tensor, target=None, query="cls") -> torch.Tensor:
    """Generic Attention-model Explainability (Chefer et al., ICCV 2021) of `target` (default: the
    predicted class): one forward and one backward, then `gae_flow`. Returns (B, T, H_p, W_p)."""
    maps, grads = attention_gradients(model, video, target)
    return gae_flow(maps, grads, query)
