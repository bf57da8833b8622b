import pytest
from helpers import run_here

from reasoning_rl import config as C


def base():
    return C.load_raw("configs/quickstart.yaml")


def test_quickstart_loads_and_resolves_stage_overrides():
    cfg = C.from_dict(base())
    sft, grpo = cfg.stages
    assert sft.optimizer.lr == 1e-3 and sft.optimizer.warmup_steps == 20
    assert grpo.optimizer.lr == cfg.optimizer.lr  # inherited
    assert grpo.rollout.group_size == 8 and grpo.algorithm.eps_high == 0.28
    assert [r.name for r in grpo.rewards] == ["accuracy", "format"]


def test_set_overrides_by_path_and_stage_name():
    raw = base()
    C.apply_override(raw, "rollout.group_size=4")
    C.apply_override(raw, "stages.grpo.steps=7")
    C.apply_override(raw, "stages.0.optimizer.lr=0.01")
    cfg = C.from_dict(raw)
    assert cfg.stages[1].rollout.group_size == 4
    assert cfg.stages[1].steps == 7
    assert cfg.stages[0].optimizer.lr == 0.01


@pytest.mark.parametrize("override,needle", [
    ("rollout.grup_size=4", "rollout.grup_size: unknown key"),
    ("rollout.group_size=abc", "rollout.group_size: expected an integer"),
    ("optimizer.lr=fast", "optimizer.lr: expected a number"),
    ("algorithm.loss=ppo2", "algorithm.loss: expected one of"),
    ("algorithm.mini_batches=3", "algorithm.mini_batches: rollout batch of 128"),
    ("model.n_kv_heads=3", "model.n_kv_heads: must divide"),
    ("mesh.cpu_devices=-2", "mesh.cpu_devices: must be 0"),
    ("eval.every=-1", "stages[0].eval.every: must be >= 0"),
    ("stages.grpo.eval.every_problems=600", "stages[1].eval.every_problems: 600 is more than eval.num_problems"),
    ("stages.grpo.init=nope", None),
])
def test_bad_values_name_the_key(override, needle):
    raw = base()
    C.apply_override(raw, override)
    if needle is None:
        C.from_dict(raw)  # an unknown init name is only an error when the pipeline resolves it
        return
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(raw)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_dump_and_reload_round_trips(tmp_path):
    cfg = C.from_dict(base())
    C.dump(cfg, tmp_path / "c.yaml")
    again = C.load(tmp_path / "c.yaml")
    assert again == cfg and again.hash() == cfg.hash()


@pytest.mark.parametrize("override,needle", [
    ("rollout.group_sise=8", "rollout.group_sise: unknown key"),
    ("seed=zero", "seed: expected an integer"),
    ("rollout.prompts_per_step=3", "not divisible"),
])
def test_cli_reports_one_line_and_exit_2(tmp_path, override, needle):
    extra = ["--set", "algorithm.mini_batches=2"] if "prompts_per_step" in override else []
    p = run_here("run", "configs/quickstart.yaml", "--set", override, *extra, "--run-dir", str(tmp_path / "run"))
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("config error")]
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert not (tmp_path / "run").exists()  # nothing computed or written


def test_hash_names_what_is_computed_not_where():
    """Another mesh or host count resumes the same run; another learning rate is another run."""
    cfg = C.from_dict(base())
    laid_out = C.from_dict({**base(), "mesh": {"data": 2, "fsdp": 2}, "distributed": {"process_id": 1}})
    assert laid_out.hash() == cfg.hash()
    unrolled = C.from_dict({**base(), "model": {**base().get("model", {}), "unroll_max": 0}})
    assert unrolled.hash() == cfg.hash()
    other = C.from_dict({**base(), "optimizer": {"lr": 0.5}})
    assert other.hash() != cfg.hash()


def test_cpu_device_split_after_jax_started_names_the_key():
    """Asking for another CPU device count once JAX runs is one clear error; the count in place is a no-op."""
    import jax

    from reasoning_rl import distributed as dist

    have = len(jax.devices("cpu"))
    dist.split_cpu(have)
    dist.split_cpu(0)
    with pytest.raises(dist.DistributedError, match="mesh.cpu_devices"):
        dist.split_cpu(have + 1)


PPO = "configs/quickstart_ppo.yaml"


@pytest.mark.parametrize("override,needle", [
    ("stages.ppo.critic=null", "stages[1].critic: a ppo stage needs a critic section"),
    ("algorithm.gamma=1.2", "stages[1].algorithm.gamma: must be in [0, 1]"),
    ("algorithm.lam=-0.5", "stages[1].algorithm.lam: must be in [0, 1]"),
    ("stages.ppo.algorithm.critic_warmup_steps=1000", "stages[1].algorithm.critic_warmup_steps"),
    ("stages.sft.critic={}", "stages[0].critic: only a ppo stage has a critic"),
    ("stages.ppo.algorithm.loss=gspo", "stages[1].algorithm.loss: ppo's GAE gives per-token advantages"),
    ("stages.ppo.algorithm.loss=gmpo", "stages[1].algorithm.loss: ppo's GAE gives per-token advantages"),
])
def test_bad_ppo_values_name_the_key(override, needle):
    with pytest.raises(C.ConfigError) as e:
        C.load(PPO, [override])
    assert needle in str(e.value)


