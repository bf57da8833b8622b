"""``reasoning-rl plan``: per-device memory of a config on its mesh, computed from abstract shapes only.

Nothing is allocated and no device is needed: the model is built abstractly (``nnx.eval_shape``), the mesh is
an ``AbstractMesh`` of the configured sizes, and every parameter's per-device shard follows from the same
logical-axis rules the trainer uses. So a DeepSeek-V3 GRPO step on 256 chips can be sized on a laptop.

Exact (they are what the trainer allocates): parameters, optimizer moments (sharded like their parameter),
the frozen reference model (GRPO with ``beta > 0``) and the sampler's KV cache (an RL step's rollouts, or a
held-out curve's evaluation inside a training stage, ``eval.every``, whichever is larger). Estimated: the
activations of one training micro-batch (saved layer inputs or intermediates, depending on ``model.remat``)
and its float32 logits with their gradient (whole, or one log-prob chunk: the chunk the trainer will use), since XLA's
scheduling decides the real peak. The logits' share of the total is reported: with a real vocabulary it is
what ``model.logits_chunk`` decides.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from reasoning_rl import sharding as shd
from reasoning_rl.algorithms.logprobs import logits_bytes, resolve_chunk
from reasoning_rl.config import Config, ConfigError, StageConfig
from reasoning_rl.models import TransformerConfig, create
from reasoning_rl.models.transformer import nested_group
from reasoning_rl.sharding.mesh import AXES, MeshError, mesh_shape

GB = 1024**3


def model_config(cfg: Config) -> TransformerConfig:
    """The model a config trains, without loading weights or training a tokenizer."""
    m = cfg.model
    if m.path:
        from reasoning_rl.model_dirs import check_path

        # config.json always; the safetensors headers too when there are weights (a config-only directory
        # is enough to size a model)
        mc = check_path(m.path, "model.path", weights=None, tokenizer=False)
        from reasoning_rl.stages.common import check_model_options, run_options

        return check_model_options(dataclasses.replace(mc, **run_options(m)))
    from reasoning_rl.stages.common import check_model_options, model_config_from

    return check_model_options(model_config_from(m, m.vocab_size or cfg.tokenizer.vocab_size))


def devices_named(cfg: Config) -> int | None:
    """The device count a config's mesh fixes (every axis a number, no sampler split), else None: what
    ``plan`` sizes without ``--devices`` (a config written for 8 devices, planned on a one-device laptop)."""
    m = cfg.mesh
    sizes = (m.data, m.fsdp, m.tensor, m.expert)
    return math.prod(sizes) if all(x > 0 for x in sizes) and not m.rollout_devices else None


def abstract_mesh(cfg: Config, n_devices: int):
    try:
        shape = mesh_shape(dataclasses.asdict(cfg.mesh), n_devices)
    except MeshError as e:
        raise ConfigError(str(e)) from None
    return jax.sharding.AbstractMesh(shape, AXES)


def _shard_bytes(shape: tuple[int, ...], spec, sizes: dict[str, int], itemsize: int) -> int:
    n = itemsize
    for i, dim in enumerate(shape):
        ax = spec[i] if i < len(spec) else None
        axes = () if ax is None else (ax,) if isinstance(ax, str) else tuple(ax)
        n *= math.ceil(dim / math.prod(sizes[a] for a in axes))
    return n


def _tree_bytes(ctx, axes: Any, shapes: Any, itemsize: int | None = None) -> tuple[int, int]:
    """(per-device bytes, global bytes) of a params-shaped tree under the rules."""
    sizes = dict(ctx.mesh.shape)
    per, total = 0, 0
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
    for ax, s in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(shapes)):
        size = itemsize or np.dtype(s.dtype).itemsize
        per += _shard_bytes(tuple(s.shape), ctx.spec(ax, s.shape), sizes, size)
        total += math.prod(s.shape) * size
    return per, total


def _batch_div(ctx, rows: int) -> int:
    """How many ways the rollout rows are split (the batch axes that divide them)."""
    spec = ctx.spec(("batch",), (rows,))
    ax = spec[0]
    axes = () if ax is None else (ax,) if isinstance(ax, str) else tuple(ax)
    return math.prod(dict(ctx.mesh.shape)[a] for a in axes)


def _tensor(ctx, logical: str, dim: int) -> int:
    """Per-device size of one dim sharded by a logical axis."""
    spec = ctx.spec((logical,), (dim,))
    ax = spec[0]
    axes = () if ax is None else (ax,) if isinstance(ax, str) else tuple(ax)
    return math.ceil(dim / math.prod(dict(ctx.mesh.shape)[a] for a in axes))


def _activations(mc: TransformerConfig, ctx, rows: int, seq: int, targets: int,
                 logits_chunk: int | None) -> tuple[int, int, int]:
    """Estimated per-device bytes of one training micro-batch: (activations other than the logits (forward
    saved + backward peak), the logits, the log-prob chunk the trainer uses (0: whole logits))."""
    b = math.ceil(rows / _batch_div(ctx, rows))
    it = np.dtype(mc.jnp_dtype).itemsize
    d = mc.d_model
    heads = _tensor(ctx, "act_heads", mc.n_heads)
    kv = _tensor(ctx, "act_kv_heads", mc.n_kv_heads)
    ffn = (mc.moe.ffn_dim * mc.moe.top_k + (mc.moe.shared_ffn or mc.moe.ffn_dim * mc.moe.n_shared) if mc.moe
           else mc.ffn_dim)
    ffn = _tensor(ctx, "act_mlp", ffn)
    hd = mc.head_dim
    # one layer's intermediates: norms/residuals (~4 d), q/k/v/out, attention probabilities, gated MLP (3 ffn)
    scores = b * heads * seq * seq * 4
    lin = mc.linear
    if lin is not None and lin.kind == "kda":  # the chunked form's pairwise decays, [C, C, dk] per chunk and head
        from reasoning_rl.models.layers.gated_deltanet import KDA_CHUNK

        lh = _tensor(ctx, "act_heads", lin.k_heads)
        scores = max(scores, 2 * b * lh * seq * min(KDA_CHUNK, seq) * lin.k_dim * 4)  # (and the product)
    layer = b * seq * (4 * d + (2 * heads + 2 * kv) * hd + 3 * ffn) * it + scores
    if mc.remat == "full":
        saved = mc.n_layers * b * seq * d * it + layer  # layer inputs, plus one layer recomputed at a time
    elif mc.remat == "nested":
        g = nested_group(mc.n_layers)  # group inputs, one group's layer inputs, one layer recomputed at a time
        saved = (math.ceil(mc.n_layers / g) + g) * b * seq * d * it + layer
    elif mc.remat == "dots":
        saved = mc.n_layers * b * seq * (2 * d + (2 * heads + 2 * kv) * hd + 2 * ffn) * it + layer
    else:
        saved = mc.n_layers * layer
    chunk = resolve_chunk(logits_chunk, rows, targets, mc.vocab_size, ctx)
    # float32 logits, their log-softmax and their gradient, of the whole targets or of one chunk (XLA's
    # accounting of a GRPO step with whole logits at the SmolLM-135M shape: 3.6x the logits; tools/bench_memory)
    logits = logits_bytes(rows, min(chunk, targets) if chunk else targets, mc.vocab_size, ctx) * 3
    return saved, logits, chunk


def _critic_bytes(ctx, st: StageConfig, policy_dev: int, vocab: int) -> int:
    """A ppo stage's critic: params, gradients and Adam moments of its backbone (the policy's, or its
    ``critic_model`` section's; the value head is negligible)."""
    m = st.critic_model
    if m is None:
        dev = policy_dev
    elif m.path:
        from reasoning_rl.models.hf import config_from_hf

        cdef, _ = create(config_from_hf(m.path), abstract=True)
        dev = _tree_bytes(ctx, cdef.param_axes(), cdef.abstract_params())[0]
    else:
        from reasoning_rl.stages.common import model_config_from

        cdef, _ = create(model_config_from(m, m.vocab_size or vocab), abstract=True)
        dev = _tree_bytes(ctx, cdef.param_axes(), cdef.abstract_params())[0]
    moments = 0 if st.critic.optimizer.name == "sgd" else 2
    return (2 + moments) * dev


