"""Rollout & attribution: every explanation method of `analysis.EXPLANATIONS` side by side on the same patch
grid, with its cost and its scores on the shipped benchmark before running, progress while running,
deletion/insertion curves after, and the evidence about time: what changing the frame order does to the
prediction, which frames the explanations point at, and how much relevance flows through time steps."""

import streamlit as st
import torch

from analysis import EXPLANATIONS, explain
from analysis.attribution import BASELINES
from analysis.benchmark import row_name
from analysis.faithfulness import curves_cost, deletion_insertion, random_map
from analysis.figures import curves_figure, frame_importance_figure, order_effects_figure, step_share_figure
from analysis.media import grid_image, overlay
from analysis.temporal import frame_importance
from app import cache, widgets
from app.sidebar import current

st.title("Rollout & attribution")
ctx = current()
model = ctx.need_model()
ctx.need_clip()
cfg = model.config
grid = ctx.grid
video = cache.on_model(model, ctx.centre)
LABELS = {name: e.label for name, e in EXPLANATIONS.items()}
BASELINE_LABELS = {"constant": "constant: the mean colour", **{k: f"{k.replace('_', ' ')}: {v}" for k, v in
                                                                 BASELINES.items()}}

# ---- choices
for key, value in (("k_attr_methods", ["rollout", "gae", "lrp"]), ("k_attr_target", -1), ("k_attr_steps", 16),
                   ("k_attr_window_t", 2), ("k_attr_window_p", 2), ("k_attr_batch", 4), ("k_attr_curves", True),
                   ("k_attr_curve_steps", 16), ("k_attr_discard", 0.0), ("k_attr_baseline", "temporal_median"),
                   ("k_attr_temporal", True)):
    st.session_state.setdefault(key, value)
widgets.sanitize("k_attr_target", range(-1, cfg.num_classes))
st.session_state["k_attr_methods"] = [m for m in st.session_state["k_attr_methods"] if m in EXPLANATIONS]
methods = st.multiselect("Methods", list(EXPLANATIONS), format_func=LABELS.get, key="k_attr_methods")
c = st.columns(4)
names = model.class_names
target = c[0].selectbox("Target class", range(-1, cfg.num_classes), key="k_attr_target",
                        format_func=lambda i: "the predicted class" if i < 0 else names[i])
n_steps = c[1].number_input("Integrated Gradients steps", 2, 256, key="k_attr_steps")
wt = c[2].number_input("Occlusion window: frames", 1, grid[0], key="k_attr_window_t")
wp = c[3].number_input("Occlusion window: patches per side", 1, max(grid[1], grid[2]), key="k_attr_window_p")
c = st.columns(4)
baseline = c[0].selectbox("Removed patches become", list(BASELINE_LABELS), format_func=BASELINE_LABELS.get,
                          key="k_attr_baseline", help="for occlusion, ablation, integrated gradients and the curves")
batch = c[1].number_input("Clips per batch", 1, 64, key="k_attr_batch")
discard = c[2].slider("Rollout: discard the weakest share", 0.0, 0.95, step=0.05, key="k_attr_discard")
curve_steps = c[3].number_input("Curve points", 4, 64, key="k_attr_curve_steps")
c = st.columns(4)
curves = c[0].checkbox("Deletion / insertion curves", key="k_attr_curves")
temporal = c[1].checkbox("Evidence about time", key="k_attr_temporal",
                         help="the prediction with the frames reversed, shuffled and frozen; relevance per step")
if not methods:
    st.info("Pick at least one method.")
    st.stop()
base = 0.0 if baseline == "constant" else baseline
values = {"n_steps": int(n_steps), "window": (int(wt), int(wp)), "internal_batch_size": int(batch),
          "discard_ratio": float(discard), "baseline": base}

# ---- cost and benchmark scores before running
fwd = cache.forward_seconds(ctx.mkey, ctx.ckey)
bench_model, scores = cache.explanation_scores(ctx.mkey)
rows = []
for m in methods:
    cst = EXPLANATIONS[m].estimate(grid, **EXPLANATIONS[m].pick(values))
    seconds = cst.seconds(fwd) + (curves_cost(int(curve_steps)).seconds(fwd) if curves else 0)
    row = {"method": LABELS[m], "family": EXPLANATIONS[m].family, "forwards": cst.forwards,
           "backwards": cst.backwards, "estimated seconds": round(seconds, 2)}
    s = scores.get(row_name(m, base), {})  # the benchmark row of this method with the chosen baseline
    for key, label in (("signal_share", "signal share"), ("pointing", "pointing"),
                       ("used_pointing", "pointing, used frames"), ("mass", "mass"),
                       ("auc_deletion", "deletion AUC"), ("auc_insertion", "insertion AUC")):
        row[f"bench: {label}"] = round(s[key], 3) if key in s else None
    row["sanity check"] = ("passes" if s["sanity_pass"] else "FAILS") if "sanity_pass" in s else None
    rows.append(row)
