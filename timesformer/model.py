"""TimeSformer: embeddings, blocks made of attention steps, and the classifier.

Module names follow the official code (`patch_embed.proj`, `pos_embed`, `time_embed`,
`blocks.i.norm1/attn/temporal_norm1/temporal_attn/temporal_fc/norm2/mlp`, `norm`, `head`), so an
official checkpoint maps onto this model by dropping its `model.` prefix.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SCHEMES, Grouping, attend, scheme_groupings
from .config import TimeSformerConfig


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole samples during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)  # scaled on the mask: one pass over x (and its gradient), not two

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """qkv + the attention core + output projection. `recorder` is set by `record_attention`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.recorder = None  # callable(grouping, probs) while recording, else None
        self._fused = None  # (key, weight, bias) of proj followed by a step's fc, for inference

    def forward(self, x: torch.Tensor, grouping: Grouping, then: nn.Linear | None = None,
                cls_only: bool = False) -> torch.Tensor:
        """x: the step's token groups (B, G, L, D). Attention output (B, G, L, D) projected by `proj`, or by
        `then ∘ proj` folded into one linear; with `cls_only`, for the cls queries alone, (B, G, D) (see
        `attend`)."""
        record = None if self.recorder is None else functools.partial(self.recorder, grouping)
        p = self.attn_drop if self.training else 0.0
        out = attend(self.qkv(x), grouping, self.num_heads, p, record, cls_only)
        if then is None:
            return self.proj(out)
        if torch.compiler.is_compiling():  # the cache below keys on version counters, which graphs cannot
            return then(self.proj(out))
        return F.linear(out, *self._folded(then))

    def _folded(self, fc: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """fc(proj(y)) = (W_fc·W_proj) y + (W_fc·b_proj + b_fc): one D×D product instead of two per token.

        Cached until a weight changes (in-place updates bump `_version`; new tensors change the pointer).
        """
        params = (self.proj.weight, self.proj.bias, fc.weight, fc.bias)
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in params)
        if self._fused is None or self._fused[0] != key:
            with torch.no_grad():
                self._fused = (key, fc.weight @ self.proj.weight, torch.addmv(fc.bias, fc.weight, self.proj.bias))
        return self._fused[1], self._fused[2]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm attention steps, each with its own residual, then the MLP.

    The scheme's steps come from `SCHEMES`; the block never branches on the attention type.
    """

    def __init__(self, cfg: TimeSformerConfig, drop_path: float):
        super().__init__()
        d = cfg.embed_dim
        self.steps = SCHEMES[cfg.attention_type].steps
        for step in self.steps:
            name = step.prefix + "_" if step.prefix else ""
            self.add_module(f"{name}norm1", nn.LayerNorm(d, eps=cfg.norm_eps))
            self.add_module(f"{name}attn", Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate))
            if step.prefix:
                self.add_module(f"{name}fc", nn.Linear(d, d))
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))

    def _parts(self, step):
        name = step.prefix + "_" if step.prefix else ""
        return getattr(self, f"{name}norm1"), getattr(self, f"{name}attn"), getattr(self, f"{name}fc", None)

    def step_attentions(self) -> list[Attention]:
        return [self._parts(step)[1] for step in self.steps]

    def forward(self, x: torch.Tensor, groupings: tuple[Grouping, ...], cls_only: bool = False) -> torch.Tensor:
        """x: (B, C + T·N, D), the first C tokens cls. With `cls_only` the last step and the MLP run for
        the cls tokens alone and (B, C, D) is returned (the last block of a classifier needs no more).

        Each step regroups the tokens, runs its norm, attention, projection (and fc) in group layout (all of
        them act token by token), and adds the result back to the residual; between steps cls and the
        patches are kept apart, so the sequence is concatenated once per block, for the MLP.
        """
        C = groupings[0].num_cls
        # `whole`: the sequence, while cls and patches are its views (split, not sliced: the backward then
        # writes their gradients into one tensor instead of zero-filling two and adding them)
        cls, patches = x.split([C, x.shape[1] - C], dim=1)
        whole = x
        last = len(self.steps) - 1
        for i, (step, grouping) in enumerate(zip(self.steps, groupings)):
            norm, attn, fc = self._parts(step)
            only = cls_only and i == last and step.with_cls and attn.recorder is None
            tokens = grouping.regroup(cls, patches, whole)  # (B, G, L, D)
            if fc is not None and not self.training and not torch.is_grad_enabled():
                y = attn(norm(tokens), grouping, then=fc, cls_only=only)  # inference: proj and fc folded
            else:
                y = self.drop_path(attn(norm(tokens), grouping, cls_only=only))
                if fc is not None:  # official order: drop_path, then temporal_fc
                    y = fc(y)
            if only:  # y: (B, G, D), the cls outputs (cls sliced from `whole` where the step used only that)
                cls = grouping.add_cls(whole[:, :C] if grouping.is_sequence(whole) else cls, y)
                return cls + self.drop_path(self.mlp(self.norm2(cls)))
            cls, patches, whole = grouping.add_back(cls, patches, y, whole)
        x = whole if whole is not None else torch.cat([cls, patches], dim=1)  # (B, C + T·N, D)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resize_positions(pos: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(1, gh·gw, D) patch position embeddings of a gh×gw grid → (1, H·W, D) for `size` = (H, W),
    interpolated in 2-D (nearest, as the official code); `checkpoints` resizes loaded weights the same way."""
    if tuple(size) == tuple(grid):
        return pos
    pos = pos.reshape(1, *grid, -1).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    return F.interpolate(pos, size=tuple(size), mode="nearest").flatten(2).transpose(1, 2)


