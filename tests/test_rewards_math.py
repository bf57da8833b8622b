"""Answer extraction, accuracy, math equivalence (math-verify) and the format reward."""

import threading
import time

import pytest

from reasoning_rl.rewards import RewardComputer, RewardSpec, extract_answer, get, score_math
from reasoning_rl.rewards.extract import extract_program
from reasoning_rl.rewards.math import parse_number


def A(x):  # completion in the trained format
    return f"<think>working it out</think>\n<answer>{x}</answer>"


# (completion, reference, expected)
MATH_CASES = [
    # fractions, decimals, LaTeX fraction forms
    (A("0.5"), "\\frac{1}{2}", 1.0),
    (A("\\frac{1}{2}"), "0.5", 1.0),
    (A("1/2"), "0.5", 1.0),
    (A("\\dfrac{3}{4}"), "0.75", 1.0),
    (A("\\tfrac{3}{4}"), "3/4", 1.0),
    (A("0.75"), "\\dfrac{3}{4}", 1.0),
    (A("\\frac{2}{4}"), "\\frac{1}{2}", 1.0),
    (A("0.333"), "\\frac{1}{3}", 0.0),
    (A("\\frac{1}{3}"), "1/3", 1.0),
    (A("-\\frac{3}{4}"), "-0.75", 1.0),
    (A("\\frac{-3}{4}"), "-3/4", 1.0),
    (A("3/4"), "4/3", 0.0),
    # integers, signs, separators, scientific notation
    (A("1,000"), "1000", 1.0),
    (A("1000"), "1,000", 1.0),
    (A("1,000,000"), "1000000", 1.0),
    (A("1e3"), "1000", 1.0),
    (A("2.5E-1"), "0.25", 1.0),
    (A("1e3"), "10^3", 1.0),
    (A("-3"), "-3", 1.0),
    (A("-3"), "3", 0.0),
    (A("3"), "-3", 0.0),
    (A("+7"), "7", 1.0),
    (A("007"), "7", 1.0),
    (A("7.0"), "7", 1.0),
    (A("7.01"), "7", 0.0),
    (A("3.14"), "3.1416", 0.0),
    (A("3.14159"), "\\pi", 0.0),
    (A("\\pi"), "\\pi", 1.0),
    (A("2\\pi"), "2\\pi", 1.0),
    (A("99"), "100", 0.0),
    (A("100"), "99.99", 0.0),
    # percentages
    (A("50\\%"), "50\\%", 1.0),
    (A("50%"), "0.5", 1.0),
    # equations, units, text
    (A("x=5"), "5", 1.0),
    (A("x = 5"), "5", 1.0),
    (A("y=6"), "5", 0.0),
    (A("10 \\text{ cm}"), "10", 1.0),
    (A("10\\text{ cm}"), "11", 0.0),
    (A("\\text{B}"), "B", 1.0),
    (A("B"), "C", 0.0),
    # radicals and expressions
    (A("\\frac{\\sqrt{2}}{2}"), "\\frac{1}{\\sqrt{2}}", 1.0),
    (A("\\sqrt{2}/2"), "1/\\sqrt{2}", 1.0),
    (A("\\sqrt{8}"), "2\\sqrt{2}", 1.0),
    (A("\\sqrt{3}"), "\\sqrt{2}", 0.0),
    (A("(x+1)^2"), "x^2+2x+1", 1.0),
    (A("x^2+1"), "x^2+2x+1", 0.0),
    (A("2^{10}"), "1024", 1.0),
    (A("2^{10}"), "1023", 0.0),
    # intervals and sets
    (A("(1,2]"), "(1,2]", 1.0),
    (A("[1,2]"), "(1,2]", 0.0),
    (A("[1,2)"), "[1,2]", 0.0),
    (A("(-\\infty, 3)"), "(-\\infty,3)", 1.0),
    (A("\\{1,2\\}"), "\\{2,1\\}", 1.0),
    (A("\\{1,2,3\\}"), "\\{1,2\\}", 0.0),
    (A("1, 2"), "2, 1", 1.0),
    # extraction: boxed, multiple boxed, nested braces, fallbacks
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("first \\boxed{3} then corrected: \\boxed{4}", "4", 1.0),
    ("first \\boxed{3} then corrected: \\boxed{4}", "3", 0.0),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed 5", "5", 1.0),
    ("<answer>1</answer> wait, no: <answer>2</answer>", "2", 1.0),
    ("<answer>1</answer> wait, no: <answer>2</answer>", "1", 0.0),
    ("we get 12 apples and then 42", "42", 1.0),
    ("we get 42 apples and then 12", "42", 0.0),
    # empty / garbage
    (A(""), "5", 0.0),
    (A("   "), "5", 0.0),
    ("no numbers here", "5", 0.0),
    (A("5"), "", 0.0),
    ("", "", 0.0),
    (A("\\frac{1}{0}"), "0", 0.0),
    (A("}{"), "1", 0.0),
]


