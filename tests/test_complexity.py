"""analysis.cost, through its public entry point analysis.complexity: the closed-form estimate against the
official fvcore counts, the paper's claims and a measurement of the real model (small configurations only:
the whole file runs in seconds)."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis import complexity as cx
from analysis.figures import breakdown_figure, cost_figure, memory_figure
from timesformer import ATTENTION_TYPES, TimeSformerConfig
from timesformer.attention import scheme_groupings

ROOT = Path(__file__).resolve().parents[1]
GiB = cx.GiB
BASE = TimeSformerConfig.base
PAPER = dict(fused=False, softmax_saves_input=True, grads_freed=False, optimizer="sgd", dtype="fp32", batch_size=1)


def small(attention_type: str, odd: bool = False, **overrides) -> TimeSformerConfig:
    """Tiny widths, few frames; `odd` gives a 3-frame 5×5 grid (uneven L+G windows, padded groups)."""
    grid = dict(num_frames=3, img_size=40, patch_size=8) if odd else dict(num_frames=4, img_size=32, patch_size=8)
    sizes = dict(embed_dim=64, depth=2, num_heads=4)
    return TimeSformerConfig.tiny(attention_type=attention_type, **{**sizes, **grid, **overrides})


# ------------------------------------------------------------------------------------------------
# Group shapes come from the model's own grouping rules


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("grid", [(8, 14, 14), (3, 5, 5), (5, 7, 6), (1, 1, 1), (2, 3, 1)])
def test_step_shapes_equal_the_model_groupings(attention_type, grid):
    shapes = cx.step_shapes(attention_type, grid)
    groupings = scheme_groupings(attention_type, grid)
    assert [(s.groups, s.length) for s in shapes] == [tuple(g.index.shape) for g in groupings]
    assert [s.name for s in shapes] == [g.step for g in groupings]


# ------------------------------------------------------------------------------------------------
# Reference points


@pytest.mark.parametrize("attention_type, millions", [
    ("space_only", 85.9), ("joint_space_time", 85.9), ("divided_space_time", 121.4),
    ("sparse_local_global", 121.4), ("axial", 156.8),
])
def test_params_equal_paper_table_1(attention_type, millions):
    e = cx.estimate(BASE(attention_type=attention_type, num_classes=174))  # SSv2, as in Table 1
    assert round(e.params / 1e6, 1) == millions


# fvcore counts of the official model, per view (issue 3)
OFFICIAL = [
    ("divided_space_time", 8, 224, 196.1), ("joint_space_time", 8, 224, 179.7), ("space_only", 8, 224, 140.7),
    ("divided_space_time", 8, 448, 851.3), ("joint_space_time", 8, 448, 1262.4),
    ("divided_space_time", 32, 224, 786.8), ("joint_space_time", 32, 224, 1262.4),
]


@pytest.mark.parametrize("attention_type, frames, size, gflops", OFFICIAL)
def test_official_fvcore_counts(attention_type, frames, size, gflops):
    cfg = BASE(attention_type=attention_type, num_frames=frames, img_size=size)
    # counted as the official code runs the divided space step, the estimate reproduces fvcore exactly
    assert cx.estimate(cfg, official=True).gflops == pytest.approx(gflops, abs=0.05)
    # our model saves the T-1 cls copies in qkv/proj/norm1 (docs/complexity.md): within 0.2%
    assert cx.estimate(cfg).gflops == pytest.approx(gflops, rel=2e-3)


@pytest.mark.parametrize("preset, tflops", [("base", 0.59), ("hr", 5.11), ("large", 7.14)])
def test_paper_tflops_are_three_views(preset, tflops):
    e = cx.estimate(getattr(TimeSformerConfig, preset)())
    assert 3 * e.gflops / 1000 == pytest.approx(tflops, rel=5e-3)


def test_breakdown_sums_and_scores_per_step():
    e = cx.estimate(BASE())
    assert sum(e.flops.values()) == pytest.approx(e.gflops)
    assert {"patch_embed", "qkv", "attn_proj", "step_fc", "mlp", "layernorm", "head",
            "scores_time", "scores_space"} == set(e.flops)
    # space step: T groups of 1 + N (cls copied into each frame), 2·G·h·L²·d multiply-adds per block
    assert e.flops["scores_space"] == pytest.approx(12 * 2 * 8 * 12 * 197**2 * 64 / 1e9)
    assert e.flops["scores_time"] == pytest.approx(12 * 2 * 196 * 12 * 8**2 * 64 / 1e9)


# ------------------------------------------------------------------------------------------------
# The estimate against the real model


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("odd", [False, True], ids=["even", "odd"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "materialised"])
def test_estimate_matches_measure(attention_type, odd, fused):
    cfg = small(attention_type, odd, drop_path_rate=0.1)
    e = cx.estimate(cfg, batch_size=2, fused=fused)
    m = cx.measure(cfg, batch_size=2, fused=fused)
    assert e.gflops == pytest.approx(m.gflops, rel=0.02)
    assert e.params == m.params
    assert e.activation_bytes == pytest.approx(m.activation_bytes, rel=0.10)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "axial"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "materialised"])
def test_estimate_matches_measure_bf16(attention_type, fused):
    cfg = small(attention_type)
    # CPU autocast keeps softmax in bf16; the default models CUDA's autocast (softmax in fp32)
    e = cx.estimate(cfg, batch_size=2, dtype="bf16", fused=fused, autocast_device="cpu")
    m = cx.measure(cfg, batch_size=2, dtype="bf16", fused=fused)
    assert e.activation_bytes == pytest.approx(m.activation_bytes, rel=0.10)
    assert e.activation_bytes < cx.estimate(cfg, batch_size=2, fused=fused).activation_bytes


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_estimate_matches_measure_with_checkpointing(attention_type):
    cfg = small(attention_type, depth=3, drop_path_rate=0.1)
    for dtype in ("fp32", "bf16"):
        e = cx.estimate(cfg, batch_size=2, dtype=dtype, checkpointing=True, autocast_device="cpu")
        m = cx.measure(cfg, batch_size=2, dtype=dtype, checkpointing=True)
        assert e.activation_bytes == pytest.approx(m.activation_bytes, rel=0.10)


def test_measure_counts_fused_and_materialised_attention_alike():
    cfg = small("joint_space_time")
    fused, mat = cx.measure(cfg, fused=True), cx.measure(cfg, fused=False)
    assert fused.gflops == pytest.approx(mat.gflops, rel=1e-9)  # the CPU flash kernel is counted
    assert mat.activation_bytes > fused.activation_bytes  # the probabilities are kept
    assert fused.peak_bytes is None  # CPU: no allocator peak


def test_larger_width_and_batch_still_match():
    cfg = small("divided_space_time", embed_dim=96, num_heads=3, depth=3, img_size=48, num_frames=2)
    e, m = cx.estimate(cfg, batch_size=3), cx.measure(cfg, batch_size=3)
    assert e.gflops == pytest.approx(m.gflops, rel=0.02)
    assert e.activation_bytes == pytest.approx(m.activation_bytes, rel=0.10)


# ------------------------------------------------------------------------------------------------
# The memory model and the paper's out-of-memory claims


def test_paper_figure_3_out_of_memory_on_32_gb():
    gpu = 32 * GiB
    for frames, size in [(8, 448), (32, 224)]:
        joint = cx.estimate(BASE(attention_type="joint_space_time", num_frames=frames, img_size=size), **PAPER)
        assert not joint.fits(gpu), (frames, size, joint.training_bytes / GiB)
    for frames, size in [(f, 224) for f in (8, 16, 32, 64, 96)] + [(8, s) for s in (224, 336, 448, 560)]:
        div = cx.estimate(BASE(attention_type="divided_space_time", num_frames=frames, img_size=size), **PAPER)
        assert div.fits(gpu), (frames, size, div.training_bytes / GiB)
    # joint still fits below the paper's OOM points
    assert cx.estimate(BASE(attention_type="joint_space_time", img_size=336), **PAPER).fits(gpu)
    assert cx.estimate(BASE(attention_type="joint_space_time", num_frames=16), **PAPER).fits(gpu)
    # on current PyTorch (softmax keeps only its output) joint at 448×8 fits on paper: see docs/complexity.md
    current = {**PAPER, "softmax_saves_input": False}
    assert cx.estimate(BASE(attention_type="joint_space_time", img_size=448), **current).training_bytes / GiB < 30


def test_fused_attention_changes_the_picture():
    cfg = BASE(attention_type="joint_space_time", img_size=448)
    fused = cx.estimate(cfg, **{**PAPER, "fused": True, "softmax_saves_input": False})
    assert fused.fits(32 * GiB) and fused.training_bytes < 8 * GiB
    assert cx.max_batch_size(cfg, 32 * GiB, fused=True, optimizer="sgd") >= 4
    assert cx.max_batch_size(cfg, 32 * GiB, **{k: v for k, v in PAPER.items() if k != "batch_size"}) == 0


def test_memory_options_move_memory_the_right_way():
    cfg = BASE()
    ref = cx.estimate(cfg, batch_size=4)
    assert cx.estimate(cfg, batch_size=4, checkpointing=True).activation_bytes < ref.activation_bytes / 4
    assert cx.estimate(cfg, batch_size=4, dtype="bf16").activation_bytes < ref.activation_bytes
    assert cx.estimate(cfg, optimizer="sgd").optimizer_bytes * 2 == cx.estimate(cfg).optimizer_bytes == 8 * ref.params
    mat = cx.estimate(cfg, batch_size=4, fused=False)
    assert mat.activation_bytes > ref.activation_bytes
    assert cx.estimate(cfg, batch_size=4, fused=False, softmax_saves_input=True).activation_bytes > mat.activation_bytes
    assert ref.inference_peak_bytes < ref.training_bytes
    parts = ref.weight_bytes + ref.gradient_bytes + ref.optimizer_bytes + ref.activation_bytes + ref.workspace_bytes
    assert ref.training_bytes == parts


@pytest.mark.parametrize("gpu_gib", [8, 16, 32, 80])
def test_max_batch_size_is_the_largest_that_fits(gpu_gib):
    cfg, gpu = BASE(attention_type="divided_space_time"), gpu_gib * GiB
    b = cx.max_batch_size(cfg, gpu, fused=False)
    if b:
        assert cx.estimate(cfg, batch_size=b, fused=False).fits(gpu)
    assert not cx.estimate(cfg, batch_size=b + 1, fused=False).fits(gpu)


def test_gradients_at_the_peak():
    """Freed at every step, only the last block's and the head's gradients are allocated at the peak (the
    start of the backward); kept between steps, all of them. With little to save (a tiny clip), the peak is
    the end of the backward, when every gradient exists."""
    cfg = BASE(attention_type="divided_space_time")
    freed, kept = cx.estimate(cfg, batch_size=4), cx.estimate(cfg, batch_size=4, grads_freed=False)
    assert kept.gradient_bytes == 4 * kept.params
    assert kept.gradient_bytes / 12 < freed.gradient_bytes < kept.gradient_bytes / 10  # one block of 12, the head
    assert kept.training_bytes - freed.training_bytes == kept.gradient_bytes - freed.gradient_bytes
    e = cx.estimate(BASE(attention_type="divided_space_time", num_frames=2, img_size=32), batch_size=1)  # 9 tokens
    assert e.activation_bytes + e.workspace_bytes < 4 * e.params + cx.OVERHEAD_BYTES
    assert e.training_bytes == e.weight_bytes + e.optimizer_bytes + 4 * e.params + cx.OVERHEAD_BYTES


def test_estimate_rejects_bad_options():
    with pytest.raises(ValueError, match="dtype"):
        cx.estimate(BASE(), dtype="fp16")
    with pytest.raises(ValueError, match="optimizer"):
        cx.estimate(BASE(), optimizer="lamb")
    with pytest.raises(ValueError, match="batch_size"):
        cx.estimate(BASE(), batch_size=0)


def test_a_100_point_sweep_is_fast():
    cx.step_shapes.cache_clear()
    start = time.perf_counter()
    for scheme in ATTENTION_TYPES:
        for frames in (8, 16, 32, 64, 96):
            for size in (224, 336, 448, 560):
                cx.estimate(BASE(attention_type=scheme, num_frames=frames, img_size=size))
    assert time.perf_counter() - start < 1.0


def test_any_shape_works():
    for scheme in ATTENTION_TYPES:
        for kw in [dict(num_frames=1), dict(img_size=16), dict(patch_size=32), dict(embed_dim=96, num_heads=3),
                   dict(depth=1, mlp_ratio=2.0)]:
            e = cx.estimate(BASE(attention_type=scheme, **kw))
            assert e.gflops > 0 and e.params > 0 and e.activation_bytes > 0


# ------------------------------------------------------------------------------------------------
# CLI and figures


def test_cli_writes_csv_json_html(tmp_path):
    out = tmp_path / "cost"
    assert cx.main(["--out", str(out), "--frames", "8,32", "--sizes", "224,448", "--no-png"]) == 0
    rows = list(csv.DictReader(open(out / "complexity.csv")))
    assert len(rows) == 5 * 4
    joint = next(r for r in rows if r["attention_type"] == "joint_space_time" and r["img_size"] == "448")
    assert joint["oom_paper"] == "True" and joint["oom_fused"] == "False"
    assert float(joint["gflops"]) == pytest.approx(1262.4, rel=2e-3)
    data = json.loads((out / "complexity.json").read_text())
    assert data["meta"]["gpu_memory_bytes"] == 32 * GiB and len(data["rows"]) == 20
    html = (out / "complexity.html").read_text()
    assert "plotly" in html and '<script src="http' not in html  # self-contained
    assert not (out / "complexity.png").exists()


def test_cli_takes_the_architecture_of_a_checkpoint(tmp_path, capsys):
    """--model: a checkpoint's architecture and its frames and crop as the base point (an MLP ratio and a patch the
    flags cannot give included), the flags over it; every point as `estimate` gives it for that configuration."""
    from analysis.cost.estimate import estimate
    from timesformer import TimeSformer, TimeSformerConfig, save_model

    mine = TimeSformerConfig.tiny(attention_type="axial", img_size=48, num_frames=6, mlp_ratio=2.0, num_classes=3,
                                  class_names=["a", "b", "c"])
    save_model(TimeSformer(mine), tmp_path / "mine")
    out = tmp_path / "cost"
    assert cx.main(["--out", str(out), "--model", str(tmp_path / "mine"), "--frames", "6,12", "--sizes", "48,96",
                    "--num-classes", "400", "--no-png"]) == 0
    data = json.loads((out / "complexity.json").read_text())
    base = TimeSformerConfig.from_dict(data["meta"]["base_config"])
    assert base == mine.replace(class_names=None, num_classes=400)
    for r in data["rows"]:
        cfg = base.replace(attention_type=r["attention_type"], num_frames=r["num_frames"], img_size=r["img_size"])
        assert r["gflops"] == pytest.approx(estimate(cfg).gflops)
    assert {(r["num_frames"], r["img_size"]) for r in data["rows"]} == {(6, 48), (12, 48), (6, 96)}
    with pytest.raises(SystemExit):
        cx.main(["--out", str(out), "--model", str(tmp_path / "nothing")])
    assert "no such checkpoint" in capsys.readouterr().err


SMALL = ["--embed-dim", "32", "--depth", "2", "--heads", "2", "--frames", "2,4", "--sizes", "32", "--base-frames", "2",
         "--base-size", "32", "--schemes", "divided_space_time,axial", "--no-png"]


def test_cli_measures_at_the_runs_batch_and_optimizer(tmp_path, capsys):
    """--measure runs the real model with the run's settings (it measured one clip whatever --batch-size said):
    FLOPs and saved activations equal to the estimate's (on a GPU, whose attention kernels save other
    tensors, within 5%); on a GPU also the peak, never above the estimate."""
    out = tmp_path / "cost"
    assert cx.main(["--out", str(out), *SMALL, "--batch-size", "3", "--optimizer", "adamw",
                    "--measure", "--device", "cuda" if torch.cuda.is_available() else "cpu"]) == 0
    rows = json.loads((out / "complexity.json").read_text())["rows"]
    assert len(rows) == 6
    for r in rows:
        assert r["measured_gflops"] == pytest.approx(r["gflops"], rel=1e-9)
        if torch.cuda.is_available():
            assert r["measured_activation_bytes"] == pytest.approx(r["activation_bytes_fused"], rel=0.05)
            assert r["measured_device"] == "cuda:0" and 0 < r["measured_peak_bytes"] <= r["train_bytes_fused"]
        else:
            assert r["measured_activation_bytes"] == r["activation_bytes_fused"]
            assert r["measured_device"] == "cpu" and r["measured_peak_bytes"] is None
    assert capsys.readouterr().out.count("measured ") == 4  # the two sweeps share their base point
    assert cx.main(["--out", str(out), *SMALL, "--measure", "--measure-max-gflops", "0"]) == 0  # none cheap enough
    assert all(r["measured_gflops"] is None for r in json.loads((out / "complexity.json").read_text())["rows"])


@pytest.mark.parametrize("args, message", [
    (["--frames", "8,-4"], "frames: expected whole numbers from 1 to 100000 separated by commas"),
    (["--sizes", "224,99999984"], "sizes: expected whole numbers from 1 to 8192"),  # a typo: a MemoryError
    (["--sizes", "230"], "not divisible by the patch size 16"),
    (["--schemes", "divided_space_time,fancy"], "unknown scheme fancy"),
    (["--gpu-memory", "0"], "--gpu-memory must be positive"),
    (["--dtype", "fp16"], "invalid choice"),
    (["--batch-size", "8,16"], "expected an integer ≥ 1, got '8,16'"),
    (["--depth", "0"], "expected an integer ≥ 1, got '0'"),
    (["--measure", "--device", "tpu"], "--device tpu: Expected one of"),
])
def test_cli_bad_arguments_give_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        cx.main(["--out", str(tmp_path), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_out_where_a_file_stands_gives_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SystemExit) as exc:
        cx.main(["--out", str(tmp_path / "notes.txt" / "curves"), "--schemes", "axial", "--frames", "8"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "notes.txt is a file, not a folder" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("how", [["analysis/complexity.py"], ["-m", "analysis.complexity"]], ids=["file", "module"])
def test_cli_runs_as_file_and_module(tmp_path, how):
    proc = subprocess.run([sys.executable, *how, "--out", str(tmp_path), "--schemes", "axial", "--frames", "8",
                           "--sizes", "224", "--no-png"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "complexity.html").exists() and "wrote" in proc.stdout


def test_cli_help_runs_from_any_folder(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "complexity.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: complexity.py") and "--gpu-memory" in proc.stdout


def test_cli_takes_its_name_from_the_caller(capsys):
    with pytest.raises(SystemExit) as exc:
        cx.main(["--help"], prog="tslab cost")
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("usage: tslab cost")
    with pytest.raises(SystemExit):
        cx.main([], prog="tslab cost")
    assert capsys.readouterr().err.startswith("tslab cost: error:")


def test_complexity_reexports_the_cost_package():
    modules = [importlib.import_module(f"analysis.cost.{name}")
               for name in ("shapes", "estimate", "measure", "sweep", "references", "cli")]
    for name in cx.__all__:
        homes = [m for m in modules if name in vars(m) and getattr(m, name) is getattr(cx, name)]
        assert homes, f"analysis.complexity.{name} is not a name of analysis.cost"


def test_png_degrades_to_a_note_without_a_browser():
    class NoBrowser:
        def write_image(self, *args, **kwargs):
            raise RuntimeError("Kaleido requires Google Chrome to be installed.\nmore detail")

    note = cx.write_png(NoBrowser(), "x.png")
    assert note.startswith("PNG not written") and "Chrome" in note and "\n" not in note


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no browser for kaleido")
def test_png_written_with_a_browser(tmp_path):
    fig = memory_figure({"fused": cx.estimate(BASE())})
    assert cx.write_png(fig, tmp_path / "m.png") is None
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_figures():
    rows = cx.sweep(BASE(), ("joint_space_time", "divided_space_time"), (8, 32), (224, 448))
    fig = cost_figure(rows, 32 * GiB)
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type == "log"
    names = {t.name for t in fig.data}
    assert "Joint Space-Time (ST)" in names and "Divided Space-Time (T+S)" in names
    assert any(t.marker.symbol == "x" for t in fig.data)  # joint's OOM points are marked
    assert any(s.type == "rect" for s in fig.layout.shapes)  # the OOM band
    assert "GFLOPs" in fig.data[0].hovertext[0]
    e = cx.estimate(BASE())
    assert len(breakdown_figure(e).data[0].y) == len(e.flops)
    assert len(memory_figure({"a": e, "b": e}, 32 * GiB).data) == 5


def test_cli_prints_the_reference_tables(capsys):
    assert cx.main(["--references"]) == 0
    text = capsys.readouterr().out
    assert "| divided_space_time | 8×224 | 196.1 | 196.1 | 196.1 |" in text
    assert "| joint_space_time | 8×448 | 6273 | 50.5 × |" in text


def test_cli_needs_out(capsys):
    with pytest.raises(SystemExit):
        cx.main([])
    assert "--out" in capsys.readouterr().err


def test_measure_if_it_fits_says_none_when_the_gpu_runs_out(monkeypatch):
    import analysis.cost.measure as measure_module

    cfg = small("divided_space_time")
    assert cx.measure_if_it_fits(cfg).params == cx.measure(cfg).params

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(measure_module, "measure", out_of_memory)
    assert cx.measure_if_it_fits(cfg) is None


@pytest.mark.parametrize("args, message", [
    (["--gpu-memory", "nan"], "--gpu-memory must be positive and at most 1048576 GiB, got nan"),
    (["--gpu-memory", "inf"], "--gpu-memory must be positive and at most 1048576 GiB, got inf"),  # was: a hang
    (["--gpu-memory", "1e308"], "--gpu-memory must be positive and at most 1048576 GiB, got 1e+308"),
    (["--references", "--gpu-memory", "nan"], "--gpu-memory must be positive"),
    (["--measure-max-gflops", "nan"], "--measure-max-gflops must be a number ≥ 0 (inf: no limit), got nan"),
    (["--measure-max-gflops", "-1"], "--measure-max-gflops must be a number ≥ 0 (inf: no limit), got -1"),
])
def test_cli_rejects_numbers_that_are_not_finite_or_out_of_range(tmp_path, capsys, args, message):
    """nan passed every check (every point out of memory) and inf never ended (max_batch_size doubled forever)."""
    with pytest.raises(SystemExit) as exc:
        cx.main(["--out", str(tmp_path), "--frames", "4", "--sizes", "32", "--no-png", *args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("budget", [float("nan"), float("inf")])
def test_max_batch_size_rejects_a_budget_that_is_not_finite(budget):
    with pytest.raises(ValueError, match=f"gpu_memory must be a finite number of bytes, got {budget}"):
        cx.max_batch_size(small("axial"), budget)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_recording_bytes_are_the_bytes_record_attention_keeps(attention_type):
    """`recording_bytes` (what the app's sidebar bounds a clip by) against the probabilities a recording of every
    layer holds, on a grid other than the config's."""
    from analysis.cost.estimate import recording_bytes
    from timesformer import TimeSformer, TimeSformerConfig, record_attention

    cfg = TimeSformerConfig(attention_type=attention_type, img_size=32, patch_size=8, num_frames=4, embed_dim=32,
                            depth=2, num_heads=4, num_classes=3)
    model = TimeSformer(cfg).eval()
    with torch.no_grad(), record_attention(model) as rec:
        model(torch.randn(1, 3, 2, 48, 40))
    kept = sum(m.probs.numel() * 4 for m in rec)
    assert recording_bytes(cfg, (2, 6, 5)) == kept
