"""Scoring an explanation against ground truth: where the evidence really is (SynthMotion's
`object_masks`), measured on the patch grid every map lives on.

A patch cell belongs to an object when the object covers at least `min_cover` of its pixels. For one clip
and one map (positive relevance only, as evidence *for* the class):
- pointing: the share of frames whose highest cell lies on the signal object in that frame;
- pointing in used frames: the same, over only the frames the model's decision depends on (`used_frames`:
  removing such a frame lowers the target's logit by at least a tenth of the most important frame's drop, and
  by at least 0.01). A model may read its class from a few frames and ignore the rest, where no faithful map
  has anything to point at;
- path pointing: the share of frames whose highest cell lies on the signal's path, a cell the object covers
  in some frame. A model that reads motion takes evidence from where the object is *not* as well as from
  where it is: a cell it has just left, compared over time with the frames it was there, says where it went
  (docs/analysis.md shows it on the shipped distractor model);
- mass: the share of the map's positive mass on signal cells (relevance mass accuracy, Arras et al.,
  "CLEVR-XAI", Information Fusion 2022);
- rank accuracy: of the K highest cells of the clip, K = the number of signal cells, the share that are
  signal cells (relevance rank accuracy, ibid.);
- signal share (with a distractor): positive mass on signal cells ÷ positive mass on signal and distractor
  cells — 0.5 when the map cannot tell the object that decides from the one that does not.
"""

from __future__ import annotations

import numpy as np
import torch


def cell_cover(mask: np.ndarray, patch: int) -> np.ndarray:
    """(T, S, S) bool pixels → (T, S/patch, S/patch) share of each patch cell that they cover."""
    T, H, W = mask.shape
    return mask.reshape(T, H // patch, patch, W // patch, patch).mean((2, 4))


def grounding_scores(saliency, signal: np.ndarray, distractor: np.ndarray | None = None,
                     frames: np.ndarray | None = None) -> dict:
    """Scores of one (T, H_p, W_p) map against bool (T, H_p, W_p) signal (and distractor) cells; with `frames`,
    bool (T,) — the frames the model uses — also the pointing over those frames."""
    m = torch.as_tensor(saliency).detach().float().cpu().numpy().reshape(signal.shape)
    pos = np.clip(m, 0, None)
    total = pos.sum()
    T = m.shape[0]
    top = m.reshape(T, -1).argmax(1)  # each frame's highest cell
    k = int(signal.sum())
    ranked = np.argsort(-m.reshape(-1), kind="stable")[:k]
    hits = signal.reshape(T, -1)[np.arange(T), top]
    scores = {
        "pointing": float(hits.mean()),
        "path_pointing": float(signal.any(0).reshape(-1)[top].mean()),
        "mass": float(pos[signal].sum() / total) if total > 0 else 0.0,
        "rank_accuracy": float(signal.reshape(-1)[ranked].mean()) if k else 0.0,
    }
    if frames is not None and frames.any():
        scores["used_pointing"] = float(hits[frames].mean())
    if distractor is not None:
        both = pos[signal].sum() + pos[distractor].sum()
        scores["signal_share"] = float(pos[signal].sum() / both) if both > 0 else 0.5
        scores["distractor_pointing"] = float(distractor.reshape(T, -1)[np.arange(T), top].mean())
    return scores


def used_frames(drops: np.ndarray, share: float = 0.1, floor: float = 0.01) -> np.ndarray:
    """bool (T,): the frames whose removal lowers the target's logit by at least `share` of the largest drop of
    the clip and by at least `floor` — `drops` (T,), one per frame (as `ablation_frames` gives them). A model
    whose output hardly depends on the clip uses no frame."""
    return (drops >= share * drops.max()) & (drops >= floor)


def object_cells(masks: dict[str, np.ndarray], patch: int, min_cover: float = 0.2) -> dict[str, np.ndarray]:
    """{object: bool (T, H_p, W_p)} cells covered at least `min_cover` by each object of `object_masks`."""
    return {name: cell_cover(mask, patch) >= min_cover for name, mask in masks.items()}
