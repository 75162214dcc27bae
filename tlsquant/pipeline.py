"""analyze_slide: one slide in, tables and masks out (no files written here)."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from . import progress
from ._version import __version__
from .background import SignalModel, build_signal_model
from .cells import CellCounts, CellPlan, compute_cells
from .classify import BINARY_STAGES, SILINA_STAGES, largest_network_um2, stage
from .config import LOCATIONS, Channels, Config, load_config
from .errors import ChannelError, SlideTooLargeError
from .measure import TLS_COLUMNS, cell_metrics, empty_tls_table, locate, signed_tumour_distance, slide_metrics, tls_shape
from .provenance import provenance
from .segment.aggregates import debris_zone, detect_aggregates
from .segment.evidence import EvidencePlan, compute_evidence
from .segment.regions import tissue_mask, tumour_mask
from .slide import Slide
from .thresholds import sample_windows

HALO_READ_PX = 512  # cell-pass halos are read through chunks of about one storage tile: little decoded beyond them
AF_NAMES = ("autofluorescence", "af", "sample af", "sample autofluorescence", "autofluo")  # names of the AF channel
ROLE_ORDER = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")
B_OCCUPANCY_SHARE = 0.125  # a fine grid cell holds B-cell membrane when this share of its pixels is CD20+
CROSSTALK_ROLES = ("tumour", "b_cells", "fdc", "germinal_centre", "t_cells")  # channels whose crosstalk is removed


def artefact_threshold(signal: SignalModel, channel: str, *, ratio: float) -> np.ndarray:
    """Where the AF channel marks an artefact: above its local AF by ``ratio`` of that AF (and by its margin).

    The unmixed AF channel is bright over all tissue; only AF well above the local level
    (red blood cells, debris) is an artefact.
    """
    model = signal.channels[channel]
    background = signal.background(channel)
    local_af = np.clip(background - np.float32(model.glass_level), 0, None)
    return background + np.float32(model.offset) + np.maximum(np.float32(model.margin), np.float32(ratio) * local_af)


@dataclass
class SlideResult:
    """Everything measured on one slide.

    ``tls_labels`` lives on the fine grid (``fine_factor`` level-0 px per cell side);
    ``tissue_mask`` and ``tumour_mask`` on the coarse grid (``coarse_factor`` px).
    Cell metrics are in ``summary`` (``cells``, ``<marker>_pct``...); ``cells`` holds one
    row per cell only when ``outputs.cells_table`` is set.
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
    cells: pd.DataFrame | None = None  # one row per cell, when ``outputs.cells_table`` is set
    debris_mask: np.ndarray | None = None  # fine grid: artefacts excluded (debris, red blood cells, edge rims)
    signal_histograms: dict[str, dict] = field(default_factory=dict)  # level-0 sample per channel, for QC
    # TLS candidates dropped, for annotations.geojson: (reason, box (slices), cells in the box) on the fine grid
    rejected_candidates: list[tuple] = field(default_factory=list)
    # coarse grid: µm to the tumour border (negative inside; None without tumour), the map that decided locations
    tumour_distance_um: np.ndarray | None = None


