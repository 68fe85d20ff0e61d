import os

import pytest
import torch

from tests.reference import reference_logits
from timesformer import (
    ATTENTION_TYPES,
    TimeSformer,
    TimeSformerConfig,
    attention_pattern,
    compile_model,
    record_attention,
)
from timesformer.attention import SCHEMES

SMALL = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=2, num_heads=4, num_classes=5,
             drop_path_rate=0.0)


def small_model(attention_type, seed=0, **kw):
    torch.manual_seed(seed)
    model = TimeSformer(TimeSformerConfig(attention_type=attention_type, **{**SMALL, **kw}))
    with torch.no_grad():  # random everything, so zero-initialised layers and embeddings matter too
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize(
    "attention_type, expected",
    [("space_only", 85.9), ("joint_space_time", 85.9), ("divided_space_time", 121.4),
     ("sparse_local_global", 121.4), ("axial", 156.8)],
)
def test_parameter_counts_match_paper_table_1(attention_type, expected):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = TimeSformer(TimeSformerConfig.base(attention_type=attention_type, num_classes=174))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == expected


def test_presets():
    assert TimeSformerConfig.base().grid == (8, 14, 14)
    assert TimeSformerConfig.hr().grid == (16, 28, 28)
    assert TimeSformerConfig.large().grid == (96, 14, 14)
    assert TimeSformerConfig.tiny(attention_type="axial").attention_type == "axial"
    tiny = TimeSformer(TimeSformerConfig.tiny())
    assert sum(p.numel() for p in tiny.parameters()) < 2_000_000


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="attention_type"):
        TimeSformerConfig(attention_type="divided")
    with pytest.raises(ValueError, match="divisible"):
        TimeSformerConfig(img_size=100, patch_size=16)
    with pytest.raises(ValueError, match="num_frames"):
        TimeSformerConfig(num_frames=0)
    with pytest.raises(ValueError, match="class names"):
        TimeSformerConfig(num_classes=3, class_names=["a", "b"])
    for name, value, message in (("drop_path_rate", 1.0, "at least 0 and below 1"), ("drop_rate", -0.1, "below 1"),
                                 ("mlp_ratio", 0, "above 0"), ("norm_eps", "1e-6", "got '1e-6'")):
        with pytest.raises(ValueError, match=f"{name} must be a number .*{message}"):
            TimeSformerConfig(**{name: value})
    cfg = TimeSformerConfig.tiny(class_names=list("abcdefghij"))
    assert TimeSformerConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------------------------
# Which keys each step lets a patch query see (paper §3 definitions)


def keys_seen(attention_type, T, H, W):
    """{step: number of patch keys (cls excluded) seen by each patch query}."""
    return {step: mask[1:, 1:].sum(1) for step, mask in attention_pattern(attention_type, T, H, W).items()}


def test_keys_seen_match_the_paper_definitions():
    T, H, W = 8, 14, 14
    N = H * W
    expected = {
        "space_only": {"space": N},
        "joint_space_time": {"joint": T * N},
        "divided_space_time": {"time": T, "space": N},
        "sparse_local_global": {"local": T * N // 4, "global": T * N // 8},
        "axial": {"time": T, "width": W, "height": H},
    }
    for attention_type, steps in expected.items():
        seen = keys_seen(attention_type, T, H, W)
        assert list(seen) == list(steps)
        for step, count in steps.items():
            assert (seen[step] == count).all(), (attention_type, step)


def test_pattern_details():
    T, H, W = 4, 4, 6
    N = H * W
    idx = lambda t, h, w: 1 + t * N + h * W + w
    pat = attention_pattern("sparse_local_global", T, H, W)
    q = idx(1, 0, 0)
    local = pat["local"][q]
    assert local[idx(3, 1, 2)] and not local[idx(0, 2, 0)] and not local[idx(0, 0, 3)]
    glob = pat["global"][q]
    assert glob[idx(3, 2, 4)] and not glob[idx(2, 2, 4)] and not glob[idx(1, 1, 0)]
    pat = attention_pattern("axial", T, H, W)
    assert pat["width"][idx(2, 1, 3), idx(2, 1, 0)] and not pat["width"][idx(2, 1, 3), idx(2, 0, 3)]
    assert pat["height"][idx(2, 1, 3), idx(2, 3, 3)] and not pat["height"][idx(1, 1, 3), idx(2, 3, 3)]
    # cls: skipped in time steps, query and key everywhere else
    assert not pat["time"][0].any() and not pat["time"][:, 0].any()
    assert pat["width"][0, 1:].all() and pat["width"][1:, 0].all()


def test_odd_sizes_split_into_ceil_and_floor_windows():
    T, H, W = 3, 5, 7
    pat = attention_pattern("sparse_local_global", T, H, W)
    seen = pat["local"][1:, 1:].sum(1).reshape(T, H, W)
    # windows of 3 and 2 rows, 4 and 3 columns, over all 3 frames
    assert seen[0, 0, 0] == 3 * 3 * 4 and seen[0, 4, 6] == 3 * 2 * 3
    seen = pat["global"][1:, 1:].sum(1).reshape(T, H, W)
    # stride-2 subsets of odd sizes: 2 or 1 frames × 3 or 2 rows × 4 or 3 columns
    assert seen[0, 0, 0] == 2 * 3 * 4 and seen[1, 1, 1] == 1 * 2 * 3
    # every patch still sees itself and exactly one local window
    assert all(pat[s][1:, 1:].diagonal().all() for s in pat)


# ------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_matches_naive_reference(attention_type):
    model = small_model(attention_type)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(video), reference_logits(model, video), atol=1e-4)
        # other frame counts and non-square sizes: embeddings are interpolated, grouping follows the clip
        video = torch.randn(1, 3, 6, 48, 32)
        assert torch.allclose(model(video), reference_logits(model, video), atol=1e-4)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 32, 32), (1, 3, 3, 40, 56), (1, 3, 1, 8, 8)])
