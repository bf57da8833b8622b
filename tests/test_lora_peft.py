"""LoRA interop with ``peft`` on tiny random Llama, Qwen3, Qwen3-MoE and Phi-3 (fused qkv_proj and gate_up_proj)
checkpoints (needs the test extra).

Both directions, with random non-zero B so the adapters change the logits: an adapter made by ``peft`` and
loaded by ``load_pretrained(base, adapter=...)`` gives peft's logits; ours written by ``save_lora`` and loaded
by ``peft.PeftModel.from_pretrained`` gives ours. ``save_pretrained(..., merge_lora=True)`` writes merged
weights transformers loads with the same logits.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from reasoning_rl.models import load_pretrained, lora, save_lora, save_pretrained
from test_hf_parity import IDS, MASK, build_reference, reference_logits

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Qwen3-MoE's experts are fused parameters in transformers 5 (not Linear modules): peft adapts them through
# target_parameters (qwen3_moe_experts); qwen3_moe alone adapts attention only.
# Phi-3 fuses q, k, v in qkv_proj and gate, up in gate_up_proj (GLM-4: gate, up only): peft adapts the fused
# modules, ours are the parts
TARGETS = {"llama": ALL, "qwen3": ALL, "qwen3_moe": ALL[:4], "qwen3_moe_experts": ALL[:4],
           "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
           "glm4": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]}
FUSED = {"phi3": ({"qkv_proj": 9, "gate_up_proj": 6}, {"qkv_proj": 15.0, "gate_up_proj": 10.0}),
         "glm4": ({"gate_up_proj": 6}, {"gate_up_proj": 10.0})}
EXPERT_PARAMS = {"qwen3_moe_experts": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}


def _base(name, tmp_path):
    model = build_reference(name.removesuffix("_experts"))
    path = tmp_path / "base"
    model.save_pretrained(path)
    return path


def _reload(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("name", list(TARGETS))
def test_peft_adapter_loads_with_peft_logits(tmp_path, name):
    path = _base(name, tmp_path)
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=TARGETS[name], lora_dropout=0.0,
                          target_parameters=EXPERT_PARAMS.get(name))
    ref = peft.get_peft_model(_reload(path), cfg).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_B" in n or "lora_A" in n:
                p.copy_(torch.randn_like(p) * 0.2)
    ref.save_pretrained(tmp_path / "adapter")
    ours = load_pretrained(path, adapter=tmp_path / "adapter")
    assert ours.cfg.lora.rank == 4 and ours.cfg.lora.alpha == 12 and ours.cfg.lora.experts == (name in EXPERT_PARAMS)
    got = np.asarray(ours(IDS, MASK))
    want = reference_logits(ref)
    base = reference_logits(_reload(path))
    assert np.abs(want - base)[MASK].max() > 1e-2  # the adapter matters
    err = np.abs(got - want)[MASK].max()
    assert err <= 1e-4, f"{name}: max |dlogits| {err:.2e}"


# peft checks rank_pattern / alpha_pattern keys against targeted *modules* only, so the keys for the expert
# parameters (``target_parameters``) are reported as ignored although peft applies them (its LoRA model looks
# them up per parameter): the logits parity below would fail at the wrong rank or scale.
@pytest.mark.filterwarnings("ignore:The following (rank|alpha)_pattern keys did not match:RuntimeWarning")
@pytest.mark.parametrize("name", list(TARGETS))
def test_our_adapter_loads_in_peft(tmp_path, name):
    path = _base(name, tmp_path)
    base = load_pretrained(path)
    names = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
             "down_proj": "down"}
    experts = name in EXPERT_PARAMS  # our gate/up/down adapters on the routed experts (and q, k, v, o)
    targets = ALL if experts or name in FUSED else TARGETS[name]
    lc = lora.LoRAConfig(rank=3, alpha=5.0, targets=tuple(names[t] for t in targets), experts=experts,
                         dropout=0.0 if experts else 0.1)
    mdef = lora.with_lora(base.mdef, lc)
    ad = lora.init_adapters(mdef, 0)
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(ad))))
    ad = jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), ad)
    model = type(base)(mdef, lora.join(base.params, ad))
    ours = np.asarray(model(IDS, MASK))
    save_lora(model, tmp_path / "adapter")
    ref = peft.PeftModel.from_pretrained(_reload(path), tmp_path / "adapter").eval()
    conf = ref.peft_config["default"]
    assert conf.lora_dropout == (0.0 if experts else 0.1)  # training-only, written for peft's training
    if name in FUSED:  # (Phi-3) q, k, v side by side in one rank-9 qkv_proj adapter, gate and up in a rank-6
        assert (conf.rank_pattern, conf.alpha_pattern) == FUSED[name]  # gate_up_proj
    if experts or name in FUSED:
        if experts:
            assert sorted(conf.target_parameters) == sorted(EXPERT_PARAMS[name]) and conf.rank_pattern
        # and back: load_pretrained reads the expert (fused-part) adapters at their own rank, same logits
        back = load_pretrained(path, adapter=tmp_path / "adapter")
        assert back.cfg.lora.rank == 3 and back.cfg.lora.experts == experts
        err = np.abs(np.asarray(back(IDS, MASK)) - ours)[MASK].max()
        assert err <= 1e-5, f"{name} reloaded: max |dlogits| {err:.2e}"
    want = reference_logits(ref)
    assert np.abs(want - reference_logits(_reload(path)))[MASK].max() > 1e-2
    err = np.abs(ours - want)[MASK].max()
    assert err <= 1e-4, f"{name}: max |dlogits| {err:.2e}"
    # merged export: plain transformers, same logits
    save_pretrained(model, tmp_path / "merged", merge_lora=True)
    err = np.abs(reference_logits(_reload(tmp_path / "merged")) - ours)[MASK].max()
    assert err <= 1e-4, f"{name} merged: max |dlogits| {err:.2e}"
    with pytest.raises(ValueError, match="merge_lora=True"):
        save_pretrained(model, tmp_path / "unmerged")
