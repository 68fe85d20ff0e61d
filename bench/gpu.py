"""GPU benchmark: ours against HuggingFace's Timesformer (identical weights), bf16 training and inference per scheme.

    python bench/gpu.py                          # = tslab bench gpu: ViT-B/16 8×224 on the GPU it finds
    python bench/gpu.py --schemes divided_space_time --batch 16 --compile-schemes
    python bench/gpu.py --device cpu --smoke     # seconds on a CPU: every path at toy size (the test runs it)

For the device it runs on it prints and writes (bench/results/gpu-<card>.json, or --json):
- the bf16 GEMM rate it measures (an n×n×n matmul, n = 8192) — the denominator of MFU;
- per scheme, a bare training loop (random clips on the device, bf16 autocast, fused AdamW, no per-step sync):
  clips/s, MFU = 3 × forward FLOPs (fvcore multiply-adds × 2, `analysis.complexity.estimate`) × clips/s ÷ the
  GEMM rate, and the peak allocated memory against `estimate(...).training_bytes`; with torch.compile for the
  schemes in --compile-schemes; with groups of at most --math-below tokens (divided's and axial's 8-token time
  groups) attended by matmul + softmax instead of the fused kernel (`timesformer.attention.MATH_BELOW`);
  HuggingFace's divided model in the same loop, its weights copied into ours through `load_model`
  (bench/forward.py does the same on a CPU);
- per scheme, bf16 inference clips/s (inference mode, batch --infer-batch), ours and HuggingFace's;
- `tslab train` end to end on SynthMotion at the model's size with default flags (its second epoch, so that
  worker start-up is not counted) against the bare loop of the same model, batch, optimizer and precision.
Only torch, transformers, numpy and this repository are imported: decord, PyAV, captum, streamlit and plotly
may be missing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from itertools import product
from pathlib import Path

import torch
import torch.nn.functional as F

from timesformer import ATTENTION_TYPES, TimeSformer, TimeSformerConfig, attention, load_model
from timesformer.attention import scheme_groupings

ROOT = Path(__file__).resolve().parent.parent
HF_SCHEMES = ("divided_space_time",)  # HF's space_only returns per-frame logits; joint is no separate claim


class Clock:
    """Wall time of GPU work: synchronises the device before reading the clock."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def gemm_rate(device, n: int, repeats: int = 10) -> float:
    """bf16 FLOP/s of an n×n×n matmul, the median of `repeats` timings of 10 products."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    clock, times = Clock(device), []
    for i in range(repeats + 1):
        start = clock()
        for _ in range(10):
            a @ b
        if i:  # the first is a warm-up
            times.append(clock() - start)
    return 10 * 2 * n**3 / statistics.median(times)


def configs(smoke: bool, scheme: str, classes: int = 400) -> tuple[TimeSformerConfig, object | None]:
    """Our config, and HuggingFace's (for HF_SCHEMES), of ViT-B/16 8×224, or of a toy model with --smoke."""
    from transformers import TimesformerConfig

    if smoke:
        ours = TimeSformerConfig.tiny(attention_type=scheme, img_size=32, num_frames=4, embed_dim=32, depth=2,
                                      num_heads=2, num_classes=classes)
        hf = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=128)
    else:
        ours, hf = TimeSformerConfig.base(attention_type=scheme, num_classes=classes), {}
    if scheme not in HF_SCHEMES:
        return ours, None
    return ours, TimesformerConfig(num_labels=classes, attention_type=scheme, **hf)