def test_fused_equals_recorded_and_maps_are_consistent(attention_type, shape):
    model = small_model(attention_type)
    video = torch.randn(shape)
    with torch.no_grad():
        fused = model(video)
        with record_attention(model) as rec:
            recorded = model(video)
    assert torch.allclose(fused, recorded, atol=1e-5)
    T, H, W = shape[2], shape[3] // 8, shape[4] // 8
    steps = [s.name for s in SCHEMES[attention_type].steps]
    assert [(m.layer, m.step) for m in rec] == [(layer, s) for layer in range(2) for s in steps]
    pattern = attention_pattern(attention_type, T, H, W)
    for m in rec:
        dense = m.dense()
        assert dense.shape == (shape[0], 4, 1 + T * H * W, 1 + T * H * W)
        assert torch.equal((dense > 0).all(0).all(0), pattern[m.step])  # support == pattern
        takes_part = pattern[m.step].any(1)
        sums = dense.sum(-1)
        assert torch.allclose(sums[..., takes_part], torch.ones(()), atol=1e-5)
        assert (sums[..., ~takes_part] == 0).all()
    assert rec.get(1, steps[-1]) is list(rec)[-1]


def test_recording_only_requested_layers_and_nothing_outside():
    model = small_model("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad(), record_attention(model, layers=[-1]) as rec:
        model(video)
    assert {m.layer for m in rec} == {1}
    with pytest.raises(KeyError, match="layer 0"):
        rec.get(0, "space")
    assert all(a.recorder is None for blk in model.blocks for a in blk.step_attentions())
    with pytest.raises(RuntimeError, match="recorded nothing"):
        with record_attention(model):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with record_attention(model, layers=[5]):
            pass


@pytest.mark.parametrize("attention_type", ["divided_space_time", "axial"])
def test_detached_recording_stops_gradients_at_the_softmax(attention_type):
    """detach=True: the same forward, no gradient into queries and keys, and each map still gets its .grad."""
    model = small_model(attention_type)
    video = torch.randn(2, 3, 4, 32, 32)
    with record_attention(model, keep_grad=True, detach=True) as rec:
        logits = model(video)
    assert torch.allclose(logits, model(video), atol=1e-5)
    logits[:, 0].sum().backward()
    D = model.config.embed_dim
    for blk in model.blocks:
        for attn in blk.step_attentions():
            g = attn.qkv.weight.grad
            assert g[: 2 * D].abs().max() == 0 and g[2 * D :].abs().sum() > 0  # q, k rows; v rows
    assert all(m.probs.grad is not None and m.probs.grad.abs().sum() > 0 for m in rec)


def test_full_recording_size_formula():
    model = small_model("axial")
    with torch.no_grad(), record_attention(model) as rec:
        model(torch.randn(1, 3, 4, 32, 32))
    from analysis.cost.estimate import recording_bytes

    assert sum(m.probs.numel() * 4 for m in rec) == recording_bytes(model.config, (4, 4, 4))


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_every_parameter_gets_a_gradient(attention_type):
    model = small_model(attention_type).train()
    model(torch.randn(2, 3, 4, 32, 32)).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for enable in (False, True):
        model = small_model("axial").set_grad_checkpointing(enable)
        model(torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "sparse_local_global", "axial"])
def test_fresh_extra_steps_are_zero_initialised(attention_type):
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig(attention_type=attention_type, **SMALL)).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        before = model(video)
        for blk in model.blocks:
            for step in blk.steps[:-1]:
                assert step.prefix and getattr(blk, f"{step.prefix}_fc").weight.abs().sum() == 0
                for p in getattr(blk, f"{step.prefix}_attn").parameters():
                    p.normal_()
        assert torch.allclose(model(video), before)  # extra steps contribute nothing until trained


