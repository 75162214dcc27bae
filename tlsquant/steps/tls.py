"""Step 6: TLS, the dense B-cell aggregates on the fine grid, artefacts excluded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..config import Config
from ..segment.aggregates import (
    Candidates,
    Seeds,
    aggregate_candidates,
    debris_level,
    detect_aggregates,
    grown_zone,
    growth_reach,
    half_level_seeds,
)
from ..segment.evidence import EvidenceMaps
from .grid import Grid

B_OCCUPANCY_SHARE = 0.125  # a fine bin holds B-cell membrane when this share of its pixels is CD20+


@dataclass
class FoundTLS:
    """TLS labels on the fine grid, the artefact zone they avoid, and how candidates fared."""

    debris: np.ndarray
    labels: np.ndarray
    info: dict
    rejected: list  # (reason, box, region) per candidate dropped
    artefact_area_mm2: float = field(default=0.0)  # artefact zone on tissue


def b_occupancy(evidence: EvidenceMaps, debris: np.ndarray, box=(slice(None), slice(None))) -> np.ndarray:
    """Fine bins touched by CD20+ membrane (bool), artefacts cleared; within ``box``
    (``debris`` then the artefact zone in that box): bin by bin the whole map's values.

    Whether a B cell's nucleus also reads as positive depends on stain and optics;
    whether the cell is there does not.
    """
    occupied = evidence.above("fine", "b_cells", np.float32(B_OCCUPANCY_SHARE), inclusive=True, box=box)
    occupied[debris] = False
    return occupied


def artefact_zone(evidence: EvidenceMaps, config: Config, grid: Grid) -> np.ndarray:
    """Fine bins excluded as artefact (debris, red blood cells, edge rims), grown by ``debris.dilate_um``."""
    return grown_zone(evidence.above("fine", "debris", debris_level(config.debris.min_fraction)),
                      bin_um=grid.fine_um, dilate_um=config.debris.dilate_um)


def artefact_area_mm2(evidence: EvidenceMaps, debris: np.ndarray, tissue: np.ndarray, grid: Grid,
                      band_rows: int = 512) -> float:
    """Area of the artefact zone on tissue (``tissue`` on the coarse grid), in mm².

    Summed in bands of fine rows (each a whole number of coarse rows): whole-slide float
    maps of the fine grid would cost ~0.6 GB at 40k x 30k px.
    """
    ratio = grid.bins_per_coarse
    band_rows = max(ratio, band_rows // ratio * ratio)
    pixels = 0.0  # whole pixels: the float64 sum is exact in any order
    for start in range(0, debris.shape[0], band_rows):
        rows = slice(start, min(start + band_rows, debris.shape[0]))
        coarse = tissue[start // ratio: -(-rows.stop // ratio)]
        fine_tissue = np.repeat(np.repeat(coarse, ratio, 0), ratio, 1)[: rows.stop - start, : debris.shape[1]]
        pixels += evidence.pixels("fine", (rows, slice(None)))[debris[rows] & fine_tissue].sum(dtype=np.float64)
    py, px = grid.pixel_size
    return float(pixels * px * py / 1e6)


class FractionMap:
    """``evidence.fraction(grid, name)`` read box by box (``map[box]``), never made whole.

    The candidate filters read a few boxes of a whole-slide map; a box's fractions are
    bin by bin those of the whole map.
    """

    def __init__(self, evidence: EvidenceMaps, grid: str, name: str):
        self.evidence, self.grid, self.name = evidence, grid, name

    def __getitem__(self, box) -> np.ndarray:
        return self.evidence.fraction(self.grid, self.name, box)


def aggregate_options(config: Config, grid: Grid, *, min_area_um2: float | None = None) -> dict:
    """The settings :func:`tlsquant.segment.aggregates.detect_aggregates` takes from ``config.tls``."""
    tls = config.tls
    return dict(
        bin_um=grid.fine_um, sigma_um=tls.sigma_um, min_b_fraction=tls.min_b_fraction,
        min_b_plateau=tls.min_b_plateau, edge_fraction=tls.edge_fraction,
        min_area_um2=tls.min_area_um2 if min_area_um2 is None else min_area_um2,
        max_debris_fraction=tls.max_debris_fraction, t_zone_width_um=tls.t_zone_width_um,
        grow_um=tls.grow_um, contrast_band_um=tuple(tls.contrast_band_um),
        min_t_fraction=tls.min_t_fraction if tls.require_t_cell_zone else 0.0,
        min_nuclear_fraction=tls.min_nuclear_fraction, min_contrast=tls.min_contrast,
        min_relative_density=tls.min_relative_density,
    )


def tls_candidates(density: np.ndarray, config: Config, grid: Grid) -> Candidates:
    """:func:`tlsquant.segment.aggregates.aggregate_candidates` of a smoothed B-cell occupancy, as :func:`find_tls` finds them."""
    tls = config.tls
    return aggregate_candidates(density, bin_um=grid.fine_um, sigma_um=tls.sigma_um, min_b_fraction=tls.min_b_fraction,
                                min_b_plateau=tls.min_b_plateau, edge_fraction=tls.edge_fraction,
                                t_zone_width_um=tls.t_zone_width_um, grow_um=tls.grow_um,
                                contrast_band_um=tuple(tls.contrast_band_um))


def tls_seeds(density: np.ndarray, config: Config, grid: Grid) -> Seeds:
    """:func:`tlsquant.segment.aggregates.half_level_seeds` of a smoothed B-cell occupancy, with :func:`find_tls`'s settings."""
    tls = config.tls
    return half_level_seeds(density, seed=tls.min_b_fraction, min_plateau=tls.min_b_plateau,
                            edge_fraction=tls.edge_fraction, reach=growth_reach(tls.sigma_um, tls.grow_um, grid.fine_um))


def find_tls(evidence: EvidenceMaps, config: Config, grid: Grid, drawn=None, *, has_t_cells: bool,
             min_area_um2: float | None = None, debris: np.ndarray | None = None,
             b_fraction: np.ndarray | None = None, density: np.ndarray | None = None,
             num_workers: int | None = None) -> FoundTLS:
    """Dense B-cell aggregates, artefacts excluded; ``min_area_um2`` replaces ``tls.min_area_um2``.

    ``debris`` and ``b_fraction`` (:func:`artefact_zone`, :func:`b_occupancy`) may be
    given when already computed from the same maps, and ``density``, ``b_fraction``
    smoothed by ``tls.sigma_um``; ``drawn`` regions (exclusions, a region of interest) clip the labels.
    ``num_workers`` threads smooth the density (default: the machine's cores).
    """
    if debris is None:
        debris = artefact_zone(evidence, config, grid)
    if b_fraction is None:
        b_fraction = b_occupancy(evidence, debris)
    tls = config.tls
    # read box by box: whole float maps of a 40k x 30k slide cost ~0.3 GB each
    t_fraction = FractionMap(evidence, "fine", "t_cells") if has_t_cells and tls.require_t_cell_zone else None
    labels, info = detect_aggregates(
        b_fraction, **aggregate_options(config, grid, min_area_um2=min_area_um2),
        debris=debris, t_fraction=t_fraction, nuclei_fraction=FractionMap(evidence, "fine", "nuclei"),
        rejected=(rejected := []), density=density, threads=num_workers or os.cpu_count() or 1,
    )
    if drawn is not None:
        labels = drawn.apply_fine(labels)
    return FoundTLS(debris, labels, info, rejected)
