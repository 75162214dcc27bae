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


def footprint_dilation(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``ndi.binary_dilation(mask, structure=footprint)`` for a footprint whose rows are each one centred
    run (a disc, an ellipse, a square), as one running maximum per run length and a shifted OR per row.

    A whole-slide fine map (70 M bins at 40k x 30k px) dilated by a disc of radius 2 takes
    ~0.9 s in scipy, which visits every tap at every bin; here it is a few passes.
    """
    height, width = footprint.shape
    cy, cx = height // 2, width // 2
    runs = {}  # row offset -> half length of its run
    for dy in range(-cy, height - cy):
        row = np.flatnonzero(footprint[dy + cy])
        if row.size == 0:
            continue
        half = int(cx - row[0])
        if row.size != 2 * half + 1 or row[-1] != cx + half:
            raise ValueError(f"footprint row {dy + cy} is not one run centred on column {cx}")
        runs[dy] = half
    mask = np.ascontiguousarray(mask, dtype=bool)
    widened = {half: _widened(mask, half) for half in set(runs.values())}
    out = np.zeros(mask.shape, bool)
    rows = mask.shape[0]
    for dy, half in runs.items():  # out[y] |= widened[y - dy]: the run of row dy reaches dy rows down
        source = widened[half]
        if abs(dy) >= rows:
            continue
        if dy >= 0:
            out[dy:] |= source[: rows - dy] if dy else source
        else:
            out[: rows + dy] |= source[-dy:]
    return out


def _widened(mask: np.ndarray, half: int) -> np.ndarray:
    """Each row's True runs grown by ``half`` columns both ways (shifted ORs; a running maximum when long)."""
    if half == 0:
        return mask
    if half > 8:
        return ndi.maximum_filter1d(mask.view(np.uint8), 2 * half + 1, axis=1, mode="constant").view(bool)
    out = mask.copy()
    for shift in range(1, min(half, mask.shape[1] - 1) + 1):
        out[:, shift:] |= mask[:, :-shift]
        out[:, :-shift] |= mask[:, shift:]
    return out


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


def fill_holes(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """``ndi.binary_fill_holes(mask, structure)``: the background pieces (connected by ``structure``,
    default the cross) that do not touch the array's edge, added to ``mask``.

    Labels the background once instead of scipy's repeated dilation from the edge, which
    costs milliseconds on a candidate's box.
    """
    background, count = ndi.label(~mask, structure=structure)
    if count == 0:
        return mask.copy()
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(count + 1, bool)
    outside[edge] = True
    outside[0] = True  # the mask itself
    return ~outside[background] | mask


SMOOTH_TRUNCATE = 4.0  # the Gaussian kernel's half-width in sigmas (scipy's default)


def smooth(fraction: np.ndarray, *, sigma_um: float, bin_um: float) -> np.ndarray:
    """Gaussian smoothing in µm; ``mode='constant'`` so the slide edge reads as empty."""
    sigma = bins(sigma_um, bin_um)
    if sigma <= 0:
        return fraction.astype(np.float32)
    return ndi.gaussian_filter(fraction, sigma, mode="constant", output=np.float32, truncate=SMOOTH_TRUNCATE)


def smooth_reach(*, sigma_um: float, bin_um: float) -> int:
    """Bins from a cell beyond which :func:`smooth` does not read: its kernel's radius.

    The filter runs axis by axis and each output is a sum over the kernel's taps alone,
    so smoothing a box of the map padded by this many bins (or up to the slide edge)
    gives bit for bit the whole map's values inside the box.
    """
    sigma = bins(sigma_um, bin_um)
    return int(SMOOTH_TRUNCATE * sigma + 0.5) if sigma > 0 else 0  # scipy's gaussian_filter1d radius


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


def tissue_outline(nuclei_fraction: np.ndarray, *, bin_um: float, sigma_um: float, min_fraction: float,
                   edge_fraction: float = Tissue.edge_fraction) -> tuple[np.ndarray, dict]:
    """Tissue before holes are filled and specks dropped: the smoothed nuclei above ``edge_fraction`` of their level."""
    smoothed = smooth(nuclei_fraction, sigma_um=sigma_um, bin_um=bin_um)
    mask, threshold, level = half_level_mask(smoothed, floor=min_fraction, edge_fraction=edge_fraction)
    return mask, {"nuclei_fraction_threshold": threshold, "nuclei_fraction_level": level}


def filled_tissue(outline: np.ndarray, *, bin_um: float, min_area_mm2: float) -> np.ndarray:
    """Tissue from its :func:`tissue_outline`: holes filled, specks under ``min_area_mm2`` dropped."""
    return remove_small(fill_holes(outline), min_area_um2=min_area_mm2 * 1e6, bin_um=bin_um)


def tissue_mask(nuclei_fraction: np.ndarray, *, bin_um: float, sigma_um: float, min_fraction: float,
                min_area_mm2: float, edge_fraction: float = Tissue.edge_fraction) -> tuple[np.ndarray, dict]:
    """Tissue: where nuclei are, smoothed, edged at ``edge_fraction`` of the typical level, holes filled, specks dropped."""
    outline, info = tissue_outline(nuclei_fraction, bin_um=bin_um, sigma_um=sigma_um, min_fraction=min_fraction,
                                   edge_fraction=edge_fraction)
    return filled_tissue(outline, bin_um=bin_um, min_area_mm2=min_area_mm2), info


def tumour_outline(tumour_fraction: np.ndarray, *, bin_um: float, sigma_um: float, edge_fraction: float,
                   min_positive_fraction: float) -> tuple[np.ndarray, dict]:
    """The tumour bed before closing: the smoothed tumour-nuclei density above ``edge_fraction`` of its level."""
    smoothed = smooth(tumour_fraction, sigma_um=sigma_um, bin_um=bin_um)
    mask, threshold, level = half_level_mask(smoothed, floor=min_positive_fraction, edge_fraction=edge_fraction)
    return mask, {"tumour_fraction_threshold": threshold, "tumour_fraction_level": level}


def closed_tumour(outline: np.ndarray, *, bin_um: float, closing_um: float) -> np.ndarray:
    """A :func:`tumour_outline` closed by ``closing_um`` and its holes filled."""
    mask = outline
    if closing_um > 0 and mask.any():
        radius = int(round(bins(closing_um, bin_um)))
        padded = np.pad(mask, radius)  # closing must not glue the bed to the slide edge
        mask = disk_closing(padded, radius)[radius:-radius or None, radius:-radius or None]
    return fill_holes(mask)


def kept_tumour(closed: np.ndarray, *, bin_um: float, min_area_mm2: float, tissue: np.ndarray | None = None) -> np.ndarray:
    """The tumour bed from a :func:`closed_tumour`: kept to ``tissue``, specks under ``min_area_mm2`` dropped."""
    mask = closed & tissue if tissue is not None else closed
    return remove_small(mask, min_area_um2=min_area_mm2 * 1e6, bin_um=bin_um)


def tumour_mask(tumour_fraction: np.ndarray, *, bin_um: float, sigma_um: float, edge_fraction: float,
                min_positive_fraction: float, closing_um: float, min_area_mm2: float,
                tissue: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The tumour bed from a nuclear tumour marker.

    Tumour nuclei are separate dots: smoothing turns them into a density, the half-level
    threshold finds the bed's edge, closing bridges narrow stromal gaps, and filling holes
    includes the TLS, vessels and stroma the tumour encloses.
    """
    outline, info = tumour_outline(tumour_fraction, bin_um=bin_um, sigma_um=sigma_um, edge_fraction=edge_fraction,
                                   min_positive_fraction=min_positive_fraction)
    closed = closed_tumour(outline, bin_um=bin_um, closing_um=closing_um)
    return kept_tumour(closed, bin_um=bin_um, min_area_mm2=min_area_mm2, tissue=tissue), info
