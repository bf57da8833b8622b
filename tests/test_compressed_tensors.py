"""compressed-tensors releases (llm-compressor's format: Kimi-K2-Thinking's INT4 experts, W4A16 / W8A16 / FP8 /
NVFP4 copies of open models) load dequantized, each weight exactly as the library decompresses it.

The checkpoints are made here by the library itself (needs the test extra: ``compressed-tensors``): a tiny
transformers model gets a quantization scheme, min-max scales, and is compressed and saved by
``ModelCompressor`` as llm-compressor saves its output. Our loader's dequantized weights must equal the library's
``decompress`` of the same tensors bit for bit (in the dtype the library computes in), so our logits equal those
of the reference model carrying the library's dequantized weights.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")

sys.path.insert(0, str(Path(__file__).parent))
from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.compressors.base import BaseCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
)
from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam  # noqa: E402
from reasoning_rl.models import create, load_pretrained, save_pretrained  # noqa: E402
from reasoning_rl.models.hf import CheckpointError, HFConfigError, config_from_hf, load_params  # noqa: E402
from reasoning_rl.models.quantized import open_dequantized, quantization, unpack_int  # noqa: E402
from reasoning_rl.models.safetensors_io import Checkpoint, SafetensorsFile, write_file  # noqa: E402
from test_hf_io import FAMILY_CONFIGS  # noqa: E402
from test_hf_parity import IDS, MASK, build_reference, reference_logits  # noqa: E402
from test_models_layers import random_params  # noqa: E402


def _int(bits, **kw):
    return QuantizationArgs(num_bits=bits, type="int", **kw)


# name: ({group: (targets, weight args)}, the format to force or None; sizes that divide the tiny model's widths
# of 40 to 96). Every layout a release uses: INT4 in groups (W4A16, Kimi-K2's experts), asymmetric with packed
# zero points, INT8 and INT3 per channel (3 bits straddle the int32 words), INT8 stored unpacked, FP8 in blocks
# and per tensor, NVFP4, and a mixed-precision model (attention INT8 per channel by regex, every other Linear INT4
# in groups: a regex target takes precedence over a class one)
SCHEMES = {
    "w4_group": ({"group_0": (["Linear"], _int(4, symmetric=True, strategy="group", group_size=16))}, None),
    "w4_asym": ({"group_0": (["Linear"], _int(4, symmetric=False, strategy="group", group_size=16))}, None),
    "w8_channel": ({"group_0": (["Linear"], _int(8, symmetric=True, strategy="channel"))}, None),
    "w3_channel": ({"group_0": (["Linear"], _int(3, symmetric=True, strategy="channel"))}, None),
    "int8_naive": ({"group_0": (["Linear"], _int(8, symmetric=True, strategy="channel"))}, "naive-quantized"),
    "fp8_block": ({"group_0": (["Linear"], QuantizationArgs(num_bits=8, type="float", strategy="block",
                                                            block_structure=[8, 16]))}, None),
    "fp8_tensor": ({"group_0": (["Linear"], QuantizationArgs(num_bits=8, type="float", strategy="tensor"))}, None),
    # W8A8 FP8 with static activation scales (input_scale beside each weight: a serving kernel's, hidden here)
    "fp8_w8a8": ({"group_0": (["Linear"], QuantizationArgs(num_bits=8, type="float", strategy="channel"),
                              QuantizationArgs(num_bits=8, type="float", strategy="tensor"))}, None),
    "nvfp4": ({"group_0": (["Linear"], QuantizationArgs(num_bits=4, type="float", strategy="tensor_group",
                                                        group_size=16))}, None),
    "mixed": ({"attention": (["re:.*self_attn.*"], _int(8, symmetric=True, strategy="channel")),
               "rest": (["Linear"], _int(4, symmetric=True, strategy="group", group_size=16))}, None),
}


def _minmax(w: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale min and max of ``w`` (an observer's job in llm-compressor), including zero."""
    if args.strategy in ("group", "tensor_group"):
        g = w.reshape(w.shape[0], -1, args.group_size)
        mn, mx = g.amin(-1), g.amax(-1)
    elif args.strategy == "channel":
        mn, mx = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    elif args.strategy == "block":
        bh, bw = args.block_structure
        b = w.reshape(w.shape[0] // bh, bh, w.shape[1] // bw, bw)
        mn, mx = b.amin((1, 3)), b.amax((1, 3))
    else:
        mn, mx = w.amin().reshape(1), w.amax().reshape(1)
    return torch.clamp(mn, max=0), torch.clamp(mx, min=0)


def compressed_checkpoint(path: Path, scheme: str):
    """The tiny Qwen3 quantized and saved by compressed-tensors as llm-compressor does (lm_head left alone)."""
    groups, fmt = SCHEMES[scheme]
    model = build_reference("qwen3")
    qc = QuantizationConfig(config_groups={k: QuantizationScheme(targets=g[0], weights=g[1],
                                                                 input_activations=g[2] if len(g) > 2 else None)
                                           for k, g in groups.items()}, ignore=["lm_head"])
    apply_quantization_config(model, qc)
    for m in model.modules():
        args = getattr(getattr(m, "quantization_scheme", None), "weights", None)
        if args is None:
            continue
        w = m.weight.data
        gs = None
        if args.strategy == "tensor_group":
            gs = generate_gparam(w.amin(), w.amax())
            m.weight_global_scale.data.copy_(gs)
        s, zp = calculate_qparams(*_minmax(w, args), args, global_scale=gs)
        m.weight_scale.data.copy_(s.reshape(m.weight_scale.shape))
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data.copy_(zp.reshape(m.weight_zero_point.shape))
        if hasattr(m, "input_scale"):
            m.input_scale.data.fill_(0.01)
    comp = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    comp.compress_model(model)
    model.save_pretrained(path)
    comp.update_config(path)
    return json.loads((path / "config.json").read_text())["quantization_config"]


def library_weights(path: Path, quant: dict) -> dict[str, torch.Tensor]:
    """Each quantized module's weight as compressed-tensors decompresses it (in the dtype it computes in)."""
    from safetensors.torch import load_file

    sd = load_file(path / "model.safetensors")
    fmt = quant["format"]
    out = {}
    mods = {n.rsplit(".", 1)[0] for n in sd if n.endswith((".weight_packed", ".weight_scale"))}
    for mod in sorted(mods):
        groups = quant["config_groups"].values()
        group = next((g for g in groups if any(t.startswith("re:") and re.match(t[3:], mod) for t in g["targets"])),
                     None) or next(g for g in groups if "Linear" in g["targets"])
        scheme = QuantizationScheme.model_validate({k: v for k, v in group.items() if k != "format"})
        local = {n[len(mod) + 1:]: t for n, t in sd.items() if n.startswith(mod + ".")}
        comp = BaseCompressor.get_value_from_registry(group.get("format") or fmt)
        out[mod + ".weight"] = comp.decompress(local, scheme)["weight"]
    return out


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_compressed_tensors_release_loads_as_the_library_decompresses_it(tmp_path, scheme):
    quant = compressed_checkpoint(tmp_path, scheme)
    assert quant["quant_method"] == "compressed-tensors"
    want = library_weights(tmp_path, quant)
    assert len(want) == 14  # q, k, v, o, gate, up, down in both layers; lm_head left alone
    view = open_dequantized(Checkpoint(tmp_path), quantization(json.loads((tmp_path / "config.json").read_text())))
    assert view.problems() == []
    names = set(view.names())
    stored = SafetensorsFile(tmp_path / "model.safetensors")
    assert any(n.endswith(".input_scale") for n in stored.names()) == (scheme == "fp8_w8a8")
    stored.close()
    assert set(want) <= names and not any(n.endswith(("_packed", "_scale", "_shape", "_zero_point")) for n in names)
    for name, ref in want.items():
        ours = torch.from_numpy(view.get(name)).to(ref.dtype)
        assert view.info(name) == ("F32", tuple(ref.shape))
        assert torch.equal(ours, ref), name
    view.close()
    if any(w.dtype != torch.float32 for w in want.values()):  # (NVFP4: the library rounds to bf16; ours equal
        return                                                   # that rounded, above, and are float32 exact)
    # the model they make: the reference model carrying the library's weights gives our logits
    ref_model = build_reference("qwen3")
    with torch.no_grad():
        for name, p in ref_model.named_parameters():
            if name in want:
                p.copy_(want[name].float())
    ours = load_pretrained(tmp_path, dtype="float32")
    err = np.abs(np.asarray(ours(IDS, MASK)) - reference_logits(ref_model))[MASK].max()
    assert err <= 1e-5, f"{scheme}: max |dlogits| {err:.2e}"
    if scheme == "w4_group":  # an export is an ordinary unquantized checkpoint transformers loads alike
        save_pretrained(ours, tmp_path / "export")
        conf = json.loads((tmp_path / "export" / "config.json").read_text())
        assert "quantization_config" not in conf
        again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
        assert np.abs(reference_logits(again) - reference_logits(ref_model))[MASK].max() <= 1e-5


def test_unpacking_against_the_librarys_packing():
    """Every width 1-8 bits, odd row lengths (a last word part filled), leading expert dimensions."""
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        for shape in ((3, 37), (2, 4, 64)):
            q = rng.integers(lo, hi + 1, shape).astype(np.int8)
            packed = pack_to_int32(torch.from_numpy(q), bits).numpy()
            np.testing.assert_array_equal(unpack_int(packed, bits, shape[-1]), q, err_msg=f"{bits} bits {shape}")


def test_quantized_experts_selected_by_regex(tmp_path):
    """Kimi-K2-Thinking's layout: only the routed experts (one tensor per expert) packed INT4 in groups of 32,
    chosen by a regex target; attention, shared experts and dense layers as released. Loads to the weights the
    library decompresses."""
    mdef, _ = create(FAMILY_CONFIGS["deepseek_v3"], abstract=True)
    save_pretrained(mdef, random_params(mdef, 2), tmp_path / "bf16")
    src = SafetensorsFile(tmp_path / "bf16" / "model.safetensors")
    args = _int(4, symmetric=True, strategy="group", group_size=4)
    pattern = r"re:.*mlp\.experts\.\d+\.(gate|up|down)_proj$"
    comp = BaseCompressor.get_value_from_registry("pack-quantized")
    scheme = QuantizationScheme(targets=[pattern], weights=args)
    out, want = {}, {}
    for name in src.names():
        a = np.array(src.get(name), np.float32)
        if ".mlp.experts." not in name:
            out[name] = ("F32", a)
            continue
        w = torch.from_numpy(a)
        s, _ = calculate_qparams(*_minmax(w, args), args)
        packed = comp.compress({"weight": w, "weight_scale": s}, scheme)
        mod = name[:-len(".weight")]
        out.update({f"{mod}.weight_packed": ("I32", packed["weight_packed"].numpy()),
                    f"{mod}.weight_scale": ("F32", packed["weight_scale"].numpy()),
                    f"{mod}.weight_shape": ("I64", packed["weight_shape"].numpy())})
        want[name] = comp.decompress(packed, scheme)["weight"].numpy()
    src.close()
    d = tmp_path / "int4"
    d.mkdir()
    write_file(d / "model.safetensors", [(n, dt, a.shape) for n, (dt, a) in out.items()], lambda n: out[n][1])
    conf = json.loads((tmp_path / "bf16" / "config.json").read_text())
    conf["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": [pattern], "weights": args.model_dump(),
                                      "input_activations": None, "format": "pack-quantized"}},
        "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*"]}
    (d / "config.json").write_text(json.dumps(conf))
    assert len(want) == 2 * 8 * 3  # two MoE layers of 8 experts
    view = open_dequantized(Checkpoint(d), quantization(conf))
    assert view.problems() == []
    for name, ref in want.items():
        np.testing.assert_array_equal(view.get(name), ref)
    view.close()
    model = load_pretrained(d, dtype="float32")
    got = model.params["layers"]["mlp"]["gate"]  # [L, E, d, ffn]
    e0 = want["model.layers.1.mlp.experts.0.gate_proj.weight"]  # (the first MoE layer: layer 0 is dense)
    np.testing.assert_array_equal(np.asarray(got)[0, 0], e0.T)


