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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from timesformer.checkpoints import load_model, save_model
from timesformer.config import ATTENTION_TYPES, TimeSformerConfig
from timesformer.data import build_datasets, collate
from timesformer.model import TimeSformer

PRESETS = ("tiny", "base", "hr", "large")
LAST = "checkpoint-last"
STATE = "train_state.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m timesformer.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file whose keys (flag names, - or _) set defaults; flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthmotion-temporal",
                   help="synthmotion-temporal, synthmotion-appearance, ROOT (ROOT/<split>/<class>/<clip>), "
                        "a folder with train.csv, or a CSV list (path,label)")
    g.add_argument("--val-data", help="validation CSV (default: the train list's val/test sibling)")
    g.add_argument("--train-clips", type=int, default=2048, help="SynthMotion clips per epoch")
    g.add_argument("--val-clips", type=int, default=512, help="SynthMotion validation clips")
    g.add_argument("--sampling-rate", type=int, default=32, help="frame stride of a clip (real videos)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="tiny", choices=PRESETS)
    g.add_argument("--attention", default="divided_space_time", choices=ATTENTION_TYPES)
    g.add_argument("--num-frames", type=int, help="frames per clip (default: the preset's)")
    g.add_argument("--img-size", type=int, help="crop side (default: the preset's)")
    g.add_argument("--patch-size", type=int, help="patch side (default: the preset's)")
    g.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other TimeSformerConfig fields, e.g. embed_dim=64 depth=2 time_embed_std=1.0")
    g.add_argument("--init", help="start from any checkpoint load_model opens (a new head if the classes differ)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--batch-size", type=int, default=16, help="clips per process and micro-step")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-steps per optimizer step")
    g.add_argument("--optimizer", default="auto", choices=["auto", "adamw", "sgd"],
                   help="auto: sgd (official recipe) for base/hr/large, adamw + cosine for tiny")
    g.add_argument("--lr", type=float, help="peak learning rate (default: 0.005 sgd, 1e-3 adamw)")
    g.add_argument("--min-lr", type=float, default=0.0, help="cosine floor")
    g.add_argument("--weight-decay", type=float, help="default: 1e-4 sgd, 0.05 adamw")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--schedule", default="auto", choices=["auto", "cosine", "steps", "constant"],
                   help="auto: steps for sgd (×0.1 at 11/15 and 14/15 of the epochs), cosine for adamw")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up (default: 5%% of the steps, ≤ 500)")
    g.add_argument("--clip-grad", type=float, help="max gradient norm (default: 1.0 adamw, none sgd)")
    g.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                   help="mixed precision; auto: bf16 on CUDA where supported (else fp16), none on CPU")
    g.add_argument("--seed", type=int, default=0)
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        import yaml

        with open(pre.config) as f:
            values = yaml.safe_load(f) or {}
        known = {a.dest for a in parser._actions}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{pre.config}: unknown keys {', '.join(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the recipe defaults that depend on other arguments."""
    if args.optimizer == "auto":
        args.optimizer = "adamw" if args.preset == "tiny" else "sgd"
    sgd = args.optimizer == "sgd"
    if args.lr is None:
        args.lr = 0.005 if sgd else 1e-3
    if args.weight_decay is None:
        args.weight_decay = 1e-4 if sgd else 0.05
    if args.schedule == "auto":
        args.schedule = "steps" if sgd else "cosine"
    if args.clip_grad is None and not sgd:
        args.clip_grad = 1.0
    if args.accum_steps < 1 or args.batch_size < 1 or args.epochs < 1:
        raise SystemExit("--batch-size, --accum-steps and --epochs must be at least 1")
    return args


def parse_model_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--model expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


# ---------------------------------------------------------------------------------------------
# distributed helpers (nanoGPT style: DDP when torchrun set the environment)
class Dist:
    def __init__(self, device_arg: str):
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if device_arg == "auto":
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        if device_arg == "cuda" and self.ddp:
            device_arg = f"cuda:{self.local_rank}"
        self.device = torch.device(device_arg)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.ddp and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.ddp:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if not self.ddp:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def close(self):
        if self.ddp and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# model, optimiser, schedule
def build_model(args, classes: list[str], log) -> TimeSformer:
    overrides = parse_model_overrides(args.model)
    if args.init:
        model = load_model(args.init)
        cfg = model.config
        if cfg.num_classes != len(classes) or (cfg.class_names or []) != list(classes):
            if cfg.num_classes != len(classes) or cfg.class_names:
                log(f"--init {args.init}: new head for {len(classes)} classes (checkpoint had {cfg.num_classes})")
                model.head = nn.Linear(cfg.embed_dim, len(classes))
                nn.init.trunc_normal_(model.head.weight, std=0.02)
                nn.init.zeros_(model.head.bias)
            model.config = cfg.replace(num_classes=len(classes), class_names=list(classes))
        if overrides:
            log(f"--model {overrides} ignored: the architecture comes from --init")
        return model
    preset = getattr(TimeSformerConfig, args.preset)
    kw = dict(attention_type=args.attention, num_classes=len(classes), class_names=list(classes))
    for name in ("num_frames", "img_size", "patch_size"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return TimeSformer(preset(**{**kw, **overrides}))


def build_optimizer(args, model: nn.Module) -> torch.optim.Optimizer:
    # no weight decay on biases, norms, embeddings and tokens (timm's rule)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "time_embed", "cls_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=args.lr)


def lr_at(step: int, args, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule."""
    warmup = args.warmup_steps if args.warmup_steps is not None else min(500, total_steps // 20)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    if args.schedule == "constant":
        return args.lr
    if args.schedule == "steps":  # official: ×0.1 at epochs 11 and 14 of 15
        epoch = step / max(1, steps_per_epoch)
        milestones = [args.epochs * 11 / 15, args.epochs * 14 / 15]
        return args.lr * 0.1 ** sum(epoch >= m for m in milestones)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def amp_dtype(args, device: torch.device):
    if args.amp == "none" or (args.amp == "auto" and device.type != "cuda"):
        return None
    if args.amp == "fp16":
        return torch.float16
    if args.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# evaluation (also used by timesformer.evaluate)
@torch.no_grad()
def evaluate(model: nn.Module, loader, device, dtype=None, dist_: Dist | None = None) -> dict:
    """Loss and top-1/top-5 accuracy; a clip's views (spatial crops) are averaged as softmax scores."""
    model.eval()
    loss_sum = correct1 = correct5 = count = skipped = 0.0
    num_classes = None
    for batch in loader:
        skipped += len(batch["skipped"])
        if batch["video"] is None:
            continue
        video, label = batch["video"].to(device, non_blocking=True), batch["label"].to(device)
        B, V = video.shape[:2]
        with autocast(device, dtype):
            logits = model(video.flatten(0, 1))  # (B·V, K)
        probs = logits.float().softmax(-1).reshape(B, V, -1).mean(1)  # (B, K): the paper's view averaging
        num_classes = probs.shape[1]
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), label, reduction="sum").item()
        top = probs.topk(min(5, num_classes), dim=1).indices
        correct1 += (top[:, 0] == label).sum().item()
        correct5 += (top == label[:, None]).any(1).sum().item()
        count += B
    if dist_ is not None:
        loss_sum, correct1, correct5, count, skipped = dist_.sum([loss_sum, correct1, correct5, count, skipped])
    out = {"loss": loss_sum / max(count, 1), "acc1": correct1 / max(count, 1), "clips": int(count)}
    if num_classes is not None and num_classes >= 5:
        out["acc5"] = correct5 / max(count, 1)
    if skipped:
        out["skipped"] = int(skipped)
    return out


def eval_loader(dataset, batch_size: int, workers: int, dist_: Dist | None = None) -> DataLoader:
    """Each process evaluates every world-th clip (no padding, so every clip counts once)."""
    indices = list(range(len(dataset)))
    if dist_ is not None and dist_.ddp:
        indices = indices[dist_.rank::dist_.world]
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# checkpoints
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Path, name: str, model: nn.Module, train_state: dict, keep: int) -> Path:
    """Write `run/name/` (save_model + train_state.pt) atomically and point `checkpoint-last` at it."""
    tmp = run / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp)
    torch.save(train_state, tmp / STATE)
    final = run / name
    if final.exists():  # a stale checkpoint from before a resume: never the one checkpoint-last points at
        trash = run / f".trash-{name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    link = run / f".{LAST}-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(name, link)
    os.replace(link, run / LAST)  # atomic: the link always names a complete checkpoint
    # keep the newest `keep` checkpoints (by step), never the one just written
    ckpts = sorted((p for p in run.glob("ckpt-*") if p.is_dir()), key=lambda p: _ckpt_step(p))
    for old in ckpts[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _ckpt_step(path: Path) -> tuple[int, int]:
    try:
        return int(path.name.split("-")[1][1:]), path.name.endswith("-end")
    except (IndexError, ValueError):
        return -1, 0


def find_resume(args) -> Path | None:
    target = Path(args.out if args.resume == "auto" else args.resume)
    if (target / STATE).is_file():
        return target
    if (target / LAST / STATE).is_file():
        return (target / LAST).resolve()
    if args.resume == "auto":
        return None  # nothing to resume: a fresh run (so `--resume` is safe in a restart loop)
    raise SystemExit(f"--resume {args.resume}: no {STATE} there or in {LAST}/")


# ---------------------------------------------------------------------------------------------
class Logger:
    def __init__(self, run: Path, main: bool):
        self.main, self.file = main, (open(run / "log.txt", "a") if main else None)
        self.progress = None  # a tqdm bar: messages go above it instead of through it

    def __call__(self, msg: str) -> None:
        if self.main:
            if self.progress is not None:
                self.progress.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr, flush=True)
            self.file.write(msg + "\n")
            self.file.flush()


