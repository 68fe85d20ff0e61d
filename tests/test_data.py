"""Datasets: SynthMotion's guarantees, the folder and CSV layouts, and skipping unreadable clips."""

import numpy as np
import pytest
import torch

from timesformer.data import FrameDrop, Relabeled, Skipped, build_datasets, collate, open_split, video_csv, video_folder
from timesformer.synthmotion import (
    APPEARANCE_CLASSES,
    TEMPORAL_CLASSES,
    SynthMotion,
    export_synthmotion,
    motion_order,
)
from timesformer.video import read_clip, temporal_median, transform_frames


def test_synthmotion_is_deterministic_by_seed_and_split():
    a = SynthMotion("temporal", "train", 8, num_frames=8, size=32, seed=3)
    b = SynthMotion("temporal", "train", 8, num_frames=8, size=32, seed=3)
    c = SynthMotion("temporal", "train", 8, num_frames=8, size=32, seed=4)
    v = SynthMotion("temporal", "val", 8, num_frames=8, size=32, seed=3)
    for i in range(4):
        fa, la = a.frames(i)
        fb, lb = b.frames(i)
        assert np.array_equal(fa, fb) and la == lb
        assert not np.array_equal(fa, c.frames(i)[0]) and not np.array_equal(fa, v.frames(i)[0])
    video, label, index = a[2]
    assert video.shape == (1, 3, 8, 32, 32) and video.dtype == torch.float32 and index == 2
    assert torch.equal(video, transform_frames(a.frames(2)[0], 32))  # the same pre-processing as read_clip


def test_motion_orders_are_permutations():
    for T in (4, 7, 8, 16):
        orders = [motion_order(k, T) for k in range(4)]
        assert all(sorted(o.tolist()) == list(range(T)) for o in orders)
        assert len({tuple(o.tolist()) for o in orders}) == 4  # four distinct orders
        assert orders[1].tolist() == orders[0][::-1].tolist() and orders[3].tolist() == orders[2][::-1].tolist()


def test_temporal_classes_share_their_frames():
    """By construction a frame-order-invariant model is at chance: every class is the same frame multiset."""
    ds = SynthMotion("temporal", "train", 16, num_frames=8, size=32, seed=0)
    assert ds.classes == TEMPORAL_CLASSES
    for i in range(6):
        clips = [ds.frames(i, label=k)[0] for k in range(4)]
        key = lambda v: sorted(f.tobytes() for f in v)
        assert all(key(c) == key(clips[0]) for c in clips[1:])
        assert all(not np.array_equal(c, clips[0]) for c in clips[1:])  # ... in different orders
    # and the motion really differs: the object's mean x goes right for "moving right", left for "moving left"
    f, _ = ds.frames(0, label=0)
    g, _ = ds.frames(0, label=1)
    centre_x = lambda v: [np.argwhere(np.abs(fr.astype(int) - np.median(fr, (0, 1))).sum(-1) > 90)[:, 1].mean()
                          for fr in v]
    assert np.all(np.diff(centre_x(f)) > 0) and np.all(np.diff(centre_x(g)) < 0)


def _centre_x(masks: np.ndarray) -> np.ndarray:
    """(T,) mean column of a (T, S, S) mask."""
    return np.array([np.argwhere(m)[:, 1].mean() for m in masks])


def test_distractor_clips_and_object_masks():
    """Two objects: the red one's visiting order is the class, the blue one's is random and says nothing."""
    ds = SynthMotion("distractor", "val", 64, num_frames=8, size=32, seed=5)
    assert ds.classes == TEMPORAL_CLASSES
    orders = [motion_order(k, 8) for k in range(4)]
    rank = lambda xs: np.argsort(np.argsort(xs))  # the visiting order seen from the object's x positions
    distractor_kinds = {k: set() for k in range(4)}
    for i in range(len(ds)):
        frames, label = ds.frames(i)
        masks = ds.object_masks(i)
        assert set(masks) == {"signal", "distractor"}
        sig, dis = masks["signal"], masks["distractor"]
        assert sig.shape == dis.shape == (8, 32, 32) and sig.dtype == bool
        assert not (sig & dis).any() and sig.sum((1, 2)).min() > 0 and dis.sum((1, 2)).min() > 0
        assert (rank(_centre_x(sig)) == orders[label]).all()  # the signal visits the positions in class order
        # the masks are the pixels of each colour (the background's colour noise has a thin tail)
        red, blue = frames[..., 0].astype(int) - frames[..., 2], frames[..., 2].astype(int) - frames[..., 0]
        assert (red[sig] > 100).all() and (blue[dis] > 100).all()
        assert (red[~sig] > 100).mean() < 0.005 and (blue[~dis] > 100).mean() < 0.005
        distractor_kinds[label].add(next(k for k in range(4) if (rank(_centre_x(dis)) == orders[k]).all()))
    assert all(len(kinds) >= 3 for kinds in distractor_kinds.values())  # any class goes with any blue order
    single = SynthMotion("temporal", "val", 4, num_frames=8, size=32, seed=5)
    frames, label = single.frames(1)
    masks = single.object_masks(1)
    assert set(masks) == {"signal"} and masks["signal"].any((1, 2)).all()
    assert (rank(_centre_x(masks["signal"])) == orders[label]).all()
    colour = frames[masks["signal"]]  # one flat colour: every object pixel alike
    assert (colour == colour[0]).all()


