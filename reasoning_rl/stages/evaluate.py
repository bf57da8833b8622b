"""End-of-stage held-out evaluation with the stage's own sampler settings and verifiers."""

from __future__ import annotations

from typing import Any

from reasoning_rl.config import StageConfig
from reasoning_rl.evaluation import evaluate
from reasoning_rl.rewards import extract_answer
from reasoning_rl.rewards import registry

from .common import Runtime

CORRECTNESS_REWARDS = ("accuracy", "math", "code")


def correctness_reward(stage: StageConfig) -> str:
    for r in stage.rewards:
        if r.name in CORRECTNESS_REWARDS:
            return r.name
    return "accuracy"


def stage_eval(rt: Runtime, stage: StageConfig, params: Any) -> dict[str, Any]:
    ev = stage.eval
    examples = [e.as_dict() for e in rt.task.held_out(ev.num_problems)]
    return evaluate(
        rt.mdef, params, rt.tok, examples, samples=ev.samples, ks=ev.k,
        temperature=ev.temperature if ev.temperature is not None else stage.rollout.temperature,
        max_new_tokens=ev.max_new_tokens or stage.rollout.max_new_tokens,
        stop_ids=rt.stop_ids(stage.rollout.stop_at_answer), correct_fn=registry.get(correctness_reward(stage)),
        format_fn=registry.get("format"), extract_fn=extract_answer, batch_size=ev.batch_size, greedy=ev.greedy,
        seed=rt.cfg.seed + 17)
