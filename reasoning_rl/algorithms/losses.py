"""Policy-gradient losses, registered by name, each returning a ``(sum, count)`` pair.

Returning the unnormalised sum and its count (tokens or sequences, depending on the aggregation) lets the
step divide once by the *global* count, so the gradient is identical however the batch is split into
micro-batches or across devices.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from reasoning_rl.config import TOKEN_LEVEL

LOSSES: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        LOSSES[name] = fn
        return fn

    return deco


class LossInputs(NamedTuple):
    logp: jax.Array  # [B, T] current policy log-probs of the sampled tokens
    old_logp: jax.Array  # [B, T] behaviour policy log-probs
    ref_logp: jax.Array | None  # [B, T] reference log-probs (None when beta == 0)
    adv: jax.Array  # [B] advantages per row, or [B, T] per token (REINFORCE++, PPO's GAE)
    mask: jax.Array  # [B, T] completion mask
    # [B, T] off-policy correction of stale rollouts: pi_prox / pi_behaviour per token, already truncated or
    # masked (see ``off_policy_weights``); None: on-policy
    weight: jax.Array | None = None
    # [B, T] 1 on the tokens the covariance selection picked (``algorithms.entropy``; losses clip_cov, kl_cov)
    selected: jax.Array | None = None


def kl_estimate(logp, ref_logp, kind: str):
    """Per-token estimates of KL(pi || ref) from samples of pi (Schulman's k1/k2/k3)."""
    log_r = ref_logp - logp  # log(ref/pi)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return jnp.exp(log_r) - log_r - 1.0
    raise KeyError(f"algorithm.kl_estimator: unknown estimator {kind!r}")


def aggregate(per_token, mask, mode: str, budget: int | None = None):
    """Token losses [B, T] → (sum, count) for the aggregation ``mode``. ``budget``: the generation budget
    Dr.GRPO divides by (None: T; a rollout batch trimmed to its longest completion is narrower than that)."""
    m = mask.astype(jnp.float32)
    if mode == "token-mean":
        return jnp.sum(per_token * m), jnp.sum(m)
    if mode == "seq-mean-token-mean":
        per_seq = jnp.sum(per_token * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        return jnp.sum(per_seq), jnp.asarray(per_token.shape[0], jnp.float32)
    if mode == "seq-mean-token-sum-norm":  # Dr.GRPO: divide by the (constant) generation budget
        per_seq = jnp.sum(per_token * m, axis=1) / (budget or per_token.shape[1])
        return jnp.sum(per_seq), jnp.asarray(per_token.shape[0], jnp.float32)
    raise KeyError(f"algorithm.aggregation: unknown mode {mode!r}")


def _metrics(x: LossInputs, clipped, kl):
    m = x.mask.astype(jnp.float32)
    n = jnp.sum(m)
    out = {"clip_frac": (jnp.sum(clipped * m), n)}
    if kl is not None:
        out["kl"] = (jnp.sum(kl * m), n)
    return out


def _token_loss(x: LossInputs, per_token, clipped, beta: float, kl_estimator: str, aggregation: str,
                budget: int | None, extra: dict | None = None):
    """The common tail of a token-level loss: the off-policy weight, the KL penalty, the aggregation."""
    if x.weight is not None:
        per_token = per_token * x.weight
    kl = None
    if beta > 0:
        kl = kl_estimate(x.logp, x.ref_logp, kl_estimator)
        per_token = per_token + beta * kl
    s, c = aggregate(per_token, x.mask, aggregation, budget)
    return s, c, {**_metrics(x, clipped, kl), **(extra or {})}


def _sequence_loss(x: LossInputs, per_seq, clipped, beta: float, kl_estimator: str):
    """The common tail of a sequence-level loss (one term per completion, mean over completions): the
    off-policy weight as each sequence's token mean, and the KL penalty as each sequence's token mean."""
    m = x.mask.astype(jnp.float32)
    n_tok = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    if x.weight is not None:
        per_seq = per_seq * jnp.sum(x.weight * m, axis=1) / n_tok
    total = jnp.sum(per_seq)
    kl = None
    if beta > 0:
        kl = kl_estimate(x.logp, x.ref_logp, kl_estimator)
        total = total + beta * jnp.sum(jnp.sum(kl * m, axis=1) / n_tok)
    return total, jnp.asarray(per_seq.shape[0], jnp.float32), _metrics(x, clipped, kl)


def _token_adv(x: LossInputs):
    """The advantages as [B, T] or broadcastable to it ([B, 1] for one per completion)."""
    return x.adv[:, None] if x.adv.ndim == 1 else x.adv


def _clipped_tokens(x: LossInputs, eps_low: float, eps_high: float):
    """PPO's clipped surrogate per token, ``-min(r A, clip(r) A)``, and where the clip acted."""
    ratio = jnp.exp(x.logp - x.old_logp)
    a = _token_adv(x)
    unclipped = ratio * a
    clipped_r = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    return -jnp.minimum(unclipped, clipped_r), (clipped_r < unclipped).astype(jnp.float32)


@register("grpo")
def grpo_loss(x: LossInputs, *, eps_low: float, eps_high: float, beta: float, kl_estimator: str,
              aggregation: str, budget: int | None = None, dual_clip: float = 0.0, **_: object):
    """Token-level clipped surrogate (PPO/GRPO) with DAPO clip-higher and an optional KL penalty.

    ``dual_clip`` c > 1 (dual-clip PPO, Ye et al. 2020): a token of negative advantage adds at most ``-c * A`` to
    the loss, so a ratio grown far past the clip range (a token the policy now likes much more than when it was
    sampled, in a sample that scored badly) cannot blow one update up; such tokens get no gradient. 0: off."""
    per_token, clipped = _clipped_tokens(x, eps_low, eps_high)
    extra = {}
    if dual_clip:
        a = _token_adv(x)
        cap = -dual_clip * a
        capped = (a < 0) & (per_token > cap)
        per_token = jnp.where(capped, cap, per_token)
        m = x.mask.astype(jnp.float32)
        extra["dual_clip_frac"] = (jnp.sum(capped * m), jnp.sum(m))
    return _token_loss(x, per_token, clipped, beta, kl_estimator, aggregation, budget, extra)


@register("gspo")
def gspo_loss(x: LossInputs, *, eps_low: float, eps_high: float, beta: float, kl_estimator: str,
              aggregation: str, budget: int | None = None, **_: object):
    """GSPO: one importance ratio per sequence, exp(mean_t log(pi/pi_old)), clipped at sequence level.

    The loss is per sequence (mean over sequences); ``aggregation`` only applies to the KL term."""
    m = x.mask.astype(jnp.float32)
    n_tok = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    log_s = jnp.sum((x.logp - x.old_logp) * m, axis=1) / n_tok
    s = jnp.exp(log_s)
    unclipped = s * x.adv
    clipped_r = jnp.clip(s, 1.0 - eps_low, 1.0 + eps_high) * x.adv
    clipped = jnp.broadcast_to(((clipped_r < unclipped).astype(jnp.float32))[:, None], m.shape)
    return _sequence_loss(x, -jnp.minimum(unclipped, clipped_r), clipped, beta, kl_estimator)


@register("cispo")
def cispo_loss(x: LossInputs, *, eps_low: float, eps_high: float, beta: float, kl_estimator: str,
               aggregation: str, budget: int | None = None, **_: object):
    """CISPO (MiniMax-M1; the loss of ScaleRL's recipe): REINFORCE weighted by the *clipped, stop-gradient*
    importance ratio, ``-sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * log pi``.

    Where PPO's clip drops a token's gradient once its ratio leaves the range (often the rare, high-entropy
    "wait" / "however" tokens that a reasoning policy most needs to learn), CISPO keeps every token's gradient
    and only bounds its weight. Written as ``sg(w) * A * exp(log pi - sg(log pi))``: the same gradient as the
    paper's ``log pi`` form, and a loss value comparable with the clipped surrogate's (``-w * A``). The paper
    sets no lower bound (``eps_low: 1``) and tunes ``eps_high``. ``clip_frac``: tokens whose weight was bounded."""
    ratio = jnp.exp(x.logp - x.old_logp)
    w = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high))
    a = _token_adv(x)
    per_token = -w * a * jnp.exp(x.logp - jax.lax.stop_gradient(x.logp))
    clipped = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).astype(jnp.float32)
    return _token_loss(x, per_token, clipped, beta, kl_estimator, aggregation, budget)


