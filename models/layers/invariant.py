"""Batch-invariant arithmetic (``model.batch_invariant``): a row's numbers do not depend on the call's shape.

Why: the sampler scores a token in a decode step (one token per sequence, B rows, keys in a bucketed cache)
and the trainer rescores it in a forward over whole rows (B x T rows, causal blocks or a shared prompt
prefix). The mathematics is the same, but backends choose kernels, tilings and summation orders by the
shape of each call: on XLA:CPU a float32 [2, 512] x [512, 1536] product differs from the same rows inside a
64-row product in 91% of its outputs, and attention sums over a different number of keys. The last-bit
differences then grow through the layers into a sampler/trainer log-prob gap (1.6e-5 in float32 on the
trained quickstart model, up to 4e-2 in bf16 on an H200). In this mode every operation whose rounding
depends on the shape is replaced by one whose order the program fixes, so equal tokens get equal log-probs,
bit for bit, in the sampler and the trainer:

- matrix products (``matmul``) run over fixed blocks of ``ROWS`` rows (the last padded), one block at a time
  in a loop: every block is the same product whatever the row count, and a row's result does not depend on
  the other rows of its block (checked on XLA:CPU; on GPUs a fixed shape gets a fixed kernel once XLA's
  autotuning is fixed, see ``compiler_options``);
- attention (``attention``) takes its scores as elementwise products summed over the head dimension in
  ``fixed_order_sum``'s order, and sums keys in chunks of ``KEYS`` cache slots counted from slot 0, each
  chunk in a fixed tree and the chunks left to right: keys past a query's last valid one add exact zeros
  (``x + 0 == x``), so a one-token decode over a padded cache window and a forward over the whole row add the
  same terms in the same order;
- RMSNorm's mean and the softmax normaliser use ``fixed_order_sum``;
- exponentials and logarithms (softmax, sigmoid, tanh, log-softmax: ``elementary``) are computed by ``exp``
  and ``log`` from plain multiplies and adds: XLA:CPU's own ``exp`` gives another last bit for the same input
  in another fusion or loop shape (the attention weights of a decode step and a forward differed in 1 of ~20
  elements);
- XLA may not keep values in a wider type than the program says (``compiler_options``): fused differently in
  the two programs, a skipped bf16 rounding is a difference.

Gradients are the standard arithmetic's (custom VJPs of ``matmul`` and ``attention``, the true derivatives
of ``exp`` and ``log``): only forward values need to match, and differentiating the blocked and elementwise
forms was ~15x slower. The price is forward speed: products in a loop of row blocks (a decode step's rows
padded to ``ROWS``) and attention without matrix units. It is the mode for runs where the behaviour
log-probs must be the policy's own (off-policy corrections, asynchronous RL, checking a sampler), not for
raw throughput.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FOLD = 16  # terms added per pass of ``fixed_order_sum``
ROWS = 64  # rows per block of ``matmul``
KEYS = 16  # cache slots per chunk of ``attention``'s key sums
NEG_INF = -1e30


def compiler_options(batch_invariant: bool = True) -> dict:
    """XLA options every program of a batch-invariant model compiles with (the sampler's and the trainer's;
    ``{}`` when ``batch_invariant`` is off):

    - no excess precision: a bf16 value is rounded where the program rounds it, however the ops are fused;
    - on CPU, XLA's own fusion emitters only (``cpu_own_emitters``): the YNNPACK kernels XLA hands some
      small fusions to do not contract ``a * b + c`` into a fused multiply-add where XLA's own loops do, so
      the same expression had two roundings in two programs (the temperature-scaled, shifted logits of a
      decode step against the trainer's: 18% of values); and its MLIR fusion emitters, the default, kept
      whatever ``XLA_FLAGS`` says (the older elemental emitter contracts other expressions: gaps of 2-5e-7);
    - on GPUs, default GEMM configurations instead of timed autotuning (which may pick another kernel for
      the same shape in another program or process)."""
    if not batch_invariant:
        return {}
    opts = {"xla_allow_excess_precision": False}
    if jax.default_backend() == "cpu":
        opts.update(cpu_own_emitters())
        opts.update(_cpu_option("xla_cpu_use_fusion_emitters", True))
    elif jax.default_backend() == "gpu":
        opts["xla_gpu_autotune_level"] = 0
    return opts


@functools.cache
def _cpu_option(name: str, value) -> dict:
    """``{name: value}`` where this XLA:CPU knows the option, else ``{}`` (its default)."""
    try:
        jax.jit(lambda x: x @ x, compiler_options={name: value}).lower(jnp.ones((2, 2))).compile()
    except Exception:  # an XLA without the option
        return {}
    return {name: value}


def cpu_own_emitters() -> dict:
    """The XLA:CPU option that turns off its YNNPACK fusions, where this XLA knows it (else ``{}``)."""
    return _cpu_option("xla_cpu_experimental_ynn_fusion_type", "")


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # ln 2 in two parts (Cody-Waite): n * _LN2_HI is exact
_LN2_LO = np.float32(1.428606765330187e-06)
_TAYLOR = tuple(np.float32(1 / c) for c in (720, 120, 24, 6, 2, 1, 1))


@jax.custom_jvp
def exp(x: jax.Array) -> jax.Array:
    """float32 ``e**x`` from IEEE multiplies and adds only (within 1.3 ulp of the exact value): the same
    bits for the same input in any program, fusion or vector width. ``x = n ln2 + r`` with |r| <= ln2 / 2,
    ``e**r`` by its Taylor polynomial to r**7 (truncation < 0.1 ulp), ``2**n`` written into the exponent bits.
    Below -87 the result is 0 (a masked score's weight is exactly zero); above 88.7, inf."""
    x = x.astype(jnp.float32)
    n = jnp.round(jnp.clip(x, -126 / _LOG2E, 127 / _LOG2E) * _LOG2E)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = np.float32(1 / 5040)
    for c in _TAYLOR:
        p = p * r + c
    two_n = jax.lax.bitcast_convert_type((n.astype(jnp.int32) + 127) << 23, jnp.float32)
    out = jnp.where(x < -87, np.float32(0), p * two_n)
    return jnp.where(x > np.float32(88.7), np.float32(np.inf), out)


@exp.defjvp
def _exp_jvp(primals, tangents):  # the derivative of e**x, not of the bit manipulation computing it
    y = exp(primals[0])
    return y, y * tangents[0]


_SQRT2 = np.float32(np.sqrt(2))
_ODD = tuple(np.float32(1 / c) for c in (11, 9, 7, 5, 3))


@jax.custom_jvp
def log(x: jax.Array) -> jax.Array:
    """float32 natural log of positive normal ``x`` from IEEE operations only (within ~2 ulp), the same bits
    in any program: ``x = 2**k m`` with m in [sqrt(1/2), sqrt(2)), ``log m = 2 atanh(s)`` with
    ``s = (m - 1) / (m + 1)`` (|s| <= 0.172) by its odd series to s**11."""
    x = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    k = (bits >> 23) - 127
    m = jax.lax.bitcast_convert_type((bits & 0x7FFFFF) | 0x3F800000, jnp.float32)  # [1, 2)
    big = m > _SQRT2
    m = jnp.where(big, m * np.float32(0.5), m)
    k = jnp.where(big, k + 1, k).astype(jnp.float32)
    s = (m - 1) / (m + 1)
    s2 = s * s
    p = _ODD[0]
    for c in _ODD[1:]:
        p = p * s2 + c
    log_m = 2 * s + 2 * s * (s2 * p)
    out = k * _LN2_HI + (log_m + k * _LN2_LO)
    return jnp.where(x > 0, out, jnp.where(x == 0, -np.inf, np.nan)).astype(jnp.float32)


@log.defjvp
def _log_jvp(primals, tangents):  # 1 / x: the exponent and mantissa are read through bitcasts, which have none
    (x,), (dx,) = primals, tangents
    return log(x), dx / x.astype(jnp.float32)


class Elementary(NamedTuple):
    """The exponential and logarithm a model's softmaxes take (``elementary``)."""

    exp: Callable
    log: Callable


STANDARD = Elementary(jnp.exp, jnp.log)
FIXED = Elementary(exp, log)


def elementary(batch_invariant: bool) -> Elementary:
    """``FIXED`` (this module's ``exp`` and ``log``) in batch-invariant mode, else ``jax.numpy``'s."""
    return FIXED if batch_invariant else STANDARD


def sigmoid(x: jax.Array) -> jax.Array:
    """float32 ``1 / (1 + e**-x)`` through ``exp``."""
    return 1 / (1 + exp(-x.astype(jnp.float32)))


def tanh(x: jax.Array) -> jax.Array:
    """float32 ``tanh`` through ``exp``: ``1 - 2 / (e**2|x| + 1)``, signed. Its error is absolute, within
    ~1.2e-7 (the cancellation near 0), and every program gets the same bits."""
    a = jnp.abs(x.astype(jnp.float32))
    t = 1 - 2 / (exp(2 * a) + 1)
    return jnp.where(x < 0, -t, t)


def fixed_order_sum(x: jax.Array, f=None) -> jax.Array:
    """``sum(f(x), axis=-1)`` added up in an order the program fixes, not the backend.

    XLA:CPU reduces with more than one kernel (YNNPACK's or its own loops), chosen by the shape and the
    fusion around the reduction, and their float32 roundings differ: the same row of logits summed as part
    of a [16, 16, V] chunk and of [16, 256, V] whole logits differed in the last bit (2e-6 in a log-prob of
    -11). Here the row is cut into ``FOLD`` contiguous parts that are added pairwise, elementwise (XLA never
    reassociates float adds), and again until one value is left. ``f`` is applied to each part of the first
    pass, so XLA fuses it into that pass instead of materialising ``f(x)``, and the first pass writes only
    1/FOLD of ``x``."""
    while x.shape[-1] > 1 or f is not None:
        n = x.shape[-1]
        w = -(-n // FOLD)
        g = f or (lambda a: a)
        parts = [g(x[..., i:i + w]) for i in range(0, n, w)]
        parts = [jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, w - a.shape[-1])]) for a in parts]  # exact zeros
        f = None
        while len(parts) > 1:
            pairs = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
            parts = pairs + parts[len(pairs) * 2:]
        x = parts[0]
    return x[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, preferred_element_type=None) -> jax.Array:
    """``x @ w`` for x [..., K] and w [K, N], computed over blocks of ``ROWS`` rows of x (flattened), one
    after another: every block is the same [ROWS, K] x [K, N] product, so a row gets the same result in a
    one-token decode step and in a forward over thousands of rows.

    The gradient is the plain product's (``_plain_matmul``): only forward values need to be the same in
    the sampler and the trainer, and the backward of a loop of blocks is slower."""
    return _blocked_matmul(x, w, preferred_element_type)


