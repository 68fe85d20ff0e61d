import numpy as np
import pytest
import torch

from analysis.attribution import METHODS, attribute, cost, to_grid
from analysis.faithfulness import curves_cost, deletion_insertion, random_map
from analysis.figures import pattern_figure, throughput_figure
from analysis.maps import attention_row, fuse_heads, query_index, query_map, summarize
from analysis.media import animation_bytes, grid_image, overlay, save_pattern
from analysis.patterns import blocks_to_full_clip, pattern_codes, receptive_field, steps_seeing
from analysis.rollout import attention_rollout, grad_rollout, rollout
from tests.test_model import small_model
from timesformer import ATTENTION_TYPES, attention_pattern, record_attention

GRID = (4, 4, 4)


def recorded(attention_type, batch=2, seed=0):
    model = small_model(attention_type, seed=seed)
    video = torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), record_attention(model) as rec:
        model(video)
    return model, video, rec


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_rows_and_query_maps_match_dense(attention_type):
    _, _, rec = recorded(attention_type)
    for m in rec:
        dense = m.dense()
        for query in ("cls", (0, 0, 0), (3, 2, 1), (-1, 3, 3)):
            q = query_index(query, m.grid)
            assert torch.allclose(attention_row(m, query), dense[:, :, q], atol=1e-6)
        qmap = query_map(m, (1, 2, 3), head="max")
        assert qmap.shape == (2, *GRID)
        assert torch.allclose(qmap.flatten(1), dense[:, :, query_index((1, 2, 3), GRID), 1:].amax(1))


def test_query_and_head_validation():
    with pytest.raises(ValueError, match="outside"):
        query_index((4, 0, 0), GRID)
    with pytest.raises(ValueError, match="'cls' or a patch"):
        query_index("token", GRID)
    with pytest.raises(ValueError, match="head must be an index or one of mean, max, min, got 'median'"):
        fuse_heads(torch.ones(1, 4, 3), head="median")
    with pytest.raises(ValueError, match=r"head 4: the model has 4 heads \(0 to 3; -1: the last\)"):
        fuse_heads(torch.ones(1, 4, 3), head=4)


def _lift_divided_by_hand(space, time, T, N):
    """The TimeSformer authors' recipe for divided attention, written with loops: heads averaged,
    per-frame spatial matrices (cls copies averaged), per-position temporal matrices."""
    M = 1 + T * N
    s, tm = space.mean(2), time.mean(2)  # (B, T, 1+N, 1+N), (B, N, T, T)
    B = s.shape[0]
    S = torch.zeros(B, M, M)
    Tm = torch.zeros(B, M, M)
    for t in range(T):
        tok = [0] + [1 + t * N + n for n in range(N)]
        for i, a in enumerate(tok):
            for j, b in enumerate(tok):
                S[:, a, b] += s[:, t, i, j] / (T if a == 0 else 1)
    for n in range(N):
        tok = [1 + t * N + n for t in range(T)]
        for i, a in enumerate(tok):
            for j, b in enumerate(tok):
                Tm[:, a, b] = tm[:, n, i, j]

    def mix(x):
        x = 0.5 * x + 0.5 * torch.eye(M)
        return x / x.sum(-1, keepdim=True)

    return mix(S) @ mix(Tm)  # time first, then space


