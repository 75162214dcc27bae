"""The signal model: each channel's background everywhere on the slide, and how far above it stain begins.

Real multiplex IF adds to the specific stain a glass level and camera offset, tissue
autofluorescence (AF) that varies smoothly and by compartment (brighter stroma, a bright
rim at the tissue edge, folds), illumination fall-off, and a few per cent of each spectral
neighbour (crosstalk). One global threshold per channel, taken from glass and tissue
pixels together, lands inside the AF range. The model here, estimated once per slide on
the coarse grid (about 8 µm), is::

    background_c(x) = glass_c + af_scale_c * template(x)
    positive_c(x)   = value_c(x) - sum_d kappa_cd * (value_d(x) - background_d(x))
                      > background_c(x) + offset_c + margin_c

``template`` is the tissue AF pattern shared by all channels: the unmixed AF channel when
the slide has one; otherwise a low order statistic across the marker channels, each
normalised by its own tissue level (specific stain lifts one or two channels at a place,
AF lifts all of them). Narrow bright things (red-blood-cell strings, debris, the edge
rim) are opened out of it, so they stay above background and can be flagged. ``offset``
and ``margin`` come from level-0 windows: the mode of the residual on tissue, and
``max(k * noise, fraction * typical positive signal)``, so the decision scales with each
channel's own gain. ``kappa_cd`` (crosstalk from channel d into c) is measured at full
resolution in windows around d's brightest structures.

Everything here is computed from a low-resolution pyramid level (or level-0 block means
when the file has none) and a few level-0 windows, so it is the same for any chunking or
worker count.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import dask
import numpy as np
from scipy import ndimage as ndi
from skimage import filters, transform

from .blocks import block_grid, compute_blocks
from .config import ThresholdRule
from .thresholds import estimate_threshold, read_windows

MIN_NUCLEAR_COVER = 0.05  # a nuclear stain positive on less tissue than this means its background was misread
GLOBAL_METHODS = ("otsu", "triangle", "li", "percentile", "fixed", "mad")


@dataclass(frozen=True)
class ChannelModel:
    """How one channel's positive pixels are decided (intensity units of the slide)."""

    name: str
    method: str  # "background" or one of GLOBAL_METHODS (one threshold for the whole slide)
    glass_level: float
    af_scale: float
    offset: float  # mode of the level-0 residual on tissue (corrects the coarse model's bias)
    noise: float  # robust SD of the residual below its mode, on tissue
    positive_scale: float  # median residual of clearly positive tissue pixels (0: too few seen)
    margin: float
    global_threshold: float | None = None  # set for GLOBAL_METHODS
    noise_floor: float = 0.0  # the least margin any share of the positive signal may ask for (k noise SDs)

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ThresholdRuleMap:
    """A channel's threshold map as a rule on the AF template: ``glass + scale * template + lift`` (float32),
    or ``global_threshold`` everywhere. Applied to a piece of the template it gives, bin for bin, that
    piece of the whole map."""

    glass: float
    scale: float
    lift: float
    global_threshold: float | None = None

    def on(self, template: np.ndarray) -> np.ndarray:
        if self.global_threshold is not None:
            return np.full(template.shape, self.global_threshold, np.float32)
        return (self.glass + self.scale * template).astype(np.float32) + np.float32(self.lift)


