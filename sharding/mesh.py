"""Device mesh from the ``mesh:`` config section, and shardings for parameters, state and batches."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .rules import DEFAULT_RULES, ShardingContext

AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")


class MeshError(ValueError):
    pass


def mesh_shape(sizes: dict[str, int], n_devices: int) -> tuple[int, ...]:
    """Resolve -1 ("the rest") and check the sizes multiply to the device count (keys other than the mesh
    axes, such as ``cpu_devices``, are not axes and are ignored)."""
    sizes = {a: sizes.get(a, 1) for a in AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    shape = []
    for a in AXES:
        v = sizes.get(a, 1)
        if v == -1:
            if n_devices % fixed:
                raise MeshError(f"mesh: {n_devices} devices cannot be split with the fixed axes {sizes} "
                                f"(product {fixed} does not divide {n_devices})")
            v = n_devices // fixed
        shape.append(v)
    if math.prod(shape) != n_devices:
        raise MeshError(f"mesh: data*fsdp*tensor*expert = {math.prod(shape)} but there are {n_devices} devices "
                        f"(sizes {dict(zip(AXES, shape))}); use -1 for one axis to take the rest")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: list | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(sizes, len(devices))
    dev = np.asarray(devices).reshape(shape) if len(devices) > 1 else np.asarray(devices).reshape(shape)
    if len(devices) > 1:
        try:
            from jax.experimental import mesh_utils

            dev = mesh_utils.create_device_mesh(shape, devices=devices)
        except Exception:
            pass
    return Mesh(dev, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def context(mesh: Mesh, rules: dict | None = None) -> ShardingContext:
    return ShardingContext(mesh, dict(DEFAULT_RULES if rules is None else rules))


def param_shardings(ctx: ShardingContext, axes: Any, shapes: Any) -> Any:
    """Tree of NamedShardings for params, from their logical axes (same tree structure as params)."""
    return jax.tree.map(lambda ax, s: ctx.sharding(ax, s.shape), axes, shapes,
                        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x))


def batch_sharding(ctx: ShardingContext, shape: tuple[int, ...]) -> NamedSharding:
    """Leading (batch) dim over data/fsdp/expert where it divides; contiguous rows keep groups together."""
    return ctx.sharding(("batch",) + (None,) * (len(shape) - 1), shape)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
