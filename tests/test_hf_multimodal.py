"""The language model of a vision-language checkpoint (Gemma 3 4B+, Mistral Small 3.1 / Magistral Small,
Qwen2.5-VL, Qwen3-VL):
loaded out of the wrapper with the reference's text-only logits, as released (tensors under
``language_model.model.``, a text_config that leaves defaults out) and as transformers 5 holds it
(``model.language_model.``), exported as the text model transformers loads (needs the test extra)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reasoning_rl.models import check_model_dir, config_from_hf, load_pretrained, save_pretrained
from reasoning_rl.models.families import ConfigError
from reasoning_rl.models.families.multimodal import WRAPPERS
from reasoning_rl.models.hf import CheckpointError
from reasoning_rl.models.safetensors_io import write_file

V = 128
TEXT = {"vocab_size": V, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256}
VISION = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 28, "patch_size": 14}
QWEN_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 64}
CASES = {
    # Gemma 3 4B+: a SigLIP tower and projector beside Gemma 3's text model (sliding and global layers), tied
    "gemma3": lambda: transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config={**TEXT, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
        vision_config=VISION, mm_tokens_per_image=4, image_token_index=127, boi_token_index=125,
        eoi_token_index=126)),
    # Gemma 4 (31B's layout): a vision tower beside Gemma 4's text model (full layers with wider heads, values that
    # are the keys' projection), tied
    "gemma4": lambda: transformers.Gemma4ForConditionalGeneration(transformers.Gemma4Config(
        text_config={**TEXT, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"],
                     "global_head_dim": 32, "num_global_key_value_heads": 1, "attention_k_eq_v": True,
                     "hidden_size_per_layer_input": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 2, "head_dim": 16}, audio_config=None)),
    # Gemma 4 E2B's layout: the text model's per-layer input table and a last layer attending over the full
    # layer's keys/values, stored under the wrapper's names
    "gemma4_e2b": lambda: transformers.Gemma4ForConditionalGeneration(transformers.Gemma4Config(
        text_config={**TEXT, "num_hidden_layers": 3, "sliding_window": 4,
                     "layer_types": ["sliding_attention", "full_attention", "full_attention"],
                     "global_head_dim": 32, "hidden_size_per_layer_input": 8,
                     "vocab_size_per_layer_input": TEXT["vocab_size"], "num_kv_shared_layers": 1,
                     "use_double_wide_mlp": True},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 2, "head_dim": 16}, audio_config=None)),
    # Gemma 4 unified (Gemma-4-12B-it's layout): a vision tower beside Gemma 4's dense text model, tied
    "gemma4_unified": lambda: transformers.Gemma4UnifiedForConditionalGeneration(transformers.Gemma4UnifiedConfig(
        text_config={**TEXT, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"],
                     "global_head_dim": 32, "num_global_key_value_heads": 1, "attention_k_eq_v": True},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 2, "head_dim": 16}, audio_config=None)),
    # LFM2-VL: a SigLIP2 tower and projector beside LFM2's text model (short convolutions around attention), tied
    "lfm2_vl": lambda: transformers.Lfm2VlForConditionalGeneration(transformers.Lfm2VlConfig(
        text_config={**TEXT, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                     "layer_types": ["conv", "full_attention"], "block_multiple_of": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_patches": 16}, projector_hidden_size=32, image_token_id=127)),
    # LFM3-VL: a vision tower beside LFM3's text model (a convolution, sliding and full attention, per-head gates)
    "lfm3_vl": lambda: transformers.Lfm3VlForConditionalGeneration(transformers.Lfm3VlConfig(
        text_config={**TEXT, "num_hidden_layers": 3, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                     "sliding_window": 4, "layer_types": ["conv", "sliding_attention", "full_attention"]},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 2, "layer_types": None}, projector_hidden_size=32,
        image_token_id=127, video_token_id=126, vision_start_token_id=125, vision_end_token_id=124)),
    # Mistral Small 3.1: a Pixtral tower beside a Mistral text model, its own LM head (the wrapper says untied)
    "mistral3": lambda: transformers.Mistral3ForConditionalGeneration(transformers.Mistral3Config(
        text_config={**TEXT, "model_type": "mistral", "sliding_window": None, "rope_parameters": {
            "rope_type": "default", "rope_theta": 1e6}},
        vision_config={**VISION, "head_dim": 16}, image_token_index=127, tie_word_embeddings=False)),
    # Qwen2.5-VL: Qwen2's text model (q/k/v biases) with the multimodal rotary; tensors released as model.*
    "qwen2_5_vl": lambda: transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(
        text_config={**TEXT, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                 "rope_theta": 1e6}},
        vision_config=QWEN_VISION, image_token_id=120, video_token_id=121, vision_start_token_id=122)),
    # Qwen3-VL (and its Thinking models): Qwen3's text model (q/k norms), the interleaved multimodal rotary
    "qwen3_vl": lambda: transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(
        text_config={**TEXT, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                 "mrope_interleaved": True, "rope_theta": 1e6}},
        vision_config={**QWEN_VISION, "deepstack_visual_indexes": [0]}, image_token_id=120, video_token_id=121,
        vision_start_token_id=122)),
    # Qwen3-VL-MoE (Qwen3-VL-30B-A3B and its Thinking model): Qwen3-MoE's text model, fused expert tensors
    "qwen3_vl_moe": lambda: transformers.Qwen3VLMoeForConditionalGeneration(transformers.Qwen3VLMoeConfig(
        text_config={**TEXT, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                         "mrope_interleaved": True, "rope_theta": 1e6}},
        vision_config={**QWEN_VISION, "deepstack_visual_indexes": [0]}, image_token_id=120, video_token_id=121,
        vision_start_token_id=122)),
}
QWEN = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")  # positions from the attention mask, as the reference derives them
IDS = np.random.RandomState(0).randint(0, 120, (2, 20)).astype(np.int32)
MASK = np.ones((2, 20), bool)
MASK[1, :6] = False


def reference(name: str, path):
    torch.manual_seed(0)
    model = CASES[name]().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


def text_logits(model, derive: bool = False) -> np.ndarray:
    """The reference's logits without images (what a text-only RL rollout sees); positions count from each
    row's first token (``derive``: the reference derives them so from the mask itself)."""
    pos = {} if derive else {"position_ids": torch.tensor(np.maximum(np.cumsum(MASK, axis=1) - 1, 0))}
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK, dtype=torch.long),
                     **pos).logits.float().numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_language_model_matches_the_reference_and_exports_as_a_text_model(tmp_path, name):
    ref = reference(name, tmp_path / "vlm")
    stored = {k for k in _names(tmp_path / "vlm")}
    assert any("vision" in k or "visual" in k for k in stored)  # the tower is in the file, and left out
    cfg = check_model_dir(tmp_path / "vlm", tokenizer=False)
    name = {"gemma4_e2b": "gemma4"}.get(name, name)  # (the wrapper of the case)
    assert cfg.extra["hf_wrapper"] == name and cfg.tie_embeddings == (name in ("gemma3", "gemma4", "gemma4_unified",
                                                                                "lfm2_vl", "lfm3_vl"))
    want = text_logits(ref, name in QWEN)
    model = load_pretrained(tmp_path / "vlm")
    err = np.abs(np.asarray(model(IDS, MASK)) - want)[MASK].max()
    assert err <= 1e-4, f"{name}: max |dlogits| {err:.2e}"
    save_pretrained(model, tmp_path / "text")
    conf = json.loads((tmp_path / "text" / "config.json").read_text())
    assert conf["architectures"] == [WRAPPERS[name].text_architecture] and "vision_config" not in conf
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "text").eval()
    assert type(again).__name__ == WRAPPERS[name].text_architecture
    np.testing.assert_array_equal(text_logits(again)[MASK], text_logits(ref)[MASK])


