"""``open_slide``: any supported file or directory to one validated, lazy :class:`Slide`."""

from __future__ import annotations

import csv
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

from ..errors import ChannelError, PixelSizeError, SlideFormatError, SlideNotFoundError
from ..slide import Slide
from .units import PIXEL_SIZE_HINT, check_pixel_size

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

PixelSizeArg = float | tuple[float, float] | None


def open_slide(
    path: str | Path,
    *,
    pixel_size_um: PixelSizeArg = None,
    channel_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> Slide:
    """Open a multiplex slide lazily: metadata is read, no tile is decoded.

    Parameters
    ----------
    path : str or Path
        Akoya QPTIFF, OME-TIFF (SubIFD or series pyramid), plain multi-page/multi-sample
        TIFF, OME-Zarr (NGFF 0.4/0.5) directory or a plain zarr (C, Y, X) array.
    pixel_size_um : float or (x, y), optional
        Level-0 pixel size in µm/px. Overrides the file; required when the file has none.
    channel_names : sequence of str, optional
        One name per channel in file order. Overrides the file's names.
    chunk_size : int, optional
        Approximate dask chunk side in px (default 2048), rounded to whole storage tiles.

    Returns
    -------
    Slide
    """
    path = Path(path)
    slide = _open(path, pixel_size_um, channel_names, chunk_size)
    reopen = functools.partial(open_slide, path, pixel_size_um=pixel_size_um, channel_names=channel_names)
    return dataclasses.replace(slide, reopen=reopen)


def _open(path: Path, pixel_size_um, channel_names, chunk_size) -> Slide:
    if not path.exists():
        raise SlideNotFoundError(f"{path}: no such file or directory")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of pixels, got {chunk_size!r}")
    if path.is_dir() or path.suffix.lower() == ".zarr":
        from .omezarr import read_zarr

        parts = read_zarr(path, chunk_px=chunk_size)
        return _assemble(path, parts, pixel_size_um, channel_names)
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
        "pixel_size_xy_um": layout.pixel_size_xy_um,
        "pixel_size_source": layout.pixel_size_source,
        "n_channels": len(layout.levels[0].planes),
    }
    names, size, metadata = _resolve(path, parts, pixel_size_um, channel_names)
    return tiff_slide(
        path, layout, channel_names=names, pixel_size_xy_um=size, chunk_px=chunk_size,
        metadata=metadata,
    )


def _assemble(path, parts, pixel_size_um, channel_names) -> Slide:
    parts = {**parts, "n_channels": parts["levels"][0].shape[0]}
    names, size, metadata = _resolve(path, parts, pixel_size_um, channel_names)
    return Slide(
        path=path,
        format=parts["format"],
        channel_names=tuple(names),
        pixel_size_x_um=size[0],
        pixel_size_y_um=size[1],
        levels=tuple(parts["levels"]),
        tile_shape=parts["tile_shape"],
        compression=parts["compression"],
        metadata={**metadata, **parts["notes"]},
    )


def _resolve(path: Path, parts: dict, pixel_size_um: PixelSizeArg, channel_names):
    """Channel names and pixel size: the caller's values win over the file's."""
    n_channels = parts["n_channels"]
    if channel_names is not None:
        names = [str(n).strip() for n in channel_names]
        if len(names) != n_channels:
            raise ChannelError(
                f"{path}: channel_names has {len(names)} names ({', '.join(names)}) but the file "
                f"has {n_channels} channels"
            )
        names_source = "user"
    elif parts["channel_names"]:
        names, names_source = list(parts["channel_names"]), "file"
    else:
        names = [f"Channel {k + 1}" for k in range(n_channels)]
        names_source = "placeholder (the file names no channels; pass channel_names)"
    if pixel_size_um is not None:
        if isinstance(pixel_size_um, (int, float)):
            size = (float(pixel_size_um), float(pixel_size_um))
        else:
            size = tuple(float(v) for v in pixel_size_um)
        size_source = "user"
        label = "pixel_size_um"
    elif parts["pixel_size_xy_um"] is not None:
        size = tuple(parts["pixel_size_xy_um"])
        size_source = parts["pixel_size_source"]
        label = f"{path} ({size_source})"
    else:
        raise PixelSizeError(f"{path}: the file records no physical pixel size; " + PIXEL_SIZE_HINT)
    size = (check_pixel_size(size[0], source=label), check_pixel_size(size[1], source=label))
    metadata = {"channel_names_source": names_source, "pixel_size_source": size_source}
    return names, size, metadata


def read_channel_names(path: str | Path) -> list[str]:
    """Channel names from a text file (one per line) or a CSV with a marker column.

    A CSV header may name the column ``marker_name``, ``marker``, ``channel_name`` or
    ``name``; an optional ``channel_index`` column orders the rows.
    """
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(f"{path}: channel name file not found")
    text = path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ChannelError(f"{path}: channel name file is empty")
    if "," not in lines[0]:
        return [line.strip() for line in lines]
    rows = list(csv.DictReader(lines))
    header = {key.strip().lower(): key for key in rows[0].keys()}
    column = next((header[k] for k in ("marker_name", "marker", "channel_name", "name") if k in header), None)
    if column is None:
        raise ChannelError(
            f"{path}: CSV needs a marker_name, marker, channel_name or name column; found "
            f"{', '.join(rows[0].keys())}"
        )
    if "channel_index" in header:
        rows.sort(key=lambda row: int(row[header["channel_index"]]))
    return [row[column].strip() for row in rows]


__all__ = ["SlideFormatError", "open_slide", "read_channel_names"]
