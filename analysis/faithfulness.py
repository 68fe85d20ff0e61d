"""Is an explanation faithful to the model? Deletion and insertion curves (Petsiuk et al., RISE, 2018) rank
the patches by a map and watch the target's probability as they are removed or revealed; a random map is
the ranking every explanation must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analysis.attribution import Cost, Progress, baseline_clip
from analysis.maps import target_classes


def curves_cost(steps: int = 16) -> Cost:
    """Clip evaluations of `deletion_insertion` with `steps` steps: both curves and the target."""
    return Cost("deletion_insertion", 2 * (steps + 1) + 1, 0)


def random_map(grid: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """(1, T, H_p, W_p) uniform noise: the ranking every explanation must beat."""
    return torch.rand((1, *grid), generator=torch.Generator().manual_seed(seed))


@dataclass
class Curves:
    fractions: np.ndarray  # share of patches removed (deletion) / revealed (insertion)
    deletion: np.ndarray  # target probability after removing the top fraction
    insertion: np.ndarray  # target probability with only the top fraction shown
    auc_deletion: float  # lower is better
    auc_insertion: float  # higher is better


def _auc(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


@torch.no_grad()
def deletion_insertion(model, video: torch.Tensor, saliency: torch.Tensor, target=None, steps: int = 16,
                       baseline=0.0, batch_size: int = 8, progress: Progress | None = None) -> Curves:
    """Deletion and insertion curves (Petsiuk et al., RISE, 2018) of one clip for a patch-grid map.

    Patches (t, h, w) are ranked by `saliency`; deletion replaces the top k with `baseline` and
    insertion shows only the top k on a `baseline` clip, for k = 0 … all in `steps` steps; the curves
    are the softmax probability of `target` (default: the predicted class).
    """
    if video.shape[0] != 1:
        raise ValueError("deletion_insertion takes one clip (batch of 1)")
    T, H, W = grid = model.grid_of(video)
    saliency = torch.as_tensor(saliency).reshape(-1, *grid)[0].to(video.device)
    P = model.config.patch_size
    model.eval()
    target = int(target_classes(model(video), target)[0])
    n = T * H * W
    order = torch.argsort(saliency.flatten().float(), descending=True, stable=True)
    counts = np.unique(np.linspace(0, n, steps + 1).round().astype(int))
    masks = []
    for k in counts:
        keep = torch.zeros(n, dtype=torch.bool, device=video.device)
        keep[order[:k]] = True  # the top-k patches
        masks.append(keep.reshape(T, H, W))
    masks = torch.stack(masks)  # (K, T, H, W)
    pix = masks.repeat_interleave(P, 2).repeat_interleave(P, 3)[:, None]  # (K, 1, T, H·P, W·P)
    base = baseline_clip(video, baseline)
    probs = {"deletion": [], "insertion": []}
    total, done = 2 * len(counts), 0
    for kind in probs:
        for i in range(0, len(counts), batch_size):
            m = pix[i : i + batch_size]
            clip = torch.where(m, base, video) if kind == "deletion" else torch.where(m, video, base)
            probs[kind].append(model(clip).softmax(-1)[:, target].float().cpu())
            done += m.shape[0]
            if progress is not None:
                progress(done, total)
    fractions = counts / n
    dele, ins = (torch.cat(probs[k]).numpy() for k in ("deletion", "insertion"))
    return Curves(fractions, dele, ins, _auc(dele, fractions), _auc(ins, fractions))
