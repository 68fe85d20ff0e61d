import json
import os
import pickle
import re

import pytest
import torch

from tests.test_model import small_model
from timesformer import CheckpointError, TimeSformer, TimeSformerConfig, load_model, save_model

transformers = pytest.importorskip("transformers")

LABELS = ["archery", "bowling", "cooking", "dancing", "eating"]


def hf_model(attention_type, seed=0):
    cfg = transformers.TimesformerConfig(
        image_size=32, patch_size=8, num_frames=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, attention_type=attention_type, id2label=dict(enumerate(LABELS)),
        label2id={c: i for i, c in enumerate(LABELS)},
    )
    torch.manual_seed(seed)
    model = transformers.TimesformerForVideoClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # random weights everywhere, zero-initialised ones included
            p.normal_(0, 0.2)
    return model


def hf_logits(model, video):
    with torch.no_grad():
        return model(pixel_values=video.transpose(1, 2)).logits  # HF takes (B, T, C, H, W)


def official_key(hf_key):
    """HuggingFace → official TimeSformer names, written from the official vit.py module names."""
    k = hf_key.replace("timesformer.", "")
    k = k.replace("embeddings.cls_token", "cls_token").replace("embeddings.position_embeddings", "pos_embed")
    k = k.replace("embeddings.time_embeddings", "time_embed")
    k = k.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
    k = re.sub(r"encoder\.layer\.(\d+)\.", r"blocks.\1.", k)
    for old, new in [("temporal_attention.attention.qkv", "temporal_attn.qkv"),
                     ("temporal_attention.output.dense", "temporal_attn.proj"),
                     ("temporal_layernorm", "temporal_norm1"), ("temporal_dense", "temporal_fc"),
                     ("attention.attention.qkv", "attn.qkv"), ("attention.output.dense", "attn.proj"),
                     ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                     ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")]:
        k = k.replace(old, new)
    k = re.sub(r"^layernorm\.", "norm.", k).replace("classifier.", "head.")
    return "model." + k


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_huggingface_folder_and_official_checkpoint_give_hf_logits(tmp_path, attention_type):
    hf = hf_model(attention_type)
    video = torch.randn(2, 3, 4, 32, 32)
    expected = hf_logits(hf, video)

    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert model.config.attention_type == attention_type
    assert model.class_names == LABELS
    with torch.no_grad():
        assert (model(video) - expected).abs().max() <= 1e-4

    # the same weights in the official layout, as the official code saves them
    state = {official_key(k): v for k, v in hf.state_dict().items()}
    torch.save({"epoch": 15, "model_state": state, "cfg": "TIMESFORMER:\n  ATTENTION_TYPE: x\n"},
               tmp_path / "official.pyth")
    # released models have 64-channel heads; this toy has 16, which the shapes cannot tell
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "official.pyth", num_heads=3)
    official = load_model(tmp_path / "official.pyth", num_heads=4)
    assert official.config.attention_type == attention_type
    assert official.config.num_frames == 4 and official.config.img_size == 32
    with torch.no_grad():
        assert (official(video) - expected).abs().max() <= 1e-4


def test_huggingface_pytorch_model_bin_and_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    hf = hf_model("divided_space_time", seed=1)
    video = torch.randn(1, 3, 4, 32, 32)
    expected = hf_logits(hf, video)
    folder = tmp_path / "bin"
    folder.mkdir()
    hf.config.to_json_file(folder / "config.json")
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    with torch.no_grad():
        assert (load_model(folder)(video) - expected).abs().max() <= 1e-4

    # a hub id found in the local HuggingFace cache (the layout snapshot_download writes)
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-timesformer"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    hf.save_pretrained(snap)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    with torch.no_grad():
        assert (load_model("someone/tiny-timesformer")(video) - expected).abs().max() <= 1e-4
    with pytest.raises(CheckpointError, match="neither a local path nor in the HuggingFace cache"):
        load_model("someone/not-there")


@pytest.mark.parametrize("attention_type", ["space_only", "sparse_local_global", "axial"])
def test_our_format_round_trip(tmp_path, attention_type):
    model = small_model(attention_type, num_classes=3, class_names=["left", "right", "still"])
    video = torch.randn(1, 3, 4, 32, 32)
    path = save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((path / "config.json").read_text())["config"]["class_names"] == ["left", "right", "still"]
    for source in (path, path / "model.safetensors", str(path)):
        loaded = load_model(source)
        assert loaded.config == model.config and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(video), model(video))
    # the safetensors file alone carries its config
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((path / "model.safetensors").read_bytes())
    assert load_model(alone).class_names == ["left", "right", "still"]
    # saving again over an existing checkpoint replaces it
    save_model(small_model(attention_type, seed=3, num_classes=3), path)
    assert load_model(path).config.class_names is None


