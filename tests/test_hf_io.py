"""Checkpoint reading and writing without transformers: format round trips, sharded files, the fused-experts
layout, bf16, and the errors a mismatched checkpoint must raise."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from reasoning_rl.models import (
    CheckpointError,
    ConfigError,
    LinearAttnConfig,
    MLAConfig,
    MoEConfig,
    TransformerConfig,
    config_from_hf,
    create,
    load_params,
    load_pretrained,
    save_pretrained,
)
from reasoning_rl.models.hf import hf_config
from reasoning_rl.models.safetensors_io import Checkpoint, SafetensorsFile, write_file

sys.path.insert(0, str(Path(__file__).parent))
from test_models_layers import random_params

BASE = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 12,
        "ffn_dim": 40, "tie_embeddings": False}
FAMILY_CONFIGS = {
    "qwen2": TransformerConfig(**{**BASE, "tie_embeddings": True}, family="qwen2"),  # biases saved as zeros
    "llama": TransformerConfig(**BASE, family="llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "qwen3": TransformerConfig(**BASE, family="qwen3", qk_norm=True),
    "gemma3": TransformerConfig(**{**BASE, "tie_embeddings": True}, family="gemma3", norm_offset=1.0,
                                embed_scale=True, activation="gelu_tanh", sandwich_norm=True, qk_norm=True,
                                query_scale=0.25, sliding_window=4, layer_types=("sliding", "full"),
                                rope_local_theta=10000.0, rope_theta=1e6),
    "gemma": TransformerConfig(**{**BASE, "tie_embeddings": True}, family="gemma", norm_offset=1.0, embed_scale=True,
                               activation="gelu_tanh"),
    "gemma2": TransformerConfig(**{**BASE, "n_layers": 3, "tie_embeddings": True}, family="gemma2", norm_offset=1.0,
                                embed_scale=True, activation="gelu_tanh", sandwich_norm=True, query_scale=0.2,
                                attn_softcap=3.0, final_softcap=4.0, sliding_window=4,
                                layer_types=("sliding", "full", "sliding")),
    "qwen3_moe": TransformerConfig(**BASE, family="qwen3_moe", qk_norm=True,
                                   moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.001)),
    "mixtral": TransformerConfig(**BASE, family="mixtral", moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=40)),
    "deepseek_v3": TransformerConfig(
        **{**BASE, "n_layers": 3, "n_kv_heads": 4, "head_dim": 12}, family="deepseek_v3",
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
        moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, score="sigmoid", scaling=2.5,
                      n_group=4, topk_group=2, score_bias=True)),
    # dense layers between MoE ones (Qwen mlp_only_layers): stacks that are not contiguous runs of layers
    "qwen3_moe_dense": TransformerConfig(**{**BASE, "n_layers": 4}, family="qwen3_moe", qk_norm=True,
                                         moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.001,
                                                       dense_layers=(0, 2))),
    "qwen2_moe": TransformerConfig(**{**BASE, "n_layers": 3}, family="qwen2_moe", qkv_bias=True,
                                   moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.001,
                                                 dense_layers=(1,), n_shared=1, shared_ffn=24, shared_gate=True)),
    "olmo2": TransformerConfig(**BASE, family="olmo2", qk_norm=True, qk_norm_whole=True, pre_norm=False,
                               sandwich_norm=True),
    "phi3": TransformerConfig(**{**BASE, "head_dim": 8}, family="phi3", sliding_window=5, rope_dim=6, rope_scaling={
        "rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2], "long_factor": [1.0, 2.0, 3.0],
        "original_max_position_embeddings": 16, "factor": 4.0}),
    "gpt_oss": TransformerConfig(**{**BASE, "ffn_dim": 16}, family="gpt_oss", qkv_bias=True, out_bias=True, attn_sinks=True,
                                 activation="clamped_swiglu", sliding_window=4, layer_types=("sliding", "full"),
                                 moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.001,
                                               router_bias=True, expert_bias=True)),
    "olmo3": TransformerConfig(**{**BASE, "n_layers": 4}, family="olmo3", qk_norm=True, qk_norm_whole=True,
                               pre_norm=False, sandwich_norm=True, sliding_window=4, rope_theta=5e5,
                               layer_types=("sliding", "sliding", "sliding", "full"), rope_local_theta=1e4,
                               rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                             "beta_fast": 32.0, "beta_slow": 1.0}),
    "seed_oss": TransformerConfig(**BASE, family="seed_oss", qkv_bias=True, out_bias=True, rope_theta=1e7),
    "granite": TransformerConfig(**BASE, family="granite", qkv_bias=True, out_bias=True, embed_multiplier=12.0,
                                 residual_multiplier=0.22, query_scale=0.3, logits_scaling=8.0),
    # AFM: an ungated squared-ReLU MLP, YaRN
    "arcee": TransformerConfig(**BASE, family="arcee", activation="relu2", norm_eps=1e-5,
                               rope_scaling={"rope_type": "yarn", "factor": 20.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                             "mscale": 1.0, "original_max_position_embeddings": 16}),
    # Helium: heads spanning d_model (4 x 8 = 32: its o_proj maps hidden -> hidden), q/k/v biases, rotary on
    # adjacent pairs at base 1e5
    "helium": TransformerConfig(**{**BASE, "head_dim": 8}, family="helium", qkv_bias=True, rope_interleave=True,
                                rope_theta=1e5, norm_eps=1e-8),
    # Mellum: q/k norms, sliding layers around a full one with a rope base per kind, a dense layer among MoE ones
    "mellum": TransformerConfig(**{**BASE, "n_layers": 4}, family="mellum", qk_norm=True, rope_theta=5e5,
                                rope_local_theta=1e4, sliding_window=4,
                                layer_types=("sliding", "full", "sliding", "sliding"),
                                moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.001,
                                              dense_layers=(2,))),
    # then biases on all four projections, YaRN on every layer (the sliding ones rotating as the full ones), a
    # leading dense layer, top-k not renormalised, tied embeddings
    "mellum_bias": TransformerConfig(**{**BASE, "n_layers": 3, "tie_embeddings": True}, family="mellum",
                                     qk_norm=True, qkv_bias=True, out_bias=True, sliding_window=5,
                                     rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 16, "beta_fast": 32.0,
                                                   "beta_slow": 1.0},
                                     layer_types=("full", "sliding", "full"),
                                     moe=MoEConfig(n_experts=4, top_k=3, ffn_dim=8, first_dense=1, norm_topk=False,
                                                   aux_loss_coef=0.01)),
    # Kolibri-1: EXAONE 4.0's attention in sandwich-normed layers, experts chosen on the logits plus a bias, a shared
    # expert always on
    "kolibri1": TransformerConfig(**{**BASE, "n_layers": 3, "ffn_dim": 16}, family="kolibri1", qk_norm=True,
                                  sandwich_norm=True,
                                  sliding_window=4, layer_types=("sliding", "sliding", "full"), nope_layers=(2,),
                                  moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1, shared_ffn=24,
                                                score="sigmoid", norm_topk=False, score_bias=True,
                                                bias_on_logits=True)),
    # Flint: sliding rotary layers and full NoPE ones, sinks, sigmoid routing beside an ungated shared expert,
    # a dense layer
    "flint": TransformerConfig(**{**BASE, "n_layers": 4}, family="flint", qk_norm=True, attn_sinks=True,
                               sliding_window=4, layer_types=("full", "sliding", "sliding", "full"),
                               nope_layers=(0, 3),
                               moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1, shared_ffn=24,
                                             score="sigmoid", dense_layers=(1,))),
    # then every layer full (and so NoPE), biases on all four projections, top-k not renormalised, a leading dense
    # layer, tied embeddings
    "flint_bias": TransformerConfig(**{**BASE, "n_layers": 3, "tie_embeddings": True}, family="flint", qk_norm=True,
                                    qkv_bias=True, out_bias=True, attn_sinks=True, nope_layers=(0, 1, 2),
                                    moe=MoEConfig(n_experts=4, top_k=3, ffn_dim=8, n_shared=1, shared_ffn=8,
                                                  score="sigmoid", norm_topk=False, dense_layers=(0,))),
    # Granite SWA-MoE: Granite SWA's sinks and layer kinds, softmax-routed experts beside a shared MLP
    "granitemoe_swa": TransformerConfig(**{**BASE, "n_layers": 4, "ffn_dim": 16}, family="granitemoe_swa",
                                        embed_multiplier=2.0, residual_multiplier=0.5, query_scale=0.2,
                                        logits_scaling=3.0, attn_sinks=True, sliding_window=4,
                                        layer_types=("full", "sliding", "sliding", "full"), rope_local_theta=100.0,
                                        nope_layers=(2,), moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16,
                                                                        n_shared=1, shared_ffn=24,
                                                                        aux_loss_coef=0.001)),
    # Gemma 4 unified: Gemma 4's dense layers (wider full heads, k = v, proportional rope), no per-layer inputs
    "gemma4_unified": TransformerConfig(
        **{**BASE, "n_layers": 3, "head_dim": 8, "tie_embeddings": True}, family="gemma4_unified", embed_scale=True,
        activation="gelu_tanh", query_scale=1.0, sandwich_norm=True, qk_norm=True, final_softcap=30.0,
        sliding_window=4, layer_types=("sliding", "full", "full"), rope_theta=1e6, rope_local_theta=1e4,
        rope_scaling={"rope_type": "proportional", "partial_rotary_factor": 0.25}, v_norm=True, layer_scalar=True,
        full_head_dim=16, full_kv_heads=1, full_k_eq_v=True),
    # Cohere Compass: Cohere 2's parallel layers with the half-split rotary on the sliding layers only
    "cohere_compass": TransformerConfig(**{**BASE, "n_layers": 4}, family="cohere_compass",
                                        norm_eps=1e-5, qkv_bias=True, out_bias=True, norm_center=True,
                                        parallel_block=True, logits_multiplier=0.0625, sliding_window=4,
                                        layer_types=("sliding",) * 3 + ("full",), nope_layers=(3,),
                                        rope_theta=1e4),
    # Jais-2: LayerNorms with biases, biases on every attention and MLP projection, squared ReLU
    "jais2": TransformerConfig(**BASE, family="jais2", activation="relu2", norm_center=True, norm_bias=True,
                               mlp_bias=True, qkv_bias=True, out_bias=True, norm_eps=1e-5),
    # Nemotron-4 / Minitron: Jais-2's layers with LayerNorm1P (1 + w) and a quarter of each head rotating
    "nemotron": TransformerConfig(**{**BASE, "head_dim": 16}, family="nemotron", activation="relu2",
                                  norm_center=True, norm_bias=True, norm_offset=1.0, norm_eps=1e-5, rope_dim=4),
    # OLMo (1): LayerNorms without scale or bias, q/k/v clamped
    "olmo": TransformerConfig(**BASE, family="olmo", norm_center=True, norm_weight=False, norm_eps=1e-5,
                              clip_qkv=0.05),
    # StableLM 2: LayerNorms with biases, q/k/v biases, attention and MLP side by side, a quarter rotating
    "stablelm": TransformerConfig(**{**BASE, "head_dim": 8}, family="stablelm", norm_center=True, norm_bias=True,
                                  norm_eps=1e-5, qkv_bias=True, parallel_block=True, rope_dim=2),
    # nanochat: weightless norms, the embeddings normed first, q/k normed after a reversed rotary, squared ReLU
    "nanochat": TransformerConfig(**BASE, family="nanochat", qk_norm=True, qk_norm_after_rope=True, activation="relu2",
                                  final_softcap=15.0, norm_weight=False, embed_norm=True, rope_reverse=True),
    # Granite SWA: sliding layers with sinks in every layer, a rope base per kind, a layer without rotary
    "granite_swa": TransformerConfig(**{**BASE, "n_layers": 4}, family="granite_swa", embed_multiplier=2.0,
                                     residual_multiplier=0.5, query_scale=0.2, logits_scaling=3.0, attn_sinks=True,
                                     sliding_window=4, layer_types=("full", "sliding", "sliding", "full"),
                                     rope_local_theta=100.0, nope_layers=(2,), norm_eps=1e-5),
    # HyperCLOVA X SEED: Granite's muP scalars, each sub-layer's output normed, the logits multiplied
    "hyperclovax": TransformerConfig(**BASE, family="hyperclovax", qkv_bias=True, out_bias=True, embed_multiplier=3.0,
                                     residual_multiplier=0.4, query_scale=0.2, logits_multiplier=0.7,
                                     sandwich_norm=True),
    # Granite 4.0-H: Mamba-2 layers (two groups, a conv bias) around attention layers without rotary embeddings
    "granite4_h": TransformerConfig(**{**BASE, "n_layers": 3}, family="granite", embed_multiplier=12.0,
                                    residual_multiplier=0.22, query_scale=0.3, logits_scaling=2.0, nope_layers=(1,),
                                    linear=LinearAttnConfig(layers=(0, 2), k_heads=2, v_heads=4, k_dim=8, v_dim=16,
                                                            kind="mamba2", conv_bias=True)),
    # Granite 4.0-H-Tiny's shape: routed experts and the shared MLP in every layer, Mamba-2 and rotary attention
    "granite4_h_moe": TransformerConfig(**{**BASE, "ffn_dim": 24}, family="granite", residual_multiplier=0.5,
                                        query_scale=0.25,
                                        moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1, shared_ffn=24,
                                                      aux_loss_coef=0.01),
                                        linear=LinearAttnConfig(layers=(0,), k_heads=1, v_heads=4, k_dim=8, v_dim=16,
                                                                kind="mamba2", conv_bias=True)),
    # LFM2: gated short convolutions around a q/k-normed attention layer, tied embeddings
    "lfm2": TransformerConfig(**{**BASE, "n_layers": 3, "tie_embeddings": True}, family="lfm2", qk_norm=True,
                              norm_eps=1e-5, linear=LinearAttnConfig(layers=(0, 2), k_heads=0, v_heads=1, k_dim=0,
                                                                     v_dim=32, conv=3, kind="shortconv")),
    # LFM3: short convolutions among sliding and full attention layers with a rope of each kind (proportional on the
    # full ones), per-head output gates, the mixers' and MLPs' outputs normed
    "lfm3": TransformerConfig(**{**BASE, "n_layers": 4, "tie_embeddings": True}, family="lfm3", qk_norm=True,
                              norm_eps=1e-5, sliding_window=4, layer_types=("full", "sliding", "full", "full"),
                              rope_theta=1e6, rope_local_theta=1e4, sandwich_norm=True, head_gate=True,
                              rope_scaling={"rope_type": "proportional", "partial_rotary_factor": 0.5},
                              linear=LinearAttnConfig(layers=(0, 3), k_heads=0, v_heads=1, k_dim=0, v_dim=32, conv=3,
                                                      kind="shortconv")),
    # then without the gates and the output norms, with attention biases, every attention layer full, untied
    "lfm3_plain": TransformerConfig(**{**BASE, "n_layers": 3}, family="lfm3", qk_norm=True, norm_eps=1e-5,
                                    qkv_bias=True, out_bias=True, rope_theta=5e4,
                                    linear=LinearAttnConfig(layers=(1,), k_heads=0, v_heads=1, k_dim=0, v_dim=32,
                                                            conv=4, kind="shortconv")),
    # Laguna: full layers with fewer query heads rotating half of each head, sliding ones whole heads at a base of
    # their own, softplus gates per head, a dense layer then soft-capped sigmoid routing beside a shared expert
    "laguna": TransformerConfig(**{**BASE, "n_layers": 4}, family="laguna", qk_norm=True, head_gate=True,
                                gate_act="softplus", sliding_window=4,
                                layer_types=("full", "sliding", "sliding", "full"),
                                full_heads=2, full_rope_dim=6, rope_theta=5e5, rope_local_theta=1e4,
                                moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, score="sigmoid", norm_topk=True,
                                              scaling=1.5, score_bias=True, first_dense=1, n_shared=1, shared_ffn=24,
                                              router_softcap=2.0)),
    # then per-element gates, biases, every layer full and sparse, whole heads rotating, no shared expert
    "laguna_plain": TransformerConfig(**BASE, family="laguna", qk_norm=True, attn_gate=True, gate_act="softplus",
                                      qkv_bias=True, out_bias=True, rope_theta=5e4,
                                      moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, score="sigmoid",
                                                    norm_topk=True, score_bias=True)),
    # Beam: rotary sliding layers and full ones without, their queries scaled by position, biased gates per head
    # dim, sandwich norms, depth-scaled residual adds, a dense layer then grouped sigmoid routing, a final cap
    "beam": TransformerConfig(**{**BASE, "n_layers": 4}, family="beam", qk_norm=True, attn_gate=True, gate_bias=True,
                              sandwich_norm=True, depth_residual=True, final_softcap=20.0, sliding_window=4,
                              layer_types=("sliding", "full", "sliding", "full"), rope_local_theta=1e4,
                              nope_layers=(1, 3), nope_query_scale=(0.1, 2048.0),
                              moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, score="sigmoid", norm_topk=False,
                                            scaling=2.5, n_group=2, topk_group=1, score_bias=True, first_dense=1)),
    # Lara Mini: Gated DeltaNet layers among rotary sliding layers and a full one without, softmax-routed experts
    # (stored fused) beside an ungated shared expert
    "lara_mini": TransformerConfig(**{**BASE, "n_layers": 4, "tie_embeddings": True, "ffn_dim": 24},
                                   family="lara_mini", qk_norm=True, sliding_window=4,
                                   layer_types=("full", "sliding", "full", "full"), nope_layers=(2,),
                                   linear=LinearAttnConfig(layers=(0, 3), k_heads=2, v_heads=4, k_dim=8, v_dim=8,
                                                           conv=4),
                                   moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1, shared_ffn=24,
                                                 norm_topk=False)),
    # Kimi Linear: Kimi Delta Attention layers (a decay per key dimension) around latent-attention layers without
    # rotary; a dense layer, then grouped sigmoid routing beside a shared expert
    "kimi_linear": TransformerConfig(**{**BASE, "n_layers": 4, "n_kv_heads": 4, "head_dim": 12}, family="kimi_linear",
                                     mla=MLAConfig(q_lora_rank=0, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4,
                                                   v_dim=6), nope_layers=(0, 1, 2, 3),
                                     linear=LinearAttnConfig(layers=(0, 2, 3), k_heads=2, v_heads=2, k_dim=8, v_dim=8,
                                                             conv=4, kind="kda"),
                                     moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1,
                                                   score="sigmoid", scaling=2.5, n_group=2, topk_group=1,
                                                   score_bias=True)),
    # Granite 3.x MoE: muP scalars, experts in every layer; then a shared MLP and attention biases
    "granitemoe": TransformerConfig(**{**BASE, "ffn_dim": 16}, family="granitemoe", embed_multiplier=6.0,
                                    residual_multiplier=0.3, query_scale=0.2, logits_scaling=4.0,
                                    moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.01)),
    "granitemoeshared": TransformerConfig(**{**BASE, "ffn_dim": 16}, family="granitemoe", embed_multiplier=3.0,
                                          residual_multiplier=0.5, query_scale=0.25, logits_scaling=2.0,
                                          qkv_bias=True, out_bias=True,
                                          moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1, shared_ffn=24)),
    # EXAONE 3.5 / Deep: Llama under GPT-2's tensor names, with attention biases
    "exaone": TransformerConfig(**BASE, family="exaone", qkv_bias=True, out_bias=True, rope_theta=5e5),
    # Bamba: Mamba-2 layers around an attention layer rotating half of each head
    "bamba": TransformerConfig(**{**BASE, "n_layers": 3}, family="bamba", rope_dim=6,
                               linear=LinearAttnConfig(layers=(0, 2), k_heads=1, v_heads=4, k_dim=8, v_dim=16,
                                                       kind="mamba2", conv_bias=True)),
    # Nemotron-H: Mamba-2 and attention layers without rotary embeddings, an ungated squared-ReLU MLP after some
    # of them (layers 1 and 3 are mixers alone); then Nemotron-3-Nano's routed experts with a dense MLP layer
    "nemotron_h": TransformerConfig(**{**BASE, "n_layers": 4}, family="nemotron_h", activation="relu2",
                                    norm_eps=1e-5, nope_layers=(1, 2), mixer_only_layers=(1, 3),
                                    linear=LinearAttnConfig(layers=(0, 3), k_heads=2, v_heads=4, k_dim=8, v_dim=16,
                                                            kind="mamba2", conv_bias=True)),
    "nemotron_h_moe": TransformerConfig(**{**BASE, "n_layers": 3}, family="nemotron_h", activation="relu2",
                                        norm_eps=1e-5, nope_layers=(1,), mixer_only_layers=(2,),
                                        moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1, shared_ffn=24,
                                                      score="sigmoid", score_bias=True, n_group=2, topk_group=1,
                                                      scaling=2.0, dense_layers=(1,)),
                                        linear=LinearAttnConfig(layers=(0, 2), k_heads=1, v_heads=4, k_dim=8,
                                                                v_dim=16, kind="mamba2", conv=3)),
    # Nemotron-3-Super's shape: routed experts in a 16-dim latent space, between Mamba-2 / attention mixers
    "nemotron_h_moe_latent": TransformerConfig(**{**BASE, "n_layers": 2}, family="nemotron_h", activation="relu2",
                                               norm_eps=1e-5, nope_layers=(1,),
                                               moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1,
                                                             shared_ffn=24, score="sigmoid", score_bias=True,
                                                             latent_dim=16),
                                               linear=LinearAttnConfig(layers=(0,), k_heads=2, v_heads=4, k_dim=8,
                                                                       v_dim=8, kind="mamba2", conv_bias=True)),
    # Falcon-H1: attention and a Mamba-2 mixer side by side in every layer, every muP multiplier away from 1
    "falcon_h1": TransformerConfig(**{**BASE, "n_layers": 2}, family="falcon_h1", norm_eps=1e-5,
                                   embed_multiplier=2.0, logits_multiplier=0.6, key_multiplier=0.7,
                                   attn_in_multiplier=1.3, attn_out_multiplier=0.6, mlp_multipliers=(0.8, 1.3),
                                   linear=LinearAttnConfig(layers=(0, 1), k_heads=2, v_heads=4, k_dim=8, v_dim=12,
                                                           kind="mamba2", conv_bias=True, parallel=True,
                                                           in_multiplier=0.8, out_multiplier=1.5,
                                                           multipliers=(0.5, 1.2, 0.9, 1.4, 0.7))),
    # DeepSeek-V3.2: sparse attention (each query's 3 best keys by a 16-head indexer), a dense layer first
    "deepseek_v32": TransformerConfig(
        **{**BASE, "n_layers": 3, "n_kv_heads": 4, "head_dim": 12}, family="deepseek_v32",
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6, index_topk=3,
                      index_heads=16, index_dim=8),
        moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, score="sigmoid", scaling=1.5,
                      score_bias=True)),
    "glm_moe_dsa": TransformerConfig(
        **{**BASE, "n_layers": 2, "n_kv_heads": 4, "head_dim": 12}, family="glm_moe_dsa", norm_eps=1e-5,
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6, index_topk=3,
                      index_heads=16, index_dim=8, index_rope_interleave=True),
        moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, score="sigmoid", scaling=1.5,
                      score_bias=True)),
    # Mistral 4: latent attention with the queries scaled by position, softmax routing in groups, a shared expert
    "mistral4": TransformerConfig(
        **{**BASE, "n_layers": 3, "n_kv_heads": 4, "head_dim": 12}, family="mistral4", query_length_scale=(0.3, 8),
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 32.0,
                      "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},  # (as released: YaRN)
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
        moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, scaling=1.5, n_group=2,
                      topk_group=1)),
    # OLMo Hybrid: OLMo-3's post-normed attention after pre-normed Gated DeltaNet layers (beta in [0, 2])
    "olmo_hybrid": TransformerConfig(**{**BASE, "n_layers": 3, "head_dim": 8}, family="olmo_hybrid", norm_eps=1e-6,
                                     qk_norm=True, qk_norm_whole=True, pre_norm=False, sandwich_norm=True,
                                     rope_theta=5e5,
                                     linear=LinearAttnConfig(layers=(0, 1), k_heads=2, v_heads=4, k_dim=8, v_dim=8,
                                                             beta_scale=2.0, norm_eps=1e-5, pre_norm=True)),
    "llama_bias": TransformerConfig(**BASE, family="llama", qkv_bias=True, out_bias=True),
    "smollm3": TransformerConfig(**{**BASE, "n_layers": 3}, family="smollm3", nope_layers=(1,), sliding_window=4,
                                 layer_types=("full", "sliding", "full"), rope_theta=5e6),
    "glm4_moe_lite": TransformerConfig(
        **{**BASE, "n_layers": 4, "n_kv_heads": 4, "head_dim": 12}, family="glm4_moe_lite",
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
        moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, dense_layers=(2,), score="sigmoid",
                      scaling=1.8, score_bias=True)),
    "exaone4": TransformerConfig(**{**BASE, "n_layers": 4}, family="exaone4", qk_norm=True, pre_norm=False,
                                 sandwich_norm=True, sliding_window=4, nope_layers=(1, 3),
                                 layer_types=("sliding", "full", "sliding", "full")),
    "minimax_m2": TransformerConfig(**{**BASE, "ffn_dim": 16}, family="minimax_m2", qk_norm=True, qk_norm_whole=True,
                                    rope_dim=6,
                                    moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, score="sigmoid", score_bias=True)),
    "ernie4_5": TransformerConfig(**{**BASE, "tie_embeddings": True}, family="ernie4_5", rope_interleave=True),
    "ernie4_5_moe": TransformerConfig(**{**BASE, "n_layers": 4}, family="ernie4_5", rope_interleave=True,
                                      moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1, score_bias=True,
                                                    aux_loss_coef=0.001, dense_layers=(0, 2))),
    "hunyuan": TransformerConfig(**BASE, family="hunyuan", qk_norm=True, qk_norm_after_rope=True, qkv_bias=True,
                                 out_bias=True, rope_scaling={"rope_type": "ntk_alpha", "alpha": 50.0}),
    "hunyuan_moe": TransformerConfig(**{**BASE, "ffn_dim": 16}, family="hunyuan", qk_norm=True,
                                     qk_norm_after_rope=True, moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16,
                                                                            n_shared=1, aux_loss_coef=0.001)),
    # Hy3: sigmoid routing with the selection bias, two shared experts, dense layers before and after a MoE one
    "hy_v3": TransformerConfig(**{**BASE, "n_layers": 4}, family="hy_v3", qk_norm=True, rope_theta=11_158_840.0,
                               norm_eps=1e-5, moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=2, first_dense=1,
                                                            dense_layers=(3,), score="sigmoid", scaling=2.826,
                                                            score_bias=True)),
    # no shared expert named: the reference's shared MLP is then the dense width; biases on all four projections
    "hy_v3_bias": TransformerConfig(**BASE, family="hy_v3", qk_norm=True, qkv_bias=True, out_bias=True,
                                    moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, shared_ffn=BASE["ffn_dim"],
                                                  first_dense=1, score="sigmoid", scaling=1.5, score_bias=True)),
    # Solar Open: every layer routed by GLM-4.5's rule (grouped top-k, selection bias, a shared expert)
    "solar_open": TransformerConfig(**BASE, family="solar_open", rope_theta=1e6, norm_eps=1e-5, qkv_bias=True,
                                    moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1, score="sigmoid",
                                                  scaling=2.5, n_group=4, topk_group=2, score_bias=True)),
    # K-EXAONE: EXAONE 4.0's attention (rotary sliding layers, a full NoPE one) pre-normed, a dense layer first
    "exaone_moe": TransformerConfig(**{**BASE, "n_layers": 4}, family="exaone_moe", qk_norm=True, norm_eps=1e-5,
                                    sliding_window=4, nope_layers=(3,), layer_types=("sliding",) * 3 + ("full",),
                                    moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1,
                                                  dense_layers=(2,), score="sigmoid", scaling=2.5, score_bias=True)),
    # MiMo-V2-Flash: full layers with 2 key/value heads and no sinks beside sliding ones with 4 and sinks, values
    # 8 wide scaled, a third of each head rotary with a base per layer kind, a dense layer then routed experts
    "mimo_v2_flash": TransformerConfig(
        **{**BASE, "n_layers": 6, "n_kv_heads": 4}, family="mimo_v2_flash", norm_eps=1e-5, full_kv_heads=2,
        attn_sinks=True, full_sinks=False, v_head_dim=8, value_scale=0.707, rope_dim=4, rope_theta=5e6,
        rope_local_theta=1e4, sliding_window=5, layer_types=("full",) + ("sliding",) * 4 + ("full",),
        moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, first_dense=1, score="sigmoid", score_bias=True)),
    # Gemma 4: full layers with heads twice as wide and one key/value head that is also the values, proportional
    # rope there, values normed, queries unscaled, stored layer scalars, a logit softcap
    "gemma4": TransformerConfig(
        **{**BASE, "n_layers": 3, "head_dim": 8, "tie_embeddings": True}, family="gemma4", embed_scale=True,
        activation="gelu_tanh", query_scale=1.0, sandwich_norm=True, qk_norm=True, final_softcap=30.0,
        sliding_window=4, layer_types=("sliding", "full", "full"), rope_theta=1e6, rope_local_theta=1e4,
        rope_scaling={"rope_type": "proportional", "partial_rotary_factor": 0.25}, v_norm=True, layer_scalar=True,
        full_head_dim=16, full_kv_heads=1, full_k_eq_v=True),
    # Gemma 4 26B-A4B's layout: a dense MLP beside softmax-routed experts in every layer
    "gemma4_moe": TransformerConfig(
        **{**BASE, "n_layers": 3, "head_dim": 8, "tie_embeddings": True}, family="gemma4", embed_scale=True,
        activation="gelu_tanh", query_scale=1.0, sandwich_norm=True, qk_norm=True, final_softcap=30.0,
        sliding_window=4, layer_types=("sliding", "full", "full"), rope_theta=1e6, rope_local_theta=1e4,
        rope_scaling={"rope_type": "proportional", "partial_rotary_factor": 0.25}, v_norm=True, layer_scalar=True,
        full_head_dim=16, full_kv_heads=1, full_k_eq_v=True,
        moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, beside_dense=True, router_norm=True, expert_scale=True)),
    # Gemma 4 E2B/E4B's layout: per-layer inputs, the last two layers attending over the keys/values of the last
    # earlier sliding / full layer, their MLPs twice as wide
    "gemma4_e2b": TransformerConfig(
        **{**BASE, "n_layers": 4, "head_dim": 8, "tie_embeddings": True}, family="gemma4", embed_scale=True,
        activation="gelu_tanh", query_scale=1.0, sandwich_norm=True, qk_norm=True, final_softcap=30.0,
        sliding_window=4, layer_types=("sliding", "full", "sliding", "full"), rope_theta=1e6,
        rope_local_theta=1e4, rope_scaling={"rope_type": "proportional", "partial_rotary_factor": 0.25},
        v_norm=True, layer_scalar=True, full_head_dim=16, full_kv_heads=1, ple_dim=4, kv_shared_layers=2,
        double_wide_mlp=True),
    # Command A: a centred norm feeding attention and MLP side by side, rotary sliding layers and a full one
    # without, biases on all four projections, logits scaled
    # Command R / Aya: Command R7B's layers, every one full and rotating
    "cohere": TransformerConfig(**{**BASE, "head_dim": 8}, family="cohere", norm_eps=1e-5, qkv_bias=True,
                                out_bias=True, rope_interleave=True, norm_center=True, parallel_block=True,
                                logits_multiplier=0.0625),
    "cohere2": TransformerConfig(**{**BASE, "n_layers": 4, "head_dim": 8}, family="cohere2", norm_eps=1e-5,
                                 qkv_bias=True, out_bias=True, rope_interleave=True, norm_center=True,
                                 parallel_block=True, logits_multiplier=0.0625, sliding_window=4,
                                 layer_types=("sliding",) * 3 + ("full",), nope_layers=(3,)),
    # Trinity: gated attention with q/k norms, rotary sliding layers and a full one without, sandwich norms,
    # sigmoid routing with the selection bias beside a shared expert after a dense layer, embeddings times sqrt(d)
    "minicpm5_moe": TransformerConfig(**{**BASE, "n_layers": 4}, family="minicpm5_moe", attn_gate=True,
                                      rope_theta=5e6, moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1,
                                                                    first_dense=1, dense_layers=(2,), score="sigmoid",
                                                                    scaling=3.66, score_bias=True, aux_loss_coef=0.0)),
    "dots1": TransformerConfig(**{**BASE, "n_layers": 3}, family="dots1", qk_norm=True, qkv_bias=True, out_bias=True,
                               sliding_window=8, layer_types=("full", "sliding", "sliding"),
                               moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=2, first_dense=1,
                                             score="sigmoid", scaling=2.5, score_bias=True, aux_loss_coef=0.0)),
    "youtu": TransformerConfig(**{**BASE, "n_kv_heads": 4, "tie_embeddings": True}, family="youtu",
                               mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6)),
    "ministral": TransformerConfig(**{**BASE, "n_layers": 3}, family="ministral", sliding_window=8,
                                   layer_types=("sliding", "full", "sliding")),
    "cohere2_moe": TransformerConfig(**{**BASE, "n_layers": 4, "ffn_dim": 24}, family="cohere2_moe", norm_eps=1e-5,
                                     rope_interleave=True, norm_center=True, parallel_block=True,
                                     logits_multiplier=0.0625, sliding_window=8,
                                     layer_types=("full", "sliding", "sliding", "sliding"), nope_layers=(),
                                     moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1,
                                                   shared_average=True, aux_loss_coef=0.0)),
    # its dense layers sliding but the second (which then has no rotary), RMSNorm, shared experts summed
    "cohere2_moe_sliding": TransformerConfig(**{**BASE, "n_layers": 4, "ffn_dim": 24}, family="cohere2_moe",
                                             rope_interleave=True, parallel_block=True, logits_multiplier=0.0625,
                                             sliding_window=8, layer_types=("sliding", "full", "sliding", "full"),
                                             nope_layers=(1, 3), moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8,
                                                                               n_shared=2, first_dense=2,
                                                                               aux_loss_coef=0.0)),
    "apertus": TransformerConfig(**BASE, family="apertus", qk_norm=True, activation="xielu", norm_eps=1e-5,
                                 rope_theta=12e6, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                "original_max_position_embeddings": 8192,
                                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    "sarvam_moe": TransformerConfig(**{**BASE, "n_layers": 3}, family="sarvam_moe", qk_norm=True, rope_theta=8e6,
                                    moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1,
                                                  score="sigmoid", scaling=2.5, score_bias=True, aux_loss_coef=0.0)),
    "sarvam_mla": TransformerConfig(
        **{**BASE, "n_layers": 3, "n_kv_heads": 4, "head_dim": 12}, family="sarvam_mla",
        mla=MLAConfig(q_lora_rank=0, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
        moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, score="sigmoid", scaling=2.5,
                      score_bias=True, aux_loss_coef=0.0)),
    "cwm": TransformerConfig(**{**BASE, "n_layers": 4}, family="cwm", sliding_window=8, rope_theta=1e6,
                             layer_types=("full", "sliding", "sliding", "sliding"),
                             rope_scaling={"rope_type": "llama3", "factor": 16.0, "high_freq_factor": 4.0,
                                           "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
    "axk1": TransformerConfig(
        **{**BASE, "n_layers": 4, "n_kv_heads": 4, "head_dim": 12}, family="axk1",
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
        moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, dense_layers=(2,),
                      score="sigmoid", scaling=2.5, n_group=4, topk_group=2, score_bias=True, aux_loss_coef=0.0,
                      post_norm=True)),
    "flex_olmo": TransformerConfig(**{**BASE, "ffn_dim": 16, "head_dim": 8}, family="flex_olmo", qk_norm=True,
                                   qk_norm_whole=True, pre_norm=False, sandwich_norm=True,
                                   moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, norm_topk=False,
                                                 aux_loss_coef=0.01)),
    "afmoe": TransformerConfig(**{**BASE, "n_layers": 4}, family="afmoe", norm_eps=1e-5, qk_norm=True,
                               attn_gate=True, sandwich_norm=True, embed_multiplier=32 ** 0.5, sliding_window=4,
                               layer_types=("sliding",) * 3 + ("full",), nope_layers=(3,),
                               moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=8, n_shared=1, first_dense=1,
                                             score="sigmoid", scaling=2.5, score_bias=True)),
    "ministral3": TransformerConfig(**BASE, family="ministral3", rope_theta=1e6, query_length_scale=(0.3, 8),
                                    rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                  "beta_slow": 1.0, "original_max_position_embeddings": 8}),
    "glm4": TransformerConfig(**BASE, family="glm4", qkv_bias=True, rope_interleave=True, rope_dim=6,
                              sandwich_norm=True),
    "glm": TransformerConfig(**{**BASE, "tie_embeddings": True}, family="glm4", rope_interleave=True, rope_dim=8),
    "deepseek_v2": TransformerConfig(
        **{**BASE, "n_layers": 3, "n_kv_heads": 4, "head_dim": 12}, family="deepseek_v2",
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
        moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, norm_topk=False, scaling=2.0,
                      n_group=4, topk_group=2, group_score="max")),
    "olmoe": TransformerConfig(**{**BASE, "ffn_dim": 16, "head_dim": 8}, family="olmoe", qk_norm=True,
                               qk_norm_whole=True, moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.01)),
    "glm4_moe": TransformerConfig(**{**BASE, "n_layers": 3}, family="glm4_moe", qkv_bias=True, qk_norm=True,
                                  rope_dim=6, moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1,
                                                            first_dense=1, score="sigmoid", scaling=2.5, n_group=4,
                                                            topk_group=2, score_bias=True)),
}


def _save_random(name: str, path: Path, **kw):
    mdef, _ = create(FAMILY_CONFIGS[name], abstract=True)
    params = random_params(mdef, 3)
    save_pretrained(mdef, params, path, **kw)
    return mdef, params


def _assert_same(a: dict, b: dict):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _add_shard(path: Path, tensors: dict[str, tuple[int, ...]]) -> None:
    """A checkpoint's next file (the first, model.safetensors, renamed as a shard) holding ``tensors`` (ones): the
    extra modules released checkpoints store beside the model's (multi-token prediction, empty experts)."""
    if (path / "model.safetensors").exists():
        (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    n = len(list(path.glob("model-*.safetensors"))) + 1
    write_file(path / f"model-{n:05d}-of-{n:05d}.safetensors", [(k, "F32", v) for k, v in tensors.items()],
               lambda k: np.ones(tensors[k], np.float32))


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_generated_checkpoint_round_trips(tmp_path, name):
    _, params = _save_random(name, tmp_path)
    cfg = config_from_hf(tmp_path)
    assert cfg.family == FAMILY_CONFIGS[name].family
    mine = dataclasses.replace(FAMILY_CONFIGS[name], extra=cfg.extra, max_seq_len=cfg.max_seq_len)
    if name == "qwen2":  # the Qwen2 format always has q/k/v biases
        mine = dataclasses.replace(mine, qkv_bias=True)
    assert cfg == mine
    back = load_params(tmp_path, create(cfg, abstract=True)[0])
    if name == "qwen2":
        for n in ("q_bias", "k_bias", "v_bias"):
            assert not np.asarray(back["layers"]["attn"].pop(n)).any()
    _assert_same(back, params)


def test_sharded_files_with_index(tmp_path):
    _, params = _save_random("deepseek_v3", tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((tmp_path / f).is_file() for f in files)
    from safetensors import safe_open  # the reference reader accepts our files

    n = 0
    for f in files:
        with safe_open(tmp_path / f, "numpy") as fh:
            n += len(list(fh.keys()))
    assert n == len(index["weight_map"])
    assert "model.layers.2.mlp.experts.7.down_proj.weight" in index["weight_map"]
    _assert_same(load_params(tmp_path, create(config_from_hf(tmp_path), abstract=True)[0]), params)


def test_fused_expert_layout_loads_the_same(tmp_path):
    src, dst = tmp_path / "per_expert", tmp_path / "fused"
    _, params = _save_random("qwen3_moe", src)
    ck = Checkpoint(src)
    tensors = {k: np.array(ck.get(k)) for k in ck.names()}
    out = {}
    for i in range(2):
        pre = f"model.layers.{i}.mlp.experts"
        g = [tensors.pop(f"{pre}.{e}.gate_proj.weight") for e in range(4)]
        u = [tensors.pop(f"{pre}.{e}.up_proj.weight") for e in range(4)]
        d = [tensors.pop(f"{pre}.{e}.down_proj.weight") for e in range(4)]
        out[f"{pre}.gate_up_proj"] = np.stack([np.concatenate([a, b]) for a, b in zip(g, u)])
        out[f"{pre}.down_proj"] = np.stack(d)
    out.update(tensors)
    dst.mkdir()
    write_file(dst / "model.safetensors", [(k, "F32", v.shape) for k, v in out.items()], out.__getitem__)
    (dst / "config.json").write_text((src / "config.json").read_text())
    _assert_same(load_params(dst, create(config_from_hf(dst), abstract=True)[0]), params)


def test_bfloat16_load_and_save(tmp_path):
    _save_random("qwen3_moe", tmp_path / "f32")
    m32 = load_pretrained(tmp_path / "f32", "float32")
    m16 = load_pretrained(tmp_path / "f32", "bfloat16")
    assert m16.params["layers"]["attn"]["q"].dtype == jax.numpy.bfloat16
    assert m16.params["layers"]["mlp"]["router"].dtype == jax.numpy.float32  # routing stays float32
    ids = np.arange(24, dtype=np.int32).reshape(2, 12)
    a, b = np.asarray(m32(ids)), np.asarray(m16(ids))
    # bf16 may flip a near-tie routing decision somewhere, so compare on average, not at the worst token
    assert np.isfinite(b).all() and np.abs(a - b).mean() < 0.05 * np.abs(a).mean()
    m16.save_pretrained(tmp_path / "bf16")
    f = SafetensorsFile(tmp_path / "bf16" / "model.safetensors")
    assert f.info("model.layers.1.self_attn.q_proj.weight")[0] == "BF16"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    again = load_pretrained(tmp_path / "bf16", "bfloat16")
    _assert_same(again.params["layers"]["attn"], m16.params["layers"]["attn"])


def test_loaded_config_is_written_back_verbatim(tmp_path):
    _save_random("llama", tmp_path / "a")
    conf = json.loads((tmp_path / "a" / "config.json").read_text())
    conf["bos_token_id"], conf["custom_field"] = 7, "kept"
    (tmp_path / "a" / "config.json").write_text(json.dumps(conf))
    (tmp_path / "a" / "tokenizer_config.json").write_text("{}")
    model = load_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    out = json.loads((tmp_path / "b" / "config.json").read_text())
    assert out["custom_field"] == "kept" and out["bos_token_id"] == 7
    assert (tmp_path / "b" / "tokenizer_config.json").is_file()  # tokenizer files travel along
    changed = dataclasses.replace(model.cfg, n_layers=1)
    assert hf_config(changed)["num_hidden_layers"] == 1 and "custom_field" not in hf_config(changed)


# ---------------------------------------------------------------------- mismatches fail clearly


def _rewrite(path: Path, edit):
    ck = Checkpoint(path)
    tensors = {k: np.array(ck.get(k)) for k in ck.names()}
    ck.close()
    edit(tensors)
    write_file(path / "model.safetensors", [(k, "F32", v.shape) for k, v in tensors.items()], tensors.__getitem__)


def _load(path):
    return load_params(path, create(config_from_hf(path), abstract=True)[0])


def test_missing_tensor_is_named(tmp_path):
    _save_random("qwen3", tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight: missing"):
        _load(tmp_path)


def test_wrong_shape_and_unexpected_tensor_are_named(tmp_path):
    _save_random("mixtral", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**conf, "intermediate_size": 48}))
    with pytest.raises(CheckpointError, match=r"block_sparse_moe\.experts\.0\.w1\.weight: shape \[40, 32\]"):
        _load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    _rewrite(tmp_path, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias", np.zeros(48, np.float32)))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias: unexpected"):
        _load(tmp_path)


@pytest.mark.parametrize("edit, field", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope_type"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"num_attention_heads": None}, "num_attention_heads"),
])
def test_unsupported_config_fields_are_named(tmp_path, edit, field):
    _save_random("llama", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.update(edit)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match=field):
        config_from_hf(tmp_path)


