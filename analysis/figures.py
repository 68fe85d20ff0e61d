"""Every plotly figure of the project: cost curves and breakdowns, the paper's patch diagrams, the
clickable attention overlay, summary numbers per layer, deletion/insertion curves and training curves.

Builders take plain data (rows as `analysis.complexity.sweep` returns them, pattern codes, images, metrics
rows) and return `plotly.graph_objects.Figure`s; they compute nothing about a model themselves.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from analysis.media import png_bytes
from analysis.patterns import (
    QUERY_COLOUR,
    REACHED_COLOUR,
    STEP_COLOURS,
    palette,
    pattern_codes,
    receptive_codes,
    steps_seeing,
)
from timesformer.config import SCHEME_LABELS

GiB = 1024**3

# One colour per scheme, stable across figures (plotly's default qualitative palette).
SCHEME_COLOURS = {
    "space_only": "#636EFA",
    "joint_space_time": "#EF553B",
    "divided_space_time": "#00CC96",
    "sparse_local_global": "#AB63FA",
    "axial": "#FFA15A",
}
# How the training memory of each attention implementation (analysis.complexity.IMPLEMENTATION_STYLES) is drawn.
IMPLEMENTATION_STYLES = {
    "paper": ("solid", "materialised, PyTorch ≤ 1.9 (the paper's setting)"),
    "materialised": ("dot", "materialised, current PyTorch"),
    "fused": ("dash", "fused SDPA (flash / memory-efficient)"),
}
AXES = {"frames": ("num_frames", "frames (at {size} px)"), "size": ("img_size", "crop size in px (at {frames} frames)")}


# --------------------------------------------------------------------------------------------------
# Cost (analysis.complexity)


def _hover(row: dict) -> str:
    parts = sorted(row["flops_breakdown"].items(), key=lambda kv: -kv[1])
    lines = [f"{SCHEME_LABELS.get(row['attention_type'], row['attention_type'])}",
             f"{row['num_frames']} frames × {row['img_size']}² px, {row['tokens']} tokens",
             f"<b>{row['gflops']:.1f} GFLOPs</b> per view ({row['params'] / 1e6:.1f}M params)"]
    lines += [f"  {k}: {v:.1f}" for k, v in parts if v >= 0.05]
    for impl in IMPLEMENTATION_STYLES:
        if f"train_bytes_{impl}" in row:
            oom = " OOM" if row[f"oom_{impl}"] else ""
            lines.append(f"train {impl}: {row[f'train_bytes_{impl}'] / GiB:.1f} GiB{oom}")
    return "<br>".join(lines)


def cost_figure(rows: list[dict], gpu_memory: float, title: str | None = None) -> go.Figure:
    """GFLOPs (top) and training memory (bottom) against frames (left) and crop size (right).

    One colour per scheme; memory has one line per attention implementation (solid: materialised
    as in the paper, dotted: materialised on current PyTorch, dashed: fused). The band above
    `gpu_memory` bytes is shaded; crosses on the FLOPs panels mark points whose training step does
    not fit in the paper's setting (the paper's "OOM"). Log scales, hover with the FLOPs breakdown.
    """
    axes = [a for a in AXES if any(r["sweep"] == a for r in rows)] or list(AXES)
    fixed = {a: next((r for r in rows if r["sweep"] == a), None) for a in axes}
    subtitles = []
    for a in axes:
        r = fixed[a]
        label = AXES[a][1].format(size=r["img_size"] if r else "?", frames=r["num_frames"] if r else "?")
        subtitles.append(f"GFLOPs per view vs {label}")
    for a in axes:
        subtitles.append("training memory (GiB), batch {}".format(fixed[a]["batch_size"] if fixed[a] else "?"))
    fig = make_subplots(rows=2, cols=len(axes), subplot_titles=subtitles, vertical_spacing=0.12,
                        horizontal_spacing=0.08)
    schemes = list(dict.fromkeys(r["attention_type"] for r in rows))
    for col, axis in enumerate(axes, start=1):
        key = AXES[axis][0]
        for scheme in schemes:
            pts = [r for r in rows if r["sweep"] == axis and r["attention_type"] == scheme]
            pts.sort(key=lambda r: r[key])
            if not pts:
                continue
            colour = SCHEME_COLOURS.get(scheme, "#333")
            name = SCHEME_LABELS.get(scheme, scheme)
            xs = [r[key] for r in pts]
            hover = [_hover(r) for r in pts]
            fig.add_trace(go.Scatter(
                x=xs, y=[r["gflops"] for r in pts], mode="lines+markers", name=name, legendgroup=scheme,
                showlegend=col == 1, line=dict(color=colour), hovertext=hover, hoverinfo="text",
            ), row=1, col=col)
            oom = [r for r in pts if r.get("oom_paper")]
            if oom:
                fig.add_trace(go.Scatter(
                    x=[r[key] for r in oom], y=[r["gflops"] for r in oom], mode="markers", legendgroup=scheme,
                    name=f"{name}: OOM", showlegend=False, hovertext=[_hover(r) for r in oom], hoverinfo="text",
                    marker=dict(symbol="x", size=13, color=colour, line=dict(width=2, color="black")),
                ), row=1, col=col)
            measured = [r for r in pts if r.get("measured_gflops") is not None]
            if measured:
                fig.add_trace(go.Scatter(
                    x=[r[key] for r in measured], y=[r["measured_gflops"] for r in measured], mode="markers",
                    legendgroup=scheme, name=f"{name}: measured", showlegend=False, hoverinfo="text",
                    hovertext=[f"counted by fvcore: {r['measured_gflops']:.1f} GFLOPs" for r in measured],
                    marker=dict(symbol="circle-open", size=14, color=colour, line=dict(width=2)),
                ), row=1, col=col)
            for impl, (dash, _label) in IMPLEMENTATION_STYLES.items():
                column = f"train_bytes_{impl}"
                if column not in pts[0]:
                    continue
                fig.add_trace(go.Scatter(
                    x=xs, y=[r[column] / GiB for r in pts], mode="lines+markers", legendgroup=scheme,
                    name=f"{name} ({impl})", showlegend=False, line=dict(color=colour, dash=dash),
                    hovertext=hover, hoverinfo="text",
                ), row=2, col=col)
        ticks = sorted({r[key] for r in rows if r["sweep"] == axis})
        for r_ in (1, 2):
            fig.update_xaxes(type="log", tickvals=ticks, title_text=AXES[axis][1].split(" (")[0], row=r_, col=col)
        fig.update_yaxes(type="log", title_text="GFLOPs" if col == 1 else None, row=1, col=col)
        mem = [r[f"train_bytes_{i}"] / GiB for r in rows for i in IMPLEMENTATION_STYLES if f"train_bytes_{i}" in r]
        lo, hi = math.log10(min(mem + [gpu_memory / GiB]) / 1.5), math.log10(max(mem + [gpu_memory / GiB]) * 1.5)
        fig.update_yaxes(type="log", range=[lo, hi], title_text="GiB" if col == 1 else None, row=2, col=col)
        # shade "does not fit", from the GPU's memory to the top of the (fixed) range
        fig.add_shape(type="rect", xref=f"x{len(axes) + col} domain", yref=f"y{len(axes) + col}", x0=0, x1=1,
                      y0=gpu_memory / GiB, y1=10**hi, fillcolor="rgba(239,85,59,0.12)", line_width=0,
                      layer="below")
        fig.add_hline(y=gpu_memory / GiB, line=dict(color="rgba(239,85,59,0.8)", width=1), row=2, col=col,
                      annotation_text=f"out of memory above {gpu_memory / GiB:g} GiB", annotation_position="top left")
    styles = "; ".join(f"{d}: {label}" for d, label in IMPLEMENTATION_STYLES.values())
    fig.update_layout(
        title=title or "TimeSformer cost per scheme", height=850, template="plotly_white", hovermode="closest",
        legend=dict(orientation="h", y=-0.08), margin=dict(t=90, b=120),
    )
    fig.add_annotation(text=f"memory lines — {styles}; × = out of memory in the paper's setting",
                       xref="paper", yref="paper", x=0, y=-0.16, showarrow=False, font=dict(size=11), align="left")
    return fig


def breakdown_figure(estimate) -> go.Figure:
    """Horizontal bars of one estimate's GFLOPs per term (patch embedding, linears, scores per step...)."""
    items = sorted(estimate.flops.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker_color=SCHEME_COLOURS.get(estimate.attention_type, "#333"),
                           hovertemplate="%{y}: %{x:.2f} GFLOPs<extra></extra>"))
    fig.update_layout(title=f"{estimate.gflops:.1f} GFLOPs per view — {SCHEME_LABELS.get(estimate.attention_type)}",
                      xaxis_title="GFLOPs", template="plotly_white", height=360, margin=dict(l=120))
    return fig


