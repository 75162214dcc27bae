"""Cell pass before/after, side by side: the same slide analysed by two checkouts in fresh processes.

    git worktree add /tmp/before 926a6e4     # the cell pass before the speed-ups
    python benchmarks/bench_cell_speed.py      # bench-S (10,000 x 7,500 px, 0.5 µm/px) from bench_analysis.py

Each run: one process, 1 worker (sync scheduler), cells on; two alternating repetitions.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT / "benchmarks" / "_data" / "bench-S.ome.tiff"
code = r'''
import sys, time, json
from tlsquant import analyze_slide, load_config, open_slide
slide = open_slide("BENCH_S")
cfg = load_config(overrides=["compute.workers=1", "compute.scheduler=sync"])
t = time.perf_counter(); r = analyze_slide(slide, cfg); total = time.perf_counter() - t
print(json.dumps({"cells_s": r.summary["timing_seconds"]["cells"], "total_s": round(total, 1), "cells": r.summary["cells"]["total"]}))
'''
rows = {}
for rep in range(2):
    for label, root in (("before", "/tmp/before"), ("after", str(ROOT))):
        out = subprocess.run([sys.executable, "-c", code.replace("BENCH_S", str(SLIDE))], capture_output=True,
                             text=True, env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin", "HOME": "/root"})
        rows.setdefault(label, []).append(json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else out.stderr[-500:])
        print(label, rows[label][-1], flush=True)