@pytest.mark.parametrize("edit, match", [
    ({"sparsity_config": {"format": "sparse-24-bitmask"}}, r"sparsity_config format 'sparse-24-bitmask' is not"),
    ({"transform_config": {"config_groups": {"u": {}}}}, r"transform_config \(rotated weights\) is not supported"),
    ({"config_groups": {"group_0": {"targets": ["Linear"], "format": "marlin-24",
                                    "weights": {"num_bits": 4, "type": "int", "strategy": "channel"}}}},
     r"config_groups.group_0: format 'marlin-24' is not supported"),
    ({"config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 6, "type": "float",
                                                                        "strategy": "tensor"}}}},
     r"config_groups.group_0.weights: float 6-bit weights with strategy 'tensor' are not supported"),
    ({"config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
                                                                        "strategy": "group"}}}},
     r"strategy 'group' needs a positive group_size, got None"),
])
def test_compressed_tensors_options_this_loader_cannot_decode_are_refused(tmp_path, edit, match):
    quant = compressed_checkpoint(tmp_path, "w4_group")
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["quantization_config"] = {**quant, **edit}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(HFConfigError, match=match):
        config_from_hf(tmp_path)


def test_compressed_tensors_that_do_not_decode_are_named(tmp_path):
    """A lost scale, a packed width that does not fit weight_shape, a module no config group targets and
    activation-ordered groups: each named on its tensor, nothing loaded."""
    quant = compressed_checkpoint(tmp_path, "w4_group")
    f = SafetensorsFile(tmp_path / "model.safetensors")
    tensors = {n: (f.info(n)[0], np.asarray(f.get(n))) for n in f.names()}
    f.close()
    del tensors["model.layers.0.self_attn.q_proj.weight_scale"]
    tensors["model.layers.0.mlp.up_proj.weight_shape"] = ("I64", np.array([96, 128]))
    tensors["model.layers.1.mlp.down_proj.weight_g_idx"] = ("I32", np.zeros(96, np.int32))
    write_file(tmp_path / "model.safetensors", [(n, dt, a.shape) for n, (dt, a) in tensors.items()],
               lambda n: tensors[n][1])
    conf = json.loads((tmp_path / "config.json").read_text())
    group = {**quant["config_groups"]["group_0"],
             "targets": ["re:.*layers\\.[01]\\.(self_attn|mlp)\\.(q|k|v|o|up|down|gate)_proj"]}
    conf["quantization_config"] = {**quant, "ignore": ["lm_head", "model.layers.1.self_attn.k_proj"],
                                   "config_groups": {"group_0": group}}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError) as e:
        load_params(tmp_path, create(config_from_hf(tmp_path), abstract=True)[0])
    msg = str(e.value)
    assert "q_proj.weight_packed without its model.layers.0.self_attn.q_proj.weight_scale" in msg
    assert "packed model.layers.0.mlp.up_proj.weight_packed [96, 8] does not hold 4-bit values of weight_shape " \
           "[96, 128]" in msg
    assert "activation-ordered groups (weight_g_idx) are not supported" in msg
    assert "model.layers.1.self_attn.k_proj.weight_packed is quantized but no quantization_config.config_groups " \
           "entry targets model.layers.1.self_attn.k_proj" in msg
