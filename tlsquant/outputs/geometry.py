"""Outlines of grid masks as polygons in level-0 pixels, and the colours of each class."""

from __future__ import annotations

import numpy as np
from skimage import measure

# QuPath-style classes (name, RGB)
STAGE_COLOURS = {
    "mature": (230, 40, 200),
    "primary": (40, 200, 230),
    "secondary_follicle": (230, 40, 200),
    "primary_follicle": (250, 170, 40),
    "early": (40, 200, 230),
}
TUMOUR_COLOUR = (200, 0, 0)


def outline_polygons(mask: np.ndarray, factor: int, *, tolerance: float = 0.4) -> list[list[list[float]]]:
    """Outer rings of ``mask``'s connected pieces in level-0 pixel coordinates (x, y).

    ``mask`` lives on a grid of ``factor`` level-0 px per cell; its holes are filled
    upstream, so each piece gives one ring. Rings are closed, have positive signed
    (shoelace) area as RFC 7946 asks of exterior rings, and follow cell edges. Largest first.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    rings = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance=tolerance)
        if len(contour) < 4:
            continue
        # padded index i is grid cell i-1; the 0.5 contour runs along cell edges: x = (col - 0.5) * factor
        xy = [[round(float((c - 0.5) * factor), 2), round(float((r - 0.5) * factor), 2)] for r, c in contour]
        if xy[0] != xy[-1]:
            xy.append(list(xy[0]))
        area = _ring_area(xy)
        if area != 0:
            rings.append(xy if area > 0 else xy[::-1])
    return sorted(rings, key=lambda ring: -_ring_area(ring))


def _ring_area(ring) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]))
