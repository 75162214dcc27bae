"""Optimal cut-point by maximally selected log-rank statistics (exploratory).

For every cut-point c of a metric that leaves at least ``min_share`` of the patients on
each side, the standardized linear rank statistic of the log-rank scores of the patients
with metric ≤ c is computed (Hothorn & Lausen 2003, as R's ``maxstat`` with
``smethod = "LogRank"``); the cut with the largest absolute value is chosen. Its plain
p-value ignores the search, so the p-value is corrected either by the conditional Monte
Carlo (permutation) distribution of the maximum, or by the Lausen & Schumacher (1992)
approximation. Both are written here: lifelines has no maxstat.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .errors import TLSQuantError

METHODS = ("permutation", "lausen-schumacher")
CUTPOINT_COLUMNS = ["metric", "endpoint", "cut", "statistic", "n_low", "n_high", "p_uncorrected", "p_corrected",
                    "method", "min_share", "note"]


def logrank_scores(times: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Log-rank (Savage) scores a_i = δ_i − Σ_{j: t_j ≤ t_i} δ_j / (number at risk at t_j).

    Ties in time share the risk set of their time (every event at t_j counted with the
    n at risk just before t_j).
    """
    times = np.asarray(times, float)
    events = np.asarray(events, float)
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    unique_times, first_index = np.unique(sorted_times, return_index=True)
    at_risk = times.size - first_index
    deaths = np.add.reduceat(events[order], first_index)
    cumulative_hazard = np.cumsum(deaths / at_risk)  # Nelson–Aalen at each distinct time
    position = np.searchsorted(unique_times, times, side="left")
    return events - cumulative_hazard[position]


def _standardized(scores: np.ndarray, low_masks: np.ndarray) -> np.ndarray:
    """|S - E S| / sd(S) for S = sum of scores in the low group, one per cut (rows of low_masks)."""
    n = scores.size
    m = low_masks.sum(axis=1).astype(float)
    centred = scores - scores.mean()
    variance = m * (n - m) / (n * (n - 1)) * float((centred**2).sum())
    statistic = low_masks.astype(float) @ centred
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(variance > 0, np.abs(statistic) / np.sqrt(variance), 0.0)


def candidate_cuts(values: np.ndarray, *, min_share: float = 0.1) -> np.ndarray:
    """Observed values usable as cuts: at least ``min_share`` of patients ≤ cut and > cut."""
    values = np.asarray(values, float)
    n = values.size
    distinct = np.unique(values)[:-1]  # the largest value leaves nobody above
    n_low = np.searchsorted(np.sort(values), distinct, side="right")
    keep = (n_low >= math.ceil(min_share * n)) & (n - n_low >= math.ceil(min_share * n))
    return distinct[keep]


def lausen_schumacher_p(statistic: float, *, min_share: float = 0.1) -> float:
    """Lausen & Schumacher (1992) approximation of P(max |Z| ≥ b) over cuts within [ε, 1 − ε].

    p(b) = 4 φ(b) / b + φ(b) (b − 1/b) log((1 − ε)² / ε²). The formula is an upper-tail
    approximation and turns down again for small b (below its maximum near b ≈ 1); there
    the value at the maximum is returned, so p never decreases as b falls.
    """
    log_ratio = math.log((1 - min_share) ** 2 / min_share**2)

    def formula(b: float) -> float:
        density = scipy_stats.norm.pdf(b)
        return 4 * density / b + density * (b - 1 / b) * log_ratio

    from scipy.optimize import minimize_scalar

    peak = minimize_scalar(lambda b: -formula(b), bounds=(0.3, 3.0), method="bounded").x
    return float(min(1.0, formula(max(float(statistic), peak))))


def maxstat_cutpoint(values, times, events, *, min_share: float = 0.1, method: str = "permutation",
                     n_permutations: int = 2000, seed: int = 0) -> dict:
    """The cut-point of a metric that best separates survival, with a p-value corrected for the search.

    Parameters
    ----------
    values, times, events : array-like
        Metric, follow-up time and event indicator (1 event, 0 censored) per patient,
        without missing values.
    min_share : float
        Smallest share of patients allowed on either side of the cut (default 10 %).
    method : {"permutation", "lausen-schumacher"}
        Correction: the permutation distribution of the maximum (``n_permutations`` draws,
        ``seed``), or the Lausen–Schumacher approximation.

    Returns
    -------
    dict with ``cut`` (low: metric ≤ cut), ``statistic`` (max standardized |Z|), ``n_low``,
    ``n_high``, ``p_uncorrected`` (two-sided normal p at the chosen cut, ignoring the
    search), ``p_corrected``, ``method``, ``candidates`` (DataFrame: cut, statistic).
    """
    if method not in METHODS:
        raise TLSQuantError(f"cut-point correction {method!r} not known; expected one of {', '.join(METHODS)}")
    if not 0 < min_share < 0.5:
        raise TLSQuantError(f"min_share must lie between 0 and 0.5, got {min_share}")
    values = np.asarray(values, float)
    times = np.asarray(times, float)
    events = np.asarray(events, float)
    if np.isnan(values).any() or np.isnan(times).any() or np.isnan(events).any():
        raise TLSQuantError("maxstat_cutpoint: remove rows with a missing metric, time or event first")
    cuts = candidate_cuts(values, min_share=min_share)
    if cuts.size == 0:
        raise TLSQuantError(f"no cut-point leaves {min_share:.0%} of the {values.size} patients on each side")
    scores = logrank_scores(times, events)
    low_masks = values[None, :] <= cuts[:, None]
    statistics = _standardized(scores, low_masks)
    best = int(np.argmax(statistics))
    statistic = float(statistics[best])
    if method == "permutation":
        rng = np.random.default_rng(seed)
        exceed = 0
        for _ in range(n_permutations):
            # permuting the scores against the metric: the conditional null distribution of the maximum
            permuted = _standardized(rng.permutation(scores), low_masks).max()
            exceed += permuted >= statistic - 1e-10
        p_corrected = (exceed + 1) / (n_permutations + 1)
    else:
        p_corrected = lausen_schumacher_p(statistic, min_share=min_share)
    n_low = int(low_masks[best].sum())
    return {"cut": float(cuts[best]), "statistic": statistic, "n_low": n_low, "n_high": int(values.size - n_low),
            "p_uncorrected": float(2 * scipy_stats.norm.sf(statistic)), "p_corrected": float(p_corrected),
            "method": method if method != "permutation" else f"permutation ({n_permutations}, seed {seed})",
            "candidates": pd.DataFrame({"cut": cuts, "statistic": statistics})}