def _names(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "np") as f:
        return list(f.keys())


def _rewrite(src, dst, rename, text_edit=None, convert=None):
    """``src`` with its tensors renamed by ``rename`` (None: dropped), converted by ``convert(name, array)``, and
    its text_config edited."""
    from safetensors import safe_open

    dst.mkdir()
    with safe_open(str(src / "model.safetensors"), "np") as f:
        tensors = {rename(k): (convert or (lambda n, a: a))(k, f.get_tensor(k)) for k in f.keys()
                   if rename(k) is not None}
    write_file(dst / "model.safetensors", [(k, "F32", v.shape) for k, v in tensors.items()], tensors.__getitem__)
    conf = json.loads((src / "config.json").read_text())
    if text_edit:
        text_edit(conf["text_config"])
    (dst / "config.json").write_text(json.dumps(conf))


def test_gemma4_e2b_checkpoint_holding_the_shared_layers_keys_loads_without_them(tmp_path):
    """A checkpoint may store key/value projections and norms for Gemma 4's layers that share another's keys/values
    (the reference skips them on load): they are skipped here too, the logits unchanged; the same tensors for a
    layer computing its own are still checked."""
    from safetensors import safe_open

    ref = reference("gemma4_e2b", tmp_path / "vlm")
    pre = "model.language_model.layers"
    with safe_open(str(tmp_path / "vlm" / "model.safetensors"), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for n in ("k_proj", "v_proj", "k_norm"):
        tensors[f"{pre}.2.self_attn.{n}.weight"] = tensors[f"{pre}.1.self_attn.{n}.weight"]
    (tmp_path / "extra").mkdir()
    write_file(tmp_path / "extra" / "model.safetensors", [(k, "F32", v.shape) for k, v in tensors.items()],
               tensors.__getitem__)
    (tmp_path / "extra" / "config.json").write_text((tmp_path / "vlm" / "config.json").read_text())
    err = np.abs(np.asarray(load_pretrained(tmp_path / "extra")(IDS, MASK)) - text_logits(ref))[MASK].max()
    assert err <= 1e-4, err
    tensors.pop(f"{pre}.1.self_attn.k_norm.weight")
    (tmp_path / "extra" / "model.safetensors").unlink()
    write_file(tmp_path / "extra" / "model.safetensors", [(k, "F32", v.shape) for k, v in tensors.items()],
               tensors.__getitem__)
    with pytest.raises(CheckpointError, match=r"layers.1.self_attn.k_norm.weight.*missing"):
        load_pretrained(tmp_path / "extra")


def test_transformers_5_layout_and_a_text_config_without_its_defaults(tmp_path):
    """Tensors under ``model.language_model.`` with the head at ``lm_head.weight``, and a text_config that
    leaves out every field at its default (as the released Gemma 3 configs do): the same model."""
    ref = reference("mistral3", tmp_path / "vlm")

    def rename(k):
        if k.startswith("language_model.model."):
            return "model.language_model." + k.removeprefix("language_model.model.")
        return "lm_head.weight" if k == "language_model.lm_head.weight" else "model." + k

    def drop_defaults(text):
        text.pop("rms_norm_eps")  # the default, 1e-6
        text.pop("hidden_act")
    _rewrite(tmp_path / "vlm", tmp_path / "v5", rename, drop_defaults)
    assert "lm_head.weight" in _names(tmp_path / "v5")
    err = np.abs(np.asarray(load_pretrained(tmp_path / "v5")(IDS, MASK)) - text_logits(ref))[MASK].max()
    assert err <= 1e-4


def test_qwen3_vl_moe_experts_stored_in_by_out(tmp_path):
    """Qwen3-VL-MoE's released files store the fused experts [E, in, out] (transposed against what the
    reference holds, which its saves write): both read the same."""
    ref = reference("qwen3_vl_moe", tmp_path / "vlm")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "vlm" / "model.safetensors"), "np") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys() if "experts" in k}
    assert shapes["model.language_model.layers.0.mlp.experts.gate_up_proj"] == [4, 48, 64]  # [E, 2I, d]

    def transposed(name, a):
        return a.swapaxes(1, 2).copy() if name.endswith((".experts.gate_up_proj", ".experts.down_proj")) else a
    _rewrite(tmp_path / "vlm", tmp_path / "released", lambda k: k, convert=transposed)
    with safe_open(str(tmp_path / "released" / "model.safetensors"), "np") as f:
        assert f.get_slice("model.language_model.layers.0.mlp.experts.gate_up_proj").get_shape() == [4, 64, 48]
    want = text_logits(ref, True)
    for d in ("vlm", "released"):
        err = np.abs(np.asarray(load_pretrained(tmp_path / d)(IDS, MASK)) - want)[MASK].max()
        assert err <= 1e-4, d


