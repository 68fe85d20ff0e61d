"""The cost command: `python analysis/complexity.py --out DIR` (also `python -m analysis.complexity`, `tslab cost`).

Sweeps the five schemes against frames and crop size and writes complexity.csv, complexity.json,
complexity.html and, when kaleido finds a Chromium, complexity.png; `--references` prints the tables
of docs/complexity.md instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from analysis.cost.estimate import DTYPES, OPTIMIZERS, GiB, estimate
from analysis.cost.measure import Measurement, measure_if_it_fits
from analysis.cost.references import references
from analysis.cost.sweep import IMPLEMENTATIONS, MAX_FRAMES, MAX_SIZE, parse_ints, sweep
from analysis.figures import cost_figure
from timesformer.cli import HelpFormatter, OneLineErrors, at_least
from timesformer.config import ATTENTION_TYPES, TimeSformerConfig
from timesformer.distributed import resolve_device
from timesformer.files import make_folder, write_csv

PROG = "complexity.py"
MAX_GPU_GIB = 2**20  # 1 PiB: far above any GPU, and low enough that the bytes stay finite and exact


def _ints(what: str, maximum: int):
    """An argparse type: `parse_ints` of the flag's text."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            return parse_ints(text, what, maximum)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _schemes(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return ATTENTION_TYPES
    names = tuple(text.replace(",", " ").split())
    bad = [n for n in names if n not in ATTENTION_TYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scheme {', '.join(bad) if bad else repr(text)}; choose from {', '.join(ATTENTION_TYPES)}")
    return names


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = OneLineErrors(prog=prog, formatter_class=HelpFormatter, description=(
        "FLOPs, parameters and training memory of the five TimeSformer attention schemes against frames and "
        "crop size (the paper's Figure 3, for your configuration and GPU). Writes complexity.csv, "
        "complexity.json, complexity.html and complexity.png (when kaleido finds a Chromium)."))
    p.add_argument("--out", help="output folder (created); required unless --references")
    p.add_argument("--references", action="store_true",
                   help="print the reference tables of docs/complexity.md (FLOPs, parameters, memory) and exit")
    p.add_argument("--schemes", type=_schemes, default=ATTENTION_TYPES,
                   help="scheme names, comma-separated, or all (default: all)")
    p.add_argument("--frames", type=_ints("frames", MAX_FRAMES), default=(8, 16, 32, 64, 96),
                   help="frame counts of the frame sweep, comma-separated")
    p.add_argument("--sizes", type=_ints("sizes", MAX_SIZE), default=(224, 336, 448, 560),
                   help="crop sizes of the crop-size sweep, comma-separated")
    p.add_argument("--model", metavar="CHECKPOINT",
                   help="the architecture of this checkpoint (anything load_model opens: a run, a .pyth, a hub id): "
                        "its patch, width, depth, heads, MLP and classes, and its frames and crop as the base "
                        "point; the flags below override it (default: ViT-B/16, Kinetics-400's 400 classes)")
    p.add_argument("--base-frames", type=at_least(1), help="frames of the crop-size sweep (default: 8, or the model's)")
    p.add_argument("--base-size", type=at_least(1), help="crop of the frame sweep (default: 224, or the model's)")
    p.add_argument("--patch-size", type=at_least(1), help="patch side (default: 16, or the model's)")
    p.add_argument("--embed-dim", type=at_least(1), help="token width (default: 768, or the model's)")
    p.add_argument("--depth", type=at_least(1), help="blocks (default: 12, or the model's)")
    p.add_argument("--heads", type=at_least(1), help="attention heads (default: 12, or the model's)")
    p.add_argument("--num-classes", type=at_least(1), help="classes of the head (default: 400, or the model's)")
    p.add_argument("--batch-size", type=at_least(1), default=1, help="clips per GPU, as the official configs")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="fp32, or bf16 autocast")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd", help="sgd (official) or adamw")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    p.add_argument("--gpu-memory", dest="gpu_gib", metavar="GIB", type=float, default=32.0,
                   help="GPU memory in GiB, above 0 and at most 2^20 (default: 32, a V100-32GB)")
    p.add_argument("--measure", action="store_true",
                   help="also run the real model where it fits (half the RAM, or 90%% of the GPU's memory) at the "
                        "run's batch, precision, optimizer and checkpointing; on a GPU also its peak memory")
    p.add_argument("--measure-max-gflops", type=float, default=None,
                   help="skip measuring points above this many GFLOPs (inf: no limit; default: 500 on a CPU, "
                        "no limit on a GPU)")
    p.add_argument("--device", default="auto",
                   help="where --measure runs the model: auto (the GPU where there is one), cpu, cuda, cuda:N")
    p.add_argument("--no-png", action="store_true", help="skip the PNG even if a browser is present")
    return p


def _base_config(args) -> TimeSformerConfig:
    """The configuration at the sweeps' base point: `--model`'s (or ViT-B/16 with 400 classes, 8×224) with the
    flags given over it. Sets `args.base_frames` and `args.base_size` where they were not given."""
    if args.model:
        from timesformer.checkpoints import load_model

        start = load_model(args.model).config.replace(class_names=None)
    else:
        start = TimeSformerConfig.base(num_classes=400, num_frames=8, img_size=224)
    given = dict(patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads,
                 num_classes=args.num_classes, num_frames=args.base_frames, img_size=args.base_size)
    cfg = start.replace(**{k: v for k, v in given.items() if v is not None})
    args.base_frames, args.base_size = cfg.num_frames, cfg.img_size
    for size in set(args.sizes) | {args.base_size}:
        if size % cfg.patch_size:
            raise ValueError(f"crop size {size} is not divisible by the patch size {cfg.patch_size}")
    return cfg


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
        return 8 * GiB


