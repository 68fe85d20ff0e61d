"""Plotly figure builders shared by the CLI (`analysis/complexity.py`) and the app's cost page.

Builders take plain rows (dicts, as `analysis.complexity.sweep` returns and complexity.csv stores) and
return `plotly.graph_objects.Figure`s; they never compute costs themselves.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
                    hovertext=[f"measured on this machine: {r['measured_gflops']:.1f} GFLOPs" for r in measured],
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
