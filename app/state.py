"""What every page of the app shares: the repo on sys.path, the model and clip the sidebar picked,
the caches, uploads, and small display helpers.

Heavy results live in Streamlit's caches, keyed by content: models in `st.cache_resource` (by checkpoint
path and modification time), decoded clips and derived maps in `st.cache_data` (by the clip file's SHA-256
and the sampling), both with a bounded number of entries. Pages call `current()` for the sidebar's choice
and stay thin: every computation is a call into `analysis/` or `timesformer/`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from analysis import attention as attention_pictures
from timesformer import CheckpointError, TimeSformer, load_model, transfer
from timesformer.video import VideoError, denormalize, read_clip

ROOT = Path(__file__).resolve().parents[1]

# The shipped assets; TSLAB_DEFAULT_MODEL / TSLAB_SAMPLES point the app elsewhere (the tests do).
DEFAULT_MODEL = Path(os.environ.get("TSLAB_DEFAULT_MODEL", ROOT / "assets" / "default_model"))
SAMPLES = Path(os.environ.get("TSLAB_SAMPLES", ROOT / "assets" / "samples"))
RUNS = Path(os.environ.get("TSLAB_RUNS", ROOT / "runs"))
VIDEO_TYPES = ["mp4", "webm", "avi", "mov", "mkv", "gif"]
CHECKPOINT_TYPES = ["pyth", "pth", "pt", "safetensors", "zip"]
MAX_VIDEO_FRAMES = 20_000  # about 11 minutes at 30 fps: longer videos are refused before any model runs
UPLOADS = Path(tempfile.gettempdir()) / "timesformer-lab-uploads"
MAX_STORED_UPLOADS = 32  # uploaded files kept on disk (the oldest go first)
SPAN_CLIP = 0  # sampling rate 0 in the sidebar: spread the frames evenly over the whole video
DISPLAY_PX = 128  # frames are upscaled (nearest) to at least this side for display
HEAVY_PARAMS = 20e6  # above this many parameters, five-scheme runs wait for a button (ViT-B: 86M-157M)


def max_upload_bytes() -> int:
    """The server's upload cap (`server.maxUploadSize`, MB), also enforced here (AppTest bypasses it)."""
    return int(st.get_option("server.maxUploadSize")) * 1024 * 1024


# --------------------------------------------------------------------------------------------------
# Uploads: written once to a temp folder named by their SHA-256, so every cache is keyed by content


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    st_ = Path(path).stat()
    return _file_digest(str(path), st_.st_mtime_ns, st_.st_size)


@st.cache_data(max_entries=256, show_spinner=False)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def store_upload(name: str, data: bytes) -> Path:
    """Write an uploaded file to UPLOADS/<sha>.<suffix> (once) and return the path."""
    UPLOADS.mkdir(parents=True, exist_ok=True)
    suffix = Path(name).suffix.lower()[:16]
    path = UPLOADS / f"{digest(data)[:24]}{suffix}"
    if not path.exists():
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        old = sorted(UPLOADS.iterdir(), key=lambda p: p.stat().st_mtime)[:-MAX_STORED_UPLOADS]
        for p in old:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return path


