"""Typed run configuration: YAML → frozen dataclasses, ``--set`` overrides, validation.

Why a hand-rolled loader: every mistake in a config file must surface as *one line naming the key*
before any compute starts (a typo in ``rollout.group_size`` must not cost a 10-minute run). The loader
knows the dataclass types, so unknown keys, wrong types and impossible values are all caught here.

Stage sections (``optimizer``, ``rollout``, ``algorithm``, ``task``, ``rewards``, ``eval``) may be
overridden per stage; the override is merged onto the top-level section, so every stage carries a fully
resolved copy and nothing downstream has to look in two places.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config problem, always phrased as ``<dotted.key>: <what is wrong>``."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer. ``path`` names a Hugging Face checkpoint directory instead."""

    path: str | None = None
    family: str = "qwen2"
    vocab_size: int | None = None  # None: taken from the tokenizer
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None  # None: d_model // n_heads
    ffn_dim: int = 384
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = True
    max_seq_len: int = 512
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots", "nested"] = "none"
    # attention kernels: auto (GPU: cuDNN flash attention for training/prefill, a Pallas kernel for decode; CPU
    # and TPU: XLA) | xla | cudnn | pallas (models/layers/kernels.py; calls a kernel cannot compute take XLA)
    attention_impl: Literal["auto", "xla", "cudnn", "pallas"] = "auto"
    # sampler decode over the contiguous cache: scan (stacked cache and weights) | unroll (a cache buffer per
    # layer and the layer weights sliced once per sampling call: no per-step copies; holds a second copy of the
    # layer weights, projections in the compute dtype, while sampling; compile time grows with depth) | auto
    # (unroll on GPU/TPU, scan on CPU)
    decode_layers: Literal["auto", "scan", "unroll"] = "auto"
    # batch-invariant arithmetic (models/layers/invariant.py): each token's numbers independent of the shape of
    # the call, so the sampler's log-probs equal the trainer's bit for bit (no sampler/trainer gap) at a cost in
    # speed (row-blocked matrix products, attention without matrix units); dense GQA attention models
    batch_invariant: bool = False
    scan_layers: bool = True
    unroll_max: int = 4  # multi-token passes of stacks of at most this many layers run unrolled (0: never)
    # log-probs over sequence chunks of this many tokens (0: whole [B, T, V] logits); unset: chunks only when
    # one device's float32 logits of a micro-batch would pass 64 MiB (reasoning_rl.algorithms.logprobs)
    logits_chunk: int | None = None
    # Mixture of experts for a model built from this section (HF checkpoints bring their own): keys of
    # reasoning_rl.models.MoEConfig, e.g. {n_experts: 8, top_k: 2, ffn_dim: 96, capacity_factor: 0}.
    moe: dict | None = None
    # LoRA: keys of reasoning_rl.models.LoRAConfig, e.g. {rank: 16, alpha: 32, targets: [q, k, v, o]}. Every
    # stage then trains the adapters only, over a frozen base (stored in param_dtype).
    lora: dict | None = None


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["sentencepiece", "hf"] = "sentencepiece"
    path: str | None = None  # None: trained on the task corpus on first use and stored with the run
    vocab_size: int = 48


@dataclass(frozen=True)
class TaskConfig:
    """A task: built-in and generated (``arithmetic``, ``countdown``, ``instruct``) or rows of a local JSONL /
    Parquet file (``file``, see ``reasoning_rl.data.files``)."""

    name: Literal["arithmetic", "countdown", "instruct", "code", "helpfulness", "file"] = "arithmetic"
    digits: int = 4  # difficulty: operand digits
    terms: int = 2  # difficulty: number of operands (instruct: the most items a response may be asked for)
    held_out_size: int = 500
    train_size: int = 1_000_000
    seed: int = 1234  # task seed: fixes which problems are held out (file tasks: the shuffle order)
    # file tasks
    path: str | None = None  # JSONL (.jsonl/.json) or Parquet (.parquet) file of rows
    held_out_path: str | None = None  # None: held_out_size rows of ``path`` are held out instead
    # how rows map onto examples; "preference": {prompt, chosen, rejected[, margin]} pairs (reward_model stages)
    preset: Literal["fields", "gsm8k", "math", "code", "preference"] = "fields"
    fields: dict = field(default_factory=dict)  # example field -> row column, over the preset's mapping
    template: str = "{prompt}"  # prompt template over the row's fields, or "chat" (the tokenizer's template)
    system: str | None = None  # system message for template "chat"
    # template "chat": variables the chat template reads, as transformers' apply_chat_template(**kwargs) passes
    # them (Qwen3 ``enable_thinking: false``, gpt-oss ``reasoning_effort: high``)
    chat_template_kwargs: dict = field(default_factory=dict)
    # Rows whose templated prompt is longer (in tokens) keep its last this-many tokens; None: a row longer
    # than the model's context (model.max_seq_len) is rejected when the run starts
    max_prompt_tokens: int | None = None


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one; 0.0: off
    stop_at_answer: bool = True  # stop a row at </answer> as well as at EOS
    # more strings that end a completion (e.g. "\n\nQuestion:" after few-shot prompts): matched on the text,
    # whichever tokens spell it (reasoning_rl/rollout/stops.py); the token that completes one is kept
    stop: tuple[str, ...] = ()
    slots: int = 0  # in-flight refill: decode the prompts_per_step * group_size rows on this many batch slots
    refill_min: int = 0  # refill when this many slots are free (0: an eighth of the slots, at least 1)
    page_size: int = 0  # paged KV cache, prompt pages shared by the group (copy-on-write); 0: contiguous
    # The update runs on the batch's completion columns up to its longest completion, rounded up to a multiple of
    # max_new_tokens / width_buckets (so a stage compiles its update for at most this many widths): short
    # answers under a long budget do not pay for the budget's padding. 0: always the whole budget.
    width_buckets: int = 8
    # async: the sampler (on mesh.rollout_devices) decodes the next batches while the trainer updates. Step s
    # trains on a batch sampled with the policy of step s-1-max_staleness (0: exactly the synchronous run).
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = 1


@dataclass(frozen=True)
class OverlongConfig:
    """DAPO's two treatments of completions that run long: the soft overlong punishment (``enabled``: a linear
    penalty over the last ``cache`` tokens before ``max_len``) and overlong filtering (``filter``: a truncated
    completion, one that reached max_new_tokens without a stop token, is left out of the loss; its reward
    still counts in its group's advantages)."""

    enabled: bool = False
    max_len: int = 64
    cache: int = 16
    penalty: float = 1.0
    filter: bool = False


@dataclass(frozen=True)
class CovConfig:
    """Clip-Cov / KL-Cov (losses ``clip_cov``, ``kl_cov``): each step selects ``ratio`` of the batch's completion
    tokens by the covariance of their log-prob and advantage (``reasoning_rl/algorithms/entropy.py``); clip_cov
    draws them at random among those with covariance in (``low``, ``high``) and drops their gradient, kl_cov
    takes the largest and penalises ``kl_coef * |log pi - log pi_old|`` there."""

    ratio: float = 2e-4
    low: float = 1.0
    high: float = 5.0
    kl_coef: float = 1.0


