"""Forward-pass speed of ViT-B/16 divided space-time 8×224 on the CPU it runs on, against HuggingFace.

    python bench/forward.py [--repeats 7] [--threads N] [--json out.json]

Both models hold identical random weights (HuggingFace's are copied in through our own loader) and
run batch 1 in inference mode, interleaved, so machine noise hits both alike. The fp32 bound is the
model's matmul FLOPs (PyTorch's FlopCounterMode) divided by the fp32 GEMM throughput measured in the same run on
a ViT-B-sized matmul. Prints one table and writes JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from timesformer import TimeSformerConfig, record_attention
from timesformer.cli import HelpFormatter

GEMM_SHAPE = (1568, 768, 3072)  # the MLP's fc1 at 8×14×14 tokens: the bulk of ViT-B's FLOPs
GEMM_CALLS = 10


def gemm(dtype):
    """GEMM_CALLS matmuls of GEMM_SHAPE; timed beside the models, so noise hits the bound alike."""
    m, k, n = GEMM_SHAPE
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return lambda: [a @ b for _ in range(GEMM_CALLS)]


def model_flops(model, video) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(video)
    return counter.get_total_flops()


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tslab bench forward", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed forwards of each configuration")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from gpu import models  # bench/ is the script's folder, so its scripts import each other
    from transformers import TimesformerConfig

    # ViT-B/16, 8×224, divided; the same construction as the GPU benchmark's
    pair = models(None, TimesformerConfig(num_labels=400))
    hf, ours = pair["huggingface"].eval(), pair["ours"].eval()
    assert ours.config.attention_type == "divided_space_time" and ours.config.grid == TimeSformerConfig.base().grid

    videos = [torch.randn(1, 3, 8, 224, 224) for _ in range(4)]
    video = videos[0]
    with torch.inference_mode():
        flops = model_flops(ours, video)
        runs = {
            "gemm fp32": gemm(torch.float32),
            "gemm bf16": gemm(torch.bfloat16),
            "huggingface fp32": lambda: hf(pixel_values=video.transpose(1, 2)),
            "ours fp32": lambda: ours(video),
            "ours bf16 autocast": lambda: _autocast(ours, video),
            "ours fp32 recording all layers": lambda: _recording(ours, video),
        }
        for fn in runs.values():  # warm-up
            fn()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved
            for name, fn in runs.items():
                times[name] += timed(fn, 1)
        top1_same = []
        for v in videos:
            ref = hf(pixel_values=v.transpose(1, 2)).logits.argmax(-1)
            top1_same.append(bool((_autocast(ours, v).argmax(-1) == ref).all()))
            top1_same.append(bool((ours(v).argmax(-1) == ref).all()))
    med = {name: statistics.median(t) for name, t in times.items()}
    gemm_flop = 2 * GEMM_CALLS * GEMM_SHAPE[0] * GEMM_SHAPE[1] * GEMM_SHAPE[2]
    fp32_rate, bf16_rate = gemm_flop / med.pop("gemm fp32"), gemm_flop / med.pop("gemm bf16")
    bound = flops / fp32_rate
    result = {
        "threads": torch.get_num_threads(),
        "model_gflop": flops / 1e9,
        "gemm_fp32_gflop_s": fp32_rate / 1e9,
        "gemm_bf16_gflop_s": bf16_rate / 1e9,
        "fp32_bound_s": bound,
        "median_s": med,
        "all_s": times,
        "speedup_fp32_vs_hf": med["huggingface fp32"] / med["ours fp32"],
        "fp32_over_bound": med["ours fp32"] / bound,
        "speedup_bf16_vs_hf_fp32": med["huggingface fp32"] / med["ours bf16 autocast"],
        "recording_over_fused": med["ours fp32 recording all layers"] / med["ours fp32"],
        "same_top1_as_hf": all(top1_same),
    }
    print(f"threads {result['threads']}; model {flops / 1e9:.1f} GFLOP (= {flops / 2e9:.1f} GMACs); "
          f"GEMM fp32 {fp32_rate / 1e9:.0f} GFLOP/s, bf16 {bf16_rate / 1e9:.0f} GFLOP/s; fp32 bound {bound:.2f} s")
    for name, m in med.items():
        print(f"  {name:32s} {m:6.2f} s (median of {args.repeats})")
    print(f"ours fp32 vs HF: {result['speedup_fp32_vs_hf']:.2f}x faster; {result['fp32_over_bound']:.2f}x the bound")
    print(f"ours bf16 vs HF fp32: {result['speedup_bf16_vs_hf_fp32']:.2f}x faster; "
          f"same top-1 on {len(videos)} random clips: {result['same_top1_as_hf']}")
    print(f"recording every layer: {result['recording_over_fused']:.2f}x the fused forward")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _autocast(model, video):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(video)


def _recording(model, video):
    with record_attention(model):
        return model(video)


if __name__ == "__main__":
    main()
