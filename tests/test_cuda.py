"""The GPU path end to end: training in bf16 with data workers and resuming, --compile, evaluation, attention
recording, rollout and a gradient attribution. Skipped without a CUDA GPU; CUDA kernels are not bit-exact
between runs (atomics in some backward passes), so results are compared with tolerances."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.test_train import rows, toy_args
from timesformer import TimeSformer, TimeSformerConfig, attention_pattern, compile_model, load_model, record_attention
from timesformer import train as T
from timesformer.attention import SCHEMES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def cuda_args(out, *extra, **kw):
    return toy_args(out, "--device", "cuda", "--amp", "bf16", *extra, **kw)


def close_rows(a: list[dict], b: list[dict]) -> None:
    assert [(r["epoch"], r["step"], r["split"], r["clips"]) for r in a] == [
        (r["epoch"], r["step"], r["split"], r["clips"]) for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=2e-2, abs=1e-3)


def test_bf16_training_with_workers_resumes_from_a_checkpoint(tmp_path):
    ref = tmp_path / "ref"
    res = T.main(cuda_args(ref, "--ckpt-every", "2", "--keep", "10", clips=16, epochs=2))  # 8 steps
    config = yaml.safe_load((ref / "train_config.yaml").read_text())
    assert config["amp"] == "torch.bfloat16" and config["args"]["workers"] >= 1  # auto: workers on a GPU
    assert f"1 × {torch.cuda.get_device_name(0)} (cuda:0)" in (ref / "log.txt").read_text() and res["val"]["clips"] == 8
    train_rows = [r for r in rows(ref, drop=()) if r["split"] == "train"]
    assert all(0 <= r["data_wait"] < 1 and r["clips_per_s"] > 0 for r in train_rows)
    # resume from the step-2 checkpoint into a fresh folder: it must finish as the uninterrupted run did
    mid = ref / "ckpt-s00000002"
    logged = torch.load(mid / "train_state.pt", weights_only=True)["metrics_lines"]
    out = tmp_path / "resumed"
    T.main(cuda_args(out, "--resume", str(mid), clips=16, epochs=2))
    close_rows(rows(out), rows(ref)[logged:])
    a, b = load_model(ref / "checkpoint-last").state_dict(), load_model(out / "checkpoint-last").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=2e-3, rtol=2e-2) for k in a)


def test_compiled_training_on_cuda(tmp_path):
    T.main(cuda_args(tmp_path / "eager", clips=8, epochs=1))
    T.main(cuda_args(tmp_path / "compiled", "--compile", clips=8, epochs=1))
    close_rows(rows(tmp_path / "compiled"), rows(tmp_path / "eager"))


def test_grad_checkpointing_on_cuda(tmp_path):
    """bf16: recomputing each block in the backward trains as keeping its activations does (no loader workers:
    they are tested above, and starting 15 of them twice would cost this test most of its time)."""
    T.main(cuda_args(tmp_path / "kept", "--workers", "0", clips=8, epochs=1))
    T.main(cuda_args(tmp_path / "recomputed", "--workers", "0", "--grad-checkpointing", clips=8, epochs=1))
    close_rows(rows(tmp_path / "recomputed"), rows(tmp_path / "kept"))


@pytest.mark.parametrize("attention_type", list(SCHEMES))
def test_every_scheme_compiles_on_cuda(attention_type):
    """compile_model of each scheme in bf16: the same logits and gradients as eager, within bf16's rounding."""
    import torch._dynamo

    torch._dynamo.reset()  # a fresh cache per scheme: the recompile limit must not turn compiling into eager
    model = small(attention_type).cuda().train()
    video = torch.randn(2, 3, 4, 32, 32, device="cuda")
    results = []
    for run in (model, compile_model(model)):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = run(video).float()
        out.pow(2).mean().backward()
        results.append((out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really compiled
    (eager, g_eager), (compiled, g_compiled) = results
    assert (compiled - eager).abs().max() <= 0.05 * eager.abs().max()
    assert torch.nn.functional.cosine_similarity(g_eager, g_compiled, dim=0) > 0.99


@pytest.mark.parametrize("knob", ["MATH_BELOW", "PACK_TO"])
@pytest.mark.parametrize("attention_type", list(SCHEMES))
def test_short_group_settings_on_cuda(attention_type, knob, monkeypatch):
    """Short groups by matmul + softmax, or packed behind a mask (whichever CUDA kernel takes the mask), in bf16:
    the same logits and gradients as PyTorch's fused kernel, within bf16's rounding."""
    from timesformer import attention

    model = small(attention_type).cuda().train()
    video = torch.randn(2, 3, 4, 32, 32, device="cuda")
    monkeypatch.setattr(attention, "SHORT_BELOW", 0)  # PyTorch's kernels, not the Triton kernel, for short groups
    results = []
    for value in (0, 64):
        monkeypatch.setattr(attention, knob, value)
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(video).float()
        out.pow(2).mean().backward()
        results.append((out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (default, g_default), (other, g_other) = results
    assert (other - default).abs().max() <= 0.05 * default.abs().max()
    assert torch.nn.functional.cosine_similarity(g_default, g_other, dim=0) > 0.99


@pytest.mark.parametrize("attention_type", ["divided_space_time", "axial"])
def test_the_short_group_kernel_on_cuda(attention_type, monkeypatch):
    """`attention.SHORT_BELOW` (the Triton kernel of timesformer.short_attention) in bf16 autocast, eager and
    compiled: PyTorch's kernels' logits and gradients within bf16's rounding; the kernel ran, by default on the
    4-token time groups alone (16: the default)."""
    from timesformer import attention
    from timesformer import short_attention as short

    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig(attention_type=attention_type, img_size=32, patch_size=8, num_frames=4,
                                          embed_dim=64, depth=2, num_heads=4, num_classes=5, drop_path_rate=0.0))
    model = model.cuda().train()  # 16 channels per head: the smallest tl.dot takes
    video = torch.randn(2, 3, 4, 32, 32, device="cuda")
    calls, kernel = [], short._short_attention
    monkeypatch.setattr(short, "_short_attention", lambda *a: calls.append(a[2]) or kernel(*a))
    results, lengths = [], []
    for below, compiled in ((0, False), (attention.SHORT_BELOW, False), (32, False), (32, True)):
        monkeypatch.setattr(attention, "SHORT_BELOW", below)
        if compiled:
            monkeypatch.setattr(short, "_short_attention", kernel)  # the op itself in the graph
        model.zero_grad()
        calls.clear()
        run = compile_model(model) if compiled else model
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = run(video).float()
        out.pow(2).mean().backward()
        results.append((out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        lengths.append(sorted(set(calls)))
    # none; time groups (and axial's 5-token rows and columns, cls included); with them frames of 16 + cls
    assert lengths[:3] == ([[], [4, 5], [4, 5]] if attention_type == "axial" else [[], [4], [4, 17]])
    (default, g_default), *others = results
    for other, g_other in others:
        assert (other - default).abs().max() <= 0.05 * default.abs().max()
        assert torch.nn.functional.cosine_similarity(g_default, g_other, dim=0) > 0.99


@pytest.mark.parametrize("L, groups", [(8, 1568), (15, 896)])  # ViT-B 8×224 at batch 8: time groups, axial rows
def test_the_short_group_kernel_at_vit_b_sizes_on_cuda(L, groups):
    """The kernel alone in bf16 at the sizes it is for (12 heads of 64; 12544 and 13440 rows: both warp counts
    its autotune times), against fp32 attention per group: output and qkv gradient."""
    from timesformer.short_attention import short_attention, usable

    torch.manual_seed(0)
    heads, hd = 12, 64
    qkv = torch.randn(groups * L, 3 * heads * hd, device="cuda").bfloat16().requires_grad_()
    assert usable(qkv, L, hd)
    got = short_attention(qkv, heads, L)
    q, k, v = (t.transpose(1, 2).float() for t in qkv.view(groups, L, 3, heads, hd).unbind(2))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(groups * L, -1)
    grad = torch.randn_like(want)
    (g_got,) = torch.autograd.grad(got, qkv, grad.bfloat16())
    (g_want,) = torch.autograd.grad(want, qkv, grad)
    assert got.dtype == torch.bfloat16 and (got.float() - want).abs().max() < 2e-2
    assert (g_got.float() - g_want).abs().max() < 3e-2 * g_want.abs().max()


def test_evaluate_on_cuda(tmp_path):
    from timesformer import evaluate as E

    T.main(cuda_args(tmp_path / "run", clips=8, epochs=1))
    res = E.run(tmp_path / "run" / "checkpoint-last", "synthmotion-temporal", num_clips=8, device="cuda",
                amp="none", per_clip=True)
    assert res["clip"]["clips"] == 8 and res["video"]["clips"] == 8
    cpu = E.run(tmp_path / "run" / "checkpoint-last", "synthmotion-temporal", num_clips=8, device="cpu", per_clip=True)
    assert res["clip"]["loss"] == pytest.approx(cpu["clip"]["loss"], rel=1e-3)
    # every clip's prediction (`--predictions`), as on the CPU
    assert [r["clip"] for r in res["predictions"]] == [r["clip"] for r in cpu["predictions"]]
    assert [r["probability"] for r in res["predictions"]] == pytest.approx(
        [r["probability"] for r in cpu["predictions"]], abs=1e-3)
    auto = E.run(tmp_path / "run" / "checkpoint-last", "synthmotion-temporal", num_clips=8, device="cuda")
    assert auto["amp"] == "bf16" and auto["clip"]["loss"] == pytest.approx(cpu["clip"]["loss"], rel=5e-2)


def small(attention_type):
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig(attention_type=attention_type, img_size=32, patch_size=8, num_frames=4,
                                          embed_dim=32, depth=2, num_heads=4, num_classes=5, drop_path_rate=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("attention_type", list(SCHEMES))
def test_recording_in_bf16_on_cuda(attention_type):
    model = small(attention_type).cuda()
    video = torch.randn(2, 3, 4, 32, 32, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fused = model(video)
        with record_attention(model) as rec:
            recorded = model(video)
    assert (fused.float() - recorded.float()).abs().max() < 0.05 * fused.float().abs().max()
    pattern = attention_pattern(attention_type, 4, 4, 4)
    for m in rec:
        dense = m.dense()  # float32, on the GPU
        assert dense.is_cuda and torch.equal((dense > 0).all(0).all(0).cpu(), pattern[m.step])
        takes_part = pattern[m.step].any(1).cuda()
        assert torch.allclose(dense.sum(-1)[..., takes_part], torch.ones((), device="cuda"), atol=2e-2)


@pytest.mark.parametrize("method", ["rollout", "gae"])
def test_rollout_and_a_gradient_attribution_on_cuda_match_the_cpu(method):
    from analysis import explain

    model = small("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32)
    cpu = explain(model, video, method)
    gpu = explain(model.cuda(), video.cuda(), method)
    assert gpu.shape == cpu.shape == (1, 4, 4, 4) and torch.isfinite(gpu).all()
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4, rtol=1e-3)


def test_explain_cli_on_cuda_matches_the_cpu(tmp_path, monkeypatch):
    """`tslab explain --device cuda`: the model, the clip and every map on the GPU, the same numbers as on the
    CPU (the clip is made here: the GPU machine may have no video decoder)."""
    import json

    pytest.importorskip("captum", reason="occlusion and --temporal are Captum's (requirements.txt)")

    import analysis.report as report
    from timesformer import save_model
    from timesformer.video import ClipInfo

    save_model(small("axial").cpu(), tmp_path / "model")
    views = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(report, "read_clip", lambda *a, **k: (views.clone(), ClipInfo(8.0, 4, [0, 1, 2, 3], 32, 32,
                                                                                       "test")))
    out = {}
    for device in ("cpu", "cuda"):
        assert report.main(["clip.mp4", "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / device),
                            "--methods", "gae", "occlusion", "--temporal", "--device", device]) == 0
        out[device] = json.loads((tmp_path / device / "predictions.json").read_text())
    assert out["cuda"]["device"] == "cuda:0" and out["cpu"]["device"] == "cpu"
    # cuDNN convolutions may run in TF32 (PyTorch's default), so the patch embedding differs in the 4th digit
    assert out["cuda"]["logits"] == pytest.approx(out["cpu"]["logits"], rel=1e-2, abs=1e-2)
    assert out["cuda"]["top5_video"][0]["class"] == out["cpu"]["top5_video"][0]["class"]
    assert out["cuda"]["temporal"]["target"] == out["cpu"]["temporal"]["target"]
    assert (tmp_path / "cuda" / "explain_occlusion.png").stat().st_size > 0


def test_explanation_benchmark_on_cuda_matches_the_cpu():
    """`tslab bench explain --device cuda`'s core: the model's accuracy, the scores and the sanity check's
    randomised stages (drawn on the CPU, so the same weights on every device) as on the CPU."""
    pytest.importorskip("captum", reason="the frame-drop check is Captum's feature ablation (requirements.txt)")
    from analysis.benchmark import benchmark, clips
    from timesformer.synthmotion import SynthMotion

    model = small("divided_space_time")  # weights far from ties: the same predicted classes on both devices
    data = SynthMotion("distractor", "test", 2, model.config.num_frames, 32, seed=3)
    cpu = benchmark(model, clips(data, 2), ["rollout", "gae"], sanity_clips=2)
    gpu = benchmark(model.cuda(), clips(data, 2), ["rollout", "gae"], sanity_clips=2)
    assert gpu["_model"]["accuracy"] == cpu["_model"]["accuracy"]
    assert gpu["_model"]["frame_drop"] == pytest.approx(cpu["_model"]["frame_drop"], rel=1e-2, abs=1e-3)
    for row in ("rollout", "gae"):
        for key in ("mass", "signal_share", "auc_deletion", "auc_insertion"):
            assert gpu[row][key] == pytest.approx(cpu[row][key], rel=1e-2, abs=1e-3), (row, key)
        curves = [[s["spearman"] for s in r[row]["randomisation"]] for r in (cpu, gpu)]
        assert curves[1] == pytest.approx(curves[0], abs=5e-2), row


def test_inference_mode_first_then_autograd_on_cuda():
    from timesformer.groupings import scheme_groupings

    scheme_groupings.cache_clear()
    model = small("sparse_local_global").cuda()
    video = torch.randn(1, 3, 3, 40, 24, device="cuda")  # odd sides: the gathered, padded groups
    with torch.inference_mode():
        ref = model(video)
    out = model(video)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-4)
