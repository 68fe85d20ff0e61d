"""Resuming a run: the checkpoint `--resume` names (`find_resume`), what it restores (`Resume`: the model, the
optimizer, the GradScaler, the RNGs, where training stood) and which flags of the resumed run differ from the
checkpoint's. `timesformer.runs` writes what is read here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from timesformer.checkpoints import LAST, STATE, load_model
from timesformer.engine import Trainer, TrainState
from timesformer.model import TimeSformer
from timesformer.runinfo import holds_run


def find_resume(resume: str, out) -> Path | None:
    """The checkpoint `--resume` names: `resume` itself or its `checkpoint-last`; `auto` looks in `out` and
    finds nothing in a fresh folder (so `--resume` is safe in a restart loop)."""
    target = Path(out if resume == "auto" else resume)
    if (target / STATE).is_file():
        return target
    if (target / LAST / STATE).is_file():
        return (target / LAST).resolve()
    if resume != "auto":
        raise SystemExit(f"--resume {resume}: no {STATE} there or in {LAST}/")
    if earlier := holds_run(target):  # a run whose last checkpoint cannot resume: never start over it
        resumable = sorted(p.parent.name for p in target.glob(f"ckpt-*/{STATE}"))
        raise SystemExit(f"--resume: {target} holds a run ({earlier}) but its {LAST} has no {STATE} to resume from; "
                         + (f"name a checkpoint that has one with --resume {target / resumable[-1]}"
                            if resumable else "no checkpoint there has one: choose another --out"))
    return None


# flags that a resumed run may change without changing what it computes
SAME_RUN = {"out", "resume", "config", "workers", "prefetch", "no_progress", "threads", "device", "ckpt_every", "keep",
            "eval_every", "compile", "grad_checkpointing"}


# flags that chose the model: a resumed run takes them from its checkpoint
ARCHITECTURE = ("preset", "attention", "model", "init")


@dataclass
class Resume:
    """A run checkpoint read once: the model and its `train_state.pt`."""

    path: Path
    model: TimeSformer
    saved: dict

    @classmethod
    def open(cls, path: Path) -> Resume:
        return cls(path, load_model(path), torch.load(path / STATE, map_location="cpu", weights_only=True))

    def restore(self, trainer: Trainer) -> TrainState:
        """Put the optimizer, the GradScaler and the RNGs back as they were; the state to continue from."""
        trainer.optimizer.load_state_dict(self.saved["optimizer"])
        trainer.scaler.load_state_dict(self.saved["scaler"])
        set_rng_state(self.saved["rng"])
        return TrainState.from_dict(self.saved["state"], main=trainer.dist.main)

    def changed(self, args) -> list[str]:
        """"--flag saved → now" for each flag of `args` that differs from the checkpoint's run, leaving out those
        that change where and how fast it runs but not what it computes."""
        saved = self.saved.get("args") or {}
        return [f"--{k.replace('_', '-')} {saved[k]} → {v}" for k, v in sorted(vars(args).items())
                if k in saved and k not in SAME_RUN and saved[k] != v and not (k in ARCHITECTURE and v is None)]

    def keep_architecture(self, args) -> None:
        """Set the flags that chose the model to the checkpoint run's: the model is the checkpoint's, and the
        run's config and later checkpoints must not say otherwise (nor the next resume report them changed)."""
        saved = self.saved.get("args") or {}
        for k in ARCHITECTURE:
            if k in saved:
                setattr(args, k, saved[k])

    @property
    def rows_logged(self) -> int:
        """How many `metrics.jsonl` rows were written when the checkpoint was."""
        return self.saved["metrics_lines"]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
