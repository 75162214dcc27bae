"""SmoothedDensity (the B-cell density read box by box) against the whole smoothed map; fill_holes against scipy."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from tlsquant.segment.aggregates import SmoothedDensity, aggregate_candidates, grow_to_half_level
from tlsquant.segment.regions import fill_holes, smooth


def _occupancy(seed: int, shape=(301, 257)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    occupancy = rng.random(shape) < 0.08
    for _ in range(6):  # dense aggregates, some at the edges
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(5, 20)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        occupancy |= ((yy - y) ** 2 + (xx - x) ** 2 <= r * r) & (rng.random(shape) < 0.8)
    return occupancy


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("band_rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("sigma_um", [0.0, 6.0, 15.0])
def test_boxes_and_bands_equal_the_whole_map(band_rows, sigma_um, threads):
    occupancy = _occupancy(1)
    whole = smooth(occupancy, sigma_um=sigma_um, bin_um=2.0)
    density = SmoothedDensity(occupancy, sigma_um=sigma_um, bin_um=2.0, band_rows=band_rows, threads=threads)
    assert np.array_equal(density.above(0.25), whole > 0.25)
    for box in [(slice(0, 10), slice(0, 10)), (slice(290, 400), slice(250, 257)), (slice(100, 180), slice(3, 200)),
                (slice(None), slice(None)), (slice(0, 301), slice(120, 121))]:
        assert np.array_equal(density[box], whole[box]), box


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_outlines_are_those_of_the_whole_map(seed):
    occupancy = _occupancy(seed)
    whole = smooth(occupancy, sigma_um=6.0, bin_um=2.0)
    lazy = SmoothedDensity(occupancy, sigma_um=6.0, bin_um=2.0, band_rows=50)
    options = dict(seed=0.25, min_plateau=0.3, edge_fraction=0.5, reach=12)
    mask, levels = grow_to_half_level(whole, **options)
    assert mask.any()
    lazy_mask, lazy_levels = grow_to_half_level(lazy, **options)
    assert np.array_equal(mask, lazy_mask) and levels == lazy_levels
    settings = dict(bin_um=2.0, sigma_um=6.0, min_b_fraction=0.25, min_b_plateau=0.3, edge_fraction=0.5,
                    t_zone_width_um=20.0)
    a, b = aggregate_candidates(whole, **settings), aggregate_candidates(lazy, **settings)
    assert np.array_equal(a.labels, b.labels) and a.levels == b.levels
    assert [(box, region.tolist(), area) for box, region, area in a.outlines] == \
        [(box, region.tolist(), area) for box, region, area in b.outlines]


@pytest.mark.parametrize("structure", [None, np.ones((3, 3), bool)])
def test_fill_holes_equals_scipy(structure):
    rng = np.random.default_rng(7)
    for _ in range(200):
        mask = rng.random(tuple(rng.integers(1, 40, 2))) < rng.uniform(0.2, 0.9)
        assert np.array_equal(fill_holes(mask, structure), ndi.binary_fill_holes(mask, structure=structure))
    assert np.array_equal(fill_holes(np.ones((4, 5), bool)), np.ones((4, 5), bool))
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    assert fill_holes(ring)[3, 3] and not fill_holes(ring)[0, 0]
