"""A whole-slide-sized benchmark slide in minutes: a mosaic of copies of a rendered one.

Rendering a 40,000 x 30,000 x 9 synthetic slide takes over an hour here; copying the
compressed level-0 tiles of bench-12k (12,000 x 16,000) does not. The source is cropped to
whole tiles (its right 224 and bottom 128 px are glass, so nothing of the truth is lost),
copied ``--across`` x ``--down`` times tile by tile without decoding, and its pyramid levels
are tiled the same way (decoded and re-encoded: they do not fall on tile boundaries). The
truth is the source's, repeated: counts and areas times the number of copies, densities and
percentages unchanged, TLS and decoys shifted into each copy.

    python benchmarks/make_mosaic.py --across 3 --down 2     # -> benchmarks/_data/bench-mosaic.ome.tiff
                                                               #    35,328 x 31,744 px (1.12 Gpx)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np
import tifffile

DATA = Path(__file__).resolve().parent / "_data"
SCALED = ("tissue_area_mm2", "tumour_area_mm2", "tls_count", "tls_counted", "tls_mature_count", "tls_primary_count")
CELL_COUNTS = ("total", "in_tumour", "tumour_cells", "cd20_positive", "cd3_positive", "cd8_positive", "cd68_positive",
               "cd23_positive_cells")


def _raw_tiles(path: Path, page, rows: int, cols: int, across: int, down: int):
    """Level-0 tiles of one channel's page, compressed, in the mosaic's row-major order."""
    per_row = math.ceil(page.imagewidth / page.tilewidth)
    with open(path, "rb") as handle:
        for y in range(rows * down):
            for x in range(cols * across):
                index = (y % rows) * per_row + (x % cols)
                handle.seek(page.dataoffsets[index])
                yield handle.read(page.databytecounts[index])


def _level_tiles(level: np.ndarray, crop: tuple[int, int], across: int, down: int, tile: int):
    """Tiles of one channel's pyramid level, cropped and repeated."""
    mosaic = np.tile(level[: crop[0], : crop[1]], (down, across))
    for y in range(0, mosaic.shape[0], tile):
        for x in range(0, mosaic.shape[1], tile):
            block = np.zeros((tile, tile), mosaic.dtype)
            part = mosaic[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def _truth(source: dict, shape: tuple[int, int, int], across: int, down: int, step_um: tuple[float, float]) -> dict:
    truth = copy.deepcopy(source)
    copies = across * down
    truth["shape"] = list(shape)
    truth["mosaic_of"] = {"source_shape": source["shape"], "across": across, "down": down}
    for key in SCALED:
        truth[key] = source[key] * copies
    truth["cells"] = {k: (v * copies if k in CELL_COUNTS else v) for k, v in source["cells"].items()}
    shifted = []
    for j in range(down):
        for i in range(across):
            for tls in source["tls"]:
                moved = dict(tls, tls_id=len(shifted) + 1, centroid_x_um=tls["centroid_x_um"] + i * step_um[1],
                             centroid_y_um=tls["centroid_y_um"] + j * step_um[0])
                shifted.append(moved)
    truth["tls"] = shifted
    truth["decoys"] = {kind: [dict(d, x_um=d["x_um"] + i * step_um[1], y_um=d["y_um"] + j * step_um[0])
                              for j in range(down) for i in range(across) for d in items]
                       for kind, items in source["decoys"].items()}
    return truth


def make_mosaic(source: Path, target: Path, *, across: int, down: int) -> Path:
    with tifffile.TiffFile(source) as tif:
        series = tif.series[0]
        pages = [page.aspage() for page in series.levels[0].pages]
        first = pages[0]
        tile = first.tilewidth
        rows, cols = first.imagelength // tile, first.imagewidth // tile  # whole tiles only
        crop = (rows * tile, cols * tile)
        shape = (len(pages), crop[0] * down, crop[1] * across)
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        names = [c["Name"] for c in ome["Channel"]]
        pixel_um = float(ome["PhysicalSizeX"])
        levels = len(series.levels)
        temporary = target.with_name(target.name + ".partial")
        with tifffile.TiffWriter(temporary, bigtiff=True, ome=True) as out:
            raw = (data for page in pages for data in _raw_tiles(source, page, rows, cols, across, down))
            out.write(raw, shape=shape, dtype=series.dtype, tile=(tile, tile), compression="zstd",
                      subifds=levels - 1, metadata={"axes": "CYX", "Channel": {"Name": names},
                                                    "PhysicalSizeX": pixel_um, "PhysicalSizeXUnit": "µm",
                                                    "PhysicalSizeY": pixel_um, "PhysicalSizeYUnit": "µm"})
            for k in range(1, levels):
                factor = 2**k
                level_crop = (crop[0] // factor, crop[1] // factor)
                level_shape = (len(pages), level_crop[0] * down, level_crop[1] * across)
                planes = series.levels[k].asarray()
                tiles = (t for c in range(len(pages)) for t in _level_tiles(planes[c], level_crop, across, down, tile))
                out.write(tiles, shape=level_shape, dtype=series.dtype, tile=(tile, tile), compression="zstd",
                          subfiletype=1, maxworkers=2)
    temporary.replace(target)
    truth = json.loads(source.with_name(source.name.replace(".ome.tiff", ".truth.json")).read_text())
    mosaic_truth = _truth(truth, shape, across, down, (crop[0] * pixel_um, crop[1] * pixel_um))
    target.with_name(target.name.replace(".ome.tiff", ".truth.json")).write_text(json.dumps(mosaic_truth, indent=1))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DATA / "bench-12k.ome.tiff")
    parser.add_argument("--target", type=Path, default=DATA / "bench-mosaic.ome.tiff")
    parser.add_argument("--across", type=int, default=3)
    parser.add_argument("--down", type=int, default=2)
    args = parser.parse_args()
    path = make_mosaic(args.source, args.target, across=args.across, down=args.down)
    print(path, tifffile.TiffFile(path).series[0].shape)


if __name__ == "__main__":
    main()
