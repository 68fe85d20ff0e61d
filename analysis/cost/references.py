"""Published cost numbers of TimeSformer, and the tables of docs/complexity.md that set the estimate beside them.

`python analysis/complexity.py --references` prints `references()`; tests/test_complexity.py asserts the
estimate against the same numbers.
"""

from __future__ import annotations

from analysis.cost.estimate import GiB, estimate, max_batch_size
from analysis.cost.sweep import IMPLEMENTATIONS
from timesformer.config import ATTENTION_TYPES, TimeSformerConfig

# GFLOPs per view of the official model (github.com/facebookresearch/TimeSformer) as fvcore's FlopCountAnalysis
# counts them (one multiply-add = one FLOP), keyed by (attention_type, frames, crop size); the paper's 0.59
# TFLOPs is 3 views × the divided 8×224 count.
OFFICIAL_GFLOPS = {
    ("divided_space_time", 8, 224): 196.1, ("joint_space_time", 8, 224): 179.7, ("space_only", 8, 224): 140.7,
    ("divided_space_time", 8, 448): 851.3, ("joint_space_time", 8, 448): 1262.4,
    ("divided_space_time", 32, 224): 786.8, ("joint_space_time", 32, 224): 1262.4,
}
# Inference TFLOPs of TimeSformer, TimeSformer-HR and TimeSformer-L in the paper's Kinetics-400 comparison
# (Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?", ICML 2021): 3 views
# (spatial crops) of one clip each; keyed by the TimeSformerConfig preset.
PAPER_TFLOPS = {"base": 0.59, "hr": 5.11, "large": 7.14}

# The points of the memory table: Figure 3's frames at 224 px and crop sizes at 8 frames.
MEMORY_POINTS = [(T, 224) for T in (8, 16, 32, 64, 96)] + [(8, s) for s in (336, 448, 560)]
MEMORY_SCHEMES = ("joint_space_time", "divided_space_time", "sparse_local_global", "axial", "space_only")


def references(gpu_memory: float = 32 * GiB) -> str:
    """Markdown tables of docs/complexity.md: FLOPs against the official fvcore counts and the paper,
    parameters, and training memory in the paper's setting against the three attention implementations
    (out of memory against `gpu_memory` bytes)."""
    return "\n\n".join([_official_table(), _paper_table(), _params_table(), _memory_table(gpu_memory)])


def _gflops(config: TimeSformerConfig) -> tuple[float, float]:
    """GFLOPs per view of this project's model, and of the official model's way of running it."""
    return estimate(config).gflops, estimate(config, official=True).gflops


def _official_table() -> str:
    out = ["| scheme | frames × crop | this model | official-code count | fvcore (official) | difference |",
           "|---|---|---|---|---|---|"]
    for (scheme, T, size), ref in OFFICIAL_GFLOPS.items():
        cfg = TimeSformerConfig.base(attention_type=scheme, num_frames=T, img_size=size)
        ours, official_count = _gflops(cfg)
        out.append(f"| {scheme} | {T}×{size} | {ours:.1f} | {official_count:.1f} | {ref} "
                   f"| {100 * (ours / ref - 1):+.2f}% |")
    return "\n".join(out)


def _paper_table() -> str:
    out = ["| preset | frames × crop | GFLOPs per view (this model / official count) | × 3 views, TFLOPs | paper |",
           "|---|---|---|---|---|"]
    for preset, tflops in PAPER_TFLOPS.items():
        cfg = getattr(TimeSformerConfig, preset)()
        ours, official_count = _gflops(cfg)
        out.append(f"| {preset} | {cfg.num_frames}×{cfg.img_size} | {ours:.1f} / {official_count:.1f} | "
                   f"{3 * ours / 1000:.3f} / {3 * official_count / 1000:.3f} | {tflops} |")
    return "\n".join(out)


def _params_table() -> str:
    out = ["| scheme | params (174 classes) | GFLOPs 8×224 |", "|---|---|---|"]
    for scheme in ATTENTION_TYPES:
        e = estimate(TimeSformerConfig.base(attention_type=scheme, num_classes=174))  # SSv2, as in Table 1
        out.append(f"| {scheme} | {e.params / 1e6:.1f}M | {e.gflops:.1f} |")
    return "\n".join(out)


def _memory_table(gpu_memory: float) -> str:
    out = [f"Training memory, fp32, SGD momentum, 1 clip, GiB (× = does not fit in {gpu_memory / GiB:g} GiB):", "",
           "| scheme | frames × crop | tokens | materialised, PyTorch ≤ 1.9 (paper) | materialised, current PyTorch "
           "| fused SDPA | max batch (paper / current / fused) |", "|---|---|---|---|---|---|---|"]
    for scheme in MEMORY_SCHEMES:
        for T, size in MEMORY_POINTS:
            cfg = TimeSformerConfig.base(attention_type=scheme, num_frames=T, img_size=size)
            cells, batches = [], []
            for opts in IMPLEMENTATIONS.values():
                e = estimate(cfg, optimizer="sgd", **opts)
                cells.append(f"{e.training_bytes / GiB:.1f}{'' if e.fits(gpu_memory) else ' ×'}")
                batches.append(str(max_batch_size(cfg, gpu_memory, optimizer="sgd", **opts)))
            out.append(f"| {scheme} | {T}×{size} | {e.tokens} | {' | '.join(cells)} | {' / '.join(batches)} |")
    return "\n".join(out)
