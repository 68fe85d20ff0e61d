"""Cost of a TimeSformer as PyTorch counts it: `measure(config)` runs the real model.

The same quantities as `analysis.cost.estimate`, counted on the model of `timesformer/`, so the formulas
are checked against the code they describe (tests/test_complexity.py does, for all five schemes).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from analysis.cost.estimate import DTYPES, OPTIMIZERS
from timesformer.attention import record_attention
from timesformer.config import TimeSformerConfig
from timesformer.model import TimeSformer


@dataclass
class Measurement:
    """What one run of `TimeSformer(config)` counted, on the device named in `device`."""

    attention_type: str
    batch_size: int
    dtype: str
    fused: bool
    device: str
    gflops: float  # fvcore convention (FlopCounterMode's count / 2, LayerNorm as fvcore), per view
    params: int
    activation_bytes: int  # storages saved for backward by one training forward, each counted once
    peak_bytes: int | None  # CUDA only: max_memory_allocated over forward + backward + optimizer step
    flops_by_op: dict[str, float] = field(default_factory=dict)  # GFLOPs per aten op, per view
    seconds: float = 0.0


def _sdpa_cpu_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has no rule for the CPU flash kernel (it counts 0); use the one it has for the
    CUDA kernels: Q·Kᵀ and P·V, 2 FLOPs per multiply-add. A mask does not change the count: the
    kernel computes every score and masks it."""
    return sdpa_flop_count(query, key, value)


def _layer_norm_flop(x, *args, out_shape=None, **kwargs) -> int:
    """fvcore counts a LayerNorm with affine parameters as 5 FLOPs per element (its norm_flop_counter);
    FlopCounterMode counts none. Returned in FlopCounterMode's units (2 per multiply-add)."""
    return 2 * 5 * math.prod(x)


def _flop_rules() -> dict:
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
        aten.native_layer_norm: _layer_norm_flop,
    }


def measure(
    config: TimeSformerConfig,
    batch_size: int = 1,
    dtype: str = "fp32",
    fused: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
    checkpointing: bool = False,
    optimizer: str = "adamw",
) -> Measurement:
    """Run the real model and count FLOPs, parameters and the bytes saved for backward.

    FLOPs: one eval forward of every token through every block (as fvcore counts) under
    `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add, halved; LayerNorm and the CPU
    flash-attention kernel get the rules above). Activations: one training forward, `model(video)`, whose
    last block runs for cls alone (train mode, bf16 autocast if asked) under `saved_tensors_hooks`, adding the
    storage size of every saved tensor once (by storage pointer; parameters excluded, their autocast
    copies included). With `fused=False` the model materialises its attention (through
    `record_attention`, the model's own switch). On CUDA, also the peak allocated memory of a full
    training step with `optimizer` (forward, backward, optimizer step: AdamW, or SGD with momentum).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    device = torch.device(device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = TimeSformer(config).to(device)
    if checkpointing:
        model.set_grad_checkpointing(True)
    T, H, W = config.num_frames, config.img_size, config.img_size
    video = torch.randn(batch_size, config.in_chans, T, H, W, device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())
    materialise = (lambda: contextlib.nullcontext()) if fused else (lambda: record_attention(model))

    def full(v):  # every token through every block, as fvcore counts: model(v) runs the last block for cls alone
        return model.forward_head(model.forward_features(v))

    # FLOPs of one forward
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_flop_rules())
    # grad enabled: under no_grad the model folds each extra step's proj and fc into one linear, an
    # inference shortcut; the architecture's FLOPs (what fvcore and the paper count) keep them apart
    with torch.enable_grad(), autocast, materialise(), counter:
        full(video)
    by_op = {str(op): n / 2 / batch_size / 1e9 for op, n in counter.get_flop_counts()["Global"].items()}

    # Bytes saved for backward by one training forward
    model.train()
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in param_storages:
            saved[ptr] = storage  # holding it keeps the pointer unique while we count
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast, materialise():
        out = model(video)  # the training forward
    activation_bytes = sum(s.nbytes() for s in saved.values())
    saved.clear()
    del out

    peak = None
    if device.type == "cuda":
        opt = (torch.optim.AdamW(model.parameters()) if optimizer == "adamw" else
               torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        for _ in range(2):  # the second step runs with the optimizer state allocated
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            with autocast, materialise():
                loss = model(video).float().logsumexp(-1).mean()
            loss.backward()
            opt.step()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
    return Measurement(
        attention_type=config.attention_type, batch_size=batch_size, dtype=dtype, fused=fused,
        device=str(device), gflops=sum(by_op.values()), params=sum(p.numel() for p in model.parameters()),
        activation_bytes=activation_bytes, peak_bytes=peak, flops_by_op=by_op,
        seconds=time.perf_counter() - start,
    )


def measure_if_it_fits(config: TimeSformerConfig, device: str | torch.device = "cpu", **kwargs) -> Measurement | None:
    """`measure`, or None where the GPU runs out of memory; the allocator's cached blocks are given back either
    way, so that the next measurement (or whatever else shares the GPU) starts from what is really in use."""
    device = torch.device(device)
    try:
        return measure(config, device=device, **kwargs)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