def _measure_rows(rows: list[dict], base: TimeSformerConfig, options: dict, max_gflops: float | None,
                  device: torch.device) -> None:
    """Add `measured_*` columns to the rows whose real model fits on `device` (half the RAM, or 90% of the GPU's
    memory, by the estimate) and is cheap enough: FLOPs, parameters, the bytes saved for backward and, on a GPU,
    the peak memory of a training step, with the run's `options` (batch size, precision, optimizer,
    checkpointing). A point that runs out of GPU memory gets `measured_peak_bytes` None and a line that says so."""
    on_gpu = device.type == "cuda"
    budget = int(torch.cuda.get_device_properties(device).total_memory * 0.9) if on_gpu else _physical_memory() // 2
    if max_gflops is None:
        max_gflops = math.inf if on_gpu else 500.0
    measured: dict[tuple, Measurement | None] = {}
    for row in rows:
        cfg = base.replace(attention_type=row["attention_type"], num_frames=row["num_frames"], img_size=row["img_size"])
        need = estimate(cfg, fused=True, **options).training_bytes
        if row["gflops"] > max_gflops or need > budget:
            row["measured_gflops"] = None
            continue
        point = (row["attention_type"], row["num_frames"], row["img_size"])
        fresh = point not in measured  # the two sweeps share their base point
        name = f"{row['attention_type']} {row['num_frames']}×{row['img_size']}"
        if fresh:
            measured[point] = measure_if_it_fits(cfg, device=device, **options)
            if measured[point] is None:
                print(f"measured {name}: out of GPU memory (estimate {need / GiB:.2f} GiB)", flush=True)
        m = measured[point]
        if m is None:
            row.update(measured_gflops=None, measured_peak_bytes=None)
            continue
        row.update(measured_gflops=m.gflops, measured_params=m.params, measured_activation_bytes=m.activation_bytes,
                   measured_peak_bytes=m.peak_bytes, measured_seconds=m.seconds, measured_device=m.device)
        if fresh:
            peak = (f", peak {m.peak_bytes / GiB:.2f} GiB (estimate {row['train_bytes_fused'] / GiB:.2f})"
                    if m.peak_bytes is not None else "")
            print(f"measured {name} on {m.device}: {m.gflops:.1f} GFLOPs (estimate {row['gflops']:.1f}), saved "
                  f"activations {m.activation_bytes / GiB:.2f} GiB (estimate {row['activation_bytes_fused'] / GiB:.2f})"
                  f"{peak} in {m.seconds:.0f} s", flush=True)


def _write_csv(path: Path, rows: list[dict]) -> None:
    """One row per point; the FLOPs breakdown becomes `gflops_<term>` columns."""
    write_csv(path, [{k: v for k, v in r.items() if k != "flops_breakdown"}
                     | {f"gflops_{k}": v for k, v in r["flops_breakdown"].items()} for r in rows])


def write_png(fig, path) -> str | None:
    """Write a PNG with kaleido; returns None, or why it was not written."""
    try:
        fig.write_image(str(path), width=1400, height=850, scale=1)
    except Exception as exc:  # kaleido raises its own types; all mean "no PNG"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"PNG not written: kaleido could not export ({first}); "
                "install a Chromium (e.g. apt-get install chromium) for complexity.png")
    return None


def main(argv=None, prog: str | None = None) -> int:
    """Run the command on `argv` (default: sys.argv[1:]); `prog` names it in usage and errors."""
    parser = build_parser(prog or PROG)
    args = parser.parse_args(argv)
    # `not (...)` so that nan, which fails every comparison, fails these too
    if not 0 < args.gpu_gib <= MAX_GPU_GIB:
        parser.error(f"--gpu-memory must be positive and at most {MAX_GPU_GIB} GiB, got {args.gpu_gib:g}")
    if args.measure_max_gflops is not None and not args.measure_max_gflops >= 0:
        parser.error(f"--measure-max-gflops must be a number ≥ 0 (inf: no limit), got {args.measure_max_gflops:g}")
    if args.references:
        print(references(args.gpu_gib * GiB))
        return 0
    if not args.out:
        parser.error("the following arguments are required: --out")
    try:
        base = _base_config(args)
    except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
        parser.error(str(exc))

    try:
        device = resolve_device(args.device) if args.measure else None
    except SystemExit as exc:  # a device that is not there
        parser.error(str(exc))
    try:
        out = make_folder(args.out)
    except OSError as exc:
        parser.error(f"--out: {exc}")
    gpu = args.gpu_gib * GiB
    options = dict(batch_size=args.batch_size, dtype=args.dtype, optimizer=args.optimizer,
                   checkpointing=args.checkpointing)
    t0 = time.perf_counter()
    rows = sweep(base, args.schemes, args.frames, args.sizes, args.base_frames, args.base_size, gpu, **options)
    print(f"estimated {len(rows)} points in {time.perf_counter() - t0:.2f} s")
    if args.measure:
        _measure_rows(rows, base, options, args.measure_max_gflops, device)

    _write_csv(out / "complexity.csv", rows)
    meta = {"gpu_memory_bytes": gpu, "base_config": base.to_dict(), **options,
            "implementations": dict(IMPLEMENTATIONS),
            "flops_convention": "fvcore: one multiply-add = one FLOP, per view"}
    (out / "complexity.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    title = (f"TimeSformer cost — {f'{args.model}: ' if args.model else ''}ViT {base.embed_dim}×{base.depth} "
             f"({base.num_heads} heads), patch {base.patch_size}, "
             f"batch {args.batch_size}, {args.dtype}, {args.optimizer}, GPU {args.gpu_gib:g} GiB")
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
