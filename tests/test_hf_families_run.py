"""GRPO runs from tiny gpt-oss, OLMo-2, GLM-4.5, Qwen3.5, Granite 4.0-H, Nemotron-H, LFM2, Falcon-H1, DeepSeek-V3.2,
Gemma 4 and MiMo-V2-Flash checkpoints, each with its own chat template (gpt-oss's harmony turns, OLMo-2's
<|user|>/<|assistant|> turns, GLM's [gMASK]<sop> turns opening a <think>, Qwen's, Nemotron's and LFM2's
<|im_start|> turns, Granite's <|start_of_role|> turns, Gemma's <start_of_turn> turns) and a JSONL math dataset
(gsm8k rows), on 8 CPU devices: gpt-oss expert-parallel (mesh expert 2), OLMo-2, Qwen3.5 (Gated DeltaNet layers),
LFM2 (short convolutions) and Falcon-H1 tensor-parallel, GLM-4.5, Granite 4.0-H, Nemotron-H (Mamba-2 layers),
DeepSeek-V3.2, Gemma 4 and MiMo-V2-Flash with experts both (data 2 x tensor 2 x expert 2). The trained weights
export back to transformers with the same logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from helpers import compared_env

pytestmark = [pytest.mark.parity, pytest.mark.slow]
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HARMONY = ("{% for message in messages %}{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + "
           "'<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant<|channel|>final<|message|>' }}"
           "{% endif %}")
OLMO2 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
         "{{ '<|system|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}"
         "{{ '<|user|>\\n' + message['content'] + '\\n' }}{% else %}{{ '<|assistant|>\\n' + message['content'] + "
         "eos_token + '\\n' }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}"
         "{% endif %}{% endfor %}")
QWEN = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}"
        "{% endif %}")
GLM = ("[gMASK]<sop>{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
       "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n<think>' }}{% endif %}")
GRANITE = ("{% for message in messages %}{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + "
           "message['content'] + '<|end_of_text|>\n' }}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + "
         "message['content'] + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
         "{{ '<start_of_turn>model\n' }}{% endif %}")
COHERE = ("{{ bos_token }}{% for message in messages %}{{ '<|START_OF_TURN_TOKEN|>' + "
          "('<|USER_TOKEN|>' if message['role'] == 'user' else '<|CHATBOT_TOKEN|>') + message['content'] + "
          "'<|END_OF_TURN_TOKEN|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}")
FAMILIES = {
    "gpt_oss": (HARMONY, ["<|endoftext|>", "<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>"],
                {"eos_token": "<|return|>", "pad_token": "<|endoftext|>"}, {"data": 4, "expert": 2}),
    "olmo2": (OLMO2, ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"],
              {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|pad|>"},
              {"data": 4, "tensor": 2}),
    # a turn ends at <|user|> (GLM's config.json lists it among its eos ids)
    "glm4_moe": (GLM, ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"],
                 {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, {"data": 2, "tensor": 2, "expert": 2}),
    # Qwen3.5: a Gated DeltaNet layer then a gated attention layer, tensor-parallel (both split by heads)
    "qwen3_5": (QWEN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, {"data": 4, "tensor": 2}),
    # Granite 4.0-H-Tiny's shape: a Mamba-2 layer (heads and B/C groups split by the tensor axis) and an attention
    # layer, each with routed experts beside the shared MLP: data 2 x tensor 2 x expert 2
    "granite4_h_moe": (GRANITE, ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|pad|>"],
                       {"eos_token": "<|end_of_text|>", "pad_token": "<|pad|>"}, {"data": 2, "tensor": 2, "expert": 2}),
    # Nemotron-3-Nano's shape (ChatML turns opening a <think>): a Mamba-2 layer alone, attention with ungated routed
    # experts and a shared one, Mamba-2 with an ungated MLP: data 2 x tensor 2 x expert 2
    "nemotron_h_moe": (QWEN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                       {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                       {"data": 2, "tensor": 2, "expert": 2}),
    # Falcon-H1R's shape (ChatML turns opening a <think>): attention and a Mamba-2 mixer side by side in each
    # layer, every muP multiplier away from 1, both split by heads over the tensor axis
    "falcon_h1": (QWEN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                  {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, {"data": 4, "tensor": 2}),
    # DeepSeek-V3.2's shape (its <think> turns): sparse attention (each query's 4 best keys by the indexer, whose
    # heads split over the tensor axis) and DeepSeekMoE after a dense layer: data 2 x tensor 2 x expert 2
    "deepseek_v32": (QWEN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                     {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, {"data": 2, "tensor": 2, "expert": 2}),
    # Gemma 4 26B-A4B's shape (Gemma's turns): a sliding layer, then a full one with wider heads whose values are the
    # keys' projection; in each a dense MLP beside routed experts; and E2B/E4B's per-layer inputs and a last layer
    # attending over the full layer's keys/values (double-wide): data 2 x tensor 2 x expert 2 (the reference's
    # default 262144-row per-layer table: tests/test_hf_io.py)
    "gemma4": (GEMMA, ["<pad>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
               {"eos_token": "<end_of_turn>", "bos_token": "<bos>", "pad_token": "<pad>"},
               {"data": 2, "tensor": 2, "expert": 2}),
    # MiMo-V2-Flash's shape (<think> turns): a full layer with 2 key/value heads, a sliding one with 4 and sinks,
    # values narrower than keys; routed experts after a dense layer: data 2 x tensor 2 x expert 2
    "mimo_v2_flash": (QWEN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                      {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                      {"data": 2, "tensor": 2, "expert": 2}),
    # Command A+'s shape (Cohere's turns): a dense layer rotating though full, then attention and routed experts side
    # by side on one normed input, a shared expert averaged in: data 2 x tensor 2 x expert 2
    "cohere2_moe": (COHERE, ["<PAD>", "<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
                             "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"],
                    {"eos_token": "<|END_OF_TURN_TOKEN|>", "bos_token": "<BOS_TOKEN>", "pad_token": "<PAD>"},
                    {"data": 2, "tensor": 2, "expert": 2}),
    # LFM2: a short-convolution layer (channels split by the tensor axis) then an attention layer
    "lfm2": (QWEN.replace("<think>\n", ""), ["<|startoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
             {"eos_token": "<|im_end|>", "bos_token": "<|startoftext|>", "pad_token": "<|pad|>"},
             {"data": 4, "tensor": 2}),
}
CORPUS = ["What is 12 + 30? The answer is 42.", "<answer>42</answer> #### 42", "Think step by step about numbers.",
          "What is 7 + 6? It is 13."] * 20


def _tokenizer(path, template, special, names):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, **names,
                                                            "tokenizer_class": "PreTrainedTokenizerFast"}))
    return tok


def _checkpoint(path, family):
    template, special, names, _ = FAMILIES[family]
    tok = _tokenizer(path, template, special, names)
    ids = {k.replace("_token", "_token_id"): tok.token_to_id(v) for k, v in names.items()}
    common = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, intermediate_size=32, max_position_embeddings=256, **ids)
    if family == "gpt_oss":
        cfg = transformers.GptOssConfig(**common, num_local_experts=4, num_experts_per_tok=2, sliding_window=16)
    elif family == "glm4_moe":
        eos = [ids["eos_token_id"], tok.token_to_id("<|user|>")]
        cfg = transformers.Glm4MoeConfig(**{**common, "eos_token_id": eos}, attention_bias=True, n_routed_experts=4,
                                         num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1,
                                         n_shared_experts=1)
    elif family == "qwen3_5":
        cfg = transformers.Qwen3_5TextConfig(**common, layer_types=["linear_attention", "full_attention"],
                                             linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                                             linear_num_value_heads=4)
    elif family == "lfm2":
        cfg = transformers.Lfm2Config(**common, layer_types=["conv", "full_attention"], block_multiple_of=16)
    elif family == "granite4_h_moe":
        cfg = transformers.GraniteMoeHybridConfig(**common, layer_types=["mamba", "attention"], num_local_experts=4,
                                                  num_experts_per_tok=2, shared_intermediate_size=32,
                                                  mamba_n_heads=4, mamba_n_groups=2, mamba_d_state=8,
                                                  embedding_multiplier=4.0, residual_multiplier=0.5,
                                                  attention_multiplier=0.25, logits_scaling=2.0)
    elif family == "nemotron_h_moe":
        types = ["linear_attention", "full_attention", "moe", "linear_attention", "mlp"]
        cfg = transformers.NemotronHConfig(**common, layers_block_type=types,
                                           mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8,
                                           n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                           moe_shared_expert_intermediate_size=16)
    elif family == "deepseek_v32":
        cfg = transformers.DeepseekV32Config(**{**common, "num_key_value_heads": 4}, n_routed_experts=4,
                                             num_experts_per_tok=2, moe_intermediate_size=16, n_group=2,
                                             topk_group=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=8,
                                             qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, index_topk=4,
                                             index_n_heads=16, index_head_dim=8)
    elif family == "falcon_h1":
        cfg = transformers.FalconH1Config(**common, mamba_n_heads=4, mamba_d_ssm=32, mamba_n_groups=2,
                                          mamba_d_state=8, mamba_rms_norm=True, mamba_norm_before_gate=False,
                                          embedding_multiplier=2.0, lm_head_multiplier=0.5, key_multiplier=0.7,
                                          attention_in_multiplier=1.2, attention_out_multiplier=0.6,
                                          ssm_in_multiplier=0.8, ssm_out_multiplier=1.5,
                                          ssm_multipliers=[0.5, 1.2, 0.9, 1.4, 0.7], mlp_multipliers=[0.8, 1.3])
    elif family == "gemma4":
        cfg = transformers.Gemma4TextConfig(**{**common, "num_hidden_layers": 3}, global_head_dim=16,
                                            num_global_key_value_heads=1,
                                            attention_k_eq_v=True, hidden_size_per_layer_input=4, sliding_window=8,
                                            vocab_size_per_layer_input=common["vocab_size"],
                                            num_kv_shared_layers=1, use_double_wide_mlp=True,
                                            layer_types=["sliding_attention", "full_attention", "full_attention"],
                                            final_logit_softcapping=30.0, enable_moe_block=True, num_experts=4,
                                            top_k_experts=2, moe_intermediate_size=16)
    elif family == "mimo_v2_flash":
        cfg = transformers.MiMoV2FlashConfig(**common, v_head_dim=4, sliding_window=8, n_routed_experts=4,
                                             num_experts_per_tok=2, moe_intermediate_size=16,
                                             layer_types=["full_attention", "sliding_attention"],
                                             mlp_layer_types=["dense", "sparse"])
    elif family == "cohere2_moe":
        cfg = transformers.Cohere2MoeConfig(**common, sliding_window=8, num_experts=4, num_experts_per_tok=2,
                                            num_shared_experts=1, first_k_dense_replace=1,
                                            prefix_dense_intermediate_size=48)
    else:
        cfg = transformers.Olmo2Config(**{**common, "intermediate_size": 64})
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


def _dataset(path):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        a, b = (int(x) for x in rng.integers(1, 50, 2))
        rows.append({"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# A random tiny policy never answers right, so accuracy alone gives every group equal rewards and no policy
# gradient; this plug-in reward (the share of digits in a completion) varies within groups.
DIGITS = "def digits(completion, example, **kw):\n    return sum(c.isdigit() for c in completion) / max(len(completion), 1)\n"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_grpo_from_checkpoint_with_its_chat_template(tmp_path, family):
    hf_dir = _checkpoint(tmp_path / family, family)
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "family_run_rewards.py").write_text(DIGITS)
    mesh = {**FAMILIES[family][3], "cpu_devices": 8}
    cfg = {
        "seed": 0, "model": {"path": str(hf_dir), "max_seq_len": 256}, "tokenizer": {"kind": "hf"},
        "task": {"name": "file", "path": str(_dataset(tmp_path / "math.jsonl")), "preset": "gsm8k",
                 "template": "chat", "held_out_size": 8},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 16},
        "optimizer": {"lr": 1.0e-3}, "checkpoint": {"every": 3, "keep": 1}, "mesh": mesh,
        "eval": {"num_problems": 8, "samples": 1, "k": [1], "batch_size": 8, "greedy": False},
        "rewards": [{"name": "accuracy", "weight": 1.0}, {"name": "family_run_rewards:digits", "weight": 1.0}],
        "stages": [{"name": "grpo", "kind": "grpo", "steps": 3}],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    # the run's own numbers are only checked for being finite and for learning; the export is compared with
    # transformers in this process, so the run may compile without LLVM's optimisations (most of its time)
    env = compared_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "plug"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", str(path), "--no-progress", "--no-plots",
                        "--run-dir", str(run)], capture_output=True, text=True, timeout=900, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if r.get("stage") == "grpo" and "loss" in r]
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps), rows[-3:]
    assert any(r["reward_std"] > 0 for r in steps), steps  # a policy gradient, not only the balancing loss
    man = json.loads((run / "checkpoints" / "grpo" / "manifest.json").read_text())
    assert all(man["mesh"][axis] == n for axis, n in FAMILIES[family][3].items())

    out = tmp_path / "export"
    p = subprocess.run([sys.executable, "-m", "reasoning_rl", "export", str(run), str(out), "--stage", "grpo"],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    from reasoning_rl.models import load_pretrained

    ours, base = load_pretrained(out), load_pretrained(hf_dir)
    import jax

    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(base.params)))
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = np.random.default_rng(0).integers(0, 250, (2, 24))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(ours(ids, np.ones_like(ids))) - want).max() < 1e-4
