"""Closed-form FLOPs, parameters and memory of a TimeSformer: `estimate(config)` builds no model.

Conventions (docs/complexity.md has the derivations):
- FLOPs follow fvcore, the tool the paper's numbers come from: one multiply-add is one FLOP, counted for
  convolutions, linears and matmuls; LayerNorm counts 5 per element (fvcore's `norm_flop_counter`);
  softmax, GELU, additions and copies count nothing. `gflops` is per view (one clip), as in the paper.
- Which tokens meet in each attention step is never re-derived: `analysis.cost.shapes` reads it from the
  model's own grouping rules.
- Memory is modelled for this project's model, which saves for backward what the official code saves
  (plus or minus a few (T, D) slices; docs/complexity.md). Bytes, not GB, everywhere in the API.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from analysis.cost.shapes import StepShape, step_shapes
from timesformer.attention import SCHEMES
from timesformer.config import TimeSformerConfig

GiB = 1024**3
DTYPES = {"fp32": 4, "bf16": 2}  # bytes of the low-precision values under autocast
OPTIMIZERS = {"sgd": 1, "adamw": 2}  # fp32 state tensors per parameter: SGD momentum buffer; AdamW m and v
INDEX_BYTES = 8  # int64 gather indices of the groupings
FP32 = 4  # the residual stream, LayerNorm statistics, softmax under CUDA autocast, weights and their state
# What a CUDA training step holds that no term itemises, measured on an H200 (torch 2.11, bench/gpu.py's memory
# breakdown, ViT-B/16 8×224, all five schemes, batches 4-16): 66 MiB held before the forward besides weights,
# AdamW state and the clip (cuBLAS/cuBLASLt workspaces, indices, labels), and up to 93 MiB more saved by the
# forward than the terms below count. 159 MiB, rounded up.
OVERHEAD_BYTES = 192 * 2**20


@dataclass(frozen=True)
class _Sizes:
    """The letters of the formulas in docs/complexity.md, for one configuration."""

    T: int  # frames
    N: int  # patches per frame
    D: int  # width
    h: int  # heads
    d: int  # head width, D / h
    M: int  # MLP hidden width
    depth: int
    C: int  # cls tokens in the sequence: one per frame for space_only (the official code), else 1
    S: int  # tokens through the blocks, C + T·N

    @classmethod
    def of(cls, config: TimeSformerConfig) -> _Sizes:
        T, H, W = config.grid
        D, h = config.embed_dim, config.num_heads
        C = T if SCHEMES[config.attention_type].cls_per_frame else 1
        return cls(T=T, N=H * W, D=D, h=h, d=D // h, M=int(D * config.mlp_ratio), depth=config.depth,
                   C=C, S=C + T * H * W)

    def seen_by(self, step: StepShape) -> int:
        """S_s: the tokens a step's norm, qkv and proj run on: its groups, cls copied into each (as the
        official divided space step does) and padding slots included; a time step leaves cls out."""
        return step.groups * step.length

    def scores(self, step: StepShape) -> int:
        """Elements of one clip's L×L scores (or probabilities) in a step: G·h·L²."""
        return step.groups * self.h * step.length**2


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
    gradient_bytes: int  # the gradients allocated at the peak (all of them only if they outlive the step)
    optimizer_bytes: int
    workspace_bytes: int  # the backward's transient tensors at the peak, the clip, OVERHEAD_BYTES
    training_bytes: int  # the peak: weights + gradients + optimizer state + activations + workspace
    flops: dict[str, float] = field(default_factory=dict)  # GFLOPs per term, per view
    activations: dict[str, int] = field(default_factory=dict)  # bytes per term, per batch

    def fits(self, gpu_memory: float) -> bool:
        """Whether a training step fits in `gpu_memory` bytes."""
        return self.training_bytes <= gpu_memory


def count_params(config: TimeSformerConfig) -> int:
    """Parameters of `TimeSformer(config)`, term by term as the model builds them."""
    embed, block, top = _param_parts(config)
    return embed + config.depth * block + top


