"""Vision-language checkpoints whose language model is one of our families (Gemma 3 4B/12B/27B, Gemma 4 and Gemma 4
unified, Mistral Small 3.1/3.2, Magistral Small 1.1+, Ministral 3 and Mistral Small 4, Qwen2.5-VL, Qwen3-VL and its
Thinking models, Qwen3.5, Kimi K2.5 / K2.6, LFM2-VL, LFM3-VL): the language model is read out of the wrapper and
trained as a text model; the vision tower and projector are not loaded, and an export is that text model
(``Gemma3ForCausalLM``, ``MistralForCausalLM``, ``Ministral3ForCausalLM``, ``Mistral4ForCausalLM``,
``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``DeepseekV3ForCausalLM``, ``Lfm3ForCausalLM``, ...), which
transformers and vLLM load as such.

A wrapper's config.json nests the text model's config under ``text_config`` (Qwen2.5-VL's released files keep
it at the top level); released files leave out fields that keep the text config class's defaults, which
``defaults`` restores (checked against transformers in the tests). Its tensors sit under a prefix
(``language_model.model.`` as Gemma 3 and Mistral 3 are released and saved, ``model.language_model.`` as
transformers 5 holds them and Qwen3-VL is released, plain ``model.`` as Qwen2.5-VL is released), the LM head at
``language_model.lm_head.weight`` or ``lm_head.weight``. The Qwen models' multimodal rotary (``mrope``: time,
height and width sections of the frequencies) turns every section with the same position for text, which is the
plain rotary: it is read as that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ConfigError


@dataclass(frozen=True)
class Wrapper:
    text_model_types: tuple[str, ...]  # the model_type text_config may have
    model_type: str  # the text model's own type (what our family reads, and an export is)
    text_architecture: str  # what an export of the language model is
    defaults: dict = field(default_factory=dict)  # text-config fields the released files may leave out
    # where the text model's "model." tensors sit, in the order tried (a name under none stays as it is)
    body: tuple[str, ...] = ("language_model.model.", "model.language_model.")
    skip: tuple[str, ...] = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                             "model.multi_modal_projector.")  # not part of the language model
    flat: bool = False  # released configs may hold the text fields at the top level (no text_config)
    # fused expert tensors may be stored [E, in, out] (Qwen3-VL-MoE as released) rather than as held in memory,
    # [E, out, in]: read transposed when their shape says so (as the reference decides)
    experts_in_out: bool = False
    fixed: dict = field(default_factory=dict)  # what the reference's text model does whatever the file says
    # text_config model types read as another family than ``model_type``: kind -> (model type, architecture), e.g.
    # the Ministral 3 releases' ministral3 language model in a mistral3 wrapper (that family fills its own defaults)
    variants: dict = field(default_factory=dict)


HEAD = ("language_model.lm_head.weight", "lm_head.weight")
QWEN_VL = {"body": ("model.language_model.",), "skip": ("visual.", "model.visual.")}

WRAPPERS: dict[str, Wrapper] = {
    "gemma3": Wrapper(("gemma3_text",), "gemma3_text", "Gemma3ForCausalLM", {
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "hidden_activation": "gelu_pytorch_tanh"}),
    # Gemma 4: a vision tower (and in the small models an audio tower) beside Gemma 4's text model
    "gemma4": Wrapper(("gemma4_text",), "gemma4_text", "Gemma4ForCausalLM", {
        "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131_072, "sliding_window": 512, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size_per_layer_input": 256},
        skip=("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.",
              "vision_tower.", "embed_vision.", "audio_tower.", "embed_audio.")),
    # Gemma 4 unified (Gemma-4-12B-it): a vision and an audio tower beside Gemma 4's dense text model
    "gemma4_unified": Wrapper(("gemma4_unified_text",), "gemma4_unified_text", "Gemma4UnifiedForCausalLM", {
        "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 262_144, "sliding_window": 1024, "hidden_activation": "gelu_pytorch_tanh"},
        skip=("model.vision_tower.", "model.embed_vision.", "model.vision_embedder.", "model.audio_tower.",
              "model.embed_audio.", "vision_tower.", "embed_vision.", "vision_embedder.", "audio_tower.",
              "embed_audio.")),
    "mistral3": Wrapper(("mistral",), "mistral", "MistralForCausalLM", {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 131072, "sliding_window": 4096, "hidden_act": "silu"},
        variants={"ministral3": ("ministral3", "Ministral3ForCausalLM"),
                  "mistral4": ("mistral4", "Mistral4ForCausalLM")}),
    # LFM2-VL and LFM3-VL: a vision tower and projector beside LFM2's / LFM3's text model
    "lfm2_vl": Wrapper(("lfm2",), "lfm2", "Lfm2ForCausalLM"),
    "lfm3_vl": Wrapper(("lfm3",), "lfm3", "Lfm3ForCausalLM"),
    "qwen2_5_vl": Wrapper(("qwen2_5_vl_text", "qwen2_5_vl"), "qwen2", "Qwen2ForCausalLM", flat=True, **QWEN_VL),
    "qwen3_vl": Wrapper(("qwen3_vl_text",), "qwen3", "Qwen3ForCausalLM", **QWEN_VL),
    # its router always renormalises the chosen experts' weights (the config has no switch for it)
    "qwen3_5": Wrapper(("qwen3_5_text",), "qwen3_5_text", "Qwen3_5ForCausalLM", **QWEN_VL),
    "qwen3_5_moe": Wrapper(("qwen3_5_moe_text",), "qwen3_5_moe_text", "Qwen3_5MoeForCausalLM", **QWEN_VL),
    "qwen3_vl_moe": Wrapper(("qwen3_vl_moe_text",), "qwen3_moe", "Qwen3MoeForCausalLM", experts_in_out=True,
                            fixed={"norm_topk_prob": True}, **QWEN_VL),
    # Kimi K2.5 / K2.6: a MoonViT tower and projector beside Kimi K2's text model (DeepSeek-V3's layers; released
    # with its routed experts in INT4, compressed-tensors)
    "kimi_k25": Wrapper(("kimi_k2", "deepseek_v3"), "deepseek_v3", "DeepseekV3ForCausalLM",
                        skip=("vision_tower.", "mm_projector.", "model.vision_tower.", "model.mm_projector.")),
}
FUSED = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
TOP_LEVEL_ONLY = ("vision_config", "text_config", "image_token_id", "video_token_id", "vision_start_token_id",
                  "vision_end_token_id", "vision_token_id", "architectures")


def _plain_rope(text: dict) -> dict:
    """``text`` with a multimodal rotary (mrope sections) written as the plain one it is for text."""
    out = dict(text)
    for key in ("rope_parameters", "rope_scaling"):
        r = out.get(key)
        kind = r.get("rope_type", r.get("type")) if isinstance(r, dict) else None
        if not isinstance(r, dict) or ("mrope_section" not in r and kind != "mrope"):
            continue
        kind = "default" if kind in (None, "mrope") else kind
        rest = {k: v for k, v in r.items() if k not in ("mrope_section", "mrope_interleaved", "type", "rope_type")}
        out[key] = {**rest, "rope_type": kind} if key == "rope_parameters" or kind != "default" else None
    return out


def text_config(hf: dict) -> dict | None:
    """The language model's config.json of a wrapper's ``hf`` (None: ``hf`` is not a known wrapper): its
    ``text_config`` with the left-out defaults restored, the wrapper's ``tie_word_embeddings`` (which the
    reference follows when given) and dtype, and the text model's own type and architecture."""
    w = WRAPPERS.get(hf.get("model_type"))
    if w is None:
        return None
    text = hf.get("text_config")
    if text is None and w.flat:
        text = {k: v for k, v in hf.items() if k not in TOP_LEVEL_ONLY}
    if not isinstance(text, dict):
        raise ConfigError(f"config.json: text_config (the language model of a {hf['model_type']} checkpoint) "
                          "is missing")
    kind = text.get("model_type", w.text_model_types[0])
    if kind not in w.text_model_types and kind not in w.variants:
        raise ConfigError(f"config.json: text_config.model_type={kind!r} is not supported in a "
                          f"{hf['model_type']} checkpoint (expected {w.text_model_types[0]!r})")
    model_type, arch = w.variants.get(kind, (w.model_type, w.text_architecture))
    defaults = {} if kind in w.variants else w.defaults
    out = _plain_rope({**defaults, **text, **w.fixed, "model_type": model_type, "architectures": [arch]})
    if hf.get("tie_word_embeddings") is not None:
        out["tie_word_embeddings"] = hf["tie_word_embeddings"]
    for k in ("dtype", "torch_dtype"):
        if k in hf and k not in out:
            out[k] = hf[k]
    return out


