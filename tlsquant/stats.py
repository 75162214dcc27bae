"""Group comparisons: two-sided Mann–Whitney U with effect sizes and FDR control.

Exact p-values come from the permutation distribution of U given the observed ties
(counted by dynamic programming over the pooled midranks, which equals enumerating every
assignment of the pooled values to the two groups) when neither group has more than
``EXACT_MAX_N`` values; beyond that the normal approximation with tie correction is used.
The method is reported per row. The Hodges–Lehmann confidence interval inverts the same
test, so it excludes 0 exactly when the exact p is below 1 − confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

# the B-cell marker's positive cells as % of all cells, named by role (not by marker: CD20, CD19 or MS4A1
# depending on channels.b_cells), so one cohort compares slides of different panels
B_CELL_METRIC = "b_cell_pct"
DEFAULT_METRICS = ("tls_density_per_mm2", "tls_area_pct", "tls_mature_density_per_mm2", "tls_count", B_CELL_METRIC)
EXACT_MAX_N = 50  # exact (conditional) distribution when both groups are at most this large

STATS_COLUMNS = [
    "metric", "group_a", "group_b", "n_a", "n_b", "excluded_a", "excluded_b", "median_a", "median_b",
    "iqr_a", "iqr_b", "u", "p", "method", "effect_size", "hl_shift", "hl_ci_low", "hl_ci_high", "q",
]


@lru_cache(maxsize=256)
def u_distribution(n_a: int, n_b: int) -> tuple[int, ...]:
    """Number of rank assignments giving each U = 0..n_a*n_b (no ties)."""
    # counts[i][j] over u: ways for i items of a and j items of b; recurrence on the largest item
    previous = [np.zeros(1, dtype=object) for _ in range(n_b + 1)]
    for j in range(n_b + 1):
        previous[j] = np.array([1], dtype=object)  # i = 0: U = 0 one way
    for i in range(1, n_a + 1):
        current = [np.array([1], dtype=object)]  # j = 0
        for j in range(1, n_b + 1):
            size = i * j + 1
            counts = np.zeros(size, dtype=object)
            # largest value belongs to a: it beats all j of b -> U shifts by j
            from_a = previous[j]
            counts[j : j + from_a.size] += from_a
            from_b = current[j - 1]
            counts[: from_b.size] += from_b
            current.append(counts)
        previous = current
    return tuple(int(v) for v in previous[n_b])


def _tie_blocks(values: np.ndarray) -> tuple[int, ...]:
    """Sizes of the runs of equal values in sorted order (all ones without ties)."""
    _, counts = np.unique(values, return_counts=True)
    return tuple(int(c) for c in counts)


@lru_cache(maxsize=256)
def rank_sum_distribution(tie_blocks: tuple[int, ...], n_a: int) -> np.ndarray:
    """Counts of the doubled rank sum of group a over every assignment, given the ties.

    Parameters
    ----------
    tie_blocks : tuple of int
        Sizes of the runs of tied values of the pooled sample, in ascending order of value
        (``(1,) * N`` without ties).
    n_a : int
        Size of group a.

    Returns
    -------
    ndarray of float, shape (N * (N + 1) + 1,)
        ``counts[s]`` = number of the C(N, n_a) subsets whose doubled midrank sum is ``s``
        (doubled so that midranks of ties stay integers). Counts are exact integers up to
        2**53, i.e. for N up to about 55; beyond, relative precision is 1e-16.
    """
    scores = []
    position = 0
    for size in tie_blocks:
        scores += [2 * position + size + 1] * size  # doubled midrank of the block
        position += size
    total = sum(scores)
    # table[k, s]: subsets of k of the items seen so far with doubled rank sum s
    table = np.zeros((n_a + 1, total + 1))
    table[0, 0] = 1.0
    for score in scores:
        # numpy evaluates overlapping in-place operands as if copied: each item used once
        table[1:, score:] += table[:-1, : total + 1 - score]
    return table[n_a]


def _exact_conditional_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact p of the rank sum given the ties: P(|R - E R| >= |r - E R|)."""
    pooled = np.concatenate([a, b])
    doubled_ranks = np.rint(2 * scipy_stats.rankdata(pooled)).astype(np.int64)
    observed = int(doubled_ranks[: a.size].sum())
    expected = a.size * (pooled.size + 1)  # doubled mean rank sum
    counts = rank_sum_distribution(_tie_blocks(pooled), a.size)
    sums = np.arange(counts.size)
    extreme = np.abs(sums - expected) >= abs(observed - expected)
    return float(min(1.0, counts[extreme].sum() / counts.sum()))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Mann–Whitney U test of ``a`` vs ``b`` (NaNs must be removed first).

    Parameters
    ----------
    a, b : sequence of float
        The two samples.

    Returns
    -------
    dict
        ``u``: U for group a (pairs where a > b, ties counting one half); ``p``: two-sided
        p-value, the probability of a U at least as far from its mean as observed (with ties
        the distribution is not symmetric, so this is not twice the one-sided p); ``method``: ``"exact"`` (no ties), ``"exact conditional (ties)"`` (the
        permutation distribution given the observed ties) when neither group exceeds
        ``EXACT_MAX_N`` values, else ``"normal approximation, tie-corrected"``.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n_a, n_b = a.size, b.size
    if n_a == 0 or n_b == 0:
        return {"u": None, "p": None, "method": "not enough values"}
    ranks = scipy_stats.rankdata(np.concatenate([a, b]))
    u_a = float(ranks[:n_a].sum() - n_a * (n_a + 1) / 2)
    _, tie_counts = np.unique(np.concatenate([a, b]), return_counts=True)
    tied = bool((tie_counts > 1).any())
    if max(n_a, n_b) <= EXACT_MAX_N:
        return {"u": u_a, "p": _exact_conditional_p(a, b), "method": "exact conditional (ties)" if tied else "exact"}
    n = n_a + n_b
    mean = n_a * n_b / 2
    tie_term = float((tie_counts**3 - tie_counts).sum())
    variance = n_a * n_b / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        return {"u": u_a, "p": 1.0, "method": "normal approximation, tie-corrected (all values tied)"}
    z = (abs(u_a - mean) - 0.5) / math.sqrt(variance)  # with continuity correction
    p = float(min(1.0, 2 * scipy_stats.norm.sf(max(z, 0.0))))
    return {"u": u_a, "p": p, "method": "normal approximation, tie-corrected"}


