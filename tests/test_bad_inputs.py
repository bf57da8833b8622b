"""Every bad input stops the command with one line naming the file and the problem, exit status 2, before any
compute and without changing anything already in the run dir (the run-level cases; rows and configs are
also covered in test_config.py and test_data_files.py)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reasoning_rl import cli
from reasoning_rl import config as C
from reasoning_rl.config import ConfigError
from reasoning_rl.data.files import DataError, FileTask

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")


def snapshot(d: Path) -> dict:
    """Every path under ``d`` with its content hash (files) and modification time."""
    if not d.exists():
        return {}
    out = {}
    for p in sorted(d.rglob("*")):
        if p == d / ".lock":  # the run dir's lock (it holds no data; see test_a_run_dir_in_use_...)
            continue
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(d))] = (digest, p.stat().st_mtime_ns)
    return out


def one_error(err: str, prefix: str, *needles: str) -> str:
    """The command's error is its last stderr line, starts with ``prefix`` and names ``needles``; no traceback."""
    assert "Traceback" not in err, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert line.startswith(prefix), err[-3000:]
    for n in needles:
        assert n in line, line
    return line


def started_run(tmp_path: Path) -> Path:
    """A run dir as ``run`` leaves it before any step: the stored config and a finished stage's manifest."""
    d = tmp_path / "run"
    (d / "checkpoints" / "sft").mkdir(parents=True)
    C.dump(C.load(TINY), d / "config.yaml")
    return d


def run(capsys, *args) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- run dir contents


@pytest.mark.parametrize("content", [b'{"stage": "sft", "complete": tr', b"\x89PNG\r\n\x1a\n\x00\xff", b"[1, 2]"],
                         ids=["truncated", "garbage", "not-an-object"])
def test_damaged_manifest_is_one_line_and_changes_nothing(tmp_path, capsys, content):
    d = started_run(tmp_path)
    (d / "checkpoints" / "sft" / "manifest.json").write_bytes(content)
    before = snapshot(d)
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d))
    assert code == 2
    one_error(err, "checkpoint error:", str(d / "checkpoints" / "sft" / "manifest.json"), "damaged stage manifest")
    assert snapshot(d) == before
    code, err = run(capsys, "eval", str(d))  # every reader of a manifest says the same
    assert code == 2
    one_error(err, "checkpoint error:", "manifest.json")


@pytest.mark.parametrize("damage", ["truncated", "cut-between-lines", "garbage", "empty"])
def test_damaged_stored_config_is_one_line_and_changes_nothing(tmp_path, capsys, damage):
    """Cut between two lines, the stored config is still valid YAML of a shorter config (here: one stage,
    half of it), which would read as a run with a stage appended: its missing end line tells."""
    d = started_run(tmp_path)
    text = (d / "config.yaml").read_bytes()
    lines = text[: text.rfind(b"\n", 0, len(text) // 2) + 1]
    (d / "config.yaml").write_bytes({"truncated": text[: len(text) // 2], "cut-between-lines": lines,
                                     "garbage": os.urandom(200) + b"\xff", "empty": b""}[damage])
    before = snapshot(d)
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d))
    assert code == 2
    one_error(err, "config error:", str(d / "config.yaml"))
    assert snapshot(d) == before
    if damage == "cut-between-lines":  # every reader of a stored config says so (here: eval, export)
        assert "truncated" in err
        for cmd in ("eval", "export"):
            code, err = run(capsys, cmd, str(d), *([str(tmp_path / "x")] if cmd == "export" else []))
            assert code == 2 and "truncated" in err, err
        (tmp_path / "mine.yaml").write_bytes(text + b"# a copy the user added to\n")  # not a run's: read as it is
        assert C.load(tmp_path / "mine.yaml") == C.load(TINY)


def test_damaged_tokenizer_model_of_the_run(tmp_path, capsys):
    d = started_run(tmp_path)
    (d / "tokenizer.model").write_bytes(b"\x00\x01garbage" * 10)
    before = snapshot(d)
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d))
    assert code == 2
    one_error(err, "config error:", str(d / "tokenizer.model"), "not a readable SentencePiece model")
    assert snapshot(d) == before


