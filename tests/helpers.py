"""Tiny models and batches shared by tests."""

import os
import subprocess
import sys

import numpy as np
from reasoning_rl.models import TransformerConfig, create


def tiny_model(seed=0, vocab=40, **kw):
    cfg = TransformerConfig(**{"vocab_size": vocab, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                               "head_dim": 8, "ffn_dim": 64, **kw})
    return create(cfg, seed)


def prompts(n, lo=3, hi=9, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(4, vocab, size=int(rng.integers(lo, hi)))) for _ in range(n)]


def _fast_compile() -> str:
    """XLA flags for tests and the runs they start, whose results are compared only with results computed under
    the same flags (one device against a mesh, one host against two): compiling is most of what a test does.
    LLVM's optimisation passes off (a tiny R1 pipeline on 4 devices: 41 s -> 31 s), and fusions emitted by the
    older elemental emitter rather than the MLIR fusion pipeline (a tiny two-stage run's compiles 12-14 s ->
    5-6 s; same losses, other roundings in the last bit). An XLA that does not know the second flag aborts every
    process that reads it, so it is used only once a child process has started with it (checked once per
    session; the workers inherit the answer)."""
    flags = "--xla_backend_optimization_level=0"
    emitters = "--xla_cpu_use_fusion_emitters=false"
    known = os.environ.get("REASONING_RL_TEST_FUSION_FLAG")
    if known is None:
        p = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, check=False,
                           env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{flags} {emitters}"}, timeout=120)
        known = os.environ["REASONING_RL_TEST_FUSION_FLAG"] = "1" if p.returncode == 0 else "0"
    return f"{flags} {emitters}" if known == "1" else flags


FAST_COMPILE = _fast_compile()


def compared_env(n_devices: int | None = None, base: dict | None = None, **extra: str) -> dict:
    """Environment of a CPU test subprocess whose results are compared with another run made under it:
    ``n_devices`` host devices (None: the child picks) and ``FAST_COMPILE``. The session's compile cache stays
    on (conftest): a program found there is what compiling the same program under the same flags gives, so a
    resumed run, or a host of a two-host run whose program a one-host run compiled, loads it instead."""
    devices = f"--xla_force_host_platform_device_count={n_devices} " if n_devices else ""
    return {**(os.environ if base is None else base), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": devices + FAST_COMPILE,
            **extra}


def run_here(*argv: str) -> subprocess.CompletedProcess:
    """``reasoning-rl ARGV`` run in this process (``cli.main``), returned as ``subprocess.run`` would return it:
    exit status, stdout, and stderr with the command's log lines (its own and other libraries', as the CLI's
    logging set-up shows them; Python warnings go to pytest's summary). The same code as the command, without
    starting an interpreter and JAX again: a tiny run takes about half the time. For runs whose test reads what
    they write and print; a run that is signalled or killed, needs another device count or other XLA flags, or
    whose test is about the process itself (its exit by a signal, its log file, a terminal, what it prints as the
    interpreter exits) stays a subprocess. The run must leave no thread or child process behind: this process
    goes on to the next test."""
    import contextlib
    import io
    import logging
    import multiprocessing
    import threading
    import time

    from reasoning_rl import cli

    out, err = io.StringIO(), io.StringIO()
    # the CLI's logging.basicConfig finds the root logger configured (pytest's handlers) and adds nothing: its
    # handler and level are put in place here for the call
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    level, threads = root.level, set(threading.enumerate())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    # an event loop's executor threads ("asyncio_N": the checkpointer's loops, closed with their executor shut down
    # without waiting) may still be ending as the run returns: they get a few seconds; any other thread alive now
    # was left behind
    new = set(threading.enumerate()) - threads
    deadline = time.monotonic() + 10.0
    for t in new:
        if t.name.startswith("asyncio_"):
            t.join(max(deadline - time.monotonic(), 0.0))
    left = [t.name for t in new if t.is_alive()]
    assert not left, f"the run left threads running: {left}"
    assert not multiprocessing.active_children(), "the run left child processes"
    return subprocess.CompletedProcess(["reasoning-rl", *argv], rc, out.getvalue(), err.getvalue())


def assert_padding_changes_nothing(net, vocab: int) -> None:
    """A recurrent layer reads only a row's valid tokens: the same 12 tokens with pads before, between and after
    them (20 slots: the chunked form) give the logits they give alone, at the valid positions. ``net``: a bound
    model (``mdef.bind(params)``), run jitted (its weights as constants)."""
    import jax
    import jax.numpy as jnp

    net_call = jax.jit(lambda t, p, v: net(t, p, v))
    toks = np.random.RandomState(3).randint(0, vocab, 12).astype(np.int32)
    plain = np.asarray(net_call(jnp.asarray(toks[None]), jnp.arange(12)[None], jnp.ones((1, 12), bool)))[0]
    ids, valid = np.zeros((1, 20), np.int32), np.zeros((1, 20), bool)
    where = np.array([2, 3, 4, 5, 8, 9, 10, 11, 12, 15, 16, 17])  # pads at 0-1, 6-7, 13-14, 18-19
    ids[0, where], valid[0, where] = toks, True
    pos = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    padded = np.asarray(net_call(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(valid)))[0]
    np.testing.assert_allclose(padded[where], plain, atol=2e-5)


