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
    merge_notes,
    read_channel_names,
    resolve_channel_names,
    resolve_pixel_size,
    supported_dtype,
)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ZARR_MARKERS = (".zgroup", ".zarray", ".zattrs", "zarr.json")
_TIFF_SUFFIXES = (".tif", ".tiff")
# formats Bio-Formats reads and tlsquant does not: by extension (some wrap TIFF or keep the
# pixels in a folder beside the file), then by their first bytes
_FOREIGN_SUFFIXES = {
    ".czi": "Zeiss CZI", ".lif": "Leica LIF", ".lof": "Leica LOF", ".nd2": "Nikon ND2",
    ".mrxs": "3DHISTECH MRXS", ".vsi": "Olympus/Evident VSI", ".ims": "Imaris IMS", ".oir": "Olympus OIR",
    ".oib": "Olympus OIB", ".mcd": "Standard BioTools (Fluidigm) MCD", ".ome": "OME-XML companion",
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jp2": "JPEG 2000", ".dcm": "DICOM",
}
_FOREIGN_MAGIC = (
    (b"ZISRAWFILE", "Zeiss CZI"), (b"\xda\xce\xbe\x0a", "Nikon ND2"), (b"\x89HDF\r\n\x1a\n", "HDF5 (Imaris IMS?)"),
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"PK\x03\x04", "ZIP archive"), (b"<?xml", "XML"),
)
# formats whose pixels live in a folder of the same name beside the file
_FOLDER_FORMATS = ("3DHISTECH MRXS", "Olympus/Evident VSI")


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
        # hidden files (macOS "._CD20.tif" resource forks) are no channels
        tiffs = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in _TIFF_SUFFIXES and p.is_file() and not p.name.startswith("."))
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
        head = handle.read(16)
    foreign = _foreign_format(path, head)
    if not foreign and head[:4] not in _TIFF_MAGIC:
        # no format we know of: an empty, cut-off or mislabelled file, not one to convert
        size = path.stat().st_size
        raise SlideFormatError(
            f"{path}: not a TIFF file ({'empty, 0 bytes' if size == 0 else f'first bytes {head[:4]!r}, {size} bytes'}) "
            f"and of no image format tlsquant recognises; expected QPTIFF, OME-TIFF, inForm TIFF, OME-Zarr or zarr "
            f"(is the file complete, e.g. not cut off by a copy?)"
        )
    if foreign:
        found = f"detected format {foreign}"
        stem = path.name.split(".")[0] or path.stem
        beside = f" (keep its folder {stem}/ beside it)" if foreign in _FOLDER_FORMATS else ""
        raise SlideFormatError(
            f"{path}: {found}; tlsquant reads TIFF (QPTIFF, OME-TIFF, inForm), OME-Zarr and zarr, not this: "
            f"convert it with Bio-Formats{beside}: 'bfconvert -pyramid-resolutions 4 {path.name} {stem}.ome.tiff' "
            f"(OME-TIFF) or 'bioformats2raw {path.name} {stem}.ome.zarr' (OME-Zarr)"
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


def _foreign_format(path: Path, head: bytes) -> str | None:
    """The name of a format tlsquant does not read, from the extension or the first bytes, or None."""
    if path.suffix.lower() in _FOREIGN_SUFFIXES:
        return _FOREIGN_SUFFIXES[path.suffix.lower()]
    if head[:4] == b"\x70\x00\x00\x00" and head[8:9] == b"\x2a":
        return "Leica LIF"
    return next((name for magic, name in _FOREIGN_MAGIC if head.startswith(magic)), None)


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
        metadata=merge_notes(metadata, parts["notes"]),
    )


def _resolve(path: Path, parts: dict, pixel_size_um: PixelSizeArg, channel_names, marker_map=None):
    """Channel names and pixel size: the caller's values win over the file's."""
    names, name_notes = resolve_channel_names(path, parts, channel_names, marker_map)
    size, size_notes = resolve_pixel_size(path, parts, pixel_size_um)
    return names, size, {**name_notes, **size_notes}


__all__ = ["SlideFormatError", "open_slide", "read_channel_names"]
