"""The training loop and evaluation (MAE's `engine_*`): `train_one_epoch`, `evaluate`, `predict`."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from timesformer.data import collate, ignore_interrupts
from timesformer.distributed import Dist


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Where training stands; every checkpoint stores it as a plain dict (`train_state.pt["state"]`)."""

    epoch: int = 0
    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done in this epoch: where a resumed epoch starts
    loss_sum: float = 0.0  # the running sums of this epoch, on this process
    correct: float = 0.0
    count: float = 0.0
    skipped: int = 0
    wall: float = 0.0  # seconds spent in training epochs, over the whole run
    clips_per_s: float = 0.0  # of the last epoch, over all processes
    data_wait: float = 0.0  # of the last epoch: the share of its time spent waiting for the next batch

    RUNNING = ("loss_sum", "correct", "count", "skipped")  # this process's share of the epoch's train row

    @classmethod
    def from_dict(cls, saved: dict, main: bool = True) -> TrainState:
        """The state `saved` by `for_checkpoint`; on a process other than rank 0 (not `main`) without the
        running sums, which rank 0 holds for every process."""
        names = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in saved.items() if k in names})
        for k in () if main else cls.RUNNING:
            setattr(state, k, type(getattr(state, k))(0))
        return state

    def as_dict(self) -> dict:
        return asdict(self)

    def for_checkpoint(self, dist: Dist) -> dict:
        """`as_dict` with the running sums added up over the processes (every process calls it), so that a
        mid-epoch resume under torchrun counts each process's clips once in the epoch's train row."""
        out = self.as_dict()
        out.update(zip(self.RUNNING, dist.sum([float(getattr(self, k)) for k in self.RUNNING])))
        out["skipped"] = int(out["skipped"])
        return out

    def next_epoch(self) -> None:
        self.epoch += 1
        self.micro, self.loss_sum, self.correct, self.count, self.skipped = 0, 0.0, 0.0, 0.0, 0


@dataclass
class Trainer:
    """What an optimizer step needs. `model` is the module whose weights are saved, `ddp_model` the one
    called: `model` itself, or its DistributedDataParallel wrapper."""

    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dist: Dist
    lr_at: Callable[[int], float]  # the learning rate of optimizer step n (0-based)
    total_steps: int
    accum_steps: int = 1
    clip_grad: float | None = None
    dtype: torch.dtype | None = None  # autocast dtype; None: full precision


