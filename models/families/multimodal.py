"""Vision-language checkpoints whose language model is one of our families (Gemma 3 4B/12B/27B, Mistral Small
3.1/3.2 and Magistral Small 1.1+): the language model is read out of the wrapper and trained as a text model;
the vision tower and projector are not loaded, and an export is that text model (``Gemma3ForCausalLM``,
``MistralForCausalLM``), which transformers and vLLM load as such.

A wrapper's config.json nests the text model's config under ``text_config``; the released files leave out
fields that keep the text config class's defaults, which ``defaults`` restores (checked against transformers
in the tests). Its tensors sit under a prefix (``language_model.model.`` as released and as transformers saves
them, ``model.language_model.`` as transformers 5 holds them in memory and some conversions write them), the
LM head at ``language_model.lm_head.weight`` or ``lm_head.weight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ConfigError


@dataclass(frozen=True)
class Wrapper:
    text_model_type: str  # the model_type text_config must have
    text_architecture: str  # what an export of the language model is
    defaults: dict = field(default_factory=dict)  # text-config fields the released files may leave out
    skip: tuple[str, ...] = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                             "model.multi_modal_projector.")  # not part of the language model


BODY = ("language_model.model.", "model.language_model.")  # where the text model's "model." tensors sit
HEAD = ("language_model.lm_head.weight", "lm_head.weight")

WRAPPERS: dict[str, Wrapper] = {
    "gemma3": Wrapper("gemma3_text", "Gemma3ForCausalLM", {
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "hidden_activation": "gelu_pytorch_tanh"}),
    "mistral3": Wrapper("mistral", "MistralForCausalLM", {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 131072, "sliding_window": 4096, "hidden_act": "silu"}),
}


def text_config(hf: dict) -> dict | None:
    """The language model's config.json of a wrapper's ``hf`` (None: ``hf`` is not a known wrapper): its
    ``text_config`` with the left-out defaults restored, the wrapper's ``tie_word_embeddings`` (which the
    reference follows when given) and dtype, and the text model's own type and architecture."""
    w = WRAPPERS.get(hf.get("model_type"))
    if w is None:
        return None
    text = hf.get("text_config")
    if not isinstance(text, dict):
        raise ConfigError(f"config.json: text_config (the language model of a {hf['model_type']} checkpoint) "
                          "is missing")
    kind = text.get("model_type", w.text_model_type)
    if kind != w.text_model_type:
        raise ConfigError(f"config.json: text_config.model_type={kind!r} is not supported in a "
                          f"{hf['model_type']} checkpoint (expected {w.text_model_type!r})")
    out = {**w.defaults, **text, "model_type": kind, "architectures": [w.text_architecture]}
    if hf.get("tie_word_embeddings") is not None:
        out["tie_word_embeddings"] = hf["tie_word_embeddings"]
    for k in ("dtype", "torch_dtype"):
        if k in hf and k not in out:
            out[k] = hf[k]
    return out


class TextView:
    """A wrapper's checkpoint seen as its language model's: the same interface as ``safetensors_io.Checkpoint``
    with the text model's tensor names; the vision tower's and projector's tensors are left out."""

    def __init__(self, ckpt, wrapper: str):
        self.ckpt = ckpt
        skip = WRAPPERS[wrapper].skip
        self.to_stored: dict[str, str] = {}
        for name in ckpt.names():
            if name.startswith(skip):
                continue
            if name in HEAD:
                ours = "lm_head.weight"
            else:
                ours = next(("model." + name[len(p):] for p in BODY if name.startswith(p)), name)
            self.to_stored[ours] = name

    def __contains__(self, name: str) -> bool:
        return name in self.to_stored

    def names(self) -> list[str]:
        return list(self.to_stored)

    def info(self, name: str):
        return self.ckpt.info(self.to_stored[name])

    def file_of(self, name: str):
        return self.ckpt.file_of(self.to_stored[name])

    def label(self, name: str) -> str:
        """The stored name of ``name`` (for a tensor the file lacks: where the released layout puts it)."""
        if name in self.to_stored:
            return self.to_stored[name]
        return HEAD[0] if name == "lm_head.weight" else BODY[0] + name.removeprefix("model.")

    def get(self, name: str):
        return self.ckpt.get(self.to_stored[name])

    def close(self) -> None:
        self.ckpt.close()
