"""Jitted KV-cache group sampler.

Each prompt is prefilled once; its cache and last-position logits are then fanned out to the G samples of
its group (no recomputation of the shared prompt). Decoding runs inside ``lax.while_loop`` over a
preallocated fixed-shape cache and exits as soon as every row has stopped (EOS, a stop token such as
``</answer>``, or the token budget). Prompts are left-padded, so every row writes decode step ``t`` into
cache slot ``Tp + t`` and per-row positions continue from each prompt's true length.

Shapes are fixed per (prompts, prompt length, group, budget); callers bucket prompt lengths so a run
compiles a handful of programs, not one per batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reasoning_rl.models import KVCache, ModelDef, positions_from_valid
from reasoning_rl.sharding import constrain

from .sampling import select


@jax.tree_util.register_dataclass
@dataclass
class SampleOutput:
    """Row ``i`` is sample ``i % G`` of prompt ``i // G``.

    tokens [R, N] (pad after a row stops), mask [R, N] (True for generated tokens, the stop token included),
    logprobs [R, N] (0 where mask is False), lengths [R]; with ``record_routes`` (MoE models) ``routes``
    [R, Tp + N, L_moe, k]: the experts each token of ``[prompt | completion]`` was computed with, for the
    trainer to replay.
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    routes: jax.Array | None = None


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    group_size: int = 1
    record_routes: bool = False  # MoE routing replay: return the experts every token was routed to


CACHE_AXES = ("layers", "cache_batch", "act_kv_heads", "cache_seq", None)  # k/v [L, B, K, S, D]


def shard_cache(cache: KVCache) -> KVCache:
    """Lay the cache out by the logical rules: rows over the batch axes, KV heads over ``tensor``."""
    return KVCache(constrain(cache.k, CACHE_AXES), constrain(cache.v, CACHE_AXES),
                   constrain(cache.valid, ("cache_batch", "cache_seq")))


def _fan_out(cache: KVCache, g: int) -> KVCache:
    if g > 1:
        cache = KVCache(jnp.repeat(cache.k, g, axis=1), jnp.repeat(cache.v, g, axis=1),
                        jnp.repeat(cache.valid, g, axis=0))
    return shard_cache(cache)


def sample_impl(mdef: ModelDef, sp: SamplingParams, params: dict, prompt_tokens: jax.Array,
                prompt_valid: jax.Array, rng: jax.Array) -> SampleOutput:
    """The traced sampler (pure). prompt_tokens/valid: [P, Tp], left-padded."""
    model = mdef.bind(params)
    p, tp = prompt_tokens.shape
    g, n = sp.group_size, sp.max_new_tokens
    rows = p * g

    # Prefill once per prompt.
    cache = KVCache.empty(mdef.cfg, p, tp + n)
    positions = positions_from_valid(prompt_valid)
    record = sp.record_routes and mdef.cfg.moe is not None
    if record:
        h, cache, aux = model.hidden(prompt_tokens, positions, prompt_valid, cache, 0, return_aux=True)
        prompt_routes = jnp.repeat(aux["routes"], g, axis=0)  # [R, Tp, L, k]
        routes = jnp.zeros((rows, n) + prompt_routes.shape[2:], jnp.int32)
    else:
        h, cache = model.hidden(prompt_tokens, positions, prompt_valid, cache, 0)
        routes = jnp.zeros((), jnp.int32)
    logits = model.logits(h[:, -1])  # [P, V]: left padding puts every prompt's last token at Tp-1

    # Fan out to the group.
    cache = _fan_out(cache, g)
    logits = jnp.repeat(logits, g, axis=0)
    next_pos = jnp.repeat(jnp.sum(prompt_valid, axis=1).astype(jnp.int32), g)
    stop = jnp.asarray(sp.stop_ids if sp.stop_ids else (-1,), jnp.int32)

    def cond(state):
        t, done = state[0], state[7]
        return (t < n) & ~jnp.all(done)

    def body(state):
        t, cache, logits, toks, logps, mask, pos, done, rng, routes = state
        rng, sub = jax.random.split(rng)
        tok, lp = select(sub, logits, temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p,
                         greedy=sp.greedy)
        live = ~done
        tok = jnp.where(live, tok, sp.pad_id)
        toks = toks.at[:, t].set(tok)
        logps = logps.at[:, t].set(jnp.where(live, lp, 0.0))
        mask = mask.at[:, t].set(live)
        done = done | jnp.isin(tok, stop) | (t + 1 >= n)

        # Always run the next forward (a lax.cond here makes XLA copy the whole cache every step); the
        # iteration after the last stop computes one unused step.
        if record:  # the forward of the token sampled at step t: sequence index Tp + t
            h, cache, aux = model.hidden(tok[:, None], pos[:, None], live[:, None], cache, tp + t, return_aux=True)
            routes = routes.at[:, t].set(aux["routes"][:, 0])
        else:
            h, cache = model.hidden(tok[:, None], pos[:, None], live[:, None], cache, tp + t)
        logits = model.logits(h[:, 0])
        return t + 1, cache, logits, toks, logps, mask, pos + 1, done, rng, routes

    init = (jnp.int32(0), cache, logits, jnp.full((rows, n), sp.pad_id, jnp.int32),
            jnp.zeros((rows, n), jnp.float32), jnp.zeros((rows, n), bool), next_pos, jnp.zeros((rows,), bool), rng,
            routes)
    _, _, _, toks, logps, mask, _, _, _, routes = jax.lax.while_loop(cond, body, init)
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    return SampleOutput(toks, mask, logps, lengths,
                        jnp.concatenate([prompt_routes, routes], axis=1) if record else None)


@functools.lru_cache(maxsize=32)
def _compiled(mdef: ModelDef, sp: SamplingParams):
    return jax.jit(functools.partial(sample_impl, mdef, sp))


def sample(mdef: ModelDef, params: dict, prompt_tokens, prompt_valid, rng: jax.Array, sp: SamplingParams) -> SampleOutput:
    """Jitted sampling (one compiled program per ModelDef, SamplingParams and input shape)."""
    return _compiled(mdef, sp)(params, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_valid, bool), rng)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, bucket: int = 8, min_len: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to a length rounded up to ``bucket`` (fewer distinct shapes → fewer compiles)."""
    longest = max([len(s) for s in seqs] + [min_len, 1])
    t = -(-longest // bucket) * bucket
    toks = np.full((len(seqs), t), pad_id, np.int32)
    valid = np.zeros((len(seqs), t), bool)
    for i, s in enumerate(seqs):
        if len(s):
            toks[i, t - len(s):] = s
            valid[i, t - len(s):] = True
    return toks, valid


def generate(mdef: ModelDef, params: dict, prompt_tokens, prompt_valid, *, max_new_tokens: int, rng_seed: int = 0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_ids: Sequence[int] = (), pad_id: int = 0, group_size: int = 1) -> SampleOutput:
    """Convenience wrapper: numpy in, SampleOutput out."""
    sp = SamplingParams(max_new_tokens, float(temperature), int(top_k), float(top_p), bool(greedy),
                        tuple(int(s) for s in stop_ids), int(pad_id), int(group_size))
    return sample(mdef, params, prompt_tokens, prompt_valid, jax.random.key(rng_seed), sp)
