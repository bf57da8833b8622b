"""Orbax checkpoints for one stage: train state + host-side state (data iterator, counters) + manifest.

Saves are asynchronous (training continues while the write completes) and are always awaited before the
stage ends or the process exits, so no step is left as a half-written ``*.orbax-checkpoint-tmp`` directory.
On restore, a damaged latest step (truncated or corrupted files) is reported in one warning line and skipped in
favour of the previous complete one; the caller moves the skipped steps aside (``set_aside``) before training
continues, so a damaged step is never mistaken for the newer one written in its place.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from reasoning_rl.algorithms.steps import TrainState
from reasoning_rl.config import ConfigError
from reasoning_rl.models.lora import trainable
from reasoning_rl.paths import out_of_space

log = logging.getLogger("reasoning_rl.checkpoint")

TMP_MARK = ".orbax-checkpoint-tmp"  # an unfinished write (the process ended before it completed)


class CheckpointError(RuntimeError):
    pass


class CheckpointUnusable(ConfigError):
    """A checkpoint that is needed cannot be used (damaged, unfinished, of another model shape): bad input,
    exit status 2, one line naming the directory and why."""


def _late_loop_callback(exc_type, exc, tb) -> bool:
    """A tensorstore read (or write) completing after orbax gave up on a damaged step (or a failed save) and
    closed its event loop: the callback finds the loop closed. Harmless (the step was already reported as
    skipped, the save as failed)."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py"))


_filter_installed = False
# step directories whose restore failed and was reported: late errors of their reads are not news
_given_up: set[str] = set()
# every stage's checkpoint directory: a write into one that found the disk full is reported by its save
_ours: set[str] = set()


def _quiet_late_loop_callbacks() -> None:
    """Drop the "Event loop is closed" tracebacks of reads still in flight when a damaged step's restore failed
    (~35 per damaged step, printed from tensorstore's threads, possibly after ``restore`` returned): installed
    once, it lets every other error through unchanged."""
    global _filter_installed
    if _filter_installed:
        return
    _filter_installed = True
    prev_hook, prev_unraisable = sys.excepthook, sys.unraisablehook

    prev_thread = threading.excepthook
    late = lambda t, e, tb: _late_loop_callback(t, e, tb) or _orphaned(e, tb)  # noqa: E731

    def excepthook(exc_type, exc, tb):
        if not late(exc_type, exc, tb):
            prev_hook(exc_type, exc, tb)

    def unraisablehook(u):
        if not late(u.exc_type, u.exc_value, u.exc_traceback):
            prev_unraisable(u)

    def thread_hook(a):
        if not late(a.exc_type, a.exc_value, a.exc_traceback):
            prev_thread(a)

    sys.excepthook, sys.unraisablehook, threading.excepthook = excepthook, unraisablehook, thread_hook
    logging.getLogger("asyncio").addFilter(_drop_orphaned_errors)


def _quiet_reported_logs() -> None:
    """Drop Orbax's log records of what the run reports itself, and only those: a write that found the disk
    full, logged from each of its save threads (four or five ERROR records with the tensorstore spec and a
    traceback each) before ``save``/``wait`` raise it (``CheckpointError``, one line); and, when a step is
    saved again after an unfinished write of it (which the resume already named, ``an unfinished write``),
    its warning that it removes that write's directory."""
    absl = logging.getLogger("absl")
    if _drop_reported_records not in absl.filters:
        absl.addFilter(_drop_reported_records)


