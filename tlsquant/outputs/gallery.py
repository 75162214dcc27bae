"""tls_gallery.html and tls_gallery/TLS-<id>.png: every TLS up close, one panel per lymphoid channel.

Each TLS gets one picture: an overlay (B cells red, T cells green, nuclei blue) and one grey
panel per lymphoid channel role the slide has (B cells, T cells, FDC, germinal centre; the
names come from the resolved channel roles), each with the TLS outlined in its stage colour
(neighbouring TLS thinner), a caption (id, stage, location, area) and a scale bar. The
window is the TLS's box plus ``CONTEXT_UM`` (or a quarter of its size) around it, read from
the finest pyramid level where it fits in ``outputs.gallery_crop_px``, or mean-binned from
the coarsest level when none does; only those windows are read, never whole channels: their
tiles decoded in the drawing threads (no dask graph scheduled per window), a tile neighbouring
windows share decoded once.
Grey levels are fixed per channel for the whole slide (black at the tissue background,
white at threshold + the typical positive signal), so a negative channel looks negative.

At most ``outputs.gallery_max_tls`` TLS are shown (the largest); the page says when some
are left out. tls_gallery.html embeds the pictures as data URIs (JPEG, a third of the
PNG's size: 200 TLS stay tens of MB), one file to mail around; with ``outputs.gallery_png``
tls_gallery/ keeps them lossless too (PNG encoding of these noisy pictures is ~0.1 s CPU
each, most of the gallery's time, so it is asked for).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Outputs
from ..io.atomic import atomic_path, write_text_atomic
from .geometry import STAGE_COLOURS
from .qc import FAST_PNG, _binned, _scale_bar_um, tls_rings

PANEL_ROLES = (("b_cells", "B cells"), ("t_cells", "T cells"), ("fdc", "FDC"), ("germinal_centre", "germinal centre"))
OVERLAY_ROLES = (("b_cells", (1.0, 0.2, 0.2)), ("t_cells", (0.1, 0.85, 0.2)), ("nuclei", (0.25, 0.35, 1.0)))
CONTEXT_UM = 40.0  # around the box: the T-cell zone and the neighbourhood
WINDOW_CHUNK_PX = 512  # windows are read through chunks of about one storage tile: little decoded beyond them
GAP_PX = 4
HTML_JPEG_QUALITY = 75  # ~150 kB a TLS: a slide with dozens of TLS stays a page one can e-mail
MIN_PANEL_PX = 200  # smaller crops (coarse pixels) are shown blown up by a whole factor
UNKNOWN_STAGE = (255, 255, 0)


@dataclass(frozen=True)
class CropWindow:
    """A TLS's window: pyramid ``level``, its px ``y0:y1, x0:x1``, mean-binned by ``step``."""

    level: int
    step: int
    y0: int
    y1: int
    x0: int
    x1: int
    level_downsample: tuple[float, float]  # level-0 px per level px (y, x)

    @property
    def crop_shape(self) -> tuple[int, int]:
        """(height, width) of the crop in px."""
        return (self.y1 - self.y0) // self.step, (self.x1 - self.x0) // self.step

    @property
    def downsample(self) -> tuple[float, float]:
        """Level-0 px per crop px (y, x): 1 at native resolution."""
        return self.level_downsample[0] * self.step, self.level_downsample[1] * self.step

    def to_crop(self, ring: np.ndarray) -> np.ndarray:
        """Level-0 px (x, y) -> crop px (x, y), edges to edges."""
        (dy, dx), (ly, lx) = self.downsample, self.level_downsample
        return (np.asarray(ring, np.float64) - (self.x0 * lx, self.y0 * ly)) / (dx, dy)


