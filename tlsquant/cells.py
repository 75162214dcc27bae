"""Nuclei from the nuclear stain and per-cell marker intensities, tile by tile.

Pure array functions (:func:`segment_nuclei`, :func:`cell_bodies`, :func:`cells_block`)
plus the block pass (:func:`compute_cells`) that runs them over a whole slide. Each
block is read with a halo of ``halo_px`` on every side that is not a slide edge, and
keeps only the cells whose centroid lies in its core: every cell is counted once,
by exactly one block. With a halo wider than any nucleus and its ring, a cell is
segmented and measured from the same pixels whatever the chunking, so the cell
table is identical for any chunk size or worker count.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

import dask
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from . import cell_kernels
from .blocks import NotTaskSpec, block_grid, block_range, compute_blocks, run_task
from .cell_kernels import cell_sums_loops as _cell_sums_loops
from .cell_kernels import claim_loops as _claim_loops
from .cell_kernels import grow_rings_loops as _grow_rings_loops
from .cell_kernels import local_maxima_loops as _local_maxima_loops
from .cell_kernels import no_saddle_loops as _no_saddle_loops
from .compiled import compiled as _compiled
from .compiled import one_integer_type, padded
from .config import Cells


def _px(um: float, pixel_size_um: tuple[float, float]) -> tuple[float, float]:
    return um / pixel_size_um[0], um / pixel_size_um[1]


def _ellipse(radius_px: tuple[float, float]) -> np.ndarray:
    ry, rx = (max(1, int(np.floor(r))) for r in radius_px)
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return (y / max(radius_px[0], 1e-9)) ** 2 + (x / max(radius_px[1], 1e-9)) ** 2 <= 1.0


def distance_to_background(mask: np.ndarray, pixel_size_um) -> np.ndarray:
    """Euclidean distance (µm, float32) of each ``mask`` pixel to the nearest pixel outside it.

    scipy's ``distance_transform_edt(mask, sampling=pixel_size_um)`` as float32, exactly
    (inf where the mask has no outside pixel). Compiled, a search over the few columns
    around each pixel (see :func:`cell_kernels.distance_loops`), about 5x less CPU than the
    ``edt`` package, whose float32 arithmetic also differs from scipy's by a unit in the
    last place at pixel sizes such as 0.325 µm.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    compiled = _compiled(cell_kernels.distance_loops)
    if compiled is not None:
        return compiled(mask, float(pixel_size_um[0]), float(pixel_size_um[1]), DISTANCE_SEARCH_PX)
    if mask.all():
        return np.full(mask.shape, np.inf, np.float32)
    return ndi.distance_transform_edt(mask, sampling=pixel_size_um).astype(np.float32)


DISTANCE_SEARCH_PX = 32  # columns searched each side of a pixel before its row takes the linear-time envelope


def _footprint_filter(reduce, image: np.ndarray, footprint: np.ndarray, *, mode: str, cval: float = 0.0) -> np.ndarray:
    """Maximum (``np.maximum``) or minimum (``np.minimum``) over a convex, centred footprint, exactly.

    The footprint (an ellipse from :func:`_ellipse`) is the union of one centred rectangle
    per row offset, and the extreme over a union is the extreme of the extremes over its
    parts; each rectangle filter is two 1-D passes. Same values as
    ``ndi.maximum_filter(image, footprint=footprint)``, several times faster.
    """
    one_d = ndi.maximum_filter1d if reduce is np.maximum else ndi.minimum_filter1d
    ry, rx = footprint.shape[0] // 2, footprint.shape[1] // 2
    half_widths = {}
    for dy in range(ry + 1):  # rows are symmetric: the half-width at offset dy and -dy agree
        row = np.flatnonzero(footprint[ry + dy])
        if row.size:
            half_widths.setdefault(int(rx - row[0]), dy)  # the tallest rectangle of each width
            half_widths[int(rx - row[0])] = max(half_widths[int(rx - row[0])], dy)
    out = None
    for half_width, half_height in half_widths.items():
        part = one_d(image, 2 * half_height + 1, axis=0, mode=mode, cval=cval)
        part = one_d(part, 2 * half_width + 1, axis=1, mode=mode, cval=cval)
        out = part if out is None else reduce(out, part, out=out)
    return out


