"""Per-slide output files: summary.json, tls.csv, tls.geojson, qc.png, masks.ome.zarr."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from skimage import measure

from .atomic import atomic_path, output_error, remove_partials, write_text_atomic

SUMMARY = "summary.json"
TLS_TABLE = "tls.csv"
GEOJSON = "tls.geojson"
QC_PICTURE = "qc.png"
THRESHOLD_PICTURE = "thresholds.png"
MASKS = "masks.ome.zarr"
CELLS_TABLE = "cells.csv.gz"

# QuPath-style classes (name, RGB)
STAGE_COLOURS = {
    "mature": (230, 40, 200),
    "primary": (40, 200, 230),
    "secondary_follicle": (230, 40, 200),
    "primary_follicle": (250, 170, 40),
    "early": (40, 200, 230),
}
TUMOUR_COLOUR = (200, 0, 0)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def outline_polygons(mask: np.ndarray, factor: int, *, tolerance: float = 0.4) -> list[list[list[float]]]:
    """Outer rings of ``mask``'s connected pieces in level-0 pixel coordinates (x, y).

    ``mask`` lives on a grid of ``factor`` level-0 px per cell; its holes are filled
    upstream, so each piece gives one ring. Rings are closed, have positive signed
    (shoelace) area as RFC 7946 asks of exterior rings, and follow cell edges. Largest first.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    rings = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance=tolerance)
        if len(contour) < 4:
            continue
        # padded index i is grid cell i-1; the 0.5 contour runs along cell edges: x = (col - 0.5) * factor
        xy = [[round(float((c - 0.5) * factor), 2), round(float((r - 0.5) * factor), 2)] for r, c in contour]
        if xy[0] != xy[-1]:
            xy.append(list(xy[0]))
        area = _ring_area(xy)
        if area != 0:
            rings.append(xy if area > 0 else xy[::-1])
    return sorted(rings, key=lambda ring: -_ring_area(ring))


def _ring_area(ring) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]))


def geojson_features(result) -> dict[str, Any]:
    """A GeoJSON FeatureCollection QuPath imports over the slide (level-0 pixel coordinates)."""
    features = []
    labels = result.tls_labels
    for row in result.tls.itertuples(index=False):
        region = labels == row.tls_id
        rings = outline_polygons(region, result.fine_factor)
        if not rings:
            continue
        colour = STAGE_COLOURS.get(row.stage, (255, 255, 0))
        features.append({
            "type": "Feature",
            "id": f"tls-{row.tls_id}",
            "geometry": {"type": "Polygon", "coordinates": [rings[0]]},
            "properties": {
                "objectType": "annotation",
                "name": f"TLS {row.tls_id}",
                "classification": {"name": f"TLS {row.stage}", "color": list(colour)},
                "isLocked": False,
                "measurements": {
                    "Area um^2": row.area_um2,
                    "Distance to tumour um": row.distance_to_tumour_um,
                    "CD20 fraction": row.b_cell_fraction,
                },
                "tls_id": int(row.tls_id),
                "stage": row.stage,
                "location": row.location,
                "counted": bool(row.counted),
            },
        })
    tumour_rings = outline_polygons(result.tumour_mask, result.coarse_factor, tolerance=0.6)
    if tumour_rings:
        features.append({
            "type": "Feature",
            "id": "tumour",
            "geometry": {"type": "MultiPolygon", "coordinates": [[ring] for ring in tumour_rings]},
            "properties": {
                "objectType": "annotation",
                "name": "Tumour bed",
                "classification": {"name": "Tumor", "color": list(TUMOUR_COLOUR)},
                "isLocked": True,
                "measurements": {"Area mm^2": result.summary["tumour_area_mm2"]},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def write_tls_table(result, path: Path) -> Path:
    with atomic_path(path) as temporary:
        result.tls.to_csv(temporary, index=False, na_rep="")
    return path


def write_cells_table(cells, path: Path) -> Path:
    """One row per cell, gzip-compressed CSV (millions of rows on a whole slide)."""
    with atomic_path(path) as temporary:
        # 7 significant digits: 0.01 µm positions up to 10 cm, float32 intensities in full
        cells.to_csv(temporary, index=False, float_format="%.7g", compression={"method": "gzip", "compresslevel": 6})
    return path


def write_masks(result, path: Path) -> Path:
    """Tumour, tissue and TLS label masks as a small OME-Zarr (one dataset per grid)."""
    import zarr

    px, py = result.pixel_size_um
    with atomic_path(path) as temporary:
        root = zarr.open_group(str(temporary), mode="w")
        for name, data, factor in (("tls_labels", result.tls_labels, result.fine_factor),
                                   ("tumour_mask", result.tumour_mask.astype(np.uint8), result.coarse_factor),
                                   ("tissue_mask", result.tissue_mask.astype(np.uint8), result.coarse_factor)):
            group = root.create_group(name)
            array = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1024, 1024))
            array[...] = data
            group.attrs["ome"] = {"version": "0.5", "multiscales": [{
                "name": name,
                "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                         {"name": "x", "type": "space", "unit": "micrometer"}],
                "datasets": [{"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": [py * factor, px * factor]}]}],
            }]}
    return path


ALL_OUTPUTS = (SUMMARY, TLS_TABLE, GEOJSON, QC_PICTURE, THRESHOLD_PICTURE, MASKS, CELLS_TABLE)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as exc:
        raise output_error(path, exc, "cannot remove the previous output") from exc


def write_slide_outputs(result, outdir: str | Path, *, slide=None) -> dict[str, Path]:
    """Write every output of one slide into ``outdir``; ``summary.json`` last, as the completion mark.

    A previous summary.json goes first, so a run killed midway leaves a folder that does not
    look complete; temporaries a killed run left, and outputs this run does not make (say
    masks from an earlier run that asked for them), are removed, so the folder ends up
    holding one run's outputs only. Call it holding the folder's lock (:mod:`.lock`).
    """
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(outdir, exc, "cannot create the output folder") from exc
    _remove(outdir / SUMMARY)
    remove_partials(outdir)
    written = {"tls": write_tls_table(result, outdir / TLS_TABLE)}
    written["geojson"] = write_text_atomic(outdir / GEOJSON, json.dumps(geojson_features(result), default=_json_default))
    config = result.config
    if config.outputs.qc_png and slide is not None:
        from .qc import write_qc_picture

        written["qc"] = write_qc_picture(result, slide, outdir / QC_PICTURE, max_px=config.outputs.qc_max_px)
    if config.outputs.qc_png and result.signal_histograms:
        from .qc import write_threshold_picture

        written["thresholds"] = write_threshold_picture(result, outdir / THRESHOLD_PICTURE)
    if config.outputs.masks_zarr:
        written["masks"] = write_masks(result, outdir / MASKS)
    if result.cells is not None:
        written["cells"] = write_cells_table(result.cells, outdir / CELLS_TABLE)
    summary = dict(result.summary)
    if slide is not None:  # where names and pixel size came from; file values the user overrode
        summary["source"] = {**summary.get("source", {}), "reader": slide.metadata}
    summary["outputs"] = sorted(p.name for p in written.values())
    for name in set(ALL_OUTPUTS) - set(summary["outputs"]) - {SUMMARY}:
        _remove(outdir / name)
    written["summary"] = write_text_atomic(outdir / SUMMARY, json.dumps(summary, indent=2, default=_json_default))
    return written
