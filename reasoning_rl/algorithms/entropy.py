"""Entropy-collapse control by covariance (Clip-Cov and KL-Cov, "The Entropy Mechanism of Reinforcement
Learning for Reasoning Language Models", 2025): a policy's entropy falls by the covariance between a token's
log-probability and its advantage, and a few tokens of very high covariance drive most of the fall. Clip-Cov
takes a small random share of the tokens whose covariance lies in a band out of the gradient; KL-Cov puts a
``|log pi - log pi_old|`` penalty on the top share by covariance (losses ``clip_cov`` and ``kl_cov``).

The selection is made on the host, once per rollout batch, over the whole batch (every host holds it whole and
draws the same random numbers), from the rollout's log-probs: at a batch's first update these are the current
policy's to the bit, and fixing the selection per batch keeps the loss a plain ``(sum, count)`` pair, exact for
any split into micro-batches or mini-batches and devices (a per-micro-batch selection, as verl makes, would
depend on the split).
"""

from __future__ import annotations

import numpy as np


def token_covariance(adv: np.ndarray, logp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B, T] float64: ``(A - mean A) * (log pi - mean log pi)`` per completion token, the means over the batch's
    completion tokens; ``-inf`` outside the mask. ``adv`` [B] (one per completion) or [B, T]."""
    m = np.asarray(mask, bool)
    a = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, m.shape).astype(np.float64)
    lp = np.asarray(logp, np.float64)
    if not m.any():
        return np.full(m.shape, -np.inf)
    return np.where(m, (a - a[m].mean()) * (lp - lp[m].mean()), -np.inf)


def select_tokens(mode: str, adv: np.ndarray, logp: np.ndarray, mask: np.ndarray, ratio: float, low: float,
                  high: float, rng: np.random.Generator) -> np.ndarray:
    """[B, T] float32, 1 on the selected tokens: ``max(1, int(ratio * N))`` of the batch's N completion tokens.
    ``kl``: those of the largest covariance (ties: the earlier position); ``clip``: drawn at random without
    replacement among the tokens whose covariance lies strictly between ``low`` and ``high`` (fewer when fewer
    are there)."""
    cov = token_covariance(adv, logp, mask)
    n = int(np.asarray(mask, bool).sum())
    out = np.zeros(cov.shape, np.float32)
    if n == 0:
        return out
    k = max(1, int(ratio * n))
    if mode == "kl":
        picked = np.argsort(-cov, axis=None, kind="stable")[:k]
    elif mode == "clip":
        band = np.flatnonzero((cov > low) & (cov < high))
        picked = rng.choice(band, size=min(k, band.size), replace=False) if band.size else band
    else:
        raise KeyError(f"covariance selection: unknown mode {mode!r}")
    out.flat[picked] = 1.0
    return out