class TextView:
    """A wrapper's checkpoint seen as its language model's: the same interface as ``safetensors_io.Checkpoint``
    with the text model's tensor names; the vision tower's and projector's tensors are left out."""

    def __init__(self, ckpt, wrapper: str, cfg=None):
        """``cfg``: the text model's TransformerConfig (the shapes of fused expert tensors, see ``Wrapper``)."""
        self.ckpt = ckpt
        w = WRAPPERS[wrapper]
        m = getattr(cfg, "moe", None)
        self.memory = {}  # fused expert tensors' shapes as held in memory: gate_up [E, 2I, d], down [E, d, I]
        if w.experts_in_out and m is not None:
            self.memory = {FUSED[0]: (m.n_experts, 2 * m.ffn_dim, cfg.d_model),
                           FUSED[1]: (m.n_experts, cfg.d_model, m.ffn_dim)}
        self.to_stored: dict[str, str] = {}
        self.prefix = w.body[0]  # the layout the file uses, for naming tensors it lacks
        for name in ckpt.names():
            if name.startswith(w.skip):
                continue
            if name in HEAD:
                ours = "lm_head.weight"
            else:
                prefix = next((p for p in w.body if name.startswith(p)), None)
                ours = name if prefix is None else "model." + name[len(prefix):]
                if name.startswith("model.") and prefix is None:
                    self.prefix = "model."
                elif prefix is not None:
                    self.prefix = prefix
            self.to_stored[ours] = name

    def __contains__(self, name: str) -> bool:
        return name in self.to_stored

    def names(self) -> list[str]:
        return list(self.to_stored)

    def _transposed(self, name: str) -> bool:
        """Is the stored tensor ``name`` a fused expert tensor stored [E, in, out]?"""
        want = next((s for k, s in self.memory.items() if name.endswith(k)), None)
        if want is None:
            return False
        got = tuple(self.ckpt.info(self.to_stored[name])[1])
        return got != want and got == (want[0], want[2], want[1])

    def info(self, name: str):
        dtype, shape = self.ckpt.info(self.to_stored[name])
        if self._transposed(name):
            shape = (shape[0], shape[2], shape[1])
        return dtype, shape

    def file_of(self, name: str):
        return self.ckpt.file_of(self.to_stored[name])

    def problems(self) -> list[tuple[str, str]]:
        return getattr(self.ckpt, "problems", list)()

    def label(self, name: str) -> str:
        """The stored name of ``name`` (for a tensor the file lacks: where the released layout puts it)."""
        if name in self.to_stored:
            return self.to_stored[name]
        return HEAD[0] if name == "lm_head.weight" else self.prefix + name.removeprefix("model.")

    def get(self, name: str):
        a = self.ckpt.get(self.to_stored[name])
        return a.swapaxes(1, 2) if self._transposed(name) else a

    def close(self) -> None:
        self.ckpt.close()
