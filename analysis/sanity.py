"""The model-randomisation sanity check of Adebayo et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018):
randomise the model's weights from the top down — the head, then the last block, then the one before, … —
and compare each explanation with the trained model's. A map that barely changes while the model becomes
noise explains the input, not the model, and fails.

Similarity is Spearman's rank correlation over the clip's patch cells (the maps rank patches; their scales
differ between methods). A method passes when, with every block and the head randomised, its maps keep a
mean rank correlation below `PASS_BELOW` with the trained model's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

PASS_BELOW = 0.5


def spearman(a, b) -> float:
    """Rank correlation of two maps of the same shape (ties ranked by order; 0 for a constant map)."""
    ra = np.argsort(np.argsort(np.asarray(a, dtype=np.float64).reshape(-1), kind="stable"), kind="stable")
    rb = np.argsort(np.argsort(np.asarray(b, dtype=np.float64).reshape(-1), kind="stable"), kind="stable")
    if np.ptp(np.asarray(a)) == 0 or np.ptp(np.asarray(b)) == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh random weights, as at initialisation but with nothing left at zero (a zero output linear would
    hide the rest of its step). Drawn on the CPU by `generator`, so that every device gets the same weights."""

    def draw(p: torch.Tensor, mean: float, std: float) -> None:
        p.copy_(torch.empty(p.shape, dtype=p.dtype).normal_(mean, std, generator=generator))

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                draw(m.weight, 0, 0.02)
                if m.bias is not None:
                    draw(m.bias, 0, 0.02)
            elif isinstance(m, nn.LayerNorm):
                draw(m.weight, 1, 0.1)
                draw(m.bias, 0, 0.02)


def cascading_randomisation(model, explain: Callable[[nn.Module], torch.Tensor], seed: int = 0
                            ) -> list[tuple[str, torch.Tensor]]:
    """[(stage, map)] — "trained", then "head", "block L-1", …, "block 0" — each map from
    `explain(model_at_that_stage)` (B, T, H_p, W_p), on the CPU. The model itself is left untouched."""
    work = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    out = [("trained", explain(work).cpu())]
    stages = [("head", work.head)] + [(f"block {i}", work.blocks[i]) for i in reversed(range(len(work.blocks)))]
    for name, module in stages:
        _randomise(module, generator)
        out.append((name, explain(work).cpu()))
    return out


def similarity_curve(maps: list[tuple[str, torch.Tensor]]) -> list[tuple[str, float]]:
    """[(stage, mean over clips of the rank correlation with the trained model's map)]."""
    trained = maps[0][1]
    return [(stage, float(np.mean([spearman(trained[i], m[i]) for i in range(len(m))]))) for stage, m in maps]
