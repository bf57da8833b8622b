"""Pure training steps: ``sft_step(state, batch)`` and ``grpo_step(state, batch)`` → ``(state, metrics)``.

Both are plain functions of pytrees, built by ``make_*_step`` with the static parts (model definition,
algorithm settings, optimizer) closed over, then jitted with buffer donation by the caller. Gradients are
accumulated over micro-batches with ``lax.scan`` as sums and divided once by the global count, so the update
is the same for any micro-batch split. A step whose loss or gradient is not finite is not applied
(parameters and optimizer state are kept, on device, without a host round-trip) and is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from reasoning_rl.config import AlgorithmConfig, OptimizerConfig
from reasoning_rl.models import ModelDef, lora
from reasoning_rl.models.lora import has_adapters, join, split, trainable, with_trainable

from .logprobs import target_logprobs, target_values
from .losses import LossInputs, entropy_sum, get_loss, loss_options, off_policy_terms, sft_loss, value_loss


@jax.tree_util.register_dataclass
@dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    skipped: jax.Array  # consecutive non-finite steps that were not applied
    critic: Any = None  # PPO: {"params": {"backbone", "head"}, "opt_state"}; None for every other stage


@dataclass(frozen=True)
class AdamHyper:
    b1: float
    b2: float
    eps: float
    weight_decay: float | None  # None: adam (no add_decayed_weights in the chain)
    lr: Any  # a float or an optax schedule


class Optimizer(NamedTuple):
    """An optax transformation (``init``, ``update``) and, for Adam and AdamW, the hyperparameters that let
    ``_updated`` write the new parameters from the already-updated moments (see there)."""

    init: Callable
    update: Callable
    adam: AdamHyper | None = None


# Parameters that hold values rather than learn them (no gradient reaches them): Gemma 4's per-layer output
# scales, DeepSeek's expert selection biases, xIELU's fixed scalars. A weight decay leaves them alone, as the
# references' buffers.
NO_DECAY = frozenset({"layer_scalar", "score_bias", "act_beta", "act_eps"})


def decays(params: Any) -> Any:
    """Per leaf of ``params``: does a weight decay apply to it (everything but the ``NO_DECAY`` values)?"""
    def leaf(path, _):
        return getattr(path[-1], "key", None) not in NO_DECAY if path else True

    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(ocfg: OptimizerConfig, total_steps: int) -> Optimizer:
    if ocfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, ocfg.lr, max(ocfg.warmup_steps, 0), max(total_steps, 1))
    elif ocfg.warmup_steps > 0:
        lr = optax.linear_schedule(0.0, ocfg.lr, ocfg.warmup_steps)
    else:
        lr = ocfg.lr
    if ocfg.name == "adamw":
        opt = optax.adamw(lr, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps, weight_decay=ocfg.weight_decay, mask=decays)
        return Optimizer(opt.init, opt.update, AdamHyper(ocfg.b1, ocfg.b2, ocfg.eps, ocfg.weight_decay, lr))
    if ocfg.name == "adam":
        opt = optax.adam(lr, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps)
        return Optimizer(opt.init, opt.update, AdamHyper(ocfg.b1, ocfg.b2, ocfg.eps, None, lr))
    opt = optax.sgd(lr)
    return Optimizer(opt.init, opt.update)


def restart_moments(opt_state: Any) -> Any:
    """ProRL's optimizer reset: Adam's moments and its bias-correction count start over (the next update is
    Adam's first again, not one scaled by moments of a policy the reference has moved past); a learning-rate
    schedule's count goes on, so warmup and decay are not repeated. Same shardings; SGD has nothing to reset."""
    adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    if not any(adam(x) for x in jax.tree.leaves(opt_state, is_leaf=adam)):
        return opt_state
    shardings = jax.tree.map(lambda a: a.sharding, opt_state)

    def fresh(state):
        return jax.tree.map(lambda x: jax.tree.map(jnp.zeros_like, x) if adam(x) else x, state, is_leaf=adam)

    return jax.jit(fresh, out_shardings=shardings, donate_argnums=0)(opt_state)


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Optimizer state over the trainable parameters only (a LoRA model's adapters)."""
    return TrainState(params, tx.init(trainable(params)), jnp.zeros((), jnp.int32), jax.random.key(seed),
                      jnp.zeros((), jnp.int32))


def _split_micro(batch: dict, n: int) -> dict:
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def _apply(state: TrainState, grads, tx, max_grad_norm: float, loss,
           inject_nan_steps: tuple[int, ...] = ()) -> tuple[TrainState, dict]:
    """Clip, update, and keep the old state if anything is non-finite. ``grads`` cover the trainable
    parameters (a LoRA model's adapters); a frozen base passes through untouched."""
    if inject_nan_steps:  # test switch: poison this update's gradients on device, like a bad batch would
        poison = jnp.isin(state.step + 1, jnp.asarray(inject_nan_steps, jnp.int32))
        grads = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g).astype(g.dtype), grads)
    gnorm = global_norm(grads)
    if max_grad_norm > 0:
        scale = jnp.minimum(1.0, max_grad_norm / (gnorm + 1e-12))
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    new_params, opt_state = _updated(tx, grads, state.opt_state, trainable(state.params), ok)
    params = with_trainable(state.params, new_params)
    new_state = TrainState(params, opt_state, state.step + 1, state.rng,
                           jnp.where(ok, 0, state.skipped + 1).astype(jnp.int32))
    return new_state, {"grad_norm": gnorm, "skipped": (~ok).astype(jnp.int32)}


