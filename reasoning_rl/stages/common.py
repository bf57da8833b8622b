"""What every stage shares: the runtime (tokenizer, task, model, mesh), jitting with shardings, and the
checkpoint/resume/preemption plumbing around a stage's step loop."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from reasoning_rl import distributed as dist
from reasoning_rl import sharding as shd
from reasoning_rl.algorithms.steps import TrainState, make_optimizer, restart_moments
from reasoning_rl.checkpoint import CheckpointUnusable, StageCheckpointer
from reasoning_rl.config import Config, ModelConfig, RolloutConfig, StageConfig, TaskConfig
from reasoning_rl.data.tasks import make_task
from reasoning_rl.models import TransformerConfig, create, lora
from reasoning_rl.models.layers import invariant
from reasoning_rl.models.lora import LoRAError
from reasoning_rl.rollout import stops as stop_strings
from reasoning_rl.rollout.stops import StopTable
from reasoning_rl.tokenizer import SentencePieceTokenizer, load_tokenizer, train_sentencepiece

log = logging.getLogger("reasoning_rl")


class Preempted(RuntimeError):
    """Raised after a SIGTERM or a Ctrl-C (SIGINT): the in-flight step finished and a checkpoint of it is
    complete. ``signum`` is the signal this host received (None: another host was stopped)."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


class StageFailed(RuntimeError):
    pass


