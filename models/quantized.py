"""Quantized checkpoints, dequantized as they are read.

The open reasoning models are often released quantized only: DeepSeek-V3/R1 as block-scaled FP8
(``quant_method: fp8``, ``weight_block_size: [128, 128]``: an ``F8_E4M3`` weight and a float32
``weight_scale_inv`` grid holding one scale per block), Qwen3's, Qwen3.5's and MiniMax-M2's FP8 releases the
same way, per-tensor FP8 (``weight_block_size: null``: one float32 ``weight_scale_inv`` per weight, and with
``activation_scheme: static`` an ``activation_scale`` that only FP8 matmuls use), gpt-oss with its experts in
MXFP4 (``quant_method: mxfp4``: ``*_blocks`` of packed E2M1 pairs and ``*_scales`` of E8M0 exponents, one per 32
values). Training needs the weights in bf16 or float32 anyway, so
``Dequantized`` presents such a checkpoint as the unquantized one it encodes: the same tensor names, shapes and
layout as the bf16 release, each tensor dequantized in float32 when it is read (one tensor at a time: loading
still streams), the scale tensors hidden. What a run exports afterwards is an ordinary unquantized checkpoint
(``hf_save`` drops ``quantization_config``).

Other methods (GPTQ, AWQ, bitsandbytes, compressed-tensors, ...) are refused by name: their weights only mean
something through their own kernels' conventions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .families import ConfigError

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
SCALE_DTYPES = ("F32", "BF16", "F16", "F8_E8M0")
FP8_SCALE = "_scale_inv"  # weight -> weight_scale_inv
# E2M1 code -> value: sign bit 3, exponent bits 2-1, mantissa bit 0 (OCP Microscaling formats, MXFP4)
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      np.float32)
MX_BLOCK = 32  # values per E8M0 scale in MXFP4
SUPPORTED = ("fp8", "mxfp4")
FP8_DEFAULT_BLOCK = (128, 128)  # the reference's, where quantization_config leaves weight_block_size out


def quantization(hf: dict) -> dict | None:
    """The validated ``quantization_config`` of a config.json (None: an unquantized checkpoint). A method
    these loaders cannot dequantize is a ConfigError naming it."""
    q = hf.get("quantization_config")
    if not q:
        return None
    if not isinstance(q, dict):
        raise ConfigError(f"config.json: quantization_config must be an object, got {type(q).__name__}")
    method = q.get("quant_method")
    if method not in SUPPORTED:
        raise ConfigError(f"config.json: quantization_config: quant_method {method!r} is not supported (supported: "
                          "fp8 with block or per-tensor scales, mxfp4; dequantized on load): load an unquantized copy")
    if method == "fp8":
        block = q.get("weight_block_size", FP8_DEFAULT_BLOCK)
        if block is not None and not (isinstance(block, list | tuple) and len(block) == 2 and all(
                isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
            raise ConfigError(f"config.json: quantization_config: weight_block_size {block!r}: block-scaled FP8 needs "
                              "two positive block sizes (null: one scale per tensor)")
        if q.get("expert_dtype", "fp8") != "fp8":
            raise ConfigError(f"config.json: quantization_config: expert_dtype {q['expert_dtype']!r} is not "
                              "supported (FP8 experts only)")
        if q.get("fmt", "e4m3") not in ("e4m3", "e5m2"):
            raise ConfigError(f"config.json: quantization_config: fmt {q['fmt']!r} is not supported (e4m3, e5m2)")
    return q


def dequantize_fp8(w: np.ndarray, scale: np.ndarray, block: tuple[int, int] | None) -> np.ndarray:
    """``w`` [..., R, C] (FP8) times its block's scale: ``scale[..., i // bR, j // bC]`` (float32). Scaled one
    row block at a time, in place: no weight-sized scale array beside the result. ``block`` None: one scale for
    the whole tensor."""
    out = w.astype(np.float32)
    if block is None:
        out *= np.float32(np.asarray(scale, np.float32).reshape(()))
        return out
    bm, bn = block
    cols = np.repeat(np.asarray(scale, np.float32), bn, axis=-1)[..., :w.shape[-1]]  # [..., R / bR, C]
    for i in range(cols.shape[-2]):
        out[..., i * bm:(i + 1) * bm, :] *= cols[..., i:i + 1, :]
    return out


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """gpt-oss's packed experts: ``blocks`` [..., R, G, 16] (two E2M1 codes a byte, low nibble first) and
    ``scales`` [..., R, G] (E8M0: 2 ** (s - 127)) -> [..., G * 32, R] float32, the bf16 release's layout
    ([E, in, out])."""
    b = np.asarray(blocks, np.uint8)
    vals = np.empty((*b.shape[:-1], 2 * b.shape[-1]), np.float32)
    vals[..., 0::2] = FP4_VALUES[b & 0x0F]
    vals[..., 1::2] = FP4_VALUES[b >> 4]
    vals = np.ldexp(vals, (np.asarray(scales, np.int32) - 127)[..., None])
    vals = vals.reshape(*b.shape[:-2], b.shape[-2] * 2 * b.shape[-1])  # [..., R, G * 32]
    return np.swapaxes(vals, -1, -2)


class Dequantized:
    """A checkpoint (``safetensors_io.Checkpoint`` interface) as the unquantized checkpoint it encodes.

    FP8: a weight stored ``F8_E4M3``/``F8_E5M2`` with a ``<name>_scale_inv`` grid of ``ceil(R / bR) x ceil(C /
    bC)`` (per leading index; per tensor: one value) reads as float32; the scale, and a static scheme's
    ``activation_scale`` beside the weight, are hidden. Tensors the release left unquantized
    (embeddings, norms, routers, ``modules_to_not_convert``) read as stored. MXFP4: ``<name>_blocks`` and
    ``<name>_scales`` read as ``<name>``. A scale whose grid does not fit its weight, or a quantized weight
    without its scale, is reported by ``problems()`` (``hf._check`` lists them with the rest)."""

    def __init__(self, ckpt, quant: dict):
        self.ckpt = ckpt
        self.method = quant["quant_method"]
        block = quant.get("weight_block_size", FP8_DEFAULT_BLOCK) if self.method == "fp8" else None
        self.block = tuple(block) if block is not None else None  # None: per-tensor FP8 (or not FP8)
        self.bad: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}  # dequantizable tensors' shapes (float32 when read)
        self.sources: dict[str, tuple[str, str]] = {}  # our name -> (stored weight or blocks, stored scales)
        self.extra: set[str] = set()  # stored tensors only a quantized matmul reads (FP8 activation scales)
        stored = set(ckpt.names())
        for name in ckpt.names():
            dtype, shape = ckpt.info(name)
            if self.method == "fp8" and dtype in FP8_DTYPES:
                if name + FP8_SCALE in stored:
                    self._add_fp8(name, shape, name + FP8_SCALE)
                    act = name.removesuffix("weight") + "activation_scale"  # (static activation scheme)
                    if name.endswith("weight") and act in stored:
                        self.extra.add(act)
                else:
                    self.bad[name] = f"{dtype} weight without its {name + FP8_SCALE}"
            elif self.method == "mxfp4" and name.endswith("_blocks") and name[:-7] + "_scales" in stored:
                self._add_mx(name[:-7], name, shape, name[:-7] + "_scales")
        hidden = ({s for pair in self.sources.values() for s in pair} | self.extra) - set(self.sources)
        self.visible = [n for n in ckpt.names() if n not in hidden] + [n for n in self.sources if n not in stored]
        self._visible = set(self.visible)

    def _add_fp8(self, name: str, shape: tuple, scale: str) -> None:
        self.sources[name] = (name, scale)
        sdt, sshape = self.ckpt.info(scale)
        if self.block is None:  # one scale for the tensor, stored as a scalar or a 1-element array
            if len(shape) < 2 or math.prod(sshape) != 1 or sdt not in SCALE_DTYPES:
                self.bad[name] = (f"scale {scale} is {sdt} {list(sshape)}; per-tensor FP8 (weight_block_size: null) "
                                  "needs one float value")
            else:
                self.shapes[name] = tuple(shape)
            return
        want = (*shape[:-2], *(math.ceil(n / b) for n, b in zip(shape[-2:], self.block)))
        if len(shape) < 2 or tuple(sshape) != want or sdt not in SCALE_DTYPES:
            self.bad[name] = (f"scale {scale} is {sdt} {list(sshape)}; a {list(shape)} weight in blocks of "
                              f"{list(self.block)} needs a float grid of {list(want)}")
        else:
            self.shapes[name] = tuple(shape)

    def _add_mx(self, name: str, blocks: str, shape: tuple, scales: str) -> None:
        self.sources[name] = (blocks, scales)
        dt, (sdt, sshape) = self.ckpt.info(blocks)[0], self.ckpt.info(scales)
        if dt != "U8" or sdt != "U8" or len(shape) < 3 or shape[-1] != MX_BLOCK // 2 or tuple(sshape) != shape[:-1]:
            self.bad[name] = (f"MXFP4 {blocks} ({dt} {list(shape)}) and {scales} ({sdt} {list(sshape)}) are not "
                              f"U8 [..., R, G, {MX_BLOCK // 2}] and U8 [..., R, G]")
        else:
            self.shapes[name] = (*shape[:-3], shape[-2] * MX_BLOCK, shape[-3])

    def problems(self) -> list[tuple[str, str]]:
        """(label, what is wrong) of every quantized tensor that cannot be dequantized."""
        return [(self.label(n), why) for n, why in self.bad.items()]

    def __contains__(self, name: str) -> bool:
        return name in self._visible

    def names(self) -> list[str]:
        return list(self.visible)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        if name in self.shapes:
            return "F32", self.shapes[name]
        return self.ckpt.info(self.sources.get(name, (name,))[0])

    def file_of(self, name: str):
        return self.ckpt.file_of(self.sources[name][0] if name in self.sources else name)

    def label(self, name: str) -> str:
        return self.ckpt.label(self.sources[name][0] if name in self.sources else name)

    def get(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            return self.ckpt.get(self.sources.get(name, (name,))[0])
        src, scale = self.sources[name]
        if self.method == "mxfp4":
            return dequantize_mxfp4(self.ckpt.get(src), self.ckpt.get(scale))
        return dequantize_fp8(self.ckpt.get(src), self.ckpt.get(scale), self.block)

    def close(self) -> None:
        self.ckpt.close()


def open_dequantized(ckpt, quant: dict | None) -> Any:
    """``ckpt`` itself for an unquantized checkpoint, else its ``Dequantized`` view."""
    return ckpt if not quant else Dequantized(ckpt, quant)