def test_appearance_class_is_visible_in_one_frame():
    ds = SynthMotion("appearance", "val", 48, num_frames=4, size=32, seed=1)
    assert ds.classes == APPEARANCE_CLASSES
    palette = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 210, 40]], float)
    hits = 0
    for i in range(len(ds)):
        frames, label = ds.frames(i)
        frame = frames[np.random.default_rng(i).integers(4)].astype(float)  # any single frame
        obj = frame[np.abs(frame - np.median(frame, (0, 1))).sum(-1) > 90].mean(0)
        hits += int(np.argmin(((palette - obj) ** 2).sum(1)) == label)
    assert hits >= 46
    labels = [ds.label(i) for i in range(len(ds))]
    assert set(labels) == {0, 1, 2, 3}


def test_export_round_trip_through_the_folder_dataset(tmp_path):
    root = export_synthmotion(tmp_path / "sm", "temporal", num_train=8, num_val=4, seed=0, num_frames=8, size=32)
    train = video_folder(root, "train", num_frames=8, sampling_rate=1, size=32)
    val = video_folder(root, "val", classes=train.classes, num_frames=8, sampling_rate=1, size=32)
    assert len(train) == 8 and len(val) == 4 and set(train.classes) <= set(TEMPORAL_CLASSES)
    synth = SynthMotion("temporal", "train", 8, num_frames=8, size=32, seed=0)
    path, label = train.items[0]
    idx = int(path.rsplit("/", 1)[1].split(".")[0])
    video, label2, _ = train[0]
    assert train.classes[label] == synth.classes[synth.label(idx)] and label2 == label
    same = (video - synth[idx][0]).abs().mean()  # the mp4 holds the same clip (lossy: the noise is blurred)
    other = (video - synth[(idx + 1) % 8][0]).abs().mean()
    assert same < 0.2 and same < other / 2
    ds_train, ds_val, classes = build_datasets(str(root), num_frames=8, size=32, sampling_rate=1)
    assert classes == train.classes and len(ds_val) == 4 and ds_train.train and not ds_val.train


def test_unreadable_clips_are_skipped_and_counted(tmp_path):
    root = export_synthmotion(tmp_path / "sm", "appearance", num_train=4, num_val=0, seed=0, num_frames=4, size=32)
    cls = sorted(p.name for p in (root / "train").iterdir())[0]
    (root / "train" / cls / "broken.mp4").write_text("not a video")
    (root / "train" / cls / "notes.txt").write_text("ignored: not a video extension")
    ds = video_folder(root, "train", num_frames=4, sampling_rate=1, size=32)
    assert len(ds) == 5
    items = [ds[i] for i in range(len(ds))]
    bad = [x for x in items if isinstance(x, Skipped)]
    assert len(bad) == 1 and "broken.mp4" in bad[0].path and "text file" in bad[0].reason
    batch = collate(items)
    assert batch["video"].shape == (4, 1, 3, 4, 32, 32) and len(batch["skipped"]) == 1
    assert collate([bad[0]])["video"] is None