def _inverted_interval(a: np.ndarray, b: np.ndarray, shift: float, alpha: float) -> tuple:
    """Bounds of {delta : exact conditional p(a - delta, b) > alpha}.

    The p-value only changes where a - delta meets a value of b, i.e. at the pairwise
    differences: it is evaluated once inside each open interval between consecutive
    distinct differences (and on the two rays outside them). The accepted intervals form
    a run around the estimate; its ends are found by bisection.
    """
    distinct = np.unique(np.subtract.outer(a, b).ravel())
    m = distinct.size

    def probe(j: int) -> float:  # a point inside interval j: 0 = below all, m = above all
        if j == 0:
            return distinct[0] - 1.0
        if j == m:
            return distinct[-1] + 1.0
        return 0.5 * (distinct[j - 1] + distinct[j])

    accepted_cache: dict[int, bool] = {}

    def accepted(j: int) -> bool:
        if j not in accepted_cache:
            accepted_cache[j] = _exact_conditional_p(a - probe(j), b) > alpha
        return accepted_cache[j]

    centre = int(np.searchsorted(distinct, shift, side="left"))  # interval just below the estimate
    if not accepted(centre):
        centre = min(centre + 1, m)
        if not accepted(centre):
            return None, None
    low_j, high_j = 0, centre  # smallest accepted index in [0, centre]
    while low_j < high_j:
        middle = (low_j + high_j) // 2
        if accepted(middle):
            high_j = middle
        else:
            low_j = middle + 1
    first = low_j
    low_j, high_j = centre, m  # largest accepted index in [centre, m]
    while low_j < high_j:
        middle = (low_j + high_j + 1) // 2
        if accepted(middle):
            low_j = middle
        else:
            high_j = middle - 1
    last = low_j
    lower = None if first == 0 else float(distinct[first - 1])
    upper = None if last == m else float(distinct[last])
    return lower, upper