def test_divided_rollout_matches_the_authors_recipe():
    _, _, rec = recorded("divided_space_time")
    T, H, W = GRID
    expected = torch.eye(1 + T * H * W).expand(2, -1, -1)
    for layer in range(2):
        block = _lift_divided_by_hand(rec.get(layer, "space").probs, rec.get(layer, "time").probs, T, H * W)
        expected = block @ expected
    assert torch.allclose(rollout(rec), expected, atol=1e-5)
    assert torch.allclose(rollout(rec, query="cls"), expected[:, 0, 1:].reshape(2, *GRID), atol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_rollout_rows_and_matrix_agree_and_stay_stochastic(attention_type):
    _, _, rec = recorded(attention_type)
    full = rollout(rec, discard_ratio=0.3)
    assert torch.allclose(full.sum(-1), torch.ones(()), atol=1e-5)
    assert (full >= 0).all()
    for query in ("cls", (2, 1, 3)):
        q = query_index(query, GRID)
        assert torch.allclose(rollout(rec, query=query, discard_ratio=0.3), full[:, q, 1:].reshape(2, *GRID),
                              atol=1e-6)
    with pytest.raises(ValueError, match="every layer"):
        rollout([m for m in rec if m.layer == 1])


def test_grad_rollout_follows_the_target():
    model, video, _ = recorded("joint_space_time")
    a = grad_rollout(model, video, target=0)
    b = grad_rollout(model, video, target=1)
    assert a.shape == (2, *GRID) and (a >= 0).all()
    assert not torch.allclose(a, b)
    assert all(p.grad is None for p in model.parameters())  # leaves the model clean


def test_summary_numbers_on_known_patterns():
    _, _, rec = recorded("axial")
    time, width = summarize(rec.get(0, "time")), summarize(rec.get(0, "width"))
    assert time["same_frame"] < 0.5 and time["distance_space"] == 0 and time["cls"] == 0
    assert width["distance_time"] == 0 and width["other_frames"] == 0
    assert width["same_frame"] + width["cls"] == pytest.approx(1, abs=1e-5)
    assert 0 < width["entropy_norm"] <= 1
    # a uniform attention has the maximal entropy
    m = rec.get(0, "time")
    m.probs = torch.full_like(m.probs, 1 / m.probs.shape[-1])
    s = summarize(m)
    assert s["entropy"] == pytest.approx(np.log(4), abs=1e-5) and s["entropy_norm"] == pytest.approx(1, abs=1e-5)
    assert s["distance_time"] == pytest.approx((0 + 1 + 2 + 3 + 1 + 0 + 1 + 2 + 2 + 1 + 0 + 1 + 3 + 2 + 1 + 0) / 16)


def test_overlay_and_grid_images():
    frames = np.zeros((4, 64, 48, 3), np.uint8)
    maps = torch.zeros(4, 8, 6)
    maps[2, 4, 3] = 1.0
    out = overlay(frames, maps, alpha=1.0)
    assert out.shape == frames.shape and out.dtype == np.uint8
    hot = out[2, 35:37, 27:29].astype(int)  # the centre of the hot cell
    assert (hot[..., 0] > hot[..., 2]).all()  # the maximum is red in "jet", cold cells blue
    assert out[0, 0, 0, 2] > out[0, 0, 0, 0]
    assert grid_image(out, columns=2).shape == (2 * 64 + 2, 2 * 48 + 2, 3)
    with pytest.raises(ValueError, match="maps for"):
        overlay(frames, maps[:3])


def test_animations_loop_over_every_frame(tmp_path):
    import io

    from PIL import Image

    from timesformer.video import read_clip

    frames = np.random.default_rng(0).integers(0, 255, (5, 33, 41, 3), dtype=np.uint8)
    gif = Image.open(io.BytesIO(animation_bytes(frames, "gif", fps=5)))
    assert gif.n_frames == 5 and gif.info["loop"] == 0 and gif.info["duration"] == 200
    (tmp_path / "a.mp4").write_bytes(animation_bytes(frames, "mp4"))
    _, info = read_clip(tmp_path / "a.mp4", num_frames=5, size=32)
    assert info.num_frames == 5 and (info.width, info.height) == (40, 32)  # odd sides cropped for H.264
    with pytest.raises(ValueError, match="gif or .mp4"):
        animation_bytes(frames, "webp")


# ------------------------------------------------------------------------------------------------
# Patterns


def test_pattern_codes_come_from_the_model_masks():
    grid = (8, 14, 14)
    for attention_type in ATTENTION_TYPES:
        codes, steps = pattern_codes(attention_type, grid, (3, 5, 5))
        masks = attention_pattern(attention_type, *grid)
        assert steps == list(masks)
        q = query_index((3, 5, 5), grid)
        union = torch.stack([m[q, 1:] for m in masks.values()]).any(0).reshape(grid).numpy()
        assert ((codes != 0) == union).all()  # every key seen by some step, and only those
        assert codes[3, 5, 5] == -1
    codes, steps = pattern_codes("divided_space_time", grid, (3, 5, 5))
    assert (codes[:, 5, 5][np.arange(8) != 3] == 1).all()  # time: same position in the other frames
    assert (codes[3] != 0).all() and (codes[0] == 0).sum() == 14 * 14 - 1
    seeing = steps_seeing("sparse_local_global", grid, (2, 2, 2))
    assert seeing[0, 0, 0] == ["local", "global"] and seeing[1, 0, 0] == ["local"]


def test_receptive_fields():
    grid = (8, 14, 14)
    assert blocks_to_full_clip("divided_space_time", grid, (3, 5, 5)) == 1  # T+S: the full clip in one block
    assert blocks_to_full_clip("sparse_local_global", grid, (3, 5, 5)) == 1  # L+G: in its two steps
    assert blocks_to_full_clip("joint_space_time", grid) == 1
    assert blocks_to_full_clip("space_only", grid) is None  # never leaves its frame
    only_frame = receptive_field("space_only", grid, (3, 5, 5), blocks=4)
    assert only_frame[3].all() and only_frame.sum() == 14 * 14
    # axial after the time step alone would be a tube; a whole block reaches the full clip
    assert receptive_field("axial", grid, (3, 5, 5)).all()


def test_pattern_figure_and_export(tmp_path):
    fig = pattern_figure("axial", (4, 6, 6), (1, 2, 3))
    assert [t.name for t in fig.data[1:]] == ["query", "time", "width", "height"]
    rf = pattern_figure("divided_space_time", (4, 6, 6), (1, 2, 3), blocks=1)
    assert "reached after 1 block" in rf.layout.title.text
    from PIL import Image

    png = save_pattern(tmp_path / "p.png", "sparse_local_global", (4, 6, 6), (1, 2, 3))
    assert Image.open(png).size[0] > 4 * 6 * 14
    svg = save_pattern(tmp_path / "p.svg", "sparse_local_global", (4, 6, 6), (1, 2, 3)).read_text()
    assert svg.count("<rect") == 4 * 36 and "#1f4fd8" in svg
    with pytest.raises(ValueError, match="png or .svg"):
        save_pattern(tmp_path / "p.jpg", "axial", (4, 6, 6))


# ------------------------------------------------------------------------------------------------
# Attribution


@pytest.mark.parametrize("method", METHODS)
def test_attributions_reach_the_grid_with_progress(method):
    model = small_model("divided_space_time")
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = []
    a = attribute(model, video, method, n_steps=8, window=(2, 2), progress=lambda d, t: calls.append((d, t)))
    assert a.shape == (1, *GRID) and torch.isfinite(a).all() and a.abs().sum() > 0
    expected = cost(method, GRID, n_steps=8, window=(2, 2))
    assert calls[-1] == (expected.forwards, expected.forwards)


def test_attributions_find_the_only_informative_patch():
    """A model that reads one patch only: every method must put its mass there."""
    model = small_model("space_only")
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
    target_frame, target = 2, (2, 1, 3)

    class OnePatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
            self.config, self.blocks = model.config, model.blocks
            self.grid_of = model.grid_of

        def forward(self, video):
            t, h, w = target
            patch = video[:, :, t, h * 8 : (h + 1) * 8, w * 8 : (w + 1) * 8]
            s = patch.mean((1, 2, 3))
            return torch.stack([s, -s], 1) + 0 * model(video)[:, :2]

    m = OnePatch()
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1)) + 1
    for method in ("integrated_gradients", "saliency", "occlusion", "ablation_tubes", "ablation_frames"):
        a = attribute(m, video, method, target=0, n_steps=8, window=(1, 1), reduce="abs")[0]
        if method == "ablation_frames":
            assert a.sum((1, 2)).argmax() == target_frame
        elif method == "ablation_tubes":
            assert a[0].flatten().argmax() == 1 * 4 + 3
        else:
            assert a.flatten().argmax() == query_index(target, GRID) - 1, method


