"""The explanation benchmark: every method of `analysis.EXPLANATIONS` scored on held-out SynthMotion clips,
whose evidence has a known place (`SynthMotion.object_masks`), or on any clips (a researcher's own videos),
whose evidence has none. For each method: agreement with the ground truth where there is one
(`analysis.grounding`), faithfulness (deletion and insertion AUC, `analysis.faithfulness`), the
model-randomisation sanity check (`analysis.sanity`) and the cost (clip evaluations and milliseconds per clip);
a random map is the row every method must beat. `tslab bench explain` runs it on the shipped models, or on
any checkpoint and data.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from analysis.explanations import EXPLANATIONS, explain
from analysis.faithfulness import curves_cost, deletion_insertion, random_map
from analysis.grounding import grounding_scores, object_cells, used_frames
from analysis.sanity import PASS_BELOW, cascading_randomisation, similarity_curve
from timesformer.data import Skipped

# options that keep every method affordable on a CPU for a benchmark (the defaults otherwise)
BENCH_OPTIONS = {"integrated_gradients": {"n_steps": 32}, "occlusion": {"window": (1, 1)}}
# methods that replace what they remove are also scored with the video baselines, as rows "method|baseline"
VIDEO_BASELINES = ("temporal_mean", "temporal_median", "blur", "frozen_frame")
# a frame is removed into this baseline to find the frames a model uses (`analysis.grounding.used_frames`)
FRAME_BASELINE = "temporal_median"


def row_name(method: str, baseline=None) -> str:
    """The benchmark row of `method` run with `baseline`: "method|baseline" for a named (video) baseline of a
    method that takes one, else the method itself (a number or None: the constant baseline)."""
    takes = "baseline" in EXPLANATIONS[method].options
    return f"{method}|{baseline}" if takes and isinstance(baseline, str) else method


def rows_of(method: str) -> list[str]:
    """The benchmark rows of a method: itself, and one per video baseline where it takes a baseline."""
    if "baseline" not in EXPLANATIONS[method].options:
        return [method]
    return [method] + [row_name(method, b) for b in VIDEO_BASELINES]


def all_rows(methods=None) -> list[str]:
    """The rows of a benchmark of `methods` (default: every registered one), `rows_of` each, then "random"."""
    return [row for method in (methods or EXPLANATIONS) for row in rows_of(method)] + ["random"]


def _split(row: str) -> tuple[str, dict]:
    """A benchmark row → (method, its options)."""
    method, _, baseline = row.partition("|")
    options = dict(BENCH_OPTIONS.get(method, {}))
    if baseline:
        options["baseline"] = baseline
    return method, options


def clips(dataset, count: int, skipped: list[Skipped] | None = None
          ) -> tuple[torch.Tensor, list[dict[str, np.ndarray]] | None, torch.Tensor]:
    """(videos (n, 3, T, S, S), masks, labels) of the first `count` readable clips of `dataset` (the centre view
    of each): a SynthMotion set, or any dataset of `timesformer.data` (a clip that cannot be read is passed over,
    and added to `skipped`). masks: per clip {object: bool (T, H_p, W_p) cells} where the dataset knows where
    its evidence is (`object_masks`), else None."""
    videos, cells, labels = [], [], []
    known = hasattr(dataset, "object_masks")
    for i in range(len(dataset)):
        if len(videos) == count:
            break
        item = dataset[i]
        if isinstance(item, Skipped):
            if skipped is not None:
                skipped.append(item)
            continue
        video, label, _ = item
        videos.append(video[len(video) // 2])
        if known:
            cells.append(dataset.object_masks(i))
        labels.append(label)
    if not videos:
        raise ValueError(f"none of the {len(dataset)} clips could be read")
    return torch.stack(videos), cells if known else None, torch.tensor(labels)


def frame_drops(model, videos: torch.Tensor, target: torch.Tensor, batch: int = 8) -> np.ndarray:
    """(B, T) drop of the target's logit when one frame is removed into FRAME_BASELINE."""
    drops = [explain(model, videos[i : i + batch], "ablation_frames", target=target[i : i + batch],
                     baseline=FRAME_BASELINE)[:, :, 0, 0] for i in range(0, len(videos), batch)]
    patch = model.config.patch_size
    return torch.cat(drops).cpu().numpy() / (3 * patch * patch)  # the map sums the drop over a cell's pixels