def test_run_dir_under_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(f / "run"))
    assert code == 2
    one_error(err, "config error:", "run_dir", str(f), "is a file")
    assert f.read_text() == "x"


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    d = started_run(tmp_path)
    (d / "checkpoints" / "sft" / "1.orbax-checkpoint-tmp").mkdir()  # an unfinished write is not a checkpoint
    before = snapshot(d)
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d), "--resume")
    assert code == 2
    one_error(err, "config error:", "--resume", "nothing to resume", "1.orbax-checkpoint-tmp")
    assert snapshot(d) == before


def test_run_dir_of_another_config_names_what_changed(tmp_path, capsys):
    """The refusal names the keys that differ, as --set writes them, old -> new; a layout key does not count."""
    d = started_run(tmp_path)
    before = snapshot(d)
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d), "--set",
                    "stages.grpo.algorithm.eps_low=0.1", "--set", "mesh.cpu_devices=1")
    assert code == 2
    one_error(err, "config error:", f"run_dir: {d} already holds a run with a different config",
              "(stages.grpo.algorithm.eps_low: 0.2 -> 0.1)", "use a new --run-dir")
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d), "--resume", "--set", "seed=5",
                    "--set", "optimizer.lr=0.5", "--set", "task.digits=3", "--set", "rollout.temperature=0.25")
    assert code == 2
    line = one_error(err, "config error:", "--resume", "seed: 0 -> 5", "task.digits: 2 -> 3",
                     "rollout.temperature: ", " -> 0.25")
    assert line.count(" -> ") == 3 and " more)" in line  # the first three keys, then how many more
    assert snapshot(d) == before


def test_unknown_or_unimportable_reward_is_one_line_before_any_stage_runs(tmp_path, capsys, monkeypatch):
    """A misspelt reward, a plug-in module not on the path or failing at import, options a reward does not
    take, a rejection verifier: one config error naming the key, before the first stage computes (the run dir
    is not even created), from run and eval alike."""
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "broken_plug.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "plug" / "fine_plug.py").write_text("def score(completion, example):\n    return 1.0\n\n\n"
                                                    "def one_arg(completion):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    d = tmp_path / "run"
    cases = [
        (["rewards=[{name: accurcy}]"], "rewards[0].name: unknown reward 'accurcy'; known rewards: accuracy, "),
        (["rewards=[{name: accuracy}, {name: 'no_such_module:score'}]"],
         "rewards[1].name: cannot load reward plug-in 'no_such_module:score': No module named 'no_such_module' "
         "(is its directory on PYTHONPATH?)"),
        (["rewards=[{name: 'broken_plug:score'}]"],
         "rewards[0].name: cannot load reward plug-in 'broken_plug:score': importing broken_plug raised "
         "RuntimeError: boom at import"),
        (["rewards=[{name: 'fine_plug:nope'}]"], "rewards[0].name: cannot load reward plug-in 'fine_plug:nope'"),
        (["stages.grpo.rewards=[{name: 'fine_plug:score'}, {name: formt}]"],
         "stages[1].rewards[1].name: unknown reward 'formt'"),
        # options the function does not take would fail every call: refused up front, naming what it takes
        (["rewards=[{name: accuracy}, {name: format, kwargs: {partal: true}}]"],
         "rewards[1].kwargs: reward 'format' is called as fn(completion, example, **kwargs) and got an "
         "unexpected keyword argument 'partal' (its options: partial, eos, think, answer)"),
        (["rewards=[{name: accuracy}, {name: format, kwargs: {think: '<thought>'}}]"],
         "stages[0].rewards[1] (format): kwargs.think: expected two different non-empty tags (opening, closing), "
         "got '<thought>'"),
        (["rewards=[{name: 'fine_plug:score', kwargs: {scale: 2}}]"],
         "rewards[0].kwargs: reward 'fine_plug:score' is called as fn(completion, example, **kwargs) and got an "
         "unexpected keyword argument 'scale' (its options: none)"),
        (["rewards=[{name: 'fine_plug:one_arg'}]"], "rewards[0].kwargs: reward 'fine_plug:one_arg' is called as "
         "fn(completion, example, **kwargs) and too many positional arguments"),
    ]
    for sets, needle in cases:
        args = [a for s in sets for a in ("--set", s)]
        code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d), *args)
        assert code == 2, err
        assert one_error(err, "config error:", needle).startswith(f"config error: {needle}")
        assert not d.exists()
    raw = C.load_raw(TINY)
    raw["stages"].append({"name": "rs", "kind": "rejection_sft", "steps": 1, "init": "grpo",
                          "rejection": {"verifier": "fine_plug:scor"}})
    (tmp_path / "rs.yaml").write_text(json.dumps(raw))
    code, err = run(capsys, "run", str(tmp_path / "rs.yaml"), "--no-progress", "--run-dir", str(d))
    assert code == 2
    one_error(err, "config error: stages[2].rejection.verifier: cannot load reward plug-in 'fine_plug:scor'")
    assert not d.exists()
    started = started_run(tmp_path)  # eval scores the samples' reward components with the stage's rewards
    before = snapshot(started)
    code, err = run(capsys, "eval", str(started), "--set", "rewards=[{name: accuracy}, {name: formt}]")
    assert code == 2
    one_error(err, "config error: rewards[1].name: unknown reward 'formt'")
    assert snapshot(started) == before


