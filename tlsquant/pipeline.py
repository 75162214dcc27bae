"""analyze_slide: one slide in, tables and masks out (no files written here).

The analysis is the sequence of named steps in :mod:`tlsquant.steps`; this module runs them
in order, times them, reports progress, and gathers what they found into a :class:`SlideResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import progress
from ._version import __version__
from .blocks import runs_in_one_thread
from .config import Config, load_config
from .memory import release_free_memory
from .pixel_size import PixelSize
from .provenance import provenance
from .slide import Slide
from .steps import (
    SegmentedCells,
    check_marker_rules,
    check_memory,
    count_evidence,
    count_evidence_and_cells,
    find_tls,
    finish_cells,
    model_signal,
    plan_channels,
    plan_grid,
    region_warnings,
    slide_metrics_of,
    tissue_and_tumour,
    tls_rows,
    tls_table,
)
from .steps.channels import CellMarker, column_key, resolve_cell_markers, resolve_channels  # noqa: F401  (public names)
from .steps.measures import cell_record
from .steps.signal import sensitivity_groups, threshold_record
from .steps.tls import artefact_area_mm2

marker_key = column_key  # the name tlsquant 0.1 used for a marker's column key


@dataclass
class SlideResult:
    """Everything measured on one slide.

    ``tls_labels`` lives on the fine grid (``fine_factor`` level-0 px per bin side);
    ``tissue_mask`` and ``tumour_mask`` on the coarse grid (``coarse_factor`` px).
    ``metrics`` holds the slide's numbers (counts, density, area %, cells per marker),
    ``roles`` the channel of each role and ``thresholds`` the thresholds used, as
    summary.json records them; ``cells`` holds one row per cell only when
    ``outputs.cells_table`` is set.
    """

    slide_id: str
    summary: dict[str, Any]
    tls: pd.DataFrame
    tls_labels: np.ndarray
    tissue_mask: np.ndarray
    tumour_mask: np.ndarray
    fine_factor: int
    coarse_factor: int
    pixel_size: PixelSize  # level 0, (y, x) µm/px
    config: Config
    warnings: list[str] = field(default_factory=list)
    cells: pd.DataFrame | None = None  # one row per cell, when ``outputs.cells_table`` is set
    debris_mask: np.ndarray | None = None  # fine grid: artefacts excluded (debris, red blood cells, edge rims)
    signal_histograms: dict[str, dict] = field(default_factory=dict)  # level-0 sample per channel, for QC
    # TLS candidates dropped, for annotations.geojson: (reason, box (slices), bins in the box) on the fine grid
    rejected_candidates: list[tuple] = field(default_factory=list)
    # coarse grid: µm to the tumour border (negative inside; None without tumour), the map that decided locations
    tumour_distance_um: np.ndarray | None = None
    # with sensitivity.enabled: one row per scenario (see SENSITIVITY_COLUMNS), the baseline first
    sensitivity: pd.DataFrame | None = None
    roles: dict[str, str] = field(default_factory=dict)  # role -> slide channel
    thresholds: dict[str, dict] = field(default_factory=dict)  # role -> the threshold used
    metrics: dict[str, Any] = field(default_factory=dict)  # the slide's metrics, as in summary.json
    slide_shape: tuple[int, int] = (0, 0)  # level 0 (height, width) in px
    cell_markers: tuple[CellMarker, ...] = ()  # the markers scored per cell (channel, compartment, column key)

    @property
    def pixel_size_um(self) -> tuple[float, float]:
        """Level-0 pixel size as (x, y) µm/px, the order of files and summary.json (:attr:`pixel_size` is (y, x))."""
        return self.pixel_size.xy()


def _step(name: str) -> None:
    """The next step begins: the last one's freed memory goes back to the system, then progress is told."""
    release_free_memory()
    progress.step(name)


