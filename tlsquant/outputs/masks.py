"""masks.ome.zarr: TLS labels, tumour and tissue masks as NGFF 0.5 labels that register on the slide in µm.

Layout (zarr v3, OME-NGFF 0.5)::

    masks.ome.zarr/            image "tissue" (y, x uint8, coarse grid), omero colour and window
      0, 1, ...                its levels
      labels/                  {"labels": ["tls", "tumour", "tissue"]}
        tls/0, 1, ...          TLS ids (0 = none) on the fine grid; image-label colours by stage
        tumour/0, ...          1 = tumour bed (coarse grid)
        tissue/0, ...          1 = tissue (coarse grid)

Coordinates: world = µm, origin at the top-left *edge* of level-0 pixel (0, 0), x right,
y down, the frame of tls.csv (``centroid_x_um``) and of tls.geojson times the pixel size.
Level-0 slide pixel i then has its centre at (i + 0.5) · pixel size; grid cell k of a
grid with ``factor`` level-0 px per cell covers px [k·factor, (k+1)·factor), so its centre
is at (k + 0.5) · factor · pixel size: each dataset has ``scale`` = cell size and
``translation`` = half a cell. Reduced levels take every s-th cell (nearest, labels stay
exact), so their translation stays half a level-0 cell and their scale grows s-fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path
from ..pixel_size import PixelSize
from .geometry import STAGE_COLOURS, TUMOUR_COLOUR

NGFF_VERSION = "0.5"
TISSUE_COLOUR = (160, 160, 160)
UNKNOWN_STAGE_COLOUR = (255, 255, 0)
_CHUNK = 1024
_SMALLEST_LEVEL_PX = 1024


def grid_transforms(factor: int, pixel_size: PixelSize, *, step: int = 1) -> list[dict]:
    """NGFF ``coordinateTransformations`` of a grid of ``factor`` level-0 px per bin, in µm (y, x).

    Parameters
    ----------
    factor : int
        Level-0 pixels per grid bin side.
    pixel_size : PixelSize
        Level-0 pixel size, (y, x) µm.
    step : int, optional
        Every ``step``-th grid bin is kept (a reduced level).

    Returns
    -------
    list of dict
        ``[scale, translation]``: bin k's sample lies at (k·step + 0.5)·factor·pixel size µm.
    """
    py, px = pixel_size
    return [{"type": "scale", "scale": [py * factor * step, px * factor * step]},
            {"type": "translation", "translation": [py * factor * 0.5, px * factor * 0.5]}]


def stage_colour(stage: str) -> tuple[int, int, int]:
    """RGB of a TLS stage (the qc.png and QuPath colours); yellow for a stage with no colour."""
    return STAGE_COLOURS.get(str(stage), UNKNOWN_STAGE_COLOUR)


def _levels(data: np.ndarray) -> list[tuple[int, np.ndarray]]:
    levels = [(1, data)]
    while max(levels[-1][1].shape) > _SMALLEST_LEVEL_PX:
        step = levels[-1][0] * 2
        levels.append((step, data[::step, ::step]))
    return levels


def _axes() -> list[dict]:
    return [{"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]


def _write_multiscale(group, name: str, data: np.ndarray, factor: int, pixel_size: PixelSize) -> dict:
    datasets = []
    for index, (step, level) in enumerate(_levels(data)):
        chunks = tuple(min(_CHUNK, max(1, side)) for side in level.shape)
        array = group.create_array(str(index), shape=level.shape, dtype=level.dtype, chunks=chunks,
                                   dimension_names=["y", "x"])
        array[...] = level
        datasets.append({"path": str(index), "coordinateTransformations": grid_transforms(factor, pixel_size, step=step)})
    return {"name": name, "axes": _axes(), "datasets": datasets}


def _rgba(rgb) -> list[int]:
    return [int(v) for v in rgb] + [255]


def tls_label_metadata(tls) -> dict:
    """``image-label`` of the TLS labels: a colour per TLS id from its stage, and its stage as a property."""
    colours, properties = [], []
    if len(tls) and "tls_id" in tls:
        for row in tls.itertuples(index=False):
            tls_id = int(row.tls_id)
            stage = str(getattr(row, "stage", ""))
            colours.append({"label-value": tls_id, "rgba": _rgba(stage_colour(stage))})
            entry = {"label-value": tls_id, "stage": stage}
            if hasattr(row, "location"):
                entry["location"] = str(row.location)
            if hasattr(row, "area_um2"):
                entry["area_um2"] = float(row.area_um2)
            properties.append(entry)
    return {"colors": colours, "properties": properties, "source": {"image": "../../"}}


def write_masks(result, path: Path) -> Path:
    """Write ``masks.ome.zarr``: tissue image, and TLS / tumour / tissue NGFF labels registered in µm.

    Parameters
    ----------
    result : SlideResult
        The analysed slide (its grids, factors, pixel size and TLS table).
    path : Path
        The ``.ome.zarr`` folder to write (atomically: a temporary, then renamed).

    Returns
    -------
    Path
        ``path``.
    """
    import zarr

    pixel_size = result.pixel_size
    tissue = result.tissue_mask.astype(np.uint8)
    with atomic_path(path) as temporary:
        root = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        image = _write_multiscale(root, "tissue", tissue, result.coarse_factor, pixel_size)
        omero = {"channels": [{"label": "tissue", "color": "A0A0A0", "active": True,
                               "window": {"start": 0, "end": 1, "min": 0, "max": 1}}],
                 "rdefs": {"model": "color"}}
        root.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": [image], "omero": omero}
        labels = root.create_group("labels")
        grids = (("tls", result.tls_labels, result.fine_factor, tls_label_metadata(result.tls)),
                 ("tumour", result.tumour_mask.astype(np.uint8), result.coarse_factor,
                  {"colors": [{"label-value": 1, "rgba": _rgba(TUMOUR_COLOUR)}], "source": {"image": "../../"}}),
                 ("tissue", tissue, result.coarse_factor,
                  {"colors": [{"label-value": 1, "rgba": _rgba(TISSUE_COLOUR)}], "source": {"image": "../../"}}))
        for name, data, factor, image_label in grids:
            group = labels.create_group(name)
            multiscale = _write_multiscale(group, name, data, factor, pixel_size)
            group.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": [multiscale], "image-label": image_label}
        labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": [name for name, *_ in grids]}
    return path