def crop_window(bbox_px: tuple[float, float, float, float], levels: list[tuple[tuple[int, int], float, float]], *,
                pixel_size_um: float, max_px: int = Outputs.gallery_crop_px, context_um: float = CONTEXT_UM) -> CropWindow:
    """The window showing a TLS whose level-0 box is ``bbox_px`` (x0, y0, x1, y1).

    ``levels`` holds per pyramid level its (height, width) and downsample (y, x) against
    level 0. The box grows by ``context_um`` or a quarter of its size, whichever is more,
    clipped to the slide; the finest level where the window fits in ``max_px`` is used
    (level 0 for a TLS that small: native resolution), else the coarsest level binned by
    the smallest step that fits.
    """
    if max_px < 1:
        raise ValueError(f"outputs.gallery_crop_px must be >= 1, got {max_px}")
    x0, y0, x1, y1 = bbox_px
    pad = max(context_um / pixel_size_um, 0.25 * max(x1 - x0, y1 - y0))
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad

    def at(level):
        (height, width), ds_y, ds_x = levels[level]
        return (max(0, math.floor(y0 / ds_y)), min(height, math.ceil(y1 / ds_y)),
                max(0, math.floor(x0 / ds_x)), min(width, math.ceil(x1 / ds_x)))

    for level in range(len(levels)):
        wy0, wy1, wx0, wx1 = at(level)
        if max(wy1 - wy0, wx1 - wx0) <= max_px:
            return CropWindow(level, 1, wy0, wy1, wx0, wx1, (levels[level][1], levels[level][2]))
    level = len(levels) - 1
    wy0, wy1, wx0, wx1 = at(level)
    step = math.ceil(max(wy1 - wy0, wx1 - wx0) / max_px)
    # whole bins only: trim the far edges to multiples of step
    wy1, wx1 = wy0 + (wy1 - wy0) // step * step, wx0 + (wx1 - wx0) // step * step
    return CropWindow(level, step, wy0, wy1, wx0, wx1, (levels[level][1], levels[level][2]))


class SharedChunks:
    """Decoded chunks that several windows read: kept from the first window's read until the last one's.

    ``uses`` counts the windows reading each chunk (by dask key); a chunk read once is never kept.
    Windows in threads may decode a chunk twice when they ask for it at the same time (rarely; the
    same pixels either way).
    """

    def __init__(self, uses: dict[tuple, int]):
        self._uses = {key: count for key, count in uses.items() if count > 1}
        self._kept: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, decode) -> np.ndarray:
        """Chunk ``key``: the kept one, or ``decode()``; counts this window's use of it."""
        if key not in self._uses:
            return decode()
        with self._lock:
            chunk = self._kept.get(key)
        if chunk is None:
            chunk = decode()
        with self._lock:
            self._uses[key] -= 1
            if self._uses[key] > 0:
                self._kept[key] = chunk
            else:
                self._kept.pop(key, None)
        return chunk


def window_chunks(data, window: CropWindow, channel: int) -> list[tuple[tuple, tuple[int, int, int]]]:
    """The chunks of channel ``channel`` of a lazy (C, Y, X) level ``data`` that ``window`` (step 1) reads:
    (dask key, (c, y, x) of the chunk's first px)."""
    from ..blocks import block_range

    c_edges, y_edges, x_edges = (np.cumsum((0,) + tuple(chunks)) for chunks in data.chunks)
    k = block_range(c_edges, (channel, channel + 1))[0]
    return [((data.name, k, i, j), (int(c_edges[k]), int(y_edges[i]), int(x_edges[j])))
            for i in block_range(y_edges, (window.y0, window.y1)) for j in block_range(x_edges, (window.x0, window.x1))]


def _read_chunks(data, window: CropWindow, channels: list[int], shared: SharedChunks | None) -> list[np.ndarray]:
    """The window (step 1) of each channel (index into ``data``), float32: the chunks' tasks run here, in this thread.

    Scheduling a graph per window costs about as much as decoding its few tiles; a graph
    that is not plain dicts of tasks is culled to the window's chunks first (see
    :func:`tlsquant.blocks.runnable_graph`).
    Raises :class:`tlsquant.blocks.NotTaskSpec` where a graph node is not a task-spec one.
    """
    from ..blocks import run_task, runnable_graph

    chunks = {channel: window_chunks(data, window, channel) for channel in channels}
    keys = {key for keys in chunks.values() for key, _ in keys}
    graph = runnable_graph(data, keys)
    decode = functools.partial(run_task, graph, {})
    planes = []
    for channel in channels:
        plane = np.empty((window.y1 - window.y0, window.x1 - window.x0), np.float32)
        for key, (first, top, left) in chunks[channel]:
            chunk = np.asarray(shared.get(key, functools.partial(decode, key)) if shared is not None else decode(key))
            y0, y1 = max(window.y0, top), min(window.y1, top + chunk.shape[1])
            x0, x1 = max(window.x0, left), min(window.x1, left + chunk.shape[2])
            plane[y0 - window.y0: y1 - window.y0, x0 - window.x0: x1 - window.x0] = \
                chunk[channel - first, y0 - top: y1 - top, x0 - left: x1 - left]
        planes.append(plane)
    return planes