def memory_figure(estimates: dict, gpu_memory: float | None = None) -> go.Figure:
    """Stacked bars of training memory (weights, gradients, optimizer state, activations, workspace)
    for a few labelled estimates, e.g. {"materialised": e1, "fused": e2}."""
    parts = [("weights", "weight_bytes"), ("gradients", "gradient_bytes"), ("optimizer state", "optimizer_bytes"),
             ("activations", "activation_bytes"), ("workspace", "workspace_bytes")]
    labels = list(estimates)
    fig = go.Figure()
    for name, attr in parts:
        fig.add_trace(go.Bar(name=name, x=labels, y=[getattr(estimates[k], attr) / GiB for k in labels],
                             hovertemplate=f"{name}: %{{y:.2f}} GiB<extra></extra>"))
    if gpu_memory:
        fig.add_hline(y=gpu_memory / GiB, line=dict(color="#EF553B", dash="dash"),
                      annotation_text=f"{gpu_memory / GiB:g} GiB")
    fig.update_layout(barmode="stack", yaxis_title="GiB", template="plotly_white", height=380,
                      title="training memory per step")
    return fig


# --------------------------------------------------------------------------------------------------
# The paper's patch diagrams (analysis.patterns)


def pattern_figure(attention_type: str, grid: tuple[int, int, int], query=(0, 0, 0), blocks: int | None = None,
                   local_split: int = 2, global_stride: int = 2, frames: list[int] | None = None) -> go.Figure:
    """Plotly figure of one scheme: the frames side by side, the query in blue and each step's keys in
    its colour; with `blocks`, the receptive field after that many blocks instead."""
    T, H, W = grid
    if blocks is None:
        codes, labels = pattern_codes(attention_type, grid, query, local_split, global_stride)
        seeing = steps_seeing(attention_type, grid, query, local_split, global_stride)
        colours = palette(labels)
    else:
        codes = receptive_codes(attention_type, grid, query, blocks, local_split, global_stride)
        labels = [f"reached after {blocks} block{'s' if blocks > 1 else ''}"]
        seeing = None
        colours = palette([]) + [REACHED_COLOUR]
    frames = list(range(T)) if frames is None else frames
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
    n = len(colours)
    scale = [[v, c] for i, c in enumerate(colours) for v in (i / n, (i + 1) / n)]
    fig = go.Figure(go.Heatmap(z=z, zmin=0, zmax=n, colorscale=scale, showscale=False, xgap=1, ygap=1,
                               text=text, hoverinfo="text"))
    for name, colour in zip(["query"] + labels, [QUERY_COLOUR] + colours[2:]):
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


