"""A learned reward model as an RL reward: ``{kind: reward_model, stage: NAME | path: DIR}``.

Unlike the verifiable rewards (a Python function per sample), a reward model scores a whole batch of
``prompt + completion`` rows in one jitted forward on the run's mesh (rows over the batch axes, weights on
their shardings), in chunks of ``batch_size`` rows padded to a few fixed shapes so it compiles once or twice
per stage. The text is re-encoded with the policy's tokenizer exactly as the reward_model stage encoded its
pairs (``rm_tokens``), so what the model scores is what it was trained on; a checkpoint trained with another
tokenizer is refused before any compute. On several hosts the forwards are collective over every host's rows
(``RewardModelScorer.score_hosts``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl.config import ConfigError, RewardConfig

log = logging.getLogger("reasoning_rl.rewards")

PROBES = ("help bdf:<think>b,d,f</think><answer>b,d,f!</answer>", "12+345=<think>2+5=7</think><answer>357</answer>",
          "The quick brown fox, 0.5 x 10^3 = 500.", "n3 kbe s-:")


def rm_tokens(tok, prompt: str, response: str) -> list[int]:
    """The token ids a reward model reads for one (prompt, response): both encoded on their own, as the
    sampler keeps them apart."""
    return list(tok.encode(prompt)) + list(tok.encode(response))


def check_tokenizer(hf_dir: str | Path, tok, vocab_size: int, where: str) -> None:
    """ConfigError unless the checkpoint at ``hf_dir`` was made for the policy's tokenizer ``tok``."""
    d = Path(hf_dir)
    conf = json.loads((d / "config.json").read_text())
    if int(conf.get("vocab_size", -1)) != int(vocab_size):
        raise ConfigError(f"{where}: {d} has a vocabulary of {conf.get('vocab_size')} tokens, the policy's has "
                          f"{vocab_size}: a reward model must share the policy's tokenizer")
    has_sp, has_json = (d / "tokenizer.model").is_file(), (d / "tokenizer.json").is_file()
    if not (has_sp or has_json):
        log.warning("%s: %s has no tokenizer files; only its vocabulary size could be checked", where, d)
        return
    theirs_path = getattr(tok, "path", None)
    same_file = (not has_json and has_sp and theirs_path is not None and Path(theirs_path).is_file()
                 and Path(theirs_path).read_bytes() == (d / "tokenizer.model").read_bytes())
    if same_file:
        return
    from reasoning_rl.tokenizer import load_tokenizer

    try:
        theirs = load_tokenizer("hf", d) if has_json or not hasattr(tok, "sp") else load_tokenizer(
            "sentencepiece", d / "tokenizer.model")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot read the tokenizer of {d} ({e})") from None
    for probe in PROBES:
        if list(theirs.encode(probe)) != list(tok.encode(probe)):
            raise ConfigError(f"{where}: the tokenizer of {d} differs from the policy's (they encode "
                              f"{probe!r} differently): a reward model must share the policy's tokenizer")


def load_for_reward(rt, rcfg: RewardConfig, where: str) -> tuple[Any, dict]:
    """(RewardDef, params on the run's mesh) for a reward that names a checkpoint directory."""
    from reasoning_rl.models import ConfigError as ModelConfigError
    from reasoning_rl.models.reward import check_reward_checkpoint, load_reward_params, reward_def

    path = Path(rcfg.path)
    try:
        check_reward_checkpoint(path)
    except ModelConfigError as e:
        raise ConfigError(f"{where}.path: {e}") from None
    check_tokenizer(path, rt.tok, rt.mdef.cfg.vocab_size, f"{where}.path")
    import dataclasses

    from reasoning_rl.models.hf import config_from_hf

    m = rt.model_cfg
    cfg = dataclasses.replace(config_from_hf(path), param_dtype=m.param_dtype, dtype=m.dtype)
    rdef = reward_def(cfg)
    try:
        return rdef, load_reward_params(path, rdef, m.param_dtype, rt.mesh)
    except ModelConfigError as e:
        raise ConfigError(f"{where}.path: {e}") from None