@register("sapo")
def sapo_loss(x: LossInputs, *, beta: float, kl_estimator: str, aggregation: str, budget: int | None = None,
              sapo_tau_pos: float = 1.0, sapo_tau_neg: float = 1.05, **_: object):
    """SAPO (soft adaptive policy optimization): the hard clip replaced by a smooth gate,
    ``-(4 / tau) * sigmoid(tau * (r - 1)) * A`` per token, ``tau`` = ``sapo_tau_pos`` for a positive advantage and
    ``sapo_tau_neg`` (larger: negative updates decay faster off-policy) for a negative one.

    Its gradient is the plain policy gradient times ``4 s (1 - s) r`` (``s`` the sigmoid): exactly 1 on policy
    (r = 1) and falling smoothly as the ratio drifts, so a few far-off tokens are damped without silencing their
    sequence or the tokens beside them. ``eps_low``/``eps_high`` do not apply. Metric ``gate``: that gradient
    weight's mean over the tokens; ``clip_frac``: tokens whose weight fell below 1/2."""
    ratio = jnp.exp(x.logp - x.old_logp)
    a = _token_adv(x)
    tau = jnp.where(a > 0, sapo_tau_pos, sapo_tau_neg)
    gate = jax.nn.sigmoid(tau * (ratio - 1.0))
    per_token = -(4.0 / tau) * gate * a
    weight = jax.lax.stop_gradient(4.0 * gate * (1.0 - gate) * ratio)
    m = x.mask.astype(jnp.float32)
    extra = {"gate": (jnp.sum(weight * m), jnp.sum(m))}
    clipped = (weight < 0.5).astype(jnp.float32)
    return _token_loss(x, per_token, clipped, beta, kl_estimator, aggregation, budget, extra)


