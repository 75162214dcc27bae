"""tls.csv and the cell table: cells.csv.gz, cells.parquet (pyarrow) and cells.h5ad (anndata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TLSQuantError
from ..io.atomic import atomic_path

CELL_FILES = {"csv": "cells.csv.gz", "parquet": "cells.parquet", "h5ad": "cells.h5ad"}


def tls_table_with_slide(result) -> pd.DataFrame:
    """The per-TLS table with ``slide_id`` as its first column, so tables from many slides concatenate."""
    return result.tls.assign(slide_id=result.slide_id)[["slide_id", *result.tls.columns]]


def write_tls_table(result, path: Path) -> Path:
    with atomic_path(path) as temporary:
        tls_table_with_slide(result).to_csv(temporary, index=False, na_rep="")
    return path


def write_cells_table(cells, path: Path) -> Path:
    """One row per cell, gzip-compressed CSV (millions of rows on a whole slide)."""
    with atomic_path(path) as temporary:
        # 7 significant digits: 0.01 µm positions up to 10 cm, float32 intensities in full
        cells.to_csv(temporary, index=False, float_format="%.7g", compression={"method": "gzip", "compresslevel": 6})
    return path


def _missing_extra(package: str, fmt: str) -> TLSQuantError:
    return TLSQuantError(f"outputs.cells_format {fmt!r} needs {package}: pip install 'tlsquant[tables]'")


def cell_compartments(result) -> dict[str, str]:
    """Channel → compartment (nucleus, ring or cell) of each marker scored per cell."""
    return {marker.channel: marker.compartment for marker in result.cell_markers}


def cells_metadata(result) -> dict:
    """What a cell table file carries beside its rows: slide, pixel size, compartments, version."""
    from .. import __version__

    py, px = result.pixel_size
    return {"slide_id": result.slide_id, "pixel_size_um": float(px), "pixel_size_y_um": float(py),
            "compartments": cell_compartments(result), "tlsquant_version": __version__,
            "units": "µm (centroid_x_um, centroid_y_um: origin top-left edge of level 0, x right, y down)"}


def write_cells_parquet(cells: pd.DataFrame, path: Path, *, metadata: dict) -> Path:
    """The cell table as Parquet (zstd), ``metadata`` as JSON under the schema key ``tlsquant``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise _missing_extra("pyarrow", "parquet") from exc
    table = pa.Table.from_pandas(cells, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"tlsquant": json.dumps(metadata).encode()})
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")
    return path


def compartment_intensities(cells: pd.DataFrame, compartments: dict[str, str]) -> pd.DataFrame:
    """Per marker, the mean intensity of the compartment its positivity was decided on.

    Parameters
    ----------
    cells : DataFrame
        The cell table (``<marker>_nucleus``, ``<marker>_ring``, ``nucleus_area_um2``, ``cell_area_um2``).
    compartments : dict
        Channel → ``nucleus``, ``ring`` (a cell with no free ring: its nucleus) or ``cell``
        (area-weighted mean of nucleus and ring).

    Returns
    -------
    DataFrame
        One float32 column per marker, named by the marker, rows as ``cells``.
    """
    nucleus_area = cells["nucleus_area_um2"].to_numpy(np.float64)
    ring_area = cells["cell_area_um2"].to_numpy(np.float64) - nucleus_area
    columns = {}
    for marker, compartment in compartments.items():
        nucleus = cells[f"{marker}_nucleus"].to_numpy(np.float64)
        ring = cells[f"{marker}_ring"].to_numpy(np.float64)
        if compartment == "nucleus":
            values = nucleus
        elif compartment == "ring":
            values = np.where(ring_area > 0, ring, nucleus)
        else:
            values = (nucleus * nucleus_area + ring * ring_area) / np.maximum(nucleus_area + ring_area, 1e-12)
        columns[marker] = values.astype(np.float32)
    return pd.DataFrame(columns, index=cells.index)


def cells_anndata(cells: pd.DataFrame, *, metadata: dict):
    """The cell table as AnnData for scanpy, squidpy and scimap.

    ``X``: per marker the compartment mean used for positivity (float32, cells × markers);
    ``obs``: cell_id (index, as text), slide_id, areas, in_tumour, in_margin, tls_id, in_artefact and
    ``<marker>_positive``; ``obsm['spatial']``: centroid (x, y) in µm; ``var``: compartment per
    marker; ``uns['tlsquant']``: ``metadata`` (slide id, pixel size, compartments, version).
    """
    try:
        import anndata
    except ImportError as exc:
        raise _missing_extra("anndata", "h5ad") from exc
    compartments = metadata["compartments"]
    markers = [m for m in compartments if f"{m}_nucleus" in cells]
    compartments = {m: compartments[m] for m in markers}
    X = compartment_intensities(cells, compartments).to_numpy(np.float32).reshape(len(cells), len(markers))
    obs = pd.DataFrame({"cell_id": cells["cell_id"].to_numpy(), "slide_id": metadata["slide_id"]})
    for name in ("nucleus_area_um2", "cell_area_um2", "in_tumour", "in_margin", "tls_id", "in_artefact"):
        if name in cells:
            obs[name] = cells[name].to_numpy()
    for marker in markers:
        if f"{marker}_positive" in cells:
            obs[f"{marker}_positive"] = cells[f"{marker}_positive"].to_numpy(bool)
    obs["slide_id"] = obs["slide_id"].astype("category")
    obs.index = pd.Index(obs["cell_id"].astype(str).to_numpy())  # obs_names: text, as anndata wants
    var = pd.DataFrame({"compartment": [compartments[m] for m in markers]}, index=pd.Index(markers, name="marker"))
    spatial = cells[["centroid_x_um", "centroid_y_um"]].to_numpy(np.float64)
    return anndata.AnnData(X=X, obs=obs, var=var, obsm={"spatial": spatial}, uns={"tlsquant": dict(metadata)})


def write_cells_h5ad(cells: pd.DataFrame, path: Path, *, metadata: dict) -> Path:
    """The cell table as ``.h5ad`` (see :func:`cells_anndata`)."""
    adata = cells_anndata(cells, metadata=metadata)
    with atomic_path(path) as temporary:
        adata.write_h5ad(temporary)
    return path


def write_cell_tables(result, outdir: Path) -> dict[str, Path]:
    """Every cell table ``outputs.cells_format`` asks for, keyed ``cells`` (csv), ``cells_parquet``, ``cells_h5ad``."""
    formats = result.config.outputs.cells_format
    written = {}
    if "csv" in formats:
        written["cells"] = write_cells_table(result.cells, outdir / CELL_FILES["csv"])
    if "parquet" in formats or "h5ad" in formats:
        metadata = cells_metadata(result)
        if "parquet" in formats:
            written["cells_parquet"] = write_cells_parquet(result.cells, outdir / CELL_FILES["parquet"], metadata=metadata)
        if "h5ad" in formats:
            written["cells_h5ad"] = write_cells_h5ad(result.cells, outdir / CELL_FILES["h5ad"], metadata=metadata)
    return written
