"""Captum attributions for video, reduced to the patch grid, and what each explanation costs.

Every method returns `(B, T, H_p, W_p)` — the grid of the attention maps — so attention, rollout and
attributions can be compared cell by cell and ranked by the same deletion/insertion test
(`analysis.faithfulness`). Before running, `cost(...)` says how many clip evaluations a method needs;
while running, `progress(done, total)` is called after every batch of evaluations (Captum has no
callbacks, so the model's forward is wrapped).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from analysis.maps import target_classes
from timesformer.video import temporal_median

METHODS = ("integrated_gradients", "saliency", "occlusion", "ablation_frames", "ablation_tubes",
           "gradient_x_activation")
# What a removed patch is replaced by (perturbation methods, integrated gradients' starting point, and the
# deletion/insertion curves): a number in normalised units (0 = the dataset's mean colour), or one of these.
# A constant patch can itself look like an object to a video model; these keep the clip's own content.
BASELINES = {
    "blur": "each frame blurred (Gaussian, σ = 1/16 of the frame side): the layout stays, the detail goes",
    "temporal_mean": "the clip's mean over time in every frame: what stays still stays, what moves fades",
    "frozen_frame": "the middle frame in every frame: the scene without its motion",
    "temporal_median": "the clip's median over time in every frame: the still background, without what moves",
}
Progress = Callable[[int, int], None]


@dataclass
class Cost:
    """Clip evaluations one attribution needs, per clip."""

    method: str
    forwards: int  # clip forwards (each with a backward for gradient methods)
    backwards: int

    def seconds(self, forward_s: float, backward_factor: float = 2.0) -> float:
        """Wall time given the measured time of one clip forward; a backward costs ~2 forwards."""
        return self.forwards * forward_s + self.backwards * forward_s * backward_factor

    def __str__(self) -> str:
        return f"{self.method}: {self.forwards} forwards, {self.backwards} backwards per clip"


def cost(method: str, grid: tuple[int, int, int], n_steps: int = 16, window: tuple[int, int] = (2, 2)) -> Cost:
    """Evaluations needed by `method` (one of METHODS, "rollout" or "grad_rollout") on a clip of patch grid
    (T, H_p, W_p). `window`: occlusion block as (frames, patches per side)."""
    T, H, W = grid
    if method == "rollout":
        return Cost(method, 1, 0)
    if method == "grad_rollout":
        return Cost(method, 1, 1)
    if method == "integrated_gradients":
        if n_steps < 1:
            raise ValueError(f"integrated_gradients needs n_steps of at least 1, got {n_steps}")
        return Cost(method, n_steps, n_steps)
    if method in ("saliency", "gradient_x_activation"):
        return Cost(method, 1, 1)
    if method == "occlusion":
        ft, fh, fw = _occlusion_block(grid, window)
        return Cost(method, 1 + math.ceil(T / ft) * math.ceil(H / fh) * math.ceil(W / fw), 0)
    if method == "ablation_frames":
        return Cost(method, 1 + T, 0)
    if method == "ablation_tubes":
        return Cost(method, 1 + H * W, 0)
    raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")


def _occlusion_block(grid: tuple[int, int, int], window: tuple[int, int]) -> tuple[int, int, int]:
    """The occluded block (frames, patch rows, patch columns): `window` = (frames, patches per side), cut to a
    clip smaller than it (Captum refuses a window larger than its input)."""
    T, H, W = grid
    ft, fp = window
    if ft < 1 or fp < 1:
        raise ValueError(f"the occlusion window is (frames, patches per side), each at least 1; got {window}")
    return min(ft, T), min(fp, H), min(fp, W)


class _Counted(torch.nn.Module):
    """The model's forward, reporting progress in clips evaluated."""

    def __init__(self, model, total: int, progress: Progress | None):
        super().__init__()
        self.model, self.total, self.progress, self.done = model, total, progress, 0

    def forward(self, video):
        out = self.model(video)
        self.done += video.shape[0]
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)
        return out


def baseline_clip(video: torch.Tensor, baseline=0.0) -> torch.Tensor:
    """The clip a removed patch is taken from: `video`'s shape, from a number or a name in BASELINES."""
    if isinstance(baseline, int | float):
        return torch.full_like(video, float(baseline))
    if baseline == "temporal_mean":
        return video.mean(2, keepdim=True).expand_as(video).contiguous()
    if baseline == "temporal_median":
        return temporal_median(video).expand_as(video).contiguous()
    if baseline == "frozen_frame":
        return video[:, :, video.shape[2] // 2 :][:, :, :1].expand_as(video).contiguous()
    if baseline == "blur":
        B, C, T, H, W = video.shape
        sigma = max(H, W) / 16
        radius = max(1, int(2 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=video.dtype, device=video.device)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        frames = video.transpose(1, 2).reshape(B * T * C, 1, H, W)  # one channel of one frame per row
        pad = torch.nn.functional.pad(frames, (radius, radius, radius, radius), mode="replicate")
        out = torch.nn.functional.conv2d(pad, k.view(1, 1, 1, -1))  # separable: rows, then columns
        out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1))
        return out.reshape(B, T, C, H, W).transpose(1, 2).contiguous()
    raise ValueError(f"baseline must be a number or one of {', '.join(BASELINES)}, got {baseline!r}")


