"""bench/attention.py at toy size on the CPU: every way of attending is timed and agrees with the default."""

import json

import pytest

from tests.test_bench_gpu import bench_module


@pytest.mark.slow
def test_attention_benchmark_times_every_way_and_checks_it(tmp_path, capsys):
    from timesformer import attention as core

    out = tmp_path / "attention.json"
    quick = ["--device", "cpu", "--smoke", "--warmup", "1", "--repeats", "2"]
    bench = bench_module("attention")
    settings = core.MATH_BELOW, core.PACK_TO, core.SHORT_BELOW
    res = bench.main([*quick, "--schemes", "divided_space_time", "axial", "--json", str(out)])
    assert json.loads(out.read_text()) == res and (core.MATH_BELOW, core.PACK_TO, core.SHORT_BELOW) == settings
    compiled = bench.main([*quick, "--schemes", "divided_space_time", "--compile", "--pack-to", "64",
                           "--json", str(out)])
    res["steps"][0]["ways"].update(compiled["steps"][0]["ways"])
    steps = {(r["scheme"], r["step"]): r for r in res["steps"]}
    assert list(steps) == [("divided_space_time", "time"), ("divided_space_time", "space"), ("axial", "time"),
                           ("axial", "width"), ("axial", "height")]
    time_step = steps["divided_space_time", "time"]
    assert (time_step["groups"], time_step["tokens"]) == (8 * 16, 4)  # batch 8 × 4×4 positions, 4 frames each
    expected = {"sdpa", "sdpa:flash", "sdpa:math", "matmul+softmax", "packed<64", "packed<64:math", "packed<128",
                "packed<128:math", "sdpa compiled", "matmul+softmax compiled", "packed<64 compiled"}
    assert set(time_step["ways"]) == expected
    for row in res["steps"]:
        for name, way in row["ways"].items():
            # both timed (not compared: two repeats of sub-millisecond steps on a shared CPU are noise)
            assert way["forward_ms"] > 0 and way["training_ms"] > 0, (row["step"], name)
            assert way["max_diff"] < 1e-4, (row["step"], name, way)  # the same attention, whichever way
        assert row["fastest_training"] in row["ways"] and row["fastest_forward"] in row["ways"]
    # space groups (cls + 16 patches) fit 64 tokens 3 at a time: packed too, at a batch of 8 frames × 8 clips
    assert "packed<64" in steps["divided_space_time", "space"]["ways"]
    assert "fastest: training" in capsys.readouterr().out


def test_a_kernel_that_refuses_the_inputs_is_listed_not_fatal(tmp_path, monkeypatch):
    """On a CPU the efficient kernel does not exist: the way is stored with its error and the others still run."""
    bench = bench_module("attention")
    ways = bench.ways
    monkeypatch.setattr(bench, "ways", lambda *a: ways(*a) + [dict(name="sdpa:efficient", kernel="efficient")])
    res = bench.main(["--device", "cpu", "--smoke", "--schemes", "joint_space_time", "--warmup", "1", "--repeats",
                      "1", "--pack-to", "--json", str(tmp_path / "a.json")])
    (step,) = res["steps"]
    assert "error" in step["ways"]["sdpa:efficient"] and step["ways"]["sdpa"]["training_ms"] > 0
    assert step["fastest_training"] != "sdpa:efficient"