def test_to_grid_and_cost():
    x = torch.zeros(1, 3, 2, 16, 16)
    x[0, :, 1, 8:, :8] = -1
    assert to_grid(x, 8)[0, 1, 1, 0] == -3 * 64 and to_grid(x, 8, "abs")[0, 1, 1, 0] == 3 * 64
    assert cost("occlusion", (8, 14, 14), window=(2, 2)).forwards == 1 + 4 * 7 * 7
    assert cost("integrated_gradients", (8, 14, 14), n_steps=50).seconds(2.0) == pytest.approx(50 * 2 + 50 * 4)
    assert (cost("rollout", GRID).forwards, cost("grad_rollout", GRID).backwards) == (1, 1)
    with pytest.raises(ValueError, match="unknown attribution"):
        cost("lime", GRID)


def test_deletion_insertion_curves():
    model = small_model("joint_space_time")
    video = torch.randn(1, 3, 4, 32, 32)
    curves = deletion_insertion(model, video, random_map(GRID), steps=8)
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1 and len(curves.deletion) == 9
    # both ends are the same two clips: the original and the all-baseline one
    assert curves.deletion[0] == pytest.approx(curves.insertion[-1], abs=1e-5)
    assert curves.deletion[-1] == pytest.approx(curves.insertion[0], abs=1e-5)
    assert 0 <= curves.auc_deletion <= 1 and 0 <= curves.auc_insertion <= 1
    with pytest.raises(ValueError, match="one clip"):
        deletion_insertion(model, video.repeat(2, 1, 1, 1, 1), random_map(GRID))
    # the cost estimate counts every forward the curves ran: both curves and the target
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    deletion_insertion(model, video, random_map(GRID), steps=8)
    assert sum(calls) == curves_cost(8).forwards


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_writes_pictures_and_numbers(tmp_path):
    import json

    from analysis.report import main
    from timesformer import save_model
    from timesformer.video import write_video

    model = small_model("sparse_local_global", num_classes=3, class_names=["up", "down", "still"])
    save_model(model, tmp_path / "model")
    rng = np.random.default_rng(0)
    write_video(tmp_path / "clip.mp4", rng.integers(0, 255, (12, 40, 48, 3), dtype=np.uint8))
    out = tmp_path / "out"
    rc = main([str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(out),
               "--query", "1,2,3", "--scheme", "axial", "sparse_local_global", "--format", "mp4"])
    assert rc == 0
    report = json.loads((out / "predictions.json").read_text())
    assert [p["class"] for p in report["top5_video"]] and report["grid"] == [4, 4, 4]
    assert {p["class"] for p in report["top5_clip"]} == {"up", "down", "still"}
    assert [(s["layer"], s["step"]) for s in report["summary"]] == [(0, "local"), (0, "global"), (1, "local"),
                                                                   (1, "global")]
    for name in ("frames.png", "attention_local.png", "attention_global.mp4", "rollout.png", "rollout.mp4",
                 "pattern_axial.svg", "pattern_sparse_local_global.png"):
        assert (out / name).stat().st_size > 0, name
    assert report["not_drawn"] == {} and "temporal" not in report
    assert report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # --device auto
    from timesformer.video import read_clip

    clip, info = read_clip(out / "rollout.mp4", num_frames=4, size=32)
    assert info.num_frames == 4  # one overlay frame per model frame
    # a part of the video: 0.5–1 s of the 12 frames at 8 fps are frames 4–7
    assert main([str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "part"),
                 "--start", "0.5", "--end", "1"]) == 0
    part = json.loads((tmp_path / "part" / "predictions.json").read_text())["clip_info"]
    assert part["window"] == [0.5, 1.0] and part["indices"] == [4, 5, 6, 7]


