"""Entropy-collapse control: by covariance (Clip-Cov and KL-Cov, "The Entropy Mechanism of Reinforcement
Learning for Reasoning Language Models", 2025): a policy's entropy falls by the covariance between a token's
log-probability and its advantage, and a few tokens of very high covariance drive most of the fall. Clip-Cov
takes a small random share of the tokens whose covariance lies in a band out of the gradient; KL-Cov puts a
``|log pi - log pi_old|`` penalty on the top share by covariance (losses ``clip_cov`` and ``kl_cov``).

The selection is made on the host, once per rollout batch, over the whole batch (every host holds it whole and
draws the same random numbers), from the rollout's log-probs: at a batch's first update these are the current
policy's to the bit, and fixing the selection per batch keeps the loss a plain ``(sum, count)`` pair, exact for
any split into micro-batches or mini-batches and devices (a per-micro-batch selection, as verl makes, would
depend on the split).

And by the entropy bonus's coefficient (``EntropyControl``: adaptive entropy control, Skywork-OR1, 2025): a
fixed coefficient either does nothing or, large enough to matter, makes the entropy blow up; moving the
coefficient after each step towards a target entropy holds the entropy near the target instead.
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


class EntropyControl:
    """Adaptive entropy control (``algorithm.entropy_target > 0``): the entropy bonus's coefficient ``c`` starts at
    ``algorithm.entropy_coef``; after every step it moves by ``entropy_coef_step``, up while the policy's entropy
    ``e`` is below the target, down (never below 0) while at or above it, and the bonus applies only while ``e``
    is below the target (Skywork-OR1: ``c_k+1 = c_k +- step``, loss term ``c_k * [e_k < target] * entropy``).

    ``e`` is the step's ``entropy`` metric (the trainer's forward over the step's batch), which is known only
    once that forward has run: the step's own bonus is decided by the step before it (Skywork-OR1 measures the
    batch in a forward of its own before the updates; here that forward is the update's). The coefficient is a
    per-row input of the step (``batch["entropy_coef"]``, the same value in every row), not a compiled
    constant: changing it compiles nothing; and it is host state saved with every checkpoint, so a resumed
    stage goes on with the coefficient the uninterrupted one had."""

    def __init__(self, a, host: dict | None = None):
        self.on = a.entropy_target > 0
        self.target, self.delta = a.entropy_target, a.entropy_coef_step
        saved = (host or {}).get("entropy_control") or {}
        self.coef = float(saved.get("coef", a.entropy_coef))
        self.below = bool(saved.get("below", True))  # before the first step: the bonus applies

    @property
    def applied(self) -> float:
        """The coefficient the next step's loss uses: 0 while the last entropy was at or above the target."""
        return self.coef if self.below else 0.0

    def inputs(self, rows: int) -> dict[str, np.ndarray]:
        """The step's batch entries: ``entropy_coef`` [rows] float32, or none when the control is off."""
        return {"entropy_coef": np.full(rows, self.applied, np.float32)} if self.on else {}

    def after(self, entropy: float) -> dict[str, float]:
        """Moves the coefficient by the entropy the step just measured; returns the step's metric: the
        coefficient its loss used (``entropy_coef``)."""
        if not self.on:
            return {}
        used = self.applied
        self.below = entropy < self.target
        self.coef = max(self.coef + self.delta if self.below else self.coef - self.delta, 0.0)
        return {"entropy_coef": used}

    def host_state(self) -> dict:
        return {"entropy_control": {"coef": self.coef, "below": self.below}} if self.on else {}
