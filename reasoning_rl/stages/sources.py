"""A stage's data: one task, or a weighted mixture of task sources, each scored by its own rewards.

Examples are a pure function of their global index (the mixture picks a source for index ``i`` from a
seeded draw and serves that source's example ``i``), so the grain iterator state stays one integer and a
resumed stage sees the batches it would have seen. Rewards are computed per source and reported per task
(``<task>/accuracy``, ``<task>/reward_mean``, …) so a policy that trades one task for another shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl.config import Config, RewardConfig, StageConfig, TaskConfig
from reasoning_rl.data import instruct_rewards  # noqa: F401 - registers the instruct rewards
from reasoning_rl.rewards import RewardComputer, RewardResult, RewardSpec, registry

CORRECTNESS_REWARDS = ("accuracy", "math", "code", "instruct")


@dataclass(frozen=True)
class SourceSpec:
    """What a source is, before its task is built: name, weight, task config, rewards."""

    name: str
    weight: float
    task: TaskConfig
    rewards: tuple[RewardConfig, ...]


def stage_sources(stage: StageConfig) -> list[SourceSpec]:
    if stage.tasks:
        return [SourceSpec(s.name, s.weight, s.task, s.rewards) for s in stage.tasks]
    return [SourceSpec(stage.task.name, 1.0, stage.task, stage.rewards)]


def config_sources(cfg: Config) -> list[SourceSpec]:
    """Every task any stage trains on, first occurrence per name: each stage is evaluated on all of them."""
    out: dict[str, SourceSpec] = {}
    for st in cfg.stages:
        if st.kind == "reward_model":  # preference pairs, not prompts to answer
            continue
        for s in stage_sources(st):
            out.setdefault(s.name, s)
    return list(out.values())


def correctness_of(rewards: Sequence[RewardConfig], task: Any) -> str:
    """The reward that decides whether a completion solves the problem (pass@k, accuracy): a built-in
    task's own; for a file task the first correctness reward the source trains with, else its preset's."""
    if getattr(task, "name", "file") != "file":
        return getattr(task, "correctness", "accuracy")
    for r in rewards:
        if r.name in CORRECTNESS_REWARDS:
            return r.name
    return getattr(task, "correctness", "accuracy")


class Source:
    def __init__(self, rt, spec: SourceSpec):
        self.name, self.weight, self.rewards = spec.name, spec.weight, spec.rewards
        self.task = rt.task_for(spec.task)
        self.correctness = correctness_of(spec.rewards, self.task)

    def example(self, split: str, index: int) -> dict:
        return {**self.task.example(split, index).as_dict(), "task": self.name}


class StageData:
    """Training examples of a stage (one source or a mixture) and the rewards that score them."""

    def __init__(self, rt, stage: StageConfig, seed: int | None = None):
        self.sources = [Source(rt, s) for s in stage_sources(stage)]
        self.mixed = bool(stage.tasks)
        w = np.asarray([s.weight for s in self.sources], np.float64)
        self._cum = np.cumsum(w / w.sum())
        self._seed = rt.cfg.seed if seed is None else seed
        self._rt = rt

    def source_of(self, index: int) -> Source:
        if len(self.sources) == 1:
            return self.sources[0]
        u = np.random.default_rng([self._seed, 97, index]).random()
        return self.sources[min(int(np.searchsorted(self._cum, u, side="right")), len(self.sources) - 1)]

    def fetch(self, index: int, split: str = "train") -> dict:
        return self.source_of(index).example(split, index)

    def rewarder(self) -> MixtureRewarder:
        return MixtureRewarder(self.sources, self._rt)


@dataclass
class Scored:
    result: RewardResult  # weighted totals and per-reward values (``<task>/<reward>`` keys in a mixture)
    correct: np.ndarray  # per row: the row's task's correctness reward
    # per-row measurements that are not rewards (``judge``: a built-in task's hidden judge), keyed like rewards
    extra: dict[str, np.ndarray] = field(default_factory=dict)


class MixtureRewarder:
    """One RewardComputer per source (its function rewards) plus its reward models (``kind: reward_model``,
    each one forward per batch of that source's rows); rows go to their task's (``row["task"]``)."""

    def __init__(self, sources: Sequence[Source], rt=None):
        self.sources = {s.name: s for s in sources}
        self.single = len(sources) == 1
        self.computers = {s.name: RewardComputer([RewardSpec(r.name, r.weight, dict(r.kwargs)) for r in s.rewards
                                                  if r.kind == "function"]) for s in sources}
        self.models: dict[str, list] = {s.name: [] for s in sources}
        for s in sources:
            for r in s.rewards:
                if r.kind == "reward_model":
                    from reasoning_rl.rewards.reward_model import make_scorer

                    self.models[s.name].append((r, make_scorer(rt, r, f"rewards.{r.name}")))

    def _score(self, name: str, texts: Sequence[str], rows: Sequence[dict]) -> RewardResult:
        """One source's rows: function rewards, then each reward model's raw scores (``per_reward``) entering
        the total normalised and weighted."""
        res = self.computers[name](texts, rows)
        if not self.models[name]:
            return res
        total = res.total.astype(np.float64)
        for r, raw, bad, norm in self._model_scores(name, texts, rows):
            res.per_reward[r.name] = raw
            res.errors[r.name] = 0
            res.non_finite[r.name] = int(bad.sum())
            total += float(r.weight) * norm
        res.total = total.astype(np.float32)
        return res

    def _model_scores(self, name: str, texts: Sequence[str], rows: Sequence[dict]) -> list[tuple]:
        """(reward, raw, non-finite mask, normalised) of this host's rows for each reward model of source
        ``name``. Scored with every host's rows of the source and normalised over all of them (as one host
        does); on several hosts each call is collective, so a host without rows of the source still calls."""
        from reasoning_rl.rewards.reward_model import normalized

        out = []
        for r, scorer in self.models[name]:
            raw_all, mine = scorer.score_hosts([row["prompt"] for row in rows], texts)
            bad_all = ~np.isfinite(raw_all)
            raw_all = np.where(bad_all, 0.0, raw_all).astype(np.float32)
            out.append((r, raw_all[mine], bad_all[mine], normalized(raw_all, r.normalize)[mine]))
        return out

    @staticmethod
    def _extra(src: Source, texts, rows) -> dict[str, np.ndarray]:
        """Measurements beside the rewards: the task's hidden judge, where it has one (never in the total)."""
        judge = getattr(src.task, "judge", None)
        if judge is None:
            return {}
        return {"judge": np.asarray([judge(t, r) for t, r in zip(texts, rows)], np.float32)}

    def __call__(self, texts: Sequence[str], rows: Sequence[dict]) -> Scored:
        n = len(texts)
        if self.single:
            (name,) = self.sources
            res = self._score(name, texts, rows)
            src = self.sources[name]
            return Scored(res, self._correct(src, res, texts, rows), self._extra(src, texts, rows))
        total = np.zeros(n, np.float32)
        correct = np.zeros(n, np.float32)
        per_reward: dict[str, np.ndarray] = {}
        errors: dict[str, int] = {}
        non_finite: dict[str, int] = {}
        first: dict[str, str] = {}
        extra: dict[str, np.ndarray] = {}
        for name, src in self.sources.items():
            idx = [i for i, r in enumerate(rows) if r.get("task") == name]
            if not idx:
                if dist.multi():  # the reward models' scoring is collective: take part with no rows
                    self._model_scores(name, [], [])
                continue
            t, rw = [texts[i] for i in idx], [rows[i] for i in idx]
            res = self._score(name, t, rw)
            total[idx] = res.total
            correct[idx] = self._correct(src, res, t, rw)
            for k, v in res.per_reward.items():
                per_reward[f"{name}/{k}"] = v
            for k, v in res.errors.items():
                errors[f"{name}/{k}"] = v
            for k, v in res.non_finite.items():
                non_finite[f"{name}/{k}"] = v
            first.update({f"{name}/{k}": v for k, v in res.first_error.items()})
            for k, v in self._extra(src, t, rw).items():
                extra[f"{name}/{k}"] = v
        return Scored(RewardResult(total, per_reward, errors, non_finite, first), correct, extra)

    @staticmethod
    def _correct(src: Source, res: RewardResult, texts, rows) -> np.ndarray:
        if src.correctness in res.per_reward:
            return np.asarray(res.per_reward[src.correctness], np.float32)
        fn = registry.get(src.correctness)
        return np.asarray([float(fn(t, r)) for t, r in zip(texts, rows)], np.float32)

    def close(self) -> None:
        for c in self.computers.values():
            c.close()


