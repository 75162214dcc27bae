"""Grid masks to polygons with holes and back, in level-0 pixel coordinates.

A mask cell ``(row, col)`` on a grid of ``factor`` level-0 px per cell covers
``[col * factor, (col + 1) * factor)`` in x (and likewise in y); its centre is at
``(col + 0.5) * factor``. Outlines follow cell edges (marching squares at 0.5, so corners
touching only diagonally are cut), and :func:`rasterise` takes a cell as inside when its
centre is: a mask written with :func:`mask_polygons` rasterises back to itself exactly,
which is what lets reviewed outlines be measured on the grid the analysis used.

A polygon is a list of rings ``[exterior, hole, ...]``; a ring a closed list of ``[x, y]``.
Exteriors have positive shoelace area with y down (RFC 7946's right-hand rule as seen on an
image), holes negative.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, measure

from .compiled import compiled_or_python
from .segment.regions import fill_holes

# Douglas-Peucker tolerance in grid bins: below the 0.35-cell clearance of every cell centre
# from a marching-squares outline, so simplified outlines still rasterise to the same cells
SIMPLIFY_CELLS = 0.2
FOUR = ndi.generate_binary_structure(2, 1)
EIGHT = ndi.generate_binary_structure(2, 2)

Ring = list[list[float]]
Polygon = list[Ring]


def ring_area(ring) -> float:
    """Signed shoelace area of a closed ring (positive: exterior orientation, y down)."""
    xy = np.asarray(ring, dtype=np.float64)
    if len(xy) < 3:
        return 0.0
    x, y = xy[:, 0], xy[:, 1]
    return float(0.5 * np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _douglas_peucker_loops(coords: np.ndarray, tolerance: float) -> np.ndarray:  # pragma: no cover - runs compiled
    """The points Douglas-Peucker keeps (a bool per point), as skimage's ``approximate_polygon`` chooses them.

    The distance to a segment is |cross product| / length rather than skimage's rotation by
    atan2/sin/cos: the same value, but from correctly rounded operations only, so a point at
    exactly the tolerance (common on a half-cell lattice) is decided alike on every machine.
    """
    n = coords.shape[0]
    chain = np.zeros(n, np.bool_)
    chain[0] = True
    chain[n - 1] = True
    stack = [(0, n - 1)]
    while len(stack):
        start, end = stack.pop()
        r0, c0 = coords[start, 0], coords[start, 1]
        r1, c1 = coords[end, 0], coords[end, 1]
        dr, dc = r1 - r0, c1 - c0
        length = math.sqrt(dr * dr + dc * dc)
        farthest, worst = -1, -1.0
        for k in range(start + 1, end):
            dr0, dc0 = coords[k, 0] - r0, coords[k, 1] - c0
            dr1, dc1 = coords[k, 0] - r1, coords[k, 1] - c1
            if dr0 * dr + dc0 * dc > 0 and -dr1 * dr - dc1 * dc > 0:  # projects inside the segment
                distance = abs(dr0 * dc - dc0 * dr) / length
            else:
                distance = min(math.sqrt(dc0 * dc0 + dr0 * dr0), math.sqrt(dc1 * dc1 + dr1 * dr1))
            if distance > worst:  # the first of equal maxima, as argmax
                farthest, worst = k, distance
        if worst > tolerance:
            stack.append((farthest, end))
            stack.append((start, farthest))
            chain[farthest] = True
    return chain


def simplify(coords: np.ndarray, tolerance: float) -> np.ndarray:
    """``coords`` (K, 2) simplified by Douglas-Peucker: the points skimage's ``approximate_polygon`` keeps.

    Compiled: outlines of large tissue pieces have tens of thousands of points, and the
    vectorised version pays numpy's overhead once per segment.
    """
    if tolerance <= 0 or len(coords) < 3:
        return coords
    return coords[compiled_or_python(_douglas_peucker_loops)(np.ascontiguousarray(coords, np.float64), float(tolerance))]


def _rings(mask: np.ndarray, factor: int, offset: tuple[int, int], *, fully_connected: str) -> list[Ring]:
    padded = np.pad(mask.astype(np.uint8), 1)
    rings = []
    origin = np.asarray((offset[0] - 0.5, offset[1] - 0.5))
    for contour in measure.find_contours(padded, 0.5, fully_connected=fully_connected):
        contour = simplify(contour, SIMPLIFY_CELLS)
        if len(contour) < 4:
            continue
        # padded index i is cell i - 1 of the box; the 0.5 contour runs along cell edges (half cells:
        # exact in binary, so the rounding only tidies the decimal form)
        xy = np.round((contour + origin)[:, ::-1] * factor, 3).tolist()
        if xy[0] != xy[-1]:
            xy.append(list(xy[0]))
        if ring_area(xy) != 0:
            rings.append(xy)
    return rings


def _oriented(ring: Ring, *, exterior: bool) -> Ring:
    return ring if (ring_area(ring) > 0) == exterior else ring[::-1]


def mask_polygons(mask: np.ndarray, factor: int, *, offset: tuple[int, int] = (0, 0)) -> list[Polygon]:
    """Polygons (exterior and holes) of ``mask``'s 4-connected pieces, in level-0 px, largest first.

    Parameters
    ----------
    mask : (Y, X) bool array
        A mask on a grid of ``factor`` level-0 px per cell.
    factor : int
        Level-0 px per grid bin side.
    offset : (row, col)
        Grid position of ``mask[0, 0]`` (when ``mask`` is a crop of a larger grid).

    Returns
    -------
    list of polygons, each ``[exterior, *holes]``.
    """
    try:  # uint16 while the pieces fit: a whole-slide grid's labels at half int32's memory
        labels, count = ndi.label(mask, structure=FOUR, output=np.uint16)
    except RuntimeError:
        labels, count = ndi.label(mask, structure=FOUR)
    polygons = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        piece = labels[box] == index
        filled = fill_holes(piece, FOUR)
        origin = (offset[0] + box[0].start, offset[1] + box[1].start)
        outer = _rings(filled, factor, origin, fully_connected="low")
        if not outer:
            continue
        exterior = _oriented(max(outer, key=lambda ring: abs(ring_area(ring))), exterior=True)
        holes = []
        inside = filled & ~piece
        if not inside.any():  # most pieces (specks) have no hole
            polygons.append([exterior])
            continue
        gaps, n_gaps = ndi.label(inside, structure=EIGHT)  # the background is 8-connected
        for gap_index, gap_box in enumerate(ndi.find_objects(gaps), start=1):
            gap = gaps[gap_box] == gap_index
            gap_offset = (origin[0] + gap_box[0].start, origin[1] + gap_box[1].start)
            rings = _rings(fill_holes(gap, EIGHT), factor, gap_offset, fully_connected="high")
            if rings:
                holes.append(_oriented(max(rings, key=lambda ring: abs(ring_area(ring))), exterior=False))
        polygons.append([exterior, *holes])
    return sorted(polygons, key=lambda polygon: -ring_area(polygon[0]))


def rasterise(polygons, shape: tuple[int, int], factor: float) -> np.ndarray:
    """Grid cells (``shape``, ``factor`` level-0 px each) whose centre lies inside ``polygons``.

    Each polygon is its exterior minus its holes; polygons are united. Rings may have any
    orientation; a self-intersecting ring fills by the even-odd rule.
    """
    mask = np.zeros(shape, bool)
    for polygon in polygons:
        if not polygon:
            continue
        piece = _ring_cells(polygon[0], shape, factor)
        for hole in polygon[1:]:
            piece &= ~_ring_cells(hole, shape, factor)
        mask |= piece
    return mask


def _ring_cells(ring, shape, factor) -> np.ndarray:
    xy = np.asarray(ring, dtype=np.float64)
    cells = np.zeros(shape, bool)
    if len(xy) < 3:
        return cells
    # grid coordinates in which integer positions are cell centres
    rows, cols = draw.polygon(xy[:, 1] / factor - 0.5, xy[:, 0] / factor - 0.5, shape)
    cells[rows, cols] = True
    return cells


def self_intersects(ring) -> bool:
    """Whether two non-adjacent edges of a closed ring cross or touch (a bow-tie, a figure eight)."""
    xy = np.asarray(ring, dtype=np.float64)
    if len(xy) > 1 and (xy[0] == xy[-1]).all():
        xy = xy[:-1]
    n = len(xy)
    if n < 4:
        return False
    a, b = xy, np.roll(xy, -1, axis=0)
    for i in range(n - 2):
        j = np.arange(i + 2, n if i > 0 else n - 1)  # skip the edge itself and its two neighbours
        if not len(j):
            continue
        if np.any(_cross(a[i], b[i], a[j], b[j])):
            return True
    return False


def _cross(p, q, r, s) -> np.ndarray:
    """Whether segment p-q intersects each segment r[k]-s[k] (proper crossings and touches)."""
    def orient(u, v, w):
        return np.sign((v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0]))

    o1, o2 = orient(p, q, r), orient(p, q, s)
    o3, o4 = orient(r, s, p), orient(r, s, q)
    proper = (o1 * o2 < 0) & (o3 * o4 < 0)

    def on_segment(u, v, w):  # w collinear with u-v and within its box
        return ((np.minimum(u[..., 0], v[..., 0]) <= w[..., 0]) & (w[..., 0] <= np.maximum(u[..., 0], v[..., 0]))
                & (np.minimum(u[..., 1], v[..., 1]) <= w[..., 1]) & (w[..., 1] <= np.maximum(u[..., 1], v[..., 1])))

    touch = (((o1 == 0) & on_segment(p, q, r)) | ((o2 == 0) & on_segment(p, q, s))
             | ((o3 == 0) & on_segment(r, s, np.broadcast_to(p, r.shape)))
             | ((o4 == 0) & on_segment(r, s, np.broadcast_to(q, r.shape))))
    return proper | touch


def _bin_sides(count: int, start: int, factor: int, size: int) -> np.ndarray:
    """Level-0 px covered by each of ``count`` bins from bin ``start`` on (the slide's edge cuts the last)."""
    return np.minimum(factor, size - (start + np.arange(count, dtype=np.int64)) * factor).clip(0)


def mask_pixels(mask: np.ndarray, factor: int, slide_shape: tuple[int, int], *, offset: tuple[int, int] = (0, 0)) -> int:
    """Level-0 pixels covered by the bins of ``mask`` (its first bin at grid ``offset``): exact, whatever the grid size.

    The same number as ``cell_pixels(...)[mask].sum()`` without a float64 map of the grid
    (0.56 GB on a 40k x 30k slide's fine grid): integer sums, band by band.
    """
    rows = _bin_sides(mask.shape[0], offset[0], factor, slide_shape[0])
    cols = _bin_sides(mask.shape[1], offset[1], factor, slide_shape[1])
    total = 0
    for y in range(0, mask.shape[0], 256):
        total += int(rows[y : y + 256] @ (mask[y : y + 256].astype(np.int64) @ cols))
    return total


def cell_pixels(shape: tuple[int, int], factor: int, slide_shape: tuple[int, int]) -> np.ndarray:
    """Level-0 pixels in each grid bin (cells at the right and bottom edges are cut by the slide)."""
    rows = np.minimum(factor, slide_shape[0] - np.arange(shape[0]) * factor).clip(0)
    cols = np.minimum(factor, slide_shape[1] - np.arange(shape[1]) * factor).clip(0)
    return np.outer(rows, cols).astype(np.float64)
