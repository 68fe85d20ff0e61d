"""Cost of a TimeSformer: FLOPs, parameters and memory, estimated in closed form and measured.

`estimate(config)` is pure arithmetic (no model is built) and sweeps a 100-point grid in a fraction of
a second; `measure(config)` runs the real model of `timesformer/` and counts the same quantities, so the
formulas are checked against the code they describe (tests/test_complexity.py does, for all five schemes).

Conventions (docs/complexity.md has the derivations and the reference tables):
- FLOPs follow fvcore, the tool the paper's numbers come from: one multiply-add is one FLOP, counted for
  convolutions, linears and matmuls; LayerNorm counts 5 per element (fvcore's `norm_flop_counter`);
  softmax, GELU, additions and copies count nothing. `gflops` is per view (one clip), as in the paper.
- Which tokens meet in each attention step is never re-derived here: group counts and sizes come from
  the scheme's key functions in `timesformer.attention` (the ones the model groups tokens with).
- Memory is modelled for this repository's implementation, which saves for backward what the official
  code saves (plus or minus a few (T, D) slices; docs/complexity.md). Bytes, not GB, everywhere in the API.

CLI: `python analysis/complexity.py --out DIR` (or `python -m analysis.complexity --out DIR`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import json
import math
import sys
import time
import types
from dataclasses import dataclass, field

import numpy as np
import torch

from timesformer.attention import KEYS, SCHEMES
from timesformer.config import ATTENTION_TYPES, TimeSformerConfig

GiB = 1024**3
DTYPES = {"fp32": 4, "bf16": 2}  # bytes of the low-precision values under autocast
OPTIMIZERS = {"sgd": 1, "adamw": 2}  # fp32 state tensors per parameter: SGD momentum buffer; AdamW m and v
INDEX_BYTES = 8  # int64 gather indices of the groupings


# --------------------------------------------------------------------------------------------------
# Attention groups: (steps, G, L) from the model's own grouping rules


@dataclass(frozen=True)
class StepShape:
    name: str  # "space", "time", ...
    with_cls: bool
    extra: bool  # an extra step with its own fc (temporal_fc, local_fc, width_fc)
    groups: int  # G
    length: int  # L: slots per group, cls included when with_cls, padded to the longest group


@functools.lru_cache(maxsize=4096)
def step_shapes(attention_type: str, grid: tuple[int, int, int], local_split: int = 2,
                global_stride: int = 2) -> tuple[StepShape, ...]:
    """(G, L) of every step of a scheme on a (T, H_p, W_p) grid.

    Equal to `scheme_groupings(...)[i].index.shape` (tested), but counts group sizes with a bincount of
    the same key functions instead of building the gather indices, which keeps sweeps fast.
    """
    if attention_type not in SCHEMES:
        raise ValueError(f"unknown attention_type {attention_type!r}; choose one of {', '.join(SCHEMES)}")
    T, H, W = grid
    # numpy first: the keys are integer arithmetic, and single-threaded numpy stays fast on a busy CPU
    # where torch's thread pool does not; a key written with torch-only calls falls back to torch.
    p = np.arange(T * H * W)
    t, h, w = p // (H * W), (p // W) % H, p % W
    split = types.SimpleNamespace(local_split=local_split, global_stride=global_stride)  # what KEYS reads
    out = []
    for step in SCHEMES[attention_type].steps:
        try:
            key = np.asarray(KEYS[step.name](t, h, w, T, H, W, split))
        except TypeError:
            key = KEYS[step.name](*(torch.from_numpy(a) for a in (t, h, w)), T, H, W, split).numpy()
        counts = np.bincount(np.broadcast_to(key, p.shape))
        counts = counts[counts > 0]
        out.append(StepShape(step.name, step.with_cls, step.prefix is not None, len(counts),
                             int(counts.max()) + int(step.with_cls)))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# The estimate


@dataclass
class Estimate:
    """Cost of one configuration. Bytes are for the whole batch; `gflops` is per view."""

    attention_type: str
    num_frames: int
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    batch_size: int
    dtype: str
    fused: bool
    checkpointing: bool
    optimizer: str
    softmax_saves_input: bool
    tokens: int  # sequence length 1 + T·N (T + T·N for space_only's per-frame cls tokens)
    gflops: float  # fvcore convention, per view
    params: int
    activation_bytes: int  # saved for backward by one training forward of the batch
    inference_peak_bytes: int  # weights + input + the largest working set of a no-grad forward
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    workspace_bytes: int  # transient tensors of the worst backward step, on top of the saved ones
    training_bytes: int  # weights + gradients + optimizer state + activations + workspace
    flops: dict[str, float] = field(default_factory=dict)  # GFLOPs per term, per view
    activations: dict[str, int] = field(default_factory=dict)  # bytes per term, per batch

    def fits(self, gpu_memory: float) -> bool:
        """Whether a training step fits in `gpu_memory` bytes."""
        return self.training_bytes <= gpu_memory

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _dims(config: TimeSformerConfig):
    T, H, W = config.grid
    D, h = config.embed_dim, config.num_heads
    return T, H, W, H * W, D, h, D // h, int(D * config.mlp_ratio)


def count_params(config: TimeSformerConfig) -> int:
    """Parameters of `TimeSformer(config)`, term by term as the model builds them."""
    T, H, W, N, D, _, _, M = _dims(config)
    P, C = config.patch_size, config.in_chans
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)
    norm = 2 * D  # LayerNorm weight and bias
    attn = linear(D, 3 * D, config.qkv_bias) + linear(D, D)  # qkv, proj
    steps = SCHEMES[config.attention_type].steps
    extra = sum(1 for s in steps if s.prefix)
    block = len(steps) * (norm + attn) + extra * linear(D, D) + norm + linear(D, M) + linear(M, D)
    embed = linear(C * P * P, D) + D + (1 + N) * D  # patch_embed.proj, cls_token, pos_embed
    if not SCHEMES[config.attention_type].cls_per_frame:
        embed += T * D  # time_embed (space_only has none, as in the official code)
    return embed + config.depth * block + norm + linear(D, config.num_classes)


def estimate(
    config: TimeSformerConfig,
    batch_size: int = 1,
    dtype: str = "fp32",
    fused: bool = True,
    checkpointing: bool = False,
    optimizer: str = "adamw",
    softmax_saves_input: bool = False,
    official: bool = False,
    autocast_device: str = "cuda",
) -> Estimate:
    """Closed-form FLOPs, parameters and memory of `TimeSformer(config)` on clips of the config's size.

    dtype: "fp32", or "bf16" for bf16 autocast (weights, gradients and optimizer state stay fp32).
    fused: attention by `scaled_dot_product_attention` (never stores the L×L probabilities, as the
        model runs by default) or materialised softmax (the official code, and the paper's setting).
    checkpointing: activation checkpointing per block (only block inputs are kept; one block is
        recomputed at a time during backward).
    optimizer: "sgd" (momentum, the official recipe) or "adamw".
    softmax_saves_input: materialised softmax also keeps its input for backward, as PyTorch did until
        pytorch/pytorch#65242 (September 2021, issue #64000; 1.9 and earlier for certain) — the PyTorch
        of the paper (February 2021). One more L×L tensor per attention step.
    autocast_device: whose bf16 autocast policy to model: "cuda" runs softmax in fp32 (then P·V keeps
        a bf16 copy of P too), "cpu" keeps it in bf16. Only matters for bf16 with fused=False.
    official: count the divided space step as the official code runs it, with cls copied into all T
        frames *before* norm1/qkv/proj (T·(1+N) tokens instead of 1+T·N); only FLOPs change. This
        reproduces the fvcore counts of the official model (docs/complexity.md).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    T, H, W, N, D, h, hd, M = _dims(config)
    B = batch_size
    scheme = SCHEMES[config.attention_type]
    C = T if scheme.cls_per_frame else 1  # cls tokens in the sequence
    S = C + T * N  # sequence length through the blocks
    shapes = step_shapes(config.attention_type, (T, H, W), config.local_split, config.global_stride)
    depth = config.depth

    # ---- FLOPs (multiply-adds), per view ---------------------------------------------------------
    f: dict[str, float] = {}
    # Conv2d P×P stride P on each frame: every output element is a dot product of length C·P².
    f["patch_embed"] = T * N * D * config.in_chans * config.patch_size**2
    for s in shapes:
        tokens = (C if s.with_cls else 0) + T * N  # what the step's norm/qkv/proj see
        if official and s.with_cls and s.name == "space" and C == 1:
            tokens = s.groups * s.length  # official divided space step: cls copied per frame first
        f["qkv"] = f.get("qkv", 0) + depth * tokens * D * 3 * D
        f["attn_proj"] = f.get("attn_proj", 0) + depth * tokens * D * D
        if s.extra:  # temporal_fc / local_fc / width_fc (paper §3: its own projections per step)
            f["step_fc"] = f.get("step_fc", 0) + depth * tokens * D * D
        # Q·Kᵀ and P·V, each G·heads·L²·head_dim multiply-adds (padding slots included: they are computed)
        f[f"scores_{s.name}"] = depth * 2 * s.groups * h * s.length**2 * hd
        f["layernorm"] = f.get("layernorm", 0) + depth * 5 * tokens * D  # fvcore: 5 FLOPs per element
    f["mlp"] = depth * S * 2 * D * M  # fc1 and fc2
    f["layernorm"] += depth * 5 * S * D + 5 * (1 + T * N) * D  # norm2 of each block; final norm
    f["head"] = D * config.num_classes
    flops = {k: v / 1e9 for k, v in f.items()}

    # ---- Parameters and their state ------------------------------------------------------------
    params = count_params(config)
    weight_bytes = 4 * params
    gradient_bytes = 4 * params
    optimizer_bytes = 4 * params * OPTIMIZERS[optimizer]

    # ---- Activations saved for backward (per batch) ----------------------------------------------
    # Element sizes: under bf16 autocast the matmul inputs/outputs are bf16; the residual stream,
    # LayerNorm statistics, softmax output (autocast runs softmax in fp32) and logsumexp stay fp32.
    lo = DTYPES[dtype]
    f32 = 4
    a: dict[str, int] = {}

    def add(term: str, n_bytes: float) -> None:
        a[term] = a.get(term, 0) + int(n_bytes)

    n_linear_weights = 0
    for s in shapes:
        tokens = (C if s.with_cls else 0) + T * N
        GL = s.groups * s.length
        # norm: its input is the residual stream (a slice of it, whose whole storage stays alive),
        # plus mean and rstd; qkv keeps the normalised tokens; the gathered q/k/v are kept by the
        # attention (fused: q, k, v views of one tensor; materialised: q, kᵀ and v copies of it).
        add("residual", depth * B * S * D * f32)
        add("norm_stats", depth * B * 2 * tokens * f32)
        add("qkv_in", depth * B * tokens * D * lo)
        add("qkv_grouped", depth * B * GL * 3 * D * lo)
        if fused:  # flash / memory-efficient SDPA keeps its output and the logsumexp per row
            add("attn_out", depth * B * GL * D * lo)
            add("attn_lse", depth * B * s.groups * h * s.length * f32)
        else:  # softmax keeps its output, P·V keeps P: one tensor, or fp32 + a bf16 copy under CUDA autocast
            probs = B * s.groups * h * s.length**2
            per = lo if lo == f32 or autocast_device == "cpu" else f32 + lo
            add(f"probs_{s.name}", depth * probs * per)
            if softmax_saves_input:
                add(f"scores_{s.name}", depth * probs * f32)
        add("proj_in", depth * B * tokens * D * lo)
        if s.extra:
            add("fc_in", depth * B * tokens * D * lo)
        add("index", (GL + T * N) * INDEX_BYTES)  # gather/scatter indices, shared by all blocks
        n_linear_weights += 4 * D * D + (D * D if s.extra else 0)
    add("residual", depth * B * S * D * f32)  # norm2 input
    add("norm_stats", depth * B * 2 * S * f32)
    add("mlp_in", depth * B * S * D * lo)  # fc1 input
    add("mlp_hidden", depth * B * S * M * 2 * lo)  # GELU input and fc2 input
    n_linear_weights += 2 * D * M  # fc1, fc2 (per block, like the step weights above)
    # stochastic depth keeps its (B, 1, 1) keep-mask in every block whose drop rate is not 0
    rates = torch.linspace(0, config.drop_path_rate, depth).tolist()
    add("drop_path", B * sum(r > 0 for r in rates) * (len(shapes) + 1) * lo)
    add("embed", B * T * config.in_chans * config.img_size**2 * lo)  # the frames the conv keeps
    # final norm: its input and statistics; the head keeps the cls row of the norm's output (a view
    # that keeps the whole output alive), or under autocast a bf16 copy of just that row
    add("final", B * (1 + T * N) * (D + 2) * f32 + (B * (1 + T * N) * D * f32 if lo == f32 else B * D * lo))
    if lo != f32:  # autocast caches a bf16 copy of every matmul weight for the backward
        conv_head = D * config.in_chans * config.patch_size**2 + D * config.num_classes
        add("weight_copies", (depth * n_linear_weights + conv_head) * lo)

    if checkpointing:
        # torch.utils.checkpoint per block (TimeSformer.set_grad_checkpointing) keeps each block's input
        # and nothing from inside the blocks (not even the indices or autocast weight copies); during
        # backward one block's activations are rebuilt, so they come back as workspace.
        outside = ("embed", "final")
        per_block = sum(v for k, v in a.items() if k not in outside) // depth
        kept = {k: v for k, v in a.items() if k in outside}
        if lo != f32:  # the patch-embedding and head weight copies are outside the blocks
            kept["weight_copies"] = (D * config.in_chans * config.patch_size**2 + D * config.num_classes) * lo
        kept["block_inputs"] = depth * B * S * D * f32
        a, recompute = kept, per_block
    else:
        recompute = 0
    activation_bytes = sum(a.values())

    # ---- Transient working memory (modelled, not measured on this CPU-only machine) --------------
    # Backward of one step holds the gradients of its largest tensors while its inputs are still
    # saved: two L×L score gradients (dP, dS) for a materialised step, qkv and output gradients for
    # a fused one, two hidden-size gradients in the MLP.
    work = [2 * B * S * M * f32]
    for s in shapes:
        GL = s.groups * s.length
        if fused:
            work.append(B * GL * 4 * D * f32)
        else:
            work.append(2 * B * s.groups * h * s.length**2 * f32 + B * GL * 4 * D * f32)
    workspace_bytes = max(work) + 2 * B * S * D * f32 + recompute  # + the residual gradient in and out

    # Inference (no grad): weights, the clip, the residual stream and the largest working set.
    infer = [B * S * D * lo + 2 * B * S * M * lo]  # norm2 output, fc1 output, GELU output
    for s in shapes:
        tokens = (C if s.with_cls else 0) + T * N
        GL = s.groups * s.length
        ws = B * (tokens * D + tokens * 3 * D + GL * 3 * D + GL * D) * lo  # norm out, qkv, grouped, out
        if not fused:
            ws += 2 * B * s.groups * h * s.length**2 * f32  # scores and probabilities
        infer.append(ws)
    inference_peak = weight_bytes + B * T * config.in_chans * config.img_size**2 * f32 + B * S * D * f32 + max(infer)

    training = weight_bytes + gradient_bytes + optimizer_bytes + activation_bytes + workspace_bytes
    return Estimate(
        attention_type=config.attention_type, num_frames=T, img_size=config.img_size,
        patch_size=config.patch_size, embed_dim=D, depth=depth, num_heads=h, batch_size=B, dtype=dtype,
        fused=fused, checkpointing=checkpointing, optimizer=optimizer,
        softmax_saves_input=softmax_saves_input, tokens=S,
        gflops=sum(flops.values()), params=params, activation_bytes=activation_bytes,
        inference_peak_bytes=int(inference_peak), weight_bytes=weight_bytes, gradient_bytes=gradient_bytes,
        optimizer_bytes=optimizer_bytes, workspace_bytes=int(workspace_bytes), training_bytes=int(training),
        flops=flops, activations=a,
    )


def max_batch_size(config: TimeSformerConfig, gpu_memory: float, **kwargs) -> int:
    """The largest batch whose training step fits in `gpu_memory` bytes (0 if not even one clip).

    Memory is affine in the batch size (everything but weights, gradients, optimizer state and the
    shared indices scales with it), so two estimates give the answer exactly.
    """
    kwargs.pop("batch_size", None)
    one = estimate(config, batch_size=1, **kwargs).training_bytes
    two = estimate(config, batch_size=2, **kwargs).training_bytes
    per_clip = two - one
    fixed = one - per_clip
    if gpu_memory < one:
        return 0
    return int((gpu_memory - fixed) // per_clip)


# --------------------------------------------------------------------------------------------------
# Measurement: the real model, counted by PyTorch


@dataclass
class Measurement:
    """What running `TimeSformer(config)` on this machine counted."""

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _sdpa_cpu_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has no rule for the CPU flash kernel (it counts 0); use the one it has for the
    CUDA kernels: Q·Kᵀ and P·V, 2 FLOPs per multiply-add. A mask does not change the count: the
    kernel computes every score and masks it."""
    from torch.utils.flop_counter import sdpa_flop_count

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
) -> Measurement:
    """Run the real model and count FLOPs, parameters and the bytes saved for backward.

    FLOPs: one eval forward under `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add,
    halved here; LayerNorm and the CPU flash-attention kernel get the rules above). Activations: one
    training forward (train mode, bf16 autocast if asked) under `saved_tensors_hooks`, adding the
    storage size of every saved tensor once (by storage pointer; parameters excluded, their autocast
    copies included). With `fused=False` the model materialises its attention (through
    `record_attention`, the model's own switch). On CUDA, also the peak allocated memory of a full
    training step with AdamW (forward, backward, optimizer step).
    """
    from timesformer.attention import record_attention
    from timesformer.model import TimeSformer

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
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

    def full(v):  # every token through every block: model(v) runs the last block for cls alone
        return model.forward_head(model.forward_features(v))

    # FLOPs of one forward
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_flop_rules())
    # grad enabled: under no_grad the model folds each extra step's proj and fc into one linear, an
    # inference shortcut; the architecture's FLOPs (what fvcore and the paper count) keep them apart
    with torch.enable_grad(), autocast, materialise(), counter:
        full(video)
    by_op = {str(op): n / 2 / batch_size / 1e9 for op, n in counter.get_flop_counts()["Global"].items()}

    # Bytes saved for backward by one training forward
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in params:
            saved[ptr] = storage  # holding it keeps the pointer unique while we count
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast, materialise():
        out = full(video)
    activation_bytes = sum(s.nbytes() for s in saved.values())
    saved.clear()
    del out

    peak = None
    if device.type == "cuda":
        opt = torch.optim.AdamW(model.parameters())
        for _ in range(2):  # the second step runs with the optimizer state allocated
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            with autocast, materialise():
                loss = full(video).float().logsumexp(-1).mean()
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


# --------------------------------------------------------------------------------------------------
# Sweeps and the CLI

# The three ways of running attention whose training memory the sweep reports
# (drawn with figures.IMPLEMENTATION_STYLES).
IMPLEMENTATIONS = {
    "paper": dict(fused=False, softmax_saves_input=True),  # materialised on PyTorch ≤ 1.9, as the paper ran
    "materialised": dict(fused=False, softmax_saves_input=False),
    "fused": dict(fused=True, softmax_saves_input=False),
}


def sweep(
    base: TimeSformerConfig,
    schemes=ATTENTION_TYPES,
    frames=(8, 16, 32, 64, 96),
    sizes=(224, 336, 448, 560),
    base_frames: int = 8,
    base_size: int = 224,
    gpu_memory: float = 32 * GiB,
    **kwargs,
) -> list[dict]:
    """Rows for Figure-3-style curves: each scheme against frames (at `base_size`) and against crop
    size (at `base_frames`). kwargs go to `estimate` (batch_size, dtype, optimizer, checkpointing).
    Each row has the FLOPs, parameters and, per attention implementation, training bytes, an OOM flag
    and the largest batch that fits."""
    rows = []
    points = [("frames", f, base_size) for f in frames] + [("size", base_frames, s) for s in sizes]
    for scheme in schemes:
        for axis, T, size in points:
            cfg = base.replace(attention_type=scheme, num_frames=T, img_size=size)
            row = {"sweep": axis, "attention_type": scheme, "num_frames": T, "img_size": size}
            for impl, opts in IMPLEMENTATIONS.items():
                e = estimate(cfg, **kwargs, **opts)
                if impl == "fused":
                    row.update(tokens=e.tokens, patch_size=e.patch_size, embed_dim=e.embed_dim, depth=e.depth,
                               num_heads=e.num_heads, batch_size=e.batch_size, dtype=e.dtype, optimizer=e.optimizer,
                               checkpointing=e.checkpointing, gflops=e.gflops, params=e.params,
                               inference_peak_bytes=e.inference_peak_bytes, flops_breakdown=e.flops)
                row[f"activation_bytes_{impl}"] = e.activation_bytes
                row[f"train_bytes_{impl}"] = e.training_bytes
                row[f"oom_{impl}"] = not e.fits(gpu_memory)
                row[f"max_batch_{impl}"] = max_batch_size(cfg, gpu_memory, **kwargs, **opts)
            rows.append(row)
    return rows


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    return _positive_ints(text)[0] if "," not in text else _fail(f"expected one integer, got {text!r}")


def _fail(message: str):
    raise argparse.ArgumentTypeError(message)


def _schemes(text: str) -> tuple[str, ...]:
    names = tuple(v for v in text.replace(",", " ").split())
    if text.strip() == "all":
        return ATTENTION_TYPES
    bad = [n for n in names if n not in ATTENTION_TYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scheme {', '.join(bad) if bad else repr(text)}; choose from {', '.join(ATTENTION_TYPES)}")
    return names


# fvcore counts of the official model, per view, and the paper's TFLOPs (3 views); docs/complexity.md
OFFICIAL_GFLOPS = {
    ("divided_space_time", 8, 224): 196.1, ("joint_space_time", 8, 224): 179.7, ("space_only", 8, 224): 140.7,
    ("divided_space_time", 8, 448): 851.3, ("joint_space_time", 8, 448): 1262.4,
    ("divided_space_time", 32, 224): 786.8, ("joint_space_time", 32, 224): 1262.4,
}
PAPER_TFLOPS = {"base": 0.59, "hr": 5.11, "large": 7.14}


def references(gpu_memory: float = 32 * GiB) -> str:
    """Markdown tables of docs/complexity.md: FLOPs against the official fvcore counts and the paper,
    parameters, and training memory in the paper's setting against the three attention implementations."""
    base = TimeSformerConfig.base
    out = ["| scheme | frames × crop | this model | official-code count | fvcore (official) | difference |",
           "|---|---|---|---|---|---|"]
    for (scheme, T, size), ref in OFFICIAL_GFLOPS.items():
        cfg = base(attention_type=scheme, num_frames=T, img_size=size)
        ours, official = estimate(cfg).gflops, estimate(cfg, official=True).gflops
        out.append(f"| {scheme} | {T}×{size} | {ours:.1f} | {official:.1f} | {ref} | {100 * (ours / ref - 1):+.2f}% |")
    out += ["", "| preset | frames × crop | GFLOPs per view (this model / official count) "
            "| × 3 views, TFLOPs | paper |", "|---|---|---|---|---|"]
    for preset, tflops in PAPER_TFLOPS.items():
        cfg = getattr(TimeSformerConfig, preset)()
        ours, official = estimate(cfg).gflops, estimate(cfg, official=True).gflops
        out.append(f"| {preset} | {cfg.num_frames}×{cfg.img_size} | {ours:.1f} / {official:.1f} | "
                   f"{3 * ours / 1000:.3f} / {3 * official / 1000:.3f} | {tflops} |")
    out += ["", "| scheme | params (174 classes) | GFLOPs 8×224 |", "|---|---|---|"]
    for scheme in ATTENTION_TYPES:
        e = estimate(base(attention_type=scheme, num_classes=174))
        out.append(f"| {scheme} | {e.params / 1e6:.1f}M | {e.gflops:.1f} |")
    gib = gpu_memory / GiB
    out += ["", f"Training memory, fp32, SGD momentum, 1 clip, GiB (× = does not fit in {gib:g} GiB):", "",
            "| scheme | frames × crop | tokens | materialised, PyTorch ≤ 1.9 (paper) | materialised, current PyTorch "
            "| fused SDPA | max batch (paper / current / fused) |", "|---|---|---|---|---|---|---|"]
    points = [(T, 224) for T in (8, 16, 32, 64, 96)] + [(8, s) for s in (336, 448, 560)]
    for scheme in ("joint_space_time", "divided_space_time", "sparse_local_global", "axial", "space_only"):
        for T, size in points:
            cfg = base(attention_type=scheme, num_frames=T, img_size=size)
            cells, batches = [], []
            for opts in IMPLEMENTATIONS.values():
                e = estimate(cfg, optimizer="sgd", **opts)
                cells.append(f"{e.training_bytes / GiB:.1f}{'' if e.fits(gpu_memory) else ' ×'}")
                batches.append(str(max_batch_size(cfg, gpu_memory, optimizer="sgd", **opts)))
            out.append(f"| {scheme} | {T}×{size} | {e.tokens} | {' | '.join(cells)} | {' / '.join(batches)} |")
    return "\n".join(out)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="complexity.py", description=(
        "FLOPs, parameters and training memory of the five TimeSformer attention schemes against frames and "
        "crop size (the paper's Figure 3, for your configuration and GPU). Writes complexity.csv, "
        "complexity.json, complexity.html and complexity.png (when kaleido finds a Chromium)."))
    p.add_argument("--out", help="output folder (created); required unless --references")
    p.add_argument("--references", action="store_true",
                   help="print the reference tables of docs/complexity.md (FLOPs, parameters, memory) and exit")
    p.add_argument("--schemes", type=_schemes, default=ATTENTION_TYPES, help="comma-separated, or 'all' (default)")
    p.add_argument("--frames", type=_positive_ints, default=(8, 16, 32, 64, 96), help="frame counts (8,16,32,64,96)")
    p.add_argument("--sizes", type=_positive_ints, default=(224, 336, 448, 560), help="crop sizes (224,336,448,560)")
    p.add_argument("--base-frames", type=_positive_int, default=8, help="frames of the crop-size sweep (8)")
    p.add_argument("--base-size", type=_positive_int, default=224, help="crop of the frame sweep (224)")
    p.add_argument("--patch-size", type=_positive_int, default=16)
    p.add_argument("--embed-dim", type=_positive_int, default=768)
    p.add_argument("--depth", type=_positive_int, default=12)
    p.add_argument("--heads", type=_positive_int, default=12)
    p.add_argument("--num-classes", type=_positive_int, default=400)
    p.add_argument("--batch-size", type=_positive_int, default=1, help="clips per GPU (1, as the official configs)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="fp32, or bf16 autocast")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd", help="sgd (official) or adamw")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    p.add_argument("--gpu-memory", type=float, default=32.0, help="GPU memory in GiB (32, a V100-32GB)")
    p.add_argument("--measure", action="store_true",
                   help="also run the real model on this machine where it fits (see --measure-max-gflops)")
    p.add_argument("--measure-max-gflops", type=float, default=500.0,
                   help="skip measuring points above this many GFLOPs (CPU time; 500)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG even if a browser is present")
    return p


def _check_config(args) -> TimeSformerConfig:
    if args.gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be positive, got {args.gpu_memory}")
    for size in set(args.sizes) | {args.base_size}:
        if size % args.patch_size:
            raise ValueError(f"crop size {size} is not divisible by the patch size {args.patch_size}")
    return TimeSformerConfig.base(
        patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads,
        num_classes=args.num_classes, img_size=args.base_size, num_frames=args.base_frames,
    )


def _physical_memory() -> int:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def write_png(fig, path) -> str | None:
    """Write a PNG with kaleido; returns None, or why it was not written."""
    try:
        fig.write_image(str(path), width=1400, height=850, scale=1)
    except Exception as exc:  # kaleido raises its own types; all mean "no PNG"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"PNG not written: kaleido could not export ({first}); "
                "install a Chromium (e.g. apt-get install chromium) for complexity.png")
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.references:
        print(references(args.gpu_memory * GiB))
        return 0
    if not args.out:
        parser.error("the following arguments are required: --out")
    try:
        base = _check_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    import pathlib

    from analysis.figures import cost_figure

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = args.gpu_memory * GiB
    kwargs = dict(batch_size=args.batch_size, dtype=args.dtype, optimizer=args.optimizer,
                  checkpointing=args.checkpointing)
    t0 = time.perf_counter()
    rows = sweep(base, args.schemes, args.frames, args.sizes, args.base_frames, args.base_size, gpu, **kwargs)
    print(f"estimated {len(rows)} points in {time.perf_counter() - t0:.2f} s")
    if args.measure:
        budget = _physical_memory() // 2
        measured: dict[tuple, Measurement] = {}
        for row in rows:
            cfg = base.replace(attention_type=row["attention_type"], num_frames=row["num_frames"],
                               img_size=row["img_size"])
            need = estimate(cfg, batch_size=1, dtype=args.dtype, fused=True).training_bytes
            if row["gflops"] > args.measure_max_gflops or need > budget:
                row["measured_gflops"] = None
                continue
            point = (row["attention_type"], row["num_frames"], row["img_size"])
            fresh = point not in measured  # the two sweeps share their base point
            if fresh:
                measured[point] = measure(cfg, batch_size=1, dtype=args.dtype)
            m = measured[point]
            row.update(measured_gflops=m.gflops, measured_params=m.params,
                       measured_activation_bytes=m.activation_bytes, measured_seconds=m.seconds)
            if not fresh:
                continue
            print(f"measured {row['attention_type']} {row['num_frames']}×{row['img_size']}: {m.gflops:.1f} GFLOPs "
                  f"(estimate {row['gflops']:.1f}), saved activations {m.activation_bytes / GiB:.2f} GiB "
                  f"(estimate {row['activation_bytes_fused'] / GiB:.2f}) in {m.seconds:.0f} s", flush=True)

    flat = [{k: v for k, v in r.items() if k != "flops_breakdown"}
            | {f"gflops_{k}": v for k, v in r["flops_breakdown"].items()} for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    with open(out / "complexity.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
    meta = {"gpu_memory_bytes": gpu, "base_config": base.to_dict(), **kwargs,
            "implementations": {k: v for k, v in IMPLEMENTATIONS.items()},
            "flops_convention": "fvcore: one multiply-add = one FLOP, per view"}
    (out / "complexity.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    title = (f"TimeSformer cost — ViT {args.embed_dim}×{args.depth} ({args.heads} heads), patch {args.patch_size}, "
             f"batch {args.batch_size}, {args.dtype}, {args.optimizer}, GPU {args.gpu_memory:g} GiB")
    fig = cost_figure(rows, gpu, title)
    fig.write_html(out / "complexity.html", include_plotlyjs=True, full_html=True)
    written = ["complexity.csv", "complexity.json", "complexity.html"]
    note = "PNG skipped (--no-png)" if args.no_png else write_png(fig, out / "complexity.png")
    if note is None:
        written.append("complexity.png")
    print(f"wrote {', '.join(written)} to {out}")
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
