"""What a run tells its user: progress lines off a terminal, the end-of-run table with each stage's gain,
the plot after every stage (empty panels saying why), the CLI's help, and the random-init refusal."""

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_here

from reasoning_rl import cli, progress, report
from reasoning_rl import config as C
from reasoning_rl.pipeline import check_random_init

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")


@pytest.fixture
def plain_progress():
    """Progress as it is off a terminal, a line per update; the defaults are put back afterwards."""
    saved = dict(progress._SETTINGS)
    progress.configure(every_s=0, enabled=True, terminal=False)
    yield
    progress._SETTINGS.update(saved)


# --------------------------------------------------------------------------- progress


def test_plain_progress_lines_carry_step_fields_rate_and_eta(plain_progress, caplog):
    caplog.set_level(logging.INFO, logger="reasoning_rl.progress")
    bar = progress.Progress("grpo", 5)
    assert bar.bar is None  # no tqdm off a terminal
    for i in range(3):
        bar.update(reward=0.5 + i / 10, acc=0.25, len=30.0)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("grpo: step 1/5 | reward 0.500 | acc 0.250 | len 30.0")
    assert lines[2].startswith("grpo: step 3/5 | reward 0.700")
    assert "s/step" in lines[2] and "| ETA " in lines[2]
    assert lines[-1].startswith("grpo: 3/5 steps in ") and "(stopped early)" in lines[-1]


