"""Per-TLS table and slide metrics, in µm, µm² and mm²."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .classify import is_mature

TLS_COLUMNS = [
    "tls_id", "centroid_x_um", "centroid_y_um", "area_um2", "stage", "location",
    "distance_to_tumour_um", "counted", "b_cell_fraction", "t_cell_fraction", "fdc_fraction",
    "germinal_centre_fraction", "debris_fraction", "fdc_network_um2", "germinal_centre_network_um2",
    "t_cell_zone_um2", "perimeter_um", "circularity", "max_feret_um",
    "bbox_x0_px", "bbox_y0_px", "bbox_x1_px", "bbox_y1_px", "cell_count", "b_cell_pct", "t_cell_pct",
]
SHAPE_COLUMNS = ("perimeter_um", "circularity", "max_feret_um")


def tls_shape(region: np.ndarray, *, bin_um: tuple[float, float]) -> dict[str, float]:
    """Perimeter (µm), circularity (4πA/P², 1 for a disc) and maximum Feret diameter (µm) of one TLS.

    ``region``: its grid bins (bool, any box around it); ``bin_um``: (y, x) size of a grid bin.
    The outline is the marching-squares contour at half height (holes add their rim to the
    perimeter), so the measures follow the same outline as tls.geojson, not the cell staircase.
    """
    from scipy.spatial import ConvexHull
    from skimage.measure import find_contours

    scale = np.asarray(bin_um, float)
    contours = [c * scale for c in find_contours(np.pad(region, 1).astype(np.uint8), 0.5)]
    perimeter = float(sum(np.hypot(*np.diff(c, axis=0).T).sum() for c in contours))
    area = float(region.sum()) * scale[0] * scale[1]
    points = np.unique(np.concatenate(contours), axis=0) if contours else np.zeros((0, 2))
    if len(points) >= 3:
        try:
            points = points[ConvexHull(points).vertices]  # the diameter is reached between hull vertices
        except Exception:  # collinear points (a one-cell-wide TLS): all of them are the hull
            pass
    feret = float(np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)).max()) if len(points) >= 2 else 0.0
    circularity = min(1.0, 4 * np.pi * area / perimeter ** 2) if perimeter > 0 else 0.0
    return {"perimeter_um": round(perimeter, 1), "circularity": round(float(circularity), 4),
            "max_feret_um": round(feret, 1)}


def signed_tumour_distance(tumour: np.ndarray, *, bin_um: tuple[float, float]) -> np.ndarray | None:
    """Distance (µm) from each coarse bin to the tumour border: negative inside, positive outside."""
    if not tumour.any():
        return None
    outside = ndi.distance_transform_edt(~tumour, sampling=bin_um)
    inside = ndi.distance_transform_edt(tumour, sampling=bin_um)
    return np.where(tumour, -inside, outside)


def locate(distance_um: float | None, *, margin_um: float) -> str:
    """intratumoral (inside the tumour bed), peritumoral (within the margin) or distal."""
    if distance_um is None:
        return "distal"
    if distance_um <= 0:
        return "intratumoral"
    return "peritumoral" if distance_um <= margin_um else "distal"


def empty_tls_table() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in TLS_COLUMNS})


def slide_metrics(tls: pd.DataFrame, *, tissue_area_mm2: float, tumour_area_mm2: float,
                  stages: tuple[str, ...], locations: tuple[str, ...]) -> dict:
    """Counts by stage and location, density per mm² tumour and TLS area % of the tumour."""
    counted = tls[tls["counted"].astype(bool)] if len(tls) else tls
    metrics = {
        "tissue_area_mm2": tissue_area_mm2,
        "tumour_area_mm2": tumour_area_mm2,
        "tls_count": len(tls),
        "tls_counted": len(counted),
        "tls_mature_count": int(sum(is_mature(s) for s in tls["stage"])) if len(tls) else 0,
        "tls_counted_mature_count": int(sum(is_mature(s) for s in counted["stage"])) if len(counted) else 0,
        "tls_count_by_stage": {s: int((tls["stage"] == s).sum()) if len(tls) else 0 for s in stages},
        "tls_count_by_location": {loc: int((tls["location"] == loc).sum()) if len(tls) else 0 for loc in locations},
        "tls_total_area_um2": float(tls["area_um2"].sum()) if len(tls) else 0.0,
        "tls_counted_area_um2": float(counted["area_um2"].sum()) if len(counted) else 0.0,
    }
    # one count per stage under the scheme's own names: "primary" means one thing in each scheme
    # (binary: not mature; Silina: primary follicle-like, with "early" counted apart)
    for stage in stages:
        if not is_mature(stage):
            metrics[f"tls_{stage}_count"] = metrics["tls_count_by_stage"][stage]
    if tumour_area_mm2 > 0:
        metrics["tls_density_per_mm2"] = metrics["tls_counted"] / tumour_area_mm2
        metrics["tls_mature_density_per_mm2"] = metrics["tls_counted_mature_count"] / tumour_area_mm2
        metrics["tls_area_pct"] = 100.0 * metrics["tls_counted_area_um2"] / (tumour_area_mm2 * 1e6)
    else:
        metrics["tls_density_per_mm2"] = None
        metrics["tls_mature_density_per_mm2"] = None
        metrics["tls_area_pct"] = None
    return metrics


def cell_metrics(cells, *, keys: list[str], tissue_area_mm2: float,
                 region_areas_mm2: dict[str, float] | None = None, b_cell_key: str | None = None) -> dict:
    """Cell counts and, per marker key, percent positive cells and positive cells per mm², overall,
    in the tumour bed, the peritumoral margin and in TLS.

    ``cells`` is a :class:`tlsquant.cells.CellCounts`; ``keys`` name its markers in order;
    ``region_areas_mm2`` the areas of ``tumour``, ``margin`` and ``tls`` (densities need them).
    ``b_cell_key``, the key of the B-cell channel, also gives its percentages under the role's
    name (``b_cell_pct``, ``b_cell_pct_tumour`` ...): cohorts compare them across panels.
    Every cell centred in tissue is counted; percentages and regional densities leave out the
    cells in artefact zones, whose marker values are not trusted. Values of an empty region are None.
    """
    from .cells import REGIONS

    total = cells.total
    metrics = {
        "cells": {
            "total": total,
            "in_tumour": int(cells.counts[REGIONS.index("tumour"), 0]),
            "in_tls": int(cells.counts[REGIONS.index("tls"), 0]),
            "per_mm2_tissue": float(total / tissue_area_mm2) if tissue_area_mm2 > 0 else None,
            "mean_nucleus_area_um2": float(cells.nucleus_area_um2 / total) if total else None,
            "excluded_outside_tissue": cells.excluded_outside_tissue,
            "in_artefacts": cells.in_artefacts,
        }
    }
    areas = {"all": tissue_area_mm2, **(region_areas_mm2 or {})}

    def per_mm2(count, region):
        area = areas.get(region)
        return float(count / area) if area else None

    for region in ("tumour", "margin", "tls"):
        metrics["cells"][f"in_{region}"] = int(cells.counts[REGIONS.index(region), 0])
        metrics["cells"][f"per_mm2_{region}"] = per_mm2(cells.counts[REGIONS.index(region), 0], region)
    for k, key in enumerate(keys):
        for region, suffix in (("all", ""), ("tumour", "_tumour"), ("margin", "_margin"), ("tls", "_tls")):
            row = cells.scored(region)
            metrics[f"{key}_pct{suffix}"] = float(100.0 * row[1 + k] / row[0]) if row[0] else None
            metrics[f"{key}_per_mm2{suffix}"] = per_mm2(row[1 + k], region)
            if key == b_cell_key:
                metrics[f"b_cell_pct{suffix}"] = metrics[f"{key}_pct{suffix}"]
    return metrics