@pytest.mark.parametrize("override, needle", [
    ("mesh.data=3", "mesh: data*fsdp*tensor*expert = 3 but there are 1 devices"),
    ("rollout.max_new_tokens=100000", "stages[0].rollout.max_new_tokens: 100000 new tokens leave no room for a "
                                      "prompt in the model's context of 512 tokens (model.max_seq_len)"),
    ("stages.grpo.eval.max_new_tokens=512", "stages[1].eval.max_new_tokens: 512 new tokens leave no room"),
], ids=["mesh-larger-than-the-devices", "rollout-tokens-past-the-context", "eval-tokens-past-the-context"])
def test_mesh_and_token_limits_the_model_cannot_hold(tmp_path, capsys, override, needle):
    """Found where the devices and the model's context are known (before any compute): one line, exit 2, and
    a run dir this call would have created is not left behind; what an existing one held is left as it was."""
    d = tmp_path / "run"
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d), "--set", override)
    assert code == 2
    one_error(err, f"config error: {needle}")
    assert not d.exists()
    d = started_run(tmp_path)
    before = snapshot(d)
    code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d), "--set", override)
    assert code == 2
    after = snapshot(d)  # (the run's tokenizer may be trained and stored first: it is the same for any mesh)
    assert {k: after.get(k) for k in before} == before and set(after) - set(before) <= {"tokenizer.model"}


def test_a_run_dir_in_use_by_another_run_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path, capsys):
    """A second run on a run dir another process is running (a requeued job, the same command twice) is one
    line naming the holder, exit 2, nothing of the dir touched; once the holder dies, even by kill -9, the dir
    is free again (the kernel drops the lock)."""
    from reasoning_rl.paths import RunDirLock

    d = started_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom reasoning_rl.paths import RunDirLock\n"
                               f"RunDirLock({str(d)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(d)
        for extra in ([], ["--resume"]):
            code, err = run(capsys, "run", TINY, "--no-progress", "--run-dir", str(d), *extra)
            assert code == 2
            one_error(err, f"config error: run_dir: {d} is in use by another run (pid {holder.pid} on ",
                      "; wait for it to end, stop it, or use another --run-dir")
        assert snapshot(d) == before
    finally:
        holder.kill()
        holder.wait()
    lock = RunDirLock(d)
    lock.acquire()  # kill -9 left nothing stale
    assert f"pid {os.getpid()} on " in (d / ".lock").read_text()
    lock.release()


def test_config_hash_ignores_where_the_run_dir_lives():
    a = C.load(TINY, ["run_dir=/somewhere/run"])
    b = C.load(TINY, ["run_dir=/elsewhere/copy"])
    assert a.hash() == b.hash()
    assert a.hash() != C.load(TINY, ["seed=1"]).hash()


