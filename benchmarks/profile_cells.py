"""Where the cell pass spends its time, per block: one process, one worker (sync scheduler).

Wraps the steps of :mod:`tlsquant.cells` with timers and runs the whole analysis of one slide
with cells on; reports seconds per step summed over the blocks, per block, and per level-0
megapixel. ``decode and assembly`` is the cell pass minus the time inside ``cells_block``.

    python benchmarks/profile_cells.py SLIDE [--json OUT]
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

STEPS = ("cells_block", "segment_nuclei", "smoothing", "distance_to_background", "_clump_zone", "_footprint_filter",
         "_local_maxima", "_separate_maxima", "_clump_centres", "_nearest_centre", "cell_bodies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide")
    parser.add_argument("--json")
    args = parser.parse_args()
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    depth = {"clump": 0}

    def timed(name, function):
        @functools.wraps(function)
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                if not (name == "_footprint_filter" and depth["clump"]):
                    spent[name] += time.perf_counter() - started
                calls[name] += 1
        return wrapper

    for name in STEPS:
        if hasattr(cells, name) and name != "smoothing":
            setattr(cells, name, timed(name, getattr(cells, name)))
    clump_centres = cells._clump_centres

    def clump_wrapper(*a, **k):  # its own filters count as clump centres, not as the peak filter
        depth["clump"] += 1
        try:
            return clump_centres(*a, **k)
        finally:
            depth["clump"] -= 1
    cells._clump_centres = clump_wrapper
    gaussian = cells.ndi.gaussian_filter

    class Ndi:  # the smoothing before the threshold (clump smoothing is inside _clump_centres)
        def __getattr__(self, attr):
            return getattr(ndimage, attr)

        @staticmethod
        def gaussian_filter(*a, **k):
            started = time.perf_counter()
            try:
                return gaussian(*a, **k)
            finally:
                if not depth["clump"]:
                    spent["smoothing"] += time.perf_counter() - started
    cells.ndi = Ndi()
    cell_pass = []
    # the module that calls the cell pass (tlsquant.pipeline, or tlsquant.steps.cells after the steps split)
    caller = next(m for m in (importlib.import_module(name) for name in ("tlsquant.steps.cells", "tlsquant.pipeline")
                              if importlib.util.find_spec(name)) if hasattr(m, "compute_cells"))
    original = caller.compute_cells

    def compute_cells(*a, **k):
        started = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            cell_pass.append(time.perf_counter() - started)
    caller.compute_cells = compute_cells
    slide = tlsquant.open_slide(args.slide)
    config = tlsquant.load_config(None, ["compute.workers=1", "compute.scheduler=sync"])
    result = tlsquant.analyze_slide(slide, config)
    megapixels = slide.shape[1] * slide.shape[2] / 1e6
    blocks = calls["cells_block"]
    inner = {name: spent[name] for name in STEPS if name in spent}
    segment_rest = inner["segment_nuclei"] - sum(inner.get(n, 0.0) for n in STEPS[2:-1])
    measurement = inner["cells_block"] - inner["segment_nuclei"] - inner.get("cell_bodies", 0.0)
    rows = {"decode and assembly": cell_pass[0] - inner["cells_block"], **{n: inner[n] for n in STEPS[2:] if n in inner},
            "threshold, labels, areas": segment_rest, "per-cell measurement": measurement}
    report = {"slide": args.slide, "megapixels": round(megapixels, 1), "blocks": blocks,
              "cell_pass_s": round(cell_pass[0], 2), "cells": result.summary["cells"]["total"],
              "steps_s": {k: round(v, 3) for k, v in rows.items()},
              "steps_s_per_mpx": {k: round(v / megapixels, 4) for k, v in rows.items()}}
    print(f"{args.slide}: {megapixels:.1f} Mpx, {blocks} blocks, cell pass {cell_pass[0]:.1f} s, "
          f"{report['cells']} cells", file=sys.stderr)
    for name, seconds in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {seconds:7.2f} s  {100 * seconds / cell_pass[0]:5.1f} %  {seconds / megapixels * 1e3:6.1f} ms/Mpx",
              file=sys.stderr)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
