"""Local data files (JSONL; Parquet needs pyarrow), presets, templates, shuffling, mixtures, instruct rules."""

import json

import pytest

from reasoning_rl import config as C
from reasoning_rl.config import ConfigError, TaskConfig
from reasoning_rl.data.files import DataError
from reasoning_rl.data.loader import ExampleStream
from reasoning_rl.data.tasks import make_task
from reasoning_rl.rewards import get


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GSM = [{"question": f"q{i}?", "answer": f"step <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1:,}000"} for i in range(10)]


def test_gsm8k_preset_template_and_split(tmp_path):
    t = make_task(TaskConfig(name="file", path=write(tmp_path / "g.jsonl", GSM), preset="gsm8k", held_out_size=3,
                             template="Q: {prompt}\nA:"))
    held = t.held_out()
    train = [t.example("train", i) for i in range(7)]
    assert len(held) == 3 and {e.key for e in held}.isdisjoint({e.key for e in train})
    assert len({e.key for e in train}) == 7  # one epoch is a permutation of the training rows
    e = train[0]
    assert e.prompt.startswith("Q: q") and e.prompt.endswith("\nA:")
    assert "," not in e.answer and e.answer.endswith("000")
    assert e.solution.startswith("<think>step ") and e.solution.endswith(f"</think><answer>{e.answer}</answer>")
    assert "<<" not in e.solution
    assert get("accuracy")(e.solution, e.as_dict()) == 1.0
    again = make_task(TaskConfig(name="file", path=str(tmp_path / "g.jsonl"), preset="gsm8k", held_out_size=3))
    assert [again.example("train", i).key for i in range(14)] == [t.example("train", i).key for i in range(14)]
    assert [t.example("train", i).key for i in range(7)] != [t.example("train", i).key for i in range(7, 14)]


def test_math_and_code_presets_and_field_mapping(tmp_path):
    math = write(tmp_path / "m.jsonl", [{"problem": "1/2+1/2?", "solution": "so \\boxed{1}", "level": "Level 3"},
                                        {"problem": "x", "solution": "\\boxed{\\frac{1}{2}}", "level": "Level 5"}])
    t = make_task(TaskConfig(name="file", path=math, preset="math", held_out_size=1))
    e = t.example("train", 0)
    assert e.answer in ("1", "\\frac{1}{2}") and e.difficulty in (3, 5) and t.correctness == "math"
    mbpp = write(tmp_path / "c.jsonl", [{"text": "add", "code": "def f(a,b): return a+b",
                                         "test_list": ["assert f(1,2)==3"]}] * 3)
    t = make_task(TaskConfig(name="file", path=mbpp, preset="code", held_out_size=1,
                             fields={"prompt": "text", "tests": "test_list", "solution": "code"}))
    d = t.example("train", 0).as_dict()
    assert d["tests"] == [{"assert": "assert f(1,2)==3"}] and "<answer>def f" in d["solution"]