def available_memory_gb() -> float:
    """Physical memory of this machine in GB (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        return 0.0


def check_memory(slide: Slide, *, fine_factor: int, coarse_factor: int, n_channels: int, limit_gb: float) -> float:
    """Estimated GB the whole-slide maps need; a slide over ``limit_gb`` is refused before any pixel is read.

    The maps are the only part of the analysis that grows with the slide (the pixel passes
    go block by block), so a header claiming an absurd size (200,000 x 200,000 px from a
    tiny file) is caught here. ``limit_gb`` 0 means three quarters of this machine's memory.
    """
    height, width = slide.shape[1:]
    fine = math.ceil(height / fine_factor) * math.ceil(width / fine_factor)
    coarse = math.ceil(height / coarse_factor) * math.ceil(width / coarse_factor)
    # bytes per grid cell, from measured peaks (40,000 x 30,000 px, 7 channels: 2.75 GB): fine
    # evidence counts and fractions, labels, masks; coarse background, threshold and distance maps
    need_gb = (fine * (2 * n_channels + 24) + coarse * (12 * n_channels + 48)) / 1e9
    limit = limit_gb or 0.75 * available_memory_gb()
    if limit and need_gb > limit:
        raise SlideTooLargeError(
            f"{slide.path}: {width:,} x {height:,} px at {slide.pixel_size_x_um:g} µm/px "
            f"({width * slide.pixel_size_x_um / 1000:.1f} x {height * slide.pixel_size_y_um / 1000:.1f} mm) needs about "
            f"{need_gb:.1f} GB for its whole-slide maps, more than compute.max_memory_gb allows ({limit:.1f} GB); "
            f"check the file (a damaged header?) and the pixel size, or raise compute.max_memory_gb")
    return need_gb


def _on_tissue(level: np.ndarray, tissue: np.ndarray) -> dict:
    """Median, 5th and 95th percentile of a coarse threshold map over tissue (the values actually used)."""
    values = level[tissue] if tissue.any() else level.ravel()
    p05, median, p95 = (round(float(v), 6) for v in np.percentile(values, [5, 50, 95]))
    return {"median": median, "p05": p05, "p95": p95}


def _grown(mask: np.ndarray, cells: float) -> np.ndarray:
    """``mask`` grown by ``cells`` grid cells (a disc)."""
    radius = int(math.ceil(cells))
    if radius <= 0 or not mask.any():
        return mask
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return ndi.binary_dilation(mask, structure=y**2 + x**2 <= cells**2 + 1e-9)


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
        elif role == "autofluorescence" and marker.casefold() in AF_NAMES:
            # exports name the unmixed AF component in several ways: take whichever the slide uses
            alias = next((name for name in slide.channel_names if name.strip().casefold() in AF_NAMES), None)
            if alias is not None:
                found[role] = alias
    return found, warnings


def check_marker_rules(slide: Slide, thresholds) -> None:
    """A ``[thresholds.markers.NAME]`` rule must name a channel of the slide: a typo would silently not apply."""
    unknown = [name for name in thresholds.markers if not slide.has_channel(name)]
    if unknown:
        raise ChannelError(f"{slide.path}: config thresholds.markers names {', '.join(map(repr, unknown))}, "
                           f"no channel of this slide; channels present: {', '.join(slide.channel_names)}")


@dataclass(frozen=True)
class CellMarker:
    """A channel scored per cell: where it is measured and its column key (``cd20`` -> ``cd20_pct``)."""

    channel: str
    compartment: str  # nucleus | ring | cell
    key: str


def marker_key(channel: str) -> str:
    """Column-safe lower-case key of a marker name: ``MUM-1`` -> ``mum1``, ``PD-L1`` -> ``pdl1``."""
    return re.sub(r"[^0-9a-z]+", "", channel.casefold()) or "marker"


def resolve_cell_markers(slide: Slide, config: Config, roles: dict[str, str]) -> list[CellMarker]:
    """The channels scored per cell, each with its compartment; unknown names are an error."""
    cells = config.cells
    if cells.markers:
        missing = [m for m in cells.markers if not slide.has_channel(m)]
        if missing:
            raise ChannelError(
                f"{slide.path}: config cells.markers names {', '.join(map(repr, missing))} but the slide has no "
                f"such channel; channels present: {', '.join(slide.channel_names)}"
            )
        names = [slide.channel_names[slide.channel_index(m)] for m in cells.markers]
    else:
        skip = {roles[r].casefold() for r in ("nuclei", "autofluorescence") if r in roles}
        names = [name for name in slide.channel_names if name.casefold() not in skip]
    nuclear = {m.casefold() for m in cells.nuclear_markers}
    whole = {m.casefold() for m in cells.whole_cell_markers}
    markers, keys = [], set()
    for name in dict.fromkeys(names):
        key = base = marker_key(name)
        suffix = 2
        while key in keys:  # "MUM1" and "MUM-1" on one slide stay apart
            key, suffix = f"{base}_{suffix}", suffix + 1
        keys.add(key)
        compartment = "nucleus" if name.casefold() in nuclear else "cell" if name.casefold() in whole else "ring"
        markers.append(CellMarker(name, compartment, key))
    return markers


def _grid_factors(slide: Slide, config: Config) -> tuple[int, int]:
    pixel_um = math.sqrt(slide.pixel_size_x_um * slide.pixel_size_y_um)
    fine = max(1, round(config.evidence.grid_um / pixel_um))
    coarse = fine * max(1, round(config.tumour.grid_um / (fine * pixel_um)))
    return fine, coarse


def analyze_slide(slide: Slide | str | Path, config: Config | None = None, *, scheduler=None,
                  num_workers: int | None = None, annotations=None) -> SlideResult:
    """Find, stage and measure the TLS of one slide, and count its cells by marker.

    Two full-resolution passes: positive pixels into coarse evidence maps (tissue, tumour,
    TLS, networks), then nuclei and marker-positive cells counted into those masks (slides
    finer than ``cells.max_pixel_size_um`` with ``cells.enabled``).

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
    started = time.perf_counter()
    config = config or load_config()
    if not isinstance(slide, Slide):
        from .io import open_slide

        slide = open_slide(slide, chunk_size=config.compute.chunk_px or None)
    elif config.compute.chunk_px:  # an opened slide follows the config's chunking too (speed only)
        slide = slide.with_chunks(config.compute.chunk_px)
    check_marker_rules(slide, config.thresholds)
    if scheduler is None:
        scheduler = None if config.compute.scheduler == "distributed" else config.compute.scheduler
    num_workers = num_workers if num_workers is not None else (config.compute.workers or None)
    roles, warnings = resolve_channels(slide, config.channels)
    role_names = tuple(roles)
    arrays = [slide.channel(roles[role]) for role in role_names]
    pixel_um = max(slide.pixel_size_x_um, slide.pixel_size_y_um)
    measure_cells = config.cells.enabled and pixel_um <= config.cells.max_pixel_size_um
    cell_markers = resolve_cell_markers(slide, config, roles) if measure_cells else []
    cells_skipped = "cells.enabled is false" if not config.cells.enabled else ""
    if config.cells.enabled and not measure_cells:
        cells_skipped = (f"cells not measured: pixel size {pixel_um:g} µm is coarser than cells.max_pixel_size_um "
                         f"({config.cells.max_pixel_size_um:g} µm), too coarse to separate nuclei")
        warnings.append(cells_skipped)

    progress.step("signal model")
    # 1. the signal model: each channel's background on the coarse grid (glass, autofluorescence,
    #    illumination) and how far above it stain begins, from a low-resolution level and a
    #    deterministic sample of level-0 windows read through tile-sized chunks
    role_of = {}
    for role in role_names:
        role_of.setdefault(roles[role], role)
    channels = list(dict.fromkeys([roles[r] for r in role_names] + [m.channel for m in cell_markers]))
    tile = max(slide.tile_shape or (1, 1)) if slide.tile_shape and slide.tile_shape[1] < slide.shape[2] else 1
    window_px = max(tile, -(-config.thresholds.window_px // tile) * tile) if tile > 1 else config.thresholds.window_px
    # windows grown to whole tiles are fewer, so the sample keeps the configured size
    windows = max(1, config.thresholds.sample_windows * config.thresholds.window_px**2 // window_px**2)
    boxes = sample_windows(slide.shape[1:], windows=windows, window_px=window_px, align=tile)
    fine_factor, coarse_factor = _grid_factors(slide, config)
    check_memory(slide, fine_factor=fine_factor, coarse_factor=coarse_factor, n_channels=len(channels),
                 limit_gb=config.compute.max_memory_gb)
    rules = {name: config.thresholds.marker_rule(name, role_of.get(name)) for name in channels}
    signal = build_signal_model(
        slide, channels, rules, factor=coarse_factor, autofluorescence=roles.get("autofluorescence"),
        nuclei=roles["nuclei"], crosstalk_targets=tuple(roles[r] for r in CROSSTALK_ROLES if r in roles),
        sample_boxes=boxes, window_px=window_px, tile=tile, opening_um=config.signal.opening_um,
        max_crosstalk=config.signal.max_crosstalk, min_crosstalk=config.signal.min_crosstalk,
        scheduler=scheduler, num_workers=num_workers,
    )
    channel_thresholds = {name: signal.summary(name) for name in channels}
    warnings.extend(signal.notes)
    thresholds = {role: {"channel": roles[role], **channel_thresholds[roles[role]]} for role in role_names}
    t_thresholds = time.perf_counter()

    progress.step("counting pass")
    # 2. the one full-resolution pass: positive pixels into coarse evidence maps
    threshold_maps = {role: signal.corrected_threshold(roles[role]) for role in role_names}
    if "autofluorescence" in roles:
        threshold_maps["autofluorescence"] = artefact_threshold(signal, roles["autofluorescence"],
                                                                ratio=config.debris.autofluorescence_ratio)
    crosstalk, backgrounds = [], {}
    for role in role_names:
        sources = tuple((role_of[source], kappa) for source, kappa in signal.crosstalk.get(roles[role], ())
                        if source in role_of)
        if sources:
            crosstalk.append((role, sources))
            for source, _ in sources:
                backgrounds[source] = signal.background(roles[source]) + np.float32(signal.channels[roles[source]].offset)
    pixel_af = tuple((role, signal.pixel_af[roles[role]]) for role in role_names
                     if role != "autofluorescence" and roles[role] in signal.pixel_af)
    af_glass = signal.channels[roles["autofluorescence"]].glass_level if pixel_af else 0.0
    plan = EvidencePlan(role_names, fine_factor, coarse_factor, coarse_factor, config.debris.min_positive_channels,
                        tuple(crosstalk), pixel_af, af_glass, tuple(roles[r] for r in role_names))
    evidence = compute_evidence(arrays, plan, thresholds=threshold_maps, backgrounds=backgrounds,
                                scheduler=scheduler, num_workers=num_workers)
    del threshold_maps, backgrounds
    t_evidence = time.perf_counter()

    px, py = slide.pixel_size_x_um, slide.pixel_size_y_um
    fine_cell = (fine_factor * py, fine_factor * px)
    coarse_cell = (coarse_factor * py, coarse_factor * px)
    fine_um = math.sqrt(fine_cell[0] * fine_cell[1])
    coarse_um = math.sqrt(coarse_cell[0] * coarse_cell[1])

    def fine_fraction(name, box=(slice(None), slice(None))):
        return evidence.fraction("fine", name, box)

    progress.step("tissue and tumour")
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
    regions = None
    if annotations is not None:  # drawn tumour bed, exclusions, region of interest (QuPath annotations)
        from .annotations import region_masks

        regions = region_masks(annotations, config.annotations, slide_shape=slide.shape[1:], pixel_size_um=pixel_um,
                               fine_factor=fine_factor, coarse_factor=coarse_factor)
        tissue, tumour = regions.apply_coarse(tissue, tumour, pixel_area_um2=px * py, coarse_pixels=coarse_pixels)
        warnings.extend(note for note in regions.notes if note.startswith("warning"))
    tissue_area_mm2 = float(coarse_pixels[tissue].sum(dtype=np.float64) * px * py / 1e6)
    tumour_area_mm2 = float(coarse_pixels[tumour].sum(dtype=np.float64) * px * py / 1e6)
    distance = signed_tumour_distance(tumour, cell_um=coarse_cell)
    # the peritumoral band on tissue: where cells per mm² around the tumour are counted
    margin = None if distance is None else (distance > 0) & (distance <= config.location.margin_um) & tissue
    margin_area_mm2 = 0.0 if margin is None else float(coarse_pixels[margin].sum(dtype=np.float64) * px * py / 1e6)
    del coarse_pixels
    if tissue_area_mm2 == 0:
        warnings.append(f"no tissue found from channel {roles['nuclei']!r} (threshold "
                        f"{thresholds['nuclei']['value']:.4g}): check the channel roles and thresholds.nuclei; "
                        "see thresholds.png")
    if tumour_area_mm2 == 0:
        warnings.append(f"no tumour found in channel {roles['tumour']!r}: density and area % are undefined")

    progress.step("TLS")
    # 4. TLS: dense B-cell aggregates, debris excluded
    debris = debris_zone(fine_fraction("debris"), cell_um=fine_um, dilate_um=config.debris.dilate_um,
                         min_fraction=config.debris.min_fraction)
    fine_tissue = np.repeat(np.repeat(tissue, coarse_factor // fine_factor, 0), coarse_factor // fine_factor, 1)
    fine_tissue = fine_tissue[: debris.shape[0], : debris.shape[1]]
    artefact_area_mm2 = float(evidence.pixels("fine")[debris & fine_tissue].sum(dtype=np.float64) * px * py / 1e6)
    del fine_tissue
    # B-cell occupancy: fine cells touched by CD20+ membrane. Whether a B cell's nucleus also reads
    # as positive depends on stain and optics; whether the cell is there does not
    b_fraction = (fine_fraction("b_cells") >= np.float32(B_OCCUPANCY_SHARE)).astype(np.float32)
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
        nuclei_fraction=fine_fraction("nuclei"), min_nuclear_fraction=config.tls.min_nuclear_fraction,
        min_contrast=config.tls.min_contrast, min_relative_density=config.tls.min_relative_density,
        rejected=(rejected := []),
    )
    if regions is not None:
        labels = regions.apply_fine(labels)
    del b_fraction, t_fraction  # whole-slide float maps: free them before the per-TLS pass
    t_tls = time.perf_counter()

    # 5. cells: a second full-resolution pass, blocks with overlap, counted into the masks above
    cells = None
    if measure_cells:
        progress.step("cells pass")
        plan = CellPlan(
            markers=tuple(m.channel for m in cell_markers),
            compartments=tuple(m.compartment for m in cell_markers),
            thresholds=tuple(channel_thresholds[m.channel]["value"] for m in cell_markers),
            nuclear_threshold=thresholds["nuclei"]["value"],
            pixel_size_um=(slide.pixel_size_y_um, slide.pixel_size_x_um),
            sigma_um=config.cells.sigma_um, min_distance_um=config.cells.min_distance_um,
            min_area_um2=config.cells.min_area_um2, max_area_um2=config.cells.max_area_um2,
            ring_um=config.cells.ring_um, fine_factor=fine_factor, coarse_factor=coarse_factor,
            n_tls=int(labels.max()), keep_table=config.outputs.cells_table, grid_factor=coarse_factor,
        )
        # block cores are the slide's chunks; halos are read through tile-sized chunks
        tiled = bool(slide.tile_shape) and slide.tile_shape[1] < slide.shape[2]
        reader = slide.with_chunks(HALO_READ_PX) if tiled else slide
        names = [roles["nuclei"], *(m.channel for m in cell_markers)]
        cell_threshold_maps = np.stack([signal.threshold(names[0], fraction=config.cells.nuclear_signal_fraction)] + [
            signal.threshold(n, min_fraction=config.cells.min_signal_fraction) for n in names[1:]])
        cell_thresholds = {name: _on_tissue(level, signal.tissue_hint) for name, level in zip(names, cell_threshold_maps)}
        cells = compute_cells(slide.channel(names[0]), [slide.channel(n) for n in names[1:]], plan,
                              tissue=_grown(tissue, config.cells.tissue_reach_um / coarse_um), tumour=tumour,
                              debris=debris, tls_labels=labels, margin=margin,
                              halo_source=[reader.channel(n) for n in names], scheduler=scheduler,
                              threshold_maps=cell_threshold_maps, num_workers=num_workers)
    t_cells = time.perf_counter()

    progress.step("per-TLS measures")
    # 6. stage, location and per-TLS measurements
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
            # T-cell zone: the part of the aggregate where T-cell occupancy exceeds B-cell occupancy
            "t_cell_zone_um2": round(float(((fine_fraction("t_cells", box) > fine_fraction("b_cells", box))
                                            & region).sum()) * fine_cell[0] * fine_cell[1], 1) if has_t_cells else None,
            **tls_shape(region, cell_um=fine_cell),
            "bbox_x0_px": box[1].start * fine_factor,
            "bbox_y0_px": box[0].start * fine_factor,
            "bbox_x1_px": min(box[1].stop * fine_factor, slide.shape[2]),
            "bbox_y1_px": min(box[0].stop * fine_factor, slide.shape[1]),
            **_tls_cell_columns(cells, cell_markers, roles, tls_id),
        })
    tls = pd.DataFrame(rows, columns=TLS_COLUMNS) if rows else empty_tls_table()
    stages = BINARY_STAGES if config.maturation.scheme == "binary" else SILINA_STAGES
    metrics = slide_metrics(tls, tissue_area_mm2=tissue_area_mm2, tumour_area_mm2=tumour_area_mm2,
                            stages=stages, locations=LOCATIONS)
    if cells is not None:
        metrics.update(cell_metrics(cells, keys=[m.key for m in cell_markers], tissue_area_mm2=tissue_area_mm2,
                                    region_areas_mm2={"tumour": tumour_area_mm2, "margin": margin_area_mm2,
                                                      "tls": metrics["tls_total_area_um2"] / 1e6}))
        marker_info = {m.channel: {"key": m.key, "compartment": m.compartment, **channel_thresholds[m.channel],
                                   "cell_threshold": cell_thresholds[m.channel]} for m in cell_markers}
        cell_info = {"measured": True, "nuclear_threshold": cell_thresholds[roles["nuclei"]], "markers": marker_info,
                     "halo_px": plan.halo_px}
    else:
        cell_info = {"measured": False, "reason": cells_skipped}
    progress.end()
    finished = time.perf_counter()
    summary = {
        "slide_id": slide.name,
        "tlsquant_version": __version__,
        "provenance": provenance(config, slide.path, annotations=annotations),
        "source": {"path": str(slide.path), "format": slide.format, "shape": list(slide.shape),
                   "dtype": slide.dtype.name, "channels": list(slide.channel_names)},
        "pixel_size_um": px,
        "pixel_size_y_um": py,
        **metrics,
        "margin_area_mm2": round(margin_area_mm2, 6),
        "excluded_artefact_area_mm2": round(artefact_area_mm2, 6),
        "regions": regions.record() if regions is not None else {"annotations": None, "tissue": "automatic",
                                                                 "tumour": "automatic", "tls": "automatic"},
        "thresholds": thresholds,
        "segmentation": {"fine_grid_um": fine_um, "coarse_grid_um": coarse_um,
                         "background": {"source": signal.source, "glass_found": signal.has_glass,
                                        "grid_um": coarse_um},
                         **tissue_info, **tumour_info,
                         **tls_info, "channel_roles": roles, "cells": cell_info},
        "config": config.to_dict(),
        "warnings": warnings,
        "timing_seconds": {"thresholds": round(t_thresholds - started, 3),
                           "evidence": round(t_evidence - t_thresholds, 3),
                           "segmentation": round(t_tls - t_evidence + finished - t_cells, 3),
                           "cells": round(t_cells - t_tls, 3),
                           "total": round(finished - started, 3)},
    }
    return SlideResult(
        slide_id=slide.name, summary=summary, tls=tls, tls_labels=labels, tissue_mask=tissue,
        tumour_mask=tumour, fine_factor=fine_factor, coarse_factor=coarse_factor, pixel_size_um=(px, py),
        config=config, warnings=warnings, cells=cells.table if cells is not None else None, debris_mask=debris,
        signal_histograms={role: signal.histograms[roles[role]] for role in role_names},
        rejected_candidates=rejected, tumour_distance_um=distance,
    )


def _tls_cell_columns(cells: CellCounts | None, markers: list[CellMarker], roles: dict[str, str], tls_id: int) -> dict:
    """Cells whose centre lies in TLS ``tls_id``, and the B- and T-cell shares among them (%)."""
    if cells is None:
        return {"cell_count": None, "b_cell_pct": None, "t_cell_pct": None}
    row = cells.tls_counts[tls_id]
    channels = [m.channel for m in markers]

    def share(role):
        if role not in roles or roles[role] not in channels or row[0] == 0:
            return None
        return round(100.0 * row[1 + channels.index(roles[role])] / row[0], 2)

    return {"cell_count": int(row[0]), "b_cell_pct": share("b_cells"), "t_cell_pct": share("t_cells")}