def _param_parts(config: TimeSformerConfig) -> tuple[int, int, int]:
    """Parameters of the embeddings, of one block, and of the final norm and head."""
    z = _Sizes.of(config)
    D, M = z.D, z.M
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)
    norm = 2 * D  # LayerNorm weight and bias
    attn = linear(D, 3 * D, config.qkv_bias) + linear(D, D)  # qkv, proj
    steps = SCHEMES[config.attention_type].steps
    extra = sum(1 for s in steps if s.prefix)
    block = len(steps) * (norm + attn) + extra * linear(D, D) + norm + linear(D, M) + linear(M, D)
    embed = linear(config.in_chans * config.patch_size**2, D) + D + (1 + z.N) * D  # patch_embed, cls, pos_embed
    if not SCHEMES[config.attention_type].cls_per_frame:
        embed += z.T * D  # time_embed (space_only has none, as in the official code)
    return embed, block, norm + linear(D, config.num_classes)


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
    grads_freed: bool = True,
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
        frames *before* norm1/qkv/proj (T·(1+N) tokens instead of 1+T·N). This model runs every step with
        cls that way, so the count is the same either way; kept for callers (docs/complexity.md).
    grads_freed: the gradients are freed at every step (`zero_grad(set_to_none=True)`, PyTorch ≥ 2.0's
        default and this project's training loop), so at the peak — the start of the backward, with every
        activation still saved — only the last block's and the head's exist; False: they stay allocated
        between steps (`zero_grad()` before PyTorch 2.0, as the official code ran), all of them at the peak.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    z = _Sizes.of(config)
    B, itemsize = batch_size, DTYPES[dtype]
    shapes = step_shapes(config.attention_type, config.grid, config.local_split, config.global_stride)

    flops = _flops(config, z, shapes, official)
    params = count_params(config)
    weight_bytes = FP32 * params
    optimizer_bytes = FP32 * params * OPTIMIZERS[optimizer]
    saved = _saved_for_backward(config, z, shapes, B, itemsize, fused, softmax_saves_input, autocast_device)
    workspace = _backward_workspace(config, z, shapes, B, itemsize, fused)
    if checkpointing:
        saved, recomputed = _checkpointed(saved, config, z, B, itemsize)
        workspace += recomputed  # one block's activations, rebuilt during its backward
    activation_bytes = sum(saved.values())
    gradient_bytes = FP32 * params
    if grads_freed:  # the peak is the start of the backward, or its end if the gradients outweigh the rest
        first = FP32 * sum(_param_parts(config)[1:])  # the last block's, the final norm's and the head's
        gradient_bytes = max(first, FP32 * params + OVERHEAD_BYTES - activation_bytes - workspace)
    training = weight_bytes + gradient_bytes + optimizer_bytes + activation_bytes + workspace
    return Estimate(
        attention_type=config.attention_type, num_frames=z.T, img_size=config.img_size,
        patch_size=config.patch_size, embed_dim=z.D, depth=z.depth, num_heads=z.h, batch_size=B, dtype=dtype,
        fused=fused, checkpointing=checkpointing, optimizer=optimizer,
        softmax_saves_input=softmax_saves_input, tokens=z.S,
        gflops=sum(flops.values()), params=params, activation_bytes=activation_bytes,
        inference_peak_bytes=_inference_peak(config, z, shapes, B, itemsize, fused, weight_bytes),
        weight_bytes=weight_bytes, gradient_bytes=gradient_bytes, optimizer_bytes=optimizer_bytes,
        workspace_bytes=workspace, training_bytes=training, flops=flops, activations=saved,
    )


def _flops(config: TimeSformerConfig, z: _Sizes, shapes: tuple[StepShape, ...], official: bool) -> dict[str, float]:
    """GFLOPs per term, per view: multiply-adds, as fvcore counts them."""
    f: Counter[str] = Counter()
    # Conv2d P×P stride P on each frame: every output element is a dot product of length C·P².
    f["patch_embed"] = z.T * z.N * z.D * config.in_chans * config.patch_size**2
    for s in shapes:
        tokens = z.seen_by(s)
        if official and s.with_cls and s.name == "space" and z.C == 1:
            tokens = s.groups * s.length  # official divided space step: cls copied per frame first
        f["qkv"] += z.depth * tokens * z.D * 3 * z.D
        f["attn_proj"] += z.depth * tokens * z.D * z.D
        if s.extra:  # temporal_fc / local_fc / width_fc (paper §3: its own projections per step)
            f["step_fc"] += z.depth * tokens * z.D * z.D
        # Q·Kᵀ and P·V, each G·heads·L²·head_dim multiply-adds (padding slots included: they are computed)
        f[f"scores_{s.name}"] += z.depth * 2 * z.scores(s) * z.d
        f["layernorm"] += z.depth * 5 * tokens * z.D  # fvcore: 5 FLOPs per element
    f["mlp"] = z.depth * z.S * 2 * z.D * z.M  # fc1 and fc2
    f["layernorm"] += z.depth * 5 * z.S * z.D + 5 * (1 + z.T * z.N) * z.D  # norm2 of each block; final norm
    f["head"] = z.D * config.num_classes
    return {k: v / 1e9 for k, v in f.items()}


def _saved_for_backward(config: TimeSformerConfig, z: _Sizes, shapes: tuple[StepShape, ...], B: int,
                        itemsize: int, fused: bool, softmax_saves_input: bool, autocast_device: str) -> dict[str, int]:
    """Bytes per term that one training forward of the batch saves for backward, each storage once."""
    # Element sizes: under bf16 autocast the matmul inputs/outputs are `itemsize` (bf16); the residual
    # stream, LayerNorm statistics, softmax output (autocast runs softmax in fp32) and logsumexp stay fp32.
    lo, T, N, D, M, S, depth = itemsize, z.T, z.N, z.D, z.M, z.S, z.depth
    a: Counter[str] = Counter()
    for s in shapes:
        tokens = z.seen_by(s)
        GL = s.groups * s.length
        # norm: its input is the step's regrouped tokens (cls copied into every group: a copy of the
        # residual stream, or the stream itself when the one group is the sequence), plus mean and rstd;
        # qkv keeps the normalised tokens; the attention keeps q/k/v (fused: views of qkv's output;
        # materialised: q, kᵀ and v copies of it).
        a["residual"] += depth * B * tokens * D * FP32
        a["norm_stats"] += depth * B * 2 * tokens * FP32
        a["qkv_in"] += depth * B * tokens * D * lo
        a["qkv_grouped"] += depth * B * GL * 3 * D * lo
        if fused:  # flash / memory-efficient SDPA keeps its output and the logsumexp per row; the
            # kernels write the output (B·G, L, heads, hd), so proj reads it through a view: the same storage
            a["attn_out"] += depth * B * GL * D * lo
            a["attn_lse"] += depth * B * s.groups * z.h * s.length * FP32
        else:  # softmax keeps its output, P·V keeps P: one tensor, or fp32 + a bf16 copy under CUDA autocast
            per = lo if lo == FP32 or autocast_device == "cpu" else FP32 + lo
            a[f"probs_{s.name}"] += depth * B * z.scores(s) * per
            if softmax_saves_input:
                a[f"scores_{s.name}"] += depth * B * z.scores(s) * FP32
            a["proj_in"] += depth * B * tokens * D * lo  # P·V's heads merged: a copy
        if s.extra:
            a["fc_in"] += depth * B * tokens * D * lo
        if s.groups * (s.length - s.with_cls) != T * N:  # unequal groups: gathered and scattered by index
            a["index"] += (GL + T * N) * INDEX_BYTES  # shared by all blocks; equal groups are reshaped views
    a["residual"] += depth * B * S * D * FP32  # norm2 input
    a["norm_stats"] += depth * B * 2 * S * FP32
    a["mlp_in"] += depth * B * S * D * lo  # fc1 input
    a["mlp_hidden"] += depth * B * S * M * 2 * lo  # GELU input and fc2 input
    # stochastic depth keeps its (B, 1, 1) keep-mask in every block whose drop rate is not 0
    rates = torch.linspace(0, config.drop_path_rate, depth).tolist()
    a["drop_path"] += B * sum(r > 0 for r in rates) * (len(shapes) + 1) * lo
    a["embed"] += B * T * config.in_chans * config.img_size**2 * lo  # the frames the conv keeps
    last = shapes[-1]
    if fused and last.with_cls:
        # The classifier's last block runs its last step's attention output (one cls query per group), its
        # projection (and fc) and the MLP for the C cls tokens alone (`TimeSformer.forward`); its norm, qkv,
        # keys and values still cover every token. Materialised attention models the official code, which
        # runs every token to the end.
        tokens, G = z.seen_by(last), last.groups
        a["attn_out"] -= B * (tokens - G) * D * lo
        a["attn_lse"] -= B * G * z.h * (last.length - 1) * FP32
        if last.extra:
            a["fc_in"] -= B * (tokens - G) * D * lo
        a["residual"] -= B * (S - z.C) * D * FP32
        a["norm_stats"] -= B * 2 * (S - z.C) * FP32
        a["mlp_in"] -= B * (S - z.C) * D * lo
        a["mlp_hidden"] -= B * (S - z.C) * M * 2 * lo
        final_rows = B  # the final norm sees one (pooled) cls row per clip
    else:
        final_rows = B * (1 + T * N)
    # final norm: its input and statistics; the head keeps the cls row of the norm's output (a view
    # that keeps the whole output alive), or under autocast a bf16 copy of just that row
    a["final"] += final_rows * (D + 2) * FP32 + (final_rows * D * FP32 if lo == FP32 else B * D * lo)
    if lo != FP32:  # autocast caches a bf16 copy of every matmul weight for the backward
        a["weight_copies"] += (depth * _block_weights(z, shapes) + _outside_weights(config, z)) * lo
    return dict(a)


def _block_weights(z: _Sizes, shapes: tuple[StepShape, ...]) -> int:
    """Matmul weight elements of one block (qkv, proj and fc of every step; fc1, fc2): what bf16
    autocast keeps a bf16 copy of."""
    return sum(4 * z.D * z.D + (z.D * z.D if s.extra else 0) for s in shapes) + 2 * z.D * z.M


def _outside_weights(config: TimeSformerConfig, z: _Sizes) -> int:
    """Matmul weight elements outside the blocks: the patch convolution and the head."""
    return z.D * config.in_chans * config.patch_size**2 + z.D * config.num_classes


def _checkpointed(saved: dict[str, int], config: TimeSformerConfig, z: _Sizes, B: int,
                  itemsize: int) -> tuple[dict[str, int], int]:
    """What per-block checkpointing keeps of `saved`, and the bytes of one block it rebuilds."""
    # torch.utils.checkpoint per block (TimeSformer.set_grad_checkpointing) keeps each block's input
    # and nothing from inside the blocks (not even the indices or autocast weight copies); during
    # backward one block's activations are rebuilt, so they come back as workspace.
    outside = ("embed", "final")
    one_block = sum(v for k, v in saved.items() if k not in outside) // z.depth
    kept = {k: v for k, v in saved.items() if k in outside}
    if itemsize != FP32:  # the patch-embedding and head weight copies are outside the blocks
        kept["weight_copies"] = _outside_weights(config, z) * itemsize
    kept["block_inputs"] = z.depth * B * z.S * z.D * FP32
    return kept, one_block


def _backward_workspace(config: TimeSformerConfig, z: _Sizes, shapes: tuple[StepShape, ...], B: int, itemsize: int,
                        fused: bool) -> int:
    """What the step holds at its peak besides weights, gradients, optimizer state and saved activations."""
    # The peak is the start of the backward: the first steps' transient gradients are alive on top of every
    # saved tensor — two L×L score gradients (dP, dS, fp32) for a materialised step, the qkv and output
    # gradients for any step, and two hidden-size gradients in the MLP, which the classifier runs for cls
    # alone in its last block (fused: see `_saved_for_backward`); plus the residual gradient in and out.
    lo = itemsize
    work = [] if fused and shapes[-1].with_cls else [2 * B * z.S * z.M * lo]
    for s in shapes:
        qkv_and_out = B * s.groups * s.length * 4 * z.D * lo
        work.append(qkv_and_out if fused else 2 * B * z.scores(s) * FP32 + qkv_and_out)
    # under autocast the conv saves a low-precision copy of the clip, and the caller still holds the clip
    clip = B * z.T * config.in_chans * config.img_size**2 * FP32 if lo != FP32 else 0
    return max(work) + 2 * B * z.S * z.D * FP32 + clip + OVERHEAD_BYTES


def _inference_peak(config: TimeSformerConfig, z: _Sizes, shapes: tuple[StepShape, ...], B: int, itemsize: int,
                    fused: bool, weight_bytes: int) -> int:
    """A no-grad forward: weights, the clip, the residual stream and the largest working set."""
    lo = itemsize
    work = [B * z.S * z.D * lo + 2 * B * z.S * z.M * lo]  # norm2 output, fc1 output, GELU output
    for s in shapes:
        tokens, GL = z.seen_by(s), s.groups * s.length
        step = B * (tokens * z.D + tokens * 3 * z.D + GL * 3 * z.D + GL * z.D) * lo  # norm out, qkv, grouped, out
        if not fused:
            step += 2 * B * z.scores(s) * FP32  # scores and probabilities
        work.append(step)
    clip = B * z.T * config.in_chans * config.img_size**2 * FP32
    return weight_bytes + clip + B * z.S * z.D * FP32 + max(work)


def recording_bytes(config: TimeSformerConfig, grid: tuple[int, int, int] | None = None) -> int:
    """Bytes of one clip's attention probabilities recorded at every layer (`record_attention`, float32, as
    rollout needs them) on `grid` (T, H_p, W_p; default: the config's)."""
    shapes = step_shapes(config.attention_type, grid or config.grid, config.local_split, config.global_stride)
    return FP32 * config.depth * sum(_Sizes.of(config).scores(s) for s in shapes)


def max_batch_size(config: TimeSformerConfig, gpu_memory: float, **kwargs) -> int:
    """The largest batch whose training step fits in `gpu_memory` bytes (0 if not even one clip).

    The estimate grows with the batch (affinely once the activations outweigh the gradients), so a doubling
    then a bisection finds the answer in a few dozen estimates.
    """
    if not math.isfinite(gpu_memory):  # inf: the doubling below would never end; nan: nothing would fit
        raise ValueError(f"gpu_memory must be a finite number of bytes, got {gpu_memory}")
    kwargs.pop("batch_size", None)
    fits = lambda b: estimate(config, batch_size=b, **kwargs).training_bytes <= gpu_memory
    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low
