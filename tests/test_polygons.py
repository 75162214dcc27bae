"""Outline simplification: skimage's Douglas-Peucker, compiled, and decided alike on every machine."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure

from tlsquant.compiled import compiled
from tlsquant.polygons import _douglas_peucker_loops, mask_polygons, rasterise, simplify


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point to the segment a-b (an independent, vectorised formula)."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-300), 0, 1)
    return np.hypot(*(points - (a + t[:, None] * ab)).T)


@pytest.mark.parametrize("tolerance", [0.2, 1.0, 3.0])
def test_simplify_keeps_the_points_skimage_keeps_where_no_distances_tie(tolerance):
    rng = np.random.default_rng(1)
    for _ in range(50):
        chain = np.cumsum(rng.normal(size=(rng.integers(3, 300), 2)), axis=0)  # no two distances equal
        assert np.array_equal(simplify(chain, tolerance), measure.approximate_polygon(chain, tolerance))


def test_simplify_on_a_lattice_is_a_valid_douglas_peucker_chain():
    """Half-cell outlines tie often; every dropped point still lies within the tolerance of the kept chain."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    dropped = 0
    for _ in range(40):
        mask = ndi.binary_opening(rng.random((50, 50)) < 0.55, iterations=int(rng.integers(0, 3)))
        for contour in measure.find_contours(np.pad(mask.astype(np.uint8), 1), 0.5):
            keep = _douglas_peucker_loops(contour, 0.4)
            assert np.array_equal(compiled(_douglas_peucker_loops)(contour, 0.4), keep)  # compiled = Python
            index = np.flatnonzero(keep)
            assert index[0] == 0 and index[-1] == len(contour) - 1
            for start, end in zip(index[:-1], index[1:]):
                between = contour[start + 1 : end]
                assert (_segment_distance(between, contour[start], contour[end]) <= 0.4 + 1e-12).all()
                dropped += len(between)
    assert dropped > 100


def test_simplified_outlines_rasterise_back_on_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = ndi.binary_opening(rng.random((40, 60)) < 0.6, iterations=int(rng.integers(0, 2)))
        assert (rasterise(mask_polygons(mask, 4), mask.shape, 4) == mask).all()


def test_mask_pixels_equals_the_per_bin_pixel_map():
    """Areas counted band by band equal summing the whole grid's per-bin pixel map, with offsets and cut edges."""
    from tlsquant.polygons import cell_pixels, mask_pixels

    rng = np.random.default_rng(4)
    for _ in range(40):
        shape = tuple(int(v) for v in rng.integers(1, 700, 2))
        factor = int(rng.integers(1, 17))
        slide = (shape[0] * factor - int(rng.integers(0, factor)), shape[1] * factor - int(rng.integers(0, factor)))
        mask = rng.random(shape) < rng.random()
        pixels = cell_pixels(shape, factor, slide)
        assert mask_pixels(mask, factor, slide) == pixels[mask].sum()
        oy, ox = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        assert mask_pixels(mask[oy:, ox:], factor, slide, offset=(oy, ox)) == pixels[oy:, ox:][mask[oy:, ox:]].sum()
