"""Quantized releases (block-scaled FP8: DeepSeek-V3/R1, Qwen3-FP8; MXFP4: gpt-oss) load dequantized.

A tiny transformers model is saved, then quantized here as the releases are (FP8 e4m3 weights with a float32
``weight_scale_inv`` per block; gpt-oss's experts as packed E2M1 pairs with an E8M0 exponent per 32 values),
and its config.json gets the release's ``quantization_config``. transformers loads that directory by
dequantizing it (on CPU it always does): our logits must equal its logits, and an export must be an ordinary
unquantized checkpoint that transformers loads to the same logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from reasoning_rl.models import load_pretrained, save_pretrained
from reasoning_rl.models.hf import CheckpointError, HFConfigError, config_from_hf, load_params
from reasoning_rl.models.quantized import FP4_VALUES, dequantize_fp8, dequantize_mxfp4
from reasoning_rl.models.safetensors_io import Checkpoint, SafetensorsFile, write_file

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_parity import IDS, MASK, build_reference, reference_logits  # noqa: E402

E4M3_MAX = 448.0
# every dimension of the tiny configs divides by these (transformers derives the block from the scale grid);
# rows and columns differ so a transposed grid would show
BLOCK = (8, 16)
FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(BLOCK)}
MXFP4_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}


def quantize_fp8(w: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [..., R, C] -> (e4m3 weight, float32 scale grid [..., ceil(R / bR), ceil(C / bC)]), one
    scale per block (its max magnitude maps to e4m3's largest value), as DeepSeek's FP8 releases are made."""
    bm, bn = block
    r, c = w.shape[-2:]
    gr, gc = math.ceil(r / bm), math.ceil(c / bn)
    pad = np.zeros((*w.shape[:-2], gr * bm, gc * bn), np.float32)
    pad[..., :r, :c] = w
    blocks = pad.reshape(*w.shape[:-2], gr, bm, gc, bn)
    scale = np.maximum(np.abs(blocks).max(axis=(-3, -1)), 1e-12) / E4M3_MAX
    q = blocks / scale[..., :, None, :, None]
    return q.reshape(pad.shape)[..., :r, :c].astype(ml_dtypes.float8_e4m3fn), scale.astype(np.float32)


def quantize_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [E, in, out] (the bf16 release's layout) -> (blocks [E, out, in / 32, 16] uint8, scales [E, out,
    in / 32] uint8): per 32 inputs of an output, the power of two that fits the largest into E2M1's 6, each
    value rounded to the nearest code, two codes a byte (the even index in the low nibble)."""
    x = np.swapaxes(w, -1, -2).astype(np.float32)
    g = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    exp = np.ceil(np.log2(np.maximum(np.abs(g).max(-1), 1e-30) / 6.0)).astype(np.int32)
    scaled = g / np.ldexp(1.0, exp)[..., None]
    codes = np.abs(scaled[..., None] - FP4_VALUES).argmin(-1).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exp + 127).astype(np.uint8)


def _rewrite(directory: Path, quant: dict, convert) -> list[str]:
    """Rewrite ``model.safetensors`` with ``convert(name, array) -> {name: (dtype, array)} | None`` (None: as
    stored) and add ``quant`` to config.json. Returns the converted tensors' names."""
    f = SafetensorsFile(directory / "model.safetensors")
    out, done = {}, []
    for name in f.names():
        a = np.asarray(f.get(name))
        new = convert(name, a)
        if new is None:
            out[name] = (f.info(name)[0], a)
        else:
            out.update(new)
            done.append(name)
    f.close()
    write_file(directory / "model.safetensors", [(n, dt, a.shape) for n, (dt, a) in out.items()],
               lambda n: out[n][1])
    conf = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**conf, "quantization_config": quant}))
    return done


