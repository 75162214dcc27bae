"""A lazy whole-slide mosaic of Akoya inForm fields (``*_component_data.tif``).

inForm exports a slide as many fields, each a multi-page float32 TIFF of unmixed
components. Each field is placed by its stage position: the TIFF ``XPosition`` /
``YPosition`` tags (top-left corner, in the file's resolution unit), else the
``_[x,y]`` field centre in µm that inForm writes into the file name. Where fields
overlap, each pixel comes from the field whose centre is nearest (field edges are
the least even part of a field); pixels no field covers are 0.

Tasks carry only plain descriptions (paths, page locators, offsets) and open the files
in the worker, so the graph works on any dask scheduler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..errors import SlideFormatError
from ..slide import Level
from .lazy import TiffPlane, chunk_grid, file_stamp, located_blocks, read_plane_region

_NAME_CENTRE = re.compile(r"\[\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\][^\[]*$")
# below this share of the mosaic's bounding box covered by fields, the fields are likely not one slide
SPARSE_COVERAGE = 0.2


@dataclass(frozen=True)
class MosaicField:
    """One field: its component planes and where it lies in the mosaic (level-0 px)."""

    planes: tuple[TiffPlane, ...]
    y0: int
    x0: int
    height: int
    width: int


@dataclass(frozen=True)
class MosaicSource:
    fields: tuple[MosaicField, ...]


def _tag_position_px(path: Path) -> tuple[float, float] | None:
    """(y, x) of the field's top-left corner in px from XPosition/YPosition, or None."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        needed = ("XPosition", "YPosition", "XResolution", "YResolution")
        if not all(name in tags for name in needed):
            return None
        values = [Fraction(*[int(v) for v in tags[name].value]) if isinstance(tags[name].value, tuple)
                  else Fraction(tags[name].value) for name in needed]
    x_pos, y_pos, x_res, y_res = values
    if x_pos == 0 and y_pos == 0:
        return None  # inForm writes 0, 0 when it kept no position
    return float(y_pos * y_res), float(x_pos * x_res)


def _name_centre_um(path: Path) -> tuple[float, float] | None:
    """(x, y) stage centre in µm from an inForm file name ``..._[x,y]_component_data.tif``."""
    match = _NAME_CENTRE.search(path.name)
    return (float(match.group(1)), float(match.group(2))) if match else None


def _slide_prefix(path: Path) -> str | None:
    """The slide part of an inForm field name (``SlideA`` of ``SlideA_[5000,12000]_component_data.tif``)."""
    match = _NAME_CENTRE.search(path.name)
    return path.name[: match.start()].rstrip("_ ") if match else None


def _refuse_several_slides(folder: Path, files: list[Path]) -> None:
    """Fields of more than one slide (or TMA core) in one folder make no mosaic: say which slides."""
    slides: dict[str, int] = {}
    for path in files:
        prefix = _slide_prefix(path)
        if prefix is not None:
            slides[prefix] = slides.get(prefix, 0) + 1
    if len(slides) > 1:
        listed = ", ".join(f"{name or '(no name)'} ({count} field{'s' * (count > 1)})" for name, count in slides.items())
        example = next(iter(slides))
        raise SlideFormatError(
            f"{folder}: holds inForm fields of {len(slides)} slides or cores: {listed}; a mosaic is one slide: "
            f"move each slide's fields into a folder of its own (e.g. {folder / example}/ for the "
            f"{example}_[x,y]_component_data.tif files) and open that folder"
        )


def _refuse_mixed_pixel_sizes(folder: Path, files: list[Path], layouts) -> None:
    """Fields at different resolutions cannot share one pixel grid, whatever pixel size the user gives."""
    known = [(path, layout.pixel_size_xy_um) for path, layout in zip(files, layouts) if layout.pixel_size_xy_um]
    for path, size in known[1:]:
        first_path, first = known[0]
        if any(abs(a - b) > 1e-6 * max(a, b) for a, b in zip(size, first)):
            raise SlideFormatError(
                f"{folder}: field {path.name} has pixel size {size[0]:g} x {size[1]:g} µm/px, expected "
                f"{first[0]:g} x {first[1]:g} µm/px like {first_path.name}; a mosaic needs every field at one "
                f"resolution: export the fields again with the same settings"
            )


def _field_offsets(files, layouts, pixel_size_um) -> tuple[list[tuple[float, float]], str]:
    """Top-left corner (y, x) in px of every field, and where the positions came from."""
    tagged = [_tag_position_px(path) for path in files]
    if all(position is not None for position in tagged) and len(set(tagged)) == len(tagged):
        return tagged, "TIFF XPosition/YPosition tags"
    centres = [_name_centre_um(path) for path in files]
    missing = [path.name for path, centre in zip(files, centres) if centre is None]
    if missing:
        raise SlideFormatError(
            f"{files[0].parent}: cannot place inForm fields {', '.join(missing[:5])}: no stage position "
            f"in their XPosition/YPosition tags nor a _[x,y] centre in the file name"
        )
    offsets = []
    for (x_um, y_um), layout in zip(centres, layouts):
        size = pixel_size_um or layout.pixel_size_xy_um  # the user's pixel size wins, as everywhere
        if size is None:
            raise SlideFormatError(
                f"{files[0].parent}: the fields are placed by their _[x,y] centre in µm, which needs "
                f"the pixel size; pass --pixel-size"
            )
        height, width = layout.levels[0].shape_yx
        offsets.append((y_um / size[1] - height / 2, x_um / size[0] - width / 2))
    return offsets, "inForm file names _[x,y] (field centre, µm)"


