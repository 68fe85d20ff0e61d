"""bench/gpu.py in its CPU smoke mode: every path of the GPU benchmark at toy size, with the modules the GPU
machine lacks (decord, PyAV, captum, streamlit, plotly) made unimportable."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MISSING_ON_THE_GPU_MACHINE = ["decord", "av", "captum", "streamlit", "plotly", "kaleido", "matplotlib", "PIL"]


def test_gpu_benchmark_smoke_mode_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    block = "".join(f"sys.modules[{m!r}] = None; " for m in MISSING_ON_THE_GPU_MACHINE)
    code = (f"import sys, runpy; {block}sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    cmd = [sys.executable, "-c", code, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--smoke",
           "--compile-schemes", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] and res["gemm_bf16_tflop_s"] > 0 and set(res["schemes"]) == {
        "space_only", "joint_space_time", "divided_space_time", "sparse_local_global", "axial"}
    divided = res["schemes"]["divided_space_time"]
    for name in ("ours", "huggingface"):
        assert divided[name]["train_clips_per_s"] > 0 and divided[name]["infer_clips_per_s"] > 0
        assert 0 < divided[name]["mfu"] < 1 and divided[name]["peak_bytes"] is None  # no allocator peak on CPU
        assert divided[name]["host_ms_per_step"] > 0  # the same step at 8 channels per head
    assert divided["ours_over_huggingface"]["train_clips_per_s"] > 0
    best = divided["best_over_huggingface"]  # ours at its best: the fastest of its rows, in each direction
    for k in ("train", "infer"):
        fastest = max((r for r in divided if r.startswith("ours") and "mfu" in divided[r]),
                      key=lambda r: divided[r][f"{k}_clips_per_s"])
        assert best[f"{k}_row"] == fastest
        assert best[f"{k}_clips_per_s"] == divided[fastest][f"{k}_clips_per_s"] / divided["huggingface"][
            f"{k}_clips_per_s"]
    for variant in ("ours math≤16", "ours packed<64"):  # the core's short-group settings, timed beside the default
        assert divided[variant]["train_clips_per_s"] > 0 and divided[variant]["infer_clips_per_s"] > 0
    assert "ours packed<64" not in res["schemes"]["joint_space_time"]  # its one group of 65 tokens is not packed
    assert divided["estimated_training_bytes"] > 0 and divided["forward_gflop_per_clip"] > 0
    e2e = res["train_py"]
    assert e2e["train_py_clips_per_s"] > 0 and e2e["bare_loop_clips_per_s"] > 0 and e2e["workers"] == 0
    assert 0 <= e2e["train_py_data_wait"] < 1
    assert e2e["loop_clips_per_s"] > 0 and e2e["loop_over_bare"] > 0  # tslab train's loop without the loader
    assert "ours / HuggingFace: training" in proc.stdout and "tslab train (divided" in proc.stdout
    assert "ours at its best / HuggingFace: training" in proc.stdout
    assert "its loop alone on clips in memory: " in proc.stdout
    assert "ours: the host queues a training step in" in proc.stdout


def test_gpu_benchmark_compiles_in_the_modes_it_is_given(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--smoke", "--schemes",
           "divided_space_time", "--compile-schemes", "divided_space_time", "--compile-modes", "reduce-overhead",
           "--math-below", "0", "--pack-to", "0", "--e2e-steps", "0", "--steps", "2", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["schemes"]["divided_space_time"]
    assert {"ours", "ours compiled reduce-overhead", "huggingface"} <= set(rows)
    assert rows["ours compiled reduce-overhead"]["train_clips_per_s"] > 0


def test_tslab_bench_lists_gpu_and_data():
    from timesformer.cli import benchmarks

    found = benchmarks()
    assert "gpu" in found and found["gpu"].startswith("GPU benchmark") and "data" in found
    assert found["table1"].endswith("each on 1 thread.")  # the first paragraph, not its first line cut short
    for path in (ROOT / "bench").glob("*.py"):  # each names itself as `tslab bench` runs it, not "usage: gpu.py"
        text = path.read_text()
        assert "ArgumentParser(" not in text or f'prog="tslab bench {path.stem}"' in text, path.name


def bench_module(name: str):
    """bench/<name>.py as a module (bench/ is a folder of scripts, not a package)."""
    import importlib

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_the_memory_estimate_against_the_peaks_measured_on_an_h200(tmp_path):
    """The peaks and saved bytes `tslab bench gpu` measured on an NVIDIA H200 (ViT-B/16 8×224, bf16, AdamW, all
    five schemes, batches 4, 8 and 16), re-estimated with today's `analysis.cost.estimate`: the estimate of
    the peak is never under it and at most 5% over; the saved activations within 3%. The files of commit
    551be06 hold a second session's peaks (divided at batches 8 and 16, axial at 8)."""
    gpu = bench_module("gpu")
    ratios = []
    later = [f"gpu-nvidia-h200-551be06-{n}.json" for n in ("graphs", "e2e", "axial-graphs", "b16")]
    for name in ("gpu-nvidia-h200.json", "gpu-nvidia-h200-memory.json", *later):
        copy = tmp_path / name
        copy.write_text((ROOT / "bench" / "results" / name).read_text())
        ratios += gpu.reestimate(copy)
        for rows in json.loads(copy.read_text())["schemes"].values():
            for m in rows.get("memory", {}).values():
                assert 0.97 < m["estimated_activations_over_saved"] < 1.03
    assert len(ratios) == 5 + 15 + 5
    assert all(1.0 <= r <= 1.05 for _, _, r in ratios), ratios