@register("gmpo")
def gmpo_loss(x: LossInputs, *, eps_low: float, eps_high: float, beta: float, kl_estimator: str,
              aggregation: str, budget: int | None = None, **_: object):
    """GMPO (geometric-mean policy optimization): one ratio per sequence, the *geometric* mean of its token
    ratios, each token's log-ratio first clipped to ``[log(1 - eps_low), log(1 + eps_high)]`` on the
    pessimistic side (as PPO's min: for a positive advantage a high ratio is cut, a low one kept; the reverse for
    a negative one). The geometric mean is far less swayed by a few extreme tokens than GRPO's arithmetic mean
    of token terms, so a wider range stays stable (the paper's ``(e^-0.4, e^0.4)`` is ``eps_low: 0.33,
    eps_high: 0.49``).

    The loss is per sequence (mean over sequences, needs one advantage per sequence); ``aggregation`` only
    applies to the KL term. ``clip_frac``: tokens whose log-ratio was clipped."""
    m = x.mask.astype(jnp.float32)
    n_tok = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    log_r = x.logp - x.old_logp
    sign = jnp.sign(x.adv)[:, None]
    log_c = jnp.clip(log_r, jnp.log1p(-eps_low), jnp.log1p(eps_high))
    pessimistic = sign * jnp.minimum(sign * log_r, sign * log_c)
    ratio = jnp.exp(jnp.sum(pessimistic * m, axis=1) / n_tok)
    clipped = (sign * log_c < sign * log_r).astype(jnp.float32)
    return _sequence_loss(x, -x.adv * ratio, clipped, beta, kl_estimator)


def _selected(x: LossInputs, name: str):
    if x.selected is None:
        raise ValueError(f"algorithm.loss {name}: the batch has no covariance selection (cov_select)")
    m = x.mask.astype(jnp.float32)
    return x.selected, {"cov_frac": (jnp.sum(x.selected * m), jnp.sum(m))}


@register("clip_cov")
def clip_cov_loss(x: LossInputs, *, eps_low: float, eps_high: float, beta: float, kl_estimator: str,
                  aggregation: str, budget: int | None = None, **_: object):
    """Clip-Cov: PPO's clipped surrogate with the selected tokens (a small random share of those whose
    log-prob/advantage covariance lies in a band, ``algorithms.entropy``) taken out of the gradient; they still
    count in the normalisation, as in the paper's ``(1 - sel) * loss``. Metric ``cov_frac``: their share."""
    sel, extra = _selected(x, "clip_cov")
    per_token, clipped = _clipped_tokens(x, eps_low, eps_high)
    return _token_loss(x, per_token * (1.0 - sel), clipped, beta, kl_estimator, aggregation, budget, extra)


@register("kl_cov")
def kl_cov_loss(x: LossInputs, *, beta: float, kl_estimator: str, aggregation: str, budget: int | None = None,
                cov_kl_coef: float = 1.0, **_: object):
    """KL-Cov: the unclipped policy gradient ``-r A`` on every token, and on the selected ones (the top share by
    log-prob/advantage covariance, ``algorithms.entropy``) a penalty ``cov_kl_coef * |log pi - log pi_old|`` in
    place of a clip. Metrics ``cov_frac`` (the selected share); ``clip_frac`` is 0 (no clip)."""
    sel, extra = _selected(x, "kl_cov")
    ratio = jnp.exp(x.logp - x.old_logp)
    a = _token_adv(x)
    per_token = -ratio * a + cov_kl_coef * jnp.abs(x.logp - x.old_logp) * sel
    return _token_loss(x, per_token, jnp.zeros_like(per_token), beta, kl_estimator, aggregation, budget, extra)


