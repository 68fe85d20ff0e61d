"""TimeSformer Lab: `streamlit run app/main.py` (or `make app`) from the repo root.

The entry point: page navigation over the scripts in the top-level `pages/` folder, and the sidebar
that picks the model and the clip every page works on.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state

ROOT = state.ROOT

st.set_page_config(page_title="TimeSformer Lab", page_icon=":material/movie:", layout="wide")
state.keep_widget_state()

PAGES = {
    "explore": st.Page("../pages/explore.py", title="Explore", icon=":material/search:", default=True),
    "schemes": st.Page("../pages/schemes.py", title="Schemes", icon=":material/grid_view:", url_path="schemes"),
    "attribution": st.Page("../pages/attribution.py", title="Rollout & attribution", icon=":material/target:",
                           url_path="attribution"),
    "cost": st.Page("../pages/cost.py", title="Cost", icon=":material/monitoring:", url_path="cost"),
    "training": st.Page("../pages/training.py", title="Training runs", icon=":material/model_training:",
                        url_path="training"),
}
st.session_state["_pages"] = PAGES
page = st.navigation(list(PAGES.values()))

MODEL_KINDS = ["Shipped default", "Local path", "Upload", "HuggingFace hub id"]
CLIP_KINDS = ["Sample clip", "Upload"]


def _forget(slot: str) -> None:
    """The user changed or removed an upload: forget the file kept for it."""
    st.session_state.pop(slot, None)


def _uploaded(sb, label: str, types: list[str], key: str, **kwargs) -> tuple[Path | None, str, str | None]:
    """(stored path, file name, error) of an upload. The last file is kept in session state, because
    `st.switch_page` (Training runs → Explore) starts a run without the uploader's value."""
    slot = f"_{key}_file"
    up = sb.file_uploader(label, type=types, key=key, on_change=_forget, args=(slot,), **kwargs)
    if up is not None:
        data = up.getvalue()
        if len(data) > state.max_upload_bytes():
            return None, up.name, (f"{up.name} is {len(data) / 2**20:.1f} MB, over the upload limit of "
                                   f"{state.max_upload_bytes() >> 20} MB: trim or compress it.")
        st.session_state[slot] = (str(state.store_upload(up.name, data)), up.name)
    kept = st.session_state.get(slot)
    if kept and Path(kept[0]).exists():
        return Path(kept[0]), kept[1], None
    return None, "", None


def _model_source(sb) -> tuple[str | None, str, str | None]:
    """(source for load_model, label, error) from the sidebar's model widgets."""
    kind = sb.radio("Model", MODEL_KINDS, key="model_kind", horizontal=False)
    if kind == "Shipped default":
        if not (state.DEFAULT_MODEL / "config.json").is_file():
            return None, "", (f"The shipped default model ({state.DEFAULT_MODEL}) is not there yet: run "
                              "`make app` (or train one) or pick another model in the sidebar.")
        return str(state.DEFAULT_MODEL), "shipped default model", None
    if kind == "Local path":
        path = sb.text_input("Checkpoint path", key="model_path",
                             help="a folder written by save_model or a training run, an official .pyth, "
                                  "or a HuggingFace Timesformer folder")
        if not path.strip():
            return None, "", state.Prompt("Type a checkpoint path in the sidebar.")
        p = Path(path.strip()).expanduser()
        if not p.is_absolute():
            p = ROOT / p
        if not p.exists():
            return None, "", f"No such file or folder: {path.strip()}"
        return str(p), p.name, None
    if kind == "Upload":
        path, name, error = _uploaded(sb, "Checkpoint file", state.CHECKPOINT_TYPES, "model_upload",
                                      help="official .pyth, our model.safetensors, or a checkpoint folder as .zip")
        if path is None:
            return None, "", error or state.Prompt("Upload a checkpoint in the sidebar (.pyth, .safetensors or a "
                                                   "zipped folder).")
        try:
            source = state.unpack_zip(path) if path.suffix == ".zip" else path
        except state.ERRORS as e:
            return None, "", f"Could not open {name}: {e}"
        return str(source), name, None
    repo = sb.text_input("Hub id", key="model_hub", placeholder="facebook/timesformer-base-finetuned-k400",
                         help="downloaded when the network allows, else taken from the HuggingFace cache")
    if not repo.strip():
        return None, "", state.Prompt("Type a HuggingFace hub id in the sidebar.")
    return repo.strip(), repo.strip(), None


