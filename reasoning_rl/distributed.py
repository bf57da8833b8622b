"""Several JAX processes (hosts) in one run.

Every host runs the same program over one global mesh (JAX's multi-controller model). What differs per host
is kept small and explicit here:

* ``initialize`` starts ``jax.distributed`` from the config's ``distributed`` section or the environment
  (``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``; on TPU pods and SLURM JAX finds
  them itself), before anything touches a device.
* Each host loads only its rows of every global batch (``host_rows``): the rows its own devices hold, so
  ``local_to_global`` builds the global array without moving data between hosts.
* Host-side work that needs the whole batch (advantages over groups, dynamic sampling, metrics) runs on every
  host over the same gathered values (``gather``, ``allgather_objects``), so all hosts take the same
  decisions and call the same collectives in the same order.
* Only the primary host (process 0) writes run files (config, metrics, summary, manifests); Orbax writes
  checkpoints collectively.

With one process every function here is the identity or a plain ``device_get``/``device_put``.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import jax
import numpy as np

log = logging.getLogger("reasoning_rl")

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


class DistributedError(RuntimeError):
    pass


def split_cpu(n: int) -> None:
    """Expose the CPU host as ``n`` XLA devices (``mesh.cpu_devices``; 0: leave JAX's default). Must run
    before JAX starts its backends; a later call asking for the count already in place is a no-op."""
    if n <= 0:
        return
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:  # backends already started: fine only if they have what is asked for
        have = len(jax.devices("cpu"))
        if have != n:
            raise DistributedError(f"mesh.cpu_devices: {n} asked for, but JAX already started with {have} CPU "
                                   "device(s); set it before any JAX computation (the CLI does)") from None


def initialize(dc: Any) -> bool:
    """Start ``jax.distributed`` if the config or the environment asks for it; True if it is running.

    ``dc.initialize``: ``auto`` (when a coordinator address is given in the config or the environment),
    ``true`` (always: JAX detects TPU pods, SLURM, Open MPI and Kubernetes itself), ``false`` (never)."""
    mode = str(dc.initialize).lower()
    vals = {k: getattr(dc, k) if getattr(dc, k) is not None else os.environ.get(env) for k, env in _ENV.items()}
    if mode == "false" or (mode == "auto" and not vals["coordinator_address"]):
        return False
    if _already_initialized():
        return True
    kw = {"coordinator_address": vals["coordinator_address"] or None}
    for k in ("num_processes", "process_id"):
        if vals[k] is not None and vals[k] != "":
            try:
                kw[k] = int(vals[k])
            except ValueError:
                raise DistributedError(f"distributed.{k}: {vals[k]!r} is not an integer") from None
    try:
        jax.distributed.initialize(**kw, initialization_timeout=int(dc.timeout_s))
    except Exception as e:
        raise DistributedError(f"distributed: jax.distributed.initialize({kw}) failed: {e}") from e
    log.info("process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def _already_initialized() -> bool:
    try:
        from jax._src import distributed as _d

        return _d.global_state.client is not None
    except Exception:  # private API moved: assume not
        return False


def multi() -> bool:
    return jax.process_count() > 1


def is_primary() -> bool:
    """The host that writes run files (config, metrics, summary, manifests)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every host waits here until all have arrived (e.g. until the primary has written a file)."""
    if multi():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host_rows(sharding: jax.sharding.Sharding, n: int) -> slice:
    """The contiguous rows ``[start, stop)`` of an ``n``-row batch that this host's devices hold.

    Hosts hold equal blocks in process order for the batch layouts the rules produce (rows over
    data/fsdp/expert, hosts owning consecutive devices); anything else is refused with the reason."""
    if not multi():
        return slice(0, n)
    idx = sharding.addressable_devices_indices_map((n,)).values()
    rows = set()
    for (sl, *_) in idx:
        rows.update(range(*sl.indices(n)))
    per, p = n // jax.process_count(), jax.process_index()
    if n % jax.process_count() or rows != set(range(p * per, (p + 1) * per)):
        raise DistributedError(
            f"a batch of {n} rows is not split into equal consecutive blocks per host (host {p} holds "
            f"{len(rows)} rows); make the batch a multiple of the hosts' device count along data/fsdp/expert")
    return slice(p * per, (p + 1) * per)


def local_to_global(local: np.ndarray, sharding: jax.sharding.Sharding, global_rows: int) -> jax.Array:
    """A global array from this host's rows (``host_rows``); no data crosses hosts."""
    if not multi():
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


def replicated_to_global(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from a value every host holds in full (each host places its own shards)."""
    if not multi():
        return jax.device_put(value, sharding)
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def gather(tree: Any) -> Any:
    """Host (numpy) copies of the full values of a tree of global arrays, on every host."""
    if not multi():
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def allgather_rows(local: np.ndarray) -> np.ndarray:
    """Hosts' row blocks concatenated in process order (each host passes its own rows)."""
    if not multi():
        return np.asarray(local)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def agree_max(value: int) -> int:
    """The largest of one integer over all hosts (e.g. a padded width every host must use)."""
    if not multi():
        return int(value)
    return int(allgather_rows(np.asarray([value], np.int32)).max())


def from_primary(obj: Any) -> Any:
    """The primary host's ``obj`` on every host (e.g. its view of a file the others may not see yet)."""
    return allgather_objects(obj)[0]


def allgather_objects(obj: Any) -> list[Any]:
    """Every host's ``obj`` (any picklable value), in process order, on every host."""
    if not multi():
        return [obj]
    blob = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = allgather_rows(np.asarray([blob.size], np.int32))
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: blob.size] = blob
    from jax.experimental import multihost_utils

    allb = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return [pickle.loads(allb[i, : int(sizes[i])].tobytes()) for i in range(len(sizes))]
