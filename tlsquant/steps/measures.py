"""Step 8: stage, location and measurements of each TLS, and the slide's metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..classify import BINARY_STAGES, SILINA_STAGES, largest_network_um2, stage
from ..config import LOCATIONS, Config
from ..measure import TLS_COLUMNS, cell_metrics, empty_tls_table, locate, slide_metrics, tls_shape
from ..segment.evidence import EvidenceMaps
from .cells import CellPass
from .channels import ChannelPlan
from .grid import Grid
from .regions import TumourBed
from .tls import FoundTLS


def staged_tls(evidence: EvidenceMaps, labels: np.ndarray, debris: np.ndarray, distance: np.ndarray | None,
               config: Config, grid: Grid) -> list[dict]:
    """Each TLS's box, region, area (µm², as in tls.csv), centroid (level-0 px), networks, stage and location."""
    items = ((tls_id, box, labels[box] == tls_id, debris[box])
             for tls_id, box in enumerate(ndi.find_objects(labels), start=1) if box is not None)
    return stage_items(evidence, items, distance, config, grid)


def stage_items(evidence: EvidenceMaps, items, distance: np.ndarray | None, config: Config, grid: Grid) -> list[dict]:
    """:func:`staged_tls` of TLS given one by one as (tls_id, box, region, artefact zone in the box), boxes tight
    on the fine grid: a TLS's numbers read only the maps within its box."""
    min_fraction, closing_um = config.maturation.min_bin_fraction, config.maturation.closing_um
    py, px = grid.pixel_size
    out = []
    for tls_id, box, region, debris in items:
        gc_positive = (evidence.fraction("fine", "germinal_centre", box) >= min_fraction) & ~debris
        fdc_positive = (evidence.fraction("fine", "fdc", box) >= min_fraction) & ~debris
        area_um2 = float(evidence.pixels("fine", box)[region].sum(dtype=np.float64) * px * py)
        ys, xs = np.nonzero(region)
        cy = (ys.mean() + box[0].start + 0.5) * grid.fine_factor  # level-0 px
        cx = (xs.mean() + box[1].start + 0.5) * grid.fine_factor
        gc_um2 = largest_network_um2(gc_positive, region, bin_um=grid.fine_um, closing_um=closing_um)
        fdc_um2 = largest_network_um2(fdc_positive, region, bin_um=grid.fine_um, closing_um=closing_um)
        if distance is None:
            dist_um = None
        else:
            row = min(int(cy // grid.coarse_factor), distance.shape[0] - 1)
            col = min(int(cx // grid.coarse_factor), distance.shape[1] - 1)
            dist_um = float(distance[row, col])
        location = locate(dist_um, margin_um=config.location.margin_um)
        out.append({"tls_id": tls_id, "box": box, "region": region, "area_um2": round(area_um2, 1), "cy": cy, "cx": cx,
                    "gc_um2": gc_um2, "fdc_um2": fdc_um2, "dist_um": dist_um, "location": location,
                    "stage": stage(gc_um2, fdc_um2, scheme=config.maturation.scheme,
                                   min_network_area_um2=config.maturation.min_network_area_um2),
                    "counted": bool(dist_um is not None and location in config.location.counted)})
    return out


def tls_cell_columns(cells: CellPass | None, plan: ChannelPlan, tls_id: int) -> dict:
    """Cells whose centre lies in TLS ``tls_id``, and the B- and T-cell shares among them (%)."""
    if cells is None:
        return {"cell_count": None, "b_cell_pct": None, "t_cell_pct": None}
    row = cells.counts.tls_counts[tls_id]
    channels = [m.channel for m in plan.cell_markers]

    def share(role):
        if role not in plan.roles or plan.roles[role] not in channels or row[0] == 0:
            return None
        return round(100.0 * row[1 + channels.index(plan.roles[role])] / row[0], 2)

    return {"cell_count": int(row[0]), "b_cell_pct": share("b_cells"), "t_cell_pct": share("t_cells")}


def measure_tls(evidence: EvidenceMaps, config: Config, plan: ChannelPlan, grid: Grid, bed: TumourBed,
                found: FoundTLS, cells: CellPass | None, *, slide_shape: tuple[int, int]) -> pd.DataFrame:
    """tls.csv: one row per TLS, position and area in µm, stage, location, marker fractions, shape, cells."""
    return tls_table(tls_rows(evidence, config, plan, grid, bed, found, slide_shape=slide_shape), cells, plan)


def tls_table(rows: list[dict], cells: CellPass | None, plan: ChannelPlan) -> pd.DataFrame:
    """tls.csv from :func:`tls_rows` and the cells counted in each TLS (``cells`` None: not counted)."""
    rows = [{**row, **tls_cell_columns(cells, plan, row["tls_id"])} for row in rows]
    return pd.DataFrame(rows, columns=TLS_COLUMNS) if rows else empty_tls_table()


def tls_rows(evidence: EvidenceMaps, config: Config, plan: ChannelPlan, grid: Grid, bed: TumourBed,
             found: FoundTLS, *, slide_shape: tuple[int, int]) -> list[dict]:
    """tls.csv's rows without the cell columns: all a TLS's numbers that the evidence maps give.

    Made before the cell pass, so that the whole-slide maps can go before it.
    """
    debris = found.debris
    has_t_cells = "t_cells" in plan.roles
    fine_bin = grid.fine_bin
    py, px = grid.pixel_size
    f = grid.fine_factor

    def fraction(name, box):
        return evidence.fraction("fine", name, box)

    rows = []
    for tls in staged_tls(evidence, found.labels, debris, bed.distance, config, grid):
        tls_id, box, region, dist_um = tls["tls_id"], tls["box"], tls["region"], tls["dist_um"]
        rows.append({
            "tls_id": tls_id,
            "centroid_x_um": round(tls["cx"] * px, 2),
            "centroid_y_um": round(tls["cy"] * py, 2),
            "area_um2": tls["area_um2"],
            "stage": tls["stage"],
            "location": tls["location"],
            "distance_to_tumour_um": None if dist_um is None else round(dist_um, 1),
            "counted": tls["counted"],
            "b_cell_fraction": round(float(fraction("b_cells", box)[region].mean()), 4),
            "t_cell_fraction": round(float(fraction("t_cells", box)[region].mean()), 4) if has_t_cells else None,
            "fdc_fraction": round(float(fraction("fdc", box)[region].mean()), 4),
            "germinal_centre_fraction": round(float(fraction("germinal_centre", box)[region].mean()), 4),
            "debris_fraction": round(float(debris[box][region].mean()), 4),
            "fdc_network_um2": round(tls["fdc_um2"], 1),
            "germinal_centre_network_um2": round(tls["gc_um2"], 1),
            # T-cell zone: the part of the aggregate where T-cell occupancy exceeds B-cell occupancy
            "t_cell_zone_um2": round(float(((fraction("t_cells", box) > fraction("b_cells", box)) & region).sum())
                                     * fine_bin[0] * fine_bin[1], 1) if has_t_cells else None,
            **tls_shape(region, bin_um=fine_bin),
            "bbox_x0_px": box[1].start * f,
            "bbox_y0_px": box[0].start * f,
            "bbox_x1_px": min(box[1].stop * f, slide_shape[1]),
            "bbox_y1_px": min(box[0].stop * f, slide_shape[0]),
        })
    return rows


def slide_metrics_of(tls: pd.DataFrame, config: Config, plan: ChannelPlan, bed: TumourBed,
                     cells: CellPass | None) -> dict[str, Any]:
    """The slide's metrics: TLS counts by stage and location, density, area %, and cells per marker and region."""
    stages = BINARY_STAGES if config.maturation.scheme == "binary" else SILINA_STAGES
    metrics = slide_metrics(tls, tissue_area_mm2=bed.tissue_area_mm2, tumour_area_mm2=bed.tumour_area_mm2,
                            stages=stages, locations=LOCATIONS)
    if cells is not None:
        metrics.update(cell_metrics(cells.counts, keys=[m.key for m in plan.cell_markers],
                                    tissue_area_mm2=bed.tissue_area_mm2,
                                    region_areas_mm2={"tumour": bed.tumour_area_mm2, "margin": bed.margin_area_mm2,
                                                      "tls": metrics["tls_total_area_um2"] / 1e6},
                                    b_cell_key=plan.b_cell_key))
    return metrics


def cell_record(plan: ChannelPlan, signal, cells: CellPass | None) -> dict[str, Any]:
    """summary.json's ``segmentation.cells``: the thresholds and compartments used, or why cells were not counted."""
    if cells is None:
        return {"measured": False, "reason": plan.cells_skipped}
    markers = {m.channel: {"key": m.key, "compartment": m.compartment, **signal.summary(m.channel),
                           "cell_threshold": cells.thresholds[m.channel]} for m in plan.cell_markers}
    return {"measured": True, "nuclear_threshold": cells.thresholds[plan.roles["nuclei"]], "markers": markers,
            "halo_px": cells.halo_px}
