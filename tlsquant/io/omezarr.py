"""Readers for OME-Zarr (NGFF multiscales, v0.4 and v0.5) and plain zarr arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import SlideFormatError
from ..slide import Level
from .lazy import chunk_grid
from .units import length_to_um


def _ngff_attributes(group) -> dict[str, Any] | None:
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests everything under "ome"
    return ome if "multiscales" in ome else None


def _codec_name(codec) -> str:
    name = getattr(codec, "codec_id", None) or type(codec).__name__
    return name.lower().removesuffix("codec")


def _scale_of(transforms: list[dict] | None, ndim: int) -> np.ndarray:
    scale = np.ones(ndim)
    for transform in transforms or []:
        if transform.get("type") == "scale":
            scale = scale * np.asarray(transform["scale"], dtype=float)
    return scale


def read_zarr(path: Path, *, chunk_px: int | None) -> dict[str, Any]:
    """Open an OME-Zarr group or a plain zarr array lazily.

    Returns the pieces of a Slide: format, levels, channel names (or None),
    pixel size (x, y) in µm (or None), tile shape, compression, notes.
    """
    import zarr

    source = str(path)
    try:
        node = zarr.open(store=source, mode="r")
    except Exception as exc:  # zarr raises several unrelated types for "not zarr"
        raise SlideFormatError(f"{source}: not a readable zarr store ({exc})") from None
    if isinstance(node, zarr.Array):
        return _plain_array(node, source, chunk_px)
    ome = _ngff_attributes(node)
    if ome is None:
        raise SlideFormatError(
            f"{source}: zarr group without NGFF 'multiscales' metadata; expected an OME-Zarr "
            f"image or a plain (C, Y, X) zarr array"
        )
    multiscale = ome["multiscales"][0]
    axes = [a["name"] if isinstance(a, dict) else a for a in multiscale.get("axes", ["c", "y", "x"])]
    units = {
        (a["name"]): a.get("unit") for a in multiscale.get("axes", []) if isinstance(a, dict)
    }
    if "y" not in axes or "x" not in axes:
        raise SlideFormatError(f"{source}: NGFF axes {axes} have no y and x axis")
    global_scale = _scale_of(multiscale.get("coordinateTransformations"), len(axes))
    levels: list[Level] = []
    pixel_size = None
    tile_yx = None
    compression = None
    base_shape = None
    for index, dataset in enumerate(multiscale["datasets"]):
        array = node[dataset["path"]]
        if array.ndim != len(axes):
            raise SlideFormatError(
                f"{source}/{dataset['path']}: array has {array.ndim} dimensions, axes say {axes}"
            )
        scale = _scale_of(dataset.get("coordinateTransformations"), len(axes)) * global_scale
        storage = array.shards or array.chunks
        storage_yx = (storage[axes.index("y")], storage[axes.index("x")])
        y_chunks, x_chunks = chunk_grid(
            (array.shape[axes.index("y")], array.shape[axes.index("x")]), storage_yx, chunk_px
        )
        # chunks given up front: a later rechunk of a whole-slide graph costs seconds
        wanted = tuple(
            y_chunks if name == "y" else x_chunks if name == "x" else 1 for name in axes
        )
        data = da.from_zarr(source, component=dataset["path"], chunks=wanted)
        selection: list[Any] = []
        for name, size in zip(axes, array.shape):
            if name in ("c", "y", "x"):
                selection.append(slice(None))
            elif size == 1:
                selection.append(0)
            else:
                raise SlideFormatError(
                    f"{source}: axis {name!r} has {size} planes; expected a single 2D multichannel "
                    f"image (t and z of size 1)"
                )
        if any(not isinstance(item, slice) for item in selection):
            data = data[tuple(selection)]
        if "c" not in axes:
            data = data[None]
        if index == 0:
            base_shape = data.shape
            tile_yx = tuple(int(v) for v in storage_yx)
            compressors = getattr(array, "compressors", None) or ()
            compression = _codec_name(compressors[0]) if compressors else None
            y_um = length_to_um(scale[axes.index("y")], units.get("y"), source=f"{source} NGFF y scale") if units.get("y") else None
            x_um = length_to_um(scale[axes.index("x")], units.get("x"), source=f"{source} NGFF x scale") if units.get("x") else None
            if x_um is not None and y_um is not None:
                pixel_size = (x_um, y_um)
        levels.append(Level(data, base_shape[1] / data.shape[1], base_shape[2] / data.shape[2]))
    names = None
    channels = (ome.get("omero") or {}).get("channels")
    if channels and len(channels) == levels[0].shape[0]:
        labels = [str(ch.get("label") or "") for ch in channels]
        names = labels if all(labels) else None
    return {
        "format": "ome-zarr",
        "levels": levels,
        "channel_names": names,
        "pixel_size_xy_um": pixel_size,
        "pixel_size_source": "NGFF coordinateTransformations scale" if pixel_size else None,
        "tile_shape": tile_yx,
        "compression": compression,
        "notes": {"ngff_version": ome.get("version", multiscale.get("version"))},
    }


def _plain_array(array, source: str, chunk_px: int | None) -> dict[str, Any]:
    if array.ndim not in (2, 3):
        raise SlideFormatError(
            f"{source}: plain zarr array must be (Y, X) or (C, Y, X), got shape {array.shape}"
        )
    storage = array.shards or array.chunks
    y_chunks, x_chunks = chunk_grid(array.shape[-2:], tuple(storage[-2:]), chunk_px)
    data = da.from_zarr(source, chunks=(1, y_chunks, x_chunks)[-array.ndim :])
    if array.ndim == 2:
        data = data[None]
    return {
        "format": "zarr",
        "levels": [Level(data, 1.0, 1.0)],
        "channel_names": None,
        "pixel_size_xy_um": None,
        "pixel_size_source": None,
        "tile_shape": tuple(int(v) for v in storage[-2:]),
        "compression": None,
        "notes": {},
    }