def _clip_source(sb) -> tuple[Path | None, str, str | None]:
    kind = sb.radio("Clip", CLIP_KINDS, key="clip_kind")
    if kind == "Sample clip":
        options = state.samples()
        if not options:
            return None, "", f"No sample clips in {state.SAMPLES}: upload a clip in the sidebar."
        names = [p.name for p in options]
        state.sanitize("clip_sample", names)
        name = sb.selectbox("Sample", names, key="clip_sample")
        return state.SAMPLES / name, name, None
    path, name, error = _uploaded(sb, "Video file", state.VIDEO_TYPES, "clip_upload")
    if path is None:
        return None, "", error or state.Prompt("Upload a video in the sidebar (mp4, webm, avi, mov, mkv or gif).")
    return path, name, None


def _resample(frames: int, size: int) -> None:
    st.session_state["clip_frames"], st.session_state["clip_size"] = frames, size


def build_context() -> state.Context:
    ctx = state.Context()
    sb = st.sidebar
    sb.header("Model")
    source, label, error = _model_source(sb)
    if source is not None:
        try:
            ctx.mkey = state.model_key(source)
            ctx.model = state.get_model(ctx.mkey)
            ctx.model_label = label
        except state.ERRORS as e:
            error = f"Could not load the model from {label or source}: {e}"
            ctx.mkey = None
    ctx.model_error = error
    if error:
        state.show(sb, error)
    else:
        c = ctx.model.config
        sb.caption(f"{label}: {c.attention_type}, {c.num_frames}×{c.img_size}², patch {c.patch_size}, "
                   f"{c.depth} blocks, {len(ctx.model.class_names)} classes")

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
        if (frames, size) != (cfg.num_frames, cfg.img_size):
            if size % cfg.patch_size:
                cerror = cerror or (f"A {size}px crop is not a multiple of the model's {cfg.patch_size}px patches.")
            else:
                sb.warning(f"The model was trained on {cfg.num_frames} frames of {cfg.img_size}²; the clip is "
                           f"sampled as {frames} × {size}² (embeddings interpolated).")
            sb.button(f"Resample to {cfg.num_frames} × {cfg.img_size}²", key="resample",
                      on_click=_resample, args=(cfg.num_frames, cfg.img_size))
        if path is not None and cerror is None:
            try:
                ckey = state.ClipKey(str(path), state.file_digest(path), int(frames), int(size), int(rate))
                views, shown, info = state.decode(ckey)
                if info["num_frames"] > state.MAX_VIDEO_FRAMES:
                    raise state.VideoError(f"{info['num_frames']} frames is over the app's limit of "
                                           f"{state.MAX_VIDEO_FRAMES}: cut the part you want to look at")
                ctx.model.grid_of(views[:1])  # a clip the model cannot take says why here
                ctx.ckey, ctx.views, ctx.frames, ctx.info = ckey, views, shown, info
            except state.ERRORS as e:
                cerror = f"Could not read {clabel}: {e}"
    elif path is not None and cerror is None:
        cerror = state.Prompt("Pick a model first: the clip is sampled for the model's frames and crop size.")
    ctx.clip_error = cerror
    if cerror:
        state.show(sb, cerror)
    elif ctx.info:
        i = ctx.info
        sb.caption(f"{clabel}: {i['num_frames']} frames, {i['width']}×{i['height']}, {i['fps']:.1f} fps; "
                   f"frames {i['indices'][0]}…{i['indices'][-1]} sampled")
    return ctx


st.session_state["_ctx"] = build_context()
page.run()
