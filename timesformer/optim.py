"""The optimiser, its learning-rate schedule, the mixed-precision dtype and the `Trainer` that holds them, from the
training arguments.

`args` is the resolved namespace of `timesformer.train` (`optimizer`, `lr`, `weight_decay`, `momentum`,
`schedule`, `warmup_steps`, `min_lr`, `epochs`, `amp`); `resolve` fills its recipe defaults.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from timesformer.distributed import Dist
from timesformer.engine import Trainer
from timesformer.model import TimeSformer, compile_model

NO_DECAY_NAMES = ("pos_embed", "time_embed", "cls_token")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the recipe defaults that depend on other arguments (`--optimizer auto` and the defaults that follow
    the optimizer: lr, weight decay, schedule, gradient clipping)."""
    if args.optimizer == "auto":
        args.optimizer = "adamw" if args.preset == "tiny" else "sgd"
    sgd = args.optimizer == "sgd"
    if args.lr is None:
        args.lr = 0.005 if sgd else 1e-3
    if args.weight_decay is None:
        args.weight_decay = 1e-4 if sgd else 0.05
    if args.schedule == "auto":
        args.schedule = "steps" if sgd else "cosine"
    if args.clip_grad is None and not sgd:
        args.clip_grad = 1.0
    return args


def build_optimizer(args, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov: the official recipe) or AdamW; no weight decay on biases, norms, embeddings
    and tokens (timm's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY_NAMES) else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    # on a GPU the fused kernel updates every tensor in a few launches instead of a few per tensor
    return torch.optim.AdamW(groups, lr=args.lr, fused=all(p.is_cuda for p in decay + no_decay))


def lr_at(step: int, args, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule."""
    warmup = args.warmup_steps if args.warmup_steps is not None else min(500, total_steps // 20)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    if args.schedule == "constant":
        return args.lr
    if args.schedule == "steps":  # official: ×0.1 at epochs 11 and 14 of 15
        epoch = step / max(1, steps_per_epoch)
        milestones = [args.epochs * 11 / 15, args.epochs * 14 / 15]
        return args.lr * 0.1 ** sum(epoch >= m for m in milestones)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


AMP = ("auto", "none", "bf16", "fp16")  # the choices of --amp (tslab train and tslab evaluate)


def amp_dtype(args, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--amp` on `device`; None trains in full precision."""
    if args.amp == "none" or (args.amp == "auto" and device.type != "cuda"):
        return None
    if args.amp == "fp16":
        return torch.float16
    if args.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def build_trainer(args, dist: Dist, model: TimeSformer, total_steps: int, steps_per_epoch: int) -> Trainer:
    """The optimizer, GradScaler, schedule and autocast dtype of the run `args`, around `model` (wrapped in
    DDP under torchrun and compiled with --compile)."""
    device = dist.device
    ddp_model = model
    if dist.ddp:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:  # the DDP wrapper inside, so that its buckets split the graph and overlap the backward
        ddp_model = compile_model(ddp_model)
    dtype = amp_dtype(args, device)
    return Trainer(
        model, ddp_model, build_optimizer(args, model),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), dist=dist,
        lr_at=lambda step: lr_at(step, args, total_steps, steps_per_epoch), total_steps=total_steps,
        accum_steps=args.accum_steps, clip_grad=args.clip_grad, dtype=dtype)
