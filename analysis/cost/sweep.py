"""Figure-3-style sweeps: every scheme against frames and crop size, for three attention implementations."""

from __future__ import annotations

from analysis.cost.estimate import GiB, estimate, max_batch_size
from timesformer.config import ATTENTION_TYPES, TimeSformerConfig

# The three ways of running attention whose training memory a sweep reports (analysis.figures draws
# each with its IMPLEMENTATION_STYLES entry): estimate() options for each.
IMPLEMENTATIONS = {
    # materialised on PyTorch ≤ 1.9, as the paper ran: softmax kept its input, zero_grad() kept the gradients
    "paper": dict(fused=False, softmax_saves_input=True, grads_freed=False),
    "materialised": dict(fused=False, softmax_saves_input=False),
    "fused": dict(fused=True, softmax_saves_input=False),
}


# the largest frame count and crop side a sweep takes: 100,000 frames of ViT-B at 224² are 20M tokens (seconds
# of arithmetic); a crop of 10^8 px (a typo) would be 10^13 patches per frame and no memory would hold its groups
MAX_FRAMES, MAX_SIZE = 100_000, 8192


def parse_ints(text: str, what: str, maximum: int) -> tuple[int, ...]:
    """The sorted distinct whole numbers of `text` ("8, 16 32"), each from 1 to `maximum`, or a ValueError
    naming `what`."""
    try:
        values = tuple(sorted({int(v) for v in text.replace(",", " ").split()}))
    except ValueError:
        values = ()
    if not values or not 1 <= min(values) <= max(values) <= maximum:
        raise ValueError(f"{what}: expected whole numbers from 1 to {maximum} separated by commas (e.g. 8, 16, "
                         f"32), got {text!r}")
    return values


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
    (against `gpu_memory` bytes) and the largest batch that fits."""
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