@dataclass(frozen=True)
class RefResetConfig:
    """ProRL's hard resets for long RL runs with a KL penalty: after every ``every``-th step the KL reference
    becomes a copy of the policy (so the penalty keeps the policy near where it recently was, not where the
    stage started) and, with ``optimizer``, the optimizer's moments start over (its learning-rate schedule goes
    on). 0: the reference stays the stage's init."""

    every: int = 0
    optimizer: bool = True


# the losses that take one advantage per token (REINFORCE++'s returns, PPO's GAE); gspo and gmpo take one per
# sequence
TOKEN_LEVEL = ("grpo", "cispo", "sapo", "clip_cov", "kl_cov")


@dataclass(frozen=True)
class AlgorithmConfig:
    # grpo: token ratio, clipped; gspo: sequence ratio (arithmetic-mean log), clipped; cispo: clipped
    # stop-gradient IS weight on REINFORCE (every token keeps its gradient); sapo: a soft sigmoid gate in place
    # of the clip; gmpo: geometric mean of clipped token ratios per sequence (reasoning_rl/algorithms/losses.py)
    # clip_cov / kl_cov: entropy-collapse control by covariance (``cov``; reasoning_rl/algorithms/entropy.py)
    loss: Literal["grpo", "gspo", "cispo", "sapo", "gmpo", "clip_cov", "kl_cov"] = "grpo"
    # drgrpo: no std scaling; group-mean-batch-std: the group's mean over the batch's std; rloo: leave-one-out
    # baseline; reinforce++: batch-normalised token returns
    advantage: Literal["grpo", "drgrpo", "group-mean-batch-std", "rloo", "reinforce++"] = "grpo"
    eps_low: float = 0.2
    eps_high: float = 0.2  # > eps_low: DAPO clip-higher
    dual_clip: float = 0.0  # c > 1: dual-clip PPO, a negative-advantage token's loss capped at -c * A (0: off)
    sapo_tau_pos: float = 1.0  # SAPO's gate temperatures for positive / negative advantages
    sapo_tau_neg: float = 1.05
    # entropy bonus: the loss less entropy_coef x the policy's entropy (at the rollout temperature, aggregated
    # as the loss's terms), against entropy collapse; 0: off (the entropy is then only reported)
    entropy_coef: float = 0.0
    # adaptive entropy control (Skywork-OR1): with entropy_target > 0 the bonus's coefficient starts at
    # entropy_coef and moves by entropy_coef_step after every step, up while the policy's entropy is below the
    # target and down (not below 0) while above it; the bonus applies only while it is below
    # (reasoning_rl/algorithms/entropy.py: EntropyControl)
    entropy_target: float = 0.0
    entropy_coef_step: float = 0.005
    beta: float = 0.0  # KL weight; 0 disables the reference model entirely
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    epochs: int = 1  # mu: inner epochs over each rollout batch
    mini_batches: int = 1  # optimizer updates per epoch
    micro_batches: int = 1  # gradient accumulation inside one update
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill
    max_sampling_rounds: int = 4
    # MoE: the trainer computes each token with the experts the sampler routed it to, so the policy ratio
    # compares the same experts (metrics: route_mismatch, the share of token-layers whose routes changed)
    routing_replay: bool = False
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    # The stage stops (exit 1, naming the reward and its first error) when a reward could not score more
    # than this share of a step's samples (a raising reward, a sandbox that failed, a non-finite value).
    max_reward_error_rate: float = 0.05
    # Stale rollouts (rollout.mode async): the ratio is taken against the trainer's own log-probs of the batch
    # (the proximal policy) and each token weighted by pi_prox / pi_behaviour, truncated at tis_cap (tis), or
    # with tokens above tis_cap masked out (decoupled PPO); none: the behaviour log-probs as the old policy.
    off_policy: Literal["tis", "decoupled", "none"] = "tis"
    tis_cap: float = 2.0
    # where the KL to the reference goes (beta > 0): a penalty in the loss, or -beta * KL per token added to
    # the reward before the advantages (REINFORCE++, PPO)
    kl_in: Literal["loss", "reward"] = "loss"
    ref_reset: RefResetConfig = field(default_factory=RefResetConfig)
    cov: CovConfig = field(default_factory=CovConfig)
    # PPO (stage kind ppo): GAE discount and trace decay, the clipped value loss, and the first steps that
    # train the critic only
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    vf_clip: float = 0.2  # 0: unclipped value loss
    whiten_advantages: bool = True  # normalise GAE advantages over the batch's tokens
    critic_warmup_steps: int = 0


@dataclass(frozen=True)
class CriticConfig:
    """A ppo stage's critic: a value head on its own copy of the policy backbone (starting from the policy's
    init), or on the model of the stage's ``critic_model`` section, with its own optimizer."""

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4))
    seed: int | None = None  # a fresh critic_model's init seed (None: the run's)


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 5e-5
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = 1.0  # 0: no clipping
    max_consecutive_skips: int = 5  # non-finite steps in a row before the run stops
    # Testing the non-finite guard: the gradients of these optimizer updates (1-based) are made NaN inside
    # the jitted step, as a bad batch would. Empty in real runs.
    inject_nan_steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1
    # CPU hosts: split the host into this many XLA devices (0: JAX's default of one). With ``data: -1`` a
    # batch is then data-parallel over them, each device running its share of the sampler's decode loop and
    # of the train step on its own thread: the many small products of decoding use a multi-core host better
    # that way than through one device's intra-op threads (W1 sampler 1.2-1.6x on 2 cores). Set before JAX
    # starts (the CLI does); no effect on accelerator hosts.
    cpu_devices: int = 0
    # RL stages: the first this many devices sample, the rest train, each group on its own mesh (the axes
    # above apply to each); the policy's weights move device to device after every update. 0: one mesh for both.
    rollout_devices: int = 0


@dataclass(frozen=True)
class DistributedConfig:
    """Several JAX processes (hosts). Per-host values (``process_id``) usually come from the environment
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or ``--set``; this section is
    left out of the config hash, so a run may be resumed on another number of hosts."""

    # auto: when a coordinator address is set here or in the environment; true: always (JAX detects TPU
    # pods, SLURM, Open MPI, Kubernetes); false: never
    initialize: bool | Literal["auto"] = "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 50
    keep: int = 3
    # After SIGTERM the in-flight step finishes and its checkpoint is written; if that takes longer than this,
    # the process exits anyway (status 75) before the scheduler's hard kill. 0: no limit.
    preemption_grace_s: float = 30.0


@dataclass(frozen=True)
class LogConfig:
    """How a run reports itself besides metrics.jsonl; none of it changes the computation (not part of the
    config hash)."""

    every_s: float = 30.0  # stderr not a terminal: a plain progress line every this many seconds (0: each step)
    # GRPO: rollouts (prompt, completion, answers, reward components) kept per step in ``rollouts.jsonl`` and
    # TensorBoard's text tab, one per prompt first; 0: none
    rollouts_per_step: int = 2
    rollouts_max_mb: float = 64.0  # past this size rollouts.jsonl becomes rollouts.jsonl.1 (then .2, ...)
    rollouts_keep: int = 3  # rotated files kept
    # plots/training_curves.png rewritten after every stage (~1-3 s of matplotlib on the primary host each);
    # false (or ``run --no-plots``): none; ``reasoning-rl plot RUN_DIR`` draws it from metrics.jsonl at any time
    plots: bool = True


