"""Clinical outcome analysis of a cohort: response rates, ROC, survival by TLS group, in DataFrames.

:func:`analyze_outcomes` runs the pieces (``response``, ``roc``, ``survival``, ``maxstat``)
on one cohort table and returns an :class:`OutcomeResult`; ``outcome_report`` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .errors import TLSQuantError
from .groups import assign_groups, numeric_column
from .maxstat import CUTPOINT_COLUMNS, maxstat_cutpoint
from .response import ENDPOINTS, recist_categories, response_rates, response_tests
from .roc import roc_table
from .stats import B_CELL_METRIC

DEFAULT_METRICS = ("tls_density_per_mm2", "tls_area_pct", "tls_mature_density_per_mm2", B_CELL_METRIC)


@dataclass(frozen=True)
class SurvivalEndpoint:
    """A survival endpoint: its name (PFS, OS) and the time and event columns."""

    name: str
    time: str
    event: str


@dataclass
class OutcomeResult:
    """Tables of one outcome analysis (empty DataFrames for parts not asked for)."""

    group_by: str
    group_rule: str
    groups: pd.Series
    response_rates: pd.DataFrame = field(default_factory=pd.DataFrame)
    response_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    roc: pd.DataFrame = field(default_factory=pd.DataFrame)
    roc_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    survival_medians: pd.DataFrame = field(default_factory=pd.DataFrame)
    survival_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    survival_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    cutpoints: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables by file stem."""
        return {"response_rates": self.response_rates, "response_tests": self.response_tests, "roc": self.roc,
                "roc_curves": self.roc_curves, "survival_medians": self.survival_medians,
                "survival_tests": self.survival_tests, "survival_curves": self.survival_curves,
                "cutpoints": self.cutpoints}


