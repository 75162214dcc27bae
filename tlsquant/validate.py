"""Score an analysis against the truth of a synthetic slide (for tests, benchmarks and config tuning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def match_tls(table: pd.DataFrame, truth_tls: list[dict]) -> list[tuple[Any, dict]]:
    """Pairs (found row, true TLS): a found centroid inside the true TLS's equivalent circle, each truth used once."""
    pairs, used = [], set()
    for row in table.itertuples(index=False):
        for item in truth_tls:
            radius = np.sqrt(item["area_um2"] / np.pi)
            if item["tls_id"] not in used and np.hypot(row.centroid_x_um - item["centroid_x_um"],
                                                       row.centroid_y_um - item["centroid_y_um"]) < radius:
                used.add(item["tls_id"])
                pairs.append((row, item))
                break
    return pairs


def _rel(found: float | None, true: float) -> float:
    if found is None:
        return float("inf")
    if true == 0:
        return 0.0 if found == 0 else float("inf")
    return float(found / true - 1.0)


def score(summary: dict, tls: pd.DataFrame, truth: dict) -> dict[str, float]:
    """Accuracy figures of one analysed slide against its truth JSON.

    Relative errors are signed (found / true - 1); shares are 0-1 (1 when there is
    nothing to get right).
    """
    pairs = match_tls(tls, truth["tls"])
    n_true, n_found = len(truth["tls"]), len(tls)
    out = {
        "tls_true": n_true,
        "tls_found": n_found,
        "recall": len(pairs) / n_true if n_true else 1.0,
        "precision": len(pairs) / n_found if n_found else (1.0 if n_true == 0 else 0.0),
        "stage_accuracy": np.mean([row.stage == item["stage"] for row, item in pairs]) if pairs else 1.0,
        "location_accuracy": (np.mean([row.location == item["location"] and row.counted == item["counted"]
                                       for row, item in pairs]) if pairs else 1.0),
        "worst_tls_area_error": max((abs(_rel(row.area_um2, item["area_um2"])) for row, item in pairs), default=0.0),
        "tumour_area_error": _rel(summary.get("tumour_area_mm2"), truth["tumour_area_mm2"]),
        "tissue_area_error": _rel(summary.get("tissue_area_mm2"), truth["tissue_area_mm2"]),
        "density_error": _rel(summary.get("tls_density_per_mm2"), truth["tls_density_per_mm2"]),
        "area_pct_error": _rel(summary.get("tls_area_pct"), truth["tls_area_pct"]),
    }
    cells = summary.get("cells") or {}
    if cells.get("total"):
        out["cell_count_error"] = _rel(cells["total"], truth["cells"]["total"])
        # the B-cell channel's share under its role's name (any panel); cd20_pct from tlsquant before b_cell_pct
        b_cell_pct = summary.get("b_cell_pct", summary.get("cd20_pct"))
        if b_cell_pct is not None:
            out["cd20_pct_error"] = _rel(b_cell_pct, truth["cells"]["cd20_pct"])
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


def acceptance_misses(scores: dict[str, float]) -> list[str]:
    """The acceptance criteria a scored slide misses (empty when it passes them all)."""
    checks = {
        "recall": scores["recall"] >= 0.95,
        "precision": scores["precision"] >= 0.95,
        "stage_accuracy": scores["stage_accuracy"] >= 0.95,
        "location_accuracy": scores["location_accuracy"] >= 0.95,
        "worst_tls_area_error": scores["worst_tls_area_error"] <= 0.2,
        "tumour_area_error": abs(scores["tumour_area_error"]) <= 0.05,
        "density_error": abs(scores["density_error"]) <= 0.1,
    }
    if "cell_count_error" in scores:
        checks["cell_count_error"] = abs(scores["cell_count_error"]) <= 0.1
    if "cd20_pct_error" in scores:
        checks["cd20_pct_error"] = abs(scores["cd20_pct_error"]) <= 0.15
    return [name for name, ok in checks.items() if not ok]
