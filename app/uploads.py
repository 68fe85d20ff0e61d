"""Uploaded files: written once to a temporary folder named by their SHA-256 (so every cache is keyed by
content), zipped checkpoint folders unpacked safely, and the sidebar's upload widget."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import streamlit as st

from timesformer import CheckpointError
from timesformer.video import VIDEO_EXTENSIONS

VIDEO_TYPES = [s.lstrip(".") for s in VIDEO_EXTENSIONS]
CHECKPOINT_TYPES = ["pyth", "pth", "pt", "bin", "safetensors", "zip"]  # .bin: timm / HuggingFace weights
UPLOADS = Path(tempfile.gettempdir()) / "timesformer-lab-uploads"
MAX_STORED_UPLOADS = 32  # uploaded files kept on disk (the oldest go first)


def max_upload_bytes() -> int:
    """The server's upload cap (`server.maxUploadSize`, MB), also enforced here (AppTest bypasses it)."""
    return int(st.get_option("server.maxUploadSize")) * 1024 * 1024


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def _forget(slot: str) -> None:
    """The user changed or removed an upload: forget the file kept for it."""
    st.session_state.pop(slot, None)


def uploaded(where, label: str, types: list[str], key: str, **kwargs) -> tuple[Path | None, str, str | None]:
    """(stored path, file name, error) of a file uploader in `where`. The last file is kept in session
    state, because `st.switch_page` (Training runs → Explore) starts a run without the uploader's value."""
    slot = f"_{key}_file"
    up = where.file_uploader(label, type=types, key=key, on_change=_forget, args=(slot,), **kwargs)
    kept = st.session_state.get(slot)
    stored = bool(kept) and Path(kept[0]).exists()
    if up is not None and not stored:  # hashed and stored once per upload (`_forget` empties the slot on a change)
        data = up.getvalue()
        if len(data) > max_upload_bytes():
            return None, up.name, (f"{up.name} is {len(data) / 2**20:.1f} MB, over the upload limit of "
                                   f"{max_upload_bytes() >> 20} MB: trim or compress it.")
        kept = st.session_state[slot] = (str(store_upload(up.name, data)), up.name)
        stored = True
    if stored:
        return Path(kept[0]), kept[1], None
    return None, "", None
