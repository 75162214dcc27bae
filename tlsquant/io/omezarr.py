"""Readers for OME-Zarr (NGFF multiscales, v0.4 and v0.5, bioformats2raw layout) and plain zarr arrays."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import PixelSizeError, SlideFormatError
from ..slide import Level
from .lazy import ZarrArraySource, chunk_grid, zarr_level_array, zarr_stamp
from .resolve import stack_refusal
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


def _ngff_version(ome: dict[str, Any], multiscale: dict[str, Any]) -> str | None:
    version = ome.get("version") or multiscale.get("version")
    return None if version is None else str(version)


def _version_note(version: str | None) -> str | None:
    """A note for versions this reader was not written for ("0.4-dev-spatialdata" is 0.4)."""
    if version is None:
        return "no NGFF version given; read as 0.4"
    match = re.match(r"\s*(\d+)\.(\d+)", version)
    if match is None:
        return f"NGFF version {version!r} not understood; read as 0.4"
    major_minor = (int(match.group(1)), int(match.group(2)))
    if major_minor > (0, 5):
        return f"NGFF version {version} is newer than 0.5; read as 0.5"
    return None


def _child_groups(group) -> list[str]:
    import zarr

    return sorted(name for name, child in group.members() if isinstance(child, zarr.Group))


def _find_image(node, source: str):
    """(image group, its NGFF attributes, component path, notes, OME-XML Pixels) for a store."""
    attrs = dict(node.attrs)
    ome_attrs = attrs.get("ome", attrs)
    if "plate" in ome_attrs:
        wells = [w.get("path", "?") for w in ome_attrs["plate"].get("wells", [])]
        example = f"{source}/{wells[0]}/0" if wells else f"{source}/<row>/<column>/<field>"
        raise SlideFormatError(
            f"{source}: an HCS plate with {len(wells)} wells ({', '.join(wells[:12])}"
            f"{', ...' if len(wells) > 12 else ''}); tlsquant analyses one image: open one field "
            f"of a well, e.g. {example}"
        )
    if "well" in ome_attrs:
        fields = [im.get("path", "?") for im in ome_attrs["well"].get("images", [])]
        raise SlideFormatError(
            f"{source}: an HCS well with {len(fields)} fields ({', '.join(fields)}); open one, "
            f"e.g. {source}/{fields[0] if fields else '0'}"
        )
    ome = _ngff_attributes(node)
    if ome is not None:
        return node, ome, "", {}, None
    if "bioformats2raw.layout" in ome_attrs:
        return _bioformats2raw_image(node, ome_attrs, source)
    images = node.get("images") if "images" in _child_groups(node) else None
    if images is not None:  # a SpatialData store: images/<name> are NGFF images
        names = [n for n in _child_groups(images) if _ngff_attributes(images[n]) is not None]
        if len(names) == 1:
            return images[names[0]], _ngff_attributes(images[names[0]]), f"images/{names[0]}", {
                "image": f"images/{names[0]}"}, None
        raise SlideFormatError(
            f"{source}: a SpatialData store with {len(names)} images ({', '.join(names)}); open one, "
            f"e.g. {source}/images/{names[0] if names else '<name>'}"
        )
    raise SlideFormatError(
        f"{source}: zarr group without NGFF 'multiscales' metadata; expected an OME-Zarr "
        f"image, a bioformats2raw store or a plain (C, Y, X) zarr array; found groups "
        f"{', '.join(_child_groups(node)) or 'none'}"
    )


def _bioformats2raw_image(node, attrs: dict[str, Any], source: str):
    """The largest image series of a bioformats2raw store (label and macro images are smaller)."""
    # series N is OME Image N: list the folders by number, "10" after "9"
    listed = [str(s) for s in attrs.get("series", [])] or sorted(
        (name for name in _child_groups(node) if name.isdigit()), key=int
    )
    series = [name for name in listed if name in node and _ngff_attributes(node[name]) is not None]
    if not series:
        raise SlideFormatError(f"{source}: bioformats2raw layout without any NGFF image series under 0/, 1/, ...")

    def pixels(name: str) -> int:
        ome = _ngff_attributes(node[name])
        return int(np.prod(node[name][ome["multiscales"][0]["datasets"][0]["path"]].shape))

    chosen = max(series, key=lambda name: (pixels(name), -series.index(name)))
    xml_pixels = _bioformats2raw_pixels(node, source, listed.index(chosen))
    notes = {"bioformats2raw_series": chosen}
    if len(series) > 1:
        notes["other_series"] = [name for name in series if name != chosen]
    return node[chosen], _ngff_attributes(node[chosen]), chosen, notes, xml_pixels


def _bioformats2raw_pixels(node, source: str, index: int):
    """The OME Pixels element of image ``index`` in OME/METADATA.ome.xml, or None."""
    from .tiff import _local, _ome_pixels, _xml_root

    xml_path = Path(source) / "OME" / "METADATA.ome.xml"
    if not xml_path.is_file():
        return None
    root = _xml_root(xml_path.read_text(encoding="utf-8", errors="replace"), str(xml_path))
    images = [el for el in root if _local(el.tag) == "Image"]
    return _ome_pixels(images[index]) if index < len(images) else None


def read_zarr(path: Path, *, chunk_px: int | None) -> dict[str, Any]:
    """Open an OME-Zarr image, bioformats2raw store or plain zarr array lazily.

    Returns the pieces of a Slide: format, levels, channel names (or None),
    pixel size (x, y) in µm (or None, with the reason in ``pixel_size_problem``),
    tile shape, compression, notes.
    """
    import zarr

    source = str(path)
    try:
        node = zarr.open(store=source, mode="r")
    except Exception as exc:  # zarr raises several unrelated types for "not zarr"
        raise SlideFormatError(f"{source}: not a readable zarr store ({exc})") from None
    if isinstance(node, zarr.Array):
        return _plain_array(node, source, chunk_px)
    node, ome, prefix, notes, xml_pixels = _find_image(node, source)
    multiscale = ome["multiscales"][0]
    version = _ngff_version(ome, multiscale)
    notes = {**notes, "ngff_version": version}
    if _version_note(version):
        notes["reader_warnings"] = [_version_note(version)]
    # the channel axis is the one of type "channel", whatever its name ("c", "ch", "channel")
    axes = [
        "c" if isinstance(a, dict) and a.get("type") == "channel" else a["name"] if isinstance(a, dict) else a
        for a in multiscale.get("axes", ["c", "y", "x"])
    ]
    units = {
        (a["name"]): a.get("unit") for a in multiscale.get("axes", []) if isinstance(a, dict)
    }
    if "y" not in axes or "x" not in axes:
        raise SlideFormatError(f"{source}: NGFF axes {axes} have no y and x axis")
    global_scale = _scale_of(multiscale.get("coordinateTransformations"), len(axes))
    levels: list[Level] = []
    tile_yx = None
    compression = None
    base_shape = None
    base_scale = None
    for level_index, dataset in enumerate(multiscale["datasets"]):
        component = f"{prefix}/{dataset['path']}" if prefix else dataset["path"]
        array = node[dataset["path"]]
        if array.ndim != len(axes):
            raise SlideFormatError(
                f"{source}/{component}: array has {array.ndim} dimensions, axes say {axes}"
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
        data = _level_array(source, component, level_index, axes, array, wanted)
        selection: list[Any] = []
        for name, size in zip(axes, array.shape):
            if name in ("c", "y", "x"):
                selection.append(slice(None))
            elif size == 1:
                selection.append(0)
            elif name.lower() in ("z", "t"):
                raise SlideFormatError(stack_refusal(source, name, size, f"axes {axes}, shape {array.shape}"))
            else:
                raise SlideFormatError(
                    f"{source}: axis {name!r} has {size} planes; expected a single 2D multichannel "
                    f"image (t and z of size 1)"
                )
        if any(not isinstance(item, slice) for item in selection):
            data = data[tuple(selection)]
        if "c" not in axes:
            data = data[None]
        if base_shape is None:
            base_shape = data.shape
            base_scale = scale
            tile_yx = tuple(int(v) for v in storage_yx)
            compressors = getattr(array, "compressors", None) or ()
            compression = _codec_name(compressors[0]) if compressors else None
        levels.append(Level(data, base_shape[1] / data.shape[1], base_shape[2] / data.shape[2]))
    pixel_size, pixel_source, problem = _ngff_pixel_size(base_scale, axes, units, source)
    names, names_source = _omero_names(ome, levels[0].shape[0])
    if xml_pixels is not None:
        from .tiff import _ome_metadata

        xml_names, xml_size, xml_problem = _ome_metadata(xml_pixels, f"{source} OME/METADATA.ome.xml")
        if names is None and xml_names and len(xml_names) == levels[0].shape[0] and all(xml_names):
            names, names_source = xml_names, "OME/METADATA.ome.xml Channel Name/Fluor"
        if pixel_size is None and xml_size is not None:
            pixel_size, pixel_source, problem = xml_size, "OME/METADATA.ome.xml PhysicalSizeX/Y", None
        problem = problem or xml_problem
    return {
        "format": "ome-zarr",
        "levels": levels,
        "channel_names": names,
        "channel_names_source": names_source,
        "pixel_size_xy_um": pixel_size,
        "pixel_size_source": pixel_source,
        "pixel_size_problem": problem,
        "tile_shape": tile_yx,
        "compression": compression,
        "notes": notes,
    }


def _ngff_pixel_size(scale, axes, units, source: str):
    """((x, y) µm or None, source, problem) from the level-0 scale and the axis units."""
    if not units.get("x") or not units.get("y"):
        return None, None, None
    try:
        y_um = length_to_um(scale[axes.index("y")], units["y"], source=f"{source} NGFF y axis unit")
        x_um = length_to_um(scale[axes.index("x")], units["x"], source=f"{source} NGFF x axis unit")
    except PixelSizeError as exc:
        return None, None, str(exc).split("; pass ")[0]
    return (x_um, y_um), "NGFF coordinateTransformations scale", None


def _omero_names(ome: dict[str, Any], n_channels: int):
    channels = (ome.get("omero") or {}).get("channels")
    if not channels or len(channels) != n_channels:
        return None, None
    labels = [str(ch.get("label") if ch.get("label") is not None else "").strip() for ch in channels]
    # numbers only (SpatialData writes 0, 1, 2) name no marker
    if not all(labels) or all(label.isdigit() for label in labels):
        return None, None
    return labels, "NGFF omero channel labels"


def _level_array(source: str, component: str, level: int, axes, array, chunks) -> da.Array:
    """A lazy array over one zarr array whose unreadable chunks are reported as a corrupt store."""
    where = ZarrArraySource(source, component, level, tuple(axes), zarr_stamp(source, component))
    return zarr_level_array(where, da.core.normalize_chunks(chunks, array.shape, dtype=array.dtype), array.dtype)


def _plain_array(array, source: str, chunk_px: int | None) -> dict[str, Any]:
    if array.ndim not in (2, 3):
        raise SlideFormatError(
            f"{source}: plain zarr array must be (Y, X) or (C, Y, X), got shape {array.shape}"
        )
    storage = array.shards or array.chunks
    y_chunks, x_chunks = chunk_grid(array.shape[-2:], tuple(storage[-2:]), chunk_px)
    data = _level_array(source, "", 0, ("c", "y", "x")[-array.ndim :], array, (1, y_chunks, x_chunks)[-array.ndim :])
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
