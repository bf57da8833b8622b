"""Qwen3.5, Qwen3.5-MoE and Qwen3-Next: Gated DeltaNet linear-attention layers beside gated softmax attention,
against transformers' reference (needs the test extra): logits at several lengths with left padding, greedy
generation, the sampler's log-probs equal to the trainer's on every decode path (plain, in-flight refill, paged),
padding that does not change a row's numbers, the export loading back in transformers, the vision-language
wrappers' language model, LoRA on the linear layers. The chunked delta rule is checked against the token-by-token
recurrence."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import delta_rule_inputs
from helpers import numpy_delta_rule as _numpy_rule
from reasoning_rl.models.layers.gated_deltanet import chunked_delta_rule, recurrent_delta_rule


@pytest.mark.parametrize("per_dim", [False, True], ids=["per_head", "per_dim"])
@pytest.mark.parametrize("t,chunk", [(1, 64), (37, 4), (130, 64)])
def test_delta_rule_forms_equal_the_reference_recurrence(t, chunk, per_dim):
    """The recurrence (decode) and the chunked form (training, prefill; chunks of 4 cut 37 tokens unevenly) equal
    the NumPy recurrence, outputs and final state, from a non-zero incoming state; with a decay per head (Gated
    DeltaNet) and per key dimension (Kimi Delta Attention, strong decays a product of exponentials would
    overflow)."""
    args = delta_rule_inputs(t, per_dim=per_dim)
    ref_o, ref_s = _numpy_rule(*args)
    for rule in (recurrent_delta_rule, jax.jit(functools.partial(chunked_delta_rule, chunk=chunk))):
        o, s = rule(*args)
        np.testing.assert_allclose(np.asarray(o), ref_o, atol=2e-5)
        np.testing.assert_allclose(np.asarray(s), ref_s, atol=2e-5)
    q, k, v, g, beta, s0 = args  # a token with g = 0 and beta = 0 (an invalid one) leaves the state as it was
    _, s3 = recurrent_delta_rule(q[:, :1], k[:, :1], v[:, :1], 0 * g[:, :1], 0 * beta[:, :1], s0)
    np.testing.assert_array_equal(np.asarray(s3), np.asarray(s0))


@pytest.mark.parametrize("per_dim", [False, True], ids=["per_head", "per_dim"])
def test_segments_restart_the_state_in_both_forms(per_dim):
    """Packed rows: with sequence ids, a sequence starts from a zero state (the recurrence and the chunked form,
    chunks cutting through sequences)."""
    q, k, v, g, beta, _ = delta_rule_inputs(45, seed=1, per_dim=per_dim)
    s0 = jnp.zeros((2, 3, 8, 5), jnp.float32)
    seg = np.sort(np.random.default_rng(2).integers(1, 6, (2, 45)), axis=1)
    ref_o, ref_s = _numpy_rule(q, k, v, g, beta, s0, seg)
    for rule in (recurrent_delta_rule, *(jax.jit(functools.partial(chunked_delta_rule, chunk=c)) for c in (4, 16))):
        o, s = rule(q, k, v, g, beta, s0, seg=jnp.asarray(seg))
        np.testing.assert_allclose(np.asarray(o), ref_o, atol=2e-5)
        np.testing.assert_allclose(np.asarray(s), ref_s, atol=2e-5)


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import assert_packed_rows_equal_alone, assert_padding_changes_nothing  # noqa: E402
from reasoning_rl.models import (  # noqa: E402
    LoRAConfig,
    config_from_hf,
    create,
    load_pretrained,
    lora,  # noqa: E402
    save_pretrained,
)
from reasoning_rl.models.lora import save_lora  # noqa: E402

from reasoning_rl.algorithms.logprobs import target_logprobs  # noqa: E402
from reasoning_rl.rollout.sampler import generate, left_pad  # noqa: E402

V = 128
TEXT = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, linear_key_head_dim=8, linear_value_head_dim=12,
            linear_num_key_heads=2, linear_num_value_heads=4, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25})
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40)
CASES = {
    "qwen3_5": lambda: transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**TEXT)),
    "qwen3_5_moe": lambda: transformers.AutoModelForCausalLM.from_config(
        transformers.Qwen3_5MoeTextConfig(**{k: v for k, v in TEXT.items() if k != "intermediate_size"}, **MOE)),
    # a dense MLP in layer 1 (mlp_only_layers): four stacks, linear and attention each dense and MoE
    "qwen3_next": lambda: transformers.AutoModelForCausalLM.from_config(
        transformers.Qwen3NextConfig(**TEXT, **MOE, mlp_only_layers=[1])),
}


def _perturb(model):
    """Norm weights off their initial values (zero-centred norms start at 0, the gated norm at 1), so a wrong
    offset shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def get(name: str):
        if name not in made:
            torch.manual_seed(0)
            model = _perturb(CASES[name]().eval())
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            made[name] = model, path
        return made[name]

    return get


