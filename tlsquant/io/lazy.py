"""Lazy, picklable dask arrays over tiled files.

The task graph carries only plain descriptions (path, page locators, block
location); each worker opens the file itself and keeps it open per process.
tifffile's zarr store cannot be pickled, so a graph holding it would fail on
any dask.distributed cluster.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..errors import CorruptSlideError

DEFAULT_CHUNK_PX = 2048


def located_blocks(read, args: tuple, *, chunks: tuple[tuple[int, ...], ...], dtype, name: str) -> da.Array:
    """A lazy dask array whose block at ((start, stop) per axis) ``location`` is ``read(*args, location)``.

    The graph is built here, one task per block holding only ``args`` and its location:
    ``map_blocks`` with ``block_info`` builds and tokenizes a dict per block, which took a
    second for a 35k x 32k slide at 512 px chunks (every reopening with other chunks).
    """
    from dask.highlevelgraph import HighLevelGraph

    try:
        from dask._task_spec import Task
    except ImportError:  # pragma: no cover - dask before the task spec
        Task = None
    edges = [list(itertools.accumulate(sizes, initial=0)) for sizes in chunks]
    graph = {}
    for index in itertools.product(*(range(len(sizes)) for sizes in chunks)):
        location = tuple((edge[i], edge[i + 1]) for edge, i in zip(edges, index))
        key = (name, *index)
        graph[key] = Task(key, read, *args, location) if Task is not None else (read, *args, location)
    return da.Array(HighLevelGraph.from_collections(name, graph, dependencies=()), name, chunks, dtype=dtype,
                    meta=np.empty((0,) * len(chunks), dtype=dtype))


@dataclass(frozen=True)
class TiffPlane:
    """Where one (Y, X) plane lives in a TIFF file.

    ``series`` None means ``page`` indexes the file's top-level pages; otherwise
    the plane is page ``page`` of pyramid level ``level`` of tifffile series ``series``.
    ``sample`` selects one sample of an interleaved (Y, X, S) page, or of a planar-separate
    (S, Y, X) page when ``sample_first``. ``path`` and ``stamp`` name another file than the
    level's (a folder of one TIFF per channel).
    """

    page: int
    series: int | None = None
    level: int = 0
    sample: int | None = None
    path: str | None = None
    stamp: tuple[int, int] | None = None
    sample_first: bool = False  # PlanarConfiguration 2: each sample is a plane of its own


@dataclass(frozen=True)
class TiffLevelSource:
    """Everything a worker needs to read blocks of one pyramid level."""

    path: str
    planes: tuple[TiffPlane, ...]
    file_stamp: tuple[int, int]  # (mtime_ns, size): reopen if the file was rewritten


class _PerProcessCache:
    """Small LRU of open handles, shared by the threads of one process."""

    def __init__(self, maxsize: int) -> None:
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def get(self, key: Any, factory) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = factory()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._maxsize:
                # not closed: cached plane arrays may still read through this handle
                self._items.popitem(last=False)
        return value


_TIFF_FILES = _PerProcessCache(maxsize=16)
_PLANE_ARRAYS = _PerProcessCache(maxsize=1024)


_EXIT_HOOK = threading.Lock()
_exit_hook_registered = False


def _finish_zarr_reads_at_exit() -> None:
    """Register (once) :func:`_cancel_zarr_reads` to run at exit, before zarr closes its event loop.

    A chunk that fails to decode ends zarr's read of a region while the reads of its other
    chunks are still queued on zarr's loop; zarr closes the loop at exit with them pending,
    and Python prints one "Task was destroyed" or "Event loop is closed" traceback per chunk,
    thousands of lines after the one error line.
    """
    global _exit_hook_registered
    with _EXIT_HOOK:
        if not _exit_hook_registered:
            import zarr  # noqa: F401  zarr registers its own exit hook on import; ours must come later to run first

            atexit.register(_cancel_zarr_reads)
            _exit_hook_registered = True


def _cancel_zarr_reads(timeout_s: float = 2.0) -> None:
    """Cancel the chunk reads still pending on zarr's event loop and wait for them to end."""
    try:
        from zarr.core import sync
    except ImportError:  # pragma: no cover - another zarr layout: nothing to tidy
        return
    loop = (getattr(sync, "loop", None) or [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def cancel_all() -> None:
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=timeout_s)


def _open_tiff(path: str, stamp: tuple[int, int]):
    import tifffile

    def factory():
        tif = tifffile.TiffFile(path)
        # one lock per file, shared by all its page stores: each store would otherwise
        # install a fresh lock on the shared handle and concurrent seeks would interleave
        tif.filehandle.set_lock(True)
        return tif

    return _TIFF_FILES.get((path, stamp), factory)


def _plane_array(source: TiffLevelSource, plane: TiffPlane):
    path = plane.path or source.path
    stamp = plane.stamp or source.file_stamp

    def factory():
        import zarr

        _finish_zarr_reads_at_exit()
        tif = _open_tiff(path, stamp)
        # walking the page list seeks the shared handle: hold the lock chunk reads hold
        with tif.filehandle.lock:
            if plane.series is None:
                page = tif.pages[plane.page]
            else:
                page = tif.series[plane.series].levels[plane.level].pages[plane.page]
            # maxworkers=1: dask already runs one task per core; nested decode threads oversubscribe
            store = page.aszarr(maxworkers=1, lock=tif.filehandle.lock)
        # outside the lock: zarr reads through its own event-loop thread, which takes the lock
        return zarr.open(store, mode="r")

    return _PLANE_ARRAYS.get((path, stamp, plane), factory)


@dataclass(frozen=True)
class _TileIndex:
    """A plainly tiled page (one sample per pixel, no depth) read straight from the file, tile by tile."""

    fd: int
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]
    decode: Any  # tifffile's decode closure for the page: codec, predictor, byte order
    tile: tuple[int, int]
    shape: tuple[int, int]
    dtype: np.dtype
    fill: Any


