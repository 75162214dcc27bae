"""Cell pass before/after, side by side: the same slide analysed by two checkouts in fresh processes.

    git worktree add /tmp/before <commit>        # the cell pass to compare with
    python benchmarks/bench_cell_speed.py [--before /tmp/before] [--after .] [--slide PATH] [--repeats 2]

Each run: one process, cells on, the whole analysis; 1 worker (sync scheduler) and 2 threads,
the checkouts alternating. Reported per run: the cell pass's wall seconds, the process's CPU
seconds over the analysis, the whole analysis, its peak RSS, the cells and the CD20+ %. Default
slide: bench-12k (12,000 x 16,000 px x 9 channels, 0.5 µm/px; render it with bench_command.py).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = r'''
import json, resource, sys, time
from tlsquant import analyze_slide, load_config, open_slide
slide = open_slide(sys.argv[1])
config = load_config(overrides=[f"compute.workers={sys.argv[2]}", f"compute.scheduler={sys.argv[3]}"])
wall, cpu = time.perf_counter(), time.process_time()
result = analyze_slide(slide, config)
print(json.dumps({"cells_s": result.summary["timing_seconds"]["cells"], "total_s": round(time.perf_counter() - wall, 1),
                  "cpu_s": round(time.process_time() - cpu, 1), "cells": result.summary["cells"]["total"],
                  "cd20_pct": result.summary.get("cd20_pct"),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="/tmp/before")
    parser.add_argument("--after", default=str(ROOT), help="the checkout to compare (default: this one)")
    parser.add_argument("--slide", default=str(ROOT / "benchmarks" / "_data" / "bench-12k.ome.tiff"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for workers, scheduler in ((1, "sync"), (2, "threads")):
        for repeat in range(args.repeats):
            for label, root in (("before", args.before), ("after", args.after)):
                run = subprocess.run([sys.executable, "-c", CODE, args.slide, str(workers), scheduler], capture_output=True,
                                     text=True, cwd="/", env={**os.environ, "PYTHONPATH": root})
                row = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else run.stderr[-500:]
                print(json.dumps({"workers": workers, "repeat": repeat, "checkout": label, "result": row}), flush=True)


if __name__ == "__main__":
    main()