@pytest.fixture
def checkpoint(checkpoints):
    return checkpoints("qwen3_5")


def _ids(t: int, seed: int = 0):
    ids = np.random.RandomState(seed).randint(0, 120, (2, t)).astype(np.int32)
    mask = np.ones((2, t), bool)
    mask[1, :min(6, t - 1)] = False
    return ids, mask


def _reference(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask.astype(np.int64)),
                    position_ids=torch.tensor(pos))
    return out.logits.numpy()


@pytest.mark.parity
@pytest.mark.parametrize("name,t", [("qwen3_5", 3), ("qwen3_5", 20), ("qwen3_5", 150), ("qwen3_5_moe", 20),
                                    ("qwen3_next", 5), ("qwen3_next", 70)])
def test_logits_match_transformers(checkpoints, name, t):
    """Short (the recurrence), medium and several chunks (the chunked form), one row left-padded."""
    ref_model, path = checkpoints(name)
    ids, mask = _ids(t)
    ours = np.asarray(load_pretrained(path, dtype="float32")(ids, mask))
    ref = _reference(ref_model, ids, mask)
    assert np.abs(ours - ref)[mask].max() < 1e-4


@pytest.mark.parity
def test_config_reads_the_layer_schedule_and_gates(checkpoints):
    from reasoning_rl.models.transformer import stack_layers

    for name in CASES:
        cfg = load_pretrained(checkpoints(name)[1]).mdef.cfg
        assert cfg.linear.layers == (0, 1, 2) and cfg.attention_layers == (3,)  # full_attention_interval 4
        assert (cfg.linear.k_heads, cfg.linear.v_heads, cfg.linear.k_dim, cfg.linear.v_dim) == (2, 4, 8, 12)
        assert cfg.attn_gate and cfg.norm_offset == 1.0 and cfg.rope_dim == 4 and cfg.qk_norm
        assert cfg.cache_slots == (0, 1, 2, 0)  # k/v for the one attention layer, states for three linear ones
        if name != "qwen3_5":
            assert cfg.moe.norm_topk and cfg.moe.shared_gate and cfg.moe.shared_ffn == 40
    stacks = stack_layers(load_pretrained(checkpoints("qwen3_next")[1]).mdef.cfg)
    assert stacks == {"layers": (3,), "linear_dense_layers": (1,), "linear_layers": (0, 2)}


@pytest.mark.parity
def test_padding_does_not_change_a_rows_numbers(checkpoint):
    """Only a row's valid tokens enter the convolution and the recurrence: the same tokens with pads before,
    between and after them give the same logits at the valid positions."""
    model = load_pretrained(checkpoint[1])
    assert_padding_changes_nothing(model.mdef.bind(model.params), 120)


@pytest.mark.parity
def test_packed_rows_equal_their_sequences_alone(checkpoint):
    """Packed SFT rows (``stage.pack``): the linear layers' convolution and state restart with each sequence, as
    the attention masks do, so a packed row's logits are its sequences' own."""
    model = load_pretrained(checkpoint[1])
    assert_packed_rows_equal_alone(model.mdef.bind(model.params), 120)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next"])
