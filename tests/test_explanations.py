"""Explanations: the registry, GAE and LRP against independent dense implementations of their formulas,
video baselines, ground-truth scores, the randomisation sanity check and the temporal evidence."""

import numpy as np
import pytest
import torch

import analysis
from analysis.attribution import BASELINES, baseline_clip
from analysis.faithfulness import deletion_insertion, random_map
from analysis.grounding import cell_cover, grounding_scores, object_cells, used_frames
from analysis.lrp import relevance
from analysis.rollout import attention_gradients, gae_flow
from analysis.sanity import cascading_randomisation, similarity_curve, spearman
from analysis.temporal import frame_importance, order_effects, step_shares
from tests.reference import reference_relevance
from tests.test_model import small_model
from timesformer import ATTENTION_TYPES
from timesformer.attention import lift

SHAPES = [(4, 32, 32), (3, 24, 40)]  # an even grid, and odd sizes (unequal groups, padding)


def _dense_gae(maps, grads):
    """GAE as the paper writes it: R = I, R ← R + Ā·R per step on dense (1+T·N)² matrices, cls row."""
    T, H, W = maps[0].grid
    M = 1 + T * H * W
    B = maps[0].probs.shape[0]
    R = torch.eye(M).expand(B, M, M).clone()
    for m in maps:
        prod = (m.probs.float() * grads[(m.layer, m.step)].float()).clamp(min=0).mean(2)  # (B, G, L, L)
        A = lift(m.grouping, prod)  # cls rows come out as the mean of the G group rows...
        if m.grouping.with_cls:
            A[:, 0] *= m.grouping.num_groups  # ...but ∇A ⊙ A of cls' mean row is the sum of its groups'
        R = R + A @ R
    return R[:, 0, 1:].reshape(B, T, H, W)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_gae_matches_the_dense_formula(attention_type, shape):
    model = small_model(attention_type)
    video = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    maps, grads = attention_gradients(model, video, target=torch.tensor([0, 1]))
    ours = gae_flow(maps, grads)
    assert ours.shape == (2, *model.grid_of(video))
    assert torch.allclose(ours, _dense_gae(maps, grads), atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # explaining leaves no gradients behind


@pytest.mark.parametrize("shape", SHAPES[:1])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_lrp_matches_the_reference_and_keeps_the_forward(attention_type, shape):
    model = small_model(attention_type)
    video = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(2))
    r = relevance(model, video, target=torch.tensor([1, 0]))
    patches, cls = reference_relevance(model, video, r.target)
    scale = float(patches.abs().max())
    assert torch.allclose(r.patches, patches, atol=1e-5 * scale) and torch.allclose(r.cls, cls, atol=1e-5 * scale)
    assert torch.allclose(r.logits, model(video), atol=1e-5)  # the rules change the backward pass only
    steps = {s.name for s in model.blocks[0].steps}
    assert set(r.branches) == {(i, s) for i in range(len(model.blocks)) for s in steps | {"mlp"}}


