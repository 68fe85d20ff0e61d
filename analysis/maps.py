"""Recorded attention read as maps and numbers, for every scheme.

A map comes back on the clip's patch grid `(B, T, H_p, W_p)`, the grid every explanation reduces to, so
any two of them can be compared cell by cell. Rows are read straight from the probabilities in their
group layout (`AttentionMap.probs`), never through a dense `(1+T·N)²` matrix.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from timesformer.attention import AttentionMap, AttentionRecorder, Grouping, record_attention

HEAD_FUSIONS = ("mean", "max", "min")


# --------------------------------------------------------------------------------------------------
# Addressing the model: queries, heads, target classes, a recorded forward


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
            raise ValueError(f"head {head}: the model has {x.shape[dim]} heads (0 to {x.shape[dim] - 1}; -1: the last)")
        return x.select(dim, head)
    if head == "mean":
        return x.mean(dim)
    if head == "max":
        return x.amax(dim)
    if head == "min":
        return x.amin(dim)
    raise ValueError(f"head must be an index or one of {', '.join(HEAD_FUSIONS)}, got {head!r}")


def target_classes(logits: torch.Tensor, target=None) -> torch.Tensor:
    """(B,) class indices to explain: `target` (an int or one per clip), or the predicted classes."""
    if target is None:
        return logits.argmax(-1)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if target.numel() == 1:
        target = target.expand(logits.shape[0])
    if ((target < 0) | (target >= logits.shape[1])).any():
        raise ValueError(f"target class out of range for {logits.shape[1]} classes")
    return target


def recorded_forward(model, video: torch.Tensor, layers=None) -> tuple[torch.Tensor, AttentionRecorder]:
    """(logits, recorder) of one no-grad forward that records `layers` (default: every layer)."""
    with torch.no_grad(), record_attention(model, layers=layers) as rec:
        logits = model(video)
    return logits, rec


# --------------------------------------------------------------------------------------------------
# One query's attention


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


def takes_part(m: AttentionMap, query="cls") -> bool:
    """Whether `query` is a query of this step at all: `cls` takes no part in time steps (it is neither
    query nor key there, as in the official code), so no map of its attention exists for them."""
    return query != "cls" or m.grouping.with_cls


def query_map(m: AttentionMap, query="cls", head="mean") -> torch.Tensor:
    """(B, T, H_p, W_p) attention of `query` over the clip's patches (its attention to cls left out)."""
    T, H, W = m.grid
    return fuse_heads(attention_row(m, query), head)[:, 1:].reshape(-1, T, H, W)


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
