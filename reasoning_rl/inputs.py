"""What a run reads from outside its run dir: data files, model and tokenizer directories, other runs'
checkpoints. The config hash says which paths a run reads, not what is in them, so a data file regenerated
under the same name between a crash and the resume (or a model directory holding a newer checkpoint) would
go on training, silently, on other rows in another order or from other weights. A run fingerprints each
input when it starts (``RUN/inputs.json``) and checks them whenever it continues; a changed one is one
config error naming the key and the file, before any compute.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from reasoning_rl.checkpoint import newest_step
from reasoning_rl.config import Config, ConfigError

KEYS = ("path", "held_out_path", "init", "teacher", "sampler")  # config keys that may name a path
MODEL_FILES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken", ".jinja")
SAMPLED = 64 * 2**20  # weight files past this are fingerprinted from their size and four 1 MiB samples
CHUNK = 2**20


def referenced(cfg: Config) -> dict[str, str]:
    """``{absolute path: key}`` for every existing path the config names, keyed as ``--set`` writes it (the
    first key that names it); stage names in ``init``/``teacher``/``sampler`` are not paths."""
    stages = {st.name for st in cfg.stages}
    out: dict[str, str] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                sub = f"{key}.{k}" if key else k
                if k in KEYS and isinstance(v, str):
                    p = Path(v).absolute()
                    if v not in stages and p.exists():
                        out.setdefault(str(p), sub)
                else:
                    walk(v, sub)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                name = v.get("name") if key == "stages" and isinstance(v, dict) else None
                walk(v, f"{key}.{name if name is not None else i}")

    walk(cfg._identity(), "")
    return out


def fingerprint(path: Path) -> dict[str, Any]:
    """A file's size and SHA-256 (large weight files: of their size and four samples); a run's stage
    checkpoint dir: its newest step; a model or tokenizer dir: each of its model files' fingerprints."""
    if path.is_file():
        return _file(path)
    if (path / "manifest.json").is_file() or any(p.name.isdigit() for p in path.iterdir()):
        return {"checkpoint step": newest_step(path)}
    return {"files": {p.name: _file(p) for p in sorted(path.iterdir())
                      if p.is_file() and not p.name.startswith(".") and p.suffix in MODEL_FILES}}


def _file(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SAMPLED or path.suffix not in (".safetensors", ".bin"):
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
            return {"size": size, "sha256": h.hexdigest()}
        for at in (0, size // 3, 2 * size // 3, size - CHUNK):  # the header, the middle, the end
            f.seek(at)
            h.update(f.read(CHUNK))
    return {"size": size, "sampled sha256": h.hexdigest()}


def check_inputs(cfg: Config, run_dir: Path) -> None:
    """Compare every input with the fingerprint the run took when it first read it (ConfigError naming the
    key and what changed); fingerprint inputs it has not read before (a new run, an appended stage)."""
    store = run_dir / "inputs.json"
    try:
        known = json.loads(store.read_text()) if store.is_file() else {}
    except (OSError, ValueError):
        known = {}  # damaged: taken again (the other checks name a damaged run dir's own files)
    changed, own = False, run_dir.absolute()
    for path, key in referenced(cfg).items():
        if Path(path).is_relative_to(own):  # the run's own outputs (a stage's init by its path) change by design
            continue
        now = fingerprint(Path(path))
        was = known.get(path, {}).get("fingerprint")
        if was is None:
            known[path], changed = {"key": key, "fingerprint": now}, True
        elif now != was:
            raise ConfigError(f"{key}: {path} changed since this run first read it ({_what(was, now)}); restore "
                              f"it, or use a new --run-dir (a stage with init: {run_dir}/checkpoints/<stage> "
                              "starts from this run's checkpoint)")
    if changed:
        tmp = store.with_name(store.name + ".tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, store)


def _what(was: dict, now: dict) -> str:
    if "files" in was and "files" in now:
        a, b = was["files"], now["files"]
        parts = [f"{n} {'is gone' if n not in b else 'was added' if n not in a else 'differs'}"
                 for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]
        return ", ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
    if "checkpoint step" in was or "checkpoint step" in now:
        return f"its newest checkpoint was step {was.get('checkpoint step')}, now {now.get('checkpoint step')}"
    if was.get("size") != now.get("size"):
        return f"{was.get('size')} bytes then, {now.get('size')} now"
    return "same size, other content"
