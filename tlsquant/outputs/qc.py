"""qc.png: the whole slide at a scale where every TLS shows, with what the numbers rest on.

Drawn over a composite of the lymphoid channels: the tumour bed (yellow), the peritumoral
margin (dotted, ``location.margin_um`` beyond the bed: TLS inside it are peritumoral), TLS
outlined by stage with their ids, rejected TLS candidates (dashed grey, labelled with the
reason, as in annotations.geojson), excluded artefacts (magenta), a legend and a scale bar.

Size (:func:`picture_scale`): the long side is about ``outputs.qc_px``, grown until a TLS of
``tls.min_area_um2`` spans ``outputs.qc_min_tls_px`` picture pixels, never beyond
``outputs.qc_max_px``; where the cap wins, the title says so and points to tls_gallery.html,
which shows every TLS at native resolution. The background is read from the coarsest pyramid
level that suffices and mean-binned block by block, so memory stays bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..config import Outputs
from ..io.atomic import atomic_path
from .annotations import MAX_CANDIDATES
from .geometry import STAGE_COLOURS

# composite colours per channel role: B cells red, T cells green, nuclei blue, tumour grey
ARTEFACT_COLOUR = (255, 0, 255)  # debris, red blood cells, edge rims: excluded from TLS and cells
TUMOUR_LINE = (255, 220, 0)
MARGIN_LINE = (255, 240, 150)  # dotted, the tumour's pale twin
CANDIDATE_LINE = (200, 200, 200)  # dashed
ROLE_COLOURS = {"b_cells": (1.0, 0.2, 0.2), "t_cells": (0.1, 0.85, 0.2), "nuclei": (0.15, 0.25, 0.8),
                "tumour": (0.35, 0.35, 0.35)}
REASON_LABELS = {"small": "too small", "debris": "mostly debris", "no_nuclei": "no nuclei",
                 "low_contrast": "low contrast", "low_density": "sparse (infiltrate)", "no_t_zone": "no T-cell zone"}
MAX_LABELLED_CANDIDATES = 300  # the largest rejected candidates get their reason written beside them


# zlib level 1: the pictures are 10-40 % larger than at the default level 6 and encode several times faster
FAST_PNG = {"compress_level": 1}


def _stretch(plane: np.ndarray) -> np.ndarray:
    # black at the typical (mostly negative) level, white at the brightest structures
    plane = np.asarray(plane, np.float32)
    low, high = np.percentile(plane, [60, 99.8])  # float64: so is the stretched plane
    stretched = np.subtract(plane, low)  # then in place: no more whole-plane temporaries
    stretched /= max(high - low, 1e-6)
    return np.clip(stretched, 0, 1, out=stretched)


def _binned(plane, step: int) -> np.ndarray:
    """Mean of each ``step`` x ``step`` bin, block by block: a single-level slide is never read whole.

    Mean-binning, not striding: a smooth picture that compresses and shows density. Every
    bin lies inside one block, so the result is the same for any chunking.
    """
    import dask.array as da

    if step == 1:
        return np.asarray(plane, np.float32)
    side = max(step, (2048 // step) * step)
    plane = da.asarray(plane).rechunk((side, side)).astype(np.float32)
    return da.coarsen(np.mean, plane, {0: step, 1: step}).compute()


@dataclass(frozen=True)
class PictureScale:
    """Where qc.png's background comes from and what a minimum-size TLS looks like on it."""

    level: int  # pyramid level read
    step: int  # level px per picture px (mean-binned)
    downsample: float  # level-0 px per picture px
    long_side_px: int  # of the picture
    min_tls_px: float  # picture px across a round TLS of tls.min_area_um2
    legible: bool  # min_tls_px reaches what was asked