def analyze_slide(slide: Slide | str | Path, config: Config | None = None, *, scheduler=None,
                  num_workers: int | None = None, annotations=None) -> SlideResult:
    """Find, stage and measure the TLS of one slide, and count its cells by marker.

    Two full-resolution passes: positive pixels into coarse evidence maps (tissue, tumour,
    TLS, networks), then nuclei and marker-positive cells counted into those masks (slides
    finer than ``cells.max_pixel_size_um`` with ``cells.enabled``); with ``compute.one_read``
    both in one read of the slide, the cells counted into the regions once the maps have found
    them (the same results). The steps are the functions of :mod:`tlsquant.steps`, each usable
    alone.

    Parameters
    ----------
    slide : Slide or path
        An opened slide, or a path opened with :func:`tlsquant.open_slide`.
    config : Config, optional
        Defaults to :func:`tlsquant.load_config` ().
    scheduler, num_workers : optional
        Passed to ``dask.compute`` (default: ``config.compute``).
    annotations : path or list of :class:`tlsquant.qupath.Annotation`, optional
        QuPath annotations: a drawn tumour bed, exclusions and a region of interest
        (classes mapped by ``config.annotations``; see :mod:`tlsquant.annotations`).

    Returns
    -------
    SlideResult
    """
    timings = _Timings()
    config = config or load_config()
    slide = _prepared(slide, config)
    if scheduler is None:
        scheduler = None if config.compute.scheduler == "distributed" else config.compute.scheduler
    num_workers = num_workers if num_workers is not None else (config.compute.workers or None)
    compute = {"scheduler": scheduler, "num_workers": num_workers}
    threads = 1 if runs_in_one_thread(scheduler) else num_workers  # for the steps that run their own threads
    plan = plan_channels(slide, config)
    grid = plan_grid(slide, config)
    check_memory(slide, fine_factor=grid.fine_factor, coarse_factor=grid.coarse_factor,
                 n_channels=len(plan.channels), limit_gb=config.compute.max_memory_gb)
    drawn = _drawn_regions(annotations, config, slide, grid)

    _step("signal model")
    signal = model_signal(slide, config, plan, grid, scheduler=scheduler, num_workers=threads)
    thresholds = threshold_record(config, plan, signal, num_workers=threads)
    timings.mark("thresholds")

    segmented = SegmentedCells([], frozenset())
    if plan.measure_cells and config.compute.one_read:  # cells segmented in the counting's read, counted later
        _step("counting and cells pass")
        evidence, segmented = count_evidence_and_cells(slide, config, plan, grid, signal, **compute)
    else:
        _step("counting pass")
        evidence = count_evidence(slide, config, plan, grid, signal, **compute)
    timings.mark("evidence")

    _step("tissue and tumour")
    bed = tissue_and_tumour(evidence, config, grid, drawn)

    _step("TLS")
    has_t_cells = "t_cells" in plan.roles
    found = find_tls(evidence, config, grid, drawn, has_t_cells=has_t_cells, num_workers=threads)
    found.artefact_area_mm2 = artefact_area_mm2(evidence, found.debris, bed.tissue, grid)
    timings.mark("segmentation")

    _step("per-TLS measures")
    rows = tls_rows(evidence, config, plan, grid, bed, found, slide_shape=slide.shape[1:])
    timings.mark("segmentation")
    if not config.sensitivity.enabled:
        evidence = None  # the whole-slide maps (~0.4 GB at 40k x 30k px) are not held through the cell pass

    cells = None
    if plan.measure_cells:
        _step("cells pass")
        cells = finish_cells(slide, config, plan, grid, signal, bed, found, segmented, **compute)
    timings.mark("cells")
    tls = tls_table(rows, cells, plan)
    metrics = slide_metrics_of(tls, config, plan, bed, cells)

    sensitivity = None
    if config.sensitivity.enabled:
        from .sensitivity import threshold_sensitivity

        _step("sensitivity")
        sensitivity = threshold_sensitivity(
            evidence, config, grid, drawn, groups=sensitivity_groups(config.sensitivity.roles, plan.roles),
            roles=plan.roles, has_t_cells=has_t_cells, baseline=(bed, found, dict(metrics)),
            workers=1 if runs_in_one_thread(scheduler) else num_workers)
        timings.mark("sensitivity")
    progress.end()
    timings.mark("segmentation")
    metrics["margin_area_mm2"] = round(bed.margin_area_mm2, 6)
    metrics["excluded_artefact_area_mm2"] = round(found.artefact_area_mm2, 6)

    warnings = [*plan.warnings, *signal.notes, *region_warnings(bed, plan, thresholds, drawn)]
    if config.tls.require_t_cell_zone and not has_t_cells:
        warnings.append("tls.require_t_cell_zone is set but the slide has no T-cell channel: not applied")
    summary = _summary(slide, config, annotations, grid, signal, thresholds, plan, bed, found, cells, metrics,
                       drawn, warnings, sensitivity, timings)
    return SlideResult(
        slide_id=slide.name, summary=summary, tls=tls, tls_labels=found.labels, tissue_mask=bed.tissue,
        tumour_mask=bed.tumour, fine_factor=grid.fine_factor, coarse_factor=grid.coarse_factor,
        pixel_size=grid.pixel_size, config=config, warnings=warnings,
        cells=cells.counts.table if cells is not None else None, debris_mask=found.debris,
        signal_histograms={role: signal.histograms[channel] for role, channel in plan.roles.items()},
        rejected_candidates=found.rejected, tumour_distance_um=bed.distance, sensitivity=sensitivity,
        roles=dict(plan.roles), thresholds=thresholds, metrics=metrics, slide_shape=tuple(slide.shape[1:]),
        cell_markers=plan.cell_markers if cells is not None else (),
    )