def test_qwen2_5_vl_released_flat_config(tmp_path):
    """Qwen2.5-VL's config.json as released: the text fields at the top level (no text_config) and the rotary
    as transformers 4 wrote it, ``rope_scaling: {type: mrope, mrope_section}`` beside ``rope_theta``."""
    ref = reference("qwen2_5_vl", tmp_path / "vlm")
    conf = json.loads((tmp_path / "vlm" / "config.json").read_text())
    text = conf.pop("text_config")
    text.pop("rope_parameters")
    conf.update({**text, "model_type": "qwen2_5_vl", "rope_theta": 1e6,
                 "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}})
    (tmp_path / "vlm" / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path / "vlm")
    assert cfg.family == "qwen2" and cfg.qkv_bias and cfg.rope_scaling is None and cfg.rope_theta == 1e6
    err = np.abs(np.asarray(load_pretrained(tmp_path / "vlm")(IDS, MASK)) - text_logits(ref, True))[MASK].max()
    assert err <= 1e-4


def test_gemma3_released_text_config_takes_the_references_defaults(tmp_path):
    """google/gemma-3-4b-it's text_config names only what differs from Gemma3TextConfig (here: no head_dim,
    heads, rope or window fields), and the rope as transformers 4 wrote it (``rope_scaling``, no base)."""
    reference("gemma3", tmp_path / "vlm")
    conf = json.loads((tmp_path / "vlm" / "config.json").read_text())
    text = conf["text_config"]
    conf["text_config"] = {"hidden_size": 64, "intermediate_size": 96, "model_type": "gemma3_text",
                           "num_hidden_layers": 4, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}
    (tmp_path / "vlm" / "config.json").write_text(json.dumps(conf))
    cfg = config_from_hf(tmp_path / "vlm")
    defaults = transformers.Gemma3TextConfig()
    assert (cfg.vocab_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.sliding_window) == (
        defaults.vocab_size, defaults.num_attention_heads, defaults.num_key_value_heads, defaults.head_dim,
        defaults.sliding_window)
    assert cfg.rope_theta == 1e6 and cfg.rope_local_theta == 1e4 and cfg.rope_scaling["factor"] == 8.0
    assert cfg.layer_types == ("sliding",) * 4  # every sixth layer is global: none of four
    assert text["head_dim"] == 16  # (the tiny checkpoint itself differs from the defaults)


@pytest.mark.parametrize("name,cls,rope", [("gemma3", "Gemma3TextConfig", ("full_attention", "sliding_attention")),
                                           ("mistral3", "MistralConfig", None), ("gemma4", "Gemma4TextConfig", None),
                                           ("gemma4_unified", "Gemma4UnifiedTextConfig", None)])
def test_wrapper_defaults_are_the_references(name, cls, rope):
    ref = getattr(transformers, cls)()
    ref.allow_global_per_layer_attribute_access = True  # (Gemma 4: head_dim is the sliding layers')
    for key, value in WRAPPERS[name].defaults.items():
        if key in ("rope_theta", "rope_local_base_freq"):
            params = ref.rope_parameters
            got = params[rope[key == "rope_local_base_freq"]]["rope_theta"] if rope else params["rope_theta"]
        else:
            got = getattr(ref, key)
        assert got == value, key


def _save_with_norms_perturbed(ref, path):
    """Save ``ref`` with its norm weights moved off their initial ones (so a norm read wrongly shows)."""
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(path)


def test_ministral3_language_model_of_a_mistral3_checkpoint(tmp_path):
    """The Ministral 3 releases (3B/8B/14B base, instruct, reasoning): a mistral3 wrapper around a ministral3 text
    model (YaRN, queries scaled by position past L = 8 here), read out and exported as Ministral3ForCausalLM."""
    torch.manual_seed(0)
    ref = transformers.Mistral3ForConditionalGeneration(transformers.Mistral3Config(
        text_config={**TEXT, "model_type": "ministral3", "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                     "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "beta_fast": 32.0,
                                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                                         "original_max_position_embeddings": 8, "llama_4_scaling_beta": 0.3}},
        vision_config={**VISION, "head_dim": 16}, image_token_index=127, tie_word_embeddings=False)).eval()
    _save_with_norms_perturbed(ref, tmp_path / "vlm")
    cfg = check_model_dir(tmp_path / "vlm", tokenizer=False)
    assert cfg.family == "ministral3" and cfg.query_length_scale == (0.3, 8) and cfg.extra["hf_wrapper"] == "mistral3"
    model = load_pretrained(tmp_path / "vlm")
    err = np.abs(np.asarray(model(IDS, MASK)) - text_logits(ref))[MASK].max()
    assert err <= 1e-4, f"max |dlogits| {err:.2e}"
    save_pretrained(model, tmp_path / "text")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "text").eval()
    assert type(again).__name__ == "Ministral3ForCausalLM"
    np.testing.assert_array_equal(text_logits(again)[MASK], text_logits(ref)[MASK])


