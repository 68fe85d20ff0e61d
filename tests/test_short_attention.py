"""The Triton kernel for short groups (`timesformer.short_attention`, `attention.SHORT_BELOW`) against PyTorch's
attention, on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before Triton compiles anything, so
in a process of its own): skipped where Triton is not installed (a CPU-only PyTorch comes without it; every
CUDA build has it); tests/test_cuda.py runs the kernel on a GPU in bf16. Without Triton: when the core takes the
kernel (the default on CUDA, never on a CPU) and when it falls back to PyTorch's kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from timesformer import TimeSformer, TimeSformerConfig, attention
from timesformer import short_attention as short

needs_triton = pytest.mark.skipif(find_spec("triton") is None, reason="Triton comes with PyTorch's CUDA builds")
ROOT = Path(__file__).resolve().parent.parent


def interpreted(code: str) -> dict:
    """Run `code` (which prints one JSON line last) with Triton's interpreter; its result."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
def test_the_kernel_attends_each_group_to_itself_as_pytorch_does():
    """Forward and backward against scaled_dot_product_attention per group: groups of 8 (8 to a tile), 15 (4
    to a tile and 4 rows unused), 4 and 32; a last tile only partly filled; fp32 and fp16."""
    res = interpreted("""
        import json, torch
        import torch.nn.functional as F
        from timesformer.short_attention import short_attention, usable
        torch.manual_seed(0)
        out = []
        for L, groups, heads, hd, dtype in [(8, 21, 2, 16, torch.float32), (15, 9, 3, 32, torch.float32),
                                            (4, 40, 1, 16, torch.float32), (32, 5, 2, 16, torch.float32),
                                            (8, 11, 2, 16, torch.float16)]:
            D = heads * hd
            qkv = torch.randn(groups * L, 3 * D).to(dtype).requires_grad_()
            assert usable(qkv, L, hd) and not usable(qkv, 33, hd) and not usable(qkv, L, 24)
            got = short_attention(qkv, heads, L)
            q, k, v = (t.transpose(1, 2).float() for t in qkv.view(groups, L, 3, heads, hd).unbind(2))
            want = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(groups * L, D)
            grad = torch.randn(groups * L, D)
            (g_got,) = torch.autograd.grad(got, qkv, grad.to(dtype))
            (g_want,) = torch.autograd.grad(want, qkv, grad)
            out.append([L, str(dtype), list(got.shape) == [groups * L, D], str(got.dtype),
                        (got.float() - want).abs().max().item(),
                        (g_got.float() - g_want).abs().max().item(), g_want.abs().max().item()])
        print(json.dumps(out))
    """)
    for L, dtype, shaped, out_dtype, err, grad_err, grad_max in res:
        tol = 1e-5 if dtype == "torch.float32" else 5e-3
        assert shaped and out_dtype == dtype, (L, dtype)
        assert err < tol and grad_err < tol * max(1.0, grad_max), (L, dtype, err, grad_err)


@needs_triton
def test_the_first_try_of_a_device_passes_in_any_mode():
    """The try a GPU gets before its first short group (`_tried`), on the interpreter: under inference_mode,
    no_grad and autocast alike it runs forward and backward, says yes and warns nothing."""
    res = interpreted("""
        import json, torch, warnings
        from timesformer import short_attention as short
        warnings.simplefilter("error")
        cpu, answers = torch.device("cpu"), []
        for mode in (torch.inference_mode, torch.no_grad, lambda: torch.autocast("cpu", dtype=torch.bfloat16)):
            with mode():
                answers.append(short._tried(cpu))
        print(json.dumps(answers))
    """)
    assert res == [True, True, True]