st.dataframe(rows, hide_index=True, key="attr_cost")
bench = scores.get("_model", {})
st.caption(f"One forward of this clip takes {fwd * 1000:.0f} ms on the app's {ctx.device_name}; a backward about twice "
           f"that. {'Curves add 2 × (points + 1) + 1 forwards per method. ' if curves else ''}"
           + ("No benchmark results found (`tslab bench explain`)." if not bench_model else
              f"Benchmark columns: `tslab bench explain` on the model **{bench_model}**"
              + (f" ({bench.get('clips')} clips of {bench['data']}, whose evidence has no known place: the "
                 "deletion and insertion AUCs — the target's probability as the map's top patches are removed, "
                 "or restored — and the sanity check)" if "data" in bench else
                 " (held-out SynthMotion clips with known object masks: share of positive relevance on the object "
                 "that decides the class rather than the distractor, frames whose top cell is on it — of all "
                 "frames, and of the frames the model's decision depends on — relevance mass on it; the deletion "
                 "and insertion AUCs)")
              + ". The sanity check randomises the weights top-down and fails a method whose maps stay the same. "
              "See docs/analysis.md."))

tgt = None if target < 0 else int(target)
params = (tuple(sorted((k, str(v)) for k, v in values.items())), tgt)
key_of = {m: (ctx.mkey, ctx.ckey, m, params) for m in methods}
store = cache.results()
if st.button("Run", type="primary", key="attr_run"):
    with st.status("Computing…", expanded=True) as status:
        for m in methods:
            done = store.get(key_of[m])
            if done is not None and (not curves or done["curves"] is not None):
                continue
            st.write(LABELS[m])
            bar = st.progress(0.0)
            progress = lambda d, t, bar=bar: bar.progress(min(d / max(t, 1), 1.0), text=f"{d}/{t} clips")
            sal = explain(model, video, m, target=tgt, progress=progress, **EXPLANATIONS[m].pick(values))
            bar.progress(1.0)
            result = {"map": sal[0].cpu().numpy(), "curves": None}
            if curves:
                cbar = st.progress(0.0, text="deletion / insertion")
                result["curves"] = deletion_insertion(model, video, sal, target=tgt, steps=int(curve_steps),
                                                      baseline=base, progress=lambda d, t, b=cbar: b.progress(d / t))
            store.put(key_of[m], result)
        random_key = (ctx.mkey, ctx.ckey, "random", params, int(curve_steps))
        if curves and store.get(random_key) is None:
            store.put(random_key, deletion_insertion(model, video, random_map(grid), target=tgt,
                                                     steps=int(curve_steps), baseline=base))
        status.update(label="Done", state="complete", expanded=False)

done = {m: store.get(key_of[m]) for m in methods if store.get(key_of[m]) is not None}
if not done:
    st.info("Press **Run** to compute the chosen methods (results are kept for this model, clip and settings).")
    st.stop()

# ---- side by side
frames = widgets.display(ctx.frames, 64)
st.subheader("Maps on the patch grid")
st.caption("Each map is scaled over the whole clip; red = most important for the target.")
for m, r in done.items():
    over = overlay(frames, torch.from_numpy(r["map"]))
    image = grid_image(over)
    st.markdown(f"**{LABELS[m]}** — {EXPLANATIONS[m].reference}")
    st.image(image, width="stretch")
    widgets.download_frames(over, image, f"{m}", f"attr_dl_{m}", arrays={"map": r["map"], "frames": ctx.frames})

with_curves = {m: r["curves"] for m, r in done.items() if r["curves"] is not None}
rand = store.get((ctx.mkey, ctx.ckey, "random", params, int(curve_steps)))
if with_curves:
    st.subheader("Deletion and insertion")
    st.caption("Deletion removes the most important patches first (lower area is better); insertion reveals "
               "them first on a baseline clip (higher is better). The random ranking is the bar to beat.")
    shown = {**with_curves, **({"random": rand} if rand is not None else {})}
    cols = st.columns(2)
    for col, kind in zip(cols, ("deletion", "insertion")):
        fig = curves_figure(shown, kind, {**LABELS, "random": "random ranking"})
        with col:
            st.plotly_chart(fig, key=f"attr_{kind}", width="stretch")
            widgets.download_figure(fig, f"{kind}_curves", f"attr_dl_{kind}")

# ---- evidence about time
if temporal:
    st.subheader("Evidence about time")
    evidence = cache.temporal_evidence(ctx.mkey, ctx.ckey, tgt)
    target_name = names[evidence["target"]]
    c = st.columns(2)
    fig = order_effects_figure(evidence["order_effects"], target_name)
    c[0].plotly_chart(fig, key="attr_order", width="stretch")
    fig = frame_importance_figure({LABELS[m]: frame_importance(torch.from_numpy(r["map"])[None])[0].tolist()
                                   for m, r in done.items()})
    c[1].plotly_chart(fig, key="attr_frames", width="stretch")
    if evidence["step_shares"]:
        st.plotly_chart(step_share_figure(evidence["step_shares"]), key="attr_steps", width="stretch")
        st.caption("LRP relevance through each attention step's branch (rather than its residual), as a share "
                   "of all attention steps of the layer: how much of the decision went through attention "
                   "across frames (time) against within a frame.")
    else:
        st.caption(f"{cfg.attention_type} has no time step: frames meet only through " +
                   ("the final average of their cls tokens." if cfg.attention_type == "space_only"
                    else "joint or windowed attention, so no share of relevance can be attributed to time alone."))