def _fp8_linear(name: str, a: np.ndarray):
    if name.endswith(".weight") and "proj" in name.split(".")[-2] and a.ndim == 2:
        q, s = quantize_fp8(a.astype(np.float32), BLOCK)
        return {name: ("F8_E4M3", q), name + "_scale_inv": ("F32", s)}
    return None


def _reference(directory: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                            dtype=torch.float32).eval()


@pytest.mark.parametrize("name", ["qwen3", "deepseek_v3"])
def test_fp8_block_release_loads_as_transformers_dequantizes_it(tmp_path, name):
    model = build_reference(name)
    model.save_pretrained(tmp_path / "fp8")
    done = _rewrite(tmp_path / "fp8", FP8_CONFIG, _fp8_linear)
    assert any("mlp.experts" in n for n in done) == (name == "deepseek_v3") and len(done) >= 7
    ref = _reference(tmp_path / "fp8")
    want = reference_logits(ref)
    assert np.abs(want - reference_logits(model))[MASK].max() > 1e-4  # the weights are the quantized ones

    ours = load_pretrained(tmp_path / "fp8", dtype="float32")
    err = np.abs(np.asarray(ours(IDS, MASK)) - want)[MASK].max()
    assert err <= 1e-4, f"{name}: max |dlogits| {err:.2e}"

    # the export is an unquantized checkpoint with the same numbers
    save_pretrained(ours, tmp_path / "out")
    conf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in conf
    ck = Checkpoint(tmp_path / "out")
    assert not any(n.endswith("_scale_inv") for n in ck.names())
    assert {ck.info(n)[0] for n in ck.names()} <= {"F32", "BF16"}
    ck.close()
    np.testing.assert_allclose(reference_logits(_reference(tmp_path / "out")), want, atol=1e-4)


def test_fp8_per_tensor_release_loads_as_transformers_dequantizes_it(tmp_path):
    """Per-tensor FP8 (``weight_block_size: null``, static activation scheme, as Mistral's FP8 releases): one
    float32 ``weight_scale_inv`` per weight, an ``activation_scale`` beside it that only FP8 matmuls use."""
    model = build_reference("ministral3")
    model.save_pretrained(tmp_path / "fp8")

    def per_tensor(name, a):
        if name.endswith(".weight") and "proj" in name.split(".")[-2] and a.ndim == 2:
            scale = np.float32(max(np.abs(a).max(), 1e-12) / E4M3_MAX)
            q = (a.astype(np.float32) / scale).astype(ml_dtypes.float8_e4m3fn)
            act = name.removesuffix("weight") + "activation_scale"
            return {name: ("F8_E4M3", q), name + "_scale_inv": ("F32", np.asarray(scale)),
                    act: ("F32", np.asarray(np.float32(0.02)))}
        return None

    quant = {"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": None}
    done = _rewrite(tmp_path / "fp8", quant, per_tensor)
    assert len(done) == 14  # q, k, v, o, gate, up, down in both layers
    want = reference_logits(_reference(tmp_path / "fp8"))
    assert np.abs(want - reference_logits(model))[MASK].max() > 1e-4  # the weights are the quantized ones
    ours = load_pretrained(tmp_path / "fp8", dtype="float32")
    err = np.abs(np.asarray(ours(IDS, MASK)) - want)[MASK].max()
    assert err <= 1e-4, f"max |dlogits| {err:.2e}"
    save_pretrained(ours, tmp_path / "out")
    ck = Checkpoint(tmp_path / "out")
    assert not any(n.endswith(("_scale_inv", "activation_scale")) for n in ck.names())
    ck.close()


def test_fp8_without_a_block_size_takes_the_references_default():
    """``weight_block_size`` left out is transformers' default block (128 x 128), not per-tensor (null)."""
    from reasoning_rl.models.quantized import FP8_DEFAULT_BLOCK, Dequantized, quantization

    ref = transformers.FineGrainedFP8Config.from_dict({"quant_method": "fp8"})
    assert tuple(ref.weight_block_size) == FP8_DEFAULT_BLOCK
    q = quantization({"quantization_config": {"quant_method": "fp8"}})

    class Empty:
        def names(self):
            return []

    assert Dequantized(Empty(), q).block == FP8_DEFAULT_BLOCK
    assert Dequantized(Empty(), {**q, "weight_block_size": None}).block is None


