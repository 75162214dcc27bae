"""The block grid shared by the full-resolution passes: where each chunk sits, and running one task per chunk."""

from __future__ import annotations

from collections.abc import Iterator

import dask


def block_grid(y_chunks: tuple[int, ...], x_chunks: tuple[int, ...]) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(row, column, y0, x0, height, width) of every chunk, in raster order (level-0 px)."""
    y0 = 0
    for i, height in enumerate(y_chunks):
        x0 = 0
        for j, width in enumerate(x_chunks):
            yield i, j, y0, x0, height, width
            x0 += width
        y0 += height


def compute_blocks(tasks, *, scheduler=None, num_workers=None) -> tuple:
    """``dask.compute`` of the block tasks; scheduler and worker count only when given."""
    options = {}
    if scheduler is not None:
        options["scheduler"] = scheduler
    if num_workers:
        options["num_workers"] = num_workers
    return dask.compute(*tasks, **options)