def global_norm(tree) -> jax.Array:
    """``optax.global_norm(tree)``, the same number (the same per-leaf sums of squares, added in the same
    order), with the leaves' sums computed one after another.

    XLA:CPU materialises each leaf's squares for its tree reduction (the square does not fuse into the
    reduce-window), and left to itself it schedules every leaf's squares at once: a second copy of most of
    the gradient (0.4 GiB at 135M parameters, the largest buffers of a GRPO step's update). Each leaf's sum
    here runs in a ``lax.cond`` on the previous sum (an ``optimization_barrier`` is dropped before XLA:CPU
    schedules), so one leaf's squares are live at a time. Other backends fuse the square into the reduction
    (and would pay a predicate read per ``cond``): optax's own expression."""
    if jax.default_backend() != "cpu":
        return optax.tree.norm(tree)
    sq = lambda x: jnp.sum(jnp.square(x.real) + jnp.square(x.imag))  # optax.tree.norm's _square, summed
    total, prev = None, None
    for leaf in jax.tree.leaves(tree):
        if prev is None:
            prev = sq(leaf)
        else:  # both branches the same: the predicate only orders this sum after the previous one
            prev = jax.lax.cond(prev >= 0, sq, sq, leaf)
        total = prev if total is None else total + prev
    return jnp.sqrt(jnp.asarray(0.0 if total is None else total))