def test_mistral4_language_model_of_a_mistral3_checkpoint(tmp_path):
    """Mistral Small 4: a mistral3 wrapper around a mistral4 text model (latent attention with YaRN and the queries
    scaled past L = 8, softmax routing in groups, a shared expert), read out and exported as Mistral4ForCausalLM
    (transformers registers that class under no Auto mapping: loaded by name)."""
    torch.manual_seed(0)
    text = {**TEXT, "model_type": "mistral4", "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
            "num_key_value_heads": TEXT["num_attention_heads"], "q_lora_rank": 16, "kv_lora_rank": 8,
            "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_group": 2, "topk_group": 1,
            "first_k_dense_replace": 1, "routed_scaling_factor": 1.5,
            "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "beta_fast": 32.0,
                                "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                                "original_max_position_embeddings": 8, "llama_4_scaling_beta": 0.3,
                                "partial_rotary_factor": 1 / 3}}
    text.pop("head_dim", None)
    ref = transformers.Mistral3ForConditionalGeneration(transformers.Mistral3Config(
        text_config=text, vision_config={**VISION, "head_dim": 16}, image_token_index=127,
        tie_word_embeddings=False)).eval()
    _save_with_norms_perturbed(ref, tmp_path / "vlm")
    cfg = check_model_dir(tmp_path / "vlm", tokenizer=False)
    assert cfg.family == "mistral4" and cfg.query_length_scale == (0.3, 8) and cfg.extra["hf_wrapper"] == "mistral3"
    assert cfg.moe.score == "softmax" and cfg.moe.n_group == 2 and cfg.mla.kv_lora_rank == 8
    model = load_pretrained(tmp_path / "vlm")
    err = np.abs(np.asarray(model(IDS, MASK)) - text_logits(ref))[MASK].max()
    assert err <= 1e-4, f"max |dlogits| {err:.2e}"
    save_pretrained(model, tmp_path / "text")
    again = transformers.Mistral4ForCausalLM.from_pretrained(tmp_path / "text").eval()
    np.testing.assert_array_equal(text_logits(again)[MASK], text_logits(ref)[MASK])