def test_early_stopping_stage_says_so_and_its_eta_is_a_bound(plain_progress, caplog):
    caplog.set_level(logging.INFO, logger="reasoning_rl.progress")
    bar = progress.Progress("sft", 400, note="up to 400 steps, stops at loss 0.1")
    bar.update(loss=0.5)
    bar.update(loss=0.4)
    bar.close("stopped early: mean loss 0.0990 <= 0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert "step 2/400 (up to 400 steps, stops at loss 0.1)" in lines[1] and "ETA at most" in lines[1]
    assert "2/400 steps in" in lines[-1] and "stopped early: mean loss 0.0990" in lines[-1]


def test_periodic_lines_follow_every_s_and_no_progress_keeps_only_the_end(caplog):
    saved = dict(progress._SETTINGS)
    caplog.set_level(logging.INFO, logger="reasoning_rl.progress")
    try:
        progress.configure(every_s=3600, enabled=True, terminal=False)
        bar = progress.Progress("grpo", 10)
        for _ in range(9):
            bar.update(reward=1.0)
        bar.close()
        heads = [r.getMessage().split(" |")[0] for r in caplog.records]
        assert heads == ["grpo: 9/10 steps in 0 s (stopped early)"]
        caplog.clear()
        progress.configure(every_s=0, enabled=False)
        bar = progress.Progress("eval", 4, unit="completion")
        bar.advance(4)
        bar.close()
        assert [r.getMessage().split(" |")[0] for r in caplog.records] == ["eval: 4/4 completions in 0 s"]
    finally:
        progress._SETTINGS.update(saved)


def test_duration_is_rounded():
    assert [progress.duration(s) for s in (0.4, 59.6, 143.2, 3725.0)] == ["0 s", "1m 00s", "2m 23s", "1h 02m"]


def test_resume_point_names_skipped_stages_and_the_step_resumed_from(tmp_path):
    cfg = C.load(TINY)
    assert report.resume_point(cfg, tmp_path) == "a new run, from the first stage"
    (tmp_path / "checkpoints" / "sft").mkdir(parents=True)
    (tmp_path / "checkpoints" / "sft" / "manifest.json").write_text(
        json.dumps({"complete": True, "config_hash": cfg.hash()}))
    for step in ("2", "4", "6.orbax-checkpoint-tmp"):
        (tmp_path / "checkpoints" / "grpo" / step).mkdir(parents=True)
    assert report.resume_point(cfg, tmp_path) == "stages sft complete (skipped); stage grpo from its checkpoint at step 4"


# --------------------------------------------------------------------------- the end-of-run table


def _figures(p1, p4, maj, greedy, fmt=1.0, length=30.0, wall=143.2):
    return {"num_problems": 500, "samples_per_problem": 4, "temperature": 0.7, "pass@1": p1, "pass@4": p4,
            "maj@4": maj, "mean_response_tokens": length, "format_rate": fmt, "greedy_accuracy": greedy,
            "by_difficulty": {}, "wall_seconds": wall}


def test_end_of_run_table_shows_each_stage_and_its_gain_from_summary_json(tmp_path):
    cfg = C.load("configs/quickstart.yaml")
    grpo = cfg.stages[1]
    summary = {"sft": {"kind": "sft", "steps": 199, **_figures(0.405, 0.70, 0.55, 0.618, 0.99, 33.4, 58.04),
                       "stopped_early": {"step": 199, "mean_loss": 0.099}}}
    g = _figures(0.803, 0.95, 0.91, 0.934, 1.0, 30.2, 143.21689)
    summary["grpo"] = {"kind": "grpo", "steps": 150, **g,
                       "gain": report.stage_gain(cfg, grpo, g, {"kind": "stage", "stage": "sft"}, summary)}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    loaded = json.loads((tmp_path / "summary.json").read_text())
    gain = loaded["grpo"]["gain"]
    assert gain["over"] == "sft"
    for k in ("pass@1", "pass@4", "maj@4", "greedy_accuracy", "format_rate", "mean_response_tokens"):
        assert gain[k] == pytest.approx(loaded["grpo"][k] - loaded["sft"][k]), k
    assert not {"num_problems", "wall_seconds", "temperature"} & set(gain)

    table = report.format_table(loaded).splitlines()
    assert table[0].split() == ["stage", "kind", "steps", "pass@1", "pass@4", "maj@4", "greedy", "format",
                                "length", "wall", "gain", "pass@1", "/", "greedy"]
    sft_row, grpo_row = table[2], table[3]
    assert sft_row.split()[:4] == ["sft", "sft", "199", "(stopped"] and "58 s" in sft_row
    assert grpo_row.split()[:11] == ["grpo", "grpo", "150", "0.803", "0.950", "0.910", "0.934", "1.000",
                                     "30.2", "2m", "23s"]
    assert grpo_row.endswith("+0.398 / +0.316 over sft")
    text = report.format_report(loaded, tmp_path)
    assert f"summary:     {tmp_path / 'summary.json'}" in text and "143.2" not in text


def test_gain_needs_the_same_evaluation(tmp_path):
    raw = C.load_raw("configs/quickstart.yaml")
    C.apply_override(raw, "stages.grpo.eval.num_problems=100")
    cfg = C.from_dict(raw)
    summary = {"sft": {"kind": "sft", **_figures(0.4, 0.7, 0.5, 0.6)}}
    g = report.stage_gain(cfg, cfg.stages[1], _figures(0.8, 0.9, 0.9, 0.9), {"kind": "stage", "stage": "sft"},
                          summary)
    assert g["over"] == "sft" and "other eval settings" in g["not_comparable"] and "pass@1" not in g
    assert report.stage_gain(cfg, cfg.stages[0], {}, {"kind": "fresh"}, {}) is None
    hf = report.stage_gain(cfg, cfg.stages[1], {}, {"kind": "hf", "path": "/m"}, {})
    assert hf["over"] == "/m" and "did not evaluate" in hf["not_comparable"]
    # a held-out curve (its points on fewer problems) leaves the end-of-stage figures as they were
    C.apply_override(raw, "stages.grpo.eval.num_problems=500")
    C.apply_override(raw, "stages.grpo.eval.every=25")
    C.apply_override(raw, "stages.grpo.eval.every_problems=100")
    cfg = C.from_dict(raw)
    g = report.stage_gain(cfg, cfg.stages[1], _figures(0.8, 0.9, 0.9, 0.9), {"kind": "stage", "stage": "sft"},
                          summary)
    assert g["over"] == "sft" and "not_comparable" not in g and g["pass@1"] == pytest.approx(0.4)
    assert "n/a: started from a Hugging Face" in report.format_table({"grpo": {"kind": "grpo", "gain": hf}})


def test_gain_of_a_multi_task_stage_is_per_task_where_its_own_tasks_differ():
    """r1_tiny: 'multitask' (arithmetic + instruct) starts from 'rsft' (arithmetic): every stage is scored on
    both tasks, so the per-task figures compare, the top-level means (over different own tasks) do not."""
    cfg = C.load(Path(__file__).parent / "configs" / "r1_tiny.yaml")
    mt = C.stage(cfg, "multitask")

    def fig(a, i):
        return {**_figures((a + i) / 2, 0.9, 0.8, 0.7), "tasks": {"arithmetic": _figures(a, 0.9, 0.8, 0.7),
                                                                  "instruct": _figures(i, 0.5, 0.4, 0.3)}}

    summary = {"rsft": {"kind": "rejection_sft", **fig(0.2, 0.1)}}
    summary["rsft"]["pass@1"] = 0.2  # its own task only
    g = report.stage_gain(cfg, mt, fig(0.5, 0.4), {"kind": "stage", "stage": "rsft"}, summary)
    assert "pass@1" not in g and "not_comparable" not in g
    assert g["tasks"]["arithmetic"]["pass@1"] == pytest.approx(0.3)
    assert g["tasks"]["instruct"]["pass@1"] == pytest.approx(0.3)
    summary["multitask"] = {"kind": "grpo", **fig(0.5, 0.4), "gain": g}
    rows = report.format_table(summary).splitlines()
    assert rows[5].endswith("per task below (over rsft)") and rows[6].split()[0] == "arithmetic"
    assert rows[6].endswith("+0.300 / +0.000 over rsft")


# --------------------------------------------------------------------------- plots


def test_eval_tables_show_each_task_its_difficulties_and_the_budget_curve(tmp_path):
    """``eval`` without --json: the mean of the stage's own tasks, a row per task, pass@1 by difficulty per
    task, the accuracy-against-budget table, and which files were written (only those that exist)."""
    def task(p1, p4, n):
        return {"num_problems": n, "samples_per_problem": 4, "temperature": 0.7, "pass@1": p1, "pass@4": p4,
                "maj@4": p1, "greedy_accuracy": p4, "format_rate": 1.0, "mean_response_tokens": 30.25,
                "by_difficulty": {"0": {"n": n - 1, "pass@1": p1, "mean_response_tokens": 30.0},
                                  "1": {"n": 1, "pass@1": 0.0, "mean_response_tokens": 31.0}}}
    (tmp_path / "eval.json").write_text("{}")
    result = {"target": "runs/x", "stage": "rl", "out": str(tmp_path),
              "held_out": {"pass@1": 0.5, "pass@4": 0.75, "tasks": {"arithmetic": task(0.25, 0.5, 8),
                                                                      "code": task(0.75, 1.0, 8)}},
              "budget_forcing": {"budgets": [0, 16], "accuracy": [0.125, 0.875], "mean_think_tokens": [0.0, 15.5],
                                 "forced_rate": [1.0, 0.25], "format_rate": [0.5, 1.0], "num_problems": 8,
                                 "samples": 1, "greedy": True, "extend": False, "task": "arithmetic"}}
    lines = report.format_eval(result).splitlines()
    assert lines[0] == "held-out evaluation of rl (runs/x): 8 problems x 4 samples at T=0.7"
    assert lines[1].split() == ["stage", "/", "task", "pass@1", "pass@4", "maj@4", "greedy", "format", "length"]
    rows: dict = {}
    for ln in lines:  # the first row of each name: the figures table comes before the difficulty table
        rows.setdefault(ln.split()[0] if ln.strip() else "", ln.split())
    assert rows["rl"] == ["rl", "(mean", "of", "its", "own", "tasks)", "0.500", "0.750", "-", "-", "-", "-"]
    assert rows["arithmetic"][1:] == ["0.250", "0.500", "0.250", "0.500", "1.000", "30.2"]
    assert rows["code"][1:3] == ["0.750", "1.000"]
    assert ["code", "1", "1", "0.000", "31.0"] in [ln.split() for ln in lines]  # task, difficulty, n, pass@1
    assert any(ln.startswith("accuracy against thinking budget (arithmetic, 8 problems, greedy)") for ln in lines)
    assert ["16", "0.875", "15.5", "0.250", "1.000"] in [ln.split() for ln in lines]
    assert lines[-1] == f"written: {tmp_path}{os.sep} (eval.json)"


def test_empty_panels_say_why(tmp_path):
    cfg = C.load(TINY)
    C.dump(cfg, tmp_path / "config.yaml")
    recs = [{"stage": "sft", "step": 1, "loss": 3.0},
            {"stage": "grpo", "step": 1, "loss": 0.1, "reward_mean": 0.2, "accuracy": 0.1,
             "response_len": 12.0, "entropy": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    from reasoning_rl.plot import panel_notes, plot_training

    notes = panel_notes(tmp_path)
    assert list(notes) == ["kl"] and notes["kl"].startswith("KL not computed: beta = 0")
    sft_only = panel_notes(tmp_path, recs[:1])
    assert set(sft_only) == {"reward_mean", "accuracy", "response_len", "kl", "entropy"}
    assert sft_only["kl"] == "KL not computed: no GRPO stage"
    assert "GRPO stages only" in sft_only["reward_mean"]
    assert plot_training(tmp_path).stat().st_size > 10_000


# --------------------------------------------------------------------------- help


def _subparsers(ap):
    return next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))


def test_every_subcommand_and_option_has_one_line_of_help():
    ap = cli._parser()
    sub = _subparsers(ap)
    assert set(sub.choices) == {"run", "eval", "plan", "export", "plot"}
    top = ap.format_help()
    for name, choice in sub._name_parser_map.items():
        helped = {a.dest: a.help for a in sub._choices_actions}
        assert helped.get(name) and "\n" not in helped[name], name
        assert name in top
        assert f"reasoning-rl {name} " in top  # an example of each
        for action in choice._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
            assert "\n" not in action.help, (name, action.dest)
    for opt in ("--no-plots", "--json", "--no-progress", "--set", "--run-dir"):
        assert opt in sub.choices["run"].format_help()


def test_no_plots_is_the_config_switch_log_plots():
    from reasoning_rl import cli

    def plots(*argv):
        return cli._load_config(cli._parser().parse_args(["run", TINY, *argv])).log.plots

    assert plots("--set", "log.plots=true") is True
    assert plots("--set", "log.plots=true", "--no-plots") is False  # the flag wins over the config
    assert plots() is False  # tiny.yaml's own setting


# --------------------------------------------------------------------------- random init


def test_rl_stage_from_random_weights_is_refused_unless_allowed(caplog):
    raw = C.load_raw(TINY)
    raw["stages"] = [{"name": "grpo", "kind": "grpo", "steps": 2}]
    with pytest.raises(C.ConfigError, match=r"^stages\[0\]\.allow_random_init: grpo stage 'grpo' would start "
                       r"from random weights \(no init, no earlier stage, no model.path\)"):
        check_random_init(C.from_dict(raw))
    raw["stages"][0]["allow_random_init"] = True
    caplog.set_level(logging.WARNING, logger="reasoning_rl")
    check_random_init(C.from_dict(raw))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "grpo: starts from random weights" in warned[0]
    assert C.from_dict(raw).hash() == C.from_dict({**raw, "stages": [{**raw["stages"][0],
                                                                      "allow_random_init": False}]}).hash()
    # a cold start of 0 steps leaves the next stage at random weights too; a trained one does not
    raw = C.load_raw(TINY)
    C.apply_override(raw, "stages.sft.steps=0")
    C.apply_override(raw, "stages.sft.allow_empty=true")  # a zero-step stage is itself refused otherwise
    with pytest.raises(C.ConfigError, match=r"stages\[1\].allow_random_init: .*init 'sft' trains 0 steps"):
        check_random_init(C.from_dict(raw))
    check_random_init(C.load(TINY))
    raw = C.load_raw(TINY)
    raw["model"] = {"path": "/some/hf/model"}
    raw["stages"] = [{"name": "grpo", "kind": "grpo", "steps": 2}]
    check_random_init(C.from_dict(raw))  # weights from model.path


def test_ppo_stage_from_random_weights_is_refused_too():
    raw = C.load_raw(TINY)
    raw["stages"] = [{"name": "ppo", "kind": "ppo", "steps": 2, "critic": {}}]
    with pytest.raises(C.ConfigError, match=r"^stages\[0\]\.allow_random_init: ppo stage 'ppo' would start"):
        check_random_init(C.from_dict(raw))


def test_cli_refuses_random_init_with_one_line_and_exit_2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["run", TINY, "--set", "stages.sft.steps=0", "--set", "stages.sft.allow_empty=true",
                     "--run-dir", str(run_dir)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("config error")]
    assert len(err) == 1 and "allow_random_init" in err[0]
    assert not run_dir.exists()  # before anything is written


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_with_stderr_to_a_file_logs_progress_and_prints_the_table(tmp_path):
    """Off a terminal: start-up facts, plain step lines (reward, accuracy, length, s/step, ETA), evaluation
    progress, a plot after each stage; on stdout the table, whose gain is summary.json's."""
    run_dir = tmp_path / "run"
    # an empty matplotlib config dir, as on a fresh cluster account: matplotlib builds its font cache and
    # says so at INFO, which is not the run's story
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    with open(tmp_path / "stderr.txt", "w") as err:
        p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--run-dir", str(run_dir),
                            "--set", "log.every_s=0", "--set", "stages.grpo.steps=3", "--set", "log.plots=true"],
                           stdout=subprocess.PIPE, stderr=err, text=True, timeout=600, check=False, env=env)
    log = (tmp_path / "stderr.txt").read_text()
    assert p.returncode == 0, log[-3000:]
    assert (tmp_path / "mpl").is_dir()  # the plot did build matplotlib's cache there
    loggers = {m.group(1) for m in re.finditer(r"^\d\d:\d\d:\d\d INFO (\S+): ", log, re.M)}
    assert loggers and all(name.split(".")[0] == "reasoning_rl" for name in loggers), loggers
    for needle in ("devices: 1 x cpu", "mesh: data=1 fsdp=1", "parameters: policy ", f"run dir: {run_dir}",
                   "resume: a new run, from the first stage", "sft: step 2/4 | loss ", "sft: 4/4 steps in ",
                   "sft: held-out eval (arithmetic): 24/24 completions in ", "grpo: 3/3 steps in "):
        assert needle in log, needle
    step = next(ln for ln in log.splitlines() if "grpo: step 2/3" in ln)
    for field in ("| reward ", "| acc ", "| len ", "/step |", "| ETA "):
        assert field in step, (field, step)
    plotted = [i for i, ln in enumerate(log.splitlines()) if "training curves written to" in ln]
    first_grpo = next(i for i, ln in enumerate(log.splitlines()) if "grpo: step 1/3" in ln)
    assert len(plotted) == 2 and plotted[0] < first_grpo  # one plot per stage, the first before GRPO starts
    assert (run_dir / "plots" / "training_curves.png").is_file()

    summary = json.loads((run_dir / "summary.json").read_text())
    gain = summary["grpo"]["gain"]
    assert gain["over"] == "sft"
    assert gain["pass@1"] == pytest.approx(summary["grpo"]["pass@1"] - summary["sft"]["pass@1"])
    row = next(ln for ln in p.stdout.splitlines() if ln.startswith("grpo "))
    assert row.endswith(f"{gain['pass@1']:+.3f} / {gain['greedy_accuracy']:+.3f} over sft")
    assert f"summary:     {run_dir / 'summary.json'}" in p.stdout and "tensorboard --logdir" in p.stdout

    # a rerun skips both stages and says where it resumes
    p = run_here("run", TINY, "--run-dir", str(run_dir), "--no-plots", "--set", "stages.grpo.steps=3", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resume: all stages complete (sft, grpo)" in p.stderr
    assert json.loads(p.stdout)["summary"] == summary


def test_a_home_that_cannot_be_written_costs_one_line(tmp_path):
    """A cluster node whose home directory cannot be written: the compile cache is off with one warning naming
    the variable to set; matplotlib's font cache goes to one directory per user under TMPDIR without its two
    long warnings (and without a fresh temporary directory every run); nothing else is said."""
    home = tmp_path / "home"
    home.write_text("")  # not even a directory: nothing under it can be made, not even by root
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "REASONING_RL_COMPILE_CACHE",
                                                           "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    (tmp_path / "tmp").mkdir()
    env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"))
    p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                        str(tmp_path / "run"), "--set", "stages=[{name: sft, kind: sft, steps: 1, batch_size: 8}]",
                        "--set", "log.plots=true"],
                       capture_output=True, text=True,
                       timeout=600, check=False, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    said = [ln for ln in p.stderr.splitlines() if not re.match(r"^\d\d:\d\d:\d\d INFO ", ln)]
    assert said == [re.search(r"^.* WARNING reasoning_rl: compile cache off: .*$", p.stderr, re.M).group(0)], said
    assert said[0].endswith(f"compile cache off: REASONING_RL_COMPILE_CACHE: cannot create {home}/.cache/reasoning_rl/"
                            f"xla: {home} is a file, not a directory; set it to a writable directory, or to off")
    assert (tmp_path / "run" / "plots" / "training_curves.png").is_file()
    assert (tmp_path / "tmp" / f"matplotlib-{os.getuid()}").is_dir()


def test_stage_line_of_a_reward_model_names_its_pair_accuracy():
    from reasoning_rl.pipeline import stage_line

    line = stage_line("rm", {"pair_accuracy": 0.9375, "wall_seconds": 12.0})
    assert "held-out pair accuracy 0.938" in line and "nan" not in line
    assert "pass@1 0.500" in stage_line("grpo", {"pass@1": 0.5})