def _updated(tx, grads, opt_state, params, ok: jax.Array):
    """(params, opt_state) after the update, or both unchanged unless ``ok``.

    Adam(W) (``tx.adam``): the moments are updated first (optax's own ``update``, of which only the new state
    is used) and the parameters are then computed from those new moments inside ``lax.cond``, the same ops as
    optax's chain. Written as one expression, XLA:CPU recomputes the new moments from the old ones in the
    parameters' fusion while the moments' fusion overwrites them in place (their buffers are donated), so it
    keeps a copy of every moment for the whole step: 1 GiB at 135M parameters, the largest temporary of a
    remat'd step. Other optimizers: the plain expression."""
    keep = lambda new, old: jnp.where(ok, new, old)
    hp = getattr(tx, "adam", None)
    if hp is None:
        updates, new_opt = tx.update(grads, opt_state, params)
        return jax.tree.map(keep, optax.apply_updates(params, updates), params), jax.tree.map(keep, new_opt, opt_state)
    _, new_opt = tx.update(grads, opt_state, params)
    new_opt = jax.tree.map(keep, new_opt, opt_state)
    adam = new_opt[0]  # ScaleByAdamState(count, mu, nu): the chain's first state

    def step(args):
        p, mu, nu = args
        mu_hat = optax.tree.bias_correction(mu, hp.b1, adam.count)
        nu_hat = optax.tree.bias_correction(nu, hp.b2, adam.count)
        u = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + 0.0) + hp.eps), mu_hat, nu_hat)  # scale_by_adam
        if hp.weight_decay is not None and hp.weight_decay != 0.0:  # add_decayed_weights
            u = jax.tree.map(lambda g, w, on: g + hp.weight_decay * w if on else g, u, p, decays(p))
        lr = hp.lr
        if callable(lr):  # scale_by_schedule at the count before this update (the chain's last state)
            size = -1 * lr(opt_state[-1].count)
            u = jax.tree.map(lambda g: jnp.array(size, dtype=g.dtype) * g, u)
        else:
            u = jax.tree.map(lambda g: (-1 * lr) * g, u)
        return optax.apply_updates(p, u)

    return jax.lax.cond(ok, step, lambda args: args[0], (params, adam.mu, adam.nu)), new_opt


_MAX_KEYS = ("logprob_gap", "is_ratio_max")  # aux entries combined across micro-batches by max, not sum


def _accumulate(loss_fn, params, batch: dict, n_micro: int, drop=None):
    """Sum gradients and (sum, count) metrics over micro-batches; returns grads of sum/global_count.

    With LoRA adapters in ``params`` the gradient is taken for the adapters only: the frozen base enters as
    a constant, so no full-size weight gradient is ever formed. ``drop``: this update's LoRA dropout
    (``lora.dropout_key``) or None."""
    if has_adapters(params):
        base, params = split(params)
        full_loss = loss_fn
        loss_fn = lambda ad, b: full_loss(join(base, ad), b)
    g, aux = _accumulate_sums(loss_fn, params, batch, n_micro, drop)
    count = jnp.maximum(aux["count"], 1.0)
    grads = jax.tree.map(lambda x: x / count.astype(x.dtype), g)
    return grads, aux


def _accumulate_sums(loss_fn, params, batch: dict, n_micro: int, drop=None):
    """Gradients of the loss *sums* and (sum, count) metrics, summed over micro-batches. ``drop`` (key, rate):
    the losses run in a LoRA dropout scope, micro-batch ``i`` with the key folded with ``i`` (dropout 0 or
    None: no scope, the same program as without LoRA dropout)."""

    def scoped(p, b, i):
        if drop is None:
            return loss_fn(p, b)
        with lora.dropout((jax.random.fold_in(drop[0], i), drop[1])):
            return loss_fn(p, b)

    grad_fn = jax.grad(scoped, has_aux=True)
    if n_micro == 1:
        g, aux = grad_fn(params, batch, 0)
    else:
        micro = _split_micro(batch, n_micro)
        zero_g = jax.tree.map(jnp.zeros_like, params)
        _, aux_shape = jax.eval_shape(lambda p, b: loss_fn(p, b), params, jax.tree.map(lambda x: x[0], micro))
        zero_aux = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)

        def body(carry, xs):
            g_acc, a_acc = carry
            mb, i = xs if drop is not None else (xs, 0)
            g, a = grad_fn(params, mb, i)
            a_new = {k: jax.tree.map(jnp.maximum if k in _MAX_KEYS else jnp.add, a_acc[k], a[k]) for k in a}
            return (jax.tree.map(jnp.add, g_acc, g), a_new), None

        xs = (micro, jnp.arange(n_micro, dtype=jnp.int32)) if drop is not None else micro
        (g, aux), _ = jax.lax.scan(body, (zero_g, zero_aux), xs)
    return g, aux


