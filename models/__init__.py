"""Model code (installed as ``reasoning_rl.models``): shared layers, the decoder, family configs, and
Hugging Face checkpoint loading/saving."""

from .config import MLAConfig, MoEConfig, TransformerConfig
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
from .reward import RewardDef, RewardModel, load_reward_model, save_reward_model
from .transformer import KVCache, ModelDef, Transformer, create, positions_from_valid

__all__ = [
                 "CheckpointError",
                 "ConfigError",
                 "KVCache",
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
                 "load_params",
                 "load_pretrained",
                 "load_reward_model",
                 "positions_from_valid",
                 "save_pretrained",
                 "save_reward_model",
]
