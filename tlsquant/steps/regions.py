"""Step 5: tissue, tumour bed and peritumoral margin on the coarse grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..measure import signed_tumour_distance
from ..segment.evidence import EvidenceMaps
from ..segment.regions import tissue_mask, tumour_mask
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


def tissue_and_tumour(evidence: EvidenceMaps, config: Config, grid: Grid, drawn=None) -> TumourBed:
    """Tissue and tumour bed from the coarse evidence maps, ``drawn`` regions applied
    (:class:`tlsquant.annotations.RegionMasks`: a drawn tumour bed, exclusions, a region of interest)."""
    tissue, tissue_info = tissue_mask(
        evidence.fraction("coarse", "nuclei"), bin_um=grid.coarse_um, sigma_um=config.tissue.sigma_um,
        min_fraction=config.tissue.min_fraction, min_area_mm2=config.tissue.min_area_mm2,
        edge_fraction=config.tissue.edge_fraction,
    )
    tumour, tumour_info = tumour_mask(
        evidence.fraction("coarse", "tumour"), bin_um=grid.coarse_um, sigma_um=config.tumour.sigma_um,
        edge_fraction=config.tumour.edge_fraction, min_positive_fraction=config.tumour.min_positive_fraction,
        closing_um=config.tumour.closing_um, min_area_mm2=config.tumour.min_area_mm2, tissue=tissue,
    )
    coarse_pixels = evidence.pixels("coarse")
    pixel_area_um2 = grid.pixel_area_um2
    if drawn is not None:
        tissue, tumour = drawn.apply_coarse(tissue, tumour, pixel_area_um2=pixel_area_um2, coarse_pixels=coarse_pixels)

    def area_mm2(mask):
        return 0.0 if mask is None else float(coarse_pixels[mask].sum(dtype=np.float64) * pixel_area_um2 / 1e6)

    distance = signed_tumour_distance(tumour, bin_um=grid.coarse_bin)
    # the peritumoral band on tissue: where cells per mm² around the tumour are counted
    margin = None if distance is None else (distance > 0) & (distance <= config.location.margin_um) & tissue
    return TumourBed(tissue, tumour, tissue_info, tumour_info, area_mm2(tissue), area_mm2(tumour), distance, margin,
                     area_mm2(margin))


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
