"""Reading a run folder, while it trains or after: the rows of `metrics.jsonl`, how the run ended (the last
line of `log.txt`) and the summary a table comparing runs shows. `timesformer.runs` writes these folders; the
app's Training runs page reads them."""

from __future__ import annotations

import json
from pathlib import Path

METRICS = "metrics.jsonl"


# how the last line of log.txt begins when a run ended with a word (Run.finished, Run.stopped)
ENDINGS = {"finished": ("finished at step ",),
           "stopped": ("stopped by ", "the GPU ran out of memory ", "training stopped: ")}


def ending(path: Path) -> tuple[str, str] | None:
    """How the run in folder `path` ended, from the last line of its log: ("finished" or "stopped", the line), or
    None where there is no such line (it is still training, or a kill or a crash ended it without a word)."""
    log = Path(path) / "log.txt"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    last = next((line for line in reversed(lines) if line.strip()), "")
    return next(((kind, last) for kind, starts in ENDINGS.items() if last.startswith(starts)), None)


def rank(val_row: dict) -> tuple[float, float]:
    """How validation rows rank (the higher the better): by accuracy, then by the lower loss."""
    return val_row["acc1"], -val_row.get("loss", 0.0)


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The rows of the run folder `path`'s `metrics.jsonl` (dicts with an integer step, a split and numbers where
    numbers go: `NUMBERS`), and how many of its lines are not such rows (a line cut short by a kill, an edit)."""
    file = Path(path) / METRICS
    rows, bad = [], 0
    for line in file.read_text(errors="replace").splitlines() if file.is_file() else []:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if _is_row(row):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


# the numbers a metrics row may hold: a row with a word where one of them goes is no row (a hand edit, another tool)
NUMBERS = ("epoch", "step", "loss", "acc1", "acc5", "clips", "lr", "clips_per_s", "wall_s", "data_wait", "skipped")


def _is_row(row) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("split"), str) and isinstance(row.get("step"), int)
            and all(isinstance(row[k], (int, float)) and not isinstance(row[k], bool) for k in NUMBERS if k in row))


def run_summary(path: Path) -> dict:
    """What a table comparing runs shows of the run folder `path`: its scheme, data, preset, frames and crop (from
    `train_config.yaml`), the last step logged, the best validation accuracy and its step, the last validation's,
    the median training clips/s over its epochs, and how it ended (`ending`)."""
    import yaml

    try:
        config = yaml.safe_load((Path(path) / "train_config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    config = config if isinstance(config, dict) else {}
    args, model = (config.get(k) if isinstance(config.get(k), dict) else {} for k in ("args", "model"))
    rows = read_metrics(path)[0]
    val = [r for r in rows if r["split"] == "val" and "acc1" in r]
    best = max(val, key=rank, default=None)
    speeds = sorted(r["clips_per_s"] for r in rows if r["split"] == "train" and "clips_per_s" in r)
    ended = ending(path)
    return {"scheme": model.get("attention_type"), "data": args.get("data"), "preset": args.get("preset"),
            "frames": model.get("num_frames"), "crop": model.get("img_size"),
            "steps": max((r["step"] for r in rows), default=0),
            "best val acc1": best["acc1"] if best else None, "at step": best["step"] if best else None,
            "last val acc1": val[-1]["acc1"] if val else None,
            "clips/s": speeds[len(speeds) // 2] if speeds else None,
            "ended": ended[0] if ended else "no final line"}


def holds_run(path: Path) -> str | None:
    """What of a training run the folder `path` holds (its checkpoints, its metrics), or None."""
    checkpoints = [p.name for p in path.glob("ckpt-*") if p.is_dir()] if path.is_dir() else []
    rows = len((path / METRICS).read_text().splitlines()) if (path / METRICS).is_file() else 0
    found = ([f"{len(checkpoints)} checkpoint{'s' * (len(checkpoints) != 1)}"] if checkpoints else []) + \
        ([f"{rows} metrics row{'s' * (rows != 1)}"] if rows else [])
    return ", ".join(found) or None