def hodges_lehmann(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> tuple:
    """Hodges–Lehmann shift (median of a_i - b_j) and the confidence interval of the same test.

    Parameters
    ----------
    a, b : sequence of float
        The two samples (NaNs removed).
    confidence : float
        Coverage of the interval.

    Returns
    -------
    (shift, low, high)
        With at most ``EXACT_MAX_N`` values per group the interval is the set of shifts
        that the exact conditional Mann–Whitney test (:func:`mann_whitney`) does not reject
        at 1 − ``confidence``; without ties this is the classic [D(k), D(N−k+1)] of the
        sorted pairwise differences. Beyond, k comes from the normal approximation. A bound
        is None when the samples are too small to reach ``confidence`` on that side. The
        bounds are pairwise differences, closed; at a bound itself, where a value of a − delta
        ties with one of b, the test may reject.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return None, None, None
    differences = np.sort(np.subtract.outer(a, b).ravel())
    shift = float(np.median(differences))
    alpha = 1 - confidence
    if max(a.size, b.size) <= EXACT_MAX_N:
        low, high = _inverted_interval(a, b, shift, alpha)
        return shift, low, high
    total = differences.size
    z = scipy_stats.norm.ppf(1 - alpha / 2)
    k = int(math.floor(total / 2 - z * math.sqrt(a.size * b.size * (a.size + b.size + 1) / 12)))
    if k < 1:
        return shift, None, None
    return shift, float(differences[k - 1]), float(differences[total - k])


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini–Hochberg q-values; None stays None and is not counted."""
    indexed = [(i, p) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    q: list[float | None] = [None] * len(p_values)
    if not indexed:
        return q
    m = len(indexed)
    ordered = sorted(indexed, key=lambda item: item[1])
    running = 1.0
    for rank in range(m, 0, -1):
        index, p = ordered[rank - 1]
        running = min(running, p * m / rank)
        q[index] = running
    return q


def _iqr(values: np.ndarray) -> float | None:
    if values.size == 0:
        return None
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def compare_groups(df: pd.DataFrame, group: str, metrics: Sequence[str] | None = None,
                   groups: Sequence[str] | None = None) -> pd.DataFrame:
    """Compare two groups of slides on each metric (two-sided Mann–Whitney U).

    Parameters
    ----------
    df : DataFrame
        One row per slide (e.g. cohort.csv).
    group : str
        Column holding the group label.
    metrics : list of str, optional
        Numeric columns to test (default: the TLS density, area % and counts present).
    groups : (a, b), optional
        The two labels to compare, a first; default: the two labels present, sorted.

    Returns
    -------
    DataFrame with the columns of ``STATS_COLUMNS``; slides with a missing value of a
    metric are excluded from that metric and counted in ``excluded_a`` / ``excluded_b``.
    """
    from .errors import TLSQuantError

    if group not in df.columns:
        raise TLSQuantError(f"group column {group!r} not found; columns: {', '.join(map(str, df.columns))}")
    labels = [str(v) for v in df[group].dropna().unique()]
    if groups is None:
        if len(labels) != 2:
            raise TLSQuantError(
                f"column {group!r} holds {len(labels)} groups ({', '.join(sorted(labels))}); "
                f"choose two with --groups A,B"
            )
        groups = sorted(labels)
    group_a, group_b = (str(g) for g in groups)
    for label in (group_a, group_b):
        if label not in labels:
            raise TLSQuantError(f"group {label!r} not found in column {group!r}; groups: {', '.join(sorted(labels))}")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in df.columns]
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise TLSQuantError(f"metric column(s) not found: {', '.join(missing)}; columns: {', '.join(map(str, df.columns))}")
    labels_col = df[group].astype(str)
    rows = []
    for metric in metrics:
        values = pd.to_numeric(df[metric], errors="coerce")
        a_all = values[labels_col == group_a]
        b_all = values[labels_col == group_b]
        a = a_all.dropna().to_numpy(float)
        b = b_all.dropna().to_numpy(float)
        test = mann_whitney(a, b)
        n_pairs = a.size * b.size
        shift, low, high = hodges_lehmann(a, b)
        rows.append({
            "metric": metric, "group_a": group_a, "group_b": group_b, "n_a": int(a.size), "n_b": int(b.size),
            "excluded_a": int(a_all.isna().sum()), "excluded_b": int(b_all.isna().sum()),
            "median_a": float(np.median(a)) if a.size else None, "median_b": float(np.median(b)) if b.size else None,
            "iqr_a": _iqr(a), "iqr_b": _iqr(b), "u": test["u"], "p": test["p"], "method": test["method"],
            # rank-biserial correlation: +1 when every a exceeds every b
            "effect_size": None if test["u"] is None else 2 * test["u"] / n_pairs - 1,
            "hl_shift": shift, "hl_ci_low": low, "hl_ci_high": high,
        })
    table = pd.DataFrame(rows, columns=[c for c in STATS_COLUMNS if c != "q"])
    table["q"] = benjamini_hochberg(list(table["p"]))
    return table[STATS_COLUMNS]


OMNIBUS_COLUMNS = ["metric", "groups", "n", "excluded", "medians", "h", "dof", "p", "method", "q"]


def compare_many(df: pd.DataFrame, group: str, metrics: Sequence[str] | None = None,
                 groups: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three or more groups: a Kruskal–Wallis test per metric, then every pair by Mann–Whitney.

    Returns ``(omnibus, pairwise)``: one row per metric (H, degrees of freedom, p with tie
    correction from the chi-square approximation, q by Benjamini–Hochberg across metrics),
    and the :func:`compare_groups` rows of every pair with their q recomputed by
    Benjamini–Hochberg across the pairs of each metric (the post-hoc family).
    """
    from itertools import combinations

    from scipy import stats as scipy_stats

    from .errors import TLSQuantError

    if group not in df.columns:
        raise TLSQuantError(f"group column {group!r} not found; columns: {', '.join(map(str, df.columns))}")
    present = sorted(str(v) for v in df[group].dropna().unique())
    groups = [str(g) for g in groups] if groups is not None else present
    unknown = [g for g in groups if g not in present]
    if unknown:
        raise TLSQuantError(f"group(s) {', '.join(map(repr, unknown))} not in column {group!r}; groups: {', '.join(present)}")
    if len(groups) < 3:
        raise TLSQuantError(f"compare_many needs 3 or more groups, got {len(groups)}; use compare_groups for two")
    pairwise = [compare_groups(df, group, metrics=metrics, groups=pair) for pair in combinations(groups, 2)]
    pairwise = pd.concat(pairwise, ignore_index=True)
    for metric, rows in pairwise.groupby("metric", sort=False):
        pairwise.loc[rows.index, "q"] = benjamini_hochberg(list(rows["p"]))
    labels = df[group].astype(str)
    omnibus = []
    for metric in dict.fromkeys(pairwise["metric"]):
        values = pd.to_numeric(df[metric], errors="coerce")
        samples = [values[labels == g].dropna().to_numpy(float) for g in groups]
        excluded = [int(values[labels == g].isna().sum()) for g in groups]
        row = {"metric": metric, "groups": ", ".join(groups), "n": ", ".join(str(s.size) for s in samples),
               "excluded": ", ".join(map(str, excluded)),
               "medians": ", ".join(f"{np.median(s):.4g}" if s.size else "–" for s in samples),
               "h": None, "dof": len(groups) - 1, "p": None, "method": "Kruskal–Wallis, chi-square with tie correction"}
        usable = [s for s in samples if s.size]
        if len(usable) >= 2 and np.ptp(np.concatenate(usable)) > 0:
            result = scipy_stats.kruskal(*usable)
            row.update(h=float(result.statistic), p=float(result.pvalue), dof=len(usable) - 1)
        omnibus.append(row)
    omnibus = pd.DataFrame(omnibus, columns=[c for c in OMNIBUS_COLUMNS if c != "q"])
    omnibus["q"] = benjamini_hochberg(list(omnibus["p"]))
    return omnibus[OMNIBUS_COLUMNS], pairwise[STATS_COLUMNS]
