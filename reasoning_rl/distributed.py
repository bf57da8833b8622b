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
* A split RL stage (``mesh.rollout_devices``) runs two meshes at once, the sampler's in a thread: every
  host-side collective then runs on the calling thread's own devices (``collectives_on``), never on all
  devices, because two threads' collectives sharing a device could be ordered differently on two hosts and
  wait for each other forever. Barriers go through the coordination service, which involves no device.

With one process every function here is the identity or a plain ``device_get``/``device_put``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

log = logging.getLogger("reasoning_rl")

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


class DistributedError(RuntimeError):
    pass


_local = threading.local()


@contextlib.contextmanager
def collectives_on(devices: list | None) -> Iterator[None]:
    """Host-side collectives of the calling thread (``allgather_rows``, ``agree_max``, ...) run on ``devices``
    (every host's share of one mesh) instead of all devices, for the duration of the block."""
    old = getattr(_local, "devices", None)
    _local.devices = None if devices is None else sorted(devices, key=lambda d: (d.process_index, d.id))
    try:
        yield
    finally:
        _local.devices = old


def _collective_devices() -> list:
    devs = getattr(_local, "devices", None)
    return devs if devs is not None else sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


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


_barrier_counts: dict[str, int] = {}


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Every host waits here until all have arrived (e.g. until the primary has written a file).

    Through the coordination service (no device takes part, so a sampler thread's collectives cannot be
    interleaved with it); each use of a name gets its own barrier id, the same on every host."""
    if not multi():
        return
    n = _barrier_counts[name] = _barrier_counts.get(name, 0) + 1
    client = _client()
    if client is None:  # no coordination client to reach: a collective over all devices
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(f"reasoning_rl/{name}/{n}", timeout_s * 1000)


def _client():
    try:
        from jax._src import distributed as _d

        return _d.global_state.client
    except Exception:  # private API moved
        return None


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
    return _allgather(np.asarray(local), tiled=True)


def _allgather(x: np.ndarray, tiled: bool) -> np.ndarray:
    """Every host's ``x`` (same shape everywhere), concatenated (``tiled``) or stacked in process order: one
    all-gather over the calling thread's devices (``collectives_on``)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devs = _collective_devices()
    per = len(devs) // jax.process_count()
    if per == 0 or len(devs) % jax.process_count():
        raise DistributedError(f"collectives over {len(devs)} devices need the same number on each of the "
                               f"{jax.process_count()} hosts")
    mesh = Mesh(np.asarray(devs).reshape(jax.process_count(), per), ("processes", "local"))
    if x.ndim == 0 or not tiled:
        x = x[None]
    mine = [d for d in devs if d.process_index == jax.process_index()]
    glob = jax.make_array_from_single_device_arrays(
        (x.shape[0] * jax.process_count(), *x.shape[1:]), NamedSharding(mesh, P("processes")),
        [jax.device_put(x, d) for d in mine])
    out = _replicate(glob, NamedSharding(mesh, P()))
    return np.asarray(out.addressable_data(0))


@functools.lru_cache(maxsize=None)
def _identity_to(sharding):
    return jax.jit(lambda a: a, out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _copy_to(sharding):
    import jax.numpy as jnp

    return jax.jit(jnp.copy, out_shardings=sharding)


def _replicate(x, sharding):
    return _identity_to(sharding)(x)


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

    allb = _allgather(buf, tiled=False).reshape(len(sizes), -1)
    return [pickle.loads(allb[i, : int(sizes[i])].tobytes()) for i in range(len(sizes))]


def move(tree: Any, shardings: Any, may_alias: bool | None = None) -> Any:
    """``jax.device_put(tree, shardings)``, also between meshes over different devices on several hosts.

    JAX reshards across hosts only within one device set (or on runtimes with cross-host transfers); a split
    stage's trainer and sampler meshes are disjoint. There every leaf is first all-gathered over its own
    mesh (a device collective on the source devices, the same on every host), then each host copies the
    slices its target devices hold from its local replica, device to device."""
    leaves, treedef = jax.tree.flatten(tree)
    shs = treedef.flatten_up_to(shardings) if not isinstance(shardings, jax.sharding.Sharding) else \
        [shardings] * len(leaves)
    other = [isinstance(x, jax.Array) and x.sharding.device_set != s.device_set for x, s in zip(leaves, shs)]
    cross = [o and multi() for o in other]
    if not any(cross):
        out = jax.device_put(tree, shardings, may_alias=may_alias)
        if may_alias is False and any(other):
            # device_put onto another device set reuses the source's buffers on the devices both share (a
            # replicated leaf on the whole mesh moved to the trainer's half), may_alias=False or not: copy, or
            # donating one placement deletes the other
            outs = treedef.flatten_up_to(out)
            outs = [_copy_to(s)(y) if o else y for y, s, o in zip(outs, shs, other)]
            out = jax.tree.unflatten(treedef, outs)
        return out
    from jax.sharding import NamedSharding, PartitionSpec as P

    def replicated_on_source(x):
        if isinstance(x.sharding, NamedSharding):
            return NamedSharding(x.sharding.mesh, P())
        devs = np.asarray(sorted(x.sharding.device_set, key=lambda d: d.id))
        return NamedSharding(jax.sharding.Mesh(devs, ("d",)), P())

    idx = [i for i, c in enumerate(cross) if c]
    # one all-gather program for every leaf that changes device set (not one dispatch per leaf)
    gathered = _replicate(tuple(leaves[i] for i in idx), tuple(replicated_on_source(leaves[i]) for i in idx))
    out = list(leaves)
    for i, (x, s) in enumerate(zip(leaves, shs)):
        if not cross[i]:
            out[i] = jax.device_put(x, s, may_alias=may_alias)
            continue
        local = gathered[idx.index(i)].addressable_data(0)
        bufs = [jax.device_put(local[idx], d) for d, idx in s.addressable_devices_indices_map(x.shape).items()]
        out[i] = jax.make_array_from_single_device_arrays(x.shape, s, bufs)
    return jax.tree.unflatten(treedef, out)
