"""tls.csv and cells.csv.gz."""

from __future__ import annotations

from pathlib import Path

from ..io.atomic import atomic_path


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
