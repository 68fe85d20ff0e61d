"""Attention over each step's groups: every way the core can attend them, timed forward and backward.

    python bench/attention.py                      # = tslab bench attention: ViT-B/16 8×224, batch 8, every scheme
    python bench/attention.py --schemes divided_space_time axial --compile
    python bench/attention.py --smoke              # toy sizes: every path in seconds (the test runs it)

For each step of each scheme, `timesformer.attention.attend` runs on random projections of the step's real groups
(B·G groups of L tokens; 12 heads of 64 at ViT-B), in bf16 on a GPU and fp32 on a CPU, and each way of attending
is timed: its forward alone (inference) and forward + backward (training), after a warm-up. The ways:
- `sdpa`: `scaled_dot_product_attention` with the kernel PyTorch picks (the core's way for groups longer than
  `SHORT_BELOW`, and for all on a CPU or in fp32);
- `sdpa:<kernel>`: each kernel alone (flash, efficient, cudnn, math) where the device has it for these inputs;
- `matmul+softmax`: the core's path for groups of at most `MATH_BELOW` tokens;
- `triton`: the Triton kernel of `timesformer.short_attention` (the core's way for groups of at most
  `SHORT_BELOW` tokens, 16 by default), on CUDA where Triton is;
- `packed<N`: whole groups packed into sequences of up to N tokens behind a block-diagonal mask (`PACK_TO`),
  with the kernel PyTorch picks and with each kernel alone; only where the groups are short enough to pack;
- with --compile, `sdpa`, `matmul+softmax`, `triton` and `packed<N` under `timesformer.compile_model`.
Every way's output and input gradient are checked against `sdpa`'s (the largest difference is printed and
stored). A way the device cannot run (a kernel that refuses the inputs) is listed as such. Results go to
bench/results/attention-<device>.json (or --json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch._dynamo
from gpu import Clock, configs, save_results  # bench/gpu.py, beside this script

from timesformer import ATTENTION_TYPES, attention, compile_model, short_attention
from timesformer.attention import attend, packing, scheme_groupings
from timesformer.cli import HelpFormatter

KERNELS = ("flash", "efficient", "cudnn", "math")


def ways(device: torch.device, groups: int, L: int, pack_to: list[int], compiled: bool) -> list[dict]:
    """The ways of attending B·G = `groups` groups of L tokens: {name, math_below, pack_to, kernel, compiled}."""
    kernels = KERNELS if device.type == "cuda" else ("flash", "math")
    out = [dict(name="sdpa")] + [dict(name=f"sdpa:{k}", kernel=k) for k in kernels]
    out.append(dict(name="matmul+softmax", math_below=L))
    if device.type == "cuda" and short_attention.triton is not None and L <= short_attention.BLOCK // 2:
        out.append(dict(name="triton", short_below=L))  # timesformer.short_attention
    for n in pack_to:
        with attention.short_groups(pack_to=n):
            fits = packing(groups, L) > 1
        if fits:
            out += [dict(name=f"packed<{n}", pack_to=n)]
            out += [dict(name=f"packed<{n}:{k}", pack_to=n, kernel=k) for k in kernels if k != "flash"]
    if compiled:
        out += [dict(w, name=w["name"] + " compiled", compiled=True) for w in out if w["name"] in (
            "sdpa", "matmul+softmax", "triton") or (w["name"].startswith("packed") and ":" not in w["name"])]
    return out


def _backend(kernel: str | None):
    from contextlib import nullcontext

    if kernel is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    name = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
            "math": "MATH"}[kernel]
    return sdpa_kernel(getattr(SDPBackend, name))


def time_way(way: dict, qkv: torch.Tensor, grad: torch.Tensor, grouping, heads: int, warmup: int,
             repeats: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(forward ms, forward + backward ms, output, input gradient) of one way; raises RuntimeError where the
    device cannot run it."""
    with attention.short_groups(way.get("math_below", 0), way.get("pack_to", 0), way.get("short_below", 0)):
        if attention.SHORT_BELOW and not short_attention.usable(qkv, qkv.shape[2], qkv.shape[3] // 3 // heads):
            raise RuntimeError("the Triton kernel does not take these inputs")

        def run(x):
            return attend(x, grouping, heads)

        if way.get("compiled"):
            torch._dynamo.reset()
            run = compile_model(run)
        x, clock = qkv.detach().requires_grad_(), Clock(qkv.device)
        with _backend(way.get("kernel")):
            times = {}
            for phase in ("forward", "training"):
                for i in range(warmup + repeats):
                    if i == warmup:
                        start = clock()
                    if phase == "forward":
                        with torch.no_grad():
                            run(x)
                    else:
                        x.grad = None
                        out = run(x)
                        out.backward(grad)
                times[phase] = (clock() - start) / repeats * 1e3
        return times["forward"], times["training"], out.detach(), x.grad


def parser() -> argparse.ArgumentParser:
    """The command line of `tslab bench attention`."""
    ap = argparse.ArgumentParser(prog="tslab bench attention", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the attention runs (default: cuda where there is one, else cpu)")
    ap.add_argument("--schemes", nargs="+", default=list(ATTENTION_TYPES), choices=ATTENTION_TYPES,
                    help="the schemes whose steps are timed (default: all)")
    ap.add_argument("--batch", type=int, default=8, help="clips whose groups one step attends")
    ap.add_argument("--pack-to", type=int, nargs="*", default=[64, 128], help="sequence lengths to pack groups into")
    ap.add_argument("--compile", action="store_true", help="also time the core's paths under torch.compile")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls of each way first")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls of each way")
    ap.add_argument("--smoke", action="store_true", help="toy sizes: every path in seconds")
    ap.add_argument("--json", type=Path, help="the result file (default: bench/results/attention-<device>.json)")
    return ap


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; use --device cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": card, "torch": torch.__version__, "dtype": str(dtype), "batch": args.batch,
              "smoke": args.smoke, "steps": []}
    print(f"{card}; torch {torch.__version__}; {dtype}; batch {args.batch}", flush=True)
    print(f"{'scheme':20s} {'step':6s} {'groups × L':>12s} {'way':28s} {'forward ms':>10s} {'+backward ms':>12s} "
          f"{'max diff':>9s}")
    for scheme in args.schemes:
        cfg = configs(args.smoke, scheme)[0]  # the groups, heads and width of bench/gpu.py's model
        heads, D = cfg.num_heads, cfg.embed_dim
        for g in scheme_groupings(scheme, cfg.grid, str(device), cfg.local_split, cfg.global_stride):
            G, L = g.index.shape
            torch.manual_seed(0)
            qkv = torch.randn(args.batch, G, L, 3 * D, device=device, dtype=dtype)
            grad = torch.randn(args.batch, G, L, D, device=device, dtype=dtype)
            row = {"scheme": scheme, "step": g.step, "groups": args.batch * G, "tokens": L, "ways": {}}
            reference = None
            for way in ways(device, args.batch * G, L, args.pack_to, args.compile):
                try:
                    fwd, train, out, dx = time_way(way, qkv, grad, g, heads, args.warmup, args.repeats)
                except RuntimeError as e:  # a kernel that does not take these inputs
                    row["ways"][way["name"]] = {"error": str(e).splitlines()[0][:200]}
                    print(f"{scheme:20s} {g.step:6s} {args.batch * G:6d} × {L:<4d} {way['name']:28s} "
                          f"{'cannot run these inputs':>33s}", flush=True)
                    continue
                if reference is None:
                    reference = (out.float(), dx.float())
                diff = max((a.float() - b).abs().max().item() for a, b in zip((out, dx), reference))
                row["ways"][way["name"]] = {"forward_ms": fwd, "training_ms": train, "max_diff": diff}
                print(f"{scheme:20s} {g.step:6s} {args.batch * G:6d} × {L:<4d} {way['name']:28s} {fwd:10.3f} "
                      f"{train:12.3f} {diff:9.1e}", flush=True)
            timed = {k: v for k, v in row["ways"].items() if "training_ms" in v}
            row["fastest_training"] = min(timed, key=lambda k: timed[k]["training_ms"])
            row["fastest_forward"] = min(timed, key=lambda k: timed[k]["forward_ms"])
            print(f"{scheme:20s} {g.step:6s} fastest: training {row['fastest_training']}, "
                  f"inference {row['fastest_forward']}", flush=True)
            result["steps"].append(row)
    save_results(result, "attention", card, args.json)
    return result


if __name__ == "__main__":
    main()