def moe_terms(moe: dict, count: jax.Array, valid: jax.Array) -> tuple[jax.Array, dict]:
    """The MoE load-balancing loss to add to a micro-batch's loss sum, and MoE metrics as (sum, count) pairs.

    The balancing loss (the family's ``aux_loss_coef`` times the Switch loss; zero for aux-loss-free
    DeepSeek-V3) enters as ``aux_loss * count``: divided by the global count like the main loss, it is the
    count-weighted mean over micro-batches. Dense models: nothing."""
    if not moe:
        return jnp.zeros((), jnp.float32), {}
    metrics = {"moe_balance_loss": (moe["balance_loss"] * count, count)}
    copies = jnp.float32(valid.size * moe["routes"].shape[2] * moe["routes"].shape[3])  # every position is routed
    if "dropped_tokens" in moe:
        metrics["moe_dropped_frac"] = (moe["dropped_tokens"].astype(jnp.float32), copies)
    if "route_diff" in moe:
        metrics["route_mismatch"] = (moe["route_diff"], moe["route_count"])
    return moe["aux_loss"] * count, metrics


def _ratios(aux: dict) -> dict:
    """Metrics accumulated as (sum, count) pairs, as means."""
    return {k: v[0] / jnp.maximum(v[1], 1.0) for k, v in aux.items() if isinstance(v, tuple)}


def make_sft_step(mdef: ModelDef, ocfg: OptimizerConfig, tx: optax.GradientTransformation, micro_batches: int = 1,
                  logits_chunk: int | None = None):
    """batch: tokens [B, T] int32, valid [B, T] bool, loss_mask [B, T] bool (which targets to train on); packed
    rows (``data.batching.packed_sft_batch``) add positions and segments [B, T] int32: each sequence attends
    within itself, and no target is predicted across a boundary. The loss is the mean over target tokens
    either way, so a packed batch gives the unpacked batch's loss and gradient."""

    def loss_fn(params, b):
        model = mdef.bind(params)
        n = b["tokens"].shape[1] - 1
        seg = b.get("segments")
        lp, moe = target_logprobs(model, b["tokens"], b["valid"], n, 1.0, logits_chunk, with_aux=True,
                                  positions=b.get("positions"), segments=seg)
        targets = b["loss_mask"][:, 1:] if seg is None else b["loss_mask"][:, 1:] & (seg[:, 1:] == seg[:, :-1])
        s, c = sft_loss(lp, targets)
        extra, metrics = moe_terms(moe, c, b["valid"])
        return s + extra, {"loss_sum": s, "count": c, **metrics}

    def sft_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        grads, aux = _accumulate(loss_fn, state.params, batch, micro_batches,
                                 lora.dropout_key(mdef.cfg, state.rng, state.step))
        loss = aux["loss_sum"] / jnp.maximum(aux["count"], 1.0)
        state, m = _apply(state, grads, tx, ocfg.max_grad_norm, loss, ocfg.inject_nan_steps)
        return state, {"loss": loss, "tokens": aux["count"], **m, **_ratios(aux)}

    return sft_step


def entropy_trained(acfg: AlgorithmConfig) -> bool:
    """Does the loss hold an entropy bonus (a fixed ``entropy_coef`` or adaptive control), so that the
    entropy needs its gradient?"""
    return acfg.entropy_coef > 0 or acfg.entropy_target > 0


def entropy_bonus(ent, b: dict, acfg: AlgorithmConfig, budget: int | None):
    """The entropy bonus's sum (the loss falls as the policy's entropy rises; aggregated as the loss's own terms,
    so it shares their count): ``algorithm.entropy_coef`` times the entropies, or, under adaptive entropy control,
    each row's ``b["entropy_coef"]`` (``algorithms.entropy.EntropyControl``) times its entropies; 0 when off."""
    if "entropy_coef" in b:
        ent = ent * b["entropy_coef"][:, None]
    elif acfg.entropy_coef > 0:
        ent = acfg.entropy_coef * ent
    else:
        return 0.0
    return entropy_sum(ent, b["mask"], acfg.loss, acfg.aggregation, budget)


