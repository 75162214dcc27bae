"""Readers for Akoya QPTIFF, OME-TIFF and plain multichannel TIFF."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptSlideError, PixelSizeError, SlideFormatError
from ..slide import Level, Slide
from .lazy import TiffLevelSource, TiffPlane, file_stamp, tiff_level_array
from .page_names import brightfield_refusal, page_channel_names
from .resolve import merge_notes, stack_refusal, supported_dtype
from .tiff_damage import refuse_if_damaged, refuse_inconsistent_pages, tifffile_complaints
from .units import length_to_um, resolution_to_um
from .xmlsafe import UnsafeXMLError, parse_xml


@dataclass
class _LevelLayout:
    shape_yx: tuple[int, int]
    planes: tuple[TiffPlane, ...]
    tile_yx: tuple[int, int]


@dataclass
class TiffLayout:
    """What a TIFF flavour parser found, before the slide is assembled."""

    format: str
    dtype: np.dtype
    levels: list[_LevelLayout]
    channel_names: list[str] | None
    pixel_size_xy_um: tuple[float, float] | None
    pixel_size_source: str | None
    compression: str | None
    notes: dict[str, Any] = field(default_factory=dict)
    channel_names_source: str | None = None
    pixel_size_problem: str | None = None  # why the file's own pixel size is unusable


def _page_tile(page) -> tuple[int, int]:
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    rows = int(page.rowsperstrip or page.imagelength)
    return min(rows, int(page.imagelength)), int(page.imagewidth)


_COMPRESSION_NAMES = {"adobe_deflate": "deflate", "zlib": "deflate", "none": None}


def _compression_name(page) -> str | None:
    name = page.compression.name.lower()
    return _COMPRESSION_NAMES.get(name, name)


def _tag_pixel_size(page, source: str) -> tuple[float, float] | None:
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default is inch
    x_um = resolution_to_um(tags["XResolution"].value, unit, source=f"{source} XResolution")
    y_um = resolution_to_um(tags["YResolution"].value, unit, source=f"{source} YResolution")
    if x_um is None or y_um is None:
        return None
    dpi = 25_400 / x_um
    if unit == 2 and any(abs(dpi - d) < 1e-6 for d in _EDITOR_DPI):
        raise PixelSizeError(
            f"{source}: the resolution tags say {dpi:g} dpi, an image-editor default, not a "
            f"microscope pixel size"
        )
    return x_um, y_um


# resolutions image libraries write when they know none (PIL, ImageMagick, Photoshop)
_EDITOR_DPI = (72.0, 96.0, 150.0, 300.0)


def _xml_root(text: str, source: str) -> ET.Element:
    try:
        return parse_xml(text)
    except ET.ParseError as exc:
        raise SlideFormatError(f"{source}: ImageDescription XML is malformed: {exc}") from None
    except UnsafeXMLError as exc:
        raise SlideFormatError(f"{source}: ImageDescription XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# -- Akoya QPTIFF ----------------------------------------------------------------------------


def _is_qptiff(tif) -> bool:
    description = tif.pages[0].description or ""
    return "PerkinElmer-QPI-ImageDescription" in description[:4000]


def _qptiff_channel_name(root: ET.Element) -> str | None:
    # direct children only: ScanProfile nests many unrelated <Name> elements (filters, bands)
    for tag in ("Biomarker", "Name"):
        element = root.find(tag)
        if element is not None and element.text and element.text.strip():
            return element.text.strip()
    return None


def _qptiff_layout(tif, source: str) -> TiffLayout:
    full: list[tuple[int, Any, ET.Element]] = []
    reduced: list[tuple[int, Any]] = []
    skipped: list[str] = []
    for index, page in enumerate(tif.pages):
        root = _xml_root(page.description or "", f"{source} page {index}")
        image_type = (root.findtext("ImageType") or "").strip()
        if image_type == "FullResolution":
            full.append((index, page, root))
        elif image_type == "ReducedResolution":
            reduced.append((index, page))
        else:
            skipped.append(image_type or "unknown")
    if not full:
        raise SlideFormatError(f"{source}: QPTIFF without any FullResolution page")
    refusal = brightfield_refusal(tif, full[0][1], source, kind="Akoya QPTIFF")
    if refusal:  # Vectra/PhenoImager brightfield scans: one RGB FullResolution page
        raise SlideFormatError(refusal)
    base_shape = full[0][1].shape
    if len(base_shape) != 2:
        raise SlideFormatError(
            f"{source}: QPTIFF FullResolution page {full[0][0]} has shape {base_shape}; expected one "
            f"grayscale (Y, X) plane per channel"
        )
    for index, page, _ in full:
        if page.shape != base_shape or page.dtype != full[0][1].dtype:
            raise SlideFormatError(
                f"{source}: FullResolution page {index} has shape {page.shape} {page.dtype}, "
                f"expected {base_shape} {full[0][1].dtype} like page {full[0][0]}"
            )
    n_channels = len(full)
    names = [_qptiff_channel_name(root) or f"Channel {k + 1}" for k, (_, _, root) in enumerate(full)]
    levels = [
        _LevelLayout(
            tuple(base_shape[:2]),
            tuple(TiffPlane(page=i) for i, _, _ in full),
            _page_tile(full[0][1]),
        )
    ]
    # reduced levels come as runs of n_channels pages of one shape, in channel order
    run: list[tuple[int, Any]] = []
    for item in reduced + [(-1, None)]:
        if run and (item[1] is None or item[1].shape != run[0][1].shape):
            if len(run) == n_channels:
                levels.append(
                    _LevelLayout(
                        tuple(run[0][1].shape[:2]),
                        tuple(TiffPlane(page=i) for i, _ in run),
                        _page_tile(run[0][1]),
                    )
                )
            run = []
        if item[1] is not None:
            run.append(item)
    try:
        pixel_size = _tag_pixel_size(full[0][1], source)
    except PixelSizeError:
        pixel_size = None
    pixel_source = "tiff resolution tags"
    if pixel_size is None:
        text = full[0][2].findtext(".//ScanResolution/PixelSizeMicrons")
        if text:
            pixel_size = (float(text), float(text))
            pixel_source = "QPTIFF ScanProfile PixelSizeMicrons"
        else:
            pixel_source = None
    # PhenoImager QPTIFFs and inForm fields share this XML; inForm names its fields *_component_data.tif
    inform = Path(source).name.lower().endswith("component_data.tif")
    return TiffLayout(
        format="inform-component" if inform else "qptiff",
        dtype=np.dtype(full[0][1].dtype),
        levels=levels,
        channel_names=names,
        pixel_size_xy_um=pixel_size,
        pixel_size_source=pixel_source,
        compression=_compression_name(full[0][1]),
        notes={"ignored_pages": skipped},
        channel_names_source="inForm component <Biomarker>/<Name>" if inform else "QPTIFF <Biomarker>/<Name>",
    )


# -- OME-TIFF and plain TIFF (through tifffile's series) -----------------------------------


def _series_planes(series_index: int, series, level_index: int, source: str) -> tuple[TiffPlane, ...]:
    level = series.levels[level_index]
    axes = level.axes
    shape = level.shape
    for axis, size in zip(axes, shape):
        if axis in "ZT" and size > 1:
            raise SlideFormatError(stack_refusal(source, axis, size, f"axes {axes!r}, shape {shape}"))
    if axes in ("YX",):
        return (TiffPlane(page=0, series=series_index, level=level_index),)
    if axes in ("YXS", "SYX"):  # interleaved or planar-separate samples of one page
        first = axes == "SYX"
        return tuple(
            TiffPlane(page=0, series=series_index, level=level_index, sample=s, sample_first=first)
            for s in range(shape[0 if first else 2])
        )
    if len(axes) == 3 and axes.endswith("YX"):  # C, I (pages), Q ... of one plane each
        return tuple(TiffPlane(page=c, series=series_index, level=level_index) for c in range(shape[0]))
    raise SlideFormatError(
        f"{source}: expected a 2D multichannel image (axes CYX), got axes {axes!r} with shape "
        f"{shape}; time series, z-stacks and RGB channel stacks are not supported"
    )


def _choose_series(tif) -> int:
    # converters store label/macro images as extra series: analyse the largest one
    sizes = [math.prod(int(n) for n in s.shape) for s in tif.series]  # Python ints: a damaged header can overflow int64
    return sizes.index(max(sizes))


def _other_images(tif, series_index: int, n_levels_as_series: int) -> list[str]:
    """The OME Images (scenes) of the file that are not read: neither the chosen one nor its levels.

    RGB label and macro images are left out; they are never fluorescence channels.
    """
    used = range(series_index, series_index + 1 + n_levels_as_series)
    others = []
    for index, candidate in enumerate(tif.series):
        if index in used:
            continue
        photometric = getattr(candidate.keyframe.photometric, "name", "")
        if photometric in ("RGB", "YCBCR"):
            continue
        shape = " x ".join(str(n) for n in candidate.shape)
        others.append(f"{index} {candidate.name!r} ({candidate.axes} {shape})" if candidate.name
                      else f"{index} ({candidate.axes} {shape})")
    return others


def _ome_image_element(tif, series_index: int, source: str) -> ET.Element | None:
    root = _xml_root(tif.ome_metadata or "", f"{source} OME-XML")
    images = [el for el in root if _local(el.tag) == "Image"]
    name = tif.series[series_index].name
    named = [image for image in images if image.get("Name") == name]
    if len(named) == 1:  # tifffile names series after the Image's Name; scenes may share one
        return named[0]
    return images[series_index] if series_index < len(images) else None


def _ome_pixels(image: ET.Element | None) -> ET.Element | None:
    if image is None:
        return None
    return next((el for el in image if _local(el.tag) == "Pixels"), None)


def _ome_metadata(pixels: ET.Element | None, source: str):
    """(channel names, (x, y) µm or None, problem or None) from an OME Pixels element."""
    if pixels is None:
        return None, None, None
    channels = [ch for ch in pixels if _local(ch.tag) == "Channel"]
    names = [(ch.get("Name") or ch.get("Fluor") or "").strip() for ch in channels]
    x_text = pixels.get("PhysicalSizeX")
    y_text = pixels.get("PhysicalSizeY") or x_text
    if not x_text:
        return names, None, None
    try:
        size = (
            length_to_um(float(x_text), pixels.get("PhysicalSizeXUnit"), source=f"{source} OME PhysicalSizeX"),
            length_to_um(
                float(y_text),
                pixels.get("PhysicalSizeYUnit") if pixels.get("PhysicalSizeY") else pixels.get("PhysicalSizeXUnit"),
                source=f"{source} OME PhysicalSizeY",
            ),
        )
    except PixelSizeError as exc:
        return names, None, str(exc).split("; pass ")[0]
    except ValueError:
        return names, None, f"{source}: OME PhysicalSizeX {x_text!r} is not a number"
    return names, size, None


def _ome_mismatch(pixels: ET.Element | None, n_planes: int, shape_yx: tuple[int, int]) -> str | None:
    """How the OME-XML's sizes disagree with the planes the file stores, or None."""
    if pixels is None:
        return None
    try:
        size_c = int(pixels.get("SizeC", 1)) * int(pixels.get("SizeZ", 1)) * int(pixels.get("SizeT", 1))
        size_yx = (int(pixels.get("SizeY", 0)), int(pixels.get("SizeX", 0)))
    except ValueError:
        return "its OME-XML sizes are not numbers"
    if size_c == n_planes and size_yx == tuple(shape_yx):
        return None
    return (
        f"its OME-XML says {size_c} planes of {size_yx[0]} x {size_yx[1]} px (SizeC/Z/T, SizeY, SizeX) "
        f"but the file stores {n_planes} planes of {shape_yx[0]} x {shape_yx[1]} px"
    )


