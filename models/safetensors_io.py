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
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class SafetensorsFile:
    """One .safetensors file: ``info(name) -> (dtype, shape)``, ``get(name) -> memory-mapped array``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        self._base = 8 + n
        self._mm: np.memmap | None = None

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
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.dir}: no model.safetensors, index or *.safetensors files")
        self.files = {f: SafetensorsFile(self.dir / f) for f in files}
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files.values():
            for name in f.names():
                self.where[name] = f

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        return self.where[name].info(name)

    def get(self, name: str) -> np.ndarray:
        return self.where[name].get(name)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


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
            a = np.ascontiguousarray(produce(name))
            if a.dtype != DTYPES[dtype] or tuple(a.shape) != tuple(shape):
                raise ValueError(f"{name}: produced {a.dtype}{a.shape}, header says {dtype}{tuple(shape)}")
            f.write(a.reshape(-1).view(np.uint8).data)
    tmp.replace(path)
    return offset
