"""Per-token log-probs of a sequence's targets, optionally in sequence chunks.

The trainer scores ``[prompt | completion]`` rows laid out exactly as the sampler produced them
(left-padded prompt, completion after it), so positions and masks match the sampler's and the log-probs
agree by construction. With ``chunk > 0`` the unembedding and log-softmax run chunk by chunk under
``jax.checkpoint``, so ``[B, T, V]`` logits are never materialised whole, forward or backward.

``chunk=None`` (the default, ``model.logits_chunk`` unset) chooses: whole logits while one device's float32
logits of the micro-batch fit ``LOGITS_BUDGET``, else the fewest chunks that do. Real vocabularies (49k, 152k
entries) make the logits the largest tensor of a training step by far, and chunking gives the same values
(the chunked path only regroups the same per-token computation, and the softmax sums run in an order fixed by
``fixed_order_sum``, so the numbers are identical, not just close) for one extra unembedding in the backward.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reasoning_rl import sharding as shd
from reasoning_rl.models import ModelDef, Transformer, positions_from_valid
from reasoning_rl.models.layers.invariant import STANDARD, Elementary, elementary, fixed_order_sum
from reasoning_rl.models.transformer import prompt_pass
from reasoning_rl.models.value import apply_value_head
from reasoning_rl.rollout.sampling import log_normaliser, shifted_logits

LOGITS_BUDGET = 64 * 2**20  # bytes of one device's float32 logits before log-probs go in chunks
MIN_CHUNK = 16  # positions per chunk at the least (fewer makes a long sequential loop of small products)


def logits_bytes(rows: int, n: int, vocab: int, ctx: shd.ShardingContext | None = None) -> int:
    """Bytes of one device's float32 logits for ``rows`` x ``n`` positions (rows split over the batch axes and
    the vocabulary over the tensor axes as the trainer lays them out under ``ctx``)."""
    if ctx is not None:
        rows = math.ceil(rows / _split(ctx, "batch", rows))
        vocab = math.ceil(vocab / _split(ctx, "act_vocab", vocab))
    return rows * n * vocab * 4


def _split(ctx: shd.ShardingContext, logical: str, dim: int) -> int:
    ax = ctx.spec((logical,), (dim,))[0]
    axes = () if ax is None else (ax,) if isinstance(ax, str) else tuple(ax)
    return math.prod(dict(ctx.mesh.shape)[a] for a in axes)


def auto_chunk(rows: int, n: int, vocab: int, ctx: shd.ShardingContext | None = None,
               budget: int = LOGITS_BUDGET) -> int:
    """The chunk ``chunk=None`` uses: 0 (whole logits) when they fit ``budget``, else the positions per chunk
    (a multiple of 8, at least MIN_CHUNK) of the fewest near-equal chunks that fit it."""
    full = logits_bytes(rows, n, vocab, ctx)
    if full <= budget:
        return 0
    per_pos = max(full // n, 1)
    c = max(MIN_CHUNK, 8 * (budget // per_pos // 8))  # the most positions that fit, a multiple of 8
    c = 8 * math.ceil(math.ceil(n / math.ceil(n / c)) / 8)  # as many chunks, evened out (no larger)
    return c if c < n else 0


def resolve_chunk(chunk: int | None, rows: int, n: int, vocab: int, ctx: shd.ShardingContext | None = None) -> int:
    """``chunk`` itself when set (0: whole logits), else ``auto_chunk``."""
    return auto_chunk(rows, n, vocab, ctx) if chunk is None else int(chunk)


def target_logprobs(model: Transformer, tokens: jax.Array, valid: jax.Array, n_targets: int,
                    temperature: float = 1.0, chunk: int | None = None, with_entropy: bool = False,
                    routes: jax.Array | None = None, with_aux: bool = False, group: int = 1,
                    positions: jax.Array | None = None, segments: jax.Array | None = None,
                    entropy_grad: bool = False):
    """Log-probs [B, n_targets] of the last ``n_targets`` tokens of each row (and their entropies, and the
    model's MoE ``aux`` dict with ``with_aux``). ``routes``: MoE experts to replay (see ``Transformer.hidden``).
    ``chunk``: positions per log-prob chunk; 0 whole logits; None chosen from the logits' size (module doc).

    ``group`` > 1: rows ``[i * group, (i + 1) * group)`` share their prompt (everything before the targets),
    as GRPO rollouts do. The prompt is then run once per group and the completions attend over its
    keys/values as a shared prefix (``Transformer.hidden_with_prompt``); gradients through the prompt are
    summed over the group, so this is the same function with ``(group - 1) / group`` of the prompt work
    removed. (Dense attention models, layers sharing another's keys/values and per-layer inputs included; MoE
    models run whole rows, so their routing statistics stay per token, and so do models with linear-attention
    layers, whose prompt leaves a state rather than keys/values.)

    ``positions``/``segments`` [B, T]: packed rows (SFT), several sequences each with its own positions;
    tokens attend within their segment only (``Transformer.hidden``). ``entropy_grad``: the entropies carry
    their gradient (an entropy bonus in the loss); else they are reported values only and cost no backward."""
    t = tokens.shape[1]
    targets = tokens[:, t - n_targets :]
    h, aux = target_hidden(model, tokens, valid, n_targets, routes, group, positions, segments)

    def score(h_c, y_c):
        lp, ent = logprobs_entropy(model.logits(h_c), y_c, temperature, with_entropy,
                                   elementary(model.cfg.batch_invariant))
        return lp, ent if entropy_grad else jax.lax.stop_gradient(ent)

    chunk = resolve_chunk(chunk, tokens.shape[0], n_targets, model.cfg.vocab_size, shd.current())
    if chunk and n_targets > chunk:
        b, n, d = h.shape
        pad = -n % chunk  # pad to whole chunks; the padded tail is sliced off
        hp = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        yp = jnp.pad(targets, ((0, 0), (0, pad)))
        nc = (n + pad) // chunk
        hc = hp.reshape(b, nc, chunk, d).swapaxes(0, 1)
        yc = yp.reshape(b, nc, chunk).swapaxes(0, 1)
        lp, ent = jax.lax.map(lambda a: jax.checkpoint(score)(*a), (hc, yc))
        lp = lp.swapaxes(0, 1).reshape(b, n + pad)[:, :n]
        ent = ent.swapaxes(0, 1).reshape(b, n + pad)[:, :n]
    else:
        lp, ent = score(h, targets)
    out = (lp, ent) if with_entropy else (lp,)
    if with_aux:
        out = out + (aux,)
    return out if len(out) > 1 else out[0]


def logprobs_entropy(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0,
                     with_entropy: bool = False, ops: Elementary = STANDARD) -> tuple[jax.Array, jax.Array]:
    """log softmax(logits / temperature) at ``tokens`` (and the entropy, else zeros), with the softmax's sums
    in ``fixed_order_sum``'s order, so a token's log-prob is the same number whatever the shape of the logits
    it is computed in (whole or chunked; ``jax.nn.log_softmax`` over the same logits can differ). ``ops``:
    the model's exp and log (``invariant.elementary``), as the sampler takes them."""
    s = shifted_logits(logits, temperature)  # the sampler's definition (rollout/sampling.py), op for op
    log_z = log_normaliser(s, ops=ops)[..., None]
    lp = jnp.take_along_axis(s, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0] - log_z[..., 0]
    if not with_entropy:
        return lp, jnp.zeros_like(lp)
    return lp, -fixed_order_sum(s - log_z, lambda a: ops.exp(a) * a)


def target_hidden(model: Transformer, tokens: jax.Array, valid: jax.Array, n_targets: int,
                  routes: jax.Array | None = None, group: int = 1, positions: jax.Array | None = None,
                  segments: jax.Array | None = None):
    """Final-norm hidden states [B, n_targets, D] at the positions that predict the last ``n_targets``
    tokens (the state before each completion token), and the MoE aux dict; ``group``, ``positions`` and
    ``segments`` as in ``target_logprobs``."""
    t = tokens.shape[1]
    shared = group > 1 and tokens.shape[0] % group == 0 and n_targets < t and segments is None
    if shared and prompt_pass(model.cfg):
        return _shared_prompt_hidden(model, tokens, valid, n_targets, group)
    pos = positions_from_valid(valid) if positions is None else positions
    h, _, aux = model.hidden(tokens, pos, valid, return_aux=True, routes=routes, segments=segments)
    return h[:, t - n_targets - 1 : t - 1], aux


def target_values(cdef: ModelDef, critic: dict, tokens: jax.Array, valid: jax.Array, n_targets: int,
                  group: int = 1) -> jax.Array:
    """The critic's values [B, n_targets] of the states before each of the last ``n_targets`` tokens: its
    value head (``models.value``) on its backbone's hidden states at the positions the policy's log-probs
    are read from, so V_t and log pi(y_t) describe the same state."""
    h, _ = target_hidden(cdef.bind(critic["backbone"]), tokens, valid, n_targets, group=group)
    return apply_value_head(critic["head"], h)


def _shared_prompt_hidden(model: Transformer, tokens, valid, n: int, group: int):
    """Hidden states predicting the last ``n`` tokens, the prompt computed once per group (see above)."""
    tp = tokens.shape[1] - n
    pt, pv = tokens[::group, :tp], valid[::group, :tp]
    positions = positions_from_valid(valid)
    hp, hc = model.hidden_with_prompt(pt, positions[::group, :tp], pv, tokens[:, tp:], positions[:, tp:],
                                      valid[:, tp:])
    return jnp.concatenate([jnp.repeat(hp[:, -1:], group, axis=0), hc[:, : n - 1]], axis=1), {}

