"""Train a TimeSformer: `python -m timesformer.train --data synthmotion-temporal --out runs/x` (or
`python timesformer/train.py ...`; under `torchrun` it trains with DDP).

A run folder holds `train_config.yaml` (the resolved arguments and model config), `metrics.jsonl` (one JSON
object per evaluation: epoch, step, split, loss, acc1, acc5 with ≥ 5 classes, ...), `log.txt`, TensorBoard
scalars when TensorBoard is installed, and checkpoints `ckpt-*/` (each a `save_model` folder plus
`train_state.pt`) with `checkpoint-last` pointing at the newest. Checkpoints are written to a temporary folder
and renamed, and the link is replaced atomically, so a kill at any moment leaves a loadable last checkpoint;
`--resume` continues from it with the same results as an uninterrupted run (fixed seed, CPU).

Recipes: `--optimizer auto` picks the official one for `base`/`hr`/`large` (SGD, momentum 0.9, Nesterov,
lr 0.005, weight decay 1e-4, lr ×0.1 at epochs 11 and 14 of 15, scaled to --epochs) and AdamW + cosine
(lr 1e-3, weight decay 0.05) for `tiny`, both with linear warm-up.

This module holds the arguments and their wiring (as MAE's `main_*.py`); the loop and evaluation live in
`timesformer.engine`, run folders and checkpoints in `timesformer.runs`, resuming in `timesformer.resume`, the
optimiser, schedule, mixed precision and the Trainer in `timesformer.optim`, the device and DDP in
`timesformer.distributed`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from timesformer.cli import HelpFormatter, check_ranges
from timesformer.config import ATTENTION_TYPES, TimeSformerConfig
from timesformer.data import FrameDrop, TrainLoader, auto_workers, build_datasets, synthmotion_task, workers_arg
from timesformer.distributed import Dist, device_name, free_frames
from timesformer.engine import (
    TrainingDiverged,
    TrainState,
    check_finite,
    eval_loader,
    evaluate,
    train_one_epoch,
    train_row,
)
from timesformer.optim import AMP, build_trainer, resolve
from timesformer.resume import Resume, find_resume
from timesformer.runs import LAST, Interrupted, OutOfMemory, Run, StopRequest, memory_advice
from timesformer.train_model import DEFAULT_ATTENTION, build_model, load_init, parse_model_overrides

PRESETS = ("tiny", "base", "hr", "large")


# ---------------------------------------------------------------------------------------------
# arguments
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "python -m timesformer.train", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--config", help="YAML file whose keys (flag names, - or _) set defaults; flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthmotion-temporal",
                   help="synthmotion-temporal, synthmotion-appearance, synthmotion-distractor, ROOT "
                        "(ROOT/<split>/<class>/<clip>), a folder with train.csv, or a CSV list (path,label)")
    g.add_argument("--val-data", help="validation CSV (default: the train list's val/test sibling)")
    g.add_argument("--train-clips", type=int, default=2048, help="SynthMotion clips per epoch")
    g.add_argument("--val-clips", type=int, default=512, help="SynthMotion validation clips (0: no validation)")
    g.add_argument("--sampling-rate", type=int, default=32, help="frame stride of a clip (real videos)")
    g.add_argument("--workers", type=workers_arg, default="auto",
                   help="DataLoader worker processes; auto: on a GPU, the cores this process may use (shared with "
                        "the other processes of its node) minus one for the loop, at most 16; on the CPU, 1 for video "
                        "files (0 for SynthMotion)")
    g.add_argument("--prefetch", type=int, default=4, help="batches each worker prepares ahead")
    g.add_argument("--frame-drop", type=float, default=0.0, metavar="P",
                   help="replace each training frame, with probability P, by the clip's median over time (what "
                        "moves is gone from it), so the model cannot rest its decision on a few frames")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="tiny", choices=PRESETS,
                   help="tiny (8 frames of 64², width 128, 4 blocks: trains on a CPU), base (ViT-B/16, 8×224²), "
                        "hr (16×448²), large (96×224²)")
    g.add_argument("--attention", choices=ATTENTION_TYPES,
                   help=f"attention scheme (default: --init's, else {DEFAULT_ATTENTION})")
    g.add_argument("--num-frames", type=int, help="frames per clip (default: the preset's)")
    g.add_argument("--img-size", type=int, help="crop side (default: the preset's)")
    g.add_argument("--patch-size", type=int, help="patch side (default: the preset's)")
    g.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other TimeSformerConfig fields, e.g. embed_dim=64 depth=2 time_embed_std=1.0")
    g.add_argument("--init", help="start from any checkpoint load_model opens (a new head if the classes differ), "
                                  "resized to --num-frames/--img-size; an image ViT (timm, HuggingFace) becomes a "
                                  "TimeSformer of --attention")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="passes over the training data")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--batch-size", type=int, default=16, help="clips per process and micro-step")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-steps per optimizer step")
    g.add_argument("--optimizer", default="auto", choices=["auto", "adamw", "sgd"],
                   help="auto: sgd (official recipe) for base/hr/large, adamw + cosine for tiny")
    g.add_argument("--lr", type=float, help="peak learning rate (default: 0.005 sgd, 1e-3 adamw)")
    g.add_argument("--min-lr", type=float, default=0.0, help="cosine floor")
    g.add_argument("--weight-decay", type=float, help="weight decay (default: 1e-4 sgd, 0.05 adamw)")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd momentum")
    g.add_argument("--schedule", default="auto", choices=["auto", "cosine", "steps", "constant"],
                   help="auto: steps for sgd (×0.1 at 11/15 and 14/15 of the epochs), cosine for adamw")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up (default: 5%% of the steps, ≤ 500)")
    g.add_argument("--clip-grad", type=float, help="max gradient norm (default: 1.0 adamw, none sgd)")
    g.add_argument("--amp", default="auto", choices=AMP,
                   help="mixed precision; auto: bf16 on CUDA where supported (else fp16), none on CPU")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="keep only each block's input for the backward, which computes the block again: a fraction "
                        "of the activation memory for about a third more compute, the same results (tslab cost "
                        "--checkpointing estimates it)")
    g.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (inductor); the first steps compile it, for tens of "
                        "seconds")
    g.add_argument("--seed", type=int, default=0, help="seeds the model, SynthMotion and the loader")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/train", help="run folder")
    g.add_argument("--resume", nargs="?", const="auto", metavar="RUN_OR_CKPT",
                   help="continue from RUN/checkpoint-last (default: --out's)")
    g.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch only)")
    g.add_argument("--keep", type=int, default=2, help="checkpoints to keep")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    g.add_argument("--eval-crops", type=int, default=1, choices=[1, 3], help="spatial views per validation clip")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--threads", type=int, help="torch CPU threads per process")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# the range of each numeric flag: (lowest, whether the lowest itself is allowed, the value it stays below)
RANGES = {
    **dict.fromkeys("train_clips sampling_rate prefetch num_frames img_size patch_size epochs max_steps batch_size "
                    "accum_steps keep eval_every threads".split(), (1, True, None)),
    **dict.fromkeys("val_clips warmup_steps ckpt_every min_lr weight_decay clip_grad".split(), (0, True, None)),
    "lr": (0, False, None), "momentum": (0, False, 1), "frame_drop": (0, True, 1),
}


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    """The arguments of `argv` (default: the command line); a `--config` YAML file sets their defaults."""
    parser = build_parser(prog)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        import yaml

        try:
            with open(pre.config) as f:
                values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise SystemExit(f"--config {pre.config}: {' '.join(str(e).split())}") from None
        if not isinstance(values, dict):
            raise SystemExit(f"--config {pre.config}: expected a mapping of flag names to values, got a "
                             f"{type(values).__name__}")
        if isinstance(values.get("model"), str):  # `model: embed_dim=64 depth=6`, as on the command line
            values["model"] = values["model"].split()
        known = {a.dest for a in parser._actions}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{pre.config}: unknown keys {', '.join(unknown)}")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    check_ranges(parser, args, RANGES)  # argparse checks no ranges, nor the types of --config's values
    return args


# ---------------------------------------------------------------------------------------------
# wiring
def main(argv=None, prog: str | None = None) -> dict:
    """Train as the command line `argv` says; returns the last `train` and `val` metrics rows and the path
    of `checkpoint-last`. Raises TrainingDiverged when the loss stops being finite."""
    args = resolve(parse_args(argv, prog))
    dist = Dist(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workers == "auto":  # torchrun says how many processes share this node's cores
        args.workers = auto_workers(dist.device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                    decodes=synthmotion_task(args.data) is None)
    try:
        try:
            run = Run(args.out, dist, resume=bool(args.resume))
        except OSError as e:
            raise SystemExit(f"--out: {e}") from None
        try:
            return _train(args, dist, run)
        except BaseException as e:
            free_frames(e)  # the stopped run's DDP model goes before its process group
            raise
        finally:
            run.close()
    finally:
        dist.close()


def _train(args, dist: Dist, run: Run) -> dict:
    device, log = dist.device, run.log
    resume_from = find_resume(args.resume, args.out) if args.resume else None
    resume = Resume.open(resume_from) if resume_from is not None else None
    if args.resume == "auto" and resume is None:
        log(f"--resume: no checkpoint in {args.out} yet, so a new run starts there")
    init = load_init(args, log) if args.init and resume is None else None

    # the data decides the classes; the model decides frames and size unless the flags do
    loaded = resume.model if resume is not None else init
    ref = loaded.config if loaded is not None else getattr(TimeSformerConfig, args.preset)()
    parse_model_overrides(args.model)  # a bad --model stops the run before the data is built
    num_frames = args.num_frames or ref.num_frames
    size = args.img_size or ref.img_size
    try:
        train_ds, val_ds, classes = build_datasets(
            args.data, num_frames=num_frames, size=size, sampling_rate=args.sampling_rate, seed=args.seed,
            train_clips=args.train_clips, val_clips=args.val_clips, val_data=args.val_data,
            spatial_crops=args.eval_crops)
    except (OSError, ValueError) as e:  # a missing or malformed --data / --val-data
        raise SystemExit(f"--data: {e}") from None
    if args.frame_drop:
        train_ds = FrameDrop(train_ds, args.frame_drop, seed=args.seed)

    # seeded after loading checkpoints (which draw while building their model): new weights and the
    # training stream depend on --seed alone
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if resume is not None:
        model = resume.model
        if list(model.class_names) != list(classes):
            raise SystemExit(f"--resume: the checkpoint's classes {model.class_names} differ from the data's")
        log(f"resuming from {resume.path}")
        changed = resume.changed(args)  # data, schedule and batches follow the flags; the architecture does not
        if changed:
            log(f"--resume with other flags than the checkpoint's run: {', '.join(changed)} (the "
                "model is the checkpoint's, whatever --preset, --attention and --model say)")
        resume.keep_architecture(args)
    else:
        model = build_model(args, classes, log, init)
    model.set_grad_checkpointing(args.grad_checkpointing).to(device)
    args.attention = model.config.attention_type  # the run's config names the scheme it trains

    sampler = DistributedSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // args.batch_size // args.accum_steps
    if steps_per_epoch < 1:
        raise SystemExit(f"{len(train_ds)} training clips are fewer than one step of "
                         f"{args.batch_size}×{args.accum_steps}×{dist.world} clips")
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    trainer = build_trainer(args, dist, model, total_steps, steps_per_epoch)

    state = TrainState()
    if resume is not None:
        state = resume.restore(trainer)
        run.restart_metrics(keep=resume.rows_logged, resumed=resume.path)
        done = [f"epoch {state.epoch} of {args.epochs}"] * (state.epoch >= args.epochs) + [
            f"step {state.step} of {total_steps}"] * (state.step >= total_steps)
        if done:
            log(f"nothing left to train: the checkpoint is at {' and '.join(done)}; raise --epochs (or --max-steps) "
                "to go on")
    else:
        run.restart_metrics()
    run.write_config({"args": vars(args), "model": model.config.to_dict(), "world_size": dist.world,
                      "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "amp": str(trainer.dtype)})
    run.open_tensorboard()
    log(f"{type(train_ds).__name__}: {len(train_ds)} training clips, {len(val_ds) if val_ds else 0} validation "
        f"clips, {len(classes)} classes; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"({model.config.attention_type}); {steps_per_epoch} steps/epoch × {args.epochs} "
        f"epoch{'s' * (args.epochs != 1)} on {dist.world} × {device_name(device)}; {args.optimizer} lr {args.lr}")
    for split, ds in (("training", train_ds), ("validation", val_ds)) if dist.main else ():
        gone = getattr(getattr(ds, "dataset", ds), "missing", list)()  # FrameDrop wraps the training clips
        if gone:  # said now, not one batch at a time over the epoch
            log(f"{len(gone)} of the {len(ds)} {split} clips listed are not there (the first: {gone[0]}): each is "
                "skipped when drawn")

    val_loader = (eval_loader(val_ds, args.batch_size, args.workers, dist, pin_memory=device.type == "cuda")
                  if val_ds is not None else None)
    loader = TrainLoader(train_ds, sampler, batches_per_epoch=steps_per_epoch * args.accum_steps,
                         batch_size=args.batch_size, workers=args.workers, prefetch=args.prefetch, seed=args.seed,
                         pin_memory=device.type == "cuda")
    progress = None
    if dist.main and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=state.step, unit="step", dynamic_ncols=True)
        log.progress = progress

    def save(name: str, best: bool = False) -> None:
        check_finite(model, state)  # no checkpoint after a bad step: the last one stays the last good one
        run.checkpoint(name, trainer, state, args, best)

    stop = StopRequest(ddp=dist.ddp)

    def after_step(state: TrainState) -> None:
        # a mid-epoch checkpoint every --ckpt-every steps, and where a signal asks to stop (not at the end of an
        # epoch or the run: the epoch's own checkpoint follows)
        if state.micro >= steps_per_epoch * args.accum_steps or state.step >= total_steps:
            return
        if stop.stopping or args.ckpt_every and state.step % args.ckpt_every == 0:
            save(f"ckpt-s{state.step:08d}")
        if stop.stopping:
            raise Interrupted

    result, ahead = {}, None
    try:
        while state.epoch < args.epochs and state.step < total_steps:
            epoch, t_epoch = state.epoch, time.time()
            batches = ahead if ahead is not None else loader.start(epoch, skip=state.micro)
            train_one_epoch(trainer, batches, state, log=log, progress=progress, after_step=after_step,
                            stop=stop)
            state.wall += time.time() - t_epoch
            result["train"] = row = train_row(trainer, state)
            if skipped := row.get("skipped"):
                log(f"epoch {epoch}: skipped {skipped} unreadable clip{'s' * (skipped != 1)}")
            run.log_metrics(row)
            if not row["clips"]:  # steps on no clip at all: nothing to learn, and no checkpoint to keep of it
                raise SystemExit(f"--data {args.data}: none of the {skipped or 0} training clips of epoch {epoch} "
                                 "could be read (the log names the first ones and why)")
            finished = state.step >= total_steps or epoch + 1 >= args.epochs
            # the workers begin the next epoch now: its first batches are ready once validation and the
            # checkpoint are done (started at its first step, the epoch waited for them)
            ahead = None if finished else loader.start(epoch + 1)
            improved = False  # its validation accuracy is the best so far: checkpoint-best
            if val_loader is not None and ((epoch + 1) % args.eval_every == 0 or finished):
                ev = evaluate(trainer.ddp_model, val_loader, device, trainer.dtype, dist)
                result["val"] = row = {"epoch": epoch, "step": state.step, "split": "val", **ev}
                if not row["clips"]:  # an accuracy of 0 clips would rank as a checkpoint-best
                    raise SystemExit(f"none of the {row.get('skipped', 0)} validation clips could be read: check "
                                     "--val-data (or the data's val split)")
                improved = run.beats_earlier(row)
                run.log_metrics(row)
                if not math.isfinite(row["loss"]):  # finite weights whose logits overflow: no checkpoint of them
                    raise TrainingDiverged(f"the validation loss became {row['loss']} at step {state.step}")
            state.next_epoch()
            save(f"ckpt-s{state.step:08d}-end", best=improved)
            if not finished and stop.settle(dist):
                raise Interrupted
    except (TrainingDiverged, Interrupted, KeyboardInterrupt, torch.OutOfMemoryError) as e:
        oom = isinstance(e, torch.OutOfMemoryError)
        advice = memory_advice(args, model.config, trainer.dtype, device) if oom else ""
        by = stop.agreed or stop.requested  # under torchrun: the signal any process was sent
        raise run.stopped(e, f"at step {state.step} of {total_steps}", advice, by=by) from None
    finally:
        stop.close()
        if progress is not None:
            progress.close()
            log.progress = None
        # `save` and `after_step` hold the trainer and an exception's frames hold them: the DDP wrapper must
        # not live on through them past `Dist.close()` (see `free_frames`)
        trainer.ddp_model = None
    result["checkpoint"] = str(run.path / LAST)
    run.finished(state.step, state.wall)
    return result


def cli(argv=None, prog: str | None = None) -> None:
    """The command line: a diverged run exits with status 2 (its message is already logged)."""
    try:
        main(argv, prog)
    except TrainingDiverged:
        sys.exit(2)
    except Interrupted as e:  # said where the last checkpoint is
        sys.exit(e.status)
    except OutOfMemory:  # said what to change
        sys.exit(1)
    except KeyboardInterrupt:  # before the loop began
        print("stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
