"""The demo: the whole flow on small synthetic slides, from manifest to report.

Uses the bundled ``test_images/`` of a source checkout; an installed package without them
writes equivalent slides (same generator, seeds and formats) into the output folder, so
``tlsquant demo`` works from any install.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

GROUPS = ("good", "poor")
# name -> (make_scene arguments, realistic): slides like the bundled test images (same seeds, sizes,
# formats, channels and TLS per location; the generator has moved on since, so not the same pixels)
DEMO_SLIDES = {
    "synthetic-a.ome.tiff": (dict(seed=3, width_um=2000, height_um=1500, pixel_size_um=2.5, dtype="uint8",
                                  tls_counts=(1, 2, 0), tls_radius_um=(50, 80)), False),
    "synthetic-b.qptiff": (dict(seed=4, width_um=2000, height_um=1500, pixel_size_um=2.5, dtype="uint8",
                                tls_counts=(2, 2, 0), tls_radius_um=(50, 80), shuffle_channels=True,
                                extra_channels=("Autofluorescence",)), False),
    "synthetic-c.ome.zarr": (dict(seed=5, width_um=2000, height_um=1500, pixel_size_um=2.5, dtype="uint8",
                                  tls_counts=(2, 2, 0), tls_radius_um=(50, 85)), False),
    "synthetic-d.ome.tiff": (dict(seed=12, width_um=1600, height_um=1200, pixel_size_um=2.0, dtype="uint8",
                                  tls_counts=(1, 2, 0), tls_radius_um=(60, 70), extra_channels=("Autofluorescence",)),
                             True),
}


def bundled_images() -> Path | None:
    """``test_images/`` of the source checkout this package runs from, or None (an installed wheel)."""
    images = Path(__file__).resolve().parents[1] / "test_images"
    return images if images.is_dir() and any(images.glob("*.truth.json")) else None


def demo_slides(outroot: Path) -> tuple[list[Path], Path]:
    """The demo's slides and the folder holding their truth files; written under ``outroot`` when not bundled."""
    images = bundled_images()
    if images is None:
        from . import synthetic

        images = outroot / "demo-slides"
        for name, (kwargs, realistic) in DEMO_SLIDES.items():
            if not synthetic.truth_path(images / name).is_file():
                scene = synthetic.make_scene(**kwargs, realism=synthetic.Realism.default() if realistic else None)
                synthetic.write_slide(scene, images / name)
    slides = sorted(p for p in images.iterdir() if ".truth." not in p.name and not p.name.startswith("."))
    return slides, images


@dataclass
class DemoRun:
    batch: object  # tlsquant.batch.BatchResult
    stats: pd.DataFrame
    report: dict[str, Path]
    truth: dict[str, dict]  # slide id -> truth summary


def run_demo(outroot: str | Path, *, workers: int | None = None, progress=None, step_progress=None) -> DemoRun:
    """Manifest -> batch -> cohort -> comparison -> report, on the demo slides (two groups, alternating).

    ``progress`` and ``step_progress`` are :func:`tlsquant.batch.run_batch`'s (slides done; steps inside them).
    """
    from .batch import run_batch
    from .config import load_config
    from .report import write_report
    from .slide import slide_id_from_name
    from .stats import compare_groups

    outroot = Path(outroot)
    outroot.mkdir(parents=True, exist_ok=True)
    slides, images = demo_slides(outroot)
    manifest = pd.DataFrame({
        "slide_id": [slide_id_from_name(p.name) for p in slides],
        "path": [os.path.relpath(p, outroot) for p in slides],
        "response": [GROUPS[i % 2] for i in range(len(slides))],
    })
    manifest_path = outroot / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    result = run_batch(manifest_path, outroot, load_config(), workers=workers, progress=progress,
                       step_progress=step_progress)
    stats = compare_groups(result.cohort, "response", groups=list(GROUPS))
    written = write_report(result.cohort, stats, "response", outroot / "comparison", slides_dir=outroot / "slides",
                           title="tlsquant demo: good vs poor (synthetic slides)", failures=result.failures)
    truth = {}
    for slide_id in manifest["slide_id"]:
        truth_file = images / f"{slide_id}.truth.json"
        if truth_file.is_file():
            truth[slide_id] = json.loads(truth_file.read_text())
    return DemoRun(result, stats, written, truth)
