"""The paper's Figure 1 — which patches a query attends to in each step — drawn from the model's masks.

Nothing here is drawn by hand: the cells come from `timesformer.attention_pattern`, the masks of the
groupings the model itself runs, for any scheme, frame count, grid and query. `receptive_field` composes
the step masks (with the residual) to show what a query can reach after whole blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch

from analysis.attention import query_index
from timesformer.attention import SCHEMES, attention_pattern
from timesformer.config import SCHEME_LABELS

QUERY_COLOUR = "#1f4fd8"  # blue, as in the paper
STEP_COLOURS = {  # one colour per step
    "space": "#d62728", "time": "#2ca02c", "joint": "#ff7f0e", "local": "#e6b400",
    "global": "#9c27b0", "width": "#ff7f0e", "height": "#e377c2",
}
EMPTY_COLOUR = "#f2f2f2"


def pattern_codes(attention_type: str, grid: tuple[int, int, int], query=(0, 0, 0), local_split: int = 2,
                  global_stride: int = 2) -> tuple[np.ndarray, list[str]]:
    """(T, H_p, W_p) int codes — 0 unseen, i+1 first seen by step i, -1 the query — and the step names.

    A cell seen by several steps takes the colour of the first; `steps_seeing` lists them all.
    """
    T, H, W = grid
    q = query_index(query, grid)
    masks = attention_pattern(attention_type, T, H, W, local_split, global_stride)
    codes = np.zeros((T, H, W), dtype=np.int64)
    for i, mask in enumerate(masks.values()):
        seen = mask[q, 1:].reshape(T, H, W).numpy()
        codes[(codes == 0) & seen] = i + 1
    if q > 0:
        codes.reshape(-1)[q - 1] = -1
    return codes, list(masks)


def steps_seeing(attention_type: str, grid, query, local_split: int = 2, global_stride: int = 2) -> np.ndarray:
    """(T, H_p, W_p) object array: for each cell, the list of steps in which the query sees it."""
    T, H, W = grid
    q = query_index(query, grid)
    masks = attention_pattern(attention_type, T, H, W, local_split, global_stride)
    out = np.empty((T, H, W), dtype=object)
    for idx in np.ndindex(T, H, W):
        out[idx] = []
    for step, mask in masks.items():
        for idx in zip(*np.nonzero(mask[q, 1:].reshape(T, H, W).numpy())):
            out[idx].append(step)
    return out


def receptive_field(attention_type: str, grid, query=(0, 0, 0), blocks: int = 1, local_split: int = 2,
                    global_stride: int = 2) -> np.ndarray:
    """(T, H_p, W_p) bool: the input patches that can influence `query` after `blocks` whole blocks.

    Walks the steps backwards: a step's output at token i depends on i itself (the residual) and on the
    keys i sees; the MLP is per token. The cls token counts as a path (a patch sees cls, which
    saw other patches in the previous block).
    """
    T, H, W = grid
    masks = list(attention_pattern(attention_type, T, H, W, local_split, global_stride).values())
    if SCHEMES[attention_type].cls_per_frame:
        # the masks map every frame's own cls to index 0; as one token it would be a false bridge
        # between frames, so leave cls out (frame t's cls only carries frame t, which t already sees)
        masks = [m.clone().index_fill_(0, torch.tensor([0]), False).index_fill_(1, torch.tensor([0]), False)
                 for m in masks]
    v = torch.zeros(1 + T * H * W)
    v[query_index(query, grid)] = 1
    for _ in range(blocks):
        for mask in reversed(masks):
            v = ((v @ mask.float()) + v).clamp(max=1)
    return v[1:].reshape(T, H, W).bool().numpy()


def blocks_to_full_clip(attention_type: str, grid, query=(0, 0, 0), max_blocks: int = 12) -> int | None:
    """How many blocks until `query` can be influenced by every patch (None if not within max_blocks)."""
    for b in range(1, max_blocks + 1):
        if receptive_field(attention_type, grid, query, b).all():
            return b
    return None


def _palette(steps: list[str]) -> list[str]:
    return [QUERY_COLOUR, EMPTY_COLOUR] + [STEP_COLOURS[s] for s in steps]


def pattern_figure(attention_type: str, grid: tuple[int, int, int], query=(0, 0, 0), blocks: int | None = None,
                   local_split: int = 2, global_stride: int = 2, frames: list[int] | None = None) -> go.Figure:
    """Plotly figure of one scheme: the frames side by side, the query in blue and each step's keys in
    its colour; with `blocks`, the receptive field after that many blocks instead."""
    T, H, W = grid
    if blocks is None:
        codes, steps = pattern_codes(attention_type, grid, query, local_split, global_stride)
        seeing = steps_seeing(attention_type, grid, query, local_split, global_stride)
        labels = steps
    else:
        reach = receptive_field(attention_type, grid, query, blocks, local_split, global_stride)
        codes = reach.astype(np.int64)
        q = query_index(query, grid)
        if q > 0:
            codes.reshape(-1)[q - 1] = -1
        labels = [f"reached after {blocks} block{'s' if blocks > 1 else ''}"]
        seeing = None
    frames = list(range(T)) if frames is None else frames
    palette = _palette([] if blocks is not None else labels)
    if blocks is not None:
        palette.append("#d62728")
    # one heatmap: frames side by side, separated by an empty column
    z = np.full((H, len(frames) * (W + 1) - 1), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for i, t in enumerate(frames):
        z[:, i * (W + 1) : i * (W + 1) + W] = codes[t] + 1  # 0 query, 1 unseen, 2.. steps
        for h in range(H):
            for w in range(W):
                who = ", ".join(seeing[t, h, w]) if seeing is not None else ("yes" if codes[t, h, w] else "no")
                role = "query" if codes[t, h, w] == -1 else (f"seen by: {who}" if who else "not seen")
                text[h, i * (W + 1) + w] = f"frame {t}, row {h}, col {w}<br>{role}"
    n = len(palette)
    scale = [[v, c] for i, c in enumerate(palette) for v in (i / n, (i + 1) / n)]
    fig = go.Figure(go.Heatmap(z=z, zmin=0, zmax=n, colorscale=scale, showscale=False, xgap=1, ygap=1,
                               text=text, hoverinfo="text"))
    names = ["query"] + labels
    colours = [QUERY_COLOUR] + palette[2:]
    for name, colour in zip(names, colours):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(size=12, color=colour, symbol="square")))
    fig.update_yaxes(autorange="reversed", showticklabels=False, scaleanchor="x", showgrid=False, zeroline=False)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False,
                     tickvals=[i * (W + 1) + (W - 1) / 2 for i in range(len(frames))])
    for i, t in enumerate(frames):
        fig.add_annotation(x=i * (W + 1) + (W - 1) / 2, y=-1, text=f"frame t={t}", showarrow=False, yshift=4)
    title = SCHEME_LABELS[attention_type] if blocks is None else f"{SCHEME_LABELS[attention_type]}: {labels[0]}"
    fig.update_layout(title=title, plot_bgcolor="white", height=max(220, 22 * H + 120),
                      width=max(500, len(frames) * (W + 1) * 18 + 100), legend=dict(orientation="h", y=-0.05),
                      margin=dict(l=20, r=20, t=60, b=40))
    return fig


def all_patterns_figure(grid: tuple[int, int, int], query=(0, 0, 0), frames=None) -> list[go.Figure]:
    """The paper's Figure 1: one figure per scheme for the same grid and query."""
    return [pattern_figure(a, grid, query, frames=frames) for a in SCHEMES]


