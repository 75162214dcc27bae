"""Benchmark: whole-slide TLS analysis against decode-only and a naive whole-array version.

For synthetic slides of 10,000 x 7,500, 20,000 x 15,000 and 40,000 x 30,000 px at 0.5 µm/px
(9 channels, uint16, 512 px zstd tiles, pyramidal OME-TIFF), each measured side by side
in one run and each in a fresh process (peak RSS is per measurement):

- decode:   decode only the channels the analysis reads, at level 0, same chunks and threads
- analysis: tlsquant.analyze_slide (thresholds, evidence pass, segmentation, measurements) with
            cells off: the TLS analysis (the cell pass is measured by bench_cells.py)
- naive:    the same steps on numpy arrays loaded whole (one count over the whole image,
            then the same coarse-map steps); skipped where the arrays would not fit in memory

Slides are rendered once into benchmarks/_data/ (ignored by git) and reused.
Results: benchmarks/results/analysis.{json,md}.

    python benchmarks/bench_analysis.py [--sizes S,M,L] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE / "_data"
RESULTS = HERE / "results"
SIZES = {"S": (5000.0, 3750.0), "M": (10000.0, 7500.0), "L": (20000.0, 15000.0)}  # µm at 0.5 µm/px
PIXEL_SIZE_UM = 0.5
NAIVE_LIMIT_BYTES = 6 * 2**30


def slide_path(size: str) -> Path:
    return DATA / f"bench-{size}.ome.tiff"


def ensure_slide(size: str) -> Path:
    path = slide_path(size)
    if path.exists():
        return path
    from tlsquant import synthetic

    DATA.mkdir(parents=True, exist_ok=True)
    width_um, height_um = SIZES[size]
    scale = width_um * height_um / (4000 * 3000)
    scene = synthetic.make_scene(
        seed=7, width_um=width_um, height_um=height_um, pixel_size_um=PIXEL_SIZE_UM, dtype="uint16",
        extra_channels=("CD8", "CD68", "Autofluorescence"),
        tls_counts=tuple(max(1, round(n * scale**0.5)) for n in (5, 3, 2)),
        n_aggregates=round(6 * scale**0.5), n_debris=round(8 * scale**0.5), n_infiltrates=round(3 * scale**0.5),
    )
    started = time.perf_counter()
    synthetic.write_slide(scene, path, tile=512, compression="zstd", workdir=DATA)
    print(f"rendered {path.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


MEASURE = r"""
import json, resource, sys, time
import dask
import numpy as np
import tlsquant
from tlsquant.pipeline import resolve_channels
mode, path, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = tlsquant.load_config(None, ["cells.enabled=false"])
slide = tlsquant.open_slide(path)
roles, _ = resolve_channels(slide, config.channels)
arrays = [slide.channel(roles[r]) for r in roles]
started = time.perf_counter()
extra = {}
if mode == "decode":
    dask.compute(*[a.map_blocks(lambda b: np.zeros((1, 1)), chunks=(1, 1), dtype=float).sum() for a in arrays],
                 scheduler="threads", num_workers=workers)
elif mode == "analysis":
    result = tlsquant.analyze_slide(slide, config, scheduler="threads", num_workers=workers)
    extra = {"tls_count": result.summary["tls_count"], "tumour_area_mm2": result.summary["tumour_area_mm2"],
             "timing_seconds": result.summary["timing_seconds"]}
elif mode == "naive":
    from tlsquant.segment import evidence
    loaded = [np.asarray(a) for a in arrays]  # the whole channels in memory
    original = evidence.compute_evidence
    def whole_array(channels, plan, **kwargs):
        import dask.array as da
        return original([da.from_array(c, chunks=c.shape) for c in loaded], plan, **{**kwargs, "scheduler": "sync"})
    import tlsquant.steps.signal as signal_step  # the step that runs the counting pass
    signal_step.compute_evidence = whole_array
    result = tlsquant.analyze_slide(slide, config, scheduler="sync")
    extra = {"tls_count": result.summary["tls_count"]}
elapsed = time.perf_counter() - started
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"mode": mode, "seconds": elapsed, "peak_rss_mb": peak_mb, **extra}))
"""


def measure(mode: str, path: Path, workers: int) -> dict:
    output = subprocess.check_output([sys.executable, "-c", MEASURE, mode, str(path), str(workers)])
    return json.loads(output.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="S,M,L")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        path = ensure_slide(size)
        import tlsquant

        slide = tlsquant.open_slide(path)
        megapixels = slide.shape[1] * slide.shape[2] / 1e6
        row = {"size": size, "shape": list(slide.shape), "megapixels": round(megapixels, 1),
               "file_mb": round(path.stat().st_size / 2**20)}
        for mode in ("decode", "analysis", "naive"):
            needed = slide.shape[1] * slide.shape[2] * 2 * 7
            if mode == "naive" and needed > NAIVE_LIMIT_BYTES:
                row["naive"] = None
                continue
            row[mode] = measure(mode, path, args.workers)
            print(size, mode, row[mode], file=sys.stderr)
        row["analysis_over_decode"] = round(row["analysis"]["seconds"] / row["decode"]["seconds"], 2)
        if row["naive"]:
            row["naive_over_analysis"] = round(row["naive"]["seconds"] / row["analysis"]["seconds"], 2)
        rows.append(row)
    result = {"machine": platform.platform(), "python": platform.python_version(), "workers": args.workers,
              "pixel_size_um": PIXEL_SIZE_UM, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "analysis.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Whole-slide analysis vs decode-only vs naive whole-array", "",
        f"Machine: {result['machine']}, Python {result['python']}, {args.workers} threads. "
        "Each cell is one fresh process; decode reads only the channels the analysis reads.", "",
        "| slide (px) | Mpx | decode s | analysis s | analysis / decode | analysis peak RSS MB | naive s | naive peak RSS MB | TLS found |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        naive = r["naive"]
        naive_s = "-" if not naive else f"{naive['seconds']:.1f}"
        naive_mb = "-" if not naive else f"{naive['peak_rss_mb']:.0f}"
        lines.append(
            f"| {r['shape'][2]} x {r['shape'][1]} | {r['megapixels']} | {r['decode']['seconds']:.1f} | "
            f"{r['analysis']['seconds']:.1f} | {r['analysis_over_decode']} | {r['analysis']['peak_rss_mb']:.0f} | "
            f"{naive_s} | {naive_mb} | "
            f"{r['analysis']['tls_count']} |"
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = (last["analysis"]["seconds"] / first["analysis"]["seconds"]) / (last["megapixels"] / first["megapixels"])
        lines += ["", f"Time per pixel from the smallest to the largest slide changes by x{growth:.2f} "
                      "(1.0 = linear in slide area)."]
    (RESULTS / "analysis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
