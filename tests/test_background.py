"""The signal model: background follows glass, autofluorescence and illumination; thresholds scale with gain."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from tlsquant.background import build_signal_model, expand, residual_stats, tissue_and_glass
from tlsquant.config import ThresholdRule
from tlsquant.io.writers import build_pyramid
from tlsquant.slide import Level, Slide
from tlsquant.thresholds import sample_windows

NAMES = ("DAPI", "CD20", "CD23", "TFE3")
SIZE = 1024  # px at 0.5 µm: 512 µm square


def _field(seed: int = 0, gains=(1.0, 1.0, 1.0, 1.0), crosstalk: float = 0.08) -> tuple[np.ndarray, dict]:
    """Glass on the left quarter; tissue with smooth AF (gradient, brighter stroma band); B cells; TFE3 nuclei.

    CD23 carries ``crosstalk`` of CD20's specific signal and has no stain of its own but a few cells.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    tissue = xx >= SIZE // 4
    af = tissue * (1.0 + 0.4 * np.sin(xx / 300.0) * np.cos(yy / 350.0))
    af *= np.where((yy > 600) & (yy < 760), 1.5, 1.0)  # collagen-rich stroma band
    cells = np.zeros((SIZE, SIZE), np.float32)
    tumour = np.zeros((SIZE, SIZE), np.float32)
    nuclei = np.zeros((SIZE, SIZE), np.float32)
    for cy, cx in rng.uniform([20, SIZE // 4 + 20], [SIZE - 20, SIZE - 20], size=(900, 2)):
        disc = (yy[int(cy) - 8 : int(cy) + 9, int(cx) - 8 : int(cx) + 9] - cy) ** 2 + (
            xx[int(cy) - 8 : int(cy) + 9, int(cx) - 8 : int(cx) + 9] - cx) ** 2
        brightness = rng.lognormal(0, 0.35)
        nuclei[int(cy) - 8 : int(cy) + 9, int(cx) - 8 : int(cx) + 9] += (disc < 36) * brightness
        target = cells if cx < SIZE * 0.6 else tumour
        target[int(cy) - 8 : int(cy) + 9, int(cx) - 8 : int(cx) + 9] += ((disc >= 25) & (disc < 64) if target is cells
                                                                          else disc < 36) * brightness
    rows = {"DAPI": (0.15, nuclei), "CD20": (0.35, cells), "CD23": (0.12, crosstalk * cells), "TFE3": (0.3, tumour)}
    planes = []
    for (name, (af_level, stain)), gain in zip(rows.items(), gains):
        signal = 0.05 + af_level * af + stain + rng.normal(0, 0.02, (SIZE, SIZE))
        planes.append(np.clip(signal * 2000 * gain, 0, 65535).astype(np.uint16))
    return np.stack(planes), {"tissue": tissue, "cells": cells > 0, "tumour": tumour > 0, "af": af}


def _slide(image: np.ndarray) -> Slide:
    levels = tuple(Level(da.from_array(np.asarray(level), chunks=(1, 256, 256)), 2.0**k, 2.0**k)
                   for k, level in enumerate(build_pyramid(image, min_size=128)))
    return Slide(Path("memory.ome.tiff"), "ome-tiff", NAMES, 0.5, 0.5, levels)


def _model(slide: Slide, **kwargs):
    rules = {name: ThresholdRule(fraction=0.4 if name == "DAPI" else 0.25) for name in NAMES}
    boxes = sample_windows(slide.shape[1:], windows=16, window_px=128, align=1)
    options = dict(factor=16, autofluorescence=None, nuclei="DAPI", crosstalk_targets=("CD20", "CD23", "TFE3"),
                   sample_boxes=boxes, window_px=128, tile=1, opening_um=24.0, max_crosstalk=0.25, min_crosstalk=0.01,
                   scheduler="sync")
    options.update(kwargs)
    return build_signal_model(slide, list(NAMES), rules, **options)


@pytest.fixture(scope="module")
def field():
    image, truth = _field()
    return image, truth, _model(_slide(image))


def test_glass_and_tissue_are_told_apart(field):
    _, truth, model = field
    assert model.has_glass
    coarse_truth = truth["tissue"][8::16, 8::16]
    assert (model.tissue_hint == coarse_truth).mean() > 0.97
    assert model.channels["CD20"].glass_level == pytest.approx(0.05 * 2000, rel=0.1)


def test_background_follows_autofluorescence_not_stain(field):
    image, truth, model = field
    # where there is no stain, the background matches the tissue's own level within noise
    for k, name in enumerate(NAMES):
        background = expand(model.background(name), 16, 0, 0, image.shape[1:]) + model.channels[name].offset
        quiet = truth["tissue"] & ~truth["cells"] & ~truth["tumour"]
        residual = image[k][quiet].astype(np.float32) - background[quiet]
        assert abs(np.median(residual)) < 0.1 * np.median(image[k][quiet]), name


def test_positive_pixels_are_stain_not_autofluorescence(field):
    image, truth, model = field
    threshold = expand(model.threshold("CD20"), 16, 0, 0, image.shape[1:])
    positive = image[1] > threshold
    quiet = truth["tissue"] & ~truth["cells"]
    assert positive[quiet].mean() < 0.002  # bright stroma and the AF gradient stay negative
    assert positive[truth["cells"]].mean() > 0.9
    # a single global threshold from glass and tissue together cannot do both
    from tlsquant.thresholds import estimate_threshold

    naive = estimate_threshold(image[1].ravel().astype(np.float32), ThresholdRule(method="mad", k=6.0))
    assert (image[1][quiet] > naive).mean() > 0.2 or (image[1][truth["cells"]] > naive).mean() < 0.8


def test_crosstalk_share_is_measured(field):
    _, _, model = field
    sources = dict(model.crosstalk.get("CD23", ()))
    assert sources.get("CD20") == pytest.approx(0.08, abs=0.02)
    assert "CD23" not in dict(model.crosstalk.get("CD20", ()))


@pytest.mark.parametrize("channel,gain", [(1, 0.5), (1, 2.0), (3, 0.5), (2, 2.0)])
def test_model_scales_with_channel_gain(field, channel, gain):
    _, _, model = field
    gains = [1.0] * 4
    gains[channel] = gain
    scaled_image, _ = _field(gains=tuple(gains))
    scaled = _model(_slide(scaled_image))
    name = NAMES[channel]
    for key in ("glass_level", "margin"):
        assert getattr(scaled.channels[name], key) == pytest.approx(gain * getattr(model.channels[name], key), rel=0.1), key
    np.testing.assert_allclose(scaled.threshold(name)[model.tissue_hint], gain * model.threshold(name)[model.tissue_hint],
                               rtol=0.1)
    for other in NAMES:
        if other != name:
            np.testing.assert_allclose(scaled.threshold(other), model.threshold(other), rtol=0.02)


def test_residual_stats_ignore_a_clipped_floor_and_a_positive_tail(rng):
    background = rng.normal(10.0, 2.0, 200_000)
    values = np.concatenate([np.clip(background, 6.0, None), rng.normal(60.0, 10.0, 20_000)])
    offset, noise, scale, margin = residual_stats(values - 10.0, k=5.0, fraction=0.25, integer=False)
    assert abs(offset) < 0.5 and noise == pytest.approx(2.0, rel=0.2)
    assert scale == pytest.approx(50.0, rel=0.1) and margin == pytest.approx(max(10.0, 12.5), rel=0.15)


def test_no_glass_is_reported_when_tissue_fills_the_field():
    rng = np.random.default_rng(3)
    images = {name: (100 + 20 * rng.random((64, 64))).astype(np.float32) for name in NAMES}
    tissue, levels, found = tissue_and_glass(images)
    assert not found and tissue.all() and all(v == 0.0 for v in levels.values())


@pytest.mark.parametrize("name", ["Autofluorescence", "AF", "Sample AF", "autofluorescence"])
def test_the_af_channel_is_found_under_its_usual_names(name):
    from tlsquant.config import Channels
    from tlsquant.pipeline import resolve_channels

    names = ("DAPI", "CD3", "CD20", "CD21", "CD23", "TFE3", name)
    slide = Slide(Path("x.tif"), "tiff", names, 1.0, 1.0, (Level(da.zeros((7, 16, 16), dtype="uint8"), 1.0, 1.0),))
    roles, _ = resolve_channels(slide, Channels())
    assert roles["autofluorescence"] == name
    assert "autofluorescence" not in resolve_channels(slide, Channels(autofluorescence=""))[0]


def test_typical_positive_signal_is_read_from_the_stain_not_from_autofluorescent_fibres():
    from tlsquant.background import typical_positive

    rng = np.random.default_rng(0)
    fibres = rng.lognormal(np.log(150), 0.3, 6000)  # dim, many: collagen autofluorescence above background
    cells = rng.lognormal(np.log(1500), 0.3, 3000)  # bright: stained nuclei
    assert typical_positive(np.r_[fibres, cells]) == pytest.approx(np.median(cells), rel=0.05)
    # without fibres, or with the bright mode a sprinkle over a dim network (germinal centres over a CD21
    # meshwork), or with modes too close to be two populations: the plain median
    assert typical_positive(cells) == pytest.approx(np.median(cells))
    network = np.r_[rng.lognormal(np.log(150), 0.3, 9300), rng.lognormal(np.log(1200), 0.3, 700)]
    assert typical_positive(network) == np.median(network)
    close = np.r_[rng.lognormal(np.log(400), 0.3, 6000), rng.lognormal(np.log(1000), 0.3, 3000)]
    assert typical_positive(close) == np.median(close)


def _brightest_windows_by_hand(excess, tissue, *, factor, window_px, shape, tile, count, floor):
    """The windows one by one: brightest bin first (ties by position), skipping bins near a picked one."""
    score = np.where(tissue, excess, -np.inf)
    bins = sorted(((-score[r, c], r * score.shape[1] + c) for r, c in zip(*np.nonzero(score > floor))))
    picked, boxes = [], []
    apart = window_px / factor * 2
    for _, index in bins:
        row, col = divmod(index, score.shape[1])
        if len(boxes) < count and not any(abs(row - r) < apart and abs(col - c) < apart for r, c in picked):
            picked.append((row, col))
            cy, cx = int((row + 0.5) * factor), int((col + 0.5) * factor)
            y0 = min(max(0, cy - window_px // 2), max(0, shape[0] - window_px)) // tile * tile
            x0 = min(max(0, cx - window_px // 2), max(0, shape[1] - window_px)) // tile * tile
            boxes.append((slice(y0, min(shape[0], y0 + window_px)), slice(x0, min(shape[1], x0 + window_px))))
    return boxes


def test_brightest_windows_equal_picking_them_one_by_one():
    from tlsquant.background import _brightest_windows

    rng = np.random.default_rng(5)
    picked = 0
    for trial in range(150):
        h, w = (int(v) for v in rng.integers(3, 90, 2))
        excess = rng.normal(0, 1, (h, w)).astype(np.float32)
        if trial % 3 == 0:
            excess = np.round(excess)  # ties, decided by position
        tissue = rng.random((h, w)) < rng.uniform(0.2, 1)
        factor = int(rng.choice([4, 16, 32]))
        options = dict(factor=factor, window_px=int(rng.choice([64, 100, 512])), shape=(h * factor, w * factor),
                       tile=int(rng.choice([1, 64])), count=int(rng.integers(1, 6)), floor=float(rng.uniform(-1, 1.5)))
        got = _brightest_windows(excess, tissue, **options)
        assert got == _brightest_windows_by_hand(excess, tissue, **options)
        picked += len(got)
    assert picked > 200


def test_qc_histograms_equal_binning_by_the_edges_themselves():
    from tlsquant.background import _histogram

    rng = np.random.default_rng(2)
    for trial in range(200):
        low, high = sorted(rng.normal(100, 50, 2))
        edges = np.linspace(low, max(high, low + 1e-6), 97)
        values = rng.normal(low + (high - low) * rng.random(), abs(high - low) + 1, 5000).astype(np.float32)
        values[:40] = edges[rng.integers(0, 97, 40)]  # on the edges exactly, where rounding could move a value
        values[40:50], values[50:60] = np.float32(edges[-1]), np.float32(edges[0])  # float32-rounded ends
        assert _histogram(values, edges) == np.histogram(values, bins=edges)[0].tolist(), trial