@pytest.mark.parametrize("name, edit, message", [
    ("gpt_oss", {"quantization_config": {"quant_method": "gptq"}}, "quant_method 'gptq' is not supported"),
    ("gpt_oss", {"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types entry 'chunked_attention'"),
    ("qwen3_moe_dense", {"mlp_only_layers": [0, 9]}, r"mlp_only_layers entries \[9\]"),
    ("qwen3_moe_dense", {"mlp_only_layers": [0, 1, 2, 3]}, "leave no MoE layer"),
    ("qwen2_moe", {"decoder_sparse_step": 0}, "decoder_sparse_step=0"),
    ("phi3", {"partial_rotary_factor": 0.2}, "partial_rotary_factor gives 1 rotary dims"),
    ("phi3", {"rope_scaling": {"rope_type": "longrope", "long_factor": [1.0]}}, "short_factor"),
    ("olmo2", {"clip_qkv": 8.0}, "clip_qkv"),
    ("glm4_moe", {"quantization_config": {"quant_method": "fp8", "weight_block_size": [0, 128]}},
     r"quantization_config: weight_block_size \[0, 128\]"),
    ("glm4_moe_lite", {"mlp_layer_types": ["dense"] * 4}, "no 'sparse' layer"),
    ("glm4_moe_lite", {"mlp_layer_types": ["dense", "moe", "sparse", "sparse"]}, "mlp_layer_types must name"),
    ("glm4_moe_lite", {"partial_rotary_factor": 0.5}, "partial_rotary_factor is not supported"),
    ("exaone4", {"layer_types": None, "sliding_window_pattern": "LLXG"}, "sliding_window_pattern='LLXG'"),
    ("exaone4", {"layer_types": ["full_attention"] * 3}, "layer_types has 3 entries for 4 layers"),
    ("minimax_m2", {"attn_type_list": [0, 1]}, "attn_type_list"),
    ("minimax_m2", {"scoring_func": "softmax"}, "scoring_func"),
    ("minimax_m2", {"rotary_dim": 5}, "rotary_dim=5"),
    ("ernie4_5_moe", {"moe_layer_start_index": [1, 2]}, "moe_layer_start_index"),
    ("ernie4_5_moe", {"moe_layer_start_index": 9}, "leave no MoE layer"),
    ("ernie4_5", {"use_bias": True}, "use_bias"),
    ("hunyuan_moe", {"moe_topk": [2, 1]}, r"moe_topk=\[2, 1\] is not supported \(one value for every layer\)"),
    ("hunyuan_moe", {"moe_intermediate_size": [24, 24]}, "moe_intermediate_size=.* differs from intermediate_size"),
    ("hunyuan_moe", {"num_shared_expert": [2, 2]}, "num_shared_expert"),
    ("hunyuan", {"use_cla": True}, "use_cla"),
    ("hunyuan", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4,
                                     "original_max_position_embeddings": 16}},
     "original_max_position_embeddings=16 is not supported with rope_type 'dynamic'"),
    ("smollm3", {"no_rope_layers": [1, 0]}, "no_rope_layers must list 0 or 1 for each of the 3 layers"),
    ("smollm3", {"no_rope_layers": None, "no_rope_layer_interval": 0}, "no_rope_layer_interval=0"),
    ("glm4_moe", {"hidden_act": "gelu"}, "hidden_act"),
    ("solar_open", {"partial_rotary_factor": 0.5}, "partial_rotary_factor is not supported"),
    ("solar_open", {"hidden_act": "gelu"}, "hidden_act"),
    ("exaone_moe", {"mlp_layer_types": None, "first_k_dense_replace": 4}, "first_k_dense_replace=4 leaves no MoE"),
    ("exaone_moe", {"mlp_layer_types": ["dense"] * 4}, "no 'sparse' layer"),
    ("exaone_moe", {"layer_types": ["full_attention"] * 3}, "layer_types has 3 entries for 4 layers"),
    ("mimo_v2_flash", {"swa_head_dim": 16}, "swa_head_dim=16"),
    ("mimo_v2_flash", {"add_swa_attention_sink_bias": False, "add_full_attention_sink_bias": True},
     "add_full_attention_sink_bias without add_swa_attention_sink_bias"),
    ("mimo_v2_flash", {"layer_types": None, "hybrid_layer_pattern": [0, 1, 1]}, "hybrid_layer_pattern must give"),
    ("mimo_v2_flash", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6,
                                                              "partial_rotary_factor": 0.5}}},
     "different partial_rotary_factor"),
    ("mimo_v2_flash", {"num_key_value_heads": 3}, "must divide the 4 attention heads"),
    ("gemma4", {"hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": 32},
     "vocab_size_per_layer_input=32 is below vocab_size=64"),
    ("gemma4", {"num_kv_shared_layers": 3}, "num_kv_shared_layers=3 must leave some of the 3 layers"),
    ("gemma4", {"num_kv_shared_layers": 2}, "has no earlier layer computing its keys/values"),
    ("gemma4", {"enable_moe_block": True, "num_experts": None}, "num_experts"),
    ("gemma4", {"use_bidirectional_attention": "all"}, "use_bidirectional_attention"),
    ("gemma4", {"per_layer_config": {"0": {"head_dim": 16}}}, r"per_layer_config\['0'\]"),
    ("gemma4", {"per_layer_config": {"1": {"head_dim": 16}, "2": {"head_dim": 8}}}, "different overrides"),
    ("cohere2", {"hidden_act": "gelu"}, "hidden_act"),
    ("cohere2", {"layer_types": ["full_attention"] * 3}, "layer_types must name"),
    ("afmoe", {"num_dense_layers": 4}, "num_dense_layers=4 leaves no MoE layer"),
    ("afmoe", {"attention_bias": True}, "attention_bias"),
    ("minicpm5_moe", {"attention_bias": True}, "attention_bias"),
    ("minicpm5_moe", {"mlp_layer_types": ["dense", "sparse"]}, "mlp_layer_types must name"),
    ("dots1", {"hidden_act": "gelu"}, "hidden_act"),
    ("dots1", {"partial_rotary_factor": 0.5}, "partial_rotary_factor is not supported"),
    ("youtu", {"mlp_bias": True}, "mlp_bias"),
    ("youtu", {"attention_bias": True}, "attention_bias"),
    ("hy_v3", {"mlp_bias": True}, "mlp_bias"),
    ("hy_v3", {"num_shared_experts": -1}, "num_shared_experts=-1"),
    ("hy_v3", {"mlp_layer_types": ["dense", "moe", "sparse", "dense"]}, "mlp_layer_types must name"),
    ("hy_v3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor is not supported"),
    ("flint", {"hidden_act": "gelu"}, "hidden_act"),
    ("flint", {"layer_types": ["full_attention"] * 3}, "layer_types must name"),
    ("flint", {"num_experts": 0}, "num_experts=0"),
    ("flint", {"mlp_only_layers": [0, 1, 2, 3]}, "leave no MoE layer"),
    ("flint", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "nested by layer kind"),
    ("flint", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor is not supported"),
    ("mellum", {"layer_types": ["full_attention"] * 3}, "layer_types must name"),
    ("mellum", {"mlp_layer_types": ["dense"] * 4}, "no 'sparse' layer"),
    ("mellum", {"hidden_act": "gelu"}, "hidden_act"),
    ("mellum", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}},
     "rope_parameters.sliding_attention is required"),
    ("mellum", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4,
                                                          "partial_rotary_factor": 0.5}}},
     "partial_rotary_factor is not supported"),
    ("mellum", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}},
     "sliding_attention scaling is not supported"),
])
def test_new_family_config_errors_name_the_field(tmp_path, name, edit, message):
    _save_random(name, tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.update(edit)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match=message):
        config_from_hf(tmp_path)


