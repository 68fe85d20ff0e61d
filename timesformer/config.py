"""Model configuration: one dataclass, a reason beside each default, presets as named constructors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

# The five attention schemes of the paper (`attention_type`) and the names the paper gives them.
SCHEME_LABELS = {
    "space_only": "Space (S)",  # ViT per frame, per-frame cls tokens averaged at the end (official code)
    "joint_space_time": "Joint Space-Time (ST)",  # every token sees the whole clip
    "divided_space_time": "Divided Space-Time (T+S)",  # time step then space step (the paper's default)
    "sparse_local_global": "Sparse Local Global (L+G)",  # local F×H/2×W/2 window, then the clip at stride 2
    "axial": "Axial (T+W+H)",  # time, width, height
}
ATTENTION_TYPES = tuple(SCHEME_LABELS)


@dataclass
class TimeSformerConfig:
    img_size: int = 224  # crop side the position embeddings were learnt at (paper: 224)
    patch_size: int = 16  # ViT-B/16, the paper's backbone
    num_frames: int = 8  # paper default: 8 frames sampled 32 apart
    in_chans: int = 3  # RGB
    num_classes: int = 400  # Kinetics-400, the paper's main benchmark
    embed_dim: int = 768  # ViT-B width
    depth: int = 12  # ViT-B depth
    num_heads: int = 12  # ViT-B heads (head size 64, as every released model)
    mlp_ratio: float = 4.0  # ViT-B MLP width / embed width
    qkv_bias: bool = True  # official and ImageNet ViT weights have qkv biases
    attention_type: str = "divided_space_time"  # the paper's best trade-off (Table 1)
    drop_rate: float = 0.0  # dropout on embeddings and before the head (official default 0)
    attn_drop_rate: float = 0.0  # dropout on attention probabilities (official default 0)
    drop_path_rate: float = 0.1  # stochastic depth, linearly increasing with depth (official 0.1)
    norm_eps: float = 1e-6  # LayerNorm epsilon of the official code and HuggingFace
    # L+G: the local step attends within windows of ceil(H_p/local_split) × ceil(W_p/local_split)
    # patches over all frames (paper: F×H/2×W/2); the global step attends to the tokens that share
    # (t, h, w) mod global_stride (paper: stride 2 in time and both spatial dimensions).
    local_split: int = 2
    global_stride: int = 2
    # std of the time embedding at initialisation. The official code starts it at zero, which is fine
    # when fine-tuning from ImageNet weights; from scratch, frame order then never reaches the model on
    # temporal tasks (the loss stays at ln 2 on SynthMotion-like order tasks, docs/training.md), so the
    # small presets start it at 1.0.
    time_embed_std: float = 0.0
    # std of the position embedding at initialisation (a normal; official: 0.02). From scratch that
    # leaves where a patch is drowned by what it shows for hundreds of steps: on SynthMotion temporal, whose
    # class needs where *and* when, axial attention stood at 40% after 384 steps with 0.02 and at 96% with 1.0
    # (docs/results.md), so the small presets start it at 1.0, as the time embedding.
    pos_embed_std: float = 0.02
    class_names: list[str] | None = field(default=None)

    def __post_init__(self):
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"unknown attention_type {self.attention_type!r}; choose one of {', '.join(ATTENTION_TYPES)}"
            )
        positive = ("img_size", "patch_size", "num_frames", "in_chans", "num_classes", "embed_dim", "depth",
                    "num_heads", "local_split", "global_stride")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, low, high in (("drop_rate", 0, 1), ("attn_drop_rate", 0, 1), ("drop_path_rate", 0, 1),
                                ("mlp_ratio", 0, None), ("norm_eps", 0, None)):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < low or (high is not None and value >= high) or (high is None and value <= low):
                limits = f"at least {low} and below {high}" if high is not None else f"above {low}"
                raise ValueError(f"{name} must be a number {limits}, got {value!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
            if len(self.class_names) != self.num_classes:
                raise ValueError(
                    f"{len(self.class_names)} class names given for num_classes={self.num_classes}"
                )

    @property
    def grid(self) -> tuple[int, int, int]:
        """(T, H_p, W_p) of a clip of the configured size."""
        side = self.img_size // self.patch_size
        return self.num_frames, side, side

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def replace(self, **overrides) -> TimeSformerConfig:
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> TimeSformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TimeSformerConfig fields: {', '.join(unknown)}")
        return cls(**data)

    # Presets. Each takes keyword overrides, e.g. TimeSformerConfig.base(attention_type="axial").
    @classmethod
    def base(cls, **overrides) -> TimeSformerConfig:
        """TimeSformer: ViT-B/16, 8 frames of 224² (paper §4)."""
        return cls(**overrides)

    @classmethod
    def hr(cls, **overrides) -> TimeSformerConfig:
        """TimeSformer-HR: 16 frames of 448²."""
        return cls(**{"img_size": 448, "num_frames": 16, **overrides})

    @classmethod
    def large(cls, **overrides) -> TimeSformerConfig:
        """TimeSformer-L: 96 frames of 224²."""
        return cls(**{"num_frames": 96, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> TimeSformerConfig:
        """Trains from scratch on a 2-core CPU in minutes: 8 frames of 64², patch 8 (an 8×8 grid),
        width 128, 4 blocks of 4 heads; 0.8M parameters (space only, joint), 1.2M (divided, L+G), 1.5M
        (axial). The shipped default model is this preset at img_size=32 (a 4×4 grid), where SynthMotion's
        temporal task is learnt in a few minutes (docs/results.md)."""
        defaults = dict(img_size=64, patch_size=8, num_frames=8, embed_dim=128, depth=4, num_heads=4,
                        drop_path_rate=0.0, time_embed_std=1.0, pos_embed_std=1.0, num_classes=10)
        return cls(**{**defaults, **overrides})