def test_frame_drop_replaces_whole_frames_by_the_still_background():
    ds = SynthMotion("distractor", "train", 16, num_frames=8, size=32, seed=0)
    dropper = FrameDrop(ds, 0.5, seed=1)
    assert dropper.classes == ds.classes and len(dropper) == 16
    counts = []
    for i in range(16):
        (video, label, index), (clean, label0, _) = dropper[i], ds[i]
        assert (label, index) == (label0, i)
        drop = dropper.dropped(i, 8)
        counts.append(drop.sum())
        background = temporal_median(clean)
        assert torch.equal(video[:, :, ~drop], clean[:, :, ~drop])  # kept frames are untouched
        assert torch.equal(video[:, :, drop], background.expand_as(clean)[:, :, drop])
    assert 0 < np.mean(counts) < 8 and max(counts) < 8
    # the median frame holds neither disc where it covers a pixel in fewer than half of the frames. Red (R 220)
    # and blue (B 230) are far above the background's channels (at most ≈ 70 + 4σ of texture and noise)
    frames, _ = ds.frames(0)
    still = temporal_median(torch.from_numpy(frames).float(), dim=0)[0].numpy()  # (S, S, 3)
    masks = ds.object_masks(0)
    assert (frames[..., 0][masks["signal"]] > 150).mean() > 0.9
    for name, channel in (("signal", 0), ("distractor", 2)):
        passed = (masks[name].sum(0) > 0) & (masks[name].sum(0) < 4)
        assert passed.sum() > 20 and still[..., channel][passed].max() < 150
    # the draw depends on (seed, epoch, index) alone, never on the order items are asked for
    again = FrameDrop(ds, 0.5, seed=1)
    assert torch.equal(again[5][0], dropper[5][0])
    dropper.set_epoch(1)
    assert [dropper.dropped(i, 8).tolist() for i in range(16)] != [again.dropped(i, 8).tolist() for i in range(16)]
    # never every frame, even at a high rate
    assert all(FrameDrop(ds, 0.99, seed=s).dropped(0, 8).sum() == 7 for s in range(20))
    broken = Relabeled([Skipped(0, "x.mp4", "broken")], [0])
    broken.classes = ["a"]
    assert isinstance(FrameDrop(broken, 0.5)[0], Skipped)  # unreadable clips pass through to be counted
    with pytest.raises(ValueError, match="frame-drop"):
        FrameDrop(ds, 1.0)


def test_csv_lists(tmp_path):
    root = export_synthmotion(tmp_path / "sm", "appearance", num_train=12, num_val=3, seed=0, num_frames=4, size=32)
    clips = sorted((root / "train").glob("*/*.mp4"))
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in clips))
    val = sorted((root / "val").glob("*/*.mp4"))
    rel = [p.relative_to(tmp_path) for p in val]
    (tmp_path / "val.csv").write_text("".join(f"{p} {p.parent.name}\n" for p in rel))  # space separated
    train, valds, classes = build_datasets(str(tmp_path / "train.csv"), num_frames=4, size=32, sampling_rate=1)
    assert classes == sorted({p.parent.name for p in clips}) and len(train) == 12 and len(valds) == 3
    assert valds.items[0][0] == str(tmp_path / rel[0])
    assert valds[0][0].shape == (1, 3, 4, 32, 32)
    (tmp_path / "ints.csv").write_text(f"{clips[0]},2\n{clips[1]},0\n")
    ints = video_csv(tmp_path / "ints.csv", num_frames=4, size=32)
    assert ints.classes == ["0", "1", "2"] and [lb for _, lb in ints.items] == [2, 0]
    (tmp_path / "bad.csv").write_text(f"# a comment\n{clips[1]},red\n{clips[0]},purple\n")
    with pytest.raises(ValueError, match="bad.csv:3: class 'purple' is not one of the training classes"):
        video_csv(tmp_path / "bad.csv", classes=classes)
    (tmp_path / "spaces.csv").write_text(f"{clips[0]} red\nmy clip.mp4\n")  # a path with spaces, no label
    with pytest.raises(ValueError, match=r"spaces.csv:2: 'my clip.mp4' has no label \(a path with spaces needs a"):
        video_csv(tmp_path / "spaces.csv")
    (tmp_path / "empty.csv").write_text(f"{clips[0]},red\n{clips[1]},\n")
    with pytest.raises(ValueError, match="empty.csv:2: .* has no label"):
        video_csv(tmp_path / "empty.csv")
    # a folder holding train.csv works too
    t2, _, c2 = build_datasets(str(tmp_path), num_frames=4, size=32, sampling_rate=1)
    assert c2 == classes and len(t2) == 12

    # evaluation opens one split of the same layouts, in a given class order
    opened = open_split(str(tmp_path), "val", classes[::-1], num_frames=4, size=32, sampling_rate=1)
    assert opened.classes == classes[::-1] and len(opened) == 3 and not opened.train
    assert [opened.classes[lb] for _, lb in opened.items] == [valds.classes[lb] for _, lb in valds.items]
    assert open_split(str(tmp_path / "train.csv"), "anything", num_frames=4, size=32).classes == classes