def test_glm4_moe_rotates_half_the_head_unless_told(tmp_path):
    """GLM-4.5's config.json may leave out partial_rotary_factor: its reference then rotates half of each head
    (not all of it, as for other families); the factor is read at the top level and in rope_parameters, and
    the multi-token-prediction layer stored after the last one is not loaded."""
    _save_random("glm4_moe", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("partial_rotary_factor")
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert config_from_hf(tmp_path).rope_dim == 6  # head_dim 12
    conf["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert config_from_hf(tmp_path).rope_dim == 0  # all of it


def test_glm4_moe_multi_token_prediction_layer_is_not_loaded(tmp_path):
    """Released GLM-4.5 checkpoints store their multi-token-prediction module as one more layer (index
    num_hidden_layers) in a file of its own: it loads without it, and a stray tensor inside the stack is
    still an error."""
    _, params = _save_random("glm4_moe", tmp_path)
    _add_shard(tmp_path, {"model.layers.3.eh_proj.weight": (32, 64), "model.layers.3.enorm.weight": (32,)})
    cfg = config_from_hf(tmp_path)
    _assert_same(load_params(tmp_path, create(cfg, abstract=True)[0]), params)
    _add_shard(tmp_path, {"model.layers.2.eh_proj.weight": (2,)})
    with pytest.raises(CheckpointError, match="model.layers.2.eh_proj.weight: unexpected tensor"):
        load_params(tmp_path, create(cfg, abstract=True)[0])


def test_olmo3_config_in_the_older_layout(tmp_path):
    """An OLMo-3 config.json as the released models spell it: one rope_theta, a rope_scaling (YaRN) that the
    reference applies to the full layers only, no layer_types (three sliding layers in four)."""
    _save_random("olmo3", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    yarn = conf["rope_parameters"]["full_attention"]
    for k in ("rope_parameters", "layer_types"):
        conf.pop(k)
    conf.update(rope_theta=5e5, rope_scaling={k: v for k, v in yarn.items() if k != "rope_theta"})
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert cfg.sliding_layers == (True, True, True, False) and cfg.sliding_window == 4
    assert cfg.rope_theta == cfg.rope_local_theta == 5e5 and cfg.rope_scaling["rope_type"] == "yarn"
    conf["layer_types"] = ["full_attention"] * 3
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="layer_types has 3 entries for 4 layers"):
        config_from_hf(tmp_path)


def test_exaone4_layer_pattern_without_layer_types(tmp_path):
    """EXAONE 4.0 configs may name the layer schedule by sliding_window_pattern alone: "LLLG" or 4 (every
    fourth layer full, without rotary); no sliding_window: every layer full and rotary."""
    _save_random("exaone4", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("layer_types")
    for pattern, types, nope in (("LLLG", (True, True, True, False), (3,)), ("LG", (True, False) * 2, (1, 3)),
                                 (4, (True, True, True, False), (3,))):
        (tmp_path / "config.json").write_text(json.dumps({**conf, "sliding_window_pattern": pattern}))
        cfg = config_from_hf(tmp_path)
        assert (cfg.sliding_layers, cfg.nope_layers) == (types, nope), pattern
    (tmp_path / "config.json").write_text(json.dumps({**conf, "sliding_window": None}))
    cfg = config_from_hf(tmp_path)
    assert not any(cfg.sliding_layers) and cfg.nope_layers == ()


def test_minimax_m2_released_config_fields(tmp_path):
    """MiniMax-M2's config.json as released: rotary_dim (not partial_rotary_factor), the MTP and routing-bias
    switches the reference ignores, attn_type_list of softmax layers."""
    _save_random("minimax_m2", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("partial_rotary_factor")
    conf.update(rotary_dim=6, num_mtp_modules=3, mtp_transformer_layers=1, use_mtp=True, use_routing_bias=True,
                attn_type_list=[1, 1], shared_intermediate_size=0)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_dim == 6 and cfg.moe.score == "sigmoid" and cfg.moe.score_bias
    (tmp_path / "config.json").write_text(json.dumps({**conf, "rotary_dim": 12}))
    assert config_from_hf(tmp_path).rope_dim == 0  # the whole head


def test_hunyuan_released_config_fields(tmp_path):
    """Hunyuan's config.json as released: the rope as transformers-4 ``rope_scaling`` of type dynamic with a
    fixed alpha (and YaRN-looking fields the reference ignores), per-layer lists for the MoE fields, and the
    switches the reference does not read (use_qk_norm, use_cla off, use_mixed_mlp_moe)."""
    _save_random("hunyuan_moe", tmp_path)
    written = config_from_hf(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("rope_parameters", None)
    conf.update(rope_theta=10000.0, rope_scaling={"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0,
                                                  "mscale": 1.0, "mscale_all_dim": 1.0, "type": "dynamic"},
                num_experts=[4, 4], moe_topk=[2, 2], moe_intermediate_size=[16, 16], num_shared_expert=[1, 1],
                use_qk_norm=True, use_cla=False, cla_share_factor=2, use_mixed_mlp_moe=True)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_scaling == {"rope_type": "ntk_alpha", "alpha": 1000.0} and cfg.rope_theta == 10000.0
    assert cfg.moe == written.moe and cfg.qk_norm_after_rope
    from reasoning_rl.models.layers.rope import inv_frequencies
    inv = inv_frequencies(12, 10000.0, cfg.rope_scaling)  # the base stretched to 1e4 * 1000 ** (12 / 10)
    np.testing.assert_allclose(inv, 1 / (1e4 * 1000 ** 1.2) ** (np.arange(0, 12, 2) / 12), rtol=1e-6)


def test_hy_v3_released_config_fields(tmp_path):
    """Hy3's config.json may leave out what its reference class fills in: the rope base (11158840, not 10000),
    the per-layer MLP kinds (the first layer dense), the routing fields; the multi-token-prediction layer
    stored after the last one is not loaded, and a config with no shared expert builds one of the dense width
    (the reference's ``moe_intermediate_size * num_shared_experts or intermediate_size``)."""
    _, params = _save_random("hy_v3", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("rope_parameters", "rope_theta", "router_scaling_factor", "num_shared_experts", "rms_norm_eps",
              "mlp_layer_types", "enable_moe_fp32_combine"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_theta == 11_158_840.0 and cfg.rope_scaling is None and cfg.norm_eps == 1e-5
    assert (cfg.moe.scaling, cfg.moe.n_shared, cfg.moe.shared_ffn) == (2.826, 1, 0)
    assert (cfg.moe.first_dense, cfg.moe.dense_layers) == (1, ())
    (tmp_path / "config.json").write_text(json.dumps({**conf, "num_shared_experts": 0}))
    assert (config_from_hf(tmp_path).moe.n_shared, config_from_hf(tmp_path).moe.shared_ffn) == (0, BASE["ffn_dim"])
    (tmp_path / "config.json").write_text(json.dumps({**conf, "num_shared_experts": 2,
                                                      "mlp_layer_types": ["dense", "sparse", "sparse", "dense"]}))
    _add_shard(tmp_path, {"model.layers.4.eh_proj.weight": (32, 64), "model.layers.4.mlp.expert_bias": (4,)})
    _assert_same(load_params(tmp_path, create(config_from_hf(tmp_path), abstract=True)[0]), params)


def test_solar_open_and_k_exaone_released_config_fields(tmp_path):
    """What their reference classes fill in when a config.json leaves it out: Solar Open's rope base (1e6) and
    routing fields; K-EXAONE's dense layers by ``first_k_dense_replace`` when ``mlp_layer_types`` is absent, its
    multi-token-prediction module (``mtp.*``) not loaded, and a zero-wide shared expert (``num_shared_experts:
    0``, stored by the reference all the same) holding nothing."""
    _save_random("solar_open", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("rope_parameters", "rope_theta", "n_shared_experts", "routed_scaling_factor"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_theta == 1e6 and (cfg.moe.n_shared, cfg.moe.scaling, cfg.moe.first_dense) == (1, 1.0, 0)

    out = tmp_path / "exaone"
    _save_random("exaone_moe", out)
    conf = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**conf, "mlp_layer_types": None, "first_k_dense_replace": 2}))
    assert (config_from_hf(out).moe.first_dense, config_from_hf(out).moe.dense_layers) == (2, ())

    base = FAMILY_CONFIGS["exaone_moe"]
    mdef, _ = create(dataclasses.replace(base, moe=dataclasses.replace(base.moe, n_shared=0)), abstract=True)
    params = random_params(mdef, 3)
    save_pretrained(mdef, params, out)
    assert json.loads((out / "config.json").read_text())["num_shared_experts"] == 0
    _add_shard(out, {"mtp.layers.0.eh_proj.weight": (32, 64), "model.layers.1.mlp.shared_experts.gate_proj.weight":
                     (0, 32)})
    cfg = config_from_hf(out)
    _assert_same(load_params(out, create(cfg, abstract=True)[0]), params)
    _add_shard(out, {"model.layers.1.mlp.shared_experts.bias": (2,)})
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.shared_experts.bias: unexpected tensor"):
        load_params(out, create(cfg, abstract=True)[0])


def test_mimo_v2_flash_released_config_layout(tmp_path):
    """MiMo-V2-Flash's config.json as released (before transformers' port): the layer kinds as
    ``hybrid_layer_pattern`` (1 sliding), the MLPs as ``moe_layer_freq``, the sliding layers' own fields
    (``swa_*``), the window as the keys before the query (``sliding_window_size``), the sink switches per kind,
    ``layernorm_epsilon``, ``swa_rope_theta``: the same model as transformers' layout. A config without layer
    kinds takes the reference's (the first and every sixth layer full), and one with sinks on the full layers
    too keeps them there (written back as read; transformers' layout cannot state them)."""
    _save_random("mimo_v2_flash", tmp_path)
    written = config_from_hf(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "mlp_layer_types", "rope_parameters", "rms_norm_eps", "sliding_window"):
        conf.pop(k)
    conf.update(hybrid_layer_pattern=[0, 1, 1, 1, 1, 0], moe_layer_freq=[0, 1, 1, 1, 1, 1], swa_num_attention_heads=4,
                swa_num_key_value_heads=4, swa_head_dim=12, swa_v_head_dim=8, sliding_window_size=4,
                add_swa_attention_sink_bias=True, add_full_attention_sink_bias=False, layernorm_epsilon=1e-5,
                rope_theta=5e6, swa_rope_theta=1e4, partial_rotary_factor=0.334, topk_method="noaux_tc",
                scoring_func="sigmoid")
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert dataclasses.replace(config_from_hf(tmp_path), extra={}) == dataclasses.replace(written, extra={})
    conf.pop("hybrid_layer_pattern")
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert config_from_hf(tmp_path).layer_types == ("full",) + ("sliding",) * 4 + ("full",)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "add_full_attention_sink_bias": True}))
    cfg = config_from_hf(tmp_path)
    assert cfg.attn_sinks and cfg.full_sinks
    with pytest.raises(ConfigError, match="full_sinks=True cannot be written as a mimo_v2_flash checkpoint"):
        hf_config(dataclasses.replace(cfg, extra={}))


def test_gemma4_released_config_fields(tmp_path):
    """Gemma 4's config.json as released: the full layers' head size and key/value heads as ``global_head_dim``
    and ``num_global_key_value_heads`` (not transformers 5's ``per_layer_config``), which give the same model; with
    neither, the reference's 512-wide full heads; the layer kinds by default (five sliding in six, the last layer
    full whatever the list says); the per-layer input embeddings on (256 wide, 262144 rows) unless the config turns
    them off."""
    _save_random("gemma4", tmp_path)
    written = config_from_hf(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("per_layer_config")
    conf.update(global_head_dim=16, num_global_key_value_heads=1)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert dataclasses.replace(config_from_hf(tmp_path), extra={}) == dataclasses.replace(written, extra={})
    for k in ("global_head_dim", "num_global_key_value_heads", "layer_types"):
        conf.pop(k)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "num_hidden_layers": 7}))
    cfg = config_from_hf(tmp_path)
    assert cfg.full_head_dim == 512 and cfg.full_kv_heads == 2  # (no global key/value heads named: the same)
    assert cfg.layer_types == ("sliding",) * 5 + ("full", "full")
    (tmp_path / "config.json").write_text(json.dumps({**conf, "hidden_size_per_layer_input": 0}))
    assert config_from_hf(tmp_path).ple_dim == 0
    conf.pop("hidden_size_per_layer_input")
    conf.pop("vocab_size_per_layer_input")
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert cfg.ple_dim == 256 and cfg.ple_vocab == 262_144  # (absent: the reference's, a table past the vocabulary)


def test_gemma4_e2b_shared_layers_as_the_reference_pairs_them(tmp_path):
    """Gemma 4 E2B's layout (35 layers, four sliding to one full, the last 20 sharing keys/values, double-wide
    MLPs): the layers sharing and the layers whose keys/values they read are the reference config's own
    ``kv_sharing_modes`` ("reuse" / "store"); the cache holds the other 15 layers only; the shared layers have no
    key/value projections and MLPs twice as wide; a released checkpoint's key/value tensors for them are skipped."""
    transformers = pytest.importorskip("transformers")
    from reasoning_rl.models.families import gemma4
    from reasoning_rl.models.transformer import KVCache, kv_stores

    types = (["sliding_attention"] * 4 + ["full_attention"]) * 7
    hf = dict(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=35, num_attention_heads=4,
              num_key_value_heads=1, head_dim=8, global_head_dim=16, hidden_size_per_layer_input=4,
              vocab_size_per_layer_input=64, num_kv_shared_layers=20, use_double_wide_mlp=True,
              layer_types=types, sliding_window=8)
    modes = transformers.Gemma4TextConfig(**hf).kv_sharing_modes
    (tmp_path / "config.json").write_text(json.dumps({**hf, "model_type": "gemma4_text"}))
    cfg = config_from_hf(tmp_path)
    assert {i for i, m in enumerate(modes) if m == "reuse"} == {i for i, o in enumerate(cfg.kv_owners) if o != i}
    assert {i for i, m in enumerate(modes) if m == "store"} == set(kv_stores(cfg)) == {13, 14}
    assert cfg.cached_layers == tuple(range(15)) and cfg.ple_dim == 4 and cfg.double_wide_mlp
    cache = KVCache.empty(cfg, 1, 4)
    assert cache.k["sliding"].shape[0] == 12 and cache.k["full"].shape[0] == 3
    mdef, _ = create(cfg, abstract=True)
    shapes = jax.tree.map(lambda a: a.shape, mdef.abstract_params())
    assert "k" not in shapes["shared_layers"]["attn"] and "k_norm" not in shapes["shared_layers"]["attn"]
    assert shapes["shared_layers"]["mlp"]["up"] == (16, 32, 80) and shapes["layers"]["mlp"]["up"] == (12, 32, 40)
    assert gemma4.ignored("model.layers.15.self_attn.k_proj.weight", cfg)
    assert not gemma4.ignored("model.layers.14.self_attn.k_proj.weight", cfg)
    assert not gemma4.ignored("model.layers.15.self_attn.q_proj.weight", cfg)


def test_arcee_and_helium_released_config_fields(tmp_path):
    """AFM's and Helium's config.json may leave out what their reference config classes fill (AFM: squared ReLU,
    RMSNorm epsilon 1e-5, 4096 positions, rope base 1e4, as many key/value heads as query heads, head size hidden /
    heads; Helium: head size 128, 20 key/value heads, epsilon 1e-8, 4096 positions, rope base 1e5), read as those
    classes read them, and the weights load; AFM's older YaRN fields read as the reference reads them; a Helium
    whose heads do not span hidden_size (its o_proj maps hidden -> hidden), a gated AFM and MLP biases are refused."""
    transformers = pytest.importorskip("transformers")
    shapes = {"vocab_size": 64, "num_hidden_layers": 2, "intermediate_size": 96}
    # (Helium: 40 heads of its default 128 span 5120, and its default 20 key/value heads are not the query heads)
    for model_type, cls, heads, d in (("arcee", "ArceeConfig", 32, 2560), ("helium", "HeliumConfig", 40, 5120)):
        conf = {"model_type": model_type, **shapes, "hidden_size": d, "num_attention_heads": heads}
        (tmp_path / "config.json").write_text(json.dumps(conf))
        cfg, ref = config_from_hf(tmp_path), getattr(transformers, cls)(**conf)
        assert (cfg.head_dim, cfg.n_kv_heads, cfg.norm_eps, cfg.max_seq_len, cfg.tie_embeddings) == (
            ref.head_dim, ref.num_key_value_heads, ref.rms_norm_eps, ref.max_position_embeddings,
            ref.tie_word_embeddings)
        assert (cfg.activation, cfg.qkv_bias, cfg.out_bias) == (ref.hidden_act, ref.attention_bias, False)
        assert (cfg.rope_theta, cfg.rope_scaling) == (ref.rope_parameters["rope_theta"], None)
    yarn = {"type": "yarn", "factor": 20.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
            "beta_slow": 1.0, "mscale": 1.0}
    conf = {"model_type": "arcee", **shapes, "hidden_size": 2560, "num_attention_heads": 32,
            "max_position_embeddings": 65536, "rope_theta": 10000.0, "rope_scaling": yarn}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    # (the reference config class edits the dicts it is given: a copy)
    cfg, ref = config_from_hf(tmp_path), transformers.ArceeConfig(**json.loads(json.dumps(conf)))
    assert cfg.rope_scaling["rope_type"] == ref.rope_parameters["rope_type"] == "yarn"
    keys = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale")
    assert all(cfg.rope_scaling[k] == ref.rope_parameters[k] == yarn[k] for k in keys)
    saved = {}
    for name, drop in (("arcee", ("hidden_act", "rms_norm_eps", "attention_bias", "mlp_bias")),
                       ("helium", ("hidden_act", "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling",
                                   "mlp_bias"))):
        _, params = _save_random(name, tmp_path / name)
        conf = saved[name] = json.loads((tmp_path / name / "config.json").read_text())
        conf = {k: v for k, v in conf.items() if k not in drop}
        (tmp_path / name / "config.json").write_text(json.dumps(conf))
        cfg = config_from_hf(tmp_path / name)
        assert dataclasses.replace(cfg, extra={}) == FAMILY_CONFIGS[name]
        _assert_same(load_params(tmp_path / name, create(cfg, abstract=True)[0]), params)
    for name, edit, match in (("helium", {"head_dim": None}, "head_dim=128 must equal hidden_size=32"),
                              ("helium", {"mlp_bias": True}, "mlp_bias=True"),
                              ("arcee", {"hidden_act": "silu"}, "hidden_act='silu'"),
                              ("arcee", {"mlp_bias": True}, "mlp_bias=True")):
        (tmp_path / name / "config.json").write_text(json.dumps({**saved[name], **edit}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path / name)


def test_nanochat_released_config_fields(tmp_path):
    """nanochat's config.json may leave out what its reference class fills in (the logit cap 15, squared ReLU, as
    many key/value heads as query heads); a null cap is none; the checkpoint holds no norm tensors."""
    transformers = pytest.importorskip("transformers")
    _save_random("nanochat", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    assert not any("norm" in k for k in Checkpoint(tmp_path).names())
    for k in ("final_logit_softcapping", "hidden_act", "num_key_value_heads"):
        conf.pop(k)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.NanoChatConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.final_softcap == ref.final_logit_softcapping == 15.0 and cfg.activation == ref.hidden_act
    assert cfg.n_kv_heads == ref.num_key_value_heads == 4
    (tmp_path / "config.json").write_text(json.dumps({**conf, "final_logit_softcapping": None}))
    assert config_from_hf(tmp_path).final_softcap is None


def test_granite_swa_released_config_fields(tmp_path):
    """Granite SWA's config.json may leave out what its reference class fills in: the layer kinds (every fourth
    layer full from the first), the window 128, the rope base of every layer (the global one), RMSNorm epsilon
    1e-5, tied embeddings; per-layer bases beyond one per kind are refused by name."""
    transformers = pytest.importorskip("transformers")
    _save_random("granite_swa", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "sliding_window", "layer_rope_theta", "rms_norm_eps", "tie_word_embeddings"):
        conf.pop(k)
    conf["num_hidden_layers"] = 6
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.GraniteSWAConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert [("full" if t == "full_attention" else "sliding") for t in ref.layer_types] == list(cfg.layer_types)
    assert cfg.sliding_window == ref.sliding_window == 128 and cfg.norm_eps == ref.rms_norm_eps == 1e-5
    assert cfg.tie_embeddings == ref.tie_word_embeddings and not cfg.nope_layers and cfg.rope_local_theta is None
    assert set(ref.layer_rope_theta) == {cfg.rope_theta}
    (tmp_path / "config.json").write_text(json.dumps({**conf, "layer_rope_theta": [1e4, 1e3, 1e5, 1e4, 1e4, 1e4]}))
    with pytest.raises(ConfigError, match="layer_rope_theta=.* is not supported"):
        config_from_hf(tmp_path)


def test_mellum_released_config_fields(tmp_path):
    """What MellumConfig fills in where a config.json leaves it out: every layer full and every MLP routed, the
    rope base of each layer kind (500000 full, 10000 sliding), the window, the routing fields, the head size and
    key/value heads; the expert count under either name (``num_local_experts``, as transformers writes it, or
    ``num_experts``); the multi-token-prediction layer stored beside the model (``mtp.*``) not loaded; a flat
    ``rope_parameters``, which the reference cannot read, refused."""
    transformers = pytest.importorskip("transformers")
    _, params = _save_random("mellum", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    keep = {k: conf[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")}
    (tmp_path / "config.json").write_text(json.dumps({**keep, "model_type": "mellum"}))
    cfg, ref = config_from_hf(tmp_path), transformers.MellumConfig(**keep)
    assert cfg.sliding_layers == (False,) * 4 == tuple(t == "sliding_attention" for t in ref.layer_types)
    assert ["sparse" if cfg.moe.is_moe(i) else "dense" for i in range(4)] == ref.mlp_layer_types
    assert (cfg.rope_theta, cfg.rope_scaling) == (ref.rope_parameters["full_attention"]["rope_theta"], None)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.max_seq_len, cfg.norm_eps, cfg.tie_embeddings) == (
        ref.num_key_value_heads, ref.head_dim, ref.intermediate_size, ref.max_position_embeddings, ref.rms_norm_eps,
        ref.tie_word_embeddings)
    m = cfg.moe
    assert (m.n_experts, m.top_k, m.ffn_dim, m.norm_topk, m.aux_loss_coef, m.score) == (
        ref.num_local_experts, ref.num_experts_per_tok, ref.moe_intermediate_size, ref.norm_topk_prob,
        ref.router_aux_loss_coef, "softmax")
    assert cfg.qkv_bias == cfg.out_bias == ref.attention_bias
    kinds = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    (tmp_path / "config.json").write_text(json.dumps({**keep, "model_type": "mellum", "layer_types": kinds,
                                                      "num_experts": 4}))
    cfg, ref = config_from_hf(tmp_path), transformers.MellumConfig(**keep, layer_types=kinds, num_experts=4)
    assert cfg.sliding_window == ref.sliding_window and cfg.sliding_layers == (True, False, True, True)
    assert cfg.rope_local_theta == ref.rope_parameters["sliding_attention"]["rope_theta"]
    assert cfg.moe.n_experts == ref.num_local_experts == 4
    (tmp_path / "config.json").write_text(json.dumps({**conf, "num_nextn_predict_layers": 1}))
    _add_shard(tmp_path, {"mtp.fc.weight": (32, 64), "mtp.layers.0.mlp.gate.weight": (4, 32),
                          "mtp.norm.weight": (32,)})
    _assert_same(load_params(tmp_path, create(config_from_hf(tmp_path), abstract=True)[0]), params)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "rope_parameters": {"rope_type": "default",
                                                                                  "rope_theta": 1e4}}))
    with pytest.raises(ConfigError, match="rope_parameters must be nested by layer kind"):
        config_from_hf(tmp_path)


def test_kolibri1_released_config_fields(tmp_path):
    """Kolibri-1's config.json may leave out what its reference class fills in: the layer kinds (one full in five),
    the window 513, the routing (top 6 of 384, not renormalised), the shared expert's width, the head size and
    key/value heads."""
    transformers = pytest.importorskip("transformers")
    _save_random("kolibri1", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    keep = {k: conf[k] for k in ("vocab_size", "hidden_size", "num_attention_heads")}
    keep["num_hidden_layers"] = 5
    (tmp_path / "config.json").write_text(json.dumps({**keep, "model_type": "kolibri1"}))
    cfg, ref = config_from_hf(tmp_path), transformers.Kolibri1Config(**keep)
    assert cfg.layer_types == tuple("sliding" if t == "sliding_attention" else "full" for t in ref.layer_types)
    assert cfg.nope_layers == (4,) and cfg.sliding_window == ref.sliding_window == 513
    m = cfg.moe
    assert (m.n_experts, m.top_k, m.ffn_dim, m.shared_ffn, m.norm_topk) == (
        ref.num_experts, ref.num_experts_per_tok, ref.moe_intermediate_size, ref.shared_expert_intermediate_size,
        ref.norm_topk_prob) == (384, 6, 512, 512, False)
    assert m.bias_on_logits and m.score_bias and m.score == "sigmoid"
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.norm_eps, cfg.tie_embeddings) == (
        ref.head_dim, ref.num_key_value_heads, ref.rms_norm_eps, ref.tie_word_embeddings)


def test_jais2_released_config_fields(tmp_path):
    """Jais-2's config.json may leave out what its reference class fills in: biases on the attention's and the MLP's
    projections (on), squared ReLU, LayerNorm epsilon 1e-5; the checkpoint's norms have biases."""
    transformers = pytest.importorskip("transformers")
    _save_random("jais2", tmp_path)
    assert {"model.norm.bias", "model.layers.0.mlp.up_proj.bias"} <= set(Checkpoint(tmp_path).names())
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("attention_bias", "mlp_bias", "hidden_act", "layer_norm_eps"):
        conf.pop(k)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.Jais2Config(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.qkv_bias == cfg.out_bias == ref.attention_bias and cfg.mlp_bias == ref.mlp_bias
    assert cfg.activation == ref.hidden_act and cfg.norm_eps == ref.layer_norm_eps and cfg.norm_bias


def test_flint_released_config_fields(tmp_path):
    """What FlintConfig fills in where a config.json leaves it out: every size (a config.json of model_type alone
    is the reference's default model), the layer kinds (the first two, every fourth from the second and the last
    full and without rotary, the others sliding over 513 positions), the dense first two layers, the routing (top 6
    of 256 by sigmoid scores, renormalised, no selection bias) beside a shared expert of 1024, the head size, the
    key/value heads and the rope base; an explicit empty ``mlp_only_layers`` kept, a top-level ``rope_theta`` read."""
    transformers = pytest.importorskip("transformers")
    _save_random("flint", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "flint"}))
    cfg, ref = config_from_hf(tmp_path), transformers.FlintConfig()
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim,
            cfg.max_seq_len, cfg.norm_eps, cfg.tie_embeddings) == (
        ref.vocab_size, ref.hidden_size, ref.num_hidden_layers, ref.num_attention_heads, ref.num_key_value_heads,
        ref.head_dim, ref.intermediate_size, ref.max_position_embeddings, ref.rms_norm_eps, ref.tie_word_embeddings)
    assert (cfg.rope_theta, cfg.rope_scaling) == (ref.rope_parameters["rope_theta"], None)
    assert cfg.layer_types == tuple("sliding" if t == "sliding_attention" else "full" for t in ref.layer_types)
    assert cfg.nope_layers == tuple(i for i, t in enumerate(ref.layer_types) if t == "full_attention")
    assert cfg.nope_layers[:4] == (0, 1, 5, 9) and cfg.nope_layers[-1] == 48
    assert cfg.sliding_window == ref.sliding_window == 513
    assert cfg.qk_norm and cfg.attn_sinks and cfg.qkv_bias == cfg.out_bias == ref.attention_bias
    m = cfg.moe
    assert [i for i in range(cfg.n_layers) if not m.is_moe(i)] == ref.mlp_only_layers == [0, 1]
    assert (m.n_experts, m.top_k, m.ffn_dim, m.shared_ffn, m.norm_topk) == (
        ref.num_experts, ref.num_experts_per_tok, ref.moe_intermediate_size, ref.shared_expert_intermediate_size,
        ref.norm_topk_prob) == (256, 6, 512, 1024, True)
    assert m.score == "sigmoid" and not (m.score_bias or m.shared_gate or m.router_bias) and m.aux_loss_coef == 0.0
    keep = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 6,
            "mlp_only_layers": [], "rope_theta": 5e5}
    (tmp_path / "config.json").write_text(json.dumps({**keep, "model_type": "flint"}))
    cfg, ref = config_from_hf(tmp_path), transformers.FlintConfig(**keep)
    assert [i for i in range(6) if not cfg.moe.is_moe(i)] == ref.mlp_only_layers == []
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"] == 5e5
    assert cfg.nope_layers == tuple(i for i, t in enumerate(ref.layer_types) if t == "full_attention") == (0, 1, 5)


