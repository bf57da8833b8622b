"""Parity with transformers on tiny random checkpoints of every supported family (needs the test extra).

Each case builds a transformers model from a config object (no hub), perturbs its norms, biases and router
bias so conventions (Gemma's 1 + w, zero-initialised biases) are visible, saves it with transformers'
``save_pretrained`` and compares: logits on a left-padded batch, the MoE balancing loss, a load -> save ->
transformers round trip, an SFT step -> save -> reload round trip, and greedy generation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reasoning_rl.models import load_params, load_pretrained, positions_from_valid, save_pretrained

V = 128
COMMON = {"vocab_size": V, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 256}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0,
        "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1}
MLA = {"q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 12}
GPT_OSS = {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 16, "intermediate_size": 32}
QWEN_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
SMOL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # SmolLM3's defaults lie past V
MINISTRAL_IDS = SMOL_IDS
FALCON_MUP = {"embedding_multiplier": 2.0, "lm_head_multiplier": 0.6, "key_multiplier": 0.7,
              "attention_in_multiplier": 1.3, "attention_out_multiplier": 0.6, "ssm_in_multiplier": 0.8,
              "ssm_out_multiplier": 1.5, "ssm_multipliers": [0.5, 1.2, 0.9, 1.4, 0.7], "mlp_multipliers": [0.8, 1.3]}
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.05, 1.1, 1.3, 1.6, 2.0],
            "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 8.0]}

# name: (config class, overrides). Covers odd head_dim (24, 20: not hidden/heads), tied and untied embeddings,
# llama3/linear/yarn rope scaling, sliding windows, Gemma's sliding/global schedule, DeepSeek's dense-then-MoE.
SW = {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}  # a sliding layers' rope
CASES = {
    "llama": ("LlamaConfig", {"head_dim": 24, "rope_scaling": LLAMA3}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 20}),
    "mistral": ("MistralConfig", {"sliding_window": 5, "head_dim": 16}),
    # Ministral-8B-2410: Mistral with the sliding layers named per layer (here the first full)
    "ministral": ("MinistralConfig", {"num_hidden_layers": 3, "sliding_window": 5, "head_dim": 16,
                                      "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]}),
    "gemma3": ("Gemma3TextConfig", {
        "num_hidden_layers": 3, "head_dim": 24, "sliding_window": 4, "query_pre_attn_scalar": 20,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_scaling": {"rope_type": "linear", "factor": 4.0},
        "attn_logit_softcapping": 30.0,  # stored but not applied by the reference: must be ignored alike
        "final_logit_softcapping": 20.0}),
    "gemma": ("GemmaConfig", {"head_dim": 24, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                 "rope_theta": 500.0}}),
    # softcaps small enough that the tiny model's scores and logits reach them (a 50 / 30 cap would not show)
    "gemma2": ("Gemma2Config", {
        "num_hidden_layers": 3, "head_dim": 24, "sliding_window": 4, "query_pre_attn_scalar": 20,
        "attn_logit_softcapping": 0.5, "final_logit_softcapping": 2.0}),
    "gemma2_nocap": ("Gemma2Config", {
        "head_dim": 16, "sliding_window": 6, "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "tie_word_embeddings": False, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                          "rope_theta": 1000.0}}),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "head_dim": 24, "norm_topk_prob": True}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "deepseek_v3": ("DeepseekV3Config", dict(
        num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, n_group=4, topk_group=2, first_k_dense_replace=1, n_shared_experts=1,
        routed_scaling_factor=2.5, rope_scaling=YARN, **MLA)),
    "deepseek_v3_plain": ("DeepseekV3Config", dict(
        num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1,
        topk_group=1, first_k_dense_replace=0, n_shared_experts=2, norm_topk_prob=False, rope_interleave=False,
        tie_word_embeddings=True, **{**MLA, "q_lora_rank": None})),
    # DeepSeek-V2: softmax scores grouped by their best expert, scaled, not renormalised; V2-Lite: no q low rank
    "deepseek_v2": ("DeepseekV2Config", dict(
        num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        first_k_dense_replace=1, n_shared_experts=1, routed_scaling_factor=2.5,
        rope_scaling={**YARN, "mscale": 0.707, "mscale_all_dim": 0.707}, **MLA)),  # V2's released yarn scales
    "deepseek_v2_lite": ("DeepseekV2Config", dict(
        num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        first_k_dense_replace=0, n_shared_experts=2, tie_word_embeddings=True, **{**MLA, "q_lora_rank": None})),
    # OLMoE: whole-projection q/k norms, softmax routing (renormalised in the second only)
    "olmoe": ("OlmoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32}),
    "olmoe_norm": ("OlmoeConfig", {"num_experts": 6, "num_experts_per_tok": 3, "intermediate_size": 24,
                                   "norm_topk_prob": True, "tie_word_embeddings": True, "router_aux_loss_coef": 0.02}),
    # --- families added with gpt-oss: two configs each
    # gpt-oss: sinks, alternating windows, biased router/experts; a swiglu_limit low enough that the clamps bind
    "gpt_oss": ("GptOssConfig", {**GPT_OSS, "sliding_window": 4, "swiglu_limit": 0.1}),  # default yarn (x32)
    "gpt_oss_yarn": ("GptOssConfig", {
        **GPT_OSS, "num_hidden_layers": 3, "num_key_value_heads": 1, "sliding_window": 6,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                            "truncate": False, "original_max_position_embeddings": 64, "rope_theta": 150000.0}}),
    "olmo2": ("Olmo2Config", {"head_dim": 24}),
    "olmo2_tied": ("Olmo2Config", {"tie_word_embeddings": True, "num_key_value_heads": 4,
                                   "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "phi3": ("Phi3Config", {"sliding_window": 5, "pad_token_id": 0}),
    "phi3_longrope": ("Phi3Config", {"pad_token_id": 0, "partial_rotary_factor": 0.75,
                                     "original_max_position_embeddings": 64, "rope_scaling": LONGROPE}),
    "qwen2_moe": ("Qwen2MoeConfig", {**QWEN_MOE, "num_hidden_layers": 3, "mlp_only_layers": [1],
                                     "shared_expert_intermediate_size": 40}),
    "qwen2_moe_window": ("Qwen2MoeConfig", {**QWEN_MOE, "num_hidden_layers": 4, "decoder_sparse_step": 2,
                                            "norm_topk_prob": True, "shared_expert_intermediate_size": 24,
                                            "use_sliding_window": True, "sliding_window": 5,
                                            "max_window_layers": 1}),
    "qwen3_moe_dense": ("Qwen3MoeConfig", {**QWEN_MOE, "num_hidden_layers": 4, "mlp_only_layers": [0],
                                           "decoder_sparse_step": 2}),
    # OLMo-3: three sliding layers in four, unscaled rope there (its own base), YaRN on the full layer; then a
    # layer_types of its own with one base for both and no scaling, tied embeddings
    "olmo3": ("Olmo3Config", dict(
        num_hidden_layers=4, head_dim=24, sliding_window=5, rope_parameters={
            "full_attention": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                               "attention_factor": 1.2, "beta_fast": 32.0, "beta_slow": 1.0, "rope_theta": 50000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "olmo3_types": ("Olmo3Config", dict(
        num_hidden_layers=3, num_key_value_heads=4, sliding_window=6, tie_word_embeddings=True,
        layer_types=["full_attention", "sliding_attention", "full_attention"])),
    # Seed-OSS: q/k/v biases, head_dim not hidden/heads; then the output projection's bias too (and the
    # reference's training-time dropouts, which eval mode and these layers leave out)
    "seed_oss": ("SeedOssConfig", {"head_dim": 24}),
    # Granite: the muP scalars (Granite 3.3-8B's embedding and residual multipliers; an attention multiplier and
    # logits divisor large enough to show), biases on all four attention projections
    "granite": ("GraniteConfig", {"embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                                  "attention_multiplier": 0.3, "logits_scaling": 8.0, "attention_bias": True}),
    # Granite 3.x MoE: Granite's muP scalars with experts in every layer (fused input_linear / output_linear); then
    # with a shared MLP, attention biases and tied embeddings
    "granitemoe": ("GraniteMoeConfig", {"embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                                        "attention_multiplier": 0.3, "logits_scaling": 8.0, "num_local_experts": 4,
                                        "num_experts_per_tok": 2, "intermediate_size": 32}),
    "granitemoeshared": ("GraniteMoeSharedConfig", {"embedding_multiplier": 4.0, "residual_multiplier": 0.5,
                                                    "attention_multiplier": 0.2, "logits_scaling": 2.0,
                                                    "num_local_experts": 4, "num_experts_per_tok": 1,
                                                    "intermediate_size": 32, "shared_intermediate_size": 48,
                                                    "attention_bias": True, "tie_word_embeddings": True}),
    # EXAONE 3.5 / EXAONE Deep: Llama's layers under GPT-2's names, Llama 3's rope scaling; then attention biases,
    # tied embeddings
    "exaone": ("ExaoneConfig", {"rope_parameters": {**LLAMA3, "rope_theta": 1e6}}),
    "exaone_bias": ("ExaoneConfig", {"attention_bias": True, "tie_word_embeddings": True, "head_dim": 24}),
    # Command R / Aya: Command R7B's parallel LayerNorm layers, every one full and rotating; then biases, untied
    "cohere": ("CohereConfig", {"logit_scale": 0.25, "rope_theta": 5e4}),
    "cohere_bias": ("CohereConfig", {"attention_bias": True, "tie_word_embeddings": False}),
    # Nemotron-4 / Minitron: LayerNorm1P (1 + w, a bias), squared-ReLU MLP, half of each head rotating; then with
    # biases, a custom head size and a quarter rotating
    "nemotron": ("NemotronConfig", {**SMOL_IDS}),
    "nemotron_bias": ("NemotronConfig", {**SMOL_IDS, "attention_bias": True, "mlp_bias": True, "head_dim": 24,
                                         "partial_rotary_factor": 0.25, "tie_word_embeddings": True}),
    # OLMo (1): Llama's layers with LayerNorms of neither scale nor bias, q/k/v clamped (a small bound, so it bites);
    # then unclamped with biases
    "olmo": ("OlmoConfig", {**SMOL_IDS, "clip_qkv": 0.05}),
    "olmo_bias": ("OlmoConfig", {**SMOL_IDS, "attention_bias": True, "tie_word_embeddings": True}),
    # StableLM 2: LayerNorms with biases, a quarter of each head rotating, q/k/v biases; then attention and MLP side
    # by side on one norm, half rotating, tied
    "stablelm": ("StableLmConfig", {"use_qkv_bias": True}),
    "stablelm_parallel": ("StableLmConfig", {"use_parallel_residual": True, "partial_rotary_factor": 0.5,
                                             "tie_word_embeddings": True}),
    # AFM: Llama's layers with an ungated squared-ReLU MLP (up/down, no gate), YaRN (its released rope's kind);
    # then biases on all four projections, one key/value head, tied embeddings, head size hidden / heads
    "arcee": ("ArceeConfig", {**SMOL_IDS, "head_dim": 16, "rope_parameters": {**YARN, "rope_theta": 1e4}}),
    "arcee_bias": ("ArceeConfig", {**SMOL_IDS, "attention_bias": True, "tie_word_embeddings": True,
                                   "num_key_value_heads": 1}),
    # Helium: rotary on adjacent pairs at the reference's base 1e5 (heads spanning hidden_size: o_proj is
    # hidden -> hidden); then q/k/v biases (none on o_proj), one key/value head, tied, llama3 rope scaling
    "helium": ("HeliumConfig", {"head_dim": 16}),
    "helium_bias": ("HeliumConfig", {"head_dim": 16, "attention_bias": True, "tie_word_embeddings": True,
                                     "num_key_value_heads": 1, "rope_parameters": {**LLAMA3, "rope_theta": 5e5}}),
    # Mellum2: Qwen3-MoE's attention (q/k norms) with three sliding layers around a full one, a rope base per
    # layer kind, renormalised softmax routing, a dense layer among the MoE ones by mlp_layer_types
    "mellum": ("MellumConfig", dict(num_hidden_layers=4, head_dim=16, sliding_window=5, num_experts=8,
                                    num_experts_per_tok=2, moe_intermediate_size=32,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                                 "sliding_attention"],
                                    mlp_layer_types=["sparse", "sparse", "dense", "sparse"],
                                    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                                     "sliding_attention": {"rope_type": "default",
                                                                           "rope_theta": 100.0}})),
    # then the reference's defaults (every layer full and routed, its rope bases), biases on all four
    # projections, top-k not renormalised, tied embeddings
    "mellum_bias": ("MellumConfig", dict(head_dim=24, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                         attention_bias=True, norm_topk_prob=False, tie_word_embeddings=True)),
    # YaRN on the full layers (the sliding one unscaled at its own base), a leading dense layer
    "mellum_yarn": ("MellumConfig", dict(num_hidden_layers=3, head_dim=16, sliding_window=4, num_experts=4,
                                         num_experts_per_tok=2, moe_intermediate_size=24,
                                         layer_types=["full_attention", "sliding_attention", "full_attention"],
                                         mlp_layer_types=["dense", "sparse", "sparse"],
                                         rope_parameters={"full_attention": {**YARN, "rope_theta": 1e4},
                                                          "sliding_attention": {"rope_type": "default",
                                                                                "rope_theta": 500.0}})),
    # Kolibri-1: EXAONE 4.0's attention (sliding rotary layers, a full NoPE one) in GLM-4's sandwich-normed layers,
    # sigmoid routing chosen on the logits plus a selection bias, a shared expert always on; then a full layer
    # first, the chosen weights renormalised, tied
    "kolibri1": ("Kolibri1Config", dict(num_hidden_layers=3, head_dim=16, sliding_window=5, num_experts=8,
                                        num_experts_per_tok=2, moe_intermediate_size=24,
                                        shared_expert_intermediate_size=32,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention"])),
    "kolibri1_norm": ("Kolibri1Config", dict(head_dim=16, sliding_window=3, num_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=16, shared_expert_intermediate_size=16,
                                             norm_topk_prob=True, tie_word_embeddings=True,
                                             layer_types=["full_attention", "sliding_attention"])),
    # Flint: the reference's default schedule over six layers (full, full, three sliding, full), the sliding ones
    # rotary and the full ones NoPE, sinks, sigmoid routing renormalised beside an ungated shared expert, a dense
    # layer among the routed ones
    "flint": ("FlintConfig", dict(num_hidden_layers=6, head_dim=16, sliding_window=5, num_experts=8,
                                  num_experts_per_tok=2, moe_intermediate_size=24,
                                  shared_expert_intermediate_size=32, mlp_only_layers=[0, 3])),
    # then YaRN on the sliding layers, biases on all four projections, top-3 of 4 not renormalised, tied embeddings,
    # the dense layers by decoder_sparse_step, a full layer between sliding ones
    "flint_yarn": ("FlintConfig", dict(num_hidden_layers=4, head_dim=24, sliding_window=4, num_experts=4,
                                       num_experts_per_tok=3, moe_intermediate_size=16,
                                       shared_expert_intermediate_size=24, attention_bias=True,
                                       norm_topk_prob=False, tie_word_embeddings=True, decoder_sparse_step=2,
                                       mlp_only_layers=[],
                                       layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                                    "sliding_attention"],
                                       rope_parameters={**YARN, "rope_theta": 500.0})),
    # and a shared expert of width 0 (none: its output is zeros), every layer routed, a sliding layer last
    "flint_noshared": ("FlintConfig", dict(num_hidden_layers=3, head_dim=16, sliding_window=4, num_experts=4,
                                           num_experts_per_tok=2, moe_intermediate_size=16,
                                           shared_expert_intermediate_size=0, mlp_only_layers=[],
                                           layer_types=["full_attention", "sliding_attention",
                                                        "sliding_attention"])),
    # Granite SWA-MoE: sinks in every layer, every fourth layer full, muP scalars, softmax top-2 of 4 experts
    "granitemoe_swa": ("GraniteMoeSWAConfig", dict(num_hidden_layers=4, sliding_window=5, embedding_multiplier=2.0,
                                                   residual_multiplier=0.5, attention_multiplier=0.2,
                                                   logits_scaling=3.0, num_local_experts=4, num_experts_per_tok=2,
                                                   intermediate_size=32)),
    # then a shared MLP beside the experts, a rope base per kind and a layer without rotary, biases, tied
    "granitemoe_swa_shared": ("GraniteMoeSWAConfig", dict(num_hidden_layers=4, sliding_window=4,
                                                          layer_types=["sliding_attention", "full_attention"] * 2,
                                                          layer_rope_theta=[100.0, 0, 100.0, 5e5],
                                                          attention_bias=True, tie_word_embeddings=True,
                                                          num_local_experts=4, num_experts_per_tok=3,
                                                          intermediate_size=24, shared_intermediate_size=40)),
    # Gemma 4 unified: full layers with wider heads and one key/value head that is also the values, a softcap
    "gemma4_unified": ("Gemma4UnifiedTextConfig", dict(num_hidden_layers=3, head_dim=16, global_head_dim=32,
                                                       num_global_key_value_heads=1, attention_k_eq_v=True,
                                                       sliding_window=5, final_logit_softcapping=3.0,
                                                       layer_types=["sliding_attention", "full_attention",
                                                                    "full_attention"])),
    # then plain full layers (no k=v), its own LM head, the last two layers sharing keys/values, double-wide MLPs
    "gemma4_unified_shared": ("Gemma4UnifiedTextConfig", dict(num_hidden_layers=5, head_dim=16, global_head_dim=16,
                                                              sliding_window=4, tie_word_embeddings=False,
                                                              num_kv_shared_layers=2, use_double_wide_mlp=True,
                                                              layer_types=["sliding_attention", "full_attention",
                                                                           "sliding_attention", "sliding_attention",
                                                                           "full_attention"])),
    # Cohere Compass: parallel layers, rotary (half-split pairs) on sliding layers, full layers without, logits scaled
    "cohere_compass": ("CohereCompassTextConfig", dict(num_hidden_layers=4, sliding_window=5, logit_scale=0.3,
                                                       layer_types=["sliding_attention"] * 3 + ["full_attention"],
                                                       rope_parameters={**SW, "full_attention": None})),
    # then every layer full with rotary (the reference default), heads of the file's head_dim (not hidden / heads),
    # biases, its own LM head, no logit scale
    "cohere_compass_full": ("CohereCompassTextConfig", dict(attention_bias=True, tie_word_embeddings=False, head_dim=24,
                                                            rope_parameters={"full_attention": {
                                                                "rope_type": "default", "rope_theta": 500.0}})),
    # sliding and full layers rotating at bases of their own
    "cohere_compass_two": ("CohereCompassTextConfig", dict(num_hidden_layers=3, sliding_window=4,
                                                           layer_types=["full_attention", "sliding_attention",
                                                                        "full_attention"],
                                                           rope_parameters={**SW, "full_attention": {
                                                               "rope_type": "default", "rope_theta": 5e4}})),
    # LFM3: short convolutions among sliding (window 5, plain rotary at base 10,000) and full attention layers (the
    # proportional rotary: half of each head's angles turn), per-head q/k norms, each head's output gated by a
    # sigmoid of its own projection, the mixer's and the MLP's outputs normed (sandwich), tied embeddings; then
    # without the gate and the output norms, attention biases, untied, plain rotary everywhere at bases of each
    # kind, a wider kernel
    "lfm3": ("Lfm3Config", dict(**SMOL_IDS, num_hidden_layers=5, head_dim=16, sliding_window=5, conv_L_cache=3,
                                layer_types=["conv", "sliding_attention", "full_attention", "conv",
                                             "sliding_attention"])),
    "lfm3_plain": ("Lfm3Config", dict(**SMOL_IDS, num_hidden_layers=3, head_dim=16, sliding_window=4,
                                      use_attention_gate=False,
                                      use_sandwich_norm=False, attention_bias=True, tie_word_embeddings=False,
                                      layer_types=["full_attention", "conv", "sliding_attention"],
                                      rope_parameters={**SW, "full_attention": {"rope_type": "default",
                                                                                "rope_theta": 5e4}})),
    # Laguna: full layers of 4 query heads rotating half of each head, sliding ones (window 5) of 8 rotating whole
    # heads at a base of their own, every head's output times a softplus of its own projection, a dense layer then
    # sigmoid-routed experts (logits soft-capped, a selection bias, renormalised, scaled) beside a shared expert;
    # then per-element gates, attention biases, every layer full and sparse, no shared expert, no soft cap
    "laguna": ("LagunaConfig", dict(**SMOL_IDS, num_hidden_layers=4, head_dim=16, sliding_window=5,
                                    layer_types=["full_attention", "sliding_attention", "sliding_attention",
                                                 "full_attention"], num_attention_heads_per_layer=[4, 8, 8, 4],
                                    moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
                                    num_experts_per_tok=2, moe_router_logit_softcapping=2.0,
                                    moe_routed_scaling_factor=1.5, initializer_range=0.1)),
    "laguna_plain": ("LagunaConfig", dict(**SMOL_IDS, num_hidden_layers=3, head_dim=16, gating="per-element",
                                          attention_bias=True, mlp_layer_types=["sparse"] * 3,
                                          moe_intermediate_size=32, shared_expert_intermediate_size=0,
                                          num_experts=4, num_experts_per_tok=2, initializer_range=0.1,
                                          rope_parameters={"full_attention": {"rope_type": "default",
                                                                              "rope_theta": 5e4}})),
    # Beam: sliding layers (window 5) with rotary and full layers without, their queries scaled by position; gates
    # per head dim with a per-head bias, sandwich norms, depth-scaled residual adds, a dense layer then grouped
    # sigmoid routing with a selection bias, final soft cap; then rotary on both kinds (bases of their own), biases,
    # every layer sparse, no cap
    "beam": ("BeamConfig", dict(**SMOL_IDS, num_hidden_layers=4, head_dim=16, sliding_window=5,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                             "full_attention"], mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
                                moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, n_group=4,
                                topk_group=2, final_logit_softcapping=5.0, initializer_range=0.1)),
    "beam_rope": ("BeamConfig", dict(**SMOL_IDS, num_hidden_layers=3, head_dim=16, sliding_window=4,
                                     attention_bias=True, mlp_layer_types=["sparse"] * 3, moe_intermediate_size=32,
                                     num_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                                     final_logit_softcapping=None, norm_topk_prob=False, initializer_range=0.1,
                                     rope_parameters={**SW, "full_attention": {"rope_type": "default",
                                                                               "rope_theta": 5e4}})),
    # Lara Mini: Gated DeltaNet layers among sliding layers with rotary (window 5) and a full layer without, plain
    # norms, softmax-routed experts (stored fused) beside an ungated shared expert; then untied, top-k not
    # renormalised, no shared expert
    "lara_mini": ("LaraMiniConfig", dict(**SMOL_IDS, num_hidden_layers=5, head_dim=16, sliding_window=5,
                                         moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
                                         num_experts_per_tok=2, linear_key_head_dim=8, linear_value_head_dim=8,
                                         linear_num_key_heads=2, linear_num_value_heads=4, initializer_range=0.1)),
    # Kimi Delta Attention (a decay per key dimension) among latent-attention layers without rotary; DeepSeekMoE
    # after a dense layer; grouped routing; strong initial weights so the per-dimension decays differ
    "kimi_linear": ("KimiLinearConfig", dict(**SMOL_IDS, num_hidden_layers=4, num_key_value_heads=4,
                                             layer_types=["linear_attention", "full_attention", "linear_attention",
                                                          "full_attention"], num_local_experts=4,
                                             num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
                                             n_group=2, topk_group=1, kv_lora_rank=16, qk_nope_head_dim=16,
                                             qk_rope_head_dim=8, v_head_dim=12, linear_head_dim=8,
                                             linear_num_heads=4, initializer_range=0.1)),
    "kimi_linear_qlora": ("KimiLinearConfig", dict(**SMOL_IDS, num_hidden_layers=3, num_key_value_heads=4,
                                                   layer_types=["full_attention", "linear_attention",
                                                                "linear_attention"], num_local_experts=4,
                                                   num_experts_per_tok=2, n_shared_experts=0,
                                                   moe_intermediate_size=32, norm_topk_prob=False, **MLA,
                                                   linear_head_dim=16, linear_num_heads=2, linear_conv_kernel_dim=3,
                                                   tie_word_embeddings=True, initializer_range=0.1)),
    "lara_mini_plain": ("LaraMiniConfig", dict(**SMOL_IDS, num_hidden_layers=3, head_dim=16, sliding_window=4,
                                               tie_word_embeddings=False, norm_topk_prob=False,
                                               shared_expert_intermediate_size=0, moe_intermediate_size=32,
                                               num_experts=4, num_experts_per_tok=2, linear_key_head_dim=8,
                                               linear_value_head_dim=8, linear_num_key_heads=2,
                                               linear_num_value_heads=4, initializer_range=0.1,
                                               layer_types=["sliding_attention", "linear_attention",
                                                            "full_attention"])),
    # Jais-2: LayerNorms (a bias after the scale), biases on the attention's and the MLP's projections, an ungated
    # squared-ReLU MLP; then without MLP biases, tied, one key/value head
    "jais2": ("Jais2Config", {"head_dim": 16}),
    "jais2_plain": ("Jais2Config", {"mlp_bias": False, "attention_bias": False, "tie_word_embeddings": True,
                                    "num_key_value_heads": 1}),
    # nanochat: weightless norms everywhere (q/k after the reversed rotary), the embeddings normed first, an ungated
    # squared-ReLU MLP, logits capped at 15 by default; then attention biases, one key/value head, no cap, tied
    "nanochat": ("NanoChatConfig", {"head_dim": 16}),
    "nanochat_bias": ("NanoChatConfig", {"attention_bias": True, "num_key_value_heads": 1,
                                         "final_logit_softcapping": None, "tie_word_embeddings": True}),
    # Granite SWA: Granite's muP scalars, three sliding layers after a full one by default, a sink in every layer;
    # then a rope base per layer kind, a layer without rotary, attention biases, untied
    "granite_swa": ("GraniteSWAConfig", {"num_hidden_layers": 4, "sliding_window": 5, "embedding_multiplier": 2.0,
                                         "residual_multiplier": 0.5, "attention_multiplier": 0.2,
                                         "logits_scaling": 3.0}),
    "granite_swa_theta": ("GraniteSWAConfig", {"num_hidden_layers": 4, "sliding_window": 4,
                                               "layer_types": ["sliding_attention", "full_attention"] * 2,
                                               "layer_rope_theta": [100.0, 0, 100.0, 5e5], "attention_bias": True,
                                               "tie_word_embeddings": False}),
    # HyperCLOVA X SEED: Granite's muP scalars with each sub-layer's output normed (Peri-LN) and the logits
    # multiplied by logits_scaling, attention biases; then without the output norms, the softmax scale by default
    "hyperclovax": ("HyperCLOVAXConfig", {"embedding_multiplier": 3.0, "residual_multiplier": 0.4,
                                          "attention_multiplier": 0.2, "logits_scaling": 0.7, "attention_bias": True}),
    "hyperclovax_plain": ("HyperCLOVAXConfig", {"use_post_norm": False, "residual_multiplier": 0.6,
                                                "tie_word_embeddings": True}),
    # Granite 4.0's format, all-attention and expert-free (Granite-4.0-Micro): its shared_mlp (gate and up in one
    # tensor), with rotary embeddings; then without any (position_embedding_type unset, as the "H" models)
    "granite4": ("GraniteMoeHybridConfig", {
        "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.3,
        "logits_scaling": 8.0, "layer_types": ["attention"] * 2, "num_local_experts": 0,
        "shared_intermediate_size": 80, "position_embedding_type": "rope", "mamba_n_heads": 8}),
    "granite4_nope": ("GraniteMoeHybridConfig", {
        "residual_multiplier": 0.5, "attention_multiplier": 0.2, "logits_scaling": 2.0, "attention_bias": True,
        "layer_types": ["attention"] * 2, "num_local_experts": 0, "shared_intermediate_size": 48,
        "mamba_n_heads": 8}),
    # Granite 4.0-H: Mamba-2 layers around an attention one (two B/C groups, a conv bias, reference chunks of 8
    # tokens so 20 and 150 span several), expert-free (H-Micro); then without rotary embeddings or conv bias, one
    # group, and a time-step limit that binds (dt = softplus(~1) > 0.9; the reference applies it in its
    # multi-token pass only, so not in the generation test)
    "granite4_h": ("GraniteMoeHybridConfig", {
        "num_hidden_layers": 3, "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.3,
        "logits_scaling": 2.0, "layer_types": ["mamba", "attention", "mamba"], "num_local_experts": 0,
        "shared_intermediate_size": 80, "mamba_n_heads": 8, "mamba_n_groups": 2, "mamba_d_state": 12,
        "mamba_chunk_size": 8, "position_embedding_type": "rope", "initializer_range": 0.2}),
    "granite4_h_nope": ("GraniteMoeHybridConfig", {
        "num_hidden_layers": 3, "residual_multiplier": 0.5, "attention_multiplier": 0.2, "logits_scaling": 1.0,
        "layer_types": ["attention", "mamba", "mamba"], "num_local_experts": 0, "shared_intermediate_size": 48,
        "mamba_n_heads": 4, "mamba_expand": 1, "mamba_d_state": 8, "mamba_d_conv": 3, "mamba_conv_bias": False,
        "mamba_chunk_size": 16, "time_step_limit": (0.0, 0.9), "initializer_range": 0.2}),
    # Granite 4.0-H-Tiny/Small's shape: routed experts (every expert's gate/up in one input_linear) beside the
    # shared MLP in every layer, Mamba-2 and attention
    "granite4_h_moe": ("GraniteMoeHybridConfig", {
        "residual_multiplier": 0.5, "attention_multiplier": 0.2, "logits_scaling": 1.5, "embedding_multiplier": 4.0,
        "layer_types": ["mamba", "attention"], "num_local_experts": 4, "num_experts_per_tok": 2,
        "intermediate_size": 32, "shared_intermediate_size": 48, "mamba_n_heads": 8, "mamba_d_state": 8,
        "mamba_chunk_size": 8, "router_aux_loss_coef": 0.01, "initializer_range": 0.1}),
    # LFM2: gated short convolutions (kernel 3) around an attention layer with per-head q/k norms; the MLP width
    # derived from block_ff_dim (2/3 of 96, rounded up to 16: 64); then the older full_attn_idxs, untied
    # embeddings, a wider kernel and the width taken as given
    "lfm2": ("Lfm2Config", {"num_hidden_layers": 3, "layer_types": ["conv", "full_attention", "conv"],
                            "block_multiple_of": 16, "initializer_range": 0.1}),
    "lfm2_idxs": ("Lfm2Config", {"num_hidden_layers": 3, "full_attn_idxs": [0], "tie_word_embeddings": False,
                                 "conv_L_cache": 4, "block_auto_adjust_ff_dim": False, "initializer_range": 0.1}),
    # LFM2-MoE (LFM2-8B-A1B's shape): a dense layer, then sigmoid-scored experts chosen with the selection bias
    "lfm2_moe": ("Lfm2MoeConfig", {"num_hidden_layers": 3, "layer_types": ["conv", "full_attention", "conv"],
                                   "num_dense_layers": 1, "num_experts": 4, "num_experts_per_tok": 2,
                                   "moe_intermediate_size": 32, "routed_scaling_factor": 1.5,
                                   "initializer_range": 0.1}),
    # Bamba: Granite 4.0-H's Mamba-2 layers (two groups, a conv bias) around an attention layer rotating half of
    # each head, each followed by Llama's MLP
    "bamba": ("BambaConfig", {"num_hidden_layers": 3, "attn_layer_indices": [1], "mamba_n_heads": 8,
                              "mamba_n_groups": 2, "mamba_d_state": 12, "mamba_chunk_size": 8,
                              "initializer_range": 0.1}),
    # Nemotron-H: checkpoint layers that are one sub-layer each (Mamba-2, attention without rotary embeddings, an
    # ungated squared-ReLU MLP): M - * M M - * - pairs into (M -), (*), (M), (M -), (* -), with a mixer-only
    # attention and Mamba-2 layer; two B/C groups, reference chunks of 8 tokens
    "nemotron_h": ("NemotronHConfig", {
        "layers_block_type": ["linear_attention", "mlp", "full_attention", "linear_attention", "linear_attention",
                              "mlp", "full_attention", "mlp"], "head_dim": 16,
        "mamba_num_heads": 8, "mamba_head_dim": 8, "n_groups": 2, "ssm_state_size": 12, "chunk_size": 8,
        "initializer_range": 0.1}),
    # Nemotron-3-Nano's shape: routed experts (sigmoid scores, grouped top-k, the selection bias, scaled) over
    # ungated experts and a shared one, after Mamba-2 and attention layers, then a dense MLP layer; no conv bias
    "nemotron_h_moe": ("NemotronHConfig", {
        "layers_block_type": ["linear_attention", "moe", "full_attention", "moe", "linear_attention", "mlp"],
        "head_dim": 16, "mamba_num_heads": 4, "mamba_head_dim": 16, "n_groups": 1, "ssm_state_size": 8,
        "conv_kernel": 3, "use_conv_bias": False, "chunk_size": 8, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 48, "n_group": 2, "topk_group": 1,
        "routed_scaling_factor": 1.5, "initializer_range": 0.1}),
    # Nemotron-3-Super's latent experts: tokens projected to 24 dims before the routed experts and back after
    # (fc1/fc2_latent_proj); the router and the shared expert see the full width
    "nemotron_h_latent": ("NemotronHConfig", {
        "layers_block_type": ["linear_attention", "moe", "full_attention", "moe"], "head_dim": 16,
        "mamba_num_heads": 4, "mamba_head_dim": 16, "n_groups": 2, "ssm_state_size": 8, "chunk_size": 8,
        "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 48, "moe_latent_size": 24, "routed_scaling_factor": 2.0,
        "initializer_range": 0.1}),
    # Falcon-H1: attention and a Mamba-2 mixer side by side in every layer, with every muP multiplier away from 1
    # (Falcon-H1R-7B's layout: the gated norm after the gate, mamba_d_ssm apart from expand x hidden, head_dim
    # apart from hidden / heads, two B/C groups); then the reference's defaults (no mixer norm, the width from
    # mamba_expand, tied embeddings) and the norm before the gate
    "falcon_h1": ("FalconH1Config", {**FALCON_MUP, "num_hidden_layers": 3, "head_dim": 24, "mamba_d_ssm": 96,
                                     "mamba_n_heads": 8, "mamba_d_head": 12, "mamba_n_groups": 2, "mamba_d_state": 12,
                                     "mamba_chunk_size": 8, "mamba_rms_norm": True,
                                     "mamba_norm_before_gate": False, "rope_theta": 1e5, "initializer_range": 0.1}),
    "falcon_h1_defaults": ("FalconH1Config", {**FALCON_MUP, "mamba_n_heads": 8, "mamba_d_state": 8,
                                              "mamba_chunk_size": 8, "tie_word_embeddings": True,
                                              "initializer_range": 0.1}),
    "falcon_h1_before_gate": ("FalconH1Config", {**FALCON_MUP, "mamba_n_heads": 4, "mamba_d_ssm": 64,
                                                 "mamba_d_state": 8, "mamba_d_conv": 3, "mamba_conv_bias": False,
                                                 "mamba_chunk_size": 8, "mamba_rms_norm": True,
                                                 "mamba_norm_before_gate": True, "initializer_range": 0.1}),
    # DeepSeek-V3.2: V3's layers with sparse attention, each query keeping its 4 best keys by the lightning
    # indexer (32 heads: ties at a zero score, where top-k picks arbitrarily, do not happen), a dense layer first
    "deepseek_v32": ("DeepseekV32Config", dict(
        num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, n_group=2, topk_group=1, n_shared_experts=1, routed_scaling_factor=1.5,
        first_k_dense_replace=1, index_topk=4, index_n_heads=32, index_head_dim=16, **MLA)),
    # GLM-5: the same sparse attention with the indexer rotating interleaved pairs, GLM's defaults
    "glm_moe_dsa": ("GlmMoeDsaConfig", dict(
        num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, index_topk=5, index_n_heads=32,
        index_head_dim=16, **MLA)),
    # Mistral Small 4: latent attention with YaRN and the queries scaled past L = 8 tokens, softmax routing inside
    # the best of two groups (each scored by its top two experts), renormalised and scaled, a shared expert after
    # a dense layer
    "mistral4": ("Mistral4Config", dict(
        num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, n_group=2, topk_group=1, n_shared_experts=1, routed_scaling_factor=1.5,
        first_k_dense_replace=1, pad_token_id=0, **MLA, rope_parameters={
            "rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 8,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
            "llama_4_scaling_beta": 0.3, "partial_rotary_factor": 8 / 24})),
    # OLMo Hybrid: OLMo-3's post-normed attention among pre-normed Gated DeltaNet layers (separate q/k/v/g/a/b
    # projections, beta in [0, 2]); then the reference's default rotary, beta in [0, 1], more value than key heads
    "olmo_hybrid": ("OlmoHybridConfig", {**SMOL_IDS, "num_hidden_layers": 4, "num_key_value_heads": 4, "linear_key_head_dim": 8,
                                         "linear_value_head_dim": 12, "rope_parameters": {"rope_type": "default",
                                                                                          "rope_theta": 5e5}}),
    "olmo_hybrid_plain": ("OlmoHybridConfig", {
        **SMOL_IDS, "num_hidden_layers": 3, "num_key_value_heads": 4, "layer_types": ["linear_attention", "full_attention",
                                                                          "linear_attention"],
        "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
        "linear_value_head_dim": 8, "linear_allow_neg_eigval": False}),
    "seed_oss_out_bias": ("SeedOssConfig", {"head_dim": 16, "attention_out_bias": True, "num_key_value_heads": 1,
                                            "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                "rope_theta": 1e6}}),
    # SmolLM3: no rotary embedding in every fourth layer; then NoPE layers of its own that slide (the reference's
    # default layer types under use_sliding_window), biases on all four projections, YaRN on the others
    "smollm3": ("SmolLM3Config", {"num_hidden_layers": 4, "head_dim": 16, **SMOL_IDS}),
    "smollm3_window": ("SmolLM3Config", {
        **SMOL_IDS, "num_hidden_layers": 3, "no_rope_layers": [0, 1, 0], "use_sliding_window": True,
        "sliding_window": 5,
        "attention_bias": True, "tie_word_embeddings": False, "rope_parameters": {**YARN, "rope_theta": 1e5}}),
    # EXAONE 4.0: post-norms, per-head q/k norms, three rotary sliding layers then a full one without rotary
    # (llama3 scaling on the rotary ones); then no window at all: every layer full and rotary, tied embeddings
    "exaone4": ("Exaone4Config", {"num_hidden_layers": 4, "head_dim": 16, "sliding_window": 5,
                                  "sliding_window_pattern": 4, "rope_parameters": {**LLAMA3, "rope_theta": 1e6}}),
    "exaone4_full": ("Exaone4Config", {"sliding_window": None, "layer_types": ["full_attention"] * 2,
                                       "tie_word_embeddings": True, "num_key_value_heads": 1}),
    # MiniMax-M2: whole-projection q/k norms, partial rotary by the released configs' rotary_dim, sigmoid routing
    # with the selection bias in every layer; then by partial_rotary_factor, more experts per token
    "minimax_m2": ("MiniMaxM2Config", {"head_dim": 16, "rotary_dim": 8, "num_local_experts": 8,
                                       "num_experts_per_tok": 2, "intermediate_size": 32}),
    "minimax_m2_factor": ("MiniMaxM2Config", {"head_dim": 24, "num_local_experts": 4, "num_experts_per_tok": 3,
                                              "intermediate_size": 24, "num_hidden_layers": 3,
                                              "rope_parameters": {"rope_type": "default", "rope_theta": 5e6,
                                                                  "partial_rotary_factor": 0.5}}),
    # ERNIE 4.5: rotary on adjacent pairs; MoE: softmax routing chosen with the selection bias, shared experts
    # from layer 1; then MoE on every second layer (1 and 3), no shared expert, untied
    "ernie4_5": ("Ernie4_5Config", {"head_dim": 16, "pad_token_id": 0}),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", {"head_dim": 24, "num_hidden_layers": 3, "moe_num_experts": 8,
                                            "moe_k": 2, "moe_intermediate_size": 32, "moe_num_shared_experts": 1,
                                            "pad_token_id": 0}),
    "ernie4_5_moe_interval": ("Ernie4_5_MoeConfig", {
        "head_dim": 16, "num_hidden_layers": 4, "moe_num_experts": 4, "moe_k": 2, "moe_intermediate_size": 24,
        "moe_num_shared_experts": 0, "moe_layer_start_index": 0, "moe_layer_end_index": 3, "moe_layer_interval": 2,
        "tie_word_embeddings": False, "pad_token_id": 0}),
    # Hunyuan: q/k norms after the rotary, a fixed NTK alpha stretching the rope base, biases on all four
    # projections; MoE: softmax top-k over every layer (per-layer lists as released) plus the shared MLP
    "hunyuan_dense": ("HunYuanDenseV1Config", {
        "head_dim": 24, "attention_bias": True,
        "rope_parameters": {"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0}}),
    "hunyuan_moe": ("HunYuanMoEV1Config", {"head_dim": 16, "num_hidden_layers": 3, "intermediate_size": 32,
                                           "num_experts": 4, "moe_topk": [2, 2, 2],
                                           "tie_word_embeddings": True}),
    # Llama with attention_bias: biases on q, k, v and o
    "llama_bias": ("LlamaConfig", {"attention_bias": True}),
    # GLM-4.5: q/k/v biases, half the head rotary (the default), grouped sigmoid routing with a selection bias
    # and a shared expert after a dense layer; then per-head q/k norms, 3/4 rotary, plain top-k, no dense layer
    "glm4_moe": ("Glm4MoeConfig", dict(
        num_hidden_layers=3, head_dim=24, attention_bias=True, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, n_group=4, topk_group=2, first_k_dense_replace=1, n_shared_experts=1,
        routed_scaling_factor=2.5)),
    # GLM-4.7-Flash: DeepSeek-V3's latent attention and routing; dense layers named per layer, one after a MoE one
    "glm4_moe_lite": ("Glm4MoeLiteConfig", dict(
        num_hidden_layers=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, n_group=2, topk_group=1, n_shared_experts=1, routed_scaling_factor=1.8,
        mlp_layer_types=["dense", "sparse", "dense", "sparse"], **MLA)),
    "glm4_moe_lite_plain": ("Glm4MoeLiteConfig", dict(
        num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        n_shared_experts=2, norm_topk_prob=False, rope_interleave=False, **{**MLA, "q_lora_rank": None})),
    # GLM-4-0414 / GLM-Z1: sandwich norms (a norm on the attention and MLP outputs), q/k/v biases, half of each
    # head rotary on adjacent pairs, gate and up in one tensor; then GLM-4-9B-Chat-HF's format (glm: no sandwich
    # norms), 3/4 rotary, no biases, tied embeddings
    "glm4": ("Glm4Config", {"head_dim": 24, "pad_token_id": 0, "eos_token_id": 1}),
    "glm": ("GlmConfig", {"head_dim": 16, "partial_rotary_factor": 0.75, "attention_bias": False,
                          "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1,
                          "rope_parameters": {"rope_type": "default", "rope_theta": 50000.0,
                                              "partial_rotary_factor": 0.75}}),
    # Ministral 3: YaRN, and the queries scaled by 1 + beta log(1 + floor(position / L)) after the rotary (L = 8:
    # several steps within 20 and 150 tokens); then a sliding window, the plain rotary, tied embeddings
    "ministral3": ("Ministral3Config", {**MINISTRAL_IDS, "head_dim": 16, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 8,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.3}}),
    "ministral3_window": ("Ministral3Config", {**MINISTRAL_IDS, "sliding_window": 5, "tie_word_embeddings": True,
                                               "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                                   "original_max_position_embeddings": 6,
                                                                   "llama_4_scaling_beta": 0.5}}),
    # Hy3: Qwen3's attention over sigmoid-routed experts (selection bias, renormalised, scaled) beside two shared
    # experts, the dense layers named per layer (one after a MoE layer); then biases on all four projections, no
    # shared expert (the reference then builds a shared MLP of the dense width), tied embeddings
    "hy_v3": ("HYV3Config", dict(num_hidden_layers=3, head_dim=16, num_experts=8, num_experts_per_tok=2,
                                 moe_intermediate_size=32, num_shared_experts=2,
                                 mlp_layer_types=["dense", "sparse", "dense"])),
    "hy_v3_bias": ("HYV3Config", dict(head_dim=24, num_experts=4, num_experts_per_tok=3, moe_intermediate_size=24,
                                      num_shared_experts=0, attention_bias=True, router_scaling_factor=1.5,
                                      tie_word_embeddings=True, rope_parameters={"rope_type": "linear",
                                                                                 "factor": 2.0, "rope_theta": 5e5})),
    # Solar Open: Llama's attention over GLM-4.5's routing in every layer (grouped top-k, selection bias, a shared
    # expert); then q/k/v biases, no shared expert, not renormalised, tied embeddings
    "solar_open": ("SolarOpenConfig", dict(head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
                                           moe_intermediate_size=32, n_group=4, topk_group=2, n_shared_experts=1,
                                           routed_scaling_factor=2.5)),
    "solar_open_bias": ("SolarOpenConfig", dict(head_dim=24, n_routed_experts=4, num_experts_per_tok=3,
                                                moe_intermediate_size=24, n_shared_experts=0, attention_bias=True,
                                                norm_topk_prob=False, tie_word_embeddings=True)),
    # K-EXAONE: EXAONE 4.0's attention (q/k norms, rotary sliding layers, full ones without rotary) in pre-norm
    # layers, DeepSeek-V3's routing with two shared experts, dense layers by mlp_layer_types; then full layers only
    # (so none rotary: the format has no null window), grouped top-k, no dense layer by first_k_dense_replace
    "exaone_moe": ("ExaoneMoeConfig", dict(num_hidden_layers=4, head_dim=16, sliding_window=5,
                                           sliding_window_pattern=4, num_experts=8, num_experts_per_tok=2,
                                           moe_intermediate_size=32, num_shared_experts=2,
                                           mlp_layer_types=["dense", "sparse", "dense", "sparse"],
                                           rope_parameters={**LLAMA3, "rope_theta": 1e6})),
    "exaone_moe_full": ("ExaoneMoeConfig", dict(head_dim=24, layer_types=["full_attention"] * 2, num_experts=8,
                                                num_experts_per_tok=2, moe_intermediate_size=24, n_group=4,
                                                topk_group=2, first_k_dense_replace=0, tie_word_embeddings=True)),
    # MiMo-V2-Flash: full layers (the first, the sixth) with 2 key/value heads, sliding ones with 4 and sinks,
    # keys 24 wide and values 16 (scaled by 0.707), a third of each head rotary with a base per layer kind, grouped
    # sigmoid routing without shared experts after a dense layer; then biases on q/k/v, the layer kinds and MLPs
    # named per layer (a dense layer after a MoE one), one key/value head in the full layers, values scaled 1.3
    "mimo_v2_flash": ("MiMoV2FlashConfig", dict(num_hidden_layers=6, head_dim=24, v_head_dim=16, sliding_window=5,
                                                n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                                n_group=4, topk_group=2, routed_scaling_factor=1.5)),
    "mimo_v2_flash_bias": ("MiMoV2FlashConfig", dict(
        num_hidden_layers=3, num_key_value_heads=1, head_dim=16, v_head_dim=24, sliding_window=4,
        attention_bias=True, attention_value_scale=1.3, layer_types=["sliding_attention", "full_attention",
                                                                     "sliding_attention"],
        mlp_layer_types=["sparse", "dense", "sparse"], n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=24, tie_word_embeddings=True,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 500.0,
                                               "partial_rotary_factor": 0.5}})),
    # Gemma 4 (31B's layout): full layers with heads twice as wide, one key/value head whose values are the keys'
    # projection, proportional rope there; values normed, queries unscaled, stored layer scalars, a logit softcap;
    # then no shared key/value projection, full layers as wide as the sliding ones but with their own heads, a
    # quarter-turn rope base of their own, the layer kinds by default (the last forced full), untied
    "gemma4": ("Gemma4TextConfig", dict(num_hidden_layers=3, head_dim=16, global_head_dim=32,
                                        num_global_key_value_heads=1, attention_k_eq_v=True,
                                        hidden_size_per_layer_input=0, sliding_window=5, final_logit_softcapping=3.0,
                                        layer_types=["sliding_attention", "full_attention", "full_attention"])),
    "gemma4_plain": ("Gemma4TextConfig", dict(num_hidden_layers=4, head_dim=16, global_head_dim=16,
                                              hidden_size_per_layer_input=0, sliding_window=6,
                                              tie_word_embeddings=False, rope_parameters={
                                                  "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                                  "full_attention": {"rope_type": "proportional", "rope_theta": 1e4,
                                                                     "partial_rotary_factor": 0.5}})),
    # Gemma 4 26B-A4B's layout: in every layer a dense MLP beside softmax-routed experts (the router on the layer's
    # input, normed and scaled; each chosen expert's weight scaled by its own), fused expert tensors
    "gemma4_moe": ("Gemma4TextConfig", dict(num_hidden_layers=3, head_dim=16, global_head_dim=32,
                                            num_global_key_value_heads=1, attention_k_eq_v=True,
                                            hidden_size_per_layer_input=0, sliding_window=5,
                                            final_logit_softcapping=3.0, enable_moe_block=True, num_experts=8,
                                            top_k_experts=2, moe_intermediate_size=24)),
    # Gemma 4 E2B/E4B's layout: per-layer input embeddings gated into every layer, the last three layers attending
    # over the keys/values of the last earlier sliding / full layer (no key/value projections), their MLPs twice
    # as wide; then layers sharing keys/values in a model whose full and sliding layers stack together (no
    # per-layer inputs, untied)
    "gemma4_e2b": ("Gemma4TextConfig", dict(num_hidden_layers=7, head_dim=16, global_head_dim=32,
                                            hidden_size_per_layer_input=8, vocab_size_per_layer_input=V,
                                            num_kv_shared_layers=3, use_double_wide_mlp=True, sliding_window=5,
                                            final_logit_softcapping=3.0,
                                            layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                         "sliding_attention", "full_attention", "sliding_attention",
                                                         "full_attention"])),
    "gemma4_shared": ("Gemma4TextConfig", dict(num_hidden_layers=6, head_dim=16, global_head_dim=16,
                                               hidden_size_per_layer_input=0, num_kv_shared_layers=2,
                                               sliding_window=4, tie_word_embeddings=False,
                                               layer_types=["sliding_attention", "full_attention"] +
                                               ["sliding_attention"] * 3 + ["full_attention"])),
    # Command A / R7B: one LayerNorm per layer feeding attention and MLP side by side, three rotary (adjacent pairs)
    # sliding layers then a full one without rotary, logits scaled, tied; then q/k/v/o biases, the layer kinds named
    # (full first), its own LM head, logits scaled up
    "cohere2": ("Cohere2Config", dict(num_hidden_layers=4, sliding_window=5, logit_scale=0.3)),
    "cohere2_bias": ("Cohere2Config", dict(attention_bias=True, sliding_window=4, logit_scale=2.0,
                                           layer_types=["full_attention", "sliding_attention"],
                                           tie_word_embeddings=False,
                                           rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    # Command A+: Command A's parallel layers (centred LayerNorm) with softmax-routed experts beside a shared expert,
    # averaged, after a dense layer of its own width that rotates though full (pattern 1); then RMSNorm, sigmoid
    # routing not renormalised, two shared experts summed, the dense layers sliding every second (the full one without
    # rotary), its own LM head, q/k/v/o biases
    "cohere2_moe": ("Cohere2MoeConfig", dict(num_hidden_layers=4, head_dim=16, sliding_window=5, logit_scale=0.3,
                                             intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                             num_shared_experts=1, first_k_dense_replace=1,
                                             prefix_dense_intermediate_size=48)),
    "cohere2_moe_rms": ("Cohere2MoeConfig", dict(
        num_hidden_layers=4, head_dim=24, sliding_window=4, rms_norm_eps=1e-6, intermediate_size=24, num_experts=4,
        num_experts_per_tok=3, num_shared_experts=2, shared_expert_combination_strategy="sum",
        expert_selection_fn="sigmoid", norm_topk_prob=False, first_k_dense_replace=2,
        prefix_dense_sliding_window_pattern=2, tie_word_embeddings=False, attention_bias=True, logit_scale=2.0)),
    # Apertus: Llama's attention with q/k norms, an ungated MLP through xIELU with learned scalars per layer (the
    # reference's llama3 rope at base 12e6 by default); then squared ReLU, biases on all four projections, tied
    "apertus": ("ApertusConfig", dict(head_dim=16)),
    "apertus_relu2": ("ApertusConfig", dict(head_dim=16, hidden_act="relu2", attention_bias=True,
                                            tie_word_embeddings=True,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e4})),
    # Sarvam-30B / Param2 (run as GLM-4.5, stored under their original names: fused query_key_value, dense,
    # query/key_layernorm, word_embeddings, expert_bias): q/k norms, whole-head rotary, grouped sigmoid routing with
    # the selection bias beside a shared expert after a dense layer; then q/k/v biases, no q/k norms, two shared
    "sarvam_moe": ("SarvamMoEConfig", dict(num_hidden_layers=3, head_dim=16, use_qk_norm=True, n_routed_experts=8,
                                           num_experts_per_tok=2, moe_intermediate_size=32, n_group=4, topk_group=2,
                                           n_shared_experts=1)),
    "param2moe": ("Param2MoeConfig", dict(head_dim=24, attention_bias=True, n_routed_experts=4, num_experts_per_tok=3,
                                          moe_intermediate_size=24, n_shared_experts=2, first_k_dense_replace=0,
                                          norm_topk_prob=False, tie_word_embeddings=True)),
    # Sarvam-105B (run as DeepSeek-V3): full-rank queries (its default), latent attention, sigmoid routing
    "sarvam_mla": ("SarvamMLAConfig", dict(num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8,
                                           num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                                           **{**MLA, "q_lora_rank": None})),
    # IQuest-Coder-V1 (run as Llama)
    "iquestcoder": ("IQuestCoderConfig", {"head_dim": 16}),
    # Code World Model: Llama with three sliding layers to a full one (the first full); then the kinds named
    "cwm": ("CwmConfig", dict(num_hidden_layers=5, head_dim=16, sliding_window=5)),
    "cwm_types": ("CwmConfig", dict(head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                                    tie_word_embeddings=True,
                                    rope_parameters={"rope_type": "default", "rope_theta": 5e5})),
    # A.X K1: DeepSeek-V3's layers with the MoE output normed once more; dense layers named per layer (one after a
    # MoE one)
    "axk1": ("AXK1Config", dict(num_hidden_layers=4, num_key_value_heads=4, n_routed_experts=8,
                                num_experts_per_tok=2, moe_intermediate_size=32, n_group=2, topk_group=1,
                                n_shared_experts=1, mlp_layer_types=["dense", "sparse", "dense", "sparse"], **MLA)),
    # FlexOlmo: OLMoE's experts in OLMo-2's post-norm layers (q/k norms over the whole projection); then renormalised
    "flex_olmo": ("FlexOlmoConfig", dict(num_hidden_layers=3, num_experts=4, num_experts_per_tok=2, pad_token_id=0)),
    "flex_olmo_norm": ("FlexOlmoConfig", dict(num_experts=4, num_experts_per_tok=3, norm_topk_prob=True,
                                              tie_word_embeddings=True, pad_token_id=0)),
    # Trinity: q/k norms and an output gate, rotary in the sliding layers only (every fourth full), sandwich norms,
    # sigmoid routing with the selection bias and route_scale beside a shared expert after a dense layer,
    # embeddings times sqrt(d); then no dense layer, two shared experts, the layer kinds named, plain embeddings
    "afmoe": ("AfmoeConfig", dict(num_hidden_layers=4, head_dim=16, sliding_window=5, num_experts=8,
                                  num_experts_per_tok=2, moe_intermediate_size=32, num_shared_experts=1,
                                  route_scale=2.5, mup_enabled=True)),
    "afmoe_plain": ("AfmoeConfig", dict(head_dim=24, sliding_window=4, num_dense_layers=0, num_experts=4,
                                        num_experts_per_tok=3, moe_intermediate_size=24, num_shared_experts=2,
                                        layer_types=["full_attention", "sliding_attention"],
                                        tie_word_embeddings=True)),
    # InternLM3 (run as Llama by transformers): biases on all four projections and the MLP's as released
    # (qkv_bias, bias: here off, as the reference allows them only together), dynamic NTK rope within the context
    "internlm3": ("InternLM3Config", {"head_dim": 16, "rope_parameters": {"rope_type": "dynamic", "factor": 6.0,
                                                                          "rope_theta": 5e7}}),
    # MiniCPM5-MoE: a sigmoid output gate per head (q_gate_proj), DeepSeek-V3's grouped sigmoid routing with the
    # selection bias beside a shared expert, the dense layers named per layer (one after a MoE one); then one
    # leading dense layer from the older first_k_dense_replace, two shared experts, plain top-k, tied embeddings
    "minicpm5_moe": ("MiniCPM5MoeConfig", dict(
        num_hidden_layers=4, head_dim=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        n_group=2, topk_group=1, n_shared_experts=1, routed_scaling_factor=2.5,
        mlp_layer_types=["dense", "sparse", "dense", "sparse"])),
    "minicpm5_moe_legacy": ("MiniCPM5MoeConfig", dict(
        num_hidden_layers=3, head_dim=24, n_routed_experts=4, num_experts_per_tok=3, moe_intermediate_size=24,
        n_shared_experts=2, norm_topk_prob=False, first_k_dense_replace=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0})),
    # dots.llm1: Qwen3's attention (q/k norms) over DeepSeek-V3's grouped sigmoid routing with the selection bias
    # and shared experts after a dense layer, sliding from max_window_layers on; then biases on all four
    # projections, no dense layer, renormalised top-k, full attention only
    "dots1": ("Dots1Config", dict(num_hidden_layers=3, head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
                                  moe_intermediate_size=32, n_group=4, topk_group=2, n_shared_experts=1,
                                  first_k_dense_replace=1, routed_scaling_factor=2.5, sliding_window=5,
                                  max_window_layers=1)),
    "dots1_bias": ("Dots1Config", dict(head_dim=24, attention_bias=True, n_routed_experts=4, num_experts_per_tok=3,
                                       moe_intermediate_size=24, n_shared_experts=2, norm_topk_prob=True,
                                       sliding_window=None, tie_word_embeddings=True)),
    # Youtu-LLM: DeepSeek-V3's latent attention (low-rank queries, interleaved rotary) over dense MLPs, tied
    # embeddings (the default); then full-rank queries, rotary in halves, its own LM head
    "youtu": ("YoutuConfig", dict(num_hidden_layers=3, num_key_value_heads=4, **MLA)),
    "youtu_plain": ("YoutuConfig", dict(**{**MLA, "q_lora_rank": None}, num_key_value_heads=4, rope_interleave=False,
                                        tie_word_embeddings=False)),
    "glm4_moe_qk_norm": ("Glm4MoeConfig", dict(
        head_dim=16, use_qk_norm=True, partial_rotary_factor=0.75, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=0, n_shared_experts=2, norm_topk_prob=False,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0, "partial_rotary_factor": 0.75})),
}
torch.manual_seed(0)
RNG = np.random.RandomState(0)
IDS = RNG.randint(0, V, (3, 20)).astype(np.int32)
MASK = np.ones((3, 20), bool)
MASK[1, :5] = False
MASK[2, :11] = False


# text models transformers only registers inside their vision-language wrapper (Mistral 4's, in mistral3):
# loaded by their own class
OWN_CLASS = {"mistral4": "Mistral4ForCausalLM"}


def causal_lm(model_type: str):
    """The class that builds and loads a causal LM of ``model_type`` (``from_config`` / ``from_pretrained``)."""
    return getattr(transformers, OWN_CLASS[model_type]) if model_type in OWN_CLASS else transformers.AutoModelForCausalLM


def load_causal(path, **kw):
    import json
    from pathlib import Path

    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    return causal_lm(model_type).from_pretrained(path, attn_implementation="eager", **kw).eval()


def build_reference(name: str, seed: int = 0):
    cls, over = CASES[name]
    cfg = getattr(transformers, cls)(**{**COMMON, **over})
    torch.manual_seed(seed)
    build = causal_lm(cfg.model_type)
    model = (build.from_config if build is transformers.AutoModelForCausalLM else build._from_config)(
        cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or "bias" in n or n.endswith(("router.scale", "per_expert_scale")):  # (Gemma 4's ones)
                p.add_(torch.randn_like(p) * 0.1)
            if "sinks" in n:  # a sink of the scores' size, so ignoring it shows
                p.add_(torch.randn_like(p))
            if n.endswith(("act_fn.alpha_p", "act_fn.alpha_n")):  # xIELU's learned scalars (Apertus)
                p.add_(torch.randn_like(p) * 0.5)
        for n, b in model.named_buffers():
            if "e_score_correction_bias" in n or n.endswith("expert_bias"):  # selection biases (LFM2-MoE's too)
                b.add_(torch.randn_like(b) * 0.1)
            if n.endswith("layer_scalar"):  # Gemma 4's stored per-layer output scales (ones when built)
                b.mul_(0.5 + torch.rand_like(b))
            if n.endswith(("act_fn.beta", "act_fn.eps")):  # xIELU's stored fixed scalars
                b.add_(torch.rand_like(b) * -0.3)
    return model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """name -> (transformers model, directory it was saved to); built once per session."""

    @functools.cache
    def get(name: str):
        model = build_reference(name)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        return model, path

    return get


def reference_logits(model, ids=IDS, mask=MASK) -> np.ndarray:
    pos = np.asarray(positions_from_valid(jnp.asarray(mask)))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(pos, dtype=torch.long))
    return out.logits.float().numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(checkpoint, name):
    ref_model, path = checkpoint(name)
    ours = np.asarray(load_pretrained(path, dtype="float32")(IDS, MASK))
    assert ours.shape == (3, 20, V) and ours.dtype == np.float32
    err = np.abs(ours - reference_logits(ref_model))[MASK].max()
    assert err <= 1e-4, f"{name}: max |dlogits| {err:.2e}"


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "gpt_oss", "qwen2_moe", "qwen3_moe_dense",
                                  "ernie4_5_moe_interval", "olmoe", "granite4_h_moe", "granitemoe"])
def test_balance_loss_and_load_match_transformers(checkpoint, name):
    ref_model, path = checkpoint(name)
    model = load_pretrained(path)
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK, dtype=torch.long),
                        position_ids=torch.tensor(np.asarray(positions_from_valid(jnp.asarray(MASK)))),
                        output_router_logits=True)
    ids, valid = jnp.asarray(IDS), jnp.asarray(MASK)
    aux = jax.jit(lambda p: model.mdef.bind(p).hidden(ids, positions_from_valid(valid), valid,
                                                      return_aux=True)[2])(model.params)
    np.testing.assert_allclose(float(aux["balance_loss"]), float(ref.aux_loss), rtol=1e-5)
    assert aux["expert_load"].shape == (2, 4)
    np.testing.assert_allclose(np.asarray(aux["expert_load"]).sum(-1), 2.0, rtol=1e-6)  # top_k per token
    assert float(aux["aux_loss"]) == pytest.approx(float(aux["balance_loss"]) * model.cfg.moe.aux_loss_coef)


@pytest.mark.parametrize("name", list(CASES))
def test_save_roundtrip_loads_in_transformers(checkpoint, tmp_path, name):
    ref_model, path = checkpoint(name)
    save_pretrained(load_pretrained(path), tmp_path)
    again = load_causal(tmp_path)
    want = ref_model.state_dict()
    got = again.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    np.testing.assert_array_equal(reference_logits(again), reference_logits(ref_model))


@pytest.mark.parametrize("name", ["qwen2", "gemma3", "deepseek_v3", "gpt_oss", "olmo2", "qwen2_moe", "qwen3_moe_dense",
                                  "glm4_moe", "olmo3", "seed_oss", "smollm3", "exaone4", "hunyuan_moe",
                                  "granite", "glm4", "glm", "ministral3", "gemma2", "deepseek_v2", "olmoe", "gemma",
                                  "granite4_h", "granite4_h_moe", "lfm2", "bamba", "nemotron_h", "nemotron_h_moe",
                                  "nemotron_h_moe_latent", "falcon_h1", "deepseek_v32", "mistral4", "olmo_hybrid",
                                  "llama", "qwen3", "qwen3_moe", "mixtral", "glm_moe_dsa", "llama_bias",
                                  "glm4_moe_lite", "minimax_m2", "ernie4_5", "ernie4_5_moe", "hunyuan", "hy_v3",
                                  "hy_v3_bias", "solar_open", "exaone_moe", "mimo_v2_flash", "gemma4", "gemma4_moe",
                                  "cohere2", "minicpm5_moe", "dots1", "youtu", "ministral", "afmoe", "gemma4_e2b",
                                  "cohere2_moe", "cohere2_moe_sliding", "apertus", "sarvam_moe", "sarvam_mla",
                                  "cwm", "axk1", "flex_olmo", "hyperclovax", "granite_swa", "arcee", "helium",
                                  "nanochat", "mellum", "mellum_bias", "kolibri1", "jais2", "flint", "flint_bias",
                                  "granitemoe_swa", "gemma4_unified", "cohere_compass", "lfm3",
                                  "lfm3_plain", "laguna", "laguna_plain", "beam", "lara_mini", "kimi_linear",
                                  "granitemoe", "granitemoeshared", "exaone", "cohere", "nemotron", "olmo",
                                  "stablelm"])
def test_hand_built_config_saves_for_transformers(tmp_path, name):
    """A model made with ``create`` (e.g. the quickstart's, family qwen2 without biases) is servable: its
    generated config.json and weights load in transformers with the same logits. (Phi-3's hand-built config has
    long-rope past its original length at these 20 tokens, where one reference forward uses the long factors
    for every position: ``test_longrope_past_original_length_matches_reference_generation``.)"""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from reasoning_rl.models import create
    from test_hf_io import FAMILY_CONFIGS
    from test_models_layers import random_params

    mdef, _ = create(FAMILY_CONFIGS[name], abstract=True)
    params = random_params(mdef, 4)
    save_pretrained(mdef, params, tmp_path)
    ref = load_causal(tmp_path)
    ids, mask = IDS % 64, MASK
    ours = np.asarray(jax.jit(lambda p: mdef.bind(p)(jnp.asarray(ids), valid=jnp.asarray(mask)))(params))
    err = np.abs(ours - reference_logits(ref, ids, mask))[mask].max()
    # (random weights through the per-layer inputs' untrained norms amplify float32 rounding: the same model's
    # logits move by up to 3e-4 between jitted and eager orders of summation; the inputs themselves agree to 4e-7)
    tol = 1e-3 if name == "gemma4_e2b" else 1e-4
    assert err <= tol, f"{name}: max |dlogits| {err:.2e}"


def _sft_step(mdef, params):
    import optax

    tx = optax.adamw(1e-2)
    tokens = jnp.asarray(IDS)
    valid = jnp.asarray(MASK)

    def loss(p):
        logits = mdef.bind(p)(tokens, positions_from_valid(valid), valid)
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        w = (valid[:, 1:] & valid[:, :-1]).astype(jnp.float32)
        return jnp.sum(nll * w) / jnp.sum(w)

    grads = jax.grad(loss)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", ["qwen2", "qwen3_moe", "granite4_h"])
def test_sft_step_save_reload_identical(checkpoint, tmp_path, name):
    _, path = checkpoint(name)
    model = load_pretrained(path)
    new = jax.jit(functools.partial(_sft_step, model.mdef))(model.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(model.params)))
    save_pretrained(model.mdef, new, tmp_path)
    back = load_params(tmp_path, model.mdef, "float32")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, new)


# + sinks and windows, partial rotary, layers without rotary in the decode path
@pytest.mark.parametrize("name", ["gemma3", "deepseek_v3", "gpt_oss", "glm4_moe", "olmo3", "smollm3_window",
                                  "glm4_moe_lite", "exaone4", "minimax_m2", "glm4", "ministral3",
                                  "ernie4_5_moe", "hunyuan_dense", "granite", "granite4", "granite4_nope", "gemma2",
                                  "deepseek_v2", "deepseek_v2_lite", "olmoe", "gemma", "granite4_h",
                                  "granite4_h_moe", "lfm2", "lfm2_moe", "bamba", "nemotron_h", "nemotron_h_moe",
                                  "nemotron_h_latent", "falcon_h1", "falcon_h1_before_gate", "deepseek_v32",
                                  "glm_moe_dsa", "mistral4", "olmo_hybrid", "olmo_hybrid_plain", "hy_v3",
                                  "solar_open", "exaone_moe", "mimo_v2_flash", "mimo_v2_flash_bias", "gemma4",
                                  "gemma4_plain", "gemma4_moe", "gemma4_e2b", "gemma4_shared", "cohere2",
                                  "cohere2_bias", "afmoe",
                                  "internlm3",
                                  "minicpm5_moe", "dots1", "youtu", "ministral",
                                  "cohere2_moe", "apertus", "sarvam_moe", "sarvam_mla",
                                  "cwm", "axk1", "flex_olmo", "hyperclovax", "granite_swa_theta", "arcee",
                                  "helium_bias", "nanochat", "mellum", "mellum_yarn", "kolibri1", "jais2", "flint",
                                  "flint_yarn", "granitemoe_swa_shared", "gemma4_unified_shared", "cohere_compass",
                                  "lfm3", "lfm3_plain", "laguna", "laguna_plain", "beam", "beam_rope", "lara_mini",
                                  "lara_mini_plain", "kimi_linear", "kimi_linear_qlora", "granitemoe",
                                  "granitemoeshared", "exaone", "cohere", "nemotron", "olmo", "stablelm"])
def test_greedy_generation_matches_transformers(checkpoint, name):
    sampler = pytest.importorskip("reasoning_rl.rollout.sampler")
    ref_model, path = checkpoint(name)
    model = load_pretrained(path)
    prompts = np.zeros((2, 8), np.int32)
    valid = np.zeros((2, 8), bool)
    prompts[0, :], valid[0, :] = RNG.randint(1, V, 8), True
    prompts[1, 3:], valid[1, 3:] = RNG.randint(1, V, 5), True
    # 16 new tokens: past every sliding window here, over two of the sampler's growing decode windows
    out = sampler.generate(model.mdef, model.params, prompts, valid, max_new_tokens=16, greedy=True, stop_ids=())
    ref_model.generation_config.eos_token_id = None
    ref_model.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = ref_model.generate(input_ids=torch.tensor(prompts, dtype=torch.long),
                                 attention_mask=torch.tensor(valid, dtype=torch.long), max_new_tokens=16,
                                 min_new_tokens=16, do_sample=False)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref[:, 8:].numpy())
    assert np.asarray(out.mask).all()


@pytest.mark.parametrize("name", ["gpt_oss", "olmo2", "phi3_longrope", "qwen2_moe_window", "qwen3_moe_dense",
                                  "glm4_moe_qk_norm", "olmo3", "seed_oss_out_bias", "smollm3_window", "glm4_moe_lite",
                                  "exaone4", "minimax_m2_factor", "ernie4_5_moe_interval", "hunyuan_moe", "granite",
                                  "glm4", "glm", "ministral3", "ministral3_window", "gemma2", "gemma2_nocap",
                                  "deepseek_v2", "deepseek_v2_lite", "olmoe", "olmoe_norm", "gemma", "granite4_h",
                                  "granite4_h_nope", "granite4_h_moe", "lfm2", "lfm2_idxs", "lfm2_moe",
                                  "bamba", "nemotron_h", "nemotron_h_moe", "nemotron_h_latent", "falcon_h1",
                                  "falcon_h1_defaults", "falcon_h1_before_gate", "deepseek_v32",
                                  "glm_moe_dsa", "mistral4", "olmo_hybrid", "olmo_hybrid_plain", "hy_v3", "hy_v3_bias",
                                  "solar_open", "solar_open_bias", "exaone_moe", "exaone_moe_full", "mimo_v2_flash",
                                  "mimo_v2_flash_bias", "gemma4", "gemma4_plain", "gemma4_moe", "gemma4_e2b",
                                  "gemma4_shared", "cohere2",
                                  "cohere2_bias", "afmoe", "afmoe_plain", "internlm3", "minicpm5_moe",
                                  "minicpm5_moe_legacy", "dots1", "dots1_bias", "youtu",
                                  "youtu_plain", "ministral", "cohere2_moe", "cohere2_moe_rms",
                                  "apertus", "apertus_relu2", "sarvam_moe", "param2moe", "sarvam_mla",
                                  "iquestcoder", "cwm", "cwm_types", "axk1", "flex_olmo", "flex_olmo_norm",
                                  "hyperclovax", "hyperclovax_plain", "granite_swa", "granite_swa_theta", "arcee",
                                  "arcee_bias", "helium", "helium_bias", "nanochat", "nanochat_bias", "mellum",
                                  "mellum_bias", "mellum_yarn", "kolibri1", "kolibri1_norm", "jais2", "jais2_plain",
                                  "flint", "flint_yarn", "flint_noshared", "granitemoe_swa", "granitemoe_swa_shared",
                                  "gemma4_unified", "gemma4_unified_shared", "cohere_compass", "cohere_compass_full",
                                  "cohere_compass_two", "lfm3", "lfm3_plain", "laguna", "laguna_plain", "beam",
                                  "beam_rope", "lara_mini", "lara_mini_plain", "kimi_linear", "kimi_linear_qlora",
                                  "granitemoe", "granitemoeshared", "exaone", "exaone_bias", "cohere",
                                  "cohere_bias", "nemotron", "nemotron_bias", "olmo", "olmo_bias", "stablelm",
                                  "stablelm_parallel"])
def test_new_families_logits_at_several_lengths(checkpoint, name):
    """7 tokens (inside every window) and 150 (past every sliding window, and long enough for the causal-block
    attention path); 20 tokens is ``test_logits_match_transformers``. Long-rope stays below its original
    length here (past it: ``test_longrope_past_original_length_matches_reference_generation``)."""
    ref_model, path = checkpoint(name)
    model = load_pretrained(path, dtype="float32")
    rng = np.random.RandomState(1)
    for t in (7, 60 if name == "phi3_longrope" else 150):
        ids = rng.randint(0, V, (2, t)).astype(np.int32)
        mask = np.ones((2, t), bool)
        mask[1, :t // 3] = False
        err = np.abs(np.asarray(model(ids, mask)) - reference_logits(ref_model, ids, mask))[mask].max()
        assert err <= 1e-4, f"{name} at {t} tokens: max |dlogits| {err:.2e}"


def test_longrope_past_original_length_matches_reference_generation(checkpoint):
    """Past ``original_max_position_embeddings`` (64) long-rope positions use the long factors. The reference
    picks one set per forward (by its largest position), so its generation, which runs the first 64 positions
    and then the later ones, is what a position-wise choice reproduces: one forward of ours over 100 tokens
    equals the reference's two (keys cached), and so the sampler and trainer agree however they split."""
    ref_model, path = checkpoint("phi3_longrope")
    ids = np.random.RandomState(2).randint(0, V, (2, 100)).astype(np.int64)
    with torch.no_grad():
        first = ref_model(input_ids=torch.tensor(ids[:, :64]), use_cache=True)
        rest = ref_model(input_ids=torch.tensor(ids[:, 64:]), cache=first.past_key_values,
                         position_ids=torch.arange(64, 100)[None].repeat(2, 1))
    want = np.concatenate([first.logits.numpy(), rest.logits.numpy()], axis=1)
    got = np.asarray(load_pretrained(path)(ids.astype(np.int32)))
    assert np.abs(got - want).max() <= 1e-4
    with torch.no_grad():  # the reference's single forward uses the long factors from position 0: not the same
        whole = ref_model(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(whole[:, :64] - want[:, :64]).max() > 1e-3


@pytest.mark.parametrize("name", ["gpt_oss", "phi3_longrope"])
def test_sharded_reference_checkpoint_loads(checkpoint, tmp_path, name):
    """transformers' own sharded save (safetensors index, fused tensors whole in one file each) loads alike."""
    import json

    ref_model, _ = checkpoint(name)
    ref_model.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    err = np.abs(np.asarray(load_pretrained(tmp_path)(IDS, MASK)) - reference_logits(ref_model))[MASK].max()
    assert err <= 1e-4
