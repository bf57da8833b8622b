"""A value head over the decoder's final-norm hidden states: PPO's critic is this head on a backbone (its own
copy of the policy's, or another model with the same tokenizer).

The critic's params are ``{"backbone": <decoder params>, "head": {"kernel": [D, 1], "bias": [1]}}``, so the
backbone shards, checkpoints and exports exactly like a policy, and the head is what an HF
``*ForTokenClassification`` model with one label calls ``score``. The head starts at zero: a fresh critic
predicts V = 0 everywhere, and its first advantages are the plain returns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HEAD_AXES = {"kernel": ("embed", None), "bias": (None,)}
VALUE_HEAD_NAMES = ("score.weight", "score.bias")  # an HF *ForTokenClassification model's head


def is_value_model(cfg) -> bool:
    """Whether a config read from an HF directory describes a one-label token-classification (value) model."""
    hf = (getattr(cfg, "extra", None) or {}).get("hf_config") or {}
    return hf.get("num_labels") == 1 and any(str(a).endswith("ForTokenClassification")
                                             for a in hf.get("architectures") or [])


def load_value_head(hf_dir, dtype=jnp.float32) -> dict | None:
    """The ``score`` head of an exported value model directory (None when it has none), so a critic can
    start from one (``critic_model: <dir>``)."""
    import numpy as np

    from .safetensors_io import Checkpoint

    ckpt = Checkpoint(hf_dir)
    if not all(n in ckpt for n in VALUE_HEAD_NAMES):
        return None
    w = np.asarray(ckpt.get("score.weight"), np.float32)
    b = np.asarray(ckpt.get("score.bias"), np.float32)
    return {"kernel": jnp.asarray(w.T, dtype), "bias": jnp.asarray(b, dtype)}


def init_value_head(d_model: int, dtype=jnp.float32) -> dict:
    return {"kernel": jnp.zeros((d_model, 1), dtype), "bias": jnp.zeros((1,), dtype)}


def abstract_value_head(d_model: int, dtype=jnp.float32) -> dict:
    return jax.eval_shape(lambda: init_value_head(d_model, dtype))


def apply_value_head(head: dict, h: jax.Array) -> jax.Array:
    """Values [...] (float32) from hidden states [..., D]."""
    out = jnp.einsum("...d,do->...o", h, head["kernel"].astype(h.dtype), preferred_element_type=jnp.float32)
    return out[..., 0] + head["bias"][0].astype(jnp.float32)


def critic_axes(backbone_axes: dict) -> dict:
    """Logical axes of a critic's params (for the sharding rules)."""
    return {"backbone": backbone_axes, "head": dict(HEAD_AXES)}


def save_value_model(cdef, critic: dict, out_dir, *, dtype: str | None = None, tokenizer_from=None):
    """Write a critic as a Hugging Face ``<Family>ForTokenClassification`` directory with one label: the
    backbone's tensors under their usual ``model.*`` names plus ``score.weight`` [1, D] and ``score.bias``
    [1] (an untied ``lm_head.weight``, unused by the value model, is kept and ignored by the loader).
    ``logits[b, i, 0]`` is the value of the state that ends at token i, i.e. V before token i + 1."""
    import json
    import os
    from pathlib import Path

    import numpy as np

    from .hf_save import NP_DTYPES, save_pretrained
    from .safetensors_io import NAMES, SafetensorsFile, write_file

    out = save_pretrained((cdef, critic["backbone"]), out_dir, dtype=dtype, tokenizer_from=tokenizer_from)
    if jax.process_index() != 0:
        return out
    index = out / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    n = len(files) + 1
    weight_map = {}
    for k, f in enumerate(files):
        new = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        os.replace(out / f, out / new)
        weight_map.update({name: new for name in SafetensorsFile(out / new).names()})
    np_dtype = NP_DTYPES[dtype or cdef.cfg.param_dtype]
    head = {"score.weight": np.asarray(jax.device_get(critic["head"]["kernel"])).T.astype(np_dtype),
            "score.bias": np.asarray(jax.device_get(critic["head"]["bias"])).astype(np_dtype)}
    last = f"model-{n:05d}-of-{n:05d}.safetensors"
    total = write_file(out / last, [(k, NAMES[np_dtype], v.shape) for k, v in head.items()], head.__getitem__)
    weight_map.update({k: last for k in head})
    total += sum((out / f).stat().st_size for f in set(weight_map.values()) if f != last)
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    conf = json.loads((out / "config.json").read_text())
    conf["architectures"] = [a.replace("ForCausalLM", "ForTokenClassification") for a in conf.get("architectures", [])]
    conf.update(num_labels=1, id2label={"0": "VALUE"}, label2id={"VALUE": 0})
    (out / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    return Path(out)