def test_granitemoe_swa_released_config_fields(tmp_path):
    """Granite SWA-MoE's config.json may leave out what its reference class fills in: the layer kinds (every fourth
    layer full from the first), the window 128, every layer's rope base (the global one), RMSNorm epsilon 1e-6,
    untied embeddings, 8 experts of width 11008 choosing 2, no shared MLP, the balancing loss's weight 0.001."""
    transformers = pytest.importorskip("transformers")
    _save_random("granitemoe_swa", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "sliding_window", "layer_rope_theta", "rms_norm_eps", "tie_word_embeddings",
              "num_local_experts", "num_experts_per_tok", "intermediate_size", "shared_intermediate_size",
              "router_aux_loss_coef"):
        conf.pop(k)
    conf["num_hidden_layers"] = 6
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.GraniteMoeSWAConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert [("full" if t == "full_attention" else "sliding") for t in ref.layer_types] == list(cfg.layer_types)
    assert cfg.sliding_window == ref.sliding_window == 128 and cfg.norm_eps == ref.rms_norm_eps == 1e-6
    assert cfg.tie_embeddings == ref.tie_word_embeddings is False and not cfg.nope_layers
    assert set(ref.layer_rope_theta) == {cfg.rope_theta} and cfg.rope_local_theta is None
    m = cfg.moe
    assert (m.n_experts, m.top_k, m.ffn_dim, m.aux_loss_coef) == (
        ref.num_local_experts, ref.num_experts_per_tok, ref.intermediate_size, ref.router_aux_loss_coef) == (
        8, 2, 11008, 0.001)
    assert m.n_shared == ref.shared_intermediate_size == 0 and m.norm_topk and m.score == "softmax"
    (tmp_path / "config.json").write_text(json.dumps({**conf, "shared_intermediate_size": 24}))
    m = config_from_hf(tmp_path).moe
    assert (m.n_shared, m.shared_ffn) == (1, 24)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "layer_rope_theta": [1e4, 1e3, 1e5, 1e4, 1e4, 1e4]}))
    with pytest.raises(ConfigError, match="layer_rope_theta=.* is not supported"):
        config_from_hf(tmp_path)