def _imagej_pixel_size(tif, page, source: str) -> tuple[tuple[float, float] | None, str | None]:
    """((x, y) µm or None, problem or None) from ImageJ's ``unit`` and the resolution tags."""
    metadata = tif.imagej_metadata or {}
    unit = str(metadata.get("unit", "")).replace("\\u00B5", "µ").strip()
    if not unit or unit.lower() in ("pixel", "pixels"):  # ImageJ's "no calibration"
        return None, None
    tags = page.tags
    if "XResolution" not in tags:
        return None, None
    num, den = tags["XResolution"].value
    ynum, yden = tags["YResolution"].value if "YResolution" in tags else (num, den)
    if num == 0 or ynum == 0:
        return None, None
    try:
        return (length_to_um(den / num, unit, source=f"{source} ImageJ unit"),
                length_to_um(yden / ynum, unit, source=f"{source} ImageJ unit")), None
    except PixelSizeError as exc:
        return None, str(exc).split("; pass ")[0]


def _levels_stored_as_series(tif, series_index: int, source: str) -> list[_LevelLayout]:
    """Reduced levels some converters store as separate series (one OME Image per level)."""
    base = tif.series[series_index]
    levels: list[_LevelLayout] = []
    previous = base.shape
    for index in range(series_index + 1, len(tif.series)):
        candidate = tif.series[index]
        if (
            candidate.axes != base.axes
            or candidate.dtype != base.dtype
            or candidate.shape[0] != base.shape[0]
            or not all(c < p for c, p in zip(candidate.shape[-2:], previous[-2:]))
        ):
            break
        planes = _series_planes(index, candidate, 0, source)
        levels.append(_LevelLayout(tuple(candidate.shape[-2:]), planes, _page_tile(candidate.keyframe)))
        previous = candidate.shape
    return levels