def test_greedy_generation_matches_transformers(checkpoints, name):
    ref_model, path = checkpoints(name)
    model = load_pretrained(path)
    prompts = [[5, 7, 9, 11, 3], [17, 2, 40, 8, 1, 9, 22, 31, 4, 2, 6], [3]]
    toks, valid = left_pad(prompts, 0)
    out = generate(model.mdef, model.params, toks, valid, max_new_tokens=12, greedy=True)
    for i, p in enumerate(prompts):
        ref = ref_model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(p):].tolist()
        assert np.asarray(out.tokens[i]).tolist() == ref, i


@pytest.mark.parity
def test_sampler_logprobs_equal_trainer_on_every_decode_path(checkpoint):
    """Groups fanned out from one prefill, rows stopping at different steps (their states then frozen), slots
    refilled with new rows (their states copied from the prompt's), a paged cache, unrolled decode layers: the same
    tokens on every path,
    and the trainer's log-probs of them (whole rows, the trainer's own padding) equal the sampler's."""
    _, path = checkpoint
    model = load_pretrained(path)
    mdef, params = model.mdef, model.params
    prompts = [[5, 7, 9, 11, 3], [17, 2, 40, 8, 1, 9, 22, 31, 4, 2, 6], [3]]
    toks, valid = left_pad(prompts, 0)
    n, g = 12, 3
    rows = np.repeat(np.arange(len(prompts)), g)
    outs = {}
    for kw in ({}, {"slots": 2}, {"page_size": 4}, {"slots": 2, "page_size": 4}):
        outs[str(kw)] = generate(mdef, params, toks, valid, max_new_tokens=n, rng_seed=1, group_size=g,
                                 stop_ids=(7, 9, 13), **kw)
    # the accelerators' default decode (layers unrolled over weights sliced once; the states stay stacked)
    unrolled = create(dataclasses.replace(mdef.cfg, decode_layers="unroll"), abstract=True)[0]
    outs["unroll"] = generate(unrolled, params, toks, valid, max_new_tokens=n, rng_seed=1, group_size=g,
                              stop_ids=(7, 9, 13))
    base = outs["{}"]
    lengths = np.asarray(base.lengths)
    assert lengths.min() < n, lengths  # some rows stop early
    full = np.concatenate([np.asarray(toks)[rows], np.asarray(base.tokens)], 1)
    fv = np.concatenate([np.asarray(valid)[rows], np.asarray(base.mask)], 1)
    lp = np.asarray(target_logprobs(mdef.bind(params), jnp.asarray(full), jnp.asarray(fv), n, group=g))
    for kw, out in outs.items():
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(base.tokens), err_msg=kw)
        m = np.asarray(out.mask)
        assert np.abs(lp - np.asarray(out.logprobs))[m].max() < 1e-5, kw


@pytest.mark.parity
@pytest.mark.parametrize("name,model_type", [("qwen3_5", "qwen3_5_text"), ("qwen3_5_moe", "qwen3_5_moe_text"),
                                             ("qwen3_next", "qwen3_next")])
def test_export_loads_in_transformers_and_reloads_bit_for_bit(checkpoints, tmp_path, name, model_type):
    ref_model, path = checkpoints(name)
    model = load_pretrained(path)
    save_pretrained(model, tmp_path / "out")
    conf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert conf["model_type"] == model_type
    assert conf["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids, mask = _ids(20)
    np.testing.assert_allclose(_reference(again, ids, mask)[mask], _reference(ref_model, ids, mask)[mask], atol=1e-5)
    back = load_pretrained(tmp_path / "out")
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parity
def test_multi_token_prediction_tensors_are_not_loaded(checkpoint, tmp_path):
    """Released checkpoints carry an ``mtp.*`` module (speculative decoding) beside the decoder."""
    from safetensors.numpy import load_file, save_file

    _, path = checkpoint
    (tmp_path / "m").mkdir()
    tensors = load_file(str(path / "model.safetensors"))
    tensors["mtp.fc.weight"] = np.ones((64, 128), np.float32)
    save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text((path / "config.json").read_text())
    ids, mask = _ids(8)
    np.testing.assert_array_equal(np.asarray(load_pretrained(tmp_path / "m")(ids, mask)),
                                  np.asarray(load_pretrained(path)(ids, mask)))


@pytest.mark.parity
@pytest.mark.parametrize("moe", [False, True])
def test_vision_language_wrapper_loads_its_language_model(tmp_path, moe):
    """Qwen3.5 and Qwen3.5-MoE are released as vision-language models: the language model is read from under
    ``model.language_model.`` with the reference's text-only logits; the vision tower is not loaded."""
    text = {**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25,
                                        "mrope_section": [1, 1, 0], "mrope_interleaved": True}}
    if moe:
        text = {**{k: v for k, v in text.items() if k != "intermediate_size"}, **MOE}
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 64}
    torch.manual_seed(0)
    cls, conf = (("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeConfig") if moe
                 else ("Qwen3_5ForConditionalGeneration", "Qwen3_5Config"))
    model = _perturb(getattr(transformers, cls)(getattr(transformers, conf)(
        text_config=text, vision_config=vision, image_token_id=120, video_token_id=121,
        vision_start_token_id=122)).eval())
    model.save_pretrained(tmp_path)
    ids, mask = _ids(20)
    ours = np.asarray(load_pretrained(tmp_path)(ids, mask))
    ref = _reference(model, ids, mask)
    assert np.abs(ours - ref)[mask].max() < 1e-4


