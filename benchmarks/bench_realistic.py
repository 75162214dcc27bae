"""Accuracy on realistic synthetic slides: every phenomenon alone and all together, scored against the truth.

Renders each slide with ``tlsquant.synthetic`` (realistic mode), runs ``analyze_slide``
with the default configuration, and scores it with ``tlsquant.validate``. Writes
benchmarks/results/realistic.{md,json}. Slides go to benchmarks/_data/realistic/ (ignored).

    python benchmarks/bench_realistic.py            # all cases
    python benchmarks/bench_realistic.py --only all-uint16-1um-af
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from tlsquant import __version__, analyze_slide, load_config, synthetic
from tlsquant.validate import acceptance_misses, score

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data" / "realistic"
RESULTS = HERE / "results"
PHENOMENA = ("autofluorescence", "edge_rim", "illumination", "dark_offset", "stain_gain", "cell_brightness",
             "crosstalk", "rbc", "folds", "blur", "debris")

# name: (make_scene kwargs, file suffix, realism)
CASES: dict[str, tuple[dict, str, synthetic.Realism]] = {
    "all-uint16-1um-ometiff": (dict(seed=31, pixel_size_um=1.0, dtype="uint16"), ".ome.tiff", synthetic.Realism.default()),
    "all-uint16-1um-af-ometiff": (dict(seed=32, pixel_size_um=1.0, dtype="uint16", extra_channels=("Autofluorescence",)),
                                  ".ome.tiff", synthetic.Realism.default()),
    "all-float32-1um-af-shuffled-qptiff": (dict(seed=33, pixel_size_um=1.0, dtype="float32", shuffle_channels=True,
                                                extra_channels=("CD8", "Autofluorescence")), ".qptiff",
                                           synthetic.Realism.default()),
    "all-uint8-0.8um-ometiff": (dict(seed=34, pixel_size_um=0.8, dtype="uint8"), ".ome.tiff", synthetic.Realism.default()),
    "all-uint16-0.5um-qptiff": (dict(seed=35, pixel_size_um=0.5, dtype="uint16", width_um=2000, height_um=1500,
                                     tls_counts=(2, 2, 1), tls_radius_um=(55, 100)), ".qptiff", synthetic.Realism.default()),
    "all-uint16-0.325um-qptiff": (dict(seed=36, pixel_size_um=0.325, dtype="uint16", width_um=1600, height_um=1200,
                                       tls_counts=(2, 1, 1), tls_radius_um=(55, 90)), ".qptiff", synthetic.Realism.default()),
    "all-float32-0.65um-af-ometiff": (dict(seed=37, pixel_size_um=0.65, dtype="float32", width_um=2400, height_um=1800,
                                           extra_channels=("Autofluorescence",), tls_counts=(3, 2, 1)), ".ome.tiff",
                                      synthetic.Realism.default()),
    "all-uint16-1um-mostly-glass": (dict(seed=38, pixel_size_um=1.0, dtype="uint16", tissue_scale=0.7), ".ome.tiff",
                                    synthetic.Realism.default()),
    "strong-uint16-1um-af": (dict(seed=39, pixel_size_um=1.0, dtype="uint16", extra_channels=("Autofluorescence",)),
                             ".ome.tiff", synthetic.Realism.parse("all=1.5,crosstalk=1.2")),
}
for offset, name in enumerate(PHENOMENA):
    CASES[f"only-{name}-uint16-1um"] = (dict(seed=41 + offset, pixel_size_um=1.0, dtype="uint16"), ".ome.tiff",
                                        synthetic.Realism.only(name))


def run_case(name: str) -> dict:
    kwargs, suffix, realism = CASES[name]
    scene = synthetic.make_scene(**{"width_um": 3000, "height_um": 2250, "tls_counts": (4, 3, 2), **kwargs},
                                 realism=realism)
    path = DATA / f"{name}{suffix}"
    truth_file = synthetic.truth_path(path)
    started = time.perf_counter()
    if not truth_file.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_slide(scene, path)
    rendered = time.perf_counter() - started
    truth = json.loads(truth_file.read_text())
    started = time.perf_counter()
    result = analyze_slide(path, load_config())
    seconds = time.perf_counter() - started
    scores = score(result.summary, result.tls, truth)
    return {
        "case": name, "pixel_size_um": scene.pixel_size_x_um, "dtype": scene.dtype, "format": suffix.lstrip("."),
        "autofluorescence_channel": "Autofluorescence" in scene.channel_names, "shape": list(scene.shape),
        "realism": {k: v for k, v in truth["realism"].items() if k in PHENOMENA},
        "scores": scores, "misses": acceptance_misses(scores),
        "artefact_area_mm2": {"found": result.summary["excluded_artefact_area_mm2"],
                              "truth": truth.get("artefact_area_mm2", {})},
        "render_seconds": round(rendered, 1), "analysis_seconds": round(seconds, 1),
    }


def _fmt(value, spec="+.1%"):
    return "n/a" if value is None else format(value, spec)


def write_results(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"tlsquant_version": __version__, "python": platform.python_version(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d")}
    (RESULTS / "realistic.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Realistic synthetic slides: accuracy with the default configuration",
        "",
        f"tlsquant {__version__}, {meta['date']}, `python benchmarks/bench_realistic.py`. Acceptance: tumour area within 5 %, "
        "TLS recall, precision, stage and location/counted accuracy >= 0.95, per-TLS area within 20 %, density within 10 %, "
        "cells within 10 % and CD20+ % within 15 % where measured.",
        "",
        "| case | px µm | dtype | AF ch | TLS true/found | recall | precision | stage | location | worst TLS area | tumour area | "
        "density | cells | CD20+ % | artefacts found (truth) mm² | s | misses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row["scores"]
        truth_area = sum(row["artefact_area_mm2"]["truth"].values()) if row["artefact_area_mm2"]["truth"] else 0.0
        lines.append(
            f"| {row['case']} | {row['pixel_size_um']:g} | {row['dtype']} | {'yes' if row['autofluorescence_channel'] else 'no'} | "
            f"{s['tls_true']}/{s['tls_found']} | {s['recall']:.2f} | {s['precision']:.2f} | {s['stage_accuracy']:.2f} | "
            f"{s['location_accuracy']:.2f} | {s['worst_tls_area_error']:.1%} | {_fmt(s['tumour_area_error'])} | "
            f"{_fmt(s['density_error'])} | {_fmt(s.get('cell_count_error'))} | {_fmt(s.get('cd20_pct_error'))} | "
            f"{row['artefact_area_mm2']['found']:.3f} ({truth_area:.3f}) | {row['analysis_seconds']} | "
            f"{', '.join(row['misses']) or '-'} |")
    passed = sum(not row["misses"] for row in rows)
    lines += ["", f"{passed} of {len(rows)} slides meet every criterion."]
    (RESULTS / "realistic.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    rows = []
    for name in args.only or CASES:
        row = run_case(name)
        rows.append(row)
        print(f"{name}: {row['misses'] or 'ok'} {row['scores']}", flush=True)
    if not args.only:
        write_results(rows)


if __name__ == "__main__":
    main()