def test_table_is_big_enough():
    assert len(MATH_CASES) >= 60


@pytest.mark.parametrize("completion,reference,expected", MATH_CASES)
def test_score_math_table(completion, reference, expected):
    assert score_math(completion, reference) == expected


def test_math_reward_matches_score_math():
    fn = get("math")
    comp = RewardComputer([RewardSpec("math")], max_workers=4)
    completions = [c for c, _, _ in MATH_CASES[:20]]
    examples = [{"answer": r} for _, r, _ in MATH_CASES[:20]]
    res = comp(completions, examples)
    assert list(res.per_reward["math"]) == [e for _, _, e in MATH_CASES[:20]]
    assert fn(A("0.5"), {"answer": "1/2"}) == 1.0
    comp.close()


# --------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("text,expected", [
    ("<answer>42</answer>", "42"),
    ("<answer> 1 </answer> and <answer>2</answer>", "2"),
    ("<answer>unclosed", None),
    ("\\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
    ("\\boxed{a{b{c}}d} and \\boxed{x}", "x"),
    ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
    ("\\boxed{1} \\boxed{2", "1"),  # last one malformed -> previous
    ("\\boxed 7.", "7."),
    ("$\\boxed{12}$", "12"),
    ("<answer>3</answer> \\boxed{4}", "3"),  # <answer> wins over boxed
    ("the result is -3.5 then 1,234", "1234"),
    ("it is 3/4", "3/4"),
    ("it is -0.25.", "-0.25"),
    ("nothing", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_fallback_none_and_garbage():
    assert extract_answer("the answer is 5", fallback="none") is None
    assert extract_answer(None) is None
    assert extract_answer(b"<answer>9</answer>") == "9"
    assert extract_answer("x" * 1_000_000 + " 7") == "7"
    assert extract_answer("\\boxed{" * 50_000) is None
    with pytest.raises(ValueError):
        extract_answer("1", fallback="bogus")


def test_extract_program():
    assert extract_program("<answer>print(1)</answer>") == "print(1)"
    assert extract_program("text\n```python\na=1\n```\nmore\n```python\nb=2\n```\n") == "b=2\n"
    assert extract_program("<answer>\n```python\nc=3\n```\n</answer>") == "c=3\n"
    assert extract_program("just code()") == "just code()"


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("answer,reference,expected", [
    ("42", "42", 1.0), (" 42 ", "42", 1.0), ("42.0", "42", 1.0), ("3/4", "0.75", 1.0),
    ("6/8", "3/4", 1.0), ("-2", "-2.00", 1.0), ("1,000", "1000", 1.0), ("1e2", "100", 1.0),
    ("0.1", "1/10", 1.0), ("0.3333", "1/3", 0.0), ("41", "42", 0.0), ("-42", "42", 0.0),
    ("abc", "abc", 1.0), ("abc", "ABC", 0.0), ("", "", 0.0), ("3/0", "3/0", 1.0), ("3/0", "0", 0.0),
])
def test_accuracy(answer, reference, expected):
    assert get("accuracy")(f"<answer>{answer}</answer>", {"answer": reference}) == expected


def test_parse_number():
    from fractions import Fraction
    assert parse_number("1,234.5") == Fraction(2469, 2)
    assert parse_number("\\frac{3}{4}") == Fraction(3, 4)
    assert parse_number("$5$") == 5
    assert parse_number("x") is None and parse_number("1/0") is None and parse_number("1" * 500) is None


def test_accuracy_is_fast():
    fn = get("accuracy")
    t0 = time.perf_counter()
    for i in range(2000):
        fn(f"<think>...</think><answer>{i}/7</answer>", {"answer": f"{2 * i}/14"})
    assert time.perf_counter() - t0 < 1.0


# --------------------------------------------------------------------------- format
FMT = get("format")


@pytest.mark.parametrize("text,strict,partial", [
    ("<think>a</think><answer>b</answer>", 1.0, 1.0),
    ("  \n<think>a</think>\n\n<answer>b</answer>\n", 1.0, 1.0),
    ("<think>a</think> <answer>b</answer></s>", 1.0, 1.0),
    ("<think>a</think><answer>b</answer><|im_end|>\n", 1.0, 1.0),
    ("<think>a</think><answer>b</answer> trailing", 0.0, 0.75),
    ("pre <think>a</think><answer>b</answer>", 0.0, 0.75),
    ("<think>a</think> junk <answer>b</answer>", 0.0, 0.75),
    ("<think>a</think>", 0.0, 0.5),
    ("<answer>b</answer>", 0.0, 0.5),
    ("<think>a<answer>b</answer>", 0.0, 0.75),
    ("<think>a</think><think>x</think><answer>b</answer>", 0.0, 0.5),
    ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0, 0.5),
    ("<answer>b</answer><think>a</think>", 0.0, 0.5),
    ("</think><think><answer>b</answer>", 0.0, 0.75),
    ("nothing", 0.0, 0.0),
    ("", 0.0, 0.0),
])
def test_format(text, strict, partial):
    assert FMT(text, {}) == strict
    assert FMT(text, {}, partial=True) == partial


def test_format_via_computer_kwargs():
    comp = RewardComputer([RewardSpec("format", 1.0, {"partial": True})], max_workers=1)
    res = comp(["<think>a</think>", None], [{}, {}])
    assert list(res.per_reward["format"]) == [0.5, 0.0]


# --------------------------------------------------------------------------- robustness
GARBAGE = [None, b"\xff\xfe<answer>1</answer>", 12, 3.5, [], {}, object(), "\x00" * 100,
           "<answer>" * 10_000, "\\boxed{" * 10_000, "9" * 100_000, "x" * 2_000_000 + "<answer>1</answer>",
           "<answer>\\frac{1}{</answer>", "<answer>\\sqrt{</answer>", "<answer>$$$</answer>",
           "<answer>" + "(" * 5000 + "</answer>", "<answer>\ud800</answer>"]


@pytest.mark.parametrize("bad", GARBAGE, ids=range(len(GARBAGE)))
def test_never_raises(bad):
    for ref in ("1", bad):
        assert score_math(bad, ref, timeout_s=1.0) in (0.0, 1.0)
    for name in ("accuracy", "format"):
        assert get(name)(bad, {"answer": "1"}) in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert get("math")(bad, {"answer": bad}, timeout_s=1.0) in (0.0, 1.0)


def test_thread_safety_8_threads():
    cases = MATH_CASES[:24]
    results: dict[int, list[float]] = {}

    def work(t):
        results[t] = [score_math(c, r) for c, r, _ in cases]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    expected = [e for _, _, e in cases]
    assert len(results) == 8 and all(v == expected for v in results.values())


def test_hanging_sympy_is_bounded():
    # 9^(9^(9^9)) makes sympy try to evaluate an astronomically large integer.
    t0 = time.monotonic()
    assert score_math(A("2"), "9^{9^{9^{9}}}", timeout_s=1.0) == 0.0
    assert time.monotonic() - t0 < 10.0
    # the pool was replaced and still works
    assert score_math(A("\\frac{1}{2}"), "\\dfrac{2}{4}") == 1.0
