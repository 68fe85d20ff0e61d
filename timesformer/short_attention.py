"""Attention within many short groups in one Triton kernel: `attend`'s path for groups of at most
`timesformer.attention.SHORT_BELOW` tokens (16 by default: divided's and axial's 8-token time groups, axial's
15-token rows and columns), on CUDA in fp16 or bf16 (autocast).

A fused kernel of PyTorch attends each group as a sequence of its own: an 8-token group fills 8 of the 64 or 128
query rows of its tiles. Here one program of the kernel takes as many whole groups as fit in BLOCK (64) rows,
for one head, straight from the qkv projection's layout (no copy into a (groups, heads, L, hd) tensor), and
keeps each group to itself with a block-diagonal mask computed in registers (`PACK_TO` packs the same way,
but its mask is a tensor and its kernel the general one). Scores, softmax and output of a tile stay on chip;
the forward writes the output in the layout the output projection reads, and the row log-sum-exp for the
backward, which recomputes the probabilities and writes dq, dk and dv into one tensor of qkv's layout. A
tile holds whole groups, so no two programs write the same rows: no atomics, and the gradient is
deterministic.

The kernels are `torch.library` custom ops (forward and backward), so `torch.compile` keeps them in its graph.
Without Triton (a CPU-only PyTorch) nothing here runs; with TRITON_INTERPRET=1 the kernels run on CPU tensors
(slowly), which is how the tests check them where there is no GPU. On a GPU where Triton cannot build them (no C
compiler for its launcher, say, which a runtime image may lack), a warning says so once and PyTorch's kernels
attend every group.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only PyTorch comes without Triton
    triton = None

BLOCK = 64  # query (and key) rows of one program: whole groups of L tokens, BLOCK // L of them


def interpreting() -> bool:
    """Triton runs its kernels on the CPU (TRITON_INTERPRET=1): the tests' way without a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


_TENSOR_CORES: dict[int, bool] = {}  # CUDA device index → whether it is an Ampere or later card
_WORKS: dict[int, bool] = {}  # CUDA device index → whether the kernels compiled and ran there