def _top_level_pages(tif):
    """(index, page) of every top-level page, as full pages (frames left by series parsing lack a shape)."""
    return ((index, tif.pages.get(index, aspage=True)) for index in range(len(tif.pages)))


def _stored_planes(tif, series) -> _LevelLayout:
    """Level 0 as the file stores it: the top-level pages of the series' plane shape."""
    shape = series.keyframe.shape
    pages = [index for index, page in _top_level_pages(tif) if page.shape == shape]
    return _LevelLayout(tuple(shape[:2]), tuple(TiffPlane(page=i) for i in pages), _page_tile(series.keyframe))


def _unclaimed_planes(tif, series) -> list[int]:
    """Top-level pages of the series' plane shape and type that no series reads.

    An OME-XML whose SizeC is smaller than the planes written leaves the extra planes out
    of every tifffile series; they are channels all the same.
    """
    claimed = {page.index for candidate in tif.series for page in candidate.levels[0].pages if page is not None}
    keyframe = series.keyframe
    return [index for index, page in _top_level_pages(tif) if index not in claimed
            and page.shape == keyframe.shape and page.dtype == keyframe.dtype]


def _series_layout(tif, source: str) -> TiffLayout:
    series_index = _choose_series(tif)
    series = tif.series[series_index]
    refusal = brightfield_refusal(tif, series.keyframe, source)
    if refusal:
        raise SlideFormatError(refusal)
    first_page = series.levels[0].keyframe
    notes: dict[str, Any] = {"series": series_index, "axes": series.axes}
    warnings: list[str] = []
    missing = sum(page is None for page in series.levels[0].pages)
    one_sample = len(series.keyframe.shape) == 2
    extra = _unclaimed_planes(tif, series) if tif.is_ome and not missing and one_sample else []
    levels_as_series = 0
    if missing:
        # tifffile zero-fills planes the OME-XML promises but the file lacks: never analyse those
        levels = [_stored_planes(tif, series)]
        warnings.append(
            f"the OME-XML promises {len(series.levels[0].pages)} planes but the file holds only "
            f"{len(levels[0].planes)}; read the {len(levels[0].planes)} stored planes, XML channel names ignored"
        )
    elif extra:
        # the OME-XML claims fewer planes than the file stores: read every stored plane, drop none
        _series_planes(series_index, series, 0, source)  # refuses a z-stack or time series first
        read = [page.index for page in series.levels[0].pages]
        levels = [_LevelLayout(tuple(series.keyframe.shape[:2]), tuple(TiffPlane(page=i) for i in read + extra),
                               _page_tile(series.keyframe))]
    else:
        levels = []
        for level_index, level in enumerate(series.levels):
            planes = _series_planes(series_index, series, level_index, source)
            shape_yx = tuple(level.shape[-3:-1] if level.axes.endswith("S") else level.shape[-2:])
            levels.append(_LevelLayout(shape_yx, planes, _page_tile(level.keyframe)))
        if len(levels) == 1:
            levels += _levels_stored_as_series(tif, series_index, source)
            levels_as_series = len(levels) - 1
    names = None
    names_source = None
    pixel_size = None
    pixel_source = None
    problem = None
    fmt = "tiff"
    if tif.is_ome:
        fmt = "ome-tiff"
        pixels = _ome_pixels(_ome_image_element(tif, series_index, source))
        names, pixel_size, problem = _ome_metadata(pixels, source)
        mismatch = _ome_mismatch(pixels, len(levels[0].planes), levels[0].shape_yx)
        if mismatch and not missing:
            unlisted = f", page{'s' * (len(extra) > 1)} {', '.join(map(str, extra))} too" if extra else ""
            warnings.append(f"{mismatch}; read as stored{unlisted}")
        others = _other_images(tif, series_index, levels_as_series)
        if others:
            notes["ome_images"] = len(tif.series)
            warnings.append(
                f"the file holds {1 + len(others)} images; read image {series_index} {series.name!r} "
                f"({series.axes} {' x '.join(str(n) for n in series.shape)}) and ignored {'; '.join(others)}; "
                f"tlsquant reads one image per file: save each scene as its own OME-TIFF "
                f"(bfconvert -series N in.ome.tif scene_N.ome.tif) to analyse the others"
            )
        if pixel_size is not None:
            pixel_source = "OME PhysicalSizeX/Y"
        if missing or not names or len(names) != len(levels[0].planes) or not all(names):
            names = None  # unnamed or mismatched: look elsewhere, else the caller must supply names
        else:
            names_source = "OME Channel Name/Fluor"
    if names is None and levels[0].planes and all(p.sample is None for p in levels[0].planes):
        pages = [
            tif.pages[p.page] if p.series is None else tif.series[p.series].levels[0].pages[p.page]
            for p in levels[0].planes
        ]
        names, names_source = page_channel_names(tif, pages)
    if pixel_size is None and tif.is_imagej:
        pixel_size, imagej_problem = _imagej_pixel_size(tif, first_page, source)
        problem = problem or imagej_problem
        pixel_source = "ImageJ unit + resolution tags" if pixel_size else None
    if pixel_size is None:
        try:
            pixel_size = _tag_pixel_size(first_page, source)
        except PixelSizeError as exc:
            problem = problem or str(exc).split("; pass ")[0]
        pixel_source = "tiff resolution tags" if pixel_size else None
    if warnings:
        notes["reader_warnings"] = warnings
    return TiffLayout(
        format=fmt,
        dtype=np.dtype(series.dtype),
        levels=levels,
        channel_names=names,
        pixel_size_xy_um=pixel_size,
        pixel_size_source=pixel_source,
        compression=_compression_name(first_page),
        notes=notes,
        channel_names_source=names_source,
        pixel_size_problem=problem,
    )


