"""Model code (installed as ``reasoning_rl.models``): shared layers, the decoder, family configs, and
Hugging Face checkpoint loading/saving."""

from . import lora
from .config import LinearAttnConfig, LoRAConfig, MLAConfig, MoEConfig, TransformerConfig
from .hf import (
                 CheckpointError,
                 ConfigError,
                 ModelDirError,
                 PretrainedModel,
                 check_model_dir,
                 config_from_hf,
                 load_params,
                 load_pretrained,
                 save_pretrained,
)
from .lora import load_adapter, save_lora
from .reward import RewardDef, RewardModel, load_reward_model, save_reward_model
from .transformer import KVCache, ModelDef, Transformer, create, positions_from_valid

__all__ = [
                 "CheckpointError",
                 "ConfigError",
                 "KVCache",
                 "LinearAttnConfig",
                 "LoRAConfig",
                 "MLAConfig",
                 "MoEConfig",
                 "ModelDef",
                 "ModelDirError",
                 "PretrainedModel",
                 "RewardDef",
                 "RewardModel",
                 "Transformer",
                 "TransformerConfig",
                 "check_model_dir",
                 "config_from_hf",
                 "create",
                 "load_adapter",
                 "load_params",
                 "load_pretrained",
                 "load_reward_model",
                 "lora",
                 "positions_from_valid",
                 "save_lora",
                 "save_pretrained",
                 "save_reward_model",
]