@pytest.mark.parametrize("row,needle", [
    ('{"question": "a", "answer": "#### 1"', "b.jsonl:3: not valid JSON"),
    ('[1, 2]', "b.jsonl:3: expected a JSON object"),
    ({"quest": "a", "answer": "#### 1"}, "b.jsonl:3: field 'question' (prompt) is missing"),
    ({"question": 7, "answer": "#### 1"}, "b.jsonl:3: field 'question' (prompt) must be a string, got int"),
    ({"question": "a", "answer": "no marker"}, "b.jsonl:3: field 'answer' (answer) has no '#### <answer>' line"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, row, needle):
    path = write(tmp_path / "b.jsonl", [GSM[0], "", row])  # line 2 is blank: line numbers still count it
    with pytest.raises(DataError) as e:
        make_task(TaskConfig(name="file", path=path, preset="gsm8k", held_out_size=1))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_json_array_file_and_a_byte_order_mark_read_as_the_same_rows(tmp_path):
    """A .json file holding one array of objects (json.dump(rows, f, indent=2), pandas/datasets to_json without
    lines) and a JSONL file saved with a UTF-8 byte-order mark give the rows the JSONL file gives."""
    def keys(path):
        t = make_task(TaskConfig(name="file", path=str(path), preset="gsm8k", held_out_size=3))
        return [e.key for e in t.held_out()] + [t.example("train", i).key for i in range(7)]

    ref = keys(write(tmp_path / "g.jsonl", GSM))
    arr = tmp_path / "g.json"
    arr.write_text(json.dumps(GSM, indent=2))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "g.jsonl").read_bytes())
    bom_arr = tmp_path / "bom.json"
    bom_arr.write_bytes(b"\xef\xbb\xbf\n  " + arr.read_bytes())
    assert keys(arr) == keys(bom) == keys(bom_arr) == ref
    for content, needle in (([GSM[0], 3], "bad.json:2: expected a JSON object (row 2 of the array), got int"),
                            ("[{\"question\": 1},", "bad.json: not valid JSON (Expecting value at line 1"),
                            ([], "bad.json: no rows"),
                            ([GSM[0], {"question": "q"}], "bad.json:2: field 'answer' (answer) is missing")):
        bad = tmp_path / "bad.json"
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(DataError) as e:
            make_task(TaskConfig(name="file", path=str(bad), preset="gsm8k", held_out_size=1))
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_missing_file_parquet_without_pyarrow_and_too_few_rows(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        make_task(TaskConfig(name="file", path=str(tmp_path / "none.jsonl")))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "d.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="needs pyarrow"):
            make_task(TaskConfig(name="file", path=str(tmp_path / "d.parquet")))
    with pytest.raises(DataError, match="none left for training"):
        make_task(TaskConfig(name="file", path=write(tmp_path / "g.jsonl", GSM[:2]), preset="gsm8k",
                             held_out_size=2))


def test_file_task_config_errors_name_the_key():
    raw = C.load_raw("tests/configs/tiny.yaml")
    C.apply_override(raw, "task.name=file")
    with pytest.raises(ConfigError, match=r"stages\[0\].task.path: a file task needs"):
        C.from_dict(raw)


def test_stream_state_resumes_exactly(tmp_path):
    t = make_task(TaskConfig(name="file", path=write(tmp_path / "g.jsonl", GSM), preset="gsm8k", held_out_size=2))
    fetch = lambda i: t.example("train", i).as_dict()
    a = ExampleStream(fetch, 3)
    for _ in range(4):
        next(a)
    state = a.get_state()
    want = [[e["key"] for e in next(a)] for _ in range(3)]
    b = ExampleStream(fetch, 3)
    b.set_state(state)
    assert [[e["key"] for e in next(b)] for _ in range(3)] == want


def test_stream_fetches_the_examples_of_the_batches_taken_and_starts_no_thread():
    """No read-ahead: a fetch is an in-memory lookup; grain's default (16 threads, 500 batches ahead) fetched
    ~85 examples per example used and left its threads running after a stage that failed."""
    import threading

    calls = []
    before = threading.active_count()
    s = ExampleStream(lambda i: calls.append(i) or {"i": i}, 4)
    assert [[e["i"] for e in next(s)] for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert calls == list(range(12)) and threading.active_count() == before


def test_instruct_task_and_rules():
    t = make_task(TaskConfig(name="instruct", held_out_size=16))
    for i in range(20):
        e = t.example("train", i).as_dict()
        assert get("instruct")(e["solution"], e) == 1.0 and get("format")(e["solution"], e) == 1.0
    e = {"constraints": {"items": 3, "keywords": ["b", "e"], "separator": "-"}}
    assert get("instruct")("<think>x</think><answer>b-e-a</answer>", e) == 1.0
    assert get("instruct_length")("<answer>b-e</answer>", e) == 0.0
    assert get("instruct_keywords")("<answer>b-a-c</answer>", e) == 0.5
    assert get("instruct_format")("<answer>b;e;a</answer>", e) == 0.0
    assert get("instruct")("<answer>b-e-ab</answer>", e) == 0.0


def test_mixture_sources_resolve_and_validate():
    raw = C.load_raw("tests/configs/r1_tiny.yaml")
    cfg = C.from_dict(raw)
    mt = C.stage(cfg, "multitask")
    assert [s.name for s in mt.tasks] == ["arithmetic", "instruct"]
    assert mt.tasks[1].task.name == "instruct" and mt.tasks[1].task.held_out_size == 8  # merged over the stage's
    assert [r.name for r in mt.tasks[0].rewards] == ["accuracy", "format"]  # the stage's rewards by default
    assert [r.name for r in mt.tasks[1].rewards] == ["instruct", "format"]
    C.apply_override(raw, "stages.multitask.tasks.1.weight=0")
    with pytest.raises(ConfigError, match=r"stages\[3\].tasks\[1\].weight: must be positive"):
        C.from_dict(raw)


@pytest.mark.parametrize("path", ["configs/r1_pipeline.yaml", "configs/examples/qwen2.5-math-1.5b_gsm8k.yaml",
                                  "configs/examples/qwen2.5-math-1.5b_math_r1.yaml",
                                  "configs/examples/gemma-4-e2b-it_gsm8k_lora.yaml"])
def test_shipped_configs_resolve(path):
    cfg = C.load(path)
    assert cfg.stages and all(s.kind in C.STAGE_KINDS for s in cfg.stages)


def test_a_prompt_that_opens_think_is_the_start_of_the_layout(tmp_path):
    """Reasoning models' chat templates (DeepSeek-R1 and its distilled models) end the generation prompt with
    '<think>\\n': the completion holds only '</think>'. The format reward counts the prompt's '<think>' as the
    completion's start, and a file task's SFT target does not open a second one."""
    t = make_task(TaskConfig(name="file", path=write(tmp_path / "g.jsonl", GSM), preset="gsm8k", held_out_size=3,
                             template="<｜User｜>{prompt}<｜Assistant｜><think>\n"))
    e = t.example("train", 0)
    assert e.prompt.endswith("<think>\n") and not e.solution.startswith("<think>")
    assert e.solution.count("<think>") == 0 and e.solution.count("</think>") == 1
    fmt = get("format")
    assert fmt(e.solution, e.as_dict()) == 1.0 and get("accuracy")(e.solution, e.as_dict()) == 1.0
    assert fmt("<think>again" + e.solution, e.as_dict()) == 0.0  # a second <think> breaks the layout
    plain = make_task(TaskConfig(name="file", path=str(tmp_path / "g.jsonl"), preset="gsm8k", held_out_size=3))
    p = plain.example("train", 0)
    assert p.solution.startswith("<think>") and fmt(p.solution, p.as_dict()) == 1.0
    assert fmt(e.solution, p.as_dict()) == 0.0  # without the prompt's <think> the same text lacks the opening