def read_tiff_layout(path: Path) -> TiffLayout:
    """Parse a TIFF's metadata (no pixel data) into a :class:`TiffLayout`."""
    import tifffile

    source = str(path)
    with tifffile_complaints() as complaints:
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise SlideFormatError(f"{source}: not a readable TIFF file ({exc})") from None
        with tif:
            if not tif.pages:
                raise SlideFormatError(f"{source}: not a readable TIFF file (it holds no image pages)")
            description = tif.pages[0].description or ""
            if "<!DOCTYPE" in description or "<!ENTITY" in description:
                # instrument XML never needs a DTD: entities here are broken or hostile (billion laughs, XXE)
                raise SlideFormatError(f"{source}: ImageDescription XML declares a DTD or entities, refused as unsafe")
            try:
                layout = _qptiff_layout(tif, source) if _is_qptiff(tif) else _series_layout(tif, source)
            except SlideFormatError:
                _refuse_if_damaged_or_inconsistent(tif, source, complaints, None)
                raise
            except (RuntimeError, IndexError, KeyError, ValueError, EOFError, OSError, tifffile.TiffFileError) as exc:
                _refuse_if_damaged_or_inconsistent(tif, source, complaints, None)
                raise CorruptSlideError(f"{source}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); "
                                        f"copy or export it again") from None
            # a damaged file is reported as such, before any channel or pixel-size complaint
            _refuse_if_damaged_or_inconsistent(tif, source, complaints, layout)
    return layout