@dataclass
class SignalModel:
    """Per-channel background and thresholds on the coarse grid (``factor`` level-0 px per cell)."""

    factor: int
    template: np.ndarray  # float32, tissue AF pattern (0 on glass)
    tissue_hint: np.ndarray  # bool, tissue as seen at low resolution
    channels: dict[str, ChannelModel]
    crosstalk: dict[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)  # target -> ((source, kappa),)
    source: str = ""
    has_glass: bool = True
    histograms: dict[str, dict] = field(default_factory=dict)  # QC: level-0 sample on tissue / glass
    notes: list[str] = field(default_factory=list)  # what the estimate had to fall back on (reported as warnings)
    # with an AF channel: per channel, the share of the AF channel's excess over glass that is AF in it;
    # subtracted pixel by pixel, so AF texture, rims and folds cancel at full resolution
    pixel_af: dict[str, float] = field(default_factory=dict)
    af_channel: str | None = None

    def background(self, name: str) -> np.ndarray:
        return self.background_of(name, self.template)

    def background_of(self, name: str, template_values: np.ndarray) -> np.ndarray:
        """The background of channel ``name`` where the AF template is ``template_values`` (float32)."""
        model = self.channels[name]
        return np.float32(model.glass_level) + np.float32(model.af_scale) * template_values

    def threshold(self, name: str, *, min_fraction: float = 0.0, fraction: float | None = None) -> np.ndarray:
        """The positive threshold of channel ``name`` on the coarse grid (float32), for raw values.

        ``min_fraction`` raises the margin to at least that share of the typical positive
        signal (cells: a compartment mean also takes in the rim of its neighbours);
        ``fraction`` replaces the rule's share (never below the noise floor).
        """
        return self.threshold_rule(name, min_fraction=min_fraction, fraction=fraction).on(self.template)

    def threshold_rule(self, name: str, *, min_fraction: float = 0.0, fraction: float | None = None) -> ThresholdRuleMap:
        """:meth:`threshold` as a rule on the AF template: any piece of the map from the same piece of the template."""
        model = self.channels[name]
        if model.global_threshold is not None:
            return ThresholdRuleMap(0.0, 0.0, 0.0, model.global_threshold)
        margin = model.margin if fraction is None else max(model.noise_floor, fraction * model.positive_scale)
        return ThresholdRuleMap(model.glass_level, model.af_scale,
                                model.offset + max(margin, min_fraction * model.positive_scale))

    def corrected_threshold(self, name: str) -> np.ndarray:
        """The threshold for AF-corrected values (:meth:`af_corrected`) where ``name`` has a pixel AF share, else :meth:`threshold`."""
        if name not in self.pixel_af:
            return self.threshold(name)
        model = self.channels[name]
        return np.full(self.template.shape, model.glass_level + model.offset + model.margin, np.float32)

    def af_corrected(self, name: str, values: np.ndarray, af_values: np.ndarray) -> np.ndarray:
        """``values`` minus the AF the AF channel shows at the same pixels (float32)."""
        share = np.float32(self.pixel_af[name])
        glass = np.float32(self.channels[self.af_channel].glass_level)
        return values.astype(np.float32) - share * (af_values.astype(np.float32) - glass)

    def residual(self, name: str, values: np.ndarray, y0: int, x0: int, af_values: np.ndarray | None = None) -> np.ndarray:
        """Level-0 values of the box at (y0, x0) minus their background (float32, before ``offset``)."""
        return self._residual(name, values, af_values, lambda: self.background_at(name, y0, x0, values.shape))

    def residual_in_bins(self, name: str, values: np.ndarray, bins: np.ndarray,
                         af_values: np.ndarray | None = None) -> np.ndarray:
        """:meth:`residual` of level-0 pixels ``values`` lying in the coarse bins ``bins`` (flat indices into
        the grid): the same numbers for a sample of a box's pixels as for the whole box."""
        return self._residual(name, values, af_values, lambda: self.background_of(name, np.ravel(self.template)[bins]))

    def _residual(self, name: str, values: np.ndarray, af_values: np.ndarray | None, background) -> np.ndarray:
        if name in self.pixel_af and af_values is not None:
            return self.af_corrected(name, values, af_values) - np.float32(self.channels[name].glass_level)
        return values.astype(np.float32) - background()

    def background_at(self, name: str, y0: int, x0: int, shape: tuple[int, int]) -> np.ndarray:
        """The background of channel ``name`` per pixel of the level-0 box at (y0, x0) (float32)."""
        f, (height, width) = self.factor, shape
        piece = self.template[y0 // f : -(-(y0 + height) // f), x0 // f : -(-(x0 + width) // f)]
        return expand(self.background_of(name, piece), f, y0 % f, x0 % f, shape)

    def summary(self, name: str) -> dict:
        """JSON-ready description of channel ``name``'s model and the thresholds it gives on tissue."""
        model = self.channels[name]
        out = model.to_dict()
        if self.tissue_hint.any():
            on_tissue = self.threshold(name)[self.tissue_hint]
            background = self.background(name)[self.tissue_hint]
            out["background_median"] = round(float(np.median(background)), 6)
            out["threshold_median"] = round(float(np.median(on_tissue)), 6)
            out["threshold_p05"], out["threshold_p95"] = (round(float(v), 6) for v in np.percentile(on_tissue, [5, 95]))
        out["value"] = out.get("threshold_median", float(self.threshold(name).flat[0]))
        out["crosstalk_from"] = {source: round(k, 4) for source, k in self.crosstalk.get(name, ())}
        if name in self.pixel_af:
            out["autofluorescence_share"] = round(self.pixel_af[name], 6)
        return out


# -- low-resolution overview -------------------------------------------------------------------


def _cell_sums(factor: int, y0: int, x0: int, block: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """Sum a level-0 block into grid bins anchored at the slide origin ((partial bins at its edges))."""
    height, width = block.shape
    top, left = y0 % factor, x0 % factor
    rows, cols = -(-(top + height) // factor), -(-(left + width) // factor)
    dtype = np.float64 if block.dtype.kind == "f" else np.int64
    padded = np.zeros((rows * factor, cols * factor), dtype)
    padded[top : top + height, left : left + width] = block
    return (y0 // factor, x0 // factor), padded.reshape(rows, factor, cols, factor).sum(axis=(1, 3))


def block_means(channel, factor: int, *, scheduler=None, num_workers=None) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` cell of a lazy level-0 (Y, X) array, float32 (exact sums for integers)."""
    height, width = channel.shape
    grid = channel.to_delayed()
    tasks = [dask.delayed(_cell_sums, pure=True)(factor, y0, x0, grid[i, j])
             for i, j, y0, x0, _, _ in block_grid(*channel.chunks)]
    results = compute_blocks(tasks, scheduler=scheduler, num_workers=num_workers)
    rows, cols = -(-height // factor), -(-width // factor)
    total = np.zeros((rows, cols), np.float64)
    for (cy, cx), sums in results:
        total[cy : cy + sums.shape[0], cx : cx + sums.shape[1]] += sums
    pixels = np.outer(_cell_pixels(height, factor), _cell_pixels(width, factor))
    return (total / pixels).astype(np.float32)


def _cell_pixels(size: int, factor: int) -> np.ndarray:
    cells = -(-size // factor)
    counts = np.full(cells, factor, np.float64)
    counts[-1] = size - factor * (cells - 1)
    return counts


def overview(slide, names: list[str], factor: int, *, scheduler=None, num_workers=None) -> tuple[dict[str, np.ndarray], str]:
    """Each channel as a float32 image on the coarse grid (``factor`` level-0 px per cell).

    Taken from the coarsest pyramid level no coarser than the grid, resampled onto it; a
    slide without such a level is averaged from level 0 (one extra read of those channels).
    """
    height, width = slide.shape[1:]
    shape = (-(-height // factor), -(-width // factor))
    bin_um = factor * max(slide.pixel_size_x_um, slide.pixel_size_y_um)
    level = slide.level_for_pixel_size(bin_um)
    if factor == 1:
        level = 0
    if level == 0 and factor > 1:
        images = {name: block_means(slide.channel(name), factor, scheduler=scheduler, num_workers=num_workers)
                  for name in names}
        return images, f"level 0 averaged over {factor} x {factor} px (no pyramid level at <= {bin_um:.3g} µm)"
    planes = dask.compute(*[slide.channel(name, level) for name in names], scheduler=scheduler or "threads")
    images = {}
    for name, plane in zip(names, planes):
        plane = np.asarray(plane, np.float32)
        if plane.shape != shape:
            scale = max(plane.shape[0] / shape[0], plane.shape[1] / shape[1])
            plane = transform.resize(plane, shape, order=1, preserve_range=True, anti_aliasing=scale > 1.5,
                                     mode="edge").astype(np.float32)
        images[name] = plane
    ds = slide.levels[level].downsample_x
    return images, f"pyramid level {level} ({ds:g}x downsampled), resampled to the {bin_um:.3g} µm grid"


# -- tissue, glass and the AF template -----------------------------------------------------------


def tissue_and_glass(images: dict[str, np.ndarray], nuclei: str | None = None, *,
                     num_workers: int | None = None) -> tuple[np.ndarray, dict[str, float], bool]:
    """Tissue as seen at low resolution, each channel's glass level, and whether glass was found.

    Tissue lifts every channel over glass (autofluorescence at least), while stain lifts
    one or two: a low order statistic across the channels, each scaled from its darkest
    to its typical level, follows tissue and ignores stain. Otsu splits it; glass counts
    as found only when it is a distinct, compact class. ``num_workers`` threads take the
    channels' medians on glass.
    """
    ranges = []
    for plane in images.values():
        lo, mid = np.percentile(thin(plane), [1, 50])
        ranges.append((lo, max(mid - lo, 1e-12)))
    order = 1 if len(ranges) >= 4 else 0
    planes = list(images.values())
    score = np.empty(planes[0].shape, np.float64)
    band = max(1, (1 << 18) // max(planes[0].shape[1], 1))  # rows at a time: the channel stack stays small
    for y in range(0, score.shape[0], band):
        score[y : y + band] = low_order([(plane[y : y + band] - lo) / spread for plane, (lo, spread) in zip(planes, ranges)],
                                        order)
    score = ndi.uniform_filter(score, 3, mode="nearest")
    glass_found = False
    tissue = np.ones(score.shape, bool)
    glass_medians = {}  # the nuclear stain's is needed twice: deciding whether glass is glass, and as its level
    if np.ptp(score) > 0:
        # clipped: a few very bright cells (debris) would pull Otsu into the tail
        cut = filters.threshold_otsu(np.clip(score, *np.percentile(score, [0.5, 90])), nbins=512)
        glass = score <= cut
        share = glass.mean()
        if 0.01 <= share <= 0.97:
            g = score[glass]
            spread = 1.4826 * np.median(np.abs(g - np.median(g))) + 1e-6
            distinct = np.median(score[~glass]) - np.median(g) > 6 * spread
            if distinct and nuclei in images:  # glass holds no nuclei: a dim stretch of tissue does
                stain = images[nuclei]
                low = float(np.percentile(stain, 1))
                glass_medians[nuclei] = np.median(stain[glass])
                distinct = glass_medians[nuclei] - low < 0.25 * (np.median(stain[~glass]) - low)
            if distinct:
                glass_found = True
                tissue = ~glass
    levels = dict.fromkeys(images, 0.0)
    if glass_found:
        rest = [name for name in images if name not in glass_medians]
        glass_medians.update(zip(rest, _map(lambda name: np.median(images[name][glass]), rest,
                                            _threads(num_workers, len(rest)))))
        levels = {name: float(glass_medians[name]) for name in images}
    return tissue, levels, glass_found


def low_order(layers: list[np.ndarray], order: int) -> np.ndarray:
    """``np.partition(np.stack(layers), order, axis=0)[order]`` for ``order`` 0 or 1, bit for bit, by running minima.

    Partitioning a short axis runs a selection per element (most of the tissue score's time).
    Minima pick the same value wherever that value has one bit pattern; where it has more
    (+0 and -0, NaNs, which np.partition sorts last) np.partition itself picks, on just those
    elements: it selects each element's lane on its own, so a subset gets the same pick.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    lowest = np.array(layers[0], copy=True)
    second = np.full_like(lowest, np.nan)  # NaN: above every value, as np.partition places it
    for layer in layers[1:]:
        if order:
            np.fmin(second, np.maximum(lowest, layer), out=second)
        np.fmin(lowest, layer, out=lowest)
    picked = second if order else lowest
    ambiguous = np.flatnonzero((picked == 0) | np.isnan(picked))
    if ambiguous.size:
        lanes = np.stack([np.ravel(layer)[ambiguous] for layer in layers])
        picked.ravel()[ambiguous] = np.partition(lanes, order, axis=0)[order]
    return picked


def af_template(images: dict[str, np.ndarray], glass: dict[str, float], tissue: np.ndarray, *,
                autofluorescence: str | None, exclude: tuple[str, ...], opening_cells: int) -> np.ndarray:
    """The tissue AF pattern shared by all channels (float32, about 1 on typical tissue, 0 on glass)."""
    if autofluorescence is not None:
        excess = images[autofluorescence] - glass[autofluorescence]
        level = float(np.median(excess[tissue])) if tissue.any() else 1.0
        template = excess / max(level, 1e-12)
    else:
        normalised = []
        for name, plane in images.items():
            if name in exclude:
                continue
            excess = plane - glass[name]
            level = float(np.median(excess[tissue])) if tissue.any() else float(np.median(excess))
            if level > 0:
                normalised.append(excess / level)
        if not normalised:
            return np.zeros(tissue.shape, np.float32)
        template = low_order(normalised, 1 if len(normalised) >= 5 else 0)
    if opening_cells > 1:
        # narrow bright things (RBC strings, debris, the edge rim) are not background
        template = ndi.grey_opening(template, size=(opening_cells, opening_cells), mode="nearest")
    return np.clip(template, 0, None).astype(np.float32)


def af_scale(plane: np.ndarray, glass_level: float, template: np.ndarray, tissue: np.ndarray, *,
             sample: np.ndarray | None = None) -> float:
    """How strongly channel AF follows the template: a low quantile of (value - glass) / template on tissue.

    Low, because specific stain only ever adds to the ratio. ``sample``: :func:`af_scale_sample`
    of ``template`` and ``tissue``, when several channels share them.
    """
    if sample is None:
        sample = af_scale_sample(template, tissue)
    if sample.size == 0:
        return 0.0
    ratio = (np.ravel(plane)[sample] - glass_level) / np.ravel(template)[sample]
    return float(max(0.0, np.percentile(ratio, 20)))


def af_scale_sample(template: np.ndarray, tissue: np.ndarray, *, typical: np.floating | None = None) -> np.ndarray:
    """Flat grid positions whose ratios :func:`af_scale` takes: tissue where the template is over a quarter of
    its ``typical`` (median on tissue) level, thinned; none when fewer than 20.

    Thinned positions, not thinned ratios: the same values, without a ratio for every tissue bin.
    """
    if typical is None and tissue.any():
        typical = np.median(template[tissue])
    usable = tissue & (template > 0.25 * (typical if tissue.any() else 0.0))
    positions = np.flatnonzero(usable)
    return thin(positions) if positions.size >= 20 else positions[:0]


# -- level-0 statistics -------------------------------------------------------------------------


def expand(grid: np.ndarray, factor: int, y0: int, x0: int, shape: tuple[int, int]) -> np.ndarray:
    """Grid cells (anchored at the slide origin) covering the level-0 box at (y0, x0) of ``shape``, per pixel."""
    height, width = shape
    piece = grid[y0 // factor : -(-(y0 + height) // factor), x0 // factor : -(-(x0 + width) // factor)]
    full = np.repeat(np.repeat(piece, factor, axis=0), factor, axis=1)
    return full[y0 % factor : y0 % factor + height, x0 % factor : x0 % factor + width]


STATS_SAMPLE = 1 << 19  # residual statistics use at most this many values (an even, deterministic stride)


def thin(values: np.ndarray, limit: int = STATS_SAMPLE) -> np.ndarray:
    """Every k-th value so that at most ``limit`` remain: the same for any chunking, and cheap to sort."""
    values = values.ravel()
    step = -(-values.size // limit)
    return values[::step] if step > 1 else values


def mode(values: np.ndarray) -> float:
    """Where the bulk of (mostly background) values sits: the peak of a smoothed histogram of their lower 60 %.

    Values piled on the minimum (a clipped floor: zeros of float data, a saturated dark
    offset) are left out unless they are the majority, as in sparse ion-count images.
    """
    values = thin(values)
    floor = values.min()
    at_floor = values == floor
    if 0.005 < at_floor.mean() < 0.5:
        values = values[~at_floor]
    lo, hi = np.percentile(values, [0.5, 60])
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=256, range=(lo, hi))
    # wide smoothing: a spike of clipped pixels (zeros) must not outweigh the background hump
    counts = ndi.gaussian_filter1d(counts.astype(float), 8, mode="constant")
    peak = int(np.argmax(counts))
    return float(0.5 * (edges[peak] + edges[peak + 1]))


def window_af_scale(windows: list[np.ndarray], boxes, *, glass_level: float, template: np.ndarray,
                    tissue: np.ndarray, factor: int, pieces=None) -> float | None:
    """AF scale from level-0 windows: median over windows of (background mode - glass) / mean template.

    At full resolution the pixels between positive cells are AF alone, so this holds for
    stains that cover most of the tissue at low resolution (the nuclear stain), where the
    low-resolution ratio is lifted by stain. None when too few windows lie on tissue.
    ``pieces``: :attr:`WindowSample.af_pieces` of these windows, when several channels share them.
    """
    if pieces is None:
        pieces = window_sample(boxes, [values.shape for values in windows], tissue=tissue, template=template,
                               factor=factor).af_pieces
    ratios = [(mode(np.ravel(windows[k])[positions].astype(np.float32, copy=False)) - glass_level) / level
              for k, positions, level in pieces]
    return float(max(0.0, np.median(ratios))) if len(ratios) >= 4 else None


@dataclass(frozen=True)
class WindowSample:
    """The pixels of the level-0 sample windows that the statistics read, the same for every channel.

    Found once rather than per channel: the tissue hint expanded over each window and the
    thinning of all windows' pixels as one sample cost more than the statistics.
    """

    tissue: tuple[tuple[np.ndarray, np.ndarray], ...]  # per window: flat positions of the tissue pixels kept, their flat grid bins
    glass: tuple[np.ndarray, ...]  # per window: flat positions of the glass pixels kept
    tissue_seen: bool  # False: under 1000 tissue pixels, and ``tissue`` holds a sample of all pixels instead
    af_pieces: tuple[tuple[int, np.ndarray, float], ...]  # (window, flat positions of its tissue pixels kept, mean template)


def window_sample(boxes, shapes, *, tissue: np.ndarray, template: np.ndarray, factor: int) -> WindowSample:
    """The :class:`WindowSample` of level-0 windows ``boxes`` of ``shapes`` (rows, columns) on the coarse grid."""
    hints = [expand(tissue, factor, box[0].start, box[1].start, shape) for box, shape in zip(boxes, shapes)]
    on_tissue = [np.flatnonzero(hint) for hint in hints]
    tissue_seen = sum(positions.size for positions in on_tissue) >= 1000
    if not tissue_seen:  # hardly any tissue seen: all of it
        on_tissue = [np.arange(hint.size) for hint in hints]
    kept = _thin_parts(on_tissue)
    bins = [_grid_bins(box, shape[1], positions, factor, tissue.shape[1]) for box, shape, positions in zip(boxes, shapes, kept)]
    glass = _thin_parts([np.flatnonzero(~hint) for hint in hints])
    return WindowSample(tuple(zip(kept, bins)), tuple(glass), tissue_seen,
                        _af_pieces(boxes, hints, template=template, factor=factor))


def _grid_bins(box, width: int, positions: np.ndarray, factor: int, grid_width: int) -> np.ndarray:
    """Flat coarse-grid bins of the flat ``positions`` in a level-0 window ``box`` ``width`` px wide."""
    rows, cols = np.divmod(positions, width)
    return (box[0].start + rows) // factor * grid_width + (box[1].start + cols) // factor


def _thin_parts(parts: list[np.ndarray], limit: int = STATS_SAMPLE) -> list[np.ndarray]:
    """Each of ``parts`` cut to the values that :func:`thin` keeps of all of them concatenated."""
    step = -(-sum(part.size for part in parts) // limit)
    if step <= 1:
        return list(parts)
    kept, start = [], 0
    for part in parts:
        kept.append(part[-start % step :: step])
        start += part.size
    return kept


def _af_pieces(boxes, hints: list[np.ndarray], *, template: np.ndarray, factor: int) -> tuple:
    """The 256 px pieces of the windows that :func:`window_af_scale` reads (mostly tissue, with AF)."""
    pieces = []
    for k, (box, hint) in enumerate(zip(boxes, hints)):  # a small slide is one big window: look at it in parts
        levels = None
        for y in range(0, hint.shape[0], 256):
            for x in range(0, hint.shape[1], 256):
                part = hint[y : y + 256, x : x + 256]
                if min(part.shape) < 32 or part.mean() < 0.3:
                    continue
                if levels is None:
                    levels = expand(template, factor, box[0].start, box[1].start, hint.shape)
                level = float(levels[y : y + 256, x : x + 256][part].mean())
                if level < 0.2:
                    continue
                rows, cols = np.nonzero(part)
                pieces.append((k, thin((rows + y) * hint.shape[1] + cols + x, 1 << 14), level))
    return tuple(pieces)


def residual_stats(residual: np.ndarray, *, k: float, fraction: float, integer: bool) -> tuple[float, float, float, float]:
    """(offset, noise, positive scale, margin) of level-0 residuals on tissue.

    offset: the mode (where background pixels sit); noise: RMS below the mode (positives
    only ever add above it); positive scale: median excess of pixels more than ``k`` noise
    above the mode, when enough of them were seen.
    """
    values = thin(residual)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0, 0.0, k
    offset = mode(values)
    below = values[values < offset] - offset
    if below.size >= 50:
        noise = float(np.sqrt(np.mean(below**2)))
    else:
        noise = float(1.4826 * np.median(np.abs(values - np.median(values))))
    noise = max(noise, 0.5 if integer else 1e-9)
    excess = values - offset
    positive = excess[excess > k * noise]
    scale = typical_positive(positive) if positive.size >= max(100, 1e-4 * values.size) else 0.0
    margin = max(k * noise, fraction * scale, 1.0 if integer else 0.0)
    return offset, noise, scale, margin


AF_MODE_RATIO = 5.0  # a dim mode this far below the bright one is autofluorescent structure, not weak stain
BRIGHT_MODE_SHARE = 0.2  # ... provided the bright mode holds at least this share of the positive pixels


def typical_positive(excess: np.ndarray) -> float:
    """The typical excess over background of a channel's positive pixels: their median, or, where most of
    them form a dim mode far below a bright one, the bright mode's median.

    Autofluorescent structures (collagen fibres, elastin) rise above the background in
    the short-wavelength channels as thin bright lines; where they outnumber the stained
    cells their median would set the margin at their own level and count them as stain.
    The two modes are split at Otsu's threshold of the log excess.
    """
    median = float(np.median(excess))
    logs = np.log(excess[excess > 0])
    if logs.size < 200 or np.ptp(logs) <= 0:
        return median
    split = float(filters.threshold_otsu(logs, nbins=256))
    dim, bright = excess[excess <= math.exp(split)], excess[excess > math.exp(split)]
    # the dim mode must be the larger one, and the bright one more than a sprinkle: a few bright germinal
    # centres over a dim CD21/CD23 network are the stain's own range, not autofluorescence under it
    if dim.size <= bright.size or bright.size < max(100, BRIGHT_MODE_SHARE * excess.size):
        return median
    dim_median, bright_median = float(np.median(dim)), float(np.median(bright))
    return bright_median if bright_median >= AF_MODE_RATIO * dim_median else median


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts of ``values`` between ``edges`` (evenly spaced, from np.linspace).

    Given as a range, numpy bins evenly spaced edges arithmetically instead of sorting the
    values; in float64 its edges are ``edges`` themselves, and it corrects each index against
    them, so the counts are those of the edges given one by one.
    """
    counts = np.histogram(np.asarray(values, np.float64), bins=len(edges) - 1, range=(edges[0], edges[-1]))[0]
    return counts.astype(int).tolist()


def _sample_residuals(model: SignalModel, name: str, windows: dict, sample: WindowSample, *,
                      pixel_af: bool = True, glass: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Residuals of channel ``name`` on tissue in the level-0 windows, and its raw values on glass
    (``pixel_af`` False: without the pixel-by-pixel AF subtraction, as if the model had none;
    ``glass`` False: no glass values, None)."""
    af_windows = windows.get(model.af_channel) if model.af_channel and pixel_af and sample.tissue_seen else None
    on_tissue = []
    for k, (positions, bins) in enumerate(sample.tissue):
        af = np.ravel(af_windows[k])[positions] if af_windows is not None else None
        on_tissue.append(model.residual_in_bins(name, np.ravel(windows[name][k])[positions], bins, af))
    tissue_residual = np.concatenate(on_tissue) if on_tissue else np.empty(0, np.float32)
    if not glass:
        return tissue_residual, None
    on_glass = [np.ravel(values)[positions].astype(np.float32) for values, positions in zip(windows[name], sample.glass)]
    return tissue_residual, np.concatenate(on_glass) if on_glass else np.empty(0, np.float32)


def _threads(num_workers: int | None, tasks: int) -> int:
    return max(1, min(num_workers or os.cpu_count() or 1, tasks))


def _map(function, items, threads: int) -> list:
    """``function`` of each item, in order; in ``threads`` threads when more than one."""
    if threads <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(function, items))


def _channel_model(model: SignalModel, name: str, rule: ThresholdRule, windows: dict, sample: WindowSample, *,
                   integer: bool, nuclei: str | None, typical_template: float) -> tuple[ChannelModel, dict, bool, str | None]:
    """Channel ``name``'s model from its level-0 windows: (model, QC histogram, whether it keeps the
    pixel-by-pixel AF subtraction, a note). Reads ``model`` (its placeholders), never changes it."""
    glass, scale_af = model.channels[name].glass_level, model.channels[name].af_scale
    tissue_residual, glass_values = _sample_residuals(model, name, windows, sample)
    keeps_pixel_af = name in model.pixel_af
    note = None
    stats = None
    if keeps_pixel_af and rule.method == "background":
        # subtracting the AF channel pixel by pixel adds its noise: keep it only where it pays
        stats = residual_stats(tissue_residual, k=rule.k, fraction=rule.fraction, integer=integer)
        coarse_residual, _ = _sample_residuals(model, name, windows, sample, pixel_af=False, glass=False)
        coarse_stats = residual_stats(coarse_residual, k=rule.k, fraction=rule.fraction, integer=integer)
        keeps_pixel_af = stats[1] < 0.9 * coarse_stats[1]
        if not keeps_pixel_af:
            tissue_residual, stats = coarse_residual, coarse_stats
    if rule.method == "background":
        if stats is None:
            stats = residual_stats(tissue_residual, k=rule.k, fraction=rule.fraction, integer=integer)
        offset, noise, scale, margin = stats
        covered = float(np.mean(tissue_residual > offset + margin)) if tissue_residual.size else 0.0
        floor = max(rule.k * noise, 1.0 if integer else 0.0)
        if name == nuclei and covered < MIN_NUCLEAR_COVER and np.ptp(tissue_residual) > 0:
            # nuclei packed so densely that they are the most common level (a lymphoid crop):
            # the background model has no background to see; split nuclei from the rest instead
            split = float(filters.threshold_otsu(tissue_residual, nbins=1024))
            note = (f"{name}: only {covered:.1%} of the tissue sample is above background + margin, "
                    f"too few for a nuclear stain; nuclei split from the rest by Otsu instead")
            offset, margin = 0.0, split
            floor = split  # no share of a positive signal to lower it by
        channel = ChannelModel(name, "background", glass, scale_af, offset, noise, scale, margin, noise_floor=floor)
    else:
        everything = np.concatenate([w.ravel() for w in windows[name]]).astype(np.float32)
        channel = ChannelModel(name, rule.method, glass, scale_af, 0.0, 0.0, 0.0, 0.0, estimate_threshold(everything, rule))
    # back on the intensity scale for the QC histogram: the median tissue background added
    raw_tissue = tissue_residual + glass + scale_af * typical_template
    top = float(np.percentile(raw_tissue, 99.9)) if raw_tissue.size else 1.0
    low = float(min(np.percentile(glass_values, 0.5) if glass_values.size else top, np.percentile(raw_tissue, 0.5)))
    edges = np.linspace(low, max(top, low + 1e-6), 97)
    histogram = {"edges": edges.tolist(), "tissue": _histogram(raw_tissue, edges), "glass": _histogram(glass_values, edges)}
    return channel, histogram, keeps_pixel_af, note


def build_signal_model(slide, names: list[str], rules: dict[str, ThresholdRule], *, factor: int,
                       autofluorescence: str | None, nuclei: str | None, crosstalk_targets: tuple[str, ...],
                       sample_boxes, window_px: int, tile: int, opening_um: float, max_crosstalk: float,
                       min_crosstalk: float, scheduler=None, num_workers=None) -> SignalModel:
    """Estimate the signal model of ``names`` (slide channel names) on the coarse grid.

    ``rules`` gives each channel's threshold rule; ``crosstalk_targets`` are the channels
    checked for crosstalk from the others; ``sample_boxes`` the level-0 windows of the
    threshold sample.
    """
    images, source = overview(slide, names, factor, scheduler=scheduler, num_workers=num_workers)
    tissue, glass, has_glass = tissue_and_glass(images, nuclei, num_workers=num_workers)
    bin_um = factor * math.sqrt(slide.pixel_size_x_um * slide.pixel_size_y_um)
    opening = max(1, int(round(opening_um / bin_um))) | 1
    if autofluorescence is not None or has_glass:
        template = af_template(images, glass, tissue, autofluorescence=autofluorescence,
                               exclude=tuple(n for n in (nuclei,) if n), opening_cells=opening)
    else:
        # no glass to measure AF against and no AF channel (a crop inside tissue, unmixed or
        # mass-spec data): one background level per channel over the whole field
        template = tissue.astype(np.float32)
    typical = np.median(template[tissue]) if tissue.any() else None
    sample = af_scale_sample(template, tissue, typical=typical)
    scales = {name: af_scale(images[name], glass[name], template, tissue, sample=sample) for name in names}
    integer = slide.dtype.kind in "ui"

    # level-0 windows: the regular lattice for noise and positive scale
    sparse = slide.with_chunks(window_px)
    windows = dict(zip(names, read_windows([sparse.channel(name) for name in names], sample_boxes,
                                           scheduler=scheduler)))
    # per channel independent work (numpy sorts and histograms, mostly without the GIL): in threads
    threads = _threads(num_workers, len(names))
    sample = window_sample(sample_boxes, [values.shape for values in windows[names[0]]], tissue=tissue,
                           template=template, factor=factor)
    refined = _map(lambda name: window_af_scale(windows[name], sample_boxes, glass_level=glass[name], template=template,
                                                tissue=tissue, factor=factor, pieces=sample.af_pieces), names, threads)
    for name, scale in zip(names, refined):
        if scale is not None:
            scales[name] = scale
    typical_template = float(typical) if tissue.any() else 0.0
    placeholders = {name: ChannelModel(name, "background", glass[name], scales[name], 0.0, 0.0, 0.0, 0.0) for name in names}
    model = SignalModel(factor, template, tissue, placeholders, source=source, has_glass=has_glass,
                        af_channel=autofluorescence)
    if autofluorescence is not None:
        # template = (AF - glass) / level, opened; per pixel the share is af_scale / level
        excess = images[autofluorescence] - glass[autofluorescence]
        level = float(np.median(excess[tissue])) if tissue.any() else 0.0
        if level > 0:
            model.pixel_af = {name: scales[name] / level for name in names
                              if name != autofluorescence and rules[name].method == "background" and scales[name] > 0}
    fitted = _map(lambda name: _channel_model(model, name, rules[name], windows, sample, integer=integer,
                                              nuclei=nuclei, typical_template=typical_template), names, threads)
    channels: dict[str, ChannelModel] = {}
    histograms = {}
    for name, (channel, histogram, keeps_pixel_af, note) in zip(names, fitted):
        channels[name], histograms[name] = channel, histogram
        if not keeps_pixel_af:
            model.pixel_af.pop(name, None)
        if note:
            model.notes.append(note)
    model.channels.update(channels)
    model.histograms = histograms
    model.pixel_af = {name: share for name, share in model.pixel_af.items() if model.channels[name].global_threshold is None}
    if max_crosstalk > 0:
        model.crosstalk = estimate_crosstalk(sparse, model, images, names, targets=crosstalk_targets,
                                             window_px=window_px, tile=tile, max_crosstalk=max_crosstalk,
                                             min_crosstalk=min_crosstalk, scheduler=scheduler, num_workers=num_workers)
    return model


# -- crosstalk ---------------------------------------------------------------------------------


def _brightest_windows(excess: np.ndarray, tissue: np.ndarray, *, factor: int, window_px: int, shape: tuple[int, int],
                       tile: int, count: int, floor: float) -> list[tuple[slice, slice]]:
    """Up to ``count`` level-0 windows centred on the brightest coarse bins of ``excess``, apart from each other."""
    positions = np.flatnonzero(tissue)
    return _brightest_bins(positions, np.ravel(excess)[positions], excess.shape, factor=factor, window_px=window_px,
                           shape=shape, tile=tile, count=count, floor=floor)


def _brightest_bins(positions: np.ndarray, excess: np.ndarray, grid_shape: tuple[int, int], *, factor: int,
                    window_px: int, shape: tuple[int, int], tile: int, count: int,
                    floor: float) -> list[tuple[slice, slice]]:
    """:func:`_brightest_windows` of the excess ``excess`` of the bins at flat ``positions`` (ascending) of the grid."""
    # only bins above the floor can be picked; of those the 20,000 brightest (all that tie with the
    # last), so the set never depends on how a partition orders equal values. Partitioning the
    # whole grid instead, mostly -inf off tissue, degenerates (0.25 s a channel on a 12k slide).
    above = excess > floor
    candidates, values = positions[above], excess[above]
    top = 20000
    if candidates.size > top:
        kth = np.partition(values, values.size - top)[values.size - top]
        brightest = values >= kth
        candidates, values = candidates[brightest], values[brightest]
    order = candidates[np.lexsort((candidates, -values))]  # brightest first, ties by position
    height, width = shape
    boxes = []
    apart = window_px / factor * 2
    rows, cols = np.divmod(order, grid_shape[1])
    # bins closer than ``apart`` (both ways) to a picked one are blocked: the brightest unblocked bin is next
    blocked = np.zeros(grid_shape, bool)
    for _ in range(count):
        free = np.flatnonzero(~blocked[rows, cols])
        if free.size == 0:
            break
        row, col = int(rows[free[0]]), int(cols[free[0]])
        blocked[max(0, math.floor(row - apart) + 1) : max(0, math.ceil(row + apart)),
                max(0, math.floor(col - apart) + 1) : max(0, math.ceil(col + apart))] = True
        cy, cx = int((row + 0.5) * factor), int((col + 0.5) * factor)
        y0 = min(max(0, cy - window_px // 2), max(0, height - window_px)) // tile * tile
        x0 = min(max(0, cx - window_px // 2), max(0, width - window_px)) // tile * tile
        boxes.append((slice(y0, min(height, y0 + window_px)), slice(x0, min(width, x0 + window_px))))
    return boxes


def _dilate_square(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_dilation(mask, np.ones((3, 3)))`` as shifted ORs (a fraction of its time on a whole-slide grid)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    dilated = rows.copy()
    dilated[:, 1:] |= rows[:, :-1]
    dilated[:, :-1] |= rows[:, 1:]
    return dilated


def estimate_crosstalk(slide, model: SignalModel, images: dict[str, np.ndarray], names: list[str], *,
                       targets: tuple[str, ...], window_px: int, tile: int, max_crosstalk: float,
                       min_crosstalk: float, scheduler=None, num_workers=None, windows_per_source: int = 4) -> dict:
    """kappa_cd for every target c and source d: the share of d's specific signal that shows in c (``slide`` read through window-sized chunks).

    Measured at level 0 around d's brightest structures, as the most common residual ratio
    c / d over pixels where d is strongly positive: where most of them lack c, that is the
    crosstalk. Where c is co-expressed there (CD20 around an FDC network) the ratio is
    high: ratios above ``max_crosstalk`` are co-expression, not crosstalk, and are left alone.
    """
    factor = model.factor
    # cells bright in most channels at once are debris or red blood cells: their ratios are not crosstalk
    excess = {name: images[name] - model.background(name) for name in names}
    bright = np.zeros(model.tissue_hint.shape, np.int16)
    on_tissue = thin(np.flatnonzero(model.tissue_hint))  # the bins whose excess the 99.5th percentile reads
    for name in names:
        if on_tissue.size:
            bright += excess[name] > max(float(np.percentile(np.ravel(excess[name])[on_tissue], 99.5)), 0.0)
    usable = np.flatnonzero(model.tissue_hint & ~_dilate_square(bright >= max(3, (len(names) + 1) // 2)))
    boxes_by_source = {}
    for source in names:
        cm = model.channels[source]
        if cm.global_threshold is not None or (source == model.af_channel and model.pixel_af):
            continue  # the AF channel is already subtracted pixel by pixel
        boxes = _brightest_bins(usable, np.ravel(excess[source])[usable] - cm.offset, bright.shape, factor=factor,
                                window_px=window_px, shape=slide.shape[1:], tile=tile, count=windows_per_source,
                                floor=cm.margin * 0.5)
        if boxes:
            boxes_by_source[source] = boxes
    if not boxes_by_source:
        return {}
    boxes = [box for source_boxes in boxes_by_source.values() for box in source_boxes]
    read = dict(zip(names, read_windows([slide.channel(name) for name in names], boxes, scheduler=scheduler)))
    owner = [source for source, source_boxes in boxes_by_source.items() for _ in source_boxes]
    af_read = read.get(model.af_channel)

    def kappas(source: str) -> list[tuple[str, float]]:
        """(target, kappa) of each target ``source`` shows in, from ``source``'s windows."""
        mine = [k for k in range(len(boxes)) if owner[k] == source]
        offset = np.float32(model.channels[source].offset)
        driver = [model.residual(source, read[source][k], boxes[k][0].start, boxes[k][1].start,
                                 af_read[k] if af_read is not None else None) - offset for k in mine]
        strong = np.concatenate([residual.ravel() for residual in driver])
        strong = strong > max(4 * model.channels[source].margin, float(np.percentile(strong, 95)))
        if strong.sum() < 50:
            return []
        # the targets' residuals only where the source is strong: the same numbers as of whole windows, a few % of the work
        picked, start = [], 0
        for k, residual in zip(mine, driver):
            positions = np.flatnonzero(strong[start : start + residual.size])
            picked.append((k, positions, _grid_bins(boxes[k], residual.shape[1], positions, factor, bright.shape[1])))
            start += residual.size
        on_strong = np.concatenate([residual.ravel()[positions] for residual, (_, positions, _) in zip(driver, picked)])
        found = []
        for target in targets:
            if target == source or model.channels[target].global_threshold is not None:
                continue
            residual = np.concatenate([
                model.residual_in_bins(target, np.ravel(read[target][k])[positions], bins,
                                       np.ravel(af_read[k])[positions] if af_read is not None else None)
                for k, positions, bins in picked])
            kappa = mode((residual - np.float32(model.channels[target].offset)) / on_strong)
            if min_crosstalk <= kappa <= max_crosstalk:
                found.append((target, kappa))
        return found

    result: dict[str, list[tuple[str, float]]] = {}
    sources = list(boxes_by_source)
    for source, found in zip(sources, _map(kappas, sources, _threads(num_workers, len(sources)))):
        for target, kappa in found:
            result.setdefault(target, []).append((source, kappa))
    return {target: tuple(sorted(pairs)) for target, pairs in sorted(result.items())}
