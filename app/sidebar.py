"""The sidebar: which model and which clip every page works on, as a `Context` the pages read with
`current()`. Loading goes through `app.cache`; a model or clip that cannot be used becomes a message
in the sidebar and on the page, never a traceback."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from analysis.cost.estimate import recording_bytes
from app import cache, settings, uploads
from app.widgets import Prompt, sanitize, show
from timesformer import CheckpointError, TimeSformer, shipped
from timesformer.distributed import device_name
from timesformer.shipped import sample_clips
from timesformer.video import VideoError

# What a bad checkpoint or clip raises; anything else is a bug and is shown as one.
USER_ERRORS = (CheckpointError, VideoError, ValueError, OSError)


@dataclass
class Context:
    """The sidebar's model and clip for this run; `need_model()`/`need_clip()` stop a page that lacks them."""

    mkey: tuple[str, float] | None = None
    model: TimeSformer | None = None
    model_label: str = ""
    model_error: str | None = None
    card: dict = field(default_factory=dict)  # the model card's front matter (shipped models), else {}
    ckey: cache.ClipKey | None = None
    clip_label: str = ""
    clip_error: str | None = None
    views: torch.Tensor | None = None
    frames: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    device: torch.device | None = None  # where the models run (None: TSLAB_DEVICE names none there is)

    @property
    def centre(self) -> torch.Tensor:
        """(1, 3, T, S, S): the centre crop, the view every map is drawn on (on the CPU: `cache.on_model`)."""
        return self.views[len(self.views) // 2 :][:1]

    @property
    def device_name(self) -> str:
        """For captions: "CPU", "NVIDIA H100 80GB HBM3 (cuda:0)"."""
        return "no device" if self.device is None else device_name(self.device)

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


MODEL_KINDS = ["Shipped model", "Local path", "Upload", "HuggingFace hub id"]
CLIP_KINDS = ["Sample clip", "Local path", "Upload"]


def shipped_models() -> dict[str, Path]:
    """{name: folder} of the models the app ships (settings.MODELS), with the default model first where
    TSLAB_DEFAULT_MODEL puts it elsewhere."""
    found = shipped.models(settings.MODELS)
    default = settings.DEFAULT_MODEL
    if (default / "config.json").is_file() and default not in found.values():
        found = {default.name: default, **found}
    return found


def _model_source(sb) -> tuple[str | None, str, str | None]:
    """(source for load_model, label, error) from the sidebar's model widgets."""
    kind = sb.radio("Model", MODEL_KINDS, key="model_kind", horizontal=False)
    if kind == "Shipped model":
        options = shipped_models()
        if not options:
            return None, "", (f"The shipped models ({settings.MODELS}) are not there yet: run `make app` (or "
                              "bench/shipped_models.py) or pick another model in the sidebar.")
        sanitize("model_shipped", options)
        if "model_shipped" not in st.session_state:
            default = settings.DEFAULT_MODEL.name
            st.session_state["model_shipped"] = default if default in options else next(iter(options))
        name = sb.selectbox("Shipped model", list(options), key="model_shipped",
                            help="trained on SynthMotion (bench/shipped_models.py); each has a model card")
        return str(options[name]), name, None
    if kind == "Local path":
        path = sb.text_input("Checkpoint path", key="model_path",
                             help="a folder written by save_model or a training run, an official .pyth, an "
                                  "mmaction2 .pth, a HuggingFace Timesformer folder; an image ViT (timm .pth/"
                                  ".safetensors or a HuggingFace ViT folder) starts a TimeSformer from it")
        if not path.strip():
            return None, "", Prompt("Type a checkpoint path in the sidebar.")
        p = settings.here(path.strip())
        if not p.exists():
            return None, "", f"No such file or folder: {path.strip()}"
        return str(p), p.name, None
    if kind == "Upload":
        path, name, error = uploads.uploaded(sb, "Checkpoint file", uploads.CHECKPOINT_TYPES, "model_upload",
                                             help="official .pyth, mmaction2 .pth, our model.safetensors, a "
                                                  "HuggingFace .bin, or a checkpoint folder as .zip")
        if path is None:
            return None, "", error or Prompt("Upload a checkpoint in the sidebar (.pyth, .pth, .safetensors, "
                                             ".bin or a zipped folder).")
        try:
            source = uploads.unpack_zip(path) if path.suffix == ".zip" else path
        except USER_ERRORS as e:
            return None, "", f"Could not open {name}: {e}"
        return str(source), name, None
    repo = sb.text_input("Hub id", key="model_hub", placeholder="facebook/timesformer-base-finetuned-k400",
                         help="downloaded when the network allows, else taken from the HuggingFace cache")
    if not repo.strip():
        return None, "", Prompt("Type a HuggingFace hub id in the sidebar.")
    return repo.strip(), repo.strip(), None


def _clip_source(sb) -> tuple[Path | None, str, str | None]:
    kind = sb.radio("Clip", CLIP_KINDS, key="clip_kind")
    if kind == "Sample clip":
        options = sample_clips(settings.SAMPLES)
        if not options:
            return None, "", f"No sample clips in {settings.SAMPLES}: upload a clip in the sidebar."
        names = [p.name for p in options]
        sanitize("clip_sample", names)
        name = sb.selectbox("Sample", names, key="clip_sample")
        return settings.SAMPLES / name, name, None
    if kind == "Local path":  # a file on the app's machine: no upload, and no upload size limit
        typed = sb.text_input("Video path", key="clip_path",
                              help="a video file on the machine the app runs on (mp4, webm, avi, mov, mkv, gif)")
        if not typed.strip():
            return None, "", Prompt("Type the path of a video file in the sidebar.")
        p = settings.here(typed.strip())
        if not p.exists():
            return None, "", f"No such file: {typed.strip()}"
        if p.is_dir():
            return None, "", f"{typed.strip()} is a folder: type the path of a video file in it"
        return p, p.name, None
    path, name, error = uploads.uploaded(sb, "Video file", uploads.VIDEO_TYPES, "clip_upload")
    if path is None:
        return None, "", error or Prompt("Upload a video in the sidebar (mp4, webm, avi, mov, mkv or gif).")
    return path, name, None


def _too_big_to_record(cfg, frames: int, size: int, device: torch.device) -> str | None:
    """Why the pages cannot record this model's attention on `frames` × `size`² (its every layer, for rollout)
    within settings.MAX_RECORDING_GIB, or half the memory of `device`; None where they can."""
    side = size // cfg.patch_size
    # counted from the group shapes (cached, no index tensors): the sidebar runs on every rerun, and a grid
    # typed here would otherwise build and keep the gathers of a model it may never run
    need = recording_bytes(cfg, (frames, side, side))
    if settings.MAX_RECORDING_GIB is not None:
        budget, whose = settings.MAX_RECORDING_GIB * 2**30, "TSLAB_MAX_RECORDING_GIB"
    elif device.type == "cuda":
        budget, whose = torch.cuda.get_device_properties(device).total_memory / 2, "half the GPU's memory"
    else:
        budget, whose = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2, "half this machine's memory"
    if need <= budget:
        return None
    return (f"{frames} frames of {size}² are {frames * side * side} patches: recording this model's attention at "
            f"every layer, as the pages do, takes about {need / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB the "
            f"app allows ({whose}; TSLAB_MAX_RECORDING_GIB sets it). Choose fewer frames or a smaller crop.")


def _resample(frames: int, size: int) -> None:
    st.session_state["clip_frames"], st.session_state["clip_size"] = frames, size


def build_context() -> Context:
    """Draw the sidebar and load what it picks."""
    ctx = Context()
    sb = st.sidebar
    sb.header("Model")
    source, label, error = _model_source(sb)
    try:
        ctx.device = cache.device()
    except SystemExit as e:  # TSLAB_DEVICE names a device that is not there: no model can run
        source, error = None, str(e)
    if source is not None:
        try:
            ctx.mkey = cache.model_key(source)
            ctx.model = cache.get_model(ctx.mkey)
            ctx.model_label = label
            ctx.card = cache.model_card(ctx.mkey)
        except USER_ERRORS as e:  # an upload's message names the file by its name, not by where the app keeps it
            said = str(e).replace(str(source), label) if label else str(e)
            error = f"Could not load the model from {label or source}: {said}"
            ctx.mkey = None
    ctx.model_error = error
    if error:
        show(sb, error)
    else:
        c = ctx.model.config
        sb.caption(f"{label}: {c.attention_type}, {c.num_frames}×{c.img_size}², patch {c.patch_size}, "
                   f"{c.depth} blocks, {len(ctx.model.class_names)} classes; runs on the {ctx.device_name}")
        if ctx.card:
            sb.caption(shipped.summary(ctx.card))

    sb.header("Clip")
    path, clabel, cerror = _clip_source(sb)
    ctx.clip_label = clabel
    if ctx.model is not None:
        cfg = ctx.model.config
        # the sampling follows the model; a new model resets it to the model's frames and size
        if st.session_state.get("_sampling_for") != ctx.mkey:
            _resample(cfg.num_frames, cfg.img_size)
            st.session_state["_sampling_for"] = ctx.mkey
        with sb.expander("Sampling", expanded=False):
            frames = st.number_input("Frames", 1, 512, key="clip_frames")
            size = st.number_input("Crop size (px)", 8, 1024, step=cfg.patch_size, key="clip_size")
            st.session_state.setdefault("clip_rate", 0)
            rate = st.number_input("Sampling rate (0 = spread over the whole video)", 0, 256, key="clip_rate")
            st.session_state.setdefault("clip_start", 0.0)
            st.session_state.setdefault("clip_end", 0.0)
            c1, c2 = st.columns(2)
            start = c1.number_input("From (s)", 0.0, None, step=1.0, key="clip_start",
                                    help="sample only the part of the video between these times")
            end = c2.number_input("To (s, 0 = the end)", 0.0, None, step=1.0, key="clip_end")
        if end and end <= start:
            cerror = cerror or f"The part of the video to sample ends ({end:g} s) before it starts ({start:g} s)."
        if (frames, size) != (cfg.num_frames, cfg.img_size):
            if size % cfg.patch_size:
                cerror = cerror or (f"A {size}px crop is not a multiple of the model's {cfg.patch_size}px patches.")
            else:
                sb.warning(f"The model was trained on {cfg.num_frames} frames of {cfg.img_size}²; the clip is "
                           f"sampled as {frames} × {size}² (embeddings interpolated).")
            sb.button(f"Resample to {cfg.num_frames} × {cfg.img_size}²", key="resample",
                      on_click=_resample, args=(cfg.num_frames, cfg.img_size))
        if cerror is None:
            cerror = _too_big_to_record(cfg, int(frames), int(size), ctx.device)
        if path is not None and cerror is None:
            try:
                ckey = cache.ClipKey(str(path), cache.file_digest(path), int(frames), int(size), int(rate),
                                     float(start), float(end))
                views, shown, info = cache.decode(ckey)
                if info["num_frames"] > settings.MAX_VIDEO_FRAMES:
                    raise VideoError(f"{info['num_frames']} frames is over the app's limit of "
                                           f"{settings.MAX_VIDEO_FRAMES}: cut the part you want to look at")
                ctx.model.grid_of(views[:1])  # a clip the model cannot take says why here
                ctx.ckey, ctx.views, ctx.frames, ctx.info = ckey, views, shown, info
            except USER_ERRORS as e:
                cerror = f"Could not read {clabel}: {e}"
    elif path is not None and cerror is None:
        cerror = Prompt("Pick a model first: the clip is sampled for the model's frames and crop size.")
    ctx.clip_error = cerror
    if cerror:
        show(sb, cerror)
    elif ctx.info:
        i = ctx.info
        sb.caption(f"{clabel}: {i['num_frames']} frames ({i['duration']:.1f} s), {i['width']}×{i['height']}, "
                   f"{i['fps']:.1f} fps; frames {i['indices'][0]}…{i['indices'][-1]} sampled")
        if len(set(i["indices"])) == 1 and len(i["indices"]) > 1:  # a still image, or a part of one frame
            sb.warning(f"One frame of the video is all the model sees, {len(i['indices'])} times: nothing moves, so "
                       "the time steps and the evidence about time say nothing about motion here.")
    return ctx