def test_ppo_accepts_group_size_one_and_critic_model_dir_string():
    cfg = C.load(PPO, ["rollout.group_size=1", "stages.ppo.critic_model=/some/hf/dir"])
    st = C.stage(cfg, "ppo")
    assert st.rollout.group_size == 1 and st.critic_model.path == "/some/hf/dir"
    with pytest.raises(C.ConfigError, match="GRPO needs at least 2"):
        C.load("configs/quickstart.yaml", ["rollout.group_size=1"])


@pytest.mark.parametrize("override,needle", [
    (["algorithm.dual_clip=0.5"], "stages[1].algorithm.dual_clip: must be 0 (off) or > 1"),
    (["algorithm.dual_clip=3", "algorithm.loss=cispo"], "stages[1].algorithm.dual_clip: applies to the clipped"),
    (["algorithm.loss=sapo", "algorithm.sapo_tau_neg=0"], "stages[1].algorithm.sapo_tau_pos: SAPO's temperatures"),
    (["algorithm.loss=cispo", "algorithm.eps_low=2"], "stages[1].algorithm.eps_low: must be <= 1"),
    (["algorithm.loss=gmpo", "algorithm.eps_low=1"], "stages[1].algorithm.eps_low: must be < 1 with loss gmpo"),
    (["algorithm.loss=ppo"], "algorithm.loss"),
    (["algorithm.entropy_coef=-0.01"], "stages[1].algorithm.entropy_coef: must be >= 0"),
])
def test_bad_loss_options_name_the_key(override, needle):
    with pytest.raises(C.ConfigError) as e:
        C.load("configs/quickstart.yaml", override)
    assert needle in str(e.value)


def test_token_level_losses_take_token_advantages():
    for loss in ("cispo", "sapo"):
        cfg = C.load("configs/quickstart.yaml", ["algorithm.advantage=reinforce++", f"algorithm.loss={loss}"])
        assert C.stage(cfg, "grpo").algorithm.loss == loss
        cfg = C.load(PPO, [f"algorithm.loss={loss}", "algorithm.dual_clip=0"])
        assert C.stage(cfg, "ppo").algorithm.loss == loss
    assert C.stage(C.load(PPO, ["algorithm.dual_clip=3"]), "ppo").algorithm.dual_clip == 3
    with pytest.raises(C.ConfigError, match="reinforce\\+\\+ gives per-token"):
        C.load("configs/quickstart.yaml", ["algorithm.advantage=reinforce++", "algorithm.loss=gmpo"])


def test_kl_in_reward_needs_token_level_advantages():
    with pytest.raises(C.ConfigError, match="stages\\[1\\].algorithm.kl_in"):
        C.load("configs/quickstart.yaml", ["algorithm.kl_in=reward", "algorithm.beta=0.1"])
    cfg = C.load("configs/quickstart.yaml", ["algorithm.kl_in=reward", "algorithm.beta=0.1",
                                             "algorithm.advantage=reinforce++"])
    assert C.stage(cfg, "grpo").algorithm.advantage == "reinforce++"
    with pytest.raises(C.ConfigError, match="reinforce\\+\\+ gives per-token"):
        C.load("configs/quickstart.yaml", ["algorithm.advantage=reinforce++", "algorithm.loss=gspo"])


@pytest.mark.parametrize("override,needle", [
    (["stages.grpo.algorithm.ref_reset.every=50"], "stages[1].algorithm.ref_reset.every: resets the KL reference, "
                                                   "and algorithm.beta is 0"),
    (["stages.grpo.algorithm.ref_reset.every=-1"], "stages[1].algorithm.ref_reset.every: must be >= 0"),
    (["algorithm.beta=0.01", "algorithm.ref_reset.every=5", "model.lora={rank: 4}"],
     "stages[1].algorithm.ref_reset.every: is not supported with model.lora"),
])
def test_bad_reference_resets_name_the_key(override, needle):
    with pytest.raises(C.ConfigError) as e:
        C.load("configs/quickstart.yaml", override)
    assert needle in str(e.value)
    cfg = C.load("configs/quickstart.yaml", ["algorithm.beta=0.01", "algorithm.ref_reset.every=5"])
    assert C.stage(cfg, "grpo").algorithm.ref_reset.every == 5  # set for every stage: the sft stage has no use for it


