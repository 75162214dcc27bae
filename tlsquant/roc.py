"""ROC curves and AUC with DeLong confidence intervals: how well a metric predicts response."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .errors import TLSQuantError
from .groups import numeric_column

ROC_COLUMNS = ["metric", "endpoint", "n_responders", "n_non_responders", "auc", "auc_ci_low", "auc_ci_high", "ci_method", "excluded"]
CURVE_COLUMNS = ["metric", "endpoint", "threshold", "fpr", "tpr"]


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> pd.DataFrame:
    """Points of the ROC curve: calling ``score ≥ threshold`` positive, for every distinct score.

    Returns
    -------
    DataFrame with ``threshold``, ``fpr`` (1 − specificity) and ``tpr`` (sensitivity), from
    (0, 0) at threshold +inf to (1, 1).
    """
    scores = np.asarray(scores, float)
    positive = np.asarray(positive, bool)
    thresholds = np.unique(scores)[::-1]
    n_pos, n_neg = positive.sum(), (~positive).sum()
    tpr = [(scores[positive] >= t).sum() / n_pos for t in thresholds]
    fpr = [(scores[~positive] >= t).sum() / n_neg for t in thresholds]
    return pd.DataFrame({"threshold": [math.inf, *thresholds], "fpr": [0.0, *fpr], "tpr": [0.0, *tpr]})


def auc_delong(scores: Sequence[float], positive: Sequence[bool], *, confidence: float = 0.95) -> tuple:
    """Area under the ROC curve with DeLong's (1988) confidence interval.

    AUC = P(score of a responder > score of a non-responder) + ½ P(tie), i.e. U / (n₁ n₀).
    The variance comes from the placement values (structural components); the interval is
    AUC ± z·SE clipped to [0, 1], as pROC does.

    Returns
    -------
    (auc, low, high); the bounds are None with fewer than 2 patients in a class.
    """
    scores = np.asarray(scores, float)
    positive = np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return None, None, None
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = float(kernel.mean())
    if pos.size < 2 or neg.size < 2:
        return auc, None, None
    v_pos, v_neg = kernel.mean(axis=1), kernel.mean(axis=0)
    variance = v_pos.var(ddof=1) / pos.size + v_neg.var(ddof=1) / neg.size
    half = scipy_stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(variance)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def roc_table(df: pd.DataFrame, responder: pd.Series, metrics: Sequence[str], *, endpoint: str = "ORR",
              confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AUC (higher metric predicting response) with its CI per metric, and the curves.

    Parameters
    ----------
    df : DataFrame
        One row per patient.
    responder : Series of float
        1 responder, 0 non-responder, NaN left out (e.g. from the ORR definition).
    metrics : list of str
        Numeric columns.

    Returns
    -------
    (table, curves): ``ROC_COLUMNS`` per metric and ``CURVE_COLUMNS`` per curve point.
    """
    rows, curves = [], []
    for metric in metrics:
        if metric not in df.columns:
            raise TLSQuantError(f"metric column {metric!r} not found; columns: {', '.join(map(str, df.columns))}")
        values = numeric_column(df, metric, what="metric values")
        keep = values.notna() & responder.notna()
        scores, positive = values[keep].to_numpy(float), responder[keep].to_numpy(float) == 1
        auc, low, high = auc_delong(scores, positive, confidence=confidence)
        rows.append({"metric": metric, "endpoint": endpoint, "n_responders": int(positive.sum()),
                     "n_non_responders": int((~positive).sum()), "auc": auc, "auc_ci_low": low, "auc_ci_high": high,
                     "ci_method": "DeLong", "excluded": int((~keep).sum())})
        if auc is not None:
            curves.append(roc_curve(scores, positive).assign(metric=metric, endpoint=endpoint)[CURVE_COLUMNS])
    curve_table = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.DataFrame(rows, columns=ROC_COLUMNS), curve_table
