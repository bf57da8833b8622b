"""Reward models in the trainer: the Bradley-Terry loss, the helpfulness judge and pairs, a reward_model
stage feeding multi-task RL (tests/configs/rm_tiny.yaml: summary, metrics side by side, export, resume),
the reward-model reward on 8 CPU devices against 1, and bad input refused before compute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import compared_env, run_here
from reasoning_rl import cli
from reasoning_rl import config as C
from reasoning_rl.algorithms.preference import bradley_terry
from reasoning_rl.config import ConfigError, TaskConfig
from reasoning_rl.data.helpfulness import HelpfulnessTask, judge, rubric
from reasoning_rl.metrics import read_metrics
from reasoning_rl.pipeline import run_pipeline

HERE = Path(__file__).parent
RM_TINY = str(HERE / "configs" / "rm_tiny.yaml")


def load(run_dir, **over):
    raw = C.load_raw(RM_TINY)
    raw["run_dir"] = str(run_dir)
    for k, v in over.items():
        C.apply_override(raw, f"{k}={v}")
    return C.from_dict(raw)


# --------------------------------------------------------------------------- pure pieces


def test_bradley_terry_loss_margin_and_centering():
    c, r = jnp.asarray([2.0, 0.0, 1.0]), jnp.asarray([1.0, 1.0, 1.0])
    s, n, m = bradley_terry(c, r, jnp.zeros(3))
    want = -np.log(1 / (1 + np.exp(-np.asarray([1.0, -1.0, 0.0]))))
    np.testing.assert_allclose(float(s), want.sum(), rtol=1e-6)
    assert float(n) == 3 and float(m["pair_accuracy"][0]) == 1.0  # a tie is not a win
    s_m, _, _ = bradley_terry(c, r, jnp.full(3, 0.5))  # a margin asks for a wider gap: more loss
    assert float(s_m) > float(s)
    s_c, _, _ = bradley_terry(c, r, jnp.zeros(3), center=0.1)
    np.testing.assert_allclose(float(s_c) - float(s), 0.1 * float(jnp.sum((c + r) ** 2)), rtol=1e-6)
    g = jax.grad(lambda x: bradley_terry(x, r, jnp.zeros(3))[0])(c)
    assert bool(jnp.all(g < 0))  # raising the chosen score lowers the loss


def test_helpfulness_judge_and_pairs():
    topics = ["d", "b", "f"]
    assert judge("<think>d,b,f</think><answer>d,b,f!</answer>", topics) == pytest.approx(1.0)
    assert rubric("<answer>b,d,f.</answer>", topics) == {"coverage": 1.0, "precision": 1.0, "order": 0.0,
                                                          "courtesy": 0.0}
    assert judge("<answer>d,um,b!</answer>", topics) == pytest.approx(0.4 * 2 / 3 + 0.2)
    assert judge("", topics) == 0.0
    task = HelpfulnessTask(TaskConfig(name="helpfulness", terms=2, held_out_size=32))
    for i in range(50):
        p, ex = task.pair("train", i), task.example("train", i)
        assert p["prompt"] == ex.prompt and p["chosen"] != p["rejected"]
        assert judge(p["chosen"], ex.extra["topics"]) > judge(p["rejected"], ex.extra["topics"])
    assert task.pair("held_out", 3) == task.pair("held_out", 3)  # a pure function of the index
    demo = np.mean([judge(task.example("train", i).solution, task.example("train", i).extra["topics"])
                    for i in range(300)])
    assert 0.6 < demo < 0.8  # mediocre demonstrations: room for RL


# --------------------------------------------------------------------------- the tiny pipeline


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cli.enable_compile_cache()
    d = tmp_path_factory.mktemp("rm") / "run"
    return d, run_pipeline(load(d), d, progress=False)


@pytest.mark.slow
def test_reward_model_stage_feeds_multitask_rl(run):
    d, summary = run
    assert list(summary) == ["sft", "rm", "helpfulness", "mt"]
    rm = summary["rm"]
    assert rm["kind"] == "reward_model" and rm["num_pairs"] == 16 and 0 <= rm["pair_accuracy"] <= 1
    h = summary["helpfulness"]
    assert h["stage"] == "mt" and h["reward_model"] == "rm" and h["pair_accuracy"] == rm["pair_accuracy"]
    assert {"judge_before", "judge_after", "arithmetic_before", "arithmetic_after"} <= h.keys()
    assert h["arithmetic_after"] == summary["mt"]["tasks"]["arithmetic"]["pass@1"]
    assert set(summary["mt"]["tasks"]) == {"arithmetic", "helpfulness"}  # pairs are not an eval task
    recs = read_metrics(d)
    rms = [r for r in recs if r["stage"] == "rm" and "held_out/problems" not in r]
    assert [r["step"] for r in rms] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rms)
    curve = [r for r in recs if r["stage"] == "rm" and "held_out/problems" in r]  # eval.every: 2 on 8 pairs
    assert [(r["step"], r["held_out/problems"]) for r in curve] == [(0, 8), (2, 8), (3, 16)]
    assert curve[-1]["held_out/pair_accuracy"] == rm["pair_accuracy"]
    assert all(0 <= r["held_out/pair_accuracy"] <= 1 for r in curve)
    mt = [r for r in recs if r["stage"] == "mt"]
    # reward hacking is visible: the reward model's score and the hidden judge's, side by side
    assert all({"helpfulness/rm", "helpfulness/judge", "arithmetic/accuracy"} <= r.keys() for r in mt)
    assert not any("judge" in k for k in mt[0] if k.startswith("arithmetic/"))
    man = json.loads((d / "checkpoints" / "rm" / "manifest.json").read_text())
    assert man["kind"] == "reward_model" and man["parent"]["stage"] == "sft"
    assert json.loads((d / "checkpoints" / "mt" / "manifest.json").read_text())["parent"]["stage"] == "sft"


@pytest.mark.slow
def test_exported_reward_model_scores_like_the_stage(run, tmp_path):
    from reasoning_rl.models import load_reward_model

    from reasoning_rl.pipeline import Stages, load_stage_params
    from reasoning_rl.rewards.reward_model import RewardModelScorer, rm_tokens
    from reasoning_rl.stages.common import Runtime

    d, _ = run
    cfg = load(d)
    rt = Runtime(cfg, d)
    stage = C.stage(cfg, "rm")
    rrt = Stages(rt).runtime(stage)
    params = load_stage_params(rrt, stage)
    task = rt.task_for(stage.task)
    pairs = [task.pair("held_out", i) for i in range(6)]
    prompts, texts = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    scorer = RewardModelScorer(rt, rrt.mdef, params, batch_size=4)
    ours = scorer(prompts, texts)
    assert scorer.forwards == 2  # one forward per batch of rows, not one per row
    hf = load_reward_model(d / "checkpoints" / "rm" / "hf")
    seqs = [rm_tokens(rt.tok, p, t) for p, t in zip(prompts, texts)]
    width = max(map(len, seqs))
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), bool)
    for i, s in enumerate(seqs):  # left padding here, right padding in the scorer
        ids[i, width - len(s):], mask[i, width - len(s):] = s, True
    np.testing.assert_allclose(np.asarray(hf(ids, mask)), ours, atol=1e-5)
    assert cli.main(["export", str(d), str(tmp_path / "ex"), "--stage", "rm"]) == 0  # the same, on demand
    np.testing.assert_allclose(np.asarray(load_reward_model(tmp_path / "ex")(ids, mask)), ours, atol=1e-5)
    assert cli.main(["eval", str(d), "--stage", "rm"]) == 2  # a reward model is not sampled from
    # the export is a reward for another run: same tokenizer, read from the directory
    raw = C.load_raw(RM_TINY)
    raw["stages"] = raw["stages"][:1] + [{
        "name": "mt2", "kind": "grpo", "steps": 1, "tasks": [{"name": "helpfulness", "rewards": [
            {"name": "rm", "kind": "reward_model", "path": str(d / "checkpoints" / "rm" / "hf")}]}]}]
    raw["tokenizer"] = {"path": str(d / "tokenizer.model")}
    raw["stages"][0]["steps"] = 1
    out = run_pipeline(C.from_dict({**raw, "run_dir": str(tmp_path / "r")}), tmp_path / "r", progress=False)
    assert "helpfulness" in out and out["helpfulness"]["reward_model"].endswith("hf")


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_keeps_the_reward_model(run, tmp_path):
    import shutil

    d, summary = run
    copy = tmp_path / "run"
    shutil.copytree(d, copy)
    for name in ("mt",):
        shutil.rmtree(copy / "checkpoints" / name)
    again = run_pipeline(load(d), copy, progress=False)  # the same config (its run_dir is part of the hash)
    assert again["rm"] == summary["rm"] and set(again["helpfulness"]) == set(summary["helpfulness"])
    assert again["helpfulness"]["judge_before"] == summary["helpfulness"]["judge_before"]


# --------------------------------------------------------------------------- 8 devices = 1 device

SCRIPT = """
import json, sys
from pathlib import Path
from reasoning_rl import config as C
from reasoning_rl.stages.common import Runtime
from reasoning_rl.stages.reward_model import RewardRuntime
from reasoning_rl.stages.sources import StageData

