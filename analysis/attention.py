"""Recorded attention as maps, rollout and summary numbers, for every scheme.

All maps come back on the clip's patch grid `(B, T, H_p, W_p)`, the grid the attribution methods also
reduce to, so any two explanations can be compared cell by cell.

Run as a script for the CLI (`python -m analysis.attention CLIP --out DIR`); see `analysis/cli.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from timesformer.attention import AttentionMap, Grouping, lift, record_attention

HEAD_FUSIONS = ("mean", "max", "min")


# --------------------------------------------------------------------------------------------------
# Queries and heads


def query_index(query, grid: tuple[int, int, int]) -> int:
    """Frame-major token index of `"cls"` (0) or a patch `(t, h, w)`; negative t counts from the end."""
    if isinstance(query, str):
        if query != "cls":
            raise ValueError(f"query must be 'cls' or a patch (t, h, w), got {query!r}")
        return 0
    T, H, W = grid
    try:
        t, h, w = (int(v) for v in query)
    except (TypeError, ValueError):
        raise ValueError(f"query must be 'cls' or a patch (t, h, w), got {query!r}") from None
    t = t + T if t < 0 else t
    if not (0 <= t < T and 0 <= h < H and 0 <= w < W):
        raise ValueError(f"patch {tuple(query)} is outside the {T}×{H}×{W} grid")
    return 1 + t * H * W + h * W + w


def fuse_heads(x: torch.Tensor, head="mean", dim: int = 1) -> torch.Tensor:
    """Select head `head` (an int) or fuse all heads with "mean", "max" or "min" along `dim`."""
    if isinstance(head, int):
        if not -x.shape[dim] <= head < x.shape[dim]:
            raise ValueError(f"head {head} out of range for {x.shape[dim]} heads")
        return x.select(dim, head)
    if head == "mean":
        return x.mean(dim)
    if head == "max":
        return x.amax(dim)
    if head == "min":
        return x.amin(dim)
    raise ValueError(f"head must be an index or one of {HEAD_FUSIONS}, got {head!r}")


def attention_row(m: AttentionMap, query="cls") -> torch.Tensor:
    """(B, heads, 1+T·N): one row of `m.dense()`, computed without building the dense matrix."""
    g: Grouping = m.grouping
    T, H, W = g.grid
    M = 1 + T * H * W
    q = query_index(query, g.grid)
    B, G, heads, L, _ = m.probs.shape
    probs = m.probs.float()
    slots = g.dense_slots().to(probs.device)  # (G, L) dense index of each slot, -1 = padding
    row = probs.new_zeros(B, heads, M)
    if q == 0:
        if not g.with_cls:  # cls takes no part in this step
            return row
        groups, rows, weight = torch.arange(G), torch.zeros(G, dtype=torch.long), 1.0 / G
    else:
        slot = int(g.inverse[q - 1])
        groups, rows, weight = torch.tensor([slot // L]), torch.tensor([slot % L]), 1.0
    vals = probs[:, groups, :, rows, :].permute(1, 2, 0, 3)  # (B, heads, k, L): the query's row in each group
    cols = slots[groups]  # (k, L)
    keep = cols >= 0
    return row.index_add_(2, cols[keep], weight * vals[..., keep])


def query_map(m: AttentionMap, query="cls", head="mean") -> torch.Tensor:
    """(B, T, H_p, W_p) attention of `query` over the clip's patches (its attention to cls left out)."""
    T, H, W = m.grid
    return fuse_heads(attention_row(m, query), head)[:, 1:].reshape(-1, T, H, W)


# --------------------------------------------------------------------------------------------------
# Rollout


def fused_probs(m: AttentionMap, head="mean", weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, G, L, L) probabilities of one step with heads fused, in its group layout.

    `weights` (same shape as m.probs) multiplies the probabilities first, as gradient-weighted rollout
    does; the product is then clamped at zero.
    """
    probs = m.probs.detach().float()
    if weights is not None:
        probs = (probs * weights.float()).clamp(min=0)
    return fuse_heads(probs, head, dim=2)


def step_matrix(m: AttentionMap, head="mean", weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, M, M) dense matrix of one step with heads fused (fused before lifting: heads× less work)."""
    return lift(m.grouping, fused_probs(m, head, weights))


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