def test_every_registered_explanation_runs_and_says_what_it_costs():
    model = small_model("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    grid = model.grid_of(video)
    assert {"attention", "rollout", "grad_rollout", "gae", "lrp", "integrated_gradients", "saliency", "occlusion",
            "ablation_frames", "ablation_tubes", "gradient_x_activation"} <= set(analysis.EXPLANATIONS)
    for name, e in analysis.EXPLANATIONS.items():
        options = {"n_steps": 4} if "n_steps" in e.options else {}
        out = analysis.explain(model, video, name, **options)
        assert out.shape == (1, *grid) and torch.isfinite(out).all(), name
        cost = e.estimate(grid, **options)
        assert cost.forwards >= 1 and cost.backwards >= 0, name
    calls = []
    analysis.explain(model, video, "occlusion", window=(1, 2), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == analysis.EXPLANATIONS["occlusion"].estimate(grid, window=(1, 2)).forwards
    # a clip smaller than the default window (2 frames × 2 patches): the window is cut to the clip, and the
    # progress still ends at the estimate (Captum refused such a window with an AssertionError)
    small = torch.randn(1, 3, 1, 8, 16)  # 1 frame of 1 × 2 patches
    calls.clear()
    out = analysis.explain(model, small, "occlusion", progress=lambda d, t: calls.append((d, t)))
    assert out.shape == (1, 1, 1, 2) and out.abs().sum() > 0
    assert calls[-1][0] == calls[-1][1] == analysis.EXPLANATIONS["occlusion"].estimate((1, 1, 2)).forwards == 2
    with pytest.raises(ValueError, match="occlusion window .* at least 1"):
        analysis.explain(model, video, "occlusion", window=(0, 2))
    with pytest.raises(ValueError, match="unknown explanation"):
        analysis.explain(model, video, "lime")
    with pytest.raises(ValueError, match="n_steps of at least 1, got 0"):  # was Captum's AssertionError
        analysis.explain(model, video, "integrated_gradients", n_steps=0)
    # a class by name, as the model names it (was: TypeError "new(): invalid data type 'str'")
    named = analysis.explain(model, video, "saliency", target=model.class_names[2])
    assert torch.equal(named, analysis.explain(model, video, "saliency", target=2))
    with pytest.raises(ValueError, match="target 'purple' is not a class of this model"):
        analysis.explain(model, video, "saliency", target="purple")
    with pytest.raises(ValueError, match="no option n_steps"):
        analysis.explain(model, video, "gae", n_steps=3)


def test_attention_flow_inside_mixed_precision():
    """Rollout and GAE work when the caller runs under bf16 autocast, and give the fp32 result."""
    model = small_model("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(6))
    for method in ("rollout", "gae", "grad_rollout"):
        plain = analysis.explain(model, video, method)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = analysis.explain(model, video, method)
        assert mixed.dtype == torch.float32 and torch.allclose(plain, mixed, rtol=0.1, atol=0.02), method


def test_explanations_follow_the_target_class():
    model = small_model("axial")
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    for method in ("gae", "lrp", "grad_rollout"):
        a, b = (analysis.explain(model, video, method, target=t) for t in (0, 1))
        assert not torch.allclose(a, b), method
    a, b = (analysis.explain(model, video, "rollout", target=t) for t in (0, 1))
    assert torch.equal(a, b)  # attention does not depend on the class


def test_video_baselines():
    video = torch.randn(2, 3, 5, 32, 48, generator=torch.Generator().manual_seed(4))
    mean = baseline_clip(video, "temporal_mean")
    assert torch.allclose(mean[:, :, 0], video.mean(2)) and torch.equal(mean[:, :, 0], mean[:, :, 4])
    frozen = baseline_clip(video, "frozen_frame")
    assert all(torch.equal(frozen[:, :, t], video[:, :, 2]) for t in range(5))
    blur = baseline_clip(video, "blur")
    assert blur.shape == video.shape and blur.std() < 0.6 * video.std()
    assert (blur.mean((3, 4)) - video.mean((3, 4))).abs().max() < 0.1  # blurring keeps each frame's level
    assert torch.equal(baseline_clip(video, 0.5), torch.full_like(video, 0.5))
    # the temporal median is the still background: a square that covers each pixel in fewer than half of the
    # frames is gone from it, where the temporal mean leaves its ghost along the path
    still = torch.randn(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(6)).expand(1, 3, 5, 16, 16)
    moving = still.clone()
    for t in range(5):
        moving[:, :, t, 4:8, 2 * t : 2 * t + 4] = 3.0
    assert torch.equal(baseline_clip(moving, "temporal_median")[:, :, 0], still[:, :, 0])
    assert (baseline_clip(moving, "temporal_mean")[:, :, 0] - still[:, :, 0]).abs().max() > 0.5
    with pytest.raises(ValueError, match="baseline must be"):
        baseline_clip(video, "noise")
    model = small_model("joint_space_time")
    for baseline in BASELINES:
        clip = video[:1, :, :4, :32, :32]
        curves = deletion_insertion(model, clip, random_map((4, 4, 4)), steps=4, baseline=baseline)
        assert curves.deletion[0] == pytest.approx(curves.insertion[-1], abs=1e-5)  # both ends: the clip itself
        a = analysis.explain(model, clip, "occlusion", window=(1, 1), baseline=baseline)
        assert torch.isfinite(a).all() and a.abs().sum() > 0


def test_grounding_scores_on_known_maps():
    signal = np.zeros((2, 4, 4), bool)
    signal[:, 1, 1] = signal[:, 1, 2] = True
    distractor = np.zeros_like(signal)
    distractor[:, 3, 0] = True
    perfect = grounding_scores(torch.from_numpy(signal.astype(np.float32)), signal, distractor)
    assert perfect == {"pointing": 1.0, "path_pointing": 1.0, "mass": 1.0, "rank_accuracy": 1.0,
                       "signal_share": 1.0, "distractor_pointing": 0.0}
    moved = signal.copy()
    moved[1] = np.roll(signal[1], 1, axis=1)  # in frame 1 the object has moved one cell right
    behind = grounding_scores(torch.from_numpy(signal.astype(np.float32)), moved)  # the map stays behind
    assert behind["pointing"] == 0.5 and behind["path_pointing"] == 1.0
    wrong = grounding_scores(torch.from_numpy(distractor * 1.0), signal, distractor)
    assert wrong["pointing"] == 0 and wrong["signal_share"] == 0 and wrong["distractor_pointing"] == 1
    uniform = grounding_scores(torch.ones(2, 4, 4), signal, distractor)
    assert uniform["mass"] == pytest.approx(4 / 32) and uniform["signal_share"] == pytest.approx(2 / 3)
    assert "used_pointing" not in behind
    # over the frames the model uses only: frame 0, where the map is right
    assert grounding_scores(torch.from_numpy(signal.astype(np.float32)), moved,
                            frames=np.array([True, False]))["used_pointing"] == 1.0
    assert used_frames(np.array([2.0, 0.1, 0.5, -1.0])).tolist() == [True, False, True, False]
    assert not used_frames(np.array([0.0, -0.5])).any()  # no frame matters: none is used
    assert not used_frames(np.array([0.004, 0.001])).any()  # nor when the output hardly depends on the clip
    negative = grounding_scores(-torch.from_numpy(signal * 1.0), signal)  # only positive evidence counts
    assert negative["mass"] == 0.0
    mask = np.zeros((1, 16, 16), bool)
    mask[0, :4, :8] = True  # half of cell (0, 0)... and all of cell (0, 0)'s right neighbour's top half
    cover = cell_cover(mask, 8)
    assert cover.shape == (1, 2, 2) and cover[0, 0, 0] == 0.5 and cover[0, 1, 0] == 0
    assert object_cells({"signal": mask}, 8, min_cover=0.5)["signal"][0, 0, 0]


def test_randomisation_sanity_check():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1) and spearman([1, 1], [1, 2]) == 0
    model = small_model("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    before = [p.clone() for p in model.parameters()]
    stages = cascading_randomisation(model, lambda m: analysis.explain(m, video, "gae", target=0))
    assert [s for s, _ in stages] == ["trained", "head", "block 1", "block 0"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is left untouched
    curve = similarity_curve(stages)
    assert curve[0] == ("trained", pytest.approx(1.0)) and curve[-1][1] < 0.9
    # a "method" that reads the input only never changes: the check must catch it
    energy = lambda m: video.pow(2).sum(1).reshape(1, 4, 4, 8, 4, 8).sum((3, 5))
    assert all(s == pytest.approx(1.0) for _, s in similarity_curve(cascading_randomisation(model, energy)))


def test_temporal_evidence_on_the_shipped_model():
    """The shipped divided model reads motion: reversing or freezing the clip destroys its confidence."""
    from timesformer import load_model
    from timesformer.shipped import DEFAULT_MODEL, sample_clips
    from timesformer.video import SPREAD, read_clip

    model = load_model(DEFAULT_MODEL)
    clip = next(c for c in sample_clips() if c.stem == "moving_left")
    video = read_clip(clip, num_frames=model.config.num_frames, size=model.config.img_size, sampling_rate=SPREAD)[0]
    effects = order_effects(model, video)
    assert set(effects) == {"original", "reversed", "shuffled", "frozen"}
    assert effects["original"] > 0.9 and effects["reversed"] < 0.1 and effects["frozen"] < 0.5
    r = relevance(model, video)
    shares = step_shares(r)
    for layer in range(model.config.depth):
        rows = [row for row in shares if row["layer"] == layer]
        assert {row["step"] for row in rows} == {"time", "space"}
        assert sum(row["share"] for row in rows) == pytest.approx(1.0)
    importance = frame_importance(r.patches)
    assert importance.shape == (1, 8) and importance.sum().item() == pytest.approx(1.0)


def test_benchmark_command_scores_a_model(tmp_path):
    """`tslab bench explain` end to end on a small model: scores, sanity check, temporal evidence, files."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from timesformer import TimeSformer, TimeSformerConfig, save_model

    torch.manual_seed(0)
    cfg = TimeSformerConfig.tiny(img_size=32, depth=2, num_classes=4,
                                 class_names=["moving right", "moving left", "right and back", "left and back"])
    save_model(TimeSformer(cfg), tmp_path / "synthmotion-distractor-tiny")
    out = tmp_path / "explain.json"  # a model benchmarked earlier on the same clips is kept
    earlier = {"_model": {"clips": 2, "accuracy": 0.5}, "random": {"mass": 0.25}}
    out.write_text(json.dumps({"clips": 2, "seed": 31337, "models": {"earlier-model": earlier}}))
    tslab = Path(sys.executable).parent / "tslab"
    proc = subprocess.run([str(tslab), "bench", "explain", "--models", str(tmp_path / "synthmotion-distractor-tiny"),
                           "--clips", "2", "--methods", "rollout", "lrp", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())["models"]["synthmotion-distractor-tiny"]
    assert report["_model"]["task"] == "distractor" and report["_model"]["clips"] == 2
    assert report["_model"]["device"] == ("CPU" if not torch.cuda.is_available() else
                                          f"{torch.cuda.get_device_name(0)} (cuda:0)")  # --device auto
    assert set(report) == {"_model", "_temporal", "rollout", "lrp", "random"}
    for method in ("rollout", "lrp"):
        row = report[method]
        assert {"pointing", "mass", "rank_accuracy", "signal_share", "auc_deletion", "auc_insertion",
                "sanity_pass", "randomisation", "forwards", "backwards", "ms_per_clip"} <= set(row)
        assert [s["stage"] for s in row["randomisation"]] == ["trained", "head", "block 1", "block 0"]
    assert "signal_share" in report["random"] and "sanity_pass" not in report["random"]
    assert len(report["_model"]["frame_drop"]) == 8 and 0 <= report["_model"]["used_frames"] <= 1
    assert report["lrp"]["stderr"]["pointing"] >= 0 and set(report["lrp"]["stderr"]) >= {"pointing", "mass"}
    assert {r["step"] for r in report["_temporal"]["step_shares"]} == {"time", "space"}
    assert json.loads(out.read_text())["models"]["earlier-model"] == earlier
    md = out.with_suffix(".md")
    assert "| lrp |" in md.read_text() and "| earlier-model |" in md.read_text() and " ± " in md.read_text()
    md.unlink()
    again = subprocess.run([str(tslab), "bench", "explain", "--report", "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "| synthmotion-distractor-tiny |" in md.read_text(), again.stderr[-2000:]
    # a run of some methods updates their rows and keeps the others, in the registry's order
    more = subprocess.run([str(tslab), "bench", "explain", "--models", str(tmp_path / "synthmotion-distractor-tiny"),
                           "--clips", "2", "--methods", "gae", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert more.returncode == 0, more.stderr[-2000:]
    report = json.loads(out.read_text())["models"]["synthmotion-distractor-tiny"]
    assert list(report) == ["_model", "_temporal", "rollout", "gae", "lrp", "random"]


def test_benchmark_command_scores_a_model_on_a_researchers_own_clips(tmp_path):
    """`tslab bench explain --data`: a checkpoint's explanations scored on clips of the user's own (here
    ffmpeg-encoded files in a CSV list, one of them broken), whose evidence has no known place — faithfulness,
    the sanity check and the evidence about time, no scores against ground truth — with paths relative to the
    folder it is run from; results scored on other clips are never overwritten."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from timesformer import TimeSformer, TimeSformerConfig, save_model
    from timesformer.data import TEMPORAL_CLASSES, export_synthmotion

    torch.manual_seed(0)
    save_model(TimeSformer(TimeSformerConfig.tiny(img_size=32, depth=2, num_classes=4,
                                                  class_names=list(TEMPORAL_CLASSES))), tmp_path / "mine")
    export_synthmotion(tmp_path / "sm", "temporal", num_train=0, num_val=4, seed=0, num_frames=8, size=32)
    (tmp_path / "broken.mp4").write_text("not a video")
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted((tmp_path / "sm" / "val").rglob("*.mp4"))]
    (tmp_path / "clips.csv").write_text("\n".join(["path,label", "broken.mp4,moving left", *rows]) + "\n")
    tslab = [str(Path(sys.executable).parent / "tslab"), "bench", "explain", "--models", "mine", "--data",
             "clips.csv", "--methods", "rollout"]
    bench = lambda *args: subprocess.run([*tslab, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    proc = bench("--clips", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped broken.mp4: this is a text file, not a video" in proc.stdout
    assert "mine: 3 clips, under a minute on CPU" in proc.stdout  # said before it starts
    out = tmp_path / "explain-clips.json"  # the default --out with --data, in the folder it ran from
    report = json.loads(out.read_text())
    assert (report["data"], report["split"], report["sampling_rate"]) == ("clips.csv", "val", 32)
    result = report["models"]["mine"]
    info = result["_model"]
    assert (info["clips"], info["data"], info["ground_truth"]) == (3, "clips.csv (val)", False)
    assert info["skipped"] == [{"path": "broken.mp4", "reason": "this is a text file, not a video"}]
    assert len(info["frame_drop"]) == 8 and "task" not in info
    assert set(result) == {"_model", "_temporal", "rollout", "random"} and "vacancy" not in result["_temporal"]
    for row in ("rollout", "random"):
        assert {"auc_deletion", "auc_insertion", "ms_per_clip"} <= set(result[row])
        assert not {"pointing", "mass", "signal_share"} & set(result[row])
    assert {"sanity_pass", "randomisation", "forwards"} <= set(result["rollout"])
    md = out.with_suffix(".md").read_text()
    assert "**mine** (3 clips of clips.csv (val), accuracy" in md and "| rollout |" in md
    assert "| attention | rollout |" not in md  # the ground-truth summary has nothing to show
    # a run on other clips is refused before it starts, and the results stay as they were
    before = out.read_text()
    again = bench("--clips", "2")
    assert again.returncode == 2 and "holds results on 3 clips of clips.csv" in again.stderr, again.stderr[-2000:]
    assert out.read_text() == before and "Traceback" not in again.stderr
    # data of which not one clip can be read is one line
    (tmp_path / "bad.csv").write_text("broken.mp4,moving left\n")
    bad = bench("--clips", "2", "--data", "bad.csv")
    assert bad.returncode == 2 and "none of the 1 clips could be read" in bad.stderr and "Traceback" not in bad.stderr


def test_the_benchmark_says_how_long_it_will_take():
    """`estimated_seconds`: every row's explanations, curves and sanity-check explanations, and the frame drops,
    counted in forwards of one clip (a backward as two)."""
    from analysis.benchmark import estimated_seconds
    from analysis.faithfulness import curves_cost
    from tests.test_model import small_model

    model = small_model("divided_space_time")  # 2 blocks
    grid = model.config.grid
    drops = analysis.EXPLANATIONS["ablation_frames"].estimate(grid, baseline="temporal_median").forwards
    curves = curves_cost(16).forwards
    # rollout: 1 forward a clip; on 3 clips, its curves, the sanity check's 3 stages (head, 2 blocks) of 3 clips
    expected = 3 * drops + 3 * (1 + curves) + 3 * 3 * 1 + 3 * curves  # ... and the random row's curves
    assert estimated_seconds(model, 3, ["rollout"], forward_s=1.0) == pytest.approx(expected)
    gae = analysis.EXPLANATIONS["gae"].estimate(grid)
    assert estimated_seconds(model, 3, ["gae"], forward_s=0.5) == pytest.approx(
        0.5 * (3 * drops + 3 * curves * 2) + gae.seconds(0.5) * (3 + 3 * 3))


def test_options_must_be_finite_numbers():
    """A nan baseline gave an all-NaN map (and the CLI a colormap IndexError after writing it)."""
    model = small_model("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    for method, options in (("occlusion", {"baseline": float("nan")}), ("ablation_frames", {"baseline": float("inf")}),
                            ("rollout", {"discard_ratio": float("nan")})):
        name, value = next(iter(options.items()))
        with pytest.raises(ValueError, match=f"{method}: option {name} must be a finite number, got {value}"):
            analysis.explain(model, video, method, **options)


GRADIENT_METHODS = ("grad_rollout", "gae", "lrp", "saliency", "integrated_gradients", "gradient_x_activation")


def test_gradient_methods_need_no_parameter_gradients():
    """A frozen model (requires_grad False) and a clip made under inference_mode explain as the plain ones (were:
    'element 0 of tensors does not require grad', 'Inference tensors cannot be saved for backward')."""
    model = small_model("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        made_there = video.clone()
    for method in GRADIENT_METHODS:
        options = {"n_steps": 2} if method == "integrated_gradients" else {}
        plain = analysis.explain(model, video, method, **options)
        model.requires_grad_(False)
        try:
            frozen = analysis.explain(model, video, method, **options)
        finally:
            model.requires_grad_(True)
        assert torch.allclose(frozen, plain, atol=1e-6), method
        assert torch.allclose(analysis.explain(model, made_there, method, **options), plain, atol=1e-6), method
        assert all(p.grad is None for p in model.parameters()), method
        with torch.inference_mode(), pytest.raises(RuntimeError, match=f"{method} needs gradients, which "
                                                   r"torch.inference_mode\(\) turns off"):
            analysis.explain(model, video, method, **options)


def test_target_is_checked_as_the_cli_checks_it():
    """-1 is the last class, as `tslab explain --target -1` (was: rejected); one class per clip of the batch (was:
    a size-mismatch RuntimeError); an index is an integer (1.7 was taken as 1)."""
    model = small_model("divided_space_time")  # 5 classes
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    last = analysis.explain(model, video, "saliency", target=4)
    assert torch.equal(analysis.explain(model, video, "saliency", target=-1), last)
    assert torch.equal(analysis.explain(model, video, "saliency", target=[-1, 4]), last)
    assert torch.equal(analysis.explain(model, video, "saliency", target=torch.tensor([4, 4])), last)
    for target, message in ((1.7, "target must be a class index or name, or one per clip; got 1.7"),
                            (True, "target must be a class index or name, or one per clip; got True"),
                            ([0, 1, 2], "target: 3 classes for a batch of 2 clips; give one, or one per clip"),
                            (5, r"target 5: the model has 5 classes \(0 to 4; -1: the last\)"),
                            ([0, -6], r"target -6: the model has 5 classes \(0 to 4; -1: the last\)")):
        with pytest.raises(ValueError, match=message):
            analysis.explain(model, video, "saliency", target=target)
    with pytest.raises(ValueError, match="target: 2 classes for a batch of 1 clip; give one, or one per clip"):
        analysis.explain(model, video[:1], "gae", target=[0, 1])
