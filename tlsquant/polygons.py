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


def _contours(mask: np.ndarray, *, fully_connected: str) -> list[np.ndarray]:
    """The simplified marching-squares outlines of ``mask`` (index coordinates of the mask padded by one cell),
    those of at least four points."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)  # np.pad costs more than the specks' outlines
    padded[1:-1, 1:-1] = mask
    contours = [simplify(contour, SIMPLIFY_CELLS) for contour in measure.find_contours(padded, 0.5, fully_connected=fully_connected)]
    return [contour for contour in contours if len(contour) >= 4]


def _placed(contours: list[np.ndarray], factor: int, offset: tuple[int, int]) -> list[np.ndarray]:
    """:func:`_contours` of a mask whose first cell is grid ``offset`` as closed rings in level-0 px (K, 2) (x, y),
    those enclosing an area."""
    rings = []
    origin = np.asarray((offset[0] - 0.5, offset[1] - 0.5))
    for contour in contours:
        # padded index i is cell i - 1 of the box; the 0.5 contour runs along cell edges (half cells:
        # exact in binary, so the rounding only tidies the decimal form)
        xy = np.round((contour + origin)[:, ::-1] * factor, 3)
        if (xy[0] != xy[-1]).any():
            xy = np.concatenate([xy, xy[:1]])
        if ring_area(xy) != 0:
            rings.append(xy)
    return rings


def _oriented(ring, *, exterior: bool):
    return ring if (ring_area(ring) > 0) == exterior else ring[::-1]


def _piece_outlines(piece: np.ndarray) -> tuple[list[np.ndarray], list[tuple[tuple[int, int], list[np.ndarray]]]]:
    """A 4-connected piece's outer :func:`_contours` (holes filled) and each hole's, with the hole's box corner."""
    # a hole needs a ring of piece cells around it: none in a box thinner than three cells (most specks)
    filled = fill_holes(piece, FOUR) if min(piece.shape) >= 3 else piece
    outer = _contours(filled, fully_connected="low")
    inside = filled & ~piece
    if not outer or not inside.any():
        return outer, []
    holes = []
    gaps, _ = ndi.label(inside, structure=EIGHT)  # the background is 8-connected
    for gap_index, gap_box in enumerate(ndi.find_objects(gaps), start=1):
        gap = gaps[gap_box] == gap_index
        holes.append(((gap_box[0].start, gap_box[1].start), _contours(fill_holes(gap, EIGHT), fully_connected="high")))
    return outer, holes


def _pieces(mask: np.ndarray):
    """(box, cells in the box) of each 4-connected piece of ``mask``, in the order of ``ndi.label``'s numbers."""
    if np.count_nonzero(mask) > mask.size // SPARSE_FRACTION:
        try:  # uint16 while the pieces fit: a whole-slide grid's labels at half int32's memory
            labels, _ = ndi.label(mask, structure=FOUR, output=np.uint16)
        except RuntimeError:
            labels, _ = ndi.label(mask, structure=FOUR)
        for index, box in enumerate(ndi.find_objects(labels), start=1):
            if box is not None:
                yield box, labels[box] == index
        return
    yield from _sparse_pieces(mask)


SPARSE_FRACTION = 64  # masks with fewer set cells than this fraction of the grid are pieced from their set cells


