"""Token selection and the log-prob definition shared by the sampler and the trainer.

Both sides score a token as ``log_softmax(logits / temperature)[token]`` over the *full* vocabulary, so the
policy ratio compares like with like. Top-k / top-p / min-p only decide which token is drawn: the recorded log-prob
is not renormalised over the truncated set (the trainer cannot reproduce a truncation that depends on the
sampler's logits cheaply, and the untruncated distribution is the policy being optimised).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reasoning_rl.models.layers.invariant import STANDARD, Elementary, fixed_order_sum

NEG_INF = -1e30


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0,
                   ops: Elementary = STANDARD) -> jax.Array:
    """log p(token) under softmax(logits / temperature); logits [..., V] float32, tokens [...] int.

    The normaliser is summed in ``fixed_order_sum``'s order, as the trainer sums it
    (``algorithms.logprobs.logprobs_entropy``): equal logits give the sampler and the trainer the same
    log-prob, whatever the shapes the two compute them in. ``ops``: the model's exp and log
    (``invariant.elementary``)."""
    s = shifted_logits(logits, temperature)
    lp = jnp.take_along_axis(s, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lp - log_normaliser(s, ops=ops)


def shifted_logits(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``logits / temperature`` in float32, less their (constant) maximum: what the softmax sums exponentiate.

    The division is written as the multiply by ``1 / temperature`` that XLA makes of a division by a constant
    in some fusions and not in others (the same logits scaled in a [B, V] and a [B, T, V] program differed in
    the last bit of 7% of their values); written out, every program has the same multiply."""
    x = logits.astype(jnp.float32)
    if isinstance(temperature, (int, float)):
        x = x if temperature == 1 else x * np.float32(1 / temperature)
    else:
        x = x * (1 / jnp.asarray(temperature, jnp.float32))
    return x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))


def log_normaliser(shifted: jax.Array, exps: jax.Array | None = None, ops: Elementary = STANDARD) -> jax.Array:
    """``log(sum(exp(shifted), -1))``, the sum in ``fixed_order_sum``'s order. ``exps``: ``exp(shifted)``
    when the caller has it (the sampler's draw weights): the same terms, not exponentiated again."""
    return ops.log(fixed_order_sum(shifted, ops.exp) if exps is None else fixed_order_sum(exps))


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> jax.Array:
    """Mask out tokens outside the top-k, outside the smallest set with cumulative prob >= top_p, and those
    less likely than ``min_p`` times the most likely token (min-p sampling, as vLLM and transformers: the cut
    scales with the model's confidence, so a flat distribution keeps many tokens and a peaked one few). The
    three filters commute with one another as they do there: each keeps the argmax, and min-p's cut is a
    ratio to the argmax's probability, which renormalising over fewer tokens does not change."""
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # keep a token if the mass strictly before it is < top_p (always keeps the argmax)
        keep_sorted = (cum - probs) < top_p
        cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    if min_p > 0.0:  # p < min_p * p_max  <=>  logit < max logit + log(min_p)
        top = jnp.max(logits, axis=-1, keepdims=True)
        logits = jnp.where(logits < top + np.float32(np.log(min_p)), NEG_INF, logits)
    return logits


def row_keys(rng: jax.Array, rows: jax.Array, steps: jax.Array) -> jax.Array:
    """One key per (row, decode step): ``fold_in(fold_in(rng, row), step)``, [B] keys for rows/steps [B]."""
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(rng, r), t))(rows, steps)


def _block(v: int) -> int:
    """Block width for the two-level draw: the smallest power of two at least sqrt(V)."""
    b = 1
    while b * b < v:
        b *= 2
    return b


def _last_nonzero(x: jax.Array) -> jax.Array:
    """Index of the last positive entry along the last axis (0 if none)."""
    n = x.shape[-1]
    return n - 1 - jnp.argmax(jnp.flip(x > 0, axis=-1), axis=-1)


def inverse_cdf(u: jax.Array, weights: jax.Array) -> jax.Array:
    """Token ``i`` with probability ``weights[i] / sum(weights)`` per row, from one uniform ``u`` [B] in [0, 1).

    The CDF is walked in two levels (block sums, then one block), so a row costs two short cumsums instead
    of one over the whole vocabulary. Against Gumbel-max this needs one random number per row instead of V
    (and no logs): on CPU the draw was most of a small model's per-token sampling time. A zero-weight token
    (filtered by top-k/top-p) is never returned: the walk stops at the first token whose cumulative weight
    exceeds the target, and rounding past the end falls back to the last positive-weight token."""
    b_, v = weights.shape
    w = _block(v)
    n = -(-v // w)
    blocks = jnp.pad(weights, ((0, 0), (0, n * w - v))).reshape(b_, n, w)
    sums = jnp.sum(blocks, axis=-1)  # [B, n]
    cum = jnp.cumsum(sums, axis=-1)
    target = u * cum[:, -1]
    blk = jnp.minimum(jnp.sum(cum <= target[:, None], axis=-1), _last_nonzero(sums))
    before = jnp.where(blk > 0, jnp.take_along_axis(cum, jnp.maximum(blk - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    inner = jnp.take_along_axis(blocks, blk[:, None, None], axis=1)[:, 0]  # [B, w]
    within = before[:, None] + jnp.cumsum(inner, axis=-1)
    j = jnp.minimum(jnp.sum(within <= target[:, None], axis=-1), _last_nonzero(inner))
    return (blk * w + j).astype(jnp.int32)


def select(rng: jax.Array, logits: jax.Array, *, temperature: float, top_k: int, top_p: float,
           greedy: bool, ops: Elementary = STANDARD, min_p: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Draw the next token per row; returns (tokens [B] int32, logprobs [B] float32).

    ``rng``: [B] keys, one per row (see ``row_keys``), so a row's draw depends only on its own key and
    logits, not on which other rows share the batch (what lets the in-flight sampler reproduce the plain
    loop exactly, and a batch split over devices or hosts sample what it would sample whole). ``ops``: the
    model's exp and log (``invariant.elementary``), as the trainer's log-probs take them."""
    logits = logits.astype(jnp.float32)
    if greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tok, token_logprobs(logits, tok, temperature, ops)
    # The shift-exp of log_softmax, written out: its exponentials are the draw's weights.
    scaled = logits / temperature
    shifted = shifted_logits(logits, temperature)
    e = ops.exp(shifted)
    weights = e
    if (top_k and top_k < logits.shape[-1]) or top_p < 1.0 or min_p > 0.0:
        weights = jnp.where(filter_logits(scaled, top_k, top_p, min_p) > NEG_INF / 2, e, 0.0)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(rng)
    tok = inverse_cdf(u, weights)
    # the log-prob's normaliser summed as the trainer sums it (``log_normaliser``)
    lp = jnp.take_along_axis(shifted, tok[:, None], axis=-1)[:, 0] - log_normaliser(shifted, e, ops)
    return tok, lp