def make_grpo_grad(mdef: ModelDef, acfg: AlgorithmConfig, temperature: float, logits_chunk: int | None = None,
                   group: int = 1, budget: int | None = None):
    """``(params, batch) -> (grads, aux)``: the normalised gradient of one mini-batch, accumulated over
    ``acfg.micro_batches`` micro-batches. ``group``: rows come in groups of this many sharing a prompt (a
    rollout batch), so the prompt is run once per group (see ``target_logprobs``).

    batch: tokens [B, Tp+T] int32, valid [B, Tp+T] bool (prompt validity ++ completion mask), mask [B, T],
    old_logp [B, T], sampler_logp [B, T], adv [B], ref_logp [B, T] when ``acfg.beta > 0``, and for stale
    (asynchronous) rollouts either is_weight [B, T] (old_logp then holds the proximal policy's log-probs) or
    behaviour_logp [B, T] in place of sampler_logp: the batch gets this one update only, so the proximal
    policy *is* the params being differentiated and its log-probs are this forward's own (stop-gradient)
    values, with the importance weights against behaviour_logp (``acfg.off_policy``, ``acfg.tis_cap``)
    formed here: no second forward. ``budget``: the generation budget (``rollout.max_new_tokens``), which
    Dr.GRPO's aggregation divides by; the batch's completion columns may be fewer (trimmed to its longest).
    """
    loss = get_loss(acfg.loss)
    kw = loss_options(acfg, budget=budget)

    def loss_fn(params, b):
        model = mdef.bind(params)
        n = b["mask"].shape[1]
        lp, ent, moe = target_logprobs(model, b["tokens"], b["valid"], n, temperature, logits_chunk,
                                       with_entropy=True, routes=b.get("routes"), with_aux=True, group=group,
                                       entropy_grad=entropy_trained(acfg))
        old, weight, off = b["old_logp"], b.get("is_weight"), {}
        if "behaviour_logp" in b:
            old = jax.lax.stop_gradient(lp)
            weight, off = off_policy_terms(old, b["behaviour_logp"], b["mask"], acfg.off_policy, acfg.tis_cap)
        x = LossInputs(lp, old, b.get("ref_logp") if acfg.beta > 0 else None, b["adv"], b["mask"], weight,
                       b.get("cov_select"))
        s, c, metrics = loss(x, **kw)
        s = s - entropy_bonus(ent, b, acfg, budget)
        m = b["mask"].astype(jnp.float32)
        sampler = b["sampler_logp"] if "sampler_logp" in b else b["behaviour_logp"]  # the sampler's log-probs
        gap = jnp.max(jnp.abs(jax.lax.stop_gradient(lp) - sampler) * m)
        extra, moe_metrics = moe_terms(moe, c, b["valid"])
        aux = {"loss_sum": s, "count": c, "entropy": (jnp.sum(ent * m), jnp.sum(m)), "logprob_gap": gap,
               **metrics, **moe_metrics, **off}
        return s + extra, aux

    return lambda params, batch, drop=None: _accumulate(loss_fn, params, batch, acfg.micro_batches, drop)


def make_grpo_step(mdef: ModelDef, acfg: AlgorithmConfig, ocfg: OptimizerConfig, tx: optax.GradientTransformation,
                   temperature: float, logits_chunk: int | None = None, group: int = 1, budget: int | None = None):
    """One optimizer update on one mini-batch (see ``make_grpo_grad`` for the batch layout and ``budget``)."""
    grad_fn = make_grpo_grad(mdef, acfg, temperature, logits_chunk, group, budget)

    def grpo_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        # LoRA dropout (model.lora.dropout > 0) in the policy's training forward only, as PEFT/TRL: the
        # ratio's new log-probs see it, the old ones (the sampler's) do not.
        grads, aux = grad_fn(state.params, batch, lora.dropout_key(mdef.cfg, state.rng, state.step))
        loss_v = aux["loss_sum"] / jnp.maximum(aux["count"], 1.0)
        state, m = _apply(state, grads, tx, ocfg.max_grad_norm, loss_v, ocfg.inject_nan_steps)
        out = {"loss": loss_v, **m, **_ratios(aux)}
        out["logprob_gap"] = aux["logprob_gap"]
        if "is_ratio_max" in aux:
            out["is_ratio_max"] = aux["is_ratio_max"]
        return state, out

    return grpo_step


