"""The sampler's log-probs equal the trainer's for the families added with gpt-oss (sinks and alternating
windows in the decode path, whole-projection q/k norms, post-norms, partial rotary with long-rope, gated shared
experts, dense layers between MoE ones) and after it (OLMo-3's sliding layers with their own rope, SmolLM3's
layers without rotary, EXAONE 4's rotary sliding and NoPE full layers, ERNIE 4.5's adjacent-pair rotary and
biased softmax routing, GLM-4.5's half-rotary heads with q/k biases and norms over DeepSeekMoE, Hunyuan's q/k
norms after the NTK-alpha rotary, Nemotron-H's mixer-only layers and ungated experts, LFM3's convolutions among
sliding and full layers with per-head output gates, Laguna's full layers of their own head count and rotary
dims beside sliding ones, softplus gates and soft-capped routing, Beam's depth-scaled residual adds, biased gates
and position-scaled queries of its layers without rotary, Lara Mini's Gated DeltaNet among sliding and NoPE
layers): hand-built tiny configs with random weights, no
transformers needed."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import prompts
from reasoning_rl.models import create
from test_hf_io import FAMILY_CONFIGS
from test_models_layers import random_params
from test_sampler import trainer_logprobs

from reasoning_rl.rollout import sampler as S


@pytest.mark.parametrize("name", ["gpt_oss", "olmo2", "phi3", "qwen2_moe", "qwen3_moe_dense", "glm4_moe", "olmo3",
                                  "smollm3", "exaone4", "ernie4_5_moe", "hunyuan", "granite", "glm4",
                                  "ministral3", "gemma2", "deepseek_v2", "olmoe", "gemma",
                                  "granite4_h_moe", "lfm2", "nemotron_h", "nemotron_h_moe",
                                  "nemotron_h_moe_latent", "mistral4", "cohere2", "lfm3", "laguna", "beam",
                                  "lara_mini", "kimi_linear", "granitemoeshared"])
def test_sampler_logprobs_equal_trainer_for_new_families(name):
    cfg = FAMILY_CONFIGS[name]
    if name == "phi3":  # 20 + 12 tokens cross long-rope's original length (16): both factor sets in play
        assert cfg.rope_scaling["original_max_position_embeddings"] == 16
    mdef, _ = create(cfg, abstract=True)
    params = random_params(mdef, 5)
    pt, pv = S.left_pad(prompts(3, lo=6, hi=20, vocab=cfg.vocab_size, seed=1), 0)
    out = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=12, group_size=2, stop_ids=(),
                                    temperature=1.0, rng_seed=3))
    lp = trainer_logprobs(mdef, params, pt, pv, out, 2, 1.0)
    assert out.mask.all()  # no stop ids: every row runs past gpt-oss's 4-slot window
    gap = np.abs(np.where(out.mask, lp - out.logprobs, 0.0)).max()
    assert gap < 1e-5, gap
