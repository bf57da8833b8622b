"""Orbax checkpoints for one stage: train state + host-side state (data iterator, counters) + manifest.

Saves are asynchronous (training continues while the write completes) and are always awaited before the
stage ends or the process exits, so no step is left as a half-written ``*.orbax-checkpoint-tmp`` directory.
On restore, a damaged latest step (truncated or corrupted files) is reported and skipped in favour of the
previous complete one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from reasoning_rl.algorithms.steps import TrainState
from reasoning_rl.models.lora import trainable

log = logging.getLogger("reasoning_rl.checkpoint")


class CheckpointError(RuntimeError):
    pass


def _to_saveable(state: TrainState) -> dict:
    """What a step saves: a LoRA state's adapters (its frozen base is referenced from the host metadata
    ``lora_base``, never written), or every parameter."""
    return {"params": trainable(state.params), "opt_state": state.opt_state, "step": state.step,
            "rng": jax.random.key_data(state.rng), "skipped": state.skipped}


def _from_saveable(tree: dict) -> TrainState:
    return TrainState(tree["params"], tree["opt_state"], tree["step"], jax.random.wrap_key_data(tree["rng"]),
                      tree["skipped"])


def abstract_like(state: TrainState) -> dict:
    """ShapeDtypeStructs (with shardings) of the saveable tree: restore places arrays directly there.

    ``state`` may hold concrete arrays or ShapeDtypeStructs (restoring without allocating a template)."""
    def spec(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    rng = jax.eval_shape(jax.random.key_data, state.rng)
    tree = {"params": trainable(state.params), "opt_state": state.opt_state, "step": state.step, "skipped": state.skipped}
    out = jax.tree.map(spec, tree)
    # the key's data lands where the step counter lives (replicated on this run's mesh), never on the
    # sharding it was written with: that may name another host count
    out["rng"] = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=out["step"].sharding)
    return out


def _all_finite(params: Any) -> bool:
    """On device (parameters may be sharded over hosts): only the one boolean comes back."""
    leaves = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(leaves)) \
        if leaves else True


class StageCheckpointer:
    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self.mgr = ocp.CheckpointManager(self.directory, options=opts, item_names=("state", "host"))

    def save(self, step: int, state: TrainState, host: dict[str, Any], *, force: bool = False) -> None:
        try:
            self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state)),
                                                         host=ocp.args.JsonSave(host)), force=force)
        except Exception as e:  # disk full, permissions...: stop with the cause, earlier steps stay intact
            raise CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: {e}") from e

    def wait(self) -> None:
        try:
            self.mgr.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"finishing checkpoint write in {self.directory} failed: {e}") from e

    def steps(self) -> list[int]:
        self.mgr.reload()
        return sorted(self.mgr.all_steps())

    def restore(self, like: TrainState, step: int | None = None) -> tuple[int, TrainState, dict] | None:
        """Restore ``step`` (default: the newest complete one, skipping damaged ones). None if none exist.
        A LoRA state comes back with its adapters as ``params`` (join them onto the base)."""
        candidates = [step] if step is not None else list(reversed(self.steps()))
        abstract = abstract_like(like)
        for s in candidates:
            try:
                out = self.mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                   host=ocp.args.JsonRestore()))
                tree = out["state"]
                if not _all_finite(tree["params"]):
                    raise CheckpointError("non-finite parameters")
                return s, _from_saveable(tree), dict(out["host"])
            except Exception as e:
                log.warning("checkpoint step %s in %s is damaged and was skipped: %s", s, self.directory,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                if step is not None:
                    raise CheckpointError(f"checkpoint step {s} in {self.directory} cannot be restored: {e}") from e
        return None

    def close(self) -> None:
        self.wait()
        self.mgr.close()


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Atomic JSON write (a crash never leaves a half manifest)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def now() -> float:
    return time.time()
