"""Checkpoints from elsewhere, on files the tests write: mmaction2 (against the official layout and against a
transcription of mmaction2's forward), image ViTs to start from (timm files, HuggingFace folders), other
frame counts and sizes for every format, and all of them through `tslab explain`."""

import io
import json
import logging
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_model import small_model
from timesformer import CheckpointError, load_model, save_model
from timesformer.checkpoints import IMAGE_FORMATS, read_checkpoint

transformers = pytest.importorskip("transformers")

LOGGER = "timesformer.checkpoints"
CLASSES = ["archery", "bowling", "cooking", "dancing", "eating"]


# --------------------------------------------------------------------------------------------------
# mmaction2


def mmaction_state(model) -> dict:
    """Our weights under mmaction2's names, written from its TimeSformer backbone (`patch_embed.projection`,
    `transformer_layers`), the divided steps (`attentions.0` time with `temporal_fc`, `attentions.1` space,
    `ffns.0.norm`), mmcv's layer for the others (`norms.0`/`norms.1`) and `cls_head.fc_cls`."""
    divided = model.config.attention_type == "divided_space_time"
    main, time_ = ("attentions.1.", "attentions.0.") if divided else ("attentions.0.", None)
    block = {
        "norm1.": main + "norm." if divided else "norms.0.", "norm2.": "ffns.0.norm." if divided else "norms.1.",
        "attn.qkv.weight": main + "attn.in_proj_weight", "attn.qkv.bias": main + "attn.in_proj_bias",
        "attn.proj.": main + "attn.out_proj.", "mlp.fc1.": "ffns.0.layers.0.0.", "mlp.fc2.": "ffns.0.layers.1.",
    }
    if time_:
        block.update({"temporal_norm1.": time_ + "norm.", "temporal_attn.qkv.weight": time_ + "attn.in_proj_weight",
                      "temporal_attn.qkv.bias": time_ + "attn.in_proj_bias",
                      "temporal_attn.proj.": time_ + "attn.out_proj.", "temporal_fc.": time_ + "temporal_fc."})
    out = {}
    for key, value in model.state_dict().items():
        if m := re.match(r"blocks\.(\d+)\.(.*)", key):
            part = next(p for p in block if m[2].startswith(p))
            out[f"backbone.transformer_layers.layers.{m[1]}.{block[part]}{m[2][len(part):]}"] = value
        elif key.startswith("head."):
            out["cls_head.fc_cls." + key[5:]] = value
        else:
            out["backbone." + key.replace("patch_embed.proj.", "patch_embed.projection.")] = value
    return out