# --------------------------------------------------------------------------------------------------
# Attention on the frames (the app's Explore and Schemes pages)

SUMMARY_METRICS = {  # the numbers of analysis.maps.summarize worth plotting, with their axis labels
    "entropy_norm": "entropy / log(keys)",
    "distance_space": "attention distance in space (patches)",
    "distance_time": "attention distance in time (frames)",
    "same_frame": "share on the same frame",
    "other_frames": "share on other frames",
    "cls": "share on cls",
}


def patch_centres(grid: tuple[int, int, int], frame_px: int, patch_px: float, columns: int, pad: int):
    """(x, y, (t, h, w)) of every patch centre in an `analysis.media.grid_image` of the frames."""
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
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    fig = go.Figure(go.Image(source=uri, hoverinfo="skip"))
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
    """One line per (scheme, step) of `analysis.maps.summary_table` rows against the layer."""
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


# --------------------------------------------------------------------------------------------------
# Faithfulness and training


def curves_figure(curves: dict, kind: str, labels: dict) -> go.Figure:
    """Deletion or insertion curves (`analysis.faithfulness.Curves`) of several maps, AUC in the legend;
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


def compare_figure(runs: dict[str, list[dict]], title: str) -> go.Figure:
    """Several runs' curves against the step, one colour per run: validation loss (training loss dotted) on the
    left, validation acc1 on the right ({run name: its metrics.jsonl rows})."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "validation accuracy"))
    for n, (name, rows) in enumerate(runs.items()):
        colour = qualitative.Plotly[n % len(qualitative.Plotly)]
        for split, panels in (("val", (("loss", 1), ("acc1", 2))), ("train", (("loss", 1),))):
            pts = sorted((r for r in rows if r["split"] == split), key=lambda r: r["step"])
            for metric, col in panels:
                if any(metric in r for r in pts):
                    fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r.get(metric) for r in pts],
                                             mode="lines+markers" if split == "val" else "lines",
                                             name=f"{name} {split} {metric}", legendgroup=name,
                                             line=dict(color=colour, dash=None if split == "val" else "dot")),
                                  row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(template="plotly_white", height=420, title=title)
    return fig