def segment_nuclei(
    nuclear_stain: np.ndarray,
    *,
    pixel_size_um: tuple[float, float],
    threshold,
    sigma_um: float = Cells.sigma_um,
    min_distance_um: float = Cells.min_distance_um,
    min_area_um2: float = Cells.min_area_um2,
    max_area_um2: float = Cells.max_area_um2,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Label nuclei: smooth, global threshold, split touching nuclei at distance-map necks.

    Centres are maxima of the distance to the background at least ``min_distance_um``
    apart; a thin maximum (on the ridge of a spindle-shaped nucleus or the rim of a pale
    one) counts only if a saddle separates it from every higher maximum nearby (see
    :func:`_separate_maxima`). Each foreground pixel goes to the centre whose inscribed
    disc it is nearest to. Foreground thicker than a round nucleus of ``max_area_um2``
    (nuclei merged by blur, folds or crowding) is split at the maxima of the smoothed stain
    that stand out from their surround; flat bright debris has none. Every step looks no further than about one
    nucleus, so a window holding a nucleus with a margin labels it as the whole image would.

    Parameters
    ----------
    nuclear_stain : (Y, X) array
        DAPI (or another nuclear counterstain) intensities.
    pixel_size_um : (y, x)
        Pixel size in µm/px.
    threshold : float, (Y, X) array or ThresholdGrid
        The slide's nuclear threshold, in the image's intensity units: global, per pixel, or
        per cell of a coarse threshold map.
    sigma_um : float
        Gaussian smoothing before thresholding (0: none).
    min_distance_um : float
        Two nuclear centres closer than this are not split.
    min_area_um2, max_area_um2 : float
        Objects outside this area range are not nuclei (noise specks, debris, clumps).
    origin : (int, int)
        Level-0 position of ``nuclear_stain[0, 0]`` when it is a window of a slide.

    Returns
    -------
    labels : (Y, X) int32
        0 background, 1..n nuclei in raster order of their centres.
    """
    image, foreground = _smooth_and_threshold(nuclear_stain, threshold, sigma_um=sigma_um, pixel_size_um=pixel_size_um)
    if not foreground.any():
        return np.zeros(image.shape, np.int32)
    distance = distance_to_background(foreground, pixel_size_um)
    # no flooding watershed below: its outcome can hinge on pixels far away, which would make
    # a nucleus depend on the window it was cut from.
    max_radius_um = float(np.sqrt(max_area_um2 / np.pi))
    # Foreground thicker than the largest accepted nucleus is a clump: nuclei merged by blur,
    # a fold or crowding. The distance map has no necks there, so clumps are split at the
    # maxima of the smoothed stain instead (each nucleus is brightest at its middle).
    thick = distance >= max_radius_um
    clump = _clump_zone(thick, foreground, pixel_size_um=pixel_size_um, reach_um=max_radius_um)
    # centres: maxima of the distance to the background over a min_distance neighbourhood;
    # touching nuclei meet at a neck, where the distance dips between two maxima
    peaks = _local_maxima(distance, foreground, _px(min_distance_um, pixel_size_um))
    if clump is not None:
        peaks &= ~clump
    peaks = _separate_maxima(peaks, distance, pixel_size_um=pixel_size_um)
    if clump is not None:
        peaks |= _clump_centres(image, clump, threshold, pixel_size_um=pixel_size_um, min_distance_um=min_distance_um)
    centres = _plateau_centres(peaks)
    radius = distance.ravel()[centres]
    if clump is not None:
        radius[clump.ravel()[centres]] = 0  # clump centres split their zone evenly
    del image, thick, clump, distance, peaks  # not needed by the claim below, the step that needs the most memory
    labels = _claim_pixels(centres, radius, foreground, pixel_size_um=pixel_size_um, reach_um=max_radius_um,
                           origin=origin)
    return _drop_by_area(labels, pixel_size_um=pixel_size_um, min_area_um2=min_area_um2, max_area_um2=max_area_um2)


@dataclass(frozen=True)
class ThresholdGrid:
    """A threshold per cell of ``factor`` x ``factor`` px, for an image whose pixel (0, 0) is pixel
    (``y0``, ``x0``) of the grid's cell [0, 0] block (a window of a slide and its threshold map)."""

    values: np.ndarray  # (rows, cols)
    factor: int
    y0: int = 0
    x0: int = 0

    def cells(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Grid row of each image row, grid column of each image column."""
        return ((np.arange(shape[0], dtype=np.int64) + self.y0) // self.factor,
                (np.arange(shape[1], dtype=np.int64) + self.x0) // self.factor)

    def pixels(self, shape: tuple[int, int], box=(slice(None), slice(None))) -> np.ndarray:
        """The threshold of each pixel of ``box`` of an image of ``shape`` (the grid's dtype)."""
        rows, cols = self.cells(shape)
        return self.values[np.ix_(rows[box[0]], cols[box[1]])]


def _smooth_and_threshold(nuclear_stain: np.ndarray, threshold, *, sigma_um: float, pixel_size_um):
    """The stain as float32 smoothed by ``sigma_um``, and where it exceeds ``threshold``.

    ``threshold``: a number, one value per pixel, or a :class:`ThresholdGrid`. Compiled,
    one pass per axis gives the same float32 values as ``ndi.gaussian_filter(..., truncate=3)``
    and the comparison runs in the dtype numpy would compare in.
    """
    compiled = _compiled(cell_kernels.smooth_threshold_loops)
    stain = np.ascontiguousarray(one_integer_type(nuclear_stain))  # a window of a band: one copy lets the compiler vectorise
    if compiled is None or stain.ndim != 2 or not (np.issubdtype(stain.dtype, np.integer)
                                                   or np.issubdtype(stain.dtype, np.floating)):
        image = np.asarray(stain, dtype=np.float32)
        if sigma_um > 0:
            image = ndi.gaussian_filter(image, _px(sigma_um, pixel_size_um), truncate=3.0)
        if isinstance(threshold, ThresholdGrid):
            threshold = threshold.pixels(image.shape)
        return image, image > threshold
    if isinstance(threshold, ThresholdGrid):
        values, (rows, cols) = threshold.values, threshold.cells(stain.shape)
    elif np.ndim(threshold) == 0:
        values = np.full((1, 1), threshold, dtype=np.result_type(np.float32, threshold))
        rows, cols = np.zeros(stain.shape[0], np.int64), np.zeros(stain.shape[1], np.int64)
    else:
        values = np.broadcast_to(np.asarray(threshold), stain.shape)
        rows, cols = np.arange(stain.shape[0]), np.arange(stain.shape[1])
    # one compiled signature for every input: the loop reads each pixel as float32 anyway, and a float32
    # threshold compares with a float32 value exactly as its float64 copy does
    if stain.dtype == np.float64:
        stain = stain.astype(np.float32)
    values = np.require(values, np.float64, "CW")
    weights = [_gaussian_weights(s) if sigma_um > 0 else np.ones(1) for s in _px(sigma_um, pixel_size_um)]
    return compiled(stain, weights[0], weights[1], values, rows, cols)


def _gaussian_weights(sigma_px: float, truncate: float = 3.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's correlation weights along one axis (the same float64 values)."""
    radius = int(truncate * float(sigma_px) + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma_px * sigma_px) * x**2)
    return (weights / weights.sum())[::-1].copy()


def _drop_by_area(labels: np.ndarray, *, pixel_size_um, min_area_um2: float, max_area_um2: float) -> np.ndarray:
    """``labels`` without the objects outside the area range, renumbered 1..n in their order (``labels`` is reused)."""
    n = int(labels.max()) if labels.size else 0
    areas_of = _compiled(cell_kernels.label_areas_loops)
    areas = areas_of(labels, n) if areas_of is not None else np.bincount(labels.ravel(), minlength=n + 1)
    pixel_area = pixel_size_um[0] * pixel_size_um[1]
    bad = (areas * pixel_area < min_area_um2) | (areas * pixel_area > max_area_um2)
    bad[0] = True
    keep = np.cumsum(~bad).astype(np.int32)
    keep[bad] = 0
    relabel = _compiled(cell_kernels.relabel_loops)
    return relabel(labels, keep) if relabel is not None else keep[labels]


def _local_maxima(distance: np.ndarray, foreground: np.ndarray, radius_px: tuple[float, float]) -> np.ndarray:
    """Foreground pixels no lower than any pixel of the ellipse of ``radius_px`` around them, none of it off the image.

    The same pixels as ``distance == maximum_filter(distance, footprint=ellipse, mode='constant',
    cval=inf) & foreground``. Compiled, each foreground pixel stops at the first higher
    neighbour (neighbours nearest first), which on a distance map is almost always an adjacent one.
    """
    compiled = _compiled(_local_maxima_loops)
    if compiled is None:
        footprint = _ellipse(radius_px)
        return (distance == _footprint_filter(np.maximum, distance, footprint, mode="constant", cval=np.inf)) & foreground
    return compiled(distance, foreground, _footprint_offsets(radius_px))


@functools.lru_cache(maxsize=32)
def _footprint_offsets(radius_px: tuple[float, float]) -> np.ndarray:
    """(dy, dx) of the ellipse of :func:`_ellipse` without its centre, nearest first (int64, read-only)."""
    footprint = _ellipse(radius_px)
    dy, dx = np.nonzero(footprint)
    dy, dx = dy - footprint.shape[0] // 2, dx - footprint.shape[1] // 2
    keep = (dy != 0) | (dx != 0)
    dy, dx = dy[keep], dx[keep]
    order = np.lexsort((dx, dy, dy.astype(np.float64) ** 2 + dx.astype(np.float64) ** 2))
    offsets = np.stack([dy[order], dx[order]], axis=1).astype(np.int64)
    offsets.flags.writeable = False
    return offsets


# A maximum of the distance map narrower than a lymphocyte's (< 2.2 µm to the background, under 4.4 µm
# across) lies on the ridge of a spindle or endothelial nucleus or on the rim of a pale one, where the
# pixel grid and the chromatin texture leave a row of maxima along one nucleus. Such a maximum is a
# centre only behind a saddle. Wider maxima stay centres without one: round nuclei crowded in lymphoid
# tissue touch with little or no saddle at 1 µm/px, and requiring one there merges real cells.
THIN_MAXIMUM_UM = 2.2
SADDLE_DEPTH_PX = 0.7  # a saddle dips below the lower maximum by this many pixels: beyond the grid's rounding
SADDLE_REACH_UM = 6.0  # higher maxima are looked for this far (one nucleus's ridge; bounds the window needed)


def _separate_maxima(peaks: np.ndarray, distance: np.ndarray, *, pixel_size_um) -> np.ndarray:
    """Drop each thin maximum that is no nucleus of its own: no saddle between it and a higher one.

    A plateau of equal maxima (8-connected) is one maximum, represented by its first pixel
    in raster order. A maximum ``m`` thinner than ``THIN_MAXIMUM_UM`` goes, with its
    plateau, when a higher maximum lies within ``SADDLE_REACH_UM`` and the distance along
    the straight segment between them never falls ``SADDLE_DEPTH_PX`` pixels below ``m``:
    the two are one convex body, whereas touching nuclei meet at a neck. Equal heights
    rank by raster order, and only pixels within the reach are read, so a window holding
    the reach around ``m`` decides as the whole image does.
    """
    flat = np.flatnonzero(peaks)
    if not (distance.ravel()[flat] < THIN_MAXIMUM_UM).any():
        return peaks
    root = _plateau_roots(flat, peaks.shape)
    heads = np.unique(root)  # one pixel per plateau, its first in raster order
    first = flat[heads]
    width = peaks.shape[1]
    ys, xs = first // width, first % width
    values = distance.ravel()[first]
    py, px = pixel_size_um
    dominated = _saddle_compiled()(ys.astype(np.int64), xs.astype(np.int64), values, distance,
                                   int(np.floor(SADDLE_REACH_UM / py)), int(np.floor(SADDLE_REACH_UM / px)),
                                   float(py), float(px), float(SADDLE_REACH_UM), float(THIN_MAXIMUM_UM),
                                   float(SADDLE_DEPTH_PX * max(py, px)))
    if not dominated.any():
        return peaks
    gone = np.zeros(flat.size, bool)
    gone[heads[dominated]] = True
    separate = peaks.copy()
    separate.ravel()[flat[gone[root]]] = False
    return separate


def _plateau_roots(flat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel of ``flat`` (sorted flat indices of a mask): the index in ``flat`` of the first pixel of its 8-connected group."""
    compiled = _compiled(cell_kernels.plateau_roots_loops)
    if compiled is not None:
        return compiled(flat.astype(np.int64), shape[1])
    mask = np.zeros(shape, bool)
    mask.ravel()[flat] = True
    plateaus, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    _, first, inverse = np.unique(plateaus.ravel()[flat], return_index=True, return_inverse=True)
    return first[inverse]


def _saddle_compiled():
    """:func:`_no_saddle_loops` compiled with numba, or (slowly) the same function in Python without numba."""
    return _compiled(_no_saddle_loops) or _no_saddle_loops


CLUMP_SIGMA_UM = 1.0  # smoothing before the clump maxima: above pixel noise, below a nucleus radius
CLUMP_CONTRAST = 0.15  # a clump centre stands this share of its height above threshold over its surround


def _clump_zone(thick: np.ndarray, foreground: np.ndarray, *, pixel_size_um, reach_um: float) -> np.ndarray | None:
    """Foreground within ``reach_um`` of a thick core: the clump and its rim (None without clumps)."""
    if not thick.any():
        return None
    # only the box around the thick cores, grown by the reach, can be near them
    rows, cols = np.flatnonzero(thick.any(axis=1)), np.flatnonzero(thick.any(axis=0))
    limit_um = reach_um + max(pixel_size_um)
    my, mx = (int(np.ceil(limit_um / p)) + 1 for p in pixel_size_um)
    box = (slice(max(rows[0] - my, 0), rows[-1] + my + 1), slice(max(cols[0] - mx, 0), cols[-1] + mx + 1))
    near = np.zeros(thick.shape, bool)
    # squared distances on the pixel lattice sit far apart near the limit, so float32 decides as float64 does
    near[box] = distance_to_background(~thick[box], pixel_size_um) <= limit_um
    return near & foreground


def _clump_centres(image: np.ndarray, clump: np.ndarray, threshold, *, pixel_size_um, min_distance_um: float) -> np.ndarray:
    """Nuclear centres inside clumps: local maxima of the smoothed stain that stand out from their surround.

    The contrast test is relative to the height above threshold, so it holds under any
    stain gain, and it rejects flat bright debris, whose maxima are noise.
    """
    # filter only the box around the clumps, with a margin the filters cannot see past: the
    # values inside equal those of the whole window
    reach_um = 3.0 * CLUMP_SIGMA_UM + 2.0 * min_distance_um
    rows, cols = np.flatnonzero(clump.any(axis=1)), np.flatnonzero(clump.any(axis=0))
    my, mx = (int(np.ceil(reach_um / p)) + 1 for p in pixel_size_um)
    box = (slice(max(rows[0] - my, 0), rows[-1] + my + 1), slice(max(cols[0] - mx, 0), cols[-1] + mx + 1))
    smooth = ndi.gaussian_filter(image[box], _px(CLUMP_SIGMA_UM, pixel_size_um), truncate=3.0)
    top = _footprint_filter(np.maximum, smooth, _ellipse(_px(min_distance_um, pixel_size_um)), mode="nearest")
    surround = _footprint_filter(np.minimum, smooth, _ellipse(_px(2.0 * min_distance_um, pixel_size_um)), mode="nearest")
    if isinstance(threshold, ThresholdGrid):
        threshold = threshold.pixels(clump.shape, box)
    elif np.ndim(threshold):
        threshold = threshold[box]
    height = smooth - threshold
    found = clump[box] & (smooth == top) & (height > 0) & (smooth - surround >= CLUMP_CONTRAST * height)
    # a nucleus peaks at a point; a wide flat top is a saturated or featureless blob
    plateaus, n = ndi.label(found, structure=np.ones((3, 3), bool))
    if n:
        too_wide = np.bincount(plateaus.ravel()) * pixel_size_um[0] * pixel_size_um[1] > np.pi * min_distance_um**2
        too_wide[0] = False
        found[too_wide[plateaus]] = False
    centres = np.zeros(clump.shape, bool)
    centres[box] = found
    return centres


def _nearest_centre(peaks: np.ndarray, distance: np.ndarray, mask: np.ndarray, *, pixel_size_um, reach_um: float,
                    origin: tuple[int, int]) -> np.ndarray:
    """Give each mask pixel to the centre whose inscribed disc it is nearest to.

    A centre at ``m`` with distance-to-background ``r`` claims pixel ``p`` with score
    ``|p - m| - r`` (an additively weighted Voronoi split): two touching round nuclei
    part where their outlines meet, whatever their sizes. Equal scores go to the centre
    first in slide raster order, so the split is the same in every window.
    """
    centres = _plateau_centres(peaks)
    return _claim_pixels(centres, distance.ravel()[centres], mask, pixel_size_um=pixel_size_um, reach_um=reach_um,
                         origin=origin)


def _plateau_centres(peaks: np.ndarray) -> np.ndarray:
    """Flat indices of one centre per plateau of equal maxima (8-connected): its first pixel in raster order."""
    flat = np.flatnonzero(peaks)
    return flat[np.unique(_plateau_roots(flat, peaks.shape))]


def _claim_pixels(centres: np.ndarray, radius: np.ndarray, mask: np.ndarray, *, pixel_size_um, reach_um: float,
                  origin: tuple[int, int]) -> np.ndarray:
    """:func:`_nearest_centre` given the centres (flat indices, raster order) and their inscribed radii (µm)."""
    height, width = mask.shape
    cy, cx = (centres // width).astype(np.int64), (centres % width).astype(np.int64)
    radius = radius.astype(np.float64)
    # slide raster order of each centre; entry 0 (no owner yet) loses every tie
    slide_order = np.concatenate([[np.iinfo(np.int64).max],
                                  (cy + origin[0]).astype(np.int64) * (1 << 32) + (cx + origin[1])])
    pixel_size_um = tuple(float(p) for p in pixel_size_um)
    claim = _claim_compiled()
    if claim is None:
        return _claim(cy, cx, radius, slide_order, _claim_offsets(pixel_size_um, float(reach_um)), mask)
    nearest_first, steps = _claim_tables(pixel_size_um, float(reach_um))
    return claim(cy, cx, radius, slide_order, nearest_first, steps, np.ascontiguousarray(mask), CLAIM_SETTLED_UM,
                 CLAIM_BUCKET_PX)


# The compiled claim first lets each centre claim only pixels within CLAIM_SETTLED_UM of its inscribed
# disc (~3x fewer pixel visits than its whole reach); the pixels not yet decided (~1.5 % of the
# foreground at 0.5 µm/px) then try every centre within reach, found in buckets of CLAIM_BUCKET_PX.
CLAIM_SETTLED_UM = 1.0
CLAIM_BUCKET_PX = 16


@functools.lru_cache(maxsize=32)
def _claim_tables(pixel_size_um: tuple[float, float], reach_um: float) -> tuple[np.ndarray, np.ndarray]:
    """The offsets of :func:`_claim_offsets` nearest first, and their steps (µm) by (dy + ry, dx + rx), inf beyond reach."""
    offsets = _claim_offsets(pixel_size_um, reach_um)
    nearest_first = offsets[np.argsort(offsets[:, 2], kind="stable")]
    ry, rx = int(np.abs(offsets[:, 0]).max()), int(np.abs(offsets[:, 1]).max())
    py, px = pixel_size_um
    ry, rx = max(ry, int(np.ceil(reach_um / py))), max(rx, int(np.ceil(reach_um / px)))
    steps = np.full((2 * ry + 1, 2 * rx + 1), np.inf)
    steps[offsets[:, 0].astype(np.int64) + ry, offsets[:, 1].astype(np.int64) + rx] = offsets[:, 2]
    for table in (nearest_first, steps):
        table.flags.writeable = False
    return nearest_first, steps


@functools.lru_cache(maxsize=32)
def _claim_offsets(pixel_size_um: tuple[float, float], reach_um: float) -> np.ndarray:
    """(dy, dx, µm) of every offset within ``reach_um``, in raster order (float64, read-only)."""
    py, px = pixel_size_um
    ry, rx = int(np.ceil(reach_um / py)), int(np.ceil(reach_um / px))
    dy, dx = (v.ravel() for v in np.mgrid[-ry : ry + 1, -rx : rx + 1])
    step = np.hypot(dy * py, dx * px)
    keep = step <= reach_um
    offsets = np.stack([dy[keep], dx[keep], step[keep]], axis=1).astype(np.float64)
    offsets.flags.writeable = False
    return offsets


def _claim(cy, cx, radius, slide_order, offsets, mask) -> np.ndarray:
    """Owner (centre index + 1) of every mask pixel: least ``step - radius``, then least slide order."""
    height, width = mask.shape
    best = np.full(mask.shape, np.inf)
    owner = np.zeros(mask.shape, np.int32)
    index = np.arange(1, cy.size + 1, dtype=np.int32)
    for dy, dx, step in offsets:
        y, x = cy + int(dy), cx + int(dx)
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        y, x, claimant = y[inside], x[inside], index[inside]
        score = step - radius[inside]
        current = best[y, x]
        # distinct centres never land on one pixel with the same offset: plain writes are safe
        better = (score < current) | ((score == current) & (slide_order[claimant] < slide_order[owner[y, x]]))
        best[y[better], x[better]] = score[better]
        owner[y[better], x[better]] = claimant[better]
    owner[~mask] = 0
    return owner


def _claim_compiled():
    """:func:`_claim` compiled with numba (the same arithmetic, so the same owners), or None without numba."""
    return _compiled(_claim_loops)


def cell_bodies(nuclei: np.ndarray, *, pixel_size_um: tuple[float, float], ring_um: float) -> np.ndarray:
    """Grow each nucleus by ``ring_um``; a pixel joins the nearest nucleus (no overlaps).

    Nearest by the Euclidean distance (µm) to the nucleus's closest pixel; at equal
    distances the lower label wins (labels follow the centres' raster order, so every
    window that holds both nuclei decides alike). The closest pixel of a nucleus to any
    outside pixel borders the background, so only border pixels are grown.
    """
    bodies = np.array(nuclei, dtype=np.int32)  # a copy
    return np.abs(_grow_rings(bodies, pixel_size_um=pixel_size_um, ring_um=ring_um), out=bodies)


def _grow_rings(labels: np.ndarray, *, pixel_size_um, ring_um: float) -> np.ndarray:
    """:func:`cell_bodies` in place, in one array: ``labels`` (int32, C order) with each ring pixel set to minus
    its cell's label (nuclei stay positive)."""
    if ring_um <= 0 or not labels.any():
        return labels
    offsets = _ring_offsets(tuple(float(p) for p in pixel_size_um), float(ring_um))
    grow = _compiled(_grow_rings_loops) or _grow_rings_loops
    # steps as ranks: the same order and the same ties, compared in the smallest integer type that holds them
    ranks = np.unique(offsets[:, 2], return_inverse=True)[1]
    ranks = ranks.astype(np.min_scalar_type(ranks.max() + 1))  # the type's maximum stays above every rank
    dy, dx = offsets[:, 0].astype(np.int64), offsets[:, 1].astype(np.int64)
    group = (np.sign(dy) + 1) * 3 + np.sign(dx) + 1  # by the side they point to (see _grow_rings_loops)
    order = np.argsort(group, kind="stable")
    group_start = np.searchsorted(group[order], np.arange(10)).astype(np.int64)
    best = np.full(labels.shape, np.iinfo(ranks.dtype).max, ranks.dtype)
    return grow(labels, dy[order], dx[order], ranks[order], group_start, best)


@functools.lru_cache(maxsize=32)
def _ring_offsets(pixel_size_um: tuple[float, float], reach_um: float) -> np.ndarray:
    """(dy, dx, µm) of every offset within ``reach_um``, nearest first (float64, read-only)."""
    py, px = pixel_size_um
    ry, rx = int(np.floor(reach_um / py)), int(np.floor(reach_um / px))
    dy, dx = (v.ravel() for v in np.mgrid[-ry : ry + 1, -rx : rx + 1])
    step = np.sqrt((dy * py) ** 2 + (dx * px) ** 2)
    keep = (step <= reach_um) & ((dy != 0) | (dx != 0))
    order = np.lexsort((dx[keep], dy[keep], step[keep]))
    offsets = np.stack([dy[keep][order], dx[keep][order], step[keep][order]], axis=1).astype(np.float64)
    offsets.flags.writeable = False
    return offsets


def nucleus_extent_um(max_area_um2: float) -> float:
    """Diameter of a round nucleus of the largest accepted area."""
    return 2.0 * float(np.sqrt(max_area_um2 / np.pi))


@dataclass(frozen=True)
class CellPlan:
    """What the block pass segments, measures and counts; small and picklable."""

    markers: tuple[str, ...]  # measured channels, in the order their blocks follow the nuclear stain
    compartments: tuple[str, ...]  # per marker: nucleus | ring | cell
    thresholds: tuple[float, ...]  # per marker: a cell is positive when its compartment mean is above
    nuclear_threshold: float  # used where no threshold maps are given (see compute_cells)
    pixel_size_um: tuple[float, float]  # (y, x)
    sigma_um: float
    min_distance_um: float
    min_area_um2: float
    max_area_um2: float
    ring_um: float
    fine_factor: int  # level-0 px per fine grid cell (TLS labels, debris)
    coarse_factor: int  # level-0 px per coarse grid cell (tissue, tumour)
    n_tls: int
    keep_table: bool = False
    grid_factor: int = 0  # level-0 px per threshold-map cell (0: no maps, the global thresholds above)

    @property
    def halo_px(self) -> int:
        """Overlap read on each inner block side: the widest nucleus 1.5 times over, its ring and filter reach."""
        reach_um = (1.5 * nucleus_extent_um(self.max_area_um2) + self.ring_um + 3 * self.sigma_um + self.min_distance_um
                    + 3 * CLUMP_SIGMA_UM + 2 * self.min_distance_um  # clump centres: smoothing and surround
                    + SADDLE_REACH_UM)  # thin maxima: the higher maxima and saddles they are compared with
        return int(np.ceil(reach_um / min(self.pixel_size_um)))


# regions cells are counted in (rows of CellCounts.counts). "all" is every cell centred in tissue;
# "artefact" the part of it inside artefact zones (folds, debris, blood, edge rims), whose
# nuclei are real but whose marker values are not trusted; "tumour", "margin" (the peritumoral
# band) and "tls" leave those out.
REGIONS = ("all", "tumour", "margin", "tls", "artefact")
TABLE_BASE = ("centroid_x_um", "centroid_y_um", "nucleus_area_um2", "cell_area_um2", "in_tumour", "in_margin",
              "tls_id", "in_artefact")


@dataclass
class CellRecords:
    """The cells one block owns (centred in its core), measured, before they are counted into regions.

    Regions (tissue, tumour, TLS...) are decided by each cell's centre alone, so they can be
    looked up after the pass, once the whole slide's masks are known (see :class:`CellTally`).
    """

    core: tuple[int, int, int, int]  # (y0, y1, x0, x1), level-0 px
    centre_y: np.ndarray  # level-0 px, pixel centres at .5 (float64, from exact integer sums)
    centre_x: np.ndarray
    nucleus_px: np.ndarray  # int64
    ring_px: np.ndarray  # int64
    positive: np.ndarray  # (cells, markers) bool
    means: dict[str, np.ndarray] | None = None  # with plan.keep_table: "<marker>_nucleus", "<marker>_ring" (float32)

    def __len__(self) -> int:
        return self.centre_y.size


def _no_records(plan: CellPlan, core: tuple[int, int, int, int]) -> CellRecords:
    empty = np.empty(0, np.int64)
    means = ({f"{m}_{part}": np.empty(0, np.float32) for m in plan.markers for part in ("nucleus", "ring")}
             if plan.keep_table else None)
    return CellRecords(core, np.empty(0), np.empty(0), empty, empty, np.zeros((0, len(plan.markers)), bool), means)


def _grid_lookup(grid: np.ndarray | None, origin: tuple[int, int], factor: int, y_px, x_px) -> np.ndarray:
    """Values of ``grid`` (cells of ``factor`` level-0 px, element [0, 0] at grid ``origin``) at points; 0 without grid."""
    if grid is None:
        return np.zeros(y_px.shape, np.int64)
    rows = np.clip((y_px // factor).astype(np.int64) - origin[0], 0, grid.shape[0] - 1)
    cols = np.clip((x_px // factor).astype(np.int64) - origin[1], 0, grid.shape[1] - 1)
    return grid[rows, cols]


def block_records(plan: CellPlan, core: tuple[int, int, int, int], window_origin: tuple[int, int],
                  inner_edges: tuple[bool, bool, bool, bool], nuclear_stain: np.ndarray, *markers: np.ndarray,
                  thresholds: np.ndarray | None = None, threshold_origin: tuple[int, int] = (0, 0),
                  read_markers=None) -> CellRecords:
    """Segment one window and measure the cells centred in its core.

    ``core`` is (y0, y1, x0, x1) in level-0 px; the window starts at ``window_origin``;
    ``inner_edges`` (top, bottom, left, right) marks window sides cut from a larger image,
    where an object touching the side may continue beyond it and is never kept.
    ``thresholds`` (1 + markers, rows, cols), on the grid of ``plan.grid_factor`` px with
    element [0, 0] at grid ``threshold_origin``, are local thresholds (nuclear stain first)
    in place of the plan's global ones.
    ``read_markers``, given instead of ``markers``, is called once the nuclei are known and
    returns the marker windows in groups (an iterable of sequences, in marker order, each
    read when its turn comes): they are then not held while the nuclei are segmented, not
    all at once, and not read at all where no cell is centred in the core.
    """
    pixel_size = plan.pixel_size_um
    nuclear_threshold = plan.nuclear_threshold
    if thresholds is not None:  # the local nuclear threshold, looked up per pixel of the window
        f = plan.grid_factor
        gy, gx = threshold_origin
        nuclear_threshold = ThresholdGrid(np.ascontiguousarray(thresholds[0]), f, window_origin[0] - gy * f,
                                          window_origin[1] - gx * f)
    nuclei = segment_nuclei(nuclear_stain, pixel_size_um=pixel_size, threshold=nuclear_threshold,
                            sigma_um=plan.sigma_um, min_distance_um=plan.min_distance_um,
                            min_area_um2=plan.min_area_um2, max_area_um2=plan.max_area_um2, origin=window_origin)
    n = int(nuclei.max())
    if n == 0:
        return _no_records(plan, core)
    # the cells in one array, rings as minus their label: a second label array would be the largest
    # allocation of the marker sums below
    cell_labels = _grow_rings(np.ascontiguousarray(nuclei, dtype=np.int32), pixel_size_um=pixel_size,
                              ring_um=plan.ring_um)
    del nuclei
    # centroids from exact integer sums of level-0 indices: identical in every window
    nucleus_px, ring_px, sum_y, sum_x = _cell_sums(cell_labels, cell_labels, n, window_origin)
    centre_y = sum_y[1:] / nucleus_px[1:] + 0.5  # level-0 px, pixel centres at .5
    centre_x = sum_x[1:] / nucleus_px[1:] + 0.5
    y0, y1, x0, x1 = core
    owned = (centre_y >= y0) & (centre_y < y1) & (centre_x >= x0) & (centre_x < x1)
    cut = _touching_cut_sides(cell_labels, inner_edges, n)
    owned &= ~cut[1:]
    if not owned.any():
        return _no_records(plan, core)
    ids = np.flatnonzero(owned) + 1
    centre_y, centre_x = centre_y[owned], centre_x[owned]

    positive = np.zeros((ids.size, len(plan.markers)), bool)
    means: dict[str, np.ndarray] = {}
    # markers in groups, read one after the other (see _cells_band): fewer windows held at a time
    groups = read_markers() if read_markers is not None else [markers]
    per_group = [_all_marker_sums(cell_labels, cell_labels, group, n) for group in groups]
    sums = [m for group in per_group for m in group[0]], [m for group in per_group for m in group[1]]
    for k, (marker, compartment, threshold) in enumerate(zip(plan.markers, plan.compartments, plan.thresholds)):
        nucleus_sum, ring_sum = sums[0][k][ids], sums[1][k][ids]
        nucleus_mean = nucleus_sum / nucleus_px[ids]
        ring_mean = np.divide(ring_sum, ring_px[ids], out=np.zeros(ids.size), where=ring_px[ids] > 0)
        if compartment == "nucleus":
            mean = nucleus_mean
        elif compartment == "ring":
            mean = np.where(ring_px[ids] > 0, ring_mean, nucleus_mean)  # a cell with no free ring: its nucleus
        else:
            mean = (nucleus_sum + ring_sum) / (nucleus_px[ids] + ring_px[ids])
        if thresholds is not None:
            threshold = _grid_lookup(thresholds[1 + k], threshold_origin, plan.grid_factor, centre_y, centre_x)
        positive[:, k] = mean > threshold
        if plan.keep_table:
            means[f"{marker}_nucleus"] = nucleus_mean.astype(np.float32)
            means[f"{marker}_ring"] = ring_mean.astype(np.float32)
    return CellRecords(core, centre_y, centre_x, nucleus_px[ids].astype(np.int64), ring_px[ids].astype(np.int64),
                       positive, means if plan.keep_table else None)


def core_touches(mask: np.ndarray, core: tuple[int, int, int, int], factor: int) -> bool:
    """Whether any cell of ``mask`` (a grid of ``factor`` level-0 px per cell) overlaps the level-0 box ``core``."""
    y0, y1, x0, x1 = core
    return bool(mask[y0 // factor : -(-y1 // factor), x0 // factor : -(-x1 // factor)].any())


class CellTally:
    """Cells counted into the slide's regions block by block, as the records of a pass come in.

    ``tissue`` / ``tumour`` / ``margin`` (coarse grid) and ``debris`` / ``tls_labels`` (fine
    grid) are whole-slide masks. A cell counts where its centre lies in tissue; blocks whose
    core holds no tissue count nothing (a pass need not read them). TLS ids run to
    ``plan.n_tls``. Integer sums: the same in any order, so records are dropped once counted.
    """

    def __init__(self, plan: CellPlan, *, tissue, tumour, debris, tls_labels, margin=None) -> None:
        self.plan = plan
        self.masks = (tissue, tumour, debris, tls_labels, margin)
        n_markers = len(plan.markers)
        self.counts = np.zeros((len(REGIONS), 1 + n_markers), np.int64)
        self.tls_counts = np.zeros((plan.n_tls + 1, 1 + n_markers), np.int64)
        self.excluded = 0
        self.nucleus_px = 0
        self.columns: list[dict[str, np.ndarray]] = []  # per block, with plan.keep_table

    def add(self, record: CellRecords) -> None:
        """Count one block's cells."""
        plan = self.plan
        tissue, tumour, debris, tls_labels, margin = self.masks
        c, f = plan.coarse_factor, plan.fine_factor
        if not len(record) or not core_touches(tissue, record.core, c):
            return
        counted = _grid_lookup(tissue, (0, 0), c, record.centre_y, record.centre_x).astype(bool)
        self.excluded += int(np.count_nonzero(~counted))
        centre_y, centre_x, positive = record.centre_y[counted], record.centre_x[counted], record.positive[counted]
        nucleus_px, ring_px = record.nucleus_px[counted], record.ring_px[counted]
        in_debris = _grid_lookup(debris, (0, 0), f, centre_y, centre_x).astype(bool)
        in_tumour = _grid_lookup(tumour, (0, 0), c, centre_y, centre_x).astype(bool)
        in_margin = _grid_lookup(margin, (0, 0), c, centre_y, centre_x).astype(bool)
        tls_id = _grid_lookup(tls_labels, (0, 0), f, centre_y, centre_x).astype(np.int64)
        tally = np.concatenate([np.ones((centre_y.size, 1), np.int64), positive.astype(np.int64)], axis=1)
        self.counts += np.stack([tally.sum(0), tally[in_tumour & ~in_debris].sum(0),
                                 tally[in_margin & ~in_debris].sum(0), tally[(tls_id > 0) & ~in_debris].sum(0),
                                 tally[in_debris].sum(0)])
        np.add.at(self.tls_counts, np.where(in_debris, 0, tls_id), tally)
        self.nucleus_px += int(nucleus_px.sum())
        if plan.keep_table:
            pixel_size = plan.pixel_size_um
            pixel_area = pixel_size[0] * pixel_size[1]
            columns = {"centroid_x_um": centre_x * pixel_size[1], "centroid_y_um": centre_y * pixel_size[0],
                       "nucleus_area_um2": (nucleus_px * pixel_area).astype(np.float32),
                       "cell_area_um2": ((nucleus_px + ring_px) * pixel_area).astype(np.float32),
                       "in_tumour": in_tumour, "in_margin": in_margin, "tls_id": tls_id.astype(np.int32),
                       "in_artefact": in_debris}
            for k, marker in enumerate(plan.markers):
                for part in ("nucleus", "ring"):
                    columns[f"{marker}_{part}"] = record.means[f"{marker}_{part}"][counted]
                columns[f"{marker}_positive"] = positive[:, k]
            self.columns.append(columns)

    def result(self) -> CellCounts:
        """The slide's counts (and its cell table, sorted by position, with ``plan.keep_table``)."""
        plan = self.plan
        table = None
        if plan.keep_table:
            dtypes = table_dtypes(plan)
            table = pd.DataFrame({name: (np.concatenate([c[name] for c in self.columns]) if self.columns
                                         else np.empty(0)).astype(dtype) for name, dtype in dtypes.items()})
            # block order depends on the chunking and on which task ended first; position does not
            table = table.sort_values(["centroid_y_um", "centroid_x_um"], kind="stable", ignore_index=True)
            table.insert(0, "cell_id", np.arange(1, len(table) + 1, dtype=np.int64))
        return CellCounts(
            markers=plan.markers,
            counts=self.counts.copy(),
            tls_counts=self.tls_counts.copy(),
            excluded_outside_tissue=self.excluded,
            # an integer sum: the same for any block order
            nucleus_area_um2=self.nucleus_px * plan.pixel_size_um[0] * plan.pixel_size_um[1],
            table=table,
        )


def count_records(plan: CellPlan, records, *, tissue, tumour, debris, tls_labels, margin=None) -> CellCounts:
    """Count the cells of ``records`` (:class:`CellRecords` of the blocks of a pass) into the slide's regions
    (see :class:`CellTally`)."""
    tally = CellTally(plan, tissue=tissue, tumour=tumour, debris=debris, tls_labels=tls_labels, margin=margin)
    for record in records:
        tally.add(record)
    return tally.result()


def _cell_sums(nuclei: np.ndarray, bodies: np.ndarray, n: int, origin: tuple[int, int]):
    """Per label 0..n: nucleus and ring pixel counts, and the sums of the nucleus pixels' level-0 rows and columns."""
    compiled = _compiled(_cell_sums_loops)
    if compiled is not None:
        return compiled(nuclei, bodies, n, origin[0], origin[1])
    in_nucleus, ring = _nucleus_and_ring(nuclei, bodies)
    nucleus_ids = nuclei.ravel()[in_nucleus]
    width = nuclei.shape[1]
    return (np.bincount(nucleus_ids, minlength=n + 1), np.bincount(np.abs(bodies.ravel()[ring]), minlength=n + 1),
            np.bincount(nucleus_ids, weights=in_nucleus // width + origin[0], minlength=n + 1),
            np.bincount(nucleus_ids, weights=in_nucleus % width + origin[1], minlength=n + 1))


def _marker_sums(nuclei: np.ndarray, bodies: np.ndarray, values: np.ndarray, n: int):
    """Per label 0..n: the sums (float64, raster order) of ``values`` over the nucleus and over the ring."""
    compiled = _compiled(cell_kernels.all_marker_sums_loops)
    if compiled is not None:
        nucleus_sums, ring_sums = compiled(nuclei, bodies, *_padded((one_integer_type(values),)), n)
        return nucleus_sums[0], ring_sums[0]
    flat = values.ravel()
    in_nucleus, ring = _nucleus_and_ring(nuclei, bodies)
    return (np.bincount(nuclei.ravel()[in_nucleus], weights=flat[in_nucleus], minlength=n + 1),
            np.bincount(np.abs(bodies.ravel()[ring]), weights=flat[ring], minlength=n + 1))


def _nucleus_and_ring(nuclei: np.ndarray, bodies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the nucleus pixels and of the ring pixels: nuclei and bodies as two label arrays, or one
    array with rings as minus their label passed twice (a pixel is of cell ``abs(bodies)``)."""
    return np.flatnonzero(nuclei.ravel() > 0), np.flatnonzero((nuclei.ravel() <= 0) & (bodies.ravel() != 0))


def _all_marker_sums(nuclei: np.ndarray, bodies: np.ndarray, markers, n: int):
    """:func:`_marker_sums` of every marker window: (nucleus sums, ring sums), each indexed [marker][label].

    Compiled, windows of one dtype and layout (the channels of one slide) are summed in a
    single pass over the labels.
    """
    markers = tuple(np.asarray(m) for m in markers)
    compiled = _compiled(cell_kernels.all_marker_sums_loops)
    if (compiled is not None and 0 < len(markers) <= cell_kernels.MARKER_SLOTS
            and len({(m.dtype, m.shape, m.flags.c_contiguous, m.flags.f_contiguous) for m in markers}) == 1
            and markers[0].ndim == 2):
        return compiled(nuclei, bodies, *_padded(tuple(one_integer_type(m) for m in markers)), n)
    per_marker = [_marker_sums(nuclei, bodies, m, n) for m in markers]
    return [s[0] for s in per_marker], [s[1] for s in per_marker]


def _padded(markers: tuple) -> tuple[tuple, int]:
    """``markers`` padded to the kernel's four windows (one compiled signature for groups of 1 to 4), and how many are real."""
    return padded(markers, cell_kernels.MARKER_SLOTS), len(markers)


def _touching_cut_sides(labels: np.ndarray, inner_edges, n: int) -> np.ndarray:
    """Per label (index 0 = background): whether it touches a window side cut from a larger image (label
    ``abs(labels)``: rings may be minus their label)."""
    touching = np.zeros(n + 1, bool)
    top, bottom, left, right = inner_edges
    for flag, line in ((top, labels[0]), (bottom, labels[-1]), (left, labels[:, 0]), (right, labels[:, -1])):
        if flag:
            touching[np.abs(line)] = True
    touching[0] = False
    return touching


def table_dtypes(plan: CellPlan) -> dict[str, np.dtype]:
    """Columns of the per-cell table as a block returns them (``cell_id`` is added at the end)."""
    dtypes = dict(zip(TABLE_BASE, map(np.dtype, ("float64", "float64", "float32", "float32", "bool", "bool", "int32", "bool"))))
    for marker in plan.markers:
        dtypes.update({f"{marker}_nucleus": np.dtype("float32"), f"{marker}_ring": np.dtype("float32"),
                       f"{marker}_positive": np.dtype("bool")})
    return dtypes


@dataclass
class CellCounts:
    """The whole slide's cells: counts per region and marker, per TLS, and optionally every cell."""

    markers: tuple[str, ...]
    counts: np.ndarray  # (len(REGIONS), 1 + markers)
    tls_counts: np.ndarray  # (n_tls + 1, 1 + markers)
    excluded_outside_tissue: int
    nucleus_area_um2: float  # summed over the counted cells
    table: pd.DataFrame | None

    @property
    def total(self) -> int:
        return int(self.counts[0, 0])

    @property
    def in_artefacts(self) -> int:
        return int(self.counts[REGIONS.index("artefact"), 0])

    def scored(self, region: str) -> np.ndarray:
        """Counts of ``region`` over the cells whose markers are scored (artefact zones left out)."""
        row = self.counts[REGIONS.index(region)]
        return row - self.counts[REGIONS.index("artefact")] if region == "all" else row


BAND_BLOCKS = 4  # consecutive blocks of one block row read by one task (bounds the work per task)


@dataclass(frozen=True)
class _Block:
    """One block of the pass: its core and window (y0, y1, x0, x1, level-0 px), cut sides and what it does.

    ``segment``: its cells are segmented and measured; ``counter``: its core is counted into
    the evidence maps (a :class:`tlsquant.segment.evidence.BoxCounter`, or None).
    """

    core: tuple[int, int, int, int]
    inner: tuple[bool, bool, bool, bool]
    window: tuple[int, int, int, int]
    segment: bool = True
    thresholds: object = None  # threshold maps around the window (see block_records), a view or pieces made in the task
    threshold_origin: tuple[int, int] = (0, 0)
    counter: object = None


class _Sources:
    """The channels a band task reads, nuclear stain first, carried unopened (dask must not compute them up front).

    A read runs, in its own thread, the tasks of the blocks it needs, looked up in each
    channel's graph (dask materializes a layer once per process and array), each with its
    dependencies, once per read: the pixels of ``array[rows, cols].compute()`` without
    building, ordering and scheduling a graph per read, which costs as much as decoding the
    tiles. A graph with nodes other than dask's task-spec ones (older dask) is read through dask.
    """

    def __init__(self, arrays) -> None:
        self.arrays = tuple(arrays)
        self.x_edges = tuple(int(v) for v in np.cumsum((0,) + tuple(self.arrays[0].chunks[1])))
        self.regions: list[tuple[tuple[int, int], tuple[int, int]]] = []  # (rows, cols) per reader, in run order
        self.shared: dict[tuple[int, int], tuple[int, ...]] = {}  # (block row, column) -> readers, where more than one

    def __dask_tokenize__(self):
        return tuple(a.name for a in self.arrays)

    def read(self, rows: tuple[int, int], cols: tuple[int, int], out, channels=None, reader: int | None = None) -> None:
        """Pixels [rows, cols] of every channel, or of the ``channels`` (indices of ``arrays``), into ``out``.

        ``reader``: the index of the region (see :meth:`share`) this read belongs to; blocks it
        shares with other regions are then taken from, or kept in, the shared blocks.
        """
        arrays = self.arrays if channels is None else [self.arrays[c] for c in channels]
        for array, region in zip(arrays, out):
            y_edges, x_edges = (np.cumsum((0,) + tuple(c)) for c in array.chunks)
            # the decoded blocks of this channel's read, dropped when it ends: a recursive closure here
            # would make a reference cycle that only the cyclic collector frees, and tiles of every
            # read would pile up between its runs (about 1 GB over a whole-slide pass)
            run = functools.partial(run_task, array.__dask_graph__(), {})
            try:
                for i in block_range(y_edges, rows):
                    for j in block_range(x_edges, cols):
                        y0, y1 = max(y_edges[i], rows[0]), min(y_edges[i + 1], rows[1])
                        x0, x1 = max(x_edges[j], cols[0]), min(x_edges[j + 1], cols[1])
                        if y1 > y0 and x1 > x0:
                            box = (y_edges[i], y_edges[i + 1], x_edges[j], x_edges[j + 1])
                            block, (by, bx) = self._block(array, (i, j), box, (y0, y1, x0, x1), run, reader)
                            region[y0 - rows[0] : y1 - rows[0], x0 - cols[0] : x1 - cols[0]] = \
                                block[y0 - by : y1 - by, x0 - bx : x1 - bx]
            except NotTaskSpec:
                region[...] = array[rows[0]:rows[1], cols[0]:cols[1]].compute(scheduler="sync")

    def _block(self, array, key: tuple[int, int], box: tuple[int, int, int, int], needed: tuple[int, int, int, int],
               run, reader: int | None):
        """Block ``key`` of ``array`` (level-0 ``box`` = y0, y1, x0, x1) holding its ``needed`` part (y0, y1, x0, x1):
        (pixels, their top-left corner), decoded here or kept by a reader before this one."""
        readers = self.shared.get(key, ()) if reader is not None else ()
        shared_key = (array.name, *key)
        if readers:
            kept, waiting = _SHARED_BLOCKS.take(shared_key, self.reader(reader), [self.reader(r) for r in readers])
            if kept is not None:
                pixels, top, left = kept
                if (top <= needed[0] and needed[1] <= top + pixels.shape[0] and left <= needed[2]
                        and needed[3] <= left + pixels.shape[1]):
                    return pixels, (top, left)
        block = np.asarray(run(shared_key))
        if readers and waiting:
            # keep only what the readers still to come need: the row below wants one tile row's halo from
            # the tiles above it, the run to the right a tile column's, not the whole tiles
            others = [self.regions[r] for _, r in waiting]
            top, bottom = max(box[0], min(o[0][0] for o in others)), min(box[1], max(o[0][1] for o in others))
            left, right = max(box[2], min(o[1][0] for o in others)), min(box[3], max(o[1][1] for o in others))
            part = block[top - box[0] : bottom - box[0], left - box[2] : right - box[2]]
            if part.shape != block.shape:
                part = part.copy()  # not a view: the whole block would stay alive
            _SHARED_BLOCKS.put(shared_key, (part, top, left), due=min(r for _, r in waiting))
        return block, (box[0], box[2])

    def share(self, regions) -> None:
        """Note the blocks that more than one of the read ``regions`` ((rows, cols) per reader, in the order
        the readers run) covers."""
        self.regions = [(tuple(rows), tuple(cols)) for rows, cols in regions]
        if len({a.chunks for a in self.arrays}) != 1:
            return
        y_edges, x_edges = (np.cumsum((0,) + tuple(c)) for c in self.arrays[0].chunks)
        readers: dict[tuple[int, int], list] = {}
        for index, (rows, cols) in enumerate(self.regions):
            for i in block_range(y_edges, rows):
                for j in block_range(x_edges, cols):
                    readers.setdefault((i, j), []).append(index)
        self.shared = {key: tuple(found) for key, found in readers.items() if len(found) > 1}

    def finish(self, reader: int) -> None:
        """Reader ``reader`` reads no more: what was kept only for it goes (a window with no cell reads no markers)."""
        _SHARED_BLOCKS.finish(self.reader(reader))

    def reader(self, index: int) -> tuple[str, int]:
        """Reader ``index`` among all readers of the shared blocks (of any pass) in this process."""
        return self.arrays[0].name, index


class _SharedBlocks:
    """Decoded source blocks that several band tasks read (the tiles where runs of blocks meet), per process.

    A window reads a halo of one storage tile beyond its core on each side, so about a third
    of the tiles would be decoded twice. The first reader of such a block keeps the part the
    readers still to come need, until each has read it or finished. Readers are numbered in
    the order they run (raster order of the runs). Within ``limit_bytes``, a part that does
    not fit displaces parts due later (a later first reader; at the same one, larger parts,
    which save no more decoding per take), or is not kept: a row boundary wider than the limit
    keeps its left part, needed first, instead of evicting in turn what the next row is about
    to take. A block not found is decoded again, the same pixels, only slower.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._items: dict = {}  # key -> (part, rank); part = (pixels, level-0 row, column of their corner)
        self._ranks: dict[tuple[int, int], dict] = {}  # (due, nbytes) -> {key: None}, oldest first
        self._waiting: dict = {}  # key -> readers that have not read it yet
        self._finished: set = set()
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, key, reader, readers) -> tuple[tuple[np.ndarray, int, int] | None, tuple]:
        """Note that ``reader`` (one of ``readers``) reads ``key``: (the part kept, or None; the readers still to come)."""
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None:
                waiting = self._waiting[key] = {r for r in readers if r not in self._finished}
            waiting.discard(reader)
            entry = self._items.get(key)
            if not waiting:
                self._forget(key)
            return (entry[0] if entry is not None else None), tuple(waiting)

    def put(self, key, part: tuple[np.ndarray, int, int], *, due: int) -> None:
        """Keep ``part`` (pixels, row, column of their corner) for the readers still to come, the first of them ``due``."""
        nbytes = part[0].nbytes
        rank = (due, nbytes)
        with self._lock:
            if key in self._items or not self._waiting.get(key) or nbytes > self.limit_bytes:
                return
            excess = self._bytes + nbytes - self.limit_bytes
            if excess > 0:
                later = sorted((r for r in self._ranks if r > rank), reverse=True)
                if sum(r[1] * len(self._ranks[r]) for r in later) < excess:
                    return  # all that is kept is needed sooner
                for r in later:
                    for victim in reversed(list(self._ranks[r])):  # the newest first
                        if excess <= 0:
                            break
                        excess -= r[1]
                        self._drop(victim)
            self._items[key] = (part, rank)
            self._ranks.setdefault(rank, {})[key] = None
            self._bytes += nbytes

    def finish(self, reader) -> None:
        """``reader`` reads no more: drop what only it still waited for."""
        with self._lock:
            self._finished.add(reader)
            for key in [k for k, waiting in self._waiting.items() if reader in waiting]:
                self._waiting[key].discard(reader)
                if not self._waiting[key]:
                    self._forget(key)

    def discard(self, names) -> None:
        """Drop what the arrays named ``names`` left, and their readers (see :meth:`_Sources.reader`)."""
        with self._lock:
            for key in [k for k in {**self._items, **self._waiting} if k[0] in names]:
                self._forget(key)
            self._finished = {r for r in self._finished if r[0] not in names}

    def _forget(self, key) -> None:
        self._waiting.pop(key, None)
        self._drop(key)

    def _drop(self, key) -> None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self._bytes -= entry[0][0].nbytes
            bucket = self._ranks[entry[1]]
            del bucket[key]
            if not bucket:
                del self._ranks[entry[1]]


_SHARED_BLOCKS = _SharedBlocks(128 << 20)


class _BandWindows:
    """Windows of some channels of ``sources`` along one band of rows, read left to right.

    The columns read for one window that the next window also covers (its left halo and the
    rest of the source chunk they lie in) are carried over, and only the columns beyond are
    read, in whole source chunks: a storage tile along the band is decoded once, not once per
    window that touches it. Between windows only the carried columns are held, not a window.
    Nothing right of ``stop_x`` (the last window's end) is read; ``reader`` is the band's index
    among the regions shared through ``sources`` (see :meth:`_Sources.share`).
    """

    def __init__(self, sources: _Sources, channels, rows: tuple[int, int], *, stop_x: int | None = None,
                 reader: int | None = None) -> None:
        self.sources, self.channels, self.rows = sources, tuple(channels), rows
        self.stop_x, self.reader = stop_x, reader
        self.held: list[np.ndarray] | None = None  # per channel: (rows, columns held_x[0]:held_x[1])
        self.held_x = (0, 0)

    def window(self, x0: int, x1: int) -> list[np.ndarray]:
        """Columns [x0, x1) of each channel (views into what is held until :meth:`release`)."""
        start, stop = self.held_x
        if self.held is None or not start <= x0 <= stop:
            self.held, start, stop = None, x0, x0
        if x1 > stop and self.channels:
            end = min((e for e in self.sources.x_edges if e >= x1), default=self.sources.x_edges[-1])
            end = max(x1, min(end, self.stop_x)) if self.stop_x is not None else end
            fresh = [np.empty((self.rows[1] - self.rows[0], end - x0), self.sources.arrays[c].dtype)
                     for c in self.channels]
            if self.held is not None:
                for target, old in zip(fresh, self.held):
                    target[:, : stop - x0] = old[:, x0 - start :]
            self.sources.read(self.rows, (stop, end), [f[:, stop - x0 :] for f in fresh], self.channels,
                              reader=self.reader)
            self.held, self.held_x = fresh, (x0, end)
            start = x0
        return [h[:, x0 - start : x1 - start] for h in self.held or ()]

    def release(self, next_x0: int | None) -> None:
        """Keep only the columns from ``next_x0`` (the next window's first) on."""
        start, stop = self.held_x
        if self.held is None or next_x0 is None or not start <= next_x0 < stop:
            self.held = None
        elif next_x0 > start:
            self.held = [h[:, next_x0 - start :].copy() for h in self.held]
            self.held_x = (next_x0, stop)


def _cells_band(plan: CellPlan, blocks: tuple[_Block, ...], sources: _Sources, reader: int,
                count_channels: tuple[int, ...] = ()) -> tuple[list[CellRecords], list]:
    """Run :func:`block_records` on consecutive blocks of one block row, reading each source chunk once.

    Columns that neighbouring windows share are read once (see :class:`_BandWindows`). The
    marker windows are read only once a window's nuclei are known, so the segmentation's
    temporaries and the marker pixels are never held together; each window holds the same
    pixels as if read on its own. ``reader``: the band's index among the regions shared
    through ``sources``. A block with a counter first counts its core into the evidence maps
    from ``count_channels`` (the source of each role; sources past the markers are read for
    that alone): the one read serves both passes. Returns the segmented blocks' records and
    the count results.
    """
    rows, stop_x = blocks[0].window[:2], blocks[-1].window[3]
    n_cell_sources = 1 + len(plan.markers)
    nuclear = _BandWindows(sources, [0], rows, stop_x=stop_x, reader=reader)
    channels = range(1, n_cell_sources)
    markers = [_BandWindows(sources, channels[k : k + MARKER_GROUP], rows, stop_x=stop_x, reader=reader)
               for k in range(0, len(channels), MARKER_GROUP)]
    only_counted = _BandWindows(sources, range(n_cell_sources, len(sources.arrays)), rows, stop_x=stop_x,
                                reader=reader)
    groups = [group for group in (nuclear, *markers, only_counted) if set(group.channels) & set(count_channels)]

    def marker_groups(x0, x1, next_x0):
        for group in markers:
            yield group.window(x0, x1)
            group.release(next_x0)  # before the next group is read

    records, counted = [], []
    try:
        for k, block in enumerate(blocks):
            wy0, wy1, wx0, wx1 = block.window
            next_x0 = blocks[k + 1].window[2] if k + 1 < len(blocks) else None
            if block.counter is not None:  # all roles at once: a pixel's positives are decided together
                held = {}
                for group in groups:
                    held.update(zip(group.channels, group.window(wx0, wx1)))
                counted.extend(_count_core(block, [held[c] for c in count_channels]))
                del held
            if block.segment:
                records.append(block_records(plan, block.core, (wy0, wx0), block.inner, nuclear.window(wx0, wx1)[0],
                                             thresholds=block.thresholds, threshold_origin=block.threshold_origin,
                                             read_markers=functools.partial(marker_groups, wx0, wx1, next_x0)))
            for group in (nuclear, *markers, only_counted):
                group.release(next_x0)
    finally:
        sources.finish(reader)
    return records, counted


COUNT_ROWS = 512  # a core is counted in bands of rows: the counting sweep's contiguous copies stay small


def _count_core(block: _Block, windows: list[np.ndarray]) -> list:
    """Count ``block``'s core into the evidence maps, band by band of rows, from its windows (one per role)."""
    y0, y1, x0, x1 = block.core
    wy0, wx0 = block.window[0], block.window[2]
    return [block.counter.count(top, x0, *[w[top - wy0 : min(top + COUNT_ROWS, y1) - wy0, x0 - wx0 : x1 - wx0]
                                           for w in windows])
            for top in range(y0, y1, COUNT_ROWS)]


# marker channels read and summed together: fewer windows held at a time (4 uint16 windows take twice the
# memory of the window's labels) against one more pass over the labels per group (at most
# cell_kernels.MARKER_SLOTS: larger groups are summed marker by marker)
MARKER_GROUP = 4


def _halo_on_edges(chunks: tuple[int, ...], halo: int) -> tuple[int, ...]:
    """``chunks`` with each inner edge moved ``halo`` px back, so that a window's far halo ends on the old edge.

    The old edges are storage-tile edges: a window reaching ``halo`` px past one would decode
    the whole next row (or column) of tiles for those pixels, which the next block then
    decodes again as its core (a quarter of a 2048-px block's tiles). Moved back, the next
    block instead needs ``2 * halo`` px of tiles this one decoded, a strip the shared blocks
    keep cheaply (see :class:`_SharedBlocks`).
    """
    if len(chunks) < 2 or chunks[0] <= 2 * halo:
        return chunks
    edges = np.cumsum(chunks)
    edges[:-1] -= halo
    return tuple(int(size) for size in np.diff(edges, prepend=0))


def _merge_small_last(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    if len(chunks) > 1 and chunks[-1] < minimum:
        return chunks[:-2] + (chunks[-2] + chunks[-1],)
    return chunks


def cell_pass(channels, plan: CellPlan, *, segment: np.ndarray, halo_source=None, threshold_maps=None,
              counting=None, count_channels: tuple[int, ...] = (), done=frozenset(), consume=None, scheduler=None,
              num_workers=None) -> tuple[list[CellRecords], frozenset]:
    """Run the block pass over lazy (Y, X) channel arrays that share one chunk grid.

    ``channels`` are the nuclear stain, then ``plan.markers``, then any channels read only
    for ``counting``. Each chunk is one block core, read with its halo from ``halo_source``
    (the same channels chunked about one storage tile; default: the arrays themselves). One
    task runs up to ``BAND_BLOCKS`` neighbouring blocks of a block row left to right and keeps
    the columns the next window shares with the last (see :func:`_cells_band`): a tile is
    decoded once per band of blocks rather than once per window (and the tiles where block
    rows meet once per process, see :class:`_SharedBlocks`), and memory holds one band window
    per worker whatever the slide size.

    A block is segmented where its core touches ``segment`` (a bool grid of
    ``plan.coarse_factor`` px per cell) and its core is not in ``done`` (cores segmented
    before). ``threshold_maps`` (1 + markers, rows, cols), on the grid of ``plan.grid_factor``
    px, give local thresholds (nuclear stain first) in place of the plan's global ones: an
    array, or any object cut the same way (``maps[:, rows, cols]``) such as
    :class:`tlsquant.steps.cells.ThresholdMaps`. ``counting``, a
    :class:`tlsquant.segment.evidence.EvidenceCounting`, has every block's core counted into
    the evidence maps in the same read (``count_channels``: the channel of each of its roles),
    whether segmented or not. Returns the segmented blocks' records, in raster order, and
    their cores; with ``consume`` (e.g. :meth:`CellTally.add`) each record is handed to it as
    its task ends instead, and not kept.
    """
    halo = plan.halo_px
    n_cell_sources = 1 + len(plan.markers)
    height, width = channels[0].shape
    chunks = channels[0].chunks
    if halo_source is not None:  # cores are geometry only: the pixels come through the halo source's tiles
        chunks = tuple(_halo_on_edges(c, halo) for c in chunks)
    y_chunks, x_chunks = (_merge_small_last(c, halo + 1) for c in chunks)
    if (y_chunks, x_chunks) != channels[0].chunks:
        channels = tuple(c.rechunk((y_chunks, x_chunks)) for c in channels)
    halo_source = tuple(halo_source) if halo_source is not None else tuple(channels)
    if counting is None:
        halo_source = halo_source[:n_cell_sources]
    sources = _Sources(halo_source)
    rows_of_blocks: dict[int, list[_Block | None]] = {}
    for i, j, y0, x0, ch_y, ch_x in block_grid(y_chunks, x_chunks):
        core = (y0, y0 + ch_y, x0, x0 + ch_x)
        # halo only on inner sides: along a slide edge every chunking sees the same pixels
        inner = (i > 0, i < len(y_chunks) - 1, j > 0, j < len(x_chunks) - 1)
        window = (y0 - halo if inner[0] else 0, y0 + ch_y + halo if inner[1] else height,
                  x0 - halo if inner[2] else 0, x0 + ch_x + halo if inner[3] else width)
        segmented = core not in done and core_touches(segment, core, plan.coarse_factor)
        if not segmented and counting is None:  # no cell centred in this core could count: nothing is read
            rows_of_blocks.setdefault(i, []).append(None)
            continue
        thresholds, origin = None, (0, 0)
        if threshold_maps is not None and segmented:
            f = plan.grid_factor
            rows = slice(window[0] // f, -(-window[1] // f))
            cols = slice(window[2] // f, -(-window[3] // f))
            # a view (or pieces made in the task), not a copy: every block's cut-outs would add up to the whole maps
            thresholds, origin = threshold_maps[:, rows, cols], (rows.start, cols.start)
        counter = counting.counter(y0, x0, ch_y, ch_x) if counting is not None else None
        rows_of_blocks.setdefault(i, []).append(_Block(core, inner, window, segmented, thresholds, origin, counter))
    # long runs decode fewer halo tiles twice; short runs keep every worker busy (about 4 tasks each)
    blocks_read = sum(block is not None for row in rows_of_blocks.values() for block in row)
    run_length = max(1, min(BAND_BLOCKS, blocks_read // (4 * (num_workers or os.cpu_count() or 1))))
    runs = []
    for row in rows_of_blocks.values():
        run: list[_Block] = []
        for block in [*row, None]:  # runs of blocks read, at most run_length long
            if block is not None:
                run.append(block)
            if run and (block is None or len(run) == run_length):
                runs.append(tuple(run))
                run = []
    sources.share([((run[0].window[0], run[0].window[1]), (run[0].window[2], run[-1].window[3])) for run in runs])
    # keys in raster order of the runs: dask then runs them in that order, and a block row finds the tiles it
    # shares with the row above still kept (see _SharedBlocks)
    token = dask.base.tokenize(plan, runs, sources, tuple(count_channels))
    tasks = [dask.delayed(_cells_band)(plan, run, sources, k, tuple(count_channels),
                                       dask_key_name=f"cells-band-{k:06d}-{token}")
             for k, run in enumerate(runs)]
    records: list[CellRecords] = []
    cores: list[tuple[int, int, int, int]] = []

    def add(result) -> None:
        cores.extend(record.core for record in result[0])
        for record in result[0]:
            if consume is not None:
                consume(record)
            else:
                records.append(record)
        for counted in result[1]:
            counting.add(counted)

    try:
        if tasks:  # a step with no block to read says so, not "0 blocks"
            compute_blocks(tasks, scheduler=scheduler, num_workers=num_workers, consume=add)
    finally:
        _SHARED_BLOCKS.discard({a.name for a in sources.arrays})
    records.sort(key=lambda r: r.core)  # raster order, whatever order the tasks ended in
    return records, frozenset(cores) | frozenset(done)


def compute_cells(nuclear_stain, markers, plan: CellPlan, *, tissue, tumour, debris, tls_labels, margin=None,
                  halo_source=None, threshold_maps=None, scheduler=None,
                  num_workers=None) -> CellCounts:
    """Segment and count the cells of a slide into its regions: :func:`cell_pass`, each block's cells counted by a
    :class:`CellTally` as its task ends.

    Blocks whose core holds no tissue are not read. ``tissue`` / ``tumour`` (coarse grid) and
    ``debris`` / ``tls_labels`` (fine grid) are the slide's masks (``margin``, coarse: the
    peritumoral band, optional); ``halo_source`` and ``threshold_maps`` as for :func:`cell_pass`.
    """
    tally = CellTally(plan, tissue=tissue, tumour=tumour, debris=debris, tls_labels=tls_labels, margin=margin)
    cell_pass((nuclear_stain, *markers), plan, segment=tissue, halo_source=halo_source, threshold_maps=threshold_maps,
              consume=tally.add, scheduler=scheduler, num_workers=num_workers)
    return tally.result()
