"""Writers for multichannel pyramids: tiled OME-TIFF, Akoya-style QPTIFF and OME-Zarr.

Used by :mod:`tlsquant.synthetic` and the tests. Level arrays may be numpy or dask
(C, Y, X); dask levels are written band by band, so a whole slide is never in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import dask.array as da
import numpy as np

from .atomic import atomic_path

ArrayLike = np.ndarray | da.Array


def downsample_mean(level: ArrayLike, factor: int = 2) -> ArrayLike:
    """Mean-bin (C, Y, X) by ``factor`` in y and x, trimming a ragged edge, same dtype."""
    if isinstance(level, np.ndarray) and level.dtype.kind in "ui" and level.dtype.itemsize <= 2 and factor <= 16:
        # in memory, small integers: each bin's float32 sum is exact (< 2**24) in any order, so adding the
        # factor**2 strided views equals the chunked mean, at a fraction of its cost
        y, x = level.shape[1] // factor * factor, level.shape[2] // factor * factor
        total = np.zeros((level.shape[0], y // factor, x // factor), np.float32)
        for dy in range(factor):
            for dx in range(factor):
                total += level[:, dy:y:factor, dx:x:factor]
        total /= np.float32(factor * factor)
        return np.round(total, out=total).astype(level.dtype)
    lazy = da.asarray(level) if not isinstance(level, da.Array) else level
    y = lazy.shape[1] // factor * factor
    x = lazy.shape[2] // factor * factor
    lazy = lazy[:, :y, :x]
    if any(c % factor for c in lazy.chunks[1][:-1] + lazy.chunks[2][:-1]):
        lazy = lazy.rechunk((1, 1024, 1024))
    binned = da.coarsen(np.mean, lazy.astype(np.float32), {1: factor, 2: factor}, trim_excess=True)
    if np.issubdtype(level.dtype, np.integer):
        binned = da.round(binned)
    binned = binned.astype(level.dtype)
    return binned if isinstance(level, da.Array) else binned.compute()


def build_pyramid(level0: ArrayLike, *, min_size: int = 256, max_levels: int = 8) -> list[ArrayLike]:
    """Level 0 and successive 2x mean-binned levels down to about ``min_size`` px."""
    levels = [level0]
    while len(levels) < max_levels and min(levels[-1].shape[1:]) // 2 >= min_size:
        levels.append(downsample_mean(levels[-1]))
    return levels


def _bands(plane: ArrayLike, rows: int) -> Iterator[np.ndarray]:
    # read several tile rows at once: a dask source chunked taller than one tile
    # would otherwise decode each of its chunks once per tile row
    if isinstance(plane, da.Array):
        rows = max(rows, rows * (plane.chunks[0][0] // rows))
    for y0 in range(0, plane.shape[0], rows):
        band = plane[y0 : y0 + rows]
        yield np.asarray(band.compute() if isinstance(band, da.Array) else band)


def _tiles(level: ArrayLike, tile: int) -> Iterator[np.ndarray]:
    """Tiles of every plane in TIFF order (plane, tile row, tile column), padded to full size."""
    for plane in level:
        for band in _bands(plane, tile):
            for ty in range(0, band.shape[0], tile):
                for x0 in range(0, band.shape[1], tile):
                    piece = band[ty : ty + tile, x0 : x0 + tile]
                    if piece.shape != (tile, tile):
                        padded = np.zeros((tile, tile), dtype=band.dtype)
                        padded[: piece.shape[0], : piece.shape[1]] = piece
                        piece = padded
                    yield piece


def _resolution_per_cm(pixel_size_um: tuple[float, float]) -> tuple[float, float]:
    return 1e4 / pixel_size_um[0], 1e4 / pixel_size_um[1]


def write_ome_tiff(
    path: str | Path,
    levels: Sequence[ArrayLike],
    *,
    channel_names: Sequence[str],
    pixel_size_um: tuple[float, float],
    tile: int = 256,
    compression: str | None = "zlib",
    compression_level: int | None = None,
    pyramid: str = "subifds",
    physical_unit: str = "µm",
) -> Path:
    """Write a tiled pyramidal OME-TIFF.

    ``pyramid`` is ``"subifds"`` (the OME-TIFF 6 convention) or ``"series"`` (each
    reduced level as its own OME Image, as some older converters do).
    ``physical_unit`` writes PhysicalSize in that unit (µm, nm or mm) to exercise readers;
    ``compression_level`` is the codec's level (None: its default).
    """
    import tifffile

    path = Path(path)
    scale = {"µm": 1.0, "nm": 1e3, "mm": 1e-3}[physical_unit]
    base = levels[0]
    with atomic_path(path) as target, tifffile.TiffWriter(target, bigtiff=True, ome=True) as tw:
        for index, level in enumerate(levels):
            factor_y = base.shape[1] / level.shape[1]
            factor_x = base.shape[2] / level.shape[2]
            size = (pixel_size_um[0] * factor_x, pixel_size_um[1] * factor_y)
            options = dict(
                shape=level.shape,
                dtype=level.dtype,
                tile=(tile, tile),
                compression=compression,
                compressionargs={"level": compression_level} if compression_level is not None else None,
                resolution=_resolution_per_cm(size),
                resolutionunit="CENTIMETER",
            )
            metadata = {
                "axes": "CYX",
                "Name": f"level {index}" if pyramid == "series" else path.name,
                "Channel": {"Name": list(channel_names)},
                "PhysicalSizeX": size[0] * scale,
                "PhysicalSizeXUnit": physical_unit,
                "PhysicalSizeY": size[1] * scale,
                "PhysicalSizeYUnit": physical_unit,
            }
            if pyramid == "subifds":
                if index == 0:
                    tw.write(_tiles(level, tile), subifds=len(levels) - 1, metadata=metadata, **options)
                else:
                    tw.write(_tiles(level, tile), subfiletype=1, metadata=None, **options)
            elif pyramid == "series":
                tw.write(_tiles(level, tile), metadata=metadata, **options)
            else:
                raise ValueError(f"pyramid must be 'subifds' or 'series', got {pyramid!r}")
    return path


def _qpi_description(image_type: str, name: str | None = None, biomarker: str | None = None,
                     pixel_size_um: float | None = None, color: str = "255,255,255") -> str:
    fields = [
        "<DescriptionVersion>2</DescriptionVersion>",
        "<AcquisitionSoftware>tlsquant synthetic</AcquisitionSoftware>",
        f"<ImageType>{image_type}</ImageType>",
        "<Identifier>00000000-0000-0000-0000-000000000000</Identifier>",
        "<SlideID>synthetic</SlideID>",
        "<IsUnmixedComponent>True</IsUnmixedComponent>",
    ]
    if name is not None:
        fields.append(f"<Name>{escape(name)}</Name>")
        fields.append(f"<Color>{color}</Color>")
    if biomarker is not None:
        fields.append(f"<Biomarker>{escape(biomarker)}</Biomarker>")
    if pixel_size_um is not None:
        # nested <Name> elements like the real ScanProfile, to keep readers honest
        fields.append(
            "<ScanProfile><root><Name>synthetic profile</Name><ScanResolution>"
            f"<PixelSizeMicrons>{pixel_size_um:.4f}</PixelSizeMicrons></ScanResolution>"
            "<ScanBands><Bands-i><Name>DAPI filter</Name></Bands-i></ScanBands></root></ScanProfile>"
        )
    body = "\n  ".join(fields)
    return (
        '<?xml version="1.0" encoding="utf-16"?>\n<PerkinElmer-QPI-ImageDescription>\n  '
        f"{body}\n</PerkinElmer-QPI-ImageDescription>"
    )


def write_qptiff(
    path: str | Path,
    levels: Sequence[ArrayLike],
    *,
    channel_names: Sequence[str],
    pixel_size_um: tuple[float, float],
    fluorophores: Sequence[str] | None = None,
    tile: int = 256,
    compression: str | None = "lzw",
    include_biomarker: bool = True,
    resolution_tags: bool = True,
) -> Path:
    """Write a QPTIFF laid out like an Akoya PhenoImager export.

    Page order: level-0 channels, an RGB thumbnail, each reduced level's channels,
    an overview and a label image. Every page carries PerkinElmer-QPI XML with
    ``<Name>`` (the fluorophore) and, if ``include_biomarker``, ``<Biomarker>``.
    """
    import tifffile

    path = Path(path)
    names = list(channel_names)
    fluors = list(fluorophores) if fluorophores is not None else [f"Opal {480 + 40 * k}" for k in range(len(names))]
    base = levels[0]

    def page_options(level, level_index):
        # each axis by its own factor: a level of an odd-sized slide (or non-square pixels) is not scaled alike in y and x
        size = (pixel_size_um[0] * base.shape[2] / level.shape[2], pixel_size_um[1] * base.shape[1] / level.shape[1])
        options = dict(metadata=None, compression=compression, tile=(tile, tile))
        if resolution_tags:
            options.update(resolution=_resolution_per_cm(size), resolutionunit="CENTIMETER")
        return options, size

    def write_level(tw, level, level_index):
        options, size = page_options(level, level_index)
        image_type = "FullResolution" if level_index == 0 else "ReducedResolution"
        for c in range(level.shape[0]):
            description = _qpi_description(
                image_type, fluors[c], names[c] if include_biomarker else None, size[0]
            )
            plane = level[c : c + 1]
            tw.write(_tiles(plane, tile), shape=plane.shape[1:], dtype=level.dtype,
                     description=description, **options)

    def rgb_preview(level, image_type, size_px):
        small = levels[-1]
        step = max(1, math.ceil(max(small.shape[1:]) / size_px))
        preview = np.asarray(small[: min(3, small.shape[0]), ::step, ::step])
        preview = np.moveaxis(preview.astype(np.float32), 0, -1)
        if preview.shape[-1] < 3:
            preview = np.concatenate([preview] + [preview[..., :1]] * (3 - preview.shape[-1]), axis=-1)
        top = float(preview.max()) or 1.0
        rgb = np.ascontiguousarray((preview / top * 255).astype(np.uint8))
        tw.write(rgb, photometric="rgb", description=_qpi_description(image_type),
                 metadata=None, compression=compression)

    with atomic_path(path) as target, tifffile.TiffWriter(target, bigtiff=True) as tw:
        write_level(tw, levels[0], 0)
        rgb_preview(levels[-1], "Thumbnail", 256)
        for level_index, level in enumerate(levels[1:], start=1):
            write_level(tw, level, level_index)
        rgb_preview(levels[-1], "Overview", 128)
        tw.write(np.full((64, 128, 3), 200, np.uint8), photometric="rgb",
                 description=_qpi_description("Label"), metadata=None)
    return path


def write_ome_zarr(
    path: str | Path,
    levels: Sequence[ArrayLike],
    *,
    channel_names: Sequence[str],
    pixel_size_um: tuple[float, float],
    chunk: int = 256,
    version: str = "0.5",
) -> Path:
    """Write an NGFF multiscale image (0.5 on zarr v3, or 0.4 on zarr v2) with omero channel labels."""
    path = Path(path)
    zarr_format = 3 if version == "0.5" else 2
    with atomic_path(path) as target:
        _write_ngff(target, levels, channel_names, pixel_size_um, chunk, version, zarr_format, path.name)
    return path


# omero colours: DAPI blue, the rest cycling through colours that stay distinct on black
_NUCLEAR = ("dapi", "hoechst", "nuclei", "dna")
_PALETTE = ("00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FF8000", "8080FF", "FFFFFF", "80FF80", "FF8080")


def channel_colour(name: str, index: int) -> str:
    """Hex RGB (``"0000FF"``) for a channel in viewers: blue for a nuclear stain, else a fixed cycle."""
    if any(word in str(name).lower() for word in _NUCLEAR):
        return "0000FF"
    return _PALETTE[index % len(_PALETTE)]


def display_windows(level: ArrayLike) -> list[dict[str, float]]:
    """omero ``window`` per channel: 0.1-99.9th percentile of a (small) level, within the dtype's range."""
    data = np.asarray(level.compute() if isinstance(level, da.Array) else level)
    if np.issubdtype(data.dtype, np.integer):
        low, high = float(np.iinfo(data.dtype).min), float(np.iinfo(data.dtype).max)
    else:
        finite = data[np.isfinite(data)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    windows = []
    for plane in data:
        values = plane[np.isfinite(plane)] if not np.issubdtype(data.dtype, np.integer) else plane.ravel()
        start, end = (np.percentile(values, [0.1, 99.9]) if values.size else (low, high))
        end = max(float(end), float(start) + 1.0)
        windows.append({"min": low, "max": high, "start": float(start), "end": end})
    return windows


def _write_ngff(target, levels, channel_names, pixel_size_um, chunk, version, zarr_format, name) -> None:
    import zarr

    group = zarr.open_group(str(target), mode="w", zarr_format=zarr_format)
    base = levels[0]
    datasets = []
    for index, level in enumerate(levels):
        factor_y = base.shape[1] / level.shape[1]
        factor_x = base.shape[2] / level.shape[2]
        array = group.create_array(
            str(index), shape=level.shape, dtype=level.dtype, chunks=(1, chunk, chunk),
        )
        if isinstance(level, da.Array):
            da.store(level.rechunk((1, chunk * 4, chunk * 4)), array, lock=False)
        else:
            array[...] = level
        size_y, size_x = pixel_size_um[1] * factor_y, pixel_size_um[0] * factor_x
        datasets.append({
            "path": str(index),
            # origin at the top-left edge of level-0 pixel (0, 0): a pixel's centre lies half a pixel in
            # (the frame of tls.csv and of masks.ome.zarr)
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, size_y, size_x]},
                {"type": "translation", "translation": [0.0, 0.5 * size_y, 0.5 * size_x]},
            ],
        })
    multiscale = {
        "name": name,
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": datasets,
    }
    # colour and window per channel: napari-ome-zarr fails on omero channels without a colour
    omero = {
        "channels": [{"label": label, "active": True, "color": channel_colour(label, index), "window": window}
                     for index, (label, window) in enumerate(zip(channel_names, display_windows(levels[-1])))],
        "rdefs": {"model": "color"},
    }
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale], "omero": omero}
    else:
        group.attrs.update({"multiscales": [{**multiscale, "version": "0.4"}], "omero": omero})