def unpack_zip(path: Path) -> Path:
    """A zipped checkpoint folder (ours or HuggingFace) → the extracted folder holding config.json."""
    out = path.with_suffix("")
    if not out.is_dir():
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                if any(n.startswith("/") or ".." in Path(n).parts for n in names):
                    raise CheckpointError(f"{path.name}: the zip has paths outside its folder")
                if sum(i.file_size for i in z.infolist()) > 8 * max(max_upload_bytes(), 1 << 30):
                    raise CheckpointError(f"{path.name}: the zip unpacks to an implausible size")
                tmp = Path(tempfile.mkdtemp(dir=UPLOADS))
                z.extractall(tmp)
                os.replace(tmp, out)
        except zipfile.BadZipFile:
            raise CheckpointError("the uploaded .zip is not a readable zip file") from None
    configs = sorted(out.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise CheckpointError("the uploaded .zip holds no config.json: zip a checkpoint folder "
                              "(ours: model.safetensors + config.json; HuggingFace: config.json + weights)")
    return configs[0].parent


# --------------------------------------------------------------------------------------------------
# Models


def _stamp(source: str) -> float:
    """Modification time of a local checkpoint (so a re-written folder is reloaded); 0 for hub ids."""
    p = Path(source).expanduser()
    if p.is_dir():
        return max((f.stat().st_mtime for f in p.iterdir() if f.is_file()), default=0.0)
    return p.stat().st_mtime if p.exists() else 0.0


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _load(source: str, stamp: float) -> TimeSformer:
    return load_model(source).eval()


def model_key(source: str) -> tuple[str, float]:
    return (str(source), _stamp(str(source)))


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
    rate = ckey.sampling_rate or 10**9  # longer than any video: frames spread over the whole clip
    views, info = read_clip(ckey.path, num_frames=ckey.num_frames, sampling_rate=rate, size=ckey.size,
                            spatial_crops=3)
    frames = denormalize(views[len(views) // 2])
    meta = {"fps": info.fps, "num_frames": info.num_frames, "indices": list(info.indices),
            "width": info.width, "height": info.height, "backend": info.backend}
    return views, frames, meta


def samples() -> list[Path]:
    if not SAMPLES.is_dir():
        return []
    return sorted(p for p in SAMPLES.iterdir() if p.suffix.lower().lstrip(".") in VIDEO_TYPES)


# --------------------------------------------------------------------------------------------------
# What the sidebar picked, for the pages


class Prompt(str):
    """A message that asks for input (shown as info), as opposed to an error."""


def show(where, message: str) -> None:
    (where.info if isinstance(message, Prompt) else where.error)(message)


@dataclass
class Context:
    mkey: tuple[str, float] | None = None
    model: TimeSformer | None = None
    model_label: str = ""
    model_error: str | None = None
    ckey: ClipKey | None = None
    clip_label: str = ""
    clip_error: str | None = None
    views: torch.Tensor | None = None
    frames: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def centre(self) -> torch.Tensor:
        """(1, 3, T, S, S): the centre crop, the view every map is drawn on."""
        return self.views[len(self.views) // 2 :][:1]

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.model.grid_of(self.centre)

    def need_model(self) -> TimeSformer:
        if self.model is None:
            show(st, self.model_error or Prompt("Pick a model in the sidebar."))
            st.stop()
        return self.model

    def need_clip(self) -> torch.Tensor:
        self.need_model()
        if self.views is None:
            show(st, self.clip_error or Prompt("Pick a clip in the sidebar: a sample or an upload."))
            st.stop()
        return self.views


def current() -> Context:
    """The sidebar's choice for this run (main.py sets it before the page runs)."""
    ctx = st.session_state.get("_ctx")
    return ctx if isinstance(ctx, Context) else Context(model_error="The app starts from app/main.py.")


def clip_id(ctx: Context) -> tuple:
    return (ctx.mkey, ctx.ckey)


# --------------------------------------------------------------------------------------------------
# Derived results: small cached functions, keyed by (model, clip, parameters)


@st.cache_data(max_entries=64, show_spinner="Classifying the 3 crops…")
def predictions(mkey, ckey: ClipKey) -> dict:
    from analysis.attention import predict

    return predict(get_model(mkey), decode(ckey)[0], k=5)


@st.cache_data(max_entries=64, show_spinner="Recording the attention of this layer…")
def layer_maps(mkey, ckey: ClipKey, layer: int, query, head) -> dict[str, np.ndarray]:
    """{step: (T, H_p, W_p)} attention of `query` in `layer`, one forward recording that layer only."""
    from analysis.attention import query_map
    from timesformer import record_attention

    model = get_model(mkey)
    views = decode(ckey)[0]
    centre = views[len(views) // 2 :][:1]
    with torch.no_grad(), record_attention(model, layers=[layer]) as rec:
        model(centre)
    return {m.step: query_map(m, query, head)[0].numpy() for m in rec}


@st.cache_data(max_entries=32, show_spinner=False)
def scheme_run(mkey, ckey: ClipKey, scheme: str) -> dict:
    """One forward of the clip's centre crop through the model of `scheme`: top-5, the cls rollout and
    the summary numbers of every layer and step."""
    from analysis.attention import predict, rollout, summary_table
    from timesformer import record_attention

    model, label = scheme_model(mkey, scheme)
    views = decode(ckey)[0]
    centre = views[len(views) // 2 :][:1]
    with torch.no_grad(), record_attention(model) as rec:
        model(centre)
    return {"label": label, "top": predict(model, views, k=5)["video"],
            "rollout": rollout(rec, query="cls")[0].numpy(), "summary": summary_table(rec)}


class Store:
    """A bounded, process-wide LRU for results computed with progress bars (which cannot run inside
    `st.cache_data`): attribution maps and deletion/insertion curves."""

    def __init__(self, size: int = 64):
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
def store() -> Store:
    return Store()


# --------------------------------------------------------------------------------------------------
# Display helpers


def upscale(frames: np.ndarray, at_least: int = DISPLAY_PX) -> np.ndarray:
    """Nearest-neighbour upscale of (T, H, W, 3) so small clips are visible."""
    return attention_pictures.upscale(frames, at_least)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: np.ndarray, fps: float = 4.0) -> bytes:
    buf = io.BytesIO()
    attention_pictures.save_gif(buf, frames, fps)
    return buf.getvalue()


def mp4_bytes(frames: np.ndarray, fps: float = 4.0) -> bytes:
    from analysis.cli import write_animation

    with tempfile.TemporaryDirectory() as d:
        path = write_animation(Path(d) / "overlay.mp4", frames, fps=fps)
        return path.read_bytes()


def have_browser() -> bool:
    """kaleido's PNG export needs a Chromium."""
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")) or \
        Path("/usr/bin/chromium").exists()


def download_figure(fig, name: str, key: str) -> None:
    """HTML and PNG downloads of a plotly figure; both are produced only when clicked."""
    c1, c2, _ = st.columns([1, 1, 3])
    c1.download_button("HTML", icon=":material/download:",
                       data=lambda: fig.to_html(include_plotlyjs=True), file_name=f"{name}.html",
                       mime="text/html", key=f"{key}_html", on_click="ignore")
    if have_browser():
        c2.download_button("PNG", icon=":material/download:",
                           data=lambda: fig.to_image(format="png", scale=2), file_name=f"{name}.png",
                           mime="image/png", key=f"{key}_png", on_click="ignore")


def download_frames(frames: np.ndarray, grid: np.ndarray, name: str, key: str) -> None:
    """PNG of the frame grid, GIF and MP4 of the frames (the MP4 encoded only when clicked)."""
    c1, c2, c3, _ = st.columns([1, 1, 1, 3])
    c1.download_button("PNG", icon=":material/download:",
                       data=lambda: png_bytes(grid), file_name=f"{name}.png", mime="image/png",
                       key=f"{key}_png", on_click="ignore")
    c2.download_button("GIF", icon=":material/download:",
                       data=lambda: gif_bytes(frames), file_name=f"{name}.gif", mime="image/gif",
                       key=f"{key}_gif", on_click="ignore")
    c3.download_button("MP4", icon=":material/download:",
                       data=lambda: mp4_bytes(frames), file_name=f"{name}.mp4", mime="video/mp4",
                       key=f"{key}_mp4", on_click="ignore")


KEPT = ("k_", "model_kind", "model_path", "model_hub", "clip_kind", "clip_sample", "clip_frames", "clip_size",
        "clip_rate")


def keep_widget_state(kept=KEPT) -> None:
    """Widgets of a page that is not shown lose their state at the end of the run, and `st.switch_page`
    starts a run without the browser's widget values; re-assigning each value through session state keeps
    it (Streamlit's documented work-around), so the sidebar and every page show the same choices when you
    come back. File uploaders cannot be assigned: the sidebar keeps their last file itself."""
    for key in list(st.session_state):
        if isinstance(key, str) and key.startswith(kept):
            st.session_state[key] = st.session_state[key]


def sanitize(key: str, options) -> None:
    """Drop a kept widget value that is no longer an option (e.g. layer 11 after loading a 4-layer model)."""
    if key in st.session_state and st.session_state[key] not in list(options):
        del st.session_state[key]


ERRORS = (CheckpointError, VideoError, ValueError, OSError, RuntimeError)
