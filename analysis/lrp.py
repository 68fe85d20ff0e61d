"""Layer-wise relevance propagation (LRP) for TimeSformer, computed as gradient × input in a modified
backward pass, for every scheme.

Rules (choose-and-cite, docs/analysis.md): conservative propagation (CP-LRP, Ali et al., "XAI for
Transformers: Better Explanations through Conservative Propagation", ICML 2022) holds the attention
probabilities and LayerNorm's scale 1/σ constant in the backward pass, so relevance flows through the values
and the linear maps and is conserved through attention and normalisation; the GELU of the MLP follows the
identity rule of AttnLRP (Achtibat et al., ICML 2024). In such a graph gradient × input at any activation is
its relevance. The forward pass is unchanged: the same logits come out.

Relevance is read at the input tokens of the first block (patch embeddings with their position and time
embeddings), summed over channels, and at the output of every attention step and MLP of every block: how
much of the target's relevance flows through each step's branch rather than its residual, layer by layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from analysis.maps import target_classes
from timesformer.attention import record_attention


def _layer_norm(module: nn.LayerNorm, args, out):
    x = args[0]
    mean = x.mean(-1, keepdim=True)
    scale = (x.var(-1, unbiased=False, keepdim=True) + module.eps).rsqrt().detach()  # 1/σ as a constant
    return (x - mean) * scale * module.weight + module.bias


def _gelu(module: nn.GELU, args, out):
    x = args[0]
    ratio = torch.where(x.abs() > 1e-6, out / x, torch.full_like(x, 0.5))  # GELU(x)/x; its limit at 0 is 1/2
    return x * ratio.detach()  # the identity rule: relevance passes the activation unchanged


@contextlib.contextmanager
def conservative(model):
    """Inside, the model's backward pass is the LRP graph above (its forward values do not change)."""
    handles = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            handles.append(module.register_forward_hook(_layer_norm))
        elif isinstance(module, nn.GELU):
            handles.append(module.register_forward_hook(_gelu))
    try:
        with record_attention(model, detach=True):
            yield
    finally:
        for h in handles:
            h.remove()


def branch_modules(model) -> dict[tuple[int, str], nn.Module]:
    """{(layer, step or "mlp"): the module whose output is that branch's residual update}: an extra step's
    output linear (`<prefix>_fc`), the main step's attention, the MLP."""
    out = {}
    for i, blk in enumerate(model.blocks):
        for step in blk.steps:
            out[(i, step.name)] = getattr(blk, f"{step.prefix}_fc") if step.prefix else blk.attn
        out[(i, "mlp")] = blk.mlp
    return out


@dataclass
class Relevance:
    """LRP relevance of one forward, per clip of the batch."""

    patches: torch.Tensor  # (B, T, H_p, W_p) at the first block's input tokens
    cls: torch.Tensor  # (B,) of the cls token(s) at the first block's input
    branches: dict[tuple[int, str], torch.Tensor]  # (layer, step or "mlp") → (B,) through that branch
    logits: torch.Tensor  # (B, classes)
    target: torch.Tensor  # (B,) the explained classes


def relevance(model, video: torch.Tensor, target=None) -> Relevance:
    """Conservative LRP of `target` (default: the predicted class): one forward and one backward."""
    grid = model.grid_of(video)
    saved: dict = {}

    def keep_input(module, args):
        x = args[0].detach().requires_grad_()
        saved["tokens"] = x
        return (x, *args[1:])

    def keep_output(key):
        def hook(module, args, out):
            saved[key] = out
        return hook

    handles = [model.blocks[0].register_forward_pre_hook(keep_input)]
    handles += [m.register_forward_hook(keep_output(key)) for key, m in branch_modules(model).items()]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), conservative(model):
            logits = model(video.detach())
            target = target_classes(logits, target)
            score = logits.gather(1, target[:, None]).sum()
            keys = ["tokens"] + [k for k in saved if k != "tokens"]
            grads = torch.autograd.grad(score, [saved[k] for k in keys], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per = {k: (saved[k] * g).detach() if g is not None else torch.zeros_like(saved[k]) for k, g in zip(keys, grads)}
    tokens = per.pop("tokens").sum(-1)  # (B, C + T·N)
    T, H, W = grid
    num_cls = tokens.shape[1] - T * H * W
    return Relevance(tokens[:, num_cls:].reshape(-1, T, H, W), tokens[:, :num_cls].sum(1),
                     {k: v.flatten(1).sum(1) for k, v in per.items()}, logits.detach(), target)


def lrp(model, video: torch.Tensor, target=None) -> torch.Tensor:
    """(B, T, H_p, W_p) conservative LRP relevance of `target` (default: the predicted class)."""
    return relevance(model, video, target).patches