def matmul_for(batch_invariant: bool):
    """The matrix product a model's projections take: ``matmul`` in batch-invariant mode, else ``jnp.matmul``
    (as ``elementary`` picks the exponential)."""
    return matmul if batch_invariant else jnp.matmul


def _plain_matmul(x, w, preferred_element_type=None):
    return jnp.matmul(x, w, preferred_element_type=preferred_element_type)


matmul.defvjp(lambda x, w, pet: (_blocked_matmul(x, w, pet), (x, w)),
              lambda pet, res, g: jax.vjp(functools.partial(_plain_matmul, preferred_element_type=pet), *res)[1](g))


def _blocked_matmul(x, w, preferred_element_type):
    lead, k = x.shape[:-1], x.shape[-1]
    n = w.shape[-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    pad = -m % ROWS
    blocks = jnp.pad(x2, ((0, pad), (0, 0))).reshape(-1, ROWS, k)

    def block(b):
        return jax.lax.dot_general(b, w, (((1,), (0,)), ((), ())), preferred_element_type=preferred_element_type)

    # The barrier keeps XLA from moving a scalar factor of the result (a temperature, a LoRA scale) into the
    # smaller operand, which it does where the loop has one block (a decode step) and not where it has many.
    out = jax.lax.optimization_barrier(jax.lax.map(block, blocks))
    return out.reshape(-1, n)[:m].reshape(*lead, n)


def chunked_key_sum(terms: jax.Array, axis: int) -> jax.Array:
    """Sum over ``axis`` (keys, by cache slot from 0; its length a multiple of ``KEYS``) in chunks of ``KEYS``:
    each chunk in ``fixed_order_sum``'s tree, the chunk sums added left to right. Trailing chunks of zeros
    leave the sum as it was, so the number of padded slots after the last valid key does not matter."""
    terms = jnp.moveaxis(terms, axis, -1)
    acc = None
    for lo in range(0, terms.shape[-1], KEYS):
        part = fixed_order_sum(terms[..., lo:lo + KEYS])
        acc = part if acc is None else acc + part
    return acc


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
              softcap: float | None = None, sinks: jax.Array | None = None) -> jax.Array:
    """q [B, T, H, D], k/v [B, S, K, D] (key ``s`` at cache slot ``s``), mask [B, T, S] -> [B, T, H, Dv].

    The softmax and its value sum in float32, with every sum in an order fixed by slot (module doc). Long
    query sequences run in blocks of queries (a query's numbers do not depend on its block). The gradient
    is the plain attention's (``attention.dot_attention``): the same function, and differentiating the
    elementwise score products made a train step ~15x slower."""
    from .attention import Q_CHUNK, _by_query_blocks, dot_attention

    def exact(q, k, v, sinks):
        if q.shape[1] >= 2 * Q_CHUNK:
            return _by_query_blocks(lambda qc, mc: _attention(qc, k, v, mc, scale, softcap, sinks), q, mask)
        return _attention(q, k, v, mask, scale, softcap, sinks)

    def plain(q, k, v, sinks):
        return dot_attention(q, k, v, mask, scale, softcap, sinks=sinks)

    f = jax.custom_vjp(exact)
    f.defvjp(lambda *a: (exact(*a), a), lambda res, g: jax.vjp(plain, *res)[1](g))
    return f(q, k, v, sinks)


