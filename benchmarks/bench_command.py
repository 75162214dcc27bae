"""Benchmark: the `tlsquant analyze` command as a user runs it, against decoding what it reads.

For each slide (synthetic, 9 channels, uint16, 512 px zstd tiles, pyramidal OME-TIFF, 0.5 µm/px;
rendered once into benchmarks/_data/ by bench_analysis.py's recipe; *mosaic*, 35,328 x 31,744, is 3 x 2 copies
of the 12k one made in minutes by make_mosaic.py) and each worker count, these
run back to back, each in a fresh process, page cache warm (the slide is read once first):

- decode (TLS channels): the 7 channels the counting pass reads, at level 0, through tlsquant's own
  reader (the same tile-aligned chunks, the same threaded scheduler and worker count)
- analyze, cells off:    ``python -m tlsquant analyze SLIDE -o OUT -q --threads N --set cells.enabled=false``
- decode (all channels): the channels the command reads with cells on (TLS channels and cell markers)
- analyze, cells on:     the same command with the default configuration (cells on)
- profile:               the cells-on command inside one process with timers around its phases
                         (imports, opening, each analysis step, each output file); optional

Wall time is that of the whole process (interpreter start to exit); peak RSS is the process's
``ru_maxrss`` from ``os.wait4``. Cell count and CD20+ % are compared with the slide's truth.

    python benchmarks/bench_command.py [--sizes 12k,mosaic] [--workers 1,2] [--repeats 1] [--profile]
                                       [--before /tmp/before]  # also time a second checkout's command

Results: benchmarks/results/command.{json,md} (``--report`` rewrites the md from the json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_analysis  # noqa: E402

RESULTS = HERE / "results"
bench_analysis.SIZES.setdefault("12k", (6000.0, 8000.0))  # 12,000 x 16,000 px (the slide)

DECODE = r"""
import sys, time
started = time.perf_counter()
import dask, numpy as np
import tlsquant
from tlsquant.pipeline import resolve_cell_markers, resolve_channels
path, workers, which = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = tlsquant.load_config()
slide = tlsquant.open_slide(path)
roles, _ = resolve_channels(slide, config.channels)
names = [roles[r] for r in roles]
if which == "all":
    markers = resolve_cell_markers(slide, config, roles)
    markers = markers[0] if isinstance(markers, tuple) else markers  # newer versions also return warnings
    names = list(dict.fromkeys(names + [m.channel for m in markers]))
arrays = [slide.channel(n) for n in names]
dask.compute(*[a.map_blocks(lambda b: np.zeros((1, 1)), chunks=(1, 1), dtype=float).sum() for a in arrays],
             scheduler="threads", num_workers=workers)
print(len(names))
"""

PROFILE = r"""
import sys, time
t0 = time.perf_counter()
import json, functools
marks = {}
import tlsquant.cli as cli
marks["import tlsquant.cli"] = time.perf_counter() - t0
from tlsquant import progress
import tlsquant.io, tlsquant.outputs, tlsquant.outputs.qc, tlsquant.outputs.gallery, tlsquant.outputs.tables
t_called = [None]
spent = {}
def timed(module, name, label):
    function = getattr(module, name)
    @functools.wraps(function)
    def wrapper(*a, **k):
        started = time.perf_counter()
        try:
            return function(*a, **k)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - started
    setattr(module, name, wrapper)
import tlsquant.outputs as outputs
timed(tlsquant.io, "open_slide", "opening the slide")
timed(outputs, "write_tls_table", "output: tls.csv")
timed(outputs, "geojson_features", "output: tls.geojson")
timed(outputs, "annotation_features", "output: annotations.geojson")
timed(outputs, "write_cell_tables", "output: cell tables")
timed(tlsquant.outputs.qc, "write_qc_picture", "output: qc.png")
timed(tlsquant.outputs.qc, "write_threshold_picture", "output: thresholds.png")
timed(tlsquant.outputs.gallery, "write_tls_gallery", "output: TLS gallery")
timed(outputs, "write_slide_outputs", "writing outputs (all)")
reporter = progress.Reporter()
import contextlib
cli._progress = lambda enabled: progress.reporting(reporter)
t_main = time.perf_counter()
status = cli.main(sys.argv[1:])
t_end = time.perf_counter()
steps = {s.name: s.elapsed() for s in reporter.steps}
first = min(s.started for s in reporter.steps)
print(json.dumps({"status": status, "in_process_s": t_end - t0, "import_cli_s": marks["import tlsquant.cli"],
                  "imports_s": t_main - t0,
                  "main_to_first_step_s": first - t_main, "steps_s": steps, "spent_s": spent}))
