"""Small display pieces the pages share: messages, downloads, frames for display, and widget state that
survives page switches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import streamlit as st

from analysis import media
from app import settings


class Prompt(str):
    """A message that asks for input (shown as info), as opposed to an error."""


def show(where, message: str) -> None:
    (where.info if isinstance(message, Prompt) else where.error)(message)


def display(frames: np.ndarray, at_least: int | None = None) -> np.ndarray:
    """(T, H, W, 3) frames upscaled (nearest) so small clips are visible."""
    return media.upscale(frames, at_least or settings.DISPLAY_PX)


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


def download_frames(frames: np.ndarray, grid: np.ndarray, name: str, key: str, arrays: dict | None = None) -> None:
    """PNG of the frame grid, GIF and MP4 of the frames (each encoded only when clicked); with `arrays`, an NPZ
    of them too: the numbers behind the picture."""
    c1, c2, c3, c4, _ = st.columns([1, 1, 1, 1, 2])
    c1.download_button("PNG", icon=":material/download:",
                       data=lambda: media.png_bytes(grid), file_name=f"{name}.png", mime="image/png",
                       key=f"{key}_png", on_click="ignore")
    for col, fmt in ((c2, "gif"), (c3, "mp4")):
        col.download_button(fmt.upper(), icon=":material/download:",
                            data=lambda fmt=fmt: media.animation_bytes(frames, fmt), file_name=f"{name}.{fmt}",
                            mime=f"{'image' if fmt == 'gif' else 'video'}/{fmt}", key=f"{key}_{fmt}",
                            on_click="ignore")
    if arrays is not None:
        c4.download_button("NPZ", icon=":material/download:", data=lambda: media.npz_bytes(arrays),
                           file_name=f"{name}.npz", mime="application/octet-stream", key=f"{key}_npz",
                           on_click="ignore",
                           help="the map on the patch grid (T, H_p, W_p) and the frames (T, H, W, 3) as arrays: "
                                "numpy.load(file)")


KEPT = ("k_", "model_kind", "model_shipped", "model_path", "model_hub", "clip_kind", "clip_sample", "clip_path",
        "clip_frames", "clip_size", "clip_rate", "clip_start", "clip_end")


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
