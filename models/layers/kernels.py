"""Attention kernels chosen per platform, each exact against the XLA path of ``attention.py``.

``TransformerConfig.attention_impl`` picks them: ``xla`` (the reference, and what CPU/TPU run under ``auto``),
``cudnn`` (cuDNN flash attention through ``jax.nn.dot_product_attention`` for multi-token calls: training,
prefill, the trainer's shared-prefix attention), ``pallas`` (a Pallas split-k decode kernel for the
sampler's one-token steps) and ``auto`` (on GPU: cuDNN for multi-token calls and Pallas for decode; elsewhere
XLA). Each call is routed at trace time by ``route``: a call a kernel cannot compute exactly (softcap,
attention sinks, dtype, head dim) takes the XLA path, always the same way for the same shapes and config,
and ``plan`` says which path every attention kind of a config takes.

Masks are kept exactly: the kernels take the same boolean mask the XLA path applies (key validity, left
padding, causality, sliding window all folded into it by ``attention_mask``), so no mask is re-derived from
assumptions about padding. Rows whose mask is all False (a query with no key at all, e.g. a left-pad query)
are the one documented difference: XLA averages every value there, cuDNN does the same (its mask is a large
finite bias), the Pallas decode kernel returns zeros. No output the sampler or trainer uses comes from such
a row (the sampler's live rows always see their own slot).

Explicitly choosing ``cudnn`` or ``pallas`` on a backend without them runs the same call sites for checking:
cuDNN's call as ``jax.nn.dot_product_attention(implementation="xla")`` and the Pallas kernel in the Pallas
interpreter (slow; tests only).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "xla", "cudnn", "pallas")
KINDS = ("train", "prefill", "prefix", "decode", "paged_decode")
_BIAS_NEG = -1e30


@dataclass(frozen=True)
class Route:
    """The path an attention call takes and why (``reason`` is empty when the requested kernel runs)."""

    path: str  # xla | cudnn | pallas
    emulated: bool = False  # cudnn/pallas call site run without the device (xla implementation / interpreter)
    reason: str = ""


def _platform() -> str:
    return jax.default_backend()


def _hopper_or_later() -> bool:
    try:
        return float(getattr(jax.devices()[0], "compute_capability", "0")) >= 9.0
    except (ValueError, RuntimeError):
        return False


def route(impl: str, kind: str, *, dtype, head_dim: int, v_head_dim: int | None = None, softcap=None,
          sinks: bool = False, q_len: int = 0, k_len: int = 0, platform: str | None = None,
          sharded: bool = False) -> Route:
    """Which path an attention call of ``kind`` (one of ``KINDS``) takes under ``impl`` (one of ``IMPLS``).

    Decided from static facts only (config, dtype, shapes, the mesh), so the choice is the same on every
    trace. ``sharded``: traced under a mesh of more than one device outside ``shard_map``; XLA cannot split a
    Pallas call, it would gather the whole cache to every device, so decode keeps XLA there (the sampler's
    data-parallel loop runs per device under ``shard_map`` and keeps the kernel)."""
    if impl not in IMPLS:
        raise ValueError(f"attention_impl: expected one of {', '.join(IMPLS)}, got {impl!r}")
    plat = platform or _platform()
    gpu = plat in ("gpu", "cuda", "rocm")
    want = impl
    if impl == "auto":
        if not gpu:
            return Route("xla", reason=f"auto on {plat}")
        want = "pallas" if kind in ("decode", "paged_decode") else "cudnn"
    if want == "xla":
        return Route("xla", reason="attention_impl: xla")
    decode = kind in ("decode", "paged_decode")
    if want == "cudnn" and decode:
        return Route("xla", reason="cudnn: decode steps take the xla path (use pallas or auto)")
    if want == "pallas" and not decode:
        return Route("xla", reason="pallas: only decode steps have a Pallas kernel here")
    if softcap:
        return Route("xla", reason="attention softcap")
    if sinks:
        return Route("xla", reason="attention sinks")
    if v_head_dim is not None and v_head_dim != head_dim:
        return Route("xla", reason=f"value head dim {v_head_dim} != key head dim {head_dim}")
    dt = jnp.dtype(dtype)
    if want == "cudnn":
        if gpu and dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            return Route("xla", reason=f"cudnn needs bfloat16/float16, got {dt.name}")
        h_max = 256 if (gpu and _hopper_or_later()) else 128
        if head_dim % 8 or head_dim > h_max:
            return Route("xla", reason=f"cudnn head dim {head_dim} (needs a multiple of 8, <= {h_max})")
        if q_len % 2 or k_len % 2:
            return Route("xla", reason=f"cudnn with a mask needs even lengths, got {q_len}x{k_len}")
        return _probed(Route("cudnn", emulated=not gpu), impl, platform)
    if sharded:
        return Route("xla", reason="pallas decode under a multi-device mesh (XLA cannot partition it)")
    if head_dim < 16 or head_dim & (head_dim - 1):
        return Route("xla", reason=f"pallas decode needs a power-of-two head dim >= 16, got {head_dim}")
    return _probed(Route("pallas", emulated=not gpu), impl, platform)


def _probed(r: Route, impl: str, platform: str | None) -> Route:
    """``r`` unless ``auto`` chose a kernel on this very device and the kernel fails its probe (``probe``):
    then the XLA path, with the failure as the reason. A kernel asked for by name is never replaced."""
    if impl != "auto" or r.emulated or platform is not None:
        return r
    err = probe(r.path)
    return Route("xla", reason=f"{r.path} kernel failed its probe on this device: {err}") if err else r


@functools.cache
def probe(path: str, emulated: bool = False) -> str:
    """Run kernel ``path`` (cudnn | pallas) once at a small bf16 shape on the default device and compare it
    with the XLA path: '' when it compiles, runs and agrees (within bf16 rounding), else what went wrong.

    ``auto`` only picks a kernel that passed, so a driver, library or compiler that cannot build it costs
    one warning and the XLA path instead of a failed run. Runs now even when called while a model is being
    traced (on a thread of its own); cached per process."""
    import warnings

    from . import attention as att

    rng = np.random.default_rng(0)
    b, t, h, kv, d = 2, 16, 4, 2, 64
    bf = jnp.bfloat16
    valid = np.arange(t)[None] >= np.array([[0], [5]])  # row 1 left-padded by 5
    if path == "cudnn":
        q = rng.normal(size=(b, t, h, d))
        k, v = (rng.normal(size=(b, t, kv, d)) for _ in range(2))
        rows = valid

        def both(q, k, v):
            mask = att.attention_mask(jnp.asarray(valid), jnp.arange(t), jnp.arange(t))
            return (cudnn_attention(q, k, v, mask, d**-0.5, emulated=emulated),
                    att._dot_attention(q, k, v, mask, d**-0.5))
    elif path == "pallas":
        q = rng.normal(size=(b, 1, h, d))
        k, v = (rng.normal(size=(b, kv, t, d)) for _ in range(2))
        rows = np.ones((b, 1), bool)

        def both(q, k, v):
            mask = jnp.asarray(valid)[:, None]
            return (pallas_decode(q, k, v, mask, d**-0.5, interpret=emulated),
                    att._decode_attention(q, k, v, mask, d**-0.5, None))
    else:
        return f"no kernel {path!r}"
    def run():  # on a thread of its own: JAX's trace state is per thread, so this runs now even when the
        # caller is tracing a model (where every op, even on constants, would be staged into that trace)
        try:
            got, want = jax.jit(both)(*(jnp.asarray(a, bf) for a in (q, k, v)))
            box.append(float(np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32))[rows].max()))
        except Exception as e:  # noqa: BLE001 - any failure to build or run the kernel means: do not use it
            box.append(e)

    box: list = []
    worker = threading.Thread(target=run, name=f"probe-{path}")
    worker.start()
    worker.join()
    try:
        if isinstance(box[0], Exception):
            raise box[0]
        err = box[0]
    except Exception as e:  # noqa: BLE001 - any failure to build or run the kernel means: do not use it
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    else:
        msg = "" if err <= 5e-2 else f"differs from the XLA path by {err:.3g}"
    if msg:
        warnings.warn(f"attention_impl auto: the {path} kernel is not used on this device ({msg})", RuntimeWarning,
                      stacklevel=2)
    return msg


def plan(cfg, *, batch: int = 1, seq: int = 2048, platform: str | None = None) -> dict[str, dict]:
    """Per attention kind, the path a model of ``cfg`` (a ``TransformerConfig``) takes: {kind: {path,
    emulated, reason}}. ``seq``: the sequence length the multi-token kinds are asked about."""
    out = {}
    for kind in KINDS:
        r = model_route(cfg, kind, seq=seq, platform=platform)
        out[kind] = {"path": r.path, "emulated": r.emulated, "reason": r.reason}
    return out


def model_route(cfg, kind: str, *, seq: int = 2048, platform: str | None = None, sharded: bool = False) -> Route:
    """``route`` for the attention of a model of ``cfg`` (a ``TransformerConfig``): what its layers ask."""
    if cfg.mla is not None:
        return Route("xla", reason="multi-head latent attention")
    if cfg.v_head_dim and cfg.v_head_dim != cfg.head_dim:
        return Route("xla", reason="values narrower or wider than keys")
    q_len = 1 if kind in ("decode", "paged_decode") else seq
    return route(cfg.attention_impl, kind, dtype=cfg.jnp_dtype, head_dim=cfg.head_dim, softcap=cfg.attn_softcap,
                 sinks=cfg.attn_sinks, q_len=q_len, k_len=seq, platform=platform, sharded=sharded)


# --------------------------------------------------------------------------- cuDNN flash attention


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                    heads_first: bool = False, emulated: bool = False) -> jax.Array:
    """q [B,T,H,D], k/v [B,S,K,D] (or [B,K,S,D] with ``heads_first``), mask [B,T,S] -> [B,T,H,D].

    The mask goes in whole (cuDNN applies it as a bias broadcast over heads), so left padding, causality
    and windows are exactly the XLA path's; cuDNN skips no masked block on its own, which costs the bias
    read but never changes a number. GQA is native (K heads shared by H / K query heads). ``emulated``:
    the same call with ``implementation="xla"`` (CPU checks)."""
    if heads_first:
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale,
                                       implementation="xla" if emulated else "cudnn")
    return out.astype(v.dtype)


def cudnn_prefix_attention(q, k, v, kp, vp, mask, scale, emulated: bool = False) -> jax.Array:
    """``attention.prefix_attention`` through cuDNN: each row's keys are its group's prefix (kp/vp
    [N,K,P,D]) followed by its own (k/v [B,T,K,D]); mask [B,T,P+T]. The prefix is copied to every row (the
    XLA path avoids that copy; flash attention more than pays for it on a GPU)."""
    r = q.shape[0] // kp.shape[0]
    kf = jnp.concatenate([jnp.repeat(jnp.swapaxes(kp, 1, 2), r, axis=0).astype(k.dtype), k], axis=1)
    vf = jnp.concatenate([jnp.repeat(jnp.swapaxes(vp, 1, 2), r, axis=0).astype(v.dtype), v], axis=1)
    return cudnn_attention(q, kf, vf, mask, scale, emulated=emulated)


# --------------------------------------------------------------------------- Pallas decode


def _decode_kernel(q_ref, k_ref, v_ref, m_ref, start_ref, end_ref, o_ref, l_ref, mx_ref, *, sm_scale: float,
                   block_k: int, block_h: int, num_heads: int):
    """One (query-head block, key split) of split-k decode attention for one row and KV head.

    The flash-decoding kernel of ``jax.experimental.pallas.ops.gpu.decode_attention`` (Apache-2.0, The JAX
    Authors) with one change: a per-key validity mask (``m_ref``) is applied on top of the [start, end)
    key range, so any mask the XLA path takes (not only an interval) is computed exactly; the range only
    skips blocks holding no valid key."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    _, head_dim = q_ref.shape
    split, _ = k_ref.shape
    i, j = pl.program_id(0), pl.program_id(1)
    q_mask = (jnp.arange(block_h) < num_heads - block_h * i)[:, None]
    lo = jnp.maximum(split * j, start_ref[()])
    hi = jnp.minimum((j + 1) * split, end_ref[()])
    o = jnp.zeros((block_h, head_dim), jnp.float32)
    m_i = jnp.zeros(block_h, jnp.float32) + jnp.finfo(jnp.float32).min
    l_i = jnp.zeros(block_h, jnp.float32)

    def compute(o, m_i, l_i):
        q = plgpu.load(q_ref.at[pl.ds(0, block_h), :], mask=q_mask)

        def body(b, carry):
            o_prev, m_prev, l_prev = carry
            sl = pl.ds(b * block_k, block_k)
            k = k_ref[sl, :]
            qk = plgpu.dot(q, k.T)
            if sm_scale != 1.0:
                qk *= sm_scale
            idx = split * j + b * block_k + jnp.arange(block_k)
            keep = (m_ref[sl] != 0) & (idx >= lo) & (idx < hi)
            qk = jnp.where(keep[None, :], qk, 0.7 * jnp.finfo(jnp.float32).min)
            m_next = jnp.maximum(m_prev, qk.max(axis=-1))
            corr = jnp.exp(m_prev - m_next)
            s = jnp.exp(qk - m_next[:, None])
            v = v_ref[sl, :]
            return corr[:, None] * o_prev + plgpu.dot(s.astype(v.dtype), v), m_next, corr * l_prev + s.sum(-1)

        n = jnp.minimum(pl.cdiv(hi - split * j, block_k), split // block_k)
        return jax.lax.fori_loop(0, n, body, (o, m_i, l_i))

    o, m_i, l_i = jax.lax.cond(lo >= hi, lambda: (o, m_i, l_i), lambda: compute(o, m_i, l_i))
    vq = q_mask.reshape(-1)
    plgpu.store(l_ref.at[pl.ds(0, block_h)], l_i, mask=vq)
    plgpu.store(mx_ref.at[pl.ds(0, block_h)], m_i, mask=vq)
    plgpu.store(o_ref.at[pl.ds(0, block_h), :], o.astype(o_ref.dtype), mask=q_mask)


def split_plan(s: int, max_splits: int = 16, block_k: int = 128) -> tuple[int, int, int]:
    """(padded length, key splits, block) for ``s`` keys: the split length is a power of two >= 16 (the
    Triton block rule), at most ``max_splits`` splits, the fewest padded keys (ties: more splits)."""
    best = None
    for n in range(max_splits, 0, -1):
        split = max(16, 1 << max(0, math.ceil(math.log2(-(-s // n)))))
        cand = (n * split, -n, split)
        if best is None or cand < best:
            best = cand
    sp, n, split = best[0], -best[1], best[2]
    return sp, n, min(block_k, split)


def _decode_one(q, k, v, m, start, end, *, scale, n_splits, block_k, block_h, interpret):
    """q [G,D], k/v [Sp,D], m [Sp] int32, start/end [] -> [G,D] (one row, one KV head)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    g, d = q.shape
    sp = k.shape[0]
    split = sp // n_splits
    kernel = functools.partial(_decode_kernel, sm_scale=scale, block_k=block_k, block_h=block_h, num_heads=g)
    o, l, mx = pl.pallas_call(
        kernel, grid=(pl.cdiv(g, block_h), n_splits),
        in_specs=[pl.BlockSpec((block_h, d), lambda i, j: (i, 0)),
                  pl.BlockSpec((None, split, d), lambda i, j: (j, 0, 0)),
                  pl.BlockSpec((None, split, d), lambda i, j: (j, 0, 0)),
                  pl.BlockSpec((None, split), lambda i, j: (j, 0)),
                  pl.BlockSpec((), lambda i, j: ()), pl.BlockSpec((), lambda i, j: ())],
        out_specs=[pl.BlockSpec((None, block_h, d), lambda i, j: (j, i, 0)),
                   pl.BlockSpec((None, block_h), lambda i, j: (j, i)),
                   pl.BlockSpec((None, block_h), lambda i, j: (j, i))],
        out_shape=[jax.ShapeDtypeStruct((n_splits, g, d), jnp.float32),
                   jax.ShapeDtypeStruct((n_splits, g), jnp.float32),
                   jax.ShapeDtypeStruct((n_splits, g), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret, name="masked_decode_attention",
    )(q, k.reshape(n_splits, split, d), v.reshape(n_splits, split, d), m.reshape(n_splits, split), start, end)
    top = jax.lax.optimization_barrier(mx.max(axis=0))  # as upstream: keeps XLA from reordering the combine
    corr = jnp.exp(mx - top[None])
    den = (l * corr).sum(axis=0)
    out = (o * corr[:, :, None]).sum(axis=0)
    return jnp.where(den[:, None] > 0, out / jnp.where(den > 0, den, 1.0)[:, None], 0.0)


def pallas_decode(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                  interpret: bool = False) -> jax.Array:
    """One query per row over a heads-first cache: q [B,1,H,D], k/v [B,K,S,D], mask [B,1,S] -> [B,1,H,D].

    Exactly ``attention._decode_attention`` for every row with at least one valid key: the kernel applies
    the mask itself and uses each row's first and last valid slot ([start, end)) only to skip key blocks, so
    a row's left padding, its bucketed window (``size``: the view is already cut to it) and holes inside
    the range are all masked as in XLA. The key axis is padded (masked) to a length the split-k kernel
    tiles; on a GPU that pad joins the copy of the layer's slots the custom call already needs.

    The paged cache reads through the same kernel over its gathered [B, K, S, D] view: the Pallas
    ``paged_attention`` kernel masks by length only (keys ``[0, length)``), which cannot express a
    left-padded prompt's pad slots inside the first pages, so it is not used."""
    b, _, h, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    g = h // kv
    valid = mask[:, 0]
    has = valid.any(axis=1)
    start = jnp.where(has, jnp.argmax(valid, axis=1), 0).astype(jnp.int32)
    end = jnp.where(has, s - jnp.argmax(valid[:, ::-1], axis=1), 0).astype(jnp.int32)
    sp, n_splits, block_k = split_plan(s)
    if sp != s:
        k, v = (jnp.pad(a, ((0, 0), (0, 0), (0, sp - s), (0, 0))) for a in (k, v))
        valid = jnp.pad(valid, ((0, 0), (0, sp - s)))
    one = functools.partial(_decode_one, scale=float(scale), n_splits=n_splits, block_k=block_k,
                            block_h=max(16, 1 << max(0, math.ceil(math.log2(g)))), interpret=interpret)
    per_head = jax.vmap(one, in_axes=(0, 0, 0, None, None, None))  # over KV heads of a row
    out = jax.vmap(per_head)(q.reshape(b, kv, g, d), k, v, valid.astype(jnp.int32), start, end)
    return out.reshape(b, 1, h, d).astype(v.dtype)


# --------------------------------------------------------------------------- device check


def median_seconds(fn, *args, reps: int = 5) -> float:
    """Median wall time of ``fn(*args)`` over ``reps`` calls after one warm-up call (compiling excluded)."""
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def self_check(cfg, *, batch: int = 4, seq: int = 2048, decode_batch: int = 64, decode_len: int = 1024,
               dtype: str = "bfloat16", reps: int = 5, seed: int = 0,
               paths: tuple[str, ...] = ("train", "prefix", "decode")) -> dict[str, Any]:
    """Each kernel path against the XLA reference at a model's attention shape (``cfg``: a
    ``TransformerConfig``; its heads, KV heads, head dim and scale), on random inputs in ``dtype`` with
    left-padded rows and a causal mask. Per path: ``max_abs_diff`` (over rows with a valid key), seconds of
    the kernel and of XLA (``*_s``: forward; ``train`` also forward+backward of attention alone), and the
    route the config's ``attention_impl`` gives such a call. The kernels run whatever that route is (this
    checks them); without a GPU they run emulated (``kernel_emulated``: the cuDNN call site with the xla
    implementation, Pallas in its interpreter), so keep shapes tiny there. Returns a JSON-ready dict; a
    path that fails records its error, not a number. ``paths``: which of train, prefix, decode to run."""
    from .attention import _decode_attention, _dot_attention, attention_mask, prefix_attention

    dt = jnp.dtype(dtype)
    h, kv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    scale = cfg.query_scale if cfg.query_scale is not None else d**-0.5
    impl = getattr(cfg, "attention_impl", "auto")
    gpu = _platform() == "gpu"
    keys = jax.random.split(jax.random.key(seed), 8)
    out: dict[str, Any] = {"backend": _platform(), "dtype": dt.name, "impl": impl}

    def rnd(i, shape):
        return jax.random.normal(keys[i], shape, jnp.float32).astype(dt)

    def left_pad_valid(bb, length, rng):
        pads = np.array(jax.random.randint(rng, (bb,), 0, max(1, length // 4)))
        pads[0] = 0
        return jnp.asarray(np.arange(length)[None] >= pads[:, None])

    def diff(a, b, rows):
        a, b = (jnp.asarray(x, jnp.float32) for x in (a, b))
        return float(jnp.max(jnp.where(rows, jnp.abs(a - b), 0.0)))

    def run(name, fn):
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - a kernel that fails to build is a shown result, not a crash of the bench
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}

    def train():
        r = route(impl, "train", dtype=dt, head_dim=d, q_len=seq, k_len=seq)
        q, k, v = rnd(0, (batch, seq, h, d)), rnd(1, (batch, seq, kv, d)), rnd(2, (batch, seq, kv, d))
        valid = left_pad_valid(batch, seq, keys[3])
        mask = attention_mask(valid, jnp.arange(seq), jnp.arange(seq))
        ref = jax.jit(lambda q, k, v: _dot_attention(q, k, v, mask, scale))
        ker = jax.jit(lambda q, k, v: cudnn_attention(q, k, v, mask, scale, emulated=not gpu))
        rows = valid[:, :, None, None]
        res = {"route": r.path, "reason": r.reason, "kernel_emulated": not gpu,
               "max_abs_diff": diff(ker(q, k, v), ref(q, k, v), rows)}

        def loss(f):
            return jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.where(rows, f(q, k, v), 0).astype(jnp.float32)
                                                            ** 2), argnums=(0, 1, 2)))

        gk, gr = loss(ker)(q, k, v), loss(ref)(q, k, v)
        res["grad_max_abs_diff"] = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                                       for a, b in zip(gk, gr))
        res["grad_ref_max_abs"] = max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))) for b in gr)
        res["kernel_fwd_s"], res["xla_fwd_s"] = median_seconds(ker, q, k, v, reps=reps), median_seconds(ref, q, k, v, reps=reps)
        res["kernel_fwd_bwd_s"] = median_seconds(loss(ker), q, k, v, reps=reps)
        res["xla_fwd_bwd_s"] = median_seconds(loss(ref), q, k, v, reps=reps)
        return res

    def prefix():
        r = route(impl, "prefix", dtype=dt, head_dim=d, q_len=seq // 2,
                  k_len=seq)
        n, t, p = max(1, batch // 2), seq // 2, seq // 2
        bb = n * (batch // n)
        q, k, v = rnd(0, (bb, t, h, d)), rnd(1, (bb, t, kv, d)), rnd(2, (bb, t, kv, d))
        kp, vp = rnd(4, (n, kv, p, d)), rnd(5, (n, kv, p, d))
        pvalid = jnp.repeat(left_pad_valid(n, p, keys[6]), bb // n, axis=0)
        key_valid = jnp.concatenate([pvalid, jnp.ones((bb, t), bool)], axis=1)
        mask = attention_mask(key_valid, p + jnp.arange(t), jnp.arange(p + t))
        ref = jax.jit(lambda q, k, v: prefix_attention(q, k, v, kp, vp, mask, scale))
        ker = jax.jit(lambda q, k, v: cudnn_prefix_attention(q, k, v, kp, vp, mask, scale,
                                                             emulated=not gpu))
        rows = jnp.ones((bb, t, 1, 1), bool)
        return {"route": r.path, "reason": r.reason, "kernel_emulated": not gpu,
                "max_abs_diff": diff(ker(q, k, v), ref(q, k, v), rows),
                "kernel_fwd_s": median_seconds(ker, q, k, v, reps=reps), "xla_fwd_s": median_seconds(ref, q, k, v, reps=reps)}

    def decode():
        r = route(impl, "decode", dtype=dt, head_dim=d, q_len=1, k_len=decode_len)
        bb, s = decode_batch, decode_len
        q, k, v = rnd(0, (bb, 1, h, d)), rnd(1, (bb, kv, s, d)), rnd(2, (bb, kv, s, d))
        valid = left_pad_valid(bb, s, keys[7])
        index = jnp.asarray(np.random.default_rng(seed).integers(s // 2, s, bb), jnp.int32)
        mask = attention_mask(valid, index[:, None], jnp.arange(s))
        ref = jax.jit(lambda q, k, v: _decode_attention(q, k, v, mask, scale, None))
        ker = jax.jit(lambda q, k, v: pallas_decode(q, k, v, mask, scale, interpret=not gpu))
        rows = mask.any(-1)[:, :, None, None]
        kv_bytes = 2 * bb * kv * s * d * dt.itemsize
        res = {"route": r.path, "reason": r.reason, "kernel_emulated": not gpu,
               "max_abs_diff": diff(ker(q, k, v), ref(q, k, v), rows),
               "kernel_s": median_seconds(ker, q, k, v, reps=reps), "xla_s": median_seconds(ref, q, k, v, reps=reps),
               "kv_bytes": kv_bytes}
        res["kernel_bytes_per_s"] = kv_bytes / res["kernel_s"]
        res["xla_bytes_per_s"] = kv_bytes / res["xla_s"]
        return res

    for name, fn in (("train", train), ("prefix", prefix), ("decode", decode)):
        if name in paths:
            run(name, fn)
    out["plan"] = plan(cfg, batch=batch, seq=seq)
    return out
