"""Survival by group: Kaplan–Meier with Brookmeyer–Crowley median CIs, log-rank, Cox hazard ratios.

The estimators come from lifelines (``pip install "tlsquant[outcomes]"``); this module
only arranges them into tables. Times are in the unit of the input column (months in
the trials). The pointwise band, and so the median CI, uses the log-log transform by
default (lifelines' exponential Greenwood band, SAS PROC LIFETEST's default); ``"log"``
gives R survfit's default.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .errors import TLSQuantError
from .groups import group_order, numeric_column

MEDIAN_COLUMNS = ["endpoint", "group_by", "group", "n", "events", "median", "median_ci_low", "median_ci_high", "ci_method"]
TEST_COLUMNS = ["endpoint", "group_by", "test", "comparison", "statistic", "hr", "hr_ci_low", "hr_ci_high", "p", "note"]
CURVE_COLUMNS = ["endpoint", "group", "time", "survival", "ci_low", "ci_high", "at_risk"]
CONF_TYPES = ("log-log", "log")


def require_lifelines():
    """Import lifelines or say which extra installs it."""
    try:
        import lifelines
    except ImportError:
        raise TLSQuantError('survival analysis needs lifelines: pip install "tlsquant[outcomes]"') from None
    return lifelines


def survival_data(df: pd.DataFrame, time: str, event: str) -> tuple[pd.Series, pd.Series]:
    """Time and event (0/1) columns as floats, checked; rows with either missing are NaN."""
    for column in (time, event):
        if column not in df.columns:
            raise TLSQuantError(f"survival column {column!r} not found; columns: {', '.join(map(str, df.columns))}")
    times = numeric_column(df, time, what="survival times")
    events = numeric_column(df, event, what="events (1 = progression/death, 0 = censored)")
    if (times.dropna() < 0).any():
        raise TLSQuantError(f"column {time!r}: times must be ≥ 0, found {times.min():g}")
    bad = sorted(set(events.dropna().unique()) - {0, 1})
    if bad:
        raise TLSQuantError(f"column {event!r}: events must be 1 (progression/death) or 0 (censored), found {bad}")
    return times, events


def _band(fitter, conf_type: str, confidence: float) -> pd.DataFrame:
    """Pointwise band of a fitted KaplanMeierFitter, indexed by time (lower, upper)."""
    if conf_type == "log-log":
        band = fitter.confidence_interval_survival_function_.copy()
        band.columns = ["lower", "upper"]
        return band
    # log transform: S exp(± z sqrt(Greenwood sum)), capped at 1 (R survfit's default)
    table = fitter.event_table
    at_risk, died = table["at_risk"].to_numpy(float), table["observed"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(died > 0, died / (at_risk * (at_risk - died)), 0.0)
    greenwood = np.cumsum(terms)
    survival = fitter.survival_function_.iloc[:, 0].to_numpy(float)
    z = scipy_stats.norm.ppf(0.5 + confidence / 2)
    lower = survival * np.exp(-z * np.sqrt(greenwood))
    upper = np.minimum(1.0, survival * np.exp(z * np.sqrt(greenwood)))
    lower[survival == 0] = upper[survival == 0] = 0.0
    return pd.DataFrame({"lower": lower, "upper": upper}, index=fitter.survival_function_.index)


def _first_below_half(times: np.ndarray, curve: np.ndarray) -> float | None:
    """Median of a step curve: first time it is ≤ 0.5; with a flat stretch at exactly 0.5,
    the midpoint of that stretch (R's convention)."""
    below = np.flatnonzero(curve <= 0.5 + 1e-12)
    if below.size == 0:
        return None
    first = below[0]
    if abs(curve[first] - 0.5) < 1e-12:
        later = np.flatnonzero(curve < 0.5 - 1e-12)
        if later.size:
            return float((times[first] + times[later[0]]) / 2)
    return float(times[first])


def kaplan_meier(times: pd.Series, events: pd.Series, *, conf_type: str = "log-log", confidence: float = 0.95) -> dict:
    """One Kaplan–Meier estimate: median with its Brookmeyer–Crowley CI, and the curve.

    The median CI is the set of times whose pointwise CI of S(t) contains 0.5
    (Brookmeyer & Crowley 1982), i.e. the medians of the lower and upper bands.

    Returns
    -------
    dict with ``n``, ``events``, ``median``, ``median_ci_low``, ``median_ci_high`` (None when
    not reached) and ``curve`` (DataFrame: time, survival, ci_low, ci_high, at_risk).
    """
    if conf_type not in CONF_TYPES:
        raise TLSQuantError(f"conf_type {conf_type!r} not known; expected one of {', '.join(CONF_TYPES)}")
    lifelines = require_lifelines()
    fitter = lifelines.KaplanMeierFitter(alpha=1 - confidence).fit(times, events)
    band = _band(fitter, conf_type, confidence)
    grid = fitter.survival_function_.index.to_numpy(float)
    survival = fitter.survival_function_.iloc[:, 0].to_numpy(float)
    curve = pd.DataFrame({"time": grid, "survival": survival, "ci_low": band["lower"].to_numpy(float),
                          "ci_high": band["upper"].to_numpy(float),
                          "at_risk": fitter.event_table["at_risk"].reindex(grid).to_numpy(int)})
    return {
        "n": int(len(times)), "events": int(events.sum()), "median": _first_below_half(grid, survival),
        "median_ci_low": _first_below_half(grid, curve["ci_low"].to_numpy()),
        "median_ci_high": _first_below_half(grid, curve["ci_high"].to_numpy()), "curve": curve,
    }


def logrank(times: pd.Series, events: pd.Series, groups: pd.Series) -> dict:
    """Log-rank test across the groups (k − 1 degrees of freedom): statistic and p."""
    require_lifelines()
    from lifelines.statistics import multivariate_logrank_test

    result = multivariate_logrank_test(times, groups, events)
    return {"statistic": float(result.test_statistic), "p": float(result.p_value), "df": len(set(groups)) - 1}


def cox_hazard_ratio(times: pd.Series, events: pd.Series, covariate: pd.Series, *, confidence: float = 0.95) -> dict:
    """Cox proportional-hazards model with one covariate (Efron ties): HR per unit, CI, Wald p."""
    lifelines = require_lifelines()
    data = pd.DataFrame({"time": np.asarray(times, float), "event": np.asarray(events, float),
                         "x": np.asarray(covariate, float)})
    fitter = lifelines.CoxPHFitter(alpha=1 - confidence).fit(data, duration_col="time", event_col="event")
    summary = fitter.summary.loc["x"]
    return {"hr": float(summary["exp(coef)"]), "hr_ci_low": float(summary[f"exp(coef) lower {confidence:.0%}"]),
            "hr_ci_high": float(summary[f"exp(coef) upper {confidence:.0%}"]), "p": float(summary["p"]),
            "statistic": float(summary["z"])}


def survival_by_group(df: pd.DataFrame, *, time: str, event: str, groups: pd.Series, endpoint: str = "PFS",
                      group_by: str = "", metric: str | None = None, conf_type: str = "log-log",
                      confidence: float = 0.95) -> dict[str, pd.DataFrame]:
    """Kaplan–Meier per group, log-rank between groups, Cox HR for the groups and the metric.

    Parameters
    ----------
    df : DataFrame
        One row per patient.
    time, event : str
        Columns of follow-up time (e.g. months) and event indicator (1 = event, 0 = censored).
    groups : Series
        Group label per row; rows without one (or without time/event) are left out.
    endpoint : str
        Name of the endpoint (PFS, OS) in the tables.
    metric : str, optional
        Numeric column also entered continuously in a Cox model (HR per standard deviation).

    Returns
    -------
    dict of DataFrames: ``medians`` (``MEDIAN_COLUMNS``, one row per group plus "all"),
    ``tests`` (``TEST_COLUMNS``: log-rank; Cox HR of each group vs the first, the
    dichotomised metric; Cox HR per SD of the continuous metric) and ``curves``
    (``CURVE_COLUMNS``).
    """
    times, events = survival_data(df, time, event)
    usable = times.notna() & events.notna()
    ordered = group_order(groups[usable & groups.notna()])
    medians, curves = [], []
    for label in ["all", *ordered]:
        keep = usable if label == "all" else usable & (groups == label)
        if not keep.any():
            continue
        estimate = kaplan_meier(times[keep], events[keep], conf_type=conf_type, confidence=confidence)
        medians.append({"endpoint": endpoint, "group_by": "" if label == "all" else group_by, "group": label,
                        "n": estimate["n"], "events": estimate["events"], "median": estimate["median"],
                        "median_ci_low": estimate["median_ci_low"], "median_ci_high": estimate["median_ci_high"],
                        "ci_method": f"Brookmeyer–Crowley ({conf_type})"})
        curve = estimate["curve"].assign(endpoint=endpoint, group=label)
        curves.append(curve[CURVE_COLUMNS])
    tests = []
    in_groups = usable & groups.notna()
    if len(ordered) >= 2:
        test = logrank(times[in_groups], events[in_groups], groups[in_groups].astype(str))
        tests.append({"endpoint": endpoint, "group_by": group_by, "test": "log-rank", "comparison": " vs ".join(ordered),
                      "statistic": test["statistic"], "p": test["p"], "note": f"chi-square, {test['df']} df"})
        reference = ordered[0]
        for label in ordered[1:]:
            pair = in_groups & groups.isin([reference, label])
            cox = cox_hazard_ratio(times[pair], events[pair], (groups[pair] == label).astype(float), confidence=confidence)
            tests.append({"endpoint": endpoint, "group_by": group_by, "test": "Cox PH (groups)",
                          "comparison": f"{label} vs {reference}", **cox, "note": "Wald p, Efron ties"})
    if metric is not None:
        values = numeric_column(df, metric, what="metric values")
        keep = usable & values.notna()
        sd = float(values[keep].std(ddof=1)) if keep.sum() > 1 else 0.0
        if sd > 0 and math.isfinite(sd):
            cox = cox_hazard_ratio(times[keep], events[keep], values[keep] / sd, confidence=confidence)
            tests.append({"endpoint": endpoint, "group_by": metric, "test": "Cox PH (continuous)",
                          "comparison": f"per SD of {metric} ({sd:.4g})", **cox, "note": "Wald p, Efron ties"})
    return {"medians": pd.DataFrame(medians, columns=MEDIAN_COLUMNS),
            "tests": pd.DataFrame(tests, columns=TEST_COLUMNS),
            "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)}

