"""`tslab explain CLIP... --out DIR` (also `python -m analysis.report`): attention pictures and numbers of clips.

Writes into DIR (for several clips, into a folder of DIR per clip, named by its file, the model loaded once, and
`DIR/summary.csv`: the summary numbers of every layer and step averaged over the clips)
- `predictions.json`: top-5 (clip and 3-crop video level), the grid, and the summary numbers of every
  layer and step (entropy, attention distance in space and time, same-frame / other-frame / cls shares);
- `frames.png` (the sampled, cropped frames), `attention_<step>.png` (the query's attention in the chosen
  layer, per step) and `rollout.png`, each a grid of frames with the map overlaid;
- `attention_<step>.<gif|mp4>` and `rollout.<gif|mp4>`: the same as overlay videos (a step the query takes
  no part in — `cls` in a time step — has no map; predictions.json says so under `not_drawn`);
- with `--methods`, `explain_<method>.png/.<gif|mp4>`: any method of `analysis.EXPLANATIONS` for `--target`;
- with `--temporal`, the evidence about time in predictions.json: the target's probability with the frames
  reversed, shuffled and frozen, and the share of LRP relevance through each attention step per layer;
- `pattern_<scheme>.png` and `.svg`: the paper's patch diagram for the clip's grid and the query;
- `maps.npz`: the numbers behind the pictures, for your own analysis: `frames`, the sampled and cropped frames
  the model saw (T, S, S, 3) uint8, and every map drawn, under the name of its files (`attention_<step>`,
  `rollout`, `explain_<method>`), float32 (T, H_p, W_p) on the patch grid (`numpy.load(path)[name]`).
Without `--checkpoint` it uses the shipped default model (`timesformer.shipped.DEFAULT_MODEL`). A clip's folder
ends up with this run's files only: those a previous run listed in its predictions.json are replaced, nothing else
(`fresh_files`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from analysis.attribution import BASELINES
from analysis.explanations import EXPLANATIONS, explain
from analysis.maps import query_map, recorded_forward, summary_table, takes_part
from analysis.media import grid_image, overlay, png_bytes, save_pattern, upscale, write_animation
from analysis.rollout import rollout
from analysis.temporal import temporal_evidence
from timesformer import ATTENTION_TYPES, CheckpointError, load_model
from timesformer.cli import HelpFormatter, OneLineErrors, at_least
from timesformer.distributed import resolve_device
from timesformer.engine import predict
from timesformer.files import make_folder, write_csv
from timesformer.shipped import DEFAULT_MODEL
from timesformer.video import SPREAD, VideoError, denormalize, read_clip

MAX_SCALE = 2048  # --scale: 8 frames of 2048² are ~100 MB of pixels, and the overlays a few times that


def parse_query(text: str):
    """'cls' or 't,h,w'."""
    if text == "cls":
        return "cls"
    try:
        t, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"query must be 'cls' or t,h,w (e.g. 3,4,4), got {text!r}") from None
    return (t, h, w)


def parse_baseline(text: str):
    """A number (normalised units; 0 = the dataset's mean colour) or a name in BASELINES."""
    if text in BASELINES:
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"baseline must be a number or one of {', '.join(BASELINES)}, "
                                         f"got {text!r}") from None
    if not math.isfinite(value):  # nan or inf would make every removed patch, and so the whole map, nan
        raise argparse.ArgumentTypeError(f"baseline must be a finite number, got {text!r}")
    return value