def analyze_outcomes(df: pd.DataFrame, *, response: str | None = None, survival: Sequence[SurvivalEndpoint] = (),
                     group_by: str | None = None, cut: str | float | None = None, metrics: Sequence[str] | None = None,
                     categories: Mapping[str, str | Sequence[str]] | None = None, ci_method: str = "clopper-pearson",
                     exclude_not_evaluable: bool = False, min_share: float = 0.1,
                     cut_correction: str = "permutation", n_permutations: int = 2000, seed: int = 0,
                     conf_type: str = "log-log") -> OutcomeResult:
    """Response rates, ROC and survival of a cohort by TLS group.

    Parameters
    ----------
    df : DataFrame
        One row per patient (cohort.csv plus clinical columns).
    response : str, optional
        Column of RECIST best overall response; gives ORR/DCR, Fisher's test and ROC.
    survival : list of SurvivalEndpoint
        Endpoints (e.g. PFS and OS, times in months) for Kaplan–Meier, log-rank and Cox.
    group_by : str, optional
        Column defining the groups (default ``tls_density_per_mm2``): a metric cut by
        ``cut``, or a label column.
    cut : {"median", "tertiles", "present", "optimal"} or float
        Cut-point for a numeric ``group_by`` (see :func:`tlsquant.groups.assign_groups`).
        ``"optimal"``: the maximally selected log-rank cut on the first survival endpoint,
        with at least ``min_share`` per group and a p-value corrected by ``cut_correction``
        (``n_permutations``, ``seed``) — exploratory.
    metrics : list of str, optional
        Metrics for ROC and continuous Cox (default: the TLS metrics present).
    categories, ci_method, exclude_not_evaluable
        See :func:`tlsquant.response.response_rates`.
    conf_type : {"log-log", "log"}
        Band of the Kaplan–Meier curves and so of the median CI.

    Returns
    -------
    OutcomeResult
    """
    from .survival import survival_by_group, survival_data

    if response is None and not survival:
        raise TLSQuantError("nothing to analyse: give a response column and/or survival time and event columns")
    if group_by is None:
        if "tls_density_per_mm2" not in df.columns:
            raise TLSQuantError("no grouping column given and tls_density_per_mm2 is not in the table; choose --group-by")
        group_by = "tls_density_per_mm2"
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in df.columns]
    cutpoints = pd.DataFrame(columns=CUTPOINT_COLUMNS)
    if cut == "optimal":
        if not survival:
            raise TLSQuantError("cut 'optimal' is chosen on survival: give time and event columns (e.g. --pfs TIME,EVENT)")
        first = survival[0]
        times, events = survival_data(df, first.time, first.event)
        values = numeric_column(df, group_by, what="values to cut")
        keep = values.notna() & times.notna() & events.notna()
        best = maxstat_cutpoint(values[keep], times[keep], events[keep], min_share=min_share, method=cut_correction,
                                n_permutations=n_permutations, seed=seed)
        cutpoints = pd.DataFrame([{
            "metric": group_by, "endpoint": first.name, "cut": best["cut"], "statistic": best["statistic"],
            "n_low": best["n_low"], "n_high": best["n_high"], "p_uncorrected": best["p_uncorrected"],
            "p_corrected": best["p_corrected"], "method": best["method"], "min_share": min_share,
            "note": "exploratory: cut chosen on the same data; use p_corrected, validate in another cohort"}],
            columns=CUTPOINT_COLUMNS)
        groups, rule = assign_groups(df, group_by, cut=best["cut"])
        rule = (f"{rule} (optimal cut-point on {first.name} by maximally selected log-rank statistics, "
                f"exploratory; corrected p = {best['p_corrected']:.3g})")
    else:
        groups, rule = assign_groups(df, group_by, cut=cut)
    result = OutcomeResult(group_by=group_by, group_rule=rule, groups=groups, cutpoints=cutpoints, settings={
        "response": response, "survival": [vars(s) for s in survival], "cut": cut, "ci_method": ci_method,
        "exclude_not_evaluable": exclude_not_evaluable, "min_share": min_share, "cut_correction": cut_correction,
        "n_permutations": n_permutations, "seed": seed, "conf_type": conf_type, "metrics": list(metrics)})
    if response is not None:
        result.response_rates = response_rates(df, response, groups=groups, group_by=group_by, categories=categories,
                                               method=ci_method, exclude_not_evaluable=exclude_not_evaluable)
        result.response_tests = response_tests(df, response, groups, group_by=group_by, categories=categories,
                                               exclude_not_evaluable=exclude_not_evaluable)
        recist = recist_categories(df[response], categories=categories, column=response)
        responder = recist.isin(ENDPOINTS["ORR"]).astype(float).mask(
            recist.isna() | ((recist == "NE") if exclude_not_evaluable else False))
        result.roc, result.roc_curves = roc_table(df, responder, metrics)
    medians, tests, curves = [], [], []
    for endpoint in survival:
        metric = group_by if group_by in metrics or _is_numeric(df[group_by]) else None
        part = survival_by_group(df, time=endpoint.time, event=endpoint.event, groups=groups, endpoint=endpoint.name,
                                 group_by=group_by, metric=metric, conf_type=conf_type)
        if cut == "optimal":
            # the groups were chosen to maximise this very statistic: only the maxstat-corrected p is a test
            grouped = part["tests"]["test"] != "Cox PH (continuous)"
            part["tests"].loc[grouped, "note"] = part["tests"].loc[grouped, "note"].astype(str) + (
                "; exploratory: groups from the optimal cut on this data, p not corrected (see cut-point p_corrected)")
        medians.append(part["medians"])
        tests.append(part["tests"])
        curves.append(part["curves"])
    if survival:
        result.survival_medians = pd.concat(medians, ignore_index=True)
        result.survival_tests = pd.concat(tests, ignore_index=True)
        result.survival_curves = pd.concat(curves, ignore_index=True)
    return result


def _is_numeric(column: pd.Series) -> bool:
    values = pd.to_numeric(column, errors="coerce")
    return bool(values.notna().sum()) and values.notna().sum() == column.notna().sum() and column.nunique() > 2


__all__ = ["OutcomeResult", "SurvivalEndpoint", "analyze_outcomes"]
