"""Which channel names, pixel size and pixel type a slide gets, and where each came from.

The caller's values always win over the file's; where the two disagree both are kept
in the slide metadata (and so in summary.json). A file whose own pixel size is missing,
non-physical or implausible is refused only when the caller gave none.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ChannelError, PixelSizeError, SlideNotFoundError
from ..markers import rename_markers, unique_names
from ..slide import SUPPORTED_DTYPES, slide_id_from_name
from .units import PIXEL_SIZE_HINT, check_pixel_size

PixelSizeArg = float | tuple[float, float] | None

# MCMICRO keeps markers.csv in the project folder, the image in registration/
_SIDECAR_NAMES = ("{stem}.markers.csv", "{stem}.channels.csv", "markers.csv")
_MARKER_COLUMNS = ("marker_name", "marker", "channel_name", "name", "target")


def read_channel_names(path: str | Path) -> list[str]:
    """Channel names from a text file (one per line) or a CSV with a marker column.

    A CSV header may name the column ``marker_name`` (MCMICRO ``markers.csv``),
    ``marker``, ``channel_name``, ``name`` or ``target``; an optional ``channel_index``
    column orders the rows.
    """
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(f"{path}: channel name file not found")
    text = path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ChannelError(f"{path}: channel name file is empty")
    if "," not in lines[0]:
        if lines[0].strip().lower() in _MARKER_COLUMNS:  # a one-column CSV with its header
            lines = lines[1:]
        return [line.strip() for line in lines]
    rows = list(csv.DictReader(lines))
    header = {key.strip().lower(): key for key in rows[0].keys()}
    column = next((header[k] for k in _MARKER_COLUMNS if k in header), None)
    if column is None:
        raise ChannelError(
            f"{path}: CSV needs a {', '.join(_MARKER_COLUMNS)} column; found {', '.join(rows[0].keys())}"
        )
    if "channel_index" in header:
        rows.sort(key=lambda row: int(row[header["channel_index"]]))
    return [row[column].strip() for row in rows]


def find_sidecar_markers(path: Path) -> Path | None:
    """A marker list kept beside the image (``markers.csv``, ``<slide>.markers.csv``), or None."""
    if not path.is_file():
        return None
    stem = slide_id_from_name(path.name)
    folders = [path.parent]
    if path.parent.name.lower() == "registration":  # MCMICRO project layout
        folders.append(path.parent.parent)
    for folder in folders:
        for pattern in _SIDECAR_NAMES:
            candidate = folder / pattern.format(stem=stem)
            if candidate.is_file() and candidate != path:
                return candidate
    return None


def _user_pixel_size(pixel_size_um) -> tuple[float, float]:
    if isinstance(pixel_size_um, (int, float)):
        size = (float(pixel_size_um), float(pixel_size_um))
    else:
        size = tuple(float(v) for v in pixel_size_um)
    return (
        check_pixel_size(size[0], source="pixel_size_um"),
        check_pixel_size(size[1], source="pixel_size_um"),
    )


def resolve_pixel_size(path: Path, parts: Mapping[str, Any], pixel_size_um: PixelSizeArg):
    """(x, y) µm/px and metadata: the caller's size, else the file's, else a clear error."""
    file_size = parts.get("pixel_size_xy_um")
    file_source = parts.get("pixel_size_source")
    problem = parts.get("pixel_size_problem")
    metadata: dict[str, Any] = {}
    if pixel_size_um is not None:
        size = _user_pixel_size(pixel_size_um)
        metadata["pixel_size_source"] = "user"
        if file_size is not None:
            metadata["pixel_size_file_um"] = [float(v) for v in file_size]
            metadata["pixel_size_file_source"] = file_source
            if any(abs(u - f) > 1e-6 * max(u, f) for u, f in zip(size, file_size)):
                metadata["pixel_size_disagreement"] = (
                    f"user {size[0]:g} x {size[1]:g} µm/px overrides the file's "
                    f"{file_size[0]:g} x {file_size[1]:g} µm/px ({file_source})"
                )
        if problem:
            metadata["pixel_size_file_problem"] = problem
        return size, metadata
    if file_size is not None:
        label = f"{path} ({file_source})"
        size = (check_pixel_size(file_size[0], source=label), check_pixel_size(file_size[1], source=label))
        return size, {"pixel_size_source": file_source}
    if problem:
        raise PixelSizeError(f"{problem}; " + PIXEL_SIZE_HINT)
    raise PixelSizeError(f"{path}: the file records no physical pixel size; " + PIXEL_SIZE_HINT)


def resolve_channel_names(
    path: Path,
    parts: Mapping[str, Any],
    channel_names: Sequence[str] | None,
    marker_map: Mapping[str, str] | None = None,
):
    """Channel names and metadata: the caller's, a sidecar marker list, the file's, placeholders."""
    n_channels = parts["n_channels"]
    file_names = list(parts["channel_names"]) if parts.get("channel_names") else None
    metadata: dict[str, Any] = {}
    sidecar = None if channel_names is not None else find_sidecar_markers(path)
    if sidecar is not None:
        listed = read_channel_names(sidecar)
        if len(listed) == n_channels:
            channel_names = listed
        else:
            metadata["channel_names_sidecar_ignored"] = (
                f"{sidecar} lists {len(listed)} markers but the image has {n_channels} channels"
            )
            sidecar = None
    if channel_names is not None:
        names = [str(n).strip() for n in channel_names]
        where = f"{sidecar}" if sidecar is not None else "channel_names"
        if len(names) != n_channels:
            raise ChannelError(
                f"{path}: {where} has {len(names)} names ({', '.join(names)}) but the file "
                f"has {n_channels} channels"
            )
        source = f"marker list {sidecar}" if sidecar is not None else "user"
    elif file_names:
        names, source = file_names, parts.get("channel_names_source") or "file"
    else:
        names = [f"Channel {k + 1}" for k in range(n_channels)]
        source = "placeholder (the file names no channels; pass channel_names or --channels)"
    if marker_map:
        renamed = rename_markers(names, marker_map)
        if renamed != names:
            metadata["channel_names_before_marker_map"] = names
            source += " + fluorophore map"
            names = renamed
    if channel_names is None or sidecar is not None:  # per-cycle DAPI, PhenoCycler "Blank": unique, and said
        unique, repeated = unique_names(names)
        if repeated:
            metadata["channel_names_repeated"] = repeated
            metadata["reader_warnings"] = [_repeated_names_warning(names, unique, repeated)]
            names = unique
    if file_names and names != file_names:
        metadata["channel_names_file"] = file_names
        metadata["channel_names_file_source"] = parts.get("channel_names_source") or "file"
    metadata["channel_names_source"] = source
    return names, metadata


def _repeated_names_warning(names: Sequence[str], unique: Sequence[str], repeated: Mapping[str, int]) -> str:
    """The warning for channel names a file repeats, naming what the repeats are now called."""
    counts = ", ".join(f"{name} x{count}" for name, count in repeated.items())
    renamed = ", ".join(after for before, after in zip(names, unique) if after != before)
    return (f"channel names repeat ({counts}); the repeats are read as {renamed} and marker matching finds "
            f"the first; name every channel with --channels (or open_slide(channel_names=...))")


_STACK_AXES = {"z": ("z-stack", "a maximum projection (Fiji: Image > Stack > Z Project) or one z plane"),
               "t": ("time series", "one time point")}


def stack_refusal(source: str, axis: str, size: int, found: str) -> str:
    """The message refusing a z-stack or time series (``axis`` "z" or "t" with ``size`` > 1 planes)."""
    kind, remedy = _STACK_AXES[axis.lower()]
    return (f"{source}: a {kind}: axis {axis!r} has {size} planes ({found}); tlsquant needs one 2-D "
            f"multichannel image (C, Y, X): save {remedy} as OME-TIFF and open that")


def merge_notes(metadata: Mapping[str, Any], notes: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` updated with a reader's ``notes``, their ``reader_warnings`` lists joined."""
    merged = {**metadata, **notes}
    warnings = [*metadata.get("reader_warnings", []), *notes.get("reader_warnings", [])]
    if warnings:
        merged["reader_warnings"] = warnings
    return merged


def supported_dtype(dtype: np.dtype) -> tuple[np.dtype, str | None]:
    """The pixel type a slide is analysed in, and a note when it differs from the file's.

    float64 and signed or wide integers are converted to float32 (values kept; float64
    and 32-bit integers lose precision beyond 24 bits, far below any stain's noise).
    """
    dtype = np.dtype(dtype)
    if dtype.name in SUPPORTED_DTYPES:
        return dtype, None
    if dtype.kind in "iuf" and dtype.itemsize <= 8:
        return np.dtype("float32"), f"pixel type {dtype.name} read as float32"
    return dtype, None  # refused with a clear message by Slide