def test_mxfp4_experts_load_as_transformers_dequantizes_them(tmp_path):
    model = build_reference("gpt_oss")
    model.save_pretrained(tmp_path / "mx")

    def experts(name, a):
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            blocks, scales = quantize_mxfp4(a.astype(np.float32))
            return {name + "_blocks": ("U8", blocks), name + "_scales": ("U8", scales)}
        return None

    assert len(_rewrite(tmp_path / "mx", MXFP4_CONFIG, experts)) == 4  # 2 layers x gate_up, down
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "mx", attn_implementation="eager", dtype=torch.float32,
        quantization_config=transformers.Mxfp4Config(dequantize=True)).eval()
    want = reference_logits(ref)
    assert np.abs(want - reference_logits(model))[MASK].max() > 1e-4

    ours = load_pretrained(tmp_path / "mx", dtype="float32")
    err = np.abs(np.asarray(ours(IDS, MASK)) - want)[MASK].max()
    assert err <= 1e-4, f"max |dlogits| {err:.2e}"
    save_pretrained(ours, tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    np.testing.assert_allclose(reference_logits(_reference(tmp_path / "out")), want, atol=1e-4)


def test_dequantizers_against_their_definitions():
    rng = np.random.default_rng(0)
    # FP8: a 20 x 37 weight in 8 x 16 blocks: the last row and column blocks are partial (DeepSeek-V3's
    # kv_a_proj_with_mqa has 576 rows in blocks of 128)
    w = rng.normal(size=(3, 20, 37)).astype(np.float32)
    q, s = quantize_fp8(w, BLOCK)
    assert s.shape == (3, 3, 3)
    got = dequantize_fp8(q, s, BLOCK)
    want = np.empty_like(w)
    for e, i, j in np.ndindex(*w.shape):
        want[e, i, j] = float(q[e, i, j]) * s[e, i // 8, j // 16]
    np.testing.assert_array_equal(got, want)
    assert np.abs(got - w).max() <= 0.07 * np.abs(w).max()  # e4m3: 3 mantissa bits
    # MXFP4: every code and a spread of exponents, against the format's definition
    codes = rng.integers(0, 16, size=(2, 5, 3, 32)).astype(np.uint8)
    exps = rng.integers(120, 135, size=(2, 5, 3)).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    got = dequantize_mxfp4(blocks, exps)
    assert got.shape == (2, 96, 5)
    for e, r, g, k in np.ndindex(*codes.shape):
        assert got[e, g * 32 + k, r] == FP4_VALUES[codes[e, r, g, k]] * 2.0 ** (int(exps[e, r, g]) - 127)


def test_sharded_load_reads_each_quantized_tensor_once(tmp_path):
    """Device shards of one parameter are cut from one dequantized tensor, not one dequantization each."""
    from reasoning_rl.models import hf as H
    from reasoning_rl.models.transformer import create

    model = build_reference("qwen3")
    model.save_pretrained(tmp_path)
    _rewrite(tmp_path, FP8_CONFIG, _fp8_linear)
    cfg = config_from_hf(tmp_path)
    mdef, _ = create(cfg, abstract=True)
    ckpt = H.open_checkpoint(tmp_path, cfg)
    reads: list[str] = []
    get = ckpt.get
    ckpt.get = lambda n: reads.append(n) or get(n)
    slot = next(s for s in H._slots(mdef) if s.t.path[-1] == "q")
    full = H._build(slot, ckpt, [H._full(slot.shape)], np.float32)[0]
    assert len(reads) == slot.shape[0]  # one tensor per layer
    regions = [tuple(slice(0, n) for n in slot.shape[:-1]) + (slice(a, b),) for a, b in ((0, 4), (4, 8), (0, 8))]
    reads.clear()
    parts = H._build(slot, ckpt, regions, np.float32)
    assert len(reads) == slot.shape[0]
    for r, p in zip(regions, parts):
        np.testing.assert_array_equal(p, full[r])
    whole = load_params(tmp_path, mdef, "float32")
    np.testing.assert_array_equal(np.asarray(whole["layers"]["attn"]["q"]), full)


@pytest.mark.parametrize("quant, match", [
    ({"quant_method": "awq", "bits": 4}, "quant_method 'awq' is not supported"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size \\[128\\]: block-scaled FP8 needs"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128], "expert_dtype": "fp4"}, "expert_dtype 'fp4'"),
])
def test_quantization_this_loader_cannot_decode_is_refused_by_name(tmp_path, quant, match):
    build_reference("qwen3").save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**conf, "quantization_config": quant}))
    with pytest.raises(HFConfigError, match=match) as e:
        config_from_hf(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "config.json"))


