"""Pictures and animations: heatmap overlays, frame grids, PNG / GIF / MP4 encoding, and the paper's patch
diagrams as PNG or SVG without a browser. Everything takes and returns uint8 `(T, H, W, 3)` frames or
`(H, W, 3)` images; nothing here runs a model."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from analysis.patterns import palette, pattern_codes

# --------------------------------------------------------------------------------------------------
# Heatmaps over frames


def colormap(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H_p, W_p) → (T, H, W), bilinear."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def overlay(frames: np.ndarray, maps: torch.Tensor, alpha: float = 0.5, cmap: str = "jet",
            normalize: str = "clip") -> np.ndarray:
    """Heatmaps over frames: frames (T, H, W, 3) uint8, maps (T, H_p, W_p) → (T, H, W, 3) uint8.

    normalize="clip" scales by the clip's min and max (frames stay comparable), "frame" per frame.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    maps = torch.as_tensor(maps).detach().float().cpu()
    if maps.shape[0] != frames.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {frames.shape[0]} frames")
    up = upsample(maps, frames.shape[1:3])
    dims = (1, 2) if normalize == "frame" else (0, 1, 2)
    lo, hi = up.amin(dim=dims, keepdim=True), up.amax(dim=dims, keepdim=True)
    up = ((up - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)
    heat = colormap(cmap)[(up * 255).round().long().numpy()]
    return (frames * (1 - alpha) + heat * alpha).round().astype(np.uint8)


def upscale(frames: np.ndarray, at_least: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale of (T, H, W, 3) frames to at least `at_least` rows, so small clips show."""
    k = max(1, -(-at_least // frames.shape[1]))
    return frames.repeat(k, 1).repeat(k, 2) if k > 1 else frames


def grid_image(frames: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """(T, H, W, 3) frames tiled into one (rows·H, columns·W, 3) image."""
    T, H, W, _ = frames.shape
    columns = columns or min(T, 8)
    rows = math.ceil(T / columns)
    out = np.full((rows * (H + pad) - pad, columns * (W + pad) - pad, 3), 255, np.uint8)
    for i in range(T):
        r, c = divmod(i, columns)
        out[r * (H + pad) : r * (H + pad) + H, c * (W + pad) : c * (W + pad) + W] = frames[i]
    return out


# --------------------------------------------------------------------------------------------------
# Encoding


def npz_bytes(arrays: dict) -> bytes:
    """{name: array or tensor} → the contents of a compressed `.npz` file (`numpy.load` reads it)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
                                for k, v in arrays.items()})
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG file contents."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_animation(path, frames: np.ndarray, fps: float = 4.0) -> Path:
    """(T, H, W, 3) uint8 → a looping .gif (PIL) or an H.264 .mp4 (PyAV), chosen by the suffix."""
    path = Path(path)
    if path.suffix == ".mp4":
        from timesformer.video import write_video

        h, w = frames.shape[1:3]
        return write_video(path, frames[:, : h - h % 2, : w - w % 2], fps=fps)  # H.264 wants even sides
    if path.suffix != ".gif":
        raise ValueError(f"unsupported animation format {path.suffix!r}: use .gif or .mp4")
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def animation_bytes(frames: np.ndarray, fmt: str = "gif", fps: float = 4.0) -> bytes:
    """The file contents `write_animation` would write for `fmt` ("gif" or "mp4")."""
    with tempfile.TemporaryDirectory() as d:
        return write_animation(Path(d) / f"animation.{fmt}", frames, fps).read_bytes()


# --------------------------------------------------------------------------------------------------
# The paper's patch diagrams (analysis.patterns) as files


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def pattern_image(codes: np.ndarray, steps: list[str], cell: int = 14, gap: int = 2) -> np.ndarray:
    """(H', W', 3) uint8 picture of pattern codes, frames side by side."""
    T, H, W = codes.shape
    colours = np.array([_rgb(c) for c in palette(steps)], dtype=np.uint8)
    step = cell + 1
    fw = W * step
    img = np.full((H * step + 1, T * (fw + gap * cell) - gap * cell + 1, 3), 255, np.uint8)
    for t in range(T):
        x0 = t * (fw + gap * cell)
        img[:, x0 : x0 + fw + 1] = 200  # grid lines
        for h in range(H):
            for w in range(W):
                y, x = h * step + 1, x0 + w * step + 1
                img[y : y + cell, x : x + cell] = colours[codes[t, h, w] + 1]
    return img


def pattern_svg(codes: np.ndarray, steps: list[str], cell: int = 14, gap: int = 2) -> str:
    """The same picture as `pattern_image`, as SVG text."""
    T, H, W = codes.shape
    colours = palette(steps)
    step = cell + 1
    fw = W * step + gap * cell
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{T * fw}" height="{H * step + 1}">']
    for t in range(T):
        for h in range(H):
            for w in range(W):
                parts.append(f'<rect x="{t * fw + w * step}" y="{h * step}" width="{cell}" height="{cell}" '
                             f'fill="{colours[codes[t, h, w] + 1]}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def save_pattern(path, attention_type: str, grid, query=(0, 0, 0), **kwargs) -> Path:
    """Write the diagram as .png (PIL) or .svg, chosen by the suffix; no browser needed."""
    path = Path(path)
    codes, steps = pattern_codes(attention_type, grid, query, **kwargs)
    if path.suffix == ".svg":
        path.write_text(pattern_svg(codes, steps))
    elif path.suffix == ".png":
        path.write_bytes(png_bytes(pattern_image(codes, steps)))
    else:
        raise ValueError(f"unsupported diagram format {path.suffix!r}: use .png or .svg")
    return path