class RewardModelScorer:
    """``scorer(prompts, completions) -> scores`` (float32, raw): one forward per chunk of rows."""

    def __init__(self, rt, rdef, params: dict, batch_size: int = 256):
        from reasoning_rl.models.reward import scores

        self.rt, self.rdef, self.params = rt, rdef, params
        self.batch_size = int(batch_size)
        shape = dict(rt.mesh.shape)
        self.dp = int(np.prod([shape.get(a, 1) for a in ("data", "fsdp", "expert")]))
        self.fn = rt.jit_fn(functools.partial(scores, rdef))
        self.forwards = 0  # jitted calls so far (one per chunk of rows)

    def _rows(self, n: int) -> int:
        """Rows of the forward for ``n`` rows: a power of two (few compiled shapes), whole rows per device."""
        rows = 1
        while rows < n:
            rows *= 2
        return -(-max(rows, self.dp) // self.dp) * self.dp

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """This host's rows' raw scores (collective on several hosts: see ``score_hosts``)."""
        raw, mine = self.score_hosts(prompts, completions)
        return raw[mine]

    def score_hosts(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, slice]:
        """Raw scores of every host's rows, in host order, and the slice of them that is this host's.

        On several hosts this is collective (every host calls it once per batch, with its own rows, possibly
        none): the hosts' token rows are gathered and every host runs the same forwards over all of them on
        the global mesh, each device scoring the rows it holds; so the chunks, their shapes and the scores
        are those one host computes for the same rows, and ``batch`` normalisation can span every host."""
        seqs = [rm_tokens(self.rt.tok, p, c) or [self.rt.tok.pad_id] for p, c in zip(prompts, completions)]
        mine = slice(0, len(seqs))
        if dist.multi():
            parts = dist.allgather_objects(seqs)
            start = sum(len(p) for p in parts[:jax.process_index()])
            mine = slice(start, start + len(seqs))
            seqs = [s for p in parts for s in p]
        out = np.zeros(len(seqs), np.float32)
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            rows, t = self._rows(len(chunk)), -(-max(len(s) for s in chunk) // 32) * 32
            tokens = np.full((rows, t), self.rt.tok.pad_id, np.int32)
            valid = np.zeros((rows, t), bool)
            for i in range(rows):  # filler rows repeat the first (never all-padding)
                s = chunk[i] if i < len(chunk) else chunk[0]
                tokens[i, :len(s)], valid[i, :len(s)] = s, True
            placed = self.rt.place_batch({"tokens": tokens, "valid": valid})
            s = dist.gather(self.fn(self.params, placed["tokens"], placed["valid"]))
            self.forwards += 1
            out[start:start + len(chunk)] = np.asarray(s, np.float32)[:len(chunk)]
        return out, mine


def normalized(raw: np.ndarray, mode: str) -> np.ndarray:
    """``batch``: standardised over the rows scored together (a reward model's scale is arbitrary)."""
    if mode == "none" or raw.size == 0:
        return raw
    return ((raw - raw.mean()) / (raw.std() + 1e-6)).astype(np.float32)


def make_scorer(rt, rcfg: RewardConfig, where: str) -> RewardModelScorer:
    if rcfg.stage is not None:
        got = getattr(rt, "reward_models", {}).get(rcfg.stage)
        if got is None:
            raise ConfigError(f"{where}.stage: reward_model stage {rcfg.stage!r} has not run")
        rdef, params = got
    else:
        rdef, params = load_for_reward(rt, rcfg, where)
    return RewardModelScorer(rt, rdef, params, rcfg.batch_size)


def check_reward_models(rt) -> None:
    """Before any stage runs: every reward-model checkpoint a reward names (``path:``) is a one-label
    classifier made for the policy's tokenizer (ConfigError naming the reward otherwise)."""
    from reasoning_rl.models import ConfigError as ModelConfigError
    from reasoning_rl.models.reward import check_reward_checkpoint

    for i, st in enumerate(rt.cfg.stages):
        groups = [(f"stages[{i}].rewards", st.rewards)] + [(f"stages[{i}].tasks[{j}].rewards", s.rewards)
                                                           for j, s in enumerate(st.tasks)]
        for key, rewards in groups:
            for j, r in enumerate(rewards):
                if r.kind != "reward_model" or r.path is None or st.kind != "grpo":
                    continue
                where = f"{key}[{j}].path"
                try:
                    check_reward_checkpoint(r.path)
                except ModelConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
                check_tokenizer(r.path, rt.tok, rt.mdef.cfg.vocab_size, where)