@dataclass(frozen=True)
class BudgetConfig:
    """Test-time-compute scaling by budget forcing (``reasoning-rl eval``): thinking capped at each budget."""

    budgets: tuple[int, ...] = ()  # thinking-token budgets; empty: no budget-forcing curve
    extend: bool = False  # also suppress </think> before the budget (think exactly B tokens)
    continuation: str = ","  # the piece that replaces a suppressed </think>
    answer_tokens: int = 16  # room for the answer after the thinking budget
    samples: int = 1  # samples per problem and budget
    greedy: bool = True


@dataclass(frozen=True)
class EvalConfig:
    num_problems: int = 500
    samples: int = 4  # n samples per problem for pass@k
    k: tuple[int, ...] = (1, 4)
    temperature: float | None = None  # None: the rollout temperature
    # the sampled completions' filters (published reasoning evaluations: temperature 0.6, top_p 0.95); None:
    # the rollout's
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    greedy: bool = True
    batch_size: int = 512
    max_new_tokens: int | None = None  # None: the rollout's
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # A held-out curve: the stage's params are also evaluated before its first step and after every this many
    # steps, one ``held_out/...`` record each in metrics.jsonl (0: at the stage's end only). When and on how
    # much a run is evaluated changes no trained number: a run dir continues under other values.
    every: int = 0
    every_problems: int = 0  # problems per periodic evaluation (reward_model: held-out pairs); 0: all of them


@dataclass(frozen=True)
class RewardConfig:
    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    # "reward_model": a learned reward model scores (prompt, completion) in batches on the mesh; it is the
    # reward_model stage named by ``stage`` or the *ForSequenceClassification checkpoint at ``path``
    kind: Literal["function", "reward_model"] = "function"
    stage: str | None = None
    path: str | None = None
    normalize: Literal["batch", "none"] = "batch"  # batch: scores standardised over the rows scored together
    batch_size: int = 256  # rows per reward-model forward


@dataclass(frozen=True)
class RewardModelConfig:
    """A reward_model stage: a scalar head on a backbone trained with the Bradley-Terry pairwise loss
    ``-log sigmoid(r_chosen - r_rejected - margin) + center * (r_chosen + r_rejected)^2``."""

    margin: float = 0.0  # rows may carry their own (a ``margin`` field)
    center: float = 0.0  # weight of the centering term (keeps scores near zero)
    held_out_pairs: int = 256  # held-out pairs scored at the end of the stage (pair accuracy)
    # the backbone when ``init`` is unset: built fresh from this section (merged over the top-level model)
    model: ModelConfig | None = None
    export: bool = True  # also write checkpoints/<stage>/hf, a *ForSequenceClassification checkpoint


@dataclass(frozen=True)
class TaskSourceConfig:
    """One source of a stage's task mixture: its own task, sampling weight and rewards."""

    name: str
    weight: float = 1.0
    task: TaskConfig = field(default_factory=TaskConfig)
    rewards: tuple[RewardConfig, ...] = ()  # empty: the stage's rewards


@dataclass(frozen=True)
class RejectionConfig:
    """Rejection sampling: ``samples`` completions for each of ``prompts`` training prompts; keep the verified,
    well-formed, distinct ones, at most ``max_per_prompt`` per prompt."""

    prompts: int = 256
    samples: int = 8
    max_per_prompt: int = 2
    temperature: float = 1.0
    top_k: int = 0  # the sampler's filters, as rollout's (off by default)
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int | None = None  # None: the rollout's
    require_format: bool = True  # keep only completions the format reward accepts
    verifier: str | None = None  # the reward a kept completion must score 1 on (None: the task's correctness)
    batch_size: int = 512  # sampled rows per sampler call


@dataclass(frozen=True)
class DistillConfig:
    """Teacher → student distillation. ``traces``: SFT on teacher completions; ``logits``: the same sequences,
    trained to the teacher's token distributions (forward KL)."""

    mode: Literal["traces", "logits"] = "traces"
    prompts: int = 256
    samples: int = 4
    max_per_prompt: int = 1
    verified_only: bool = True
    temperature: float = 1.0
    top_k: int = 0  # the teacher's filters, as rollout's (off by default)
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int | None = None  # None: the rollout's
    batch_size: int = 512
    compare_grpo: bool = False  # also train the student with GRPO alone for the same optimizer steps


STAGE_KINDS = ("sft", "grpo", "rejection_sft", "distill", "ppo", "reward_model")


@dataclass(frozen=True)
class StageConfig:
    name: str
    kind: Literal["sft", "grpo", "rejection_sft", "distill", "ppo", "reward_model"]
    steps: int
    init: str | None = None  # a previous stage's name, a stage checkpoint dir of any run, or an HF dir
    batch_size: int = 64  # SFT: sequences per step
    # SFT loops (sft, rejection_sft, distill): pack each step's sequences into as few rows as hold them
    # (first-fit by length; batch_size, batch_size/2, ... rows: a few compiled shapes), each attending within
    # itself: the same loss and gradient as the padded batch for a fraction of the compute when lengths vary
    pack: bool = False
    # SFT loops: end the stage early once the mean training loss of the last stop_window steps is at most
    # this (``steps`` stays the cap). A cold start then lands at the same quality whatever the seed.
    stop_at_loss: float | None = None
    stop_window: int = 20
    log_every: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rewards: tuple[RewardConfig, ...] = ()
    eval: EvalConfig = field(default_factory=EvalConfig)
    tasks: tuple[TaskSourceConfig, ...] = ()  # a weighted task mixture; empty: ``task`` with ``rewards``
    sampler: str | None = None  # rejection_sft: whose samples (default: the init)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)
    teacher: str | None = None  # distill: a stage name or checkpoint dir
    student_model: ModelConfig | None = None  # distill: merged over the top-level model section
    distill: DistillConfig = field(default_factory=DistillConfig)
    # an RL stage (grpo, ppo, rejection_sft) that would start from random weights is refused unless this is set
    allow_random_init: bool = False
    allow_empty: bool = False  # steps: 0 is accepted (the stage is skipped, passing its init on)
    critic: CriticConfig | None = None  # ppo: the critic (required; ``critic: {}`` for all defaults)
    # ppo: the critic's backbone, a model section (merged over the top-level model) or an HF directory;
    # None: a copy of the policy
    critic_model: ModelConfig | None = None
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)  # reward_model stages


