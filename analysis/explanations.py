"""Every explanation method behind one entry point: `explain(model, video, method, target=None, **options)`
→ `(B, T, H_p, W_p)` relevance on the clip's patch grid, and `EXPLANATIONS`, the registry that names each
method with what it costs in clip forwards and backwards.

Methods, by family (docs/analysis.md says which to trust for what):
- attention: the last layer's `cls` attention, attention rollout (Abnar & Zuidema 2020);
- attention × gradient: gradient-weighted rollout, GAE (Chefer et al., ICCV 2021);
- relevance: LRP with conservative propagation (Ali et al., ICML 2022; `analysis.lrp`);
- gradient: saliency, gradient × activation, integrated gradients (Captum);
- perturbation: occlusion, ablation of frames or of patch tubes (Captum), with video baselines.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from analysis import attribution, lrp, rollout
from analysis.attribution import Cost, Progress
from analysis.maps import query_map, recorded_forward

# Families whose methods take gradients (of the target logit, with respect to the clip, its tokens or attention)
GRADIENT_FAMILIES = ("attention × gradient", "relevance", "gradient")


@dataclass(frozen=True)
class Explanation:
    name: str
    label: str  # for people
    family: str  # attention, attention × gradient, relevance, gradient, perturbation
    reference: str
    run: Callable[..., torch.Tensor]  # (model, video, target, **options) → (B, T, H_p, W_p)
    cost: Callable[..., Cost]  # (grid, **options) → clip evaluations per clip
    options: dict = field(default_factory=dict)  # option → default

    def estimate(self, grid: tuple[int, int, int], **options) -> Cost:
        return self.cost(grid, **{**self.options, **options})

    def pick(self, values: dict) -> dict:
        """The entries of `values` (e.g. everything a user set) that are options of this method."""
        return {k: v for k, v in values.items() if k in self.options}


def last_layer_attention(model, video: torch.Tensor, target=None, head="mean") -> torch.Tensor:
    """The `cls` row of the last layer's main attention step (the one `cls` takes part in last)."""
    layer = len(model.blocks) - 1
    _, rec = recorded_forward(model, video, layers=[layer])
    return query_map(list(rec)[-1], "cls", head)


def _fixed(name: str, forwards: int, backwards: int) -> Callable[..., Cost]:
    return lambda grid, **_: Cost(name, forwards, backwards)


def _captum(method: str) -> Explanation:
    labels = {"integrated_gradients": ("Integrated Gradients", "Sundararajan et al., ICML 2017", "gradient"),
              "saliency": ("saliency (|gradient|)", "Simonyan et al., ICLR 2014 workshop", "gradient"),
              "occlusion": ("occlusion", "Zeiler & Fergus, ECCV 2014", "perturbation"),
              "ablation_frames": ("ablation of whole frames", "feature ablation (Captum)", "perturbation"),
              "ablation_tubes": ("ablation of patch tubes", "feature ablation (Captum)", "perturbation"),
              "gradient_x_activation": ("gradient × activation", "Shrikumar et al., 2016", "gradient")}
    label, reference, family = labels[method]
    params = inspect.signature(attribution.attribute).parameters
    used = {"integrated_gradients": ("n_steps", "internal_batch_size", "baseline"),
            "occlusion": ("window", "internal_batch_size", "baseline"),
            "ablation_frames": ("internal_batch_size", "baseline"),
            "ablation_tubes": ("internal_batch_size", "baseline"),
            "gradient_x_activation": ("layer",), "saliency": ()}[method]
    options = {name: params[name].default for name in used}

    def run(model, video, target=None, progress: Progress | None = None, **opts):
        return attribution.attribute(model, video, method, target=target, progress=progress, **opts)

    def cost(grid, n_steps=16, window=(2, 2), **_):
        return attribution.cost(method, grid, n_steps, window)

    return Explanation(method, label, family, reference, run, cost, options)


