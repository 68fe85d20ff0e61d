"""Run folders: `log.txt`, `metrics.jsonl`, `train_config.yaml`, TensorBoard scalars, and the checkpoints
`ckpt-sSTEP[-end]/` (a `save_model` folder plus `train_state.pt`) with `checkpoint-last` naming the newest and
`checkpoint-best` the one of the best validation accuracy (then the lowest loss).

Checkpoints are written to a temporary folder and renamed, and the link is replaced atomically, so a kill at
any moment leaves a loadable last checkpoint. Every process may call everything here; only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from timesformer.checkpoints import LAST, STATE, write_model
from timesformer.distributed import Dist, out_of_memory
from timesformer.engine import Trainer, TrainingDiverged, TrainState
from timesformer.files import atomic_folder, make_folder
from timesformer.model import TimeSformer
from timesformer.resume import rng_state
from timesformer.runinfo import METRICS, holds_run, rank, read_metrics

BEST = "checkpoint-best"  # the checkpoint of the best validation accuracy so far; never pruned


class Logger:
    """`log(msg)`: rank 0 prints to stderr (above the progress bar, when there is one) and appends to
    `log.txt` (opened at the first message); the other ranks stay silent."""

    def __init__(self, run: Path, main: bool):
        self.main, self.path, self.file = main, run / "log.txt", None
        self.progress = None  # a tqdm bar: messages go above it instead of through it

    def __call__(self, msg: str) -> None:
        if self.main:
            if self.progress is not None:
                self.progress.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr, flush=True)
            if self.file is None:
                self.file = open(self.path, "a")
            self.file.write(msg + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class Run:
    """The run folder `path` (created by rank 0); `log`, metrics rows, the config file and checkpoints.

    A folder that holds an earlier run is refused unless the run resumes (`resume`): training into it would
    overwrite that run's metrics and config and mix checkpoints of two runs. A folder this run created and
    left empty (it stopped on bad flags before writing anything) is removed by `close`."""

    def __init__(self, path, dist: Dist, resume: bool = False):
        self.path, self.dist = Path(path), dist
        earlier = holds_run(self.path)
        if earlier and not resume:
            raise SystemExit(f"--out {self.path} holds an earlier run ({earlier}): add --resume to continue it, "
                             "or choose another --out")
        self.created = dist.main and not self.path.exists()
        if dist.main:
            make_folder(self.path)
        dist.barrier()
        self.log = Logger(self.path, dist.main)
        self.tb = None

    def metrics_lines(self) -> list[str]:
        path = self.path / METRICS
        return path.read_text().splitlines() if path.exists() else []

    def restart_metrics(self, keep: int = 0, resumed: Path | None = None) -> None:
        """Keep the first `keep` rows of `metrics.jsonl`: a resumed run forgets the evaluations logged after
        its checkpoint `resumed`, which it is about to repeat. Where that checkpoint is in this folder,
        `checkpoint-last` names it from now on (a run killed before its next checkpoint resumes from it again,
        not from the abandoned steps' last)."""
        if self.dist.main:
            lines = self.metrics_lines()[:keep]
            (self.path / METRICS).write_text("".join(line + "\n" for line in lines))
            if resumed is not None and Path(resumed).resolve().parent == self.path.resolve():
                point(self.path, LAST, Path(resumed).resolve().name)
            self._best_of_kept_rows()
        self.dist.barrier()

    def _best_of_kept_rows(self) -> None:
        """After a resume from an earlier checkpoint than the last, `checkpoint-best` may name a checkpoint of the
        abandoned steps (which the resumed run then overwrites with other weights): it names the epoch's
        checkpoint of the best validation row kept instead, or goes where that checkpoint is gone."""
        link = self.path / BEST
        if not link.is_symlink():
            return
        best = max(self.val_rows(), key=rank, default=None)
        name = f"ckpt-s{best['step']:08d}-end" if best else None
        if os.readlink(link) == name:
            return
        if name and (self.path / name).is_dir():
            point(self.path, BEST, name)
            self.log(f"{BEST} now names {name}, the best validation before the checkpoint resumed from")
        else:
            link.unlink()
            self.log(f"{BEST} removed: it named a checkpoint after the one resumed from, and none before it is "
                     "kept")

    def write_config(self, resolved: dict) -> None:
        """`train_config.yaml`: the resolved arguments and model config."""
        if self.dist.main:
            import yaml

            (self.path / "train_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    def open_tensorboard(self) -> None:
        """Also write the metrics as TensorBoard scalars under `tb/`, when TensorBoard is installed."""
        if not self.dist.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.path / "tb"))
        except Exception:  # TensorBoard is optional
            self.tb = None

    def log_metrics(self, row: dict) -> None:
        """Append `row` (epoch, step, split, loss, acc1, ...) to `metrics.jsonl`, TensorBoard and the log."""
        if not self.dist.main:
            return
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k in ("loss", "acc1", "acc5"):
                if k in row:
                    self.tb.add_scalar(f"{row['split']}/{k}", row[k], row["step"])
        self.log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    def checkpoint(self, name: str, trainer: Trainer, state: TrainState, args, best: bool = False) -> None:
        """Rank 0 writes checkpoint `name` with everything `--resume` needs (`best`: it is `checkpoint-best` as
        well); all ranks wait for it."""
        summed = state.for_checkpoint(self.dist)
        if self.dist.main:
            train_state = {
                "optimizer": trainer.optimizer.state_dict(), "scaler": trainer.scaler.state_dict(),
                "rng": rng_state(), "state": summed, "metrics_lines": len(self.metrics_lines()),
                "args": {k: v for k, v in vars(args).items()
                         if isinstance(v, (int, float, str, bool, list, type(None)))},
            }
            try:
                save_checkpoint(self.path, name, trainer.model, train_state, args.keep, best)
            except OSError as e:  # a full disk, a lost mount: the last checkpoint is still whole
                raise SystemExit(f"could not write the checkpoint {name} in {self.path}: {e}. The last checkpoint "
                                 f"is {self.last_checkpoint() or 'none (no checkpoint yet)'}") from None
        self.dist.barrier()

    def val_rows(self) -> list[dict]:
        """The validation rows of `metrics.jsonl`."""
        return [row for row in read_metrics(self.path)[0] if row["split"] == "val"]

    def beats_earlier(self, row: dict) -> bool:
        """Whether the validation `row` ranks above every validation row already in `metrics.jsonl` (by accuracy,
        then by the lower loss): its checkpoint becomes `checkpoint-best`."""
        earlier = self.val_rows()
        return not earlier or rank(row) > max(map(rank, earlier))

    def last_checkpoint(self) -> Path | None:
        last = self.path / LAST
        return last.resolve() if last.exists() else None

    def finished(self, step: int, seconds: float) -> None:
        """Log where a finished run left its last and its best checkpoint, with their validation accuracy."""
        val = {r["step"]: r["acc1"] for r in self.val_rows()}
        links = {link: os.readlink(self.path / link) for link in (LAST, BEST) if (self.path / link).is_symlink()}
        said = []
        for name in dict.fromkeys(links.values()):  # checkpoint-last first; once where both name one checkpoint
            step_of = _ckpt_step(Path(name))[0]
            acc = f", validation accuracy {val[step_of]:.1%}" if step_of in val else ""
            said.append(f"{' and '.join(k for k, v in links.items() if v == name)}: {self.path / name} (step "
                        f"{step_of}{acc})")
        self.log(f"finished at step {step} after {seconds:.0f} s of training; " + "; ".join(said))

    def stopped(self, error: BaseException, where: str, advice: str = "", by: str | None = None) -> Exception:
        """The exception to end the run with, after `error` (TrainingDiverged, Interrupted, KeyboardInterrupt or
        the GPU's OutOfMemoryError) stopped it `where`: its logged message says which checkpoint is the last good
        one and what to do (`advice`, for running out of memory). `by`: the signal that asked the run to stop
        (`StopRequest.requested`; Ctrl-C where none did)."""
        last = self.last_checkpoint()
        if isinstance(error, torch.OutOfMemoryError):
            out = OutOfMemory(f"the GPU ran out of memory {where}: {out_of_memory(error)}. The last checkpoint is "
                              f"{last or 'none (no checkpoint yet)'}. {advice}")
        elif isinstance(error, TrainingDiverged):
            out = TrainingDiverged(f"training stopped: {error}. The last good checkpoint is "
                                   f"{last or 'none (no checkpoint yet)'}; try a lower --lr, --clip-grad 1.0 or "
                                   "--amp none.")
        else:
            by = by or "Ctrl-C"
            out = Interrupted(f"stopped by {by} {where}; the last checkpoint is "
                              + (f"{last}: --resume goes on from it" if last else "none (no checkpoint yet)"))
            out.status = 128 + STOP_SIGNALS[by]  # the shell's status of a process that the signal ended
        self.log(str(out))
        return out

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self.log.close()
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()


class Interrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM; its message says where its last checkpoint is, `status` is the exit
    status (130, 143)."""

    status = 130


class OutOfMemory(RuntimeError):
    """A run stopped by the GPU running out of memory; its message says what to change."""


def memory_advice(args, config, dtype, device: torch.device) -> str:
    """What to change when a run (its resolved arguments, model config and autocast dtype) does not fit the GPU
    `device`, and the `tslab cost` command that estimates its training memory (its one configuration, at its
    batch, precision, optimizer and checkpointing)."""
    T, S, checkpointing = config.num_frames, config.img_size, args.grad_checkpointing
    gpu_bytes = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    flags = (f"--schemes {config.attention_type} --frames {T} --sizes {S} --base-frames {T} --base-size {S} "
             f"--patch-size {config.patch_size} --embed-dim {config.embed_dim} --depth {config.depth} "
             f"--heads {config.num_heads} --num-classes {config.num_classes} --batch-size {args.batch_size} "
             f"--dtype {'fp32' if dtype is None else 'bf16'} --optimizer {args.optimizer}"
             + " --checkpointing" * checkpointing + (f" --gpu-memory {gpu_bytes / 2**30:.0f}" if gpu_bytes else ""))
    fixes = [f"a smaller --batch-size (with --accum-steps {2 * args.accum_steps} at half the batch, an optimizer "
             "step takes as many clips)"] + ["--grad-checkpointing"] * (not checkpointing) + ["--amp bf16"] * (
        dtype is None)
    listed = fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + " or " + fixes[-1]
    return f"Try {listed}; `tslab cost {flags} --out runs/cost` estimates what this run needs and what fits."


STOP_SIGNALS = {"Ctrl-C": signal.SIGINT, "SIGTERM": signal.SIGTERM}


class StopRequest:
    """Until `close()`, Ctrl-C (SIGINT) or SIGTERM (what a cluster's scheduler sends a job before it kills it)
    asks the run to stop: `requested` names the signal this process was sent, and the loop saves a checkpoint
    after the step under way and stops (`stopping`), instead of losing the work since the last checkpoint. A
    second signal stops at once (KeyboardInterrupt). Off the main thread the signals keep their handlers. The
    loader's workers ignore both (`data.ignore_interrupts`): they are the main process's to stop.

    Under torchrun (`ddp`) every process must stop after the same step, or the others wait forever in the next
    one's all-reduce: the training loop exchanges `asked()` with the batch sizes before each micro-batch and
    `settle()` does at the end of an epoch, and `agreed` is the signal any process was sent. torchrun forwards a
    signal to its processes and kills them 30 s later; in a terminal or under a scheduler that signals the whole
    job, each process gets it twice (once directly, once from torchrun), so there a repeat within
    `REPEAT_S` seconds is the same request."""

    REPEAT_S = 2.0

    def __init__(self, ddp: bool = False):
        self.ddp, self.requested, self.agreed, self.at, self.previous = ddp, None, None, 0.0, {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS.values()}

    @property
    def stopping(self) -> str | None:
        """The signal the run stops for after this step (every process alike), or None."""
        return self.agreed if self.ddp else self.requested

    def asked(self) -> int:
        """The number of the signal this process was sent, 0 for none."""
        return int(STOP_SIGNALS[self.requested]) if self.requested else 0

    def agree(self, signum: int) -> None:
        """`signum`: the largest of every process's `asked()` at one exchange."""
        if signum and not self.agreed:
            self.agreed = next(name for name, sig in STOP_SIGNALS.items() if sig == signum)

    def settle(self, dist: Dist) -> str | None:
        """`stopping`, once every process has told the others whether it was sent a signal."""
        self.agree(max(s for (s,) in dist.host_gather(self.asked())))
        return self.stopping

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self.ddp and time.monotonic() - self.at < self.REPEAT_S:
                return
            raise KeyboardInterrupt
        self.requested = next(name for name, sig in STOP_SIGNALS.items() if sig == signum)
        self.at = time.monotonic()
        try:  # straight to the file descriptor: the interrupted code may be inside a write to sys.stderr
            os.write(2, f"\n{self.requested}: stopping after this step with a checkpoint ({self.requested} again "
                        "stops at once)\n".encode())
        except OSError:
            pass


def save_checkpoint(run: Path, name: str, model: TimeSformer, train_state: dict, keep: int,
                    best: bool = False) -> Path:
    """Write `run/name/` (save_model + train_state.pt) atomically, point `checkpoint-last` (and with `best`,
    `checkpoint-best`) at it and keep the newest `keep` checkpoints (by step), never removing the one just
    written or the one `checkpoint-best` names."""
    run = Path(run)
    # an existing `name` is a stale checkpoint from before a resume, never the one checkpoint-last points at
    with atomic_folder(run / name) as tmp:
        write_model(model, tmp)
        torch.save(train_state, tmp / STATE)
    for link in [LAST] + [BEST] * best:
        point(run, link, name)
    kept = {name, os.readlink(run / BEST) if (run / BEST).is_symlink() else None}
    ckpts = sorted((p for p in run.glob("ckpt-*") if p.is_dir()), key=_ckpt_step)
    for old in ckpts[:-keep] if keep > 0 else []:
        if old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)
    return run / name


def point(run: Path, link: str, name: str) -> None:
    """Make `run/link` a link to `name`, atomically: the link always names a complete checkpoint."""
    temporary = run / f".{link}-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(name, temporary)
    os.replace(temporary, run / link)


def _ckpt_step(path: Path) -> tuple[int, int]:
    try:
        return int(path.name.split("-")[1][1:]), path.name.endswith("-end")
    except (IndexError, ValueError):
        return -1, 0
