"""Training and evaluation at toy size: run folder, resume after SIGKILL, DDP on CPU, NaN stop, --init; the
atomic folder writer and the device choice."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from timesformer import TimeSformer, TimeSformerConfig, load_model, save_model
from timesformer import train as T
from timesformer.distributed import Dist, resolve_device
from timesformer.engine import TrainState, predict
from timesformer.files import atomic_folder
from timesformer.optim import build_optimizer, lr_at
from timesformer.runinfo import ending
from timesformer.runs import Interrupted
from timesformer.synthmotion import export_synthmotion
from timesformer.video import read_clip

ROOT = Path(__file__).resolve().parent.parent
TOY = ["--model", "embed_dim=32", "depth=1", "num_heads=2", "--img-size", "32", "--num-frames", "4",
       "--no-progress", "--threads", "1"]


def toy_args(out, *extra, clips=16, epochs=2, batch=4):
    return ["--data", "synthmotion-temporal", "--train-clips", str(clips), "--val-clips", "8", "--batch-size",
            str(batch), "--epochs", str(epochs), "--out", str(out), *TOY, *extra]


def rows(run: Path, drop=("wall_s", "clips_per_s", "data_wait")) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in drop})
    return out


def res_wall(run: Path) -> float:
    """The training seconds of a run's last train row (what its last log line reports)."""
    return [r for r in rows(run, drop=()) if r["split"] == "train"][-1]["wall_s"]


def weights(path) -> dict:
    return load_model(path).state_dict()


def same_weights(a, b, exact=True):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        ok = torch.equal(wa[k], wb[k]) if exact else torch.allclose(wa[k], wb[k], atol=2e-5, rtol=1e-4)
        assert ok, k
    return True


def test_run_folder(tmp_path):
    out = tmp_path / "run"
    res = T.main(toy_args(out, "--ckpt-every", "3"))
    lines = rows(out, drop=())
    assert [(r["epoch"], r["step"], r["split"]) for r in lines] == [
        (0, 4, "train"), (0, 4, "val"), (1, 8, "train"), (1, 8, "val")]
    for r in lines:
        assert {"epoch", "step", "split", "loss", "acc1"} <= r.keys() and "acc5" not in r  # 4 classes
        assert 0 <= r["acc1"] <= 1 and r["loss"] > 0
    assert lines[0]["clips_per_s"] > 0 and res["val"]["clips"] == 8
    model = load_model(out / "checkpoint-last")
    assert same_weights(out, out / "checkpoint-last")  # the run's folder opens as its newest checkpoint
    assert model.class_names == ["moving right", "moving left", "right and back", "left and back"]
    assert model.config.embed_dim == 32 and model.config.num_frames == 4 and model.config.time_embed_std == 1.0
    assert (out / "checkpoint-last").resolve().name == "ckpt-s00000008-end"
    # --keep 2, and the best validated one; no leftovers
    assert {p.name for p in out.glob("ckpt-*")} == {"ckpt-s00000006", "ckpt-s00000008-end",
                                                     os.readlink(out / "checkpoint-best")}
    assert not list(out.glob(".tmp*")) and not list(out.glob(".checkpoint-*"))
    state = torch.load(out / "checkpoint-last" / "train_state.pt", weights_only=True)
    assert state["state"]["step"] == 8 and state["state"]["epoch"] == 2
    cfg = (out / "train_config.yaml").read_text()
    assert "divided_space_time" in cfg and "adamw" in cfg and "log.txt" in os.listdir(out)
    best = os.readlink(out / "checkpoint-best")  # the last line says where both checkpoints are, and how good
    val = {r["step"]: r["acc1"] for r in lines if r["split"] == "val"}
    assert (out / "log.txt").read_text().splitlines()[-1] == (
        f"finished at step 8 after {res_wall(out):.0f} s of training; checkpoint-last"
        + (f" and checkpoint-best: {out / best} (step 8, validation accuracy {val[8]:.1%})" if best.endswith("8-end")
           else f": {out / 'ckpt-s00000008-end'} (step 8, validation accuracy {val[8]:.1%}); checkpoint-best: "
                f"{out / best} (step 4, validation accuracy {val[4]:.1%})"))


def test_checkpoint_best_follows_the_validation_accuracy_and_is_never_pruned(tmp_path, monkeypatch):
    """--keep 1 removed the best epoch's weights once a later epoch validated worse; checkpoint-best keeps them."""
    # (accuracy, loss) of epochs 0-3, then of 4-5 after a resume
    validations = iter([(0.5, 1.0), (0.9, 1.0), (0.7, 1.0), (0.9, 1.0), (0.95, 1.0), (0.95, 0.8)])
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: dict(zip(("acc1", "loss"), next(validations)), clips=8))
    out = tmp_path / "run"
    T.main(toy_args(out, "--keep", "1", epochs=4))  # 4 steps per epoch
    assert os.readlink(out / "checkpoint-best") == "ckpt-s00000008-end"  # epoch 1; epoch 3 only equals it
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-s00000008-end", "ckpt-s00000016-end"]
    assert same_weights(out / "checkpoint-best", out / "ckpt-s00000008-end")
    T.main(toy_args(out, "--keep", "1", "--resume", epochs=6))  # the best so far comes from metrics.jsonl
    assert os.readlink(out / "checkpoint-best") == "ckpt-s00000024-end"  # epoch 5: epoch 4's 0.95, a lower loss
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-s00000024-end"]  # the best is the last


def test_checkpoint_best_after_a_resume_from_an_earlier_checkpoint_names_a_kept_validation(tmp_path, monkeypatch):
    """Resumed from an earlier checkpoint than the last, checkpoint-best went on naming the abandoned steps' best
    one, whose folder the resumed run then overwrote with weights that had validated worse."""
    validations = iter([(0.5, 1.0), (0.9, 1.0), (0.7, 1.0), (0.4, 1.0), (0.45, 1.0),  # run, then its resume
                        (0.9, 1.0), (0.5, 1.0), (0.95, 1.0), (0.6, 1.0)])  # the second run, then its resume
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: dict(zip(("acc1", "loss"), next(validations)), clips=8))
    out = tmp_path / "run"
    T.main(toy_args(out, "--keep", "9", epochs=3))  # 4 steps per epoch, every checkpoint kept
    assert os.readlink(out / "checkpoint-best") == "ckpt-s00000008-end"
    # a resume that trains nothing (or is killed before its first checkpoint) leaves both links on kept steps
    T.main(toy_args(out, "--keep", "9", "--resume", str(out / "ckpt-s00000004-end"), "--max-steps", "4", epochs=3))
    assert [os.readlink(out / link) for link in ("checkpoint-last", "checkpoint-best")] == ["ckpt-s00000004-end"] * 2
    T.main(toy_args(out, "--keep", "9", "--resume", str(out / "ckpt-s00000004-end"), epochs=3))
    assert os.readlink(out / "checkpoint-best") == "ckpt-s00000004-end"  # 0.5 beats the resumed 0.4 and 0.45
    assert "checkpoint-best now names ckpt-s00000004-end, the best validation before the checkpoint resumed " \
           "from" in (out / "log.txt").read_text()
    # where the best validation kept has no checkpoint any more (deleted by hand), there is no checkpoint-best
    other = tmp_path / "other"
    T.main(toy_args(other, "--keep", "9", epochs=3))
    assert os.readlink(other / "checkpoint-best") == "ckpt-s00000012-end"
    shutil.rmtree(other / "ckpt-s00000004-end")
    T.main(toy_args(other, "--keep", "9", "--resume", str(other / "ckpt-s00000008-end"), epochs=3))
    assert not (other / "checkpoint-best").is_symlink()  # 0.9 at step 4 is gone; 0.6 does not beat it
    assert "checkpoint-best removed: it named a checkpoint after the one resumed from" in \
        (other / "log.txt").read_text()


