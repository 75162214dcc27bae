"""Mann–Whitney, Hodges–Lehmann and BH against independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tlsquant.stats import (
    benjamini_hochberg,
    compare_groups,
    hodges_lehmann,
    mann_whitney,
    u_distribution,
)


def _enumerated_p(a, b):
    """Two-sided p by enumerating every assignment of the pooled values to the groups."""
    pooled = np.concatenate([a, b])
    ranks = scipy_stats.rankdata(pooled)
    n_a = len(a)
    observed = ranks[:n_a].sum()
    expected = n_a * (len(pooled) + 1) / 2
    extreme = total = 0
    for chosen in itertools.combinations(range(len(pooled)), n_a):
        total += 1
        if abs(ranks[list(chosen)].sum() - expected) >= abs(observed - expected) - 1e-9:
            extreme += 1
    return extreme / total


def test_reference_study_complete_separation_gives_2_over_35():
    good = [0.21, 0.105, 0.15]  # 3 good responders, all above the 4 poor ones
    poor = [0.012, 0.0, 0.03, 0.02]
    result = mann_whitney(good, poor)
    assert result["method"] == "exact"
    assert result["p"] == pytest.approx(2 / 35) and round(result["p"], 4) == 0.0571
    assert result["u"] == 12
    table = compare_groups(pd.DataFrame({"response": ["good"] * 3 + ["poor"] * 4,
                                         "tls_density_per_mm2": good + poor,
                                         "tls_area_pct": [0.49, 0.6, 0.45, 0.03, 0.04, 0.01, 0.02]}),
                           "response")
    assert list(table["p"].round(4)) == [0.0571, 0.0571]
    assert list(table["effect_size"]) == [1.0, 1.0]


def test_u_distribution_matches_enumeration():
    for n_a, n_b in [(1, 1), (2, 3), (3, 4), (4, 4)]:
        counts = [0] * (n_a * n_b + 1)
        for chosen in itertools.combinations(range(n_a + n_b), n_a):
            u = sum(1 for i in chosen for j in range(n_a + n_b) if j not in chosen and i > j)
            counts[u] += 1
        assert list(u_distribution(n_a, n_b)) == counts


@pytest.mark.parametrize("seed", range(8))
def test_p_values_agree_with_full_enumeration(seed):
    rng = np.random.default_rng(seed)
    tied = seed >= 4
    n_a, n_b = (int(rng.integers(7, 10)), int(rng.integers(7, 10))) if tied else (int(rng.integers(3, 7)), int(rng.integers(3, 7)))
    a = rng.normal(0.5 * (seed % 2), 1, n_a)
    b = rng.normal(0, 1, n_b)
    if tied:  # the normal approximation with tie correction: close to enumeration, not equal
        a, b = np.round(a * 2) / 2, np.round(b * 2) / 2
    result = mann_whitney(a, b)
    enumerated = _enumerated_p(a, b)
    if result["method"] == "exact":
        assert result["p"] == pytest.approx(enumerated)
        assert result["p"] == pytest.approx(scipy_stats.mannwhitneyu(a, b, method="exact").pvalue)
    else:
        assert "tie-corrected" in result["method"]
        assert result["p"] == pytest.approx(scipy_stats.mannwhitneyu(a, b, method="asymptotic").pvalue)
        assert abs(result["p"] - enumerated) < 0.03


def test_hodges_lehmann_shift_and_interval():
    rng = np.random.default_rng(3)
    a = rng.normal(2.0, 1, 30)
    b = rng.normal(0.0, 1, 25)
    shift, low, high = hodges_lehmann(a, b)
    assert shift == pytest.approx(np.median(np.subtract.outer(a, b)))
    assert low < shift < high and low < 2.0 < high
    # coverage of the exact interval on small samples is at least 95 %
    covered = 0
    for trial in range(300):
        x, y = rng.normal(1.0, 1, 6), rng.normal(0.0, 1, 7)
        _, lo, hi = hodges_lehmann(x, y)
        covered += lo <= 1.0 <= hi
    assert covered / 300 >= 0.93
    assert hodges_lehmann([1, 2, 3], [0, 1, 2, 3])[1:] == (None, None)  # too small for 95 %


def test_benjamini_hochberg_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.20, None]
    q = benjamini_hochberg(p)
    assert q[:4] == pytest.approx([0.04, 0.0533333, 0.0533333, 0.2], rel=1e-5)
    assert q[4] is None


def test_missing_values_are_excluded_and_counted():
    df = pd.DataFrame({"g": ["a", "a", "a", "b", "b", "b"],
                       "tls_density_per_mm2": [1.0, None, 2.0, 0.5, 0.1, None]})
    row = compare_groups(df, "g").iloc[0]
    assert (row.n_a, row.n_b, row.excluded_a, row.excluded_b) == (2, 2, 1, 1)
    assert row.median_a == 1.5 and not math.isnan(row.p)


def test_group_errors():
    from tlsquant.errors import TLSQuantError

    df = pd.DataFrame({"g": ["a", "b", "c"], "tls_count": [1, 2, 3]})
    with pytest.raises(TLSQuantError, match="holds 3 groups"):
        compare_groups(df, "g")
    with pytest.raises(TLSQuantError, match="group column 'arm' not found"):
        compare_groups(df, "arm")
    with pytest.raises(TLSQuantError, match="group 'z' not found"):
        compare_groups(df, "g", groups=["a", "z"])
    with pytest.raises(TLSQuantError, match="metric column"):
        compare_groups(df, "g", groups=["a", "b"], metrics=["cd20_pct"])
