"""Compile tlsquant's numba kernels into their on-disk cache before the test workers start.

Run by conftest.py (two of these in parallel, one per ``part``) when the cache is cold, as
in a fresh clone: otherwise every xdist worker and every dask worker process a test
starts compiles the same kernels again (~10 CPU s each). Each part analyses a tiny
synthetic slide per dtype the tests use, with cells and sensitivity on.

    python tests/warm_kernels.py {0,1}
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import tlsquant
from tlsquant import synthetic
from tlsquant.outputs import write_slide_outputs

PARTS = (("uint16",), ("float32",))  # uint8 runs the uint16 kernels (compiled.one_integer_type)


def main(part: int) -> None:
    # no pictures: they compile nothing (the outlines, which do, are still written)
    config = tlsquant.load_config(None, ["sensitivity.enabled=true", "outputs.qc_png=false"])
    with tempfile.TemporaryDirectory() as folder:
        for dtype in PARTS[part]:
            scene = synthetic.make_scene(seed=3, width_um=600, height_um=450, pixel_size_um=0.5, tls_counts=(1, 0, 0),
                                         tls_radius_um=(60, 60), dtype=dtype, n_infiltrates=0, n_aggregates=0)
            path, _ = synthetic.write_slide(scene, Path(folder) / f"warm-{dtype}.ome.tiff")
            slide = tlsquant.open_slide(path)
            result = tlsquant.analyze_slide(slide, config)
            write_slide_outputs(result, Path(folder) / dtype, slide=slide)


if __name__ == "__main__":
    main(int(sys.argv[1]))