@pytest.mark.parity
def test_lora_adapts_the_linear_layers(checkpoint, tmp_path):
    """Targets q, k, v, o adapt the linear-attention layers' projections as the attention layers': their adapters
    get a gradient."""
    _, path = checkpoint
    cfg = config_from_hf(path)  # cut to one linear layer and one attention layer
    cfg = dataclasses.replace(cfg, n_layers=2, linear=dataclasses.replace(cfg.linear, layers=(0,)),
                              lora=LoRAConfig(rank=4, targets=("q", "k", "v", "o")))
    mdef, params = create(cfg, 0)
    ids, mask = _ids(16)
    tokens, valid = jnp.asarray(ids), jnp.asarray(mask)

    def loss(p):
        return -jnp.sum(target_logprobs(mdef.bind(p), tokens, valid, 8))

    grads = jax.jit(jax.grad(loss))(params)
    grads = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]}
    for stack, name in [("linear_layers", n) for n in "qkvo"] + [("layers", "q")]:
        # the B factors start at zero, so their gradient is the first to move
        g = [v for k, v in grads.items() if k.startswith(f"['{stack}']") and f"'{name}_lora_b'" in k]
        assert len(g) == 1 and float(jnp.abs(g[0]).max()) > 0, (stack, name)


@pytest.mark.parity
def test_lora_adapter_round_trips_through_peft(checkpoint, tmp_path):
    """Our adapters on q (the query half of the gated q_proj; the q part of in_proj_qkv), k, v and o written for
    peft: q_proj's at rank r with zero gate rows, in_proj_qkv's q, k, v side by side at rank 3r (rank/alpha
    patterns keep the scale). peft's model gives our logits, and the file loads back to the same adapters."""
    peft = pytest.importorskip("peft")
    ref_model, path = checkpoint
    base = load_pretrained(path)
    mdef = lora.with_lora(base.mdef, LoRAConfig(rank=3, alpha=5.0, targets=("q", "k", "v", "o")))
    ad = lora.init_adapters(mdef, 0)
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(ad))))
    model = type(base)(mdef, lora.join(base.params, jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape),
                                                                   ad)))
    ids, mask = _ids(20)
    ours = np.asarray(model(ids, mask))
    assert np.abs(ours - np.asarray(base(ids, mask)))[mask].max() > 1e-2  # the adapters matter
    save_lora(model, tmp_path / "adapter")
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["target_modules"] == ["in_proj_qkv", "k_proj", "o_proj", "out_proj", "q_proj", "v_proj"]
    assert conf["rank_pattern"] == {"in_proj_qkv": 9} and conf["alpha_pattern"] == {"in_proj_qkv": 15.0}
    ref = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(path).eval(),
                                         tmp_path / "adapter").eval()
    assert np.abs(_reference(ref, ids, mask) - ours)[mask].max() < 1e-4
    back = load_pretrained(path, adapter=tmp_path / "adapter")
    assert back.cfg.lora.rank == 3 and back.cfg.lora.targets == ("q", "k", "v", "o")
    np.testing.assert_array_equal(np.asarray(back(ids, mask)), ours)
