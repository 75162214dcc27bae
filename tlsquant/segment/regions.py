"""Tissue and tumour-bed masks from coarse positive-fraction maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology

from ..config import Tissue


def bins(length_um: float, bin_um: float) -> float:
    """A length in µm as a (fractional) number of grid bins: the one unit conversion."""
    return length_um / bin_um


def disk(radius_um: float, bin_um: float) -> np.ndarray:
    radius = max(0, int(round(bins(radius_um, bin_um))))
    return morphology.disk(radius)


def disk_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing by :func:`disk` of ``radius`` bins, from two Euclidean distance transforms.

    A disc of radius r holds exactly the offsets within r, so the dilation is the bins
    within r of the mask and the erosion the bins farther than r from what the dilation
    left out: the same bins as ``ndi.binary_closing`` inside a border of ``radius`` (pad
    the mask by it), at a fraction of a large disc's cost.
    """
    if radius <= 0:
        return mask.copy()
    grown = ndi.distance_transform_edt(~mask) <= radius
    if grown.all():
        return grown
    return ndi.distance_transform_edt(grown) > radius


def smooth(fraction: np.ndarray, *, sigma_um: float, bin_um: float) -> np.ndarray:
    """Gaussian smoothing in µm; ``mode='constant'`` so the slide edge reads as empty."""
    sigma = bins(sigma_um, bin_um)
    if sigma <= 0:
        return fraction.astype(np.float32)
    return ndi.gaussian_filter(fraction, sigma, mode="constant", output=np.float32)


def half_level_mask(smoothed: np.ndarray, *, floor: float, edge_fraction: float):
    """Cells above a fraction of the typical level inside the structure.

    The level is the median of the smoothed map where it exceeds ``floor``; thresholding
    a smoothed step at half its height puts the edge where the unsmoothed edge was.
    Returns (mask, threshold used, level).
    """
    above = smoothed > floor
    if not above.any():
        return above, float(floor), 0.0
    level = float(np.median(smoothed[above]))
    threshold = max(float(floor), edge_fraction * level)
    return smoothed > threshold, threshold, level


def remove_small(mask: np.ndarray, *, min_area_um2: float, bin_um: float) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes * bin_um * bin_um >= min_area_um2
    keep[0] = False
    return keep[labels]


def tissue_mask(nuclei_fraction: np.ndarray, *, bin_um: float, sigma_um: float, min_fraction: float,
                min_area_mm2: float, edge_fraction: float = Tissue.edge_fraction) -> tuple[np.ndarray, dict]:
    """Tissue: where nuclei are, smoothed, edged at ``edge_fraction`` of the typical level, holes filled, specks dropped."""
    smoothed = smooth(nuclei_fraction, sigma_um=sigma_um, bin_um=bin_um)
    mask, threshold, level = half_level_mask(smoothed, floor=min_fraction, edge_fraction=edge_fraction)
    mask = ndi.binary_fill_holes(mask)
    mask = remove_small(mask, min_area_um2=min_area_mm2 * 1e6, bin_um=bin_um)
    return mask, {"nuclei_fraction_threshold": threshold, "nuclei_fraction_level": level}


def tumour_mask(tumour_fraction: np.ndarray, *, bin_um: float, sigma_um: float, edge_fraction: float,
                min_positive_fraction: float, closing_um: float, min_area_mm2: float,
                tissue: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The tumour bed from a nuclear tumour marker.

    Tumour nuclei are separate dots: smoothing turns them into a density, the half-level
    threshold finds the bed's edge, closing bridges narrow stromal gaps, and filling holes
    includes the TLS, vessels and stroma the tumour encloses.
    """
    smoothed = smooth(tumour_fraction, sigma_um=sigma_um, bin_um=bin_um)
    mask, threshold, level = half_level_mask(smoothed, floor=min_positive_fraction, edge_fraction=edge_fraction)
    if closing_um > 0 and mask.any():
        radius = int(round(bins(closing_um, bin_um)))
        padded = np.pad(mask, radius)  # closing must not glue the bed to the slide edge
        mask = disk_closing(padded, radius)[radius:-radius or None, radius:-radius or None]
    mask = ndi.binary_fill_holes(mask)
    if tissue is not None:
        mask &= tissue
    mask = remove_small(mask, min_area_um2=min_area_mm2 * 1e6, bin_um=bin_um)
    return mask, {"tumour_fraction_threshold": threshold, "tumour_fraction_level": level}
