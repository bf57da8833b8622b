"""Budget forcing: sample with a per-row cap (and optional floor) on the number of thinking tokens.

Test-time-compute scaling asks how accuracy moves with the thinking a model is allowed. Each row carries
a budget ``B``: once it has written ``B`` thinking tokens without closing ``</think>``, the sampler writes
``</think><answer>`` as its next tokens and lets the model produce the answer up to ``</answer>`` / EOS.
With a floor (``min_think``), a ``</think>`` sampled before the floor is replaced by a continuation token
(s1's "Wait"; a ``,`` that starts another column step on the arithmetic task), so the row keeps thinking.

Thinking tokens are the generated tokens before ``</think>``, not counting ``<think>`` itself. Budgets are
per row, so one compiled program serves a whole budget sweep: prompts are fanned out to
``len(budgets) × samples`` rows. The structure (prefill once per prompt, fan out the cache, decode in a
``lax.while_loop`` over a fixed-shape cache) follows ``sampler.sample_impl``; the model code is the same.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from reasoning_rl.models import ModelDef
from reasoning_rl.models.layers import invariant

# the cache layout and its growing windows are the sampler's: prefill, fan out and grow the same way
from . import stops as stop_strings
from .sampler import DecodeForm, _fan_out, _prefill, window_cache, window_ends
from .sampling import row_keys, select
from .stops import StopTable


@dataclass(frozen=True)
class BudgetParams:
    max_new_tokens: int  # longest completion: the largest budget plus room for the answer
    think_open: int  # <think> (not counted as thinking)
    think_close: int  # </think>
    answer_open: int  # <answer>, written after a forced </think> (-1: the tokenizer has no such token)
    continuation: int  # replaces a </think> sampled below the floor
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    temperature: float = 1.0
    greedy: bool = True
    group_size: int = 1  # rows per prompt (budgets x samples)
    windows: int = 4  # decode in this many growing cache windows (as ``SamplingParams.windows``)
    stop_table: StopTable | None = None  # stop strings of several tokens (``reasoning_rl.rollout.stops``)
    top_k: int = 0  # the draw's filters, as ``SamplingParams``'
    top_p: float = 1.0
    min_p: float = 0.0


@jax.tree_util.register_dataclass
@dataclass
class BudgetOutput:
    tokens: jax.Array  # [R, N]
    lengths: jax.Array  # [R]
    think_tokens: jax.Array  # [R] thinking tokens written
    forced: jax.Array  # [R] bool: the budget cut the thinking short
    extended: jax.Array  # [R] int: </think> tokens suppressed by the floor


def budget_sample_impl(mdef: ModelDef, bp: BudgetParams, params: dict, prompt_tokens: jax.Array,
                       prompt_valid: jax.Array, budgets: jax.Array, min_think: jax.Array,
                       rng: jax.Array) -> BudgetOutput:
    """prompt_tokens/valid [P, Tp] (left-padded); budgets/min_think [P * G] per row (row i: prompt i // G)."""
    model = mdef.bind(params)
    p, tp = prompt_tokens.shape
    g, n = bp.group_size, bp.max_new_tokens
    rows = p * g

    form = DecodeForm.of(mdef.cfg, window_ends(tp, n, bp.windows))  # as the sampler's plain loop
    ends = form.ends
    cache, logits, _ = _prefill(model, prompt_tokens, prompt_valid, ends[0])
    logits = jnp.repeat(logits, g, axis=0)
    cache = form.cache(_fan_out(cache, g), model.cfg)
    layer_states = form.layer_states(model)
    row_ids = jnp.arange(rows, dtype=jnp.int32)
    pos = jnp.repeat(jnp.sum(prompt_valid, axis=1).astype(jnp.int32), g)
    stop = jnp.asarray(bp.stop_ids if bp.stop_ids else (-1,), jnp.int32)
    table = None if bp.stop_table is None else jnp.asarray(bp.stop_table.table)
    zeros_i = jnp.zeros((rows,), jnp.int32)
    zeros_b = jnp.zeros((rows,), bool)

    def cond(s, limit):
        return (s["t"] < limit) & ~jnp.all(s["done"])

    def body(s):
        keys = row_keys(rng, row_ids, jnp.full((rows,), s["t"]))  # per-row keys, as in the sampler
        tok, _ = select(keys, s["logits"], temperature=bp.temperature, top_k=bp.top_k, top_p=bp.top_p,
                        min_p=bp.min_p, greedy=bp.greedy,
                        ops=invariant.elementary(mdef.cfg.batch_invariant))  # draws as the sampler draws
        thinking = ~s["closed"]
        # floor: an early </think> becomes the continuation token
        early = thinking & (tok == bp.think_close) & (s["count"] < min_think)
        tok = jnp.where(early, bp.continuation, tok)
        # cap: at the budget, </think> is written instead of another thinking token (<think> may still open)
        force = thinking & (s["count"] >= budgets) & (tok != bp.think_open)
        tok = jnp.where(force, bp.think_close, tok)
        tok = jnp.where(s["pending"], bp.answer_open, tok)
        live = ~s["done"]
        tok = jnp.where(live, tok, bp.pad_id)
        counted = live & thinking & (tok != bp.think_open) & (tok != bp.think_close)
        done = s["done"] | (live & jnp.isin(tok, stop)) | (s["t"] + 1 >= n)
        sst = s["sst"]
        if table is not None:
            sst, hit = stop_strings.step(table, sst, tok, live)
            done = done | hit

        # Always run the forward (as the sampler does: a lax.cond around it makes XLA copy the cache every step).
        hh, cache = model.hidden(tok[:, None], s["pos"][:, None], live[:, None], s["cache"], tp + s["t"],
                                 layer_states=layer_states)
        logits = model.logits(hh[:, 0])
        return {"t": s["t"] + 1, "cache": cache, "logits": logits, "toks": s["toks"].at[:, s["t"]].set(tok),
                "mask": s["mask"].at[:, s["t"]].set(live), "pos": s["pos"] + 1, "done": done,
                "count": s["count"] + counted.astype(jnp.int32),
                "closed": s["closed"] | (live & (tok == bp.think_close)),
                "pending": live & force & (bp.answer_open >= 0), "forced": s["forced"] | (live & force),
                "extended": s["extended"] + (live & early).astype(jnp.int32), "sst": sst}

    init = {"t": jnp.int32(0), "cache": cache, "logits": logits,
            "toks": jnp.full((rows, n), bp.pad_id, jnp.int32), "mask": jnp.zeros((rows, n), bool), "pos": pos,
            "done": zeros_b, "count": zeros_i, "closed": zeros_b, "pending": zeros_b,
            "forced": zeros_b, "extended": zeros_i, "sst": zeros_i}
    s = init
    for end in ends:  # the sampler's growing windows: the cache holds exactly the slots attended
        s = jax.lax.while_loop(functools.partial(cond, limit=end - tp), body,
                               {**s, "cache": window_cache(s["cache"], end)})
    lengths = jnp.sum(s["mask"], axis=1).astype(jnp.int32)
    return BudgetOutput(s["toks"], lengths, s["count"], s["forced"], s["extended"])


@functools.lru_cache(maxsize=8)
def _compiled(mdef: ModelDef, bp: BudgetParams):
    return jax.jit(functools.partial(budget_sample_impl, mdef, bp),
                   compiler_options=invariant.compiler_options(mdef.cfg.batch_invariant))


def budget_sample(mdef: ModelDef, params: dict, prompt_tokens, prompt_valid, budgets, min_think, rng: jax.Array,
                  bp: BudgetParams) -> BudgetOutput:
    """Jitted budget-forced sampling (one program per ModelDef, BudgetParams and input shape)."""
    return _compiled(mdef, bp)(params, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_valid, bool),
                               jnp.asarray(budgets, jnp.int32), jnp.asarray(min_think, jnp.int32), rng)
