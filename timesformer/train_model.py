"""The model a training run starts from: a preset with the flags (`--attention`, `--num-frames`, `--img-size`,
`--patch-size`, and `--model KEY=VALUE` for any other `TimeSformerConfig` field), or the `--init` checkpoint (a
video model keeps its scheme; an image ViT takes `--attention`), with a head for the data's classes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from torch import nn

from timesformer import checkpoints
from timesformer.checkpoints import IMAGE_FORMATS, CheckpointError, from_checkpoint, read_checkpoint
from timesformer.config import TimeSformerConfig
from timesformer.model import TimeSformer

DEFAULT_ATTENTION = "divided_space_time"  # --attention where neither it nor --init says
# config fields that have a flag of their own (or come from the data): --model does not set them
OWN_FLAG = {"attention_type": "--attention", "num_frames": "--num-frames", "img_size": "--img-size",
            "patch_size": "--patch-size", "num_classes": "the data's classes", "class_names": "the data's classes"}


def parse_model_overrides(items: list[str]) -> dict:
    """`--model KEY=VALUE ...` as a dict of TimeSformerConfig fields (values read as YAML: 64, 0.1, true)."""
    import yaml

    fields = {f.name for f in dataclasses.fields(TimeSformerConfig)}
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--model expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k.strip() not in fields:
            raise SystemExit(f"--model {item}: TimeSformerConfig has no field {k.strip()!r}; its fields are "
                             f"{', '.join(sorted(fields))}")
        if k.strip() in OWN_FLAG:  # two places for one setting, and the data would follow the other one
            raise SystemExit(f"--model {item}: {k.strip()} is set by {OWN_FLAG[k.strip()]}, not --model")
        out[k.strip()] = yaml.safe_load(v)
    return out


def load_init(args, log) -> TimeSformer:
    """The `--init` checkpoint at --num-frames / --img-size where given (time and position embeddings
    resized); an image ViT also takes --attention (the paper's recipe: each extra step starts as a copy of the
    image attention with a zero output linear). A video checkpoint keeps its scheme."""
    try:
        checkpoint = read_checkpoint(args.init)
    except (CheckpointError, OSError) as e:
        raise SystemExit(f"--init: {e}") from None
    overrides = {name: getattr(args, name) for name in ("num_frames", "img_size") if getattr(args, name) is not None}
    if checkpoint.format in IMAGE_FORMATS:
        overrides["attention_type"] = args.attention = args.attention or DEFAULT_ATTENTION
        log(f"--init {args.init}: an image ViT ({checkpoint.format}) started as attention_type={args.attention}")
    with _notes_into(log):  # "resized time_embed from 4 to 8 frames ...": the run's log keeps it
        model = from_checkpoint(checkpoint, **overrides)
    if args.attention not in (None, model.config.attention_type):
        raise SystemExit(f"--attention {args.attention}: --init {args.init} has attention_type="
                         f"{model.config.attention_type}, which a video model keeps (an image ViT starts as any)")
    return model


@contextlib.contextmanager
def _notes_into(log):
    """What the checkpoint loader says (through `logging`: a resized embedding, an image model's start) goes to
    `log` alone, for the run's log.txt, instead of to stderr alone."""
    logger = logging.getLogger(checkpoints.__name__)
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: log(record.getMessage())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def build_model(args, classes: list[str], log, init: TimeSformer | None = None) -> TimeSformer:
    """A fresh model from `--preset` and the flags, or `init` (the `--init` checkpoint) with a new head when
    the classes differ."""
    overrides = parse_model_overrides(args.model)
    if init is not None:
        model, cfg = init, init.config
        if cfg.num_classes != len(classes) or (cfg.class_names or []) != list(classes):
            if cfg.num_classes != len(classes) or cfg.class_names:
                log(f"--init {args.init}: new head for the data's {len(classes)} classes (the checkpoint's "
                    f"{cfg.class_names or cfg.num_classes} differ)")
                model.head = nn.Linear(cfg.embed_dim, len(classes))
                nn.init.trunc_normal_(model.head.weight, std=0.02)
                nn.init.zeros_(model.head.bias)
            model.config = cfg.replace(num_classes=len(classes), class_names=list(classes))
        if overrides:
            log(f"--model {overrides} ignored: the architecture comes from --init")
        return model
    preset = getattr(TimeSformerConfig, args.preset)
    kw = dict(attention_type=args.attention or DEFAULT_ATTENTION, num_classes=len(classes), class_names=list(classes))
    for name in ("num_frames", "img_size", "patch_size"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    try:
        config = preset(**{**kw, **overrides})
    except ValueError as e:  # what the flags and --model ask for together, e.g. embed_dim=100 num_heads=3
        raise SystemExit(f"the model's configuration: {e}") from None
    return TimeSformer(config)