def test_resume_says_which_flags_changed_and_when_nothing_is_left(tmp_path):
    out = tmp_path / "run"
    T.main(toy_args(out, epochs=1))
    T.main(toy_args(out, "--resume", "--attention", "axial", "--no-progress", epochs=1))
    log = (out / "log.txt").read_text()
    assert "nothing left to train: the checkpoint is at epoch 1 of 1 and step 4 of 4; raise --epochs" in log
    assert "--resume with other flags than the checkpoint's run: --attention divided_space_time → axial (the " \
           "model is the checkpoint's" in log
    # the run records the flags that built its model, so the next resume does not report --attention again
    assert yaml.safe_load((out / "train_config.yaml").read_text())["args"]["attention"] == "divided_space_time"
    T.main(toy_args(out, "--resume", epochs=2))
    assert log_lines_after(out, log).count("--resume with other flags") == 1 and "--epochs 1 → 2)" in \
        log_lines_after(out, log).replace(" (the model", ")")
    # a smaller batch leaves steps to do but no epochs: the message says which is done
    T.main(toy_args(out, "--resume", "--batch-size", "2", epochs=2))
    assert "nothing left to train: the checkpoint is at epoch 2 of 2; raise" in (out / "log.txt").read_text()
    # --resume where there is nothing yet says it starts a new run
    T.main(toy_args(tmp_path / "fresh", "--resume", epochs=1))
    assert f"--resume: no checkpoint in {tmp_path / 'fresh'} yet, so a new run starts there" in \
        (tmp_path / "fresh" / "log.txt").read_text()
    assert load_model(out / "checkpoint-last").config.attention_type == "divided_space_time"
    assert [r["epoch"] for r in rows(out) if r["split"] == "train"] == [0, 1]


def test_resume_refuses_a_run_whose_last_checkpoint_cannot_resume(tmp_path):
    """--resume in a run folder whose checkpoint-last had lost its train_state.pt (deleted to save space) started
    a new run there without a word, overwriting the old run's checkpoints with fresh weights."""
    out = tmp_path / "run"
    T.main(toy_args(out, "--keep", "9", epochs=2))
    (out / "checkpoint-last" / "train_state.pt").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"}
    with pytest.raises(SystemExit, match=r"^--resume: .*run holds a run \(2 checkpoints, 4 metrics rows\) but its "
                                         r"checkpoint-last has no train_state.pt to resume from; name a checkpoint "
                                         r"that has one with --resume .*run/ckpt-s00000004-end$"):
        T.main(toy_args(out, "--resume", epochs=2))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"} == before
    (out / "ckpt-s00000004-end" / "train_state.pt").unlink()
    with pytest.raises(SystemExit, match="no checkpoint there has one: choose another --out$"):
        T.main(toy_args(out, "--resume", epochs=2))


def test_export_never_replaces_a_training_run_or_its_checkpoints(tmp_path, capsys):
    """`tslab export X --out runs/x/ckpt-...` replaced a run's checkpoint (its train_state.pt gone), and `--out
    runs/x/checkpoint-last` turned the link into a folder, so the run could not resume; a run folder that also
    held a model of save_model's (an export trained into) was replaced whole, checkpoints and metrics."""
    from timesformer.export import main as export

    out = tmp_path / "run"
    save_model(TimeSformer(TimeSformerConfig.tiny(img_size=32, num_frames=4, num_classes=4)), out)
    T.main(toy_args(out, epochs=1))  # a folder with no run yet takes one
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for target, said in ((out / "ckpt-s00000004-end", "a training run's checkpoint: "),
                         (out / "checkpoint-last", "a training run's checkpoint link: "),
                         (out, "a training run's folder (1 checkpoint, 2 metrics rows): ")):
        assert export(["synthmotion-temporal-axial", "--out", str(target)]) == 2
        assert f"error: {target} is {said}save_model does not replace it" in capsys.readouterr().err
    assert (out / "checkpoint-last").is_symlink()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_run_folder_without_a_working_checkpoint_last_names_its_checkpoints(tmp_path):
    """load_model (tslab evaluate, the app's model path) on a run whose checkpoint-last was deleted or broken said
    "a folder without a config.json: not a checkpoint folder"."""
    from timesformer import CheckpointError

    out = tmp_path / "run"
    T.main(toy_args(out, "--keep", "9", epochs=2))
    (out / "checkpoint-last").unlink()
    os.symlink("ckpt-gone", out / "checkpoint-last")  # a dangling link
    with pytest.raises(CheckpointError, match=r"run is a training run \(2 checkpoints, 4 metrics rows\) without a "
                                              r"working checkpoint-last: open one of its checkpoints, .*/run/"
                                              r"ckpt-s00000008-end$"):
        load_model(out)
    assert load_model(out / "ckpt-s00000008-end").config.embed_dim == 32


def log_lines_after(run, earlier: str) -> str:
    return (run / "log.txt").read_text()[len(earlier):]


def test_no_validation_clips_means_no_validation(tmp_path):
    """`--val-clips 0` trains without evaluating: no val rows (they were rows of 0 clips with accuracy 0)."""
    res = T.main(toy_args(tmp_path / "run", "--val-clips", "0", epochs=1))
    assert [r["split"] for r in rows(tmp_path / "run")] == ["train"] and "val" not in res


