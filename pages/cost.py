"""Cost: FLOPs and training memory of the five schemes against frames and crop size (the paper's
Figure 3 for your model and GPU), with the out-of-memory line, and "will my run fit" for a batch size."""

import streamlit as st
import torch

from analysis.complexity import IMPLEMENTATIONS, estimate, max_batch_size, measure_if_it_fits
from analysis.cost.sweep import MAX_FRAMES, MAX_SIZE, parse_ints
from analysis.figures import breakdown_figure, cost_figure, memory_figure
from app import cache, widgets
from app.sidebar import current
from timesformer import ATTENTION_TYPES, SCHEME_LABELS, TimeSformerConfig

GiB = 1024**3
st.title("Cost")
ctx = current()
PRESETS = {"ViT-B/16 (TimeSformer)": TimeSformerConfig.base, "TimeSformer-HR": TimeSformerConfig.hr,
           "TimeSformer-L": TimeSformerConfig.large}
# the GPU memory starts at the app's own GPU's, where it runs on one
on_gpu = ctx.device is not None and ctx.device.type == "cuda"
card_bytes = torch.cuda.get_device_properties(ctx.device).total_memory if on_gpu else None
gpu_gib = round(card_bytes / GiB, 1) if on_gpu else 32.0
options = (["the current model"] if ctx.model is not None else []) + list(PRESETS)
if ctx.model is None and st.session_state.get("k_cost_base") == "the current model":
    # kept, not dropped to ViT-B: the choice holds again once the sidebar has a model (a path still being typed)
    st.info("The cost of the current model waits for a model in the sidebar.")
    st.stop()
widgets.sanitize("k_cost_base", options)
for key, value in (("k_cost_base", "ViT-B/16 (TimeSformer)"), ("k_cost_schemes", list(ATTENTION_TYPES)),
                   ("k_cost_frames", "8, 16, 32, 64, 96"), ("k_cost_sizes", "224, 336, 448, 560"),
                   ("k_cost_batch", 1), ("k_cost_dtype", "fp32"), ("k_cost_optimizer", "sgd"),
                   ("k_cost_ckpt", False), ("k_cost_gpu", gpu_gib)):
    st.session_state.setdefault(key, value)

c = st.columns([2, 3, 2, 2])
base_name = c[0].selectbox("Model", options, key="k_cost_base")
schemes = c[1].multiselect("Schemes", ATTENTION_TYPES, format_func=SCHEME_LABELS.get, key="k_cost_schemes")
frames_text = c[2].text_input("Frames", key="k_cost_frames")
sizes_text = c[3].text_input("Crop sizes (px)", key="k_cost_sizes")
c = st.columns(5)
batch = c[0].number_input("Batch size (clips per GPU)", 1, 4096, key="k_cost_batch")
dtype = c[1].selectbox("Precision", ["fp32", "bf16"], key="k_cost_dtype")
optimizer = c[2].selectbox("Optimizer", ["sgd", "adamw"], key="k_cost_optimizer")
gpu = c[3].number_input("GPU memory (GiB)", 1.0, 1024.0, step=8.0, key="k_cost_gpu")
ckpt = c[4].checkbox("Checkpointing", key="k_cost_ckpt",
                     help="activation checkpointing (tslab train --grad-checkpointing): each block keeps only its "
                          "input and is computed again in the backward, for about a third more compute")

base = ctx.model.config if base_name == "the current model" else PRESETS[base_name]()


try:
    frames, sizes = parse_ints(frames_text, "Frames", MAX_FRAMES), parse_ints(sizes_text, "Crop sizes", MAX_SIZE)
except ValueError as e:
    st.error(f"{e}.")
    st.stop()
bad = [s for s in sizes + (base.img_size,) if s % base.patch_size]
if bad:
    st.error(f"Crop sizes must be multiples of the patch size {base.patch_size}: {', '.join(map(str, bad))}.")
    st.stop()
if not schemes:
    st.info("Pick at least one scheme.")
    st.stop()
opts = dict(batch_size=int(batch), dtype=dtype, optimizer=optimizer, checkpointing=bool(ckpt))


