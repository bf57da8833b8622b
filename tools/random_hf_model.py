#!/usr/bin/env python
"""A Hugging Face model directory with random weights in the shape of a real small model, plus a GSM8K-style
JSONL, for measuring a real-model config (wall time, memory) on a machine without the real files.

The directory holds what a downloaded checkpoint holds: ``config.json``, ``model.safetensors``, a byte-level
BPE ``tokenizer.json`` (a few hundred tokens trained on the generated questions, with ChatML special tokens
and the reasoning tags), ``tokenizer_config.json`` with a ChatML chat template, and
``generation_config.json``. The model's vocabulary keeps the real size (so logits and embeddings cost what
they do for the real model); ids past the tokenizer's decode to nothing. Random weights never stop early, so
rollouts run to ``max_new_tokens``: timings are the worst case. Nothing is downloaded.

    python tools/random_hf_model.py smollm-135m /tmp/smollm-135m-random --gsm8k /tmp/gsm8k --rows 2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from reasoning_rl.models import TransformerConfig, create, save_pretrained

SHAPES = {
    # SmolLM-135M / SmolLM2-135M(-Instruct): Llama family
    "smollm-135m": dict(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                        head_dim=64, ffn_dim=1536, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
                        max_seq_len=8192),
    # Qwen2.5-0.5B(-Instruct): Qwen2 family
    "qwen2.5-0.5b": dict(family="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
                         head_dim=64, ffn_dim=4864, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True,
                         qkv_bias=True, max_seq_len=32768),
    # for tests: the Llama family at toy size
    "tiny-llama": dict(family="llama", vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=16, ffn_dim=128, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
                       max_seq_len=2048),
}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Mark", "Albert", "Ken", "Alexis", "Tina"]
ITEMS = ["clips", "apples", "pages", "marbles", "cookies", "stamps", "books", "pencils"]


def gsm8k_rows(n: int, seed: int) -> list[dict]:
    """Two-step word problems in GSM8K's format (``answer`` ends in ``#### <number>``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        who, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = (int(x) for x in rng.integers(2, 60, 2))
        c = int(rng.integers(1, a + b))
        q = (f"{who} had {a} {item} in April. In May {who} got {b} more {item} and then gave away {c} of them. "
             f"{who} then doubled what was left. How many {item} does {who} have now?")
        left = a + b - c
        sol = (f"In May {who} had {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\n"
               f"After giving away {c}: {a + b} - {c} = <<{a + b}-{c}={left}>>{left}.\n"
               f"Doubled: {left} * 2 = <<{left}*2={2 * left}>>{2 * left}.\n#### {2 * left}")
        rows.append({"question": q, "answer": sol})
    return rows


def write_tokenizer(out: Path, corpus: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192}, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))


def random_params(mdef, seed: int) -> dict:
    """Normal(0, 0.02) weights, norms at 1 (what initialisers do), on the host: no compile for 100M+ params."""
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        name = str(path[-1].key)
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        if name.endswith("bias"):
            return np.zeros(leaf.shape, leaf.dtype)
        return (rng.standard_normal(leaf.shape, np.float32) * 0.02).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(init, mdef.abstract_params())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", help="model directory to write")
    ap.add_argument("--gsm8k", default=None, help="also write DIR/train.jsonl and DIR/test.jsonl")
    ap.add_argument("--rows", type=int, default=2000, help="train rows (test: a quarter)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    cfg = TransformerConfig(**SHAPES[args.shape])
    mdef, _ = create(cfg, abstract=True)
    save_pretrained(mdef, random_params(mdef, args.seed), out)
    rows = gsm8k_rows(args.rows + args.rows // 4, args.seed)
    write_tokenizer(out, [r["question"] + " " + r["answer"] for r in rows])
    if args.gsm8k:
        d = Path(args.gsm8k)
        d.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", rows[: args.rows]), ("test", rows[args.rows:])):
            (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(mdef.abstract_params()))
    print(json.dumps({"model": str(out), "shape": args.shape, "params": n, "gsm8k": args.gsm8k}))


if __name__ == "__main__":
    main()
