"""Damaged TIFFs refused as such: cut-off files, pages whose headers contradict themselves or their neighbours.

A damaged file is reported before any channel or pixel-size complaint, and never read with
a page silently left out: a page tifffile cannot fit into the channel stack would otherwise
drop out of the analysis and the slide be read as one channel short.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..errors import CorruptSlideError

if TYPE_CHECKING:
    from .tiff import TiffLayout

_DAMAGE_WORDS = ("corrupt", "invalid page offset", "truncat", "invalid tag", "unexpected end")
_OJPEG = 6  # old-style JPEG: strip and tile counts do not follow the image size


@contextlib.contextmanager
def tifffile_complaints():
    """Collect what tifffile logs while a file is parsed (and keep it off the console)."""
    import logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler, propagate = Collect(level=logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _without_object(message: str) -> str:
    return re.sub(r"<tifffile\.[^>]*>\s*", "", message)


def _refuse(source: str, damage: list[str]) -> None:
    if damage:
        raise CorruptSlideError(f"{source}: the file is truncated or corrupt ({'; '.join(damage[:3])}); "
                                f"copy or export it again")


def _plane_page(tif, plane, *, full: bool = True):
    """The page a layout plane reads; ``full``: as a full page (series frames borrow their first page's header)."""
    page = tif.pages[plane.page] if plane.series is None else \
        tif.series[plane.series].levels[plane.level].pages[plane.page]
    return page.aspage() if full and hasattr(page, "aspage") else page


def refuse_if_damaged(tif, source: str, complaints: list[str], layout: TiffLayout | None) -> None:
    """Raise :class:`CorruptSlideError` for a truncated or corrupt file: damaged page list or data past its end."""
    damage = [_without_object(m) for m in complaints if any(w in m.lower() for w in _DAMAGE_WORDS)]
    size = os.path.getsize(tif.filehandle.path)
    if layout is not None:
        for level_index, level in enumerate(layout.levels):
            for channel, plane in enumerate(level.planes):
                if plane.path is not None:
                    continue
                try:
                    page = _plane_page(tif, plane, full=False)
                    end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
                except (IndexError, AttributeError, TypeError):
                    continue
                if end > size:
                    damage.append(f"level {level_index}, channel {channel + 1}: its pixel data ends at byte {end:,} "
                                  f"but the file has {size:,} bytes")
                    break
            if len(damage) > 3:
                break
    _refuse(source, damage)


def _px(shape: tuple[int, ...]) -> str:
    return " x ".join(f"{n:,}" for n in shape[:2]) + " px"


def header_problem(page) -> str | None:
    """How a page's header contradicts itself (its size needs other tile or strip counts than it stores), or None."""
    if int(getattr(page.compression, "value", page.compression)) == _OJPEG:
        return None
    try:
        expected = math.prod(page.chunked)
    except Exception as exc:  # noqa: BLE001  tifffile rejects some impossible tags (RowsPerStrip 0) here
        return f"its header cannot be read ({type(exc).__name__}: {exc})"
    stored = len(page.dataoffsets)
    if expected == stored:
        return None
    height, width = int(page.imagelength), int(page.imagewidth)
    if page.is_tiled:
        pieces = f"{int(page.tilelength):,} x {int(page.tilewidth):,} px tiles"
    else:
        pieces = f"strips of {int(page.rowsperstrip):,} rows"
    return (f"its header says {height:,} x {width:,} px in {pieces}, {expected:,} of them, "
            f"but it stores {stored:,}")


def _describe(page) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
    return tuple(page.shape), str(page.dtype), tuple(page.chunks)


def _page_list(indices: list[int]) -> str:
    return f"page{'s' * (len(indices) > 1)} {', '.join(map(str, indices[:8]))}{' ...' if len(indices) > 8 else ''}"


def _unread_lookalikes(tif, pages: list[tuple[int, Any]], layout: TiffLayout) -> list[str]:
    """Unread grayscale pages that look like a damaged channel page.

    tifffile groups a plain TIFF's pages by shape and pixel type: a channel page whose
    ImageWidth, ImageLength or BitsPerSample is damaged becomes a series of its own and drops
    out of the channel stack. Such a page has the channels' size with another pixel type, or
    their pixel type with one side like theirs; reduced levels, thumbnails and label images
    differ in both sides.
    """
    read = set()
    for level in layout.levels:
        for plane in level.planes:
            if plane.path is None:
                with contextlib.suppress(Exception):
                    page = _plane_page(tif, plane)
                    if len(getattr(page, "treeindex", (0,))) == 1:
                        read.add(page.index)
    height, width = layout.levels[0].shape_yx
    found = []
    for index, page in pages:
        if index in read or page.samplesperpixel != 1 or len(page.shape) != 2:
            continue
        same_dtype, sides = page.dtype == layout.dtype, (page.shape[0] == height) + (page.shape[1] == width)
        if (same_dtype and sides == 1) or (not same_dtype and sides == 2):
            found.append(f"page {index} is {_px(page.shape)} {page.dtype}, the channel pages {height:,} x {width:,} "
                         f"px {layout.dtype}: not read as a channel, yet too like one to be another image")
    return found


def refuse_inconsistent_pages(tif, source: str, complaints: list[str], layout: TiffLayout | None) -> None:
    """Raise :class:`CorruptSlideError` when pages that could hold channels do not fit together.

    A page whose header contradicts itself, a channel page unlike the other pages of its
    level (shape, pixel type, tiling), a page of a plain TIFF that looks like a damaged
    channel page, or an OME-TIFF whose OME-XML tifffile could not match to its pages because
    they differ: the file is refused, naming the page, rather than read with a page left out.
    """
    damage: list[str] = []
    dtype = None if layout is None else layout.dtype
    pages: list[tuple[int, Any]] = []
    broken: list[tuple[int, str]] = []
    for index in range(len(tif.pages)):
        page = tif.pages.get(index, aspage=True)
        pages.append((index, page))
        # label, macro and thumbnail pages (colour, or another pixel type) are never channels
        if page.samplesperpixel == 1 and (dtype is None or page.dtype == dtype):
            problem = header_problem(page)
            if problem:
                broken.append((index, problem))
    if broken:
        others = [index for index, _ in broken[1:]]
        damage.append(f"page {broken[0][0]}: {broken[0][1]}" + (f"; {_page_list(others)} too" if others else ""))
    _refuse(source, damage)
    for level_index, level in enumerate(layout.levels if layout is not None else []):
        planes = [p for p in level.planes if p.path is None and p.sample is None]
        channel_pages = [_plane_page(tif, plane) for plane in planes]
        for channel, page in enumerate(channel_pages, start=1):
            problem = header_problem(page)
            if problem:
                damage.append(f"level {level_index}, channel {channel} (page {page.index}): {problem}")
        kinds = Counter(_describe(page) for page in channel_pages)
        if not damage and len(kinds) > 1:  # the channel pages disagree: name those unlike the most
            usual, _ = kinds.most_common(1)[0]
            channel, page = next((c, p) for c, p in enumerate(channel_pages, start=1) if _describe(p) != usual)
            damage.append(f"level {level_index}, channel {channel} (page {page.index}) is {_px(page.shape)} "
                          f"{page.dtype} in {_px(page.chunks)} tiles or strips, the other channels {_px(usual[0])} "
                          f"{usual[1]} in {_px(usual[2])}")
        _refuse(source, damage)
    if layout is not None and layout.format == "tiff" and len(tif.series) > 1:
        damage += _unread_lookalikes(tif, pages, layout)
    _refuse(source, damage)
    if tif.is_ome and not any(getattr(series, "kind", "") == "ome" for series in tif.series):
        # tifffile could not match the OME-XML to the pages and fell back to grouping pages by shape and
        # type: pages all alike are read as stored (a stale OME-XML, with a warning); pages unlike the
        # others would each become a series of their own and drop out of the channel stack
        kinds = Counter((tuple(page.shape), str(page.dtype)) for _, page in pages if page.samplesperpixel == 1)
        if len(kinds) > 1:
            (usual_shape, usual_dtype), _ = kinds.most_common(1)[0]
            odd = [index for index, page in pages if page.samplesperpixel == 1
                   and (tuple(page.shape), str(page.dtype)) != (usual_shape, usual_dtype)]
            odd_page = dict(pages)[odd[0]]
            why = [_without_object(m) for m in complaints if "ome" in m.lower()][:1]
            damage.append(f"{_page_list(odd)} {'are' if len(odd) > 1 else 'is'} {_px(odd_page.shape)} "
                          f"{odd_page.dtype}, the other pages {_px(usual_shape)} {usual_dtype}, so tifffile "
                          f"cannot match the pages to the OME-XML{f' ({why[0]})' if why else ''}")
    _refuse(source, damage)
