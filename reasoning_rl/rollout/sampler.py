"""Jitted KV-cache group sampler.

Each prompt is prefilled once; its cache and last-position logits are then fanned out to the G samples of
its group (no recomputation of the shared prompt). Decoding runs inside ``lax.while_loop`` over a
preallocated fixed-shape cache and exits as soon as every row has stopped (EOS, a stop token such as
``</answer>``, or the token budget). Prompts are left-padded, so every row writes decode step ``t`` into
cache slot ``Tp + t`` and per-row positions continue from each prompt's true length.

With ``slots`` (in-flight refill) the loop decodes on a fixed number of batch slots instead of one per row:
when rows finish, waiting rows take their slots inside the same jitted program (prompt cache copied from
the once-per-prompt prefill), so a few long responses no longer idle the whole batch. Every row is drawn
with its own key, ``fold_in(fold_in(rng, row), step)``, and keeps the plain loop's slot layout, so both
loops return the same completions for the same prompts and seed.

Shapes are fixed per (prompts, prompt length, group, budget); callers bucket prompt lengths so a run
compiles a handful of programs, not one per batch.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from reasoning_rl.models import KVCache, ModelDef, positions_from_valid
from reasoning_rl.models.layers import invariant, kernels
from reasoning_rl.models.layers.invariant import STANDARD, elementary
from reasoning_rl.sharding import constrain, current, traced_under, use

from . import stops as stop_strings
from .sampling import row_keys, select
from .stops import StopTable


@jax.tree_util.register_dataclass
@dataclass
class SampleOutput:
    """Row ``i`` is sample ``i % G`` of prompt ``i // G``.

    tokens [R, N] (pad after a row stops), mask [R, N] (True for generated tokens, the stop token included),
    logprobs [R, N] (0 where mask is False), lengths [R]; ``slot_steps`` (scalar): batch slots times decode
    iterations run, so ``sum(lengths) / slot_steps`` is the slot utilisation; with ``record_routes`` (MoE
    models) ``routes`` [R, Tp + N, L_moe, k]: the experts each token of ``[prompt | completion]`` was computed
    with, for the trainer to replay.
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    routes: jax.Array | None = None
    slot_steps: jax.Array | None = None


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
    slots: int = 0  # in-flight refill on this many batch slots; 0 (or >= rows): one slot per row, no refill
    refill_min: int = 0  # refill once this many slots are free (0: an eighth of the slots, at least 1)
    windows: int = 4  # plain loop: decode in this many growing attention windows (1: always the whole cache)
    page_size: int = 0  # paged KV cache with shared prompt pages, this many slots a page; 0: contiguous
    stop_table: StopTable | None = None  # stop strings of several tokens (``reasoning_rl.rollout.stops``)
    min_p: float = 0.0  # min-p sampling: drop tokens less likely than min_p x the most likely one (0: off)

    def refills(self, prompts: int) -> bool:
        """Whether ``prompts`` prompts (``prompts * group_size`` rows) decode on fewer slots than rows."""
        return 0 < self.slots < prompts * self.group_size


