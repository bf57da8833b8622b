"""Turning examples into fixed-shape token batches for the sampler and the steps."""

from __future__ import annotations

import numpy as np

from reasoning_rl.rollout.sampler import left_pad


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def prompt_batch(tok, examples: list[dict], bucket: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt tokens [P, Tp] and validity, Tp rounded up to ``bucket``."""
    return left_pad([tok.encode(e["prompt"]) for e in examples], tok.pad_id, bucket)


def sft_batch(tok, examples: list[dict], seq_len: int | None = None, bucket: int = 16) -> dict[str, np.ndarray]:
    """Right-padded ``prompt + solution + EOS`` rows; the loss covers the solution and EOS only.

    Rows longer than ``seq_len`` are cut (their loss mask is cut with them)."""
    rows, masks = [], []
    for e in examples:
        p = tok.encode(e["prompt"])
        c = tok.encode(e["solution"]) + [tok.eos_id]
        rows.append(p + c)
        masks.append([False] * len(p) + [True] * len(c))
    t = seq_len or round_up(max(len(r) for r in rows), bucket)
    tokens = np.full((len(rows), t), tok.pad_id, np.int32)
    valid = np.zeros((len(rows), t), bool)
    loss_mask = np.zeros((len(rows), t), bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        r, m = r[:t], m[:t]
        tokens[i, : len(r)] = r
        valid[i, : len(r)] = True
        loss_mask[i, : len(m)] = m
    return {"tokens": tokens, "valid": valid, "loss_mask": loss_mask}


def rollout_batch(prompt_tokens: np.ndarray, prompt_valid: np.ndarray, tokens: np.ndarray, mask: np.ndarray,
                  logp: np.ndarray, adv: np.ndarray, group_size: int,
                  routes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """[prompt | completion] rows exactly as the sampler laid them out (prompt left-padded); ``routes``
    [R, Tp + N, L_moe, k] (the sampler's MoE routes, for replay) ride along."""
    pt = np.repeat(prompt_tokens, group_size, axis=0)
    pv = np.repeat(prompt_valid, group_size, axis=0)
    extra = {} if routes is None else {"routes": routes.astype(np.int32)}
    return {
        **extra,
        "tokens": np.concatenate([pt, tokens], axis=1).astype(np.int32),
        "valid": np.concatenate([pv, mask], axis=1),
        "mask": mask,
        "old_logp": logp.astype(np.float32),
        "sampler_logp": logp.astype(np.float32),
        "adv": adv.astype(np.float32),
    }
