"""Mesh construction and logical-axis sharding rules (installed as ``reasoning_rl.sharding``)."""

from .mesh import AXES, MeshError, batch_sharding, context, make_mesh, mesh_shape, param_shardings, replicated
from .rules import DEFAULT_RULES, ShardingContext, constrain, current, traced_under, use

__all__ = ["AXES", "DEFAULT_RULES", "MeshError", "ShardingContext", "batch_sharding", "constrain", "context",
           "current", "make_mesh", "mesh_shape", "param_shardings", "replicated", "traced_under", "use"]
