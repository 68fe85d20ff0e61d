"""Rollout & attribution: attention rollout and Captum attributions side by side on the same patch grid,
with a cost estimate before running, progress while running, and deletion/insertion curves after."""

import streamlit as st
import torch

from analysis.attribution import METHODS, attribute, cost
from analysis.faithfulness import curves_cost, deletion_insertion, random_map
from analysis.figures import curves_figure
from analysis.media import grid_image, overlay
from analysis.rollout import attention_rollout, grad_rollout
from app import cache, widgets
from app.sidebar import current

st.title("Rollout & attribution")
ctx = current()
model = ctx.need_model()
ctx.need_clip()
cfg = model.config
grid = ctx.grid
video = ctx.centre
ROLLOUTS = ("rollout", "grad_rollout")
LABELS = {"rollout": "attention rollout", "grad_rollout": "gradient-weighted rollout",
          "integrated_gradients": "Integrated Gradients", "saliency": "saliency (|gradient|)",
          "occlusion": "occlusion", "ablation_frames": "ablation of whole frames",
          "ablation_tubes": "ablation of patch tubes", "gradient_x_activation": "gradient × activation"}

# ---- choices
for key, value in (("k_attr_methods", ["rollout", "saliency", "ablation_frames"]), ("k_attr_target", -1),
                   ("k_attr_steps", 16), ("k_attr_window_t", 2), ("k_attr_window_p", 2), ("k_attr_batch", 4),
                   ("k_attr_curves", True), ("k_attr_curve_steps", 16), ("k_attr_discard", 0.0)):
    st.session_state.setdefault(key, value)
widgets.sanitize("k_attr_target", range(-1, cfg.num_classes))
methods = st.multiselect("Methods", list(ROLLOUTS) + list(METHODS), format_func=LABELS.get, key="k_attr_methods")
c = st.columns(4)
names = model.class_names
target = c[0].selectbox("Target class", range(-1, cfg.num_classes), key="k_attr_target",
                        format_func=lambda i: "the predicted class" if i < 0 else names[i])
n_steps = c[1].number_input("Integrated Gradients steps", 2, 256, key="k_attr_steps")
wt = c[2].number_input("Occlusion window: frames", 1, grid[0], key="k_attr_window_t")
wp = c[3].number_input("Occlusion window: patches per side", 1, max(grid[1], grid[2]), key="k_attr_window_p")
c = st.columns(4)
batch = c[0].number_input("Clips per batch", 1, 64, key="k_attr_batch")
discard = c[1].slider("Rollout: discard the weakest share", 0.0, 0.95, step=0.05, key="k_attr_discard")
curves = c[2].checkbox("Deletion / insertion curves", key="k_attr_curves")
curve_steps = c[3].number_input("Curve points", 4, 64, key="k_attr_curve_steps")
if not methods:
    st.info("Pick at least one method.")
    st.stop()

# ---- cost before running
fwd = cache.forward_seconds(ctx.mkey, ctx.ckey)
rows = []
for m in methods:
    cst = cost(m, grid, int(n_steps), (int(wt), int(wp)))
    seconds = cst.seconds(fwd) + (curves_cost(int(curve_steps)).seconds(fwd) if curves else 0)
    rows.append({"method": LABELS[m], "forwards": cst.forwards, "backwards": cst.backwards,
                 "estimated seconds": round(seconds, 2)})
st.dataframe(rows, hide_index=True, key="attr_cost")
st.caption(f"One forward of this clip takes {fwd * 1000:.0f} ms on the app's machine; a backward about twice "
           f"that. {'Curves add 2 × (points + 1) + 1 forwards per method.' if curves else ''}")

tgt = None if target < 0 else int(target)
params = (int(n_steps), int(wt), int(wp), int(batch), float(discard), tgt)
key_of = {m: (ctx.mkey, ctx.ckey, m, params) for m in methods}
store = cache.results()
run = st.button("Run", type="primary", key="attr_run")
if run:
    with st.status("Computing…", expanded=True) as status:
        for m in methods:
            if store.get(key_of[m]) is not None and (not curves or store.get(key_of[m])["curves"] is not None):
                continue
            st.write(LABELS[m])
            bar = st.progress(0.0)
            progress = lambda done, total, bar=bar: bar.progress(min(done / max(total, 1), 1.0),
                                                                 text=f"{done}/{total} clips")
            if m == "rollout":
                sal = attention_rollout(model, video, discard_ratio=float(discard))
            elif m == "grad_rollout":
                sal = grad_rollout(model, video, target=tgt, discard_ratio=float(discard))
            else:
                sal = attribute(model, video, m, target=tgt, n_steps=int(n_steps), internal_batch_size=int(batch),
                                window=(int(wt), int(wp)), progress=progress)
            bar.progress(1.0)
            result = {"map": sal[0].detach().float().numpy(), "curves": None}
            if curves:
                cbar = st.progress(0.0, text="deletion / insertion")
                result["curves"] = deletion_insertion(model, video, sal, target=tgt, steps=int(curve_steps),
                                                      progress=lambda d, t, b=cbar: b.progress(d / t))
            store.put(key_of[m], result)
        if curves and store.get((ctx.mkey, ctx.ckey, "random", params, int(curve_steps))) is None:
            store.put((ctx.mkey, ctx.ckey, "random", params, int(curve_steps)),
                      deletion_insertion(model, video, random_map(grid), target=tgt, steps=int(curve_steps)))
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
    st.markdown(f"**{LABELS[m]}**")
    st.image(image, width="stretch")
    widgets.download_frames(over, image, f"{m}", f"attr_dl_{m}")

with_curves = {m: r["curves"] for m, r in done.items() if r["curves"] is not None}
rand = store.get((ctx.mkey, ctx.ckey, "random", params, int(curve_steps)))
if with_curves:
    st.subheader("Deletion and insertion")
    st.caption("Deletion removes the most important patches first (lower area is better); insertion reveals "
               "them first on a blank clip (higher is better). The random ranking is the bar to beat.")
    shown = {**with_curves, **({"random": rand} if rand is not None else {})}
    figs = {kind: curves_figure(shown, kind, {**LABELS, "random": "random ranking"})
            for kind in ("deletion", "insertion")}
    cols = st.columns(2)
    for col, (kind, fig) in zip(cols, figs.items()):
        with col:
            st.plotly_chart(fig, key=f"attr_{kind}", width="stretch")
            widgets.download_figure(fig, f"{kind}_curves", f"attr_dl_{kind}")
