"""Schemes: the paper's patch diagrams (Figure 1) drawn from the model's real masks for the clip's grid;
the same clip through the trained shipped model of each scheme side by side (prediction, attention of a
chosen layer and step, rollout, held-out accuracy from its card) — or through models of each scheme derived
from the current model's weights — and their summary numbers per layer."""

import dataclasses

import streamlit as st

from analysis.figures import SUMMARY_METRICS, pattern_figure, summary_figure
from analysis.maps import HEAD_FUSIONS
from analysis.media import grid_image, overlay
from analysis.patterns import blocks_to_full_clip
from app import cache, settings, widgets
from app.sidebar import current
from timesformer import ATTENTION_TYPES, SCHEME_LABELS, shipped

st.title("Schemes")
ctx = current()
model = ctx.need_model()
ctx.need_clip()
cfg = model.config
T, Hp, Wp = grid = ctx.grid

# ---- Figure 1 for this clip's grid
st.subheader(f"Which patches a query sees — the {T}×{Hp}×{Wp} grid of this clip")
for key, value in (("k_schemes_t", T // 2), ("k_schemes_h", Hp // 2), ("k_schemes_w", Wp // 2),
                   ("k_schemes_view", "one block's steps"), ("k_schemes_blocks", 1)):
    st.session_state.setdefault(key, value)
# a choice made for a bigger grid or a deeper model is brought within this one's
for key, hi in (("k_schemes_t", T), ("k_schemes_h", Hp), ("k_schemes_w", Wp),
                ("k_schemes_blocks", max(cfg.depth, 2) + 1)):
    if st.session_state[key] >= hi:
        st.session_state[key] = hi - 1
c = st.columns([1, 1, 1, 2, 2])
t = c[0].number_input("query frame t", 0, T - 1, key="k_schemes_t")
h = c[1].number_input("row h", 0, Hp - 1, key="k_schemes_h")
w = c[2].number_input("column w", 0, Wp - 1, key="k_schemes_w")
view = c[3].radio("Show", ["one block's steps", "receptive field"], key="k_schemes_view", horizontal=True)
blocks = None
if view == "receptive field":
    blocks = c[4].slider("after blocks", 1, max(cfg.depth, 2), key="k_schemes_blocks")
query = (int(t), int(h), int(w))
frames = list(range(T)) if T <= 8 else sorted({0, query[0] - 1, query[0], query[0] + 1, T - 1} & set(range(T)))
order = [cfg.attention_type] + [s for s in ATTENTION_TYPES if s != cfg.attention_type]  # the model's first
tabs = st.tabs([SCHEME_LABELS[s] + (" — this model" if s == cfg.attention_type else "") for s in order])
for tab, scheme in zip(tabs, order):
    with tab:
        fig = pattern_figure(scheme, grid, query, blocks=blocks, local_split=cfg.local_split,
                             global_stride=cfg.global_stride, frames=frames)
        st.plotly_chart(fig, key=f"schemes_pattern_{scheme}", width="stretch")
        full = blocks_to_full_clip(scheme, grid, query, max_blocks=cfg.depth)
        st.caption(f"Every patch of the clip can reach this query after {full} block(s)." if full else
                   f"Within {cfg.depth} blocks this query never sees the whole clip.")
        widgets.download_figure(fig, f"pattern_{scheme}", f"schemes_dl_pattern_{scheme}")

# ---- the clip through a model of each scheme
st.subheader("The same clip through a model of each scheme")
trained = cache.shipped_schemes(settings.MODELS)
TRAINED, DERIVED = "trained models (shipped)", "derived from the current model"
sources = ([TRAINED] if trained else []) + [DERIVED]
widgets.sanitize("k_schemes_source", sources)
st.session_state.setdefault("k_schemes_source", sources[0])
source = st.radio("Models", sources, key="k_schemes_source", horizontal=True,
                  help="trained: one shipped model per scheme, same size and recipe; derived: the current "
                       "model's weights regrouped by each scheme, extra steps untrained")


def trained_side_by_side() -> dict[str, list[dict]]:
    """The shipped model of each scheme on this clip, one row each; returns their summary tables."""
    st.caption("One model per scheme, each **trained** from scratch with the same size and recipe on SynthMotion "
               "temporal (`bench/shipped_models.py`; the command is in each model card). Each sees the clip "
               "sampled as it was trained. Attention is the query's, in the layer and step chosen, averaged over "
               "heads unless picked otherwise; rollout is the cls token's.")
    models = {s: cache.get_model(k) for s, k in trained.items()}
    depth = min(m.config.depth for m in models.values())
    widgets.sanitize("k_schemes_layer", range(depth))
    for key, value in (("k_schemes_layer", depth - 1), ("k_schemes_query", "cls"), ("k_schemes_head", "mean")):
        st.session_state.setdefault(key, value)
    c = st.columns([1, 2, 1])
    layer = c[0].selectbox("Layer", range(depth), key="k_schemes_layer")
    qkind = c[1].radio("Query", ["cls", "patch"], key="k_schemes_query", horizontal=True,
                       format_func=lambda q: "cls" if q == "cls" else f"patch {query} (picked above)")
    head = c[2].selectbox("Heads", HEAD_FUSIONS, key="k_schemes_head", format_func=lambda h: f"{h} over heads")
    summaries = {}
    for scheme, model in models.items():
        mcfg = model.config
        ckey = dataclasses.replace(ctx.ckey, num_frames=mcfg.num_frames, size=mcfg.img_size)
        run = cache.model_run(trained[scheme], ckey)
        summaries[scheme] = run["summary"]
        T_, H_, W_ = mcfg.grid
        q = "cls" if qkind == "cls" else (min(query[0], T_ - 1), min(query[1], H_ - 1), min(query[2], W_ - 1))
        steps = [step.name for step in model.blocks[0].steps]
        widgets.sanitize(f"k_schemes_step_{scheme}", steps)
        st.session_state.setdefault(f"k_schemes_step_{scheme}", steps[-1])
        shown = widgets.display(cache.decode(ckey)[1], 64)
        st.divider()
        info, att, roll = st.columns([1.2, 2, 2])
        info.markdown(f"**{SCHEME_LABELS[scheme]}**")
        info.caption(f"`{trained[scheme][0].rsplit('/', 1)[-1]}` — "
                     f"{shipped.summary(cache.model_card(trained[scheme]))}")
        info.markdown("top-3: " + " · ".join(f"{'**' * (i == 0)}{name}{'**' * (i == 0)} {p:.2f}"
                                              for i, (name, p) in enumerate(run["top"][:3])))
        step = info.selectbox("Step", steps, key=f"k_schemes_step_{scheme}")
        with att:
            maps = cache.layer_maps(trained[scheme], ckey, int(layer), q, head)
            if maps[step] is None:  # cls in a time step
                st.info(f"cls takes no part in the {step} step (it is skipped there): pick a patch query or "
                        "another step.")
            else:
                image = grid_image(overlay(shown, maps[step]), columns=4)
                st.image(image, width="stretch", caption=f"layer {layer}, {step} step, query "
                         f"{q if q == 'cls' else 'patch ' + str(q)}")
        with roll:
            over = overlay(shown, run["rollout"])
            image = grid_image(over, columns=4)
            st.image(image, caption="cls attention rollout", width="stretch")
            widgets.download_frames(over, image, f"rollout_{scheme}", f"schemes_dl_rollout_{scheme}")
    return summaries


def derived_side_by_side() -> dict[str, list[dict]] | None:
    """The current model regrouped by each scheme (`timesformer.transfer`); None until a large model's button."""
    st.caption(f"Only the current model ({cfg.attention_type}) is trained. The others are **built from its "
               "weights**: every tensor whose name and shape match is copied, and a scheme's extra attention steps "
               "start with their output linear at zero (the identity), as when the paper initialises from an "
               "image ViT. They show how the scheme regroups attention on these weights, not how a trained model "
               "of it behaves.")
    heavy = ctx.device.type == "cpu" and sum(p.numel() for p in model.parameters()) > settings.HEAVY_PARAMS
    if heavy and not (st.button("Run the clip through all five schemes", key="schemes_run")
                      or st.session_state.get("_schemes_ran") == (ctx.mkey, ctx.ckey)):
        st.info("This model is large: running five schemes takes a while on a CPU. Press the button to start.")
        return None
    st.session_state["_schemes_ran"] = (ctx.mkey, ctx.ckey)
    results = {}
    bar = st.progress(0.0, text="running the schemes…")
    for i, scheme in enumerate(ATTENTION_TYPES):
        results[scheme] = cache.scheme_run(ctx.mkey, ctx.ckey, scheme)
        bar.progress((i + 1) / len(ATTENTION_TYPES), text=f"{SCHEME_LABELS[scheme]} done")
    bar.empty()
    shown = widgets.display(ctx.frames, 64)
    for scheme, r in results.items():
        left, right = st.columns([1, 3])
        left.markdown(f"**{SCHEME_LABELS[scheme]}**")
        left.caption(r["label"])
        left.markdown("\n".join(f"- {name}: {p:.3f}" for name, p in r["top"][:3]))
        over = overlay(shown, r["rollout"])
        image = grid_image(over)
        with right:
            st.image(image, caption="cls attention rollout", width="stretch")
            widgets.download_frames(over, image, f"rollout_{scheme}", f"schemes_dl_rollout_{scheme}")
    return {s: r["summary"] for s, r in results.items()}


summaries = trained_side_by_side() if source == TRAINED else derived_side_by_side()
if summaries:
    st.subheader("Summary numbers per layer")
    st.session_state.setdefault("k_schemes_metric", "entropy_norm")
    metric = st.selectbox("Number", list(SUMMARY_METRICS), format_func=SUMMARY_METRICS.get, key="k_schemes_metric")
    fig = summary_figure(summaries, metric)
    st.plotly_chart(fig, key="schemes_summary", width="stretch")
    widgets.download_figure(fig, f"summary_{metric}", "schemes_dl_summary")
    table = [{"scheme": s, **row} for s, rows in summaries.items() for row in rows]
    st.dataframe(table, hide_index=True, key="schemes_table")