def resize_times(time_embed: torch.Tensor, T: int) -> torch.Tensor:
    """(1, T0, D) time embeddings → (1, T, D), interpolated over frames (nearest, as the official code)."""
    if T == time_embed.shape[1]:
        return time_embed
    return F.interpolate(time_embed.transpose(1, 2), size=T, mode="nearest").transpose(1, 2)


class TimeSformer(nn.Module):
    """`TimeSformer(config)(video)`: video (B, 3, T, H, W) → logits (B, num_classes)."""

    def __init__(self, config: TimeSformerConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.embed_dim
        self.scheme = SCHEMES[cfg.attention_type]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cfg.in_chans, d, cfg.patch_size, cfg.patch_size)
        _, gh, gw = cfg.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + gh * gw, d))
        # space_only has no time embedding (official; also how load_model recognises it)
        self.time_embed = None if self.scheme.cls_per_frame else nn.Parameter(torch.zeros(1, cfg.num_frames, d))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear decay rule
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(d, cfg.num_classes)
        self.grad_checkpointing = False
        self.reset_parameters()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return self.head.weight.device

    def set_grad_checkpointing(self, enable: bool = True) -> TimeSformer:
        """Recompute each block in the backward pass instead of keeping its activations (training only)."""
        self.grad_checkpointing = enable
        return self

    def reset_parameters(self) -> None:
        """The official initialisation (timm ViT), with every extra step's fc zeroed."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        std = self.config.pos_embed_std  # cut at ±100 std: the official ±2 at std 0.02, in effect a normal
        nn.init.trunc_normal_(self.pos_embed, std=std, a=-100 * std, b=100 * std)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.time_embed is not None:
            nn.init.normal_(self.time_embed, std=self.config.time_embed_std)
        for blk in self.blocks:
            for step in blk.steps:
                fc = blk._parts(step)[2]
                if fc is not None:
                    # a fresh block behaves like the image ViT it may be initialised from (the official
                    # code skips block 0 here, an accident we do not copy)
                    nn.init.zeros_(fc.weight)
                    nn.init.zeros_(fc.bias)

    # ---------------------------------------------------------------------------------------------
    def grid_of(self, video: torch.Tensor) -> tuple[int, int, int]:
        """(T, H_p, W_p) of a (B, 3, T, H, W) clip, or a ValueError that says what to change."""
        cfg = self.config
        if not isinstance(video, torch.Tensor):  # a numpy array or list: name it, not a missing `.dim`
            numpy = type(video).__module__ == "numpy"
            raise ValueError(f"expected a video batch (B, {cfg.in_chans}, T, H, W) as a torch.Tensor, got a "
                             f"{'numpy.' * numpy}{type(video).__name__}: use "
                             f"torch.{'from_numpy' if numpy else 'as_tensor'}(video)")
        if video.dim() != 5:
            raise ValueError(f"expected a video batch (B, {cfg.in_chans}, T, H, W), got shape {tuple(video.shape)}")
        if not video.is_floating_point():  # raw frames: uint8 pixels, not the normalised clip the model takes
            raise ValueError(f"expected a float video, normalised as timesformer.video.read_clip gives it; got "
                             f"{video.dtype} (raw frames? normalise them with timesformer.video.transform_frames)")
        B, C, T, H, W = video.shape
        if C != cfg.in_chans:
            hint = ""
            if T == cfg.in_chans:
                hint = " — it looks like (B, T, C, H, W): use video.permute(0, 2, 1, 3, 4)"
            raise ValueError(f"expected {cfg.in_chans} channels in dim 1 of {tuple(video.shape)}{hint}")
        P = cfg.patch_size
        if H % P or W % P:
            raise ValueError(
                f"frame size {H}×{W} is not a multiple of the patch size {P}: resize or crop to a multiple of {P}"
            )
        if T < 1 or H < P or W < P:
            raise ValueError(f"empty clip of shape {tuple(video.shape)}")
        if B < 1:
            raise ValueError(f"empty batch: a video batch of shape {tuple(video.shape)} holds no clip")
        return T, H // P, W // P

    def _pos_embed(self, H: int, W: int) -> torch.Tensor:
        """(1, H·W, D) patch position embeddings for an H×W patch grid."""
        return resize_positions(self.pos_embed[:, 1:], self.config.grid[1:], (H, W))

    def _time_embed(self, T: int) -> torch.Tensor:
        """(1, T, D) time embeddings for T frames."""
        return resize_times(self.time_embed, T)

    def embed(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Tokens (B, C + T·N, D) in frame-major order, and the grid (T, H_p, W_p)."""
        T, H, W = grid = self.grid_of(video)
        B = video.shape[0]
        # in the weights' dtype: a float64 or half clip into a float32 model (or a float32 clip into a bf16 one)
        # would stop conv2d; under autocast the conv then casts to the autocast dtype as before
        video = video.to(self.patch_embed.proj.weight.dtype)
        frames = video.transpose(1, 2).reshape(B * T, *video.shape[1:2], *video.shape[3:])  # (B·T, 3, H, W)
        x = self.patch_embed.proj(frames).flatten(2).transpose(1, 2)  # (B·T, N, D)
        x = x + self._pos_embed(H, W)
        x = x.reshape(B, T, H * W, -1)  # (B, T, N, D)
        if self.time_embed is not None:
            x = x + self._time_embed(T)[:, :, None]
        x = x.flatten(1, 2)  # (B, T·N, D)
        num_cls = T if self.scheme.cls_per_frame else 1
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, num_cls, -1)
        return self.pos_drop(torch.cat([cls, x], dim=1)), grid

    # built eagerly and cached: torch.compile would otherwise trace into the construction (torch.unique has
    # a data-dependent shape) on every new grid; the compiled graph then reads the groupings' ints as constants
    @torch.compiler.disable
    def groupings(self, grid: tuple[int, int, int], device) -> tuple[Grouping, ...]:
        cfg = self.config
        return scheme_groupings(cfg.attention_type, grid, str(device), cfg.local_split, cfg.global_stride)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, 1 + T·N, D): cls at 0, then the patches frame-major.

        space_only's per-frame cls tokens are averaged into one before the final norm, as the official
        code averages its per-frame outputs.
        """
        return self._features(video)

    def _features(self, video: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        # first: under torch.compile the graph break at `groupings` then splits no computation
        groupings = self.groupings(self.grid_of(video), video.device)
        x, _ = self.embed(video)
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            only = cls_only and i == last
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, groupings, only, use_reentrant=False)
            else:
                x = blk(x, groupings, only)
        num_cls = groupings[0].num_cls
        if num_cls > 1:
            x = torch.cat([x[:, :num_cls].mean(1, keepdim=True), x[:, num_cls:]], dim=1)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, num_classes) from forward_features' tokens (or the pooled cls with pre_logits)."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # the head reads cls alone, so the last block's final step and MLP run for cls only (the
        # patches' keys and values still come from every token); forward_features gives all tokens
        return self.forward_head(self._features(video, cls_only=True))

    @property
    def class_names(self) -> list[str]:
        names = self.config.class_names
        return list(names) if names else [str(i) for i in range(self.config.num_classes)]


def compile_model(module: nn.Module, mode: str | None = None) -> nn.Module:
    """`torch.compile(module, mode=mode)` (inductor), the one way this project compiles a model; `mode` is one
    of torch.compile's ("reduce-overhead": CUDA graphs; "max-autotune-no-cudagraphs"; None: the default).

    Inductor's coalescing-tiling analysis is switched off: on CUDA it fails with a bare AssertionError
    ("not expr.has(ModularIndexing)") on the nested index expressions of the permuted regroupings, which kills
    the whole compile (seen with torch 2.11 on an H200; pytorch/pytorch#191603). It only chooses a tiling
    heuristic, so the compiled code computes the same either way.
    """
    import torch._inductor
    from torch._inductor import config

    modes = torch._inductor.list_mode_options()
    if mode is not None and mode not in modes:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(modes)}")
    options = dict(modes.get(mode or "default", {}))  # torch.compile takes a mode or options, not both
    if hasattr(config.triton, "coalesce_tiling_analysis"):
        options["triton.coalesce_tiling_analysis"] = False
    return torch.compile(module, options=options or None)