_FILE_DESCRIPTORS = _PerProcessCache(maxsize=16)
_TILE_INDEXES = _PerProcessCache(maxsize=1024)


def _tile_index(source: TiffLevelSource, plane: TiffPlane) -> _TileIndex | None:
    """How to read ``plane`` tile by tile without zarr, or None where the zarr store must (strips, samples, JPEG).

    zarr's store decodes the same bytes with the same codec, but pays its event loop and
    per-chunk bookkeeping for every tile (about half the decode time of a 512 px zstd tile);
    ``os.pread`` needs no lock, so the threads of one process read one file concurrently.
    """
    path = plane.path or source.path
    stamp = plane.stamp or source.file_stamp

    def factory():
        if plane.sample is not None or not hasattr(os, "pread"):
            return None
        tif = _open_tiff(path, stamp)
        with tif.filehandle.lock:
            page = tif.pages[plane.page] if plane.series is None else (
                tif.series[plane.series].levels[plane.level].pages[plane.page])
            key = getattr(page, "keyframe", None) or page  # a TiffFrame: layout and codec from its key page
            if not (key.is_tiled and key.imagedepth == 1 and key.tiledepth == 1 and key.samplesperpixel == 1
                    and key.compression != 7 and key.dtype is not None
                    and key.bitspersample == 8 * key.dtype.itemsize and key.fillorder == 1):
                return None
            descriptor = _FILE_DESCRIPTORS.get((path, stamp), lambda: os.open(path, os.O_RDONLY))
            return _TileIndex(descriptor, tuple(int(v) for v in page.dataoffsets),
                              tuple(int(v) for v in page.databytecounts), key.decode,
                              (int(key.tilelength), int(key.tilewidth)), (int(key.imagelength), int(key.imagewidth)),
                              np.dtype(key.dtype), key.nodata)

    return _TILE_INDEXES.get((path, stamp, plane), factory)