def test_gemma4_unified_released_config_fields(tmp_path):
    """Gemma 4 unified's config.json may leave out its window (1024, not Gemma 4's 512), its context (262144) and
    the layer kinds (five sliding in six, the last full); per-layer inputs and experts, which its reference never
    builds, stay off whatever Gemma 4 fields the file carries; text attending both ways is refused."""
    transformers = pytest.importorskip("transformers")
    _save_random("gemma4_unified", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("sliding_window", "max_position_embeddings", "layer_types", "per_layer_config"):
        conf.pop(k)
    conf.update(num_hidden_layers=7, global_head_dim=16, num_global_key_value_heads=1)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.Gemma4UnifiedTextConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.sliding_window == ref.sliding_window == 1024 and cfg.max_seq_len == ref.max_position_embeddings
    assert [("full" if t == "full_attention" else "sliding") for t in ref.layer_types] == list(cfg.layer_types)
    assert cfg.layer_types == ("sliding",) * 5 + ("full", "full")
    assert cfg.ple_dim == 0 and cfg.moe is None and cfg.full_head_dim == 16 and cfg.full_kv_heads == 1
    (tmp_path / "config.json").write_text(json.dumps({**conf, "hidden_size_per_layer_input": 256,
                                                      "enable_moe_block": True}))
    cfg = config_from_hf(tmp_path)
    assert cfg.ple_dim == 0 and cfg.moe is None
    (tmp_path / "config.json").write_text(json.dumps({**conf, "use_bidirectional_attention": "all"}))
    with pytest.raises(ConfigError, match="use_bidirectional_attention"):
        config_from_hf(tmp_path)


def test_lfm3_released_config_fields(tmp_path):
    """LFM3's config.json may leave out what its reference class fills in (the layer schedule, the window, the
    rope of each kind, the gate and the output norms, the kernel, tied embeddings, the norm epsilon); rope
    parameters must be nested by the attention kinds the layers use (a flat dict, which the reference cannot run,
    is refused), a kind no layer has may be left out; convolution biases, unknown layer kinds and a model of
    convolutions alone are refused by name."""
    transformers = pytest.importorskip("transformers")
    _save_random("lfm3", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "sliding_window", "rope_parameters", "use_sandwich_norm", "use_attention_gate",
              "conv_L_cache", "tie_word_embeddings", "norm_eps", "attention_bias"):
        conf.pop(k)
    conf["num_hidden_layers"] = 8
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.Lfm3Config(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.linear.layers == tuple(i for i, t in enumerate(ref.layer_types) if t == "conv") == (0, 1, 3, 5, 7)
    assert cfg.layer_types == tuple("sliding" if t == "sliding_attention" else "full" for t in ref.layer_types)
    assert [i for i, s in enumerate(cfg.sliding_layers) if s] == [4]
    assert cfg.sliding_window == ref.sliding_window == 256 and cfg.linear.conv == ref.conv_L_cache == 7
    full, local = ref.rope_parameters["full_attention"], ref.rope_parameters["sliding_attention"]
    assert cfg.rope_theta == full["rope_theta"] == 1e6 and cfg.rope_local_theta == local["rope_theta"] == 1e4
    assert cfg.rope_scaling == {"rope_type": "proportional", "partial_rotary_factor": 0.5}
    assert cfg.head_gate == ref.use_attention_gate and cfg.sandwich_norm == ref.use_sandwich_norm
    assert cfg.tie_embeddings == ref.tie_word_embeddings and cfg.norm_eps == ref.norm_eps == 1e-5
    assert not cfg.qkv_bias and not cfg.out_bias
    base = {**conf, "num_hidden_layers": 3, "layer_types": ["conv", "full_attention", "conv"]}
    (tmp_path / "config.json").write_text(json.dumps({**base, "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 5e5}}}))
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling is None and not any(cfg.sliding_layers)
    for over, match in [({"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "rope_parameters"),
                        ({"conv_bias": True}, "conv_bias"),
                        ({"layer_types": ["conv", "mamba", "conv"]}, "layer_types"),
                        ({"layer_types": ["conv"] * 3}, "no attention layer")]:
        (tmp_path / "config.json").write_text(json.dumps({**base, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_laguna_released_config_fields(tmp_path):
    """Laguna's config.json may leave out what its reference class fills in (every layer full, the first dense,
    half of each head rotating at base 500,000, softplus gates per head, the window, the experts' shape, no soft
    cap); a full-attention entry given without a rotary share rotates whole heads, as the reference reads it;
    head counts per layer (one per kind), a flat rope dict, router weights on the experts' input and a SiLU-less
    MLP are refused by name."""
    transformers = pytest.importorskip("transformers")
    _save_random("laguna", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "sliding_window", "rope_parameters", "gating", "mlp_layer_types",
              "num_attention_heads_per_layer", "moe_router_logit_softcapping", "moe_routed_scaling_factor",
              "shared_expert_intermediate_size", "rms_norm_eps", "tie_word_embeddings", "attention_bias"):
        conf.pop(k)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.LagunaConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert ref.layer_types == ["full_attention"] * 4 and cfg.layer_types is None and not any(cfg.sliding_layers)
    full = ref.rope_parameters["full_attention"]
    assert cfg.rope_theta == full["rope_theta"] and cfg.rope_dim == int(cfg.head_dim * full["partial_rotary_factor"])
    assert cfg.rope_dim == 6 and cfg.full_rope_dim == 0 and not cfg.split_full
    assert cfg.head_gate and ref.gating is True and cfg.gate_act == "softplus" and not cfg.attn_gate
    assert cfg.n_heads == ref.num_attention_heads_per_layer[0] == 4 and cfg.full_heads == 0
    m = cfg.moe
    assert (m.first_dense, m.dense_layers) == (ref.mlp_layer_types.index("sparse"), ())
    assert m.router_softcap == ref.moe_router_logit_softcapping == 0.0 and m.scaling == 1.0
    assert m.shared_ffn == ref.shared_expert_intermediate_size == 512 and m.n_shared == 1
    assert cfg.norm_eps == ref.rms_norm_eps and cfg.tie_embeddings == ref.tie_word_embeddings is False
    two = {"layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]}
    (tmp_path / "config.json").write_text(json.dumps({**conf, **two, "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 5e4},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e3, "partial_rotary_factor": 0.5}}}))
    cfg = config_from_hf(tmp_path)
    assert (cfg.rope_dim, cfg.full_rope_dim, cfg.rope_theta, cfg.rope_local_theta) == (6, 12, 5e4, 1e3)
    assert cfg.split_full and cfg.sliding_window == 512
    for over, match in [({"num_attention_heads_per_layer": [4, 2, 4, 4]}, "num_attention_heads_per_layer"),
                        ({"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "rope_parameters"),
                        ({"moe_apply_router_weight_on_input": True}, "moe_apply_router_weight_on_input"),
                        ({"hidden_act": "gelu"}, "hidden_act"),
                        ({"layer_types": ["full_attention", "chunked_attention"] * 2}, "layer_types")]:
        (tmp_path / "config.json").write_text(json.dumps({**conf, **two, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_beam_released_config_fields(tmp_path):
    """Beam's config.json may leave out what its reference class fills in (every sixth layer full and the last,
    the first three dense, the full layers without rotary and their queries scaled by position, the sliding ones
    at base 10,000, the window, grouped routing, the final cap); a null cap is none (not the default), a kind
    given rope parameters rotates; a flat rope dict and a SiLU-less MLP are refused by name."""
    transformers = pytest.importorskip("transformers")
    _save_random("beam", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "sliding_window", "rope_parameters", "mlp_layer_types", "final_logit_softcapping",
              "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "rms_norm_eps",
              "tie_word_embeddings", "attention_bias"):
        conf.pop(k)
    conf["num_hidden_layers"] = 8
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.BeamConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.layer_types == tuple("sliding" if t == "sliding_attention" else "full" for t in ref.layer_types)
    assert [i for i, s in enumerate(cfg.sliding_layers) if not s] == [5, 7] == list(cfg.nope_layers)
    assert ref.rope_parameters["full_attention"] is None and cfg.nope_query_scale == (0.1, 2048.0)
    assert cfg.rope_local_theta == ref.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    m = cfg.moe
    assert m.first_dense == ref.mlp_layer_types.index("sparse") == 3 and m.dense_layers == ()
    assert (m.n_group, m.topk_group, m.scaling, m.norm_topk) == (ref.n_group, ref.topk_group,
                                                                 ref.routed_scaling_factor, ref.norm_topk_prob)
    assert cfg.final_softcap == ref.final_logit_softcapping == 30.0 and cfg.sliding_window == ref.sliding_window
    assert cfg.gate_bias and cfg.attn_gate and cfg.depth_residual and cfg.sandwich_norm
    two = {**conf, "num_hidden_layers": 4, "final_logit_softcapping": None,
           "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                               "full_attention": {"rope_type": "default", "rope_theta": 5e4}}}
    (tmp_path / "config.json").write_text(json.dumps(two))
    cfg = config_from_hf(tmp_path)
    assert cfg.final_softcap is None and not cfg.nope_layers and cfg.nope_query_scale is None
    assert (cfg.rope_theta, cfg.rope_local_theta) == (5e4, 100.0)
    for over, match in [({"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "rope_parameters"),
                        ({"hidden_act": "gelu"}, "hidden_act"),
                        ({"mlp_layer_types": ["dense"] * 4}, "mlp_layer_types")]:
        (tmp_path / "config.json").write_text(json.dumps({**two, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_lara_mini_released_config_fields(tmp_path):
    """Lara Mini's config.json may leave out what its reference class fills in (the layer pattern linear, sliding,
    linear, full, sliding; the window, the linear layers' shapes, the rope base, tied embeddings, renormalised
    top-k); a model of linear layers alone, an unknown layer kind and attention biases are refused by name."""
    transformers = pytest.importorskip("transformers")
    _save_random("lara_mini", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "sliding_window", "rope_theta", "rope_scaling", "tie_word_embeddings", "norm_topk_prob",
              "linear_conv_kernel_dim", "rms_norm_eps", "linear_num_key_heads", "linear_num_value_heads",
              "linear_key_head_dim", "linear_value_head_dim"):
        conf.pop(k, None)
    conf["num_hidden_layers"] = 7
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.LaraMiniConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.linear.layers == tuple(i for i, t in enumerate(ref.layer_types) if t == "linear_attention") == (0, 2, 5)
    assert cfg.nope_layers == tuple(i for i, t in enumerate(ref.layer_types) if t == "full_attention") == (3,)
    assert [i for i, s in enumerate(cfg.sliding_layers) if s] == [1, 4, 6]
    assert cfg.sliding_window == ref.sliding_window and cfg.rope_theta == ref.rope_parameters["rope_theta"]
    assert cfg.linear.conv == ref.linear_conv_kernel_dim and cfg.norm_eps == ref.rms_norm_eps
    lin = cfg.linear
    assert (lin.k_heads, lin.v_heads, lin.k_dim, lin.v_dim) == (ref.linear_num_key_heads, ref.linear_num_value_heads,
                                                                ref.linear_key_head_dim, ref.linear_value_head_dim)
    assert cfg.tie_embeddings == ref.tie_word_embeddings is True and cfg.moe.norm_topk == ref.norm_topk_prob
    for over, match in [({"layer_types": ["linear_attention"] * 7}, "no attention layer"),
                        ({"layer_types": ["linear_attention", "chunked_attention"] + ["full_attention"] * 5},
                         "layer_types"), ({"attention_bias": True}, "attention_bias")]:
        (tmp_path / "config.json").write_text(json.dumps({**conf, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


@pytest.mark.parametrize("model_type", ["granitemoe", "granitemoeshared"])
def test_granitemoe_released_config_fields(tmp_path, model_type):
    """Granite-MoE's config.json may leave out what its reference classes fill in: 8 experts, top 2, the router's
    aux-loss weight, muP scalars of 1, untied embeddings, no shared MLP (``granitemoeshared``: 0 wide by default);
    a shared width under ``granitemoe`` is not its field and adds nothing (the reference reads none)."""
    transformers = pytest.importorskip("transformers")
    _save_random("granitemoeshared", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "embedding_multiplier",
              "residual_multiplier", "attention_multiplier", "logits_scaling", "tie_word_embeddings", "rms_norm_eps",
              "rope_theta", "rope_scaling", "shared_intermediate_size"):
        conf.pop(k, None)
    conf["model_type"] = model_type
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cls = transformers.GraniteMoeSharedConfig if model_type == "granitemoeshared" else transformers.GraniteMoeConfig
    ref = cls(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    m = cfg.moe
    assert (m.n_experts, m.top_k, m.aux_loss_coef) == (ref.num_local_experts, ref.num_experts_per_tok,
                                                       ref.router_aux_loss_coef) == (8, 2, 0.001)
    assert (cfg.embed_multiplier, cfg.residual_multiplier, cfg.query_scale, cfg.logits_scaling) == (
        ref.embedding_multiplier, ref.residual_multiplier, ref.attention_multiplier, ref.logits_scaling)
    assert cfg.tie_embeddings == ref.tie_word_embeddings is False and cfg.norm_eps == ref.rms_norm_eps
    assert m.n_shared == 0 and m.norm_topk and m.score == "softmax"
    (tmp_path / "config.json").write_text(json.dumps({**conf, "model_type": "granitemoe",
                                                      "shared_intermediate_size": 64}))
    assert config_from_hf(tmp_path).moe.n_shared == 0


def test_exaone_released_config_fields(tmp_path):
    """EXAONE's config.json spells the layer count, norm epsilon and activation its own way (``num_layers``,
    ``layer_norm_epsilon``, ``activation_function``) and may leave out the rope base (500,000), the epsilon and the
    vocabulary size; the tensors are GPT-2's names, as released."""
    transformers = pytest.importorskip("transformers")
    _save_random("exaone", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["num_layers"], conf["activation_function"] = conf.pop("num_hidden_layers"), conf.pop("hidden_act")
    conf["layer_norm_epsilon"] = 3e-6
    for k in ("rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.ExaoneConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.n_layers == ref.num_hidden_layers == 2 and cfg.norm_eps == ref.rms_norm_eps == 3e-6
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"] == 5e5
    names = set(Checkpoint(tmp_path).names())
    assert {"transformer.wte.weight", "transformer.ln_f.weight", "transformer.h.1.attn.attention.out_proj.bias",
            "transformer.h.0.mlp.c_fc_0.weight", "transformer.h.0.ln_2.weight"} <= names
    (tmp_path / "config.json").write_text(json.dumps({**conf, "activation_function": "gelu"}))
    with pytest.raises(ConfigError, match="hidden_act"):
        config_from_hf(tmp_path)


def test_cohere_released_config_fields(tmp_path):
    """Command R / Aya's config.json may leave out what its reference class fills in (tied embeddings, the
    logit scale 0.0625, LayerNorm epsilon 1e-5); every layer rotates; Command R+'s per-head query/key LayerNorm
    (``use_qk_norm``) is refused by name."""
    transformers = pytest.importorskip("transformers")
    _save_random("cohere", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("tie_word_embeddings", "logit_scale", "layer_norm_eps", "use_qk_norm"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.CohereConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.tie_embeddings == ref.tie_word_embeddings is True and cfg.logits_multiplier == ref.logit_scale
    assert cfg.norm_eps == ref.layer_norm_eps and cfg.nope_layers == () and cfg.sliding_window == 0
    assert "layer_types" not in conf and conf["model_type"] == "cohere"
    (tmp_path / "config.json").write_text(json.dumps({**conf, "use_qk_norm": True}))
    with pytest.raises(ConfigError, match="use_qk_norm"):
        config_from_hf(tmp_path)


def test_nemotron_released_config_fields(tmp_path):
    """Nemotron's config.json may leave out what its reference class fills in (half of each head rotating, the
    epsilon 1e-5 under ``norm_eps``, no biases, the head size hidden / heads, the rope base); a partial rotary
    factor at the top level (older files) or in ``rope_parameters`` reads the same."""
    transformers = pytest.importorskip("transformers")
    _save_random("nemotron", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("partial_rotary_factor", "norm_eps", "attention_bias", "mlp_bias", "head_dim", "rope_theta",
              "rope_scaling", "rope_parameters"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.NemotronConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.head_dim == ref.head_dim == 8 and cfg.rope_dim == ref.head_dim * ref.rope_parameters[
        "partial_rotary_factor"] == 4
    assert cfg.norm_eps == ref.norm_eps and not cfg.qkv_bias and not cfg.mlp_bias and cfg.norm_offset == 1.0
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"]
    for where in ({"partial_rotary_factor": 0.25}, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                                        "partial_rotary_factor": 0.25}}):
        (tmp_path / "config.json").write_text(json.dumps({**conf, **where}))
        assert config_from_hf(tmp_path).rope_dim == 2


def test_olmo_released_config_fields(tmp_path):
    """OLMo's config.json may leave out the clamp (none), biases (none), tied embeddings (no) and the rope base;
    its norms have no tensors in the files and a fixed epsilon (1e-5)."""
    transformers = pytest.importorskip("transformers")
    _save_random("olmo", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["clip_qkv"] == 0.05 and not any("norm" in n for n in Checkpoint(tmp_path).names())
    for k in ("clip_qkv", "attention_bias", "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.OlmoConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.clip_qkv == 0.0 and ref.clip_qkv is None and not cfg.qkv_bias and not cfg.tie_embeddings
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"] and cfg.norm_eps == 1e-5
    assert cfg.norm_center and not cfg.norm_weight


def test_stablelm_released_config_fields(tmp_path):
    """StableLM's config.json may leave out what its reference class fills in (a quarter of each head rotating, no
    biases, sequential residuals, epsilon 1e-5, untied); StableLM 2 12B's per-head query/key LayerNorms
    (``qk_layernorm``) are refused by name."""
    transformers = pytest.importorskip("transformers")
    _save_random("stablelm", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("use_qkv_bias", "use_parallel_residual", "layer_norm_eps", "tie_word_embeddings", "qk_layernorm",
              "partial_rotary_factor", "rope_parameters", "rope_theta", "rope_scaling"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.StableLmConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_dim == 8 * ref.rope_parameters["partial_rotary_factor"] == 2
    assert cfg.qkv_bias is ref.use_qkv_bias is False and cfg.parallel_block is ref.use_parallel_residual is False
    assert cfg.norm_eps == ref.layer_norm_eps and cfg.tie_embeddings is ref.tie_word_embeddings is False
    (tmp_path / "config.json").write_text(json.dumps({**conf, "qk_layernorm": True}))
    with pytest.raises(ConfigError, match="qk_layernorm"):
        config_from_hf(tmp_path)


def test_kimi_linear_released_config_fields(tmp_path):
    """Kimi Linear's released config.json names its linear layers in ``linear_attn_config`` (1-based
    ``full_attn_layers`` / ``kda_layers``, head size and count, convolution) and its dense layers by
    ``first_k_dense_replace``; fields left out take the reference class's defaults; transformers' own aliases read
    the same. Refused by name: a layer named twice or not at all, dense layers after sparse ones, other routing
    scores, a model without attention layers."""
    transformers = pytest.importorskip("transformers")
    _save_random("kimi_linear", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    # written both ways: transformers' fields and the released layout (1-based layer numbers)
    assert conf["linear_attn_config"] == {"full_attn_layers": [2], "kda_layers": [1, 3, 4], "head_dim": 8,
                                          "num_heads": 2, "short_conv_kernel_size": 4}
    assert conf["mlp_layer_types"] == ["dense"] + ["sparse"] * 3 and conf["first_k_dense_replace"] == 1
    for k in ("layer_types", "mlp_layer_types", "linear_head_dim", "linear_num_heads", "linear_conv_kernel_dim",
              "moe_renormalize", "routed_scaling_factor", "rms_norm_eps", "model_max_length", "topk_group"):
        conf.pop(k, None)
    conf.update(num_hidden_layers=5, first_k_dense_replace=2, num_expert_group=1,
                linear_attn_config={"full_attn_layers": [2, 5], "kda_layers": [1, 3, 4], "head_dim": 8,
                                    "num_heads": 2, "short_conv_kernel_size": 3})
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.KimiLinearConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.linear.layers == tuple(i for i, t in enumerate(ref.layer_types) if t == "linear_attention") == (0, 2, 3)
    assert cfg.moe.first_dense == ref.mlp_layer_types.count("dense") == 2
    lin = cfg.linear
    want = (ref.linear_num_heads, ref.linear_num_heads, ref.linear_head_dim, ref.linear_conv_kernel_dim)
    assert (lin.kind, lin.k_heads, lin.v_heads, lin.k_dim, lin.conv) == ("kda", *want) == ("kda", 2, 2, 8, 3)
    assert cfg.moe.norm_topk == ref.norm_topk_prob and cfg.moe.scaling == ref.routed_scaling_factor
    assert cfg.moe.topk_group == ref.topk_group and cfg.norm_eps == ref.rms_norm_eps
    assert cfg.max_seq_len == ref.max_position_embeddings and cfg.nope_layers == tuple(range(5))
    (tmp_path / "config.json").write_text(json.dumps({**conf, "mlp_layer_types": ["dense"] * 3 + ["sparse"] * 2}))
    assert config_from_hf(tmp_path).moe.first_dense == 3  # mlp_layer_types over first_k_dense_replace
    aliased = {k: v for k, v in conf.items() if k not in ("num_experts", "num_experts_per_token")}
    (tmp_path / "config.json").write_text(json.dumps({**aliased, "num_local_experts": 4, "num_experts_per_tok": 2}))
    again = config_from_hf(tmp_path)  # transformers' aliases of the released names
    assert dataclasses.replace(again, extra={}) == dataclasses.replace(cfg, extra={})
    for over, match in [({"linear_attn_config": {"full_attn_layers": [2, 3], "kda_layers": [1, 3, 4]}},
                         "full_attn_layers and kda_layers"),
                        ({"mlp_layer_types": ["dense", "sparse", "dense", "sparse", "sparse"]}, "after sparse"),
                        ({"moe_router_activation_func": "softmax"}, "moe_router_activation_func"),
                        ({"layer_types": ["linear_attention"] * 5}, "no attention layer"),
                        ({"moe_layer_freq": 2}, "moe_layer_freq")]:
        (tmp_path / "config.json").write_text(json.dumps({**conf, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_cohere_compass_released_config_fields(tmp_path):
    """Cohere Compass's config.json may leave out what its reference class fills in: every layer full, the window
    4096, tied embeddings, LayerNorm epsilon 1e-5, no biases and no logit scale (1, not Command A's 0.0625), the
    head size hidden_size / heads (a ``head_dim`` in the file overrides it, unlike Command A's); rope parameters
    must be nested by layer kind (the reference reads them so), top-level leftovers beside them ignored, a null
    kind rotating nowhere."""
    transformers = pytest.importorskip("transformers")
    _save_random("cohere_compass", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "sliding_window", "logit_scale", "tie_word_embeddings", "layer_norm_eps",
              "attention_bias"):
        conf.pop(k)
    conf.pop("head_dim")
    conf.update(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                 "rope_theta": 7.0, "rope_type": "default"})
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.CohereCompassTextConfig(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert ref.layer_types == ["full_attention"] * 4 and cfg.layer_types is None and not any(cfg.sliding_layers)
    assert cfg.head_dim == ref.head_dim == 8 and cfg.rope_theta == 5e5 and not cfg.nope_layers
    assert cfg.logits_multiplier == 1.0 and ref.logit_scale is None
    assert cfg.tie_embeddings == ref.tie_word_embeddings is True and cfg.norm_eps == ref.layer_norm_eps == 1e-5
    assert not cfg.qkv_bias and not ref.attention_bias and not cfg.rope_interleave
    (tmp_path / "config.json").write_text(json.dumps({**conf, "head_dim": 12}))
    ref = transformers.CohereCompassTextConfig(**{k: v for k, v in conf.items() if k != "architectures"}, head_dim=12)
    assert config_from_hf(tmp_path).head_dim == ref.head_dim == 12
    sliding = {**conf, "layer_types": ["sliding_attention", "full_attention"] * 2,
               "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                   "full_attention": None}}
    (tmp_path / "config.json").write_text(json.dumps(sliding))
    ref = transformers.CohereCompassTextConfig(**{k: v for k, v in sliding.items() if k != "architectures"})
    cfg = config_from_hf(tmp_path)
    assert cfg.sliding_window == ref.sliding_window == 4096 and cfg.nope_layers == (1, 3) and cfg.rope_theta == 1e4
    (tmp_path / "config.json").write_text(json.dumps({**conf, "rope_parameters": {"rope_type": "default",
                                                                                  "rope_theta": 1e4}}))
    with pytest.raises(ConfigError, match="rope_parameters must be nested by layer kind"):
        config_from_hf(tmp_path)


def test_hyperclovax_released_config_fields(tmp_path):
    """HyperCLOVA X SEED's config.json may leave out what its reference class fills in: the softmax scale
    (head_dim ** -0.5), the head size (hidden / heads), the output norms (on); its logits_scaling multiplies."""
    transformers = pytest.importorskip("transformers")
    _save_random("hyperclovax", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("attention_multiplier", "head_dim", "use_post_norm"):
        conf.pop(k)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    ref = transformers.HyperCLOVAXConfig(**{k: v for k, v in conf.items() if k not in ("architectures",)})
    cfg = config_from_hf(tmp_path)
    assert cfg.query_scale == ref.attention_multiplier == (32 // 4) ** -0.5 and cfg.head_dim == ref.head_dim == 8
    assert cfg.sandwich_norm and ref.use_post_norm
    assert cfg.logits_multiplier == ref.logits_scaling == 0.7 and cfg.logits_scaling == 1.0


def test_cohere2_released_config_fields(tmp_path):
    """Command A's config.json as released: the layer kinds as ``sliding_window_pattern`` (no ``layer_types``), a
    ``head_dim`` the reference ignores (it derives hidden_size / heads); without a window, no layer rotates (the
    reference rotates only where a layer slides)."""
    _save_random("cohere2", tmp_path)
    written = config_from_hf(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("layer_types")
    conf.update(sliding_window_pattern=4, head_dim=12)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert dataclasses.replace(config_from_hf(tmp_path), extra={}) == dataclasses.replace(written, extra={})
    (tmp_path / "config.json").write_text(json.dumps({**conf, "sliding_window": None}))
    cfg = config_from_hf(tmp_path)
    assert not any(cfg.sliding_layers) and cfg.nope_layers == (0, 1, 2, 3)


def test_minicpm5_moe_released_config_fields(tmp_path):
    """MiniCPM5-MoE's config.json may leave out what its reference class fills in (the rope base 5e6, the routing
    fields, head_dim 128 rather than hidden / heads); an older config names its leading dense layers with
    ``first_k_dense_replace`` instead of ``mlp_layer_types`` (one when neither is there), as the reference reads it;
    ``use_gated_attention: false`` is refused, as the reference refuses it."""
    transformers = pytest.importorskip("transformers")
    _, params = _save_random("minicpm5_moe", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("rope_parameters", "rope_theta", "routed_scaling_factor", "n_group", "topk_group", "norm_topk_prob"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert dataclasses.replace(config_from_hf(tmp_path), extra={}) == FAMILY_CONFIGS["minicpm5_moe"]
    _assert_same(load_params(tmp_path, create(config_from_hf(tmp_path), abstract=True)[0]), params)
    conf.pop("mlp_layer_types")
    for k in (None, 0, 2):
        edit = {} if k is None else {"first_k_dense_replace": k}
        (tmp_path / "config.json").write_text(json.dumps({**conf, **edit}))
        moe = config_from_hf(tmp_path).moe
        ref = transformers.MiniCPM5MoeConfig(**{**conf, **edit}).mlp_layer_types
        assert ref == ["dense" if moe.first_dense > i or i in moe.dense_layers else "sparse" for i in range(4)]
        assert moe.first_dense == (1 if k is None else k)
    conf.pop("head_dim")
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert config_from_hf(tmp_path).head_dim == 128
    for edit, match in (({"use_gated_attention": False}, "use_gated_attention=False"),
                        ({"first_k_dense_replace": 4}, "first_k_dense_replace=4")):
        (tmp_path / "config.json").write_text(json.dumps({**conf, **edit}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_dots1_and_youtu_released_config_fields(tmp_path):
    """dots.llm1's reference slides from ``max_window_layers`` on whenever ``sliding_window`` is set (its
    ``use_sliding_window`` unread) and leaves top-k weights unnormalised by default; Youtu-LLM's ties its
    embeddings and has low-rank queries (1536) unless config.json says otherwise, a null ``q_lora_rank`` being
    full-rank queries. Each checked against the reference config class."""
    transformers = pytest.importorskip("transformers")
    _save_random("dots1", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "norm_topk_prob"):
        conf.pop(k)
    conf.update(use_sliding_window=False, max_window_layers=2)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    ref = transformers.Dots1Config(**conf)
    assert ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers] == ref.layer_types
    assert cfg.sliding_layers == (False, False, True) and cfg.moe.norm_topk is ref.norm_topk_prob is False
    youtu = {"model_type": "youtu", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 40,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}
    for edit in ({}, {"q_lora_rank": None, "tie_word_embeddings": False, "rope_interleave": False}):
        (tmp_path / "config.json").write_text(json.dumps({**youtu, **edit}))
        cfg, ref = config_from_hf(tmp_path), transformers.YoutuConfig(**youtu, **edit)
        assert (cfg.mla.q_lora_rank or None, cfg.tie_embeddings, cfg.mla.rope_interleave) == (
            ref.q_lora_rank, ref.tie_word_embeddings, ref.rope_interleave)
        assert (cfg.mla.kv_lora_rank, cfg.mla.qk_rope_dim, cfg.mla.qk_nope_dim, cfg.mla.v_dim) == (
            ref.kv_lora_rank, ref.qk_rope_head_dim, ref.qk_nope_head_dim, ref.v_head_dim)
    assert config_from_hf(tmp_path).mla.q_lora_rank == 0 and transformers.YoutuConfig(**youtu).q_lora_rank == 1536


def test_cohere2_moe_released_config_fields(tmp_path):
    """Command A+'s older config.json names its leading dense layers with ``first_k_dense_replace`` (no
    ``layer_types`` / ``mlp_layer_types``): the layer kinds then follow the dense and the MoE layers' own sliding
    patterns, as the reference reads them; the dense layers rotate though full when their pattern is 1 (the
    default), and only where they slide otherwise."""
    transformers = pytest.importorskip("transformers")
    _, params = _save_random("cohere2_moe", tmp_path)
    written = config_from_hf(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "mlp_layer_types", "prefix_dense_sliding_window_pattern", "expert_selection_fn",
              "shared_expert_combination_strategy"):
        conf.pop(k)
    conf["first_k_dense_replace"] = 1
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert dataclasses.replace(config_from_hf(tmp_path), extra={}) == dataclasses.replace(written, extra={})
    _assert_same(load_params(tmp_path, create(config_from_hf(tmp_path), abstract=True)[0]), params)
    for edit in ({"first_k_dense_replace": 2, "prefix_dense_sliding_window_pattern": 2, "sliding_window_pattern": 2},
                 {"first_k_dense_replace": 3, "sliding_window_pattern": 1}):
        (tmp_path / "config.json").write_text(json.dumps({**conf, **edit}))
        cfg, ref = config_from_hf(tmp_path), transformers.Cohere2MoeConfig(**{**conf, **edit})
        assert ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers] == ref.layer_types
        assert ["sparse" if cfg.moe.is_moe(i) else "dense" for i in range(4)] == ref.mlp_layer_types
        forced = ref.prefix_dense_sliding_window_pattern == 1
        assert cfg.nope_layers == tuple(i for i, t in enumerate(ref.layer_types) if t == "full_attention"
                                        and not (forced and ref.mlp_layer_types[i] == "dense"))
    conf.pop("head_dim")  # (128 by default, as the reference's, not hidden / heads)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert config_from_hf(tmp_path).head_dim == transformers.Cohere2MoeConfig(**conf).head_dim == 128
    for edit, match in (({"expert_selection_fn": "relu"}, "expert_selection_fn"),
                        ({"shared_expert_combination_strategy": "max"}, "shared_expert_combination_strategy"),
                        ({"first_k_dense_replace": 4}, "first_k_dense_replace=4")):
        (tmp_path / "config.json").write_text(json.dumps({**conf, **edit}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_apertus_released_config_fields(tmp_path):
    """Apertus's config.json may leave out its activation (xIELU) and rope (Llama 3's at base 12e6, 8x from 8192
    positions), as the reference fills them; xIELU's four scalars per layer load (the fixed two stored as 0-d
    tensors) and are written back as stored; a gated activation (which its ungated MLP cannot run) is refused."""
    transformers = pytest.importorskip("transformers")
    _, params = _save_random("apertus", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("hidden_act", "rope_parameters", "rope_theta", "rope_scaling"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert dataclasses.replace(cfg, extra={}) == FAMILY_CONFIGS["apertus"]
    ref = transformers.ApertusConfig(**conf)
    assert ref.hidden_act == cfg.activation and ref.rope_parameters["rope_theta"] == cfg.rope_theta
    assert {k: v for k, v in ref.rope_parameters.items() if k != "rope_theta"} == cfg.rope_scaling
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        assert f.get_tensor("model.layers.1.mlp.act_fn.beta").shape == ()
        assert f.get_tensor("model.layers.1.mlp.act_fn.alpha_p").shape == (1,)
    _assert_same(load_params(tmp_path, create(cfg, abstract=True)[0]), params)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "hidden_act": "silu"}))
    with pytest.raises(ConfigError, match="hidden_act='silu'"):
        config_from_hf(tmp_path)


def test_xielu_scalars_start_as_the_reference_and_only_two_learn():
    """A fresh xIELU MLP's scalars are the reference activation's initial ones (as stored: alpha_p and alpha_n
    through the inverse softplus), and its output is the reference's, in batch-invariant mode too; a gradient
    reaches alpha_p and alpha_n, never the held beta and eps."""
    torch = pytest.importorskip("torch")
    from flax import nnx
    from reasoning_rl.models.layers.mlp import MLP
    from transformers.activations import XIELUActivation

    ref = XIELUActivation(dtype=torch.float32)
    mlp = MLP(8, 16, rngs=nnx.Rngs(0), activation="xielu")
    for n in ("alpha_p", "alpha_n", "beta", "eps"):
        np.testing.assert_allclose(np.asarray(getattr(mlp, f"act_{n}")[...]).reshape(()),
                                   getattr(ref, n).detach().numpy().reshape(()), rtol=1e-6)
    x = np.random.RandomState(0).normal(size=(2, 3, 8)).astype(np.float32) * 3
    up = np.asarray(mlp.up[...])
    with torch.no_grad():
        want = ref(torch.tensor(x @ up)).numpy() @ np.asarray(mlp.down[...])
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    # batch-invariant mode (its exponential through ``invariant.exp``): the same values, within float rounding
    inv = MLP(8, 16, rngs=nnx.Rngs(0), activation="xielu", invariant=True)
    np.testing.assert_allclose(np.asarray(inv(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    graphdef, state = nnx.split(mlp)
    grads = jax.grad(lambda st: jnp.sum(nnx.merge(graphdef, st)(jnp.asarray(x)) ** 2))(state)
    assert all(np.abs(np.asarray(grads[f"act_{n}"][...])).max() > 0 for n in ("alpha_p", "alpha_n"))
    assert all(not np.asarray(grads[f"act_{n}"][...]).any() for n in ("beta", "eps"))


def test_sarvam_and_param2_released_config_fields(tmp_path):
    """Sarvam-30B's and Param2's config.json as released (``num_experts``, ``num_shared_experts``, ``use_qkv_bias``,
    no rope base: 8e6 and 5e5, whole-head rotary); Sarvam-105B's original config (a ``head_dim`` for serving
    engines, left aside; ``deepseek_yarn`` rope, which is YaRN): each as the reference config class reads it."""
    transformers = pytest.importorskip("transformers")
    _, params = _save_random("sarvam_moe", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("rope_parameters", "rope_theta", "partial_rotary_factor"):
        conf.pop(k, None)
    conf["num_experts"], conf["num_shared_experts"] = conf.pop("n_routed_experts"), conf.pop("n_shared_experts")
    conf["use_qkv_bias"] = conf.pop("attention_bias")
    for model_type, cls in (("sarvam_moe", "SarvamMoEConfig"), ("param2moe", "Param2MoeConfig")):
        (tmp_path / "config.json").write_text(json.dumps({**conf, "model_type": model_type}))
        cfg, ref = config_from_hf(tmp_path), getattr(transformers, cls)(**conf)
        assert (cfg.family, cfg.rope_theta, cfg.rope_dim) == (model_type, ref.rope_parameters["rope_theta"], 0)
        assert (cfg.moe.n_experts, cfg.moe.n_shared, cfg.qkv_bias) == (ref.n_routed_experts, ref.n_shared_experts,
                                                                        ref.attention_bias)
        _assert_same(load_params(tmp_path, create(cfg, abstract=True)[0]), params)
    _save_random("sarvam_mla", tmp_path / "mla")
    conf = json.loads((tmp_path / "mla" / "config.json").read_text())
    conf.pop("rope_parameters", None)
    conf.update(head_dim=8 + 4, rope_theta=10000.0, max_position_embeddings=256,
                rope_scaling={"type": "deepseek_yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    conf["num_experts"] = conf.pop("n_routed_experts")
    (tmp_path / "mla" / "config.json").write_text(json.dumps(conf))
    cfg, ref = config_from_hf(tmp_path / "mla"), transformers.SarvamMLAConfig(**conf)
    assert cfg.head_dim == 12 and cfg.rope_scaling["rope_type"] == ref.rope_parameters["rope_type"] == "yarn"
    assert cfg.rope_scaling["factor"] == ref.rope_parameters["factor"] and cfg.moe.n_experts == ref.n_routed_experts


def test_cwm_released_config_fields(tmp_path):
    """CWM's config.json may leave out its layer kinds (the first full, then every fourth) and rope (Llama 3's at
    base 1e6, 16x from 8192 positions), as the reference fills them; without a window every layer is full."""
    transformers = pytest.importorskip("transformers")
    _, params = _save_random("cwm", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k in ("layer_types", "rope_parameters", "rope_theta", "rope_scaling"):
        conf.pop(k, None)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg, ref = config_from_hf(tmp_path), transformers.CwmConfig(**conf)
    assert dataclasses.replace(cfg, extra={}) == FAMILY_CONFIGS["cwm"]
    assert ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers] == ref.layer_types
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"] and cfg.rope_scaling["factor"] == 16.0
    _assert_same(load_params(tmp_path, create(cfg, abstract=True)[0]), params)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "sliding_window": None}))
    assert not any(config_from_hf(tmp_path).sliding_layers)


def test_axk1_released_config_fields(tmp_path):
    """A.X K1's older config.json names its dense layers with ``first_k_dense_replace`` and ``moe_layer_freq``
    (no ``mlp_layer_types``), as the reference reads them; the routing fields default to the reference's."""
    transformers = pytest.importorskip("transformers")
    _, params = _save_random("axk1", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("mlp_layer_types")
    for k in ("n_group", "topk_group", "routed_scaling_factor"):
        conf.pop(k)
    for edit in ({}, {"first_k_dense_replace": 1, "moe_layer_freq": 2}, {"first_k_dense_replace": 2}):
        (tmp_path / "config.json").write_text(json.dumps({**conf, **edit}))
        cfg, ref = config_from_hf(tmp_path), transformers.AXK1Config(**{**conf, **edit})
        assert ["sparse" if cfg.moe.is_moe(i) else "dense" for i in range(4)] == ref.mlp_layer_types
        assert (cfg.moe.n_group, cfg.moe.topk_group, cfg.moe.scaling) == (ref.n_group, ref.topk_group,
                                                                          ref.routed_scaling_factor)
    layer_types = ["dense", "sparse", "dense", "sparse"]
    (tmp_path / "config.json").write_text(json.dumps({**conf, "mlp_layer_types": layer_types}))
    _assert_same(load_params(tmp_path, create(config_from_hf(tmp_path), abstract=True)[0]), params)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "moe_layer_freq": 0}))
    with pytest.raises(ConfigError, match="moe_layer_freq=0"):
        config_from_hf(tmp_path)


def test_internlm3_released_config_fields(tmp_path):
    """InternLM3's config.json as released: ``qkv_bias`` / ``bias`` for the attention and MLP biases, no head_dim
    (128, its config class's default, not hidden / heads), dynamic NTK rope (the plain rotary within the context;
    scaling that would start inside it is refused). IQuest-Coder's options no release enables are refused."""
    conf = {"model_type": "internlm3", "architectures": ["InternLM3ForCausalLM"], "vocab_size": 64, "hidden_size": 512,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "qkv_bias": False, "bias": False, "rope_theta": 5e7,
            "rope_scaling": {"type": "dynamic", "factor": 6.0}}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path)
    assert (cfg.family, cfg.head_dim, cfg.qkv_bias) == ("llama", 128, False)
    assert (cfg.rope_theta, cfg.rope_scaling) == (5e7, None)
    for edit, match in (({"qkv_bias": True, "bias": True}, "mlp_bias=True"),
                        ({"model_type": "iquestcoder", "use_sliding_window": True}, "use_sliding_window=True"),
                        ({"model_type": "iquestcoder", "clip_qkv": 8.0}, "clip_qkv=8.0"),
                        ({"rope_scaling": {"type": "dynamic", "factor": 6.0, "original_max_position_embeddings": 4096}},
                         "original_max_position_embeddings=4096")):
        (tmp_path / "config.json").write_text(json.dumps({**conf, **edit}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_fused_pieces_across_sharded_files(tmp_path):
    """Phi-3's qkv_proj / gate_up_proj and gpt-oss's interleaved gate_up_proj are written whole, one tensor
    each, and read back into their parts from a sharded checkpoint."""
    for name in ("phi3", "gpt_oss"):
        _, params = _save_random(name, tmp_path / name, max_shard_bytes=8_000)
        index = json.loads((tmp_path / name / "model.safetensors.index.json").read_text())
        fused = "model.layers.1.self_attn.qkv_proj.weight" if name == "phi3" else "model.layers.1.mlp.experts.gate_up_proj"
        assert fused in index["weight_map"] and len(set(index["weight_map"].values())) > 2
        _assert_same(load_params(tmp_path / name, create(config_from_hf(tmp_path / name), abstract=True)[0]), params)
    ck = Checkpoint(tmp_path / "gpt_oss")
    gate_up = np.asarray(ck.get("model.layers.0.mlp.experts.gate_up_proj"))  # [E, d, 2F]: gate, up alternating
    np.testing.assert_array_equal(gate_up[..., 0::2], np.asarray(params["layers"]["mlp"]["gate"][0]))
    np.testing.assert_array_equal(gate_up[..., 1::2], np.asarray(params["layers"]["mlp"]["up"][0]))


def test_param_without_a_place_in_the_format_is_refused(tmp_path):
    cfg = dataclasses.replace(FAMILY_CONFIGS["llama"], attn_sinks=True)
    mdef, _ = create(cfg, abstract=True)
    with pytest.raises(ConfigError, match=r"layers\.attn\.sinks.*no place in a llama checkpoint"):
        save_pretrained(mdef, random_params(mdef, 0), tmp_path)


def test_quantized_checkpoint_is_refused(tmp_path):
    _save_random("deepseek_v3", tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**conf, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ConfigError, match="quantization_config: quant_method 'gptq' is not supported"):
        config_from_hf(tmp_path)


def test_safetensors_bf16_round_trip(tmp_path):
    a = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(ml_dtypes.bfloat16)
    b = np.arange(5, dtype=np.float32)
    write_file(tmp_path / "x.safetensors", [("a", "BF16", a.shape), ("b", "F32", b.shape)],
               {"a": a, "b": b}.__getitem__)
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert f.info("a") == ("BF16", (3, 4))
    np.testing.assert_array_equal(f.get("a"), a)
    np.testing.assert_array_equal(f.get("b"), b)


def test_granite4_layer_types_and_experts(tmp_path):
    """Granite 4.0's format loads all-attention or with Mamba-2 layers (either spelling of layer_types; none given:
    all Mamba-2, as the reference reads it), with or without routed experts (the shared MLP their shared expert;
    the reference's defaults where the fields are missing); a bad layer_types entry, Mamba-2 projection biases and
    heads that do not fill the mixer are refused naming the field."""
    base = {"model_type": "granitemoehybrid", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
            "vocab_size": 64, "shared_intermediate_size": 40, "num_local_experts": 0, "mamba_n_heads": 8,
            "mamba_d_state": 16}
    for types, layers in ((["attention", "mamba"], (1,)), (["linear_attention", "full_attention"], (0,)),
                          (None, (0, 1))):
        (tmp_path / "config.json").write_text(json.dumps({**base, "layer_types": types}))
        lin = config_from_hf(tmp_path).linear
        assert (lin.kind, lin.layers, lin.v_heads, lin.v_dim, lin.k_heads, lin.k_dim) == ("mamba2", layers, 8, 8, 1, 16)
    # transformers writes an infinite float as {"__float__": "Infinity"} (any field: read where config.json is read)
    (tmp_path / "config.json").write_text(json.dumps({**base, "time_step_limit": [0.5, {"__float__": "Infinity"}]}))
    assert config_from_hf(tmp_path).linear.dt_limit == (0.5, float("inf"))
    for over, match in (({"layer_types": ["attention", "conv"]}, r"layer_types must give mamba or attention.*'conv'"),
                        ({"layer_types": ["attention"]}, r"layer_types must give .* 2 layers \(got 1 entries"),
                        ({"mamba_proj_bias": True}, r"mamba_proj_bias=True is not supported"),
                        ({"mamba_n_heads": 8, "mamba_d_head": 4}, r"mamba_n_heads=8 x mamba_d_head=4 must equal")):
        (tmp_path / "config.json").write_text(json.dumps({**base, "layer_types": ["mamba", "attention"], **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**base, "layer_types": ["attention"] * 2,
                                                      "num_local_experts": 4, "intermediate_size": 24}))
    m = config_from_hf(tmp_path).moe
    assert (m.n_experts, m.top_k, m.ffn_dim, m.n_shared, m.shared_ffn, m.norm_topk, m.aux_loss_coef) == (
        4, 2, 24, 1, 40, True, 0.001)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in base.items() if k != "num_local_experts"}))
    assert config_from_hf(tmp_path).moe.n_experts == 8
    (tmp_path / "config.json").write_text(json.dumps({**base, "layer_types": ["attention"] * 2}))
    cfg = config_from_hf(tmp_path)
    assert (cfg.family, cfg.ffn_dim, cfg.nope_layers, cfg.moe, cfg.linear) == ("granite", 40, (0, 1), None, None)


def test_every_switch_is_written_by_some_format_and_named_rightly():
    """Each family's ``WRITES`` names switches ``hf_save.SWITCHES`` knows, and each switch some format writes (a
    switch none writes could never be saved)."""
    from reasoning_rl.models.families import FAMILIES
    from reasoning_rl.models.hf_save import SWITCHES

    written = {w for fam in FAMILIES.values() for w in getattr(fam, "WRITES", ())}
    assert written == set(SWITCHES)


@pytest.mark.parametrize("name,over,match", [
    ("qwen2", {"activation": "relu2"}, r"activation='relu2' cannot be written as a qwen2 checkpoint"),
    ("llama", {"activation": "gelu_tanh"}, r"activation='gelu_tanh' cannot be written as a llama checkpoint"),
    ("llama", {"mixer_only_layers": (1,)}, r"mixer_only_layers=\(1,\) cannot be written as a llama checkpoint"),
    ("nemotron_h", {"activation": "silu"}, r"activation='silu' cannot be written as a nemotron_h checkpoint"),
    ("qwen3_moe", {"moe": MoEConfig(n_experts=4, top_k=2, ffn_dim=16, latent_dim=8)},
     r"moe.latent_dim=8 cannot be written as a qwen3_moe checkpoint"),
    ("deepseek_v3", {"mla": MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6,
                                      index_topk=3, index_heads=4, index_dim=8)},
     r"mla.index_topk=3 cannot be written as a deepseek_v3 checkpoint"),
    ("olmo_hybrid", {"family": "qwen3_next"}, r"linear.beta_scale=2.0 cannot be written as a qwen3_next"),
    ("llama", {"key_multiplier": 0.5}, r"key_multiplier=0.5 cannot be written as a llama checkpoint"),
    ("qwen3", {"mlp_multipliers": (1.0, 2.0)}, r"mlp_multipliers=\(1.0, 2.0\) cannot be written as a qwen3"),
    ("bamba", {"linear": LinearAttnConfig(layers=(0, 2), k_heads=1, v_heads=4, k_dim=8, v_dim=16, kind="mamba2",
                                          norm="none")}, r"linear.norm='none' cannot be written as a bamba"),
    ("bamba", {"linear": LinearAttnConfig(layers=(0, 1, 2), k_heads=1, v_heads=4, k_dim=8, v_dim=16, kind="mamba2",
                                          parallel=True)}, r"linear.parallel=True cannot be written as a bamba"),
    ("arcee", {"activation": "silu"}, r"activation='silu' cannot be written as a arcee checkpoint"),
    ("helium", {"rope_interleave": False}, r"rope_interleave=False cannot be written as a helium checkpoint"),
    ("helium", {"out_bias": True}, r"out_bias=True cannot be written as a helium checkpoint"),
    ("granite_swa", {"attn_sinks": False}, r"attn_sinks=False cannot be written as a granite_swa checkpoint"),
    ("hyperclovax", {"logits_scaling": 2.0}, r"logits_scaling=2.0 cannot be written as a hyperclovax checkpoint"),
    ("granitemoe_swa", {"moe": None}, r"moe=None cannot be written as a granitemoe_swa checkpoint"),
    ("cohere_compass", {"rope_interleave": True},
     r"rope_interleave=True cannot be written as a cohere_compass checkpoint"),
    ("gemma4_unified", {"ple_dim": 4}, r"ple_dim=4 cannot be written as a gemma4_unified checkpoint"),
    ("qwen3", {"head_gate": True}, r"head_gate=True cannot be written as a qwen3 checkpoint"),
    ("lfm3", {"attn_gate": True}, r"attn_gate=True cannot be written as a lfm3 checkpoint"),
    ("lfm3", {"gate_act": "softplus"}, r"gate_act='softplus' cannot be written as a lfm3 checkpoint"),
    ("laguna", {"gate_act": "sigmoid"}, r"gate_act='sigmoid' cannot be written as a laguna checkpoint"),
    ("beam", {"depth_residual": False}, r"depth_residual=False cannot be written as a beam checkpoint"),
    ("lara_mini", {"nope_layers": ()}, r"nope_layers=\(\) cannot be written as a lara_mini checkpoint"),
    ("lara_mini", {"norm_offset": 1.0}, r"norm_offset=1.0 cannot be written as a lara_mini checkpoint"),
    ("beam", {"nope_layers": (1,)}, r"nope_layers=\(1,\) cannot be written as a beam checkpoint"),
    ("qwen3", {"depth_residual": True}, r"depth_residual=True cannot be written as a qwen3 checkpoint"),
    ("smollm3", {"nope_query_scale": (0.1, 2048.0)},
     r"nope_query_scale=\(0.1, 2048.0\) cannot be written as a smollm3 checkpoint"),
    ("gemma4_unified", {"full_heads": 2}, r"full_heads=2 cannot be written as a gemma4_unified checkpoint"),
    ("mellum", {"moe": MoEConfig(n_experts=4, top_k=2, ffn_dim=16, router_softcap=3.0)},
     r"moe.router_softcap=3.0 cannot be written as a mellum checkpoint"),
    ("lfm3", {"qkv_bias": True}, r"qkv_bias=True cannot be written as a lfm3 checkpoint"),
    ("mellum", {"moe": MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1)},
     r"moe=MoEConfig\(.*\) cannot be written as a mellum checkpoint"),
    ("kimi_linear", {"nope_layers": (1,)}, r"nope_layers=\(1,\) cannot be written as a kimi_linear checkpoint"),
    ("kimi_linear", {"tie_embeddings": True}, r"tie_embeddings=True cannot be written as a kimi_linear checkpoint"),
    ("lara_mini", {"linear": LinearAttnConfig(layers=(0, 3), k_heads=2, v_heads=2, k_dim=8, v_dim=8, kind="kda")},
     r"linear=LinearAttnConfig\(.*kind='kda'.*\) cannot be written as a lara_mini checkpoint"),
    ("granitemoe", {"moe": MoEConfig(n_experts=4, top_k=2, ffn_dim=16, norm_topk=False)},
     r"moe=MoEConfig\(.*\) cannot be written as a granitemoe checkpoint"),
    ("granitemoe", {"nope_layers": (0,)}, r"nope_layers=\(0,\) cannot be written as a granitemoe checkpoint"),
    ("llama", {"clip_qkv": 8.0}, r"clip_qkv=8.0 cannot be written as a llama checkpoint"),
    ("mellum", {"qkv_bias": True}, r"qkv_bias=True cannot be written as a mellum checkpoint")])
def test_switches_a_format_cannot_write_are_refused(tmp_path, name, over, match):
    """A hand-built config that sets a switch the family's format cannot express (its MLP activation, one of
    ``hf_save.SWITCHES``: mixer-only layers, latent experts, sparse attention, Falcon-H1's and OLMo Hybrid's)
    fails naming the field and its value, and nothing is written (before: saved as that family's usual model, another
    model); so does a reward model's config.json."""
    from reasoning_rl.models.reward import reward_hf_config

    mdef, _ = create(dataclasses.replace(FAMILY_CONFIGS[name], **over), abstract=True)
    with pytest.raises(ConfigError, match=match):
        save_pretrained(mdef, random_params(mdef, 0), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=match):  # a reward model's config.json goes through the same checks
        reward_hf_config(mdef.cfg)


def test_nemotron_h_layer_pattern_and_refusals(tmp_path):
    """Nemotron-H's checkpoint layers (one sub-layer each) pair into model layers: each Mamba-2 or attention layer
    with the MLP or experts right after it, mixer-only otherwise, from ``layers_block_type`` or the older
    ``hybrid_override_pattern`` (here one of Nemotron-H-8B's shape: 52 layers, 4 of them attention); what these
    layers cannot run is refused by name, and a multi-token-prediction tensor is ignored."""
    base = {"model_type": "nemotron_h", "vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48, "mamba_num_heads": 4,
            "mamba_head_dim": 8, "ssm_state_size": 8, "n_groups": 2}
    pattern = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
    (tmp_path / "config.json").write_text(json.dumps({**base, "hybrid_override_pattern": pattern,
                                                      "num_hidden_layers": 52}))
    cfg = config_from_hf(tmp_path)
    assert (cfg.n_layers, cfg.mixer_only_layers, cfg.activation, cfg.moe) == (28, (3, 9, 15, 21), "relu2", None)
    assert cfg.attention_layers == cfg.nope_layers == (4, 10, 16, 22)
    assert cfg.linear.kind == "mamba2" and len(cfg.linear.layers) == 24
    assert (cfg.linear.k_heads, cfg.linear.v_heads, cfg.linear.k_dim, cfg.linear.v_dim) == (2, 4, 8, 8)
    from reasoning_rl.models.families import nemotron_h

    assert "".join(nemotron_h.layer_types(cfg)) == pattern  # written back as read
    assert nemotron_h.to_hf(cfg)["layers_block_type"][:3] == ["linear_attention", "mlp", "linear_attention"]
    types = ["linear_attention", "moe", "full_attention", "moe", "linear_attention", "linear_attention", "mlp"]
    (tmp_path / "config.json").write_text(json.dumps({**base, "layers_block_type": types, "n_routed_experts": 4,
                                                      "n_group": 2, "topk_group": 1}))
    cfg = config_from_hf(tmp_path)
    m = cfg.moe
    assert (cfg.n_layers, cfg.mixer_only_layers, m.dense_layers, m.score, m.score_bias, m.n_group) == (
        4, (2,), (3,), "sigmoid", True, 2)
    assert nemotron_h.layer_types(cfg) == ["M", "E", "*", "E", "M", "M", "-"]
    (tmp_path / "config.json").write_text(json.dumps({**base, "layers_block_type": types, "moe_latent_size": 16}))
    assert config_from_hf(tmp_path).moe.latent_dim == 16
    for over, match in (({"layers_block_type": ["mlp", "linear_attention"]}, r"layer 0 \(mlp\) follows no Mamba-2"),
                        ({"layers_block_type": ["linear_attention", "mlp", "moe"]}, r"layer 2 \(moe\) follows no"),
                        ({"layers_block_type": ["linear_attention", "conv"]}, r"entries 'conv' are not layer types"),
                        ({"hybrid_override_pattern": "M-X"}, r"hybrid_override_pattern entries 'X'"),
                        ({"mlp_hidden_act": "silu"}, r"mlp_hidden_act='silu' is not supported"),
                        ({"use_bias": True}, r"use_bias=True is not supported"),
                        ({"attention_bias": True}, r"attention_bias=True is not supported \(attention biases"),
                        ({"n_groups": 3}, r"n_groups=3 does not divide mamba_num_heads=4")):
        (tmp_path / "config.json").write_text(json.dumps({**base, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)
    assert nemotron_h.ignored("mtp.layers.0.mixer.q_proj.weight", cfg)
    assert not nemotron_h.ignored("backbone.layers.0.mixer.q_proj.weight", cfg)


def test_falcon_h1_config_fields_and_refusals(tmp_path):
    """Falcon-H1's config.json: the mixer's width from ``mamba_d_ssm`` (else ``mamba_expand`` x hidden), its head
    size "auto", the three norm placements, every muP multiplier read and written back as read; what the layers
    cannot run is refused by name; a parallel layout that is not every layer fails at construction."""
    from reasoning_rl.models.families import falcon_h1

    base = {"model_type": "falcon_h1", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 48,
            "mamba_n_heads": 4, "mamba_d_state": 8, "mamba_d_ssm": 48, "mamba_n_groups": 2, "rope_theta": 1e11,
            "mamba_rms_norm": True, "mamba_norm_before_gate": False, "embedding_multiplier": 5.656854249492381,
            "lm_head_multiplier": 0.013020833333333334, "key_multiplier": 0.030690398488999456,
            "attention_in_multiplier": 1.0, "attention_out_multiplier": 0.10416666666666667,
            "ssm_in_multiplier": 0.4166666666666667, "ssm_out_multiplier": 0.11785113019775793,
            "ssm_multipliers": [0.3535533905932738, 0.25, 0.1767766952966369, 0.5, 0.3535533905932738],
            "mlp_multipliers": [0.2946278254943948, 0.032552083333333336], "mamba_use_mlp": True}
    (tmp_path / "config.json").write_text(json.dumps(base))
    cfg = config_from_hf(tmp_path)
    lin = cfg.linear
    assert (lin.parallel, lin.layers, lin.norm, lin.v_heads, lin.v_dim, lin.k_heads, lin.k_dim) == (
        True, (0, 1, 2), "gated", 4, 12, 2, 8)
    assert cfg.attention_layers == (0, 1, 2) and cfg.cache_slots == (0, 1, 2) and cfg.norm_eps == 1e-5
    out = falcon_h1.to_hf(cfg)
    assert {k: out[k] for k in base if k != "mamba_use_mlp"} == {k: v for k, v in base.items() if k != "mamba_use_mlp"}
    for over, norm in (({"mamba_rms_norm": False}, "none"), ({"mamba_norm_before_gate": True}, "before_gate")):
        (tmp_path / "config.json").write_text(json.dumps({**base, **over}))
        cfg = config_from_hf(tmp_path)
        assert cfg.linear.norm == norm and falcon_h1.to_hf(cfg)["mamba_rms_norm"] == (norm != "none")
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in base.items() if k != "mamba_d_ssm"}))
    assert config_from_hf(tmp_path).linear.v_dim == 16  # mamba_expand 2 x 32 over 4 heads
    for over, match in (({"attention_bias": True}, r"attention_bias=True is not supported \(attention biases"),
                        ({"projectors_bias": True}, r"projectors_bias=True .*out_proj bias"),
                        ({"mamba_proj_bias": True}, r"mamba_proj_bias=True .*in_proj bias"),
                        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
                        ({"ssm_multipliers": [1.0, 1.0]}, r"ssm_multipliers=\[1.0, 1.0\] must be a list of 5"),
                        ({"mamba_n_heads": 5}, r"mamba_n_heads=5 x mamba_d_head=9 must equal mamba_d_ssm")):
        (tmp_path / "config.json").write_text(json.dumps({**base, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)
    half = dataclasses.replace(FAMILY_CONFIGS["falcon_h1"], linear=dataclasses.replace(
        FAMILY_CONFIGS["falcon_h1"].linear, layers=(1,)))
    with pytest.raises(ValueError, match=r"linear.parallel: a Mamba-2 mixer beside grouped-query attention in "
                                         r"every layer \(linear.layers all 2; got kind 'mamba2', layers \(1,\)"):
        create(half, abstract=True)


def test_sparse_attention_config_fields_and_refusals(tmp_path):
    """DeepSeek-V3.2's config.json: the indexer's sizes (the reference's defaults when left out), the dense layers
    from first_k_dense_replace (3 by default), written back as read; GLM-5's indexer rotating interleaved pairs;
    what the layers cannot run refused by name (no query latent, an indexer head narrower than the rotary key,
    GLM-5.2's layers sharing another layer's selection)."""
    from reasoning_rl.models.families import deepseek_v32, glm_moe_dsa

    base = {"model_type": "deepseek_v32", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 5,
            "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 48, "q_lora_rank": 16,
            "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 6,
            "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(base))
    cfg = config_from_hf(tmp_path)
    m = cfg.mla
    assert (m.index_topk, m.index_heads, m.index_dim, m.index_rope_interleave, m.rope_interleave) == (
        2048, 64, 128, False, True)
    assert cfg.moe.first_dense == 3 and cfg.norm_eps == 1e-6 and cfg.kv_shape == (1, 8, 1, 4 + 128)
    out = deepseek_v32.to_hf(cfg)
    assert (out["index_topk"], out["index_n_heads"], out["index_head_dim"], out["first_k_dense_replace"]) == (
        2048, 64, 128, 3)
    assert out["mlp_layer_types"] == ["dense"] * 3 + ["sparse"] * 2
    glm = {**base, "model_type": "glm_moe_dsa", "index_topk": 16, "index_head_dim": 8}
    (tmp_path / "config.json").write_text(json.dumps(glm))
    cfg = config_from_hf(tmp_path)
    assert (cfg.family, cfg.mla.index_heads, cfg.mla.index_rope_interleave, cfg.norm_eps) == (
        "glm_moe_dsa", 32, True, 1e-5)
    assert glm_moe_dsa.to_hf(cfg)["indexer_types"] == ["full"] * 5
    for over, match in (({"q_lora_rank": None}, r"q_lora_rank is required"),
                        ({"index_head_dim": 2}, r"index_head_dim=2: the indexer needs .* at least qk_rope_head_dim"),
                        ({"index_topk": 0}, r"index_topk=0: the indexer needs positive sizes"),
                        ({"model_type": "glm_moe_dsa", "index_topk_freq": 2, "index_skip_topk_offset": 1},
                         r"indexer_types: layers \[1, 3\] reuse another layer's key selection"),
                        ({"model_type": "glm_moe_dsa", "index_topk_pattern": "FFSFF"}, r"layers \[2\] reuse")):
        (tmp_path / "config.json").write_text(json.dumps({**base, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)


def test_olmo_hybrid_config_fields_released_names_and_refusals(tmp_path):
    """OLMo Hybrid's config.json: the reference's defaults (three linear layers to one attention layer, the last one
    attention; key heads of 3/4 hidden / heads, value heads twice as wide; beta in [0, 2]), the default rotary
    without a rope_theta (as transformers fills it in), written back as read; a released file's three convolution
    tensors read as one (an incomplete set named), and what the layers cannot run refused by name."""
    from reasoning_rl.models.families import olmo_hybrid

    base = {"model_type": "olmo_hybrid", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 6,
            "num_attention_heads": 4, "intermediate_size": 48, "rope_parameters": {"rope_theta": 5e5}}
    (tmp_path / "config.json").write_text(json.dumps(base))
    cfg = config_from_hf(tmp_path)
    lin = cfg.linear
    assert lin.layers == (0, 1, 2, 4, 5) and cfg.attention_layers == (3,) and not cfg.nope_layers
    assert (lin.k_heads, lin.k_dim, lin.v_dim, lin.beta_scale, lin.norm_eps, lin.pre_norm) == (
        4, 6, 12, 2.0, 1e-5, True)
    assert (cfg.pre_norm, cfg.sandwich_norm, cfg.qk_norm_whole, cfg.norm_eps) == (False, True, True, 1e-6)
    out = olmo_hybrid.to_hf(cfg)
    assert out["layer_types"][3] == "full_attention" and out["linear_allow_neg_eigval"] is True
    (tmp_path / "config.json").write_text(json.dumps({**base, "rope_parameters": None,
                                                      "linear_allow_neg_eigval": False}))
    cfg = config_from_hf(tmp_path)
    assert not cfg.nope_layers and cfg.rope_theta == 10000.0 and cfg.linear.beta_scale == 1.0
    for over, match in (({"layer_types": ["linear_attention"] * 5 + ["sliding_attention"]}, r"unknown 'sliding"),
                        ({"attention_bias": True}, r"attention_bias=True is not supported")):
        (tmp_path / "config.json").write_text(json.dumps({**base, **over}))
        with pytest.raises(ConfigError, match=match):
            config_from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**base, "num_hidden_layers": 2,
                                                      "layer_types": ["linear_attention", "full_attention"]}))
    cfg = config_from_hf(tmp_path)
    mdef, _ = create(cfg, abstract=True)
    save_pretrained(mdef, random_params(mdef, 1), tmp_path / "ours")
    src = SafetensorsFile(tmp_path / "ours" / "model.safetensors")
    tensors = {n: (src.info(n)[0], np.asarray(src.get(n))) for n in src.names()}
    src.close()
    conv = tensors.pop("model.layers.0.linear_attn.conv1d.weight")[1]
    kd = cfg.linear.k_heads * cfg.linear.k_dim
    released = {n.replace(".input_layernorm.", ".attention_layer_norm.")
                .replace(".post_attention_layernorm.", ".feedforward_layer_norm."): v for n, v in tensors.items()}
    released.update({"model.layers.0.linear_attn.q_conv1d.weight": ("F32", conv[:kd]),
                     "model.layers.0.linear_attn.k_conv1d.weight": ("F32", conv[kd:2 * kd])})
    write_file(tmp_path / "ours" / "model.safetensors", [(n, dt, a.shape) for n, (dt, a) in released.items()],
               lambda n: released[n][1])
    with pytest.raises(CheckpointError, match=r"model.layers.0.linear_attn.conv1d.weight: missing"):
        load_params(tmp_path / "ours", mdef)
    released["model.layers.0.linear_attn.v_conv1d.weight"] = ("F32", conv[2 * kd:])
    write_file(tmp_path / "ours" / "model.safetensors", [(n, dt, a.shape) for n, (dt, a) in released.items()],
               lambda n: released[n][1])
    back = load_params(tmp_path / "ours", mdef)
    np.testing.assert_array_equal(np.asarray(back["linear_layers"]["attn"]["conv_v"]).reshape(1, -1),
                                  conv[2 * kd:, 0, :].T.reshape(1, -1))


@pytest.mark.parametrize("model_type,why", [("jamba", "Mamba \\(v1\\) layers keep a recurrent"),
                                            ("minimax", "lightning \\(linear\\) attention layers keep a recurrent"),
                                            ("mamba2", "layers are Mamba-2 mixers without MLPs")])
def test_hybrid_recurrent_models_are_refused_saying_why(tmp_path, model_type, why):
    """A recurrent or hybrid model whose layers are not of the kinds here is refused saying what is missing, not
    only as an unknown type; an unknown type lists every supported one, the vision-language wrappers and the
    Gated DeltaNet hybrids (Qwen3.5, Qwen3-Next) included."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": 2}))
    with pytest.raises(ConfigError, match=f"model_type '{model_type}' is not supported: its {why}.*Mamba-2 in "
                                          "Granite 4.0-H"):
        config_from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv7"}))
    with pytest.raises(ConfigError, match=r"'rwkv7' is not supported \(supported: .*gemma3, gemma3_text, "
                                          r".*qwen3_5, qwen3_5_moe, qwen3_5_moe_text, qwen3_5_text, .*qwen3_next, "
                                          r".*qwen3_vl_moe"):
        config_from_hf(tmp_path)


def test_config_aliases_fill_our_fields_and_ours_win():
    """``base.aliased``: a field spelled another way (a config class's ``attribute_map``) is read under our name;
    where a file sets both, ours is the value (Kimi Linear, EXAONE, Sarvam read their configs so)."""
    from reasoning_rl.models.families.base import aliased

    a = {"num_local_experts": "num_experts"}
    assert aliased({"num_local_experts": 8}, a) == {"num_experts": 8}
    assert aliased({"num_local_experts": 8, "num_experts": 4}, a) == {"num_experts": 4}
    assert aliased({"num_local_experts": None, "num_experts": 4}, a) == {"num_experts": 4}