def autocast(device: torch.device, dtype):
    """Mixed precision in `dtype`, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(trainer: Trainer, loader, state: TrainState, *, log: Callable[[str], None] = print,
                    progress=None, after_step: Callable[[TrainState], None] | None = None, stop=None) -> None:
    """One pass over `loader`, whose first batch is micro-batch `state.micro` of the epoch (later than 0 after
    a resume); stops early at `trainer.total_steps`. `after_step(state)` runs after every optimizer step.
    `stop` (`runs.StopRequest`): `asked()`, the signal this process was sent, is exchanged with the batch sizes
    before every micro-batch and the largest handed to `agree()`, so that all processes learn of a signal that
    reached any of them at the same micro-batch.

    Sets `state.data_wait`, the share of the epoch spent waiting for batches. The loop waits for the GPU once
    per micro-batch, for the loss and accuracy of its forward, which start for the host before the backward
    is queued: the GPU works through the backward during that wait and while the next step is queued. Before
    the wait the loop takes the next batch from the loader and starts its copy, so both overlap the step.
    """
    t, device = trainer, trainer.dist.device
    t.ddp_model.train()
    t0, clips_seen, waited = time.perf_counter(), 0, [0.0]
    micro = state.micro
    batches = _OnDevice(loader, device, waited)
    for batch in batches:
        if state.step >= t.total_steps:
            break
        state.skipped += len(batch["skipped"])
        for s in batch["skipped"][:3]:
            log(f"skipped unreadable clip {s.path}: {s.reason}")
        last_micro = (micro + 1) % t.accum_steps == 0
        # under DDP every process takes part in every backward: where one has no readable clip in its
        # micro-batch, all of them skip it
        # with them, the signal any process was sent (`stop`): every process stops after the same step
        counts, signals = zip(*t.dist.host_gather(0 if batch["video"] is None else len(batch["label"]),
                                                  stop.asked() if stop is not None else 0))
        if stop is not None:
            stop.agree(max(signals))
        if min(counts) > 0:
            video, label = batch["video"], batch["label"]  # (B, 3, T, S, S): one training view
            # DDP averages the processes' gradients: where unreadable clips left them unequal micro-batches,
            # each process's mean loss is weighed by its share, so that every clip counts the same
            weight = len(label) * len(counts) / sum(counts)
            # gradients are all-reduced only on the micro-batch that completes an optimizer step
            sync = contextlib.nullcontext() if (last_micro or not t.dist.ddp) else t.ddp_model.no_sync()
            with sync:
                with autocast(device, t.dtype):
                    logits = t.ddp_model(video)
                    loss = F.cross_entropy(logits.float(), label)
                # what the loop reads of this micro-batch leaves for the host before the backward is queued
                finite = t.dist.min_(torch.isfinite(loss.detach()).float().reshape(1))  # of every process
                read = _to_host(torch.cat([loss.detach().float().reshape(1),
                                           (logits.argmax(1) == label).sum().float().reshape(1), finite]))
                t.scaler.scale(loss * (weight / t.accum_steps)).backward()
            batches.prefetch()  # while the GPU works through the queued backward
            # the one wait per micro-batch: for its forward, while the GPU runs the backward. A non-finite loss
            # on any process stops every process before its optimizer step, so no weight takes a bad update.
            loss_value, correct, all_finite = read()
            if all_finite < 1:
                raise TrainingDiverged(f"the loss became {loss_value} at step {state.step} (epoch {state.epoch})"
                                       if not math.isfinite(loss_value) else
                                       f"the loss became non-finite on another process at step {state.step} "
                                       f"(epoch {state.epoch})")
            n = label.shape[0]
            state.loss_sum += loss_value * n
            state.correct += correct
            state.count += n
            clips_seen += n * t.dist.world
        micro += 1
        state.micro = micro
        if not last_micro:
            continue
        lr = t.lr_at(state.step)
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        if t.clip_grad:
            t.scaler.unscale_(t.optimizer)
            nn.utils.clip_grad_norm_(t.model.parameters(), t.clip_grad)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if progress is not None:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            progress.set_postfix(loss=f"{state.loss_sum / max(state.count, 1):.3f}", lr=f"{lr:.2e}",
                                 clips_s=f"{clips_seen / elapsed:.1f}", data=f"{waited[0] / elapsed:.0%}",
                                 refresh=False)  # drawn by update, at most every 0.1 s: not a write per step
            progress.update(1)
        if after_step is not None:
            after_step(state)
    elapsed = max(time.perf_counter() - t0, 1e-9)
    state.clips_per_s = clips_seen / elapsed
    state.data_wait = waited[0] / elapsed


class _OnDevice:
    """The batches of `loader` with their training view `video` (B, 3, T, S, S) and `label` on `device`.

    `prefetch()` takes the next batch from the loader and, on a GPU, starts copying it on a side stream; the
    training loop calls it once a step is queued and before it waits for the GPU, so that the loader and the
    copy overlap the step. Iterating prefetches by itself where the loop did not. `waited[0]` adds up the
    seconds spent waiting for the loader.
    """

    def __init__(self, loader, device: torch.device, waited: list[float]):
        self.device, self.waited = device, waited
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.batches = iter(loader)
        self.upcoming, self.done = None, False

    def prefetch(self) -> None:
        if self.upcoming is not None or self.done:
            return
        start = time.perf_counter()
        batch = next(self.batches, None)
        self.waited[0] += time.perf_counter() - start
        if batch is None:
            self.done = True
            return
        if batch["video"] is not None:
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                batch["video"] = batch["video"][:, 0].to(self.device, non_blocking=True)
                batch["label"] = batch["label"].to(self.device, non_blocking=True)
        self.upcoming = batch

    def __iter__(self):
        while True:
            self.prefetch()
            if self.upcoming is None:
                return
            batch, self.upcoming = self.upcoming, None
            if self.stream is not None and batch["video"] is not None:
                # the step's stream waits for the copy; the allocator keeps the tensors until the step is done
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(self.stream)
                batch["video"].record_stream(current)
                batch["label"].record_stream(current)
            yield batch


def _to_host(values: torch.Tensor) -> Callable[[], list[float]]:
    """Start copying the 1-D `values` to the host; the returned function waits for that copy and gives them
    as floats. On a GPU the copy goes to pinned memory behind an event, so the wait is for the work queued
    before this call only, not for what is queued after it (`.tolist()` there would wait for everything)."""
    if values.device.type != "cuda":
        return values.tolist
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(values.device))

    def read() -> list[float]:
        copied.synchronize()
        return host.tolist()

    return read


def train_row(trainer: Trainer, state: TrainState) -> dict:
    """The epoch's `train` metrics row: running averages summed over all processes."""
    dist = trainer.dist
    loss_sum, correct, count, skipped, wait = dist.sum([state.loss_sum, state.correct, state.count, state.skipped,
                                                        state.data_wait])
    row = {"epoch": state.epoch, "step": state.step, "split": "train", "loss": loss_sum / max(count, 1),
           "acc1": correct / max(count, 1), "clips": int(count), "lr": trainer.lr_at(max(0, state.step - 1)),
           "clips_per_s": state.clips_per_s, "wall_s": state.wall,
           "data_wait": wait / dist.world}  # the share of the epoch, mean of processes
    if skipped:
        row["skipped"] = int(skipped)
    return row