def make_logprob_fn(mdef: ModelDef, temperature: float, logits_chunk: int | None = None, group: int = 1):
    """params, tokens, valid, n → log-probs [B, n] (reference model or behaviour recompute); ``group`` as in
    ``make_grpo_grad``."""

    def fn(params, tokens, valid, mask):
        return target_logprobs(mdef.bind(params), tokens, valid, mask.shape[1], temperature, logits_chunk,
                               group=group)

    return fn


def _clipped_update(params, opt_state, grads, tx, max_grad_norm: float):
    """One optimizer update after clipping to ``max_grad_norm`` (0: none); returns the pre-clip norm."""
    gnorm = global_norm(grads)
    if max_grad_norm > 0:
        scale = jnp.minimum(1.0, max_grad_norm / (gnorm + 1e-12))
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    updates, new_opt = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt, gnorm


def make_ppo_grad(mdef: ModelDef, cdef: ModelDef, acfg: AlgorithmConfig, temperature: float,
                  logits_chunk: int = 0, group: int = 1, budget: int | None = None):
    """``({"policy", "critic"}, batch) -> (grads, aux)``: the policy's token loss (``algorithm.loss``: grpo's
    clipped one, cispo or sapo) and the critic's clipped value loss on one mini-batch, accumulated over
    micro-batches; each part's gradient is divided by its own global count (the policy's aggregation count,
    the critic's token count), so the update is the same for any split. The two parameter sets are disjoint,
    so one backward pass gives both gradients. A LoRA policy's gradient covers its adapters only
    (``grads["policy"]`` is the adapters tree).

    batch: as ``make_grpo_grad`` with ``adv`` [B, T] (GAE), plus ``old_values`` and ``returns`` [B, T];
    ``budget`` as there."""
    loss = get_loss(acfg.loss)
    beta = acfg.beta if acfg.kl_in == "loss" else 0.0  # in the reward: already in the advantages
    kw = loss_options(acfg, beta=beta, budget=budget)

    def loss_fn(both, b):
        model = mdef.bind(both["policy"])
        n = b["mask"].shape[1]
        lp, ent, moe = target_logprobs(model, b["tokens"], b["valid"], n, temperature, logits_chunk,
                                       with_entropy=True, routes=b.get("routes"), with_aux=True, group=group,
                                       entropy_grad=entropy_trained(acfg))
        x = LossInputs(lp, b["old_logp"], b.get("ref_logp") if beta > 0 else None, b["adv"], b["mask"])
        s, c, metrics = loss(x, **kw)
        s = s - entropy_bonus(ent, b, acfg, budget)
        v = target_values(cdef, both["critic"], b["tokens"], b["valid"], n, group)
        vs, vc, vmetrics = value_loss(v, b["old_values"], b["returns"], b["mask"], acfg.vf_clip)
        m = b["mask"].astype(jnp.float32)
        sampler = b["sampler_logp"] if "sampler_logp" in b else b["behaviour_logp"]  # the sampler's log-probs
        gap = jnp.max(jnp.abs(jax.lax.stop_gradient(lp) - sampler) * m)
        extra, moe_metrics = moe_terms(moe, c, b["valid"])
        aux = {"loss_sum": s, "count": c, "vf_sum": vs, "vf_count": vc, "logprob_gap": gap,
               "entropy": (jnp.sum(ent * m), jnp.sum(m)), **metrics, **vmetrics, **moe_metrics}
        return s + extra + acfg.vf_coef * vs, aux

    def grad(both, batch, drop=None):
        if has_adapters(both["policy"]):  # LoRA: the policy's gradient for its adapters only, the base a constant
            base, ad = split(both["policy"])
            lora_loss = lambda p, b: loss_fn({"policy": join(base, p["policy"]), "critic": p["critic"]}, b)
            g, aux = _accumulate_sums(lora_loss, {"policy": ad, "critic": both["critic"]}, batch, acfg.micro_batches,
                                      drop)
        else:
            g, aux = _accumulate_sums(loss_fn, both, batch, acfg.micro_batches, drop)
        pc, vc = jnp.maximum(aux["count"], 1.0), jnp.maximum(aux["vf_count"], 1.0)
        return {"policy": jax.tree.map(lambda x: x / pc.astype(x.dtype), g["policy"]),
                "critic": jax.tree.map(lambda x: x / vc.astype(x.dtype), g["critic"])}, aux

    return grad


