"""The signal model's shortcuts give exactly the numbers of the plain computations they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from tlsquant.background import ChannelModel, SignalModel, _dilate_square, _sample_residuals, expand, low_order, thin, window_sample


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_low_order_equals_partition_bit_for_bit(dtype):
    rng = np.random.default_rng(3)
    for trial in range(200):
        count = int(rng.integers(2, 9))
        layers = [(rng.integers(-2, 3, (6, 7)) * 0.5).astype(dtype) for _ in range(count)]
        for layer in layers:  # values equal but for their bits: -0 against +0, NaNs
            layer[rng.random(layer.shape) < 0.15] = -0.0
            layer[rng.random(layer.shape) < 0.1] = np.nan
        for order in (0, 1):
            expected = np.partition(np.stack(layers), order, axis=0)[order]
            assert low_order(layers, order).tobytes() == expected.tobytes(), (trial, order)


def test_square_dilation_equals_scipy():
    rng = np.random.default_rng(4)
    for _ in range(100):
        mask = rng.random(tuple(int(n) for n in rng.integers(1, 25, 2))) < rng.uniform(0, 0.3)
        np.testing.assert_array_equal(_dilate_square(mask), ndi.binary_dilation(mask, np.ones((3, 3), bool)))


def _whole_windows(model: SignalModel, name: str, windows: list[np.ndarray], boxes) -> tuple[np.ndarray, np.ndarray]:
    """The residual sample as taken before: every window's residual on tissue, concatenated, then thinned."""
    on_tissue, on_glass = [], []
    for box, values in zip(boxes, windows):
        hint = expand(model.tissue_hint, model.factor, box[0].start, box[1].start, values.shape)
        on_tissue.append(model.residual(name, values, box[0].start, box[1].start)[hint])
        on_glass.append(values[~hint].astype(np.float32))
    tissue_residual = np.concatenate(on_tissue)
    if tissue_residual.size < 1000:
        tissue_residual = np.concatenate([model.residual(name, values, box[0].start, box[1].start).ravel()
                                          for box, values in zip(boxes, windows)])
    return thin(tissue_residual), thin(np.concatenate(on_glass))


@pytest.mark.parametrize("tissue_share", [0.97, 0.0002])  # thinned; too little tissue seen (all pixels instead)
def test_sampled_residuals_equal_whole_windows(tissue_share):
    rng = np.random.default_rng(5)
    factor, grid = 8, (100, 110)
    tissue = rng.random(grid) < tissue_share
    template = (rng.random(grid) * 2).astype(np.float32)
    model = SignalModel(factor, template, tissue, {"CD20": ChannelModel("CD20", "background", 101.5, 37.25, 0, 0, 0, 0)})
    boxes = [(slice(y, y + 260), slice(x, x + 260)) for y in (3, 270, 600) for x in (0, 301, 700)]  # the last cut by the edge
    windows = [rng.integers(0, 4000, (min(box[0].stop, 800) - box[0].start, min(box[1].stop, 880) - box[1].start))
               .astype(np.uint16) for box in boxes]
    sample = window_sample(boxes, [w.shape for w in windows], tissue=tissue, template=template, factor=factor)
    got = _sample_residuals(model, "CD20", {"CD20": windows}, sample)
    expected = _whole_windows(model, "CD20", windows, boxes)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if tissue_share > 0.5:
        assert got[0].size < sum(w.size for w in windows) * tissue_share  # thinned indeed
