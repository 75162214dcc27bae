"""Benchmark: threshold sensitivity against a plain analysis of the same slide.

On the 10,000 x 7,500 px synthetic slide of bench_analysis.py (size S, 0.5 µm/px, 9 channels,
uint16, 512 px zstd tiles), each measured in a fresh process, alternating, ``--repeats`` times:

- plain:        tlsquant.analyze_slide with the default config
- sensitivity:  the same with sensitivity.enabled (6 channels x 4 scales + 2 minimum areas)

and the same pair with the cell pass off (the TLS analysis alone, where the extra work weighs
most). The issue's bound: sensitivity at most 1.3x plain. Reported: median seconds, the
ratio of medians, peak RSS and the time the scenarios took (timing_seconds.sensitivity).
Results: benchmarks/results/sensitivity.{json,md}.

    python benchmarks/bench_sensitivity.py [--size S] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

MEASURE = r"""
import json, resource, sys, time
import tlsquant
path, workers, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
config = tlsquant.load_config(None, overrides)
slide = tlsquant.open_slide(path)
started = time.perf_counter()
result = tlsquant.analyze_slide(slide, config, scheduler="threads", num_workers=workers)
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tls_count": result.summary["tls_count"], "timing_seconds": result.summary["timing_seconds"],
                  "scenarios": 0 if result.sensitivity is None else len(result.sensitivity) - 1}))
"""

MODES = {
    "plain": ["outputs.qc_png=false"],
    "sensitivity": ["outputs.qc_png=false", "sensitivity.enabled=true"],
    "plain, cells off": ["outputs.qc_png=false", "cells.enabled=false"],
    "sensitivity, cells off": ["outputs.qc_png=false", "cells.enabled=false", "sensitivity.enabled=true"],
}


def measure(path: Path, workers: int, overrides: list[str]) -> dict:
    output = subprocess.check_output([sys.executable, "-c", MEASURE, str(path), str(workers), json.dumps(overrides)])
    return json.loads(output.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="S")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cells", action="store_true", help="only the pair with the cell pass off")
    args = parser.parse_args()
    from bench_analysis import ensure_slide

    import tlsquant

    path = ensure_slide(args.size)
    slide = tlsquant.open_slide(path)
    modes = {k: v for k, v in MODES.items() if not args.no_cells or "cells off" in k}
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):  # alternating: load on a shared machine hits both alike
        for mode, overrides in modes.items():
            runs[mode].append(measure(path, args.workers, overrides))
            print(repeat, mode, runs[mode][-1], file=sys.stderr)
    summary = {mode: {"median_seconds": statistics.median(r["seconds"] for r in rs),
                      "seconds": [round(r["seconds"], 2) for r in rs],
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "sensitivity_seconds": statistics.median(r["timing_seconds"].get("sensitivity", 0.0) for r in rs),
                      "evidence_seconds": statistics.median(r["timing_seconds"]["evidence"] for r in rs),
                      "tls_count": rs[0]["tls_count"], "scenarios": rs[0]["scenarios"]} for mode, rs in runs.items()}
    pairs = [("plain", "sensitivity"), ("plain, cells off", "sensitivity, cells off")]
    ratios = {with_: round(summary[with_]["median_seconds"] / summary[plain]["median_seconds"], 3)
              for plain, with_ in pairs if plain in summary}
    result = {"machine": platform.platform(), "python": platform.python_version(), "workers": args.workers,
              "slide": {"path": path.name, "shape": list(slide.shape), "pixel_size_um": slide.pixel_size_x_um},
              "repeats": args.repeats, "modes": summary, "ratio_to_plain": ratios, "bound": 1.3}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sensitivity.json").write_text(json.dumps(result, indent=2))
    shape = slide.shape
    lines = [
        "# Threshold sensitivity vs plain analysis", "",
        f"Machine: {result['machine']}, Python {result['python']}, {args.workers} threads; slide {path.name} "
        f"({shape[2]} x {shape[1]} px, {shape[0]} channels, {slide.pixel_size_x_um:g} µm/px). Each run is a fresh "
        f"process; modes alternate, {args.repeats} repeats, medians shown. Sensitivity: "
        f"{summary[next(iter(ratios))]['scenarios']} scenarios (6 channels x 4 threshold scales + 2 minimum TLS areas).",
        "", "| mode | median s | runs s | evidence pass s | scenarios s | peak RSS MB | TLS | ratio to plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['median_seconds']:.1f} | {', '.join(f'{v:.1f}' for v in s['seconds'])} | "
                     f"{s['evidence_seconds']:.1f} | {s['sensitivity_seconds']:.1f} | {s['peak_rss_mb']:.0f} | "
                     f"{s['tls_count']} | {ratios.get(mode, '')} |")
    lines += ["", "Bound (issue 12): sensitivity at most 1.3x plain. "
              + "; ".join(f"{mode}: x{ratio}" for mode, ratio in ratios.items()) + "."]
    (RESULTS / "sensitivity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
