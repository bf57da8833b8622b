"""Turning examples into fixed-shape token batches for the sampler and the steps."""

from __future__ import annotations

import numpy as np

from reasoning_rl.rollout import stops
from reasoning_rl.rollout.sampler import left_pad
from reasoning_rl.rollout.stops import StopTable


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def prompt_batch(tok, examples: list[dict], bucket: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt tokens [P, Tp] and validity, Tp rounded up to ``bucket``."""
    return left_pad([tok.encode(e["prompt"]) for e in examples], tok.pad_id, bucket)


def sft_sequences(tok, examples: list[dict]) -> list[tuple[list[int], list[bool]]]:
    """Each example's ``prompt + solution + EOS`` tokens and which of them the loss covers (solution, EOS)."""
    out = []
    for e in examples:
        p = tok.encode(e["prompt"])
        c = tok.encode(e["solution"]) + [tok.eos_id]
        out.append((p + c, [False] * len(p) + [True] * len(c)))
    return out


def sft_batch(tok, examples: list[dict], seq_len: int | None = None, bucket: int = 16) -> dict[str, np.ndarray]:
    """Right-padded ``prompt + solution + EOS`` rows; the loss covers the solution and EOS only.

    Rows longer than ``seq_len`` are cut (their loss mask is cut with them)."""
    rows, masks = zip(*sft_sequences(tok, examples))
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


def pack(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Sequences (by index) into rows of ``seq_len`` tokens, first-fit by decreasing length (a sequence longer
    than a row gets one of its own, cut): deterministic, each row in index order."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = min(lengths[i], seq_len)
        j = next((j for j, f in enumerate(free) if f >= n), None)
        if j is None:
            rows.append([i])
            free.append(seq_len - n)
        else:
            rows[j].append(i)
            free[j] -= n
    return [sorted(r) for r in rows]


def packed_sft_batch(seqs: list[tuple[list[int], list[bool]]], rows: list[list[int]], seq_len: int, n_rows: int,
                     pad_id: int) -> dict[str, np.ndarray]:
    """``n_rows`` rows of ``seq_len`` holding ``seqs`` as ``rows`` places them (``pack``), one after the other:
    tokens, valid, loss_mask as ``sft_batch``, plus positions (restarting at 0 with each sequence) and segments
    (1, 2, ... per sequence in a row; 0 on padding). Rows past ``len(rows)`` are all padding."""
    tokens = np.full((n_rows, seq_len), pad_id, np.int32)
    valid = np.zeros((n_rows, seq_len), bool)
    loss_mask = np.zeros((n_rows, seq_len), bool)
    positions = np.zeros((n_rows, seq_len), np.int32)
    segments = np.zeros((n_rows, seq_len), np.int32)
    for r, members in enumerate(rows):
        at = 0
        for k, i in enumerate(members):
            ids, mask = seqs[i]
            n = min(len(ids), seq_len - at)
            tokens[r, at:at + n], loss_mask[r, at:at + n] = ids[:n], mask[:n]
            valid[r, at:at + n] = True
            positions[r, at:at + n] = np.arange(n)
            segments[r, at:at + n] = k + 1
            at += n
    return {"tokens": tokens, "valid": valid, "loss_mask": loss_mask, "positions": positions, "segments": segments}


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


def update_width(longest: int, budget: int, buckets: int) -> int:
    """The completion columns an update needs: the batch's ``longest`` completion rounded up to a multiple of
    ``budget / buckets`` (itself a multiple of 8), at most ``budget``; ``buckets`` 0: always ``budget``.

    Columns past every row's end are masked out of every loss, advantage and metric, so dropping them leaves
    the numbers as they were and saves their compute: with a reasoning budget of thousands of tokens and
    answers of hundreds, most of it. The rounding bounds how many shapes a stage compiles its update for."""
    if buckets <= 0:
        return budget
    step = round_up(-(-budget // buckets), 8)
    return min(budget, round_up(max(longest, 1), step))


def trim_completions(batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """A rollout batch (``rollout_batch``) with its completion columns cut to the first ``width``: the
    ``[prompt | completion]`` arrays keep their prompt columns."""
    n = batch["mask"].shape[1]
    if width >= n:
        return batch
    if batch["mask"][:, width:].any():
        raise ValueError(f"a completion is longer than the update width {width}")
    keep = batch["tokens"].shape[1] - n + width
    out = dict(batch)
    for k in ("tokens", "valid", "routes"):
        if k in out:
            out[k] = out[k][:, :keep]
    for k in ("mask", "old_logp", "sampler_logp"):
        out[k] = out[k][:, :width]
    return out


def truncated_rows(tokens: np.ndarray, lengths: np.ndarray, budget: int, stop_ids,
                   stop_table: StopTable | None = None) -> np.ndarray:
    """[N] bool: the completions that reached the ``budget`` without ending on a stop token or stop string
    (``stop_table``): cut off. Only rows at the budget are looked at (the sampler ends a row early only at a
    stop), so the stop strings' host-side automaton runs over those alone."""
    lengths = np.asarray(lengths)
    cut = lengths >= budget
    at = np.nonzero(cut)[0]
    if len(at):
        last = tokens[at, lengths[at] - 1]
        ended = np.isin(last, np.asarray(list(stop_ids), tokens.dtype)) | stops.hits(stop_table, tokens[at],
                                                                                      lengths[at])
        cut[at] = ~ended
    return cut