def _refuse_if_damaged_or_inconsistent(tif, source: str, complaints: list[str], layout: TiffLayout | None) -> None:
    import tifffile

    refuse_if_damaged(tif, source, complaints, layout)  # a cut-off file first: it explains the rest
    try:
        refuse_inconsistent_pages(tif, source, complaints, layout)
    except (RuntimeError, IndexError, KeyError, ValueError, EOFError, OSError, tifffile.TiffFileError) as exc:
        if isinstance(exc, SlideFormatError):
            raise
        raise CorruptSlideError(f"{source}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); "
                                f"copy or export it again") from None


def tiff_slide(
    path: Path,
    layout: TiffLayout,
    *,
    channel_names: list[str],
    pixel_size_xy_um: tuple[float, float],
    chunk_px: int | None,
    metadata: dict[str, Any],
) -> Slide:
    """Assemble a lazy :class:`Slide` from a parsed layout."""
    stamp = file_stamp(str(path))
    base_y, base_x = layout.levels[0].shape_yx
    target, conversion = supported_dtype(layout.dtype)
    if conversion:
        metadata = {**metadata, "dtype_conversion": conversion}
    levels = []
    for level in layout.levels:
        source = TiffLevelSource(str(path.resolve()), level.planes, stamp)
        data = tiff_level_array(source, level.shape_yx, layout.dtype, level.tile_yx, chunk_px)
        if conversion:
            data = data.astype(target)
        levels.append(Level(data, base_y / level.shape_yx[0], base_x / level.shape_yx[1]))
    return Slide(
        path=path,
        format=layout.format,
        channel_names=tuple(channel_names),
        pixel_size_x_um=pixel_size_xy_um[0],
        pixel_size_y_um=pixel_size_xy_um[1],
        levels=tuple(levels),
        tile_shape=layout.levels[0].tile_yx,
        compression=layout.compression,
        metadata=merge_notes(metadata, layout.notes),
    )
