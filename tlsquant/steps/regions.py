"""Step 5: tissue, tumour bed and peritumoral margin on the coarse grid."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..measure import signed_tumour_distance
from ..segment.evidence import EvidenceMaps
from ..segment.regions import closed_tumour, filled_tissue, kept_tumour, tissue_outline, tumour_outline
from .channels import ChannelPlan
from .grid import Grid


@dataclass
class TumourBed:
    """Tissue and tumour bed on the coarse grid, their areas, and the distance to the tumour border."""

    tissue: np.ndarray
    tumour: np.ndarray
    tissue_info: dict
    tumour_info: dict
    tissue_area_mm2: float
    tumour_area_mm2: float
    distance: np.ndarray | None  # µm to the tumour border, negative inside; None without tumour
    margin: np.ndarray | None  # the peritumoral band on tissue
    margin_area_mm2: float


@dataclass
class RegionOutlines:
    """Tissue and tumour half-level masks before holes are filled (coarse grid): the tumour bed is a function
    of these two, the coarse bins' pixels and the drawn regions alone."""

    tissue: np.ndarray
    tissue_info: dict
    tumour: np.ndarray
    tumour_info: dict
    tumour_closed: np.ndarray | None = None  # the tumour outline closed, holes filled (None: not computed yet)


def region_outlines(evidence: EvidenceMaps, config: Config, grid: Grid, *, closed: bool = False) -> RegionOutlines:
    """:func:`tissue_outline` and :func:`tumour_outline` of the coarse evidence maps; with ``closed``, also
    the tumour outline's :func:`closed_tumour`."""
    tissue, tissue_info = tissue_outline(
        evidence.fraction("coarse", "nuclei"), bin_um=grid.coarse_um, sigma_um=config.tissue.sigma_um,
        min_fraction=config.tissue.min_fraction, edge_fraction=config.tissue.edge_fraction,
    )
    tumour, tumour_info = tumour_outline(
        evidence.fraction("coarse", "tumour"), bin_um=grid.coarse_um, sigma_um=config.tumour.sigma_um,
        edge_fraction=config.tumour.edge_fraction, min_positive_fraction=config.tumour.min_positive_fraction,
    )
    tumour_closed = closed_tumour(tumour, bin_um=grid.coarse_um, closing_um=config.tumour.closing_um) if closed else None
    return RegionOutlines(tissue, tissue_info, tumour, tumour_info, tumour_closed)


def tissue_and_tumour(evidence: EvidenceMaps, config: Config, grid: Grid, drawn=None, *,
                      outlines: RegionOutlines | None = None,
                      like: tuple[RegionOutlines, TumourBed] | None = None) -> TumourBed:
    """Tissue and tumour bed from the coarse evidence maps, ``drawn`` regions applied
    (:class:`tlsquant.annotations.RegionMasks`: a drawn tumour bed, exclusions, a region of interest).

    ``outlines`` (:func:`region_outlines` of ``evidence``) may be given when already
    computed. ``like`` is another analysis's outlines and bed on the same grid with the
    same drawn regions: each step whose inputs equal its takes its result.
    """
    outlines = outlines or region_outlines(evidence, config, grid)
    other, like_bed = like if like is not None else (None, None)
    same_tissue = other is not None and np.array_equal(outlines.tissue, other.tissue)
    same_tumour = other is not None and np.array_equal(outlines.tumour, other.tumour)
    if same_tissue and same_tumour:
        return dataclasses.replace(like_bed, tissue_info=outlines.tissue_info, tumour_info=outlines.tumour_info)
    coarse_pixels = evidence.pixels("coarse")
    pixel_area_um2 = grid.pixel_area_um2

    def area_mm2(mask):
        return 0.0 if mask is None else float(coarse_pixels[mask].sum(dtype=np.float64) * pixel_area_um2 / 1e6)

    # drawn regions act on the tissue before the tumour is kept to it: the other's drawn tissue will not do
    if same_tissue and drawn is None:
        tissue = like_bed.tissue
    else:
        tissue = filled_tissue(outlines.tissue, bin_um=grid.coarse_um, min_area_mm2=config.tissue.min_area_mm2)
    if outlines.tumour_closed is not None:
        closed = outlines.tumour_closed
    elif same_tumour and other.tumour_closed is not None:
        closed = other.tumour_closed
    else:
        closed = closed_tumour(outlines.tumour, bin_um=grid.coarse_um, closing_um=config.tumour.closing_um)
    tumour = kept_tumour(closed, bin_um=grid.coarse_um, min_area_mm2=config.tumour.min_area_mm2, tissue=tissue)
    if drawn is not None:
        tissue, tumour = drawn.apply_coarse(tissue, tumour, pixel_area_um2=pixel_area_um2, coarse_pixels=coarse_pixels)
    if like_bed is not None and np.array_equal(tumour, like_bed.tumour):
        distance = like_bed.distance
    else:
        distance = signed_tumour_distance(tumour, bin_um=grid.coarse_bin)
    # the peritumoral band on tissue: where cells per mm² around the tumour are counted
    margin = None if distance is None else (distance > 0) & (distance <= config.location.margin_um) & tissue
    return TumourBed(tissue, tumour, outlines.tissue_info, outlines.tumour_info, area_mm2(tissue), area_mm2(tumour),
                     distance, margin, area_mm2(margin))


def region_warnings(bed: TumourBed, plan: ChannelPlan, thresholds: dict[str, dict], drawn=None) -> list[str]:
    """What a reader must know about the regions: drawn-annotation repairs, no tissue, no tumour."""
    warnings = [note for note in drawn.notes if note.startswith("warning")] if drawn is not None else []
    if bed.tissue_area_mm2 == 0:
        warnings.append(f"no tissue found from channel {plan.roles['nuclei']!r} (threshold "
                        f"{thresholds['nuclei']['value']:.4g}): check the channel roles and thresholds.nuclei; "
                        "see thresholds.png")
    if bed.tumour_area_mm2 == 0:
        warnings.append(f"no tumour found in channel {plan.roles['tumour']!r}: density and area % are undefined")
    return warnings