def _metrics_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def train_one_epoch(model, ddp_model, loader, optimizer, scaler, args, state, dist_, dtype, total_steps,
                    steps_per_epoch, skip_micro, progress, log, run):
    """One pass over the loader (from micro-batch `skip_micro` on, after a resume); updates `state`."""
    device = dist_.device
    ddp_model.train()
    accum = args.accum_steps
    t0, clips_seen = time.time(), 0
    for micro, batch in enumerate(loader, start=skip_micro):
        if state["step"] >= total_steps:
            break
        state["skipped"] += len(batch["skipped"])
        for s in batch["skipped"][:3]:
            log(f"skipped unreadable clip {s.path}: {s.reason}")
        last_micro = (micro + 1) % accum == 0
        if batch["video"] is not None:
            video = batch["video"][:, 0].to(device, non_blocking=True)  # (B, 3, T, S, S): one training view
            label = batch["label"].to(device, non_blocking=True)
            sync = contextlib.nullcontext() if (last_micro or not dist_.ddp) else ddp_model.no_sync()
            with sync:
                with autocast(device, dtype):
                    logits = ddp_model(video)
                    loss = F.cross_entropy(logits.float(), label)
                finite = torch.isfinite(loss.detach()).float()
                if dist_.ddp:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if finite.item() < 1:
                    raise TrainingDiverged(f"the loss became {loss.item()} at step {state['step']} (epoch "
                                           f"{state['epoch']})")
                scaler.scale(loss / accum).backward()
            n = label.shape[0]
            state["loss_sum"] += loss.item() * n
            state["correct"] += (logits.argmax(1) == label).sum().item()
            state["count"] += n
            clips_seen += n * dist_.world
        state["micro"] = micro + 1
        if not last_micro:
            continue
        lr = lr_at(state["step"], args, total_steps, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if args.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        rate = clips_seen / max(time.time() - t0, 1e-9)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{state['loss_sum'] / max(state['count'], 1):.3f}", lr=f"{lr:.2e}",
                                 clips_s=f"{rate:.1f}")
        end_of_epoch = state["micro"] >= steps_per_epoch * accum
        if args.ckpt_every and state["step"] % args.ckpt_every == 0 and not end_of_epoch \
                and state["step"] < total_steps:
            checkpoint(run, model, optimizer, scaler, state, args, dist_, f"ckpt-s{state['step']:08d}")
    state["clips_per_s"] = clips_seen / max(time.time() - t0, 1e-9)