def test_quantized_tensors_that_do_not_decode_are_named(tmp_path):
    build_reference("qwen3").save_pretrained(tmp_path)

    def broken(name, a):
        if name == "model.layers.0.self_attn.q_proj.weight":  # its scale lost
            return {name: ("F8_E4M3", quantize_fp8(a.astype(np.float32), BLOCK)[0])}
        if name == "model.layers.1.mlp.up_proj.weight":  # its scale transposed
            q, s = quantize_fp8(a.astype(np.float32), BLOCK)
            return {name: ("F8_E4M3", q), name + "_scale_inv": ("F32", np.ascontiguousarray(s.T))}
        return _fp8_linear(name, a)

    _rewrite(tmp_path, FP8_CONFIG, broken)
    cfg = config_from_hf(tmp_path)
    from reasoning_rl.models.transformer import create

    with pytest.raises(CheckpointError) as e:
        load_params(tmp_path, create(cfg, abstract=True)[0])
    msg = str(e.value)
    assert "model.layers.0.self_attn.q_proj.weight: F8_E4M3 weight without its " \
           "model.layers.0.self_attn.q_proj.weight_scale_inv" in msg
    assert "model.layers.1.mlp.up_proj.weight: scale model.layers.1.mlp.up_proj.weight_scale_inv is F32 [4, 12]" in msg
    assert msg.count("q_proj.weight:") == 1  # named once, not again as an unsupported dtype


def test_fp8_vision_language_release_loads_its_language_model_dequantized(tmp_path):
    """Qwen3-VL-MoE's FP8 releases: the quantization_config at the wrapper's top level, the language model's
    tensors under ``model.language_model.``."""
    from test_hf_multimodal import IDS as VL_IDS
    from test_hf_multimodal import MASK as VL_MASK
    from test_hf_multimodal import reference as vl_reference
    from test_hf_multimodal import text_logits

    cls = type(vl_reference("qwen3_vl_moe", tmp_path / "fp8"))
    done = _rewrite(tmp_path / "fp8", FP8_CONFIG,
                    lambda n, a: _fp8_linear(n, a) if n.startswith("model.language_model.") else None)
    assert len(done) == 8  # q, k, v, o in 2 layers (the experts are fused 3-D tensors, left as released)
    ref = cls.from_pretrained(tmp_path / "fp8", attn_implementation="eager", dtype=torch.float32).eval()
    want = text_logits(ref, derive=True)
    ours = load_pretrained(tmp_path / "fp8", dtype="float32")
    assert ours.cfg.extra["hf_wrapper"] == "qwen3_vl_moe"
    err = np.abs(np.asarray(ours(VL_IDS, VL_MASK)) - want)[VL_MASK].max()
    assert err <= 1e-4, f"max |dlogits| {err:.2e}"
