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


def compute_blocks(tasks, *, scheduler=None, num_workers=None, consume=None) -> tuple | None:
    """``dask.compute`` of the block tasks; scheduler and worker count only when given.

    Under a :mod:`tlsquant.progress` reporter the tasks count as blocks of the current step,
    each done as it finishes (local schedulers) or all at the end (a distributed client).
    With ``consume``, each result is handed to it (in the calling thread) and None is
    returned; on the local threaded scheduler as each task finishes, so the results are
    never all held at once (the caller's reduction must not depend on their order).
    """
    reporter = progress.current()
    if consume is not None and scheduler == "threads":
        return _stream(tasks, consume, num_workers, reporter)
    options = {}
    if scheduler is not None:
        options["scheduler"] = scheduler
    if num_workers:
        options["num_workers"] = num_workers
    if reporter is None:
        results = dask.compute(*tasks, **options)
    else:
        results = _compute_reported(tasks, options, reporter)
    if consume is None:
        return results
    for result in results:
        consume(result)
    return None


def _compute_reported(tasks, options: dict, reporter) -> tuple:
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


def _stream(tasks, consume, num_workers, reporter) -> None:
    """Each task computed in a thread of its own pool (its small graph run inline), consumed as it ends."""
    import os
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    if reporter is not None:
        reporter.expect(len(tasks))
    workers = num_workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        queue = list(reversed(tasks))
        running = set()
        try:
            while queue or running:
                while queue and len(running) < 2 * workers:  # a few ahead: results wait only briefly
                    running.add(pool.submit(dask.compute, queue.pop(), scheduler="sync"))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    consume(future.result()[0])
                    if reporter is not None:
                        reporter.advance(1)
        finally:
            for future in running:
                future.cancel()
