"""TimeSformer Lab: the TimeSformer model with all five attention schemes of Bertasius et al. (2021)."""

from .attention import AttentionMap, attention_pattern, record_attention
from .checkpoints import CheckpointError, load_model, save_model, transfer
from .config import ATTENTION_TYPES, SCHEME_LABELS, TimeSformerConfig
from .model import TimeSformer, compile_model

__version__ = "0.2.0"

__all__ = [
    "ATTENTION_TYPES", "AttentionMap", "CheckpointError", "SCHEME_LABELS", "TimeSformer", "TimeSformerConfig",
    "attention_pattern", "compile_model", "load_model", "record_attention", "save_model", "transfer",
]