def _drop_reported_records(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    text = record.getMessage()
    if TMP_MARK in text and "already exists. Removing existing directory since it is not finalized" in text:
        return False
    return not (out_of_space(exc) if exc is not None else out_of_space(Exception(text)))


def _drop_orphaned_errors(record: logging.LogRecord) -> bool:
    """asyncio logs "Task/Future exception was never retrieved" (with the traceback) when a failed read of a
    damaged step is garbage-collected after orbax gave up on that step, or a failed write of a save that
    found the disk full after the save failed, both already reported in one line: drop those records, and
    only those (see ``_orphaned``)."""
    if "exception was never retrieved" not in str(record.msg) or not record.exc_info:
        return True
    return not _orphaned(record.exc_info[1], record.exc_info[2])


def _orphaned(exc: BaseException | None, tb) -> bool:
    """An error of a read or write that orbax gave up on: raised inside orbax's code, naming a step directory
    already reported as unusable, or a write into a stage's checkpoint directory that found the disk full
    (which that save reports in one line). An error tensorstore sets on a future is never raised, so it has
    no traceback to look into: seen as a bare ``ValueError: DATA_LOSS: ...`` line (a read) and a bare
    ``ValueError: RESOURCE_EXHAUSTED: Error writing ... No space left on device`` line (one of a failed
    save's writes) after the run's final error line."""
    text = str(exc)
    return _in_orbax(tb) or any(d in text for d in _given_up) or \
        (out_of_space(exc) is not None and any(d in text for d in _ours))


def _in_orbax(tb) -> bool:
    """The traceback passes through orbax's own code (a read of a step that orbax has given up on)."""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.replace(os.sep, "/").split("/site-packages/")[-1].startswith("orbax/"):
            return True
        tb = tb.tb_next
    return False


def _reason(e: BaseException) -> str:
    """One short line of an exception (orbax and tensorstore errors run to pages)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _to_saveable(state: TrainState) -> dict:
    """What a step saves: a LoRA state's adapters (its frozen base is referenced from the host metadata
    ``lora_base``, never written), or every parameter."""
    return {"params": trainable(state.params), "opt_state": state.opt_state, "step": state.step,
            "rng": jax.random.key_data(state.rng), "skipped": state.skipped}


def _from_saveable(tree: dict, critic: Any = None) -> TrainState:
    return TrainState(tree["params"], tree["opt_state"], tree["step"], jax.random.wrap_key_data(tree["rng"]),
                      tree["skipped"], critic)


def _spec(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def abstract_like(state: TrainState) -> dict:
    """ShapeDtypeStructs (with shardings) of the saveable tree: restore places arrays directly there.

    ``state`` may hold concrete arrays or ShapeDtypeStructs (restoring without allocating a template)."""
    rng = jax.eval_shape(jax.random.key_data, state.rng)
    tree = {"params": trainable(state.params), "opt_state": state.opt_state, "step": state.step,
            "skipped": state.skipped}
    out = jax.tree.map(_spec, tree)
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
        _ours.update(os.path.join(f(self.directory), "") for f in (os.path.abspath, os.path.realpath))
        _quiet_reported_logs()
        _quiet_late_loop_callbacks()  # a failed write's late callbacks too
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        if jax.process_count() > 1:
            # every host takes part (as without the option), but Orbax's barriers then go through the
            # coordination service rather than a collective over all devices, which could interleave with a
            # split stage's sampler thread (or the trainer) on two hosts in different orders
            opts = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=False, enable_async_checkpointing=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    active_processes=set(range(jax.process_count()))))
        # "critic": a PPO stage's critic (params and optimizer state), an item of its own so that whatever
        # reads only the policy (a next stage's init, eval, export) restores "state" alone; "reference": the
        # KL reference once ``algorithm.ref_reset`` has made it a copy of the policy
        self.mgr = ocp.CheckpointManager(self.directory, options=opts,
                                         item_names=("state", "host", "critic", "reference"))
        self.reference: Any = None  # the reference the last restore read (None where it was not asked for)
        _OPEN.add(self)

    def save(self, step: int, state: TrainState, host: dict[str, Any], *, force: bool = False,
             reference: Any = None) -> None:
        items = {"state": ocp.args.StandardSave(_to_saveable(state)), "host": ocp.args.JsonSave(host)}
        if state.critic is not None:
            items["critic"] = ocp.args.StandardSave(state.critic)
        if reference is not None:
            items["reference"] = ocp.args.StandardSave(reference)
        try:
            self.mgr.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # disk full, permissions...: stop with the cause, earlier steps stay intact
            raise CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: "
                                  f"{out_of_space(e) or e}") from e

    def wait(self) -> None:
        try:
            with ctrl_c_after_write():
                self.mgr.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"finishing checkpoint write in {self.directory} failed: "
                                  f"{out_of_space(e) or e}") from e

    def steps(self) -> list[int]:
        self.mgr.reload()
        return sorted(self.mgr.all_steps())

    def unfinished(self) -> list[str]:
        """Step directories whose write never completed (invisible to restore)."""
        return sorted(p.name for p in self.directory.iterdir() if TMP_MARK in p.name) \
            if self.directory.is_dir() else []

    def restore(self, like: TrainState, step: int | None = None, report: bool = True, *,
                reference_like: Any = None, reference_from: int = 0) -> tuple[int, TrainState, dict] | None:
        """Restore ``step`` (default: the newest complete one, skipping damaged ones). None if none exist.
        A LoRA state comes back with its adapters as ``params`` (join them onto the base). With
        ``reference_like``, a step from ``reference_from`` on also restores its KL reference (``self.reference``).

        Every step found and not restored is listed in ``self.unusable`` as ``(name, why)``, and each skipped
        one is reported in one warning line (never a traceback) unless ``report`` is False (the caller reports)."""
        candidates = [step] if step is not None else list(reversed(self.steps()))
        abstract = abstract_like(like)
        self.unusable: list[tuple[str, str]] = [(n, "an unfinished write") for n in self.unfinished()]
        items = {"state": ocp.args.StandardRestore(abstract), "host": ocp.args.JsonRestore()}
        if like.critic is not None:
            items["critic"] = ocp.args.StandardRestore(jax.tree.map(_spec, like.critic))
        self.reference = None
        for s in candidates:
            t0 = time.perf_counter()
            log.info("restoring checkpoint step %s from %s", s, self.directory)
            wanted = dict(items)
            if reference_like is not None and s >= reference_from:
                wanted["reference"] = ocp.args.StandardRestore(jax.tree.map(_spec, reference_like))
            try:
                _quiet_late_loop_callbacks()
                out = self.mgr.restore(s, args=ocp.args.Composite(**wanted))
                tree = out["state"]
                if not _all_finite(tree["params"]):
                    raise CheckpointError("non-finite parameters")
                critic = out["critic"] if like.critic is not None else None
                if critic is not None and not _all_finite(critic["params"]):
                    raise CheckpointError("non-finite critic parameters")
                if "reference" in wanted:
                    if not _all_finite(out["reference"]):
                        raise CheckpointError("non-finite reference parameters")
                    self.reference = out["reference"]
                log.info("restored checkpoint step %s in %.1f s", s, time.perf_counter() - t0)
                return s, _from_saveable(tree, critic), dict(out["host"])
            except Exception as e:
                why = _reason(e)
                self.unusable.append((str(s), why))
                step_dir = self.directory / str(s)
                _given_up.update(os.path.join(f(step_dir), "") for f in (os.path.abspath, os.path.realpath))
                # the step's failed reads: their "never retrieved" reports come (filtered) now, not later, and the
                # reads orbax abandoned before starting them ("coroutine ... was never awaited") say nothing more
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
                    gc.collect()
                if step is not None:
                    raise CheckpointUnusable(f"{self.directory / str(s)}: checkpoint step {s} cannot be restored "
                                             f"({why})") from None
                if report:
                    log.warning("checkpoint step %s in %s is damaged and was skipped: %s", s, self.directory, why)
        return None

    def set_aside(self, steps: list[int]) -> None:
        """Rename damaged steps to ``<step>.damaged`` (kept for inspection, no longer a step): the step numbers
        are written again as training passes them."""
        for s in steps:
            src = self.directory / str(s)
            if not src.is_dir():
                continue
            dst, n = self.directory / f"{s}.damaged", 1
            while dst.exists():
                n += 1
                dst = self.directory / f"{s}.damaged{n}"
            os.replace(src, dst)
        self.mgr.reload()

    def close(self) -> None:
        self.wait()
        with ctrl_c_after_write():
            self.mgr.close()
        _OPEN.discard(self)


_OPEN: weakref.WeakSet[StageCheckpointer] = weakref.WeakSet()  # created and not closed yet


def close_abandoned() -> None:
    """Close the checkpointers a failed stage left open (one process only): their writes in flight finish and
    Orbax's threads end, so a caller that goes on in this process (a notebook, the tests) is not left with them.
    The stage's own error is what is reported: a failure here (the same full disk, say) is logged at debug
    level, not raised over it. On several hosts a close takes part in barriers that another host may never
    reach, so there they are left to the process's exit, as before."""
    if jax.process_count() > 1:
        return
    for ck in list(_OPEN):
        try:
            ck.close()
        except Exception as e:  # noqa: BLE001 - secondary to the stage's error
            log.debug("closing the checkpointer of %s after a failed stage: %s", ck.directory, e)


