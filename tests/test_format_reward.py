"""The ``format`` reward's tags as options: another thinking tag (EXAONE Deep's ``<thought>``), and the layout
without answer tags that reasoning models write (the thinking block, then the answer)."""

from __future__ import annotations

import pytest

from reasoning_rl.config import RewardConfig
from reasoning_rl.rewards.format import format_fn_for, format_reward, format_score
from reasoning_rl.rewards.registry import preflight

THOUGHT = ("<thought>", "</thought>")


@pytest.mark.parametrize("text, want", [
    ("<think>a</think> <answer>4</answer>", 1.0),  # the default layout is unchanged
    ("<think>a</think> 4", 0.0),
    ("<think>a</think><answer>4</answer> more", 0.0),
])
def test_default_tags(text, want):
    assert format_score(text) == want


@pytest.mark.parametrize("text, want", [
    ("<thought>\nwork\n</thought>\nThe answer is 4.", 1.0),
    ("  <thought>w</thought>4</s>", 1.0),  # leading space, a trailing end-of-sequence marker
    ("<thought>w</thought>  \n", 0.0),  # no answer after the thinking
    ("So <thought>w</thought> 4", 0.0),  # text before the thinking
    ("<thought>w</thought> 4 <thought>again</thought>", 0.0),  # a tag twice
    ("<think>w</think> 4", 0.0),  # the other model's tags
    ("</thought>w<thought> 4", 0.0),  # out of order
])
def test_thought_tags_without_answer_tags(text, want):
    assert format_score(text, think=THOUGHT, answer=None) == want


def test_partial_credit_and_an_opened_prompt_with_other_tags():
    assert format_score("<thought>w", partial=True, think=THOUGHT, answer=None) == 0.25
    assert format_score("<thought>w</thought>", partial=True, think=THOUGHT, answer=None) == 0.5
    assert format_score("<thought>w</thought> <answer>4</answer>", think=THOUGHT) == 1.0  # answer tags kept
    example = {"prompt": "[|user|]2+2?\n[|assistant|]<thought>\n"}  # the template opened the thinking block
    assert format_reward("work</thought>\n4", example, think=THOUGHT, answer=None) == 1.0
    assert format_reward("work</thought>\n4", {"prompt": "2+2?"}, think=THOUGHT, answer=None) == 0.0


def test_evaluation_scores_format_with_the_stage_options():
    """The held-out evaluation and rejection sampling score format as the stage's format reward is configured."""
    fmt = format_fn_for([RewardConfig("accuracy"), RewardConfig("format", 0.1, {"think": list(THOUGHT),
                                                                                "answer": None})])
    assert fmt("<thought>w</thought> 4", {}) == 1.0
    assert format_fn_for([RewardConfig("accuracy")])("<thought>w</thought> 4", {}) == 0.0  # defaults without one
    assert format_fn_for([])("<think>w</think><answer>4</answer>", {}) == 1.0


@pytest.mark.parametrize("kwargs, needle", [
    ({"think": "<thought>"}, "kwargs.think: expected two different non-empty tags"),
    ({"think": ["<t>", "<t>"]}, "kwargs.think: expected two different"),
    ({"answer": ["<a>"]}, "kwargs.answer: expected two different non-empty tags (opening, closing) or null"),
    ({"think": ["<a>", "</a>"], "answer": ["<a>", "</b>"]}, "the thinking and answer tags must all differ"),
])
def test_bad_tags_are_refused_before_the_run(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        preflight("format", kwargs)
    assert preflight("format", {"think": list(THOUGHT), "answer": None}) is None


def test_held_out_eval_is_given_the_stage_format_options(monkeypatch):
    """``eval_source`` hands the held-out evaluation the format reward with the source's options."""
    from types import SimpleNamespace

    import reasoning_rl.stages.evaluate as E
    from reasoning_rl.config import StageConfig

    seen = {}
    monkeypatch.setattr(E, "evaluate", lambda *a, **kw: seen.update(kw) or {})
    example = SimpleNamespace(as_dict=lambda: {"prompt": "2+2?", "answer": "4"})
    src = SimpleNamespace(name="t", correctness="accuracy", task=SimpleNamespace(held_out=lambda n: [example] * n),
                          rewards=(RewardConfig("format", 0.1, {"think": list(THOUGHT), "answer": None}),))
    rt = SimpleNamespace(ctx=None, mdef=None, tok=None, stop_ids=lambda r: (), stop_table=lambda r: None,
                         cfg=SimpleNamespace(seed=0))
    E.eval_source(rt, StageConfig(name="grpo", kind="grpo", steps=1), src, params=None)
    assert seen["format_fn"]("<thought>w</thought> 4", {}) == 1.0