def test_synthmotion_labels_follow_a_checkpoints_class_order():
    order = sorted(TEMPORAL_CLASSES)  # a model trained on exported folders: classes sorted by name
    ds = open_split("synthmotion-temporal", "test", order, num_frames=4, size=16, num_clips=8, seed=1)
    raw = SynthMotion("temporal", "test", 8, num_frames=4, size=16, seed=1)
    assert isinstance(ds, Relabeled) and len(ds) == 8
    for i in range(8):
        video, label, index = ds[i]
        assert order[label] == raw.classes[raw[i][1]] and torch.equal(video, raw[i][0]) and index == i
    same = open_split("synthmotion-temporal", "val", TEMPORAL_CLASSES, num_frames=4, size=16, num_clips=8)
    assert isinstance(same, SynthMotion) and same.split == "val"  # already in order: no wrapper
    with pytest.raises(ValueError, match="not SynthMotion temporal's"):
        open_split("synthmotion-temporal", "test", APPEARANCE_CLASSES, num_frames=4, size=16)


def test_build_datasets_errors(tmp_path):
    train, val, classes = build_datasets("synthmotion-appearance", num_frames=4, size=32, train_clips=10,
                                         val_clips=5)
    assert len(train) == 10 and len(val) == 5 and classes == APPEARANCE_CLASSES and val.split == "val"
    with pytest.raises(FileNotFoundError):
        build_datasets(str(tmp_path / "nothing"), num_frames=4, size=32)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no video files"):
        build_datasets(str(tmp_path / "empty"), num_frames=4, size=32)
    with pytest.raises(ValueError, match="temporal"):
        SynthMotion("colour")


def test_folder_clip_matches_read_clip(tmp_path):
    root = export_synthmotion(tmp_path / "sm", "temporal", num_train=2, num_val=0, seed=5, num_frames=8, size=48)
    ds = video_folder(root, "train", num_frames=8, sampling_rate=1, size=32, spatial_crops=3)
    video, _, _ = ds[0]
    ref, _ = read_clip(ds.items[0][0], num_frames=8, sampling_rate=1, size=32, spatial_crops=3)
    assert torch.equal(video, ref)


def test_export_cli(tmp_path, capsys):
    from timesformer.synthmotion import main

    main([str(tmp_path / "out"), "--task", "appearance", "--train", "2", "--val", "1", "--size", "16",
          "--num-frames", "4"])
    assert len(list((tmp_path / "out").glob("*/*/*.mp4"))) == 3
    video, info = read_clip(next((tmp_path / "out" / "val").glob("*/*.mp4")), num_frames=4, size=16)
    assert info.num_frames == 4 and (info.width, info.height) == (16, 16)
    for flags, message in ((["--size", "0"], "argument --size: expected an integer ≥ 1, got '0'"),
                           (["--train", "-1"], "argument --train: expected an integer ≥ 0, got '-1'"),
                           (["--num-frames", "0"], "argument --num-frames: expected an integer ≥ 1")):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "bad"), *flags])
        assert message in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "notes.txt"), "--train", "1", "--val", "0"])
    assert "notes.txt is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="SynthMotion's size must be an integer ≥ 1, got 0"):
        SynthMotion("temporal", "train", 4, 8, 0)


def test_a_clip_listed_with_two_labels_is_an_error(tmp_path):
    """A clip listed twice under two classes was taken as two training examples of opposite labels."""
    (tmp_path / "list.csv").write_text("path,label\na.mp4,left\nb.mp4,right\na.mp4,right\nb.mp4,right\n")
    with pytest.raises(ValueError, match=r"list.csv:4: a.mp4 is listed as 'right' here and as 'left' on line 2$"):
        video_csv(tmp_path / "list.csv")
    (tmp_path / "list.csv").write_text("a.mp4,left\nb.mp4,right\nb.mp4,right\n")  # a repeat is not a conflict
    assert len(video_csv(tmp_path / "list.csv")) == 3


