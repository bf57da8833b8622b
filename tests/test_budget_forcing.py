"""Budget-forced sampling: thinking is cut at the budget (then </think><answer> is written), held up to a
floor with ``extend``, and the reported counts match the tokens."""

import jax
import numpy as np
import pytest
from helpers import prompts, tiny_model

from reasoning_rl.rollout.budget import BudgetParams, budget_sample
from reasoning_rl.rollout.sampler import left_pad

OPEN, CLOSE, ANSWER, STOP, CONT = 4, 5, 6, 7, 8
BUDGETS = [0, 1, 3, 6, 12]


def run(extend: bool, greedy: bool, seed: int = 0):
    mdef, params = tiny_model(seed=seed)
    pt, pv = left_pad(prompts(3, seed=seed), 0)
    samples = 2
    g = len(BUDGETS) * samples
    bp = BudgetParams(max(BUDGETS) + 8, OPEN, CLOSE, ANSWER, CONT, (STOP,), 0, 1.0, greedy, g)
    rows = np.tile(np.repeat(np.asarray(BUDGETS, np.int32), samples), len(pt))
    floor = rows if extend else np.zeros_like(rows)
    out = jax.device_get(budget_sample(mdef, params, pt, pv, rows, floor, jax.random.key(seed), bp))
    return out, rows


def thinking(row: np.ndarray, n: int) -> tuple[int, int | None]:
    """(thinking tokens, index of the first </think>) of a completion."""
    count = 0
    for i in range(n):
        if row[i] == CLOSE:
            return count, i
        if row[i] != OPEN:
            count += 1
    return count, None


@pytest.mark.parametrize("greedy", [True, False])
def test_thinking_never_exceeds_the_budget_and_forcing_writes_answer_tag(greedy):
    out, budgets = run(extend=False, greedy=greedy, seed=1)
    forced_any = False
    for r, b in enumerate(budgets):
        n = int(out.lengths[r])
        count, close = thinking(out.tokens[r], n)
        assert count == int(out.think_tokens[r])
        assert count <= b
        if out.forced[r]:
            forced_any = True
            assert count == b and close is not None
            assert close + 1 < n and out.tokens[r, close + 1] == ANSWER
    assert forced_any
    zero = [r for r, b in enumerate(budgets) if b == 0]
    assert all(int(out.think_tokens[r]) == 0 for r in zero)


def test_extend_holds_thinking_up_to_the_budget():
    out, budgets = run(extend=True, greedy=False, seed=2)
    for r, b in enumerate(budgets):
        n = int(out.lengths[r])
        count, close = thinking(out.tokens[r], n)
        if close is not None:  # thinking ended: exactly at the budget, never before it
            assert count == b
    assert (out.extended >= 0).all()


@pytest.mark.parametrize("strings", [False, True])
def test_an_unreached_budget_samples_what_the_sampler_samples(strings):
    """With budgets beyond the token limit and no floor nothing is forced, and the budget loop (its own
    decode loop over the sampler's growing cache windows) draws the sampler's tokens for the same keys, and
    stops at the same stop strings; with the sampler's filters (top-k, top-p, min-p) too."""
    from reasoning_rl.rollout import stops
    from reasoning_rl.rollout.sampler import SamplingParams, sample

    mdef, params = tiny_model(seed=4)
    pt, pv = left_pad(prompts(3, seed=4), 0)
    n, g = 30, 2
    table = stops.build(["ab", "cc"], [chr(ord("a") + i % 5) for i in range(40)]) if strings else None
    filters = {"top_k": 12, "top_p": 0.9, "min_p": 0.2} if strings else {}
    bp = BudgetParams(n, OPEN, CLOSE, ANSWER, CONT, (STOP,), 0, 1.0, False, g, stop_table=table, **filters)
    rows = len(pt) * g
    out = jax.device_get(budget_sample(mdef, params, pt, pv, np.full(rows, n + 1, np.int32),
                                       np.zeros(rows, np.int32), jax.random.key(3), bp))
    ref = jax.device_get(sample(mdef, params, pt, pv, jax.random.key(3),
                                SamplingParams(n, 1.0, filters.get("top_k", 0), filters.get("top_p", 1.0), False,
                                               (STOP,), 0, g, stop_table=table, min_p=filters.get("min_p", 0.0))))
    assert not out.forced.any() and not out.extended.any()
    if strings:
        assert stops.hits(table, np.asarray(out.tokens), np.asarray(out.lengths)).sum() >= 2
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_array_equal(out.tokens, ref.tokens)


def test_budget_forcing_with_a_cache_buffer_per_layer_equals_the_layer_scan():
    """``decode_layers: unroll`` (accelerators' default) forces budgets exactly as the stacked cache does."""
    import dataclasses

    from reasoning_rl.rollout.budget import budget_sample_impl

    mdef, params = tiny_model(seed=3, n_layers=3)
    pt, pv = left_pad(prompts(3, seed=3), 0)
    g = len(BUDGETS)
    bp = BudgetParams(max(BUDGETS) + 8, OPEN, CLOSE, ANSWER, CONT, (STOP,), 0, 1.0, False, g)
    rows = np.tile(np.asarray(BUDGETS, np.int32), len(pt))
    outs = []
    for mode in ("scan", "unroll"):
        m = dataclasses.replace(mdef, cfg=dataclasses.replace(mdef.cfg, decode_layers=mode))
        outs.append(jax.device_get(jax.jit(lambda p, m=m: budget_sample_impl(
            m, bp, p, pt, pv, rows, np.zeros_like(rows), jax.random.key(5)))(params)))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert outs[0].forced.any()
