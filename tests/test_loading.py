"""The training data path: worker processes change nothing but speed, `--workers auto`, the share of the
time spent waiting for data, and `--compile`."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tests.test_train import rows, same_weights, toy_args
from timesformer import TimeSformer, TimeSformerConfig
from timesformer import train as T
from timesformer.data import AtEpoch, EpochBatches, auto_workers, collate, video_folder
from timesformer.distributed import Dist
from timesformer.engine import Trainer, TrainState, train_one_epoch
from timesformer.synthmotion import export_synthmotion


def test_persistent_workers_give_the_run_of_the_main_process(tmp_path):
    """Random crops depend on (seed, epoch, index): workers that live through both epochs must see the epoch."""
    root = export_synthmotion(tmp_path / "videos", "temporal", num_train=8, num_val=4, seed=0, num_frames=4,
                              size=40)
    runs = {}
    for workers in ("0", "2"):
        out = runs[workers] = tmp_path / f"w{workers}"
        T.main(["--data", str(root), "--epochs", "2", "--batch-size", "4", "--sampling-rate", "1", "--out", str(out),
                "--model", "embed_dim=32", "depth=1", "num_heads=2", "--img-size", "32", "--num-frames", "4",
                "--no-progress", "--threads", "1", "--workers", workers, "--prefetch", "1"])
    assert rows(runs["0"]) == rows(runs["2"])
    assert same_weights(runs["0"] / "checkpoint-last", runs["2"] / "checkpoint-last")
    ds = video_folder(root, "train", num_frames=4, sampling_rate=1, size=32, train=True)
    first = [AtEpoch(ds)[(epoch, 0)][0] for epoch in (0, 1)]
    assert not torch.equal(*first)  # the epochs really crop differently


def test_epoch_batches_pair_every_index_with_its_epoch():
    batches = EpochBatches()
    batches.set(3, [[0, 1], [2]])
    assert list(batches) == [[(3, 0), (3, 1)], [(3, 2)]] and len(batches) == 2
    batches.set(4, [])
    assert list(batches) == []


def test_auto_workers(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    for cores, per_node, expected in ((16, 1, 15), (16, 2, 7), (128, 1, 16), (1, 1, 1), (8, 8, 1)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert auto_workers(cuda, per_node) == expected, (cores, per_node)
        # on the CPU the model computes on every core already: one worker decodes video files where a process
        # has two cores or more; SynthMotion's clips are made in the loop
        assert auto_workers(cpu, per_node) == 0
        assert auto_workers(cpu, per_node, decodes=True) == int(cores // per_node >= 2), (cores, per_node)


def test_workers_flag(capsys):
    assert T.parse_args([]).workers == "auto" and T.parse_args(["--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        T.parse_args(["--workers", "-1"])
    assert "expected auto or a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--workers" in help_text and "auto: on a GPU" in help_text and "--compile" in help_text


def test_train_rows_report_the_share_of_time_waiting_for_data(tmp_path):
    T.main(toy_args(tmp_path / "run"))
    train_rows = [r for r in rows(tmp_path / "run", drop=()) if r["split"] == "train"]
    assert train_rows and all(0 <= r["data_wait"] < 1 for r in train_rows)

    class Progress:  # what tqdm is asked to show
        def __init__(self):
            self.postfix = {}

        def update(self, n):
            pass

        def set_postfix(self, **kw):
            self.postfix = kw

    def slow(n, delay):  # a loader that needs `delay` seconds per batch
        for _ in range(n):
            time.sleep(delay)
            yield collate([(torch.randn(1, 3, 2, 16, 16), 0, 0)] * 2)

    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=16, num_heads=2, img_size=16, num_frames=2,
                                               num_classes=2))
    trainer = Trainer(model, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu",
                      enabled=False), Dist("cpu"), lambda step: 0.1, total_steps=4)
    state, progress = TrainState(), Progress()
    train_one_epoch(trainer, slow(4, 0.1), state, progress=progress)
    assert state.step == 4 and state.data_wait > 0.5 and progress.postfix["data"].endswith("%")
    fast = TrainState()
    train_one_epoch(trainer, slow(4, 0.0), fast)
    assert fast.data_wait < state.data_wait


def test_the_next_batch_is_taken_while_the_step_is_queued():
    """The loader is asked for batch k+1 after step k's backward is queued and before its optimizer step (the
    loop's one wait for the GPU), so that making and copying the batch overlap the step on a GPU."""
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=16, num_heads=2, img_size=16, num_frames=2,
                                               num_classes=2))
    counts = {"forward": 0, "backward": 0, "step": 0}
    model.register_forward_pre_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    model.head.weight.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.register_step_pre_hook(lambda *_: counts.__setitem__("step", counts["step"] + 1))
    seen = []

    def loader(n):
        for _ in range(n):
            seen.append(tuple(counts.values()))
            yield collate([(torch.randn(1, 3, 2, 16, 16), 0, 0)] * 2)

    trainer = Trainer(model, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), Dist("cpu"),
                      lambda step: 0.1, total_steps=4)
    train_one_epoch(trainer, loader(4), TrainState())
    # (forwards, backwards, optimizer steps) when batch j was taken: after step j-1's backward, before its update
    assert seen == [(0, 0, 0), (1, 1, 0), (2, 2, 1), (3, 3, 2)]


