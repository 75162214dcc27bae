"""The block grid shared by the full-resolution passes: where each chunk sits, and running one task per chunk."""

from __future__ import annotations

from collections.abc import Iterator

import dask
import numpy as np

from . import progress

try:
    from dask._task_spec import GraphNode as _GraphNode
except ImportError:  # pragma: no cover - dask before the task spec
    _GraphNode = None


SYNC_SCHEDULERS = ("sync", "synchronous", "single-threaded")  # dask's names for running tasks in the calling thread


def runs_in_one_thread(scheduler) -> bool:
    """Whether ``scheduler`` (a dask scheduler name or object) runs every task in the calling thread."""
    return isinstance(scheduler, str) and scheduler in SYNC_SCHEDULERS


def block_grid(y_chunks: tuple[int, ...], x_chunks: tuple[int, ...]) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(row, column, y0, x0, height, width) of every chunk, in raster order (level-0 px)."""
    y0 = 0
    for i, height in enumerate(y_chunks):
        x0 = 0
        for j, width in enumerate(x_chunks):
            yield i, j, y0, x0, height, width
            x0 += width
        y0 += height


def block_range(edges: np.ndarray, span: tuple[int, int]) -> range:
    """Indices of the chunks (between ``edges``) that overlap ``span``."""
    return range(int(np.searchsorted(edges, span[0], "right")) - 1, int(np.searchsorted(edges, span[1])))


class NotTaskSpec(Exception):
    """A graph node that cannot be run as ``node(dependency values)``."""


def run_task(graph, values: dict, key):
    """The value of ``key`` in ``graph``, its dependencies run first, each once per ``values`` (kept there)."""
    if key not in values:
        node = graph[key]
        if _GraphNode is None or not isinstance(node, _GraphNode):
            raise NotTaskSpec
        values[key] = node({dependency: run_task(graph, values, dependency) for dependency in node.dependencies})
    return values[key]


def read_box(array, rows: tuple[int, int], cols: tuple[int, int], values: dict | None = None) -> np.ndarray:
    """``array[rows, cols]`` of a lazy (Y, X) array, its chunks' tasks run here, in this thread.

    The same pixels as ``.compute()``, without ordering and scheduling a graph, which for a
    few windows costs as much as decoding them; the graph is culled to the window first (a
    whole-slide layer materialized would cost seconds). Tasks already run are taken from
    ``values`` (key -> value), and those run here are added to it. A graph with nodes other
    than dask's task-spec ones (older dask) is computed through dask.
    """
    piece = array[rows[0] : rows[1], cols[0] : cols[1]]
    graph = runnable_graph(piece)
    values = {} if values is None else values
    try:
        blocks = [[np.asarray(run_task(graph, values, (piece.name, i, j))) for j in range(piece.numblocks[1])]
                  for i in range(piece.numblocks[0])]
    except NotTaskSpec:
        return np.asarray(piece.compute(scheduler="sync"))
    return np.block(blocks) if len(blocks) > 1 or len(blocks[0]) > 1 else np.array(blocks[0][0])  # never a view of a kept chunk


def runnable_graph(collection, keys=None):
    """``collection``'s graph, ready for :func:`run_task` on ``keys`` (default: all of the collection's).

    As it is where every layer is a plain dict of tasks (a slide file's levels, sliced): each
    key is then looked up directly. Otherwise culled to ``keys``: a layer made whole for a key
    lookup (a blockwise one over the slide) would cost seconds, culling it milliseconds; culling
    dict layers costs more than reading a window (a set of every key in the graph, ~0.35 M on a
    whole slide at 512 px chunks).
    """
    from dask.core import flatten
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    graph = collection.__dask_graph__()
    if isinstance(graph, HighLevelGraph) and all(isinstance(layer, MaterializedLayer) for layer in graph.layers.values()):
        return graph
    return graph.cull(set(flatten(collection.__dask_keys__())) if keys is None else set(keys))


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