class Terminated(BaseException):
    """SIGTERM where no stage's step loop takes it (start-up, compiling, an end-of-stage evaluation, between
    stages). A BaseException, as KeyboardInterrupt is: no ``except Exception`` on the way (a plot, a reward
    call) takes it for an error of its own."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum


def stop_on_sigterm(signum, frame) -> None:
    """The run's SIGTERM handler outside the step loops (a loop's PreemptionGuard takes its place while it
    runs, and gives it back): stop now, exit status 75 as inside a loop (what a scheduler's requeue rule
    looks for), rather than die of the signal (status 143, no line in the log). A checkpoint write in
    progress finishes first (``ctrl_c_after_write``); what is complete on disk stays, and ``--resume`` redoes
    the rest (an interrupted evaluation runs again from the stage's final checkpoint)."""
    raise Terminated("SIGTERM outside the training steps (start-up, compiling, an evaluation or between stages); "
                     "--resume continues from the last complete checkpoint", signum)


stop_on_sigterm.after_writes = True  # ctrl_c_after_write holds it until a checkpoint write is complete


EXIT_INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


def _exit_now(signum=None, frame=None, note: bytes = b"") -> None:
    os.write(2, b"\ninterrupted again: exiting now" + note + b"\n")
    os._exit(EXIT_INTERRUPTED)


def exit_on_next_ctrl_c() -> None:
    """Once the process is stopping after a Ctrl-C, another one ends it at once (no KeyboardInterrupt
    tracebacks from the clean-up of whatever it lands in)."""
    try:
        signal.signal(signal.SIGINT, _exit_now)
    except ValueError:  # not the main thread
        pass


class PreemptionGuard:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a stop the step loop takes between steps (never mid-step).

    ``should_stop(step)`` is the one question the loop asks after each step. On one host it is the local
    flag. On several hosts a SIGTERM may reach one VM only, or reach them at different steps, so the hosts
    combine their flags (a max over a tiny all-gather after every step): every host sees the stop at the
    same step, saves that same step, and the collective checkpoint write cannot deadlock.

    ``grace_seconds`` bounds how long the process keeps running after SIGTERM: a stage that cannot finish
    its step and write the checkpoint in time is ended (exit status 75) before the scheduler's SIGKILL, and
    ``--resume`` then falls back to the last complete checkpoint (an unfinished write is never restored).
    Ctrl-C has no scheduler behind it, so no deadline: a second Ctrl-C ends the process at once (status 130),
    and ``--resume`` falls back the same way.
    """

    EXIT_STATUS = 75

    def __init__(self, grace_seconds: float = 0.0, stage: str = "", finish: Callable[[], None] | None = None):
        self.requested = False  # this host got SIGTERM or SIGINT
        self.stage, self._finish = stage, finish  # finish(): wait for the last step's checkpoint
        self.signum: int | None = None
        self.grace_seconds = grace_seconds
        self._old: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                if signum == signal.SIGINT:  # a second Ctrl-C: the user will not wait for the checkpoint
                    _exit_now(note=b" without the checkpoint of the step in flight; --resume continues from the "
                                   b"last complete checkpoint")
                return
            self.requested, self.signum = True, signum
            if signum == signal.SIGINT:
                log.warning("interrupted (Ctrl-C): finishing the current step and writing its checkpoint "
                            "(Ctrl-C again to exit at once)")
                return
            log.warning("SIGTERM received: finishing the current step and writing a checkpoint")
            if self.grace_seconds > 0:
                self._timer = threading.Timer(self.grace_seconds, self._out_of_time)
                self._timer.daemon = True
                self._timer.start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _out_of_time(self) -> None:
        log.error("preemption grace period of %.0f s ran out before the checkpoint was complete; exiting. "
                  "--resume continues from the last complete checkpoint", self.grace_seconds)
        logging.shutdown()
        os._exit(self.EXIT_STATUS)

    def should_stop(self, step: int) -> bool:
        """True on every host at the same step once any host has been asked to stop."""
        if jax.process_count() == 1:
            return self.requested
        flags = dist.allgather_rows(np.asarray([[int(self.requested), step]], np.int32))
        if len(set(flags[:, 1].tolist())) != 1:
            raise StageFailed(f"hosts disagree on the step number at preemption check: {flags[:, 1].tolist()}")
        stop = bool(flags[:, 0].max())
        if stop and not self.requested:
            log.warning("another host was preempted: stopping after step %d with it", step)
        return stop

    def done(self) -> None:
        """The checkpoint is complete: cancel the grace-period timer."""
        if self._timer is not None:
            self._timer.cancel()

    def __exit__(self, exc_type, exc, tb):
        self.done()
        for sig, old in self._old.items():
            if old is not None:
                signal.signal(sig, old)
        self._old = {}
        if self.requested:  # the process is stopping: a Ctrl-C from here on ends it at once
            exit_on_next_ctrl_c()
        # a signal after the last step's check: the loop is over and its last step saved, so stop here rather
        # than go on to evaluate (every host agrees, as in should_stop)
        if exc_type is None and (dist.agree_max(int(self.requested)) if dist.multi() else self.requested):
            if self._finish is not None:
                self._finish()
            raise Preempted(f"stage {self.stage} stopped after its last step, whose checkpoint is complete "
                            "(continue with --resume)", self.signum)
        return False


def model_config(cfg: Config, vocab_size: int) -> TransformerConfig:
    return model_config_from(cfg.model, vocab_size)


def model_config_from(m: ModelConfig, vocab_size: int) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=m.vocab_size or vocab_size, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads, head_dim=m.head_dim or m.d_model // m.n_heads, ffn_dim=m.ffn_dim,
        rope_theta=m.rope_theta, norm_eps=m.norm_eps, qkv_bias=m.qkv_bias, qk_norm=m.qk_norm,
        tie_embeddings=m.tie_embeddings, max_seq_len=m.max_seq_len, param_dtype=m.param_dtype, dtype=m.dtype,
        remat=m.remat, scan_layers=m.scan_layers, unroll_max=m.unroll_max, family=m.family, moe=_moe_config(m),
        lora=lora_config(m), attention_impl=m.attention_impl, decode_layers=m.decode_layers,
        batch_invariant=m.batch_invariant)


def check_model_options(mc: TransformerConfig) -> TransformerConfig:
    """A config error for run options the model's architecture cannot take (``model.batch_invariant`` on a
    mixture-of-experts or multi-head latent attention model); the config itself otherwise."""
    if mc.batch_invariant and (mc.moe is not None or mc.mla is not None):
        from reasoning_rl.config import ConfigError

        kind = "mixture-of-experts" if mc.moe is not None else "multi-head latent attention"
        raise ConfigError(f"model.batch_invariant: dense models with grouped-query attention only (this model has "
                          f"{kind} layers)")
    return mc


def run_options(m: ModelConfig, lora: bool = True) -> dict:
    """How a model of a checkpoint's own architecture (an HF directory) runs, from the config's model section:
    dtypes, remat, the layer scan, attention kernels, and (``lora``) the LoRA adapters; for
    ``dataclasses.replace`` on the directory's ``TransformerConfig``."""
    out = dict(param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, scan_layers=m.scan_layers,
               unroll_max=m.unroll_max, attention_impl=m.attention_impl, decode_layers=m.decode_layers,
               batch_invariant=m.batch_invariant)
    return {**out, "lora": lora_config(m)} if lora else out


def _check_keys(section: str, given: dict, cls) -> None:
    """A model sub-section's keys must be ``cls``'s fields: the first unknown one is a config error."""
    from reasoning_rl.config import ConfigError

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")