EXPLANATIONS: dict[str, Explanation] = {e.name: e for e in [
    Explanation("attention", "last layer's cls attention", "attention", "the raw attention of the last block",
                last_layer_attention, _fixed("attention", 1, 0), {"head": "mean"}),
    Explanation("rollout", "attention rollout", "attention", "Abnar & Zuidema, ACL 2020",
                lambda model, video, target=None, **o: rollout.attention_rollout(model, video, **o),
                _fixed("rollout", 1, 0), {"head": "mean", "discard_ratio": 0.0}),
    Explanation("grad_rollout", "gradient-weighted rollout", "attention × gradient",
                "Chefer et al., CVPR 2021 (the common 'grad rollout')", rollout.grad_rollout,
                _fixed("grad_rollout", 1, 1), {"head": "mean", "discard_ratio": 0.0}),
    Explanation("gae", "GAE (attention × gradient, accumulated)", "attention × gradient",
                "Chefer et al., ICCV 2021", rollout.gae, _fixed("gae", 1, 1)),
    Explanation("lrp", "LRP (conservative propagation)", "relevance",
                "Ali et al., ICML 2022; identity rule for GELU: Achtibat et al., ICML 2024", lrp.lrp,
                _fixed("lrp", 1, 1)),
    *(_captum(m) for m in attribution.METHODS),
]}


def explain(model, video: torch.Tensor, method: str, target=None, progress: Progress | None = None,
            **options) -> torch.Tensor:
    """(B, T, H_p, W_p) explanation of `target` (a class index or name, one per clip, or None for the predicted
    class) by `method`, a name in EXPLANATIONS; `options` are that method's (EXPLANATIONS[method].options);
    `progress(done, total)` is called as clip evaluations finish, where a method runs many. Attention and
    rollout maps do not depend on the class: every target gets the same map."""
    if method not in EXPLANATIONS:
        raise ValueError(f"unknown explanation {method!r}; choose one of {', '.join(EXPLANATIONS)}")
    e = EXPLANATIONS[method]
    unknown = sorted(set(options) - set(e.options))
    if unknown:
        allowed = ", ".join(e.options) or "none"
        raise ValueError(f"{method} takes no option {', '.join(unknown)} (its options: {allowed})")
    for name, value in options.items():  # nan passes every range check and turns the whole map into nan
        for x in value if isinstance(value, (tuple, list)) else [value]:
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"{method}: option {name} must be a finite number, got {value}")
    if e.family in GRADIENT_FAMILIES and torch.is_inference_mode_enabled():  # no enable_grad() can leave it
        raise RuntimeError(f"{method} needs gradients, which torch.inference_mode() turns off: call explain outside "
                           "it (torch.no_grad() is fine)")
    if video.is_inference():  # made under inference_mode: a copy made here can take part in autograd
        video = video.clone()
    if progress is not None and "progress" in inspect.signature(e.run).parameters:
        options["progress"] = progress
    out = e.run(model, video, target=_class_indices(model, target, video.shape[0]), **options)
    return out.detach().float()


def _class_indices(model, target, batch: int):
    """`target` as None (the predicted classes), one class index, or a list of one per clip of the batch: class
    names (str) turned into indices by the model's class names, -1 the last class (as `tslab explain --target`)."""
    if target is None:
        return None
    if hasattr(target, "tolist"):  # a tensor or numpy array (or scalar)
        target = target.tolist()
    one = not isinstance(target, (list, tuple))
    values = [target] if one else list(target)
    if len(values) not in (1, batch):
        raise ValueError(f"target: {len(values)} classes for a batch of {batch} clip{'s' * (batch != 1)}; give one, "
                         "or one per clip")
    names = list(getattr(model, "class_names", None) or [])
    classes = model.config.num_classes
    picked = []
    for t in values:
        if isinstance(t, str) and t not in names:
            raise ValueError(f"target {t!r} is not a class of this model ({', '.join(names) or 'no class names'})")
        if isinstance(t, str):
            t = names.index(t)
        if not isinstance(t, numbers.Integral) or isinstance(t, bool):  # 1.7 was silently class 1
            raise ValueError(f"target must be a class index or name, or one per clip; got {t!r}")
        if not -classes <= t < classes:
            raise ValueError(f"target {t}: the model has {classes} classes (0 to {classes - 1}; -1: the last)")
        picked.append(int(t) % classes)
    return picked[0] if one else picked