def assert_packed_rows_equal_alone(net, vocab: int) -> None:
    """Packed SFT rows (``stage.pack``): a row holding two sequences (segment ids, positions restarting) gives each
    sequence's logits alone: recurrent layers restart their convolution and state with each sequence, as the
    attention masks do. ``net``: a bound model, run jitted."""
    import jax
    import jax.numpy as jnp

    net_call = jax.jit(lambda t, p, v: net(t, p, v))
    packed_call = jax.jit(lambda t, p, v, s: net.logits(net.hidden(t, p, v, segments=s)[0]))

    a, b = (np.random.RandomState(s).randint(0, vocab, n) for s, n in ((1, 9), (2, 14)))
    tokens, valid, segments, pos = (np.zeros((1, 32), dt) for dt in (np.int32, bool, np.int32, np.int32))
    tokens[0, :23] = np.concatenate([a, b])
    valid[0, :23] = True
    segments[0, :9], segments[0, 9:23] = 1, 2
    pos[0, :9], pos[0, 9:23] = np.arange(9), np.arange(14)
    packed = np.asarray(packed_call(*(jnp.asarray(x) for x in (tokens, pos, valid, segments))))[0]
    for part, lo in ((a, 0), (b, 9)):
        alone = np.asarray(net_call(jnp.asarray(part[None]), jnp.arange(len(part))[None],
                                    jnp.ones((1, len(part)), bool)))
        np.testing.assert_allclose(packed[lo:lo + len(part)], alone[0], atol=2e-5)


def assert_sampler_equals_trainer_on_every_decode_path(mdef, params, tol: float = 1e-5) -> None:
    """Groups fanned out from one prefill, rows stopping at different steps, slots refilled with new rows, a paged
    cache, unrolled decode layers: the same tokens on every path, and the trainer's log-probs of them (whole rows,
    its own padding) equal the sampler's within ``tol``."""
    import dataclasses

    import jax.numpy as jnp
    from reasoning_rl.models import create

    from reasoning_rl.algorithms.logprobs import target_logprobs
    from reasoning_rl.rollout.sampler import generate, left_pad

    toks, valid = left_pad([[5, 7, 9, 11, 3], [17, 2, 40, 8, 1, 9, 22, 31, 4, 2, 6], [3]], 0)
    n, g = 12, 3
    outs = {str(kw): generate(mdef, params, toks, valid, max_new_tokens=n, rng_seed=1, group_size=g,
                              stop_ids=(7, 9, 13), **kw)
            for kw in ({}, {"slots": 2}, {"page_size": 4}, {"slots": 2, "page_size": 4})}
    unrolled = create(dataclasses.replace(mdef.cfg, decode_layers="unroll"), abstract=True)[0]
    outs["unroll"] = generate(unrolled, params, toks, valid, max_new_tokens=n, rng_seed=1, group_size=g,
                              stop_ids=(7, 9, 13))
    base = outs["{}"]
    assert np.asarray(base.lengths).min() < n  # some rows stop early
    rows = np.repeat(np.arange(3), g)
    full = np.concatenate([np.asarray(toks)[rows], np.asarray(base.tokens)], 1)
    fv = np.concatenate([np.asarray(valid)[rows], np.asarray(base.mask)], 1)
    lp = np.asarray(target_logprobs(mdef.bind(params), jnp.asarray(full), jnp.asarray(fv), n, group=g))
    for kw, out in outs.items():
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(base.tokens), err_msg=kw)
        gap = np.abs(lp - np.asarray(out.logprobs))[np.asarray(out.mask)].max()
        assert gap < tol, (kw, gap)


def numpy_delta_rule(q, k, v, g, beta, s0, seg=None):
    """The gated delta rule as the references write it, token by token in NumPy (float64): decay the state
    (g [B, T, H]: each head's by one factor; [B, T, H, dk]: each key dimension's rows by its own, Kimi Delta
    Attention's), write the delta of v against what the state recalls for k, read it with q; a new segment
    (``seg`` [B, T]) starts from zero."""
    q, k, v, g, beta, s = (np.asarray(a, np.float64) for a in (q, k, v, g, beta, s0))
    out = np.zeros(v.shape)
    for t in range(q.shape[1]):
        if seg is not None and t:
            s = s * (seg[:, t] == seg[:, t - 1])[:, None, None, None]
        s = s * (np.exp(g[:, t])[..., None] if g.ndim == 4 else np.exp(g[:, t])[..., None, None])
        delta = (v[:, t] - np.einsum("bhkv,bhk->bhv", s, k[:, t])) * beta[:, t][..., None]
        s = s + k[:, t][..., :, None] * delta[..., None, :]
        out[:, t] = np.einsum("bhkv,bhk->bhv", s, q[:, t])
    return out, s


def delta_rule_inputs(t: int, seed: int = 0, per_dim: bool = False):
    """q, k (L2-normalised, q scaled), v, g, beta, s0 for the delta-rule tests: [2, t, 3 heads], dk 8, dv 5. g
    per head in [-2, 0], or (``per_dim``) per key dimension from none to strong (down to -9 a token: a product
    of per-token exponentials would overflow over a chunk)."""
    import jax.numpy as jnp
    from reasoning_rl.models.layers.gated_deltanet import l2norm

    r = np.random.default_rng(seed)
    b, h, dk, dv = 2, 3, 8, 5
    q = l2norm(jnp.asarray(r.normal(size=(b, t, h, dk)), jnp.float32)) * dk**-0.5
    k = l2norm(jnp.asarray(r.normal(size=(b, t, h, dk)), jnp.float32))
    v = jnp.asarray(r.normal(size=(b, t, h, dv)), jnp.float32)
    g = -jnp.asarray(r.uniform(0, 3, (b, t, h, dk)) ** 2 if per_dim else r.uniform(0, 2, (b, t, h)), jnp.float32)
    beta = jnp.asarray(r.uniform(0, 1, (b, t, h)), jnp.float32)
    s0 = jnp.asarray(r.normal(size=(b, h, dk, dv)), jnp.float32)
    return q, k, v, g, beta, s0
