"""Attention rollout (Abnar & Zuidema, 2020) and its gradient-weighted variant, through every step of
every scheme: a factorised block contributes the product of its steps, each applied group by group."""

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


def _apply(v: torch.Tensor, p: torch.Tensor, g: Grouping) -> torch.Tensor:
    """v @ A' for rows v (B, R, M), where A' = rows-renormalised 0.5·A + 0.5·I (Abnar & Zuidema's
    residual mixing) and A is the step's dense matrix — computed group by group, never densely:
    v @ A' = 0.5·(u @ A) + 0.5·u with u = v / rowsum(0.5·A + 0.5·I)."""
    M = v.shape[-1]
    slots = g.dense_slots().to(v.device)  # (G, L), -1 = padding
    valid = slots >= 0
    G = slots.shape[0]
    weight = valid.float()
    if g.with_cls:
        weight[:, 0] = 1.0 / G  # cls' dense row is the mean of its G group rows
    flat = slots[valid]
    rowsum = v.new_zeros(v.shape[0], M).index_add_(1, flat, (p.sum(-1) * weight)[:, valid])  # (B, M)
    u = v / (0.5 * rowsum[:, None] + 0.5)
    us = u[:, :, slots.clamp(min=0)] * weight  # (B, R, G, L)
    y = torch.einsum("brgi,bgij->brgj", us, p)  # (B, R, G, L)
    ua = v.new_zeros(v.shape).index_add_(2, flat, y[:, :, valid])
    return 0.5 * ua + 0.5 * u


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
        v = _apply(v.to(p.device), _discard(p, m.grouping, discard_ratio), m.grouping)
    return v if query is None else v[:, 0, 1:].reshape(B, T, H, W)


def attention_rollout(model, video: torch.Tensor, head="mean", discard_ratio: float = 0.0,
                      query="cls") -> torch.Tensor:
    """(B, T, H_p, W_p) rollout of `query`'s attention on `video`: one recorded forward, then `rollout`."""
    _, rec = recorded_forward(model, video)
    return rollout(rec, head, discard_ratio, query)


def grad_rollout(model, video: torch.Tensor, target=None, head="mean", discard_ratio: float = 0.0,
                 query="cls") -> torch.Tensor:
    """Gradient-weighted rollout: each step's probabilities weighted by the gradient of the target
    logit with respect to them, clamped at zero, heads fused, then rolled out.

    `target`: class index (int or (B,) tensor); default the predicted class. Returns (B, T, H_p, W_p).
    """
    model.zero_grad(set_to_none=True)
    with torch.enable_grad(), record_attention(model, keep_grad=True) as rec:
        logits = model(video)
        target = target_classes(logits, target)
        logits.gather(1, target[:, None]).sum().backward()
    weights = {(m.layer, m.step): m.probs.grad for m in rec}
    model.zero_grad(set_to_none=True)
    return rollout(rec, head, discard_ratio, query, weights=weights)