@needs_triton
def test_a_model_with_short_below_gives_the_same_logits_and_gradients_eager_and_compiled():
    """`attention.SHORT_BELOW = 32`: every scheme's groups of at most 32 tokens go to the kernel (divided's and
    axial's time groups, axial's rows and columns, the local windows, a frame of 16 patches and cls) and the
    model computes what it computes with PyTorch's kernels; compiled (divided and axial), the kernel is a custom
    op in the graph."""
    res = interpreted("""
        import json, torch
        from timesformer import TimeSformer, TimeSformerConfig, attention, compile_model
        from timesformer import short_attention as short
        calls, kernel = [], short.short_attention
        counted = lambda qkv, heads, L: calls.append(L) or kernel(qkv, heads, L)
        out = {}
        for scheme in ("space_only", "joint_space_time", "divided_space_time", "sparse_local_global", "axial"):
            torch.manual_seed(0)
            model = TimeSformer(TimeSformerConfig(attention_type=scheme, img_size=32, patch_size=8, num_frames=4,
                                                  embed_dim=64, depth=2, num_heads=4, num_classes=5,
                                                  drop_path_rate=0.0)).train()
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0, 0.2)
            video = torch.randn(2, 3, 4, 32, 32)
            runs = []
            ways = ((0, False), (32, False)) + ((32, True),) * (scheme in ("divided_space_time", "axial"))
            for below, compiled in ways:
                attention.SHORT_BELOW = below
                calls.clear()
                model.zero_grad()
                # compiled: the kernel itself, not the counting wrapper (a Python side effect in the graph)
                short.short_attention = kernel if compiled else counted
                run = compile_model(model) if compiled else model
                logits = run(video)
                logits.pow(2).sum().backward()
                runs.append((logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]),
                             sorted(set(calls))))
            (ref, g_ref, _), *rest = runs
            out[scheme] = [[(x - ref).abs().max().item(), (g - g_ref).abs().max().item() / g_ref.abs().max().item(),
                            lengths] for x, g, lengths in rest]
        print(json.dumps(out))
    """)
    assert len(res["divided_space_time"]) == len(res["axial"]) == 2  # eager and compiled
    for scheme, ((err, grad_err, lengths), *compiled) in res.items():
        assert err < 1e-4 and grad_err < 1e-4, (scheme, res[scheme])
        assert all(c_err < 1e-4 and c_grad_err < 1e-4 for c_err, c_grad_err, _ in compiled), (scheme, compiled)
        # 4×4 patches, 4 frames: frames of 16 (+ cls: 17), time groups of 4, rows and columns, L+G windows
        assert bool(lengths) == (scheme != "joint_space_time"), (scheme, lengths)  # its one group: 65 tokens


def test_the_default_sends_short_groups_to_the_kernel_on_cuda_alone():
    """SHORT_BELOW is 16 (divided's and axial's 8-token time groups, axial's 15-token rows): on a CPU nothing
    changes, the logits are bit for bit those of PyTorch's kernels everywhere."""
    assert attention.SHORT_BELOW == 16
    model = TimeSformer(TimeSformerConfig(attention_type="axial", img_size=32, patch_size=8, num_frames=4,
                                          embed_dim=64, depth=2, num_heads=4, num_classes=5)).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        default = model(video)
        with attention.short_groups():  # 0, 0, 0: PyTorch's kernels for every group
            assert attention.SHORT_BELOW == 0
            off = model(video)
    assert attention.SHORT_BELOW == 16 and torch.equal(default, off)
    assert not short.usable(torch.zeros(64, 192, dtype=torch.bfloat16), 8, 16)  # a CPU tensor, no interpreter


def test_a_gpu_where_the_kernel_cannot_build_falls_back_with_one_warning(monkeypatch):
    """Where Triton cannot build or run the kernels (no C compiler for its launcher, say), the first try on a
    device warns once, naming the cause, and the core takes PyTorch's kernels from then on."""
    def no_compiler(*args):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(short, "short_attention", no_compiler)
    monkeypatch.setattr(short, "_WORKS", {})
    # on a CPU-only PyTorch the try fails one step earlier, at the tensor on cuda:0: the same answer
    with pytest.warns(RuntimeWarning, match=r"does not run on cuda:0 \(\w+: .+\); PyTorch's attention kernels"):
        assert short._works(0) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert short._works(0) is False and short._WORKS == {0: False}  # asked again: no second try, no warning


def test_the_device_checks_compile_into_one_graph_without_a_warning(monkeypatch):
    """Under torch.compile the card's generation is read without a graph break or a warning (a functools cache
    made Dynamo warn on every compile), and the kernels are not tried: Inductor's own Triton kernels need what
    they need."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(short, "_TENSOR_CORES", {})
    monkeypatch.setattr(short, "_works", lambda index: pytest.fail("tried under torch.compile"))
    torch._dynamo.reset()
    step = torch.compile(lambda x: x * 2 if short._cuda_ready(x.device.index or 0) else x + 1, backend="eager",
                         fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(step(torch.ones(2)), torch.full((2,), 2.0)) and short._TENSOR_CORES == {0: True}