"""


def slide_for(size: str) -> Path:
    if size == "mosaic":  # 35,328 x 31,744 (3 x 2 copies of the 12k slide): a whole-slide size in minutes
        import make_mosaic

        path = bench_analysis.DATA / "bench-mosaic.ome.tiff"
        if not path.exists():
            make_mosaic.make_mosaic(slide_for("12k"), path, across=3, down=2)
        return path
    return bench_analysis.ensure_slide(size)


WRAP = r"""
import json, os, subprocess, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
print(json.dumps({"seconds": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
                  "status": status}), file=sys.stderr)
"""


def measure(argv: list[str], *, env=None, cwd=None) -> dict:
    """One fresh process: wall time, peak RSS (its own ``ru_maxrss`` from ``os.wait4``) and stdout."""
    process = subprocess.run([sys.executable, "-c", WRAP, *argv], capture_output=True, env=env, cwd=cwd)
    record = json.loads(process.stderr.decode().strip().splitlines()[-1])
    if record["status"] != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed: {process.stderr.decode()[-3000:]}")
    return {"seconds": round(record["seconds"], 3), "cpu_s": round(record.get("cpu_s", 0.0), 2),
            "peak_rss_mb": round(record["peak_rss_mb"]),
            "stdout": process.stdout.decode()}


def analyze_argv(path: Path, out: Path, workers: int, cells: bool) -> list[str]:
    argv = [sys.executable, "-m", "tlsquant", "analyze", str(path), "-o", str(out), "-q", "--threads", str(workers)]
    return argv + ([] if cells else ["--set", "cells.enabled=false"])


def cell_accuracy(out: Path, truth: dict) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    cells = summary.get("cells") or {}
    record = {"tls_count": summary["tls_count"], "timing_seconds": summary["timing_seconds"]}
    if cells:
        record.update({"cells": cells["total"], "cd20_pct": summary.get("cd20_pct"),
                       "cells_vs_truth_pct": round(100 * (cells["total"] / truth["total"] - 1), 2),
                       "cd20_vs_truth_pct": round(100 * (summary["cd20_pct"] / truth["cd20_pct"] - 1), 2)})
    return record


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="12k,L")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also profile the cells-on command per phase")
    parser.add_argument("--before", help="a second checkout (e.g. git archive of an older commit) timed alongside")
    parser.add_argument("--after", help="the checkout timed as 'after' (default: the one this script is in)")
    parser.add_argument("--modes", default="decode_tls,off,decode_all,on")
    parser.add_argument("--output", default=str(RESULTS / "command.json"))
    parser.add_argument("--report", action="store_true", help="only rewrite command.md from command.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --output (e.g. another slide size), each with its own command")
    args = parser.parse_args()
    if args.report:
        write_report(json.loads(Path(args.output).read_text()))
        return
    modes = args.modes.split(",")
    kept = json.loads(Path(args.output).read_text())["rows"] if args.append and Path(args.output).is_file() else []
    command = " ".join(["python", "benchmarks/bench_command.py", *sys.argv[1:]])
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-command-"))
    trees = {"after": args.after} | ({"before": args.before} if args.before else {})
    try:
        for size in args.sizes.split(","):
            path = slide_for(size)
            truth = json.loads(path.with_name(f"bench-{size}.truth.json").read_text())
            warm(path)
            shape = truth["shape"]
            for workers in (int(w) for w in args.workers.split(",")):
                for repeat in range(args.repeats):
                    row = {"command": command, "size": size, "shape": shape,
                           "megapixels": round(shape[1] * shape[2] / 1e6, 1),
                           "file_mb": round(path.stat().st_size / 2**20), "workers": workers, "repeat": repeat}
                    for mode in modes:
                        for tree, root in trees.items():
                            if mode.startswith("decode") and tree != "after":
                                continue
                            env = None if root is None else {**os.environ, "PYTHONPATH": root}
                            key = mode if tree == "after" else f"{mode}_{tree}"
                            if mode.startswith("decode"):
                                result = measure([sys.executable, "-c", DECODE, str(path), str(workers),
                                                  mode.split("_")[1]], env=env, cwd=root)
                                result["channels"] = int(result.pop("stdout").strip().splitlines()[-1])
                            else:
                                out = scratch / f"{size}-{workers}-{mode}-{tree}"
                                result = measure(analyze_argv(path, out, workers, mode == "on"), env=env, cwd=root)
                                result.pop("stdout")
                                result.update(cell_accuracy(out, truth["cells"]))
                                shutil.rmtree(out, ignore_errors=True)
                            row[key] = result
                            print(size, workers, key, {k: v for k, v in result.items() if k != "timing_seconds"},
                                  file=sys.stderr, flush=True)
                    if args.profile and repeat == 0:
                        out = scratch / f"{size}-{workers}-profile"
                        argv = [sys.executable, "-c", PROFILE, "analyze", str(path), "-o", str(out), "--threads",
                                str(workers)]
                        result = measure(argv)
                        row["profile"] = {**json.loads(result["stdout"].strip().splitlines()[-1]),
                                          "process_s": result["seconds"], "peak_rss_mb": result["peak_rss_mb"]}
                        shutil.rmtree(out, ignore_errors=True)
                        print(size, workers, "profile", row["profile"], file=sys.stderr, flush=True)
                    for mode, decode in (("off", "decode_tls"), ("on", "decode_all")):
                        for suffix in ("", "_before"):
                            if mode + suffix in row and decode in row:
                                row[f"{mode}{suffix}_over_decode"] = round(
                                    row[mode + suffix]["seconds"] / row[decode]["seconds"], 2)
                    rows.append(row)
                    write_results(kept + rows, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_results(rows: list[dict], args) -> None:
    import tlsquant

    result = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
              "tlsquant": tlsquant.__version__, "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "benchmarks/bench_command.py", *sys.argv[1:]]),  # the last run's
              "decode": "tlsquant's reader (tile-aligned dask chunks, threads scheduler, same worker count)",
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    write_report(result, Path(args.output).with_suffix(".md"))


def write_report(result: dict, target: Path | None = None) -> None:
    """A markdown table of the rows (the hand-written analysis lives in the md's second half)."""
    target = target or RESULTS / "command.md"
    lines = ["| run | slide (px) | workers | decode 7 ch s | analyze cells off s | off / decode | decode all ch s "
             "| analyze cells on s | on / decode | peak RSS off / on MB | cells vs truth | CD20+ % vs truth | before |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        def get(mode, field="seconds", fmt="{:.1f}"):
            return fmt.format(r[mode][field]) if mode in r and field in r[mode] else "-"
        lines.append(
            f"| {r.get('run', '')} {r.get('repeat', 0) + 1} | {r['shape'][2]:,} x {r['shape'][1]:,} | {r['workers']} | {get('decode_tls')} | {get('off')} | "
            f"{r.get('off_over_decode', '-')} | {get('decode_all')} | {get('on')} | {r.get('on_over_decode', '-')} | "
            f"{get('off', 'peak_rss_mb', '{:.0f}')} / {get('on', 'peak_rss_mb', '{:.0f}')} | "
            f"{get('on', 'cells_vs_truth_pct', '{:+.1f} %')} | {get('on', 'cd20_vs_truth_pct', '{:+.1f} %')} |")
        before = "-"
        if "on_before" in r or "off_before" in r:
            before = (f"off {get('off_before')} s ({r.get('off_before_over_decode', '-')}x), "
                      f"on {get('on_before')} s ({r.get('on_before_over_decode', '-')}x), "
                      f"RSS {get('off_before', 'peak_rss_mb', '{:.0f}')} / {get('on_before', 'peak_rss_mb', '{:.0f}')} MB")
        lines[-1] += f" {before} |"
    table = "\n".join(lines) + "\n"
    marker = "<!-- table -->"
    text = target.read_text() if target.exists() else f"# The command as a user runs it\n\n{marker}\n{marker}\n"
    if text.count(marker) >= 2:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = f"{head}{marker}\n{table}{marker}{tail}"
    target.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
