"""Outcome statistics: response rates, Fisher, groups, ROC, survival and maxstat against independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tlsquant.errors import TLSQuantError
from tlsquant.groups import assign_groups, parse_cut
from tlsquant.response import fisher_exact_2xk, proportion_ci, recist_categories, response_rates, response_tests


@pytest.mark.parametrize("k, n, method, expected", [
    (23, 28, "clopper-pearson", (82.1, 63.1, 93.9)),  # the seed trials' intervals
    (16, 52, "clopper-pearson", (30.8, 18.7, 45.1)),
    (43, 52, "clopper-pearson", (82.7, 69.7, 91.8)),
    (6, 13, "wilson", (46.2, 23.2, 70.9)),
    (13, 13, "wilson", (100.0, 77.2, 100.0)),
])
def test_proportion_intervals_reproduce_published_values(k, n, method, expected):
    rate, low, high = proportion_ci(k, n, method=method)
    assert tuple(round(100 * v, 1) for v in (rate, low, high)) == expected


def test_clopper_pearson_matches_beta_quantiles_and_wilson_the_score_formula():
    k, n = 7, 19
    _, low, high = proportion_ci(k, n)
    assert low == pytest.approx(scipy_stats.beta.ppf(0.025, k, n - k + 1))
    assert high == pytest.approx(scipy_stats.beta.ppf(0.975, k + 1, n - k))
    z, p = scipy_stats.norm.ppf(0.975), k / n
    centre, half = (p + z**2 / (2 * n)) / (1 + z**2 / n), z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert proportion_ci(k, n, method="wilson")[1:] == pytest.approx((centre - half, centre + half))
    assert proportion_ci(0, 0) == (None, None, None)
    with pytest.raises(TLSQuantError, match="agresti"):
        proportion_ci(1, 2, method="agresti")


def _brute_fisher(responders, totals):
    """Enumerate every 2 x k table with the observed margins (plain Python)."""
    hits, grand = sum(responders), sum(totals)

    def prob(counts):
        return math.prod(math.comb(t, c) for t, c in zip(totals, counts)) / math.comb(grand, hits)

    observed = prob(responders)
    return sum(prob(c) for c in itertools.product(*[range(t + 1) for t in totals])
               if sum(c) == hits and prob(c) <= observed * (1 + 1e-7))


@pytest.mark.parametrize("responders, totals", [([3, 9], [10, 12]), ([0, 5], [6, 6]), ([2, 5, 7], [8, 9, 9]), ([1, 1, 4, 2], [4, 5, 6, 3])])
def test_fisher_matches_scipy_and_enumeration(responders, totals):
    p = fisher_exact_2xk(responders, totals)
    assert p == pytest.approx(_brute_fisher(responders, totals), rel=1e-9)
    if len(totals) == 2:
        table = [[responders[0], totals[0] - responders[0]], [responders[1], totals[1] - responders[1]]]
        assert p == pytest.approx(scipy_stats.fisher_exact(table).pvalue, rel=1e-9)


def _cohort():
    return pd.DataFrame({
        "response": ["CR", "PR", "PR", "SD", "PD", "pd", "NE", None, "SD", "PR"],
        "tls_density_per_mm2": [0.3, 0.2, 0.25, 0.02, 0.0, 0.01, 0.0, 0.1, 0.15, 0.05],
        "tls_mature_count": [2, 1, 0, 0, 0, 0, 0, 1, 1, 0],
    })


def test_response_rates_overall_and_by_group():
    df = _cohort()
    groups, rule = assign_groups(df, "tls_density_per_mm2", cut="median")
    assert "median (0.075)" in rule
    table = response_rates(df, "response", groups=groups, group_by="tls_density_per_mm2")
    overall = table[(table.group == "all")].set_index("endpoint")
    # 9 with a response (one missing); ORR = CR + PR = 4/9; DCR adds SD: 6/9; NE stays in the denominator
    assert (overall.loc["ORR", "responders"], overall.loc["ORR", "n"], overall.loc["ORR", "excluded"]) == (4, 9, 1)
    assert overall.loc["DCR", "responders"] == 6
    high = table[(table.endpoint == "ORR") & (table.group == "high")].iloc[0]
    assert (high.responders, high.n) == (3, 4)  # above 0.075: CR, PR, PR, SD (0.1 has no response)
    excluded = response_rates(df, "response", exclude_not_evaluable=True)
    assert excluded.loc[excluded.endpoint == "ORR", "n"].iloc[0] == 8
    tests = response_tests(df, "response", groups, group_by="tls_density_per_mm2")
    row = tests.set_index("endpoint").loc["ORR"]
    assert row.groups == "low/high" and row.responders == "1/3" and row.n == "5/4"
    assert row.p == pytest.approx(scipy_stats.fisher_exact([[1, 4], [3, 1]]).pvalue)


def test_response_labels_are_configurable_and_unknown_labels_named():
    df = pd.DataFrame({"best": ["responder", "non-responder", "Responder"]})
    cats = recist_categories(df["best"], categories={"PR": "responder", "PD": ["non-responder"]}, column="best")
    assert list(cats) == ["PR", "PD", "PR"]
    with pytest.raises(TLSQuantError, match=r"column 'best'.*responder.*not recognised"):
        recist_categories(df["best"], column="best")


def test_groups_from_cut_points():
    df = _cohort()
    labels, _ = assign_groups(df, "tls_mature_count", cut="present")
    assert list(labels) == ["present", "present", "absent", "absent", "absent", "absent", "absent", "present", "present", "absent"]
    labels, rule = assign_groups(df, "tls_density_per_mm2", cut="tertiles")
    assert labels.value_counts().to_dict() == {"T1": 4, "T2": 3, "T3": 3} and "T1 ≤" in rule
    labels, _ = assign_groups(df, "tls_density_per_mm2", cut=0.1)
    assert (labels == "high").sum() == 4
    labels, _ = assign_groups(pd.DataFrame({"arm": ["x", "y", None]}), "arm")
    assert list(labels) == ["x", "y", None]
    assert parse_cut("0.05") == 0.05 and parse_cut("Median") == "median"
    with pytest.raises(TLSQuantError, match="cut-point 'top'"):
        parse_cut("top")
    with pytest.raises(TLSQuantError, match="holds labels"):
        assign_groups(pd.DataFrame({"arm": ["x", "y", "z"]}), "arm", cut="median")