def _read_tiles(index: _TileIndex, y: slice, x: slice, out: np.ndarray) -> None:
    """Pixels [y, x] of a tiled page into ``out``."""
    th, tw = index.tile
    across = -(-index.shape[1] // tw)
    for ty in range(y.start // th, -(-y.stop // th)):
        for tx in range(x.start // tw, -(-x.stop // tw)):
            k = ty * across + tx
            ys, xs = max(y.start, ty * th), max(x.start, tx * tw)
            ye, xe = min(y.stop, (ty + 1) * th), min(x.stop, (tx + 1) * tw)
            target = out[ys - y.start : ye - y.start, xs - x.start : xe - x.start]
            if index.bytecounts[k] == 0 or index.offsets[k] == 0:
                target[...] = index.fill
                continue
            data = os.pread(index.fd, index.bytecounts[k], index.offsets[k])
            tile = index.decode(data, k)[0]
            target[...] = tile[0, ys - ty * th : ye - ty * th, xs - tx * tw : xe - tx * tw, 0]


def _region(array, plane: TiffPlane, y: slice, x: slice) -> np.ndarray:
    if plane.sample is None:
        return array[y, x]
    if plane.sample_first:
        return array[plane.sample, y, x]
    return array[y, x][..., plane.sample]


def read_plane_region(plane: TiffPlane, y: slice, x: slice) -> np.ndarray:
    """Pixels [y, x] of a plane that names its own file (``plane.path`` and ``plane.stamp``)."""
    source = TiffLevelSource(plane.path, (), plane.stamp)
    return _region(_plane_array(source, plane), plane, y, x)


def _read_tiff_block(source: TiffLevelSource, dtype: str, location) -> np.ndarray:
    (c0, c1), (y0, y1), (x0, x1) = location
    out = np.empty((c1 - c0, y1 - y0, x1 - x0), dtype=dtype)
    for k, plane in enumerate(source.planes[c0:c1]):
        try:
            index = _tile_index(source, plane)
            if index is not None and index.dtype == out.dtype:
                _read_tiles(index, slice(y0, y1), slice(x0, x1), out[k])
                continue
            region = _region(_plane_array(source, plane), plane, slice(y0, y1), slice(x0, x1))
        except Exception as exc:  # a tile that cannot be decoded: name where, whatever the codec raised
            raise CorruptSlideError(
                f"{plane.path or source.path}: cannot read channel {c0 + k + 1}, rows {y0}-{y1}, columns {x0}-{x1} "
                f"({type(exc).__name__}: {exc}); the file is corrupt or truncated") from None
        out[k] = region
    return out


def file_stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


def aligned_chunks(size: int, tile: int, target: int) -> tuple[int, ...]:
    """Chunk lengths along one axis: whole multiples of ``tile`` close to ``target``."""
    tile = max(1, min(tile, size))
    step = min(max(1, round(target / tile)) * tile, size)
    count = math.ceil(size / step)
    return tuple(min(step, size - i * step) for i in range(count))


def chunk_grid(
    shape_yx: tuple[int, int], tile_yx: tuple[int, int], target: int | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(Y chunks, X chunks) aligned to the storage tiles, about ``target`` px on a side.

    Strips (tile as wide as the image) keep whole rows: cutting a strip in x would
    decode it once per chunk. Their height is chosen so a chunk holds about target² px.
    """
    target = target or DEFAULT_CHUNK_PX
    height, width = shape_yx
    tile_y, tile_x = tile_yx
    if tile_x >= width:  # strips
        rows = max(tile_y, (target * target // max(width, 1)) // tile_y * tile_y)
        return aligned_chunks(height, tile_y, rows), (width,)
    return aligned_chunks(height, tile_y, target), aligned_chunks(width, tile_x, target)


def tiff_level_array(
    source: TiffLevelSource,
    shape_yx: tuple[int, int],
    dtype: np.dtype,
    tile_yx: tuple[int, int],
    chunk_px: int | None,
) -> da.Array:
    """A lazy (C, Y, X) dask array reading ``source`` block by block."""
    y_chunks, x_chunks = chunk_grid(shape_yx, tile_yx, chunk_px)
    chunks = ((1,) * len(source.planes), y_chunks, x_chunks)
    name = "tlsquant-tiff-" + tokenize(source, chunks, np.dtype(dtype).str)
    return located_blocks(_read_tiff_block, (source, np.dtype(dtype).name), chunks=chunks, dtype=dtype, name=name)


# -- zarr arrays -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZarrArraySource:
    """Where one pyramid level of a zarr store lives: the store, the array inside it and its axes."""

    store: str
    component: str  # path of the array inside the store; "" for a store that is one array
    level: int
    axes: tuple[str, ...]
    stamp: tuple[int, int]  # of the array's metadata file: reopen if the store was rewritten


def zarr_stamp(store: str, component: str) -> tuple[int, int]:
    """(mtime_ns, size) of an array's metadata file (zarr v3 or v2), else of the store folder."""
    folder = os.path.join(store, component) if component else store
    for name in ("zarr.json", ".zarray"):
        with contextlib.suppress(OSError):
            return file_stamp(os.path.join(folder, name))
    return file_stamp(store)


_ZARR_ARRAYS = _PerProcessCache(maxsize=64)


def _zarr_array(source: ZarrArraySource):
    def factory():
        import zarr

        _finish_zarr_reads_at_exit()
        return zarr.open_array(store=source.store, path=source.component or None, mode="r")

    return _ZARR_ARRAYS.get((source.store, source.component, source.stamp), factory)


def _chunk_key(array, coords: tuple[int, ...]) -> str:
    with contextlib.suppress(Exception):  # zarr v2 and v3 metadata both encode keys; anything else: the grid index
        return str(array.metadata.encode_chunk_key(coords))
    return ".".join(map(str, coords))


def _failing_chunk(array, location: list[tuple[int, int]], *, most: int = 4096) -> str | None:
    """The key of the first stored chunk (shard) of ``location`` that cannot be read, or None (none of ``most``)."""
    import itertools

    storage = array.shards or array.chunks
    ranges = [range(start // size, -(-stop // size)) for (start, stop), size in zip(location, storage)]
    for coords in itertools.islice(itertools.product(*ranges), most):
        selection = tuple(slice(c * size, min((c + 1) * size, n)) for c, size, n in zip(coords, storage, array.shape))
        try:
            array[selection]
        except Exception:
            return _chunk_key(array, coords)
    return None


def _read_zarr_block(source: ZarrArraySource, location) -> np.ndarray:
    array = _zarr_array(source)
    try:
        return np.asarray(array[tuple(slice(start, stop) for start, stop in location)])
    except Exception as exc:  # a chunk that cannot be decoded: name where, whatever the codec raised
        where = dict(zip(source.axes, location))
        channel = f", channel {where['c'][0] + 1}" if "c" in where and where["c"][1] - where["c"][0] == 1 else ""
        rows, columns = where.get("y", (0, 0)), where.get("x", (0, 0))
        key = _failing_chunk(array, location)
        if key and source.component:
            key = f"{source.component}/{key}"  # the chunk's file, relative to the store
        array_name = f"array {source.component!r} (level {source.level})" if source.component else "the array"
        raise CorruptSlideError(
            f"{source.store}: cannot read {array_name}{channel}, rows {rows[0]}-{rows[1]}, columns "
            f"{columns[0]}-{columns[1]}{f', chunk {key}' if key else ''} ({type(exc).__name__}: {exc}); "
            f"the store is corrupt or truncated") from None


def zarr_level_array(source: ZarrArraySource, chunks: tuple[tuple[int, ...], ...], dtype: np.dtype) -> da.Array:
    """A lazy dask array reading ``source`` block by block, naming the store and chunk of a read that fails."""
    name = "tlsquant-zarr-" + tokenize(source, chunks, np.dtype(dtype).str)
    return located_blocks(_read_zarr_block, (source,), chunks=chunks, dtype=dtype, name=name)