def test_official_config_inference(tmp_path):
    for attention_type in ("space_only", "joint_space_time", "divided_space_time", "sparse_local_global", "axial"):
        model = small_model(attention_type, num_heads=1, embed_dim=64)  # 64-channel heads, like the releases
        torch.save({"model_state": {"model." + k: v for k, v in model.state_dict().items()}}, tmp_path / "m.pth")
        loaded = load_model(tmp_path / "m.pth")
        assert loaded.config.attention_type == attention_type
        assert loaded.config.num_heads == 1 and loaded.config.depth == 2 and loaded.config.num_classes == 5
        video = torch.randn(1, 3, 4, 32, 32)
        with torch.no_grad():
            assert torch.equal(loaded(video), model(video))


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pyth", "wb") as f:
        pickle.dump({"model_state": {"x": RunsCode()}}, f)
    torch.save({"model_state": RunsCode()}, "evil2.pyth")
    for name in ("evil.pyth", "evil2.pyth"):
        with pytest.raises(CheckpointError, match="refusing to load"):
            load_model(name)
    assert not (tmp_path / "PWNED").exists()


def test_mismatches_name_the_offending_keys(tmp_path):
    model = small_model("divided_space_time")
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state["model.blocks.1.mlp.fc9.weight"] = state.pop("model.blocks.1.mlp.fc2.weight")
    torch.save({"model_state": state}, tmp_path / "renamed.pyth")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.1\.mlp\.fc2\.weight.*unexpected: blocks\.1\.mlp\.fc9"):
        load_model(tmp_path / "renamed.pyth", num_heads=4)
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state["model.blocks.0.temporal_fc.weight"] = torch.zeros(3, 3)
    torch.save({"model_state": state}, tmp_path / "shape.pyth")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*blocks\.0\.temporal_fc\.weight \(3, 3\) vs \(32, 32\)"):
        load_model(tmp_path / "shape.pyth", num_heads=4)
    save_model(model, tmp_path / "ours")
    with pytest.raises(CheckpointError, match="do not fit a axial model"):
        load_model(tmp_path / "ours", attention_type="axial")


def test_save_model_replaces_only_its_own_checkpoints(tmp_path):
    """Saving over a checkpoint replaces it; a file or a folder of other things at the path is refused and left
    as it was (atomic_folder would have moved a file aside and replaced a whole folder)."""
    model = TimeSformer(TimeSformerConfig.tiny(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2))
    save_model(model, tmp_path / "ckpt")
    other = TimeSformer(TimeSformerConfig.tiny(img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2))
    save_model(other, tmp_path / "ckpt")  # a checkpoint it wrote: replaced
    assert load_model(tmp_path / "ckpt").config.depth == 2
    (tmp_path / "empty").mkdir()
    save_model(model, tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "list.csv").write_text("a.mp4,0\n")
    for name, what in (("notes.txt", "is a file"), ("data", "is a folder that is not a TimeSformer Lab checkpoint")):
        with pytest.raises(FileExistsError, match=what):
            save_model(model, tmp_path / name)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "data" / "list.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "data", "empty", "notes.txt"]  # nothing hidden


def test_bad_sources(tmp_path):
    (tmp_path / "empty.pyth").write_bytes(b"")
    (tmp_path / "junk.pyth").write_bytes(os.urandom(1000))
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(1000))
    (tmp_path / "notes.pyth").write_text("hi\n")  # a text file: torch.load's own error is "KeyError: 105"
    (tmp_path / "folder").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    torch.save([1, 2, 3], tmp_path / "list.pth")
    cases = {
        "empty.pyth": "is empty",
        "junk.pyth": "not a (readable )?PyTorch checkpoint",
        "notes.pyth": "neither a zip archive nor a pickle",
        "junk.safetensors": "not a readable safetensors file",
        "folder": "without a config.json",
        "other": "neither a TimeSformer Lab nor a HuggingFace",
        "list.pth": "holds no state dict",
        "missing.pyth": "no such checkpoint",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / name)
    with pytest.raises(CheckpointError, match="unknown config fields: heads"):
        load_model(tmp_path / "empty.pyth", heads=3)
    assert issubclass(CheckpointError, ValueError)
    assert TimeSformerConfig  # the config type is what load_model returns inside the model


