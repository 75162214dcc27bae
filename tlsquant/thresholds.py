"""Global, per-channel positive-pixel thresholds, estimated once per slide.

Thresholds come from a deterministic sample of level-0 windows laid on a regular
lattice over the slide, so they do not depend on chunking or worker count, and one
threshold applies to every tile (never per tile).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from skimage import filters

from .blocks import read_box, runs_in_one_thread
from .config import ThresholdRule

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class ScaledThresholds:
    """One role's thresholds at several scales, each ``base + factor * spread + shift`` (float32).

    Kept as two maps and numbers per scale rather than a map per scale: the pass cuts
    the maps into block pieces and evaluates the scales there, with the same float32
    arithmetic as :func:`scaled_level` on the whole map. A missing map counts as 0.
    """

    base: np.ndarray | None
    spread: np.ndarray | None
    factors: tuple[float, ...]
    shifts: tuple[float, ...]


def scaled_level(base: np.ndarray | None, spread: np.ndarray | None, factor: float, shift: float,
                 shape: tuple[int, int]) -> np.ndarray:
    """``base + factor * spread + shift`` as float32 (a missing map is 0): the same numbers whole or in pieces."""
    level = np.zeros(shape, np.float32) if base is None else base.astype(np.float32, copy=False)
    if spread is not None:
        level = level + np.float32(factor) * spread
    if shift:
        level = level + np.float32(shift)
    return level


def sample_windows(shape_yx: tuple[int, int], *, windows: int, window_px: int,
                   align: int = 1) -> list[tuple[slice, slice]]:
    """A lattice of about ``windows`` square windows covering the slide evenly.

    Window corners snap to multiples of ``align`` (the storage tile), so a window
    decodes only its own tiles. The whole image is one window when it is no larger
    than the windows together.
    """
    height, width = shape_yx
    if height * width <= windows * window_px * window_px:
        return [(slice(0, height), slice(0, width))]
    rows = max(1, round(math.sqrt(windows * height / width)))
    cols = max(1, math.ceil(windows / rows))
    boxes = []
    for i in range(rows):
        for j in range(cols):
            cy = int((i + 0.5) * height / rows)
            cx = int((j + 0.5) * width / cols)
            y0 = min(max(0, cy - window_px // 2), max(0, height - window_px)) // align * align
            x0 = min(max(0, cx - window_px // 2), max(0, width - window_px)) // align * align
            boxes.append((slice(y0, y0 + window_px), slice(x0, x0 + window_px)))
    return boxes


def read_windows(channels: list[da.Array], boxes, *, scheduler=None) -> list[list[np.ndarray]]:
    """Each lazy (Y, X) channel's pixels inside each of ``boxes``: [channel][box].

    Read here, in threads, with the chunks' tasks run directly: scheduling a graph of a few
    windows costs as much as decoding them. A scheduler object other than a name (a
    distributed client) reads them through dask.
    """
    if scheduler is not None and not isinstance(scheduler, str):
        return [list(windows) for windows in
                dask.compute(*[[channel[box] for box in boxes] for channel in channels], scheduler=scheduler)]
    from concurrent.futures import ThreadPoolExecutor

    def read(channel) -> list[np.ndarray]:
        height, width = channel.shape
        decoded: dict = {}  # a chunk two windows share is decoded once
        return [read_box(channel, (rows.start, min(rows.stop, height)), (cols.start, min(cols.stop, width)), decoded)
                for rows, cols in boxes]

    if runs_in_one_thread(scheduler) or len(channels) == 1:
        return [read(channel) for channel in channels]
    with ThreadPoolExecutor(min(len(channels), os.cpu_count() or 1)) as pool:
        return list(pool.map(read, channels))


def sample_pixels(channels: list[da.Array], boxes, *, scheduler=None) -> list[np.ndarray]:
    """Pixels of each lazy (Y, X) channel inside ``boxes``, one flat float32 array per channel."""
    return [np.concatenate([w.ravel() for w in windows]).astype(np.float32)
            for windows in read_windows(channels, boxes, scheduler=scheduler)]


def estimate_threshold(values: np.ndarray, rule: ThresholdRule) -> float:
    """One threshold for ``values`` by ``rule.method``; pixels above it are positive.

    mad: median + k * 1.4826 * MAD, a noise-scaled margin over the (mostly negative)
    background; robust when positives are a minority. The MAD is floored at one
    intensity unit for integer data, whose MAD can be 0 on flat backgrounds.
    """
    values = np.asarray(values)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("cannot estimate a threshold from an empty sample")
    method = rule.method
    if method == "fixed":
        return float(rule.value)
    if method == "percentile":
        return float(np.percentile(values, rule.percentile))
    if method == "mad":
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        if mad == 0:
            upper = values[values > median]
            mad = float(np.median(upper - median)) if upper.size else 1.0
        return median + rule.k * MAD_TO_SIGMA * max(mad, 1e-12)
    if values.min() == values.max():
        return float(values[0])
    function = {"otsu": filters.threshold_otsu, "triangle": filters.threshold_triangle, "li": filters.threshold_li}[method]
    if method == "li":
        return float(function(values, tolerance=max(np.ptp(values) * 1e-4, 1e-12)))
    return float(function(values, nbins=1024) if method != "li" else function(values))



def scaled_thresholds(signal, channel: str, scales) -> ScaledThresholds:
    """The evidence threshold of ``channel`` at each of ``scales``, as the counting pass evaluates them.

    ``signal`` is a :class:`tlsquant.background.SignalModel`. What is scaled is what the
    rule decides: the margin above the local background (``background`` method: glass,
    AF and offset stay put, so 0.8 never dips into the background) or the threshold
    itself (global methods).
    """
    model = signal.channels[channel]
    if model.global_threshold is not None:
        return ScaledThresholds(None, None, tuple(scales), tuple(model.global_threshold * s for s in scales))
    if channel in signal.pixel_af:
        return ScaledThresholds(None, None, tuple(scales),
                                tuple(model.glass_level + model.offset + s * model.margin for s in scales))
    return ScaledThresholds(signal.background(channel), None, tuple(scales),
                            tuple(model.offset + s * model.margin for s in scales))


def positive_threshold(signal, channel: str, *, scale: float = 1.0) -> np.ndarray:
    """The evidence threshold of ``channel`` on the coarse grid (float32), scaled by ``scale`` (see :func:`scaled_thresholds`).

    ``scale`` 1 is exactly the model's own threshold, and any other scale the very
    numbers a sensitivity scenario at that scale compares with: a run with
    ``thresholds.<role>.scale = s`` and the scenario at ``s`` count the same pixels.
    """
    if scale == 1.0:
        return signal.corrected_threshold(channel)
    parts = scaled_thresholds(signal, channel, (scale,))
    return scaled_level(parts.base, parts.spread, scale, parts.shifts[0], signal.template.shape)