def test_the_loss_leaves_for_the_host_before_the_backward_is_queued(monkeypatch):
    """The loop's one wait per micro-batch is for the values its forward produced: they are sent to the host
    before the backward is queued (so on a GPU the wait overlaps the backward) and read after it is queued."""
    import timesformer.engine as engine

    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=16, num_heads=2, img_size=16, num_frames=2,
                                               num_classes=2))
    counts = {"forward": 0, "backward": 0}
    model.register_forward_pre_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    model.head.weight.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))
    sent, read = [], []
    to_host = engine._to_host

    def spy(values):
        sent.append(tuple(counts.values()))
        reader = to_host(values)
        return lambda: read.append(tuple(counts.values())) or reader()

    monkeypatch.setattr(engine, "_to_host", spy)
    trainer = Trainer(model, model, torch.optim.SGD(model.parameters(), lr=0.1),
                      torch.amp.GradScaler("cpu", enabled=False), Dist("cpu"), lambda step: 0.1, total_steps=3)
    state = TrainState()
    train_one_epoch(trainer, [collate([(torch.randn(1, 3, 2, 16, 16), i % 2, 0) for i in range(2)]) for _ in range(3)],
                    state)
    assert sent == [(1, 0), (2, 1), (3, 2)] and read == [(1, 1), (2, 2), (3, 3)]
    assert state.count == 6 and math.isfinite(state.loss_sum) and 0 <= state.correct <= 6


def test_evaluation_reads_the_device_once(monkeypatch):
    """`evaluate` keeps its sums on the device and reads them once at the end (on a GPU the host then never
    waits between batches), and its metrics are those of the views' averaged softmax and of the one view."""
    from timesformer.engine import evaluate

    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=16, num_heads=2, img_size=16, num_frames=2,
                                               num_classes=6))
    batches = [collate([(torch.randn(3, 3, 2, 16, 16), (i + j) % 6, 0) for j in range(4)]) for i in range(3)]
    with torch.no_grad():
        model(batches[0]["video"][:1, 0])  # the groupings of this grid are built (once, on the host)
    reads = []
    for name in ("tolist", "item", "__float__", "__bool__", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _real=real, _name=name: reads.append(_name)
                            or _real(t, *a))
    out = evaluate(model, batches, torch.device("cpu"), view=1)
    monkeypatch.undo()
    assert reads == ["cpu", "tolist"]  # the device's one copy to the host, then its numbers
    with torch.no_grad():
        probs = torch.cat([model(b["video"].flatten(0, 1)).softmax(-1).reshape(4, 3, -1) for b in batches])
    label = torch.cat([b["label"] for b in batches])
    for p, got in ((probs.mean(1), out), (probs[:, 1], out["view"])):
        assert got["clips"] == 12
        assert got["loss"] == pytest.approx(-p[torch.arange(12), label].log().mean().item(), rel=1e-5)
        assert got["acc1"] == pytest.approx((p.argmax(1) == label).float().mean().item())
        assert got["acc5"] == pytest.approx((p.topk(5).indices == label[:, None]).any(1).float().mean().item())


@pytest.mark.slow
def test_compile_flag_trains_like_eager(tmp_path):
    from tests.test_model import _inductor_missing

    if _inductor_missing():
        pytest.skip(_inductor_missing())
    import torch._dynamo

    # other tests compiled the same code for other frame counts and sizes, which would make those sizes
    # symbolic here; a training run has one clip size, and only its batch size may vary
    torch._dynamo.reset()
    # on the CPU, whatever the machine has: fp32 there, so eager and compiled agree closely (the CUDA path,
    # bf16, has its own test in test_cuda.py)
    T.main(toy_args(tmp_path / "eager", "--device", "cpu", clips=8, epochs=1, batch=4))
    T.main(toy_args(tmp_path / "compiled", "--device", "cpu", "--compile", clips=8, epochs=1, batch=4))
    eager, compiled = rows(tmp_path / "eager"), rows(tmp_path / "compiled")
    assert [(r["step"], r["split"]) for r in eager] == [(r["step"], r["split"]) for r in compiled]
    for a, b in zip(eager, compiled):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["acc1"] == b["acc1"]
    assert same_weights(tmp_path / "eager" / "checkpoint-last", tmp_path / "compiled" / "checkpoint-last",
                        exact=False)


def test_a_loss_check_per_micro_batch_stops_before_the_update():
    """The non-finite loss check follows the backward now (one wait per micro-batch): weights stay finite."""
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=16, num_heads=2, img_size=16, num_frames=2,
                                               num_classes=2))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu",
                      enabled=False), Dist("cpu"), lambda step: 0.1, total_steps=4)
    bad = collate([(torch.full((1, 3, 2, 16, 16), float("nan")), 0, 0)] * 2)
    with pytest.raises(T.TrainingDiverged, match="at step 0"):
        train_one_epoch(trainer, [bad], TrainState())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
