"""Where the cell pass spends its time, per step: one process, one worker (sync scheduler).

Wraps the steps of :mod:`tlsquant.cells` with timers and runs the whole analysis of one slide
with cells on; reports per step the wall seconds and the CPU seconds of the worker thread,
summed over the blocks (CPU time is what to compare on a shared machine: other jobs stretch
the wall time, not the thread's own time). ``read (decode)`` is ``_Sources.read``;
``other in block_records`` and ``band assembly and setup`` are what the named steps leave (with the
one read, the pass also counts the evidence: that is in ``band assembly and setup``).
Works on older checkouts too (steps they lack are left out).

    python benchmarks/profile_cells.py SLIDE [--json OUT] [--set compute.one_read=true]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import sys
import time
from collections import defaultdict

from scipy import ndimage

import tlsquant
import tlsquant.cells as cells

# nested steps are timed inside their parents; only the leaves are reported, with what each parent leaves
BLOCK = "block_records" if hasattr(cells, "block_records") else "cells_block"  # older checkouts: cells_block
PARENTS = {BLOCK: ("segment_nuclei", "cell_bodies", "_grow_rings", "_cell_sums", "_all_marker_sums", "_marker_sums",
                   "_touching_cut_sides"),
           "segment_nuclei": ("_smooth_and_threshold", "smoothing", "distance_to_background", "_clump_zone",
                              "_local_maxima", "_separate_maxima", "_clump_centres", "_nearest_centre",
                              "_plateau_centres", "_claim_pixels", "_drop_by_area")}
LEAVES = ("_smooth_and_threshold", "smoothing", "distance_to_background", "_clump_zone", "_local_maxima",
          "_separate_maxima", "_clump_centres", "_nearest_centre", "_plateau_centres", "_claim_pixels", "_drop_by_area",
          "cell_bodies", "_grow_rings", "_cell_sums", "_all_marker_sums", "_marker_sums", "_touching_cut_sides")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide")
    parser.add_argument("--json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. compute.one_read=true (repeatable)")
    args = parser.parse_args()
    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    depth = defaultdict(int)

    def timed(name, function):
        @functools.wraps(function)
        def wrapper(*a, **k):
            depth[name] += 1
            started, started_cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*a, **k)
            finally:
                depth[name] -= 1
                if not depth[name] and not (name != "_clump_centres" and depth["_clump_centres"]):
                    wall[name] += time.perf_counter() - started
                    cpu[name] += time.thread_time() - started_cpu
                    if name == "read (decode)" and depth[BLOCK]:  # marker windows read inside a block's work
                        wall["read in block"] += time.perf_counter() - started
                        cpu["read in block"] += time.thread_time() - started_cpu
                calls[name] += 1
        return wrapper

    for name in {*PARENTS, *LEAVES}:
        if hasattr(cells, name):
            setattr(cells, name, timed(name, getattr(cells, name)))
    cells._Sources.read = timed("read (decode)", cells._Sources.read)
    if not hasattr(cells, "_smooth_and_threshold"):  # older checkouts: the Gaussian before the threshold
        class Ndi:
            def __getattr__(self, attr):
                return getattr(ndimage, attr)

            gaussian_filter = staticmethod(timed("smoothing", ndimage.gaussian_filter))
        cells.ndi = Ndi()
    cell_pass = []
    # the module that calls the cell pass (tlsquant.pipeline, or tlsquant.steps.cells after the steps split)
    # cell_pass (one read with the counting, then any block left), or compute_cells in older checkouts
    entry = "cell_pass" if hasattr(cells, "cell_pass") else "compute_cells"
    caller = next(m for m in (importlib.import_module(name) for name in ("tlsquant.steps.cells", "tlsquant.pipeline")
                              if importlib.util.find_spec(name)) if hasattr(m, entry))
    original = getattr(caller, entry)

    def pass_timed(*a, **k):
        started, started_cpu = time.perf_counter(), time.process_time()
        try:
            return original(*a, **k)
        finally:
            cell_pass.append((time.perf_counter() - started, time.process_time() - started_cpu))
    setattr(caller, entry, pass_timed)
    slide = tlsquant.open_slide(args.slide)
    config = tlsquant.load_config(None, ["compute.workers=1", "compute.scheduler=sync", *args.set])
    result = tlsquant.analyze_slide(slide, config)
    megapixels = slide.shape[1] * slide.shape[2] / 1e6
    rows = {}
    cell_pass = [tuple(map(sum, zip(*cell_pass)))]  # every call of the pass together
    for table, total in ((wall, cell_pass[0][0]), (cpu, cell_pass[0][1])):
        leaves = {name: table[name] for name in LEAVES if name in table}
        segment_rest = table["segment_nuclei"] - sum(table.get(n, 0.0) for n in PARENTS["segment_nuclei"])
        block_rest = table[BLOCK] - sum(table.get(n, 0.0) for n in PARENTS[BLOCK]) - table.get("read in block", 0.0)
        steps = {"read (decode)": table["read (decode)"], **leaves, "other in segment_nuclei": segment_rest,
                 f"other in {BLOCK}": block_rest,
                 "band assembly and setup": total - table[BLOCK] - table["read (decode)"] + table.get("read in block", 0.0)}
        rows["wall" if table is wall else "cpu"] = steps
    report = {"slide": args.slide, "megapixels": round(megapixels, 1), "blocks": calls[BLOCK],
              "cell_pass_s": round(cell_pass[0][0], 2), "cell_pass_cpu_s": round(cell_pass[0][1], 2),
              "cells": result.summary["cells"]["total"],
              "steps_s": {k: round(v, 3) for k, v in rows["wall"].items()},
              "steps_cpu_s": {k: round(v, 3) for k, v in rows["cpu"].items()}}
    print(f"{args.slide}: {megapixels:.1f} Mpx, {report['blocks']} blocks, cell pass {cell_pass[0][0]:.1f} s wall, "
          f"{cell_pass[0][1]:.1f} s CPU ({megapixels / cell_pass[0][1]:.1f} Mpx per CPU s), {report['cells']} cells",
          file=sys.stderr)
    print(f"  {'step':28s} {'wall s':>7s} {'CPU s':>7s} {'CPU %':>6s}", file=sys.stderr)
    for name, seconds in sorted(rows["cpu"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {rows['wall'][name]:7.2f} {seconds:7.2f} {100 * seconds / cell_pass[0][1]:6.1f}",
              file=sys.stderr)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
