"""Patient groups for outcome analyses: a cut-point on a metric, tertiles, presence, or a label column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import TLSQuantError

CUT_CHOICES = ("median", "tertiles", "present", "<number>", "optimal (survival only)")


def numeric_column(df: pd.DataFrame, column: str, *, what: str = "values") -> pd.Series:
    """A column as floats; empty cells stay missing, any other text that is not a number is an error.

    Silently dropping "12mo" or "yes" would change n without a word, so those are named instead.
    """
    if column not in df.columns:
        raise TLSQuantError(f"column {column!r} not found; columns: {', '.join(map(str, df.columns))}")
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce")
    text = raw.astype(str).str.strip()
    blank = raw.isna() | text.eq("") | text.str.lower().isin(("na", "nan", "n/a", "none", "null", "-"))
    bad = raw[values.isna() & ~blank]
    if len(bad):
        shown = ", ".join(repr(v) for v in list(dict.fromkeys(map(str, bad)))[:5])
        raise TLSQuantError(f"column {column!r}: {what} must be numbers (empty cells count as missing); "
                            f"found {len(bad)} other value(s): {shown}")
    return values.astype(float)


def parse_cut(text: str | float | None) -> str | float | None:
    """Read a cut-point specification: ``median``, ``tertiles``, ``present``, ``optimal`` or a number."""
    if text is None or isinstance(text, int | float):
        return text
    word = str(text).strip().lower()
    if word in ("median", "tertiles", "present", "optimal"):
        return word
    try:
        return float(word)
    except ValueError:
        raise TLSQuantError(f"cut-point {text!r} not understood; expected one of: {', '.join(CUT_CHOICES)}") from None


def assign_groups(df: pd.DataFrame, by: str, *, cut: str | float | None = None) -> tuple[pd.Series, str]:
    """Label every row with its group.

    Parameters
    ----------
    df : DataFrame
        One row per patient (slide).
    by : str
        Column to group by: a metric (numeric) or labels.
    cut : {"median", "tertiles", "present"} or float, optional
        For a numeric column: ``"median"`` (default) or a number splits into ``low`` (≤ cut)
        and ``high`` (> cut); ``"tertiles"`` into ``T1`` ≤ 33.3rd percentile < ``T2`` ≤
        66.7th < ``T3``; ``"present"`` into ``absent`` (0) and ``present`` (> 0), e.g. for
        the mature TLS count. A label column (or a column of two values, without a cut)
        gives its own groups.

    Returns
    -------
    (labels, description)
        Labels as strings (missing values stay missing) and a sentence stating the rule.
    """
    if by not in df.columns:
        raise TLSQuantError(f"grouping column {by!r} not found; columns: {', '.join(map(str, df.columns))}")
    raw = df[by]
    numeric = pd.to_numeric(raw, errors="coerce")
    is_numeric = numeric.notna().sum() > 0 and numeric.notna().sum() == raw.notna().sum()
    two_values = cut is None and raw.nunique(dropna=True) <= 2  # e.g. a 0/1 column: its values are the groups
    if not is_numeric or two_values:
        if cut is not None:
            raise TLSQuantError(f"column {by!r} holds labels, not numbers: a cut-point ({cut!r}) cannot apply")
        labels = pd.Series([None if pd.isna(v) else str(v) for v in raw], index=df.index, dtype=object)
        return labels, f"groups = the values of column {by}"
    cut = "median" if cut is None else cut
    values = numeric.to_numpy(float)
    present = ~np.isnan(values)
    labels = pd.Series([None] * len(values), index=df.index, dtype=object)
    if cut == "tertiles":
        low_cut, high_cut = np.percentile(values[present], [100 / 3, 200 / 3])
        labels[present & (values <= low_cut)] = "T1"
        labels[present & (values > low_cut) & (values <= high_cut)] = "T2"
        labels[present & (values > high_cut)] = "T3"
        return labels, f"{by} tertiles: T1 ≤ {low_cut:.4g} < T2 ≤ {high_cut:.4g} < T3"
    if cut == "present":
        labels[present & (values <= 0)] = "absent"
        labels[present & (values > 0)] = "present"
        return labels, f"{by}: present (> 0) vs absent (0)"
    if cut == "median":
        threshold = float(np.median(values[present]))
        rule = f"{by} above the median ({threshold:.4g}): high, else low"
    elif isinstance(cut, int | float):
        threshold = float(cut)
        rule = f"{by} above {threshold:.4g}: high, else low"
    else:
        raise TLSQuantError(f"cut-point {cut!r} not understood here; expected median, tertiles, present or a number")
    labels[present & (values <= threshold)] = "low"
    labels[present & (values > threshold)] = "high"
    return labels, rule


def group_order(groups: pd.Series) -> list[str]:
    """Distinct labels in reporting order: low before high, absent before present, else sorted."""
    order = {"low": 0, "high": 1, "absent": 0, "present": 1}
    labels = sorted({str(v) for v in groups.dropna()})
    return sorted(labels, key=lambda label: (order.get(label, 0.5), label))
