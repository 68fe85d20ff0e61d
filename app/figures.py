"""Plotly figures of the app that `analysis.figures` and `analysis.patterns` do not already build: the
clickable attention overlay, summary numbers per layer, deletion/insertion curves and training curves.
Builders take plain data and return figures; they compute nothing about the model."""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.figures import SCHEME_COLOURS
from timesformer.config import SCHEME_LABELS

SUMMARY_METRICS = {
    "entropy_norm": "entropy / log(keys)",
    "distance_space": "attention distance in space (patches)",
    "distance_time": "attention distance in time (frames)",
    "same_frame": "share on the same frame",
    "other_frames": "share on other frames",
    "cls": "share on cls",
}


def _png_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def patch_centres(grid: tuple[int, int, int], frame_px: int, patch_px: float, columns: int, pad: int):
    """(x, y, (t, h, w)) of every patch centre in an `analysis.attention.grid_image` of the frames."""
    T, H, W = grid
    for t in range(T):
        r, c = divmod(t, columns)
        for h in range(H):
            for w in range(W):
                x = c * (frame_px + pad) + (w + 0.5) * patch_px
                yield x, r * (frame_px + pad) + (h + 0.5) * patch_px, (t, h, w)


def picker_figure(image: np.ndarray, grid: tuple[int, int, int], frame_px: int, patch_px: float, columns: int,
                  pad: int, query="cls", title: str = "") -> go.Figure:
    """The overlay image with one (invisible) marker per patch, so a click selects a patch (its
    customdata is (t, h, w)); the current patch query is outlined. The image travels as one PNG."""
    pts = list(patch_centres(grid, frame_px, patch_px, columns, pad))
    xs, ys, data = zip(*pts)
    fig = go.Figure(go.Image(source=_png_uri(image), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=ys, customdata=data, mode="markers", showlegend=False,
                             marker=dict(size=max(6, patch_px * 0.6), color="rgba(255,255,255,0.01)", symbol="square"),
                             hovertemplate="frame %{customdata[0]}, row %{customdata[1]}, "
                                           "col %{customdata[2]}<extra></extra>"))
    if query != "cls":
        i = data.index(tuple(query))
        fig.add_trace(go.Scatter(x=[xs[i]], y=[ys[i]], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(size=max(8, patch_px * 0.8), symbol="square-open", color="white",
                                             line=dict(width=3, color="white"))))
    fig.update_layout(margin=dict(l=0, r=0, t=30, b=0), height=int(image.shape[0] * 1.1) + 40, title=title,
                      xaxis=dict(visible=False), yaxis=dict(visible=False), clickmode="event+select", dragmode=False)
    return fig


def summary_figure(results: dict[str, list[dict]], metric: str) -> go.Figure:
    """One line per (scheme, step) of `analysis.attention.summary_table` rows against the layer."""
    fig = go.Figure()
    dashes = ["solid", "dash", "dot"]
    for scheme, rows in results.items():
        steps = list(dict.fromkeys(row["step"] for row in rows))
        for j, step in enumerate(steps):
            pts = [row for row in rows if row["step"] == step]
            fig.add_trace(go.Scatter(x=[row["layer"] for row in pts], y=[row[metric] for row in pts],
                                     mode="lines+markers", name=f"{SCHEME_LABELS.get(scheme, scheme)}: {step}",
                                     line=dict(color=SCHEME_COLOURS.get(scheme), dash=dashes[j % 3])))
    label = SUMMARY_METRICS.get(metric, metric)
    fig.update_layout(xaxis_title="layer", yaxis_title=label, template="plotly_white", height=420,
                      title=f"{label}, averaged over patch queries and heads", xaxis=dict(dtick=1))
    return fig


def curves_figure(curves: dict, kind: str, labels: dict) -> go.Figure:
    """Deletion or insertion curves (`analysis.attribution.Curves`) of several maps, AUC in the legend;
    the key "random" is drawn dotted (the ranking to beat)."""
    fig = go.Figure()
    for name, cv in curves.items():
        fig.add_trace(go.Scatter(x=cv.fractions, y=getattr(cv, kind), mode="lines+markers",
                                 name=f"{labels.get(name, name)} (AUC {getattr(cv, 'auc_' + kind):.3f})",
                                 line=dict(dash="dot") if name == "random" else None))
    fig.update_layout(title=kind, xaxis_title=f"share of patches {'removed' if kind == 'deletion' else 'shown'}",
                      yaxis_title="target probability", template="plotly_white", height=380,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def training_figure(rows: list[dict], title: str) -> go.Figure:
    """Loss (left) and acc1/acc5 (right) against the step, one colour per split (metrics.jsonl rows)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    colours = {"train": "#636EFA", "val": "#EF553B"}
    for split in dict.fromkeys(r["split"] for r in rows):
        pts = sorted((r for r in rows if r["split"] == split), key=lambda r: r["step"])
        colour = colours.get(split)
        fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r.get("loss") for r in pts], mode="lines+markers",
                                 name=f"{split} loss", line=dict(color=colour)), row=1, col=1)
        for metric, dash in (("acc1", None), ("acc5", "dot")):
            if any(metric in r for r in pts):
                fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r.get(metric) for r in pts],
                                         mode="lines+markers", name=f"{split} {metric}",
                                         line=dict(color=colour, dash=dash)), row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(template="plotly_white", height=400, title=title)
    return fig