def test_fp16_with_its_grad_scaler_trains_and_resumes_exactly(tmp_path):
    """`--amp fp16` (what `auto` picks on a GPU without bf16) trains through a GradScaler, whose state each
    checkpoint keeps: resumed from a mid-run checkpoint, the run ends with the uninterrupted run's weights."""
    T.main(toy_args(tmp_path / "a", "--amp", "fp16", "--keep", "4", "--ckpt-every", "2", epochs=2))
    saved = torch.load(tmp_path / "a" / "ckpt-s00000006" / "train_state.pt", weights_only=True)
    assert saved["scaler"]["scale"] > 1  # enabled (a disabled scaler's state is empty)
    T.main(toy_args(tmp_path / "b", "--amp", "fp16", "--resume", str(tmp_path / "a" / "ckpt-s00000006"), epochs=2))
    assert same_weights(tmp_path / "a" / "checkpoint-last", tmp_path / "b" / "checkpoint-last")
    assert rows(tmp_path / "a")[-2:] == rows(tmp_path / "b")[-2:]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = lambda out: toy_args(out, "--ckpt-every", "3", clips=64, epochs=3)  # 48 steps
    ref = tmp_path / "ref"
    T.main(args(ref))
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}"
        cmd = [sys.executable, "-m", "timesformer.train", *args(out)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (out / "checkpoint-last").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        last = out / "checkpoint-last"
        if last.exists() and torch.load(last / "train_state.pt", weights_only=True)["state"]["step"] < 48:
            break
    else:
        pytest.fail("could not kill the run before it finished")
    assert rows(out) != rows(ref)  # it really was interrupted
    T.main(args(out) + ["--resume"])
    assert rows(out) == rows(ref)
    assert same_weights(out / "checkpoint-last", ref / "checkpoint-last")
    # --resume on a finished run has nothing left to do and changes nothing
    T.main(args(out) + ["--resume"])
    assert rows(out) == rows(ref)


def interrupt_at(monkeypatch, step: int, times: int = 1):
    """Ctrl-C `times` over, right after optimizer step `step` of `tslab train`'s loop."""
    original = T.train_one_epoch

    def train_one_epoch(*args, after_step, **kw):
        def after(state):
            for _ in range(times if state.step == step else 0):
                signal.raise_signal(signal.SIGINT)
            after_step(state)
        original(*args, after_step=after, **kw)

    monkeypatch.setattr(T, "train_one_epoch", train_one_epoch)


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_the_last_one_whole(tmp_path, monkeypatch):
    """A full disk ended the run in an OSError traceback; the atomic write already kept the last checkpoint."""
    from timesformer import runs

    out, written = tmp_path / "run", []
    real = runs.save_checkpoint

    def full_disk(run, name, *args):
        if written:
            raise OSError(28, "No space left on device")
        written.append(name)
        return real(run, name, *args)

    monkeypatch.setattr(runs, "save_checkpoint", full_disk)
    with pytest.raises(SystemExit, match=r"^could not write the checkpoint ckpt-s00000008-end in .*run: \[Errno 28\] "
                                         r"No space left on device. The last checkpoint is .*ckpt-s00000004-end$"):
        T.main(toy_args(out, epochs=2))
    assert load_model(out / "checkpoint-last").config.embed_dim == 32


def test_ctrl_c_saves_a_checkpoint_after_the_step_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """Ctrl-C lost the work since the last epoch's checkpoint, with a KeyboardInterrupt traceback."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    T.main(toy_args(ref, epochs=2))  # 8 steps
    handler = signal.getsignal(signal.SIGINT)
    interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupted, match=r"stopped by Ctrl-C at step 3 of 8; the last checkpoint is .*"
                                          r"ckpt-s00000003: --resume goes on from it"):
        T.main(toy_args(out, epochs=2))
    assert (out / "checkpoint-last").resolve().name == "ckpt-s00000003"
    assert ending(out)[0] == "stopped" and ending(out)[1].startswith("stopped by Ctrl-C at step 3 of 8")
    assert signal.getsignal(signal.SIGINT) is handler  # the one before the run again
    monkeypatch.undo()
    T.main(toy_args(out, "--resume", epochs=2))
    assert ending(out)[0] == "finished" and ending(out)[1].startswith("finished at step 8 after ")
    assert rows(out) == rows(ref) and same_weights(out / "checkpoint-last", ref / "checkpoint-last")
    # Ctrl-C twice stops at once; before the first checkpoint there is none to name
    interrupt_at(monkeypatch, 2, times=2)
    with pytest.raises(SystemExit) as stopped:
        T.cli(toy_args(tmp_path / "again", epochs=2))
    assert stopped.value.code == 130 and not list((tmp_path / "again").glob("ckpt-*"))
    assert "stopped by Ctrl-C at step 2 of 8; the last checkpoint is none" in \
        (tmp_path / "again" / "log.txt").read_text()


def test_a_gpu_out_of_memory_says_what_to_change_and_how_to_estimate_it(tmp_path, monkeypatch, capsys):
    """CUDA's OutOfMemoryError ended the run in a traceback; now one logged line names what ran out, the last
    checkpoint, the flags that help and a `tslab cost` command for this very run, which works as given."""
    import shlex

    from analysis.cost.cli import main as cost

    original = T.train_one_epoch

    def train_one_epoch(*args, after_step, **kw):
        def after(state):
            if state.step == 6:
                raise torch.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
                    "which 1.02 GiB is free. Including non-PyTorch memory, this process has 78.16 GiB in use")
            after_step(state)
        original(*args, after_step=after, **kw)

    monkeypatch.setattr(T, "train_one_epoch", train_one_epoch)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        T.cli(toy_args(out, "--batch-size", "2", "--accum-steps", "2", epochs=2))
    said = (out / "log.txt").read_text().splitlines()[-1]
    assert stopped.value.code == 1 and said.startswith(
        "the GPU ran out of memory at step 6 of 8: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        f"total capacity of 79.19 GiB of which 1.02 GiB is free. The last checkpoint is {out.resolve()}/"
        "ckpt-s00000004-end. Try a smaller --batch-size (with --accum-steps 4 at half the batch, an optimizer step "
        "takes as many clips), --grad-checkpointing or --amp bf16; `tslab cost --schemes divided_space_time "
        "--frames 4 --sizes 32 "), said
    command = shlex.split(said[said.index("`tslab cost") + 1 : said.rindex("`")])
    assert command[command.index("--batch-size") + 1] == "2" and "--optimizer" in command
    capsys.readouterr()
    assert cost([*command[2:-2], "--out", str(tmp_path / "cost"), "--no-png"]) in (0, None)
    (row, *_) = json.loads((tmp_path / "cost" / "complexity.json").read_text())["rows"]
    model = load_model(out)  # the command describes this very model, at the run's batch and optimizer
    assert row["params"] == sum(p.numel() for p in model.parameters()) and row["tokens"] == 1 + 4 * 4 * 4
    assert (row["batch_size"], row["optimizer"], row["dtype"]) == (2, "adamw", "fp32")


def signal_job(tmp_path, launch: list[str], sig, total: int, env=None, **flags):
    """Start `launch` + a toy run of `total` steps in a process group of its own (as a terminal's job), send
    the whole group `sig` once its first epoch's checkpoint is there, and wait: (process, stderr, the step of
    its last checkpoint, seconds from the signal to the end). Tried up to three times, for a run that ended
    before the signal reached it."""
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([*launch, *toy_args(out, **flags)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 180
        while not (out / "checkpoint-last").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        signalled = time.time()
        _, err = proc.communicate(timeout=120)
        step = torch.load(out / "checkpoint-last" / "train_state.pt", weights_only=True)["state"]["step"]
        if step < total:
            return out, proc, err, step, time.time() - signalled
    pytest.fail("could not interrupt the run before it finished")


@pytest.mark.parametrize("sig, name, status", [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143)])
def test_a_signal_to_the_whole_job_saves_and_stops_without_a_traceback(tmp_path, sig, name, status):
    """A terminal's Ctrl-C and a cluster scheduler's SIGTERM (sent before it kills a job) reach the loader's
    workers as well: the main process saves a checkpoint and stops them. (SIGTERM killed the run where it was.)"""
    out, proc, err, step, _ = signal_job(tmp_path, [sys.executable, "-m", "timesformer.train", "--workers", "2"], sig,
                                         96, clips=128, epochs=3)
    assert proc.returncode == status and "Traceback" not in err, err
    assert f"stopped by {name} at step {step} of 96; the last checkpoint is " in err
    assert step > 32 or (out / "checkpoint-last").resolve().name == "ckpt-s00000032-end"


def test_a_signal_under_torchrun_stops_every_process_after_one_step_with_a_checkpoint(tmp_path):
    """Under torchrun a scheduler's SIGTERM (or Ctrl-C) ended every process where it was: the work since the last
    checkpoint was lost. Now the processes agree on the step to stop after, save it and resume exactly. The whole
    job is signalled, so each process gets the signal twice (directly and from torchrun): that is one request,
    not the "again: stop at once" of a second one. Had the processes stopped after different steps, the one ahead
    would wait in the next all-reduce until torchrun killed it (30 s later) without a checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "timesformer.train"]
    out, proc, err, step, seconds = signal_job(tmp_path, torchrun, signal.SIGTERM, 48, env=env, clips=128, epochs=3)
    said = ending(out)
    assert said and said[1].startswith(f"stopped by SIGTERM at step {step} of 48; the last checkpoint is "), err
    assert step > 16 or (out / "checkpoint-last").resolve().name == "ckpt-s00000016-end"
    assert "SIGKILL" not in err and seconds < 30, err[-3000:]
    # each process says so once, and none ended in a traceback of its own (torchrun's agent prints its own)
    assert err.count("SIGTERM: stopping after this step") == 2, err[-3000:]
    assert "KeyboardInterrupt" not in err and str(ROOT / "timesformer") not in err, err[-3000:]
    resumed = subprocess.run([*torchrun, *toy_args(out, "--resume", clips=128, epochs=3)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0 and ending(out)[1].startswith("finished at step 48 "), resumed.stderr[-3000:]
    single = tmp_path / "single"  # the same clips on one process at twice the batch
    T.main(toy_args(single, clips=128, epochs=3, batch=8))
    for ra, rb in zip(rows(out), rows(single), strict=True):
        assert (ra["step"], ra["split"]) == (rb["step"], rb["split"])
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4) and ra["acc1"] == rb["acc1"]
    same_weights(out / "checkpoint-last", single / "checkpoint-last", exact=False)


def test_grad_checkpointing_trains_the_same_model(tmp_path, monkeypatch):
    """--grad-checkpointing recomputes each block in the backward (less memory): same losses, same weights,
    DropPath's random masks included (the recomputation replays the RNG)."""
    from timesformer import model as M

    calls = []
    checkpoint = M.checkpoint
    monkeypatch.setattr(M, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    arch = ["--model", "embed_dim=32", "depth=2", "num_heads=2", "drop_path_rate=0.2"]
    T.main(toy_args(tmp_path / "plain", *arch, epochs=1))
    assert not calls
    T.main(toy_args(tmp_path / "recomputed", *arch, "--grad-checkpointing", epochs=1))
    assert len(calls) == 2 * 4  # two blocks in each of the 4 training steps (not in validation)
    assert rows(tmp_path / "recomputed") == rows(tmp_path / "plain")
    assert same_weights(tmp_path / "recomputed" / "checkpoint-last", tmp_path / "plain" / "checkpoint-last")
    assert "grad_checkpointing: true" in (tmp_path / "recomputed" / "train_config.yaml").read_text()


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path):
    T.main(toy_args(tmp_path / "a", "--accum-steps", "2", "--batch-size", "2", "--warmup-steps", "0"))
    T.main(toy_args(tmp_path / "b", "--batch-size", "4", "--warmup-steps", "0"))
    assert same_weights(tmp_path / "a" / "checkpoint-last", tmp_path / "b" / "checkpoint-last", exact=False)


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    """2 processes × batch 4 under torchrun (gloo) = 1 process × batch 8 on the same clips."""
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "timesformer.train", *toy_args(ddp, clips=32, batch=4)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 × CPU" in proc.stderr
    single = tmp_path / "single"
    T.main(toy_args(single, clips=32, batch=8))
    a, b = rows(ddp), rows(single)
    assert [(r["epoch"], r["step"], r["split"], r["clips"]) for r in a] == [
        (r["epoch"], r["step"], r["split"], r["clips"]) for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4) and ra["acc1"] == rb["acc1"]
    assert same_weights(ddp / "checkpoint-last", single / "checkpoint-last", exact=False)


def test_the_next_epoch_starts_loading_before_validation(tmp_path, monkeypatch):
    """Its workers prepare the next epoch's first batches while the loop validates and saves: started at the
    epoch's first step, the loop waited for them (the data_wait of every epoch's start). A resumed epoch still
    skips the micro-batches it has done; the last epoch starts nothing after it."""
    from timesformer.data import TrainLoader

    events = []
    start, evaluate = TrainLoader.start, T.evaluate

    def spy_start(self, epoch, skip=0):
        events.append(("start", epoch, skip, len(self.epoch_batches(epoch)[skip:])))
        return start(self, epoch, skip)

    def spy_evaluate(*args, **kwargs):
        events.append(("validate",))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(TrainLoader, "start", spy_start)
    monkeypatch.setattr(T, "evaluate", spy_evaluate)
    T.main(toy_args(tmp_path / "run", epochs=3))  # 4 steps per epoch
    assert events == [("start", 0, 0, 4), ("start", 1, 0, 4), ("validate",), ("start", 2, 0, 4), ("validate",),
                      ("validate",)]
    T.main(toy_args(tmp_path / "ckpts", "--ckpt-every", "2", "--keep", "10", epochs=3))
    events.clear()  # resumed from the checkpoint of step 6, in the middle of epoch 1: 2 of its 4 steps are left
    T.main(toy_args(tmp_path / "resumed", "--resume", str(tmp_path / "ckpts" / "ckpt-s00000006"), epochs=3))
    assert events == [("start", 1, 2, 2), ("start", 2, 0, 4), ("validate",), ("validate",)]
    assert rows(tmp_path / "resumed")[-4:] == rows(tmp_path / "ckpts")[-4:]  # as the uninterrupted run


ONE_RANK_DIVERGES = """
import torch
from timesformer import TimeSformer, TimeSformerConfig
from timesformer.data import collate
from timesformer.distributed import Dist
from timesformer.engine import Trainer, TrainState, TrainingDiverged, train_one_epoch

dist = Dist("cpu")
torch.manual_seed(0)
model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=16, num_heads=2, img_size=16, num_frames=2,
                                           num_classes=2))
ddp = torch.nn.parallel.DistributedDataParallel(model)
before = [p.detach().clone() for p in model.parameters()]
trainer = Trainer(model, ddp, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False),
                  dist, lambda step: 0.1, total_steps=4)
value = float("nan") if dist.rank == 1 else 0.5  # the loss is non-finite on rank 1 only
try:
    train_one_epoch(trainer, [collate([(torch.full((1, 3, 2, 16, 16), value), 0, 0)] * 2)], TrainState())
except TrainingDiverged as e:
    unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    print(f"rank {dist.rank} stopped, weights unchanged: {unchanged}: {e}", flush=True)
del trainer, ddp  # a DDP model must not outlive its process group (see free_frames)
dist.close()
"""


def test_a_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    """Under DDP the loss check is reduced over the processes before any optimizer step: both ranks stop and
    neither updates its weights, and the rank whose loss was finite says that another one diverged."""
    script = tmp_path / "one_rank_diverges.py"
    script.write_text(ONE_RANK_DIVERGES)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 stopped, weights unchanged: True: the loss became non-finite on another process at step 0" \
        in proc.stdout
    assert "rank 1 stopped, weights unchanged: True: the loss became nan at step 0" in proc.stdout


UNEQUAL_MICRO_BATCHES = """
import copy
import sys
import torch
from timesformer import TimeSformer, TimeSformerConfig
from timesformer.data import Skipped, collate
from timesformer.distributed import Dist
from timesformer.engine import Trainer, TrainState, train_one_epoch

dist = Dist("cpu")
torch.manual_seed(0)
model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=16, num_heads=2, img_size=16, num_frames=2,
                                           num_classes=2))
reference = copy.deepcopy(model)
clips = [(torch.randn(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(i)), i % 2, i) for i in range(3)]
# rank 0 reads two clips; rank 1 reads one, and its second is unreadable
mine = clips[:2] if dist.rank == 0 else [clips[2], Skipped(3, "broken.mp4", "unreadable")]
ddp = torch.nn.parallel.DistributedDataParallel(model)
trainer = Trainer(model, ddp, torch.optim.SGD(model.parameters(), lr=1.0), torch.amp.GradScaler("cpu", enabled=False),
                  dist, lambda step: 1.0, total_steps=1)
train_one_epoch(trainer, [collate(mine)], TrainState())
# the same step on one process, over the three readable clips
batch = collate(clips)
torch.nn.functional.cross_entropy(reference(batch["video"][:, 0]), batch["label"]).backward()
with torch.no_grad():
    for p in reference.parameters():
        p -= p.grad
gap = max((a - b).abs().max().item() for a, b in zip(model.parameters(), reference.parameters()))
open(f"{sys.argv[1]}/rank{dist.rank}.txt", "w").write(repr(gap))
del trainer, ddp
dist.close()
"""


def test_ddp_weighs_every_clip_the_same_when_unreadable_clips_leave_unequal_micro_batches(tmp_path):
    """DDP averages the processes' gradients. With 2 clips on one process and 1 on the other (its second one
    unreadable), each clip must weigh a third, as in one process over the three clips (before, the lone clip
    weighed a half)."""
    script = tmp_path / "unequal.py"
    script.write_text(UNEQUAL_MICRO_BATCHES)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gaps = [float((tmp_path / f"rank{r}.txt").read_text()) for r in range(2)]  # largest weight difference
    assert max(gaps) < 1e-6, gaps


DDP_GONE_BEFORE_CLOSE = """
import gc, os, sys
import torch
from timesformer import train as T
from timesformer.distributed import Dist

close = Dist.close


def checked_close(self):
    gc.collect()
    alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    print(f"rank {self.rank}: {alive} DDP models alive at close", flush=True)
    close(self)


Dist.close = checked_close
try:
    T.main(sys.argv[1:])
except T.TrainingDiverged as e:
    print(f"rank {os.environ['RANK']}: {str(e)[:40]}", flush=True)
"""


def test_a_stopped_ddp_run_frees_its_model_before_the_process_group(tmp_path):
    """A run that stops with an exception under torchrun: its DDP model is gone when the process group is
    destroyed. Freed later (it lived on in the exception's frames and the checkpoint closures), its reducer took
    the gloo group down at exit and hung or aborted about one run in three."""
    script = tmp_path / "ddp_gone.py"
    script.write_text(DDP_GONE_BEFORE_CLOSE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *toy_args(tmp_path / "nan", "--optimizer", "sgd", "--lr", "1e6", epochs=3)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: 0 DDP models alive at close" in proc.stdout, proc.stdout
        assert f"rank {rank}: training stopped: the " in proc.stdout, proc.stdout


def test_a_validation_loss_that_is_not_finite_stops_before_the_checkpoint(tmp_path, monkeypatch):
    """--lr 1e30 left finite weights whose validation loss was nan: the run finished and kept them, as
    checkpoint-best where the accuracy happened to rank."""
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: dict(acc1=0.5, loss=float("nan"), clips=8))
    out = tmp_path / "run"
    with pytest.raises(T.TrainingDiverged, match=r"^training stopped: the validation loss became nan at step 4\. The "
                                                 r"last good checkpoint is none"):
        T.main(toy_args(out, epochs=2))
    assert not list(out.glob("ckpt-*")) and rows(out)[-1]["split"] == "val"  # logged, not kept


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    with pytest.raises(T.TrainingDiverged, match="the loss became (nan|inf)") as err:
        T.main(toy_args(out, "--optimizer", "sgd", "--lr", "1e6", "--ckpt-every", "1", epochs=3))
    assert "last good checkpoint" in str(err.value)
    last = out / "checkpoint-last"
    model = load_model(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    step = torch.load(last / "train_state.pt", weights_only=True)["state"]["step"]
    assert f"at step {step} " in str(err.value)  # the checkpoint is the one just before the bad step
    assert ending(out) == ("stopped", str(err.value))  # what the app's Training runs page says of the run
    # the CLI exits with status 2 and the message
    proc = subprocess.run([sys.executable, "timesformer/train.py",
                           *toy_args(tmp_path / "nan2", "--optimizer", "sgd", "--lr", "1e6")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "training stopped: the loss became" in proc.stderr


def test_init_from_a_checkpoint_with_other_classes(tmp_path):
    src = tmp_path / "src"
    T.main(toy_args(src, epochs=1))
    root = export_synthmotion(tmp_path / "videos", "appearance", num_train=8, num_val=4, seed=0, num_frames=4,
                              size=32)
    out = tmp_path / "ft"
    T.main(["--data", str(root), "--init", str(src / "checkpoint-last"), "--epochs", "1", "--batch-size", "4",
            "--sampling-rate", "1", "--out", str(out), "--no-progress", "--threads", "1"])
    before, after = weights(src / "checkpoint-last"), load_model(out / "checkpoint-last")
    classes = sorted(p.name for p in (root / "train").iterdir())
    assert after.class_names == classes and after.head.out_features == len(classes)
    assert after.config.embed_dim == 32 and after.config.num_frames == 4
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], after.state_dict()["blocks.0.attn.qkv.weight"])


def test_folder_training_counts_unreadable_clips_and_evaluate_cli(tmp_path, capsys, monkeypatch):
    root = export_synthmotion(tmp_path / "videos", "temporal", num_train=8, num_val=4, seed=0, num_frames=4,
                              size=32)
    bad = next((root / "train").iterdir()) / "zz-broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    out = tmp_path / "run"
    T.main(["--data", str(root), "--epochs", "1", "--batch-size", "3", "--sampling-rate", "1", "--out", str(out),
            *TOY])
    train_row = rows(out)[0]
    assert train_row["split"] == "train" and train_row["skipped"] == 1 and train_row["clips"] == 8
    # --workers auto: on the CPU, a worker decodes the video files where there are two cores
    workers = yaml.safe_load((out / "train_config.yaml").read_text())["args"]["workers"]
    assert workers == int(len(os.sched_getaffinity(0)) >= 2)
    from timesformer import evaluate as E

    E.main([str(out), str(root), "--split", "val", "--sampling-rate", "1"])  # a run's folder: its checkpoint-last
    text, err = capsys.readouterr()
    assert "evaluating:   0%|          | 0/1 " in err  # the batches' progress bar (4 clips in 1 batch)
    assert "clip accuracy (1 clip, centre crop): top-1" in text and "video accuracy (1 clip × 3 crops)" in text
    assert "over 4 clips" in text
    # every clip's prediction, and the accuracy of each class, from the same pass
    E.main([str(out), str(root), "--sampling-rate", "1", "--predictions", str(tmp_path / "p" / "preds.csv"),
            "--per-class", "--no-progress"])
    text = capsys.readouterr().out
    with open(tmp_path / "p" / "preds.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert b"\r" not in (tmp_path / "p" / "preds.csv").read_bytes()  # lines for awk and cut, too
    assert sorted(r["clip"] for r in preds) == sorted(str(p) for p in (root / "val").rglob("*.mp4"))
    acc = float(re.search(r"video accuracy \(1 clip × 3 crops\): top-1 ([\d.]+)%", text).group(1)) / 100
    assert sum(int(r["correct"]) for r in preds) / 4 == pytest.approx(acc)
    assert f"wrote {tmp_path / 'p' / 'preds.csv'}: 4 clips, {sum(r['correct'] == '0' for r in preds)} predicted" in text
    model = load_model(out).eval()
    for r in preds:  # as `predict` gives it for the clip alone: the 3 crops averaged, and the centre crop
        views, _ = read_clip(r["clip"], model.config.num_frames, 1, model.config.img_size, spatial_crops=3)
        top = predict(model, views, k=len(model.class_names))
        assert (r["predicted"], r["centre_predicted"]) == (top["video"][0][0], top["clip"][0][0])
        assert float(r["probability"]) == pytest.approx(top["video"][0][1], abs=1e-5)
        assert float(r["label_probability"]) == pytest.approx(dict(top["video"])[r["label"]], abs=1e-5)
        assert float(r["centre_probability"]) == pytest.approx(top["clip"][0][1], abs=1e-5)
    for name in {r["label"] for r in preds}:
        mine = [r for r in preds if r["label"] == name]
        share = sum(int(r["correct"]) for r in mine) / len(mine)
        assert re.search(rf"^  {re.escape(name)} +{share:7.2%} \(.*\)  {len(mine)}$", text, re.M), text
    with pytest.raises(SystemExit):
        E.main([str(out), str(root), "--predictions", str(tmp_path)])
    assert "is a folder: name a file" in capsys.readouterr().err
    res = E.run(out / "checkpoint-last", "synthmotion-temporal", num_clips=8)
    assert res["clip"]["clips"] == 8 and res["video"]["clips"] == 8 and res["amp"] == "none"  # auto on a CPU
    half = E.run(out / "checkpoint-last", "synthmotion-temporal", num_clips=8, amp="bf16")
    assert half["amp"] == "bf16" and half["clip"]["loss"] != res["clip"]["loss"]  # it did run in bf16
    assert half["clip"]["loss"] == pytest.approx(res["clip"]["loss"], rel=5e-2)
    with pytest.raises(ValueError, match="amp must be one of auto, none, bf16, fp16, got 'bf17'"):
        E.run(out / "checkpoint-last", "synthmotion-temporal", num_clips=8, amp="bf17")
    with pytest.raises(SystemExit, match="^--split foo: synthmotion-temporal has no such split"):  # it was ignored
        E.run(out / "checkpoint-last", "synthmotion-temporal", "foo", num_clips=8)
    (root / "val" / "unseen").mkdir()
    (root / "val" / "unseen" / "x.mp4").write_bytes(next((root / "val").rglob("*.mp4")).read_bytes())
    with pytest.raises(SystemExit, match="val has class folders that none of the known classes .* names: unseen$"):
        E.run(out / "checkpoint-last", str(root), num_clips=8, sampling_rate=1)
    E.main([str(out / "checkpoint-last"), "synthmotion-temporal", "--num-clips", "4", "--amp", "bf16", "--no-progress"])
    text, err = capsys.readouterr()
    assert "(loss " in text and "bf16 autocast)" in text and "evaluating" not in err
    with_workers = E.run(out / "checkpoint-last", "synthmotion-temporal", num_clips=8, workers=2)
    for view in ("clip", "video"):  # loader processes change nothing but speed
        assert {k: v for k, v in with_workers[view].items() if k != "seconds"} == \
            pytest.approx({k: v for k, v in res[view].items() if k != "seconds"})
    with pytest.raises(SystemExit):
        E.main([str(out / "checkpoint-last"), "synthmotion-temporal", "--workers", "-1"])
    assert "expected auto or a number ≥ 0, got '-1'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such file or folder"):
        E.main([str(out / "checkpoint-last"), str(tmp_path / "nothing")])
    with monkeypatch.context() as m:  # the GPU's out-of-memory error, as one line
        m.setattr(E, "evaluate", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 3.02 GiB "
            "is free. Including non-PyTorch memory")))
        with pytest.raises(SystemExit, match=r"^the GPU ran out of memory at --batch-size 8 \(3 crops of each clip "
                                             r"in one forward\): CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 "
                                             r"has a total capacity of 79.19 GiB of which 3.02 GiB is free; try a "
                                             r"smaller --batch-size$"):
            E.main([str(out), "synthmotion-temporal", "--num-clips", "4", "--no-progress"])
    with pytest.raises(SystemExit, match="not SynthMotion appearance's"):
        E.run(out / "checkpoint-last", "synthmotion-appearance", num_clips=8)
    for flags, message in (([str(tmp_path / "nothing"), str(root)], "no such checkpoint"),
                           ([str(root), str(root)], "without a config.json"),
                           ([str(out / "checkpoint-last"), str(root), "--img-size", "36"],
                            "--img-size 36 is not a multiple of the model's patch size")):
        with pytest.raises(SystemExit, match=message):
            E.main(flags)
    for flag in ("--batch-size", "--num-clips", "--num-frames", "--sampling-rate"):
        with pytest.raises(SystemExit):
            E.main([str(out / "checkpoint-last"), str(root), flag, "0"])
        assert f"argument {flag}: expected an integer ≥ 1, got '0'" in capsys.readouterr().err


