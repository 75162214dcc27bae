"""Benchmark: cell-level quantification (nuclei + marker-positive cells) on whole synthetic slides.

The same slides as bench_analysis.py (10,000 x 7,500, 20,000 x 15,000 and 40,000 x 30,000 px at
0.5 µm/px, 9 channels, uint16, 512 px zstd tiles, pyramidal OME-TIFF), analysed with cells on,
with 1 and 2 worker threads, each measurement in a fresh process (peak RSS is per measurement).
Reported: time of the cell pass and of the whole analysis, cells per second, level-0 megapixels
per second of the cell pass, peak RSS of the process, the memory the cell pass adds on top of
what it starts from (sampled every 0.2 s), and the cell count and CD20+ % against the truth.

Slides are rendered once into benchmarks/_data/ (ignored by git) and reused.
Results: benchmarks/results/cells.{json,md}.

    python benchmarks/bench_cells.py [--sizes S,M,L] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_analysis import PIXEL_SIZE_UM, RESULTS, ensure_slide  # noqa: E402

MEASURE = r"""
import json, resource, sys, threading, time
import psutil
import tlsquant
import tlsquant.steps.cells as cell_step  # the step that runs the cell pass
path, workers = sys.argv[1], int(sys.argv[2])
# RSS sampled every 0.2 s; the cell pass's own share is its peak over the RSS it started from
process, samples, cell_pass = psutil.Process(), [], []
def sample():
    while True:
        samples.append((time.perf_counter(), process.memory_info().rss / 2**20))
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
entry = "cell_pass" if hasattr(cell_step, "cell_pass") else "compute_cells"  # older checkouts: compute_cells
original = getattr(cell_step, entry)
def timed_cells(*args, **kwargs):
    cell_pass.append(time.perf_counter())
    try:
        return original(*args, **kwargs)
    finally:
        cell_pass.append(time.perf_counter())
setattr(cell_step, entry, timed_cells)
slide = tlsquant.open_slide(path)
started = time.perf_counter()
result = tlsquant.analyze_slide(slide, tlsquant.load_config(), scheduler="threads", num_workers=workers)
elapsed = time.perf_counter() - started
s = result.summary
during = [rss for t, rss in samples if cell_pass[0] <= t <= cell_pass[-1]]
before = [rss for t, rss in samples if t <= cell_pass[0]][-1]
# the cell pass's own time: with the one read it also counts the evidence maps
pass_seconds = sum(cell_pass[k + 1] - cell_pass[k] for k in range(0, len(cell_pass), 2))
print(json.dumps({"seconds": elapsed, "cells_seconds": pass_seconds,
                  "cell_pass_start_mb": before, "cell_pass_added_mb": max(during) - before,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cells": s["cells"]["total"], "cd20_pct": s["cd20_pct"], "tls_count": s["tls_count"]}))
"""


def measure(path: Path, workers: int) -> dict:
    output = subprocess.check_output([sys.executable, "-c", MEASURE, str(path), str(workers)])
    return json.loads(output.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="S,M,L")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--report", action="store_true", help="only rewrite cells.md from cells.json")
    args = parser.parse_args()
    if args.report:
        write_report(json.loads((RESULTS / "cells.json").read_text()))
        return
    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    for size in args.sizes.split(","):
        path = ensure_slide(size)
        import tlsquant

        shape = tlsquant.open_slide(path).shape
        truth = json.loads(path.with_name(f"bench-{size}.truth.json").read_text())["cells"]
        megapixels = shape[1] * shape[2] / 1e6
        for count in workers:
            run = measure(path, count)
            row = {"size": size, "shape": list(shape), "megapixels": round(megapixels, 1), "workers": count, **run,
                   "cells_per_second": run["cells"] / run["cells_seconds"],
                   "megapixels_per_second": megapixels / run["cells_seconds"],
                   "truth_cells": truth["total"], "truth_cd20_pct": truth["cd20_pct"]}
            print(size, count, row, file=sys.stderr)
            rows.append(row)
    result = {"machine": platform.platform(), "python": platform.python_version(), "pixel_size_um": PIXEL_SIZE_UM,
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cells.json").write_text(json.dumps(result, indent=2))
    write_report(result)


def write_report(result: dict) -> None:
    """benchmarks/results/cells.md from the measurements (``--report`` redoes it from cells.json)."""
    rows = result["rows"]
    workers = sorted({r["workers"] for r in rows})
    lines = [
        "# Cells: nuclei and marker-positive cells on whole slides", "",
        f"Machine: {result['machine']}, Python {result['python']}. Each row is one fresh process running the "
        "whole analysis (thresholds, TLS pass, cell pass) with cells on; *cell pass* is its cell part.", "",
        "| slide (px) | Mpx | workers | cell pass s | whole analysis s | cells | cells / s | Mpx / s | peak RSS MB "
        "| cell pass adds MB | cells vs truth | CD20+ % (truth) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape'][2]} x {r['shape'][1]} | {r['megapixels']} | {r['workers']} | {r['cells_seconds']:.0f} | "
            f"{r['seconds']:.0f} | {r['cells']:,} | {r['cells_per_second']:,.0f} | {r['megapixels_per_second']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['cell_pass_added_mb']:.0f} | {100 * (r['cells'] / r['truth_cells'] - 1):+.1f} % | "
            f"{r['cd20_pct']:.2f} ({r['truth_cd20_pct']:.2f}) |"
        )
    by = {(r["size"], r["workers"]): r for r in rows}
    notes = []
    for size in dict.fromkeys(r["size"] for r in rows):
        if (size, 1) in by and (size, 2) in by:
            notes.append(f"{size}: 2 workers {by[(size, 1)]['cells_seconds'] / by[(size, 2)]['cells_seconds']:.2f}x "
                         "faster than 1 on the cell pass.")
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    if len(sizes) > 1:
        w = max(workers)
        first, last = by[(sizes[0], w)], by[(sizes[-1], w)]
        notes.append(f"From {first['megapixels']} to {last['megapixels']} Mpx ({last['megapixels'] / first['megapixels']:.0f}x "
                     f"the area), {w} workers: peak RSS x{last['peak_rss_mb'] / first['peak_rss_mb']:.2f} (the TLS pass's "
                     "coarse maps, which the cell pass starts from), memory the cell pass adds "
                     f"x{last['cell_pass_added_mb'] / first['cell_pass_added_mb']:.2f}, "
                     f"cell-pass time per pixel x{(last['cells_seconds'] / last['megapixels']) / (first['cells_seconds'] / first['megapixels']):.2f}.")
    lines += [""] + notes
    (RESULTS / "cells.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
