"""Quantized checkpoints, dequantized as they are read.

The open reasoning models are often released quantized only: DeepSeek-V3/R1 as block-scaled FP8
(``quant_method: fp8``, ``weight_block_size: [128, 128]``: an ``F8_E4M3`` weight and a float32
``weight_scale_inv`` grid holding one scale per block), Qwen3's, Qwen3.5's and MiniMax-M2's FP8 releases the
same way, per-tensor FP8 (``weight_block_size: null``: one float32 ``weight_scale_inv`` per weight, and with
``activation_scheme: static`` an ``activation_scale`` that only FP8 matmuls use), gpt-oss with its experts in
MXFP4 (``quant_method: mxfp4``: ``*_blocks`` of packed E2M1 pairs and ``*_scales`` of E8M0 exponents, one per 32
values), and the compressed-tensors releases (``quant_method: compressed-tensors``, written by llm-compressor:
Kimi-K2-Thinking's INT4 experts, the W4A16 / W8A16 / FP8 / NVFP4 copies of most open models): integer weights of
1 to 8 bits packed into int32 words (``pack-quantized``: ``weight_packed``, ``weight_scale``, ``weight_shape``
and, asymmetric, a packed ``weight_zero_point``), int8 or FP8 weights stored as they are (``naive-quantized``,
``int-quantized``, ``float-quantized``) and NVFP4 (``nvfp4-pack-quantized``: E2M1 pairs in bytes, an FP8 scale per
16 values and a float32 ``weight_global_scale``), with per-tensor, per-channel, per-group or per-block scales;
each ``config_groups`` entry names the modules it quantizes (``targets``: a class name such as ``Linear``, a
module name or ``re:<regex>``). Training needs the weights in bf16 or float32 anyway, so
``Dequantized`` presents such a checkpoint as the unquantized one it encodes: the same tensor names, shapes and
layout as the bf16 release, each tensor dequantized in float32 when it is read (one tensor at a time: loading
still streams), the scale tensors hidden. What a run exports afterwards is an ordinary unquantized checkpoint
(``hf_save`` drops ``quantization_config``).

Other methods (GPTQ, AWQ, bitsandbytes, ...) and the compressed-tensors options that change what a weight means
beyond its scales (sparsity, transforms, activation-ordered groups) are refused by name: their weights only mean
something through their own kernels' conventions.
"""

from __future__ import annotations

import math
import re
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
SUPPORTED = ("fp8", "mxfp4", "compressed-tensors")
CT_FORMATS = ("pack-quantized", "naive-quantized", "int-quantized", "float-quantized", "nvfp4-pack-quantized",
              "dense")
CT_STRATEGIES = ("tensor", "channel", "group", "block", "tensor_group")
# stored beside a compressed-tensors weight for quantized matmuls only (activation and KV-cache scales): hidden
CT_EXTRA = ("input_scale", "input_zero_point", "input_global_scale", "output_scale", "output_zero_point",
            "k_scale", "v_scale")
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
    if method == "compressed-tensors":
        _check_compressed_tensors(q)
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


def _check_compressed_tensors(q: dict) -> None:
    """What a compressed-tensors config may hold here: its formats, weight schemes and no sparsity or transforms."""
    where = "config.json: quantization_config"
    sparse = q.get("sparsity_config") or {}
    if sparse and sparse.get("format", "dense") != "dense":
        raise ConfigError(f"{where}: sparsity_config format {sparse.get('format')!r} is not supported (sparse "
                          "weights only mean something through their kernels): load an unquantized copy")
    if q.get("transform_config"):
        raise ConfigError(f"{where}: transform_config (rotated weights) is not supported: load an unquantized copy")
    groups = q.get("config_groups") or {}
    if not isinstance(groups, dict):
        raise ConfigError(f"{where}: config_groups must be an object")
    for name, g in groups.items():
        fmt = (g or {}).get("format") or q.get("format")
        if fmt not in CT_FORMATS:
            raise ConfigError(f"{where}: config_groups.{name}: format {fmt!r} is not supported (supported: "
                              f"{', '.join(CT_FORMATS)})")
        w = (g or {}).get("weights")
        if not w:
            continue
        kind, bits, strategy = w.get("type", "int"), w.get("num_bits"), w.get("strategy")
        ok = ((kind == "int" and isinstance(bits, int) and 1 <= bits <= 8)
              or (kind == "float" and bits in (4, 8))) and strategy in CT_STRATEGIES
        if not ok:
            raise ConfigError(f"{where}: config_groups.{name}.weights: {kind} {bits}-bit weights with strategy "
                              f"{strategy!r} are not supported (int 1-8 bits, float 8 (FP8) or 4 (NVFP4); strategies "
                              f"{', '.join(CT_STRATEGIES)})")
        if strategy in ("group", "tensor_group") and not (isinstance(w.get("group_size"), int) and w["group_size"] > 0):
            raise ConfigError(f"{where}: config_groups.{name}.weights: strategy {strategy!r} needs a positive "
                              f"group_size, got {w.get('group_size')!r}")
        if strategy == "block" and not (isinstance(w.get("block_structure"), list | tuple)
                                        and len(w["block_structure"]) == 2):
            raise ConfigError(f"{where}: config_groups.{name}.weights: strategy 'block' needs a block_structure "
                              f"of two sizes, got {w.get('block_structure')!r}")


