"""Evidence about time — what TimeSformer adds to an image ViT.

- `frame_importance(map)`: each frame's share of an explanation's positive relevance;
- `order_effects(model, video)`: the target's probability when the frames are reversed, shuffled, or all
  replaced by the middle frame — a model that reads motion loses its confidence, one that reads appearance
  does not;
- `step_shares(relevance)`: for schemes with a time step, the share of the relevance flowing through each
  kind of attention step (time, space, width, …) rather than another, block by block, from LRP
  (`analysis.lrp.relevance`): how much of the decision went through attention across frames;
- `temporal_evidence(model, video)`: the last two together, as the app, `tslab explain --temporal` and the
  benchmark report them.
"""

from __future__ import annotations

import torch

from analysis.lrp import Relevance, relevance
from analysis.maps import target_classes


def frame_importance(saliency: torch.Tensor) -> torch.Tensor:
    """(B, T) share of each frame in the positive part of a (B, T, H_p, W_p) map (zeros for an all-negative map)."""
    per_frame = saliency.detach().float().clamp(min=0).sum((2, 3))
    return per_frame / per_frame.sum(1, keepdim=True).clamp(min=1e-12)


ORDERINGS = ("original", "reversed", "shuffled", "frozen")


@torch.no_grad()
def order_effects(model, video: torch.Tensor, target=None, shuffles: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """{ordering: (B,) probability of `target` (default: the predicted class on the original clip)} for the
    clip as it is, its frames reversed, shuffled (mean over `shuffles` random orders, never the identity),
    and frozen (every frame the middle one)."""
    T = video.shape[2]
    probs = model(video).float().softmax(-1)
    target = target_classes(probs, target)
    pick = lambda v: model(v).float().softmax(-1).gather(1, target[:, None])[:, 0]
    generator = torch.Generator().manual_seed(seed)
    perms = []
    while T > 1 and len(perms) < shuffles:
        p = torch.randperm(T, generator=generator)
        if not torch.equal(p, torch.arange(T)):
            perms.append(p)
    return {
        "original": probs.gather(1, target[:, None])[:, 0],
        "reversed": pick(video.flip(2)),
        "shuffled": torch.stack([pick(video[:, :, p]) for p in perms]).mean(0) if perms else pick(video),
        "frozen": pick(video[:, :, T // 2 : T // 2 + 1].expand_as(video)),
    }


def step_shares(r: Relevance) -> list[dict]:
    """[{layer, step, relevance, share}] for the attention steps of every block: `relevance` is the summed
    relevance through that step's branch (mean over clips), `share` its part of the absolute relevance
    through all attention steps of the block."""
    rows = []
    layers = sorted({layer for layer, _ in r.branches})
    for layer in layers:
        steps = {step: float(v.mean()) for (lyr, step), v in r.branches.items() if lyr == layer and step != "mlp"}
        total = sum(abs(v) for v in steps.values())
        rows += [{"layer": layer, "step": step, "relevance": v, "share": abs(v) / total if total else 0.0}
                 for step, v in steps.items()]
    return rows


def temporal_evidence(model, video: torch.Tensor, target=None) -> dict:
    """{"target": (B,) the explained classes (default: the predicted ones), "order_effects": `order_effects`,
    "step_shares": `step_shares` of the LRP relevance (over the batch), or [] for a scheme without a time step}."""
    with torch.no_grad():
        target = target_classes(model(video), target)
    has_time = any(step.name == "time" for step in model.blocks[0].steps)
    return {"target": target, "order_effects": order_effects(model, video, target),
            "step_shares": step_shares(relevance(model, video, target)) if has_time else []}