def _prepared(slide: Slide | str | Path, config: Config) -> Slide:
    """The slide opened (a path) or rechunked to ``compute.chunk_px``, its marker rules checked."""
    if not isinstance(slide, Slide):
        from .io import open_slide

        slide = open_slide(slide, chunk_size=config.compute.chunk_px or None)
    elif config.compute.chunk_px:  # an opened slide follows the config's chunking too (speed only)
        slide = slide.with_chunks(config.compute.chunk_px)
    check_marker_rules(slide, config.thresholds)
    return slide


def _drawn_regions(annotations, config: Config, slide: Slide, grid):
    """QuPath annotations as masks on the analysis grids (a drawn tumour bed, exclusions, a region of interest)."""
    if annotations is None:
        return None
    from .annotations import region_masks

    return region_masks(annotations, config.annotations, slide_shape=slide.shape[1:],
                        pixel_size_um=max(grid.pixel_size), fine_factor=grid.fine_factor,
                        coarse_factor=grid.coarse_factor)


def _summary(slide, config, annotations, grid, signal, thresholds, plan, bed, found, cells, metrics, drawn,
             warnings, sensitivity, timings) -> dict[str, Any]:
    """summary.json: provenance, source, pixel size, metrics, regions, thresholds, segmentation and timings."""
    from .sensitivity import sensitivity_summary

    return {
        "slide_id": slide.name,
        "tlsquant_version": __version__,
        "provenance": provenance(config, slide.path, annotations=annotations),
        "source": {"path": str(slide.path), "format": slide.format, "shape": list(slide.shape),
                   "dtype": slide.dtype.name, "channels": list(slide.channel_names)},
        "pixel_size_um": grid.pixel_size.x_um,
        "pixel_size_y_um": grid.pixel_size.y_um,
        **metrics,  # ends with margin_area_mm2 and excluded_artefact_area_mm2
        "regions": drawn.record() if drawn is not None else {"annotations": None, "tissue": "automatic",
                                                             "tumour": "automatic", "tls": "automatic"},
        "thresholds": thresholds,
        "segmentation": {"fine_grid_um": grid.fine_um, "coarse_grid_um": grid.coarse_um,
                         "background": {"source": signal.source, "glass_found": signal.has_glass,
                                        "grid_um": grid.coarse_um},
                         **bed.tissue_info, **bed.tumour_info,
                         **found.info, "channel_roles": dict(plan.roles), "cells": cell_record(plan, signal, cells)},
        "config": config.to_dict(),
        "warnings": warnings,
        **({"sensitivity": sensitivity_summary(sensitivity)} if sensitivity is not None else {}),
        "timing_seconds": timings.seconds(),
    }


class _Timings:
    """Seconds per part of the analysis, for summary.json (a part marked twice adds up)."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.parts: dict[str, float] = {"thresholds": 0.0, "evidence": 0.0, "segmentation": 0.0, "cells": 0.0}

    def mark(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - self.last
        self.last = now

    def seconds(self) -> dict[str, float]:
        return {**{part: round(value, 3) for part, value in self.parts.items()},
                "total": round(self.last - self.started, 3)}