def read_window(slide, window: CropWindow, channels: list[str], *, threaded: bool = True,
                shared: SharedChunks | None = None) -> dict[str, np.ndarray]:
    """The window of each channel (float32, binned by ``window.step``): only its chunks are read.

    At step 1 the chunks are decoded in this thread, those ``shared`` keeps taken from it;
    ``threaded=False`` reads a graph that cannot be run so (older dask, foreign arrays) in the
    calling thread too (the caller already runs windows in parallel).
    """
    import dask

    from ..blocks import NotTaskSpec

    data = slide.levels[window.level].data
    if window.step == 1:
        with contextlib.suppress(NotTaskSpec):
            return dict(zip(channels, _read_chunks(data, window, [slide.channel_index(name) for name in channels], shared)))
    planes = {name: data[slide.channel_index(name), window.y0: window.y1, window.x0: window.x1] for name in channels}
    if window.step > 1:
        return {name: _binned(plane, window.step) for name, plane in planes.items()}
    values = dask.compute(*planes.values(), scheduler=None if threaded else "sync")
    return {name: np.asarray(value, np.float32) for name, value in zip(planes, values)}


def _display_range(info: dict | None, plane: np.ndarray) -> tuple[float, float]:
    """Black at the tissue background, white at threshold + the typical positive signal; the crop's own spread without them."""
    if info and info.get("background_median") is not None and info.get("threshold_median") is not None:
        low, threshold = float(info["background_median"]), float(info["threshold_median"])
        lift = float(info.get("positive_scale") or 0.0) or 2.0 * float(info.get("margin") or 0.0)
        high = max(threshold, low) + lift
        if high > low:
            return low, high
    low, high = np.percentile(plane, [50, 99.5]) if plane.size else (0.0, 1.0)
    return float(low), float(max(high, low + 1e-6))


def _font(size: int):
    """matplotlib's DejaVu Sans (it has µ and ²; PIL's own default font does not)."""
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _stage_colour(stage) -> tuple[int, int, int]:
    return tuple(STAGE_COLOURS.get(stage, UNKNOWN_STAGE))


@dataclass
class GalleryEntry:
    """One TLS of the gallery: its picture (PNG bytes, None when not asked for) and how it was cut."""

    tls_id: int
    caption: str
    window: CropWindow
    panels: list[str]
    png: bytes | None
    zoom: int = 1  # display px per crop px (small crops are blown up)
    jpeg_bytes: bytes | None = None  # made with the PNG, from the same canvas

    def jpeg(self, quality: int = HTML_JPEG_QUALITY) -> bytes:
        """The picture as JPEG: the page embeds these (a third of the PNG's size); the PNGs stay lossless."""
        if self.jpeg_bytes is not None and quality == HTML_JPEG_QUALITY:
            return self.jpeg_bytes
        if self.png is None:
            raise ValueError(f"TLS {self.tls_id}'s picture was made without its PNG: only the page's JPEG "
                             f"(quality {HTML_JPEG_QUALITY}) is kept")
        from PIL import Image

        return _jpeg(Image.open(io.BytesIO(self.png)).convert("RGB"), quality)

    @property
    def file_name(self) -> str:
        return f"TLS-{self.tls_id}.png"


