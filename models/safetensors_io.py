"""Memory-mapped safetensors reading and streaming writing, in numpy.

``safetensors.safe_open(framework="numpy")`` cannot return bfloat16 (numpy has no such dtype), and the
torch/flax frameworks would copy whole tensors into torch or onto an accelerator. The format is simple (an
8-byte header length, a JSON header, raw little-endian bytes), so tensors here are zero-copy views of an
``np.memmap`` typed with ``ml_dtypes``: reading one layer of one expert touches only those pages. Writing
streams one tensor at a time against a header computed up front, so saving never holds a whole shard.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "U16": np.dtype(np.uint16), "U32": np.dtype(np.uint32), "U64": np.dtype(np.uint64),
}
NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
MAX_HEADER = 100 * 2**20  # the format's own limit on the JSON header


class ModelDirError(ValueError):
    """A model directory (config.json, tokenizer, safetensors) that cannot be used, phrased as
    ``<file or directory>: <what is wrong>``: bad input, reported on one line before any compute."""


class SafetensorsFile:
    """One .safetensors file: ``info(name) -> (dtype, shape)``, ``get(name) -> memory-mapped array``.

    The header is checked against the file when it is opened (every tensor's dtype, shape and byte range
    consistent and inside the file), so a truncated or corrupt file fails here, naming itself, instead of
    as a reshape error halfway through loading."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._bad(f"truncated: {size} bytes, not even the 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER or 8 + n > size:
                    raise self._bad(f"header length {n} does not fit the file of {size} bytes "
                                    "(truncated, or not a safetensors file)")
                raw = f.read(n)
        except OSError as e:
            raise self._bad(f"cannot be read ({e.strerror or e})") from None
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._bad("header is not valid JSON (corrupt, or not a safetensors file)") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object (corrupt, or not a safetensors file)")
        meta = header.pop("__metadata__", None) or {}
        self.metadata = meta if isinstance(meta, dict) else {}
        self.entries = header
        self._base = 8 + n
        self._check(size - self._base)
        self._mm: np.memmap | None = None

    def _bad(self, what: str) -> ModelDirError:
        return ModelDirError(f"{self.path}: {what}")

    def _check(self, data_bytes: int) -> None:
        """Every entry well formed, sized as its dtype and shape say, and inside the file."""
        cut: tuple[int, str] | None = None  # (start, name) of the first tensor past the end of the file
        end_max = 0
        for name, e in self.entries.items():
            ok = (isinstance(e, dict) and isinstance(e.get("shape"), list) and isinstance(e.get("data_offsets"), list)
                  and len(e["data_offsets"]) == 2
                  and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                          for x in (*e["shape"], *e["data_offsets"])))
            if not ok:
                raise self._bad(f"tensor {name}: malformed header entry {json.dumps(e)[:200]}")
            if e.get("dtype") not in DTYPES:
                raise self._bad(f"tensor {name}: unknown dtype {e.get('dtype')!r} "
                                f"(known: {', '.join(DTYPES)})")
            start, end = e["data_offsets"]
            want = math.prod(e["shape"]) * DTYPES[e["dtype"]].itemsize
            if end - start != want:
                raise self._bad(f"tensor {name}: {end - start} bytes for a {e['dtype']} tensor of shape "
                                f"{e['shape']}, which needs {want} (corrupt header)")
            end_max = max(end_max, end)
            if end > data_bytes and (cut is None or start < cut[0]):
                cut = (start, name)
        if cut is not None:
            raise self._bad(f"truncated: {self._base + data_bytes} bytes, its header describes "
                            f"{self._base + end_max} (tensor {cut[1]} and what follows it are cut off)")

    def names(self) -> list[str]:
        return list(self.entries)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        e = self.entries[name]
        return e["dtype"], tuple(e["shape"])

    def get(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e["dtype"] not in DTYPES:
            raise ValueError(f"{name}: unsupported safetensors dtype {e['dtype']} in {self.path}")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = e["data_offsets"]
        raw = self._mm[self._base + start:self._base + end]
        return raw.view(DTYPES[e["dtype"]]).reshape(e["shape"])

    def close(self) -> None:
        self._mm = None


class Checkpoint:
    """Every tensor of a Hugging Face checkpoint directory, single-file or sharded (with its index)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        weight_map = None
        if index.is_file():
            weight_map = _weight_map(index)
            files = sorted(set(weight_map.values()))
            for f in files:
                if not (self.dir / f).is_file():
                    raise ModelDirError(f"{index}: names {f}, which is not in {self.dir}")
        elif (self.dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise ModelDirError(f"{self.dir}: no model.safetensors, model.safetensors.index.json or "
                                "*.safetensors files")
        self.files = {f: SafetensorsFile(self.dir / f) for f in files}
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files.values():
            for name in f.names():
                self.where[name] = f
        for name, f in (weight_map or {}).items():
            if self.where.get(name) is not self.files[f]:
                raise ModelDirError(f"{index}: maps {name} to {f}, which does not hold it")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        return self.where[name].info(name)

    def file_of(self, name: str) -> Path:
        return self.where[name].path

    def label(self, name: str) -> str:
        """How messages name tensor ``name`` (views that rename tensors name the stored one)."""
        return name

    def get(self, name: str) -> np.ndarray:
        return self.where[name].get(name)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _weight_map(index: Path) -> dict[str, str]:
    try:
        wm = json.loads(index.read_text()).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ModelDirError(f"{index}: not a readable JSON index ({type(e).__name__})") from None
    if not isinstance(wm, dict) or not all(isinstance(v, str) and "/" not in v for v in wm.values()):
        raise ModelDirError(f"{index}: weight_map must map tensor names to file names in the directory")
    return wm


def write_file(path: str | Path, specs: Iterable[tuple[str, str, tuple[int, ...]]],
               produce: Callable[[str], np.ndarray], metadata: dict | None = None) -> int:
    """Write ``specs`` ((name, dtype, shape) in file order), asking ``produce(name)`` for each tensor only
    when its turn comes. Returns the number of data bytes."""
    specs = list(specs)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dtype, shape in specs:
            a = np.asarray(produce(name))
            a = np.ascontiguousarray(a).reshape(a.shape)  # (0-d stays 0-d: ascontiguousarray makes it 1-d)
            if a.dtype != DTYPES[dtype] or tuple(a.shape) != tuple(shape):
                raise ValueError(f"{name}: produced {a.dtype}{a.shape}, header says {dtype}{tuple(shape)}")
            f.write(a.reshape(-1).view(np.uint8).data)
    tmp.replace(path)
    return offset