def parse_head(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = OneLineErrors(prog=prog or "python -m analysis.report", description=__doc__.split("\n\n")[0],
                       formatter_class=HelpFormatter)
    ap.add_argument("clip", nargs="+", help="video files (mp4, webm, avi, mov, mkv, gif); with several, --out holds a "
                                            "folder per clip, the model loaded once")
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--checkpoint", default=None, help="any checkpoint load_model opens (default: shipped model)")
    ap.add_argument("--scheme", nargs="+", choices=ATTENTION_TYPES, default=None,
                    help="schemes to draw patch diagrams for (default: the model's)")
    ap.add_argument("--query", type=parse_query, default="cls", help="'cls' or a patch t,h,w")
    ap.add_argument("--layer", type=int, default=-1, help="layer whose attention is drawn (-1: the last)")
    ap.add_argument("--head", type=parse_head, default="mean", help="head index or mean/max/min")
    ap.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: drop the weakest share of weights")
    ap.add_argument("--sampling-rate", type=at_least(0), default=SPREAD,
                    help="frames between samples (default 0: spread the frames over the whole clip)")
    ap.add_argument("--start", type=float, metavar="SECONDS",
                    help="sample the part of the video from this time (default: its start)")
    ap.add_argument("--end", type=float, metavar="SECONDS", help="... to this time (default: its end)")
    ap.add_argument("--crops", type=int, choices=(1, 3), default=3, help="spatial crops for the video-level score")
    ap.add_argument("--format", choices=("gif", "mp4"), default="gif", help="overlay video format")
    ap.add_argument("--scale", type=at_least(1, MAX_SCALE), default=256,
                    help=f"upscale frames to at least this many pixels (at most {MAX_SCALE})")
    ap.add_argument("--methods", nargs="+", choices=list(EXPLANATIONS), default=[],
                    help="also draw these explanations of --target (e.g. gae lrp)")
    ap.add_argument("--target", default=None, help="class name or index to explain (default: the predicted class)")
    ap.add_argument("--baseline", type=parse_baseline, default="temporal_median",
                    help="what a removed patch becomes, for --methods that remove or interpolate: a number "
                         f"(0 = the mean colour) or one of {', '.join(BASELINES)}")
    ap.add_argument("--temporal", action="store_true", help="also measure the evidence about time")
    ap.add_argument("--device", default="auto",
                    help="where the model runs: auto (CUDA where available, else the CPU), cpu, cuda, cuda:1, ...")
    return ap


def run(args, clip, out: Path, model, source, target: int | None) -> dict:
    """Explain `clip` with `model` (loaded from `source`, on its device) into the folder `out`, as `args` say;
    the explanations of `--methods` for class `target` (None: the predicted one). `out` ends up holding this
    run's files, not a previous run's (`fresh_files`)."""
    with fresh_files(out) as stage:
        return _explain(args, clip, stage, model, source, target)


@contextlib.contextmanager
def fresh_files(out: Path):
    """`with fresh_files(out) as stage:` write one clip's files into `stage`; when the block ends, the files a
    previous `tslab explain` wrote into `out` are removed and the new ones moved in.

    A previous run's files are those its `predictions.json` lists under "files", by plain name (nothing outside
    `out`, no folders): `out` may be a folder of the user's, whose other files stay. An exception leaves `out` as
    it was (and removes it if this call made it)."""
    made = not Path(out).is_dir()
    out = make_folder(out)
    stage = Path(tempfile.mkdtemp(prefix=".explain-", dir=out))  # in `out`: same file system, so moves are renames
    try:
        yield stage
        for old in _previous_files(out):
            old.unlink(missing_ok=True)
        for new in sorted(stage.iterdir(), key=lambda f: f.name == "predictions.json"):  # the list of files last
            os.replace(new, out / new.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):  # only if empty: a run that failed leaves no folder behind
                out.rmdir()


def _previous_files(out: Path) -> list[Path]:
    """The files that `out/predictions.json` says a previous run wrote, by plain name only."""
    try:
        listed = json.loads((out / "predictions.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):  # none, not JSON, not an object
        return []
    names = listed if isinstance(listed, list) else []
    return [out / n for n in names if isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n
            and (out / n).is_file()]


def _explain(args, clip, out: Path, model, source, target: int | None) -> dict:
    """`run`'s work, writing into the empty folder `out`."""
    t0 = time.perf_counter()
    device = model.device
    cfg = model.config
    T, H, W = cfg.grid
    window = None if args.start is None and args.end is None else (args.start or 0.0, args.end)
    views, info = read_clip(clip, num_frames=cfg.num_frames, size=cfg.img_size, sampling_rate=args.sampling_rate,
                            spatial_crops=args.crops, window=window)
    views = views.to(device)
    centre = views[len(views) // 2 : len(views) // 2 + 1]
    layer = args.layer % cfg.depth
    logits, rec = recorded_forward(model, centre)
    preds = predict(model, views, k=5)
    frames = upscale(denormalize(centre[0]), args.scale)
    (out / "frames.png").write_bytes(png_bytes(grid_image(frames)))
    layer_maps = [m for m in rec if m.layer == layer]
    maps = {f"attention_{m.step}": query_map(m, args.query, args.head)[0] for m in layer_maps
            if takes_part(m, args.query)}
    not_drawn = {f"attention_{m.step}": f"{args.query} takes no part in the {m.step} step" for m in layer_maps
                 if not takes_part(m, args.query)}
    maps["rollout"] = rollout(rec, discard_ratio=args.discard_ratio, query=args.query)[0]
    for i, method in enumerate(args.methods, 1):  # some take minutes on a CPU: say which one runs
        print(f"explaining with {method} ({i} of {len(args.methods)})", file=sys.stderr, flush=True)
        options = EXPLANATIONS[method].pick({"baseline": args.baseline})
        maps[f"explain_{method}"] = explain(model, centre, method, target=target, **options)[0]
    written = ["frames.png", "maps.npz"]
    arrays = {name: grid_map.detach().float().cpu().numpy() for name, grid_map in maps.items()}
    np.savez_compressed(out / "maps.npz", frames=denormalize(centre[0]), **arrays)
    for name, grid_map in maps.items():
        over = overlay(frames, grid_map)
        (out / f"{name}.png").write_bytes(png_bytes(grid_image(over)))
        write_animation(out / f"{name}.{args.format}", over)
        written += [f"{name}.png", f"{name}.{args.format}"]
    for scheme in args.scheme or [cfg.attention_type]:
        query = args.query if args.query != "cls" else (T // 2, H // 2, W // 2)
        for suffix in (".png", ".svg"):
            save_pattern(out / f"pattern_{scheme}{suffix}", scheme, (T, H, W), query,
                         local_split=cfg.local_split, global_stride=cfg.global_stride)
            written.append(f"pattern_{scheme}{suffix}")
    report = {
        "clip": str(clip),
        "checkpoint": str(source),
        "device": str(device),
        "attention_type": cfg.attention_type,
        "grid": [T, H, W],
        "clip_info": {"fps": info.fps, "num_frames": info.num_frames, "duration": info.duration,
                      "indices": info.indices, "width": info.width, "height": info.height, "window": window},
        "query": args.query,
        "layer": layer,
        "head": args.head,
        "top5_clip": [{"class": c, "prob": p} for c, p in preds["clip"]],
        "top5_video": [{"class": c, "prob": p} for c, p in preds["video"]],
        "logits": logits[0].tolist(),
        "summary": summary_table(rec),
        "not_drawn": not_drawn,
        "baseline": args.baseline,
        # the class the explanation maps (--methods) are of: --target, else the predicted one
        "explained_class": (model.class_names[target if target is not None else int(logits[0].argmax())]
                            if args.methods else None),
        "files": written + ["predictions.json"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if args.temporal:
        print("measuring the evidence about time", file=sys.stderr, flush=True)
        e = temporal_evidence(model, centre, target)
        report["temporal"] = {"target": model.class_names[int(e["target"][0])],
                              "order_effects": {k: float(v[0]) for k, v in e["order_effects"].items()},
                              "step_shares": e["step_shares"]}
    (out / "predictions.json").write_text(json.dumps(report, indent=2))
    return report


def _target(text: str | None, names: list[str]) -> int | None:
    """A class given by name or index → its index (None: the predicted class)."""
    if text is None:
        return None
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and -len(names) <= int(text) < len(names):
        return int(text) % len(names)
    if text.lstrip("-").isdigit():
        raise ValueError(f"--target {text}: the model has {len(names)} classes (0 to {len(names) - 1})")
    raise ValueError(f"--target {text!r} is neither a class of this model ({', '.join(names)}) nor an index")


def main(argv=None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.target is not None and not (args.methods or args.temporal):  # it chose nothing to explain
        parser.error("--target names the class --methods and --temporal explain: give one of them")
    source = args.checkpoint or DEFAULT_MODEL
    try:  # what holds for every clip is checked once, before the first
        model = load_model(source).to(resolve_device(args.device))
        depth = model.config.depth
        if not -depth <= args.layer < depth:
            raise ValueError(f"--layer {args.layer}: this model has {depth} layers (0 to {depth - 1}; -1: the last)")
        target = _target(args.target, model.class_names)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed, summaries = 0, []
    for clip, out in zip(args.clip, folders(args.clip, args.out)):
        try:
            report = run(args, clip, out, model, source, target)
        except (VideoError, CheckpointError, ValueError, OSError) as e:
            print(f"error: {e}" if str(clip) in str(e) else f"error: {clip}: {e}", file=sys.stderr)  # name it once
            failed += 1
            continue
        summaries.append(report["summary"])
        top = report["top5_video"][0]
        print(f"{clip}: {top['class']} ({top['prob']:.1%}, {len(report['top5_video'])} classes shown); "
              f"wrote {len(report['files'])} files to {out} in {report['seconds']:.1f} s", flush=True)
    if len(args.clip) > 1 and summaries:
        rows = mean_summary(summaries)
        write_csv(args.out / "summary.csv", rows)
        print(f"wrote {args.out / 'summary.csv'}: every layer and step's numbers averaged over {len(summaries)} "
              "clips", flush=True)
    if failed and len(args.clip) > 1:
        print(f"{failed} of {len(args.clip)} clips could not be explained", file=sys.stderr)
    return 2 if failed else 0


def mean_summary(summaries: list[list[dict]]) -> list[dict]:
    """The summary numbers of every layer and step (`analysis.maps.summary_table`), averaged over clips."""
    out = []
    for rows in zip(*summaries):
        numbers = [k for k, v in rows[0].items() if isinstance(v, float)]
        out.append({"layer": rows[0]["layer"], "step": rows[0]["step"], "clips": len(rows),
                    **{k: sum(r[k] for r in rows) / len(rows) for k in numbers}})
    return out


def folders(clips: list[str], out: Path) -> list[Path]:
    """Where each clip's files go: `out` itself for one clip; for several, a folder in `out` per clip, named by
    its file (numbered where two files share a name)."""
    if len(clips) == 1:
        return [out]
    stems = [Path(c).stem or "clip" for c in clips]
    return [out / (s if stems.count(s) == 1 else f"{s}-{i}") for i, s in enumerate(stems)]


if __name__ == "__main__":
    sys.exit(main())