# --------------------------------------------------------------------------------------------------
# Export without a browser: PNG (PIL) and SVG (text) straight from the codes


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def pattern_image(codes: np.ndarray, steps: list[str], cell: int = 14, gap: int = 2) -> np.ndarray:
    """(H', W', 3) uint8 picture of pattern codes, frames side by side."""
    T, H, W = codes.shape
    palette = np.array([_rgb(c) for c in _palette(steps)], dtype=np.uint8)
    step = cell + 1
    fw = W * step
    img = np.full((H * step + 1, T * (fw + gap * cell) - gap * cell + 1, 3), 255, np.uint8)
    for t in range(T):
        x0 = t * (fw + gap * cell)
        img[:, x0 : x0 + fw + 1] = 200  # grid lines
        for h in range(H):
            for w in range(W):
                y, x = h * step + 1, x0 + w * step + 1
                img[y : y + cell, x : x + cell] = palette[codes[t, h, w] + 1]
    return img


def pattern_svg(codes: np.ndarray, steps: list[str], cell: int = 14, gap: int = 2) -> str:
    T, H, W = codes.shape
    palette = _palette(steps)
    step = cell + 1
    fw = W * step + gap * cell
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{T * fw}" height="{H * step + 1}">']
    for t in range(T):
        for h in range(H):
            for w in range(W):
                parts.append(f'<rect x="{t * fw + w * step}" y="{h * step}" width="{cell}" height="{cell}" '
                             f'fill="{palette[codes[t, h, w] + 1]}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def save_pattern(path, attention_type: str, grid, query=(0, 0, 0), **kwargs) -> Path:
    """Write the diagram as .png (PIL) or .svg, chosen by the suffix; no browser needed."""
    path = Path(path)
    codes, steps = pattern_codes(attention_type, grid, query, **kwargs)
    if path.suffix == ".svg":
        path.write_text(pattern_svg(codes, steps))
    elif path.suffix == ".png":
        from PIL import Image

        Image.fromarray(pattern_image(codes, steps)).save(path)
    else:
        raise ValueError(f"unsupported diagram format {path.suffix!r}: use .png or .svg")
    return path