def mmaction_forward(sd: dict, video: torch.Tensor, heads: int) -> torch.Tensor:
    """mmaction2's TimeSformer in eval mode, transcribed from `TimeSformer.forward`, the two Divided*Attention
    classes, mmcv's pre-norm `BaseTransformerLayer` and `TimeSformerHead`, with torch's multi-head attention
    on the mmaction2-named tensors (sequence first, as mmaction2 calls nn.MultiheadAttention)."""
    B, _, T, _, _ = video.shape
    w = sd["backbone.patch_embed.projection.weight"]
    D = w.shape[0]
    x = F.conv2d(video.transpose(1, 2).flatten(0, 1), w, sd["backbone.patch_embed.projection.bias"], stride=w.shape[-1])
    x = x.flatten(2).transpose(1, 2)  # (b t) p m
    x = torch.cat([sd["backbone.cls_token"].expand(B * T, -1, -1), x], 1) + sd["backbone.pos_embed"]
    has_time = "backbone.time_embed" in sd
    if has_time:
        cls, p = x[:B, :1], x.shape[1] - 1
        x = x[:, 1:].reshape(B, T, p, D).transpose(1, 2) + sd["backbone.time_embed"][:, None]  # (b p) t m
        x = torch.cat([cls, x.flatten(1, 2)], 1)  # b (p t) m

    def ln(y, name):
        return F.layer_norm(y, (D,), sd[name + "weight"], sd[name + "bias"], eps=1e-6)

    def mha(y, name):  # y: (L, S, D)
        return F.multi_head_attention_forward(
            y, y, y, D, heads, sd[name + "in_proj_weight"], sd[name + "in_proj_bias"], None, None, False, 0.0,
            sd[name + "out_proj.weight"], sd[name + "out_proj.bias"], training=False, need_weights=False)[0]

    def ffn(y, name):
        h = F.gelu(F.linear(y, sd[name + "layers.0.0.weight"], sd[name + "layers.0.0.bias"]))
        return F.linear(h, sd[name + "layers.1.weight"], sd[name + "layers.1.bias"])

    divided = any(".attentions.1." in k for k in sd)
    for i in range(1 + max(int(k.split(".")[3]) for k in sd if ".layers." in k and "transformer" in k)):
        L = f"backbone.transformer_layers.layers.{i}."
        if divided:
            cls, q = x[:, :1], x[:, 1:]
            p = q.shape[1] // T
            y = mha(ln(q.reshape(B * p, T, D), L + "attentions.0.norm.").permute(1, 0, 2), L + "attentions.0.attn.")
            y = F.linear(y.permute(1, 0, 2), sd[L + "attentions.0.temporal_fc.weight"],
                         sd[L + "attentions.0.temporal_fc.bias"])
            x = torch.cat([cls, q + y.reshape(B, p * T, D)], 1)
            cls, q = x[:, :1], x[:, 1:].reshape(B, p, T, D).transpose(1, 2).reshape(B * T, p, D)  # (b t) p m
            y = torch.cat([cls.repeat(1, T, 1).reshape(B * T, 1, D), q], 1)
            y = mha(ln(y, L + "attentions.1.norm.").permute(1, 0, 2), L + "attentions.1.attn.").permute(1, 0, 2)
            c = y[:, 0].reshape(B, T, D).mean(1, keepdim=True)
            y = y[:, 1:].reshape(B, T, p, D).transpose(1, 2).reshape(B, p * T, D)  # b (p t) m
            x = x + torch.cat([c, y], 1)
            x = x + ffn(ln(x, L + "ffns.0.norm."), L + "ffns.0.")
        else:
            x = x + mha(ln(x, L + "norms.0.").transpose(0, 1), L + "attentions.0.attn.").transpose(0, 1)
            x = x + ffn(ln(x, L + "norms.1."), L + "ffns.0.")
    if not has_time:
        x = x.view(-1, T, *x.shape[-2:]).mean(1)
    return F.linear(ln(x, "backbone.norm.")[:, 0], sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"])


@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only", "joint_space_time"])
def test_mmaction2_checkpoint_gives_the_official_and_mmaction2_logits(tmp_path, attention_type):
    model = small_model(attention_type)
    video = torch.randn(2, 3, 4, 32, 32)
    torch.save({"model_state": {"model." + k: v for k, v in model.state_dict().items()}}, tmp_path / "official.pyth")
    mm = mmaction_state(model)
    meta = {"epoch": 15, "best_score": np.float64(0.81), "dataset_meta": {"classes": CLASSES}, "seed": 0}
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.005, "params": [0]}]}
    torch.save({"meta": meta, "state_dict": mm, "optimizer": optimizer}, tmp_path / "mmaction2.pth")

    assert read_checkpoint(tmp_path / "mmaction2.pth").format == "mmaction2"
    official = load_model(tmp_path / "official.pyth", num_heads=4)
    loaded = load_model(tmp_path / "mmaction2.pth", num_heads=4)  # 8-channel heads: the shapes cannot tell
    assert loaded.config.replace(class_names=None) == official.config
    assert loaded.class_names == CLASSES  # from meta.dataset_meta
    with torch.no_grad():
        assert torch.equal(loaded(video), official(video))
        assert (loaded(video) - mmaction_forward(mm, video, heads=4)).abs().max() <= 1e-5