def _targets(pattern: str, module: str) -> bool:
    """Does a compressed-tensors ``targets`` / ``ignore`` entry name ``module``? ``re:<regex>`` matches the module
    name; a class name (``Linear``) every projection (the only modules a checkpoint stores quantized); else the
    module's own name."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], module) is not None
    return pattern == module or (pattern[:1].isupper() and "." not in pattern)


def _scheme_of(groups: list[dict], module: str) -> dict | None:
    """The config group that quantizes ``module``: one naming it outright, else one whose regex matches it, else
    one targeting its class (the library's order of precedence)."""
    for kind in ("name", "re", "class"):
        for g in groups:
            for t in g.get("targets") or []:
                k = "re" if t.startswith("re:") else "class" if t[:1].isupper() and "." not in t else "name"
                if k == kind and _targets(t, module):
                    return g
    return None


def unpack_int(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """compressed-tensors' packing: each row's ``bits``-bit values one after the other in a little-endian stream of
    int32 words (value i at bit i * bits; 4 and 8 bits never straddle a byte), stored offset by 2 ** (bits - 1).
    ``words`` [..., R, W] -> the signed values [..., R, count] (int32)."""
    raw = np.ascontiguousarray(np.asarray(words).astype("<i4", copy=False)).view(np.uint8)  # [..., R, 4 W]
    if bits == 8:
        vals = raw
    elif bits == 4:
        vals = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(*raw.shape[:-1], -1)
    else:
        stream = np.unpackbits(raw, axis=-1, bitorder="little")[..., :count * bits]
        stream = stream.reshape(*raw.shape[:-1], count, bits).astype(np.int32)
        vals = (stream << np.arange(bits, dtype=np.int32)).sum(-1)
    return vals[..., :count].astype(np.int32) - (1 << (bits - 1))


def _expand(scale: np.ndarray, shape: tuple[int, ...], strategy: str, group: int | None,
            block: tuple[int, int] | None) -> np.ndarray:
    """A compressed-tensors scale (or zero point) broadcast over its weight [..., R, C]."""
    s = np.asarray(scale, np.float32)
    r, c = shape[-2:]
    if strategy == "tensor":
        return s.reshape(())
    if strategy == "channel":
        return s.reshape(*shape[:-1], 1)
    if strategy == "block":
        s = np.repeat(np.repeat(s, block[0], axis=-2)[..., :r, :], block[1], axis=-1)
        return s[..., :c]
    return np.repeat(s, group, axis=-1)[..., :c]  # group, tensor_group: group g covers columns g*G..(g+1)*G


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
        self.ct: dict[str, tuple[str, dict, dict]] = {}  # compressed-tensors: our name -> (kind, weights, parts)
        if self.method == "compressed-tensors":
            self._scan_compressed_tensors(quant, stored)
        for name in ckpt.names() if self.method != "compressed-tensors" else ():
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

    def _scan_compressed_tensors(self, quant: dict, stored: set[str]) -> None:
        """Each quantized module's weight and the tensors that decode it (``CT_FORMATS``), checked against the
        ``config_groups`` entry that targets it; activation and KV-cache scales hidden."""
        groups = [g for g in (quant.get("config_groups") or {}).values() if (g or {}).get("weights")]
        ignore = quant.get("ignore") or []
        for name in sorted(stored):
            dtype, shape = self.ckpt.info(name)
            if name.endswith(".weight_packed"):
                mod = name[:-len(".weight_packed")]
            elif name.endswith(".weight") and dtype in (*FP8_DTYPES, "I8") and name + "_scale" in stored:
                mod = name[:-len(".weight")]
            else:
                if name.endswith(".weight_g_idx"):
                    self.bad[name[:-len("_g_idx")]] = ("activation-ordered groups (weight_g_idx) are not supported: "
                                                       "load an unquantized copy")
                elif name.rsplit(".", 1)[-1] in CT_EXTRA:
                    self.extra.add(name)
                continue
            out = mod + ".weight"
            scheme = None if any(_targets(t, mod) for t in ignore) else _scheme_of(groups, mod)
            if scheme is None:
                self.bad[out] = f"{name} is quantized but no quantization_config.config_groups entry targets {mod}"
                continue
            w = scheme["weights"]
            fmt = scheme.get("format") or quant.get("format")
            parts = {k: f"{mod}.weight_{k}" for k in ("scale", "zero_point", "global_scale", "shape")
                     if f"{mod}.weight_{k}" in stored}
            kind = ("nvfp4" if fmt == "nvfp4-pack-quantized" else "packed" if name.endswith("_packed") else "naive")
            self.sources[out] = (name, *parts.values())
            self.ct[out] = (kind, w, parts)
            why = self._ct_shape(out, name, dtype, tuple(shape), kind, w, parts)
            if why:
                self.bad[out] = why

    def _ct_shape(self, out, name, dtype, shape, kind, w, parts) -> str | None:
        """Record the weight's shape; or say why its tensors cannot be decoded."""
        bits, strategy = w.get("num_bits"), w.get("strategy")
        if "scale" not in parts:
            return f"{name} without its {out}_scale"
        if kind == "nvfp4":
            if dtype != "U8" or "global_scale" not in parts or strategy != "tensor_group":
                return f"NVFP4 {name} is {dtype}, needs U8 pairs of E2M1 codes, a weight_global_scale, tensor_group"
            full = (*shape[:-1], shape[-1] * 2)
        elif kind == "packed":
            if dtype != "I32" or "shape" not in parts or w.get("type", "int") != "int":
                return f"packed {name} is {dtype}, needs I32 words, a weight_shape and int weights"
            full = tuple(int(v) for v in np.asarray(self.ckpt.get(parts["shape"])).reshape(-1))
            if len(full) < 2 or tuple(shape) != (*full[:-1], math.ceil(full[-1] * bits / 32)):
                return f"packed {name} {list(shape)} does not hold {bits}-bit values of weight_shape {list(full)}"
            if not w.get("symmetric", True) and "zero_point" not in parts:
                return f"asymmetric {name} without its {out}_zero_point"
        else:
            if (dtype == "I8") != (w.get("type", "int") == "int"):
                return f"{name} is {dtype} but its config_groups entry quantizes {w.get('type')} weights"
            full = tuple(shape)
        r, c = full[-2:]
        g, blk = w.get("group_size"), w.get("block_structure")
        want = {"tensor": None, "channel": (*full[:-1], 1),
                "group": (*full[:-1], math.ceil(c / g)) if g else None,
                "tensor_group": (*full[:-1], math.ceil(c / g)) if g else None,
                "block": (*full[:-2], math.ceil(r / blk[0]), math.ceil(c / blk[1])) if blk else None}[strategy]
        sshape = tuple(self.ckpt.info(parts["scale"])[1])
        if (want is None and math.prod(sshape) != 1) or (want is not None and sshape != want):
            return (f"scale {parts['scale']} is {list(sshape)}; {strategy} scales of a {list(full)} weight are "
                    f"{list(want) if want else 'one value'}")
        self.shapes[out] = full
        return None

    def _get_compressed_tensors(self, name: str) -> np.ndarray:
        """A compressed-tensors weight as the library decompresses it: (q - zero point) * scale (NVFP4: scale /
        global scale), in float32."""
        kind, w, parts = self.ct[name]
        src = self.sources[name][0]
        full = self.shapes[name]
        strategy, group = w.get("strategy"), w.get("group_size")
        block = tuple(w["block_structure"]) if w.get("block_structure") else None
        scale = np.asarray(self.ckpt.get(parts["scale"])).astype(np.float32)
        if kind == "nvfp4":
            b = np.asarray(self.ckpt.get(src), np.uint8)
            q = np.stack([FP4_VALUES[b & 0x0F], FP4_VALUES[b >> 4]], axis=-1).reshape(full)
            scale = scale / np.asarray(self.ckpt.get(parts["global_scale"])).astype(np.float32).reshape(())
        elif kind == "packed":
            q = unpack_int(self.ckpt.get(src), w["num_bits"], full[-1]).astype(np.float32)
        else:
            q = np.asarray(self.ckpt.get(src)).astype(np.float32)
        if "zero_point" in parts and not w.get("symmetric", True):
            zp = np.asarray(self.ckpt.get(parts["zero_point"]))
            if kind == "packed" and strategy in ("group", "channel"):  # packed along the rows
                zp = np.swapaxes(unpack_int(np.swapaxes(zp, -1, -2), w["num_bits"], full[-2]), -1, -2)
            q -= _expand(zp.astype(np.float32), full, strategy, group, block)
        q *= _expand(scale, full, strategy, group, block)
        return q

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
        if self.method == "compressed-tensors":
            return self._get_compressed_tensors(name)
        src, scale = self.sources[name]
        if self.method == "mxfp4":
            return dequantize_mxfp4(self.ckpt.get(src), self.ckpt.get(scale))
        return dequantize_fp8(self.ckpt.get(src), self.ckpt.get(scale), self.block)

    def close(self) -> None:
        self.ckpt.close()


def open_dequantized(ckpt, quant: dict | None) -> Any:
    """``ckpt`` itself for an unquantized checkpoint, else its ``Dequantized`` view."""
    return ckpt if not quant else Dequantized(ckpt, quant)