rows = cache.cost_curves(base.to_json(), tuple(schemes), frames, sizes, gpu * GiB, tuple(opts.items()))
fig = cost_figure(rows, gpu * GiB, title=f"{base_name}: {base.num_frames} frames of {base.img_size}² at the base point")
st.plotly_chart(fig, key="cost_curves", width="stretch")
widgets.download_figure(fig, "cost_curves", "cost_dl_curves")
st.caption("GFLOPs follow fvcore's convention (one multiply-add = one FLOP), per view. Memory is one training step "
           "at its peak (weights, gradients, optimizer state, activations, workspace) for the batch; the shaded band "
           "is over the GPU's memory. See docs/complexity.md for the formulas and their checks.")

# ---- will my run fit
st.subheader("Will my run fit?")
c = st.columns(3)
# a new base model (another preset, or another model in the sidebar): start from its configuration
fit_for = f"{base_name}: {ctx.mkey}" if base_name == "the current model" else base_name
if st.session_state.get("_fit_for") != fit_for:
    st.session_state.update(_fit_for=fit_for, k_fit_scheme=base.attention_type, k_fit_frames=base.num_frames,
                            k_fit_size=base.img_size)
scheme = c[0].selectbox("Scheme", ATTENTION_TYPES, format_func=SCHEME_LABELS.get, key="k_fit_scheme")
fit_frames = c[1].number_input("Frames", 1, 1024, key="k_fit_frames")
fit_size = c[2].number_input("Crop size", base.patch_size, 4096, step=base.patch_size, key="k_fit_size")
if fit_size % base.patch_size:
    st.error(f"The crop size must be a multiple of the patch size {base.patch_size}.")
    st.stop()
cfg = base.replace(attention_type=scheme, num_frames=int(fit_frames), img_size=int(fit_size))
estimates = {impl: estimate(cfg, **opts, **kw) for impl, kw in IMPLEMENTATIONS.items()}
fused = estimates["fused"]
best = max_batch_size(cfg, gpu * GiB, **opts, **IMPLEMENTATIONS["fused"])
paper_best = max_batch_size(cfg, gpu * GiB, **opts, **IMPLEMENTATIONS["paper"])
msg = (f"{SCHEME_LABELS[scheme]}, {fit_frames} × {fit_size}², batch {batch}, {dtype}, {optimizer}"
       f"{', checkpointing' if ckpt else ''}: **{fused.training_bytes / GiB:.2f} GiB** per training step with fused "
       f"attention (this repo's default), {estimates['paper'].training_bytes / GiB:.2f} GiB materialised as in the "
       f"paper; {fused.gflops:.1f} GFLOPs per view, {fused.params / 1e6:.1f}M parameters.")
if fused.fits(gpu * GiB):
    st.success(f"Fits in {gpu:g} GiB. " + msg + f" Largest batch that fits: {best} (fused), {paper_best} (paper).")
else:
    st.error(f"Does not fit in {gpu:g} GiB. " + msg + (f" A batch of {best} fits." if best else
                                                        " Not even one clip fits: try bf16, checkpointing or "
                                                        "fewer frames."))
if on_gpu and fused.fits(card_bytes):
    # the estimate against this card: one real training step of the model with random weights and clips
    key = ("_fit_measured", cfg.to_json(), tuple(opts.items()))
    if st.button(f"Measure on the {ctx.device_name}", key="fit_measure",
                 help="runs two training steps of this configuration with random weights and clips"):
        with st.spinner("Two training steps on the GPU…"):
            m = measure_if_it_fits(cfg, device=ctx.device, **opts)
        st.session_state[key] = "out of memory" if m is None else m.peak_bytes
    peak = st.session_state.get(key)
    if peak == "out of memory":
        st.error(f"Measured on the {ctx.device_name}: out of memory (estimate {fused.training_bytes / GiB:.2f} GiB; "
                 "memory other processes hold counts too).")
    elif peak is not None:
        st.info(f"Measured on the {ctx.device_name}: a training step peaks at **{peak / GiB:.2f} GiB** allocated, "
                f"against the estimate's {fused.training_bytes / GiB:.2f} GiB (× {fused.training_bytes / peak:.3f}).")
c = st.columns(2)
with c[0]:
    mem = memory_figure(estimates, gpu * GiB)
    st.plotly_chart(mem, key="cost_memory", width="stretch")
    widgets.download_figure(mem, "memory", "cost_dl_memory")
with c[1]:
    br = breakdown_figure(fused)
    st.plotly_chart(br, key="cost_breakdown", width="stretch")
    widgets.download_figure(br, "flops_breakdown", "cost_dl_breakdown")