def check_finite(model: nn.Module, state: TrainState) -> None:
    """Raise TrainingDiverged when a weight is NaN or infinite (DDP keeps the ranks equal, so all stop)."""
    if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():  # one wait, not one per tensor
        raise TrainingDiverged(f"the weights became non-finite at step {state.step}")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, dtype=None, dist: Dist | None = None, view: int | None = None,
             per_clip: bool = False) -> dict:
    """Loss and top-1/top-5 accuracy; a clip's views (spatial crops) are averaged as softmax scores. With
    `view`, also the metrics of that view alone, under "view", from the same forwards. With `per_clip`, this
    process's clips under "per_clip", on the CPU: their dataset `index` and `label` (N,), and the class
    probabilities (N, K), averaged over the views (`probs`) and of `view` alone (`view_probs`).

    The sums stay on the device until the end: the host reads them once, so it never waits for the GPU
    between batches and queues the next batch's forward while the GPU runs this one."""
    model.eval()
    per_batch = []  # per scoring (the average of the views, then the one view): nll, top-1 and top-5 hits
    kept = []  # with per_clip: (index, label, probs, view probs) of each batch
    count = skipped = 0.0
    num_classes = None
    for batch in loader:
        skipped += len(batch["skipped"])
        if batch["video"] is None:
            continue
        video, label = batch["video"].to(device, non_blocking=True), batch["label"].to(device)
        B, V = video.shape[:2]
        with autocast(device, dtype):
            logits = model(video.flatten(0, 1))  # (B·V, K)
        probs = logits.float().softmax(-1).reshape(B, V, -1)
        num_classes = probs.shape[2]
        chosen = [probs.mean(1)] + ([probs[:, view]] if view is not None else [])  # the paper's view averaging
        per_batch.append(torch.stack([s for p in chosen for s in _hits(p, label)]))
        if per_clip:
            kept.append((batch["index"], label, *chosen))
        count += B
    # the one wait; summed in float64 on the host (not every device has float64)
    sums = (torch.stack(per_batch).cpu().double().sum(0).tolist() if per_batch
            else [0.0] * (6 if view is not None else 3))
    if dist is not None:
        *sums, count, skipped = dist.sum([*sums, count, skipped])
    out = _metrics(sums[:3], count, num_classes, skipped)
    if view is not None:
        out["view"] = _metrics(sums[3:], count, num_classes, skipped)
    if per_clip:
        names = ["index", "label", "probs", "view_probs"][: 4 if view is not None else 3]
        out["per_clip"] = {name: torch.cat([k[i].cpu() for k in kept]) if kept else torch.zeros(0)
                           for i, name in enumerate(names)}
    return out


def _hits(probs: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
    """Summed nll, top-1 and top-5 hits of (B, K) class probabilities."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices
    return [F.nll_loss(probs.clamp_min(1e-12).log(), label, reduction="sum"), (top[:, 0] == label).sum(),
            (top == label[:, None]).any(1).sum()]


def _metrics(sums: list[float], count: float, num_classes: int | None, skipped: float) -> dict:
    loss_sum, correct1, correct5 = sums
    out = {"loss": loss_sum / max(count, 1), "acc1": correct1 / max(count, 1), "clips": int(count)}
    if num_classes is not None and num_classes >= 5:
        out["acc5"] = correct5 / max(count, 1)
    if skipped:
        out["skipped"] = int(skipped)
    return out


def eval_loader(dataset, batch_size: int, workers: int, dist: Dist | None = None,
                pin_memory: bool = False) -> DataLoader:
    """Each process evaluates every world-th clip (no padding, so every clip counts once)."""
    indices = list(range(len(dataset)))
    if dist is not None and dist.ddp:
        indices = indices[dist.rank::dist.world]
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, worker_init_fn=ignore_interrupts,
                      generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def predict(model, views: torch.Tensor, k: int = 5) -> dict:
    """Top-k (class name, probability) of the centre view ("clip") and of the softmax averaged over all
    spatial views ("video": the paper's 3-crop protocol). views: (V, 3, T, H, W) of one clip."""
    probs = model(views).softmax(-1).float()  # (V, classes)
    names = model.class_names
    k = min(k, probs.shape[-1])

    def top(p):
        values, idx = p.topk(k)
        return [(names[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]

    return {"clip": top(probs[len(probs) // 2]), "video": top(probs.mean(0))}