def score_method(model, videos: torch.Tensor, masks: list[dict] | None, row: str, target: torch.Tensor,
                 batch: int = 8, curve_steps: int = 16, sanity_clips: int = 8, seed: int = 0,
                 curve_baseline="temporal_mean", frames: np.ndarray | None = None) -> dict:
    """Mean scores of a benchmark row (a method, "method|baseline", or "random" for random maps) over the
    clips, explaining `target` (B,); the scores against ground truth only where there are `masks`; `frames`:
    bool (B, T), the frames the model uses in each clip (for the pointing in used frames). Every row's deletion
    and insertion curves remove patches into the same `curve_baseline`, so that their AUCs compare."""
    patch = model.config.patch_size
    grid = model.grid_of(videos[:1])
    method, options = _split(row)
    maps, seconds = [], 0.0
    for i in range(0, len(videos), batch):
        t0 = time.perf_counter()
        if method == "random":
            maps.append(torch.cat([random_map(grid, seed + i + j) for j in range(len(videos[i : i + batch]))]))
        else:
            # to the CPU inside the timing: a GPU's queued work counts
            maps.append(explain(model, videos[i : i + batch], method, target=target[i : i + batch], **options).cpu())
        seconds += time.perf_counter() - t0
    maps = torch.cat(maps)
    rows = []
    for i in range(len(videos)):
        row = {}
        if masks is not None:
            cells = object_cells(masks[i], patch)
            row = grounding_scores(maps[i], cells["signal"], cells.get("distractor"),
                                   None if frames is None else frames[i])
        curves = deletion_insertion(model, videos[i : i + 1], maps[i], target=int(target[i]), steps=curve_steps,
                                    baseline=curve_baseline)
        row.update(auc_deletion=curves.auc_deletion, auc_insertion=curves.auc_insertion)
        rows.append(row)
    keys = dict.fromkeys(k for r in rows for k in r)  # a clip without used frames has no used pointing
    values = {k: [r[k] for r in rows if k in r] for k in keys}
    out = {k: float(np.mean(v)) for k, v in values.items()}
    # the standard error of each mean over clips (clips are independent draws; a clip's frames are not)
    out["stderr"] = {k: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
                     for k, v in values.items()}
    out["ms_per_clip"] = 1000 * seconds / len(videos)
    if method != "random":
        cost = EXPLANATIONS[method].estimate(grid, **options)
        out.update(forwards=cost.forwards, backwards=cost.backwards)
        sub, sub_target = videos[:sanity_clips], target[:sanity_clips]
        stages = cascading_randomisation(model, lambda m: explain(m, sub, method, target=sub_target, **options),
                                         seed=seed)
        curve = similarity_curve(stages)
        out["randomisation"] = [{"stage": s, "spearman": v} for s, v in curve]
        out["sanity_pass"] = bool(curve[-1][1] < PASS_BELOW)
    return out


def estimated_seconds(model, clips: int, methods, forward_s: float, curve_steps: int = 16,
                      sanity_clips: int = 8) -> float:
    """How long `benchmark` takes on `clips` clips, from `forward_s`, the seconds of one clip's forward
    (`analysis.attribution.timed_forward`; a backward counts as two): each row's explanations of every clip,
    their deletion and insertion curves, the sanity check's explanations at every randomised stage, and the
    frame drops. Clips explained in batches run faster than this on a GPU: an upper estimate."""
    grid, depth = model.config.grid, model.config.depth
    curves = curves_cost(curve_steps).seconds(forward_s)
    total = clips * EXPLANATIONS["ablation_frames"].estimate(grid, baseline=FRAME_BASELINE).seconds(forward_s)
    for row in all_rows(methods):
        total += clips * curves
        if row != "random":
            method, options = _split(row)
            one = EXPLANATIONS[method].estimate(grid, **options).seconds(forward_s)
            total += clips * one + (depth + 1) * min(sanity_clips, clips) * one  # + the head and each block
    return total


def benchmark(model, held: tuple[torch.Tensor, list[dict] | None, torch.Tensor], methods=None,
              progress: Callable[[str], None] | None = None, **kwargs) -> dict[str, dict]:
    """{row: mean scores} for `methods` (default: every registered one; `rows_of` each) and "random", on `held`
    clips (what `clips` returns: scored against their ground truth too where they have masks), explaining the
    model's predicted classes; "_model" holds the accuracy and each frame's mean logit drop when it is removed
    (`frame_drops`). Runs on the model's device; the scores are computed on the CPU."""
    videos, masks, labels = held
    videos = videos.to(model.device)
    with torch.no_grad():
        predicted = model(videos).argmax(-1)
    drops = frame_drops(model, videos, predicted)
    kwargs["frames"] = np.stack([used_frames(d) for d in drops])
    results = {"_model": {"clips": len(videos), "accuracy": float((predicted.cpu() == labels).float().mean()),
                          "frame_drop": drops.mean(0).tolist(), "used_frames": float(kwargs["frames"].mean()),
                          "ground_truth": masks is not None}}
    for row in all_rows(methods):
        if progress is not None:
            progress(row)
        results[row] = score_method(model, videos, masks, row, predicted, **kwargs)
    return results
