import math

import pytest

from diffalign.stats import win_rate


def test_win_rate_hand_worked_example():
    # outcomes: win, win, tie, loss -> o = [1, 1, .5, 0]; mean = .625
    # sd (n-1) = sqrt(((.375)^2*2 + (.125)^2 + (.625)^2) / 3) = sqrt(0.6875 / 3) = 0.478714
    wr = win_rate([3, 2, 1, 0], [1, 1, 1, 5])
    assert (wr.wins, wr.ties, wr.losses) == (2, 1, 1)
    assert wr.rate == pytest.approx(0.625)
    half = 1.959964 * math.sqrt(0.6875 / 3) / 2
    assert wr.low == pytest.approx(0.625 - half, rel=1e-5) and wr.high == pytest.approx(0.625 + half, rel=1e-5)


def test_win_rate_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="equal-length"):
        win_rate([1, 2, 3], [1, 2])


def test_win_rate_leaves_out_cases_where_a_score_is_undefined():
    wr = win_rate([3, float("nan"), 2, 0], [1, 1, float("nan"), 5])
    assert (wr.wins, wr.ties, wr.losses) == (1, 0, 1)


def test_mean_ci_hand_worked_example():
    from diffalign.stats import mean_ci

    # values 1, 2, 3, 6 (and a NaN, left out): mean 3; sd (n-1) = sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14/3)
    m = mean_ci([1, 2, float("nan"), 3, 6])
    assert m.n == 4 and m.mean == pytest.approx(3.0)
    half = 1.959964 * math.sqrt(14 / 3) / 2
    assert (m.low, m.high) == (pytest.approx(3 - half, rel=1e-5), pytest.approx(3 + half, rel=1e-5))
    assert mean_ci([float("nan")]).n == 0