# --------------------------------------------------------------------------- read-only places


def read_only(paths: list[Path]) -> list[str]:
    """A command prefix under which ``paths`` are read-only: a read-only bind mount (root ignores permission
    bits), or permission bits for an ordinary user."""
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(0o555)
        return []
    if shutil.which("bwrap") is None:
        pytest.skip("running as root without bubblewrap: no way to make a directory read-only")
    out = ["bwrap", "--dev-bind", "/", "/"]
    for p in paths:
        out += ["--ro-bind", str(p), str(p)]
    return out


def cli_under(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "reasoning_rl", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("where", ["run_dir", "parent", "checkpoints", "export_out", "eval_out"])
def test_read_only_places_are_one_line_before_any_compute(tmp_path, where):
    d = started_run(tmp_path)
    if where == "run_dir":
        ro, args, needle = d, ["run", TINY, "--no-progress", "--run-dir", str(d)], str(d)
    elif where == "parent":
        ro = tmp_path / "ro"
        ro.mkdir()
        args, needle = ["run", TINY, "--no-progress", "--run-dir", str(ro / "new" / "run")], str(ro)
    elif where == "checkpoints":
        ro, args, needle = d / "checkpoints", ["run", TINY, "--no-progress", "--run-dir", str(d)], "checkpoints"
    elif where == "export_out":
        ro = tmp_path / "ro"
        ro.mkdir()
        args, needle = ["export", str(d), str(ro / "hf")], str(ro)
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        args, needle = ["eval", str(d), "--out", str(ro / "ev")], str(ro)
    before = snapshot(tmp_path)
    try:
        p = cli_under(read_only([ro]), *args)
    finally:
        ro.chmod(0o755)
    assert p.returncode == 2, p.stderr[-3000:]
    one_error(p.stderr, "config error:", needle, "not writable")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- data files and metrics


def file_config(tmp_path: Path, data: Path, **task) -> Path:
    raw = C.load_raw(TINY)
    raw["task"] = {"name": "file", "path": str(data), "held_out_size": 4, **task}
    raw["stages"] = [{"name": "sft", "kind": "sft", "steps": 1, "batch_size": 4}]
    p = tmp_path / "file.yaml"
    p.write_text(json.dumps(raw))
    return p


def rows(n: int = 20) -> list[dict]:
    return [{"prompt": f"What is {i}+{i + 1}?", "answer": str(2 * i + 1)} for i in range(n)]


def write_jsonl(path: Path, rs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rs))
    return path