def _sparse_pieces(mask: np.ndarray):
    """:func:`_pieces` of a mask with few set cells (an artefact mask): from the set cells' neighbours.

    Labelling the whole grid writes every cell (a whole-slide fine grid: 70 M, most of the
    artefact annotation's time) for the few thousand cells set.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    width = mask.shape[1]
    cells = np.flatnonzero(mask)  # raster order
    if not len(cells):
        return
    rows, cols = np.divmod(cells, width)
    links = []
    for step, inside in ((1, cols < width - 1), (width, rows < mask.shape[0] - 1)):  # right and lower neighbours
        found = np.searchsorted(cells, cells + step).clip(max=len(cells) - 1)
        linked = inside & (cells[found] == cells + step)
        links.append((np.flatnonzero(linked), found[linked]))
    start = np.concatenate([link[0] for link in links])
    end = np.concatenate([link[1] for link in links])
    graph = coo_matrix((np.ones(len(start), np.int8), (start, end)), shape=(len(cells), len(cells)))
    _, piece_of = connected_components(graph, directed=False)
    # ndi.label numbers pieces in the raster order of their first cells; cells are in raster order
    first = np.full(piece_of.max() + 1, len(cells))
    np.minimum.at(first, piece_of, np.arange(len(cells)))
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(len(first))
    order = np.argsort(rank[piece_of], kind="stable")
    rows, cols = rows[order], cols[order]
    bounds = np.flatnonzero(np.diff(rank[piece_of][order])) + 1
    starts = np.concatenate([[0], bounds])
    tops, bottoms = np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts)
    lefts, rights = np.minimum.reduceat(cols, starts), np.maximum.reduceat(cols, starts)
    for piece_rows, piece_cols, top, bottom, left, right in zip(np.split(rows, bounds), np.split(cols, bounds),
                                                                tops.tolist(), bottoms.tolist(), lefts.tolist(),
                                                                rights.tolist()):
        piece = np.zeros((bottom - top + 1, right - left + 1), bool)
        piece[piece_rows - top, piece_cols - left] = True
        yield (slice(top, bottom + 1), slice(left, right + 1)), piece


MEMO_CELLS = 4096  # pieces with boxes up to this many cells have their outlines kept for pieces of the same shape


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
    # a piece's outlines depend on its cells only, placed by its corner: artefact specks (single
    # cells, pairs, ...) repeat thousands of times on a slide, each outline found once
    outlines: dict[tuple, tuple] = {}
    polygons = []  # (exterior, holes) as arrays
    for box, piece in _pieces(mask):
        if piece.size <= MEMO_CELLS:
            shape = (piece.shape, piece.tobytes())
            if shape not in outlines:
                outlines[shape] = _piece_outlines(piece)
            outer_contours, hole_contours = outlines[shape]
        else:
            outer_contours, hole_contours = _piece_outlines(piece)
        origin = (offset[0] + box[0].start, offset[1] + box[1].start)
        outer = _placed(outer_contours, factor, origin)
        if not outer:
            continue
        exterior = _oriented(max(outer, key=lambda ring: abs(ring_area(ring))), exterior=True)
        holes = []
        for (top, left), contours in hole_contours:
            rings = _placed(contours, factor, (origin[0] + top, origin[1] + left))
            if rings:
                holes.append(_oriented(max(rings, key=lambda ring: abs(ring_area(ring))), exterior=False))
        polygons.append((exterior, holes))
    polygons.sort(key=lambda polygon: -ring_area(polygon[0]))
    return [[exterior.tolist(), *(hole.tolist() for hole in holes)] for exterior, holes in polygons]


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
    if mask.dtype == bool and np.count_nonzero(mask) <= mask.size // SPARSE_FRACTION:  # an artefact mask: its set cells
        set_rows, set_cols = np.divmod(np.flatnonzero(mask), mask.shape[1])  # a 2-d nonzero costs ten times more
        return int(np.sum(rows[set_rows] * cols[set_cols]))
    total = 0
    for y in range(0, mask.shape[0], 256):
        total += int(rows[y : y + 256] @ (mask[y : y + 256].astype(np.int64) @ cols))
    return total


def cell_pixels(shape: tuple[int, int], factor: int, slide_shape: tuple[int, int]) -> np.ndarray:
    """Level-0 pixels in each grid bin (cells at the right and bottom edges are cut by the slide)."""
    rows = np.minimum(factor, slide_shape[0] - np.arange(shape[0]) * factor).clip(0)
    cols = np.minimum(factor, slide_shape[1] - np.arange(shape[1]) * factor).clip(0)
    return np.outer(rows, cols).astype(np.float64)