def test_the_profile_mode_prints_the_kernels_of_a_training_step(capsys):
    gpu = bench_module("gpu")
    assert gpu.main(["--device", "cpu", "--smoke", "--profile", "axial"]) == {}
    out = capsys.readouterr().out
    assert "===== axial on cpu" in out and "aten::addmm" in out and "Optimizer.step#AdamW.step" in out


def test_a_stopped_gpu_benchmark_keeps_the_schemes_it_measured(tmp_path, monkeypatch):
    """A run stopped by a time limit (or Ctrl-C) after its first scheme leaves that scheme's rows in its results
    file, marked incomplete; the whole run marks it complete."""
    import pytest

    gpu = bench_module("gpu")
    floor = gpu.host_floor

    def stop_at_axial(smoke, scheme, *args):
        if scheme == "axial":
            raise KeyboardInterrupt
        return floor(smoke, scheme, *args)

    monkeypatch.setattr(gpu, "host_floor", stop_at_axial)
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--smoke", "--schemes", "space_only", "axial", "--compile-schemes", "--math-below",
            "0", "--pack-to", "0", "--e2e-steps", "0", "--steps", "2", "--warmup", "1", "--json", str(out)]
    with pytest.raises(KeyboardInterrupt):
        gpu.main(argv)
    res = json.loads(out.read_text())
    assert res["complete"] is False and list(res["schemes"]) == ["space_only"]
    assert res["schemes"]["space_only"]["ours"]["train_clips_per_s"] > 0
    assert not (tmp_path / "gpu.json.part").exists()
    monkeypatch.setattr(gpu, "host_floor", floor)
    assert gpu.main(argv)["complete"] and json.loads(out.read_text())["complete"] is True


def test_the_gpu_checks_script_runs_every_step_with_flags_the_benchmarks_take(tmp_path):
    """bench/gpu_checks.sh, with `python3` and `nvidia-smi` replaced by stubs that record what they are asked:
    every step of both parts runs (in order), and each benchmark's command line parses with that benchmark's
    own parser, each test file named exists, so that a renamed flag cannot waste a lent GPU's minutes."""
    import os
    import shlex

    stubs, calls = tmp_path / "stubs", tmp_path / "calls.txt"
    stubs.mkdir()
    (stubs / "python3").write_text(f'#!/bin/bash\nprintf "%q " "$@" >> {calls}\necho >> {calls}\n')
    (stubs / "nvidia-smi").write_text("#!/bin/bash\necho 'GPU 0: stub'\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", OUT=str(tmp_path / "out"))
    steps = []
    for part in ([], ["more"]):
        proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_checks.sh"), *part], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        steps += [line.split(":")[0].removeprefix("=== ") for line in proc.stdout.splitlines()
                  if line.startswith("=== ") and "(at most" in line]
    assert steps == ["cuda-tests", "gpu", "gpu-compiled", "gpu-graphs-b16", "gpu-axial-graphs", "attention"]
    commands = [shlex.split(line) for line in calls.read_text().splitlines() if "bench/" in line or "pytest" in line]
    assert len(commands) == len(steps)
    for argv in commands:
        if argv[:2] == ["-m", "pytest"]:
            assert all((ROOT / a).exists() for a in argv if a.startswith("tests/")), argv
            continue
        name = Path(argv[0]).stem
        bench_module(name).parser().parse_args(argv[1:])  # an unknown flag or value exits here


def test_the_core_settings_timed_beside_the_default():
    """bench/gpu.py's rows of the core's short-group settings: each only where it changes what runs."""
    from timesformer import attention

    settings = bench_module("gpu").core_settings
    default = attention.MATH_BELOW, attention.PACK_TO, attention.SHORT_BELOW
    assert default == (0, 0, 16)  # the Triton kernel for groups of up to 16 tokens, where it runs
    assert settings(8, 16, 64, 0, True) == {"": default, " math≤16": (16, 0, 0), " packed<64": (0, 64, 0),
                                           " sdpa": (0, 0, 0)}  # divided's 8-token time groups on CUDA
    assert settings(8, 16, 64, 0, False) == {"": default, " math≤16": (16, 0, 0), " packed<64": (0, 64, 0)}
    assert settings(8, 0, 0, 32, True) == {"": default, " short≤32": (0, 0, 32)}
    assert settings(8, 0, 0, 16, True) == {"": default}  # the default itself: no second row
    assert settings(197, 16, 64, 0, True) == {"": default}  # space_only: one group of 197, nothing short
    assert settings(17, 0, 0, 32, True) == {"": default, " short≤32": (0, 0, 32)}  # 17 > 16: only 32 takes it
