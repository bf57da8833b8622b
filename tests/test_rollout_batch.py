"""What a GRPO stage's rollout hands the update: the batch cut to its update width, and DAPO's overlong
filtering (cut-off completions out of the loss, their rewards still in the advantages)."""

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
import pytest

from reasoning_rl import config as C
from reasoning_rl.data.batching import truncated_rows
from reasoning_rl.data.loader import ExampleStream
from reasoning_rl.rollout.sampler import sample_impl
from reasoning_rl.stages.common import Runtime
from reasoning_rl.stages.grpo import Rollout
from reasoning_rl.stages.sources import StageData

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")


def test_truncated_rows_are_the_ones_that_reached_the_budget_without_a_stop_token():
    tokens = np.array([[5, 6, 1, 0], [5, 6, 7, 8], [5, 6, 7, 1], [5, 9, 0, 0]], np.int32)
    lengths = np.array([3, 4, 4, 2])
    assert truncated_rows(tokens, lengths, 4, (1, 9)).tolist() == [False, True, False, False]
    from reasoning_rl.rollout import stops
    table = stops.build(["fg"], [chr(ord("a") + i) for i in range(10)])  # token i reads as the i-th letter
    tokens[1] = [5, 6, 5, 6]  # "fgfg": holds the string
    tokens[2] = [7, 5, 5, 6]  # "hffg": a row that reached the budget on the string is not cut off
    assert truncated_rows(tokens, lengths, 4, (1, 9), table).tolist() == [False, False, False, False]
    tokens[2] = [7, 5, 5, 8]
    assert truncated_rows(tokens, lengths, 4, (9,), table).tolist() == [False, False, True, False]


def collect(tmp_path, stop_every: int, *overrides: str):
    """One rollout batch of the tiny config's first prompts at random init, with every ``stop_every``-th token
    id ending a completion (a model that stops often), a budget of 12 tokens and 3 width buckets:
    (batch, metrics, the rollout, completion lengths, which were cut off)."""
    cfg = C.load(TINY, overrides=["rollout.max_new_tokens=12", "rollout.width_buckets=3", *overrides])
    rt = Runtime(cfg, tmp_path)
    stage = cfg.stages[1]
    data = StageData(rt, stage)
    rollout = Rollout(rt, stage, ExampleStream(data.fetch, stage.rollout.prompts_per_step), data)
    rollout.sp = dataclasses.replace(rollout.sp, stop_ids=tuple(range(0, rt.tok.vocab_size, stop_every)))
    rollout.sample = rt.jit_fn(functools.partial(sample_impl, rt.mdef, rollout.sp))
    batch, metrics = rollout._collect(rt.place(rt.init_params()), jax.random.key(3))
    n = batch["mask"].shape[1]
    completions = np.pad(batch["tokens"][:, -n:], ((0, 0), (0, 12 - n)))
    lengths = batch["valid"][:, -n:].sum(axis=1)
    return batch, metrics, rollout, lengths, truncated_rows(completions, lengths, 12, rollout.sp.stop_ids)


def test_the_batch_is_cut_to_its_update_width(tmp_path):
    batch, metrics, _, lengths, cut = collect(tmp_path, 2)
    assert lengths.max() < 8 and not cut.any()
    assert metrics["update_width"] == 8 and metrics["truncated_frac"] == 0
    assert batch["mask"].shape[1] == 8 and batch["old_logp"].shape[1] == 8
    np.testing.assert_array_equal(batch["mask"].sum(axis=1), lengths)


def test_overlong_filter_leaves_cut_off_completions_out_of_the_loss(tmp_path):
    plain, pm, _, lengths, cut = collect(tmp_path / "plain", 8)
    filt, fm, rollout, _, _ = collect(tmp_path / "filter", 8, "algorithm.overlong.filter=true")
    assert 0 < cut.sum() < len(cut)  # both kinds in the batch
    assert fm["truncated_frac"] == pm["truncated_frac"] == pytest.approx(cut.mean())
    np.testing.assert_array_equal(plain["mask"].sum(axis=1), lengths)
    np.testing.assert_array_equal(filt["mask"], plain["mask"] & ~cut[:, None])
    # the same samples, advantages and tokens: only the loss mask differs
    for k in ("tokens", "valid", "adv", "rewards", "sampler_logp"):
        np.testing.assert_array_equal(filt[k], plain[k], err_msg=k)
    g = rollout.g
    assert [s["truncated"] for s in rollout.samples] == [bool(cut[s["prompt_index"] * g + s["sample"]])
                                                        for s in rollout.samples]
