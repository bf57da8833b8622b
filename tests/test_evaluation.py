import itertools

import pytest

from reasoning_rl.evaluation import maj_at_k, pass_at_k


@pytest.mark.parametrize("n,c", [(4, 0), (4, 1), (4, 3), (6, 2), (8, 8), (5, 4)])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_pass_at_k_equals_enumeration_over_subsets(n, c, k):
    if k > n:
        return
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    exact = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_maj_at_k():
    assert maj_at_k(["5", "5", "6", None], [True, True, False, False], 4) == 1.0
    assert maj_at_k(["6", "5", "6", "5"], [False, True, False, True], 3) == 0.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
