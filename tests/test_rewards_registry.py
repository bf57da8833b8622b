"""Registry, plug-ins and the fault-tolerant RewardComputer."""

import logging
import sys
import textwrap
import time

import numpy as np
import pytest

from reasoning_rl.rewards import RewardComputer, RewardResult, RewardSpec, get, known, register


def test_builtins_registered():
    assert {"accuracy", "math", "format", "code"} <= set(known())
    assert callable(get("accuracy"))


def test_unknown_name_lists_known():
    with pytest.raises(KeyError) as err:
        get("no_such_reward")
    assert "accuracy" in str(err.value) and "format" in str(err.value)


def test_register_and_duplicate():
    @register("test_reg_const")
    def const(completion, example):
        return 0.5

    assert get("test_reg_const") is const
    register("test_reg_const")(const)  # same function again is fine
    with pytest.raises(ValueError):
        register("test_reg_const")(lambda c, e: 1.0)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "rrl_test_plugin.py").write_text(textwrap.dedent("""
        NOT_CALLABLE = 3

        def length_reward(completion, example, scale=1.0):
            return scale * len(completion)

        class Holder:
            @staticmethod
            def nested(completion, example):
                return 2.0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rrl_test_plugin"
    sys.modules.pop("rrl_test_plugin", None)


def test_plugin_resolution(plugin):
    fn = get(f"{plugin}:length_reward")
    assert fn("abcd", {}) == 4
    assert get(f"{plugin}:Holder.nested")("", {}) == 2.0
    with pytest.raises(TypeError, match="NOT_CALLABLE"):
        get(f"{plugin}:NOT_CALLABLE")
    with pytest.raises(KeyError):
        get(f"{plugin}:missing")
    with pytest.raises(KeyError):
        get("rrl_no_such_module_xyz:fn")


def test_plugin_in_computer_with_kwargs_and_weights(plugin):
    comp = RewardComputer([RewardSpec(f"{plugin}:length_reward", 0.5, {"scale": 2.0}),
                           RewardSpec("accuracy", 3.0)])
    res = comp(["<answer>4</answer>", "xx 5"], [{"answer": "4"}, {"answer": "4"}])
    assert isinstance(res, RewardResult)
    assert res.total.dtype == np.float32 and res.total.shape == (2,)
    np.testing.assert_allclose(res.per_reward[f"{plugin}:length_reward"], [36.0, 8.0])
    np.testing.assert_allclose(res.per_reward["accuracy"], [1.0, 0.0])
    np.testing.assert_allclose(res.total, [0.5 * 36 + 3.0, 0.5 * 8])
    assert res.errors == {f"{plugin}:length_reward": 0, "accuracy": 0}
    comp.close()


def _flaky(completion, example):
    if completion == "boom":
        raise ValueError("kaboom here")
    return 1.0


def _garbage(completion, example):
    return {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "str": "1.0",
            "none": None, "np": np.float32(0.25), "bool": True, "arr": np.array(0.5)}[completion]


@pytest.mark.parametrize("workers", [1, 4])
def test_raising_reward_scores_zero_counted_logged_once(workers, caplog):
    register("test_flaky")(_flaky)
    comp = RewardComputer([RewardSpec("test_flaky"), RewardSpec("format", 2.0)], max_workers=workers)
    with caplog.at_level(logging.WARNING, logger="reasoning_rl.rewards"):
        res = comp(["ok", "boom", "boom", "ok"], [{}] * 4)
    np.testing.assert_array_equal(res.per_reward["test_flaky"], [1, 0, 0, 1])
    assert res.errors == {"test_flaky": 2, "format": 0}
    msgs = [r.getMessage() for r in caplog.records if "test_flaky" in r.getMessage()]
    assert len(msgs) == 1 and "ValueError: kaboom here" in msgs[0]
    comp.close()


def test_non_finite_and_non_numbers_count_as_zero():
    register("test_garbage")(_garbage)
    keys = ["nan", "inf", "-inf", "str", "none", "np", "bool", "arr"]
    res = RewardComputer([RewardSpec("test_garbage")])(keys, [{}] * len(keys))
    np.testing.assert_allclose(res.per_reward["test_garbage"], [0, 0, 0, 0, 0, 0.25, 1.0, 0.5])
    assert res.non_finite == {"test_garbage": 5}
    assert res.errors == {"test_garbage": 0}
    assert np.isfinite(res.total).all()


def test_deterministic_order_under_concurrency():
    def slow_echo(completion, example):
        time.sleep(0.001 * (7 - int(completion) % 7))
        return float(completion)

    register("test_slow_echo")(slow_echo)
    comp = RewardComputer([RewardSpec("test_slow_echo")], max_workers=8)
    n = 50
    res = comp([str(i) for i in range(n)], [{}] * n)
    np.testing.assert_array_equal(res.per_reward["test_slow_echo"], np.arange(n, dtype=np.float32))
    comp.close()


def test_timeout_counts_as_error():
    def hang(completion, example):
        time.sleep(2.0 if completion == "slow" else 0)
        return 1.0

    register("test_hang")(hang)
    comp = RewardComputer([RewardSpec("test_hang")], max_workers=2, timeout_s=0.3)
    t0 = time.monotonic()
    res = comp(["fast", "slow", "fast"], [{}] * 3)
    assert time.monotonic() - t0 < 1.5
    np.testing.assert_array_equal(res.per_reward["test_hang"], [1, 0, 1])
    assert res.errors["test_hang"] == 1
    comp.close()


def test_bad_construction():
    with pytest.raises(ValueError):
        RewardComputer([RewardSpec("accuracy"), RewardSpec("accuracy", 2.0)])
    with pytest.raises(KeyError):
        RewardComputer([RewardSpec("nope_nope")])
    with pytest.raises(ValueError):
        RewardComputer([RewardSpec("accuracy")])(["a"], [])


def test_spec_is_frozen():
    spec = RewardSpec("format", kwargs={"partial": True})
    with pytest.raises(AttributeError):
        spec.weight = 2.0  # type: ignore[misc]
    assert RewardSpec("x").weight == 1.0 and RewardSpec("x").kwargs == {}


def test_empty_batch():
    res = RewardComputer([RewardSpec("accuracy")])([], [])
    assert res.total.shape == (0,) and res.per_reward["accuracy"].shape == (0,)