def test_binary_file_as_jsonl(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_bytes(json.dumps(rows(1)[0]).encode() + b"\n" + bytes(range(128, 256)) + b"\n")
    d = tmp_path / "run"
    import signal

    mine = signal.getsignal(signal.SIGTERM)
    code, err = run(capsys, "run", str(file_config(tmp_path, data)), "--no-progress", "--run-dir", str(d))
    assert code == 2
    one_error(err, "input error:", f"{data}:2", "not UTF-8")
    assert signal.getsignal(signal.SIGTERM) is mine  # run's own SIGTERM handler does not outlive it
    assert not d.exists()  # the run dir this command created is gone again


def test_a_data_file_changed_under_a_run_is_refused_when_it_continues(tmp_path, capsys):
    """The config names the file, not its rows: a file regenerated under the same name would resume on other
    rows in another order. A run fingerprints what it reads and refuses to go on if it changed."""
    data = write_jsonl(tmp_path / "data.jsonl", rows(20))
    cfg, d = str(file_config(tmp_path, data)), tmp_path / "run"
    code, err = run(capsys, "run", cfg, "--no-progress", "--run-dir", str(d))
    assert code == 0, err[-3000:]
    stored = json.loads((d / "inputs.json").read_text())
    assert stored[str(data)]["key"] == "task.path"
    assert stored[str(data)]["fingerprint"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    before = snapshot(d)
    write_jsonl(data, rows(20)[::-1])  # the same rows in another order
    code, err = run(capsys, "run", cfg, "--no-progress", "--run-dir", str(d), "--resume")
    assert code == 2
    one_error(err, "config error:", f"task.path: {data} changed since this run first read it (same size, other "
              "content)", "restore it, or use a new --run-dir")
    assert snapshot(d) == before
    code, err = run(capsys, "run", cfg, "--no-progress", "--run-dir", str(d), "--set", "stages.sft.steps=2")
    assert code == 2 and "task.path: " in err  # training longer is refused the same way, before any write
    assert snapshot(d) == before
    write_jsonl(data, rows(20))  # put back: the run goes on
    code, err = run(capsys, "run", cfg, "--no-progress", "--run-dir", str(d), "--resume")
    assert code == 0, err[-3000:]
    assert snapshot(d / "checkpoints") == {k[len("checkpoints/"):]: v for k, v in before.items()
                                           if k.startswith("checkpoints/")}  # nothing trained again


def test_inputs_are_fingerprinted_by_what_a_run_reads_from_them(tmp_path):
    from reasoning_rl import inputs

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (model / "README.md").write_text("notes")
    ck = tmp_path / "other" / "checkpoints" / "sft"
    (ck / "4").mkdir(parents=True)
    cfg = C.from_dict({"model": {"path": str(model)}, "tokenizer": {"kind": "hf"}, "stages": [
        {"name": "sft", "kind": "sft", "steps": 1}, {"name": "grpo", "kind": "grpo", "steps": 1, "init": str(ck)},
        {"name": "more", "kind": "grpo", "steps": 1, "init": "grpo"}]})
    assert inputs.referenced(cfg) == {str(model): "model.path", str(ck): "stages.grpo.init"}
    fp = inputs.fingerprint(model)
    assert set(fp["files"]) == {"config.json", "model.safetensors"}  # what loading reads, not the notes
    (model / "README.md").write_text("other notes")
    assert inputs.fingerprint(model) == fp
    (model / "model.safetensors").write_bytes(bytes(range(256))[::-1] * 8)
    assert inputs._what(fp, inputs.fingerprint(model)) == "model.safetensors differs"
    assert inputs.fingerprint(ck) == {"checkpoint step": 4}
    (ck / "6").mkdir()
    assert inputs._what({"checkpoint step": 4}, inputs.fingerprint(ck)) == "its newest checkpoint was step 4, now 6"
    (ck / "manifest.json").write_text(json.dumps({"complete": True, "final_step": 6}))
    assert inputs.fingerprint(ck) == {"checkpoint step": 6}
    own = tmp_path / "run"  # a path into the run's own dir is an output of the run, not an input
    (own / "checkpoints" / "sft" / "2").mkdir(parents=True)
    mine = C.from_dict({"stages": [{"name": "sft", "kind": "sft", "steps": 1}, {
        "name": "grpo", "kind": "grpo", "steps": 1, "init": str(own / "checkpoints" / "sft")}]})
    inputs.check_inputs(mine, own)
    assert not (own / "inputs.json").exists()
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.truncate(inputs.SAMPLED + 1)
    assert set(inputs.fingerprint(big)) == {"size", "sampled sha256"}  # weights past 64 MiB: four samples


def test_a_10_mb_row_is_rejected_by_the_row_check(tmp_path, capsys):
    rs = rows()
    rs[7] = {"prompt": "What is " + "1+" * (5 << 20) + "1?", "answer": "x"}  # valid JSON, 10 MB
    data = write_jsonl(tmp_path / "data.jsonl", rs)
    d = tmp_path / "run"
    code, err = run(capsys, "run", str(file_config(tmp_path, data)), "--no-progress", "--run-dir", str(d))
    assert code == 2
    one_error(err, "input error:", f"{data}:8", "tokens", "model's context of 512", "task.max_prompt_tokens")
    assert not d.exists()


def test_long_prompts_are_cut_to_max_prompt_tokens(tmp_path):
    from reasoning_rl.tokenizer import train_sentencepiece

    rs = rows()
    long_prompt = "Numbers: " + " ".join(str(i % 10) for i in range(300)) + ". What is 3+4?"
    rs[3] = {"prompt": long_prompt, "answer": "7"}
    data = write_jsonl(tmp_path / "data.jsonl", rs)
    tok = train_sentencepiece([r["prompt"] + r["answer"] for r in rs] * 5, tmp_path / "tok.model", 48)
    task = FileTask(C.build(C.TaskConfig, {"name": "file", "path": str(data), "held_out_size": 2}))
    task.bind_tokenizer(tok)
    with pytest.raises(DataError, match=rf"{data}:4: the prompt is \d+ tokens, longer than the model's context of 64"):
        task.check_lengths(64, with_solution=False)
    cut = FileTask(C.build(C.TaskConfig, {"name": "file", "path": str(data), "held_out_size": 2,
                                          "max_prompt_tokens": 24}))
    cut.bind_tokenizer(tok)
    cut.check_lengths(64, with_solution=False)
    prompts = [cut.example("train", i).prompt for i in range(cut.train_size)]
    prompts += [e.prompt for e in cut.held_out()]
    mine = [p for p in prompts if p.endswith("What is 3+4?") and "Numbers" not in p]
    assert len(mine) == 1  # the long prompt, its start cut off, its question kept
    assert all(len(tok.encode(p)) <= 24 for p in prompts)
    assert sorted(prompts) != sorted(r["prompt"] for r in rs) and len(prompts) == len(rs)


def test_plot_on_malformed_metrics(tmp_path, capsys):
    good = {"stage": "sft", "step": 1, "loss": 1.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    code, err = run(capsys, "plot", str(tmp_path))
    assert code == 2
    one_error(err, "config error:", f"{tmp_path / 'metrics.jsonl'}:2", "not valid JSON")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({**good, "step": "one"}) + "\n")
    code, err = run(capsys, "plot", str(tmp_path))
    assert code == 2
    one_error(err, "config error:", "metrics.jsonl", "step 'one'")
    # a torn last line (a killed process's unfinished write) is not an error
    (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "step": 2}) + "\n{\"st")
    code, err = run(capsys, "plot", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "plots" / "training_curves.png").stat().st_size > 0


