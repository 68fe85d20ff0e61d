"""Data movement per step: bytes the model writes in gathers, scatters, concatenations and copies, on a CPU.

    python bench/copies.py [--schemes divided_space_time axial] [--json out.json]

ViT-B/16 8×224, batch 1, one training step (forward + backward) and one inference forward per scheme.
- bytes: a TorchDispatchMode adds up the outputs of every gather (index), scatter (index_put, a gather's
  backward), concatenation (cat, stack), copy (clone, copy_, a reshape/contiguous/flatten that returned new
  memory) and slice gradient (slice_backward, select_backward: the whole zero-filled, the part copied in) —
  what the attention core's regrouping costs beside the matmuls;
- kernels: the PyTorch profiler's count and self CPU time of the leaf kernels doing that work (aten::index,
  aten::_index_put_impl_, aten::cat, aten::copy_ except the bias broadcast inside addmm).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from timesformer import ATTENTION_TYPES, TimeSformer, TimeSformerConfig
from timesformer.cli import HelpFormatter

CATEGORY = {"index": "gather", "index_select": "gather", "gather": "gather",
            "index_put": "scatter", "index_put_": "scatter", "_index_put_impl_": "scatter", "index_add": "scatter",
            "index_add_": "scatter", "scatter_add": "scatter", "scatter": "scatter",
            "cat": "cat", "stack": "cat",
            "clone": "copy", "copy_": "copy", "_to_copy": "copy", "contiguous": "copy", "reshape": "copy",
            "flatten": "copy", "_reshape_copy": "copy", "repeat": "copy",
            # the gradient of a slice: a zero-filled tensor of the whole, the slice's gradient copied in
            "slice_backward": "slice grad", "select_backward": "slice grad"}
MAYBE_VIEW = {"contiguous", "reshape", "flatten"}  # copies only when they return new memory
LEAF = {"aten::index": "gather", "aten::index_select": "gather", "aten::gather": "gather",
        "aten::_index_put_impl_": "scatter", "aten::index_add_": "scatter", "aten::scatter_add_": "scatter",
        "aten::cat": "cat", "aten::copy_": "copy"}


class Moved(TorchDispatchMode):
    """Bytes written by data-movement ops, by category."""

    def __init__(self):
        super().__init__()
        self.bytes, self.ops = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        category = CATEGORY.get(name)
        if category is None:
            return out
        written = args[0] if name == "copy_" else out
        if name in ("index_put", "index_put_", "_index_put_impl_"):
            written = args[2]  # the values put
        if name in MAYBE_VIEW and out.untyped_storage().data_ptr() == args[0].untyped_storage().data_ptr():
            return out  # a view: nothing moved
        if isinstance(written, torch.Tensor):
            self.bytes[category] += written.numel() * written.element_size()
            self.ops[category] += 1
        return out


def measure(model, video, train: bool) -> dict:
    model.train(train)

    def run():
        if train:
            model(video).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(video)

    run()  # the groupings are built and cached on the first call
    with Moved() as moved:
        run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    kernels, ms, total = collections.Counter(), collections.Counter(), 0.0
    for ev in prof.events():
        total += ev.self_cpu_time_total / 1e3
        category = LEAF.get(ev.name)
        bias = ev.name == "aten::copy_" and ev.cpu_parent is not None and ev.cpu_parent.name == "aten::addmm"
        if category and not bias:
            kernels[category] += 1
            ms[category] += ev.self_cpu_time_total / 1e3
    return {"MiB": {k: round(v / 2**20, 1) for k, v in moved.bytes.items()}, "ops": dict(moved.ops),
            "total_MiB": round(sum(moved.bytes.values()) / 2**20, 1), "kernels": dict(kernels),
            "kernel_ms": {k: round(v, 1) for k, v in ms.items()}, "move_ms": round(sum(ms.values()), 1),
            "all_ms": round(total, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="tslab bench copies", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--schemes", nargs="*", default=list(ATTENTION_TYPES), choices=ATTENTION_TYPES,
                    help="the schemes profiled (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", type=Path, help="also write the result to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    result = {}
    for scheme in a.schemes:
        torch.manual_seed(0)
        model = TimeSformer(TimeSformerConfig.base(attention_type=scheme, drop_path_rate=0.0))
        video = torch.randn(1, 3, 8, 224, 224)
        for mode, train in (("train step", True), ("inference", False)):
            r = result[f"{scheme} | {mode}"] = measure(model, video, train)
            print(f"{scheme:20s} {mode:10s}: {r['total_MiB']:7.1f} MiB moved {r['MiB']}; "
                  f"{sum(r['kernels'].values())} kernels, {r['move_ms']:.0f} ms of {r['all_ms']:.0f} ms self CPU",
                  flush=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