def test_kimi_k25_language_model_as_released_and_as_transformers_holds_it(tmp_path):
    """Kimi K2.5 / K2.6: a MoonViT tower beside Kimi K2's text model (``text_config.model_type`` kimi_k2: DeepSeek-V3's
    layers), read out of the file as released (``language_model.model.``, one tensor per expert) and as
    transformers 5 holds it (``model.language_model.``, fused experts), exported as DeepseekV3ForCausalLM; a text-only
    Kimi K2 config (``model_type`` kimi_k2) reads as DeepSeek-V3."""
    from reasoning_rl.models.hf import config_from_hf
    from safetensors.torch import save_file

    torch.manual_seed(0)
    text = {"model_type": "kimi_k2", "vocab_size": V, "hidden_size": 64, "intermediate_size": 96,
            "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
            "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
            "q_lora_rank": 16, "kv_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8,
            "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1, "max_position_embeddings": 256,
            "pad_token_id": 0}
    ref = transformers.Kimi_K25ForConditionalGeneration(transformers.Kimi_K25Config(
        text_config=text, vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                                         "num_attention_heads": 2}, projection_hidden_size=32,
        tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    held = {k: v.contiguous() for k, v in ref.state_dict().items()}
    released = {}
    for k, v in held.items():
        k = k.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
        if k.endswith(".mlp.experts.gate_up_proj"):  # [E, 2I, d] -> one gate and one up tensor per expert
            for e in range(v.shape[0]):
                gate, up = v[e].chunk(2)
                released[k.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate.contiguous()
                released[k.replace("gate_up_proj", f"{e}.up_proj.weight")] = up.contiguous()
        elif k.endswith(".mlp.experts.down_proj"):
            for e in range(v.shape[0]):
                released[k.replace("down_proj", f"{e}.down_proj.weight")] = v[e].contiguous()
        else:
            released[k] = v
    want = text_logits(ref)
    for name, tensors in (("held", held), ("released", released)):
        ref.config.save_pretrained(tmp_path / name)
        if name == "released":  # its text config's own type (transformers rewrites it to deepseek_v3 when it reads)
            conf = json.loads((tmp_path / name / "config.json").read_text())
            conf["text_config"]["model_type"] = "kimi_k2"
            (tmp_path / name / "config.json").write_text(json.dumps(conf))
        save_file(tensors, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        cfg = check_model_dir(tmp_path / name, tokenizer=False)
        assert cfg.family == "deepseek_v3" and cfg.extra["hf_wrapper"] == "kimi_k25"
        model = load_pretrained(tmp_path / name)
        err = np.abs(np.asarray(model(IDS, MASK)) - want)[MASK].max()
        assert err <= 1e-4, f"{name}: max |dlogits| {err:.2e}"
    save_pretrained(model, tmp_path / "text")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "text").eval()
    assert type(again).__name__ == "DeepseekV3ForCausalLM"
    np.testing.assert_allclose(text_logits(again)[MASK], want[MASK], atol=1e-5)
    (tmp_path / "k2").mkdir()
    (tmp_path / "k2" / "config.json").write_text(json.dumps({**text, "model_type": "kimi_k2",
                                                             "architectures": ["DeepseekV3ForCausalLM"]}))
    assert config_from_hf(tmp_path / "k2").family == "deepseek_v3"


def test_glm4_ministral3_and_mistral4_defaults_are_the_references():
    """What a released config.json may leave out (the reference's config class fills it) is filled alike."""
    from reasoning_rl.models.families import glm4, ministral3

    for cls in (transformers.Glm4Config, transformers.GlmConfig):
        ref = cls()
        for key, value in glm4.DEFAULTS.items():
            assert getattr(ref, key) == value, (cls.__name__, key)
        assert ref.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    cfg = glm4.from_hf({"model_type": "glm4"})  # every field left out
    assert (cfg.head_dim, cfg.rope_dim, cfg.rope_theta, cfg.qkv_bias, cfg.max_seq_len) == (128, 64, 10000.0, True,
                                                                                          131072)

    from reasoning_rl.models.families import mistral4

    ref = transformers.Mistral4Config()
    for key, value in mistral4.DEFAULTS.items():
        assert getattr(ref, key) == value, key
    rope = {k: v for k, v in ref.rope_parameters.items() if k not in ("max_position_embeddings",
                                                                      "partial_rotary_factor")}
    assert {("rope_type" if k == "type" else k): v for k, v in rope.items()} == mistral4.DEFAULT_ROPE

    ref = transformers.Ministral3Config()
    for key, value in ministral3.DEFAULTS.items():
        assert getattr(ref, key) == value, key
    rope = {k: v for k, v in ref.rope_parameters.items() if k != "max_position_embeddings"}
    want = {("rope_type" if k == "type" else k): v for k, v in ministral3.DEFAULT_ROPE.items()}
    assert {("rope_type" if k == "type" else k): v for k, v in rope.items()} == want


def test_gemma_defaults_and_legacy_activation_are_the_references():
    """Gemma 1's released config.json says ``hidden_act: gelu``, which the reference reads as the tanh
    approximation; fields left out take its config class's values."""
    from reasoning_rl.models.families import gemma

    ref = transformers.GemmaConfig(hidden_act="gelu")
    assert ref.hidden_act == "gelu_pytorch_tanh"
    for key, value in gemma.DEFAULTS.items():
        assert getattr(ref, key) == value, key
    cfg = gemma.from_hf({"model_type": "gemma", "hidden_act": "gelu"})
    assert (cfg.activation, cfg.head_dim, cfg.norm_offset, cfg.embed_scale, cfg.tie_embeddings) == (
        "gelu_tanh", 256, 1.0, True, True)
    with pytest.raises(ConfigError, match="hidden_act='relu'"):
        gemma.from_hf({"model_type": "gemma", "hidden_act": "relu"})


def test_gemma2_defaults_are_the_references():
    """A Gemma 2 config.json as released (written before ``layer_types`` existed) or with fields left out reads
    as the reference's config class fills it: sliding and global layers alternating from a sliding first one,
    both softcaps applied."""
    from reasoning_rl.models.families import gemma2

    ref = transformers.Gemma2Config()
    for key, value in gemma2.DEFAULTS.items():
        assert getattr(ref, key) == value, key
    assert ref.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    for hf in ({"model_type": "gemma2"}, {"model_type": "gemma2", "num_hidden_layers": 5}):
        cfg = gemma2.from_hf(hf)
        want = transformers.Gemma2Config(**hf).layer_types
        assert [("sliding_attention" if s else "full_attention") for s in cfg.sliding_layers] == want
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window, cfg.rope_theta) == (50.0, 30.0, 4096, 10000.0)
    assert cfg.query_scale == 256**-0.5 and cfg.head_dim == 256 and cfg.tie_embeddings
    cfg = gemma2.from_hf({"model_type": "gemma2", "attn_logit_softcapping": None, "final_logit_softcapping": None,
                          "query_pre_attn_scalar": 144, "hidden_size": 4608, "num_attention_heads": 32,
                          "head_dim": 128})  # the 27B model: queries scaled by 144 ** -0.5, not by its head size
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.query_scale) == (None, None, 144**-0.5)


