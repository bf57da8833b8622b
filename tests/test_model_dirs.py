"""Every problem with a model directory is one line ``input error: <file>: <what>`` and exit code 2, from
``run``, ``eval``, ``export`` and ``plan``, before anything is written or compiled."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from reasoning_rl.models import TransformerConfig, check_model_dir, create, save_pretrained
from reasoning_rl.models.safetensors_io import Checkpoint, write_file

from reasoning_rl.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_models_layers import random_params

TINY = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=40,
                         tie_embeddings=False, family="llama")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models

    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    mdef, _ = create(TINY, abstract=True)
    save_pretrained(mdef, random_params(mdef, 0), d)
    vocab = {"<unk>": 0, "</s>": 1, **{str(i): i + 2 for i in range(10)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return d


def _tensors(d: Path) -> dict:
    ck = Checkpoint(d)
    out = {k: np.array(ck.get(k)) for k in ck.names()}
    ck.close()
    return out


def _write(d: Path, tensors: dict, name: str = "model.safetensors", dtypes: dict | None = None):
    dtypes = dtypes or {}
    write_file(d / name, [(k, dtypes.get(k, "F32"), v.shape) for k, v in tensors.items()], tensors.__getitem__)


def _missing_dir(d):
    shutil.rmtree(d)
    return d, "no such model directory"


def _no_config(d):
    (d / "config.json").unlink()
    return d / "config.json", "missing"


def _bad_json(d):
    (d / "config.json").write_text('{"model_type": "llama", ')
    return d / "config.json", "cannot be read (not valid JSON"


def _model_type(d):
    conf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**conf, "model_type": "mamba"}))
    return d / "config.json", "model_type 'mamba' is not supported"


def _option(d):
    conf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**conf, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0,
                                                                          "original_max_position_embeddings": 7}}))
    return d / "config.json", "rope_scaling.original_max_position_embeddings=7 is not supported"


def _no_tokenizer(d):
    (d / "tokenizer.json").unlink()
    return d, "no tokenizer (tokenizer.json, tokenizer.model or tiktoken.model)"


def _tiktoken_only(d):  # Kimi K2's releases: a tiktoken rank file whose splitting pattern is in a Python class
    (d / "tokenizer.json").unlink()
    (d / "tiktoken.model").write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    return d / "tokenizer_config.json", "a tiktoken.model needs its splitting pattern, from the tokenizer class"


def _tiktoken_corrupt(d):
    (d / "tokenizer.json").unlink()
    (d / "tiktoken.model").write_text("IQ== 0\nIg== one\n")
    (d / "tokenization_kimi.py").write_text('class TikTokenTokenizer:\n    pat_str = r"\\S+|\\s+"\n')
    conf = json.loads((d / "tokenizer_config.json").read_text())
    conf["auto_map"] = {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(conf))
    return d / "tiktoken.model", "line 2: expected '<base64 token> <rank>'"


def _bad_tokenizer(d):
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    return d / "tokenizer.json", "not a readable tokenizer"


def _no_weights(d):
    (d / "model.safetensors").unlink()
    return d, "no model.safetensors"


def _truncated(d):
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    return f, f"truncated: {len(data) - 1000} bytes, its header describes {len(data)}"


def _corrupt(d):
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:24] = b"\xff" * 16
    f.write_bytes(bytes(data))
    return f, "header is not valid JSON"


def _wrong_shape(d):
    t = _tensors(d)
    t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"][:48]
    _write(d, t)
    return d / "model.safetensors", "model.embed_tokens.weight: shape [48, 32] in the checkpoint, config.json implies [64, 32]"


def _wrong_dtype(d):
    t = _tensors(d)
    t["model.norm.weight"] = t["model.norm.weight"].astype(np.int32)
    _write(d, t, dtypes={"model.norm.weight": "I32"})
    return d / "model.safetensors", "model.norm.weight: dtype I32 is not supported"


def _index_names_missing_file(d):
    t = _tensors(d)
    (d / "model.safetensors").unlink()
    names = sorted(t)
    a, b = names[: len(names) // 2], names[len(names) // 2:]
    _write(d, {k: t[k] for k in a}, "model-00001-of-00002.safetensors")
    wm = {**{k: "model-00001-of-00002.safetensors" for k in a}, **{k: "model-00002-of-00002.safetensors" for k in b}}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return d / "model.safetensors.index.json", "names model-00002-of-00002.safetensors, which is not in"


BREAK = {f.__name__.lstrip("_"): f for f in (
    _missing_dir, _no_config, _bad_json, _model_type, _option, _no_tokenizer, _tiktoken_only, _tiktoken_corrupt,
    _bad_tokenizer,
    _no_weights, _truncated, _corrupt, _wrong_shape, _wrong_dtype, _index_names_missing_file)}


def _config(tmp_path: Path, model: Path) -> Path:
    cfg = {"model": {"path": str(model)}, "tokenizer": {"kind": "hf"}, "run_dir": str(tmp_path / "run"),
           "task": {"name": "arithmetic", "digits": 1, "held_out_size": 4},
           "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8},
           "stages": [{"name": "grpo", "kind": "grpo", "steps": 1}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_line_error(capsys, code: int, file: Path, what: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"input error: {file}: "), err
    assert what in err, err
    return err


def test_nothing_is_printed_after_the_error_line(good, tmp_path, capsys):
    """A failed run's last stderr line is its cause and fix: warnings raised after it, while the interpreter tears
    down what the failure abandoned (an aborted save's coroutine, an unclosed writer), are not printed."""
    import warnings

    d = tmp_path / "model"
    shutil.copytree(good, d)
    _option(d)
    assert main(["run", str(_config(tmp_path, d)), "--no-progress"]) == 2
    with warnings.catch_warnings(record=True) as late:
        warnings.warn("coroutine 'save' was never awaited", RuntimeWarning)
    assert not late


@pytest.mark.parametrize("case", list(BREAK))
def test_run_refuses_a_broken_model_dir(good, tmp_path, capsys, case):
    d = tmp_path / "model"
    shutil.copytree(good, d)
    file, what = BREAK[case](d)
    cfg = _config(tmp_path, d)
    err = _one_line_error(capsys, main(["run", str(cfg), "--no-progress"]), file, what)
    assert err.endswith("(model.path)")
    assert not (tmp_path / "run").exists()  # refused before the run dir was written


def test_the_good_dir_passes(good):
    cfg = check_model_dir(good)
    assert cfg.family == "llama" and cfg.vocab_size == 64


@pytest.mark.parametrize("case", ["missing_dir", "model_type", "truncated", "wrong_shape"])
def test_eval_export_and_plan_refuse_it_too(good, tmp_path, capsys, case):
    d = tmp_path / "model"
    shutil.copytree(good, d)
    cfg = _config(tmp_path, d)
    assert main(["plan", str(cfg), "--devices", "1"]) == 0  # the intact directory plans
    capsys.readouterr()
    file, what = BREAK[case](d)
    if case == "missing_dir":
        # eval names its target; plan and export (of a run made with this model) name model.path
        _one_line_error(capsys, main(["eval", str(d), "--config", str(cfg)]), d, "no such directory")
    else:
        _one_line_error(capsys, main(["eval", str(d), "--config", str(cfg)]), file, what)
    _one_line_error(capsys, main(["plan", str(cfg), "--devices", "1"]), file, what)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(cfg, run / "config.yaml")  # a run whose model dir has since broken
    code = main(["export", str(run), str(tmp_path / "out")])
    if case in ("truncated", "wrong_shape"):  # export takes the run's weights, never the directory's
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("config error:") and "no stage checkpoints" in err, err
    else:
        _one_line_error(capsys, code, file, what)
