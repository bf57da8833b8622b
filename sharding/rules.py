"""Logical axis names → mesh axes: one rule table shared by every model family.

Layers never name mesh axes. Each parameter carries logical axes (``axes=("embed", "mlp")`` metadata on
its ``nnx.Param``) and activations are constrained with logical names through :func:`constrain`. The
active :class:`ShardingContext` (a mesh plus a rule table) turns those names into ``PartitionSpec``s, so
changing the ``mesh:`` section of a config re-shards everything without touching model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None

# Default rules. A logical axis maps to one mesh axis, a tuple of mesh axes, or None (replicated).
DEFAULT_RULES: dict[str, MeshAxes] = {
    # activations
    "batch": ("data", "fsdp", "expert"),
    "seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "cache_batch": ("data", "fsdp", "expert"),
    "cache_seq": None,
    # parameters
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "experts": "expert",
    "expert_mlp": "tensor",
    "q_lora": None,
    "kv_lora": None,
    "norm": None,
}


@dataclass(frozen=True)
class ShardingContext:
    mesh: Mesh
    rules: Mapping[str, MeshAxes]

    def __hash__(self) -> int:  # hashable (rules are a dict), so compiled programs can be cached per context
        return hash((self.mesh, tuple(sorted(self.rules.items()))))

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
        """PartitionSpec for logical axes; a mesh axis is used at most once and only if it divides the dim."""
        used: set[str] = set()
        out = []
        for i, name in enumerate(logical):
            axes = self.rules.get(name) if name is not None else None
            if axes is None:
                out.append(None)
                continue
            axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
            keep = []
            size = 1
            for a in axes_t:
                n = self.mesh.shape.get(a, 1)
                if a in used or n == 1:
                    continue
                if shape is not None and shape[i] % (size * n) != 0:
                    continue
                keep.append(a)
                size *= n
            used.update(keep)
            out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
        return P(*out)

    def sharding(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical, shape))


_CTX: contextvars.ContextVar[ShardingContext | None] = contextvars.ContextVar("reasoning_rl_sharding", default=None)


@contextlib.contextmanager
def use(ctx: ShardingContext | None) -> Iterator[ShardingContext | None]:
    """Make ``ctx`` the active sharding context while tracing model code."""
    token = _CTX.set(ctx)
    try:
        yield ctx
    finally:
        _CTX.reset(token)


def current() -> ShardingContext | None:
    return _CTX.get()


def traced_under(ctx: ShardingContext | None, fn: Callable) -> Callable:
    """``fn`` with ``ctx`` active while it runs: what to hand ``jax.jit`` so model code traced inside it
    lays itself out on ``ctx``'s mesh (the context is a trace-time setting, not an argument)."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with use(ctx):
            return fn(*args, **kwargs)

    return traced


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op without an active multi-device context."""
    ctx = _CTX.get()
    if ctx is None or ctx.mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, ctx.sharding(logical, x.shape))
