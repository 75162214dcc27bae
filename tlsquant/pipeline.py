"""analyze_slide: one slide in, tables and masks out (no files written here)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ._version import __version__
from .classify import BINARY_STAGES, SILINA_STAGES, largest_network_um2, stage
from .config import LOCATIONS, Channels, Config, load_config
from .errors import ChannelError
from .measure import TLS_COLUMNS, empty_tls_table, locate, signed_tumour_distance, slide_metrics
from .segment.aggregates import debris_zone, detect_aggregates
from .segment.evidence import EvidencePlan, compute_evidence
from .segment.regions import tissue_mask, tumour_mask
from .slide import Slide
from .thresholds import estimate_threshold, sample_pixels, sample_windows

ROLE_ORDER = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")


@dataclass
class SlideResult:
    """Everything measured on one slide.

    ``tls_labels`` lives on the fine grid (``fine_factor`` level-0 px per cell side);
    ``tissue_mask`` and ``tumour_mask`` on the coarse grid (``coarse_factor`` px).
    """

    slide_id: str
    summary: dict[str, Any]
    tls: pd.DataFrame
    tls_labels: np.ndarray
    tissue_mask: np.ndarray
    tumour_mask: np.ndarray
    fine_factor: int
    coarse_factor: int
    pixel_size_um: tuple[float, float]  # (x, y) at level 0
    config: Config
    warnings: list[str] = field(default_factory=list)


def resolve_channels(slide: Slide, channels: Channels) -> tuple[dict[str, str], list[str]]:
    """Role -> slide channel name; a missing required marker is an error naming the role."""
    found: dict[str, str] = {}
    warnings: list[str] = []
    for role in ROLE_ORDER:
        marker = getattr(channels, role).strip()
        if not marker:
            continue
        if slide.has_channel(marker):
            found[role] = slide.channel_names[slide.channel_index(marker)]
        elif role in Channels.REQUIRED:
            raise ChannelError(
                f"{slide.path}: config channels.{role} = {marker!r} but the slide has no such channel; "
                f"channels present: {', '.join(slide.channel_names)}"
            )
        elif role == "t_cells":
            warnings.append(f"no T-cell channel {marker!r}: T-cell fractions are not measured")
    return found, warnings


def _grid_factors(slide: Slide, config: Config) -> tuple[int, int]:
    pixel_um = math.sqrt(slide.pixel_size_x_um * slide.pixel_size_y_um)
    fine = max(1, round(config.evidence.grid_um / pixel_um))
    coarse = fine * max(1, round(config.tumour.grid_um / (fine * pixel_um)))
    return fine, coarse


def analyze_slide(slide: Slide | str | Path, config: Config | None = None, *, scheduler=None,
                  num_workers: int | None = None) -> SlideResult:
    """Find, stage and measure the TLS of one slide.

    Parameters
    ----------
    slide : Slide or path
        An opened slide, or a path opened with :func:`tlsquant.open_slide`.
    config : Config, optional
        Defaults to :func:`tlsquant.load_config` ().
    scheduler, num_workers : optional
        Passed to ``dask.compute`` (default: ``config.compute``).

    Returns
    -------
    SlideResult
    """
    started = time.perf_counter()
    config = config or load_config()
    if not isinstance(slide, Slide):
        from .io import open_slide

        slide = open_slide(slide, chunk_size=config.compute.chunk_px or None)
    if scheduler is None:
        scheduler = None if config.compute.scheduler == "distributed" else config.compute.scheduler
    num_workers = num_workers if num_workers is not None else (config.compute.workers or None)
    roles, warnings = resolve_channels(slide, config.channels)
    role_names = tuple(roles)
    arrays = [slide.channel(roles[role]) for role in role_names]

    # 1. global thresholds from a deterministic sample of level-0 windows; read through
    #    tile-sized chunks so each window decodes only its own tiles
    tile = max(slide.tile_shape or (1, 1)) if slide.tile_shape and slide.tile_shape[1] < slide.shape[2] else 1
    window_px = max(tile, -(-config.thresholds.window_px // tile) * tile) if tile > 1 else config.thresholds.window_px
    # windows grown to whole tiles are fewer, so the sample keeps the configured size
    windows = max(1, config.thresholds.sample_windows * config.thresholds.window_px**2 // window_px**2)
    boxes = sample_windows(slide.shape[1:], windows=windows, window_px=window_px, align=tile)
    sparse = slide.with_chunks(window_px)
    samples = sample_pixels([sparse.channel(roles[role]) for role in role_names], boxes, scheduler=scheduler)
    thresholds = {}
    for role, values in zip(role_names, samples):
        rule = config.thresholds.rule(role)
        thresholds[role] = {"channel": roles[role], "method": rule.method,
                            "value": estimate_threshold(values, rule)}
    t_thresholds = time.perf_counter()

    # 2. the one full-resolution pass: positive pixels into coarse evidence maps
    fine_factor, coarse_factor = _grid_factors(slide, config)
    plan = EvidencePlan(role_names, tuple(thresholds[r]["value"] for r in role_names), fine_factor,
                        coarse_factor, config.debris.min_positive_channels)
    evidence = compute_evidence(arrays, plan, scheduler=scheduler, num_workers=num_workers)
    t_evidence = time.perf_counter()

    px, py = slide.pixel_size_x_um, slide.pixel_size_y_um
    fine_cell = (fine_factor * py, fine_factor * px)
    coarse_cell = (coarse_factor * py, coarse_factor * px)
    fine_um = math.sqrt(fine_cell[0] * fine_cell[1])
    coarse_um = math.sqrt(coarse_cell[0] * coarse_cell[1])

    def fine_fraction(name, box=(slice(None), slice(None))):
        return evidence.fraction("fine", name, box)

    # 3. tissue and tumour bed on the coarse grid
    tissue, tissue_info = tissue_mask(
        evidence.fraction("coarse", "nuclei"), cell_um=coarse_um, sigma_um=config.tissue.sigma_um,
        min_fraction=config.tissue.min_fraction, min_area_mm2=config.tissue.min_area_mm2,
    )
    tumour, tumour_info = tumour_mask(
        evidence.fraction("coarse", "tumour"), cell_um=coarse_um, sigma_um=config.tumour.sigma_um,
        level_fraction=config.tumour.level_fraction, min_positive_fraction=config.tumour.min_positive_fraction,
        closing_um=config.tumour.closing_um, min_area_mm2=config.tumour.min_area_mm2, tissue=tissue,
    )
    coarse_pixels = evidence.pixels("coarse")
    tissue_area_mm2 = float(coarse_pixels[tissue].sum(dtype=np.float64) * px * py / 1e6)
    tumour_area_mm2 = float(coarse_pixels[tumour].sum(dtype=np.float64) * px * py / 1e6)
    del coarse_pixels
    if tumour_area_mm2 == 0:
        warnings.append(f"no tumour found in channel {roles['tumour']!r}: density and area % are undefined")

    # 4. TLS: dense B-cell aggregates, debris excluded
    debris = debris_zone(evidence.fine["debris"], cell_um=fine_um, dilate_um=config.debris.dilate_um)
    b_fraction = fine_fraction("b_cells")
    b_fraction[debris] = 0.0
    has_t_cells = "t_cells" in roles
    if config.tls.require_t_cell_zone and not has_t_cells:
        warnings.append("tls.require_t_cell_zone is set but the slide has no T-cell channel: not applied")
    t_fraction = fine_fraction("t_cells") if has_t_cells and config.tls.require_t_cell_zone else None
    labels, tls_info = detect_aggregates(
        b_fraction, cell_um=fine_um, sigma_um=config.tls.sigma_um, min_b_fraction=config.tls.min_b_fraction,
        min_b_plateau=config.tls.min_b_plateau,
        level_fraction=config.tls.level_fraction, min_area_um2=config.tls.min_area_um2, debris=debris,
        max_debris_fraction=config.tls.max_debris_fraction, t_fraction=t_fraction,
        t_zone_width_um=config.tls.t_zone_width_um,
        min_t_fraction=config.tls.min_t_fraction if config.tls.require_t_cell_zone else 0.0,
    )
    del b_fraction, t_fraction  # whole-slide float maps: free them before the per-TLS pass

    # 5. stage, location and per-TLS measurements
    distance = signed_tumour_distance(tumour, cell_um=coarse_cell)
    gc_positive = (fine_fraction("germinal_centre") >= config.maturation.min_cell_fraction) & ~debris
    fdc_positive = (fine_fraction("fdc") >= config.maturation.min_cell_fraction) & ~debris
    rows = []
    for tls_id, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == tls_id
        area_um2 = float(evidence.pixels("fine", box)[region].sum(dtype=np.float64) * px * py)
        ys, xs = np.nonzero(region)
        cy = (ys.mean() + box[0].start + 0.5) * fine_factor  # level-0 px
        cx = (xs.mean() + box[1].start + 0.5) * fine_factor
        gc_um2 = largest_network_um2(gc_positive[box], region, cell_um=fine_um, closing_um=config.maturation.closing_um)
        fdc_um2 = largest_network_um2(fdc_positive[box], region, cell_um=fine_um, closing_um=config.maturation.closing_um)
        if distance is None:
            dist_um = None
        else:
            row = min(int(cy // coarse_factor), distance.shape[0] - 1)
            col = min(int(cx // coarse_factor), distance.shape[1] - 1)
            dist_um = float(distance[row, col])
        location = locate(dist_um, margin_um=config.location.margin_um)
        rows.append({
            "tls_id": tls_id,
            "centroid_x_um": round(cx * px, 2),
            "centroid_y_um": round(cy * py, 2),
            "area_um2": round(area_um2, 1),
            "stage": stage(gc_um2, fdc_um2, scheme=config.maturation.scheme,
                           min_network_area_um2=config.maturation.min_network_area_um2),
            "location": location,
            "distance_to_tumour_um": None if dist_um is None else round(dist_um, 1),
            "counted": bool(dist_um is not None and location in config.location.counted),
            "b_cell_fraction": round(float(fine_fraction("b_cells", box)[region].mean()), 4),
            "t_cell_fraction": round(float(fine_fraction("t_cells", box)[region].mean()), 4) if has_t_cells else None,
            "fdc_fraction": round(float(fine_fraction("fdc", box)[region].mean()), 4),
            "germinal_centre_fraction": round(float(fine_fraction("germinal_centre", box)[region].mean()), 4),
            "debris_fraction": round(float(debris[box][region].mean()), 4),
            "fdc_network_um2": round(fdc_um2, 1),
            "germinal_centre_network_um2": round(gc_um2, 1),
            "bbox_x0_px": box[1].start * fine_factor,
            "bbox_y0_px": box[0].start * fine_factor,
            "bbox_x1_px": min(box[1].stop * fine_factor, slide.shape[2]),
            "bbox_y1_px": min(box[0].stop * fine_factor, slide.shape[1]),
        })
    tls = pd.DataFrame(rows, columns=TLS_COLUMNS) if rows else empty_tls_table()
    stages = BINARY_STAGES if config.maturation.scheme == "binary" else SILINA_STAGES
    metrics = slide_metrics(tls, tissue_area_mm2=tissue_area_mm2, tumour_area_mm2=tumour_area_mm2,
                            stages=stages, locations=LOCATIONS)
    finished = time.perf_counter()
    summary = {
        "slide_id": slide.name,
        "tlsquant_version": __version__,
        "source": {"path": str(slide.path), "format": slide.format, "shape": list(slide.shape),
                   "dtype": slide.dtype.name, "channels": list(slide.channel_names)},
        "pixel_size_um": px,
        "pixel_size_y_um": py,
        **metrics,
        "thresholds": thresholds,
        "segmentation": {"fine_grid_um": fine_um, "coarse_grid_um": coarse_um, **tissue_info, **tumour_info,
                         **tls_info, "channel_roles": roles},
        "config": config.to_dict(),
        "warnings": warnings,
        "timing_seconds": {"thresholds": round(t_thresholds - started, 3),
                           "evidence": round(t_evidence - t_thresholds, 3),
                           "segmentation": round(finished - t_evidence, 3),
                           "total": round(finished - started, 3)},
    }
    return SlideResult(
        slide_id=slide.name, summary=summary, tls=tls, tls_labels=labels, tissue_mask=tissue,
        tumour_mask=tumour, fine_factor=fine_factor, coarse_factor=coarse_factor, pixel_size_um=(px, py),
        config=config, warnings=warnings,
    )