def test_deepseek_v2_lite_released_config_reads_and_unsupported_routing_is_refused():
    """DeepSeek-V2-Lite's config.json as released (fields of the original code the reference leaves aside
    included) reads as greedy softmax routing without renormalisation; what the reference would compute
    otherwise, or not at all, is refused naming the field."""
    from reasoning_rl.models.families import deepseek_v2

    lite = {"model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
            "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
            "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64, "routed_scaling_factor": 1.0,
            "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64, "v_head_dim": 128,
            "qk_nope_head_dim": 128, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
            "num_experts_per_tok": 6, "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": False,
            "scoring_func": "softmax", "aux_loss_alpha": 0.001, "seq_aux": True, "max_position_embeddings": 163840,
            "rope_theta": 10000, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                                                  "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                                                  "type": "yarn"}}
    cfg = deepseek_v2.from_hf(lite)
    m = cfg.moe
    assert (m.score, m.norm_topk, m.n_group, m.top_k, m.n_shared, m.first_dense, m.score_bias) == (
        "softmax", False, 1, 6, 2, 1, False)
    assert cfg.mla.q_lora_rank == 0 and cfg.mla.rope_interleave and cfg.head_dim == 192
    assert cfg.rope_scaling["rope_type"] == "yarn" and cfg.rope_scaling["mscale_all_dim"] == 0.707
    v2 = deepseek_v2.from_hf({**lite, "topk_method": "group_limited_greedy", "n_group": 8, "topk_group": 3})
    assert (v2.moe.n_group, v2.moe.topk_group, v2.moe.group_score) == (8, 3, "max")
    for change, field in (({"norm_topk_prob": True}, "norm_topk_prob"), ({"topk_method": "noaux_tc"}, "topk_method"),
                          ({"scoring_func": "sigmoid"}, "scoring_func"), ({"moe_layer_freq": 2}, "moe_layer_freq"),
                          ({"topk_method": "group_limited_greedy", "n_group": 5, "topk_group": 2}, "n_group=5")):
        with pytest.raises(ConfigError, match=field):
            deepseek_v2.from_hf({**lite, **change})


def test_olmoe_released_config_reads_as_the_reference_computes_it():
    from reasoning_rl.models.families import olmoe

    released = {"model_type": "olmoe", "vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024,
                "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
                "num_experts_per_tok": 8, "norm_topk_prob": False, "router_aux_loss_coef": 0.01, "clip_qkv": None,
                "rope_theta": 10000.0, "max_position_embeddings": 4096, "output_router_logits": False}
    cfg = olmoe.from_hf(released)
    m = cfg.moe
    assert (m.n_experts, m.top_k, m.ffn_dim, m.norm_topk, m.aux_loss_coef, m.score) == (64, 8, 1024, False, 0.01,
                                                                                        "softmax")
    assert cfg.head_dim == 128 and cfg.qk_norm_whole and cfg.ffn_dim == 1024 and cfg.norm_eps == 1e-5
    ref = transformers.OlmoeConfig()
    assert (ref.num_experts, ref.num_experts_per_tok, ref.router_aux_loss_coef, ref.rms_norm_eps) == (64, 8, 0.01, 1e-5)
    with pytest.raises(ConfigError, match="clip_qkv"):
        olmoe.from_hf({**released, "clip_qkv": 8.0})
    with pytest.raises(ConfigError, match="head_dim=96"):
        olmoe.from_hf({**released, "head_dim": 96})


def test_bad_wrapper_checkpoints_name_the_field_and_the_stored_tensor(tmp_path):
    reference("mistral3", tmp_path / "vlm")
    conf = json.loads((tmp_path / "vlm" / "config.json").read_text())
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**conf, "text_config": {
        **conf["text_config"], "model_type": "qwen2"}}))
    with pytest.raises(ConfigError, match="text_config.model_type='qwen2' is not supported in a mistral3"):
        config_from_hf(tmp_path / "llama")

    def rename(k):
        return k.replace("layers.1.mlp.down_proj", "layers.1.mlp.down") if "vision" not in k else k
    _rewrite(tmp_path / "vlm", tmp_path / "stray", rename)
    with pytest.raises(CheckpointError) as e:
        check_model_dir(tmp_path / "stray", tokenizer=False)
    assert "language_model.model.layers.1.mlp.down_proj.weight: missing" in str(e.value)
    assert "language_model.model.layers.1.mlp.down.weight: unexpected tensor" in str(e.value)
