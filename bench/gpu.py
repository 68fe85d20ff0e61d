"""GPU benchmark: ours against HuggingFace's Timesformer (identical weights), bf16 training and inference per scheme.

    python bench/gpu.py                          # = tslab bench gpu: ViT-B/16 8×224 on the GPU it finds
    python bench/gpu.py --schemes divided_space_time --batch 16 --compile-schemes
    python bench/gpu.py --device cpu --smoke     # seconds on a CPU: every path at toy size (the test runs it)
    python bench/gpu.py --profile divided_space_time    # the profiler's kernel table of one training step
    python bench/gpu.py --reestimate bench/results/gpu-nvidia-h200*.json  # today's estimate, stored peaks

For the device it runs on it prints and writes (bench/results/gpu-<card>.json, or --json; after every scheme, with
"complete": false until the end, so that a run stopped by a time limit keeps its rows):
- the bf16 GEMM rate it measures (an n×n×n matmul, n = 8192) — the denominator of MFU;
- per scheme, a bare training loop (random clips on the device, bf16 autocast, fused AdamW, no per-step sync):
  clips/s, MFU = 3 × forward FLOPs (fvcore multiply-adds × 2, `analysis.complexity.estimate`) × clips/s ÷ the
  GEMM rate, and the peak allocated memory against `estimate(...).training_bytes`; with torch.compile for the
  schemes in --compile-schemes (in each of --compile-modes; reduce-overhead: CUDA graphs, whose pool is taken
  while they are captured, so that their rows show no peak); with groups of at
  most --math-below tokens (divided's and axial's 8-token time groups) attended by matmul + softmax instead of
  the fused kernel (`timesformer.attention.MATH_BELOW`), and with groups shorter than --pack-to tokens packed
  behind a block-diagonal mask (`timesformer.attention.PACK_TO`), and with `SHORT_BELOW` at --short-below (0 by
  default: PyTorch's kernels for every group, the rows "sdpa", against the default's Triton kernel of
  `timesformer.short_attention` for groups of at most 16 tokens; CUDA only);
  HuggingFace's divided model in the same loop, its weights copied into ours through `load_model`
  (bench/forward.py does the same on a CPU);
- per scheme, bf16 inference clips/s (inference mode, batch --infer-batch), ours and HuggingFace's;
- per scheme, the host's share: the same training step with the model narrowed to 8 channels per head (same
  depth, heads, grid, batch and kernels, 1/64 of the arithmetic) takes what the host needs to queue a step;
- per scheme and batch size in --memory-batches (CUDA only), what a bf16 AdamW training step holds: the bytes
  before the forward, those the forward saves for backward, and the peak, each against `estimate`;
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

from timesformer import (
    ATTENTION_TYPES,
    TimeSformer,
    TimeSformerConfig,
    attention,
    compile_model,
    load_model,
    short_attention,
)
from timesformer.attention import scheme_groupings
from timesformer.cli import HelpFormatter

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


def configs(smoke: bool, scheme: str, classes: int = 400, head_dim: int | None = None
            ) -> tuple[TimeSformerConfig, object | None]:
    """Our config, and HuggingFace's (for HF_SCHEMES), of ViT-B/16 8×224, or of a toy model with --smoke;
    with `head_dim`, the same model narrowed to that many channels per head (see `host_floor`)."""
    from transformers import TimesformerConfig

    if smoke:
        ours = TimeSformerConfig.tiny(attention_type=scheme, img_size=32, num_frames=4, embed_dim=32, depth=2,
                                      num_heads=2, num_classes=classes)
        hf = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=128)
    else:
        ours, hf = TimeSformerConfig.base(attention_type=scheme, num_classes=classes), {}
    if head_dim is not None:
        width = head_dim * ours.num_heads
        ours = ours.replace(embed_dim=width)
        hf = {**hf, "hidden_size": width, "intermediate_size": 4 * width}
    if scheme not in HF_SCHEMES:
        return ours, None
    return ours, TimesformerConfig(num_labels=classes, attention_type=scheme, **hf)


def host_floor(smoke: bool, scheme: str, device, batch: int, warmup: int, steps: int) -> dict[str, float]:
    """{model: ms per bare training step} of the model narrowed to 8 channels per head: the same depth, heads,
    grid, batch and kernels (8 is the fused attention kernels' smallest head size), launched the same way, with
    1/64 of the linear layers' arithmetic. On a GPU that is the time the host needs to queue one step: a
    full-width step that takes about as long is launch-bound."""
    narrow = models(*configs(smoke, scheme, head_dim=8))
    out = {}
    for name, model in narrow.items():
        rate, _ = train_rate(name, model.to(device), narrow["ours"].config, device, batch, warmup, steps)
        out[name] = 1000 * batch / rate
    return out


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


def _compiled(model, mode):
    """torch.compile afresh, in `mode` (True: the default): the schemes share their code, and one's recompiles
    must not count against the recompile limit of the next (past it, dynamo runs eagerly without a word)."""
    import torch._dynamo

    torch._dynamo.reset()
    return compile_model(model, None if mode in (True, "default") else mode)


def random_clips(cfg: TimeSformerConfig, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random clips at the model's size and labels, on the device."""
    video = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
    return video, torch.randint(0, min(4, cfg.num_classes), (batch,), device=device)


def adamw(model, device) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")


def training_step(name, run, video, label, opt, dtype: torch.dtype | None = torch.bfloat16) -> None:
    """Forward under autocast to `dtype` (None: none), cross-entropy, backward, optimizer step."""
    torch.compiler.cudagraph_mark_step_begin()  # under CUDA graphs (reduce-overhead): last step's outputs are done
    with torch.autocast(video.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = F.cross_entropy(logits_of(name, run, video).float(), label)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def train_rate(name, model, cfg, device, batch, warmup, steps, compiled=False, opt=None,
               dtype: torch.dtype | None = torch.bfloat16) -> tuple[float, int | None]:
    """Clips/s of the bare training loop (autocast to `dtype`, None for none; AdamW unless `opt` is given) on
    random clips already on the device, and the peak allocated bytes on CUDA."""
    model.train()
    run = _compiled(model, compiled) if compiled else model
    opt = opt or adamw(model, device)
    video, label = random_clips(cfg, batch, device)
    clock = Clock(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = clock()
        training_step(name, run, video, label, opt, dtype)
    rate = batch * steps / (clock() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del opt
    return rate, peak


def loop_rate(model, cfg, device, batch, warmup, steps, targs) -> float:
    """Clips/s of `tslab train`'s own loop (`engine.train_one_epoch`: its reads of the loss, its checks, its
    schedule) and its own Trainer (`optim.build_trainer` of the run's resolved flags `targs`) over random clips
    already on the device: the end-to-end rate without the data path, so that the gap to the bare loop splits
    into the loop's share and the loader's."""
    from timesformer.distributed import Dist
    from timesformer.engine import TrainState, train_one_epoch
    from timesformer.optim import build_trainer

    video, label = random_clips(cfg, batch, device)
    clock = Clock(device)
    with Dist(str(device)) as dist:
        trainer = build_trainer(targs, dist, model, warmup + steps, warmup + steps)
        state = TrainState()
        for n in (warmup, steps):  # `train_one_epoch` takes the training view, the clip's first, of each batch
            batches = [{"video": video[:, None], "label": label, "skipped": []} for _ in range(n)]
            start = clock()
            train_one_epoch(trainer, batches, state, log=lambda message: None)
    return batch * steps / (clock() - start)


def profile_step(model, cfg, device, batch, warmup: int = 5, steps: int = 3, rows: int = 35) -> str:
    """The PyTorch profiler's table, by self device time, of `steps` bare training steps after `warmup`."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    opt, (video, label), clock = adamw(model, device), random_clips(cfg, batch, device), Clock(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for i in range(warmup + steps):
        if i == warmup:
            clock()  # synchronises: the profile holds the profiled steps alone
            prof = profile(activities=activities)
            prof.start()
        training_step("ours", model, video, label, opt)
    clock()
    prof.stop()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=90)


def infer_rate(name, model, cfg, device, batch, warmup, steps, compiled=False) -> float:
    model.eval()
    run = _compiled(model, compiled) if compiled else model
    video, _ = random_clips(cfg, batch, device)
    clock = Clock(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for i in range(warmup + steps):
            if i == warmup:
                start = clock()
            torch.compiler.cudagraph_mark_step_begin()
            logits_of(name, run, video)
    return batch * steps / (clock() - start)


def estimated(cfg: TimeSformerConfig, batch: int, peak: int, saved: int | None = None) -> dict:
    """The estimate's columns of a measured peak (and of the bytes the forward saved): bf16, AdamW."""
    from analysis.cost.estimate import estimate

    est = estimate(cfg, batch_size=batch, dtype="bf16", optimizer="adamw")
    row = {"estimated_training_bytes": est.training_bytes, "estimate_over_peak": est.training_bytes / peak}
    if saved is not None:
        row.update(estimated_activation_bytes=est.activation_bytes,
                   estimated_activations_over_saved=est.activation_bytes / saved)
    return row


def memory_rows(model, cfg, device, batches) -> dict[int, dict]:
    """Per batch size, what one bf16 AdamW training step holds on the device, against the estimate: the bytes
    held before the forward (weights, AdamW state, the clip), those the forward adds (saved for backward), and
    the step's peak. Measured on the second step, once AdamW's state exists."""
    model.train()
    opt, rows = adamw(model, device), {}
    for b in batches:
        video, label = random_clips(cfg, b, device)
        for _ in range(2):
            held = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(video).float(), label)
            saved = torch.cuda.memory_allocated(device) - held
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss
            peak = torch.cuda.max_memory_allocated(device)
        rows[b] = {"held_before_forward": held, "saved_by_forward": saved, "peak_bytes": peak,
                   **estimated(cfg, b, peak, saved)}
        del video, label
    del opt
    return rows


def reestimate(path: Path) -> list[tuple[str, int, float]]:
    """Recompute the estimate columns of a results file with today's `analysis.cost.estimate` (the measured
    bytes stay), write it back, and return (scheme, batch, estimate ÷ peak) of every measured peak."""
    result = json.loads(path.read_text())
    out = []
    for scheme, rows in result["schemes"].items():
        cfg = configs(result["smoke"], scheme)[0]
        for label, row in rows.items():  # only the default model is compared with the estimate
            if label != "ours" and isinstance(row, dict):
                row.pop("estimate_over_peak", None)
        ours = rows.get("ours")
        if ours and ours.get("peak_bytes"):
            est = estimated(cfg, result["batch"], ours["peak_bytes"])
            rows["estimated_training_bytes"], ours["estimate_over_peak"] = (est["estimated_training_bytes"],
                                                                           est["estimate_over_peak"])
            out.append((scheme, result["batch"], ours["estimate_over_peak"]))
        for b, m in rows.get("memory", {}).items():
            m.update(estimated(cfg, int(b), m["peak_bytes"], m["saved_by_forward"]))
            out.append((scheme, int(b), m["estimate_over_peak"]))
    path.write_text(json.dumps(result, indent=2))
    return out


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
    loop = loop_rate(model, model.config, device, args.batch, args.warmup, steps, targs)
    import yaml  # a dependency of transformers

    resolved = yaml.safe_load((out / "train_config.yaml").read_text())["args"]
    return {"train_py_clips_per_s": second["clips_per_s"], "train_py_data_wait": second.get("data_wait"),
            "bare_loop_clips_per_s": bare, "train_py_over_bare": second["clips_per_s"] / bare,
            "loop_clips_per_s": loop, "loop_over_bare": loop / bare,
            "workers": resolved["workers"], "optimizer": targs.optimizer, "amp": str(dtype), "flags": flags}


def save_results(result: dict, kind: str, card: str, path: Path | None = None, quiet: bool = False) -> Path:
    """Write `result` as JSON to `path`, or to bench/results/<kind>-<card, as a slug>.json; whole or not at
    all (a temporary file renamed), so that a run stopped while writing leaves the previous write."""
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    out = path or ROOT / "bench" / "results" / f"{kind}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(result, indent=2))
    part.replace(out)
    if not quiet:
        print(f"wrote {out}")
    return out


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu {platform.processor() or platform.machine()}"


def parser() -> argparse.ArgumentParser:
    """The command line of `tslab bench gpu`."""
    ap = argparse.ArgumentParser(prog="tslab bench gpu", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--device", default="cuda", help="the GPU (cpu with --smoke: every path at toy size)")
    ap.add_argument("--schemes", nargs="*", default=list(ATTENTION_TYPES), choices=ATTENTION_TYPES,
                    help="the schemes timed (default: all)")
    ap.add_argument("--compile-schemes", nargs="*", default=["divided_space_time"], choices=ATTENTION_TYPES,
                    help="also time these with torch.compile (tens of seconds of compiling each)")
    ap.add_argument("--compile-modes", nargs="+", default=["default"], metavar="MODE",
                    help="torch.compile modes to time the --compile-schemes in: default, reduce-overhead (CUDA "
                         "graphs), max-autotune-no-cudagraphs (default: default)")
    ap.add_argument("--math-below", type=int, default=16,
                    help="also time ours with groups of at most this many tokens attended by matmul + softmax "
                         "(timesformer.attention.MATH_BELOW; 0: not)")
    ap.add_argument("--pack-to", type=int, default=64,
                    help="also time the schemes whose groups are shorter with them packed into sequences of up to "
                         "this many tokens (timesformer.attention.PACK_TO; 0: not)")
    ap.add_argument("--short-below", type=int, default=0,
                    help="also time ours with timesformer.attention.SHORT_BELOW at this many tokens, where it "
                         f"changes what the default ({attention.SHORT_BELOW}: the Triton kernel, on CUDA) runs; "
                         "0: PyTorch's kernels for every group, the row 'sdpa'")
    ap.add_argument("--batch", type=int, default=8, help="training clips per step")
    ap.add_argument("--infer-batch", type=int, default=16, help="inference clips per forward")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each loop")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--e2e-steps", type=int, default=128, help="steps per epoch of the tslab train run (0: skip)")
    ap.add_argument("--memory-batches", type=int, nargs="*", default=[4, 8, 16],
                    help="batch sizes of the memory breakdown per scheme (CUDA only; none: skip)")
    ap.add_argument("--no-speed", action="store_true", help="skip the clips/s timings (memory and e2e only)")
    ap.add_argument("--gemm-n", type=int, default=8192, help="side of the square bf16 matmuls of the GEMM rate")
    ap.add_argument("--smoke", action="store_true", help="toy sizes: exercises every path in seconds")
    ap.add_argument("--json", type=Path, help="the result file (default: bench/results/gpu-<card>.json)")
    ap.add_argument("--profile", nargs="+", choices=ATTENTION_TYPES, metavar="SCHEME",
                    help="print the profiler's table of these schemes' training step (batch --batch) and exit")
    ap.add_argument("--reestimate", type=Path, nargs="+", metavar="RESULTS",
                    help="recompute the estimate columns of these results files (measured elsewhere) and exit")
    return ap


def core_settings(shortest: int, math_below: int, pack_to: int, short_below: int,
                  short_kernel: bool) -> dict[str, tuple[int, int, int]]:
    """The core's settings (MATH_BELOW, PACK_TO, SHORT_BELOW) timed for a scheme whose shortest groups have
    `shortest` tokens, by the suffix of their rows' label: the default (""), then short groups by matmul +
    softmax, packed, and SHORT_BELOW at `short_below` where that changes which kernel attends them (" sdpa":
    PyTorch's kernels for every group; only where the Triton kernel can run, `short_kernel`)."""
    default = attention.MATH_BELOW, attention.PACK_TO, attention.SHORT_BELOW
    out = {"": default}
    if shortest <= math_below:
        out[f" math≤{math_below}"] = (math_below, 0, 0)
    if shortest < pack_to:
        out[f" packed<{pack_to}"] = (0, pack_to, 0)
    if short_kernel and short_below != default[2] and shortest <= max(short_below, default[2]):
        out[f" short≤{short_below}" if short_below else " sdpa"] = (0, 0, short_below)
    return out


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.reestimate:
        for path in args.reestimate:
            for scheme, batch, ratio in reestimate(path):
                print(f"{path.name}: {scheme:22s} batch {batch:3d}: estimate ÷ peak {ratio:.3f}")
        return {}
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
    short_kernel = device.type == "cuda" and short_attention.triton is not None
    if args.profile:
        for scheme in args.profile:
            cfg = configs(args.smoke, scheme)[0]
            print(f"===== {scheme} on {card}: batch {args.batch}, bf16, AdamW (fused on CUDA) =====", flush=True)
            print(profile_step(models(cfg, None)["ours"].to(device), cfg, device, args.batch), flush=True)
        return {}
    gemm = gemm_rate(device, args.gemm_n)
    # written after every scheme, "complete" once all is measured: a run stopped by a time limit keeps its rows
    result = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke,
              "batch": args.batch, "infer_batch": args.infer_batch, "gemm_bf16_tflop_s": gemm / 1e12, "schemes": {},
              "complete": False}
    print(f"{card}; torch {torch.__version__}; bf16 GEMM {gemm / 1e12:.1f} TFLOP/s (n={args.gemm_n})", flush=True)
    print(f"{'scheme':22s} {'model':28s} {'train clips/s':>13s} {'MFU':>6s} {'peak GiB':>9s} {'est/peak':>8s} "
          f"{'infer clips/s':>13s}")
    for scheme in args.schemes:
        cfg, hf_cfg = configs(args.smoke, scheme)
        flop_per_clip = 2 * estimate(cfg).gflops * 1e9  # one forward; training ≈ 3 forwards (PaLM, App. B)
        est = estimate(cfg, batch_size=args.batch, dtype="bf16", optimizer="adamw").training_bytes
        rows = result["schemes"][scheme] = {"forward_gflop_per_clip": flop_per_clip / 1e9,
                                            "estimated_training_bytes": est}
        shortest = min(g.index.shape[1] for g in scheme_groupings(scheme, cfg.grid))
        settings = core_settings(shortest, args.math_below, args.pack_to, args.short_below, short_kernel)
        if args.memory_batches and device.type == "cuda":
            model = TimeSformer(cfg).to(device)
            mem = rows["memory"] = memory_rows(model, cfg, device, args.memory_batches)
            del model
            torch.cuda.empty_cache()
            for b, m in mem.items():
                gib = {k: v / 2**30 for k, v in m.items() if not k.endswith("_over_peak")}
                print(f"{scheme:22s} memory, batch {b:3d}: held {gib['held_before_forward']:.2f} GiB, forward saves "
                      f"{gib['saved_by_forward']:.2f} (est. {gib['estimated_activation_bytes']:.2f}), peak "
                      f"{gib['peak_bytes']:.2f} (est. {gib['estimated_training_bytes']:.2f}, "
                      f"{m['estimate_over_peak']:.3f}×)", flush=True)
            save_results(result, "gpu", card, args.json, quiet=True)
        if args.no_speed:
            continue
        for name, model in models(cfg, hf_cfg).items():
            model.to(device)  # alone on the device while timed: its peak memory holds no other model
            ours = name == "ours"
            modes = [False, *args.compile_modes] if ours and scheme in args.compile_schemes else [False]
            for compiled, setting in product(modes, list(settings) if ours else [""]):
                label = name + (" compiled" if compiled else "") + (
                    f" {compiled}" if compiled and compiled != "default" else "") + setting
                with attention.short_groups(*settings[setting]):
                    train, peak = train_rate(name, model, cfg, device, args.batch, args.warmup, args.steps, compiled)
                    infer = infer_rate(name, model, cfg, device, args.infer_batch, args.warmup, args.steps, compiled)
                if compiled == "reduce-overhead":  # CUDA graphs took their pool while captured, before the reset:
                    peak = None  # the "peak" after it counted the weights and optimizer state alone (1.4 GiB)
                row = rows[label] = {"train_clips_per_s": train, "mfu": 3 * flop_per_clip * train / gemm,
                                     "peak_bytes": peak, "infer_clips_per_s": infer}
                if peak and label == "ours":  # the model as it runs by default: eager, the default core
                    row["estimate_over_peak"] = est / peak
                gib, ratio = peak / 2**30 if peak else float("nan"), row.get("estimate_over_peak", float("nan"))
                print(f"{scheme:22s} {label:28s} {train:13.1f} {row['mfu']:6.1%} {gib:9.2f} {ratio:8.3f} "
                      f"{infer:13.1f}", flush=True)
            model.cpu()
        if not args.no_speed:
            floor = host_floor(args.smoke, scheme, device, args.batch, args.warmup, args.steps)
            for name, ms in floor.items():
                rows[name]["host_ms_per_step"] = ms
                full = 1000 * args.batch / rows[name]["train_clips_per_s"]
                print(f"{scheme:22s} {name}: the host queues a training step in {ms:.1f} ms (the model at 8 "
                      f"channels per head), the full step takes {full:.1f} ms ({ms / full:.0%})", flush=True)
        if "huggingface" in rows:
            ratio = rows["ours_over_huggingface"] = {k: rows["ours"][k] / rows["huggingface"][k]
                                                     for k in ("train_clips_per_s", "infer_clips_per_s")}
            print(f"{scheme:22s} ours / HuggingFace: training {ratio['train_clips_per_s']:.2f}×, "
                  f"inference {ratio['infer_clips_per_s']:.2f}×")
            timed = [k for k, v in rows.items() if k.startswith("ours") and "mfu" in v]
            best = rows["best_over_huggingface"] = {}
            for k in ("train_clips_per_s", "infer_clips_per_s"):
                top = max(timed, key=lambda r: rows[r][k])
                best[k], best[k.split("_")[0] + "_row"] = rows[top][k] / rows["huggingface"][k], top
            print(f"{scheme:22s} ours at its best / HuggingFace: training {best['train_clips_per_s']:.2f}× "
                  f"({best['train_row']}), inference {best['infer_clips_per_s']:.2f}× ({best['infer_row']})")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save_results(result, "gpu", card, args.json, quiet=True)
    if args.e2e_steps:
        with tempfile.TemporaryDirectory() as d:
            e2e = result["train_py"] = end_to_end(args, device, Path(d) / "run")
        print(f"tslab train (divided, SynthMotion, default flags, batch {args.batch}, {e2e['optimizer']}, "
              f"{e2e['amp']}, {e2e['workers']} workers): {e2e['train_py_clips_per_s']:.1f} clips/s, waiting for data "
              f"{e2e['train_py_data_wait']:.0%} of the time; the bare loop: {e2e['bare_loop_clips_per_s']:.1f} "
              f"clips/s → {e2e['train_py_over_bare']:.0%}; its loop alone on clips in memory: "
              f"{e2e['loop_clips_per_s']:.1f} clips/s → {e2e['loop_over_bare']:.0%}")
    result["complete"] = True
    save_results(result, "gpu", card, args.json)
    return result


if __name__ == "__main__":
    main()