def _attention(q, k, v, mask, scale, softcap, sinks):
    b, t, h, d = q.shape
    s, kh, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // kh
    pad = -s % KEYS
    if pad:
        k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (k, v))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad)))
    qg = q.astype(jnp.float32).reshape(b, t, kh, g, 1, d)
    kt = jnp.swapaxes(k.astype(jnp.float32), 1, 2)[:, None, :, None]  # [B, 1, K, 1, S, D]
    scores = jnp.concatenate([fixed_order_sum(qg * kt[..., lo:lo + KEYS, :]) for lo in range(0, s + pad, KEYS)],
                             axis=-1) * scale  # [B, T, K, G, S]
    if softcap:
        scores = tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, :, None, None, :], scores, NEG_INF)
    top = scores.max(-1, keepdims=True)
    sink = None if sinks is None else sinks.astype(jnp.float32).reshape(1, 1, kh, g, 1)
    if sink is not None:
        top = jnp.maximum(top, sink)
    top = jax.lax.stop_gradient(top)
    e = exp(scores - top)
    den = chunked_key_sum(e, -1)[..., None]  # [B, T, K, G, 1]
    if sink is not None:
        den = den + exp(sink - top)
    vt = jnp.moveaxis(v.astype(jnp.float32), 1, -1)[:, None, :, None]  # [B, 1, K, 1, Dv, S]
    out = chunked_key_sum(e[..., None, :] * vt, -1) / den  # [B, T, K, G, Dv]
    return out.reshape(b, t, h, dv).astype(v.dtype)
