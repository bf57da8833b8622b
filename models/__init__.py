"""Model code (installed as ``reasoning_rl.models``): shared layers, the decoder, family configs."""

from .config import TransformerConfig
from .transformer import KVCache, ModelDef, Transformer, create, positions_from_valid

__all__ = ["KVCache", "ModelDef", "Transformer", "TransformerConfig", "create", "positions_from_valid"]
