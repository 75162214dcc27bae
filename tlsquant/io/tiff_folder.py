"""A folder of single-channel TIFFs (one file per marker) read lazily as one slide.

MIBI, IMC and many CODEX/PhenoCycler pipelines export a field or slide this way; the
channel name is the file stem (``CD20.tif`` -> ``CD20``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import SlideFormatError
from ..slide import Level, slide_id_from_name
from .lazy import TiffLevelSource, file_stamp, tiff_level_array


def read_tiff_folder(folder: Path, files: list[Path], *, chunk_px: int | None) -> dict[str, Any]:
    """The pieces of a Slide from ``files`` (sorted by name), one channel each.

    Every file must hold one 2D plane of the same shape and pixel type; pyramid levels
    are kept when all files have the same ones.
    """
    from .tiff import read_tiff_layout

    layouts = []
    for path in files:
        layout = read_tiff_layout(path)
        if len(layout.levels[0].planes) != 1:
            raise SlideFormatError(
                f"{path}: holds {len(layout.levels[0].planes)} channels; a folder slide needs one "
                f"single-channel TIFF per marker (found in {folder})"
            )
        layouts.append(layout)
    first, first_path = layouts[0], files[0]
    for path, layout in zip(files[1:], layouts[1:]):
        if layout.levels[0].shape_yx != first.levels[0].shape_yx or layout.dtype != first.dtype:
            raise SlideFormatError(
                f"{folder}: {path.name} is {layout.levels[0].shape_yx[0]} x {layout.levels[0].shape_yx[1]} px "
                f"{layout.dtype}, expected {first.levels[0].shape_yx[0]} x {first.levels[0].shape_yx[1]} px "
                f"{first.dtype} like {first_path.name}; every channel file must have the same shape and pixel type"
            )
    shapes = [tuple(level.shape_yx for level in layout.levels) for layout in layouts]
    n_levels = len(first.levels) if all(s == shapes[0] for s in shapes) else 1
    stamps = [file_stamp(str(path)) for path in files]
    base_y, base_x = first.levels[0].shape_yx
    levels = []
    for index in range(n_levels):
        planes = tuple(
            dataclasses.replace(layout.levels[index].planes[0], path=str(path.resolve()), stamp=stamp)
            for path, layout, stamp in zip(files, layouts, stamps)
        )
        shape_yx = first.levels[index].shape_yx
        source = TiffLevelSource(str(folder.resolve()), planes, stamps[0])
        data = tiff_level_array(source, shape_yx, first.dtype, first.levels[index].tile_yx, chunk_px)
        levels.append(Level(data, base_y / shape_yx[0], base_x / shape_yx[1]))
    sizes = {layout.pixel_size_xy_um for layout in layouts if layout.pixel_size_xy_um is not None}
    notes: dict[str, Any] = {"files": [path.name for path in files]}
    if len(sizes) > 1:
        notes["reader_warnings"] = [f"the channel files disagree on the pixel size: {sorted(sizes)}; the first is used"]
    with_size = next((layout for layout in layouts if layout.pixel_size_xy_um is not None), None)
    names = [slide_id_from_name(path.name) for path in files]
    return {
        "format": "tiff-folder",
        "levels": levels,
        "channel_names": names,
        "channel_names_source": "file names (one TIFF per channel)",
        "pixel_size_xy_um": with_size.pixel_size_xy_um if with_size else None,
        "pixel_size_source": f"{with_size.pixel_size_source} of the channel files" if with_size else None,
        "pixel_size_problem": next((lay.pixel_size_problem for lay in layouts if lay.pixel_size_problem), None),
        "tile_shape": first.levels[0].tile_yx,
        "compression": first.compression,
        "notes": notes,
    }
