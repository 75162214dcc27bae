"""Benchmark: opening a whole-slide-sized file reads metadata only.

Writes a 40,000 x 30,000 px x 9-channel uint16 slide (4-level pyramid, 512 px
tiles) as OME-TIFF, QPTIFF and OME-Zarr into a scratch folder, then times
``open_slide`` and measures the memory it allocates, in a fresh process per file so
earlier work cannot warm a cache. Pixel content is a cheap pattern: opening never
looks at it. Results go to benchmarks/results/open.{json,md}.

    python benchmarks/bench_open.py [--scratch DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (9, 30_000, 40_000)
TILE = 512
CHANNELS = ["DAPI", "CD3", "CD20", "CD21", "CD23", "TFE3", "CD8", "CD68", "Autofluorescence"]
RESULTS = Path(__file__).parent / "results"


class PatternLevel:
    """A (C, Y, X) stand-in array whose bands are made on demand (never whole in memory)."""

    def __init__(self, shape, first_channel=0):
        self.shape = shape
        self.first_channel = first_channel
        self.dtype = np.dtype("uint16")

    def __getitem__(self, index):
        if isinstance(index, slice):  # a channel range, still lazy
            count = min(index.stop, self.shape[0]) - index.start
            return PatternLevel((count,) + self.shape[1:], self.first_channel + index.start)
        channels, rows, cols = (np.arange(n)[i] for n, i in zip(self.shape, index))  # small previews
        values = cols[None, None, :] // TILE % 7 * 100 + (self.first_channel + channels)[:, None, None] * 10
        return np.broadcast_to(values, (channels.size, rows.size, cols.size)).astype(np.uint16)

    def __iter__(self):
        return (PatternPlane(self.shape[1:], self.first_channel + c) for c in range(self.shape[0]))


class PatternPlane:
    def __init__(self, shape, channel):
        self.shape = shape
        self.channel = channel

    def __getitem__(self, rows):
        height = min(rows.stop, self.shape[0]) - rows.start
        row = (np.arange(self.shape[1]) // TILE % 7 * 100 + self.channel * 10).astype(np.uint16)
        return np.broadcast_to(row, (height, self.shape[1]))


def write_files(scratch: Path) -> dict[str, Path]:
    from tlsquant.io.writers import write_ome_tiff, write_qptiff

    levels = [PatternLevel((SHAPE[0], SHAPE[1] >> k, SHAPE[2] >> k)) for k in range(4)]
    paths = {}
    started = time.perf_counter()
    paths["ome-tiff"] = write_ome_tiff(scratch / "big.ome.tiff", levels, channel_names=CHANNELS,
                                       pixel_size_um=(0.4965, 0.4965), tile=TILE, compression="zlib")
    paths["qptiff"] = write_qptiff(scratch / "big.qptiff", [levels[0], levels[1], levels[2], levels[3]],
                                   channel_names=CHANNELS, pixel_size_um=(0.4965, 0.4965), tile=TILE,
                                   compression="zlib")
    paths["ome-zarr"] = _write_empty_ome_zarr(scratch / "big.ome.zarr", levels)
    print(f"wrote test files in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return paths


def _write_empty_ome_zarr(path: Path, levels) -> Path:
    # chunks equal to the fill value are never stored: metadata plus nothing, as fast to open
    import zarr

    group = zarr.open_group(str(path), mode="w")
    datasets = []
    for k, level in enumerate(levels):
        group.create_array(str(k), shape=level.shape, dtype="uint16", chunks=(1, TILE, TILE))
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.4965 * 2**k, 0.4965 * 2**k]}]})
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": datasets}], "omero": {"channels": [{"label": c} for c in CHANNELS]}}
    return path


PROBE = r"""
import json, resource, sys, time, tracemalloc
path = sys.argv[1]
t_import = time.perf_counter()
import tlsquant, tifffile, zarr, dask.array  # one-off per process, reported apart
t_import = time.perf_counter() - t_import
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
slide = tlsquant.open_slide(path)
info = slide.info()
elapsed = time.perf_counter() - t0
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
del slide
tracemalloc.start()  # a second open, traced (tracing slows it, so it is not timed)
tlsquant.open_slide(path).info()
current, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(json.dumps({"seconds": elapsed, "import_seconds": t_import, "python_peak_mb": peak / 2**20,
                  "max_rss_growth_mb": (rss1 - rss0) / 1024, "shape": info["shape"],
                  "levels": len(info["levels"]), "chunks": info["chunks"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", type=Path, help="a folder written by an earlier --keep run")
    args = parser.parse_args()
    scratch = args.reuse or Path(tempfile.mkdtemp(prefix="tlsquant-bench-open-", dir=args.scratch))
    try:
        if args.reuse:
            paths = {"ome-tiff": scratch / "big.ome.tiff", "qptiff": scratch / "big.qptiff",
                     "ome-zarr": scratch / "big.ome.zarr"}
        else:
            paths = write_files(scratch)
        rows = []
        for fmt, path in paths.items():
            runs = [json.loads(subprocess.check_output([sys.executable, "-c", PROBE, str(path)]))
                    for _ in range(3)]
            best = min(runs, key=lambda r: r["seconds"])
            size = sum(f.stat().st_size for f in Path(path).rglob("*")) if Path(path).is_dir() else Path(path).stat().st_size
            rows.append({"format": fmt, "file_mb": round(size / 2**20, 1), **best})
        result = {"shape": list(SHAPE), "tile": TILE, "machine": platform.platform(),
                  "python": platform.python_version(), "rows": rows}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "open.json").write_text(json.dumps(result, indent=2))
        lines = ["# open_slide on a 40,000 x 30,000 x 9-channel uint16 slide", "",
                 f"Machine: {result['machine']}, Python {result['python']}. Best of 3 fresh processes.", "",
                 "| format | file MB | open + info (s) | Python peak alloc (MB) | max RSS growth (MB) | levels | (library import, s) |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['format']} | {r['file_mb']} | {r['seconds']:.3f} | {r['python_peak_mb']:.2f} | "
                         f"{r['max_rss_growth_mb']:.1f} | {r['levels']} | {r['import_seconds']:.2f} |")
        (RESULTS / "open.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