def throughput_figure(rows: list[dict], title: str) -> go.Figure | None:
    """Training clips/s (left axis) and the share of each epoch spent waiting for data (right axis) against
    the step, from the train rows of metrics.jsonl that have them (None where none has: an older run)."""
    pts = sorted((r for r in rows if r.get("split") == "train" and "clips_per_s" in r), key=lambda r: r["step"])
    if not pts:
        return None
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r["clips_per_s"] for r in pts], mode="lines+markers",
                             name="clips/s", line=dict(color="#636EFA")), secondary_y=False)
    if any("data_wait" in r for r in pts):
        fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r.get("data_wait") for r in pts],
                                 mode="lines+markers", name="waiting for data", line=dict(color="#EF553B", dash="dot")),
                      secondary_y=True)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="training clips/s", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="share of the epoch", range=[0, 1], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%",
                     showgrid=False, secondary_y=True)
    fig.update_layout(template="plotly_white", height=340, title=title, legend=dict(orientation="h", y=-0.25))
    return fig


# --------------------------------------------------------------------------------------------------
# Temporal evidence (analysis.temporal)

ORDERING_LABELS = {"original": "as recorded", "reversed": "frames reversed", "shuffled": "frames shuffled",
                   "frozen": "middle frame frozen"}


def order_effects_figure(effects: dict[str, float], target_name: str) -> go.Figure:
    """Bars: the target's probability for the clip as recorded, reversed, shuffled and frozen."""
    keys = list(effects)
    fig = go.Figure(go.Bar(x=[ORDERING_LABELS.get(k, k) for k in keys], y=[effects[k] for k in keys],
                           marker_color=["#636EFA"] + ["#EF553B"] * (len(keys) - 1),
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"probability of '{target_name}' when the frame order changes", yaxis_title="probability",
                      yaxis=dict(range=[0, 1.02]), template="plotly_white", height=340)
    return fig


def frame_importance_figure(importance: dict[str, list[float]]) -> go.Figure:
    """One line per explanation: each frame's share of its positive relevance (`analysis.temporal`)."""
    fig = go.Figure()
    for name, shares in importance.items():
        fig.add_trace(go.Scatter(x=list(range(len(shares))), y=shares, mode="lines+markers", name=name))
    fig.update_layout(title="share of each frame in the explanation", xaxis_title="frame", yaxis_title="share",
                      xaxis=dict(dtick=1), template="plotly_white", height=340, legend=dict(orientation="h", y=-0.3))
    return fig


def step_share_figure(rows: list[dict]) -> go.Figure:
    """Stacked bars per layer: the share of LRP relevance through each kind of attention step."""
    fig = go.Figure()
    for step in dict.fromkeys(r["step"] for r in rows):
        pts = [r for r in rows if r["step"] == step]
        fig.add_trace(go.Bar(x=[r["layer"] for r in pts], y=[r["share"] for r in pts], name=f"{step} step",
                             marker_color=STEP_COLOURS.get(step), hovertemplate="layer %{x}: %{y:.2f}<extra></extra>"))
    fig.update_layout(barmode="stack", title="where the relevance flows: the share of each attention step, per layer",
                      xaxis_title="layer", yaxis_title="share of |relevance|", xaxis=dict(dtick=1),
                      yaxis=dict(range=[0, 1]), template="plotly_white", height=340)
    return fig
