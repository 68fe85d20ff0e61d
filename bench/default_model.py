"""Train the shipped default model and write assets/default_model/ and assets/samples/.

    .venv/bin/python bench/default_model.py

The exact training command is TRAIN below (also in docs/results.md); the run folder is runs/default/.
The model is a tiny divided_space_time TimeSformer trained on SynthMotion temporal; the samples are one fresh
clip per class (SynthMotion `test` split, seed 2026) rendered at the model's 32² and enlarged 4× (nearest) to
128², so that the app shows them at a useful size while read_clip's antialiased resize gives the model back
the 32² frames it was trained on (each 32×32 block of the sample is one 8×8 patch of the model).
`--skip-train` reuses runs/default; `--samples-only` rewrites only the samples.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TRAIN = ["--data", "synthmotion-temporal", "--preset", "tiny", "--attention", "divided_space_time",
         "--img-size", "32", "--num-frames", "8", "--train-clips", "4096", "--val-clips", "512", "--epochs", "4",
         "--batch-size", "16", "--lr", "1e-3", "--seed", "0", "--threads", "1", "--no-progress",
         "--out", "runs/default"]


def main():
    from timesformer import load_model, save_model
    from timesformer.evaluate import run as evaluate_run
    from timesformer.synthmotion import SynthMotion
    from timesformer.video import read_clip, write_video

    if "--skip-train" not in sys.argv and "--samples-only" not in sys.argv:
        subprocess.run([sys.executable, "-m", "timesformer.train", *TRAIN], cwd=ROOT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    model = load_model(ROOT / "runs" / "default" / "checkpoint-last")
    dest = ROOT / "assets" / "default_model"
    if "--samples-only" not in sys.argv:
        shutil.rmtree(dest, ignore_errors=True)
        save_model(model, dest)
    samples = ROOT / "assets" / "samples"
    shutil.rmtree(samples, ignore_errors=True)
    samples.mkdir(parents=True)
    size = model.config.img_size
    ds = SynthMotion("temporal", "test", 64, num_frames=8, size=size, seed=2026)
    written = {}
    for i in range(len(ds)):
        label = ds.label(i)
        name = ds.classes[label]
        if name in written:
            continue
        frames, _ = ds.frames(i)
        frames = frames.repeat(128 // size, axis=1).repeat(128 // size, axis=2)  # (T, 128, 128, 3)
        path = samples / f"{name.replace(' ', '_')}.mp4"
        write_video(path, frames, fps=4, crf=23)
        video, _ = read_clip(path, num_frames=8, size=model.config.img_size)
        pred = model.class_names[model(video).argmax(1).item()]
        written[name] = {"file": path.name, "predicted": pred, "bytes": path.stat().st_size}
        if len(written) == len(ds.classes):
            break
    summary_path = ROOT / "bench" / "results" / "default_model.json"
    if "--samples-only" in sys.argv:
        summary = json.loads(summary_path.read_text())
        summary["samples"] = written
        summary_path.write_text(json.dumps(summary, indent=2))
        print(json.dumps(written, indent=2))
        return
    res = evaluate_run(dest, "synthmotion-temporal", num_clips=1024, seed=12345)
    summary = {"train_command": "python -m timesformer.train " + " ".join(TRAIN), "samples": written,
               "eval_command": "python -m timesformer.evaluate assets/default_model synthmotion-temporal "
                               "--num-clips 1024", "eval": res}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