def grad_rollout(model, video: torch.Tensor, target=None, head="mean", discard_ratio: float = 0.0,
                 query="cls") -> torch.Tensor:
    """Gradient-weighted rollout: each step's probabilities weighted by the gradient of the target
    logit with respect to them, clamped at zero, heads fused, then rolled out.

    `target`: class index (int or (B,) tensor); default the predicted class. Returns (B, T, H_p, W_p).
    """
    model.zero_grad(set_to_none=True)
    with torch.enable_grad(), record_attention(model, keep_grad=True) as rec:
        logits = model(video)
        target = _targets(logits, target)
        logits.gather(1, target[:, None]).sum().backward()
    weights = {(m.layer, m.step): m.probs.grad for m in rec}
    model.zero_grad(set_to_none=True)
    return rollout(rec, head, discard_ratio, query, weights=weights)


def _targets(logits: torch.Tensor, target) -> torch.Tensor:
    if target is None:
        return logits.argmax(-1)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if target.numel() == 1:
        target = target.expand(logits.shape[0])
    if ((target < 0) | (target >= logits.shape[1])).any():
        raise ValueError(f"target class out of range for {logits.shape[1]} classes")
    return target


# --------------------------------------------------------------------------------------------------
# Summary numbers


def _slot_coords(g: Grouping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(G, L) t, h, w of every slot, and a (G, L) mask of patch slots (not cls, not padding)."""
    T, H, W = g.grid
    p = g.dense_slots() - 1  # patch index, -1 for cls, -2 for padding
    patch = p >= 0
    p = p.clamp(min=0)
    return p // (H * W), (p // W) % H, p % W, patch


def summarize(m: AttentionMap) -> dict:
    """Numbers to compare across layers, steps and schemes, averaged over patch queries and heads.

    entropy: of each query's attention, in nats; entropy_norm: divided by log(number of keys seen);
    distance_space: mean attention-weighted distance to the keys, in patches; distance_time: the same
    in frames; same_frame / other_frames / cls: shares of the attention mass.
    """
    g = m.grouping
    probs = m.probs.detach().float()  # (B, G, heads, L, L)
    t, h, w, patch = (x.to(probs.device) for x in _slot_coords(g))
    valid = g.valid.to(probs.device) if g.valid is not None else torch.ones_like(patch)
    q = patch[None, :, None, :]  # patch query rows (B, G, heads, L)
    n = q.expand(probs.shape[:-1]).sum().clamp(min=1)

    def mean(x):  # over patch query rows
        return float((x * q).sum() / n)

    T, H, W = g.grid
    B, G, nh, L, _ = probs.shape
    # aggregate each query's attention by key frame and by key position in one batched matmul,
    # then weigh the small (T + H·W)-wide result by distances: one pass over the probabilities
    key_t = F.one_hot(t, T).float() * patch[..., None]  # (G, L, T), cls and padding rows zero
    key_pos = F.one_hot(h * W + w, H * W).float() * patch[..., None]  # (G, L, H·W)
    agg = probs.reshape(B, G, nh * L, L) @ torch.cat([key_t, key_pos], -1)[None]
    agg = agg.reshape(B, G, nh, L, T + H * W)
    per_t, per_pos = agg[..., :T], agg[..., T:]
    frames = torch.arange(T, device=probs.device)
    d_time = (t[..., None] - frames).abs().float()  # (G, L, T) from each query slot
    ph, pw = torch.arange(H * W, device=probs.device) // W, torch.arange(H * W, device=probs.device) % W
    d_space = torch.sqrt((h[..., None] - ph) ** 2.0 + (w[..., None] - pw) ** 2.0)  # (G, L, H·W)
    same_t = F.one_hot(t, T).float()  # the query's own frame
    same = (per_t * same_t[None, :, None]).sum(-1)
    sums = torch.stack([(per_pos * d_space[None, :, None]).sum(-1), (per_t * d_time[None, :, None]).sum(-1),
                        same, per_t.sum(-1) - same], -1)  # (B, G, heads, L, 4)
    ent = -torch.special.xlogy(probs, probs).sum(-1)
    keys = valid.sum(-1).float().clamp(min=2)  # (G,) keys per group (cls included where it takes part)
    cls_share = probs[..., 0] if g.with_cls else torch.zeros_like(probs[..., 0])
    return {
        "layer": m.layer,
        "step": m.step,
        "entropy": mean(ent),
        "entropy_norm": mean(ent / keys.log()[None, :, None, None]),
        "distance_space": mean(sums[..., 0]),
        "distance_time": mean(sums[..., 1]),
        "same_frame": mean(sums[..., 2]),
        "other_frames": mean(sums[..., 3]),
        "cls": mean(cls_share),
    }


def summary_table(maps: Iterable[AttentionMap]) -> list[dict]:
    """`summarize` for every recorded map, in forward order."""
    return [summarize(m) for m in maps]


# --------------------------------------------------------------------------------------------------
# Pictures


def _colormap(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H_p, W_p) → (T, H, W), bilinear."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def overlay(frames: np.ndarray, maps: torch.Tensor, alpha: float = 0.5, cmap: str = "jet",
            normalize: str = "clip") -> np.ndarray:
    """Heatmaps over frames: frames (T, H, W, 3) uint8, maps (T, H_p, W_p) → (T, H, W, 3) uint8.

    normalize="clip" scales by the clip's min and max (frames stay comparable), "frame" per frame.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    maps = torch.as_tensor(maps).detach().float().cpu()
    if maps.shape[0] != frames.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {frames.shape[0]} frames")
    up = upsample(maps, frames.shape[1:3])
    dims = (1, 2) if normalize == "frame" else (0, 1, 2)
    lo, hi = up.amin(dim=dims, keepdim=True), up.amax(dim=dims, keepdim=True)
    up = ((up - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)
    heat = _colormap(cmap)[(up * 255).round().long().numpy()]
    return (frames * (1 - alpha) + heat * alpha).round().astype(np.uint8)


def upscale(frames: np.ndarray, at_least: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale of (T, H, W, 3) frames to at least `at_least` rows, so small clips show."""
    k = max(1, -(-at_least // frames.shape[1]))
    return frames.repeat(k, 1).repeat(k, 2) if k > 1 else frames


def save_gif(target, frames: np.ndarray, fps: float = 4.0) -> None:
    """(T, H, W, 3) uint8 → an animated GIF at `target` (a path or a binary file object), looping."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(target, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def grid_image(frames: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """(T, H, W, 3) frames tiled into one (rows·H, columns·W, 3) image."""
    T, H, W, _ = frames.shape
    columns = columns or min(T, 8)
    rows = math.ceil(T / columns)
    out = np.full((rows * (H + pad) - pad, columns * (W + pad) - pad, 3), 255, np.uint8)
    for i in range(T):
        r, c = divmod(i, columns)
        out[r * (H + pad) : r * (H + pad) + H, c * (W + pad) : c * (W + pad) + W] = frames[i]
    return out


@torch.no_grad()
def predict(model, views: torch.Tensor, k: int = 5) -> dict:
    """Top-k (class name, probability) of the centre view ("clip") and of the softmax averaged over all
    spatial views ("video": the paper's 3-crop protocol). views: (V, 3, T, H, W) of one clip."""
    probs = model(views).softmax(-1).float()  # (V, classes)
    names = model.class_names
    k = min(k, probs.shape[-1])

    def top(p):
        values, idx = p.topk(k)
        return [(names[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]

    return {"clip": top(probs[len(probs) // 2]), "video": top(probs.mean(0))}


if __name__ == "__main__":
    from analysis.cli import main

    raise SystemExit(main())