def test_listed_clips_that_are_not_there_are_counted_at_the_start(tmp_path):
    """A CSV list of a partial download: the missing clips were only named batch by batch, as they were drawn."""
    root = export_synthmotion(tmp_path / "videos", "temporal", num_train=8, num_val=0, seed=0, num_frames=4,
                              size=32)
    lines = [f"{p},{p.parent.name}" for p in sorted((root / "train").rglob("*.mp4"))]
    lines += [f"{root / 'gone' / 'a.mp4'},moving left", f"{root / 'gone' / 'b.mp4'},moving left"]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    T.main(["--data", str(tmp_path / "train.csv"), "--epochs", "1", "--batch-size", "4", "--sampling-rate", "1",
            "--out", str(out), *TOY])
    assert f"2 of the 10 training clips listed are not there (the first: {root / 'gone' / 'a.mp4'}): each is " \
           "skipped when drawn" in (out / "log.txt").read_text()
    assert rows(out)[0]["skipped"] == 2


def test_clips_none_of_which_can_be_read_stop_the_run_with_one_line(tmp_path):
    """All training clips unreadable: the run took its steps on no clip, logged a loss of 0 and kept a
    checkpoint-best of 0 %. All validation clips unreadable: an accuracy over 0 clips ranked as the best."""
    root = export_synthmotion(tmp_path / "videos", "temporal", num_train=8, num_val=4, seed=0, num_frames=4,
                              size=32)
    flags = ["--data", str(root), "--epochs", "1", "--batch-size", "4", "--sampling-rate", "1", *TOY]
    for clip in (root / "val").rglob("*.mp4"):
        clip.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit, match=r"^none of the 4 validation clips could be read: check --val-data"):
        T.main([*flags, "--out", str(tmp_path / "a")])
    assert not list((tmp_path / "a").glob("ckpt-*"))
    for clip in (root / "train").rglob("*.mp4"):
        clip.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit, match=f"^--data {root}: none of the 8 training clips of epoch 0 could be read"):
        T.main([*flags, "--out", str(tmp_path / "b")])
    assert not list((tmp_path / "b").glob("ckpt-*"))