def merge_scored(parts: Sequence[Scored]) -> Scored:
    """Hosts' scores of their own rows, concatenated in host order (rows of a task keep their order)."""
    if len(parts) == 1:
        return parts[0]
    keys = list(dict.fromkeys(k for p in parts for k in p.result.per_reward))
    cat = lambda xs: np.concatenate([np.asarray(x, np.float32) for x in xs]) if xs else np.zeros(0, np.float32)
    per = {k: cat([p.result.per_reward[k] for p in parts if k in p.result.per_reward]) for k in keys}
    count = lambda attr: {k: sum(getattr(p.result, attr).get(k, 0) for p in parts)
                          for k in dict.fromkeys(k for p in parts for k in getattr(p.result, attr))}
    first: dict[str, str] = {}
    for p in parts:
        for k, v in p.result.first_error.items():
            first.setdefault(k, v)
    res = RewardResult(cat([p.result.total for p in parts]), per, count("errors"), count("non_finite"), first)
    extra_keys = list(dict.fromkeys(k for p in parts for k in p.extra))
    extra = {k: cat([p.extra[k] for p in parts if k in p.extra]) for k in extra_keys}
    return Scored(res, cat([p.correct for p in parts]), extra)


def check_reward_errors(scored: Scored, stage_name: str, max_error_rate: float, rows: Sequence[dict]) -> None:
    """Stop the stage (StageFailed) when a reward could not score more than ``max_error_rate`` of the
    samples it was asked to score (in a mixture: of its own task's rows)."""
    from reasoning_rl.rewards.registry import RewardErrorRateExceeded, check_error_rate

    from .common import StageFailed

    res = scored.result
    tasks = [r.get("task") for r in rows]
    for name in dict.fromkeys([*res.errors, *res.non_finite]):
        task = name.split("/", 1)[0] if "/" in name else None
        n = sum(t == task for t in tasks) if task is not None and task in tasks else len(rows)
        try:
            check_error_rate({name: res.errors.get(name, 0)}, {name: res.non_finite.get(name, 0)},
                             res.first_error, n, max_error_rate)
        except RewardErrorRateExceeded as e:
            raise StageFailed(f"stage {stage_name}: {e} (algorithm.max_reward_error_rate)") from None


def rollout_metrics(scored: Scored, rows: Sequence[dict], lengths: np.ndarray, totals: np.ndarray,
                    mixed: bool) -> dict[str, float]:
    """Per-reward means; in a mixture also overall ``accuracy`` and ``<task>/{accuracy,reward_mean,response_len}``."""
    res = scored.result
    out = {name: float(np.mean(vals)) for name, vals in res.per_reward.items()}
    out.update({name: float(np.mean(vals)) for name, vals in scored.extra.items()})
    if not mixed:
        return out
    out["accuracy"] = float(np.mean(scored.correct))
    tasks = np.asarray([r.get("task") for r in rows])
    for name in dict.fromkeys(tasks.tolist()):
        m = tasks == name
        out[f"{name}/accuracy"] = float(scored.correct[m].mean())
        out[f"{name}/reward_mean"] = float(totals[m].mean())
        out[f"{name}/response_len"] = float(np.asarray(lengths)[m].mean())
        out[f"{name}/fraction"] = float(m.mean())
    return out