def test_transfer_to_another_scheme_starts_from_the_same_function():
    from timesformer import transfer

    model = small_model("space_only")
    video = torch.randn(1, 3, 4, 32, 32)
    for scheme in ("divided_space_time", "axial", "sparse_local_global"):
        new, copied, total = transfer(model, attention_type=scheme)
        assert new.config.attention_type == scheme and 0 < copied < total
        assert torch.equal(new.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)
    # divided → joint keeps the shared weights; the temporal ones are dropped
    divided = small_model("divided_space_time")
    joint, copied, total = transfer(divided, attention_type="joint_space_time")
    assert copied == total and torch.equal(joint.head.weight, divided.head.weight)
    same, copied, total = transfer(divided)  # no change: the same function
    assert copied == total
    with torch.no_grad():
        assert torch.equal(same(video), divided(video))


def test_saved_checkpoints_are_readable_by_others(tmp_path):
    path = save_model(small_model("axial"), tmp_path / "shared")
    assert path.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in path.iterdir())


def test_shipped_models_open_by_name(tmp_path, monkeypatch):
    """A name under assets/models/ opens that model; a path of the same name wins."""
    from timesformer import shipped

    monkeypatch.setattr(shipped, "MODELS", tmp_path / "models")
    assert shipped.models() == {}
    model = small_model("axial", num_classes=3)
    save_model(model, tmp_path / "models" / "tiny-axial")
    (tmp_path / "models" / "not-a-model").mkdir()
    assert list(shipped.models()) == ["tiny-axial"]
    loaded = load_model("tiny-axial")
    assert loaded.config.attention_type == "axial"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    monkeypatch.chdir(tmp_path)
    save_model(small_model("space_only"), tmp_path / "tiny-axial")  # a local folder of that name
    assert load_model("tiny-axial").config.attention_type == "space_only"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model("tiny-nothing")


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_export_to_huggingface_gives_our_logits_in_transformers(tmp_path, attention_type):
    """`tslab export --to huggingface`: the folder transformers' own TimesformerForVideoClassification loads, with
    our logits and class names; read back by load_model unchanged; an export replaced by the next one."""
    from timesformer.export import main

    model = small_model(attention_type, num_classes=5, class_names=LABELS)
    save_model(model, tmp_path / "ours")
    video = torch.randn(2, 3, model.config.num_frames, 32, 32)
    with torch.no_grad():
        expected = model.eval()(video)
    for _ in range(2):  # the second replaces the first
        assert main([str(tmp_path / "ours"), "--to", "huggingface", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    assert (hf_logits(hf, video) - expected).abs().max() <= 1e-4
    assert [hf.config.id2label[i] for i in range(5)] == LABELS and hf.config.attention_type == attention_type
    back = load_model(tmp_path / "hf")
    assert back.config.replace(drop_path_rate=0.0) == model.config.replace(drop_path_rate=0.0)
    with torch.no_grad():
        assert torch.equal(back(video), expected)


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    from timesformer.export import main

    save_model(small_model("axial"), tmp_path / "axial")
    assert main([str(tmp_path / "axial"), "--to", "huggingface", "--out", str(tmp_path / "hf")]) == 2
    assert "runs only divided_space_time and joint_space_time as the paper does, not axial" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()  # nothing half-written
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    assert main([str(tmp_path / "axial"), "--out", str(tmp_path / "notes")]) == 2
    assert "not a TimeSformer Lab checkpoint" in capsys.readouterr().err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_class_names_that_do_not_fit_the_head_are_an_error(tmp_path):
    """A config.json edited to 3 names for a 4-class head was loaded with the names '0'..'3' instead."""
    path = save_model(small_model("axial", num_classes=4, class_names=["a", "b", "c", "d"]), tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["config"]["class_names"] = ["a", "b", "c"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"^cannot build a config for {re.escape(str(path))}: 3 class names "
                                              r"given for num_classes=4$"):
        load_model(path)
    # another class count asked for (a new head): the file's names no longer apply and are dropped
    from timesformer.formats.common import make_config

    assert make_config({"num_classes": 4, "class_names": list("abcd")}, {"num_classes": 3}, "x").class_names is None