def test_ddp_skips_a_micro_batch_together_when_one_process_has_no_readable_clip(tmp_path):
    """Batch 1 per process and one unreadable clip: the process that gets it has nothing to run, so the other
    skips that micro-batch too (before, the collectives no longer matched: gloo aborted, NCCL would hang)."""
    root = export_synthmotion(tmp_path / "videos", "temporal", num_train=8, num_val=4, seed=0, num_frames=4,
                              size=32)
    (next((root / "train").iterdir()) / "zz-broken.mp4").write_bytes(b"\x00" * 100)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "timesformer.train", "--data", str(root), "--epochs", "2", "--batch-size", "1",
           "--sampling-rate", "1", "--out", str(out), *TOY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [r for r in rows(out) if r["split"] == "train"]
    # 9 clips → 4 steps of 2 × 1 per epoch; the broken clip's step trains neither process
    assert [(r["step"], r["clips"], r["skipped"]) for r in train] == [(4, 6, 1), (8, 6, 1)]


def test_evaluate_under_torchrun_counts_every_clip_once(tmp_path):
    """2 processes (gloo) each evaluate every other clip; rank 0 prints the metrics of all of them, equal to one
    process's (11 clips: the shards are unequal, and none is padded)."""
    from timesformer import evaluate as E
    from timesformer.synthmotion import TEMPORAL_CLASSES

    model = tmp_path / "model"
    torch.manual_seed(0)
    save_model(TimeSformer(TimeSformerConfig.tiny(img_size=32, num_frames=4, num_classes=4,
                                                  class_names=list(TEMPORAL_CLASSES))), model)
    flags = [str(model), "synthmotion-temporal", "--num-clips", "11", "--batch-size", "2", "--json",
             "--predictions", str(tmp_path / "preds.csv")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "timesformer.evaluate", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints
    two, one = json.loads(lines[0]), E.run(model, "synthmotion-temporal", num_clips=11, batch_size=2)
    assert two["processes"] == 2 and one["processes"] == 1
    for view in ("clip", "video"):
        assert two[view]["clips"] == one[view]["clips"] == 11
        assert two[view]["loss"] == pytest.approx(one[view]["loss"], rel=1e-5)
        assert two[view]["acc1"] == one[view]["acc1"]
    with open(tmp_path / "preds.csv", newline="") as f:  # rank 0 writes every process's clips, in order
        preds = list(csv.DictReader(f))
    alone = E.run(model, "synthmotion-temporal", num_clips=11, batch_size=2, per_clip=True)["predictions"]
    assert [r["clip"] for r in preds] == [r["clip"] for r in alone] == [
        f"synthmotion-temporal test clip {i} (seed 12345)" for i in range(11)]
    assert [r["predicted"] for r in preds] == [r["predicted"] for r in alone]
    assert [float(r["probability"]) for r in preds] == pytest.approx([r["probability"] for r in alone], abs=1e-5)


def test_frame_drop_flag(tmp_path):
    T.main(toy_args(tmp_path / "plain", epochs=1))
    T.main(toy_args(tmp_path / "drop", "--frame-drop", "0.5", epochs=1))
    plain, drop = rows(tmp_path / "plain"), rows(tmp_path / "drop")
    assert plain[0]["loss"] != drop[0]["loss"]  # other training clips, from the same start
    assert "frame_drop: 0.5" in (tmp_path / "drop" / "train_config.yaml").read_text()
    for bad in ("1", "-0.1"):
        with pytest.raises(SystemExit, match="--frame-drop must be at least 0 and below 1"):
            T.main(toy_args(tmp_path / "bad", "--frame-drop", bad))


def test_check_ranges_names_the_flag_or_argument():
    import argparse

    from timesformer.cli import check_ranges

    p = argparse.ArgumentParser()
    p.add_argument("count", type=int)
    p.add_argument("--rate", type=float)
    p.add_argument("--name")
    ranges = {"count": (1, True, None), "rate": (0, False, 1)}
    check_ranges(p, p.parse_args(["1", "--rate", "0.5"]), ranges)  # in range; unset and untyped flags pass
    for argv, values, message in ((["0"], {}, "count must be at least 1, got 0"),
                                  (["2", "--rate", "1"], {}, "--rate must be above 0 and below 1, got 1.0"),
                                  (["2"], {"count": 2.5}, "count must be an integer, got 2.5"),
                                  (["2"], {"rate": True}, "--rate must be a number, got True")):
        args = p.parse_args(argv)
        vars(args).update(values)  # what a --config file can set, past argparse's types
        with pytest.raises(SystemExit, match=message):
            check_ranges(p, args, ranges)


@pytest.mark.parametrize("extra, message", [
    (["--lr", "-1"], "--lr must be above 0, got -1.0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be at least 0"),
    (["--clip-grad", "-1"], "--clip-grad must be at least 0, got -1.0"),  # a negative norm flips the gradients
    (["--momentum", "0", "--optimizer", "sgd"], "--momentum must be above 0 and below 1"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),  # was a ZeroDivisionError after the first epoch
    (["--ckpt-every", "-1"], "--ckpt-every must be at least 0"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--train-clips", "-8"], "--train-clips must be at least 1"),
    (["--sampling-rate", "0"], "--sampling-rate must be at least 1"),
    (["--num-frames", "0"], "--num-frames must be at least 1"),
    (["--img-size", "33"], "the model's configuration: img_size 33 is not divisible by patch_size 8"),
    (["--model", "num_heads=3"], "the model's configuration: embed_dim [0-9]+ is not divisible by num_heads 3"),
    (["--model", "drop_path_rate=1.5"], "drop_path_rate must be a number at least 0 and below 1, got 1.5"),
    (["--model", "heads=3"], "--model heads=3: TimeSformerConfig has no field 'heads'"),
    # one setting in two places: --model won over --attention (the config recorded the flag)
    (["--model", "attention_type=axial"], "--model attention_type=axial: attention_type is set by --attention, "
                                           "not --model"),
    (["--model", "num_frames=2"], "--model num_frames=2: num_frames is set by --num-frames, not --model"),
    (["--init", "{tmp}/missing"], "--init: no such checkpoint"),
    (["--init", "{tmp}/notes.pyth"], "--init: .*notes.pyth is not a PyTorch checkpoint"),
    (["--data", "{tmp}/missing"], "--data: .*missing: no such file or folder"),
    (["--data", "{tmp}"], "--data: .*: expected a folder with train/<class>/<clip>"),
    (["--val-data", "{tmp}/v.csv"], "--data: --val-data .*v.csv goes with a CSV list; synthmotion-temporal has a "
                                    "validation split of its own"),  # it was ignored
    (["--out", "{tmp}/notes.pyth"], "--out: .*notes.pyth is a file, not a folder"),
    (["--config", "{tmp}/bad.yaml"], "--keep must be an integer, got 1.5"),  # YAML values skip argparse's types
    (["--lr", "nan"], "--lr must be a finite number, got nan"),  # nan passed every range check
    (["--clip-grad", "inf"], "--clip-grad must be a finite number, got inf"),
    (["--frame-drop", "nan"], "--frame-drop must be a finite number, got nan"),
    (["--config", "{tmp}/missing.yaml"], r"--config .*missing.yaml: \[Errno 2\] No such file or directory"),
    (["--config", "{tmp}"], r"--config .*: \[Errno 21\] Is a directory"),
    (["--config", "{tmp}/broken.yaml"], "--config .*broken.yaml: while parsing a flow sequence"),
    (["--config", "{tmp}/list.yaml"], "--config .*list.yaml: expected a mapping of flag names to values, got a list"),
])
def test_bad_training_input_is_a_one_line_error(tmp_path, extra, message):
    """Out-of-range flags (on the command line or in --config), a broken --init, --data or --out and a model
    configuration that cannot be built end in a SystemExit naming the problem, before any work starts."""
    (tmp_path / "notes.pyth").write_text("hi\n")
    (tmp_path / "bad.yaml").write_text("keep: 1.5\n")
    (tmp_path / "broken.yaml").write_text("batch-size: [8\n")  # these three were tracebacks
    (tmp_path / "list.yaml").write_text("- lr\n- 0.1\n")
    flags = toy_args(tmp_path / "run", epochs=1) + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        T.main(flags)
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path):
    """Training again into a run's folder overwrote its metrics and config and mixed two runs' checkpoints;
    now it is a one-line error that changes nothing, and --resume goes on as the message says."""
    out = tmp_path / "run"
    T.main(toy_args(out, epochs=1))
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    checkpoints = sorted(p.name for p in out.glob("ckpt-*"))
    with pytest.raises(SystemExit, match=r"--out .*run holds an earlier run \(1 checkpoint, 2 metrics rows\): add "
                                         "--resume to continue it, or choose another --out"):
        T.main(toy_args(out, "--seed", "1", epochs=1))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    assert sorted(p.name for p in out.glob("ckpt-*")) == checkpoints
    T.main(toy_args(out, "--resume", epochs=2))
    assert [r["epoch"] for r in rows(out) if r["split"] == "train"] == [0, 1]
    (tmp_path / "empty").mkdir()  # a folder without a run is fine
    T.main(toy_args(tmp_path / "empty", epochs=1))
    assert (tmp_path / "empty" / "checkpoint-last").is_dir()


def test_recipes_and_schedules():
    args = T.resolve(T.parse_args(["--preset", "base", "--epochs", "15"]))
    assert (args.optimizer, args.lr, args.weight_decay, args.schedule, args.clip_grad) == (
        "sgd", 0.005, 1e-4, "steps", None)
    lr = lambda step: lr_at(step, args, total_steps=1500, steps_per_epoch=100)
    assert lr(0) < lr(50) < lr(74) <= 0.005  # warm-up: 5% of the steps
    assert lr(1099) == pytest.approx(0.005) and lr(1100) == pytest.approx(0.0005) and lr(1400) == pytest.approx(5e-5)
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=32, num_heads=2))
    opt = build_optimizer(args, model)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    tiny = T.resolve(T.parse_args([]))
    assert (tiny.optimizer, tiny.lr, tiny.schedule, tiny.clip_grad) == ("adamw", 1e-3, "cosine", 1.0)
    lr = lambda step: lr_at(step, tiny, total_steps=200, steps_per_epoch=20)
    assert lr(9) == pytest.approx(1e-3) and lr(105) == pytest.approx(5e-4, rel=0.05) and lr(199) < 1e-6
    assert isinstance(build_optimizer(tiny, model), torch.optim.AdamW)