@contextlib.contextmanager
def ctrl_c_after_write():
    """A Ctrl-C (or a SIGTERM outside a stage's step loop) while a checkpoint write finishes takes effect once
    it is complete (KeyboardInterrupt, or the SIGTERM handler's Terminated, then); a second Ctrl-C exits at
    once (status 130).

    Why: Orbax waits for its write thread inside a join that an exception breaks; it then logs the interrupt
    as a failed save, with a traceback, and the step being written is lost although it was about to be
    complete. Only where Python's own Ctrl-C handler (or a SIGTERM handler marked ``after_writes``) is in
    place: the main thread, outside a stage's step loop, whose own handler already stops between steps."""
    held: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            held[signal.SIGINT] = signal.default_int_handler
        if getattr(signal.getsignal(signal.SIGTERM), "after_writes", False):
            held[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
    if not held:
        yield
        return
    got: list[int] = []

    def handler(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in got:
            os.write(2, b"\ninterrupted again: exiting now; --resume continues from the last complete checkpoint\n")
            os._exit(130)
        if signum not in got:
            got.append(signum)
            log.warning("%s: finishing the checkpoint write first%s", "interrupted (Ctrl-C)" if signum ==
                        signal.SIGINT else "SIGTERM received", " (Ctrl-C again to exit at once)" if signum ==
                        signal.SIGINT else "")

    for sig in held:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in held.items():
            signal.signal(sig, old)
    if got:
        held[got[0]](got[0], None)  # KeyboardInterrupt, or the SIGTERM handler's exception


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Atomic JSON write (a crash never leaves a half manifest)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> dict | None:
    """A stage's manifest, None if there is none; a damaged one (truncated, not JSON, not an object) is bad
    input: CheckpointUnusable naming the file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        man = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointUnusable(f"{path}: damaged stage manifest (not UTF-8 text: byte {e.start}); restore it, "
                                 "or delete it to resume the stage from its latest checkpoint") from None
    except json.JSONDecodeError as e:
        raise CheckpointUnusable(f"{path}: damaged stage manifest (not valid JSON: {e.msg} at line {e.lineno} "
                                 f"column {e.colno}); restore it, or delete it to resume the stage from its "
                                 "latest checkpoint") from None
    except OSError as e:
        raise CheckpointUnusable(f"{path}: cannot read the stage manifest ({e.strerror})") from None
    if not isinstance(man, dict):
        raise CheckpointUnusable(f"{path}: damaged stage manifest (a JSON {type(man).__name__}, not an object); "
                                 "restore it, or delete it to resume the stage from its latest checkpoint")
    return man


def newest_step(sdir: Path) -> int:
    """The newest step a stage dir holds: its newest checkpoint step, or the final step its complete manifest
    names (0: none). A damaged manifest is bad input (``read_manifest``)."""
    man = read_manifest(sdir / "manifest.json")
    steps = [int(p.name) for p in sdir.iterdir() if p.name.isdigit()] if sdir.is_dir() else []
    return max(steps + [int(man.get("final_step", 0)) if man and man.get("complete") else 0])


def stage_complete(man: dict | None, cfg: Any, name: str) -> bool:
    """Whether a stage's manifest says it finished what ``cfg`` asks of it: the same config, or the same
    config up to and including this stage, checkpoint settings aside (``Config.stage_hash``: a run continued
    with stages appended, a later stage's steps or the checkpoint settings changed keeps the stages before the
    change)."""
    return bool(man and man.get("complete")
                and (man.get("config_hash") == cfg.hash() or man.get("stage_hash") == cfg.stage_hash(name)))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def now() -> float:
    return time.time()