def test_a_torn_metrics_line_is_cut_before_the_next_record(tmp_path):
    from reasoning_rl.metrics import MetricsWriter, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"stage": "a", "step": 1}\n{"stage": "a", "st')
    assert read_metrics(tmp_path) == [{"stage": "a", "step": 1}]
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"stage": "a", "step": 2})
    w.close()
    assert read_metrics(tmp_path) == [{"stage": "a", "step": 1}, {"stage": "a", "step": 2}]


# --------------------------------------------------------------------------- configs and flags


@pytest.mark.parametrize("devices", ["0", "-4"])
def test_plan_rejects_non_positive_device_counts(capsys, devices):
    code, err = run(capsys, "plan", TINY, "--devices", devices)
    assert code == 2
    one_error(err, "config error:", "--devices", f"got {devices}")


def test_empty_config_file_and_a_config_without_stages(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    code, err = run(capsys, "run", str(empty), "--run-dir", str(tmp_path / "r"))
    assert code == 2
    one_error(err, "config error:", str(empty), "empty")
    bare = tmp_path / "bare.yaml"
    bare.write_text("seed: 1\n")
    code, err = run(capsys, "run", str(bare), "--run-dir", str(tmp_path / "r"))
    assert code == 2
    one_error(err, "config error:", "no stages", "allow_empty")
    assert not (tmp_path / "r").exists()
    bare.write_text("seed: 1\nallow_empty: true\n")
    code, err = run(capsys, "run", str(bare), "--run-dir", str(tmp_path / "r"))
    assert code == 0


def test_zero_step_stage_is_an_error_unless_allowed():
    with pytest.raises(ConfigError, match=r"stages\[1\]\.steps: 0 steps.*allow_empty: true"):
        C.load(TINY, ["stages.grpo.steps=0"])
    cfg = C.load(TINY, ["stages.grpo.steps=0", "stages.grpo.allow_empty=true"])
    assert cfg.stages[1].steps == 0 and cfg.stages[1].allow_empty