def test_yaml_config_and_script_entry(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: base\nbatch-size: 3\nattention: axial\n")
    args = T.parse_args(["--config", str(cfg), "--batch-size", "5"])
    assert (args.preset, args.batch_size, args.attention) == ("base", 5, "axial")
    cfg.write_text("model: embed_dim=64 depth=6\n")  # a string, as on the command line (was split into letters)
    assert T.parse_args(["--config", str(cfg)]).model == ["embed_dim=64", "depth=6"]
    cfg.write_text("batch_sizes: 3\n")
    with pytest.raises(SystemExit):
        T.parse_args(["--config", str(cfg)])
    entries = [([str(ROOT / "timesformer" / "train.py")], "--ckpt-every"),  # run from another folder
               ([str(ROOT / "timesformer" / "evaluate.py")], "--num-clips"),
               (["-m", "timesformer.evaluate"], "--num-clips")]
    for entry, flag in entries:
        proc = subprocess.run([sys.executable, *entry, "--help"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and flag in proc.stdout, proc.stderr[-2000:]


def test_mains_take_the_program_name(capsys):
    from timesformer import evaluate as E

    for main, prog in ((T.main, "tslab train"), (E.main, "tslab evaluate")):
        with pytest.raises(SystemExit):
            main(["--help"], prog=prog)
        assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def test_checkpoint_from_save_model_can_init(tmp_path):
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=32, num_heads=2, img_size=32, num_frames=4,
                                                   num_classes=4))
    save_model(model, tmp_path / "m")
    out = tmp_path / "run"
    T.main(toy_args(out, "--init", str(tmp_path / "m"), epochs=1))
    assert load_model(out / "checkpoint-last").class_names[0] == "moving right"


def test_init_from_an_image_vit_takes_the_attention_flag(tmp_path):
    """A HuggingFace ViT folder starts an axial model (--attention); a video checkpoint keeps its own scheme."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    T.main(toy_args(tmp_path / "run", "--init", str(tmp_path / "vit"), "--attention", "axial", epochs=1))
    trained = load_model(tmp_path / "run" / "checkpoint-last")
    assert trained.config.attention_type == "axial" and trained.config.num_frames == 4
    assert trained.config.norm_eps == 1e-12 and trained.class_names[0] == "moving right"
    assert "image ViT (huggingface-vit) started as attention_type=axial" in (tmp_path / "run" / "log.txt").read_text()
    # a video checkpoint keeps its scheme: another --attention is an error (it was ignored without a word),
    # none takes the checkpoint's, and the run's config records it (it recorded the default)
    with pytest.raises(SystemExit, match=r"^--attention joint_space_time: --init .*checkpoint-last has "
                                         r"attention_type=axial, which a video model keeps"):
        T.main(toy_args(tmp_path / "run2", "--init", str(tmp_path / "run" / "checkpoint-last"), "--attention",
                        "joint_space_time", epochs=1))
    T.main(toy_args(tmp_path / "run2", "--init", str(tmp_path / "run" / "checkpoint-last"), epochs=1))
    assert load_model(tmp_path / "run2" / "checkpoint-last").config.attention_type == "axial"
    assert yaml.safe_load((tmp_path / "run2" / "train_config.yaml").read_text())["args"]["attention"] == "axial"


def test_init_at_other_frame_counts_resizes_the_time_embedding(tmp_path):
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=32, num_heads=2, img_size=32, num_frames=4))
    save_model(model, tmp_path / "m")
    T.main(toy_args(tmp_path / "run", "--init", str(tmp_path / "m"), "--num-frames", "8", epochs=1))
    trained = load_model(tmp_path / "run" / "checkpoint-last")
    assert trained.config.num_frames == 8 and trained.time_embed.shape == (1, 8, 32)
    assert "resized time_embed from 4 to 8 frames" in (tmp_path / "run" / "log.txt").read_text()  # not stderr alone


def test_train_state_round_trips_and_reads_older_checkpoints():
    state = TrainState(epoch=1, step=7, micro=3, loss_sum=2.5, correct=4.0, count=8.0, skipped=1, wall=0.5)
    assert TrainState.from_dict(state.as_dict()) == state
    assert all(isinstance(v, (int, float)) for v in state.as_dict().values())  # train_state.pt stays plain
    old = {"epoch": 2, "step": 8, "micro": 0, "loss_sum": 0.0, "correct": 0.0, "count": 0.0, "skipped": 0,
           "wall": 1.0}  # written before clips_per_s was saved
    assert TrainState.from_dict(old).step == 8 and TrainState.from_dict(old).clips_per_s == 0.0
    state.next_epoch()
    assert (state.epoch, state.step, state.micro, state.count, state.skipped) == (2, 7, 0, 0.0, 0)


def test_predict_ranks_the_centre_view_and_the_view_average():
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig.tiny(depth=1, embed_dim=32, num_heads=2, img_size=32, num_frames=4,
                                               num_classes=3, class_names=["a", "b", "c"])).eval()
    views = torch.randn(3, 3, 4, 32, 32)
    out = predict(model, views, k=5)
    with torch.no_grad():
        probs = model(views).softmax(-1)
    assert [p for _, p in out["clip"]] == pytest.approx(probs[1].sort(descending=True).values.tolist())
    assert [p for _, p in out["video"]] == pytest.approx(probs.mean(0).sort(descending=True).values.tolist())
    assert {name for name, _ in out["video"]} == {"a", "b", "c"}  # k is capped at the number of classes


# ---------------------------------------------------------------------------------------------
# the atomic folder writer (save_model and run checkpoints)
def test_atomic_folder_replaces_an_existing_folder(tmp_path):
    dest = tmp_path / "ckpt"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_folder(dest) as tmp:
        assert tmp.parent == tmp_path and tmp != dest
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.txt").write_text("new")
        assert (dest / "old.txt").exists()  # readers still see the old folder
    assert [p.name for p in dest.iterdir()] == ["sub"] and (dest / "sub" / "new.txt").read_text() == "new"
    assert dest.stat().st_mode & 0o777 == 0o755 and (dest / "sub").stat().st_mode & 0o777 == 0o755
    assert (dest / "sub" / "new.txt").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left


def test_a_crash_inside_atomic_folder_keeps_the_old_folder(tmp_path):
    dest = tmp_path / "ckpt"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(dest) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "fresh"):
            raise RuntimeError
    assert not (tmp_path / "fresh").exists()


# ---------------------------------------------------------------------------------------------
# --device
@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend there are two CUDA devices; `set_device` records its argument instead."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


def test_a_bare_cuda_device_gets_the_local_rank(two_gpus, monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins
    with pytest.raises(SystemExit, match="no cuda:2; the CUDA devices are cuda:0, cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(SystemExit, match="no cuda:3"):
        resolve_device("cuda", local_rank=3)
    with pytest.raises(SystemExit, match="--device gpu"):
        resolve_device("gpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # torch.cuda.set_device rejects a device without an index ("Expected a torch.device with a specified index")
    assert Dist("cuda").device == torch.device("cuda", 1) and two_gpus == [torch.device("cuda", 1)]


def test_cuda_without_cuda_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(SystemExit, match="--device cuda:1: CUDA is not available"):
        resolve_device("cuda:1")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for the child, whatever the machine has
    proc = subprocess.run([sys.executable, "-m", "timesformer.train", *toy_args(tmp_path / "run"), "--device",
                           "cuda"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "CUDA is not available" in proc.stderr


def test_a_device_this_pytorch_cannot_use_is_a_one_line_error(tmp_path):
    """mps on Linux, xpu without XPU, meta: said before any work, not a traceback from the first tensor moved."""
    for name in ("mps", "xpu"):
        if name == "mps" and torch.backends.mps.is_available() or name == "xpu" and torch.xpu.is_available():
            continue
        message = rf"^--device {name}: this PyTorch cannot use it \(.*\); use --device cpu$"
        with pytest.raises(SystemExit, match=message):
            resolve_device(name)
    with pytest.raises(SystemExit, match="TSLAB_DEVICE=meta: meta tensors hold no values; use TSLAB_DEVICE=cpu"):
        resolve_device("meta", setting="TSLAB_DEVICE={}")
    proc = subprocess.run([sys.executable, "-m", "timesformer.evaluate", "nowhere", "synthmotion-temporal",
                           "--device", "meta"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "--device meta" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda(tmp_path):
    res = T.main(toy_args(tmp_path / "run", "--device", "cuda", epochs=1))
    assert res["val"]["clips"] == 8
    assert f"1 × {torch.cuda.get_device_name(0)} (cuda:0)" in (tmp_path / "run" / "log.txt").read_text()
