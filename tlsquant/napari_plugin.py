"""napari reader (npe2) for a tlsquant output folder: the slide, the masks and the TLS outlines in µm.

Open a folder holding ``summary.json`` (``napari results/case01``, File > Open Folder, or
``viewer.open(folder, plugin="tlsquant")``) and get:

- one image layer per slide channel, read lazily through :func:`tlsquant.open_slide` from
  ``summary['source']['path']`` (relative paths resolved against the folder too), every
  pyramid level as a multiscale level, with the channel names and the pixel size of the run;
- labels layers ``TLS``, ``tumour`` and ``tissue`` from ``masks.ome.zarr`` (written with
  ``outputs.masks_zarr = true``), TLS coloured by stage;
- a shapes layer ``TLS outlines`` from ``tls.geojson`` (level-0 px → µm), edge colour by stage.

World coordinates are µm with the origin at the top-left edge of level-0 pixel (0, 0), x right,
y down: the frame of tls.csv. Slide pixel i has its centre at (i + 0.5) · pixel size, a mask
cell k of ``factor`` px at (k + 0.5) · factor · pixel size (scale plus half-a-pixel translate).

:func:`output_folder_layers` builds the layer data tuples without importing napari, so it
can be used and tested anywhere; only the napari extra (``pip install "tlsquant[napari]"``)
is needed to see them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .outputs.geometry import STAGE_COLOURS
from .outputs.masks import UNKNOWN_STAGE_COLOUR

LayerData = tuple[Any, dict[str, Any], str]
_MASKS = "masks.ome.zarr"
_LABEL_NAMES = {"tls": "TLS", "tumour": "tumour", "tissue": "tissue"}


def _folder_of(path: str | Path) -> Path | None:
    path = Path(path)
    if path.is_dir() and (path / "summary.json").is_file():
        return path
    if path.name == "summary.json" and path.is_file():
        return path.parent
    return None


def napari_get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """npe2 reader hook: a reader for a tlsquant output folder (or its summary.json), else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_output_folder if _folder_of(path) is not None else None


def read_output_folder(path: str | list[str]) -> list[LayerData]:
    """The layer data of a tlsquant output folder (see :func:`output_folder_layers`)."""
    if isinstance(path, list):
        path = path[0]
    folder = _folder_of(path)
    return output_folder_layers(folder if folder is not None else path)


def _hex_to_rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i: i + 2], 16) / 255 for i in (0, 2, 4))


def _rgba(rgb, alpha: float = 1.0) -> list[float]:
    return [v / 255 for v in rgb] + [alpha]


def _slide_path(summary: dict, folder: Path) -> Path | None:
    source = (summary.get("source") or {}).get("path")
    if not source:
        return None
    path = Path(source)
    for candidate in (path, folder / path, folder / path.name):
        if candidate.exists():
            return candidate
    return None


def slide_layers(summary: dict, folder: Path) -> list[LayerData]:
    """Image layers of the analysed slide: one per channel, multiscale, at the run's µm scale."""
    from . import open_slide
    from .io.writers import channel_colour, display_windows

    path = _slide_path(summary, Path(folder))
    if path is None:
        warnings.warn(f"{folder}: slide {summary.get('source', {}).get('path')!r} not found; no image layers",
                      stacklevel=2)
        return []
    px = float(summary["pixel_size_um"])
    py = float(summary.get("pixel_size_y_um") or px)
    names = (summary.get("source") or {}).get("channels")
    slide = open_slide(path, pixel_size_um=(px, py))
    names = list(names) if names and len(names) == slide.shape[0] else list(slide.channel_names)
    levels = [level.data for level in slide.levels]
    windows = display_windows(levels[-1])  # the smallest level: cheap, and what napari would look at
    return [(levels if len(levels) > 1 else levels[0], {
        "name": names,
        "channel_axis": 0,
        "multiscale": len(levels) > 1,
        "scale": (py, px),
        "translate": (0.5 * py, 0.5 * px),
        "units": ("µm", "µm"),
        "axis_labels": ("y", "x"),
        "colormap": [_colormap(channel_colour(name, index)) for index, name in enumerate(names)],
        "contrast_limits": [[w["start"], w["end"]] for w in windows],
        "blending": "additive",
        "metadata": {"path": str(path), "slide_id": summary.get("slide_id")},
    }, "image")]


def _colormap(colour: str):
    """A black → colour ramp in napari's dict form (Colormap fields), without importing napari."""
    rgb = _hex_to_rgb(colour)
    return {"name": f"tlsquant-{colour}", "colors": [[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]]}