def lora_config(m: ModelConfig):
    """``model.lora`` as a LoRAConfig (None: full fine-tuning); a bad key or value fails naming it."""
    if not m.lora:
        return None
    from reasoning_rl.config import ConfigError
    from reasoning_rl.models import LoRAConfig
    from reasoning_rl.models.lora import TARGETS

    _check_keys("model.lora", m.lora, LoRAConfig)
    d = dict(m.lora)
    if isinstance(d.get("targets"), str):
        d["targets"] = [d["targets"]]
    if "targets" in d:
        if not isinstance(d["targets"], (list, tuple)) or not d["targets"]:
            raise ConfigError(f"model.lora.targets: expected a non-empty list, got {d['targets']!r}")
        bad = [t for t in d["targets"] if t not in TARGETS]
        if bad:
            raise ConfigError(f"model.lora.targets: {bad[0]!r} is not a projection (known: {', '.join(TARGETS)})")
        d["targets"] = tuple(d["targets"])
    for key, cond, what in (("rank", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
                            ("alpha", lambda v: isinstance(v, (int, float)) and v > 0, "a positive number"),
                            ("dropout", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
                            ("experts", lambda v: isinstance(v, bool), "a boolean"),
                            ("rslora", lambda v: isinstance(v, bool), "a boolean"),
                            ("merge_sampling", lambda v: isinstance(v, bool), "a boolean")):
        if key in d and not cond(d[key]):
            raise ConfigError(f"model.lora.{key}: expected {what}, got {d[key]!r}")
    if d.get("dropout", 0) and d.get("experts"):
        raise ConfigError(f"model.lora.dropout: {d['dropout']} with experts: true is not supported (routed experts' "
                          "adapters are merged into their weights, so their input cannot be dropped; PEFT refuses "
                          "lora_dropout on expert parameters too): set dropout 0 or experts false")
    return LoRAConfig(**d)


def _moe_config(m: ModelConfig):
    if not m.moe:
        return None
    from reasoning_rl.config import ConfigError
    from reasoning_rl.models import MoEConfig

    _check_keys("model.moe", m.moe, MoEConfig)
    try:
        mc = MoEConfig(**m.moe)
    except TypeError as e:
        raise ConfigError(f"model.moe: {e}") from None
    # named here, not as a trace-time error inside the first step
    for key, allowed in (("score", ("softmax", "sigmoid")), ("group_score", ("top2", "max")),
                         ("impl", ("ragged", "dense"))):
        if getattr(mc, key) not in allowed:
            raise ConfigError(f"model.moe.{key}: {getattr(mc, key)!r} is not one of {', '.join(allowed)}")
    if not (isinstance(mc.top_k, int) and 1 <= mc.top_k <= mc.n_experts):
        raise ConfigError(f"model.moe.top_k: {mc.top_k!r} is not between 1 and n_experts ({mc.n_experts})")
    if mc.n_group < 1 or mc.n_experts % mc.n_group or not 1 <= mc.topk_group <= mc.n_group:
        raise ConfigError(f"model.moe.n_group / topk_group: {mc.n_group} / {mc.topk_group} do not split the "
                          f"{mc.n_experts} experts into groups of which topk_group are kept")
    return mc


def _task_key(tcfg: TaskConfig) -> str:
    return json.dumps(dataclasses.asdict(tcfg), sort_keys=True)


class Runtime:
    """Everything a stage needs that does not change between stages.

    One Runtime per model: a distill stage's student gets its own (``for_model``), sharing the tokenizer,
    tasks and mesh with the policy's."""

    def __init__(self, cfg: Config, run_dir: str | Path, devices: list | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.require_checkpoint: Path | None = None  # --resume: this stage dir must hold a usable step
        self._tasks: dict[str, Any] = {}
        self.reward_models: dict[str, tuple] = {}  # finished reward_model stages: name -> (RewardDef, params)
        # the tokenizer's token texts and the stop tables built over them, shared with the runtimes made from
        # this one (same tokenizer; a distill student's vocabulary may be padded to another size)
        self._stops: dict[Any, Any] = {}
        self.task = self.task_for(cfg.task)
        self.tok = self._tokenizer()
        for t in self._tasks.values():
            if hasattr(t, "bind_tokenizer"):
                t.bind_tokenizer(self.tok)
        try:
            self.mesh = shd.make_mesh(dataclasses.asdict(cfg.mesh), devices)
        except shd.MeshError as e:
            from reasoning_rl.config import ConfigError

            raise ConfigError(str(e)) from None  # a mesh the devices cannot form is bad config, one line
        self.ctx = shd.context(self.mesh)
        self._set_model(cfg.model)
        self._check_lengths()

    def _check_lengths(self) -> None:
        """What must fit the model's context, checked before any stage computes: each stage's sampling token
        limits leave room for a prompt, and every file row fits in tokens (the row check needs the tokenizer,
        so it runs here); SFT stages check prompt + solution."""
        from reasoning_rl.config import ConfigError

        limit = self.mdef.cfg.max_seq_len
        for i, st in enumerate(self.cfg.stages):
            new = {"rollout": st.rollout.max_new_tokens, "eval": st.eval.max_new_tokens}
            if st.kind == "rejection_sft":
                new["rejection"] = st.rejection.max_new_tokens
            for section, n in new.items():
                if n is not None and n >= limit:
                    raise ConfigError(f"stages[{i}].{section}.max_new_tokens: {n} new tokens leave no room for a "
                                      f"prompt in the model's context of {limit} tokens (model.max_seq_len"
                                      f"{', from the checkpoint' if self.hf_path else ''})")
        for st in self.cfg.stages:
            sources = st.tasks if st.tasks else (st,)
            for src in sources:
                task = self.task_for(src.task)
                if hasattr(task, "check_lengths"):
                    task.check_lengths(self.mdef.cfg.max_seq_len, with_solution=st.kind == "sft")

    def _set_model(self, m: ModelConfig) -> None:
        self.model_cfg = m
        self.hf_path = m.path
        if self.hf_path:
            from reasoning_rl.models.hf import config_from_hf

            mcfg = config_from_hf(self.hf_path)
            mcfg = dataclasses.replace(mcfg, **run_options(m))
        else:
            mcfg = model_config_from(m, self.tok.vocab_size)
        check_model_options(mcfg)
        try:
            self.mdef, _ = create(mcfg, abstract=True)
        except LoRAError as e:
            from reasoning_rl.config import ConfigError

            raise ConfigError(str(e)) from None
        self.base_mdef = lora.base_mdef(self.mdef)  # the model with adapters disabled (itself without LoRA)
        self.param_shardings = shd.param_shardings(self.ctx, self.mdef.param_axes(), self.mdef.abstract_params())

    def for_model(self, m: ModelConfig) -> Runtime:
        """The same runtime around another model (a distill stage's student); the tokenizer is shared."""
        other = copy.copy(self)
        other._set_model(m)
        return other

    def on_devices(self, devices: list) -> Runtime:
        """The same runtime on a mesh over ``devices`` only (the mesh axes of the config apply to it): the
        sampler's and the trainer's halves of a split RL stage (``mesh.rollout_devices``)."""
        other = copy.copy(self)
        other.mesh = shd.make_mesh(dataclasses.asdict(self.cfg.mesh), devices)
        other.ctx = shd.context(other.mesh)
        other._set_model(self.model_cfg)
        return other

    def split(self, n_rollout: int) -> tuple[Runtime, Runtime]:
        """(trainer, sampler) runtimes: the first ``n_rollout`` devices of this mesh sample, the rest train."""
        from reasoning_rl.config import ConfigError

        devices = sorted(self.mesh.devices.flat, key=lambda d: (d.process_index, d.id))
        if not 0 < n_rollout < len(devices):
            raise ConfigError(f"mesh.rollout_devices: {n_rollout} of {len(devices)} devices leaves none for the "
                              f"{'trainer' if n_rollout else 'sampler'} (on a CPU host, raise mesh.cpu_devices)")
        # every host gives its first n_rollout / hosts devices to the sampler: both meshes span all hosts, so
        # each host loads its own rows for both and no batch waits on another host's data
        hosts = jax.process_count()
        if n_rollout % hosts:
            raise ConfigError(f"mesh.rollout_devices: {n_rollout} is not a multiple of the {hosts} hosts (each "
                              "host gives the sampler the same number of its devices)")
        per = {}
        for d in devices:
            per.setdefault(d.process_index, []).append(d)
        k = n_rollout // hosts
        sampler = [d for p in sorted(per) for d in per[p][:k]]
        trainer = [d for p in sorted(per) for d in per[p][k:]]
        try:
            return self.on_devices(trainer), self.on_devices(sampler)
        except Exception as e:  # a mesh shape that does not fit one of the halves
            raise ConfigError(f"mesh.rollout_devices: {e}") from None

    def task_for(self, tcfg: TaskConfig) -> Any:
        """The task a config describes, built once per distinct task config."""
        key = _task_key(tcfg)
        if key not in self._tasks:
            task = make_task(tcfg)
            if hasattr(task, "bind_tokenizer") and getattr(self, "tok", None) is not None:
                task.bind_tokenizer(self.tok)
            self._tasks[key] = task
        return self._tasks[key]

    def _corpus(self) -> list[str]:
        """Tokenizer training text: the top-level task's, plus every other task a stage trains on."""
        lines = self.task.corpus(2000)
        for st in self.cfg.stages:
            for tcfg in (st.task, *(s.task for s in st.tasks)):
                if _task_key(tcfg) != _task_key(self.cfg.task) and _task_key(tcfg) not in self._tasks:
                    lines += self.task_for(tcfg).corpus(2000)
        return lines

    def _tokenizer(self):
        tc = self.cfg.tokenizer
        if self.cfg.model.path and tc.path is None:
            return load_tokenizer("hf", self.cfg.model.path)
        if tc.path is not None:
            return load_tokenizer(tc.kind, tc.path)
        path = self.run_dir / "tokenizer.model"
        if not dist.multi():
            return SentencePieceTokenizer(path) if path.is_file() else train_sentencepiece(self._corpus(), path,
                                                                                          tc.vocab_size)
        # several hosts: the primary trains it into the shared run dir, the others wait and read it
        if dist.agree_max(int(not path.is_file())):
            if dist.is_primary() and not path.is_file():
                train_sentencepiece(self._corpus(), path, tc.vocab_size)
            dist.barrier("tokenizer")
        return SentencePieceTokenizer(path)

    # ------------------------------------------------------------------ params and state

    @property
    def lora(self) -> bool:
        return self.mdef.cfg.lora is not None

    def init_params(self, seed: int | None = None) -> dict:
        """Fresh (or the checkpoint's) params; with LoRA, the base plus fresh adapters (B zero)."""
        seed = self.cfg.seed if seed is None else seed
        return self.with_new_adapters(self.init_base(seed), seed)

    def init_base(self, seed: int | None = None) -> dict:
        """The model without adapters: model.path's weights, or a fresh init from ``seed``."""
        if self.hf_path:
            return self.load_hf(self.hf_path)
        shardings = lora.split(self.param_shardings)[0] if self.lora else self.param_shardings
        return create(self.base_mdef.cfg, self.cfg.seed if seed is None else seed, shardings=shardings)[1]

    def load_hf(self, path: str) -> dict:
        from reasoning_rl.models.hf import load_params

        return load_params(path, self.base_mdef, dtype=self.model_cfg.param_dtype, mesh=self.mesh)

    def with_new_adapters(self, base: dict, seed: int) -> dict:
        """``base`` (params without adapters) plus fresh adapters when this model has LoRA."""
        if not self.lora:
            return base
        ad = lora.init_adapters(self.mdef, seed)
        return lora.join(lora.split(base)[0], dist.move(ad, lora.split(self.param_shardings)[1]))

    def lora_base_ref(self) -> dict:
        """Where a LoRA checkpoint's frozen base comes from (checkpoints hold the adapters only)."""
        if self.hf_path:
            return {"kind": "hf", "path": str(Path(self.hf_path).absolute())}
        return {"kind": "fresh", "seed": self.cfg.seed}

    def base_from_ref(self, ref: dict) -> dict:
        if ref.get("kind") == "hf":
            return self.load_hf(ref["path"])
        return self.init_base(int(ref.get("seed", self.cfg.seed)))

    def place(self, tree: Any) -> Any:
        """A copy of a params-shaped tree on its shardings (never aliased: steps donate their state, and a
        stage's init params may also feed a later stage or a frozen reference)."""
        return dist.move(tree, self.param_shardings, may_alias=False)

    def place_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A batch every host holds in full, laid out over the batch axes."""
        return {k: dist.replicated_to_global(v, shd.batch_sharding(self.ctx, v.shape)) for k, v in batch.items()}

    def host_rows(self, n: int) -> slice:
        """The rows of an ``n``-row batch this host loads (the ones its devices hold)."""
        return dist.host_rows(shd.batch_sharding(self.ctx, (n,)), n)

    def place_local(self, batch: dict[str, np.ndarray], n: int) -> dict[str, jax.Array]:
        """A global ``n``-row batch from this host's rows of it (``host_rows``)."""
        return {k: dist.local_to_global(v, shd.batch_sharding(self.ctx, (n, *v.shape[1:])), n)
                for k, v in batch.items()}

    def new_state(self, params: dict, tx, seed: int) -> TrainState:
        """A fresh train state. With LoRA the frozen base is shared with ``params`` (never donated, never
        copied: the same buffers serve the KL reference); the adapters are copied."""
        if lora.has_adapters(params):
            base, ad = lora.split(params)
            sh_base, sh_ad = lora.split(self.param_shardings)
            params = lora.join(dist.move(base, sh_base), dist.move(ad, sh_ad, may_alias=False))
        else:
            params = self.place(params)
        rep = shd.replicated(self.mesh)
        opt_sh = self.opt_shardings(tx, params)
        with shd.use(self.ctx):
            opt_state = jax.jit(tx.init, out_shardings=opt_sh)(lora.trainable(params))
        zero = jax.device_put(np.zeros((), np.int32), rep)
        key = jax.jit(lambda: jax.random.key(seed), out_shardings=rep)()  # made on the mesh: any host count
        return TrainState(params, opt_state, zero, key,
                          jax.device_put(np.zeros((), np.int32), rep))

    def opt_shardings(self, tx, params: Any, param_shardings: Any = None) -> Any:
        """Optimizer moments take their parameter's sharding (else they would come back replicated and cost
        2x the params on every device); scalars such as step counts are replicated. ``param_shardings``:
        those of ``params`` when they are not this runtime's model (a PPO critic)."""
        rep = shd.replicated(self.mesh)
        # a LoRA model's optimizer covers its adapters only (trainable: every parameter when there are none)
        abstract = jax.eval_shape(tx.init, lora.trainable(params))
        sh = self.param_shardings if param_shardings is None else param_shardings
        return optax.tree_utils.tree_map_params(tx, lambda _, s: s, abstract, lora.trainable(sh),
                                                transform_non_params=lambda _: rep)

    def jit_step(self, fn: Callable, state: TrainState):
        return jit_train_step(fn, state, self.ctx, self.mdef.cfg.batch_invariant)

    def jit_fn(self, fn: Callable, **kw):
        """``fn`` jitted on this runtime's mesh; a batch-invariant model's programs take its XLA options."""
        opts = invariant.compiler_options(self.mdef.cfg.batch_invariant)
        if opts:
            kw["compiler_options"] = {**opts, **kw.get("compiler_options", {})}
        return jax.jit(shd.traced_under(self.ctx, fn), **kw)

    # ------------------------------------------------------------------ tokens

    def stop_ids(self, rollout: RolloutConfig) -> tuple[int, ...]:
        """Tokens that end a completion: the tokenizer's (a Hugging Face model's eos token and every
        ``generation_config.json`` eos id: Llama 3 and Qwen instruct models end a chat turn with
        ``<|eot_id|>`` / ``<|im_end|>``, not the tokenizer's eos), and each stop string of ``rollout``
        (``</answer>`` with ``stop_at_answer``, ``stop``) that is one token."""
        ids = list(getattr(self.tok, "stop_ids", None) or (self.tok.eos_id,))
        for s in _stop_strings(rollout):
            a = self.tok.token_id(s)
            if a is not None and a not in ids:
                ids.append(a)
        return tuple(ids)

    def stop_table(self, rollout: RolloutConfig) -> StopTable | None:
        """The decode loop's automaton for the stop strings of ``rollout`` that are not one token (None if
        every one is): ``</answer>`` is several tokens in a real vocabulary."""
        strings = tuple(s for s in _stop_strings(rollout) if self.tok.token_id(s) is None)
        if not strings:
            return None
        key = (strings, self.mdef.cfg.vocab_size)
        if key not in self._stops:
            if "texts" not in self._stops:
                self._stops["texts"] = stop_strings.token_texts(self.tok)
            self._stops[key] = stop_strings.build(strings, self._stops["texts"], self.mdef.cfg.vocab_size)
        return self._stops[key]


def _stop_strings(rollout: RolloutConfig) -> tuple[str, ...]:
    return (("</answer>",) if rollout.stop_at_answer else ()) + tuple(rollout.stop)


class StageRun:
    """Checkpointing, resume and preemption around one stage's loop."""

    def __init__(self, rt: Runtime, stage: StageConfig, init_params: dict, total_updates: int):
        self.rt, self.stage = rt, stage
        self.dir = rt.run_dir / "checkpoints" / stage.name
        self.tx = make_optimizer(stage.optimizer, total_updates)
        self.state = rt.new_state(init_params, self.tx, rt.cfg.seed + 7919 * (1 + _stage_index(rt.cfg, stage.name)))
        self.ckpt = StageCheckpointer(self.dir, rt.cfg.checkpoint.keep)
        self.start_step = 0
        self.host: dict[str, Any] = {"wall_seconds": 0.0}
        # held around checkpoint writes: a split stage on several hosts sets a lock its sampler thread holds
        # while it samples, since Orbax may run collectives over all devices (see distributed.py)
        self.exclusive: Any = contextlib.nullcontext()
        self.curve: Any = None  # the stage's held-out curve (stages.evaluate.HeldOutCurve), when eval.every is set
        # the KL reference once a ProRL reset made it a copy of the policy: saved with every checkpoint from
        # then on (``KLReference``)
        self.reference: Any = None

    def resume(self, reference_like: Any = None) -> dict | None:
        """Continue from the newest usable checkpoint step. Damaged steps are reported (one warning each) and
        moved aside; the fallback to an older step, or to the start of the stage, is stated in one line. Under
        ``--resume`` (``rt.require_checkpoint`` names this stage's dir) finding steps and none usable is bad
        input: CheckpointUnusable, raised before anything in the run dir is changed. ``reference_like``: a
        step past the stage's first reference reset also restores the reference (``self.reference``)."""
        got = self.ckpt.restore(self.state, report=False, reference_like=reference_like,
                                reference_from=self.stage.algorithm.ref_reset.every)
        bad = self.ckpt.unusable
        found = "; ".join(f"checkpoint step {n}: {why}" for n, why in bad)
        kept = "; damaged steps are kept as <step>.damaged" if any(n.isdigit() for n, _ in bad) else ""
        if got is None:
            if bad and getattr(self.rt, "require_checkpoint", None) == self.dir:
                raise CheckpointUnusable(f"--resume: no usable checkpoint of stage {self.stage.name} in {self.dir} "
                                         f"({found}); nothing was changed. Rerun without --resume to start the "
                                         "stage over (the damaged steps are then moved aside)")
            if bad:
                log.warning("stage %s: no usable checkpoint (%s): starting the stage over from its init%s",
                            self.stage.name, found, kept)
            self._set_aside(bad)
            return None
        step, state, host = got
        if self.rt.lora:  # the checkpoint holds the adapters: put them back on this stage's frozen base
            state = dataclasses.replace(state, params=lora.with_trainable(self.state.params, state.params))
        self.state, self.start_step, self.host = state, step, host
        self.reference = self.ckpt.reference
        if bad:
            log.warning("stage %s: resumed from step %d, the newest usable checkpoint step (%s)%s", self.stage.name,
                        step, found, kept)
        else:
            log.info("stage %s: resumed from step %d", self.stage.name, step)
        self._set_aside(bad)
        return host

    def _set_aside(self, bad: list[tuple[str, str]]) -> None:
        if dist.is_primary():  # the run dir is shared: one host renames
            self.ckpt.set_aside([int(n) for n, _ in bad if n.isdigit()])
        dist.barrier(f"stage {self.stage.name} steps set aside")
        self.ckpt.mgr.reload()

    def save(self, step: int, host: dict[str, Any], force: bool = False) -> None:
        self.host = host
        if self.rt.lora:
            host = {**host, "lora_base": self.rt.lora_base_ref()}
        with self.exclusive:
            self.ckpt.save(step, self.state, host, force=force, reference=self.reference)

    def should_save(self, step: int) -> bool:
        return step % self.rt.cfg.checkpoint.every == 0 or step == self.stage.steps

    def guard(self) -> PreemptionGuard:
        return PreemptionGuard(self.rt.cfg.checkpoint.preemption_grace_s, self.stage.name, self._wait)

    def _wait(self) -> None:
        with self.exclusive:
            self.ckpt.wait()

    def end_step(self, step: int, guard: PreemptionGuard, host: Callable[[], dict[str, Any]]) -> None:
        """What follows every step: the non-finite streak check, the held-out curve's evaluation, the periodic
        save, and preemption.

        ``host()`` gives the host-side state to save with the step (data iterator, wall clock). The curve's
        point comes before the step's checkpoint (a run resumed there already holds it); a stop requested by
        then skips it (the resumed stage evaluates it first)."""
        max_skips = self.stage.optimizer.max_consecutive_skips
        if int(jax.device_get(self.state.skipped)) >= max_skips:
            self.ckpt.wait()
            raise StageFailed(f"stage {self.stage.name}: {max_skips} consecutive steps with non-finite loss or "
                              f"gradients (last at step {step}); the last good checkpoint is kept in {self.dir}")
        stop = guard.should_stop(step)
        if not stop and self.curve is not None and self.curve.due(step):
            self.curve.at(step, self.state.params)
            stop = guard.should_stop(step)
        if self.should_save(step) or stop:
            self.save(step, host(), force=stop)
        if stop:
            with self.exclusive:
                self.ckpt.wait()
            guard.done()
            raise Preempted(f"stage {self.stage.name} stopped after step {step}; its checkpoint is complete in "
                            f"{self.dir} (continue with --resume)", guard.signum)

    def close(self) -> None:
        with self.exclusive:
            self.ckpt.close()


class KLReference:
    """The KL reference of an RL stage (``algorithm.beta > 0``; else ``params`` is None): the stage's init
    params, or for LoRA the frozen base with the adapters disabled (the state's own base buffers, no copy).

    With ``algorithm.ref_reset.every`` N (ProRL's hard resets), after every N-th step the reference becomes a
    copy of the policy and, with ``ref_reset.optimizer``, Adam's moments start over (``restart_moments``).
    From the first reset on the copy is saved with each checkpoint (an item of its own), so a stage resumed
    from any step continues with the reference the uninterrupted stage had there."""

    def __init__(self, rt: Runtime, run: StageRun, init_params: dict):
        a = run.stage.algorithm
        self.rt, self.run, self.every, self.optimizer = rt, run, a.ref_reset.every, a.ref_reset.optimizer
        self.params = None
        if a.beta > 0:
            self.params = lora.split(run.state.params)[0] if rt.lora else rt.place(init_params)

    def resume(self) -> dict | None:
        """``run.resume()``; a stage resumed past a reset continues with the reference it saved."""
        host = self.run.resume(self.params if self.every else None)
        if self.run.reference is not None:
            self.params = self.run.reference
        return host

    def after_step(self, step: int) -> dict[str, Any]:
        """The reset due after ``step``'s update, if any (before its checkpoint is written): its metric."""
        if not self.every or step % self.every:
            return {}
        run = self.run
        self.params = run.reference = self.rt.place(run.state.params)  # a copy: the state's are donated
        if self.optimizer:
            run.state = dataclasses.replace(run.state, opt_state=restart_moments(run.state.opt_state))
        log.info("stage %s: after step %d the KL reference is the policy%s", run.stage.name, step,
                 " and the optimizer's moments start over" if self.optimizer else "")
        return {"ref_reset": 1}


def jit_train_step(fn: Callable, state: Any, ctx: shd.ShardingContext, batch_invariant: bool = False):
    """Jit a ``(state, batch) -> (state, metrics)`` step traced on ``ctx``: state shardings pinned, state
    buffers donated, the train-step XLA options (what every stage and the benchmarks run; ``batch_invariant``:
    with a batch-invariant model's).

    A LoRA state's frozen base goes in as a separate, non-donated argument and is not an output: its buffers
    stay valid for the KL reference and the stage's init params, and are never written."""
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    if not lora.has_adapters(state.params):
        return jax.jit(shd.traced_under(ctx, fn), donate_argnums=(0,),
                       out_shardings=(state_sh, shd.replicated(ctx.mesh)), compiler_options=train_compiler_options(batch_invariant))

    def inner(st, base, batch):
        new, metrics = fn(dataclasses.replace(st, params=lora.join(base, st.params)), batch)
        return dataclasses.replace(new, params=lora.split(new.params)[1]), metrics

    sh = dataclasses.replace(state_sh, params=lora.split(state_sh.params)[1])
    jitted = jax.jit(shd.traced_under(ctx, inner), donate_argnums=(0,), out_shardings=(sh, shd.replicated(ctx.mesh)),
                     compiler_options=train_compiler_options(batch_invariant))

    def step(st, batch):
        base, ad = lora.split(st.params)
        new, metrics = jitted(dataclasses.replace(st, params=ad), base, batch)
        return dataclasses.replace(new, params=lora.join(base, new.params)), metrics

    step.jitted = jitted  # for lowering / memory analysis
    return step


@functools.lru_cache(maxsize=1)
def train_compiler_options(batch_invariant: bool = False) -> dict:
    """XLA options for train steps (forward + backward over whole sequences); ``batch_invariant``: with a
    batch-invariant model's (``invariant.compiler_options``).

    On CPU, XLA's own GEMMs run the train step's large dots faster than the YNNPACK fusions it uses by
    default, which in turn are what make the small decode-step dots fast: W1's update goes from ~3.4 s to
    ~3.1 s on 2 cores with them off, the sampler would slow down by half. So only train steps turn them off,
    and only where this XLA knows the option."""
    opts = invariant.cpu_own_emitters() if jax.default_backend() == "cpu" else {}
    return {**opts, **invariant.compiler_options(batch_invariant)}


def _stage_index(cfg: Config, name: str) -> int:
    """A stage's position; a sub-run inside a stage (``distill/grpo_baseline``) counts as its stage."""
    names = [s.name for s in cfg.stages]
    if name in names:
        return names.index(name)
    base, _, sub = name.partition("/")
    return names.index(base) + 1000 * (1 + len(sub))


def timer() -> float:
    return time.perf_counter()


SUMMED = ("skipped", "policy_updated")  # update metrics that count updates: summed over a step, not averaged


def run_updates(step_fn: Callable, state: Any, batch: dict, epochs: int, mini_batches: int,
                place: Callable) -> tuple[Any, dict[str, float]]:
    """``epochs`` passes of ``mini_batches`` optimizer updates over one rollout batch (the RL stages' inner
    loop; a PPO state carries its critic through it); returns the new state and the updates' metrics: means,
    the counts in ``SUMMED`` summed, ``logprob_gap`` of the first update (whose params sampled the batch in a
    synchronous run)."""
    n = len(next(iter(batch.values())))
    mb = n // mini_batches
    ms = []
    for _ in range(epochs):
        for j in range(mini_batches):
            state, m = step_fn(state, place({k: v[j * mb:(j + 1) * mb] for k, v in batch.items()}))
            ms.append(m)
    ms = jax.device_get(ms)
    rec = {k: (sum if k in SUMMED else np.mean)([float(x[k]) for x in ms]) for k in ms[0]}
    if "logprob_gap" in ms[0]:
        rec["logprob_gap"] = float(ms[0]["logprob_gap"])
    return state, {k: float(v) for k, v in rec.items()}



class StepLog:
    """What every RL stage (grpo, ppo) does around a step's updates: the step's timings, its metrics line, its
    rollouts (``rollouts.jsonl``), the progress bar, and the stage's wall clock (which checkpoints carry, so a
    resumed stage keeps counting from where it stopped)."""

    def __init__(self, rt: Runtime, stage: StageConfig, writer: Any, run: StageRun, progress: bool):
        from reasoning_rl.progress import Progress

        self.rt, self.stage, self.writer = rt, stage, writer
        self.wall = float(run.host.get("wall_seconds", 0.0))  # read after run.resume()
        self.bar = Progress(stage.name, stage.steps, run.start_step, progress)

    def record(self, step: int, t0: float, t_up: float, *parts: dict) -> dict[str, Any]:
        """The step's metrics line: ``parts`` (rollout, advantage, update metrics) in order, then ``update_s``
        (since ``t_up``, when the updates' inputs started) and ``seconds`` (since ``t0``, the step's start),
        which is added to the wall clock."""
        now = timer()
        rec: dict[str, Any] = {"stage": self.stage.name, "step": step}
        for part in parts:
            rec.update(part)
        rec["update_s"] = now - t_up
        rec["seconds"] = now - t0
        self.wall += rec["seconds"]
        return rec

    def write(self, rec: dict[str, Any], samples: list[dict]) -> None:
        """The metrics line, the step's rollouts (``log.rollouts_per_step`` of them) and the progress bar."""
        self.writer.write(rec)
        lc = self.rt.cfg.log
        self.writer.write_rollouts([{"stage": self.stage.name, "step": rec["step"], **x} for x in samples],
                                   int(lc.rollouts_max_mb * 2**20), lc.rollouts_keep)
        self.bar.update(reward=rec["reward_mean"], **({"acc": rec["accuracy"]} if "accuracy" in rec else {}),
                        len=rec["response_len"])

    def close(self) -> None:
        self.bar.close()
