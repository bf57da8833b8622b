"""Distillation: a teacher's reasoning traces train a smaller student.

The teacher samples ``distill.samples`` completions for ``distill.prompts`` training prompts (kept only if
verified, with ``verified_only``); the set is written to the stage dir once (``traces.jsonl``), like a
rejection-sampling set. ``mode: traces`` fine-tunes the student on them with the SFT loss;
``mode: logits`` trains it on the same sequences towards the teacher's full next-token distributions
(forward KL(teacher ‖ student) over the completion tokens). Teacher and student share the tokenizer.

With ``compare_grpo`` the same fresh student is also trained by GRPO alone for the same number of
optimizer updates (a sub-run ``<stage>/grpo_baseline`` with its own checkpoints), and both are evaluated,
which is the comparison the R1 report makes for small models.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from reasoning_rl.algorithms.steps import TrainState, _accumulate, _apply
from reasoning_rl.config import OptimizerConfig, StageConfig
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.models import ModelDef, lora, positions_from_valid

from .common import Runtime, StageFailed, _stage_index
from .evaluate import end_of_stage_point, stage_eval
from .grpo import run_grpo
from .rejection import SampleSpec, collect, kept_source, log_once
from .sft import run_sft


def make_logit_distill_step(mdef: ModelDef, ocfg: OptimizerConfig, tx: optax.GradientTransformation,
                            micro_batches: int = 1):
    """batch: tokens/valid/loss_mask [B, T] and teacher_logp [B, T-1, V] (the teacher's log-softmax for
    every next-token position); packed rows add positions/segments (``make_sft_step``). Loss: sum over masked
    targets of KL(teacher ‖ student) / their count."""

    def loss_fn(params, b):
        model = mdef.bind(params)
        h = _hidden(model, b["tokens"], b["valid"], b.get("positions"), b.get("segments"))
        logq = jax.nn.log_softmax(model.logits(h[:, :-1]), axis=-1)
        logp = b["teacher_logp"]
        kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
        m = b["loss_mask"][:, 1:]
        if "segments" in b:  # no target across a packed row's sequence boundary
            m = m & (b["segments"][:, 1:] == b["segments"][:, :-1])
        m = m.astype(jnp.float32)
        s = jnp.sum(kl * m)
        return s, {"loss_sum": s, "count": jnp.sum(m)}

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        grads, aux = _accumulate(loss_fn, state.params, batch, micro_batches,
                                 lora.dropout_key(mdef.cfg, state.rng, state.step))
        loss = aux["loss_sum"] / jnp.maximum(aux["count"], 1.0)
        state, m = _apply(state, grads, tx, ocfg.max_grad_norm, loss, ocfg.inject_nan_steps)
        return state, {"loss": loss, "tokens": aux["count"], **m}

    return step


def _hidden(model, tokens, valid, positions=None, segments=None):
    pos = positions_from_valid(valid) if positions is None else positions
    return model.hidden(tokens, pos, valid, segments=segments)[0]


def teacher_logp_fn(mdef: ModelDef):
    def fn(params, tokens, valid, positions=None, segments=None):
        model = mdef.bind(params)
        return jax.nn.log_softmax(model.logits(_hidden(model, tokens, valid, positions, segments)[:, :-1]), axis=-1)

    return fn


def baseline_stage(stage: StageConfig) -> StageConfig:
    """GRPO on the student alone, with as many optimizer updates as the distillation run."""
    a = stage.algorithm
    steps = max(1, stage.steps // (a.epochs * a.mini_batches))
    return dataclasses.replace(stage, name=f"{stage.name}/grpo_baseline", kind="grpo", steps=steps)


def run_distill(rt: Runtime, srt: Runtime, stage: StageConfig, teacher_params: Any, student_init: Any,
                writer: MetricsWriter, progress: bool = True) -> tuple[Any, dict]:
    """``rt``: the teacher's runtime (this config's model); ``srt``: the student's."""
    d = stage.distill
    if d.mode == "logits" and srt.mdef.cfg.vocab_size != rt.mdef.cfg.vocab_size:
        raise StageFailed(f"stage {stage.name}: logit distillation needs one vocabulary; teacher has "
                          f"{rt.mdef.cfg.vocab_size} entries, student {srt.mdef.cfg.vocab_size}")
    spec = SampleSpec(d.prompts, d.samples, d.max_per_prompt, d.temperature,
                      d.max_new_tokens or stage.rollout.max_new_tokens, d.batch_size,
                      require_correct=d.verified_only, require_format=d.verified_only, top_k=d.top_k,
                      top_p=d.top_p, min_p=d.min_p)
    seed = rt.cfg.seed + 37 * (1 + _stage_index(rt.cfg, stage.name))
    traces, stats = collect(rt, stage, teacher_params, spec, "traces", seed)
    if not traces:
        raise StageFailed(f"stage {stage.name}: the teacher produced no usable traces ({stats['samples']} samples)")
    log_once(writer, rt.run_dir, stage.name, {k: v for k, v in stats.items() if not isinstance(v, dict)})
    source = kept_source(srt, traces, seed)
    if d.mode == "traces":
        params, info = run_sft(srt, stage, student_init, writer, progress, source)
    else:
        tfn = rt.jit_fn(teacher_logp_fn(rt.mdef))

        def augment(batch: dict) -> dict:
            return {**batch, "teacher_logp": tfn(teacher_params, batch["tokens"], batch["valid"],
                                                 batch.get("positions"), batch.get("segments"))}

        params, info = run_sft(srt, stage, student_init, writer, progress, source, augment=augment,
                               make_step=lambda run: make_logit_distill_step(
                                   srt.mdef, stage.optimizer, run.tx, stage.algorithm.micro_batches))
    info = {**info, "distill": {"mode": d.mode, **stats}}
    if d.compare_grpo:
        base = baseline_stage(stage)
        bparams, binfo = run_grpo(srt, base, student_init, writer, progress)
        metrics = stage_eval(srt, base, bparams)  # the same evaluation, shown as the baseline's
        end_of_stage_point(base, writer, base.steps, metrics)
        info["grpo_baseline"] = {"steps": base.steps, "wall_seconds": binfo["wall_seconds"], **metrics}
    return params, info
