"""Shared helpers of the pathologist's-loop tests: one small synthetic slide analysed into a folder."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

from tlsquant import load_config, synthetic

FAST = ["cells.enabled=false", "outputs.qc_png=false"]


def fast_config(*overrides: str):
    return load_config(None, [*FAST, *overrides])


def small_slide(folder: Path, *, seed: int = 11, tls_counts=(2, 1, 0), name: str = "loop") -> Path:
    """A 1.6 x 1.2 mm slide at 2 µm/px with a fold-free tumour, a few TLS and debris decoys."""
    scene = synthetic.make_scene(seed=seed, width_um=1600, height_um=1200, pixel_size_um=2.0, tls_counts=tls_counts,
                                 tls_radius_um=(45, 80), dtype="uint16")
    path, _ = synthetic.write_slide(scene, folder / f"{name}.ome.tiff")
    return path


def analyse_into(slide: Path, outdir: Path, *overrides: str, annotations=None):
    from tlsquant.workflow import analyze_to_folder

    kwargs = {} if annotations is None else {"annotations": annotations}
    return analyze_to_folder(slide, outdir, fast_config(*overrides), **kwargs)


def load(path: Path):
    return json.loads(Path(path).read_text())


@functools.cache
def shared_analysis():
    """(SlideResult, slide folder, slide path) of the default small slide, made once per test session."""
    folder = Path(tempfile.mkdtemp(prefix="tlsquant-loop-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    slide = small_slide(folder)
    return analyse_into(slide, folder / "slide"), folder / "slide", slide