def _jpeg(image, quality: int = HTML_JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _caption(row, window: CropWindow, pixel_size_um: float) -> str:
    import pandas as pd

    distance = getattr(row, "distance_to_tumour_um", None)
    where = row.location if distance is None or pd.isna(distance) else f"{row.location} ({distance:+.0f} µm)"
    counted = "counted" if bool(row.counted) else "not counted"
    binned = f" binned {window.step}x" if window.step > 1 else ""
    return (f"TLS {row.tls_id} · {row.stage} · {where} · {row.area_um2:,.0f} µm² · {counted} · "
            f"level {window.level}{binned}, {pixel_size_um * window.downsample[1]:.2f} µm/px")


def render_tls(row, planes: dict[str, np.ndarray], window: CropWindow, *, roles: dict[str, str], thresholds: dict,
               rings: dict[int, list[np.ndarray]], pixel_size_um: float, with_jpeg: bool = False,
               with_png: bool = True) -> tuple[bytes | None, list[str], str, int] | tuple[bytes | None, list[str], str, int, bytes]:
    """One TLS's picture: overlay + one grey panel per lymphoid role present, outlines, caption, scale bar.

    ``rings`` holds the level-0 outline rings of this TLS and of any neighbour in the window.
    A crop under ``MIN_PANEL_PX`` is blown up by a whole factor (each px a square).
    Returns the PNG bytes (None without ``with_png``), the panel labels, the caption and that zoom (and the
    JPEG bytes with ``with_jpeg``).
    """
    from PIL import Image, ImageDraw

    crop_height, crop_width = window.crop_shape
    side = max(crop_height, crop_width, 1)
    zoom = -(-MIN_PANEL_PX // side) if side < MIN_PANEL_PX else 1  # whole px blown up, never resampled
    height, width = crop_height * zoom, crop_width * zoom
    scaled = {}
    for role, name in roles.items():
        if name in planes:
            low, high = _display_range(thresholds.get(role), planes[name])
            scaled[role] = np.clip((planes[name][:crop_height, :crop_width] - low) / (high - low), 0, 1)

    def to_image(grey: np.ndarray):  # 0-1 -> uint8, blown up by zoom, as a PIL image
        grey = (grey * 255).astype(np.uint8)
        return Image.fromarray(np.repeat(np.repeat(grey, zoom, 0), zoom, 1) if zoom > 1 else grey)

    panels = []  # (label, RGB PIL image)
    # colour by colour: arithmetic on (H, W, 3) float arrays runs 3-long inner loops, most of a picture's time
    overlay = np.zeros((3, crop_height, crop_width), np.float32)
    for role, colour in OVERLAY_ROLES:
        if role in scaled:
            for plane, weight in zip(overlay, np.asarray(colour, np.float32)):
                plane += scaled[role] * weight
    names = " / ".join(roles[role] for role, _ in OVERLAY_ROLES if role in scaled)
    panels.append((f"overlay: {names}", Image.merge("RGB", [to_image(np.clip(plane, 0, 1)) for plane in overlay])))
    for role, what in PANEL_ROLES:
        if role in scaled:
            panels.append((f"{roles[role]} ({what})", to_image(scaled[role]).convert("RGB")))

    # flat x, y lists, made once for all panels; this TLS last (on top)
    outlines = sorted((((window.to_crop(ring) * zoom).ravel().tolist(), tls_id == row.tls_id)
                       for tls_id, tls_rings_l0 in rings.items() for ring in tls_rings_l0), key=lambda item: item[1])
    font_px = max(11, min(16, width // 14))
    font = _font(font_px)
    caption = _caption(row, window, pixel_size_um)
    canvas_width = len(panels) * (width + GAP_PX) - GAP_PX
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [""]
    for part in caption.split(" · "):  # wrap at the separators
        joined = f"{lines[-1]} · {part}" if lines[-1] else part
        if lines[-1] and draw.textlength(joined, font=font) > canvas_width - 8:
            lines.append(part)
        else:
            lines[-1] = joined
    top = len(lines) * (font_px + 6) + 4
    header = font_px + 8
    canvas = Image.new("RGB", (canvas_width, top + header + height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text((4, 4 + number * (font_px + 6)), line, fill=(255, 255, 255), font=font)
    for index, (label, panel) in enumerate(panels):
        panel_draw = ImageDraw.Draw(panel)  # drawing on the panel clips the outlines to it
        for xy, own in outlines:
            colour = _stage_colour(row.stage) if own else (170, 170, 170)
            panel_draw.line(xy, fill=colour, width=2 if own else 1, joint="curve")
        if index == 0:  # scale bar on the overlay
            bar_um = _scale_bar_um(crop_width * window.downsample[1] * pixel_size_um * 1.25)
            bar_px = bar_um / (pixel_size_um * window.downsample[1]) * zoom
            panel_draw.line([(6, height - 8), (6 + bar_px, height - 8)], fill=(255, 255, 255), width=3)
            panel_draw.text((6, height - 12 - font_px), f"{bar_um:g} µm", fill=(255, 255, 255), font=font)
        left = index * (width + GAP_PX)
        canvas.paste(panel, (left, top + header))
        while len(label) > 1 and draw.textlength(label, font=font) > width - 6:  # a narrow panel: shorten its label
            label = label[:-2] + "…"
        draw.text((left + 4, top + 2), label, fill=(230, 230, 230), font=font)
    png = None
    if with_png:
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG", **FAST_PNG)
        png = buffer.getvalue()
    made = (png, [label for label, _ in panels], caption, zoom)
    return (*made, _jpeg(canvas)) if with_jpeg else made


def _shown(table, max_tls: int):
    """The ``max_tls`` largest TLS, in id order."""
    return table.sort_values(["area_um2", "tls_id"], ascending=[False, True]).head(max(max_tls, 0)).sort_values("tls_id")


def iter_gallery(result, slide, *, max_tls: int = Outputs.gallery_max_tls, crop_px: int = Outputs.gallery_crop_px,
                 png: bool = True, workers: int = 1,
                 tls_outlines: dict[int, list[np.ndarray]] | None = None) -> Iterator[GalleryEntry]:
    """The gallery's pictures one at a time (the ``max_tls`` largest TLS, in id order), as PNG when ``png``
    and always as the page's JPEG.

    ``workers`` threads draw pictures ahead (reading, drawing and PNG/JPEG encoding mostly
    release the GIL); memory holds about ``2 * workers`` pictures, never the gallery's, and the
    decoded chunks neighbouring windows share until the last of them is drawn.
    ``tls_outlines``: :func:`~tlsquant.outputs.qc.tls_rings` of ``result`` where the caller has them.
    """
    if not len(result.tls):
        return
    roles, thresholds = result.roles, result.thresholds
    wanted = [role for role, _ in PANEL_ROLES] + ["nuclei"]
    channels = [roles[role] for role in wanted if role in roles]
    reader = slide
    if slide.tile_shape and slide.tile_shape[1] < slide.shape[2] and slide.reopen is not None:
        reader = slide.with_chunks(WINDOW_CHUNK_PX)  # a window decodes a few tiles, not a few 2048-px chunks
    levels = [(level.shape[1:], level.downsample_y, level.downsample_x) for level in reader.levels]
    rings = tls_rings(result) if tls_outlines is None else tls_outlines
    boxes = {tls_id: (min(r[:, 0].min() for r in rs), min(r[:, 1].min() for r in rs),
                      max(r[:, 0].max() for r in rs), max(r[:, 1].max() for r in rs)) for tls_id, rs in rings.items() if rs}
    pixel_size_um = result.pixel_size.x_um
    rows = list(_shown(result.tls, max_tls).itertuples(index=False))
    windows = [crop_window((row.bbox_x0_px, row.bbox_y0_px, row.bbox_x1_px, row.bbox_y1_px), levels,
                           pixel_size_um=pixel_size_um, max_px=crop_px) for row in rows]
    uses: dict[tuple, int] = {}
    for window in windows:
        if window.step == 1:
            for channel in channels:
                for key, _ in window_chunks(reader.levels[window.level].data, window, reader.channel_index(channel)):
                    uses[key] = uses.get(key, 0) + 1
    shared = SharedChunks(uses)

    def entry(row, window: CropWindow) -> GalleryEntry:
        (ly, lx) = window.level_downsample
        x0, y0, x1, y1 = window.x0 * lx, window.y0 * ly, window.x1 * lx, window.y1 * ly
        near = {tls_id: rings[tls_id] for tls_id, (bx0, by0, bx1, by1) in boxes.items()
                if bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0}
        picture, panels, caption, zoom, jpeg = render_tls(
            row, planes=read_window(reader, window, channels, threaded=workers <= 1, shared=shared), window=window,
            roles={r: roles[r] for r in wanted if r in roles}, thresholds=thresholds, rings=near,
            pixel_size_um=pixel_size_um, with_jpeg=True, with_png=png)
        return GalleryEntry(int(row.tls_id), caption, window, panels, picture, zoom, jpeg)

    if workers <= 1:
        yield from map(entry, rows, windows)
        return
    from concurrent.futures import ThreadPoolExecutor

    todo = list(zip(rows, windows))
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(entry, *item) for item in todo[: 2 * workers]]
        for item in todo[2 * workers:] + [None] * len(pending):
            done = pending.pop(0).result()  # in id order
            if item is not None:
                pending.append(pool.submit(entry, *item))
            yield done


def gallery_entries(result, slide, *, max_tls: int = Outputs.gallery_max_tls, crop_px: int = Outputs.gallery_crop_px) -> tuple[list[GalleryEntry], int]:
    """All of the gallery's pictures (see :func:`iter_gallery`) and the number of TLS on the slide."""
    return list(iter_gallery(result, slide, max_tls=max_tls, crop_px=crop_px)), len(result.tls)


def _html_head(result, shown: int, total: int, *, max_tls: int) -> str:
    slide_id = html.escape(str(result.slide_id))
    if not total:
        note = "No TLS were found on this slide."
    elif shown < total:
        note = (f"Showing the {shown} largest of {total} TLS (outputs.gallery_max_tls = {max_tls}); "
                "every TLS is in tls.csv and tls.geojson.")
    else:
        note = f"All {total} TLS of tls.csv."
    stages = "".join(f'<span style="color: rgb{STAGE_COLOURS[s]}">&#9632; {html.escape(s)}</span> '
                     for s in dict.fromkeys(result.tls["stage"]) if s in STAGE_COLOURS) if total else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{slide_id}: TLS gallery</title>
<style>
body {{ background: #111; color: #ddd; font-family: sans-serif; margin: 1em; }}
figure {{ margin: 0 0 1.5em 0; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ font-size: 0.9em; color: #bbb; }}
</style></head><body>
<h1>{slide_id}: TLS gallery</h1>
<p>{html.escape(note)} Outlines by stage: {stages}(neighbouring TLS thin grey). Panels: an overlay, then each
lymphoid channel in grey (black at the tissue background, white at threshold + typical positive signal).</p>
"""


def _html_figure(entry: GalleryEntry) -> str:
    return (f'<figure id="tls-{entry.tls_id}"><img alt="TLS {entry.tls_id}" src="data:image/jpeg;base64,'
            f'{base64.b64encode(entry.jpeg()).decode("ascii")}"><figcaption>{html.escape(entry.caption)}</figcaption>'
            "</figure>\n")


_HTML_TAIL = "</body></html>\n"


def gallery_html(result, entries: list[GalleryEntry], total: int, *, max_tls: int) -> str:
    """A self-contained page: every picture embedded as a data URI."""
    return _html_head(result, len(entries), total, max_tls=max_tls) + "".join(map(_html_figure, entries)) + _HTML_TAIL


def write_tls_gallery(result, slide, html_path: Path, crops_dir: Path, *, max_tls: int = Outputs.gallery_max_tls,
                      crop_px: int = Outputs.gallery_crop_px, png: bool = Outputs.gallery_png,
                      workers: int = 1, tls_outlines: dict[int, list[np.ndarray]] | None = None) -> dict[str, Path]:
    """Write tls_gallery.html and, with ``png``, tls_gallery/TLS-<id>.png (the folder only when there is a TLS),
    atomically.

    Pictures are written as they are made (``workers`` threads drawing ahead), so memory
    holds a few TLS's, not the gallery's. ``tls_outlines`` as for :func:`iter_gallery`.
    """
    total = len(result.tls)
    shown = len(_shown(result.tls, max_tls))
    if not shown:
        return {"gallery": write_text_atomic(html_path, gallery_html(result, [], total, max_tls=max_tls))}
    with contextlib.ExitStack() as stack:
        crops = None
        if png:
            crops = stack.enter_context(atomic_path(crops_dir))
            os.mkdir(crops)
        page_path = stack.enter_context(atomic_path(html_path))
        page = stack.enter_context(open(page_path, "w", encoding="utf-8"))
        page.write(_html_head(result, shown, total, max_tls=max_tls))
        for entry in iter_gallery(result, slide, max_tls=max_tls, crop_px=crop_px, png=png, workers=workers,
                                  tls_outlines=tls_outlines):
            if crops is not None:
                (crops / entry.file_name).write_bytes(entry.png)
            page.write(_html_figure(entry))
        page.write(_HTML_TAIL)
    return {**({"gallery_crops": Path(crops_dir)} if png else {}), "gallery": Path(html_path)}
