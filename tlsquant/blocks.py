"""The block grid shared by the full-resolution passes: where each chunk sits, and running one task per chunk."""

from __future__ import annotations

from collections.abc import Iterator

import dask

from . import progress


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
    """``dask.compute`` of the block tasks; scheduler and worker count only when given.

    Under a :mod:`tlsquant.progress` reporter the tasks count as blocks of the current step,
    each done as it finishes (local schedulers) or all at the end (a distributed client).
    """
    options = {}
    if scheduler is not None:
        options["scheduler"] = scheduler
    if num_workers:
        options["num_workers"] = num_workers
    reporter = progress.current()
    if reporter is None:
        return dask.compute(*tasks, **options)
    from dask.callbacks import Callback

    pending = {task.key for task in tasks if hasattr(task, "key")}
    reporter.expect(len(tasks))
    counted = [0]

    def finished(key, result, dsk, state, worker_id) -> None:
        # local schedulers call this for every task of every graph computed meanwhile: count ours, once
        try:
            pending.remove(key)
        except KeyError:
            return
        counted[0] += 1
        reporter.advance(1)

    with Callback(posttask=finished):
        results = dask.compute(*tasks, **options)
    if counted[0] < len(tasks):  # a distributed client runs no local callbacks
        reporter.advance(len(tasks) - counted[0])
    return results