def window_ends(tp: int, n: int, windows: int) -> list[int]:
    """Cache slots attended in each window of the plain loop: steps ``t < end - tp`` run with ``end`` slots.

    Decode reads the whole attended cache every step, so attending ``Tp + n`` slots from the first step
    wastes most of the early steps' reads; growing windows (each a static shape, so one compiled step per
    window) cut the attention work by about ``(windows - 1) / (2 * windows)`` of the response part. The
    contiguous cache is grown to each window as the loop reaches it (``window_cache``: W1 sampler 18.7k ->
    22.3k tokens/s against attending a window cut from the whole cache)."""
    w = -(-n // max(1, windows))
    w = -(-w // 8) * 8
    return sorted({tp + min(n, w * (j + 1)) for j in range(max(1, windows))})


CACHE_AXES = ("layers", "cache_batch", "act_kv_heads", "cache_seq", None)  # k/v [L, B, K, S, D]


POOL_AXES = ("layers", None, "act_kv_heads", None, None)  # paged k/v [L, pages, K, page, D]
CONV_AXES = ("layers", "cache_batch", None, None)  # linear layers' convolution inputs [L, B, K - 1, C]
STATE_AXES = ("layers", "cache_batch", "act_heads", None, None)  # and recurrent states [L, B, H, dk, dv]


def shard_cache(cache: KVCache) -> KVCache:
    """Lay the cache out by the logical rules: rows over the batch axes, KV heads over ``tensor`` (a page
    pool is shared by rows, so only its KV heads are split; linear layers' states by rows and heads)."""
    rec = () if cache.conv is None else (constrain(cache.conv, CONV_AXES), constrain(cache.state, STATE_AXES))
    if cache.split:  # one [B, K, S, D] buffer per layer
        return KVCache(tuple(constrain(a, CACHE_AXES[1:]) for a in cache.k),
                       tuple(constrain(a, CACHE_AXES[1:]) for a in cache.v),
                       constrain(cache.valid, ("cache_batch", "cache_seq")))
    axes = CACHE_AXES if cache.table is None else POOL_AXES
    k, v = (jax.tree.map(lambda a: constrain(a, axes), x) for x in (cache.k, cache.v))  # (each kind's buffer)
    return KVCache(k, v, constrain(cache.valid, ("cache_batch", "cache_seq")), cache.table, *rec)


def split_decode(cfg) -> bool:
    """Whether decode holds the contiguous cache as one buffer per layer and runs the layers unrolled
    (``KVCache.split_layers``; ``model.decode_layers``). ``auto``: on accelerators, where the stacked cache
    costs a copy of itself per step; on CPU the layer scan (compile time that does not grow with depth)."""
    if cfg.decode_layers == "auto":
        return jax.default_backend() != "cpu"
    return cfg.decode_layers == "unroll"


def split_ends(cfg, ends: list[int]) -> list[int]:
    """Window ends of a split-cache decode (``split_decode``): each rounded up to a length the Pallas decode
    kernel tiles without padding (a pad would copy the layer's cache every step), and a single window when
    the kernel runs: it skips the key blocks past each row's last valid key itself, so growing windows
    would only multiply the unrolled layers in the program (compile time) for no fewer bytes read."""
    ctx = current()
    if kernels.model_route(cfg, "decode", sharded=ctx is not None and ctx.mesh.size > 1).path == "pallas":
        ends = ends[-1:]
    return sorted({kernels.split_plan(e)[0] for e in ends})


@dataclass(frozen=True)
class DecodeForm:
    """How a decode loop holds the model (``model.decode_layers``): ``unroll``: layers unrolled over weights
    sliced once (``layer_states``); ``split``: a contiguous cache held as a buffer per layer (a paged pool
    stays stacked: its pages are gathered per layer anyway); ``ends``: the loop's window ends."""

    unroll: bool
    split: bool
    ends: list[int]

    @classmethod
    def of(cls, cfg, ends: list[int], paged: bool = False) -> DecodeForm:
        unroll = split_decode(cfg)
        split = unroll and not paged and cfg.linear is None  # recurrent states stay stacked
        return cls(unroll, split, split_ends(cfg, ends) if split else ends)

    def cache(self, cache: KVCache, cfg) -> KVCache:
        """The contiguous cache as the loop holds it."""
        return shard_cache(cache.split_layers(cfg)) if self.split else cache

    def layer_states(self, model) -> dict | None:
        return model.layer_states() if self.unroll else None


def _fan_out(cache: KVCache, g: int) -> KVCache:
    return shard_cache(cache.fan_out(g))


def window_cache(cache: KVCache, end: int) -> KVCache:
    """The contiguous cache grown to a decode window's ``end`` slots (``window_ends``), laid out again.

    A cache of exactly the window's slots makes each layer's keys one contiguous block of the stacked cache,
    copied out for the attention products at memory-copy speed; a window cut from a longer cache is a
    strided copy, as slow per step as copying all the slots."""
    return cache if cache.size >= end else shard_cache(cache.grow(end))


@dataclass(frozen=True)
class PageLayout:
    """Page pool of a paged sampler cache: ``prompts * shared`` prompt pages (prompt ``p``'s full pages are
    ``p * shared ...``, stored once for its whole group), then ``own`` pages per batch slot.

    A slot's first own page holds the end of its prompt (the page decode writes into first: each slot gets
    its copy when it forks from the prompt, copy-on-write) and the rest hold its response."""

    page: int
    prompts: int
    slots: int
    shared: int  # full prompt pages: Tp // page
    own: int  # pages per slot: ceil((Tp + n) / page) - shared

    @classmethod
    def of(cls, page: int, prompts: int, slots: int, tp: int, n: int) -> PageLayout:
        shared = tp // page
        return cls(page, prompts, slots, shared, -(-(tp + n) // page) - shared)

    @property
    def pages(self) -> int:
        return self.prompts * self.shared + self.slots * self.own

    @property
    def size(self) -> int:
        return (self.shared + self.own) * self.page  # logical slots a row addresses

    @property
    def prefill_size(self) -> int:
        return (self.shared + 1) * self.page  # the prompt's full pages plus the page a slot copies

    def table(self, prompt: jax.Array) -> jax.Array:
        """[slots, shared + own] page table for slots holding rows of ``prompt`` [slots]."""
        shared = prompt[:, None] * self.shared + jnp.arange(self.shared)[None]
        own = self.prompts * self.shared + jnp.arange(self.slots)[:, None] * self.own + jnp.arange(self.own)[None]
        return jnp.concatenate([shared, own], axis=1).astype(jnp.int32)

    def own_first(self) -> jax.Array:
        return (self.prompts * self.shared + jnp.arange(self.slots) * self.own).astype(jnp.int32)


def _pages(x: jax.Array, page: int) -> jax.Array:
    """[L, B, K, m * page, D] -> [L, B * m, K, page, D]."""
    l, b, k, s, d = x.shape
    return jnp.moveaxis(x.reshape(l, b, k, s // page, page, d), 3, 2).reshape(l, b * (s // page), k, page, d)


def paged_cache(prefill: KVCache, lay: PageLayout, prompt: jax.Array, valid: jax.Array) -> KVCache:
    """A paged cache for ``lay.slots`` rows of prompts ``prompt`` [slots] from the prompts' prefill cache
    (``lay.prefill_size`` slots each): shared prompt pages once per prompt, each slot's copy of its prompt's
    last (partial) page, empty response pages. ``valid``: [slots, logical slots]."""
    full = lay.shared * lay.page

    def pool(x):
        shared = _pages(x[:, :, :, :full], lay.page)
        first = x[:, prompt, :, full:full + lay.page][:, :, None]  # [L, slots, 1, K, page, D]
        rest = jnp.zeros(first.shape[:2] + (lay.own - 1,) + first.shape[3:], x.dtype)
        own = jnp.concatenate([first, rest], axis=2).reshape(x.shape[0], -1, *first.shape[3:])
        return jnp.concatenate([shared, own], axis=1)

    rec = tuple(a[:, prompt] for a in prefill.recurrent())  # each slot's copy of its prompt's states
    k, v = (jax.tree.map(pool, x) for x in (prefill.k, prefill.v))
    return shard_cache(KVCache(k, v, valid, lay.table(prompt), *rec))


def _prefill(model, prompt_tokens, prompt_valid, size: int, record: bool = False):
    """Prompts' cache ([P, size] slots, prompt in the first Tp), last-position logits [P, V] and, with
    ``record`` on an MoE model, the prompt tokens' routes [P, Tp, L, k] (else None). The prompt attends over
    its own Tp slots only, not the empty rest of the cache."""
    cache = KVCache.empty(model.cfg, prompt_tokens.shape[0], size)
    positions = positions_from_valid(prompt_valid)
    tp = prompt_tokens.shape[1]
    routes = None
    if record and model.cfg.moe is not None:
        h, cache, aux = model.hidden(prompt_tokens, positions, prompt_valid, cache, 0, return_aux=True, attend=tp)
        routes = aux["routes"]  # [P, Tp, L, k]
    else:
        h, cache = model.hidden(prompt_tokens, positions, prompt_valid, cache, 0, attend=tp)
    return cache, model.logits(h[:, -1]), routes  # left padding puts every prompt's last token at Tp-1


def _draw(sp: SamplingParams, rng, row_ids, t, logits, live, stop, ops=STANDARD):
    """One decode step's tokens for the rows in the batch (row ``row_ids[b]`` at its step ``t[b]``): token
    (pad where not live), its log-prob, and whether the row stops here. ``ops``: the model's exp and log
    (``invariant.elementary``), as the trainer's log-probs take them."""
    tok, lp = select(row_keys(rng, row_ids, t), logits, temperature=sp.temperature, top_k=sp.top_k,
                     top_p=sp.top_p, min_p=sp.min_p, greedy=sp.greedy, ops=ops)
    tok = jnp.where(live, tok, sp.pad_id)
    return tok, jnp.where(live, lp, 0.0), jnp.isin(tok, stop) | (t + 1 >= sp.max_new_tokens)


def sample_impl(mdef: ModelDef, sp: SamplingParams, params: dict, prompt_tokens: jax.Array,
                prompt_valid: jax.Array, rng: jax.Array, row0: jax.Array | int = 0) -> SampleOutput:
    """The traced sampler (pure). prompt_tokens/valid: [P, Tp], left-padded. ``row0``: the index of this
    call's first row in a larger batch (rows are keyed by global index, so a batch sampled in pieces equals
    the batch sampled whole).

    On a purely data-parallel mesh (``data`` > 1, every other axis 1) each device samples its own prompts
    in its own loop (``shard_map``): no cross-device reduction per decode step to decide whether to go on,
    and a device whose rows have all stopped is done. Rows keep their global keys, so the completions are
    those of the one-device sampler."""
    ctx = current()
    ways = _data_ways(ctx, prompt_tokens.shape[0], sp)
    if ways > 1:
        return _per_device(mdef, sp, params, prompt_tokens, prompt_valid, rng, row0, ctx.mesh, ways)
    return _sample_rows(mdef, sp, params, prompt_tokens, prompt_valid, rng, row0)


def _data_ways(ctx, prompts: int, sp: SamplingParams) -> int:
    """Devices that can each sample their own share of the prompts (1: sample as one global program)."""
    if ctx is None:
        return 1
    shape = dict(ctx.mesh.shape)
    ways = shape.get("data", 1)
    if ways == 1 or any(v != 1 for a, v in shape.items() if a != "data"):
        return 1
    if prompts % ways or (sp.refills(prompts) and sp.slots % ways):
        return 1
    return ways


def _per_device(mdef: ModelDef, sp: SamplingParams, params: dict, prompt_tokens, prompt_valid, rng, row0,
                mesh, ways: int) -> SampleOutput:
    """``_sample_rows`` on each device's ``1/ways`` of the prompts (global row keys), under ``shard_map``."""
    local_rows = prompt_tokens.shape[0] // ways * sp.group_size
    if sp.refills(prompt_tokens.shape[0]):  # each device refills its own share of slots
        sp = dataclasses.replace(sp, slots=sp.slots // ways, refill_min=-(-sp.refill_min // ways))

    def local(params, pt, pv, rng, row0):
        with use(None):  # inside: plain single-device code, no sharding constraints
            out = _sample_rows(mdef, sp, params, pt, pv, rng, row0 + jax.lax.axis_index("data") * local_rows)
        return dataclasses.replace(out, slot_steps=jax.lax.psum(out.slot_steps, "data"))

    rows, rep = P("data"), P()
    routes = rows if sp.record_routes and mdef.cfg.moe is not None else None
    out_specs = SampleOutput(rows, rows, rows, rows, routes, rep)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(rep, rows, rows, rep, rep), out_specs=out_specs,
                       check_vma=False)
    return fn(params, prompt_tokens, prompt_valid, rng, jnp.asarray(row0, jnp.int32))


def _sample_rows(mdef: ModelDef, sp: SamplingParams, params: dict, prompt_tokens: jax.Array,
                 prompt_valid: jax.Array, rng: jax.Array, row0: jax.Array | int = 0) -> SampleOutput:
    """``sample_impl`` as one program over all the rows."""
    if sp.refills(prompt_tokens.shape[0]):
        return _refill_impl(mdef, sp, params, prompt_tokens, prompt_valid, rng, row0)
    model = mdef.bind(params)
    p, tp = prompt_tokens.shape
    g, n = sp.group_size, sp.max_new_tokens
    rows = p * g

    # Prefill once per prompt, then fan out to the group (paged: the group shares the prompt's pages). The
    # contiguous cache holds the first window's slots and grows at each window (below).
    lay = PageLayout.of(sp.page_size, p, rows, tp, n) if sp.page_size else None
    form = DecodeForm.of(mdef.cfg, window_ends(tp, n, sp.windows), paged=lay is not None)
    ends = form.ends
    cache, logits, prompt_routes = _prefill(model, prompt_tokens, prompt_valid,
                                            lay.prefill_size if lay else ends[0], sp.record_routes)
    record = prompt_routes is not None
    if record:
        prompt_routes = jnp.repeat(prompt_routes, g, axis=0)  # [R, Tp, L, k]
        routes = jnp.zeros((rows, n) + prompt_routes.shape[2:], jnp.int32)
    else:
        routes = jnp.zeros((), jnp.int32)
    if lay:
        valid = jnp.pad(jnp.repeat(prompt_valid, g, axis=0), ((0, 0), (0, lay.size - tp)))
        cache = paged_cache(cache, lay, jnp.arange(rows) // g, valid)
    else:
        cache = form.cache(_fan_out(cache, g), model.cfg)
    layer_states = form.layer_states(model)  # sliced once, read in place by every step
    logits = jnp.repeat(logits, g, axis=0)
    next_pos = jnp.repeat(jnp.sum(prompt_valid, axis=1).astype(jnp.int32), g)
    stop = jnp.asarray(sp.stop_ids if sp.stop_ids else (-1,), jnp.int32)
    table = None if sp.stop_table is None else jnp.asarray(sp.stop_table.table)
    row_ids = row0 + jnp.arange(rows, dtype=jnp.int32)

    def cond(state):
        t, done = state[0], state[7]
        return (t < n) & ~jnp.all(done)

    def body(state, attend):
        t, cache, logits, toks, logps, mask, pos, done, routes, sst = state
        live = ~done
        tok, lp, stops = _draw(sp, rng, row_ids, jnp.full((rows,), t), logits, live, stop,
                               elementary(model.cfg.batch_invariant))
        if table is not None:
            sst, hit = stop_strings.step(table, sst, tok, live)
            stops = stops | hit
        toks = toks.at[:, t].set(tok)
        logps = logps.at[:, t].set(lp)
        mask = mask.at[:, t].set(live)
        done = done | stops

        # Always run the next forward (a lax.cond here makes XLA copy the whole cache every step); the
        # iteration after the last stop computes one unused step.
        if record:  # the forward of the token sampled at step t: sequence index Tp + t
            h, cache, aux = model.hidden(tok[:, None], pos[:, None], live[:, None], cache, tp + t, return_aux=True,
                                         attend=attend, layer_states=layer_states)
            routes = routes.at[:, t].set(aux["routes"][:, 0])
        else:
            h, cache = model.hidden(tok[:, None], pos[:, None], live[:, None], cache, tp + t, attend=attend,
                                    layer_states=layer_states)
        logits = model.logits(h[:, 0])
        return t + 1, cache, logits, toks, logps, mask, pos + 1, done, routes, sst

    init = (jnp.int32(0), cache, logits, jnp.full((rows, n), sp.pad_id, jnp.int32),
            jnp.zeros((rows, n), jnp.float32), jnp.zeros((rows, n), bool), next_pos, jnp.zeros((rows,), bool),
            routes, jnp.zeros((rows,) if sp.stop_table is not None else (), jnp.int32))
    state = init
    for end in ends:  # step t writes slot tp + t: within the first ``end`` slots
        if not lay:
            state = state[:1] + (window_cache(state[1], end),) + state[2:]
        state = jax.lax.while_loop(lambda st, lim=end - tp: cond(st) & (st[0] < lim),
                                   functools.partial(body, attend=end), state)
    steps, _, _, toks, logps, mask, _, _, routes, _ = state
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    return SampleOutput(toks, mask, logps, lengths,
                        jnp.concatenate([prompt_routes, routes], axis=1) if record else None,
                        steps * rows)


def _refill_impl(mdef: ModelDef, sp: SamplingParams, params: dict, prompt_tokens: jax.Array,
                 prompt_valid: jax.Array, rng: jax.Array, row0) -> SampleOutput:
    """In-flight refill: ``sp.slots`` batch slots decode the R = P * G rows in order.

    An outer loop hands free slots to waiting rows (prompt K/V, validity, position and first logits copied
    from the per-prompt prefill; one pass over the slots' prompt region), then an inner loop decodes until
    ``refill_min`` slots are free again (or, with no row waiting, until all stop). A row in a slot keeps the
    plain loop's layout: prompt in slots [0, Tp), its step ``t`` at slot Tp + t, each slot writing at its own
    index; outputs are scattered to the row's place. Slots not holding a live row write nothing visible."""
    model = mdef.bind(params)
    p, tp = prompt_tokens.shape
    g, n, b = sp.group_size, sp.max_new_tokens, sp.slots
    rows = p * g
    refill_at = sp.refill_min or max(1, b // 8)

    lay = PageLayout.of(sp.page_size, p, b, tp, n) if sp.page_size else None
    form = DecodeForm.of(mdef.cfg, [tp + n], paged=lay is not None)
    pcache, plogits, prompt_routes = _prefill(model, prompt_tokens, prompt_valid,
                                              lay.prefill_size if lay else tp, sp.record_routes)
    record = prompt_routes is not None
    plen = jnp.sum(prompt_valid, axis=1).astype(jnp.int32)
    size = lay.size if lay else form.ends[-1]
    layer_states = form.layer_states(model)
    pvalid = jnp.pad(prompt_valid, ((0, 0), (0, size - tp)))
    stop = jnp.asarray(sp.stop_ids if sp.stop_ids else (-1,), jnp.int32)
    table = None if sp.stop_table is None else jnp.asarray(sp.stop_table.table)

    def assign(c: KVCache, take, pi) -> KVCache:
        """Slots ``take`` start rows of prompts ``pi``: contiguous, copy the prompt's K/V into the slot;
        paged, point the slot's table at the prompt's shared pages and copy only its last page. Linear-attention
        layers' states are copied from the prompt's in both."""
        valid = jnp.where(take[:, None], pvalid[pi], c.valid)
        sel = take[None, :, None, None, None]
        rec = tuple(jnp.where(take.reshape((1, -1) + (1,) * (a.ndim - 2)), p[:, pi], a)
                    for a, p in zip(c.recurrent(), pcache.recurrent()))
        if c.split:
            k, v = (tuple(a.at[:, :, :tp].set(jnp.where(sel[0], x[i][pi], a[:, :, :tp])) for i, a in enumerate(buf))
                    for buf, x in zip((c.k, c.v), pcache.layer_buffers(mdef.cfg)))
            return shard_cache(KVCache(k, v, valid))
        if lay is None:
            k, v = (jax.tree.map(lambda a, x: a.at[:, :, :, :tp].set(jnp.where(sel, x[:, pi], a[:, :, :, :tp])),
                                 buf, pbuf) for buf, pbuf in ((c.k, pcache.k), (c.v, pcache.v)))
            return shard_cache(KVCache(k, v, valid, None, *rec))
        first, full = lay.own_first(), lay.shared * lay.page
        k, v = (jax.tree.map(lambda pool, x: pool.at[:, first].set(
                    jnp.where(sel, x[:, pi, :, full:full + lay.page], pool[:, first])), buf, pbuf)
                for buf, pbuf in ((c.k, pcache.k), (c.v, pcache.v)))
        table = jnp.where(take[:, None], lay.table(pi), c.table)
        return shard_cache(KVCache(k, v, valid, table, *rec))

    def refill(s):
        free = s["done"]
        want = s["next"] + jnp.cumsum(free.astype(jnp.int32)) - 1  # the free slots, in order, take the next rows
        take = free & (want < rows)
        pi = jnp.minimum(want, rows - 1) // g
        return {**s, "cache": assign(s["cache"], take, pi),
                "logits": jnp.where(take[:, None], plogits[pi], s["logits"]),
                "row": jnp.where(take, want, s["row"]), "t": jnp.where(take, 0, s["t"]),
                "pos": jnp.where(take, plen[pi], s["pos"]), "done": free & ~take,
                "sst": jnp.where(take, 0, s["sst"]),
                "next": s["next"] + jnp.sum(take.astype(jnp.int32))}

    def decoding(s):
        waiting = s["next"] < rows
        return ~jnp.all(s["done"]) & (~waiting | (jnp.sum(s["done"].astype(jnp.int32)) < refill_at))

    def step(s):
        live, t = ~s["done"], s["t"]
        tok, lp, stops = _draw(sp, rng, row0 + s["row"], t, s["logits"], live, stop,
                               elementary(model.cfg.batch_invariant))
        sst = s["sst"]
        if table is not None:
            sst, hit = stop_strings.step(table, sst, tok, live)
            stops = stops | hit
        at = jnp.where(live, s["row"], rows)  # out of range: dropped
        out = {"toks": s["toks"].at[at, t].set(tok, mode="drop"),
               "logps": s["logps"].at[at, t].set(lp, mode="drop"),
               "mask": s["mask"].at[at, t].set(True, mode="drop")}
        index = tp + jnp.minimum(t, n - 1)
        if record:
            h, cache, aux = model.hidden(tok[:, None], s["pos"][:, None], live[:, None], s["cache"], index,
                                         return_aux=True, layer_states=layer_states)
            out["routes"] = s["routes"].at[at, t].set(aux["routes"][:, 0], mode="drop")
        else:
            h, cache = model.hidden(tok[:, None], s["pos"][:, None], live[:, None], s["cache"], index,
                                    layer_states=layer_states)
        step_i = live.astype(jnp.int32)
        return {**s, **out, "cache": cache, "logits": model.logits(h[:, 0]), "t": t + step_i,
                "pos": s["pos"] + step_i, "done": s["done"] | stops, "sst": sst,
                "steps": s["steps"] + 1}

    def outer(s):
        return jax.lax.while_loop(decoding, step, refill(s))

    if lay:  # every prompt's shared pages from the prefill; slots get theirs as rows arrive
        init_cache = paged_cache(pcache, lay, jnp.zeros((b,), jnp.int32), jnp.zeros((b, size), bool))
    else:
        init_cache = form.cache(shard_cache(KVCache.empty(mdef.cfg, b, size)), mdef.cfg)
    init = {"cache": init_cache,
            "logits": jnp.zeros((b, plogits.shape[-1]), plogits.dtype),
            "row": jnp.full((b,), rows, jnp.int32), "t": jnp.zeros((b,), jnp.int32),
            "pos": jnp.zeros((b,), jnp.int32), "done": jnp.ones((b,), bool), "next": jnp.int32(0),
            "sst": jnp.zeros((b,), jnp.int32),
            "steps": jnp.int32(0), "toks": jnp.full((rows, n), sp.pad_id, jnp.int32),
            "logps": jnp.zeros((rows, n), jnp.float32), "mask": jnp.zeros((rows, n), bool)}
    if record:
        init["routes"] = jnp.zeros((rows, n) + prompt_routes.shape[2:], jnp.int32)
    s = jax.lax.while_loop(lambda s: (s["next"] < rows) | ~jnp.all(s["done"]), outer, init)
    lengths = jnp.sum(s["mask"], axis=1).astype(jnp.int32)
    routes = None
    if record:
        routes = jnp.concatenate([jnp.repeat(prompt_routes, g, axis=0), s["routes"]], axis=1)
    return SampleOutput(s["toks"], s["mask"], s["logps"], lengths, routes, s["steps"] * b)


@functools.lru_cache(maxsize=32)
def _compiled(mdef: ModelDef, sp: SamplingParams, ctx):
    return jax.jit(traced_under(ctx, functools.partial(sample_impl, mdef, sp)),
                   compiler_options=invariant.compiler_options(mdef.cfg.batch_invariant))


def sample(mdef: ModelDef, params: dict, prompt_tokens, prompt_valid, rng: jax.Array, sp: SamplingParams,
           row0: int = 0) -> SampleOutput:
    """Jitted sampling (one compiled program per ModelDef, SamplingParams, sharding context and input
    shape); under an active sharding context (``sharding.use``) it samples on that mesh."""
    return _compiled(mdef, sp, current())(params, jnp.asarray(prompt_tokens, jnp.int32),
                                          jnp.asarray(prompt_valid, bool), rng, jnp.int32(row0))


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
             stop_ids: Sequence[int] = (), pad_id: int = 0, group_size: int = 1, slots: int = 0,
             refill_min: int = 0, page_size: int = 0, stop_table: StopTable | None = None,
             min_p: float = 0.0) -> SampleOutput:
    """Convenience wrapper: numpy in, SampleOutput out."""
    sp = SamplingParams(max_new_tokens, float(temperature), int(top_k), float(top_p), bool(greedy),
                        tuple(int(s) for s in stop_ids), int(pad_id), int(group_size), slots=int(slots),
                        refill_min=int(refill_min), page_size=int(page_size), stop_table=stop_table,
                        min_p=float(min_p))
    return sample(mdef, params, prompt_tokens, prompt_valid, jax.random.key(rng_seed), sp)