def _eval_rows(ev) -> int:
    """Rows of one held-out sampling call (``evaluation.evaluate``): prompts of ``samples`` completions each,
    ``batch_size // samples`` prompts at a time, then the greedy pass's ``batch_size`` prompts."""
    n = ev.every_problems or ev.num_problems
    return max(min(n, max(1, ev.batch_size // ev.samples)) * ev.samples, min(n, ev.batch_size) if ev.greedy else 0)


def plan(cfg: Config, n_devices: int | None = None, prompt_len: int = 256,
         memory_gb: float | None = None) -> dict[str, Any]:
    """Per-device bytes of each part for the config's heaviest stage of each kind. With ``model.lora`` the
    same plan for full fine-tuning comes alongside (``full_finetuning``)."""
    mc = model_config(cfg)
    out = _plan(cfg, mc, n_devices, prompt_len, memory_gb)
    if mc.lora is not None:
        full = _plan(cfg, dataclasses.replace(mc, lora=None), n_devices, prompt_len, memory_gb)
        out["full_finetuning"] = {k: full[k] for k in ("per_device_bytes", "per_device_total_bytes", "fits")
                                  if k in full}
        out["lora_fraction_of_full"] = out["per_device_total_bytes"] / full["per_device_total_bytes"]
    return out


def _plan(cfg: Config, mc: TransformerConfig, n_devices: int | None, prompt_len: int,
          memory_gb: float | None) -> dict[str, Any]:
    from reasoning_rl.models import lora

    n = n_devices or devices_named(cfg) or jax.device_count()
    mesh = abstract_mesh(cfg, n)
    ctx = shd.context(mesh)
    mdef, _ = create(mc, abstract=True)
    axes, shapes = mdef.param_axes(), mdef.abstract_params()
    p_dev, p_all = _tree_bytes(ctx, axes, shapes)
    # LoRA: gradients and Adam moments cover the adapters (kept in the params' dtype); the KL reference is
    # the frozen base with adapters disabled, so it costs nothing
    t_dev = _tree_bytes(ctx, lora.split(axes)[1], lora.split(shapes)[1])[0] if mc.lora else p_dev
    grpo = [s for s in cfg.stages if s.kind in ("grpo", "ppo")]
    sft = [s for s in cfg.stages if s.kind in ("sft", "rejection_sft")]

    def opt_bytes(st: StageConfig) -> int:
        return 0 if st.optimizer.name == "sgd" else 2 * t_dev  # Adam moments, in the params' dtype

    parts: dict[str, int] = {"params": p_dev, "optimizer": max([opt_bytes(s) for s in cfg.stages] or [0])}
    parts["gradients"] = t_dev
    if any(s.algorithm.beta > 0 for s in grpo) and not mc.lora:
        parts["reference"] = p_dev
    critics = [_critic_bytes(ctx, s, p_dev, mc.vocab_size) for s in grpo if s.kind == "ppo"]
    if critics:
        parts["critic"] = max(critics)
    act = (0, 0, 0)
    it = np.dtype(mc.jnp_dtype).itemsize

    def cache_bytes(rows: int, slots: int) -> int:
        """Keys/values of the attention layers (each kind's buffer of its own shape, ``cache_kinds``; none for
        layers sharing another's, ``cached_layers``); a linear-attention layer's row keeps its convolution
        inputs and its float32 recurrent state instead, the same at any length (``KVCache``)."""
        sizes = dict(mesh.shape)
        total = 0
        for kind in mc.cache_kinds or (None,):
            kk, kd, vk, vd = mc.kv_shape_of(kind)
            n_att = sum(mc.cache_kind(i) == kind for i in mc.cached_layers)
            for shape in ((n_att, rows, kk, slots, kd), (n_att, rows, vk, slots, vd)):
                spec = ctx.spec(("layers", "cache_batch", "act_kv_heads", "cache_seq", None), shape)
                total += _shard_bytes(shape, spec, sizes, it)
        if mc.linear is not None:
            from reasoning_rl.rollout.sampler import CONV_AXES, STATE_AXES

            lin = mc.linear
            conv = (len(lin.layers), rows, lin.conv - 1, lin.channels)
            state = (len(lin.layers), rows, lin.v_heads, lin.k_dim, lin.v_dim)
            total += _shard_bytes(conv, ctx.spec(CONV_AXES, conv), sizes, it)
            total += _shard_bytes(state, ctx.spec(STATE_AXES, state), sizes, 4)
        return total

    # the sampler's cache in a training loop: each RL step's rollouts, and a held-out curve's evaluations
    # (eval.every: sampled beside the optimizer state, in any stage kind that samples)
    caches = [cache_bytes(_eval_rows(s.eval), prompt_len + (s.eval.max_new_tokens or s.rollout.max_new_tokens))
              for s in cfg.stages if s.eval.every > 0 and s.kind != "reward_model"]
    for s in grpo:
        r = s.rollout
        slots = prompt_len + r.max_new_tokens
        rows = r.prompts_per_step * r.group_size
        caches.append(cache_bytes(rows, slots))
        a = s.algorithm
        micro = rows // (a.mini_batches * a.micro_batches)
        act = max(act, _activations(mc, ctx, micro, slots, r.max_new_tokens, cfg.model.logits_chunk),
                  key=lambda x: x[0] + x[1])
    for s in sft:
        seq = min(mc.max_seq_len, prompt_len + max(r.max_new_tokens for r in [s.rollout]))
        act = max(act, _activations(mc, ctx, s.batch_size // s.algorithm.micro_batches, seq, seq - 1,
                                    cfg.model.logits_chunk), key=lambda x: x[0] + x[1])
    kv = max(caches, default=0)
    if kv:
        parts["kv_cache"] = kv
        from reasoning_rl.models.transformer import segments
        from reasoning_rl.rollout.sampler import split_decode

        if split_decode(mc):  # decode reads each layer's weights sliced once per sampling call: a second copy,
            # its projections in the compute dtype (Transformer.layer_states; norm scales counted so too: tiny)
            names = [name for name, *_ in segments(mc)]
            narrow = min(np.dtype(mc.jnp_dtype).itemsize, np.dtype(mc.jnp_param_dtype).itemsize)
            parts["decode_layer_weights"] = _tree_bytes(ctx, {k: axes[k] for k in names},
                                                        {k: shapes[k] for k in names}, narrow)[0]
    parts["activations_estimate"] = act[0]
    parts["logits_estimate"] = act[1]
    total = sum(parts.values())
    out = {"devices": n, "mesh": dict(mesh.shape), "model": {"family": mc.family, "layers": mc.n_layers,
           "d_model": mc.d_model, "params": sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)),
           "param_dtype": mc.param_dtype, "dtype": mc.dtype, "remat": mc.remat,
           "experts": mc.moe.n_experts if mc.moe else 0,
           **({"lora": {"rank": mc.lora.rank, "targets": list(mc.lora.targets), "experts": mc.lora.experts,
                        "adapter_params": sum(math.prod(s.shape) for s in jax.tree.leaves(lora.split(shapes)[1]))}}
              if mc.lora else {})},
           "params_global_bytes": p_all, "per_device_bytes": parts, "per_device_total_bytes": total,
           "prompt_len": prompt_len,
           "logits": {"chunk": act[2], "auto": cfg.model.logits_chunk is None, "bytes": act[1],
                      "share_of_total": act[1] / total if total else 0.0}}
    if memory_gb is not None:
        out["memory_gb"] = memory_gb
        out["fits"] = total <= memory_gb * GB
    from reasoning_rl.models.layers import kernels

    # attention path per kind on this backend and on a GPU (models/layers/kernels.py)
    out["attention"] = {"impl": mc.attention_impl, "here": kernels.plan(mc), "gpu": kernels.plan(mc, platform="gpu")}
    return out


def format_plan(p: dict[str, Any]) -> str:
    m = p["model"]
    head = (f"mesh {p['mesh']} on {p['devices']} devices; model {m['family']} {m['params'] / 1e9:.3g}B params "
            f"({m['param_dtype']} params, {m['dtype']} compute, remat {m['remat']})")
    lines = [head, "per device:"]
    for k, v in p["per_device_bytes"].items():
        lines.append(f"  {k:22s} {v / GB:10.3f} GiB")
    lines.append(f"  {'total':22s} {p['per_device_total_bytes'] / GB:10.3f} GiB")
    lg = p["logits"]
    how = f"in chunks of {lg['chunk']} positions" if lg["chunk"] else "whole"
    lines.append(f"logits: {lg['share_of_total']:.0%} of the total ({how}, model.logits_chunk "
                 f"{'unset: chosen by size' if lg['auto'] else lg['chunk']})")
    if "attention" in p:
        at = p["attention"]
        for where in ("here", "gpu"):
            paths = ", ".join(f"{k} {v['path']}" + (f" ({v['reason']})" if v["reason"] else "")
                              for k, v in at[where].items())
            lines.append(f"attention {at['impl']} ({'this backend' if where == 'here' else 'on a GPU'}): {paths}")
    if "fits" in p:
        lines.append(f"fits {p['memory_gb']:g} GB per device: {'yes' if p['fits'] else 'no'}")
    if "full_finetuning" in p:
        lo = m["lora"]
        full = p["full_finetuning"]
        lines.append(f"LoRA rank {lo['rank']} on {', '.join(lo['targets'])}{' + experts' if lo['experts'] else ''}: "
                     f"{lo['adapter_params'] / 1e6:.3g}M adapter params; full fine-tuning per device:")
        for k, v in full["per_device_bytes"].items():
            lines.append(f"  {k:22s} {v / GB:10.3f} GiB")
        lines.append(f"  {'total':22s} {full['per_device_total_bytes'] / GB:10.3f} GiB")
        lines.append(f"LoRA / full: {p['lora_fraction_of_full']:.1%}"
                     + (f"; full fits: {'yes' if full['fits'] else 'no'}" if "fits" in full else ""))
    return "\n".join(lines)