def test_a_byte_order_mark_is_not_part_of_a_csv_list(tmp_path):
    """Excel writes UTF-8 CSV files with a BOM: the header must stay a header, the first path a path."""
    root = export_synthmotion(tmp_path / "sm", "appearance", num_train=2, num_val=0, seed=0, num_frames=4, size=16)
    clips = sorted((root / "train").glob("*/*.mp4"))
    rows = "".join(f"{p},{p.parent.name}\n" for p in clips)
    (tmp_path / "header.csv").write_text("\ufeffpath,label\n" + rows, encoding="utf-8")
    (tmp_path / "bare.csv").write_text("\ufeff" + rows, encoding="utf-8")
    for name in ("header.csv", "bare.csv"):
        ds = video_csv(tmp_path / name, num_frames=4, size=16, sampling_rate=1)
        assert ds.classes == sorted({p.parent.name for p in clips}) and len(ds) == 2, name
        assert ds.items[0][0] == str(clips[0]) and not isinstance(ds[0], Skipped)


def save_tiny_model(path, classes):
    from timesformer import TimeSformer, TimeSformerConfig, save_model

    save_model(TimeSformer(TimeSformerConfig.tiny(img_size=16, embed_dim=16, depth=1, num_heads=2, num_frames=4,
                                                  num_classes=len(classes), class_names=classes)), path)


def test_an_empty_class_folder_is_an_error(tmp_path):
    """An empty folder would be a class without clips: another class count, labels shifted."""
    root = export_synthmotion(tmp_path / "sm", "appearance", num_train=4, num_val=2, seed=0, num_frames=4, size=16)
    empty = root / "train" / "zzz"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match=rf"^class folder {empty} holds no video files \(.*\.mp4.*\): add its "
                                         "clips or remove the folder"):
        build_datasets(str(root), num_frames=4, size=16)
    # a hidden folder (Jupyter's .ipynb_checkpoints) is no class at all
    empty.rename(root / "train" / ".ipynb_checkpoints")
    assert ".ipynb_checkpoints" not in video_folder(str(root), "train", num_frames=4, size=16).classes
    (root / "train" / ".ipynb_checkpoints").rename(empty)
    from timesformer import evaluate as E
    from timesformer import train as T

    save_tiny_model(tmp_path / "model", APPEARANCE_CLASSES)
    with pytest.raises(SystemExit, match=f"^--data: class folder {empty} holds no video files"):
        T.main(["--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"])
    # evaluation takes the checkpoint's classes: an empty folder of one of them changes no label
    (root / "val" / APPEARANCE_CLASSES[3]).mkdir(exist_ok=True)
    assert E.run(tmp_path / "model", str(root), "val", num_frames=4, size=16, sampling_rate=1,
                 workers=0)["video"]["clips"] == 2


def test_a_negative_csv_label_names_the_valid_range(tmp_path):
    """The message gave the range of indices as 0..0 for one class (and 0..-1 where every label was -1)."""
    (tmp_path / "neg.csv").write_text("a.mp4,-1\nb.mp4,0\n")
    with pytest.raises(ValueError, match=r"neg.csv:1: label -1 is negative: integer labels are class indices, "
                                         r"from 0$"):
        video_csv(tmp_path / "neg.csv")
    (tmp_path / "big.csv").write_text("a.mp4,1\nb.mp4,2\n")
    with pytest.raises(ValueError, match=r"big.csv:2: label 2 is outside 0..1, the indices of the 2 training "
                                         r"classes$"):
        video_csv(tmp_path / "big.csv", classes=["x", "y"])
    with pytest.raises(ValueError, match=r"big.csv:1: label 1 is not 0, the index of the 1 training class$"):
        video_csv(tmp_path / "big.csv", classes=["x"])


def test_evaluating_only_unreadable_clips_is_an_error(tmp_path, capsys):
    from timesformer import evaluate as E

    save_tiny_model(tmp_path / "model", ["a", "b"])
    (tmp_path / "x.mp4").write_text("junk")
    (tmp_path / "y.mp4").write_bytes(b"")
    (tmp_path / "allbad.csv").write_text("x.mp4,a\ny.mp4,b\n")
    predictions = tmp_path / "p.csv"
    with pytest.raises(SystemExit, match=rf"^no clip of {tmp_path / 'allbad.csv'} could be read: all 2 clips are "
                                         rf"unreadable \(the first, {tmp_path / 'x.mp4'}: this is a text file, not a "
                                         r"video\)$"):
        E.main([str(tmp_path / "model"), str(tmp_path / "allbad.csv"), "--predictions", str(predictions),
                "--no-progress", "--workers", "0"])
    assert not predictions.exists() and capsys.readouterr().out == ""