def entropy_sum(ent, mask, loss: str, aggregation: str, budget: int | None = None):
    """The entropy bonus's sum for the loss ``loss``: its entropies [B, T] aggregated as that loss aggregates
    its own terms, so the bonus shares the loss's global count (``(sum, count)`` stays exact): a token-level
    loss's ``aggregation``, and for the sequence losses (gspo, gmpo: one term per sequence) each sequence's
    token mean."""
    mode = aggregation if loss in TOKEN_LEVEL else "seq-mean-token-mean"
    return aggregate(ent, mask, mode, budget)[0]


def loss_options(acfg, *, beta: float | None = None, budget: int | None = None) -> dict:
    """The keyword arguments every registered loss takes from ``algorithm`` (each ignores those of the
    others). ``beta``: the KL weight in the loss when it differs from ``acfg.beta`` (a KL in the reward)."""
    return {"eps_low": acfg.eps_low, "eps_high": acfg.eps_high, "beta": acfg.beta if beta is None else beta,
            "kl_estimator": acfg.kl_estimator, "aggregation": acfg.aggregation, "budget": budget,
            "dual_clip": acfg.dual_clip, "sapo_tau_pos": acfg.sapo_tau_pos, "sapo_tau_neg": acfg.sapo_tau_neg,
            "cov_kl_coef": acfg.cov.kl_coef}


def off_policy_terms(prox_logp, behav_logp, mask, mode: str, cap: float):
    """Per-token importance weights pi_prox / pi_behaviour for rollouts sampled by an older policy, and their
    metrics as (sum, count) pairs (``is_ratio_max`` a max), so they combine exactly over micro-batches.

    ``tis``: truncated at ``cap`` (truncated importance sampling); ``decoupled``: tokens above ``cap`` get
    weight 0 (the decoupled PPO objective's behaviour-weight cap). The metrics: the untruncated ratio's mean
    and max and the share of tokens truncated or masked, over ``mask``."""
    m = mask.astype(jnp.float32)
    n = jnp.sum(m)
    ratio = jnp.exp(prox_logp - behav_logp)
    over = (ratio > cap).astype(jnp.float32)
    w = jnp.minimum(ratio, cap) if mode == "tis" else jnp.where(ratio > cap, 0.0, ratio)
    metrics = {"is_ratio_mean": (jnp.sum(ratio * m), n), "is_ratio_max": jnp.max(jnp.where(mask, ratio, 0.0)),
               "is_truncated_frac": (jnp.sum(over * m), n)}
    return w * m, metrics


def off_policy_weights(prox_logp, behav_logp, mask, mode: str, cap: float):
    """``off_policy_terms`` with its metrics as plain means (one batch, no micro-batches)."""
    w, terms = off_policy_terms(prox_logp, behav_logp, mask, mode, cap)
    metrics = {k: v[0] / jnp.maximum(v[1], 1.0) if isinstance(v, tuple) else v for k, v in terms.items()}
    return w, metrics


def value_loss(values, old_values, returns, mask, vf_clip: float):
    """PPO's clipped value loss, 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-vf_clip) - R)^2) per token
    (``vf_clip`` 0: unclipped), as (sum, count, metrics) over the completion tokens: the critic's gradient is
    then the same for any micro-batch split, like the policy's."""
    m = mask.astype(jnp.float32)
    l_un = (values - returns) ** 2
    if vf_clip > 0:
        v_cl = old_values + jnp.clip(values - old_values, -vf_clip, vf_clip)
        l_cl = (v_cl - returns) ** 2
        per_token = 0.5 * jnp.maximum(l_un, l_cl)
        clipped = (l_cl > l_un).astype(jnp.float32)
    else:
        per_token = 0.5 * l_un
        clipped = jnp.zeros_like(m)
    n = jnp.sum(m)
    return jnp.sum(per_token * m), n, {"vf_clip_frac": (jnp.sum(clipped * m), n)}


def get_loss(name: str):
    if name not in LOSSES:
        raise KeyError(f"algorithm.loss: unknown loss {name!r} (known: {', '.join(LOSSES)})")
    return LOSSES[name]


def sft_loss(logp, mask):
    """Next-token cross-entropy as (sum, count) over target tokens."""
    m = mask.astype(jnp.float32)
    return -jnp.sum(logp * m), jnp.sum(m)