def mask_layers(folder: Path) -> list[LayerData]:
    """Labels layers TLS, tumour and tissue from ``masks.ome.zarr``, with its µm scale and translation."""
    import dask.array as da
    import zarr

    store = Path(folder) / _MASKS
    if not store.is_dir():
        return []
    root = zarr.open_group(str(store), mode="r")
    layers = []
    for name in root["labels"].attrs["ome"]["labels"]:
        group = root[f"labels/{name}"]
        ome = group.attrs["ome"]
        datasets = ome["multiscales"][0]["datasets"]
        transforms = {t["type"]: t for t in datasets[0]["coordinateTransformations"]}
        data = [da.from_zarr(group[d["path"]]) for d in datasets]
        colours = {c["label-value"]: [v / 255 for v in c["rgba"]] for c in ome.get("image-label", {}).get("colors", [])}
        properties = ome.get("image-label", {}).get("properties", [])
        kwargs = {
            "name": _LABEL_NAMES.get(name, name),
            "multiscale": len(data) > 1,
            "scale": tuple(transforms["scale"]["scale"]),
            "translate": tuple(transforms.get("translation", {}).get("translation", (0.0, 0.0))),
            "units": ("µm", "µm"),
            "axis_labels": ("y", "x"),
            "opacity": 0.5 if name == "tls" else 0.3,
            "visible": name != "tissue",
            "metadata": {"path": str(store / "labels" / name)},
        }
        if colours:
            kwargs["colormap"] = {0: [0.0, 0.0, 0.0, 0.0], None: [1.0, 1.0, 0.0, 1.0], **colours}
        if properties:
            kwargs["features"] = {key: [p.get(key) for p in properties]
                                  for key in dict.fromkeys(k for p in properties for k in p)}
            kwargs["features"]["index"] = kwargs["features"].pop("label-value")
        layers.append((data if len(data) > 1 else data[0], kwargs, "labels"))
    return layers


def _rings(geometry: dict) -> list[list[list[float]]]:
    if geometry.get("type") == "Polygon":
        return [geometry["coordinates"][0]]
    if geometry.get("type") == "MultiPolygon":
        return [polygon[0] for polygon in geometry["coordinates"]]
    return []


def outline_layer(folder: Path, summary: dict) -> list[LayerData]:
    """A shapes layer of the TLS outlines in tls.geojson, level-0 px scaled to µm, coloured by stage."""
    path = Path(folder) / "tls.geojson"
    if not path.is_file():
        return []
    px = float(summary["pixel_size_um"])
    py = float(summary.get("pixel_size_y_um") or px)
    shapes, colours, tls_ids, stages = [], [], [], []
    for feature in json.loads(path.read_text()).get("features", []):
        meta = feature.get("properties", {}).get("metadata", {})
        stage = str(meta.get("stage", ""))
        for ring in _rings(feature.get("geometry") or {}):
            xy = np.asarray(ring, dtype=float)[:-1]  # closed ring: the last vertex repeats the first
            shapes.append(np.c_[xy[:, 1] * py, xy[:, 0] * px])  # napari: (y, x)
            colours.append(_rgba(STAGE_COLOURS.get(stage, UNKNOWN_STAGE_COLOUR)))
            tls_ids.append(int(meta.get("tls_id", 0) or 0))
            stages.append(stage)
    if not shapes:
        return []
    return [(shapes, {
        "name": "TLS outlines",
        "shape_type": "polygon",
        "edge_color": colours,
        "face_color": [[0.0, 0.0, 0.0, 0.0]] * len(shapes),
        "edge_width": 2 * max(px, py),
        "units": ("µm", "µm"),
        "features": {"tls_id": tls_ids, "stage": stages},
    }, "shapes")]


def output_folder_layers(folder: str | Path, *, slide: bool = True) -> list[LayerData]:
    """Layer data tuples ``(data, kwargs, layer_type)`` of a tlsquant output folder, napari not needed.

    Parameters
    ----------
    folder : str or Path
        A folder written by ``tlsquant analyze`` / ``batch`` (it holds ``summary.json``).
    slide : bool, optional
        Include the slide's image layers (lazy dask pyramids) when the slide file is found.

    Returns
    -------
    list of tuple
        Image layers (one per channel), then labels (TLS, tumour, tissue) and the TLS outlines.
    """
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    layers = slide_layers(summary, folder) if slide else []
    return layers + mask_layers(folder) + outline_layer(folder, summary)
