"""Tissue and tumour-bed masks from coarse positive-fraction maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology

from ..config import Tissue


def cells(length_um: float, cell_um: float) -> float:
    """A length in µm as a (fractional) number of grid cells: the one unit conversion."""
    return length_um / cell_um


def disk(radius_um: float, cell_um: float) -> np.ndarray:
    radius = max(0, int(round(cells(radius_um, cell_um))))
    return morphology.disk(radius)


def smooth(fraction: np.ndarray, *, sigma_um: float, cell_um: float) -> np.ndarray:
    """Gaussian smoothing in µm; ``mode='constant'`` so the slide edge reads as empty."""
    sigma = cells(sigma_um, cell_um)
    if sigma <= 0:
        return fraction.astype(np.float32)
    return ndi.gaussian_filter(fraction, sigma, mode="constant", output=np.float32)


def half_level_mask(smoothed: np.ndarray, *, floor: float, level_fraction: float):
    """Cells above a fraction of the typical level inside the structure.

    The level is the median of the smoothed map where it exceeds ``floor``; thresholding
    a smoothed step at half its height puts the edge where the unsmoothed edge was.
    Returns (mask, threshold used, level).
    """
    above = smoothed > floor
    if not above.any():
        return above, float(floor), 0.0
    level = float(np.median(smoothed[above]))
    threshold = max(float(floor), level_fraction * level)
    return smoothed > threshold, threshold, level


def remove_small(mask: np.ndarray, *, min_area_um2: float, cell_um: float) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes * cell_um * cell_um >= min_area_um2
    keep[0] = False
    return keep[labels]


def tissue_mask(nuclei_fraction: np.ndarray, *, cell_um: float, sigma_um: float, min_fraction: float,
                min_area_mm2: float, level_fraction: float = Tissue.level_fraction) -> tuple[np.ndarray, dict]:
    """Tissue: where nuclei are, smoothed, edged at ``level_fraction`` of the typical level, holes filled, specks dropped."""
    smoothed = smooth(nuclei_fraction, sigma_um=sigma_um, cell_um=cell_um)
    mask, threshold, level = half_level_mask(smoothed, floor=min_fraction, level_fraction=level_fraction)
    mask = ndi.binary_fill_holes(mask)
    mask = remove_small(mask, min_area_um2=min_area_mm2 * 1e6, cell_um=cell_um)
    return mask, {"nuclei_fraction_threshold": threshold, "nuclei_fraction_level": level}


def tumour_mask(tumour_fraction: np.ndarray, *, cell_um: float, sigma_um: float, level_fraction: float,
                min_positive_fraction: float, closing_um: float, min_area_mm2: float,
                tissue: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The tumour bed from a nuclear tumour marker.

    Tumour nuclei are separate dots: smoothing turns them into a density, the half-level
    threshold finds the bed's edge, closing bridges narrow stromal gaps, and filling holes
    includes the TLS, vessels and stroma the tumour encloses.
    """
    smoothed = smooth(tumour_fraction, sigma_um=sigma_um, cell_um=cell_um)
    mask, threshold, level = half_level_mask(smoothed, floor=min_positive_fraction, level_fraction=level_fraction)
    if closing_um > 0 and mask.any():
        radius = int(round(cells(closing_um, cell_um)))
        padded = np.pad(mask, radius)  # closing must not glue the bed to the slide edge
        mask = ndi.binary_closing(padded, structure=disk(closing_um, cell_um))[radius:-radius or None, radius:-radius or None]
    mask = ndi.binary_fill_holes(mask)
    if tissue is not None:
        mask &= tissue
    mask = remove_small(mask, min_area_um2=min_area_mm2 * 1e6, cell_um=cell_um)
    return mask, {"tumour_fraction_threshold": threshold, "tumour_fraction_level": level}
