"""Every cache of the app, in one place.

Heavy results are keyed by content: models in `st.cache_resource` (by checkpoint path and modification
time), decoded clips and derived maps in `st.cache_data` (by the clip file's SHA-256 and the sampling),
each with a bounded number of entries. Results computed with progress bars, which cannot run inside
`st.cache_data`, go to a bounded process-wide store (`results()`).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from analysis.attribution import timed_forward
from analysis.complexity import sweep
from analysis.maps import query_map, recorded_forward, summary_table, takes_part
from analysis.rollout import rollout
from analysis.temporal import temporal_evidence as evidence_about_time
from app import settings
from timesformer import TimeSformer, TimeSformerConfig, load_model, shipped, transfer
from timesformer.distributed import resolve_device
from timesformer.engine import predict
from timesformer.video import denormalize, read_clip

# --------------------------------------------------------------------------------------------------
# Files and models


def file_digest(path: Path) -> str:
    """SHA-256 of a file, computed once per (path, modification time, size)."""
    stat = Path(path).stat()
    return _file_digest(str(path), stat.st_mtime_ns, stat.st_size)


@st.cache_data(max_entries=256, show_spinner=False)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_key(source: str) -> tuple[str, float]:
    """(source, modification time) of a checkpoint, so a re-written folder is reloaded; 0 for hub ids."""
    p = Path(source).expanduser()
    if p.is_dir():
        stamp = max((f.stat().st_mtime for f in p.iterdir() if f.is_file()), default=0.0)
    else:
        stamp = p.stat().st_mtime if p.exists() else 0.0
    return str(source), stamp


def device() -> torch.device:
    """Where the app's models run (settings.DEVICE, from TSLAB_DEVICE; `auto`: the GPU where there is one).
    A device that is not there is a one-line `SystemExit` naming TSLAB_DEVICE (the sidebar shows it)."""
    return resolve_device(settings.DEVICE, setting="TSLAB_DEVICE={}")


# 8 entries: the Schemes page holds the five shipped scheme models beside the current one
@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _load(source: str, stamp: float, device: str) -> TimeSformer:
    return load_model(source, device)


def get_model(mkey: tuple[str, float]) -> TimeSformer:
    return _load(*mkey, str(device()))


def on_model(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the device of `model` (clips are decoded and cached on the CPU)."""
    return x.to(model.device)


@st.cache_data(max_entries=64, show_spinner=False)
def model_card(mkey: tuple[str, float]) -> dict:
    """The front matter of the model card beside a checkpoint folder (shipped models have one), else {}."""
    return shipped.card(mkey[0]) if Path(mkey[0]).is_dir() else {}


def shipped_schemes(folder: Path, task: str = shipped.TEMPORAL) -> dict[str, tuple[str, float]]:
    """{attention_type: model key} of the shipped models trained on `task`, one per scheme."""
    stamp = folder.stat().st_mtime if folder.is_dir() else 0.0  # a model added or removed changes it
    return {s: model_key(str(p)) for s, p in _shipped_schemes(str(folder), task, stamp).items()}


@st.cache_data(max_entries=8, show_spinner=False)
def _shipped_schemes(folder: str, task: str, stamp: float) -> dict[str, Path]:
    return shipped.scheme_models(task, Path(folder))


@st.cache_resource(max_entries=8, show_spinner="Building the model of that scheme…")
def _scheme_model(mkey: tuple[str, float], scheme: str) -> tuple[TimeSformer, int, int]:
    """The current model rebuilt with another attention scheme (`timesformer.transfer`). Not trained."""
    torch.manual_seed(0)
    return transfer(get_model(mkey), attention_type=scheme)


def scheme_model(mkey, scheme: str) -> tuple[TimeSformer, str]:
    """(model, label): the current model itself for its own scheme, else a derived, untrained variant."""
    base = get_model(mkey)
    if scheme == base.config.attention_type:
        return base, "the current model"
    model, copied, total = _scheme_model(mkey, scheme)
    return model, (f"derived from the current weights ({copied}/{total} tensors copied; new steps start at zero, "
                   "untrained)")


# --------------------------------------------------------------------------------------------------
# Clips


@dataclass(frozen=True)
class ClipKey:
    path: str
    sha: str
    num_frames: int
    size: int
    sampling_rate: int  # 0 = spread over the whole video (or the window)
    start: float = 0.0  # the part of the video sampled, in seconds (end 0: to the end)
    end: float = 0.0


