"""qc.png: a downsampled composite with tumour and TLS outlines, legend and scale bar."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path
from .geometry import STAGE_COLOURS, outline_polygons

# composite colours per channel role: B cells red, T cells green, nuclei blue, tumour grey
ARTEFACT_COLOUR = (255, 0, 255)  # debris, red blood cells, edge rims: excluded from TLS and cells
ROLE_COLOURS = {"b_cells": (1.0, 0.2, 0.2), "t_cells": (0.1, 0.85, 0.2), "nuclei": (0.15, 0.25, 0.8),
                "tumour": (0.35, 0.35, 0.35)}


def _stretch(plane: np.ndarray) -> np.ndarray:
    # black at the typical (mostly negative) level, white at the brightest structures
    plane = plane.astype(np.float32)
    low, high = np.percentile(plane, [60, 99.8])
    return np.clip((plane - low) / max(high - low, 1e-6), 0, 1)


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


def composite(slide, roles: dict[str, str], *, max_px: int) -> tuple[np.ndarray, float]:
    """RGB composite from the coarsest level still at least ``max_px`` wide (or level 0), strided down."""
    level = 0
    for index in range(len(slide.levels)):
        if max(slide.levels[index].shape[1:]) >= max_px:
            level = index
    data = slide.levels[level].data
    step = max(1, math.ceil(max(data.shape[1:]) / max_px))
    height, width = data.shape[1] // step, data.shape[2] // step
    rgb = np.zeros((height, width, 3), np.float32)
    for role, colour in ROLE_COLOURS.items():
        if role in roles:
            plane = _binned(data[slide.channel_index(roles[role]), : height * step, : width * step], step)
            rgb += _stretch(plane)[..., None] * np.asarray(colour, np.float32)
    downsample = slide.levels[level].downsample_x * step  # level-0 px per picture px
    return np.clip(rgb, 0, 1), downsample


def _scale_bar_um(width_um: float) -> float:
    target = width_um / 5
    for nice in (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if nice >= target:
            return float(nice)
    return float(10 ** math.ceil(math.log10(target)))


def write_qc_picture(result, slide, path: Path, *, max_px: int = 2000) -> Path:
    """Composite with the tumour outline and TLS outlines coloured by stage."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    roles = result.summary["segmentation"]["channel_roles"]
    rgb, downsample = composite(slide, roles, max_px=max_px)
    height, width = rgb.shape[:2]
    dpi = 100
    figure = plt.figure(figsize=(width / dpi, height / dpi + 0.6), dpi=dpi)
    axes = figure.add_axes([0, 0.6 / (height / dpi + 0.6), 1, height / (height + 60)])
    axes.imshow(rgb, interpolation="nearest")
    axes.set_axis_off()

    def draw(mask, factor, colour, width_px):
        for ring in outline_polygons(mask, factor):
            xy = np.asarray(ring) / downsample - 0.5
            axes.plot(xy[:, 0], xy[:, 1], color=np.asarray(colour) / 255, linewidth=width_px)

    draw(result.tumour_mask, result.coarse_factor, (255, 220, 0), 1.6)
    has_artefacts = result.debris_mask is not None and result.debris_mask.any()
    if has_artefacts:
        draw(result.debris_mask, result.fine_factor, ARTEFACT_COLOUR, 0.8)
    stages_seen = []
    for row in result.tls.itertuples(index=False):
        draw(result.tls_labels == row.tls_id, result.fine_factor, STAGE_COLOURS[row.stage], 1.4)
        axes.text(row.centroid_x_um / result.pixel_size_um[0] / downsample,
                  row.centroid_y_um / result.pixel_size_um[1] / downsample, str(row.tls_id),
                  color="white", fontsize=7, ha="center", va="center")
        if row.stage not in stages_seen:
            stages_seen.append(row.stage)
    bar_um = _scale_bar_um(width * downsample * result.pixel_size_um[0])
    bar_px = bar_um / (result.pixel_size_um[0] * downsample)
    axes.plot([width * 0.03, width * 0.03 + bar_px], [height * 0.96] * 2, color="white", linewidth=3)
    axes.text(width * 0.03 + bar_px / 2, height * 0.94, f"{bar_um:g} µm", color="white", ha="center",
              va="bottom", fontsize=8)
    handles = [Line2D([], [], color=np.asarray((255, 220, 0)) / 255, label="tumour bed")]
    if has_artefacts:
        area = result.summary.get("excluded_artefact_area_mm2", 0.0)
        handles.append(Line2D([], [], color=np.asarray(ARTEFACT_COLOUR) / 255, label=f"excluded artefacts ({area:.3f} mm²)"))
    handles += [Line2D([], [], color=np.asarray(STAGE_COLOURS[s]) / 255, label=f"TLS {s}")
                for s in stages_seen]
    handles += [Line2D([], [], color=c, marker="s", linestyle="", label=f"{roles[r]}")
                for r, c in ROLE_COLOURS.items() if r in roles]
    summary = result.summary
    density = summary["tls_density_per_mm2"]
    title = (f"{result.slide_id}: {summary['tls_count']} TLS ({summary['tls_mature_count']} mature), "
             f"tumour {summary['tumour_area_mm2']:.2f} mm², density "
             f"{'n/a' if density is None else f'{density:.3f}'} /mm²")
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False,
                  labelcolor="white")
    figure.text(0.5, 1 - 0.3 / (height / dpi + 0.6), title, ha="center", va="center", fontsize=8,
                color="white", bbox={"facecolor": "black", "alpha": 0.5, "edgecolor": "none"})
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, facecolor="black")
    plt.close(figure)
    return path


def write_threshold_picture(result, path: Path) -> Path:
    """thresholds.png: per channel, the level-0 sample on tissue and on glass with glass level, background and threshold.

    One small panel per channel role: a user can see whether the threshold sits above
    the tissue's background hump and below its positive tail.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    histograms = result.signal_histograms
    thresholds = result.summary["thresholds"]
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
        lines = [("glass_level", "0.3", "glass level"), ("background_median", "tab:blue", "background"),
                 ("threshold_median", "tab:red", "threshold")]
        for key, colour, label in lines:
            if info.get(key) is not None:
                axes.axvline(info[key], color=colour, linewidth=1.2, label=label)
        if info.get("threshold_p05") is not None:
            axes.axvspan(info["threshold_p05"], info["threshold_p95"], color="tab:red", alpha=0.12)
        axes.set_title(f"{role}: {info['channel']} ({info['method']})", fontsize=8)
        axes.tick_params(labelsize=6)
        axes.set_xlabel("intensity (level-0 sample)", fontsize=6)
    handles, labels = axes_grid.ravel()[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    figure.suptitle(f"{result.slide_id}: background and thresholds (red band: 5-95 % of the local thresholds on tissue)",
                    fontsize=8)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path
