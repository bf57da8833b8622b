"""A ppo stage whose policy and critic are Hugging Face directories: a tiny random Llama policy (``model.path``,
its tokenizer) and a smaller Llama critic with the same tokenizer (``critic_model: <dir>``), run end to end by
``reasoning-rl run``, resumed from an interrupted stage, and the trained critic exported as a value model that
transformers loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from helpers import run_here

pytestmark = [pytest.mark.parity, pytest.mark.slow]
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_tokenizer import CHATML, _byte_bpe
from test_ppo import TIMING, critic_params

from reasoning_rl.metrics import read_metrics

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _llama(d, vocab, hidden, ffn, seed):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=ffn, max_position_embeddings=256,
                                   tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(policy dir, critic dir): hidden 32 vs 16, the same tokenizer files in both."""
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("hf_ppo")
    policy = _byte_bpe(root / "policy", CHATML, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
                       tokenizer_class="PreTrainedTokenizerFast")
    vocab = Tokenizer.from_file(str(policy / "tokenizer.json")).get_vocab_size()
    _llama(policy, vocab, 32, 64, 0)
    critic = root / "critic"
    _llama(critic, vocab, 16, 24, 1)
    for name in TOKENIZER_FILES:
        shutil.copy2(policy / name, critic / name)
    return policy, critic


def _config(tmp_path, policy, critic):
    cfg = {
        "seed": 0, "model": {"path": str(policy), "max_seq_len": 256}, "tokenizer": {"kind": "hf"},
        "task": {"name": "arithmetic", "digits": 2, "terms": 2, "held_out_size": 8},
        "rollout": {"prompts_per_step": 4, "group_size": 1, "max_new_tokens": 20, "temperature": 1.0},
        # overlong shaping and the KL in the reward give a random policy returns that vary
        "algorithm": {"beta": 0.05, "kl_in": "reward", "gamma": 1.0, "lam": 0.9,
                      "overlong": {"enabled": True, "max_len": 12, "cache": 8}},
        "optimizer": {"lr": 1.0e-3}, "checkpoint": {"every": 1, "keep": 3},
        "eval": {"num_problems": 4, "samples": 1, "k": [1], "batch_size": 4},
        "stages": [{"name": "ppo", "kind": "ppo", "steps": 3, "critic_model": str(critic),
                    "critic": {"optimizer": {"lr": 3.0e-3}}}],
    }
    path = tmp_path / "hf_ppo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ppo_with_hf_policy_and_smaller_hf_critic_runs_resumes_and_exports(dirs, tmp_path):
    from reasoning_rl.models import load_pretrained
    from reasoning_rl.models.value import load_value_head

    from reasoning_rl.algorithms.logprobs import target_values

    policy, critic = dirs
    config = _config(tmp_path, policy, critic)
    run = tmp_path / "run"
    p = run_here("run", str(config), "--no-progress", "--no-plots", "--run-dir", str(run))
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [r for r in read_metrics(run) if r["stage"] == "ppo"]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        for k in ("value_loss", "explained_variance", "returns_std", "loss", "critic_grad_norm"):
            assert np.isfinite(r[k]), (r["step"], k, r[k])
    assert recs[0]["values_mean"] == 0.0 and recs[-1]["values_mean"] != 0.0  # a fresh head, then it learned
    assert recs[0]["critic_grad_norm"] > 0 and max(r["logprob_gap"] for r in recs) < 1e-4
    shapes = sorted(x.shape for x in critic_params(run))
    assert (16, 1) in shapes and not any(32 in s for s in shapes)  # the critic dir's widths, not the policy's

    # resume: the run dir as a kill after step 2's checkpoint leaves it (no manifest yet, no step 3)
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoints" / "ppo" / "3")
    (cut / "checkpoints" / "ppo" / "manifest.json").unlink()
    p = run_here("run", str(config), "--no-progress", "--no-plots", "--run-dir", str(cut), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from step 2" in p.stderr
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]
    assert strip(read_metrics(cut)) == strip(read_metrics(run))
    for x, y in zip(critic_params(cut), critic_params(run)):
        np.testing.assert_array_equal(x, y)

    # export: the critic as a LlamaForTokenClassification value model that transformers loads
    out = tmp_path / "export"
    p = run_here("export", str(run), str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    cdir = out / "critic"
    conf = json.loads((cdir / "config.json").read_text())
    assert conf["architectures"] == ["LlamaForTokenClassification"] and conf["hidden_size"] == 16
    assert (cdir / "tokenizer.json").read_bytes() == (critic / "tokenizer.json").read_bytes()
    head = load_value_head(cdir)
    assert any(np.array_equal(np.asarray(head["kernel"]), x) for x in critic_params(run))  # the trained head
    m = load_pretrained(cdir)
    hf = transformers.AutoModelForTokenClassification.from_pretrained(cdir, dtype=torch.float32).eval()
    tokens = np.array([[5, 7, 9, 11, 4, 6, 8, 3]], np.int32)
    with torch.no_grad():
        logits = hf(torch.tensor(tokens, dtype=torch.long)).logits[0, :, 0].numpy()
    values = np.asarray(target_values(m.mdef, {"backbone": m.params, "head": head}, tokens,
                                      np.ones_like(tokens, bool), 7))[0]
    np.testing.assert_allclose(values, logits[:7], rtol=1e-4, atol=1e-5)
    assert np.abs(logits).max() > 0
