"""Asynchronous rollouts: the sampler decodes the next batches on its own devices while the trainer updates.

Why a fixed schedule rather than "whatever batch is ready": step ``s`` always trains on the batch sampled
with the policy after step ``s - 1 - k`` (``k = rollout.max_staleness``; the initial policy for the first
steps). The sampler may run up to ``k + 1`` batches ahead; ``k = 0`` is exactly the synchronous run, and a
run is a deterministic function of its config whatever the two sides' timing: a killed and resumed run
equals the uninterrupted one. The batches in flight at a checkpoint (sampled, not yet trained on) are saved
with it, together with the data iterator's position after the last of them.

The policy's weights move from the trainer's mesh to the sampler's after every update (``device_put`` onto
the sampler's shardings: device to device, resharded). The sampler runs in a thread: the two meshes' XLA
computations run concurrently, and the host work (decoding text, rewards) overlaps the trainer's.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


class AsyncFeed:
    """Batches for steps ``start+1 .. steps``, each sampled from the policy version its schedule names.

    ``collect(params, rng) -> (batch, metrics)`` runs on the sampler's mesh; ``to_sampler(params)`` copies
    the trainer's params there; ``key(step)`` is the step's sampling key on the sampler's mesh;
    ``stream_state()`` is the data iterator's position (read right after each batch)."""

    def __init__(self, collect: Callable, to_sampler: Callable, key: Callable[[int], Any],
                 stream_state: Callable[[], Any], staleness: int, start: int, steps: int, params: Any,
                 pending: list[dict] | None = None):
        self.collect, self.to_sampler, self.key, self.stream_state = collect, to_sampler, key, stream_state
        self.k, self.start, self.steps = staleness, start, steps
        self.cond = threading.Condition()
        self.versions: dict[int, Any] = {start: to_sampler(params)}  # policy after step v, on the sampler
        self.done: dict[int, dict] = {}  # step -> {"batch", "metrics", "version", "state"}
        for item in pending or []:
            self.done[item["step"]] = item
        self.next = max([start, *self.done]) + 1  # the next step the sampler samples for
        self.error: BaseException | None = None
        self.last_state = stream_state()  # the position after the last batch handed out
        self.stopping = False
        self.busy = 0.0  # seconds the sampler spent sampling and scoring
        self.thread = threading.Thread(target=self._loop, name="async-rollout", daemon=True)
        self.thread.start()

    def version_for(self, step: int) -> int:
        """The policy version (steps trained) that samples ``step``'s batch."""
        return max(self.start, step - 1 - self.k)

    def _loop(self) -> None:
        try:
            while self.next <= self.steps:
                t = self.next
                v = self.version_for(t)
                with self.cond:
                    while v not in self.versions and not self.stopping:
                        self.cond.wait()
                    if self.stopping:
                        return
                    params = self.versions[v]
                t0 = time.perf_counter()
                batch, metrics = self.collect(params, self.key(t))
                self.busy += time.perf_counter() - t0
                item = {"step": t, "batch": batch, "metrics": metrics, "version": v, "state": self.stream_state()}
                with self.cond:
                    self.done[t] = item
                    self.next = t + 1
                    for old in [u for u in self.versions if u < self.version_for(t + 1)]:
                        del self.versions[old]  # no later batch samples with it
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - re-raised in the trainer's thread
            with self.cond:
                self.error = e
                self.cond.notify_all()

    def _wait_for(self, step: int) -> dict:
        with self.cond:
            while step not in self.done and self.error is None:
                self.cond.wait()
            if step not in self.done:
                raise self.error
            return self.done[step]

    def get(self, step: int) -> tuple[dict, dict, int]:
        """Step ``step``'s batch, its rollout metrics and the version that sampled it (blocks until ready)."""
        item = self._wait_for(step)
        with self.cond:
            del self.done[step]
            self.last_state = item["state"]
        return item["batch"], item["metrics"], item["version"]

    def publish(self, step: int, params: Any) -> None:
        """The policy after ``step`` updates, for the batches that sample with it."""
        if all(self.version_for(t) != step for t in range(step + 1, self.steps + 1)):
            return  # no batch samples with it (the last k steps)
        copy = self.to_sampler(params)
        jax.block_until_ready(copy)  # the trainer's next step donates these buffers
        with self.cond:
            self.versions[step] = copy
            self.cond.notify_all()

    def host_state(self, step: int) -> dict:
        """What a checkpoint after ``step`` keeps: the batches sampled for the next ``k`` steps (waited for)
        and the data iterator's position after the last of them."""
        ahead = list(range(step + 1, min(step + self.k, self.steps) + 1))
        items = [self._wait_for(t) for t in ahead]
        state = items[-1]["state"] if items else self.last_state  # else: after this step's own batch
        return {"data": state, "pending": [encode_item(it) for it in items]}

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=60)


def encode_item(item: dict) -> dict:
    """A pending batch as JSON-safe data (arrays as one base64 .npz)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in item["batch"].items()})
    return {"step": item["step"], "version": item["version"], "metrics": item["metrics"],
            "state": item["state"], "arrays": base64.b64encode(buf.getvalue()).decode("ascii")}


def decode_item(d: dict) -> dict:
    with np.load(io.BytesIO(base64.b64decode(d["arrays"]))) as z:
        batch = {k: z[k] for k in z.files}
    return {"step": int(d["step"]), "version": int(d["version"]), "metrics": dict(d["metrics"]),
            "state": d["state"], "batch": batch}
