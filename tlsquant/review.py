"""Reviewed TLS back: recompute every TLS metric from outlines a pathologist edited in QuPath.

What review needs lives in the slide folder, so it runs without the slide:

- ``summary.json``: pixel size, slide shape, grid sizes, config (margin, counted locations,
  stage scheme), tissue and tumour areas;
- ``annotations.geojson``: the tumour bed and tissue outline as polygons that rasterise back
  onto the coarse grid exactly (so an unedited review reproduces the automatic numbers);
  a reviewer may edit it too (redraw the tumour, draw ``Fold``/``Necrosis``... exclusions) and
  pass it with ``--annotations``;
- ``tls.geojson`` and ``tls.csv``: the automatic TLS, matched to the reviewed ones by their
  UUID (QuPath keeps it) and compared cell by cell on the fine grid.

Each reviewed TLS is rasterised on the fine grid (exclusions removed); its area, centroid,
distance to the tumour border, location and counted flag are measured as the analysis
measures them; its stage is the reviewer's class (``TLS: mature``). Marker fractions and
network areas cannot be remeasured without the slide: they are carried over for TLS whose
outline is unchanged and left empty otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .annotations import region_masks
from .classify import BINARY_STAGES, SILINA_STAGES
from .config import LOCATIONS, Annotations
from .errors import TLSQuantError
from .measure import TLS_COLUMNS, empty_tls_table, locate, signed_tumour_distance, slide_metrics, tls_shape
from .pixel_size import PixelSize
from .polygons import cell_pixels, rasterise
from .qupath import Annotation, AnnotationError, class_matches, object_id, read_features

REVIEWED_SUMMARY = "summary.reviewed.json"
REVIEWED_TABLE = "tls.reviewed.csv"
HEADLINE = ("tissue_area_mm2", "tumour_area_mm2", "tls_count", "tls_counted", "tls_mature_count",
            "tls_primary_count", "tls_early_count", "tls_primary_follicle_count", "tls_density_per_mm2", "tls_mature_density_per_mm2", "tls_area_pct",
            "tls_total_area_um2", "tls_counted_area_um2")
CARRIED = ("b_cell_fraction", "t_cell_fraction", "fdc_fraction", "germinal_centre_fraction", "debris_fraction",
           "fdc_network_um2", "germinal_centre_network_um2", "cell_count", "b_cell_pct", "t_cell_pct")


class ReviewError(TLSQuantError, ValueError):
    """A slide folder or a reviewed file cannot be used for review."""


@dataclass
class SlideGrid:
    """The geometry and settings of an analysed slide, read back from its folder."""

    folder: Path
    slide_id: str
    summary: dict[str, Any]
    slide_shape: tuple[int, int]  # level-0 (height, width)
    pixel_size: PixelSize  # level 0, (y, x)
    fine_factor: int
    coarse_factor: int

    @property
    def fine_shape(self) -> tuple[int, int]:
        return tuple(-(-s // self.fine_factor) for s in self.slide_shape)

    @property
    def coarse_shape(self) -> tuple[int, int]:
        return tuple(-(-s // self.coarse_factor) for s in self.slide_shape)

    @property
    def pixel_area_um2(self) -> float:
        return self.pixel_size.area_um2

    @property
    def config(self) -> dict[str, Any]:
        return self.summary.get("config", {})

    @property
    def annotation_settings(self) -> Annotations:
        stored = self.config.get("annotations") or {}
        names = {f for f in Annotations.__dataclass_fields__}
        return Annotations(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in names})

    @property
    def stages(self) -> tuple[str, ...]:
        return SILINA_STAGES if self.config.get("maturation", {}).get("scheme") == "silina" else BINARY_STAGES


def read_slide_folder(folder: str | Path) -> SlideGrid:
    """The grid and settings of a slide folder written by ``tlsquant analyze`` / ``batch``."""
    folder = Path(folder)
    path = folder / "summary.json"
    if not path.is_file():
        raise ReviewError(f"{folder}: no summary.json; expected a slide folder written by tlsquant analyze "
                          "(a batch writes them under slides/<slide_id>/)")
    summary = json.loads(path.read_text(encoding="utf-8"))
    try:
        px, py = float(summary["pixel_size_um"]), float(summary.get("pixel_size_y_um", summary["pixel_size_um"]))
        height, width = (int(v) for v in summary["source"]["shape"][1:])
        grid = summary["segmentation"]
        pixel_um = math.sqrt(px * py)
        fine = max(1, round(float(grid["fine_grid_um"]) / pixel_um))
        coarse = max(1, round(float(grid["coarse_grid_um"]) / pixel_um))
    except (KeyError, TypeError, ValueError) as exc:
        raise ReviewError(f"{path}: lacks {exc} (pixel size, source shape or segmentation grid sizes); "
                          "re-run tlsquant analyze with this version") from None
    return SlideGrid(folder, str(summary["slide_id"]), summary, (height, width), PixelSize.from_xy(px, py), fine, coarse)


def _stage_of(item: Annotation, stages: tuple[str, ...], fallback: str | None, source: str) -> str:
    """The stage a reviewer gave: the derived class (``TLS: mature``), else the stage in the metadata."""
    words = [n.strip().casefold().replace(" ", "_").replace("-", "_") for n in item.names[1:]]
    if not words and len(item.names) == 1 and " " in item.names[0]:  # "TLS mature", as tlsquant wrote before
        words = [item.names[0].split(" ", 1)[1].strip().casefold().replace(" ", "_")]
    for word in words:
        if word in stages:
            return word
    if words:
        raise ReviewError(f"{source}: {item.label()}: stage {item.names[1:]} is not one of {', '.join(stages)} "
                          f"(maturation scheme of this slide); classify it e.g. 'TLS: {stages[-1]}'")
    stage = item.metadata.get("stage") or fallback
    if stage in stages:
        return stage
    raise ReviewError(f"{source}: {item.label()} has no stage: classify it 'TLS: {stages[0]}' or 'TLS: {stages[-1]}'")


def tls_row(mask: np.ndarray, grid: SlideGrid, distance: np.ndarray | None, *, margin_um: float,
            counted_locations, fine_pixels: np.ndarray) -> dict[str, Any]:
    """The geometric tls.csv columns of one TLS given as fine-grid bins, measured as the pipeline does."""
    py, px = grid.pixel_size
    f, c = grid.fine_factor, grid.coarse_factor
    ys, xs = np.nonzero(mask)
    cy = (ys.mean() + 0.5) * f
    cx = (xs.mean() + 0.5) * f
    if distance is None:
        dist_um = None
    else:
        dist_um = float(distance[min(int(cy // c), distance.shape[0] - 1), min(int(cx // c), distance.shape[1] - 1)])
    location = locate(dist_um, margin_um=margin_um)
    return {
        "centroid_x_um": round(cx * px, 2), "centroid_y_um": round(cy * py, 2),
        "area_um2": round(float(fine_pixels[mask].sum() * px * py), 1),
        "location": location, "distance_to_tumour_um": None if dist_um is None else round(dist_um, 1),
        "counted": bool(dist_um is not None and location in counted_locations),
        "bbox_x0_px": int(xs.min()) * f, "bbox_y0_px": int(ys.min()) * f,
        "bbox_x1_px": min((int(xs.max()) + 1) * f, grid.slide_shape[1]),
        "bbox_y1_px": min((int(ys.max()) + 1) * f, grid.slide_shape[0]),
        **tls_shape(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], bin_um=(f * py, f * px)),
    }


@dataclass
class ReviewResult:
    summary: dict[str, Any]
    tls: pd.DataFrame  # TLS_COLUMNS + review_status
    diff: dict[str, Any]


def review_slide(folder: str | Path, reviewed_tls: str | Path, *, annotations: str | Path | None = None,
                 unstaged: str | None = None) -> ReviewResult:
    """Recompute a slide's TLS metrics from reviewed outlines (see the module docstring).

    Parameters
    ----------
    folder : slide folder written by ``tlsquant analyze``
    reviewed_tls : GeoJSON of the reviewed TLS (QuPath export; classes ``TLS: <stage>``)
    annotations : GeoJSON of the regions (default: the folder's annotations.geojson)
    unstaged : the stage of a TLS classified plain ``TLS`` (default: such a TLS is an error)

    Returns
    -------
    ReviewResult with the reviewed summary, table and the diff against the automatic result.
    """
    grid = read_slide_folder(folder)
    settings = grid.annotation_settings
    summary = grid.summary
    regions_path = Path(annotations) if annotations is not None else grid.folder / "annotations.geojson"
    region_items, _ = read_features(regions_path) if regions_path.is_file() else ([], [])
    coarse_pixels = cell_pixels(grid.coarse_shape, grid.coarse_factor, grid.slide_shape)
    fine_pixels = cell_pixels(grid.fine_shape, grid.fine_factor, grid.slide_shape)
    regions = region_masks([i for i in region_items if not class_matches(i.names, settings.tls_classes)], settings,
                           slide_shape=grid.slide_shape, pixel_size_um=max(grid.pixel_size),
                           fine_factor=grid.fine_factor, coarse_factor=grid.coarse_factor, source=str(regions_path))
    tissue_items = [i for i in region_items if i.names and i.names[0].casefold() == "tissue"]
    tissue = rasterise([p for i in tissue_items for p in i.polygons], grid.coarse_shape, grid.coarse_factor) \
        if tissue_items else None
    if regions.tumour is None and summary.get("tumour_area_mm2"):
        raise ReviewError(f"{regions_path}: no tumour bed (class {' or '.join(settings.tumour_classes)}) but the "
                          f"analysis found {summary['tumour_area_mm2']} mm² of tumour; give the regions file of this "
                          "slide folder (annotations.geojson) with --annotations")
    tumour = regions.tumour if regions.tumour is not None else np.zeros(grid.coarse_shape, bool)
    keep = np.ones(grid.coarse_shape, bool)
    if regions.exclude_coarse is not None:
        keep &= ~regions.exclude_coarse
    if regions.roi_coarse is not None:
        keep &= regions.roi_coarse
    tumour = tumour & keep if tissue is None else tumour & keep & tissue
    if tissue is not None:
        tissue_area = float(coarse_pixels[tissue & keep].sum() * grid.pixel_area_um2 / 1e6)
    else:
        tissue_area = float(summary.get("tissue_area_mm2") or 0.0)
    tumour_area = float(coarse_pixels[tumour].sum() * grid.pixel_area_um2 / 1e6)
    drop = np.zeros(grid.fine_shape, bool)
    if regions.exclude_fine is not None:
        drop |= regions.exclude_fine
    if regions.roi_fine is not None:
        drop |= ~regions.roi_fine

    location_config = summary.get("config", {}).get("location", {})
    margin_um = float(location_config.get("margin_um", 500.0))
    counted_locations = tuple(location_config.get("counted", ("intratumoral", "peritumoral")))
    distance = signed_tumour_distance(tumour, bin_um=grid.pixel_size.scaled(grid.coarse_factor))

    # the automatic TLS: table rows and their cells, from the folder's own tls.geojson
    automatic = pd.read_csv(grid.folder / "tls.csv") if (grid.folder / "tls.csv").is_file() else empty_tls_table()
    automatic_rows = {int(r["tls_id"]): r for r in automatic.to_dict("records")}
    automatic_cells = {}
    if (grid.folder / "tls.geojson").is_file():
        for item in read_features(grid.folder / "tls.geojson")[0]:
            if "tls_id" in item.metadata:
                automatic_cells[int(item.metadata["tls_id"])] = rasterise(item.polygons, grid.fine_shape, grid.fine_factor)
    by_uuid = {object_id(grid.slide_id, f"tls/{tls_id}"): tls_id for tls_id in automatic_rows}

    reviewed, notes = read_features(reviewed_tls)
    rows, seen, restaged, redrawn, added = [], set(), [], [], []
    next_id = max(automatic_rows, default=0) + 1
    for item in reviewed:
        if not class_matches(item.names, settings.tls_classes):
            if item.names:
                notes.append(f"{item.label()}: not a TLS class ({', '.join(settings.tls_classes)}), ignored")
                continue
            raise ReviewError(f"{reviewed_tls}: {item.label()} has no class; classify it 'TLS: {grid.stages[0]}' "
                              f"or 'TLS: {grid.stages[-1]}'")
        original = by_uuid.get(item.object_id or "")
        if original is None and item.metadata.get("slide_id") == grid.slide_id and item.metadata.get("tls_id", "").isdigit():
            original = int(item.metadata["tls_id"])  # the id was lost but the metadata survived
            original = original if original in automatic_rows else None
        if original in seen:
            original = None  # a duplicated outline is a new TLS
        before = automatic_rows.get(original) if original is not None else None
        stage = _stage_of(item, grid.stages, before["stage"] if before is not None else unstaged, str(reviewed_tls))
        cells = rasterise(item.polygons, grid.fine_shape, grid.fine_factor) & ~drop
        if not cells.any():
            notes.append(f"{item.label()}: covers no {grid.fine_factor}-px grid bin centre (or only excluded "
                         "ones), left out")
            continue
        row = {"tls_id": original if original is not None else next_id, "stage": stage,
               **tls_row(cells, grid, distance, margin_um=margin_um, counted_locations=counted_locations,
                         fine_pixels=fine_pixels)}
        if original is None:
            status = "added"
            added.append(next_id)
            next_id += 1
        else:
            seen.add(original)
            unchanged = original in automatic_cells and np.array_equal(cells, automatic_cells[original])
            status = "unchanged" if unchanged else "redrawn"
            if not unchanged:
                redrawn.append(original)
            if stage != before["stage"]:
                restaged.append({"tls_id": original, "from": before["stage"], "to": stage})
                status = "restaged" if unchanged else "redrawn, restaged"
            if unchanged:
                row.update({k: before.get(k) for k in CARRIED})
        row["review_status"] = status
        rows.append(row)
    removed = sorted(set(automatic_rows) - seen)
    table = pd.DataFrame(rows, columns=[*TLS_COLUMNS, "review_status"]) if rows else \
        pd.DataFrame({name: pd.Series(dtype="object") for name in [*TLS_COLUMNS, "review_status"]})
    table = table.sort_values("tls_id", kind="stable").reset_index(drop=True)
    metrics = slide_metrics(table, tissue_area_mm2=tissue_area, tumour_area_mm2=tumour_area,
                            stages=grid.stages, locations=LOCATIONS)
    changes = {key: {"automatic": summary.get(key), "reviewed": metrics.get(key)} for key in HEADLINE
               if not _same(summary.get(key), metrics.get(key))}
    diff = {"added": added, "removed": removed, "restaged": restaged, "redrawn": sorted(redrawn),
            "metrics_changed": changes}
    reviewed_summary = {**summary, **metrics, "review": {
        "reviewed_tls": str(reviewed_tls), "regions": str(regions_path) if regions_path.is_file() else None,
        **diff, "regions_record": regions.record(), "notes": notes,
        "carried_over": "marker fractions, networks and cell counts of unchanged outlines; empty for added or "
                        "redrawn TLS (they need the slide)"}}
    return ReviewResult(reviewed_summary, table, diff)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def write_review(result: ReviewResult, folder: str | Path) -> dict[str, Path]:
    """Write summary.reviewed.json and tls.reviewed.csv beside the automatic outputs."""
    from .io.atomic import atomic_path, write_text_atomic

    folder = Path(folder)
    table_path = folder / REVIEWED_TABLE
    with atomic_path(table_path) as temporary:
        result.tls.to_csv(temporary, index=False, na_rep="")
    summary_path = write_text_atomic(folder / REVIEWED_SUMMARY, json.dumps(result.summary, indent=2, default=_plain))
    return {"summary": summary_path, "tls": table_path}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["AnnotationError", "ReviewError", "ReviewResult", "read_slide_folder", "review_slide", "write_review"]
