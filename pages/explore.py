"""Explore: the clip's frames, the top-5 predictions and the attention of one layer, step, head and query
overlaid on the frames (click a patch to make it the query)."""

import streamlit as st

from analysis.figures import picker_figure
from analysis.maps import HEAD_FUSIONS
from analysis.media import animation_bytes, grid_image, overlay
from app import cache, widgets
from app.sidebar import current
from timesformer import shipped

st.title("Explore")
ctx = current()
model = ctx.need_model()
views = ctx.need_clip()
cfg = model.config
T, Hp, Wp = ctx.grid
st.caption(f"{ctx.model_label} · {cfg.attention_type} · clip {ctx.clip_label} sampled as {T} frames of "
           f"{views.shape[-1]}² → a {T}×{Hp}×{Wp} patch grid" + (f" · {shipped.summary(ctx.card)}" if ctx.card else ""))

# ---- predictions
preds = cache.predictions(ctx.mkey, ctx.ckey)
cols = st.columns(2)
for col, kind, title in ((cols[0], "clip", "Centre crop (clip)"), (cols[1], "video", "3 crops averaged (video)")):
    col.markdown(f"**{title}**")
    col.dataframe({"class": [c for c, _ in preds[kind]], "probability": [p for _, p in preds[kind]]},
                  column_config={"probability": st.column_config.ProgressColumn(format="%.3f", min_value=0.0,
                                                                                max_value=1.0)},
                  hide_index=True, width="stretch", key=f"explore_top_{kind}")

# ---- a click on the picker figure (previous run) makes that patch the query
pick = st.session_state.get("explore_pick")
points = pick.get("selection", {}).get("points", []) if pick else []
if points and "customdata" in points[0]:
    t, h, w = (int(v) for v in points[0]["customdata"])
    if st.session_state.get("_explore_picked") != (t, h, w):
        st.session_state["_explore_picked"] = (t, h, w)
        st.session_state.update(k_explore_query="patch", k_explore_t=t, k_explore_h=h, k_explore_w=w)

# ---- controls
steps = [s.name for s in model.blocks[0].steps]
heads = list(HEAD_FUSIONS) + list(range(cfg.num_heads))
widgets.sanitize("k_explore_layer", range(cfg.depth))
widgets.sanitize("k_explore_step", steps)
widgets.sanitize("k_explore_head", heads)
for key, hi in (("k_explore_t", T), ("k_explore_h", Hp), ("k_explore_w", Wp)):
    if st.session_state.get(key, 0) >= hi:
        st.session_state[key] = hi - 1
for key, value in (("k_explore_layer", cfg.depth - 1), ("k_explore_step", steps[-1]), ("k_explore_head", "mean"),
                   ("k_explore_query", "cls"), ("k_explore_t", T // 2), ("k_explore_h", Hp // 2),
                   ("k_explore_w", Wp // 2)):
    st.session_state.setdefault(key, value)
c = st.columns([1, 1, 1, 1, 3])
layer = c[0].selectbox("Layer", range(cfg.depth), key="k_explore_layer")
step = c[1].selectbox("Step", steps, key="k_explore_step",
                      help="the attention steps of this scheme's blocks")
head = c[2].selectbox("Head", heads, key="k_explore_head", format_func=lambda h: f"head {h}" if isinstance(h, int)
                      else f"{h} over heads")
qkind = c[3].radio("Query", ["cls", "patch"], key="k_explore_query", horizontal=True)
if qkind == "patch":
    p = c[4].columns(3)
    t = p[0].number_input("frame t", 0, T - 1, key="k_explore_t")
    h = p[1].number_input("row h", 0, Hp - 1, key="k_explore_h")
    w = p[2].number_input("column w", 0, Wp - 1, key="k_explore_w")
    query = (int(t), int(h), int(w))
else:
    c[4].caption("The classification token's attention. Pick **patch** (or click a patch below) to see what "
                 "one patch attends to.")
    query = "cls"

maps = cache.layer_maps(ctx.mkey, ctx.ckey, int(layer), query, head)
if step not in maps:
    st.error(f"No {step!r} attention was recorded in layer {layer}.")
    st.stop()
frames = widgets.display(ctx.frames)
if maps[step] is None:  # no such map exists: show the frames alone and say why
    st.info(f"cls takes no part in the {step} step (it is neither query nor key there, as in the official code), "
            "so it has no attention to show: pick a patch query, or click a patch below.")
over = frames if maps[step] is None else overlay(frames, maps[step])

# ---- the overlay, clickable: one marker per patch
pad, columns = 2, min(T, 8)
image = grid_image(over, columns=columns, pad=pad)
head_label = head if isinstance(head, str) else f"head {head}"
fig = picker_figure(image, (T, Hp, Wp), frames.shape[1], frames.shape[1] / views.shape[-1] * cfg.patch_size,
                    columns, pad, query, title=f"layer {layer}, {step} step, {head_label}, query "
                                              f"{query if query == 'cls' else 'patch ' + str(query)}")
st.plotly_chart(fig, key="explore_pick", on_select="rerun", selection_mode="points", width="stretch",
                config={"displayModeBar": True})
st.caption("Click a patch to make it the query. Colours are scaled over the whole clip (red = most attention).")

tab_anim, tab_frames = st.tabs(["Animation", "Sampled frames"])
with tab_anim:
    if maps[step] is not None:
        st.image(animation_bytes(over, "gif"), caption=f"attention over the {T} frames",
                 width=min(384, 2 * frames.shape[2]))
        widgets.download_frames(over, image, f"attention_l{layer}_{step}", "explore_dl_overlay",
                                arrays={"map": maps[step], "frames": ctx.frames})
with tab_frames:
    plain = grid_image(frames, columns=columns, pad=pad)
    st.image(plain, caption=f"frames {ctx.info['indices']} of {ctx.info['num_frames']}", width="stretch")
    widgets.download_frames(frames, plain, "frames", "explore_dl_frames")
