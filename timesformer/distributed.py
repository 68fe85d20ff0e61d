"""The device and the process group: DDP when `torchrun` set the environment (nanoGPT style), else one process."""

from __future__ import annotations

import os
import traceback

import torch
import torch.distributed as dist


def resolve_device(name: str, local_rank: int = 0, setting: str = "--device {}") -> torch.device:
    """`--device` → a concrete device: `auto` is CUDA where available, else the CPU; a bare `cuda` is
    `cuda:<local_rank>` (each `torchrun` process on its own GPU). A CUDA device that does not exist is a
    one-line `SystemExit` that names the devices there are; it begins with `setting`, how the user chose the
    device (`{}` stands for the value: "--device {}", "TSLAB_DEVICE={}")."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"{setting.format(name)}: {e}") from None
    if device.type == "meta":
        raise SystemExit(f"{setting.format(name)}: meta tensors hold no values; use {setting.format('cpu')}")
    if device.type not in ("cpu", "cuda"):  # mps, xpu, ...: usable where a tensor can be made there
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError, NotImplementedError) as e:
            reason = str(e).strip().split(". ")[0].splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise SystemExit(f"{setting.format(name)}: this PyTorch cannot use it ({reason}); use "
                             f"{setting.format('cpu')}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise SystemExit(f"{setting.format(name)}: CUDA is not available (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none'}); use {setting.format('cpu')}")
    index = local_rank if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        have = ", ".join(f"cuda:{i}" for i in range(count))
        raise SystemExit(f"{setting.format(name)}: there is no cuda:{index}; the CUDA devices are {have}")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """For people: "CPU", or the card and its index, "NVIDIA H100 80GB HBM3 (cuda:0)"."""
    if device.type != "cuda":
        return device.type.upper()
    return f"{torch.cuda.get_device_name(device)} ({device})"


def out_of_memory(error: BaseException) -> str:
    """The first sentences of a CUDA out-of-memory error: what it tried to allocate, and what the card has
    and has free (the rest is allocator advice)."""
    return ". ".join(str(error).split(". ")[:3]).rstrip(".")


class Dist:
    """Rank, world size and device of this process; every collective is a no-op without DDP."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.ddp = self.world > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_arg, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = self.ddp and not dist.is_initialized()  # closed by `close` only where opened here
        if self.owns_group:
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        # flags the processes agree on before they queue work: exchanged by the CPUs, so that nothing waits
        # for a GPU (the default group, where it is gloo already)
        self.host_group = None
        if self.ddp and dist.get_backend() != "gloo":
            self.host_group = dist.new_group(backend="gloo")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """`values` summed over all processes."""
        if not self.ddp:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def host_gather(self, *values: int) -> list[tuple[int, ...]]:
        """`values` of every process (rank order), exchanged on the host: no GPU work is waited for."""
        if not self.ddp:
            return [values]
        out = [torch.zeros(len(values), dtype=torch.long) for _ in range(self.world)]
        dist.all_gather(out, torch.tensor(values, dtype=torch.long), group=self.host_group)
        return [tuple(int(v) for v in t) for t in out]

    def gather(self, obj) -> list:
        """`obj` of every process (rank order), pickled and exchanged on the host."""
        if not self.ddp:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.host_group)
        return out

    def min_(self, t: torch.Tensor) -> torch.Tensor:
        """`t`, on this process's device, replaced in place by its minimum over all processes. On a GPU the
        reduction is queued like any kernel: nothing waits for it here."""
        if self.ddp:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> Dist:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_frames(error: BaseException) -> None:
    """Clear the local variables of the frames that `error`, and the exceptions it arose from, hold.

    A run stopped by an exception keeps its DistributedDataParallel model alive in those frames; freed after
    `Dist.close()` (at exit), the model's reducer takes the gloo process group down with it, which deadlocks
    on the interpreter lock. Call this before closing.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