def test_time_embedding_carries_frame_order():
    video = torch.randn(1, 3, 4, 32, 32)
    for attention_type in ATTENTION_TYPES:
        model = small_model(attention_type)
        with torch.no_grad():
            same = torch.allclose(model(video), model(video.flip(2)), atol=1e-5)
        assert same == (attention_type == "space_only"), attention_type


def test_dropout_only_in_training():
    model = small_model("joint_space_time", attn_drop_rate=0.5, drop_rate=0.5, drop_path_rate=0.5)
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(video), model(video))
        model.train()
        assert not torch.allclose(model(video), model(video))


def test_bad_input_shapes_raise_clear_errors():
    model = small_model("divided_space_time")
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        model(torch.randn(1, 3, 4, 30, 32))
    with pytest.raises(ValueError, match=r"permute\(0, 2, 1, 3, 4\)"):
        model(torch.randn(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="video batch"):
        model(torch.randn(3, 4, 32, 32))
    with pytest.raises(ValueError, match="expected a float video, normalised .* got torch.uint8 .*transform_frames"):
        model(torch.zeros(1, 3, 4, 32, 32, dtype=torch.uint8))  # raw frames (was: conv2d's dtype mismatch)


def test_forward_features_and_head():
    model = small_model("sparse_local_global")
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(video)
        assert feats.shape == (2, 1 + 4 * 16, 32)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
        assert torch.allclose(model.forward_head(feats), model(video), atol=1e-5)  # forward: last block cls-only


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_bf16_autocast_on_cpu(attention_type):
    model = small_model(attention_type)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = model(video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(video)
            with record_attention(model) as rec:
                model(video)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    assert len(rec) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_cuda_fused_recorded_and_autocast(attention_type):
    model = small_model(attention_type).cuda()
    video = torch.randn(2, 3, 4, 32, 32, device="cuda")
    with torch.no_grad():
        ref = model(video)
        with record_attention(model):
            rec = model(video)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(video)
    assert torch.allclose(ref, rec, atol=1e-4)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_inference_folds_proj_and_fc_and_notices_new_weights():
    model = small_model("axial")
    video = torch.randn(1, 3, 4, 32, 32)

    def both():
        with torch.no_grad():
            folded = model(video)
        unfolded = model(video).detach()  # grad enabled: proj then fc, as in training
        return folded, unfolded

    folded, unfolded = both()
    assert torch.allclose(folded, unfolded, atol=1e-5)
    with torch.no_grad():
        model.blocks[0].width_fc.weight.mul_(3)  # in place: bumps the version counter
    folded2, unfolded2 = both()
    assert torch.allclose(folded2, unfolded2, atol=1e-5) and not torch.allclose(folded, folded2, atol=1e-3)
    model.blocks[1].temporal_attn.proj.weight = torch.nn.Parameter(torch.randn(32, 32))  # a new tensor
    folded3, unfolded3 = both()
    assert torch.allclose(folded3, unfolded3, atol=1e-4) and not torch.allclose(folded2, folded3, atol=1e-3)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_cls_only_last_block_gives_the_same_logits_and_gradients(attention_type):
    model = small_model(attention_type)
    video = torch.randn(2, 3, 3, 40, 24)
    grads = []
    for run in (lambda v: model(v), lambda v: model.forward_head(model.forward_features(v))):
        model.zero_grad()
        out = run(video)
        out.pow(2).sum().backward()
        grads.append((out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-4)


def _inductor_missing() -> str | None:
    """Why torch.compile's default backend cannot run here, or None (inductor on CPU needs a C++ compiler)."""
    import shutil

    try:
        from torch._inductor import cpp_builder

        compiler = cpp_builder.get_cpp_compiler()
    except Exception as e:  # no compiler found, or an inductor without this helper
        return f"no C++ compiler for inductor: {e}"
    return None if shutil.which(compiler) or os.path.exists(compiler) else f"C++ compiler {compiler!r} not found"


@pytest.mark.slow
@pytest.mark.skipif(_inductor_missing() is not None, reason=str(_inductor_missing()))
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_compiled_model_gives_the_same_logits_and_gradients(attention_type):
    """torch.compile (inductor) of the whole model: training forward and backward, and the eval forward."""
    import torch._dynamo

    torch._dynamo.reset()  # a fresh cache per scheme: the recompile limit must not turn compiling into eager
    model = small_model(attention_type, depth=1, embed_dim=16, num_heads=2).train()
    video = torch.randn(2, 3, 2, 16, 24)
    grads = []
    for run in (model, compile_model(model)):
        model.zero_grad()
        out = run(video)
        out.pow(2).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really compiled
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    for eager, compiled in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(eager, compiled, atol=1e-5)
    model.eval()
    with torch.no_grad():  # inference: proj and fc unfolded in the graph, the same logits
        assert torch.allclose(compile_model(model)(video), model(video), atol=1e-5)


def test_compile_modes_are_checked_by_name():
    model = small_model("divided_space_time", depth=1, embed_dim=16, num_heads=2)
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; choose one of default, .*reduce-overhead"):
        compile_model(model, "fast")


@pytest.mark.slow
@pytest.mark.skipif(_inductor_missing() is not None, reason=str(_inductor_missing()))
def test_a_compile_mode_keeps_the_tiling_fix_and_the_logits():
    """compile_model(model, "max-autotune-no-cudagraphs"): the mode's options with the tiling analysis still off,
    and the eager model's logits (CUDA graphs, "reduce-overhead", need a GPU: bench/gpu.py --compile-modes)."""
    import torch._dynamo
    from torch._inductor import config

    torch._dynamo.reset()
    model = small_model("axial", depth=1, embed_dim=16, num_heads=2).eval()
    video = torch.randn(2, 3, 2, 16, 24)
    compiled = compile_model(model, "max-autotune-no-cudagraphs")
    options = compiled.get_compiler_config()  # inductor's configuration as this compile patched it
    assert options["max_autotune"] and options["coordinate_descent_tuning"]
    if hasattr(config.triton, "coalesce_tiling_analysis"):
        assert options["triton.coalesce_tiling_analysis"] is False
    with torch.no_grad():
        assert torch.allclose(compiled(video), model(video), atol=1e-5)


def test_drop_path_drops_whole_samples_in_one_pass_over_them():
    """Stochastic depth keeps each sample's branch scaled by 1/(1-p) or zeroes it, in training only; the scale
    goes on the (B, 1, 1) mask, so the forward and the backward each make one pass over the activations."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from timesformer.model import DropPath

    class FullSize(TorchDispatchMode):  # ops that write a tensor the size of the activations
        def __init__(self, numel):
            super().__init__()
            self.numel, self.names = numel, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == self.numel:
                self.names.append(func.overloadpacket.__name__)
            return out

    torch.manual_seed(0)
    x = torch.randn(64, 5, 3, requires_grad=True)
    drop = DropPath(0.5).train()
    with FullSize(x.numel()) as forward:
        y = drop(x)
    with FullSize(x.numel()) as backward:
        y.backward(torch.ones_like(y))
    assert forward.names == ["mul"] and backward.names.count("mul") == 1 and "div" not in backward.names
    kept = y.flatten(1).ne(0).all(1)
    assert 0 < kept.sum() < 64 and not y[~kept].any()
    assert torch.equal(y[kept], x[kept] * 2) and torch.equal(x.grad, kept[:, None, None].float().expand_as(x) * 2)
    assert drop.eval()(x) is x and DropPath(0.0).train()(x) is x


def test_the_model_says_where_its_weights_are():
    model = small_model("axial")
    assert model.device == torch.device("cpu")
    if torch.cuda.is_available():
        assert model.cuda().device == torch.device("cuda", torch.cuda.current_device())


def test_inputs_of_another_float_dtype_are_cast_and_non_tensors_refused():
    """A float64 or half clip runs in the weights' dtype (was: conv2d's raw dtype RuntimeError); an empty batch and
    a numpy array or list are refused in one line (was: a reshape error, AttributeError: no attribute 'dim')."""
    model = small_model("divided_space_time")
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = model(video)
        for dtype, tol in ((torch.float64, 1e-5), (torch.float16, 5e-2), (torch.bfloat16, 2e-1)):
            out = model(video.to(dtype))
            assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=tol), dtype
            assert model.forward_features(video.to(dtype)).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast still decides the compute dtype
            assert model(video.double()).dtype == torch.bfloat16
        half = small_model("divided_space_time").to(torch.bfloat16)
        assert torch.allclose(half(video).float(), ref, atol=0.5)  # float32 clip, bf16 weights
    wanted = video.double().requires_grad_()
    model(wanted).sum().backward()
    assert wanted.grad.dtype == torch.float64 and wanted.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"^empty batch: a video batch of shape \(0, 3, 4, 32, 32\) holds no clip$"):
        model(video[:0])
    with pytest.raises(ValueError, match=r"^expected a video batch \(B, 3, T, H, W\) as a torch.Tensor, got a "
                                         r"numpy.ndarray: use torch.from_numpy\(video\)$"):
        model(video.numpy())
    with pytest.raises(ValueError, match=r"as a torch.Tensor, got a list: use torch.as_tensor\(video\)$"):
        model(video.tolist())
