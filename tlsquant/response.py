"""Response rates (ORR, DCR) with binomial confidence intervals, and Fisher's exact test between groups.

ORR = (CR + PR) / n and DCR = (CR + PR + SD) / n over the RECIST best overall response.
As in the trials' intention-to-treat analyses, patients not evaluable (NE) stay in the
denominator as non-responders unless asked otherwise; a missing response leaves the
patient out and is counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .errors import TLSQuantError
from .groups import group_order

RECIST = ("CR", "PR", "SD", "PD", "NE")
ENDPOINTS = {"ORR": ("CR", "PR"), "DCR": ("CR", "PR", "SD")}
CI_METHODS = ("clopper-pearson", "wilson")

RATE_COLUMNS = ["endpoint", "group_by", "group", "n", "responders", "rate", "ci_low", "ci_high", "ci_method", "excluded"]
FISHER_COLUMNS = ["endpoint", "group_by", "groups", "responders", "n", "odds_ratio", "p", "method"]


def proportion_ci(successes: int, n: int, *, method: str = "clopper-pearson", confidence: float = 0.95) -> tuple:
    """A proportion and its confidence interval.

    Parameters
    ----------
    successes, n : int
        Count and total (0 ≤ successes ≤ n).
    method : {"clopper-pearson", "wilson"}
        Clopper–Pearson (exact, from beta quantiles) or Wilson score (without continuity
        correction).
    confidence : float
        Coverage.

    Returns
    -------
    (rate, low, high)
        As fractions; all None when ``n`` is 0.
    """
    if method not in CI_METHODS:
        raise TLSQuantError(f"confidence interval method {method!r} not known; expected one of {', '.join(CI_METHODS)}")
    if n == 0:
        return None, None, None
    if not 0 <= successes <= n:
        raise TLSQuantError(f"responders must lie between 0 and n = {n}, got {successes}")
    test = scipy_stats.binomtest(int(successes), int(n))
    interval = test.proportion_ci(confidence_level=confidence, method="exact" if method == "clopper-pearson" else "wilson")
    return successes / n, float(interval.low), float(interval.high)


def _category_map(categories: Mapping[str, str | Sequence[str]] | None) -> dict[str, str]:
    """label (upper-cased, stripped) -> RECIST category."""
    mapping = {c: c for c in RECIST}
    if categories:
        mapping = {}
        for category, labels in categories.items():
            if category.upper() not in RECIST:
                raise TLSQuantError(f"response category {category!r} not known; expected one of {', '.join(RECIST)}")
            for label in [labels] if isinstance(labels, str) else labels:
                mapping[str(label).strip().upper()] = category.upper()
    return mapping


def recist_categories(values: pd.Series, *, categories: Mapping[str, str | Sequence[str]] | None = None,
                      column: str = "response") -> pd.Series:
    """Map response labels onto CR/PR/SD/PD/NE (missing stays missing).

    ``categories`` maps each RECIST category to the label(s) used in the table, e.g.
    ``{"PR": "responder", "PD": "non-responder"}``; default: the category names themselves,
    case-insensitive.
    """
    mapping = _category_map(categories)
    out = []
    unknown = set()
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
            out.append(None)
            continue
        key = str(value).strip().upper()
        if key not in mapping:
            unknown.add(str(value))
        out.append(mapping.get(key))
    if unknown:
        raise TLSQuantError(
            f"column {column!r}: response label(s) {', '.join(sorted(unknown))} not recognised; expected "
            f"{', '.join(sorted(mapping))} (set the names with --categories, e.g. PR=responder,PD=non-responder)"
        )
    return pd.Series(out, index=values.index, dtype=object)


def _responders(recist: pd.Series, endpoint: str, exclude_not_evaluable: bool) -> pd.Series:
    """1.0 / 0.0 per patient, NaN when left out."""
    hit = recist.isin(ENDPOINTS[endpoint]).astype(float)
    left_out = recist.isna() | ((recist == "NE") if exclude_not_evaluable else False)
    return hit.mask(left_out)


def response_rates(df: pd.DataFrame, response: str, *, groups: pd.Series | None = None, group_by: str = "",
                   categories: Mapping[str, str | Sequence[str]] | None = None, method: str = "clopper-pearson",
                   confidence: float = 0.95, exclude_not_evaluable: bool = False) -> pd.DataFrame:
    """ORR and DCR with confidence intervals, overall and per group.

    Parameters
    ----------
    df : DataFrame
        One row per patient.
    response : str
        Column with the best overall response (RECIST labels, see :func:`recist_categories`).
    groups : Series, optional
        Group label per row (from :func:`tlsquant.groups.assign_groups`); rows with a
        missing label count only in the overall rows.
    group_by : str
        Name shown for the grouping in the table.
    method : {"clopper-pearson", "wilson"}
        Confidence interval.
    exclude_not_evaluable : bool
        Leave NE patients out of the denominator (default: keep them, as non-responders).

    Returns
    -------
    DataFrame with ``RATE_COLUMNS``: one row per endpoint and group (``group`` = "all" for
    the whole cohort); ``rate`` and the bounds are fractions; ``excluded`` counts patients
    left out (missing response, or NE when excluded).
    """
    if response not in df.columns:
        raise TLSQuantError(f"response column {response!r} not found; columns: {', '.join(map(str, df.columns))}")
    recist = recist_categories(df[response], categories=categories, column=response)
    rows = []
    for endpoint in ENDPOINTS:
        hits = _responders(recist, endpoint, exclude_not_evaluable)
        parts = [("", "all", hits)]
        if groups is not None:
            parts += [(group_by, label, hits[groups == label]) for label in group_order(groups)]
        for by, label, values in parts:
            kept = values.dropna()
            rate, low, high = proportion_ci(int(kept.sum()), int(kept.size), method=method, confidence=confidence)
            rows.append({"endpoint": endpoint, "group_by": by, "group": label, "n": int(kept.size),
                         "responders": int(kept.sum()), "rate": rate, "ci_low": low, "ci_high": high,
                         "ci_method": method, "excluded": int(values.isna().sum())})
    return pd.DataFrame(rows, columns=RATE_COLUMNS)


def fisher_exact_2xk(responders: Sequence[int], totals: Sequence[int]) -> float:
    """Two-sided Fisher (Freeman–Halton for more than two groups) exact p for a 2 × k table.

    The p-value sums the hypergeometric probabilities of every table with the observed
    margins that is no more probable than the observed one (relative tolerance 1e-7, as
    scipy and R).
    """
    responders = [int(r) for r in responders]
    totals = [int(t) for t in totals]
    size = math.prod(t + 1 for t in totals)
    if size > 2_000_000:
        raise TLSQuantError(f"Fisher's exact test: {size} tables to enumerate; use fewer groups")
    grand, hits = sum(totals), sum(responders)
    log_comb_tables = [np.array([_log_comb(t, c) for c in range(t + 1)]) for t in totals]
    observed = sum(table[c] for table, c in zip(log_comb_tables, responders))
    grids = np.meshgrid(*[np.arange(t + 1) for t in totals], indexing="ij")
    counts = np.stack([g.ravel() for g in grids])
    counts = counts[:, counts.sum(axis=0) == hits]  # tables with the observed margins
    log_probs = sum(table[row] for table, row in zip(log_comb_tables, counts)) - _log_comb(grand, hits)
    observed -= _log_comb(grand, hits)
    probs = np.exp(log_probs)
    return float(min(1.0, probs[log_probs <= observed + math.log1p(1e-7)].sum()))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def response_tests(df: pd.DataFrame, response: str, groups: pd.Series, *, group_by: str = "",
                   categories: Mapping[str, str | Sequence[str]] | None = None,
                   exclude_not_evaluable: bool = False) -> pd.DataFrame:
    """Fisher's exact test of ORR and DCR between groups.

    Returns
    -------
    DataFrame with ``FISHER_COLUMNS``: per endpoint the groups, responders and n per group
    (joined with ``/``), the odds ratio (first group vs second; two groups only, None
    otherwise) and the two-sided p.
    """
    recist = recist_categories(df[response], categories=categories, column=response)
    labels = group_order(groups)
    rows = []
    for endpoint in ENDPOINTS:
        hits = _responders(recist, endpoint, exclude_not_evaluable)
        counts = [hits[groups == label].dropna() for label in labels]
        responders = [int(c.sum()) for c in counts]
        totals = [int(c.size) for c in counts]
        usable = len(labels) >= 2 and all(totals)
        odds_ratio = None
        if usable and len(labels) == 2:
            odds_ratio = float(scipy_stats.contingency.odds_ratio(
                [[responders[0], totals[0] - responders[0]], [responders[1], totals[1] - responders[1]]],
                kind="sample").statistic)
        rows.append({
            "endpoint": endpoint, "group_by": group_by, "groups": "/".join(labels),
            "responders": "/".join(map(str, responders)), "n": "/".join(map(str, totals)),
            "odds_ratio": odds_ratio, "p": fisher_exact_2xk(responders, totals) if usable else None,
            "method": ("Fisher's exact, two-sided" if len(labels) == 2 else "Fisher–Freeman–Halton exact, two-sided")
            if usable else "not enough groups",
        })
    return pd.DataFrame(rows, columns=FISHER_COLUMNS)


__all__ = ["proportion_ci", "recist_categories", "response_rates", "response_tests", "fisher_exact_2xk"]
