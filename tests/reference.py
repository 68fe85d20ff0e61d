"""An independent, deliberately naive forward pass for the tests.

It reads the model's parameters but none of its code paths: every scheme is written out as explicit
reshapes of a (B, T, H, W, D) patch tensor, in the style of the official code, with a plain softmax
attention. Local windows and stride-2 subsets are written for even sizes only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _attn(mod, x, heads):
    # x (S, L, D) → (S, L, D), plain softmax attention, then the output projection
    S, L, D = x.shape
    q, k, v = mod.qkv(x).reshape(S, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) * (D // heads) ** -0.5).softmax(-1)
    return mod.proj((a @ v).transpose(1, 2).reshape(S, L, D))


def _regroup(name, x5):
    """(B, T, H, W, D) → (B, G, L, D) sequences of the step, and the inverse."""
    B, T, H, W, D = x5.shape
    if name == "space":
        return x5.reshape(B, T, H * W, D), lambda y: y.reshape(B, T, H, W, D)
    if name == "time":
        fwd = x5.permute(0, 2, 3, 1, 4).reshape(B, H * W, T, D)
        return fwd, lambda y: y.reshape(B, H, W, T, D).permute(0, 3, 1, 2, 4)
    if name == "joint":
        return x5.reshape(B, 1, T * H * W, D), lambda y: y.reshape(B, T, H, W, D)
    if name == "width":
        return x5.reshape(B, T * H, W, D), lambda y: y.reshape(B, T, H, W, D)
    if name == "height":
        fwd = x5.permute(0, 1, 3, 2, 4).reshape(B, T * W, H, D)
        return fwd, lambda y: y.reshape(B, T, W, H, D).permute(0, 1, 3, 2, 4)
    if name == "local":  # 2×2 windows of H/2 × W/2 over all frames
        fwd = x5.reshape(B, T, 2, H // 2, 2, W // 2, D).permute(0, 2, 4, 1, 3, 5, 6).reshape(B, 4, -1, D)
        inv = lambda y: y.reshape(B, 2, 2, T, H // 2, W // 2, D).permute(0, 3, 1, 4, 2, 5, 6).reshape(B, T, H, W, D)
        return fwd, inv
    if name == "global":  # stride 2 in t, h, w: 8 subsets selected by parity
        fwd = x5.reshape(B, T // 2, 2, H // 2, 2, W // 2, 2, D).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, 8, -1, D)
        inv = lambda y: (
            y.reshape(B, 2, 2, 2, T // 2, H // 2, W // 2, D).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(B, T, H, W, D)
        )
        return fwd, inv
    raise KeyError(name)


STEPS = {
    "space_only": [("space", True, "")],
    "joint_space_time": [("joint", True, "")],
    "divided_space_time": [("time", False, "temporal_"), ("space", True, "")],
    "sparse_local_global": [("local", True, "local_"), ("global", True, "")],
    "axial": [("time", False, "temporal_"), ("width", True, "width_"), ("height", True, "")],
}


@torch.no_grad()
def reference_logits(model, video):
    cfg = model.config
    B, _, T, Hpx, Wpx = video.shape
    P, D, heads = cfg.patch_size, cfg.embed_dim, cfg.num_heads
    H, W = Hpx // P, Wpx // P
    x = F.conv2d(video.permute(0, 2, 1, 3, 4).reshape(B * T, 3, Hpx, Wpx), model.patch_embed.proj.weight,
                 model.patch_embed.proj.bias, stride=P)  # (B·T, D, H, W)
    g = cfg.img_size // P
    pos = model.pos_embed[0, 1:].reshape(g, g, D).permute(2, 0, 1)[None]
    pos = F.interpolate(pos, size=(H, W), mode="nearest")[0]  # (D, H, W)
    x = (x + pos).reshape(B, T, D, H, W).permute(0, 1, 3, 4, 2)  # (B, T, H, W, D)
    per_frame_cls = cfg.attention_type == "space_only"
    if not per_frame_cls:
        te = F.interpolate(model.time_embed.transpose(1, 2), size=T, mode="nearest")[0].T  # (T, D)
        x = x + te[None, :, None, None]
    cls = (model.cls_token[0, 0] + model.pos_embed[0, 0]).expand(B, T if per_frame_cls else 1, D)
    for blk in model.blocks:
        for name, with_cls, prefix in STEPS[cfg.attention_type]:
            norm, attn = getattr(blk, prefix + "norm1"), getattr(blk, prefix + "attn")
            fc = getattr(blk, prefix + "fc", None)
            seq, inverse = _regroup(name, x)  # (B, G, L, D)
            G = seq.shape[1]
            if with_cls:
                c = cls if per_frame_cls else cls.expand(B, G, D)
                seq = torch.cat([c[:, :, None], seq], dim=2)
            out = _attn(attn, norm(seq.reshape(B * G, -1, D)), heads).reshape(B, G, -1, D)
            if fc is not None:
                out = fc(out)
            if with_cls:
                c_out, out = out[:, :, 0], out[:, :, 1:]
                cls = cls + (c_out if per_frame_cls else c_out.mean(1, keepdim=True))
            x = x + inverse(out)
        tokens = torch.cat([cls, x.reshape(B, -1, D)], dim=1)
        tokens = tokens + blk.mlp(blk.norm2(tokens))
        C = cls.shape[1]
        cls, x = tokens[:, :C], tokens[:, C:].reshape(B, T, H, W, D)
    return model.head(model.norm(cls.mean(1)))
