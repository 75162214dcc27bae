"""Threshold methods against independent computations; the tile sample is deterministic."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from skimage import filters

from tlsquant.config import ThresholdRule
from tlsquant.thresholds import estimate_threshold, read_windows, sample_pixels, sample_windows


@pytest.fixture
def bimodal(rng):
    return np.concatenate([rng.normal(100, 5, 9000), rng.normal(400, 20, 1000)])


def test_mad_is_median_plus_k_robust_sd(bimodal):
    median = np.median(bimodal)
    mad = np.median(np.abs(bimodal - median))
    assert estimate_threshold(bimodal, ThresholdRule(method="mad", k=4)) == pytest.approx(median + 4 * 1.4826 * mad)
    # it lands between background and the positive class
    assert 110 < estimate_threshold(bimodal, ThresholdRule(method="mad", k=6)) < 300


@pytest.mark.parametrize("method, reference", [
    ("otsu", lambda v: filters.threshold_otsu(v, nbins=1024)),
    ("triangle", lambda v: filters.threshold_triangle(v, nbins=1024)),
    ("percentile", lambda v: np.percentile(v, 95)),
])
def test_methods_match_their_reference(bimodal, method, reference):
    assert estimate_threshold(bimodal, ThresholdRule(method=method, percentile=95)) == pytest.approx(reference(bimodal))


def test_li_and_fixed(bimodal):
    assert 100 < estimate_threshold(bimodal, ThresholdRule(method="li")) < 400
    assert estimate_threshold(bimodal, ThresholdRule(method="fixed", value=123.0)) == 123.0


def test_flat_integer_background_does_not_give_a_zero_margin():
    values = np.r_[np.zeros(1000), np.full(10, 50.0), np.arange(1, 40.0)]
    threshold = estimate_threshold(values, ThresholdRule(method="mad", k=3))
    assert threshold > 0
    with pytest.raises(ValueError, match="empty sample"):
        estimate_threshold(np.array([np.nan]), ThresholdRule())


def test_sample_windows_cover_the_slide_and_do_not_depend_on_chunks(rng):
    boxes = sample_windows((3000, 4000), windows=16, window_px=128)
    assert 12 <= len(boxes) <= 20
    ys = [b[0].start for b in boxes]
    xs = [b[1].start for b in boxes]
    assert min(ys) < 500 and max(ys) > 2300 and min(xs) < 500 and max(xs) > 3300
    assert all(b[0].stop - b[0].start == 128 for b in boxes)
    assert sample_windows((100, 120), windows=16, window_px=128) == [(slice(0, 100), slice(0, 120))]
    image = rng.integers(0, 1000, (600, 700)).astype(np.uint16)
    boxes = sample_windows(image.shape, windows=9, window_px=64)
    results = [sample_pixels([da.from_array(image, chunks=c)], boxes)[0] for c in (50, 128, 700)]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    expected = np.concatenate([image[b].ravel() for b in boxes]).astype(float)
    np.testing.assert_array_equal(results[0], expected)


@pytest.mark.parametrize("scheduler", [None, "sync", "threads"])
def test_windows_read_directly_equal_dask_slicing(scheduler):
    """read_windows runs the chunks' tasks itself: the same pixels as dask's slicing, for windows that
    cross chunk edges, share chunks, run past the image edge, and for rechunked graphs."""
    image = np.random.default_rng(5).integers(0, 4000, (2, 300, 410), dtype=np.uint16)
    boxes = [(slice(0, 64), slice(0, 64)), (slice(40, 140), slice(90, 250)), (slice(250, 364), slice(380, 444)),
             (slice(45, 140), slice(100, 150))]
    for channels in ([da.from_array(image[0], chunks=(64, 96)), da.from_array(image[1], chunks=(64, 96))],
                     [da.from_array(image[0], chunks=50).rechunk((128, 77)), da.from_array(image[1], chunks=300) + 1]):
        read = read_windows(channels, boxes, scheduler=scheduler)
        for channel, windows in zip(channels, read):
            assert len(windows) == len(boxes)
            for box, window in zip(boxes, windows):
                expected = channel[box].compute(scheduler="sync")
                assert window.dtype == expected.dtype and np.array_equal(window, expected)