def picture_scale(level_sides: list[int], level_downsamples: list[float], *, pixel_size_um: float,
                  min_tls_area_um2: float, target_px: int = Outputs.qc_px, max_px: int = Outputs.qc_max_px,
                  min_tls_px: float = Outputs.qc_min_tls_px) -> PictureScale:
    """Pyramid level and binning step for qc.png.

    Parameters
    ----------
    level_sides : list of int
        Long side (px) of each pyramid level, level 0 first.
    level_downsamples : list of float
        Level-0 px per px of each level.
    pixel_size_um : float
        Level-0 pixel size (µm/px).
    min_tls_area_um2 : float
        ``tls.min_area_um2``: the smallest TLS the analysis keeps.
    target_px, max_px : int
        Usual and largest long side of the picture (px).
    min_tls_px : float
        Picture px a round TLS of ``min_tls_area_um2`` must span.

    Returns
    -------
    PictureScale
        The goal is ``target_px``, or the long side that gives a minimum-size TLS
        ``min_tls_px`` px when that is more, at most ``max_px``. Levels from the coarsest one
        at least that long (cheap to read) are mean-binned by whole steps; of the pictures
        where a minimum TLS spans ``min_tls_px`` px, the one nearest the goal wins (the
        coarser level on ties); when none is that fine, the largest, marked not ``legible``.
    """
    if max_px < 1 or target_px < 1:
        raise ValueError(f"qc.png sizes must be >= 1 px, got qc_px={target_px}, qc_max_px={max_px}")
    diameter_um = 2.0 * math.sqrt(max(min_tls_area_um2, 0.0) / math.pi)
    needed = math.ceil(level_sides[0] * pixel_size_um * min_tls_px / diameter_um) if diameter_um > 0 else 1
    goal = min(max(target_px, needed), max_px)
    # read no finer level than the coarsest one at least goal long: the read stays about goal² px
    first = max((level for level, side in enumerate(level_sides) if side >= goal), default=0)
    options = []  # (long side, level, step); side // ceil(side / goal) <= goal <= max_px, so never empty
    for level, side in enumerate(level_sides[first:], start=first):
        for step in {max(1, side // goal), max(1, -(-side // goal))}:
            if side // step <= max_px:
                options.append((side // step, level, step))
    legible = [option for option in options if option[0] >= needed]
    if legible:
        long_side, level, step = min(legible, key=lambda o: (abs(o[0] - goal), -o[1]))
    else:
        long_side, level, step = max(options, key=lambda o: (o[0], o[1]))
    downsample = level_downsamples[level] * step
    tls_px = diameter_um / (pixel_size_um * downsample)
    return PictureScale(level, step, downsample, long_side, tls_px, bool(tls_px >= min_tls_px * (1 - 1e-9)))


def composite(slide, roles: dict[str, str], scale: PictureScale) -> np.ndarray:
    """RGB composite (uint8) of pyramid level ``scale.level``, mean-binned by ``scale.step``."""
    data = slide.levels[scale.level].data
    step = scale.step
    height, width = data.shape[1] // step, data.shape[2] // step
    rgb = np.zeros((3, height, width), np.float32)  # colour planes: whole-plane arithmetic, no (H, W, 3) temporaries
    weighted = np.empty((height, width), np.float64)  # a stretched plane times a colour weight
    for role, colour in ROLE_COLOURS.items():
        if role in roles:
            stretched = _stretch(_binned(data[slide.channel_index(roles[role]), : height * step, : width * step], step))
            for plane, weight in zip(rgb, np.asarray(colour, np.float32)):
                plane += np.multiply(stretched, weight, out=weighted)
    np.clip(rgb, 0, 1, out=rgb)
    rgb *= 255
    np.round(rgb, out=rgb)
    picture = np.empty((height, width, 3), np.uint8)
    for index, plane in enumerate(rgb):
        picture[..., index] = plane  # the cast astype(np.uint8) makes, one colour at a time
    return picture


def _scale_bar_um(width_um: float) -> float:
    target = width_um / 5
    for nice in (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if nice >= target:
            return float(nice)
    return float(10 ** math.ceil(math.log10(target)))


def _rings(mask: np.ndarray, factor: int, offset_cells: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """Outline rings of a grid mask in level-0 px (x, y), the mask's top-left cell at ``offset_cells`` (row, col).

    The rings of :func:`tlsquant.polygons.mask_polygons` (along cell edges, holes too) without its
    polygon simplification: for drawing only, and thousands of artefact specks stay fast.
    """
    from skimage import measure

    if not mask.any():
        return []
    origin = np.asarray((offset_cells[1] - 0.5, offset_cells[0] - 0.5))  # padded index i is cell i - 1: edge at i - 0.5
    return [(contour[:, ::-1] + origin) * factor for contour in measure.find_contours(np.pad(mask.astype(np.uint8), 1), 0.5)]


def _pooled(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask`` on a grid ``size`` times coarser: a cell is set when any of its cells is."""
    if size <= 1:
        return mask
    height, width = -(-mask.shape[0] // size) * size, -(-mask.shape[1] // size) * size
    padded = mask
    if mask.shape != (height, width):
        padded = np.zeros((height, width), bool)
        padded[: mask.shape[0], : mask.shape[1]] = mask
    # row by row, then column by column: any() over a (.., size, .., size) reshape runs size-long inner loops
    rows = np.zeros((height // size, width), bool)
    for offset in range(size):
        rows |= padded[offset::size]
    pooled = np.zeros((height // size, width // size), bool)
    for offset in range(size):
        pooled |= rows[:, offset::size]
    return pooled


def tls_rings(result) -> dict[int, list[np.ndarray]]:
    """Each TLS's outline rings in level-0 px, from its own box of ``tls_labels`` (never the whole grid per TLS)."""
    rings = {}
    for tls_id, box in enumerate(ndi.find_objects(result.tls_labels), start=1):
        if box is not None:
            rings[tls_id] = _rings(result.tls_labels[box] == tls_id, result.fine_factor, (box[0].start, box[1].start))
    return rings


def margin_rings(result) -> list[np.ndarray]:
    """The peritumoral margin's outer line: ``location.margin_um`` from the tumour bed, in level-0 px.

    The same distance map decides each TLS's location, so a centroid inside the line (and
    outside the bed) is peritumoral.
    """
    distance = result.tumour_distance_um
    if distance is None:
        return []
    return _rings(distance <= result.config.location.margin_um, result.coarse_factor)


def rejected_candidates(result) -> list[tuple[str, list[np.ndarray]]]:
    """The rejected TLS candidates annotations.geojson writes (the largest first), as (reason, rings in level-0 px)."""
    candidates = sorted(result.rejected_candidates, key=lambda item: -int(item[2].sum()))[:MAX_CANDIDATES]
    return [(reason, _rings(region, result.fine_factor, (box[0].start, box[1].start)))
            for reason, box, region in candidates]


def _one_to_one_image(axes, rgb: np.ndarray):
    """``axes.imshow(rgb, interpolation="nearest")`` (RGB uint8), drawn without resampling where it maps one to one.

    matplotlib resamples an image even where each picture px is one figure px: float64 RGBA
    copies of the whole picture, a third of qc.png's time. There the resampled image is the
    picture itself (its uint8 -> float -> uint8 round trip leaves every value as it was), so
    that is what is drawn; any other mapping (non-square pixels) is resampled as usual.
    """
    from matplotlib.image import AxesImage
    from matplotlib.transforms import Bbox, TransformedBbox

    class OneToOneImage(AxesImage):
        def make_image(self, renderer, magnification=1.0, unsampled=False):
            # where AxesImage.make_image puts the image: its extent in figure px, clipped, rounded to whole px
            x0, x1, y0, y1 = self.get_extent()
            shown = TransformedBbox(Bbox([[x0, y0], [x1, y1]]), self.get_transform())
            clip = ((self.get_clip_box() or self.axes.bbox) if self.get_clip_on()
                    else self.get_figure(root=True).bbox)
            clipped = Bbox.intersection(shown, clip)
            if magnification != 1.0 or unsampled or clipped is None:
                return super().make_image(renderer, magnification, unsampled)
            extents = clipped.extents
            snapped = np.array([np.floor(extents[0] + 0.5), np.ceil(extents[1] - 0.5 - 1e-8),
                                np.floor(extents[2] + 0.5 + 1e-8), np.ceil(extents[3] - 0.5)])
            whole = np.array([shown.xmin, shown.ymin, shown.xmax, shown.ymax])
            picture = np.asarray(self.get_array())
            height, width = picture.shape[:2]
            if (picture.dtype != np.uint8 or picture.shape[2:] != (3,)
                    or np.abs(whole - snapped).max() > 1e-6  # unclipped, on whole px
                    or (snapped[2] - snapped[0], snapped[3] - snapped[1]) != (width, height)):
                return super().make_image(renderer, magnification, unsampled)
            rgba = np.empty((height, width, 4), np.uint8)
            rgba[..., :3] = picture[::-1]  # bottom row first, as the resampled image comes
            rgba[..., 3] = 255
            return rgba, snapped[0], snapped[1], None

    image = OneToOneImage(axes, interpolation="nearest")
    image.set_data(rgb)
    image.set_clip_path(axes.patch)
    image.set_extent(image.get_extent())
    axes.add_image(image)
    return image


def draw_qc_picture(result, slide, *, target_px: int = Outputs.qc_px, max_px: int = Outputs.qc_max_px,
                    min_tls_px: float = Outputs.qc_min_tls_px, tls_outlines: dict[int, list[np.ndarray]] | None = None):
    """The qc.png figure and what is on it.

    ``tls_outlines``: :func:`tls_rings` of ``result`` where the caller has them (the gallery draws them too).

    Returns
    -------
    figure : matplotlib.figure.Figure
        Picture px (x, y) lie at figure px (x, y + ``info["image_top_px"]``) at 100 dpi.
    info : dict
        ``scale`` (:class:`PictureScale`), ``image_px`` (width, height), ``image_top_px``,
        ``legend`` (labels in order), ``title``, ``candidates`` (reason and picture bbox of
        each drawn), ``margin_rings`` (picture px), ``tls_px`` (the min-size TLS, px across).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    roles = result.roles
    scale = picture_scale([max(level.shape[1:]) for level in slide.levels],
                          [level.downsample_x for level in slide.levels], pixel_size_um=result.pixel_size.x_um,
                          min_tls_area_um2=result.config.tls.min_area_um2, target_px=target_px, max_px=max_px,
                          min_tls_px=min_tls_px)
    rgb = composite(slide, roles, scale)
    downsample = scale.downsample
    height, width = rgb.shape[:2]
    dpi = 100
    font = 7 * max(1.0, max(width, height) / 1200) ** 0.5  # legible when a big picture is viewed whole
    pt = dpi / 72  # px per point

    def to_picture(ring):
        return np.asarray(ring) / downsample - 0.5

    def rgb01(colour):
        return tuple(np.asarray(colour) / 255)

    handles = []
    layers = []  # (rings, colour or one colour per ring, width, style)
    layers.append((_rings(result.tumour_mask, result.coarse_factor), TUMOUR_LINE, 1.6, "solid"))
    handles.append(Line2D([], [], color=rgb01(TUMOUR_LINE), linewidth=1.6, label="tumour bed"))
    margin = margin_rings(result)
    if margin:
        layers.append((margin, MARGIN_LINE, 1.2, (0, (1, 2))))
        handles.append(Line2D([], [], color=rgb01(MARGIN_LINE), linewidth=1.2, linestyle=(0, (1, 2)),
                              label=f"peritumoral margin ({result.config.location.margin_um:g} µm)"))
    has_artefacts = result.debris_mask is not None and result.debris_mask.any()
    if has_artefacts:
        pool = max(1, int(downsample // result.fine_factor))  # outline no finer than the picture: thousands of specks
        layers.append((_rings(_pooled(result.debris_mask, pool), result.fine_factor * pool), ARTEFACT_COLOUR, 0.8, "solid"))
        area = result.metrics.get("excluded_artefact_area_mm2", 0.0)
        handles.append(Line2D([], [], color=rgb01(ARTEFACT_COLOUR), label=f"excluded artefacts ({area:.3f} mm²)"))
    candidates = rejected_candidates(result)
    by_reason: dict[str, int] = {}
    for reason, _ in candidates:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    dashed = (0, (3, 2))
    if candidates:
        layers.append(([ring for _, rings in candidates for ring in rings], CANDIDATE_LINE, 1.1, dashed))
    for reason, count in by_reason.items():
        handles.append(Line2D([], [], color=rgb01(CANDIDATE_LINE), linewidth=1.1, linestyle=dashed,
                              label=f"rejected: {REASON_LABELS.get(reason, reason)} ({count})"))
    outlines = tls_rings(result) if tls_outlines is None else tls_outlines
    stages_seen = []
    tls_lines, tls_colours = [], []  # one collection for all TLS, each ring in its stage's colour: drawn the same
    for row in result.tls.itertuples(index=False):
        rings = outlines.get(row.tls_id, [])
        tls_lines += rings
        tls_colours += [STAGE_COLOURS.get(row.stage, (255, 255, 0))] * len(rings)
        if row.stage not in stages_seen:
            stages_seen.append(row.stage)
    layers.append((tls_lines, tls_colours, 1.4, "solid"))
    handles += [Line2D([], [], color=rgb01(STAGE_COLOURS.get(s, (255, 255, 0))), linewidth=1.4, label=f"TLS {s}")
                for s in stages_seen]
    handles += [Line2D([], [], color=c, marker="s", linestyle="", label=f"{roles[r]}")
                for r, c in ROLE_COLOURS.items() if r in roles]

    summary = result.metrics
    density = summary["tls_density_per_mm2"]
    title = (f"{result.slide_id}: {summary['tls_count']} TLS ({summary['tls_mature_count']} mature), "
             f"tumour {summary['tumour_area_mm2']:.2f} mm², density "
             f"{'n/a' if density is None else f'{density:.3f}'} /mm²")
    if not scale.legible:
        title += (f"  |  a TLS of {result.config.tls.min_area_um2:g} µm² spans only {scale.min_tls_px:.1f} px here "
                  "(qc_max_px): see tls_gallery.html")
    columns = min(len(handles), 5)
    rows = math.ceil(len(handles) / columns)
    title_px = int(round(2.2 * font * pt))
    legend_px = int(round((rows * 1.7 + 1.0) * font * pt))
    # non-square pixels: each picture pixel drawn as tall as it is in µm, so shapes and the scale bar are true
    aspect = result.pixel_size.y_um / result.pixel_size.x_um
    shown_height = max(1, int(round(height * aspect)))
    total_px = title_px + shown_height + legend_px
    figure = plt.figure(figsize=(width / dpi, total_px / dpi), dpi=dpi)
    axes = figure.add_axes([0, legend_px / total_px, 1, shown_height / total_px])
    axes.set_aspect(aspect)
    _one_to_one_image(axes, rgb)
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_axis_off()
    for rings, colours, line_width, style in layers:
        if rings:
            colours = [rgb01(colour) for colour in colours] if isinstance(colours, list) else [rgb01(colours)]
            axes.add_collection(LineCollection([to_picture(ring) for ring in rings], colors=colours,
                                               linewidths=line_width, linestyles=style))
    drawn = []
    for number, (reason, rings) in enumerate(candidates):
        if not rings:
            continue
        xy = np.concatenate([to_picture(ring) for ring in rings])
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        drawn.append({"reason": reason, "bbox_px": (float(x0), float(y0), float(x1), float(y1))})
        if number < MAX_LABELLED_CANDIDATES:
            axes.text((x0 + x1) / 2, y0 - 1, REASON_LABELS.get(reason, reason), color=rgb01(CANDIDATE_LINE),
                      fontsize=0.8 * font, ha="center", va="bottom", clip_on=True)
    px_um = result.pixel_size_um
    for row in result.tls.itertuples(index=False):
        axes.text(row.centroid_x_um / px_um[0] / downsample, row.centroid_y_um / px_um[1] / downsample,
                  str(row.tls_id), color="white", fontsize=font, ha="center", va="center", clip_on=True)
    bar_um = _scale_bar_um(width * downsample * px_um[0])
    bar_px = bar_um / (px_um[0] * downsample)
    axes.plot([width * 0.03, width * 0.03 + bar_px], [height * 0.96] * 2, color="white", linewidth=3)
    axes.text(width * 0.03 + bar_px / 2, height * 0.94, f"{bar_um:g} µm", color="white", ha="center",
              va="bottom", fontsize=1.15 * font)
    figure.legend(handles=handles, loc="lower center", ncol=columns, fontsize=font, frameon=False,
                  labelcolor="white", bbox_to_anchor=(0.5, 0.2 * font * pt / total_px))
    figure.text(0.5, 1 - 0.5 * title_px / total_px, title, ha="center", va="center", fontsize=1.1 * font,
                color="white")
    info = {"scale": scale, "image_px": (width, height), "shown_px": (width, shown_height), "image_top_px": title_px,
            "size_px": (width, total_px),
            "legend": [handle.get_label() for handle in handles], "title": title, "candidates": drawn,
            "margin_rings": [to_picture(ring) for ring in margin], "tls_px": scale.min_tls_px}
    return figure, info


def write_qc_picture(result, slide, path: Path, *, target_px: int = Outputs.qc_px, max_px: int = Outputs.qc_max_px,
                     min_tls_px: float = Outputs.qc_min_tls_px,
                     tls_outlines: dict[int, list[np.ndarray]] | None = None) -> Path:
    """qc.png (see the module docstring), written atomically; ``tls_outlines`` as for :func:`draw_qc_picture`."""
    import matplotlib.pyplot as plt

    figure, _ = draw_qc_picture(result, slide, target_px=target_px, max_px=max_px, min_tls_px=min_tls_px,
                                tls_outlines=tls_outlines)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100, facecolor="black", pil_kwargs=FAST_PNG)
    finally:
        plt.close(figure)
    return path


def write_threshold_picture(result, path: Path) -> Path:
    """thresholds.png: per channel, the level-0 sample on tissue and on glass with glass level, background and threshold.

    One small panel per channel role: a user can see whether the threshold sits above
    the tissue's background hump and below its positive tail.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    histograms = result.signal_histograms
    thresholds = result.thresholds
    roles = [role for role in histograms if role in thresholds]
    columns = min(4, max(1, len(roles)))
    rows = max(1, math.ceil(len(roles) / columns))
    figure, axes_grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for axes in axes_grid.ravel()[len(roles):]:
        axes.set_axis_off()
    for axes, role in zip(axes_grid.ravel(), roles):
        hist, info = histograms[role], thresholds[role]
        edges = np.asarray(hist["edges"])
        centres = 0.5 * (edges[1:] + edges[:-1])
        for key, colour in (("glass", "0.55"), ("tissue", "tab:green")):  # sampled pixels
            counts = np.asarray(hist[key], float)
            if counts.sum():
                axes.fill_between(centres, counts / counts.sum(), step="mid", alpha=0.45, color=colour, label=f"{key} pixels")
        axes.set_yscale("log")
        # no minor ticks: each of the ~50 per log axis is a set of artists, a third of the picture's time
        axes.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        lines = [("glass_level", "0.3", "glass level"), ("background_median", "tab:blue", "background"),
                 ("threshold_median", "tab:red", "threshold")]
        for key, colour, label in lines:
            if info.get(key) is not None:
                axes.axvline(info[key], color=colour, linewidth=1.2, label=label)
        if info.get("threshold_p05") is not None:
            axes.axvspan(info["threshold_p05"], info["threshold_p95"], color="tab:red", alpha=0.12)
        # y given: matplotlib then skips measuring every tick label to place the title (most of the picture's time)
        axes.set_title(f"{role}: {info['channel']} ({info['method']})", fontsize=8, y=1.0)
        axes.tick_params(labelsize=6)
        axes.set_xlabel("intensity (level-0 sample)", fontsize=6)
    handles, labels = axes_grid.ravel()[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    figure.suptitle(f"{result.slide_id}: background and thresholds (red band: 5-95 % of the local thresholds on tissue)",
                    fontsize=8)
    # fixed margins: tight_layout measured every tick label of every panel, seconds per slide
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.06 + 0.5 / (2.4 * rows), top=1 - 0.55 / (2.4 * rows),
                           wspace=0.28, hspace=0.75)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, pil_kwargs=FAST_PNG)
    plt.close(figure)
    return path