raw = C.load_raw(sys.argv[1]); raw["mesh"] = json.loads(sys.argv[3])
cfg = C.from_dict({**raw, "run_dir": sys.argv[2]})
rt = Runtime(cfg, sys.argv[2])
rrt = RewardRuntime.of(rt, C.stage(cfg, "rm"))
rt.reward_models["rm"] = (rrt.mdef, rrt.init_params(3))
data = StageData(rt, C.stage(cfg, "mt"))
rows = [data.fetch(i) for i in range(40)]
texts = [r["solution"] for r in rows]
scored = data.rewarder()(texts, rows)
print(json.dumps({"devices": len(rt.mesh.devices.flat), "total": scored.result.total.tolist(),
                  "rm": scored.result.per_reward["helpfulness/rm"].tolist(),
                  "judge": scored.extra["helpfulness/judge"].tolist()}))
"""


def _score_on(n_devices: int, mesh: dict, tmp: Path) -> dict:
    env = compared_env(n_devices)
    tmp.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-c", SCRIPT, RM_TINY, str(tmp), json.dumps(mesh)], capture_output=True,
                       text=True, timeout=300, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_reward_model_reward_on_8_devices_equals_1(tmp_path):
    one = _score_on(1, {"data": -1}, tmp_path / "one")
    (tmp_path / "eight").mkdir()
    (tmp_path / "eight" / "tokenizer.model").write_bytes((tmp_path / "one" / "tokenizer.model").read_bytes())
    eight = _score_on(8, {"data": 4, "fsdp": 2}, tmp_path / "eight")
    assert one["devices"] == 1 and eight["devices"] == 8
    rm = np.asarray(one["rm"])
    assert np.count_nonzero(rm) > 0 and len(set(np.round(rm, 5))) > 1
    np.testing.assert_allclose(eight["rm"], one["rm"], atol=2e-5)
    np.testing.assert_allclose(eight["total"], one["total"], atol=1e-4)
    assert eight["judge"] == one["judge"]


def test_pairs_pad_to_their_batch_longest_and_padding_changes_no_score(tmp_path):
    from reasoning_rl.models import create
    from reasoning_rl.models.config import TransformerConfig
    from reasoning_rl.models.reward import reward_def

    from reasoning_rl.algorithms.preference import pair_scores
    from reasoning_rl.stages.reward_model import bucket, pair_batch
    from reasoning_rl.tokenizer import train_sentencepiece

    assert [bucket(n) for n in (1, 16, 17, 33, 64, 65, 97, 129, 300)] == [16, 16, 32, 48, 64, 96, 128, 192, 384]
    task = HelpfulnessTask(TaskConfig(name="helpfulness", terms=2))
    tok = train_sentencepiece(task.corpus(200), tmp_path / "t.model", 48)
    pairs = [{**task.pair("train", i), "margin": 0.0} for i in range(6)]
    longest = max(len(tok.encode(p["prompt"])) + len(tok.encode(p[k])) for p in pairs for k in ("chosen", "rejected"))
    b = pair_batch(tok, pairs, limit=2048)
    assert b["tokens"].shape == (6, 2, bucket(longest)) and b["valid"].sum(-1).max() == longest
    assert pair_batch(tok, pairs, limit=longest - 1)["valid"].sum(-1).max() == longest - 1  # cut at the context
    wide = pair_batch(tok, pairs, limit=2048, width=bucket(longest) + 32)
    rdef = reward_def(TransformerConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                        head_dim=16, ffn_dim=64))
    params = {"backbone": {k: v for k, v in create(rdef.cfg, 0)[1].items() if k != "lm_head"},
              "score": rdef.init_score(1)}
    s1 = pair_scores(rdef, params, jnp.asarray(b["tokens"]), jnp.asarray(b["valid"]))
    s2 = pair_scores(rdef, params, jnp.asarray(wide["tokens"]), jnp.asarray(wide["valid"]))
    np.testing.assert_allclose(np.asarray(s2), np.asarray(s1), atol=1e-5)


# --------------------------------------------------------------------------- bad input


def _cli(tmp_path, raw: dict) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(raw))
    p = run_here("run", str(path), "--no-progress", "--no-plots", "--run-dir", str(tmp_path / "run"))
    return p.returncode, p.stderr.strip()


def _pairs_file(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rm_config(task: dict, **stage) -> dict:
    raw = C.load_raw(RM_TINY)
    raw["stages"] = [{"name": "rm", "kind": "reward_model", "steps": 1, "batch_size": 2, "task": task, **stage}]
    return raw


GOOD = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(6)]


@pytest.mark.parametrize("bad, needle", [
    ({"prompt": "q", "chosen": "a"}, ":3: field 'rejected' (rejected) is missing"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, ":3: fields 'chosen' and 'rejected' are equal"),
    ({"prompt": "q", "chosen": 3, "rejected": "a"}, ":3: field 'chosen' (chosen) must be a string"),
])
def test_bad_preference_rows_refused_before_compute(tmp_path, bad, needle):
    from reasoning_rl.data.files import DataError  # the CLI reports it on one line, exit status 2

    f = _pairs_file(tmp_path / "p.jsonl", GOOD[:2] + [bad] + GOOD[2:])
    raw = _rm_config({"name": "file", "preset": "preference", "path": f, "held_out_size": 2})
    with pytest.raises(DataError) as e:
        run_pipeline(C.from_dict({**raw, "run_dir": str(tmp_path / "run")}), tmp_path / "run", progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_preference_file_trains_a_reward_model(tmp_path):
    rows = [{"q": f"{i}+{i}=", "good": f"<answer>{2 * i}</answer>", "bad": f"<answer>{2 * i + 1}</answer>",
             **({"margin": 0.5} if i % 2 else {})} for i in range(12)]
    f = _pairs_file(tmp_path / "p.jsonl", rows)
    raw = _rm_config({"name": "file", "preset": "preference", "path": f, "held_out_size": 4,
                      "fields": {"prompt": "q", "chosen": "good", "rejected": "bad"}},
                     reward_model={"held_out_pairs": 4, "model": {"d_model": 16, "n_heads": 2, "n_kv_heads": 1,
                                                                  "ffn_dim": 32}})
    summary = run_pipeline(C.from_dict({**raw, "run_dir": str(tmp_path / "run")}), tmp_path / "run", progress=False)
    assert summary["rm"]["num_pairs"] == 4 and list(summary) == ["rm"]


def test_reward_model_tokenizer_must_match_the_policy(tmp_path):
    from reasoning_rl.models import TransformerConfig, save_reward_model
    from reasoning_rl.models.reward import reward_def

    rdef = reward_def(TransformerConfig(vocab_size=48, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                        head_dim=8, ffn_dim=32))
    from reasoning_rl.models.transformer import create

    _, bb = create(rdef.backbone.cfg, 0)
    hf = tmp_path / "hf"
    save_reward_model(rdef, {"backbone": bb, "score": rdef.init_score(0)}, hf, pad_token_id=0)
    from reasoning_rl.tokenizer import train_sentencepiece

    train_sentencepiece(["completely other text, zz yy xx ww"] * 50, hf / "tokenizer.model", 48)
    raw = C.load_raw(RM_TINY)
    raw["stages"] = [raw["stages"][0], {"name": "mt", "kind": "grpo", "steps": 1, "tasks": [
        {"name": "helpfulness", "rewards": [{"name": "rm", "kind": "reward_model", "path": str(hf)}]}]}]
    code, err = _cli(tmp_path, raw)
    assert code == 2 and "must share the policy's tokenizer" in err and len(err.splitlines()) == 1, err
    assert err.startswith("config error: stages[1].tasks[0].rewards[0].path: ")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first stage ran


@pytest.mark.parametrize("change, needle", [
    ({"stages.mt.tasks.1.rewards.0.stage": "nowhere"}, "'nowhere' is not a reward_model stage before 'mt'"),
    ({"stages.mt.tasks.1.rewards": "[{name: helpfulness_judge}]"}, "hidden judge"),
    ({"stages.mt.tasks.1.rewards": "[{name: format}]"}, "has no verifier"),
    ({"stages.mt.init": "rm"}, "is a reward model, not a policy"),
    ({"stages.rm.task.name": "arithmetic"}, "needs preference pairs"),
    ({"stages.rm.reward_model.model": "{d_model: 16}"}, "the backbone comes from init"),
    ({"stages.mt.tasks.1.rewards.0.path": "/x"}, "exactly one of stage"),
])
def test_config_errors_name_the_key(tmp_path, change, needle):
    with pytest.raises(ConfigError, match=needle):
        load(tmp_path, **change)