def make_ppo_step(mdef: ModelDef, cdef: ModelDef, acfg: AlgorithmConfig, ocfg: OptimizerConfig,
                  tx: optax.GradientTransformation, critic_ocfg: OptimizerConfig,
                  critic_tx: optax.GradientTransformation, temperature: float, logits_chunk: int = 0,
                  group: int = 1, warmup_updates: int = 0, budget: int | None = None):
    """One PPO update of policy and critic (``state.critic``) on one mini-batch. The first ``warmup_updates``
    optimizer updates train the critic only (the policy and its optimizer state are kept). A non-finite loss
    or gradient in either part applies neither and counts as a skipped step. A LoRA policy updates its adapters
    only (``tx``'s state covers them); its frozen base passes through untouched."""
    grad_fn = make_ppo_grad(mdef, cdef, acfg, temperature, logits_chunk, group, budget)

    def ppo_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        critic = state.critic
        grads, aux = grad_fn({"policy": state.params, "critic": critic["params"]}, batch,
                             lora.dropout_key(mdef.cfg, state.rng, state.step))
        gp = grads["policy"]
        if ocfg.inject_nan_steps:  # test switch, as in ``_apply``
            poison = jnp.isin(state.step + 1, jnp.asarray(ocfg.inject_nan_steps, jnp.int32))
            gp = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g).astype(g.dtype), gp)
        old_p = trainable(state.params)
        new_p, new_po, gn_p = _clipped_update(old_p, state.opt_state, gp, tx, ocfg.max_grad_norm)
        new_c, new_co, gn_c = _clipped_update(critic["params"], critic["opt_state"], grads["critic"], critic_tx,
                                              critic_ocfg.max_grad_norm)
        loss_v = aux["loss_sum"] / jnp.maximum(aux["count"], 1.0)
        vloss = aux["vf_sum"] / jnp.maximum(aux["vf_count"], 1.0)
        ok = jnp.isfinite(loss_v) & jnp.isfinite(gn_p) & jnp.isfinite(vloss) & jnp.isfinite(gn_c)
        train_policy = ok & (state.step >= warmup_updates)
        pick = lambda cond: lambda new, old: jnp.where(cond, new, old)
        params = with_trainable(state.params, jax.tree.map(pick(train_policy), new_p, old_p))
        opt_state = jax.tree.map(pick(train_policy), new_po, state.opt_state)
        critic = {"params": jax.tree.map(pick(ok), new_c, critic["params"]),
                  "opt_state": jax.tree.map(pick(ok), new_co, critic["opt_state"])}
        new_state = TrainState(params, opt_state, state.step + 1, state.rng,
                               jnp.where(ok, 0, state.skipped + 1).astype(jnp.int32), critic)
        ratios = _ratios(aux)
        out = {"loss": loss_v, "value_loss": vloss, "grad_norm": gn_p, "critic_grad_norm": gn_c,
               "skipped": (~ok).astype(jnp.int32), "policy_updated": train_policy.astype(jnp.int32),
               **ratios, "logprob_gap": aux["logprob_gap"]}
        return new_state, out

    return ppo_step


def make_value_fn(cdef: ModelDef, group: int = 1):
    """critic params, tokens, valid, mask → values [B, n] of the states before each completion token."""

    def fn(critic, tokens, valid, mask):
        return target_values(cdef, critic, tokens, valid, mask.shape[1], group)

    return fn