def test_cli_explains_several_clips_with_one_model(tmp_path, capsys, monkeypatch):
    """Several clips: a folder each in --out (two files of one name numbered), the model loaded once, a clip that
    cannot be read named and passed over; what is wrong for every clip (--layer) stops it before the first."""
    import json

    from analysis import report
    from timesformer import load_model, save_model
    from timesformer.video import write_video

    save_model(small_model("divided_space_time", num_classes=3, class_names=["up", "down", "still"]),
               tmp_path / "model")
    clips = [tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", tmp_path / "notes.mp4"]
    for i, clip in enumerate(clips[:2]):
        clip.parent.mkdir()
        write_video(clip, np.random.default_rng(i).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8))
    clips[2].write_text("not a video")
    loads = []
    monkeypatch.setattr(report, "load_model", lambda source: loads.append(source) or load_model(source))
    out = tmp_path / "out"
    rc = report.main([*map(str, clips), "--checkpoint", str(tmp_path / "model"), "--out", str(out)])
    said = capsys.readouterr()
    assert rc == 2 and len(loads) == 1
    assert sorted(p.name for p in out.iterdir()) == ["clip-0", "clip-1", "summary.csv"]
    for i in range(2):
        assert json.loads((out / f"clip-{i}" / "predictions.json").read_text())["clip"] == str(clips[i])
        assert f"{clips[i]}: " in said.out and f"to {out / f'clip-{i}'} in" in said.out
    assert f"error: {clips[2]}: " in said.err and "1 of 3 clips could not be explained" in said.err
    # every layer and step's numbers, averaged over the clips explained
    import csv

    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    each = [json.loads((out / f"clip-{i}" / "predictions.json").read_text())["summary"] for i in range(2)]
    assert [(int(r["layer"]), r["step"], r["clips"]) for r in summary] == [(s["layer"], s["step"], "2")
                                                                          for s in each[0]]
    for row, a, b in zip(summary, *each):
        for key in ("entropy", "distance_space", "distance_time", "same_frame", "other_frames", "cls"):
            assert float(row[key]) == pytest.approx((a[key] + b[key]) / 2, rel=1e-6)
    assert report.main([*map(str, clips[:2]), "--checkpoint", str(tmp_path / "model"), "--out",
                        str(tmp_path / "out2"), "--layer", "7"]) == 2
    assert "--layer 7: this model has 2 layers" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_cli_explanations_and_time_evidence(tmp_path, capsys):
    """--methods draws registry explanations for --target; cls has no time-step map, and the report says so."""
    import json

    from analysis.report import main
    from timesformer import save_model
    from timesformer.video import write_video

    model = small_model("divided_space_time", num_classes=3, class_names=["up", "down", "still"])
    save_model(model, tmp_path / "model")
    write_video(tmp_path / "clip.mp4", np.random.default_rng(1).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    rc = main([str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(out),
               "--methods", "gae", "lrp", "--target", "down", "--temporal"])
    assert rc == 0
    said = capsys.readouterr().err  # which of the slow steps runs
    assert "explaining with gae (1 of 2)\nexplaining with lrp (2 of 2)\nmeasuring the evidence about time\n" in said
    report = json.loads((out / "predictions.json").read_text())
    assert set(report["not_drawn"]) == {"attention_time"} and not (out / "attention_time.png").exists()
    assert (out / "attention_space.png").exists() and (out / "explain_gae.gif").exists()
    assert (out / "explain_lrp.png").exists()
    assert report["temporal"]["target"] == "down" and report["explained_class"] == "down"
    # the numbers behind the pictures: what the model saw, and each map as the registry computes it
    from analysis import explain
    from timesformer.video import denormalize, read_clip

    arrays = np.load(out / "maps.npz")
    assert set(arrays.files) == {"frames", "attention_space", "rollout", "explain_gae", "explain_lrp"}
    views, _ = read_clip(tmp_path / "clip.mp4", num_frames=model.config.num_frames, size=32, spatial_crops=3)
    centre = views[1:2]
    assert np.array_equal(arrays["frames"], denormalize(centre[0]))
    model.eval()
    for method in ("gae", "lrp"):
        expected = explain(model, centre, method, target=1)[0].numpy()
        assert arrays[f"explain_{method}"].shape == expected.shape == model.config.grid
        np.testing.assert_allclose(arrays[f"explain_{method}"], expected, rtol=1e-4, atol=1e-7)
    assert arrays["rollout"].dtype == np.float32 and "maps.npz" in report["files"]
    assert set(report["temporal"]["order_effects"]) == {"original", "reversed", "shuffled", "frozen"}
    assert {r["step"] for r in report["temporal"]["step_shares"]} == {"time", "space"}
    rc = main([str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(out),
               "--methods", "gae", "--target", "sideways"])
    assert rc == 2 and "neither a class" in capsys.readouterr().err
    rc = main([str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(out),
               "--methods", "gae", "--target", "3"])
    assert rc == 2 and "--target 3: the model has 3 classes (0 to 2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a target with nothing to explain was ignored without a word
        main([str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(out), "--target", "1"])
    assert "--target names the class --methods and --temporal explain: give one of them" in capsys.readouterr().err
    # methods that remove patches take --baseline (default: the temporal median); a bad one is one line
    maps = {}
    for baseline in ("temporal_median", "0"):
        assert main([str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(out),
                     "--methods", "ablation_tubes", "--baseline", baseline]) == 0
        assert json.loads((out / "predictions.json").read_text())["baseline"] == {"0": 0.0}.get(baseline, baseline)
        maps[baseline] = (out / "explain_ablation_tubes.png").read_bytes()
    assert maps["temporal_median"] != maps["0"]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "clip.mp4"), "--out", str(out), "--baseline", "noise"])
    assert "baseline must be a number or one of" in capsys.readouterr().err


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from analysis.report import main

    (tmp_path / "text.mp4").write_text("not a video")
    rc = main([str(tmp_path / "text.mp4"), "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert rc == 2 and "no such checkpoint" in capsys.readouterr().err
    from timesformer import save_model

    save_model(small_model("axial"), tmp_path / "model")
    rc = main([str(tmp_path / "text.mp4"), "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    from timesformer.video import write_video

    clip = write_video(tmp_path / "clip.mp4", np.zeros((8, 32, 32, 3), np.uint8))
    for flags, message in ((["--layer", "4"], "--layer 4: this model has 2 layers (0 to 1; -1: the last)"),
                           (["--discard-ratio", "1"], "discard_ratio is the share of weights dropped"),
                           (["--out", str(tmp_path / "text.mp4")], "text.mp4 is a file, not a folder")):
        rc = main([str(clip), "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "out"), *flags])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err


def test_cli_defaults_to_the_shipped_model(tmp_path):
    import json

    from analysis.report import main
    from timesformer.shipped import DEFAULT_MODEL, SAMPLES

    clip = SAMPLES / "moving_left.mp4"
    assert main([str(clip), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "predictions.json").read_text())
    assert report["checkpoint"] == str(DEFAULT_MODEL)
    assert report["top5_video"][0]["class"] == "moving left" and report["top5_video"][0]["prob"] > 0.9
    assert report["seconds"] < 30


def test_rollout_and_integrated_gradients_beat_random_on_the_shipped_model():
    """docs/analysis.md's claim, on the shipped default model and its four sample clips (mean AUCs)."""
    from timesformer import load_model
    from timesformer.shipped import DEFAULT_MODEL, sample_clips
    from timesformer.video import SPREAD, read_clip

    model = load_model(DEFAULT_MODEL)
    cfg = model.config
    scores = {"rollout": [], "integrated_gradients": [], "random": []}
    for clip in sample_clips():
        video = read_clip(clip, num_frames=cfg.num_frames, size=cfg.img_size, sampling_rate=SPREAD)[0]
        maps = {"rollout": attention_rollout(model, video),
                "integrated_gradients": attribute(model, video, "integrated_gradients", n_steps=32)}
        for name, m in maps.items():
            c = deletion_insertion(model, video, m, steps=16)
            scores[name].append((c.auc_deletion, c.auc_insertion))
        for seed in range(5):
            c = deletion_insertion(model, video, random_map(cfg.grid, seed), steps=16)
            scores["random"].append((c.auc_deletion, c.auc_insertion))
    mean = {k: np.mean(v, axis=0) for k, v in scores.items()}
    for name in ("rollout", "integrated_gradients"):
        assert mean[name][0] < mean["random"][0], (name, mean)  # deletion: lower is better
        assert mean[name][1] > mean["random"][1], (name, mean)  # insertion: higher is better


def test_throughput_figure_plots_the_train_rows_speed_and_data_wait():
    rows = [{"step": 8, "split": "train", "clips_per_s": 100.0, "data_wait": 0.1},
            {"step": 8, "split": "val", "loss": 1.0},
            {"step": 4, "split": "train", "clips_per_s": 90.0, "data_wait": 0.3}]
    fig = throughput_figure(rows, "speed")
    speed, wait = fig.data
    assert list(speed.x) == [4, 8] and list(speed.y) == [90.0, 100.0]  # in step order, train rows only
    assert list(wait.y) == [0.3, 0.1] and wait.yaxis == "y2"  # the share on its own axis
    assert throughput_figure([{"step": 1, "split": "train", "loss": 1.0}], "old run") is None


def _saved_small_model(tmp_path):
    from timesformer import save_model

    save_model(small_model("divided_space_time", num_classes=3, class_names=["up", "down", "still"]),
               tmp_path / "model")
    return str(tmp_path / "model")


def test_cli_rejects_a_nan_baseline_and_a_huge_scale(tmp_path, capsys):
    """--baseline nan wrote an all-NaN maps.npz, then died in the colormap with an IndexError; --scale 100000
    asked numpy for 224 GiB."""
    from analysis.report import MAX_SCALE, main

    for flags, message in ((["--baseline", "nan"], "argument --baseline: baseline must be a finite number, got 'nan'"),
                           (["--scale", "100000"], f"argument --scale: expected an integer from 1 to {MAX_SCALE}, "
                                                   "got '100000'")):
        with pytest.raises(SystemExit) as exc:
            main(["clip.mp4", "--out", str(tmp_path / "out"), "--methods", "occlusion", *flags])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_out_holds_only_this_runs_files(tmp_path, capsys):
    """A second clip explained into the same --out left the first one's explain_gae.png/.gif beside its own
    files. Now what a previous run listed in its predictions.json goes; the user's own files stay; a run that fails
    leaves the folder as it was."""
    import json

    from analysis.report import main
    from timesformer.video import write_video

    model = _saved_small_model(tmp_path)
    clips = [tmp_path / "left.mp4", tmp_path / "right.mp4"]
    for i, clip in enumerate(clips):
        write_video(clip, np.random.default_rng(i).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([str(clips[0]), "--checkpoint", model, "--out", str(out), "--methods", "gae"]) == 0
    assert (out / "explain_gae.png").exists()
    assert main([str(clips[1]), "--checkpoint", model, "--out", str(out)]) == 0
    report = json.loads((out / "predictions.json").read_text())
    assert report["clip"] == str(clips[1])
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"] + ["notes.txt"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "text.mp4").write_text("not a video")
    assert main([str(tmp_path / "text.mp4"), "--checkpoint", model, "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    capsys.readouterr()


def test_cli_names_the_clip_it_cannot_read(tmp_path, capsys):
    from analysis.report import main

    model = _saved_small_model(tmp_path)
    (tmp_path / "notes.mp4").write_text("not a video")
    assert main([str(tmp_path / "notes.mp4"), "--checkpoint", model, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'notes.mp4'}: this is a text file, not a video\n"
    assert main([str(tmp_path / "missing.mp4"), "--checkpoint", model, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: no such file: {tmp_path / 'missing.mp4'}\n"  # named once


def test_record_attention_checks_layers_and_takes_negative_indices():
    """layers='all' failed in int('a'); rec.get(-1, ...) raised KeyError though layers=[-1] recorded it; [-99] was
    reported as -95; [] said 'run a forward pass' after one ran; [1.5] was taken as layer 1."""
    model = small_model("divided_space_time")  # 2 blocks
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad(), record_attention(model, layers="all") as rec:
        model(video)
    assert {m.layer for m in rec} == {0, 1}
    with torch.no_grad(), record_attention(model, layers=[-1]) as rec:
        model(video)
    assert rec.get(-1, "time") is rec.get(1, "time")
    with pytest.raises(KeyError, match="no attention recorded for layer 0"):
        rec.get(-2, "time")
    for layers, message in (([-99], r"layers \[-99\] out of range for a model with 2 blocks \(0 to 1; -1: the last\)"),
                            ([0, 5], r"layers \[5\] out of range"),
                            ([], "layers is empty: give at least one layer index, or None for all"),
                            ([1.5], "layers must be None, 'all', or layer indices \\(int\\); got 1.5"),
                            ("first", "layers must be None, 'all', or layer indices \\(int\\); got 'first'")):
        with pytest.raises(ValueError, match=message), record_attention(model, layers=layers):
            model(video)
