"""The shipped models (assets/models/, written by bench/shipped_models.py): one trained model per scheme on
SynthMotion temporal and a divided model on the distractor task, each stored as fp16, each classifying fresh
held-out clips as well as its model card says, and `space_only` at chance on the temporal task.

Fresh clips: SynthMotion's `test` split with seed FRESH_SEED, which neither training (the `train` split),
validation (`val`) nor the cards' own evaluation (seed 12345) used.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
import pytest
import torch
from safetensors import safe_open

from timesformer import ATTENTION_TYPES, load_model, shipped
from timesformer.synthmotion import TEMPORAL_CLASSES, SynthMotion

FRESH_SEED, FRESH_CLIPS = 4242, 128
TIME_SCHEMES = [s for s in ATTENTION_TYPES if s != "space_only"]
NAMES = [f"{shipped.TEMPORAL}-{s}" for s in ATTENTION_TYPES] + ["synthmotion-distractor-divided_space_time"]


def margin(p: float, n: int = FRESH_CLIPS) -> float:
    """How far an accuracy on n fresh clips may fall from the card's p without the model having changed:
    4 binomial standard deviations of the n-clip estimate (a 1-in-15,000 false alarm; the variance is floored at
    p = 0.99 so a card at 100% still allows a miss or two), plus 1 point for the card's own estimate (2,048
    clips: one standard deviation is at most 1.1 points). At n = 128: 4.5 points for a card at 99-100%, 16
    points at chance (25%), where the frame-order test below is the sharper check."""
    return 4 * math.sqrt(max(p * (1 - p), 0.99 * 0.01) / n) + 0.01


@lru_cache(maxsize=4)
def fresh(task: str, frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(videos (n, 3, T, S, S), labels (n,)) of fresh held-out clips."""
    ds = SynthMotion(task, "test", FRESH_CLIPS, frames, size, seed=FRESH_SEED)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([v[0] for v, _, _ in items]), torch.tensor([y for _, y, _ in items])


def logits_of(model, videos: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(videos[i:i + 128]) for i in range(0, len(videos), 128)])


@cache
def on_fresh_clips(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(videos, labels, logits) of the shipped model `name` on fresh clips of its card's task."""
    model = load_model(name)
    videos, labels = fresh(shipped.card(name)["task"].removeprefix("synthmotion-"), model.config.num_frames,
                           model.config.img_size)
    return videos, labels, logits_of(model, videos)


def test_every_scheme_and_the_distractor_model_are_shipped_compactly():
    found = shipped.models()
    assert set(NAMES) <= set(found), sorted(found)
    assert list(shipped.scheme_models()) == list(ATTENTION_TYPES)
    assert shipped.DEFAULT_MODEL == found[f"{shipped.TEMPORAL}-divided_space_time"]
    total = sum(f.stat().st_size for f in shipped.MODELS.rglob("*") if f.is_file())
    assert total < 25 * 2**20, total
    for name in NAMES:
        folder = found[name]
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, name
        model = load_model(name)
        assert {p.dtype for p in model.parameters()} == {torch.float32}  # cast into the fp32 model
        meta = shipped.card(name)
        assert meta["name"] == name and meta["attention_type"] == model.config.attention_type
        assert meta["held_out"]["clips"] >= 1024 and meta["held_out"]["seed"] != FRESH_SEED
        assert "tslab train" in meta["train"]["command"] and meta["train"]["wall_s"] > 0
        assert model.class_names == TEMPORAL_CLASSES
        assert model.config.img_size == meta["img_size"]


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_on_fresh_clips_matches_the_card(name):
    meta = shipped.card(name)
    _, labels, logits = on_fresh_clips(name)
    acc = (logits.argmax(1) == labels).float().mean().item()
    card = meta["held_out"]["accuracy"]
    assert abs(acc - card) <= margin(card), (name, acc, card, margin(card))
    if meta["attention_type"] != "space_only":
        assert card >= 0.95, (name, card)  # the bar every scheme with a time step meets


def test_space_only_is_at_chance_on_temporal_clips():
    """Its per-frame outputs are averaged, so reordering the frames changes nothing: chance by construction."""
    name = f"{shipped.TEMPORAL}-space_only"
    videos, labels, logits = on_fresh_clips(name)
    assert torch.allclose(logits, logits_of(load_model(name), videos.flip(2)), atol=1e-4)
    acc = (logits.argmax(1) == labels).float().mean().item()
    assert abs(acc - 0.25) <= margin(0.25), acc


@pytest.mark.parametrize("scheme", TIME_SCHEMES)
def test_time_schemes_read_the_order(scheme):
    """Reversing a clip turns each class into its pair (right <-> left, right and back <-> left and back)."""
    name = f"{shipped.TEMPORAL}-{scheme}"
    videos, labels, _ = on_fresh_clips(name)
    pred = logits_of(load_model(name), videos[:64].flip(2)).argmax(1)
    assert (pred == labels[:64] ^ 1).float().mean() >= 0.9


def test_the_distractor_model_reads_more_than_a_few_frames_and_gae_lrp_beat_rollout():
    """Trained with --frame-drop, the distractor model's decision rests on more than the three frames that
    settle the order (trained on whole clips: 34% of the frames); and GAE and LRP put more of the mass they
    give the two discs on the one that carries the class than rollout does (docs/analysis.md)."""
    from analysis.benchmark import clips, frame_drops
    from analysis.explanations import explain
    from analysis.grounding import grounding_scores, object_cells, used_frames

    model = load_model("synthmotion-distractor-divided_space_time")
    data = SynthMotion("distractor", "test", 32, model.config.num_frames, model.config.img_size, seed=FRESH_SEED)
    videos, masks, _ = clips(data, 32)
    with torch.no_grad():
        target = model(videos).argmax(1)
    used = np.stack([used_frames(d) for d in frame_drops(model, videos, target)])
    assert used.mean() >= 0.45, used.mean()
    cells = [object_cells(m, model.config.patch_size) for m in masks]
    share = {}
    for method in ("rollout", "gae", "lrp"):
        maps = explain(model, videos, method, target=target)
        share[method] = np.mean([grounding_scores(maps[i], c["signal"], c["distractor"])["signal_share"]
                                 for i, c in enumerate(cells)])
    assert min(share["gae"], share["lrp"]) > share["rollout"] and share["gae"] > 0.85, share


def test_samples_are_classified_by_the_default_model():
    from timesformer.video import read_clip

    model = load_model(shipped.DEFAULT_MODEL)
    cfg = model.config
    samples = shipped.sample_clips()
    assert [p.stem.replace("_", " ") for p in samples] == sorted(TEMPORAL_CLASSES)
    for path in samples:
        video, info = read_clip(path, num_frames=cfg.num_frames, size=cfg.img_size)
        assert info.width == 128 and info.num_frames == 8
        with torch.no_grad():
            assert model.class_names[model(video).argmax(1).item()] == path.stem.replace("_", " "), path.name
    assert sum(p.stat().st_size for p in samples) <= 400_000


def test_cards_are_read_and_summarised(tmp_path):
    assert shipped.card(tmp_path) == {}
    (tmp_path / "README.md").write_text("---\nname: x\nheld_out: {accuracy: 0.5, clips: 10}\ntask: synthmotion-temporal"
                                        "\n---\n# x\n")
    assert shipped.held_out_accuracy(tmp_path) == 0.5
    assert shipped.summary(shipped.card(tmp_path)) == ("held-out accuracy 50.0% on 10 fresh SynthMotion temporal "
                                                       "clips (its model card)")
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert shipped.card(tmp_path) == {} and shipped.held_out_accuracy(tmp_path) is None
