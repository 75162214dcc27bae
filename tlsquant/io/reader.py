"""``open_slide``: any supported file or directory to one validated, lazy :class:`Slide`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import SlideFormatError, SlideNotFoundError
from ..slide import Level, Slide
from .resolve import (
    PixelSizeArg,
    read_channel_names,
    resolve_channel_names,
    resolve_pixel_size,
    supported_dtype,
)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ZARR_MARKERS = (".zgroup", ".zarray", ".zattrs", "zarr.json")
_TIFF_SUFFIXES = (".tif", ".tiff")


def open_slide(
    path: str | Path,
    *,
    pixel_size_um: PixelSizeArg = None,
    channel_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
    marker_map: Mapping[str, str] | None = None,
) -> Slide:
    """Open a multiplex slide lazily: metadata is read, no tile is decoded.

    Parameters
    ----------
    path : str or Path
        Akoya QPTIFF, inForm ``component_data.tif`` (one field) or a folder of them (a
        mosaic placed by stage position), OME-TIFF (SubIFD or series pyramid), plain
        multi-page/multi-sample TIFF, a folder of single-channel TIFFs (one per marker),
        OME-Zarr (NGFF 0.4/0.5, bioformats2raw layout) or a plain zarr (C, Y, X) array.
    pixel_size_um : float or (x, y), optional
        Level-0 pixel size in µm/px. Always wins over the file (whose value, if any, is
        kept in ``metadata``); required when the file has none or a non-physical one.
    channel_names : sequence of str, optional
        One name per channel in file order. Wins over the file's names and over a
        ``markers.csv`` beside the image.
    chunk_size : int, optional
        Approximate dask chunk side in px (default 2048), rounded to whole storage tiles.
    marker_map : mapping of str to str, optional
        Renames channels, e.g. ``{"Opal 520": "CD20"}`` for inForm exports named by
        fluorophore (the config's ``channels.fluorophores``).

    Returns
    -------
    Slide
    """
    path = Path(path)
    slide = _open(path, pixel_size_um, channel_names, chunk_size, marker_map)
    reopen = functools.partial(
        open_slide, path, pixel_size_um=pixel_size_um, channel_names=channel_names, marker_map=marker_map
    )
    return dataclasses.replace(slide, reopen=reopen)


def _is_zarr_dir(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / name).exists() for name in _ZARR_MARKERS)


def _open(path: Path, pixel_size_um, channel_names, chunk_size, marker_map) -> Slide:
    if not path.exists():
        raise SlideNotFoundError(f"{path}: no such file or directory")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of pixels, got {chunk_size!r}")
    choices = (pixel_size_um, channel_names, marker_map)
    if path.is_dir() and not _is_zarr_dir(path):
        tiffs = sorted(p for p in path.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES and p.is_file())
        if not tiffs:
            raise SlideFormatError(
                f"{path}: folder holds no zarr metadata and no .tif/.tiff files; expected an OME-Zarr "
                f"store, a folder of inForm component_data.tif fields or one TIFF per channel"
            )
        if any(p.name.lower().endswith("component_data.tif") for p in tiffs):
            from .mosaic import read_inform_mosaic

            parts = read_inform_mosaic(path, chunk_px=chunk_size, pixel_size_um=pixel_size_um)
        else:
            from .tiff_folder import read_tiff_folder

            parts = read_tiff_folder(path, tiffs, chunk_px=chunk_size)
        return _assemble(path, parts, *choices)
    if path.is_dir() or path.suffix.lower() == ".zarr":
        from .omezarr import read_zarr

        return _assemble(path, read_zarr(path, chunk_px=chunk_size), *choices)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in _TIFF_MAGIC:
        raise SlideFormatError(
            f"{path}: not a TIFF/QPTIFF/OME-TIFF file (first bytes {magic!r}) nor a zarr directory"
        )
    from .tiff import read_tiff_layout, tiff_slide

    layout = read_tiff_layout(path)
    parts = {
        "channel_names": layout.channel_names,
        "channel_names_source": layout.channel_names_source,
        "pixel_size_xy_um": layout.pixel_size_xy_um,
        "pixel_size_source": layout.pixel_size_source,
        "pixel_size_problem": layout.pixel_size_problem,
        "n_channels": len(layout.levels[0].planes),
    }
    names, size, metadata = _resolve(path, parts, *choices)
    return tiff_slide(
        path, layout, channel_names=names, pixel_size_xy_um=size, chunk_px=chunk_size,
        metadata=metadata,
    )


def _assemble(path, parts, pixel_size_um, channel_names, marker_map) -> Slide:
    parts = {**parts, "n_channels": parts["levels"][0].shape[0]}
    names, size, metadata = _resolve(path, parts, pixel_size_um, channel_names, marker_map)
    levels = list(parts["levels"])
    target, note = supported_dtype(levels[0].data.dtype)
    if note:
        levels = [Level(lvl.data.astype(target), lvl.downsample_y, lvl.downsample_x) for lvl in levels]
        metadata["dtype_conversion"] = note
    return Slide(
        path=path,
        format=parts["format"],
        channel_names=tuple(names),
        pixel_size_x_um=size[0],
        pixel_size_y_um=size[1],
        levels=tuple(levels),
        tile_shape=parts["tile_shape"],
        compression=parts["compression"],
        metadata={**metadata, **parts["notes"]},
    )


def _resolve(path: Path, parts: dict, pixel_size_um: PixelSizeArg, channel_names, marker_map=None):
    """Channel names and pixel size: the caller's values win over the file's."""
    names, name_notes = resolve_channel_names(path, parts, channel_names, marker_map)
    size, size_notes = resolve_pixel_size(path, parts, pixel_size_um)
    return names, size, {**name_notes, **size_notes}


__all__ = ["SlideFormatError", "open_slide", "read_channel_names"]