def test_file_only_keys_on_a_built_in_task_are_refused_where_they_are_set(tmp_path):
    """`task: {path: ...}` without `name: file` would silently train on the default arithmetic task: refused at
    the level that sets it (top, stage, mixture source). Values a level inherits from a file task above it are
    not its own, so a stored config (which repeats them) loads back."""
    stage = {"name": "a", "kind": "sft", "steps": 1}
    with pytest.raises(C.ConfigError, match=r"^task\.path: only a file task reads it, and this task is "
                                            r"'arithmetic' \(set task\.name: file"):
        C.from_dict({"task": {"path": "rows.jsonl"}, "stages": [stage]})
    with pytest.raises(C.ConfigError, match=r"^stages\[0\]\.task\.template: .* this task is 'countdown'"):
        C.from_dict({"stages": [{**stage, "task": {"name": "countdown", "template": "chat"}}]})
    with pytest.raises(C.ConfigError, match=r"^stages\[0\]\.tasks\[1\]\.task\.fields: .* this task is 'instruct'"):
        C.from_dict({"stages": [{**stage, "kind": "grpo", "tasks": [
            {"name": "arithmetic"}, {"name": "instruct", "task": {"fields": {"prompt": "q"}}}]}]})
    raw = {"task": {"name": "file", "path": "rows.jsonl", "template": "chat", "system": "Think."},
           "stages": [{**stage, "task": {"name": "arithmetic"}},
                      {"name": "b", "kind": "grpo", "steps": 1,
                       "tasks": [{"name": "arithmetic"}, {"name": "instruct"}]}]}
    cfg = C.from_dict(raw)
    assert cfg.stages[0].task.name == "arithmetic" and cfg.stages[0].task.path == "rows.jsonl"  # inherited
    C.dump(cfg, tmp_path / "config.yaml")
    assert C.load(tmp_path / "config.yaml") == cfg


def test_differences_name_each_changed_key_as_set_writes_it():
    a = C.from_dict({"task": {"name": "file", "path": "rows.jsonl"},
                     "stages": [{"name": "a", "kind": "sft", "steps": 1}]})
    b = C.from_dict({"task": {"name": "file", "path": "rows.jsonl", "fields": {"prompt": "q"}},
                     "stages": [{"name": "a", "kind": "sft", "steps": 2}]})
    assert a.differences(b, most=10) == ["task.fields.prompt: (unset) -> 'q'", "stages.a.steps: 1 -> 2",
                                         "stages.a.task.fields.prompt: (unset) -> 'q'"]  # in the config's order
    assert a.differences(b, most=1) == ["task.fields.prompt: (unset) -> 'q'", "2 more"] and a.differences(a) == []


def test_continued_by_accepts_only_step_counts_and_appended_stages():
    def cfg(*stages, lr=1e-3, **top):
        return C.from_dict({"optimizer": {"lr": lr}, **top, "stages": [dict(zip(("name", "kind", "steps"), s))
                                                                      for s in stages]})

    a = cfg(("sft", "sft", 4), ("grpo", "grpo", 6))
    assert a.continued_by(a) == ({}, [], [])
    assert a.continued_by(cfg(("sft", "sft", 4), ("grpo", "grpo", 9))) == ({"grpo": (6, 9)}, [], [])
    assert a.continued_by(cfg(("sft", "sft", 5), ("grpo", "grpo", 6), ("rs", "sft", 2))) == ({"sft": (4, 5)},
                                                                                              ["rs"], [])
    kept = C.from_dict({**a.to_dict(), "checkpoint": {"keep": 1, "every": 10}})  # where steps are saved
    assert a.continued_by(kept) == ({}, [], ["checkpoint.every: 50 -> 10", "checkpoint.keep: 3 -> 1"])
    assert kept.stage_hash("grpo") == a.stage_hash("grpo") and kept.hash() != a.hash()
    curve = cfg(("sft", "sft", 4), ("grpo", "grpo", 6), eval={"every": 20})  # when it is evaluated
    assert a.continued_by(curve) == ({}, [], ["eval.every: 0 -> 20", "stages.sft.eval.every: 0 -> 20",
                                              "stages.grpo.eval.every: 0 -> 20"])
    assert curve.stage_hash("grpo") == a.stage_hash("grpo") and curve.hash() != a.hash()
    appended = C.from_dict({**a.to_dict(), "stages": [*a.to_dict()["stages"], {
        "name": "rs", "kind": "sft", "steps": 2, "eval": {"every": 1}}]})
    assert a.continued_by(appended) == ({}, ["rs"], [])  # an appended stage's schedule is part of it
    for other in (cfg(("sft", "sft", 4), ("grpo", "grpo", 9), lr=2e-3),  # anything else differs
                  cfg(("sft", "sft", 4)),  # a stage dropped
                  cfg(("sft", "sft", 4), ("ppo", "grpo", 6)),  # renamed
                  cfg(("sft", "sft", 4), ("grpo", "rejection_sft", 6))):  # another kind
        assert a.continued_by(other) is None
    # each stage's identity covers it and what runs before it, never what comes after
    b = cfg(("sft", "sft", 4), ("grpo", "grpo", 9), ("rs", "sft", 2))
    assert a.stage_hash("sft") == b.stage_hash("sft") and a.stage_hash("grpo") != b.stage_hash("grpo")
    assert a.stage_hash("sft") != cfg(("sft", "sft", 4), lr=2e-3).stage_hash("sft")