@st.cache_data(max_entries=16, show_spinner="Decoding the clip…")
def decode(ckey: ClipKey) -> tuple[torch.Tensor, np.ndarray, dict]:
    """(views (3, 3, T, S, S) normalised, centre-crop frames (T, S, S, 3) uint8, info) of a clip."""
    window = None if (ckey.start, ckey.end) == (0.0, 0.0) else (ckey.start, ckey.end or None)
    views, info = read_clip(ckey.path, num_frames=ckey.num_frames, sampling_rate=ckey.sampling_rate, size=ckey.size,
                            spatial_crops=3, window=window)
    frames = denormalize(views[len(views) // 2])
    meta = {"fps": info.fps, "num_frames": info.num_frames, "indices": list(info.indices),
            "width": info.width, "height": info.height, "backend": info.backend, "duration": info.duration}
    return views, frames, meta


def _centre(ckey: ClipKey, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(all views, the centre view as a batch of one) of a decoded clip, on the device of `model`."""
    views = on_model(model, decode(ckey)[0])
    return views, views[len(views) // 2 :][:1]


# --------------------------------------------------------------------------------------------------
# Derived results, keyed by (model, clip, parameters)


@st.cache_data(max_entries=64, show_spinner="Classifying the 3 crops…")
def predictions(mkey, ckey: ClipKey) -> dict:
    model = get_model(mkey)
    return predict(model, _centre(ckey, model)[0], k=5)


@st.cache_data(max_entries=64, show_spinner="Recording the attention of this layer…")
def layer_maps(mkey, ckey: ClipKey, layer: int, query, head) -> dict[str, np.ndarray]:
    """{step: (T, H_p, W_p)} attention of `query` in `layer`, one forward recording that layer only; None for
    a step the query takes no part in (cls in a time step)."""
    model = get_model(mkey)
    _, rec = recorded_forward(model, _centre(ckey, model)[1], layers=[layer])
    return {m.step: query_map(m, query, head)[0].cpu().numpy() if takes_part(m, query) else None for m in rec}


def _run(model: TimeSformer, ckey: ClipKey) -> dict:
    """One recorded forward of the clip's centre crop: top-5 (3 crops), the cls rollout and the summary numbers
    of every layer and step."""
    views, centre = _centre(ckey, model)
    _, rec = recorded_forward(model, centre)
    return {"top": predict(model, views, k=5)["video"], "rollout": rollout(rec, query="cls")[0].cpu().numpy(),
            "summary": summary_table(rec)}


@st.cache_data(max_entries=32, show_spinner=False)
def scheme_run(mkey, ckey: ClipKey, scheme: str) -> dict:
    """`_run` through the model of `scheme` derived from the current model (`scheme_model`), with its label."""
    model, label = scheme_model(mkey, scheme)
    return {"label": label, **_run(model, ckey)}


@st.cache_data(max_entries=32, show_spinner=False)
def model_run(mkey, ckey: ClipKey) -> dict:
    """`_run` through the model of `mkey` itself (a shipped model of one scheme)."""
    return _run(get_model(mkey), ckey)


@st.cache_data(max_entries=16, show_spinner="Timing one forward pass…")
def forward_seconds(mkey, ckey: ClipKey) -> float:
    """Seconds of one forward of the clip's centre crop, the unit of the attribution cost estimates."""
    model = get_model(mkey)
    return timed_forward(model, _centre(ckey, model)[1])


@st.cache_data(max_entries=32, show_spinner="Estimating…")
def cost_curves(config_json: str, schemes: tuple, frames: tuple, sizes: tuple, gpu: float, opts: tuple) -> list[dict]:
    """`analysis.complexity.sweep` rows for a config (as JSON) at its own frames and size."""
    cfg = TimeSformerConfig.from_dict(json.loads(config_json))
    return sweep(cfg, schemes, frames, sizes, cfg.num_frames, cfg.img_size, gpu, **dict(opts))


class _Store:
    """A bounded, least-recently-used dict."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def get(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


@st.cache_resource
def results() -> _Store:
    """Attribution maps and deletion/insertion curves (computed with progress bars), process-wide."""
    return _Store(64)


# --------------------------------------------------------------------------------------------------
# Explanations: benchmark scores and the evidence about time


def explanation_scores(mkey) -> tuple[str | None, dict]:
    """(model, {method: mean scores}) from `tslab bench explain`: the current model's own scores if it was
    benchmarked — in `settings.EXPLAIN_RESULTS`, or in an `explain-*.json` of `tslab bench explain --data` in the
    folder the app was started in — else those of the shipped distractor model (or the first one benchmarked)."""
    name = Path(mkey[0]).name
    files = [settings.EXPLAIN_RESULTS, *sorted(settings.WORKDIR.glob("explain-*.json"))]
    found = [_benchmark(str(p), p.stat().st_mtime) for p in files if p.is_file()]
    own = next((models[name] for models in found if name in models), None)
    if own is not None:
        return name, own
    benchmarked = found[0] if found and settings.EXPLAIN_RESULTS.is_file() else {}
    if not benchmarked:
        return None, {}
    name = next((n for n in benchmarked if "distractor" in n), next(iter(benchmarked)))
    return name, benchmarked[name]


@st.cache_data(max_entries=16, show_spinner=False)
def _benchmark(path: str, stamp: float) -> dict:
    try:
        return json.loads(Path(path).read_text()).get("models", {}) if stamp else {}
    except (OSError, ValueError):
        return {}


@st.cache_data(max_entries=32, show_spinner="Testing the frame order and the relevance per step…")
def temporal_evidence(mkey, ckey: ClipKey, target: int | None) -> dict:
    """The target's probability with the frames reversed, shuffled and frozen, and (for schemes with a time
    step) the share of LRP relevance through each attention step, layer by layer."""
    model = get_model(mkey)
    e = evidence_about_time(model, _centre(ckey, model)[1], target)
    return {"target": int(e["target"][0]), "order_effects": {k: float(v[0]) for k, v in e["order_effects"].items()},
            "step_shares": e["step_shares"]}
