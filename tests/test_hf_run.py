"""A run whose model is a Hugging Face checkpoint directory: its architecture, weights and tokenizer are used
(``model.path`` + ``tokenizer.kind: hf``), SFT then GRPO train it, and the result saves back for transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_here

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# the run, the export and the eval run in this process (helpers.run_here), compiled under the tests' fast flags:
# compared with each other exactly, with transformers only through tolerances

from test_hf_tokenizer import CHATML, _byte_bpe  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer

    d = _byte_bpe(tmp_path_factory.mktemp("hf") / "tiny-qwen2", CHATML, eos_token="<|im_end|>",
                  pad_token="<|endoftext|>", bos_token=None, tokenizer_class="PreTrainedTokenizerFast")
    vocab = Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab_size()
    cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


def test_run_trains_a_hugging_face_checkpoint(hf_dir, tmp_path, monkeypatch):
    cfg = {
        "seed": 0, "model": {"path": str(hf_dir), "max_seq_len": 256}, "tokenizer": {"kind": "hf"},
        "task": {"name": "arithmetic", "digits": 2, "terms": 2, "held_out_size": 8},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 24},
        "optimizer": {"lr": 1.0e-3}, "checkpoint": {"every": 2, "keep": 1},
        "eval": {"num_problems": 4, "samples": 2, "k": [1, 2], "batch_size": 8},
        "stages": [{"name": "sft", "kind": "sft", "steps": 2, "batch_size": 4},
                   {"name": "grpo", "kind": "grpo", "steps": 2}],
    }
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    p = run_here("run", str(path), "--no-progress", "--no-plots", "--run-dir", str(run))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"sft", "grpo"}
    man = json.loads((run / "checkpoints" / "sft" / "manifest.json").read_text())
    assert man["model"] == str(hf_dir)
    assert man["parent"]["kind"] == "fresh" or man["parent"].get("path") == str(hf_dir)
    # the trained weights moved away from the checkpoint's and keep its shapes
    from reasoning_rl.models import load_pretrained

    base = load_pretrained(hf_dir)
    import jax
    import orbax.checkpoint as ocp

    step_dir = run / "checkpoints" / "grpo" / "2" / "state"
    ck = ocp.StandardCheckpointer()
    meta = ck.metadata(step_dir)
    meta = getattr(meta, "item_metadata", meta)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = ck.restore(step_dir, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev),
                                             dict(meta)))
    a, b = jax.tree.leaves(base.params), jax.tree.leaves(tree["params"])
    assert [x.shape for x in a] == [x.shape for x in b]
    assert any(not np.allclose(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

    # export the GRPO stage for transformers: same logits as reasoning_rl's on the trained weights
    out = tmp_path / "export"
    p = run_here("export", str(run), str(out), "--stage", "grpo")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    ours = load_pretrained(out)
    for x, y in zip(jax.tree.leaves(ours.params), b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = np.random.default_rng(0).integers(0, 100, (2, 12))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    got = np.asarray(ours(ids, np.ones_like(ids)))
    assert np.abs(got - want).max() < 1e-4

    # the exported dir evaluated as a Hugging Face model with the run's config: the run's own held-out figures;
    # results go under ./eval_out/<its name>, never into the model dir
    monkeypatch.chdir(tmp_path)
    p = run_here("eval", str(out), "--config", str(path), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["out"] == str(Path("eval_out") / "export")
    held = json.loads((tmp_path / "eval_out" / "export" / "eval.json").read_text())["held_out"]
    for k in ("pass@1", "pass@2", "greedy_accuracy", "mean_response_tokens"):
        assert held[k] == pytest.approx(summary["grpo"][k], abs=1e-9), k
    assert not (out / "eval").exists() and not (out / "eval.json").exists()
