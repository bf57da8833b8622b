"""min-p sampling, and the sampling filters (top-k, top-p, min-p) reaching every sampler a run has: the
rollout's, the held-out evaluation's, rejection sampling's and the teacher's."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from reasoning_rl import config as C
from reasoning_rl.rollout.sampling import filter_logits
from reasoning_rl.stages.common import Runtime

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")


def kept(logits, **kw) -> list[list[bool]]:
    return (np.asarray(filter_logits(jnp.asarray(logits, jnp.float32), **kw)) > -1e29).tolist()


def test_min_p_keeps_the_tokens_at_least_min_p_times_the_most_likely():
    logits = np.log([[0.5, 0.3, 0.15, 0.05]])
    assert kept(logits, min_p=0.25) == [[True, True, True, False]]  # cut at 0.125
    assert kept(logits, min_p=0.7) == [[True, False, False, False]]  # cut at 0.35
    assert kept(logits, min_p=0.05) == [[True] * 4]
    flat = np.log([[0.26, 0.25, 0.25, 0.24]])  # a flat distribution keeps all: the cut follows the top token
    assert kept(flat, min_p=0.25) == [[True] * 4]
    assert kept(logits, min_p=0.25, top_k=2) == [[True, True, False, False]]
    assert kept(logits, min_p=0.25, top_p=0.75) == [[True, True, False, False]]


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.1), (0, 0.9, 0.05), (20, 1.0, 0.02), (50, 0.8, 0.1)])
def test_filters_keep_what_transformers_warpers_keep(top_k, top_p, min_p):
    """The same kept set as transformers' TopK -> TopP -> MinP warpers (its order) on random logits."""
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(top_k + int(100 * min_p)).standard_normal((64, 300)).astype(np.float32) * 2.5
    warpers = LogitsProcessorList(
        ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
        + [MinPLogitsWarper(min_p)])
    ref = np.isfinite(warpers(None, torch.from_numpy(logits.copy())).numpy())
    ours = np.asarray(kept(logits, top_k=top_k, top_p=top_p, min_p=min_p))
    assert ref.sum() < ref.size and (ref.sum(1) > 1).any()  # the filters bite, and leave choices
    np.testing.assert_array_equal(ours, ref)


def test_eval_sampling_takes_each_unset_value_from_the_rollout():
    cfg = C.load(TINY, ["rollout.top_p=0.9", "rollout.min_p=0.05", "rollout.temperature=0.7", "eval.top_k=5",
                        "eval.temperature=0.6"])
    assert C.eval_sampling(C.stage(cfg, "grpo")) == {"temperature": 0.6, "top_k": 5, "top_p": 0.9, "min_p": 0.05}
    cfg = C.load(TINY, ["eval.top_p=0.95", "eval.min_p=0"])
    assert C.eval_sampling(C.stage(cfg, "grpo")) == {"temperature": 1.0, "top_k": 0, "top_p": 0.95, "min_p": 0.0}


@pytest.mark.parametrize("override,needle", [
    ("rollout.min_p=1", "stages[0].rollout.min_p: must be in [0, 1)"),
    ("eval.top_p=0", "stages[0].eval.top_p: must be in (0, 1]"),
    ("eval.min_p=-0.1", "stages[0].eval.min_p: must be in [0, 1)"),
    ("stages.grpo.eval.top_k=-2", "stages[1].eval.top_k: must be >= 0"),
    ("stages.grpo.rejection.top_p=1.5", "stages[1].rejection.top_p: must be in (0, 1]"),
    ("stages.grpo.distill.min_p=2", "stages[1].distill.min_p: must be in [0, 1)"),
])
def test_bad_filters_name_the_key(override, needle):
    with pytest.raises(C.ConfigError) as e:
        C.load(TINY, [override])
    assert needle in str(e.value)


def test_held_out_eval_samples_with_the_eval_filters(tmp_path):
    """eval.top_k: 1 makes every sampled completion the greedy one (the filter reaches the evaluation's
    sampler): each problem's samples equal its greedy completion, and the result records the filter."""
    from reasoning_rl.stages.evaluate import stage_eval

    cfg = C.load(TINY, ["eval.top_k=1", "eval.num_problems=6", "eval.samples=3", "rollout.max_new_tokens=12"])
    rt = Runtime(cfg, tmp_path)
    stage = C.stage(cfg, "grpo")
    records: list[dict] = []
    out = stage_eval(rt, stage, rt.place(rt.init_params()), records=records)
    sampled = [r for r in records if not r["greedy"]]
    greedy = {r["index"]: r["completion"] for r in records if r["greedy"]}
    assert len(sampled) == 18 and len(greedy) == 6
    assert all(r["completion"] == greedy[r["index"]] for r in sampled)
    assert len(set(greedy.values())) > 1  # not one text for every prompt: the prompts differ
    assert out["top_k"] == 1 and out["pass@1"] == out["greedy_accuracy"]
    cfg = C.load(TINY, ["eval.num_problems=6", "eval.samples=3", "rollout.max_new_tokens=12"])
    records = []
    stage_eval(Runtime(cfg, tmp_path / "plain"), C.stage(cfg, "grpo"), rt.place(rt.init_params()), records=records)
    assert any(r["completion"] != greedy[r["index"]] for r in records if not r["greedy"])  # without it: not


def test_rejection_sampling_draws_with_its_filters(tmp_path):
    """rejection.top_k: 1 draws one completion per prompt however many samples: all but one are duplicates."""
    from reasoning_rl.stages.rejection import SampleSpec, collect

    cfg = C.load(TINY, ["rollout.max_new_tokens=12"])
    rt = Runtime(cfg, tmp_path)
    stage = C.stage(cfg, "grpo")
    params = rt.place(rt.init_params())
    for top_k, name in ((1, "greedy_like"), (0, "free")):
        spec = SampleSpec(4, 3, 3, 1.0, 12, 16, require_correct=False, require_format=False, top_k=top_k)
        kept, stats = collect(rt, stage, params, spec, name, seed=5)
        if top_k:
            assert len(kept) == 4 and stats["duplicates"] == 8
        else:
            assert len(kept) > 4


def test_the_eval_table_names_the_filters():
    from reasoning_rl.report import format_eval

    held = {"num_problems": 4, "samples_per_problem": 2, "temperature": 0.6, "pass@1": 0.5, "greedy_accuracy": 0.5}
    text = format_eval({"stage": "grpo", "target": "run", "held_out": {**held, "top_p": 0.95, "top_k": 20}})
    assert "4 problems x 2 samples at T=0.6, top-k 20, top-p 0.95\n" in text
    assert "samples at T=0.6\n" in format_eval({"stage": "grpo", "target": "run", "held_out": held})
