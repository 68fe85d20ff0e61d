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
from analysis.maps import query_map, recorded_forward, summary_table
from analysis.rollout import rollout
from timesformer import TimeSformer, TimeSformerConfig, load_model, transfer
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


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _load(source: str, stamp: float) -> TimeSformer:
    return load_model(source).eval()


def get_model(mkey: tuple[str, float]) -> TimeSformer:
    return _load(*mkey)


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
    sampling_rate: int  # 0 = spread over the whole video


@st.cache_data(max_entries=16, show_spinner="Decoding the clip…")
def decode(ckey: ClipKey) -> tuple[torch.Tensor, np.ndarray, dict]:
    """(views (3, 3, T, S, S) normalised, centre-crop frames (T, S, S, 3) uint8, info) of a clip."""
    views, info = read_clip(ckey.path, num_frames=ckey.num_frames, sampling_rate=ckey.sampling_rate, size=ckey.size,
                            spatial_crops=3)
    frames = denormalize(views[len(views) // 2])
    meta = {"fps": info.fps, "num_frames": info.num_frames, "indices": list(info.indices),
            "width": info.width, "height": info.height, "backend": info.backend}
    return views, frames, meta


def _centre(ckey: ClipKey) -> tuple[torch.Tensor, torch.Tensor]:
    """(all views, the centre view as a batch of one) of a decoded clip."""
    views = decode(ckey)[0]
    return views, views[len(views) // 2 :][:1]


# --------------------------------------------------------------------------------------------------
# Derived results, keyed by (model, clip, parameters)


@st.cache_data(max_entries=64, show_spinner="Classifying the 3 crops…")
def predictions(mkey, ckey: ClipKey) -> dict:
    return predict(get_model(mkey), decode(ckey)[0], k=5)


@st.cache_data(max_entries=64, show_spinner="Recording the attention of this layer…")
def layer_maps(mkey, ckey: ClipKey, layer: int, query, head) -> dict[str, np.ndarray]:
    """{step: (T, H_p, W_p)} attention of `query` in `layer`, one forward recording that layer only."""
    _, rec = recorded_forward(get_model(mkey), _centre(ckey)[1], layers=[layer])
    return {m.step: query_map(m, query, head)[0].numpy() for m in rec}


@st.cache_data(max_entries=32, show_spinner=False)
def scheme_run(mkey, ckey: ClipKey, scheme: str) -> dict:
    """One forward of the clip's centre crop through the model of `scheme`: top-5, the cls rollout and
    the summary numbers of every layer and step."""
    model, label = scheme_model(mkey, scheme)
    views, centre = _centre(ckey)
    _, rec = recorded_forward(model, centre)
    return {"label": label, "top": predict(model, views, k=5)["video"],
            "rollout": rollout(rec, query="cls")[0].numpy(), "summary": summary_table(rec)}


@st.cache_data(max_entries=16, show_spinner="Timing one forward pass…")
def forward_seconds(mkey, ckey: ClipKey) -> float:
    """Seconds of one forward of the clip's centre crop, the unit of the attribution cost estimates."""
    return timed_forward(get_model(mkey), _centre(ckey)[1])


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