def to_grid(pixels: torch.Tensor, patch: int, reduce: str = "sum") -> torch.Tensor:
    """(B, C, T, H, W) pixel attributions → (B, T, H_p, W_p): summed over channels and each patch
    ("sum": signed, "abs": magnitudes)."""
    if reduce == "abs":
        pixels = pixels.abs()
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'sum' or 'abs', got {reduce!r}")
    B, C, T, H, W = pixels.shape
    x = pixels.sum(1).reshape(B, T, H // patch, patch, W // patch, patch)
    return x.sum((3, 5))


def _feature_mask(grid, patch, kind: str, window=(1, 1)) -> torch.Tensor:
    """(1, 1, T, H, W) integer feature ids: per frame, per tube (h, w over all frames) or per block."""
    T, H, W = grid
    t = torch.arange(T)[:, None, None]
    h = torch.arange(H * patch)[None, :, None] // patch
    w = torch.arange(W * patch)[None, None, :] // patch
    if kind == "frames":
        ids = t.expand(T, H * patch, W * patch)
    elif kind == "tubes":
        ids = (h * W + w).expand(T, -1, -1)
    else:  # space-time blocks of window = (frames, patches)
        ft, fp = window
        nh, nw = math.ceil(H / fp), math.ceil(W / fp)
        ids = ((t // ft) * nh + h // fp) * nw + w // fp
    return ids[None, None].contiguous()


def attribute(model, video: torch.Tensor, method: str, target=None, n_steps: int = 16,
              internal_batch_size: int = 4, window: tuple[int, int] = (2, 2), layer: int = -1,
              baseline=0.0, progress: Progress | None = None, reduce: str = "sum") -> torch.Tensor:
    """(B, T, H_p, W_p) attribution of `method` for `target` (default: the predicted class).

    integrated_gradients (n_steps, internal_batch_size), saliency (gradient magnitude), occlusion over
    space-time blocks of `window` = (frames, patches), ablation_frames / ablation_tubes (feature
    ablation of whole frames / of a patch position across all frames), gradient_x_activation on block
    `layer`'s input tokens (in the last block, only cls of the output reaches the head). The baseline
    is a number in normalised units (0 = the dataset mean colour) or one of BASELINES.
    """
    from captum.attr import FeatureAblation, IntegratedGradients, Occlusion, Saliency

    grid = model.grid_of(video)
    patch = model.config.patch_size
    c = cost(method, grid, n_steps, window)
    B = video.shape[0]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        target = target_classes(model(video), target)
    f = _Counted(model, (c.forwards) * B, progress)
    video = video.detach()
    baseline = baseline_clip(video, baseline)
    try:
        if method == "integrated_gradients":
            a = IntegratedGradients(f).attribute(video, baselines=baseline, target=target, n_steps=n_steps,
                                                 internal_batch_size=internal_batch_size * B)
        elif method == "saliency":
            a = Saliency(f).attribute(video.clone().requires_grad_(), target=target, abs=True)
        elif method == "occlusion":
            ft, fh, fw = _occlusion_block(grid, window)
            block = (video.shape[1], ft, fh * patch, fw * patch)
            a = Occlusion(f).attribute(video, sliding_window_shapes=block, strides=block, baselines=baseline,
                                       target=target, perturbations_per_eval=internal_batch_size)
        elif method in ("ablation_frames", "ablation_tubes"):
            mask = _feature_mask(grid, patch, method.split("_")[1]).to(video.device)
            a = FeatureAblation(f).attribute(video, baselines=baseline, target=target,
                                             feature_mask=mask.expand(B, video.shape[1], -1, -1, -1),
                                             perturbations_per_eval=internal_batch_size)
        elif method == "gradient_x_activation":
            # the block's input tokens (in the last block, only the output's cls reaches the head);
            # the same product as Captum's LayerGradientXActivation, which cannot hook a block whose
            # inputs include its token groupings
            return _gradient_x_activation(f, model.blocks[layer], video, target, grid)
        else:
            raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    finally:
        model.train(was_training)
    return to_grid(a.detach(), patch, reduce)


def _gradient_x_activation(f, block, video, target, grid) -> torch.Tensor:
    saved = {}

    def keep(module, args):
        x = args[0].detach().requires_grad_()
        saved["x"] = x
        return (x, *args[1:])

    handle = block.register_forward_pre_hook(keep)
    try:
        with torch.enable_grad():
            score = f(video).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, saved["x"])  # no parameter .grad left behind
    finally:
        handle.remove()
    T, H, W = grid
    per_token = (saved["x"] * grad).sum(-1)  # (B, C + T·N)
    return per_token[:, -T * H * W :].reshape(-1, T, H, W).detach()


def timed_forward(model, video: torch.Tensor, repeats: int = 2) -> float:
    """Seconds for one clip forward (the unit of `Cost.seconds`), on the device of `video` (a GPU's queued work
    is waited for)."""
    wait = torch.cuda.synchronize if video.is_cuda else (lambda device: None)
    with torch.no_grad():
        model(video[:1])
        wait(video.device)
        t = time.perf_counter()
        for _ in range(repeats):
            model(video[:1])
        wait(video.device)
    return (time.perf_counter() - t) / repeats