def read_inform_mosaic(folder: Path, *, chunk_px: int | None, pixel_size_um=None) -> dict[str, Any]:
    """The pieces of a Slide from every ``*component_data.tif`` field in ``folder``."""
    from .tiff import read_tiff_layout

    files = sorted(p for p in folder.iterdir()
                   if p.name.lower().endswith("component_data.tif") and not p.name.startswith("."))
    _refuse_several_slides(folder, files)
    layouts = [read_tiff_layout(path) for path in files]
    first = layouts[0]
    for path, layout in zip(files[1:], layouts[1:]):
        if layout.channel_names != first.channel_names or layout.dtype != first.dtype:
            raise SlideFormatError(
                f"{folder}: field {path.name} has components {layout.channel_names} ({layout.dtype}), "
                f"expected {first.channel_names} ({first.dtype}) like {files[0].name}; export every "
                f"field with the same spectral library"
            )
    _refuse_mixed_pixel_sizes(folder, files, layouts)
    if isinstance(pixel_size_um, (int, float)):
        pixel_size_um = (float(pixel_size_um), float(pixel_size_um))
    offsets, position_source = _field_offsets(files, layouts, pixel_size_um)
    min_y = min(y for y, _ in offsets)
    min_x = min(x for _, x in offsets)
    fields = []
    for path, layout, (y, x) in zip(files, layouts, offsets):
        stamp = file_stamp(str(path))
        planes = tuple(replace(plane, path=str(path.resolve()), stamp=stamp) for plane in layout.levels[0].planes)
        height, width = layout.levels[0].shape_yx
        fields.append(MosaicField(planes, int(round(y - min_y)), int(round(x - min_x)), height, width))
    shape_yx = (max(f.y0 + f.height for f in fields), max(f.x0 + f.width for f in fields))
    source = MosaicSource(tuple(fields))
    n_channels = len(first.channel_names or first.levels[0].planes)
    data = mosaic_array(source, n_channels, shape_yx, first.dtype, chunk_px)
    covered = min(1.0, sum(f.height * f.width for f in fields) / (shape_yx[0] * shape_yx[1]))
    notes: dict[str, Any] = {
        "fields": len(fields),
        "field_positions_source": position_source,
        "field_area_over_mosaic_area": round(float(covered), 4),
    }
    if covered < SPARSE_COVERAGE:
        notes["reader_warnings"] = [
            f"the {len(fields)} fields cover only {covered:.1%} of the mosaic's {shape_yx[0]} x {shape_yx[1]} px "
            f"bounding box; check that the folder holds the fields of one slide and that the pixel size is right"
        ]
    return {
        "format": "inform-mosaic",
        "levels": [Level(data, 1.0, 1.0)],
        "channel_names": first.channel_names,
        "channel_names_source": first.channel_names_source or "inForm component names",
        "pixel_size_xy_um": first.pixel_size_xy_um,
        "pixel_size_source": f"{first.pixel_size_source} of the fields" if first.pixel_size_source else None,
        "pixel_size_problem": first.pixel_size_problem,
        "tile_shape": None,
        "compression": first.compression,
        "notes": notes,
    }


def _owner_map(fields, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Per pixel of the block, the index of the covering field with the nearest centre (-1: none)."""
    yy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    best = np.full((y1 - y0, x1 - x0), np.inf)
    owner = np.full((y1 - y0, x1 - x0), -1, dtype=np.int32)
    for index, field in fields:
        inside = (yy >= field.y0) & (yy < field.y0 + field.height) & (xx >= field.x0) & (xx < field.x0 + field.width)
        distance = (yy - field.y0 - field.height / 2) ** 2 + (xx - field.x0 - field.width / 2) ** 2
        closer = inside & (distance < best)
        best = np.where(closer, distance, best)
        owner = np.where(closer, index, owner)
    return owner


def _read_mosaic_block(source: MosaicSource, dtype: str, location) -> np.ndarray:
    (c0, c1), (y0, y1), (x0, x1) = location
    out = np.zeros((c1 - c0, y1 - y0, x1 - x0), dtype=dtype)
    touching = [
        (index, field) for index, field in enumerate(source.fields)
        if field.y0 < y1 and field.y0 + field.height > y0 and field.x0 < x1 and field.x0 + field.width > x0
    ]
    if not touching:
        return out
    owner = _owner_map(touching, y0, y1, x0, x1)
    for index, field in touching:
        ys, ye = max(y0, field.y0), min(y1, field.y0 + field.height)
        xs, xe = max(x0, field.x0), min(x1, field.x0 + field.width)
        mine = owner[ys - y0 : ye - y0, xs - x0 : xe - x0] == index
        if not mine.any():
            continue
        for k, plane in enumerate(field.planes[c0:c1]):
            region = read_plane_region(plane, slice(ys - field.y0, ye - field.y0), slice(xs - field.x0, xe - field.x0))
            target = out[k, ys - y0 : ye - y0, xs - x0 : xe - x0]
            target[mine] = region[mine]
    return out


def mosaic_array(
    source: MosaicSource, n_channels: int, shape_yx: tuple[int, int], dtype, chunk_px: int | None
) -> da.Array:
    """A lazy (C, Y, X) dask array of the mosaic, read field by field per block."""
    y_chunks, x_chunks = chunk_grid(shape_yx, (1, 1), chunk_px)
    chunks = ((1,) * n_channels, y_chunks, x_chunks)
    name = "tlsquant-mosaic-" + tokenize(source, chunks, np.dtype(dtype).str)
    return located_blocks(_read_mosaic_block, (source, np.dtype(dtype).name), chunks=chunks, dtype=dtype, name=name)
