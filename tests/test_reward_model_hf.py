"""Reward models against transformers' ``*ForSequenceClassification`` (one label) on tiny random checkpoints:
scores with left and right padding, save -> transformers load -> same scores, and what a bad checkpoint says.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reasoning_rl.models import ConfigError, load_reward_model

V, PAD = 96, 0
COMMON = {"vocab_size": V, "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128, "num_labels": 1,
          "pad_token_id": PAD}
CASES = {
    "llama": ("LlamaConfig", "LlamaForSequenceClassification", {"head_dim": 16}),
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForSequenceClassification", {"head_dim": 16}),
    "gemma3": ("Gemma3TextConfig", "Gemma3TextForSequenceClassification",
               {"head_dim": 16, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}),
}
LENS = [12, 7, 3]


def build(name: str, seed: int = 0):
    cfg_cls, model_cls, over = CASES[name]
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **over})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # make norms and biases visible (their init is ones / zeros)
        for n, p in model.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def batch(side: str):
    rng = np.random.RandomState(1)
    t = max(LENS)
    ids = np.full((len(LENS), t), PAD, np.int64)
    mask = np.zeros((len(LENS), t), np.int64)
    for i, n in enumerate(LENS):
        row = rng.randint(1, V, n)
        sl = slice(t - n, t) if side == "left" else slice(0, n)
        ids[i, sl], mask[i, sl] = row, 1
    return ids, mask


def reference(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits[:, 0].float().numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            model = build(name)
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            cache[name] = (model, path)
        return cache[name]

    return get


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", list(CASES))
def test_scores_match_transformers(saved, name, side):
    ref, path = saved(name)
    rm = load_reward_model(path)
    ids, mask = batch(side)
    ours = np.asarray(rm(ids, mask))
    assert ours.shape == (len(LENS),) and ours.dtype == np.float32
    want = reference(ref, ids, mask)
    assert np.abs(ours - want).max() <= 1e-4, (ours, want)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_save_loads_in_transformers_with_equal_scores(saved, tmp_path, name):
    ref, path = saved(name)
    rm = load_reward_model(path)
    rm.save_pretrained(tmp_path)
    again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == CASES[name][1] and again.config.num_labels == 1
    want, got = ref.state_dict(), again.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    for side in ("left", "right"):
        ids, mask = batch(side)
        np.testing.assert_array_equal(reference(again, ids, mask), reference(ref, ids, mask))
        np.testing.assert_allclose(np.asarray(load_reward_model(tmp_path)(ids, mask)), reference(ref, ids, mask),
                                   atol=1e-4)


def test_hand_built_reward_model_saves_for_transformers(tmp_path):
    """A reward model on a config's own decoder (what a reward_model stage trains) exports as Qwen2."""
    import jax
    from reasoning_rl.models import TransformerConfig, save_reward_model
    from reasoning_rl.models.reward import reward_def, scores
    from reasoning_rl.models.transformer import create

    rdef = reward_def(TransformerConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                        head_dim=16, ffn_dim=48))
    _, bb = create(rdef.backbone.cfg, 3)
    params = {"backbone": bb, "score": rdef.init_score(5)}
    save_reward_model(rdef, params, tmp_path, pad_token_id=PAD)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == "Qwen2ForSequenceClassification"
    ids, mask = batch("right")
    ours = np.asarray(jax.jit(lambda p: scores(rdef, p, ids, mask.astype(bool)))(params))
    np.testing.assert_allclose(ours, reference(ref, ids, mask), atol=1e-4)


def test_more_than_one_label_is_refused(saved, tmp_path):
    _, path = saved("llama")
    conf = json.loads((path / "config.json").read_text())
    conf["id2label"] = {"0": "a", "1": "b"}
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="2 labels; a reward model has one"):
        load_reward_model(tmp_path)


def test_which_families_transformers_has_no_classifier_for_is_known():
    """``NOT_IN_TRANSFORMERS`` is exactly the classes transformers lacks among the architectures a reward model
    of each family is written as (a transformers release that adds one shows here)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from reasoning_rl.models.reward import NOT_IN_TRANSFORMERS, reward_hf_config
    from test_hf_io import FAMILY_CONFIGS

    written = {reward_hf_config(cfg)["architectures"][0] for cfg in FAMILY_CONFIGS.values()}
    assert {a for a in written if not hasattr(transformers, a)} == NOT_IN_TRANSFORMERS


def test_a_reward_model_transformers_cannot_load_is_written_and_says_so(tmp_path, caplog):
    """Granite has no sequence-classification class in transformers: the export is written all the same, says
    which class is missing, and loads back here with the same scores."""
    import logging
    import sys
    from pathlib import Path

    import jax
    from reasoning_rl.models import save_reward_model
    from reasoning_rl.models.reward import reward_def, scores
    from reasoning_rl.models.transformer import create

    sys.path.insert(0, str(Path(__file__).parent))
    from test_hf_io import FAMILY_CONFIGS

    rdef = reward_def(FAMILY_CONFIGS["granite"])
    _, bb = create(rdef.backbone.cfg, 3)
    params = {"backbone": bb, "score": rdef.init_score(5)}
    with caplog.at_level(logging.WARNING, logger="reasoning_rl"):
        save_reward_model(rdef, params, tmp_path, pad_token_id=PAD)
    assert "transformers has no GraniteForSequenceClassification class" in caplog.text
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["GraniteForSequenceClassification"]
    ids, mask = batch("right")
    ids = ids % FAMILY_CONFIGS["granite"].vocab_size
    want = np.asarray(jax.jit(lambda p: scores(rdef, p, ids, mask.astype(bool)))(params))
    np.testing.assert_allclose(np.asarray(load_reward_model(tmp_path)(ids, mask)), want, atol=1e-5)
    caplog.clear()
    rdef = reward_def(FAMILY_CONFIGS["llama"])  # one transformers has: no warning
    _, bb = create(rdef.backbone.cfg, 3)
    with caplog.at_level(logging.WARNING, logger="reasoning_rl"):
        save_reward_model(rdef, {"backbone": bb, "score": rdef.init_score(5)}, tmp_path / "llama", pad_token_id=PAD)
    assert "transformers has no" not in caplog.text
