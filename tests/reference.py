"""An independent, deliberately naive forward pass for the tests.

It reads the model's parameters but none of its code paths: every scheme is written out as explicit
reshapes of a (B, T, H, W, D) patch tensor, in the style of the official code, with a plain softmax
attention. Local windows and stride-2 subsets are written for even sizes only. With `conservative=True` it
is the LRP graph of `analysis.lrp` written from the rules themselves (softmax and LayerNorm scale detached,
GELU by the identity rule), for `reference_relevance`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _attn(mod, x, heads, conservative=False):
    # x (S, L, D) → (S, L, D), plain softmax attention, then the output projection
    S, L, D = x.shape
    q, k, v = mod.qkv(x).reshape(S, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) * (D // heads) ** -0.5).softmax(-1)
    if conservative:
        a = a.detach()
    return mod.proj((a @ v).transpose(1, 2).reshape(S, L, D))


def _norm(mod, x, conservative=False):
    if not conservative:
        return mod(x)
    sd = (x.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt().detach()
    return (x - x.mean(-1, keepdim=True)) / sd * mod.weight + mod.bias


def _mlp(mod, x, conservative=False):
    h = mod.fc1(x)
    if conservative:  # identity rule: GELU(h) = h · (GELU(h)/h) with the ratio constant
        return mod.fc2(h * (F.gelu(h) / h).detach())
    return mod.fc2(F.gelu(h))


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
    return _forward(model, video)[0]


def reference_relevance(model, video, target):
    """(patch relevance (B, T, H, W), cls relevance (B,)) of class `target` (B,) by gradient × input at the
    embedded tokens of the conservative graph."""
    with torch.enable_grad():
        logits, x0, cls0 = _forward(model, video, conservative=True)
        gx, gc = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), [x0, cls0])
    return (x0 * gx).sum(-1).detach(), (cls0 * gc).sum((-1, -2)).detach()


def _forward(model, video, conservative=False):
    """(logits, embedded patches (B, T, H, W, D), embedded cls (B, C, D))."""
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
    if conservative:
        x, cls = x.detach().requires_grad_(), cls.detach().requires_grad_()
    x0, cls0 = x, cls
    for blk in model.blocks:
        for name, with_cls, prefix in STEPS[cfg.attention_type]:
            norm, attn = getattr(blk, prefix + "norm1"), getattr(blk, prefix + "attn")
            fc = getattr(blk, prefix + "fc", None)
            seq, inverse = _regroup(name, x)  # (B, G, L, D)
            G = seq.shape[1]
            if with_cls:
                c = cls if per_frame_cls else cls.expand(B, G, D)
                seq = torch.cat([c[:, :, None], seq], dim=2)
            out = _attn(attn, _norm(norm, seq.reshape(B * G, -1, D), conservative), heads, conservative)
            out = out.reshape(B, G, -1, D)
            if fc is not None:
                out = fc(out)
            if with_cls:
                c_out, out = out[:, :, 0], out[:, :, 1:]
                cls = cls + (c_out if per_frame_cls else c_out.mean(1, keepdim=True))
            x = x + inverse(out)
        tokens = torch.cat([cls, x.reshape(B, -1, D)], dim=1)
        tokens = tokens + _mlp(blk.mlp, _norm(blk.norm2, tokens, conservative), conservative)
        C = cls.shape[1]
        cls, x = tokens[:, :C], tokens[:, C:].reshape(B, T, H, W, D)
    return model.head(_norm(model.norm, cls.mean(1), conservative)), x0, cls0