@torch.compiler.assume_constant_result  # a constant to torch.compile: no guard, no graph break
def _tensor_cores(index: int) -> bool:
    """Whether CUDA device `index` has the tensor cores tl.dot uses for fp16 and bf16 (Ampere, sm_80, or later;
    before it the kernel compiles to plain FMAs)."""
    if index not in _TENSOR_CORES:
        _TENSOR_CORES[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    return _TENSOR_CORES[index]


def _works(index: int) -> bool:
    """Whether the kernels compile and run on CUDA device `index`, tried once (`_tried`)."""
    if index not in _WORKS:
        _WORKS[index] = _tried(torch.device("cuda", index))
    return _WORKS[index]


def _tried(device: torch.device) -> bool:
    """Forward and backward of two groups of 8 tokens on `device`, whatever the caller's mode (the try needs
    autograd and no autocast). Triton builds a launcher with the machine's C compiler and its kernels with
    ptxas, which a runtime image may lack: where the try fails, a warning names the cause and the answer is no."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter has no bf16
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            qkv = torch.randn(16, 48, device=device, dtype=dtype, requires_grad=True)
            short_attention(qkv, 1, 8).float().sum().backward()
            if not qkv.grad.isfinite().all():  # waits for the kernels, whose errors surface here
                raise RuntimeError("a gradient that is not finite")
        return True
    except Exception as e:  # noqa: BLE001 - any failure of the try means PyTorch's kernels instead
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"the Triton kernel for short attention groups does not run on {device} "
                      f"({type(e).__name__}: {cause}); PyTorch's attention kernels take every group",
                      RuntimeWarning, stacklevel=3)
        return False


def _cuda_ready(index: int) -> bool:
    """CUDA device `index` is an Ampere or later card where the kernels run: tried once in eager mode; under
    torch.compile taken to, as Inductor writes Triton kernels of its own, which need what these need."""
    return _tensor_cores(index) and (torch.compiler.is_compiling() or _works(index))


def usable(qkv: torch.Tensor, L: int, head_dim: int) -> bool:
    """Whether the kernel can attend groups of L tokens of these projections: Triton present, a CUDA tensor in
    fp16 or bf16 on an Ampere or later card where the kernels run (or the interpreter), groups that fit a tile
    twice over, a head size tl.dot takes, and fewer than 2³¹ elements. The device is asked last: its first
    answer tries the kernels, which a model in fp32 never needs."""
    if triton is None or not (qkv.is_cuda or interpreting()):
        return False
    # float32 on a GPU stays with PyTorch's kernels: tl.dot would round its inputs to TF32
    half = qkv.dtype in (torch.float16, torch.bfloat16) or (interpreting() and qkv.dtype == torch.float32)
    # the kernels index in int32
    fits = half and 1 <= L <= BLOCK // 2 and head_dim in (16, 32, 64, 128) and qkv.numel() < 2**31
    return fits and (not qkv.is_cuda or _cuda_ready(qkv.device.index or 0))


if triton is not None:

    def _tuned(kernel):
        """4 or 8 warps a program, whichever the card runs faster (timed at the first call of each shape; both
        compile for sm_90 without spilling); the interpreter, with no GPU to time on, runs the kernel as it is.
        The timing cannot happen inside a CUDA-graph capture: `compile_model(mode="reduce-overhead")` runs each
        shape eagerly before it captures, a hand-made `torch.cuda.graph` must do the same."""
        if interpreting():
            return kernel
        return triton.autotune([triton.Config({}, num_warps=w) for w in (4, 8)], key=["H", "D", "L"])(kernel)

    @triton.jit
    def _tile(pid, rows, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr):
        """The tile's row indices, which of them are real tokens, and the block-diagonal mask of its groups."""
        r = tl.arange(0, BLOCK)
        row = pid * ((BLOCK // L) * L) + r
        real = (r < (BLOCK // L) * L) & (row < rows)
        same = (r[:, None] // L) == (r[None, :] // L)
        return row, real, same

    @_tuned
    @triton.jit
    def _forward_kernel(QKV, OUT, LSE, rows, scale, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr,
                        BLOCK: tl.constexpr):
        pid, h = tl.program_id(0), tl.program_id(1)
        row, real, same = _tile(pid, rows, H, D, L, BLOCK)
        d = tl.arange(0, D)
        at = QKV + row[:, None] * (3 * H * D) + h * D + d[None, :]  # q of (rows, 3, H, D); k, v further on
        q = tl.load(at, mask=real[:, None], other=0.0)
        k = tl.load(at + H * D, mask=real[:, None], other=0.0)
        v = tl.load(at + 2 * H * D, mask=real[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # fp32; rows that are not tokens hold zeros, never NaN
        s = tl.where(same, s, float("-inf"))
        m = tl.max(s, 1)
        p = tl.exp(s - m[:, None])
        total = tl.sum(p, 1)
        out = tl.dot((p / total[:, None]).to(v.dtype), v)
        tl.store(OUT + row[:, None] * (H * D) + h * D + d[None, :], out.to(OUT.dtype.element_ty), mask=real[:, None])
        tl.store(LSE + h * rows + row, m + tl.log(total), mask=real)

    @_tuned
    @triton.jit
    def _backward_kernel(QKV, OUT, DOUT, LSE, DQKV, rows, scale, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr,
                         BLOCK: tl.constexpr):
        pid, h = tl.program_id(0), tl.program_id(1)
        row, real, same = _tile(pid, rows, H, D, L, BLOCK)
        d = tl.arange(0, D)
        at = row[:, None] * (3 * H * D) + h * D + d[None, :]
        q = tl.load(QKV + at, mask=real[:, None], other=0.0)
        k = tl.load(QKV + at + H * D, mask=real[:, None], other=0.0)
        v = tl.load(QKV + at + 2 * H * D, mask=real[:, None], other=0.0)
        o_at = row[:, None] * (H * D) + h * D + d[None, :]
        o = tl.load(OUT + o_at, mask=real[:, None], other=0.0).to(tl.float32)
        do = tl.load(DOUT + o_at, mask=real[:, None], other=0.0)
        lse = tl.load(LSE + h * rows + row, mask=real, other=0.0)
        s = tl.where(same, tl.dot(q, tl.trans(k)) * scale, float("-inf"))
        p = tl.exp(s - lse[:, None])  # the forward's probabilities (rows that are not tokens: do = 0 below)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        delta = tl.sum(do.to(tl.float32) * o, 1)
        ds = (p * (dp - delta[:, None])).to(q.dtype)
        dq = tl.dot(ds, k) * scale
        dk = tl.dot(tl.trans(ds), q) * scale
        ty = DQKV.dtype.element_ty
        tl.store(DQKV + at, dq.to(ty), mask=real[:, None])
        tl.store(DQKV + at + H * D, dk.to(ty), mask=real[:, None])
        tl.store(DQKV + at + 2 * H * D, dv.to(ty), mask=real[:, None])


def _grid(rows: int, heads: int, L: int) -> tuple[int, int]:
    per = (BLOCK // L) * L
    return (rows + per - 1) // per, heads


def _checked(qkv: torch.Tensor, heads: int, L: int) -> tuple[torch.Tensor, int, int]:
    """qkv contiguous (the kernels read it by rows), and (rows, head size); whole groups of whole heads."""
    rows, three_d = qkv.shape
    torch._check(rows % L == 0, lambda: f"{rows} rows are not whole groups of {L}")
    torch._check(three_d % (3 * heads) == 0, lambda: f"a width of {three_d} is not q, k and v of {heads} heads")
    return qkv.contiguous(), rows, three_d // 3 // heads


def _on(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device), or nowhere in particular (the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@torch.library.custom_op("timesformer::short_attention", mutates_args=())
def _short_attention(qkv: torch.Tensor, heads: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    qkv, rows, D = _checked(qkv, heads, L)
    out = torch.empty(rows, heads * D, dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty(heads, rows, dtype=torch.float32, device=qkv.device)
    with _on(qkv):
        _forward_kernel[_grid(rows, heads, L)](qkv, out, lse, rows, D**-0.5, H=heads, D=D, L=L, BLOCK=BLOCK)
    return out, lse


@_short_attention.register_fake
def _(qkv, heads, L):
    rows, three_d = qkv.shape
    return qkv.new_empty(rows, three_d // 3), qkv.new_empty(heads, rows, dtype=torch.float32)


@torch.library.custom_op("timesformer::short_attention_backward", mutates_args=())
def _short_attention_backward(qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                              heads: int, L: int) -> torch.Tensor:
    qkv, rows, D = _checked(qkv, heads, L)
    dqkv = torch.empty_like(qkv)
    with _on(qkv):
        _backward_kernel[_grid(rows, heads, L)](qkv, out.contiguous(), dout.to(out.dtype).contiguous(), lse, dqkv,
                                                rows, D**-0.5, H=heads, D=D, L=L, BLOCK=BLOCK)
    return dqkv


@_short_attention_backward.register_fake
def _(qkv, out, lse, dout, heads, L):
    return torch.empty_like(qkv)


def _setup(ctx, inputs, output):
    qkv, heads, L = inputs
    ctx.heads, ctx.L = heads, L
    ctx.save_for_backward(qkv, *output)
    ctx.set_materialize_grads(False)  # the log-sum-exp's gradient, always none: no tensor of zeros at every step


def _backward(ctx, dout, dlse):
    if dout is None:  # only the log-sum-exp was used, which has no gradient
        return None, None, None
    qkv, out, lse = ctx.saved_tensors
    return _short_attention_backward(qkv, out, lse, dout, ctx.heads, ctx.L), None, None


_short_attention.register_autograd(_backward, setup_context=_setup)


def short_attention(qkv: torch.Tensor, heads: int, L: int) -> torch.Tensor:
    """qkv: (rows, 3·D), the projections of rows // L groups of L consecutive tokens (rows in group order, each
    row q, k, v of `heads` heads); returns the attention output (rows, D), each group attending to itself."""
    return _short_attention(qkv, heads, L)[0]