def test_mmaction2_pretrained_backbone_and_training_checkpoints_with_objects(tmp_path, monkeypatch):
    # mmaction2's ImageNet `pretrained` file: backbone names without the prefix, no head, no time embedding
    vit = small_model("space_only")
    backbone = {k.removeprefix("backbone."): v for k, v in mmaction_state(vit).items() if k.startswith("backbone.")}
    torch.save(backbone, tmp_path / "vit_base_patch16_224.pth")
    model = load_model(tmp_path / "vit_base_patch16_224.pth", attention_type="divided_space_time", num_heads=4)
    assert torch.equal(model.blocks[1].temporal_attn.qkv.weight, vit.blocks[1].attn.qkv.weight)

    # an mmengine training checkpoint keeps its logs as objects: refused, with the way out
    history = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __setstate__(self, state):
            (tmp_path / "EXECUTED").touch()

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = history.__name__, "HistoryBuffer"
    history.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):  # pickle imports the parents to find the class
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, history.__name__, history)
    torch.save({"meta": {}, "state_dict": mmaction_state(small_model("divided_space_time")),
                "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, tmp_path / "epoch_15.pth")
    with pytest.raises(CheckpointError, match=r"import mmengine\.logging\.history_buffer\.HistoryBuffer.*mmaction2 "
                                              r"training checkpoint.*\['state_dict'\]"):
        load_model(tmp_path / "epoch_15.pth")
    assert not (tmp_path / "EXECUTED").exists()


# --------------------------------------------------------------------------------------------------
# Image ViTs


def timm_state(folder, depth: int) -> dict:
    """A saved ViTForImageClassification's weights in timm's vit_base_patch16_224 layout (written from timm's
    module names: patch_embed.proj, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2})."""
    from safetensors.torch import load_file

    sd, out = load_file(str(folder / "model.safetensors")), {}  # the names transformers writes to disk
    out["cls_token"], out["pos_embed"] = sd["vit.embeddings.cls_token"], sd["vit.embeddings.position_embeddings"]
    for p in ("weight", "bias"):
        out[f"patch_embed.proj.{p}"] = sd[f"vit.embeddings.patch_embeddings.projection.{p}"]
        out[f"norm.{p}"], out[f"head.{p}"] = sd[f"vit.layernorm.{p}"], sd[f"classifier.{p}"]
        for i in range(depth):
            h = f"vit.encoder.layer.{i}."
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(
                [sd[f"{h}attention.attention.{n}.{p}"] for n in ("query", "key", "value")])
            for ours, theirs in (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"),
                                 ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                                 ("mlp.fc2", "output.dense")):
                out[f"blocks.{i}.{ours}.{p}"] = sd[f"{h}{theirs}.{p}"]
    return out


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A random ViTForImageClassification (5 classes, LayerNorm eps 1e-12) as a HuggingFace folder, a
    headless ViTModel folder, and its weights as timm files (.safetensors bare, .bin under `model`, .pth under
    `state_dict`); and its logits for two images."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("vit")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=1, intermediate_size=128, num_labels=5)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(d / "hf")
    model.vit.save_pretrained(d / "hf-backbone")
    transformers.ViTModel(cfg).save_pretrained(d / "hf-pooled")  # with the pooler a ViTModel has by default
    timm = timm_state(d / "hf", cfg.num_hidden_layers)
    save_file({k: v.contiguous() for k, v in timm.items()}, str(d / "vit.safetensors"))
    torch.save({"model": timm}, d / "pytorch_model.bin")
    torch.save({"state_dict": timm, "epoch": 300}, d / "vit.pth")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values=images).logits
    sources = {"folder": d / "hf", "safetensors": d / "vit.safetensors", "bin": d / "pytorch_model.bin",
               "pth": d / "vit.pth", "backbone": d / "hf-backbone", "pooled": d / "hf-pooled"}
    return sources, images, logits


@pytest.mark.parametrize("attention_type", ["space_only", "divided_space_time"])
@pytest.mark.parametrize("kind", ["folder", "safetensors", "bin", "pth"])
def test_image_vit_start_gives_the_vit_logits_on_a_still_clip(vit, kind, attention_type):
    sources, images, expected = vit
    assert read_checkpoint(sources[kind]).format in IMAGE_FORMATS
    eps = {} if kind == "folder" else {"norm_eps": 1e-12}  # a timm file does not say; this ViT was built with it
    model = load_model(sources[kind], attention_type=attention_type, num_frames=4, **eps)
    still = images[:, :, None].expand(-1, -1, 4, -1, -1)  # (B, 3, 4, 32, 32): every frame the same image
    with torch.no_grad():
        assert (model(still) - expected).abs().max() <= 1e-5
    if kind == "folder":
        assert model.config.norm_eps == 1e-12 and model.config.num_heads == 1 and len(model.class_names) == 5


@pytest.mark.parametrize("attention_type", ["joint_space_time", "sparse_local_global", "axial"])
def test_image_vit_start_of_the_other_schemes(vit, attention_type, caplog):
    sources, images, _ = vit
    caplog.set_level(logging.INFO, logger=LOGGER)
    model = load_model(sources["folder"], attention_type=attention_type)
    image = load_model(sources["folder"])  # no scheme asked for: the ViT on every frame
    assert image.config.attention_type == "space_only" and model.config.num_frames == 8
    assert torch.equal(model.time_embed, torch.zeros(1, 8, 64))
    for blk, ref in zip(model.blocks, image.blocks):
        for step in blk.steps:  # extra steps: copies of the image attention, output linear at zero
            norm, attn, fc = blk._parts(step)
            assert torch.equal(attn.qkv.weight, ref.attn.qkv.weight) and torch.equal(norm.weight, ref.norm1.weight)
            assert fc is None or (not fc.weight.any() and not fc.bias.any())
    assert f"an image model started as attention_type={attention_type}: " in caplog.text


def test_headless_vit_and_another_class_count_get_a_new_head(vit, caplog):
    sources, images, _ = vit
    caplog.set_level(logging.INFO, logger=LOGGER)
    backbone = load_model(sources["backbone"], attention_type="divided_space_time", num_frames=4, num_classes=3)
    assert backbone.config.num_classes == 3 and backbone.config.class_names is None
    assert "new head for 3 classes (the ViT had no head)" in caplog.text
    pooled = load_model(sources["pooled"])  # the pooler (dense + tanh on cls) feeds no classifier: dropped
    qkv = read_checkpoint(sources["pooled"]).state["blocks.0.attn.qkv.weight"]
    assert pooled.config.num_classes == 400 and torch.equal(pooled.blocks[0].attn.qkv.weight, qkv)
    tuned = load_model(sources["folder"], num_classes=7)
    assert tuned.config.num_classes == 7 and tuned.config.class_names is None
    assert "new head for 7 classes (the ViT had 5 classes)" in caplog.text
    with pytest.raises(CheckpointError, match="shape mismatch.*head.weight"):  # a video checkpoint keeps its head
        save_model(small_model("divided_space_time"), sources["folder"].parent / "ours")
        load_model(sources["folder"].parent / "ours", num_classes=7)


# --------------------------------------------------------------------------------------------------
# Other frame counts and sizes


def write_every_format(tmp_path) -> dict:
    """The same 4-frame 32² divided model as ours, official, mmaction2 and HuggingFace; and a timm ViT."""
    model = small_model("divided_space_time", num_heads=1, embed_dim=64)  # 64-channel heads, as released models
    paths = {"timesformer-lab": save_model(model, tmp_path / "ours")}
    torch.save({"model_state": {"model." + k: v for k, v in model.state_dict().items()}}, tmp_path / "official.pyth")
    torch.save({"meta": {}, "state_dict": mmaction_state(model)}, tmp_path / "mm.pth")
    from tests.test_checkpoints import hf_model

    hf_model("divided_space_time").save_pretrained(tmp_path / "hf")
    vit = small_model("space_only", num_heads=1, embed_dim=64)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    paths.update({"official": tmp_path / "official.pyth", "mmaction2": tmp_path / "mm.pth",
                  "huggingface": tmp_path / "hf", "timm-vit": tmp_path / "vit.pth"})
    return paths


def test_other_frame_counts_and_sizes_resize_the_embeddings(tmp_path, caplog):
    video = torch.randn(1, 3, 8, 64, 64)  # twice the frames and the side the checkpoints were made for
    for fmt, path in write_every_format(tmp_path).items():
        assert read_checkpoint(path).format == fmt
        scheme = {"attention_type": "divided_space_time"} if fmt == "timm-vit" else {}
        caplog.clear()
        small = load_model(path, **scheme)
        assert not caplog.records
        big = load_model(path, num_frames=8, img_size=64, **scheme)
        lines = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
        assert len(lines) == 1, fmt
        time_ = "" if fmt == "timm-vit" else "time_embed from 4 to 8 frames and "  # a ViT has none to resize
        assert f"resized {time_}pos_embed from 4×4 to 8×8 patches" in lines[0].message
        assert big.config.num_frames == 8 and big.config.img_size == 64 and big.time_embed.shape == (1, 8, 64)
        with torch.no_grad():  # what the model computes for clips of another size anyway
            assert torch.allclose(big(video), small(video), atol=1e-6)


def test_a_resize_does_not_hide_other_mismatches(tmp_path, caplog):
    path = write_every_format(tmp_path)["official"]
    with pytest.raises(CheckpointError) as e:
        load_model(path, num_frames=16, patch_size=4, img_size=32)
    assert "shape mismatch (file vs model): patch_embed.proj.weight (64, 3, 8, 8) vs (64, 3, 4, 4)" in str(e.value)
    assert "time_embed" not in str(e.value) and "pos_embed" not in str(e.value)  # those were resized
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight \(192, 64\) vs \(96, 32\)"):
        load_model(path, num_frames=8, embed_dim=32)  # a width cannot be interpolated
    assert not caplog.records  # and a load that fails reports no resize


# --------------------------------------------------------------------------------------------------
# The command line


def test_tslab_explain_opens_every_format_and_a_dropped_frame_avi(tmp_path, vit, capsys):
    from tests.test_video import dropped_frame_avi
    from timesformer.cli import main

    avi = dropped_frame_avi(tmp_path / "dropped.avi")
    checkpoints = [*write_every_format(tmp_path).values(), vit[0]["folder"], vit[0]["safetensors"]]
    for i, ckpt in enumerate(checkpoints):
        out = tmp_path / f"out{i}"
        assert main(["explain", str(avi), "--out", str(out), "--checkpoint", str(ckpt), "--crops", "1",
                     "--scale", "32"]) == 0, capsys.readouterr().err
        report = json.loads((out / "predictions.json").read_text())
        assert report["clip_info"]["num_frames"] == 68 and len(set(report["clip_info"]["indices"])) > 1
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"backbone.transformer_layers.layers.0.ffns.0.layers.1.weight": torch.zeros(2)}}, bad)
    assert main(["explain", str(avi), "--out", str(tmp_path / "x"), "--checkpoint", str(bad)]) == 2
    assert "error: not a TimeSformer or ViT state dict" in capsys.readouterr().err


def test_torch_files_may_hold_numpy_numbers_but_nothing_else(tmp_path):
    buf = io.BytesIO()
    torch.save({"model_state": {"model." + k: v for k, v in small_model("axial").state_dict().items()},
                "best": np.float64(0.5), "curve": np.arange(3)}, buf)
    (tmp_path / "np.pyth").write_bytes(buf.getvalue())
    assert load_model(tmp_path / "np.pyth", num_heads=4).config.attention_type == "axial"