@dataclass(frozen=True)
class Config:
    seed: int = 0
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    rewards: tuple[RewardConfig, ...] = (RewardConfig("accuracy", 1.0), RewardConfig("format", 0.1))
    mesh: MeshConfig = field(default_factory=MeshConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    stages: tuple[StageConfig, ...] = ()
    allow_empty: bool = False  # a config without stages may be run (it does nothing)

    def to_dict(self) -> dict:
        return _to_plain(self)

    def hash(self) -> str:
        """Identity of what the run computes. How it is laid out over devices and hosts (``mesh``,
        ``distributed``) is not part of it: a run may resume on another mesh or number of hosts (the steps
        give the same numbers on any mesh, up to float reassociation). Nor is ``model.unroll_max`` (layers run
        unrolled or scanned compute the same numbers), nor ``model.logits_chunk`` (chunked log-probs are the same
        numbers). Nor are how it reports itself (``log``), the permissions it was given (``allow_random_init``)
        and ``run_dir``: where the run lives is not what it computes (a run dir copied or moved elsewhere
        continues)."""
        return hashlib.sha256(json.dumps(self._identity(), sort_keys=True).encode()).hexdigest()[:16]

    def stage_hash(self, name: str) -> str:
        """Identity of what stage ``name`` computes: the config with the stages after it left out (stages run in
        order and refer only backwards, so nothing later changes an earlier stage), and without ``checkpoint``
        (when and how many steps are kept changes no number) or the held-out curve's ``eval.every`` and
        ``eval.every_problems``. A stage's manifest keeps it, so a run continued
        with another stage's step count, stages appended or other checkpoint settings does not redo the stages
        before the change."""
        d = self._identity()
        d.pop("checkpoint", None)
        _pop_eval_schedule(d)
        names = [st["name"] for st in d["stages"]]
        d["stages"] = d["stages"][: names.index(name) + 1]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def continued_by(self, new: Config) -> tuple[dict[str, tuple[int, int]], list[str], list[str]] | None:
        """How ``new`` continues the run this config started, when it computes nothing else differently: the
        stages whose ``steps`` changed (``{name: (old, new)}``), the names of stages appended after the last
        one, and the changed ``checkpoint`` and held-out-curve settings (``checkpoint.keep: 3 -> 1``,
        ``stages.grpo.eval.every: 0 -> 20``: where steps are saved and when the params are evaluated change
        no trained number; a resumed run equals an uninterrupted one whatever step it was saved at). None for
        any other change (whether the run dir allows the change is the caller's check)."""
        a, b = self._identity(), new._identity()
        settings: list[str] = []
        ea, eb = _pop_eval_schedule(a), _pop_eval_schedule(b)
        sa, sb = a.pop("stages"), b.pop("stages")
        _diff(a.pop("checkpoint"), b.pop("checkpoint"), "checkpoint", settings)
        for key in [k for k in ea if k in eb]:  # an appended stage's own schedule is part of that stage
            _diff(ea[key], eb[key], key, settings)
        if a != b or len(sb) < len(sa):
            return None
        steps = {}
        for x, y in zip(sa, sb):
            if {**x, "steps": 0} != {**y, "steps": 0}:
                return None
            if x["steps"] != y["steps"]:
                steps[x["name"]] = (x["steps"], y["steps"])
        return steps, [y["name"] for y in sb[len(sa):]], settings

    def differences(self, other: Config, most: int = 3) -> list[str]:
        """What ``other`` computes differently, as ``key: old -> new`` lines keyed as ``--set`` writes them
        (``stages.grpo.steps: 150 -> 300``), at most ``most`` of them then ``N more``: the keys behind
        two different hashes, so a refused run dir says what changed instead of only that something did."""
        out: list[str] = []
        _diff(self._identity(), other._identity(), "", out)
        return out[:most] + ([f"{len(out) - most} more"] if len(out) > most else [])

    def _identity(self) -> dict:
        d = self.to_dict()
        d.pop("run_dir", None)
        d.pop("distributed", None)
        d.pop("mesh", None)
        d.pop("log", None)
        for st in d["stages"]:
            st.pop("allow_random_init", None)
        d["model"].pop("unroll_max", None)
        d["model"].pop("logits_chunk", None)  # chunked log-probs are the same numbers
        return d


_UNSET = object()  # a key one of two compared configs does not have

EVAL_SCHEDULE = ("every", "every_problems")  # eval keys that say when and on how much, not what, is trained


def _pop_eval_schedule(d: dict) -> dict[str, Any]:
    """Take ``eval.every`` and ``eval.every_problems`` out of an identity dict, at the top level and in every
    stage: ``{"stages.grpo.eval.every": 20, ...}``. A held-out curve changes no trained number."""
    out: dict[str, Any] = {}
    for where, ev in [("eval", d.get("eval"))] + [(f"stages.{st['name']}.eval", st.get("eval"))
                                                   for st in d.get("stages", [])]:
        for k in EVAL_SCHEDULE:
            if isinstance(ev, dict) and k in ev:
                out[f"{where}.{k}"] = ev.pop(k)
    return out


def _show(v: Any) -> str:
    text = "(unset)" if v is _UNSET else repr(v) if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _diff(a: Any, b: Any, key: str, out: list[str]) -> None:
    """Append ``key: a -> b`` for every leaf where two identity dicts differ; stages are keyed by name."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            _diff(a.get(k, _UNSET), b.get(k, _UNSET), f"{key}.{k}" if key else k, out)
    elif key == "stages" and [st["name"] for st in a] == [st["name"] for st in b]:
        for sa, sb in zip(a, b):
            _diff(sa, sb, f"stages.{sa['name']}", out)
    elif key == "stages" and a != b:
        out.append(f"stages: {[st['name'] for st in a]} -> {[st['name'] for st in b]}")
    elif a != b:
        out.append(f"{key}: {_show(a)} -> {_show(b)}")


# Sections a stage may override; merged onto the top-level section of the same name.
STAGE_SECTIONS = ("optimizer", "rollout", "algorithm", "task", "rewards", "eval")


# --------------------------------------------------------------------------- building


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists→tuples, int→float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (elem, _) = typing.get_args(tp)
        return tuple(_coerce(elem, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if cls is RewardConfig and isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def from_dict(raw: dict) -> Config:
    """Resolve per-stage overrides, build the typed config, validate it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"<root>: expected a mapping, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    stages = raw.pop("stages", []) or []
    if not isinstance(stages, list):
        raise ConfigError("stages: expected a list of stages")
    top = build(Config, raw)
    top_plain = _to_plain(top)
    _file_only(raw.get("task"), top_plain["task"], _to_plain(TaskConfig()), "task")
    resolved = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise ConfigError(f"stages[{i}]: expected a mapping, got {st!r}")
        st = dict(st)
        own_task = st.get("task")
        for sec in STAGE_SECTIONS:
            base = top_plain[sec]
            if sec in st and isinstance(base, dict) and isinstance(st[sec], dict):
                st[sec] = _deep_merge(base, st[sec])
            elif sec not in st:
                st[sec] = copy.deepcopy(base)
        if isinstance(st.get("critic_model"), str):
            st["critic_model"] = {"path": st["critic_model"]}
        if isinstance(st.get("critic_model"), dict):
            st["critic_model"] = _deep_merge(top_plain["model"], st["critic_model"])
        if isinstance(st.get("student_model"), dict):
            st["student_model"] = _deep_merge(top_plain["model"], st["student_model"])
        rm = st.get("reward_model")
        if isinstance(rm, dict) and isinstance(rm.get("model"), dict):
            st["reward_model"] = {**rm, "model": _deep_merge(top_plain["model"], rm["model"])}
        _file_only(own_task, st["task"], top_plain["task"], f"stages[{i}].task")
        if "tasks" in st:
            st["tasks"] = _resolve_sources(st["tasks"], st, f"stages[{i}].tasks")
        resolved.append(build(StageConfig, st, f"stages[{i}]"))
    cfg = dataclasses.replace(top, stages=tuple(resolved))
    validate(cfg)
    return cfg


# Keys only a file task reads: set on a built-in task they would be silently ignored (a `task: {path: ...}`
# without `name: file` would train on the default arithmetic task instead of the file's rows).
FILE_ONLY_KEYS = ("path", "held_out_path", "preset", "fields", "template", "system", "chat_template_kwargs")


def _file_only(own: Any, merged: Any, inherited: dict, key: str) -> None:
    """Refuse a file-only key that this level of the config sets (to something other than what it inherits:
    a stored config repeats inherited values) on a task that is not a file task."""
    if not isinstance(own, dict) or not isinstance(merged, dict) or merged.get("name", "arithmetic") == "file":
        return
    for k in FILE_ONLY_KEYS:
        if k in own and own[k] != inherited.get(k):
            raise ConfigError(f"{key}.{k}: only a file task reads it, and this task is {merged.get('name')!r} "
                              f"(set {key}.name: file to train on a file's rows)")


# Default rewards of a mixture source whose task is not scored by the stage's rewards.
TASK_REWARDS = {"instruct": [{"name": "instruct", "weight": 1.0}, {"name": "format", "weight": 0.1}]}


def _resolve_sources(sources: Any, stage: dict, key: str) -> Any:
    """Each mixture source's task is merged over the stage's task (``name`` defaults to the source's name);
    its rewards default to the task's (``TASK_REWARDS``) or else the stage's, so every source is fully
    resolved in the written config."""
    if not isinstance(sources, list):
        raise ConfigError(f"{key}: expected a list of task sources")
    base_task = stage["task"] if isinstance(stage.get("task"), dict) else {}
    out = []
    for j, src in enumerate(sources):
        if not isinstance(src, dict):
            raise ConfigError(f"{key}[{j}]: expected a mapping, got {src!r}")
        src = dict(src)
        over = src.get("task", {})
        if not isinstance(over, dict):
            raise ConfigError(f"{key}[{j}].task: expected a mapping, got {over!r}")
        if "name" not in over:
            over = {**over, "name": src.get("name")}
        src["task"] = _deep_merge(base_task, over)
        _file_only(over, src["task"], base_task, f"{key}[{j}].task")
        if not src.get("rewards"):
            default = TASK_REWARDS.get(src["task"].get("name"))
            src["rewards"] = copy.deepcopy(default if default is not None else stage.get("rewards", []))
        out.append(src)
    return out


def _stage_refs(cfg: Config) -> None:
    """Stage references (init, sampler, teacher) point backwards, and parameters only flow between stages
    with the same model: a distill stage's student cannot initialise a policy stage, nor the reverse."""
    names = [s.name for s in cfg.stages]
    kinds = {s.name: s.kind for s in cfg.stages}
    for i, st in enumerate(cfg.stages):
        p = f"stages[{i}]"
        for attr in ("init", "sampler", "teacher"):
            ref = getattr(st, attr)
            if ref is not None and ref in names and names.index(ref) >= i:
                raise ConfigError(f"{p}.{attr}: stage {ref!r} does not come before {st.name!r}")
        policy_before = [n for n in names[:i] if kinds[n] != "reward_model"]  # a reward model is not a policy
        implicit = policy_before[-1] if policy_before and st.kind not in ("distill", "reward_model") else None
        init = st.init if st.init is not None else implicit
        if st.kind != "reward_model":
            for attr in ("init", "sampler", "teacher"):
                ref = getattr(st, attr)
                if ref in kinds and kinds[ref] == "reward_model":
                    raise ConfigError(f"{p}.{attr}: stage {ref!r} is a reward model, not a policy")
        if init in kinds and st.kind != "reward_model":
            if st.kind == "distill" and kinds[init] != "distill":
                raise ConfigError(f"{p}.init: a distill stage starts its student from a student checkpoint, "
                                  f"not from stage {init!r} (omit init for a fresh student)")
            if st.kind != "distill" and kinds[init] == "distill":
                raise ConfigError(f"{p}.init: stage {init!r} is a distill stage (a student model); set init "
                                  "to a stage of this config's model")
        for attr in ("sampler", "teacher"):
            ref = getattr(st, attr)
            if ref in kinds and kinds[ref] == "distill":
                raise ConfigError(f"{p}.{attr}: stage {ref!r} holds a student model, not this config's model")


def _validate_data(st: StageConfig, p: str) -> None:
    need = _need
    tasks = [(f"{p}.task", st.task)] + [(f"{p}.tasks[{j}].task", s.task) for j, s in enumerate(st.tasks)]
    for key, t in tasks:
        need(t.held_out_size >= 1, f"{key}.held_out_size", "must be positive")
        need(t.max_prompt_tokens is None or t.max_prompt_tokens >= 1, f"{key}.max_prompt_tokens",
             "must be positive (or null: no truncation)")
        if t.name == "file":
            need(bool(t.path), f"{key}.path", "a file task needs the path of a JSONL or Parquet file")
            need(t.template == "chat" or (t.system is None and not t.chat_template_kwargs),
                 f"{key}.{'system' if t.system is not None else 'chat_template_kwargs'}",
                 "only the tokenizer's chat template reads it: set template: chat")
            reserved = {"messages", "add_generation_prompt"} & set(t.chat_template_kwargs)
            need(not reserved, f"{key}.chat_template_kwargs", f"{sorted(reserved)} are set by the run itself")
        if t.name in ("arithmetic", "countdown", "code"):
            need(t.digits >= 1, f"{key}.digits", "must be positive")
            need(t.terms >= 2, f"{key}.terms", "must be at least 2")
        if t.name == "instruct":
            need(t.terms >= 2, f"{key}.terms", "instruct needs terms >= 2 (the most items asked for)")
    seen: dict[str, Any] = {}
    for j, src in enumerate(st.tasks):
        k = f"{p}.tasks[{j}]"
        need(bool(src.name), f"{k}.name", "must not be empty")
        need(src.name not in seen, f"{k}.name", f"duplicate task source {src.name!r}")
        seen[src.name] = src
        need(src.weight > 0, f"{k}.weight", "must be positive")
        need(len(src.rewards) > 0, f"{k}.rewards", "a task source needs at least one reward")


def _validate_kind(st: StageConfig, p: str) -> None:
    need = _need
    if st.kind == "rejection_sft":
        rj = st.rejection
        need(rj.prompts >= 1, f"{p}.rejection.prompts", "must be positive")
        need(rj.samples >= 1, f"{p}.rejection.samples", "must be positive")
        need(rj.max_per_prompt >= 1, f"{p}.rejection.max_per_prompt", "must be positive")
        need(rj.temperature > 0, f"{p}.rejection.temperature", "must be > 0")
        need(rj.batch_size >= rj.samples, f"{p}.rejection.batch_size", "must hold at least one prompt's samples")
    if st.kind == "distill":
        d = st.distill
        need(st.teacher is not None, f"{p}.teacher", "a distill stage needs a teacher (stage name or checkpoint)")
        need(st.student_model is not None, f"{p}.student_model", "a distill stage needs a student model section")
        need(d.prompts >= 1, f"{p}.distill.prompts", "must be positive")
        need(d.samples >= 1, f"{p}.distill.samples", "must be positive")
        need(d.max_per_prompt >= 1, f"{p}.distill.max_per_prompt", "must be positive")
        need(d.temperature > 0, f"{p}.distill.temperature", "must be > 0")
        need(d.batch_size >= d.samples, f"{p}.distill.batch_size", "must hold at least one prompt's samples")
        sm = st.student_model
        if sm is not None:
            need(sm.n_heads % sm.n_kv_heads == 0, f"{p}.student_model.n_kv_heads",
                 f"must divide student_model.n_heads ({sm.n_heads})")
            need(sm.head_dim is not None or sm.d_model % sm.n_heads == 0, f"{p}.student_model.head_dim",
                 "d_model is not divisible by n_heads; set head_dim")
    else:
        need(st.student_model is None, f"{p}.student_model", "only a distill stage has a student model")
        need(st.teacher is None, f"{p}.teacher", "only a distill stage has a teacher")
    if st.sampler is not None:
        need(st.kind == "rejection_sft", f"{p}.sampler", "only a rejection_sft stage samples from another stage")
    _validate_rl(st, p)
    b = st.eval.budget
    need(all(x >= 0 for x in b.budgets), f"{p}.eval.budget.budgets", "budgets must be >= 0")
    need(b.answer_tokens >= 1, f"{p}.eval.budget.answer_tokens", "must be positive")
    need(b.samples >= 1, f"{p}.eval.budget.samples", "must be positive")


def _validate_rl(st: StageConfig, p: str) -> None:
    """PPO's critic and GAE settings, and which estimators take the KL in the reward."""
    need, a = _need, st.algorithm
    if st.kind == "ppo":
        need(st.critic is not None, f"{p}.critic", "a ppo stage needs a critic section (critic: {} for a value "
             "head on a copy of the policy; critic_model for another backbone)")
        need(0.0 <= a.gamma <= 1.0, f"{p}.algorithm.gamma", f"must be in [0, 1], got {a.gamma}")
        need(0.0 <= a.lam <= 1.0, f"{p}.algorithm.lam", f"must be in [0, 1], got {a.lam}")
        need(a.vf_coef >= 0, f"{p}.algorithm.vf_coef", "must be >= 0")
        need(a.vf_clip >= 0, f"{p}.algorithm.vf_clip", "must be >= 0 (0: unclipped)")
        need(0 <= a.critic_warmup_steps <= st.steps, f"{p}.algorithm.critic_warmup_steps",
             f"must be in [0, steps ({st.steps})]")
        need(a.loss in ("grpo", "cispo", "sapo"), f"{p}.algorithm.loss",
             "ppo's GAE gives per-token advantages: use one of the token-level losses grpo, cispo, sapo")
        need(not a.dynamic_sampling, f"{p}.algorithm.dynamic_sampling", "applies to grpo stages only")
        if st.critic is not None:
            need(st.critic.optimizer.lr >= 0, f"{p}.critic.optimizer.lr", "must be >= 0")
    else:
        need(st.critic is None, f"{p}.critic", "only a ppo stage has a critic")
        need(st.critic_model is None, f"{p}.critic_model", "only a ppo stage has a critic")
    if st.kind in ("grpo", "ppo"):
        if a.kl_in == "reward":
            need(st.kind == "ppo" or a.advantage == "reinforce++", f"{p}.algorithm.kl_in",
                 "a KL penalty in the reward needs token-level advantages (advantage: reinforce++, or a ppo stage)")
        if st.kind == "grpo" and a.advantage == "reinforce++":
            need(a.loss in TOKEN_LEVEL, f"{p}.algorithm.loss", "reinforce++ gives per-token advantages: use one "
                 f"of the token-level losses ({', '.join(TOKEN_LEVEL)})")
        need(a.dual_clip == 0 or a.dual_clip > 1, f"{p}.algorithm.dual_clip", "must be 0 (off) or > 1")
        need(a.entropy_coef >= 0, f"{p}.algorithm.entropy_coef", "must be >= 0 (0: off)")
        need(a.entropy_target >= 0, f"{p}.algorithm.entropy_target", "must be >= 0 (0: a fixed entropy_coef)")
        need(a.entropy_target == 0 or a.entropy_coef_step > 0, f"{p}.algorithm.entropy_coef_step",
             "must be > 0 with an entropy_target")
        need(0 < a.cov.ratio <= 1, f"{p}.algorithm.cov.ratio", "must be in (0, 1]")
        need(a.cov.low < a.cov.high, f"{p}.algorithm.cov.low", "must be below algorithm.cov.high")
        need(a.cov.kl_coef >= 0, f"{p}.algorithm.cov.kl_coef", "must be >= 0")
        need(a.dual_clip == 0 or a.loss == "grpo", f"{p}.algorithm.dual_clip",
             f"applies to the clipped token loss (loss: grpo), not {a.loss}")
        need(a.sapo_tau_pos > 0 and a.sapo_tau_neg > 0, f"{p}.algorithm.sapo_tau_pos",
             "SAPO's temperatures must be > 0")
        need(a.loss not in ("cispo", "grpo", "gmpo") or a.eps_low <= 1, f"{p}.algorithm.eps_low",
             "must be <= 1 (1: no lower bound on the ratio)")
        need(a.loss != "gmpo" or a.eps_low < 1, f"{p}.algorithm.eps_low",
             "must be < 1 with loss gmpo (its lower bound is log(1 - eps_low))")


def _validate_filters(section: Any, where: str) -> None:
    """top_k / top_p / min_p of a section that samples (None: taken from the rollout's)."""
    k, tp, mp = section.top_k, section.top_p, section.min_p
    _need(k is None or k >= 0, f"{where}.top_k", "must be >= 0 (0: off)")
    _need(tp is None or 0 < tp <= 1, f"{where}.top_p", "must be in (0, 1] (1: off)")
    _need(mp is None or 0 <= mp < 1, f"{where}.min_p", "must be in [0, 1) (0: off)")


def eval_sampling(stage: StageConfig) -> dict[str, Any]:
    """How a stage's held-out completions are sampled: ``eval``'s temperature and filters, each None taken
    from the stage's rollout, as keyword arguments of ``reasoning_rl.evaluation.evaluate``."""
    ev, r = stage.eval, stage.rollout
    pick = lambda v, default: default if v is None else v  # noqa: E731
    return {"temperature": float(pick(ev.temperature, r.temperature)), "top_k": int(pick(ev.top_k, r.top_k)),
            "top_p": float(pick(ev.top_p, r.top_p)), "min_p": float(pick(ev.min_p, r.min_p))}


def _validate_rewards(cfg: Config) -> None:
    """Reward-model stages and rewards: what data a reward_model stage takes, what a reward_model reward
    points at, and that the helpfulness task's hidden judge never becomes a training reward."""
    need = _need
    kinds = {s.name: s.kind for s in cfg.stages}
    names = [s.name for s in cfg.stages]
    for i, st in enumerate(cfg.stages):
        p = f"stages[{i}]"
        rm = st.reward_model
        sources = [(f"{p}.task", st.task, f"{p}.rewards", st.rewards)] if not st.tasks else \
            [(f"{p}.tasks[{j}].task", s.task, f"{p}.tasks[{j}].rewards", s.rewards) for j, s in enumerate(st.tasks)]
        if st.kind == "reward_model":
            need(not st.tasks, f"{p}.tasks", "a reward_model stage trains on one preference source (task:)")
            t = st.task
            need(t.name == "helpfulness" or (t.name == "file" and t.preset == "preference"), f"{p}.task",
                 "a reward_model stage needs preference pairs: the built-in helpfulness task or a file task "
                 "with preset: preference")
            need(rm.margin >= 0, f"{p}.reward_model.margin", "must be >= 0")
            need(rm.center >= 0, f"{p}.reward_model.center", "must be >= 0")
            need(rm.held_out_pairs >= 1, f"{p}.reward_model.held_out_pairs", "must be positive")
            if st.init in kinds:
                need(kinds[st.init] != "distill", f"{p}.init",
                     f"stage {st.init!r} is a distill stage (a student model); start from a stage of this config's model")
            need(rm.model is None or st.init is None, f"{p}.reward_model.model",
                 "the backbone comes from init; reward_model.model builds a fresh one (set one of them)")
            if rm.model is not None:
                m = rm.model
                need(m.n_heads % m.n_kv_heads == 0, f"{p}.reward_model.model.n_kv_heads",
                     f"must divide reward_model.model.n_heads ({m.n_heads})")
        else:
            need(rm == RewardModelConfig(), f"{p}.reward_model", "only a reward_model stage has this section")
        for tkey, t, rkey, rewards in sources:
            if st.kind != "reward_model":
                need(not (t.name == "file" and t.preset == "preference"), f"{tkey}.preset",
                     "preference pairs train reward_model stages only")
            rm_rewards = 0
            rnames = [r.name for r in rewards]
            for j, r in enumerate(rewards):
                k = f"{rkey}[{j}]"
                need(r.name not in rnames[:j], f"{k}.name", f"duplicate reward name {r.name!r}")
                need(r.name != "helpfulness_judge", f"{k}.name",
                     "helpfulness_judge is the hidden judge: it measures policies and never feeds RL "
                     "(train a reward_model stage on helpfulness pairs and use kind: reward_model)")
                if r.kind == "function":
                    need(r.stage is None and r.path is None, f"{k}.kind",
                         "stage/path name a reward model: set kind: reward_model")
                    continue
                rm_rewards += 1
                need((r.stage is None) != (r.path is None), k, "a reward_model reward needs exactly one of "
                     "stage: (a reward_model stage of this config) or path: (a *ForSequenceClassification dir)")
                need(r.batch_size >= 1, f"{k}.batch_size", "must be positive")
                if r.stage is not None:
                    need(r.stage in names[:i] and kinds[r.stage] == "reward_model", f"{k}.stage",
                         f"{r.stage!r} is not a reward_model stage before {st.name!r}")
            if st.kind == "grpo" and t.name == "helpfulness":
                need(rm_rewards > 0, rkey, "the helpfulness task has no verifier: score it with a reward of "
                     "kind: reward_model")


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config) -> None:
    """Cross-field checks: impossible values that types alone cannot catch."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    m = cfg.model
    need(m.d_model > 0, "model.d_model", "must be positive")
    need(m.n_layers > 0, "model.n_layers", "must be positive")
    need(m.n_heads > 0 and m.n_kv_heads > 0, "model.n_heads", "head counts must be positive")
    need(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads", f"must divide model.n_heads ({m.n_heads})")
    need(m.logits_chunk is None or m.logits_chunk >= 0, "model.logits_chunk",
         "must be >= 0 (0: whole logits; leave unset to chunk when the logits are large)")
    if m.head_dim is None:
        need(m.d_model % m.n_heads == 0, "model.head_dim", "d_model is not divisible by n_heads; set head_dim")
    need(cfg.tokenizer.vocab_size >= 16, "tokenizer.vocab_size", "must be at least 16")
    for sec in ("data", "fsdp", "tensor", "expert"):
        v = getattr(cfg.mesh, sec)
        need(v == -1 or v >= 1, f"mesh.{sec}", "must be -1 (the rest) or a positive size")
    need(sum(getattr(cfg.mesh, s) == -1 for s in ("data", "fsdp", "tensor", "expert")) <= 1,
         "mesh", "at most one axis may be -1")
    need(cfg.mesh.cpu_devices >= 0, "mesh.cpu_devices", "must be 0 (JAX's default) or a device count")
    need(cfg.mesh.rollout_devices >= 0, "mesh.rollout_devices", "must be >= 0 (0: sampler and trainer share the mesh)")
    need(cfg.checkpoint.every >= 1, "checkpoint.every", "must be at least 1")
    need(cfg.checkpoint.keep >= 1, "checkpoint.keep", "must be at least 1")
    need(cfg.log.every_s >= 0, "log.every_s", "must be >= 0 (0: a progress line at every step)")
    need(cfg.log.rollouts_per_step >= 0, "log.rollouts_per_step", "must be >= 0 (0: none)")
    need(cfg.log.rollouts_max_mb > 0, "log.rollouts_max_mb", "must be positive")
    need(cfg.log.rollouts_keep >= 1, "log.rollouts_keep", "must be at least 1")
    names = [s.name for s in cfg.stages]
    for i, st in enumerate(cfg.stages):
        p = f"stages[{i}]"
        need(st.name not in names[:i], f"{p}.name", f"duplicate stage name {st.name!r}")
        need(st.steps >= 0, f"{p}.steps", "must be >= 0")
        need(st.steps > 0 or st.allow_empty, f"{p}.steps", "0 steps: the stage would do nothing (set steps, or "
             "allow_empty: true on the stage to skip it)")
        need(st.batch_size >= 1, f"{p}.batch_size", "must be positive")
        need(st.stop_window >= 1, f"{p}.stop_window", "must be positive")
        need(st.stop_at_loss is None or st.kind not in ("grpo", "ppo"), f"{p}.stop_at_loss", "applies to SFT stages only")
        r, a, o = st.rollout, st.algorithm, st.optimizer
        need(r.group_size >= 1, f"{p}.rollout.group_size", "must be positive")
        need(r.prompts_per_step >= 1, f"{p}.rollout.prompts_per_step", "must be positive")
        need(r.max_new_tokens >= 1, f"{p}.rollout.max_new_tokens", "must be positive")
        need(r.temperature > 0, f"{p}.rollout.temperature", "must be > 0 (use top_k=1 for greedy)")
        _validate_filters(r, f"{p}.rollout")
        _validate_filters(st.eval, f"{p}.eval")
        _validate_filters(st.rejection, f"{p}.rejection")
        _validate_filters(st.distill, f"{p}.distill")
        need(r.slots >= 0, f"{p}.rollout.slots", "must be >= 0 (0: one batch slot per row, no refill)")
        need(0 <= r.refill_min <= max(r.slots, 1), f"{p}.rollout.refill_min", "must be in [0, rollout.slots]")
        need(r.page_size >= 0, f"{p}.rollout.page_size", "must be >= 0 (0: contiguous cache)")
        need(all(isinstance(x, str) and x for x in r.stop), f"{p}.rollout.stop", "must be a list of non-empty strings")
        need(r.width_buckets >= 0, f"{p}.rollout.width_buckets", "must be >= 0 (0: the whole max_new_tokens)")
        need(o.lr > 0, f"{p}.optimizer.lr", "must be positive")
        need(a.epochs >= 1, f"{p}.algorithm.epochs", "must be >= 1")
        need(a.eps_low >= 0 and a.eps_high >= 0, f"{p}.algorithm.eps_low", "clip ranges must be >= 0")
        need(a.beta >= 0, f"{p}.algorithm.beta", "must be >= 0")
        need(a.ref_reset.every >= 0, f"{p}.algorithm.ref_reset.every", "must be >= 0 (0: no resets)")
        if a.ref_reset.every and st.kind in ("grpo", "ppo"):  # other kinds have no reference
            need(a.beta > 0, f"{p}.algorithm.ref_reset.every",
                 "resets the KL reference, and algorithm.beta is 0 (no reference)")
            need(cfg.model.lora is None, f"{p}.algorithm.ref_reset.every",
                 "is not supported with model.lora (the reference is the frozen base the adapters sit on)")
        need(0 <= a.max_reward_error_rate <= 1, f"{p}.algorithm.max_reward_error_rate", "must be in [0, 1]")
        need(a.tis_cap >= 1, f"{p}.algorithm.tis_cap", "must be >= 1")
        need(r.max_staleness >= 0, f"{p}.rollout.max_staleness", "must be >= 0")
        if r.mode == "async" and st.kind == "grpo":  # other stage kinds sample synchronously
            need(cfg.mesh.rollout_devices >= 1, "mesh.rollout_devices",
                 "rollout.mode async needs at least one device for the sampler (and one for the trainer)")
        _validate_data(st, p)
        _validate_kind(st, p)
        if st.kind in ("grpo", "ppo") or (st.kind == "distill" and st.distill.compare_grpo):
            batch = r.prompts_per_step * r.group_size
            need(r.group_size >= 2 or st.kind == "ppo", f"{p}.rollout.group_size",
                 "GRPO needs at least 2 samples per prompt")
            need(a.mini_batches >= 1 and batch % a.mini_batches == 0, f"{p}.algorithm.mini_batches",
                 f"rollout batch of {batch} (prompts_per_step x group_size) is not divisible by {a.mini_batches}")
            mb = batch // max(a.mini_batches, 1)
            need(mb % r.group_size == 0, f"{p}.algorithm.mini_batches",
                 f"mini-batch of {mb} sequences (rollout batch {batch} / {a.mini_batches}) is not divisible "
                 f"into whole groups of {r.group_size}")
            need(a.micro_batches >= 1 and mb % a.micro_batches == 0, f"{p}.algorithm.micro_batches",
                 f"mini-batch of {mb} sequences is not divisible by {a.micro_batches}")
            need(mb % a.micro_batches == 0 and (mb // a.micro_batches) % r.group_size == 0
                 or a.micro_batches == 1, f"{p}.algorithm.micro_batches",
                 "each micro-batch must hold whole groups")
        else:
            need(a.micro_batches >= 1 and st.batch_size % a.micro_batches == 0, f"{p}.algorithm.micro_batches",
                 f"batch_size {st.batch_size} is not divisible by {a.micro_batches}")
        ev = st.eval
        need(ev.samples >= 1, f"{p}.eval.samples", "must be >= 1")
        need(ev.every >= 0, f"{p}.eval.every", "must be >= 0 (0: evaluate at the stage's end only)")
        need(ev.every_problems >= 0, f"{p}.eval.every_problems", "must be >= 0 (0: eval.num_problems)")
        if st.kind != "reward_model":
            need(ev.every_problems <= ev.num_problems, f"{p}.eval.every_problems",
                 f"{ev.every_problems} is more than eval.num_problems ({ev.num_problems}): the periodic "
                 "evaluations take the first of the end-of-stage evaluation's problems")
        for k in ev.k:
            need(1 <= k <= ev.samples, f"{p}.eval.k", f"k={k} must be between 1 and eval.samples ({ev.samples})")
        for j, rw in enumerate(st.rewards):
            need(bool(rw.name), f"{p}.rewards[{j}].name", "must not be empty")
    _validate_rewards(cfg)
    _stage_refs(cfg)


# --------------------------------------------------------------------------- overrides and files


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place. ``stages.<name|index>.key`` addresses a stage."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: malformed key")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_stage_index(node, part, where)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{where}: is a value, cannot set {key}")
    last = parts[-1]
    if isinstance(node, list):
        node[_stage_index(node, last, key)] = value
    else:
        node[last] = value


def _stage_index(stages: list, part: str, where: str) -> int:
    if part.isdigit() and int(part) < len(stages):
        return int(part)
    for i, st in enumerate(stages):
        if isinstance(st, dict) and st.get("name") == part:
            return i
    raise ConfigError(f"{where}: no such stage (by index or name)")


def load_raw(path: str | Path, stored: bool = False) -> dict:
    """A config file as a dict. ``stored``: a run's own ``config.yaml`` (written by ``dump``), refused when cut
    short (``stored_whole``); a config a user wrote or copied is read as it is."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = p.read_bytes()
        raw = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if stored and not stored_whole(data):
        raise ConfigError(f"{path}: looks truncated (a stored run config without its end line: it was not "
                          "written whole)")
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (or only comments)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = load_raw(path)
    for o in overrides:
        apply_override(raw, o)
    return from_dict(raw)


STORED_HEAD = "# reasoning_rl config, every key written out; its last line is the end mark below\n"
STORED_END = "# end of config\n"


def dump(cfg: Config, path: str | Path) -> None:
    """Atomic: a crash never leaves a half-written config (a run's stored one decides whether it continues).
    Between a head and an end line, so a copy cut short (a full disk, a partial restore) is told from a
    whole one even when the cut falls between two lines and leaves valid YAML (``stored_whole``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(STORED_HEAD + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + STORED_END)
    os.replace(tmp, path)


def stored_whole(data: bytes) -> bool:
    """Whether a config ``dump`` wrote is all there (files written before the end mark: no head, so True)."""
    return not data.startswith(STORED_HEAD.encode()) or data.endswith(STORED_END.encode())


def stage(cfg: Config, name: str) -> StageConfig:
    for s in cfg.stages:
        if s.name == name:
            return s
    raise KeyError(name)