def checkpoint(run, model, optimizer, scaler, state, args, dist_, name):
    for p in model.parameters():  # every rank checks (DDP keeps them equal), so every rank stops together
        if not torch.isfinite(p).all():
            raise TrainingDiverged(f"the weights became non-finite at step {state['step']}")
    if dist_.main:
        train_state = {
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
            "state": {k: v for k, v in state.items() if isinstance(v, (int, float))},
            "metrics_lines": len(_metrics_lines(run / "metrics.jsonl")),
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))},
        }
        save_checkpoint(run, name, model, train_state, args.keep)
    dist_.barrier()


def main(argv=None) -> dict:
    args = resolve(parse_args(argv))
    dist_ = Dist(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.out)
    if dist_.main:
        run.mkdir(parents=True, exist_ok=True)
    dist_.barrier()
    log = Logger(run, dist_.main)
    try:
        return _train(args, dist_, run, log)
    finally:
        dist_.close()


def _train(args, dist_: Dist, run: Path, log) -> dict:
    device = dist_.device
    resume_from = find_resume(args) if args.resume else None
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    # the data decides the classes; the model decides frames and size unless the flags do
    probe_cfg = None
    if args.init:
        probe_cfg = load_model(args.init).config
    if resume_from is not None:
        probe_cfg = load_model(resume_from).config
    preset = getattr(TimeSformerConfig, args.preset)()
    ref = probe_cfg or preset
    overrides = parse_model_overrides(args.model)
    num_frames = args.num_frames or overrides.get("num_frames") or ref.num_frames
    size = args.img_size or overrides.get("img_size") or ref.img_size
    train_ds, val_ds, classes = build_datasets(
        args.data, num_frames=num_frames, size=size, sampling_rate=args.sampling_rate, seed=args.seed,
        train_clips=args.train_clips, val_clips=args.val_clips, val_data=args.val_data,
        spatial_crops=args.eval_crops)

    if resume_from is not None:
        model = load_model(resume_from)
        if list(model.class_names) != list(classes):
            raise SystemExit(f"--resume: the checkpoint's classes {model.class_names} differ from the data's")
        log(f"resuming from {resume_from}")
    else:
        model = build_model(args, classes, log)
    model.to(device)
    ddp_model = model
    if dist_.ddp:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(args, model)
    dtype = amp_dtype(args, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    sampler = DistributedSampler(train_ds, num_replicas=dist_.world, rank=dist_.rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    per_epoch_micro = len(sampler) // args.batch_size
    steps_per_epoch = per_epoch_micro // args.accum_steps
    if steps_per_epoch < 1:
        raise SystemExit(f"{len(train_ds)} training clips are fewer than one step of "
                         f"{args.batch_size}×{args.accum_steps}×{dist_.world} clips")
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)

    state = {"epoch": 0, "step": 0, "micro": 0, "loss_sum": 0.0, "correct": 0.0, "count": 0.0, "skipped": 0,
             "wall": 0.0}
    metrics_path = run / "metrics.jsonl"
    if resume_from is not None:
        saved = torch.load(resume_from / STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        state.update(saved["state"])
        if dist_.main:  # forget evaluations logged after the checkpoint
            lines = _metrics_lines(metrics_path)[: saved["metrics_lines"]]
            metrics_path.write_text("".join(line + "\n" for line in lines))
    elif dist_.main:
        metrics_path.write_text("")
    dist_.barrier()

    if dist_.main:
        import yaml

        resolved = {"args": vars(args), "model": model.config.to_dict(), "world_size": dist_.world,
                    "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "amp": str(dtype)}
        (run / "train_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    tb = None
    if dist_.main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run / "tb"))
        except Exception:  # TensorBoard is optional
            tb = None
    log(f"{type(train_ds).__name__}: {len(train_ds)} training clips, {len(val_ds) if val_ds else 0} validation "
        f"clips, {len(classes)} classes; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"({model.config.attention_type}); {steps_per_epoch} steps/epoch × {args.epochs} epochs on "
        f"{dist_.world} × {device}; {args.optimizer} lr {args.lr}")

    val_loader = eval_loader(val_ds, args.batch_size, args.workers, dist_) if val_ds is not None else None
    progress = None
    if dist_.main and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=state["step"], unit="step", dynamic_ncols=True)
        log.progress = progress

    def log_metrics(row: dict):
        if not dist_.main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if tb is not None:
            for k in ("loss", "acc1", "acc5"):
                if k in row:
                    tb.add_scalar(f"{row['split']}/{k}", row[k], row["step"])
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    result = {}
    try:
        while state["epoch"] < args.epochs and state["step"] < total_steps:
            epoch = state["epoch"]
            t_epoch = time.time()
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            # whole optimizer steps only: leftover micro-batches would leak gradients into the next epoch
            indices = list(sampler)[: steps_per_epoch * args.accum_steps * args.batch_size]
            batches = [indices[i:i + args.batch_size] for i in range(0, len(indices), args.batch_size)]
            skip = state["micro"]
            # a private generator: creating a loader must not draw from the global RNG (resume = same stream)
            loader = DataLoader(train_ds, batch_sampler=batches[skip:], num_workers=args.workers,
                                collate_fn=collate, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
            train_one_epoch(model, ddp_model, loader, optimizer, scaler, args, state, dist_, dtype, total_steps,
                            steps_per_epoch, skip, progress, log, run)
            state["wall"] += time.time() - t_epoch
            loss_sum, correct, count, skipped = dist_.sum(
                [state["loss_sum"], state["correct"], state["count"], state["skipped"]])
            finished = state["step"] >= total_steps or epoch + 1 >= args.epochs
            row = {"epoch": epoch, "step": state["step"], "split": "train", "loss": loss_sum / max(count, 1),
                   "acc1": correct / max(count, 1), "clips": int(count), "lr": lr_at(max(0, state["step"] - 1),
                   args, total_steps, steps_per_epoch), "clips_per_s": state.get("clips_per_s", 0.0),
                   "wall_s": state["wall"]}
            if skipped:
                row["skipped"] = int(skipped)
                log(f"epoch {epoch}: skipped {int(skipped)} unreadable clips")
            log_metrics(row)
            result["train"] = row
            if val_loader is not None and ((epoch + 1) % args.eval_every == 0 or finished):
                ev = evaluate(ddp_model, val_loader, device, dtype, dist_)
                row = {"epoch": epoch, "step": state["step"], "split": "val", **ev}
                log_metrics(row)
                result["val"] = row
            state.update(epoch=epoch + 1, micro=0, loss_sum=0.0, correct=0.0, count=0.0, skipped=0)
            checkpoint(run, model, optimizer, scaler, state, args, dist_, f"ckpt-s{state['step']:08d}-end")
    except TrainingDiverged as e:
        last = (run / LAST).resolve() if (run / LAST).exists() else None
        msg = (f"training stopped: {e}. The last good checkpoint is {last or 'none (no checkpoint yet)'}; "
               "try a lower --lr, --clip-grad 1.0 or --amp none.")
        log(msg)
        raise TrainingDiverged(msg) from None
    finally:
        if progress is not None:
            progress.close()
            log.progress = None
        if tb is not None:
            tb.close()
    result["checkpoint"] = str(run / LAST)
    return result


def cli(argv=None) -> None:
    try:
        main(argv)
    except TrainingDiverged:
        sys.exit(2)


if __name__ == "__main__":
    cli()
