"""The validated, lazy multichannel slide every later step works on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .errors import ChannelError, SlideFormatError
from .markers import find_marker
from .pixel_size import PixelSize

SUPPORTED_DTYPES = ("uint8", "uint16", "float32")
SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".qptiff", ".tiff", ".tif", ".zarr")


def slide_id_from_name(name: str) -> str:
    """A file name without its slide extension(s): ``case-7.ome.tiff`` -> ``case-7``."""
    for suffix in SLIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _finite(block: np.ndarray) -> np.ndarray:
    return np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class Level:
    """One pyramid level: a lazy (C, Y, X) dask array and its downsample factors vs level 0."""

    data: da.Array
    downsample_y: float
    downsample_x: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class Slide:
    """A multiplex whole-slide image, opened lazily.

    Attributes
    ----------
    path : Path
        The file or directory it was opened from.
    format : str
        ``"qptiff"``, ``"inform-component"``, ``"inform-mosaic"``, ``"ome-tiff"``, ``"tiff"``,
        ``"tiff-folder"``, ``"ome-zarr"`` or ``"zarr"``.
    channel_names : tuple of str
        One name per channel, in file order.
    pixel_size_x_um, pixel_size_y_um : float
        Level-0 pixel size in µm/px.
    levels : tuple of Level
        Level 0 first, then coarser levels. Each ``Level.data`` is a dask array
        (C, Y, X) whose chunks are whole multiples of the file's tiles.
    tile_shape : (int, int) or None
        The file's storage tile (or strip) shape (Y, X) at level 0.
    compression : str or None
        The file's compression codec at level 0.
    metadata : dict
        Where names and pixel size came from, and other reader facts.
    """

    path: Path
    format: str
    channel_names: tuple[str, ...]
    pixel_size_x_um: float
    pixel_size_y_um: float
    levels: tuple[Level, ...]
    tile_shape: tuple[int, int] | None = None
    compression: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # re-opens the same file with another chunk size (set by open_slide)
    reopen: Callable[..., Slide] | None = field(default=None, repr=False, compare=False)
    # the reopened chunkings, by chunk size (see with_chunks)
    _reopened: dict[int, Slide] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = str(self.path)
        if not self.levels:
            raise SlideFormatError(f"{where}: no image levels found")
        base = self.levels[0].data
        if base.ndim != 3:
            raise SlideFormatError(
                f"{where}: expected a (channel, y, x) array, got {base.ndim} dimensions {base.shape}"
            )
        if np.dtype(base.dtype).name not in SUPPORTED_DTYPES:
            raise SlideFormatError(
                f"{where}: pixel type {base.dtype} is not supported; expected one of "
                f"{', '.join(SUPPORTED_DTYPES)}"
            )
        if len(self.channel_names) != base.shape[0]:
            raise ChannelError(
                f"{where}: {len(self.channel_names)} channel names given "
                f"({', '.join(self.channel_names)}) but the image has {base.shape[0]} channels"
            )
        folded = [name.casefold() for name in self.channel_names]
        duplicates = sorted({n for n in self.channel_names if folded.count(n.casefold()) > 1})
        if duplicates:
            raise ChannelError(
                f"{where}: channel names must be unique (ignoring case); repeated: "
                f"{', '.join(duplicates)}"
            )
        for index, level in enumerate(self.levels[1:], start=1):
            if level.shape[0] != base.shape[0] or level.data.dtype != base.dtype:
                raise SlideFormatError(
                    f"{where}: pyramid level {index} has shape {level.shape} {level.data.dtype}, "
                    f"expected {base.shape[0]} channels of {base.dtype}"
                )
        if np.dtype(base.dtype).kind == "f" and not self.metadata.get("non_finite"):
            # NaN/inf (padding of stitched or unmixed exports) would poison every statistic: no signal
            levels = tuple(Level(level.data.map_blocks(_finite, dtype=level.data.dtype), level.downsample_y,
                                 level.downsample_x) for level in self.levels)
            object.__setattr__(self, "levels", levels)
            object.__setattr__(self, "metadata", {**self.metadata, "non_finite": "NaN and infinite values read as 0"})

    # -- geometry ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Level-0 shape (C, Y, X)."""
        return self.levels[0].shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].data.dtype)

    @property
    def pixel_size(self) -> PixelSize:
        """Level-0 pixel size, (y, x) in µm/px."""
        return PixelSize(self.pixel_size_y_um, self.pixel_size_x_um)

    @property
    def pixel_size_um(self) -> float:
        """Level-0 pixel size along x in µm/px (see ``pixel_size_y_um`` for y, :attr:`pixel_size` for both)."""
        return self.pixel_size_x_um

    @property
    def pixel_area_um2(self) -> float:
        return self.pixel_size_x_um * self.pixel_size_y_um

    @property
    def name(self) -> str:
        """The slide id derived from the file name (extensions such as .ome.tiff dropped)."""
        return slide_id_from_name(self.path.name)

    def level_pixel_size_um(self, level: int) -> PixelSize:
        """Pixel size (y, x) in µm/px at pyramid ``level``."""
        lvl = self.levels[level]
        return PixelSize(self.pixel_size_y_um * lvl.downsample_y, self.pixel_size_x_um * lvl.downsample_x)

    def level_for_pixel_size(self, target_um: float) -> int:
        """Index of the coarsest level whose pixel size is still <= ``target_um`` (0 if none)."""
        best = 0
        for index in range(len(self.levels)):
            if max(self.level_pixel_size_um(index)) <= target_um * (1 + 1e-6):
                best = index
        return best

    # -- channels ---------------------------------------------------------------------------
    def channel_index(self, name: str) -> int:
        """Index of marker ``name``; raises ChannelError listing the channels.

        Case-insensitive; spaces, hyphens and a mass, fluorophore or barcode tag are
        ignored when no exact match exists (``"CD-20"`` finds ``"CD20 (164)"``); of a
        repeated name (``"DAPI"``, ``"DAPI (2)"``) the first is found.
        """
        index = find_marker(self.channel_names, name)
        if index is None:
            raise ChannelError(
                f"{self.path}: no channel named {name!r}; channels present: "
                f"{', '.join(self.channel_names)}"
            )
        return index

    def has_channel(self, name: str) -> bool:
        return find_marker(self.channel_names, name) is not None

    def channel(self, name: str, level: int = 0) -> da.Array:
        """Lazy (Y, X) array of channel ``name`` at pyramid ``level``."""
        if not 0 <= level < len(self.levels):
            raise IndexError(
                f"{self.path}: level {level} does not exist; the slide has levels 0-{len(self.levels) - 1}"
            )
        return self.levels[level].data[self.channel_index(name)]

    def with_chunks(self, chunk_px: int) -> Slide:
        """The same slide with dask chunks of about ``chunk_px`` (whole tiles), read lazily anew.

        Small chunks let a sparse read (a few windows) decode only the tiles it needs.
        """
        if self.reopen is not None:
            # kept per chunk size: the signal model, the cell pass and the gallery all read through tile-sized
            # chunks, and each reopening parses the file's metadata again (a quarter second on a whole slide)
            if chunk_px not in self._reopened:
                self._reopened[chunk_px] = self.reopen(chunk_size=chunk_px)
            return self._reopened[chunk_px]
        chunks = (1, chunk_px, chunk_px)
        levels = tuple(Level(lvl.data.rechunk(chunks), lvl.downsample_y, lvl.downsample_x) for lvl in self.levels)
        return Slide(self.path, self.format, self.channel_names, self.pixel_size_x_um, self.pixel_size_y_um,
                     levels, self.tile_shape, self.compression, self.metadata)

    def info(self) -> dict[str, Any]:
        """Plain-JSON description of the slide (what ``tlsquant info --json`` prints)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "channels": list(self.channel_names),
            "pixel_size_um": self.pixel_size_x_um,
            "pixel_size_x_um": self.pixel_size_x_um,
            "pixel_size_y_um": self.pixel_size_y_um,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "levels": [list(level.shape) for level in self.levels],
            "downsamples": [[lvl.downsample_y, lvl.downsample_x] for lvl in self.levels],
            "tile_shape": list(self.tile_shape) if self.tile_shape else None,
            "compression": self.compression,
            "chunks": [int(c[0]) for c in self.levels[0].data.chunks[1:]],
            "metadata": self.metadata,
        }