def models(cfg: TimeSformerConfig | None, hf_cfg) -> dict[str, torch.nn.Module]:
    """{"ours": ..., "huggingface": ...} on the CPU: identical random weights, HuggingFace's copied in by
    load_model (our config then follows from HuggingFace's); without `hf_cfg` ours alone, from `cfg`."""
    torch.manual_seed(0)
    if hf_cfg is None:
        return {"ours": TimeSformer(cfg)}
    from transformers import TimesformerForVideoClassification

    hf = TimesformerForVideoClassification(hf_cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_model(d)
    return {"ours": ours, "huggingface": hf}


def logits_of(name: str, model, video):
    if name == "huggingface":
        return model(pixel_values=video.transpose(1, 2)).logits  # HF takes (B, T, C, H, W)
    return model(video)


def _compiled(model):
    """torch.compile afresh: the schemes share their code, and one's recompiles must not count against the
    recompile limit of the next (past it, dynamo runs eagerly without a word)."""
    import torch._dynamo

    torch._dynamo.reset()
    return torch.compile(model)


def train_rate(name, model, cfg, device, batch, warmup, steps, compiled=False, opt=None,
               dtype: torch.dtype | None = torch.bfloat16) -> tuple[float, int | None]:
    """Clips/s of the bare training loop (autocast to `dtype`, None for none; AdamW unless `opt` is given) on
    random clips already on the device, and the peak allocated bytes on CUDA."""
    model.train()
    run = _compiled(model) if compiled else model
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    video = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
    label = torch.randint(0, min(4, cfg.num_classes), (batch,), device=device)
    clock = Clock(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = clock()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(logits_of(name, run, video).float(), label)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    rate = batch * steps / (clock() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del opt
    return rate, peak


def infer_rate(name, model, cfg, device, batch, warmup, steps, compiled=False) -> float:
    model.eval()
    run = _compiled(model) if compiled else model
    video = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
    clock = Clock(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for i in range(warmup + steps):
            if i == warmup:
                start = clock()
            logits_of(name, run, video)
    return batch * steps / (clock() - start)


def end_to_end(args, device, out: Path) -> dict:
    """`tslab train` on SynthMotion with default flags for two epochs (its second epoch's rate) against the
    bare loop of the same model, batch, optimizer and precision."""
    from timesformer import train as T
    from timesformer.optim import amp_dtype, build_optimizer

    flags = ["--data", "synthmotion-temporal", "--attention", "divided_space_time", "--batch-size", str(args.batch),
             "--epochs", "2", "--val-clips", str(2 * args.batch), "--out", str(out), "--no-progress",
             "--device", str(device)]
    steps = args.e2e_steps
    if args.smoke:
        flags += ["--preset", "tiny", "--img-size", "32", "--num-frames", "4", "--model", "embed_dim=32", "depth=2",
                  "num_heads=2"]
    else:
        flags += ["--preset", "base"]
    flags += ["--train-clips", str(steps * args.batch)]
    T.main(flags)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    second = [r for r in rows if r["split"] == "train"][-1]
    # the bare loop: the same model and optimizer as the run (its resolved flags), random clips on the device
    targs = T.resolve(T.parse_args(flags))
    model = load_model(out / "checkpoint-last").to(device)
    dtype = amp_dtype(targs, device)
    bare, _ = train_rate("ours", model, model.config, device, args.batch, args.warmup, steps,
                         opt=build_optimizer(targs, model), dtype=dtype)
    import yaml  # a dependency of transformers

    resolved = yaml.safe_load((out / "train_config.yaml").read_text())["args"]
    return {"train_py_clips_per_s": second["clips_per_s"], "train_py_data_wait": second.get("data_wait"),
            "bare_loop_clips_per_s": bare, "train_py_over_bare": second["clips_per_s"] / bare,
            "workers": resolved["workers"], "optimizer": targs.optimizer, "amp": str(dtype), "flags": flags}


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu {platform.processor() or platform.machine()}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--schemes", nargs="*", default=list(ATTENTION_TYPES), choices=ATTENTION_TYPES)
    ap.add_argument("--compile-schemes", nargs="*", default=["divided_space_time"], choices=ATTENTION_TYPES,
                    help="also time these with torch.compile (tens of seconds of compiling each)")
    ap.add_argument("--math-below", type=int, default=16,
                    help="also time ours with groups of at most this many tokens attended by matmul + softmax "
                         "(0: only the fused kernel)")
    ap.add_argument("--batch", type=int, default=8, help="training clips per step")
    ap.add_argument("--infer-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--e2e-steps", type=int, default=128, help="steps per epoch of the tslab train run (0: skip)")
    ap.add_argument("--gemm-n", type=int, default=8192)
    ap.add_argument("--smoke", action="store_true", help="toy sizes: exercises every path in seconds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.infer_batch, args.steps, args.warmup = 2, 2, 2, 1
        args.gemm_n, args.e2e_steps = min(args.gemm_n, 256), min(args.e2e_steps, 2)
    from analysis.cost.estimate import estimate  # plotly-free: the GPU machine may lack it
    from timesformer.distributed import resolve_device

    device = resolve_device(args.device)
    if args.smoke and device.type == "cpu":
        torch.set_num_threads(1)  # toy models: a second thread buys nothing, and stalls on a busy core
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    card = card_name(device)
    gemm = gemm_rate(device, args.gemm_n)
    result = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke,
              "batch": args.batch, "infer_batch": args.infer_batch, "gemm_bf16_tflop_s": gemm / 1e12, "schemes": {}}
    print(f"{card}; torch {torch.__version__}; bf16 GEMM {gemm / 1e12:.1f} TFLOP/s (n={args.gemm_n})", flush=True)
    print(f"{'scheme':22s} {'model':28s} {'train clips/s':>13s} {'MFU':>6s} {'peak GiB':>9s} {'est/peak':>8s} "
          f"{'infer clips/s':>13s}")
    for scheme in args.schemes:
        cfg, hf_cfg = configs(args.smoke, scheme)
        flop_per_clip = 2 * estimate(cfg).gflops * 1e9  # one forward; training ≈ 3 forwards (PaLM, App. B)
        est = estimate(cfg, batch_size=args.batch, dtype="bf16", optimizer="adamw").training_bytes
        rows = result["schemes"][scheme] = {"forward_gflop_per_clip": flop_per_clip / 1e9,
                                            "estimated_training_bytes": est}
        short = min(g.index.shape[1] for g in scheme_groupings(scheme, cfg.grid)) <= args.math_below
        for name, model in models(cfg, hf_cfg).items():
            model.to(device)  # alone on the device while timed: its peak memory holds no other model
            ours = name == "ours"
            for compiled, math in product((False, True) if ours and scheme in args.compile_schemes else (False,),
                                          (0, args.math_below) if ours and short else (0,)):
                label = name + (" compiled" if compiled else "") + (f" math≤{math}" if math else "")
                attention.MATH_BELOW = math
                train, peak = train_rate(name, model, cfg, device, args.batch, args.warmup, args.steps, compiled)
                infer = infer_rate(name, model, cfg, device, args.infer_batch, args.warmup, args.steps, compiled)
                attention.MATH_BELOW = 0
                row = rows[label] = {"train_clips_per_s": train, "mfu": 3 * flop_per_clip * train / gemm,
                                     "peak_bytes": peak, "infer_clips_per_s": infer}
                if peak and name == "ours":
                    row["estimate_over_peak"] = est / peak
                gib, ratio = peak / 2**30 if peak else float("nan"), row.get("estimate_over_peak", float("nan"))
                print(f"{scheme:22s} {label:28s} {train:13.1f} {row['mfu']:6.1%} {gib:9.2f} {ratio:8.3f} "
                      f"{infer:13.1f}", flush=True)
            model.cpu()
        if "huggingface" in rows:
            ratio = rows["ours_over_huggingface"] = {k: rows["ours"][k] / rows["huggingface"][k]
                                                     for k in ("train_clips_per_s", "infer_clips_per_s")}
            print(f"{scheme:22s} ours / HuggingFace: training {ratio['train_clips_per_s']:.2f}×, "
                  f"inference {ratio['infer_clips_per_s']:.2f}×")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.e2e_steps:
        with tempfile.TemporaryDirectory() as d:
            e2e = result["train_py"] = end_to_end(args, device, Path(d) / "run")
        print(f"tslab train (divided, SynthMotion, default flags, batch {args.batch}, {e2e['optimizer']}, "
              f"{e2e['amp']}, {e2e['workers']} workers): {e2e['train_py_clips_per_s']:.1f} clips/s, waiting for data "
              f"{e2e['train_py_data_wait']:.0%} of the time; the bare loop: {e2e['bare_loop_clips_per_s']:.1f} "
              f"clips/s → {e2e['train_py_over_bare']:.0%}")
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    out = args.json or ROOT / "bench" / "results" / f"gpu-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
