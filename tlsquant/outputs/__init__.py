"""Per-slide output files: summary.json, tls.csv, tls.geojson, annotations.geojson, qc.png, thresholds.png,
tls_gallery.html and tls_gallery/, masks.ome.zarr, cells.csv.gz, sensitivity.csv.

This package sits above the pipeline: it takes a :class:`~tlsquant.pipeline.SlideResult`
and writes files; nothing below it imports it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, output_error, remove_partials, write_text_atomic
from .annotations import annotation_features
from .geojson import geojson_features
from .masks import write_masks
from .tables import CELL_FILES, write_cell_tables, write_tls_table

SUMMARY = "summary.json"
TLS_TABLE = "tls.csv"
GEOJSON = "tls.geojson"
ANNOTATIONS = "annotations.geojson"
QC_PICTURE = "qc.png"
THRESHOLD_PICTURE = "thresholds.png"
GALLERY = "tls_gallery.html"
GALLERY_CROPS = "tls_gallery"  # a folder: TLS-<id>.png (outputs.gallery_png)
MASKS = "masks.ome.zarr"
CELLS_TABLE = CELL_FILES["csv"]
CELLS_PARQUET = CELL_FILES["parquet"]
CELLS_H5AD = CELL_FILES["h5ad"]
SENSITIVITY = "sensitivity.csv"  # with sensitivity.enabled: TLS metrics per threshold scenario


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


ALL_OUTPUTS = (SUMMARY, TLS_TABLE, GEOJSON, ANNOTATIONS, QC_PICTURE, THRESHOLD_PICTURE, GALLERY, GALLERY_CROPS, MASKS,
               CELLS_TABLE, CELLS_PARQUET, CELLS_H5AD, SENSITIVITY)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as exc:
        raise output_error(path, exc, "cannot remove the previous output") from exc


def _output_threads(config) -> int:
    """Threads for writing: the analysis's own worker count (1 in a batch worker running one thread per slide)."""
    return max(1, min(config.compute.workers or os.cpu_count() or 1, 4))


def _run_all(writers, workers: int) -> list[dict[str, Path]]:
    """Call each writer (all at once in threads when ``workers`` > 1); their results in order, or the first writer's
    error after all ended.

    All at once, not ``workers`` at a time: the gallery waits on threads of its own, and a
    writer queued behind the pictures would end the phase alone. Every writer writes
    atomically, so one failing leaves no half file from the others.
    """
    if workers <= 1:
        return [writer() for writer in writers]
    from concurrent.futures import ThreadPoolExecutor, wait

    with ThreadPoolExecutor(len(writers)) as pool:
        futures = [pool.submit(writer) for writer in writers]
        wait(futures)
    return [future.result() for future in futures]  # raises the first writer's error, in writer order


def _once(make):
    """A function returning ``make()``, called at most once however many threads ask (the others wait for it)."""
    lock = threading.Lock()
    made = []

    def value():
        with lock:
            if not made:
                made.append(make())
        return made[0]

    return value


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
    config = result.config
    workers = _output_threads(config)

    def rings():
        from .qc import tls_rings

        return tls_rings(result)

    tls_outlines = _once(rings)  # qc.png and the gallery both outline every TLS: found once

    def tables() -> dict[str, Path]:
        written = {"tls": write_tls_table(result, outdir / TLS_TABLE)}
        written["geojson"] = write_text_atomic(outdir / GEOJSON,
                                               json.dumps(geojson_features(result), default=_json_default))
        written["annotations"] = write_text_atomic(outdir / ANNOTATIONS,
                                                   json.dumps(annotation_features(result), default=_json_default))
        if config.outputs.masks_zarr:
            written["masks"] = write_masks(result, outdir / MASKS)
        if result.cells is not None:
            written.update(write_cell_tables(result, outdir))  # outputs.cells_format: csv, parquet, h5ad
        if result.sensitivity is not None:
            with atomic_path(outdir / SENSITIVITY) as temporary:
                result.sensitivity.to_csv(temporary, index=False)
            written["sensitivity"] = outdir / SENSITIVITY
        return written

    def pictures() -> dict[str, Path]:  # pyplot is not thread-safe: both figures in this one thread
        written = {}
        if config.outputs.qc_png and slide is not None:
            from .qc import write_qc_picture

            written["qc"] = write_qc_picture(result, slide, outdir / QC_PICTURE, target_px=config.outputs.qc_px,
                                             max_px=config.outputs.qc_max_px, min_tls_px=config.outputs.qc_min_tls_px,
                                             tls_outlines=tls_outlines())
        if config.outputs.qc_png and result.signal_histograms:
            from .qc import write_threshold_picture

            written["thresholds"] = write_threshold_picture(result, outdir / THRESHOLD_PICTURE)
        return written

    def gallery() -> dict[str, Path]:
        if not (config.outputs.qc_png and config.outputs.qc_gallery and slide is not None):
            return {}
        from .gallery import write_tls_gallery

        return write_tls_gallery(result, slide, outdir / GALLERY, outdir / GALLERY_CROPS,
                                 max_tls=config.outputs.gallery_max_tls, crop_px=config.outputs.gallery_crop_px,
                                 png=config.outputs.gallery_png, workers=workers, tls_outlines=tls_outlines())

    written: dict[str, Path] = {}
    for part in _run_all([gallery, pictures, tables], workers):
        written.update(part)
    summary = dict(result.summary)
    if slide is not None:  # where names and pixel size came from; file values the user overrode
        summary["source"] = {**summary.get("source", {}), "reader": slide.metadata}
    summary["outputs"] = sorted(p.name for p in written.values())
    for name in set(ALL_OUTPUTS) - set(summary["outputs"]) - {SUMMARY}:
        _remove(outdir / name)
    written["summary"] = write_text_atomic(outdir / SUMMARY, json.dumps(summary, indent=2, default=_json_default))
    return written
