"""The outputs' cheaper paths give what the plain ones gave: artefact masks pieced from their set cells, piece
outlines found once per shape, sparse pixel sums and tissue lookups, a file's graph read without culling."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import measure

from tlsquant import open_slide
from tlsquant.outputs.annotations import _on_tissue
from tlsquant.outputs.gallery import CropWindow, SharedChunks, read_window, window_chunks
from tlsquant.polygons import EIGHT, FOUR, SIMPLIFY_CELLS, _pieces, _sparse_pieces, cell_pixels, mask_pixels, mask_polygons, ring_area, simplify
from tlsquant.segment.regions import fill_holes


def _reference_rings(mask, factor, offset, *, fully_connected):
    rings = []
    origin = np.asarray((offset[0] - 0.5, offset[1] - 0.5))
    for contour in measure.find_contours(np.pad(mask.astype(np.uint8), 1), 0.5, fully_connected=fully_connected):
        contour = simplify(contour, SIMPLIFY_CELLS)
        if len(contour) < 4:
            continue
        xy = np.round((contour + origin)[:, ::-1] * factor, 3).tolist()
        if xy[0] != xy[-1]:
            xy.append(list(xy[0]))
        if ring_area(xy) != 0:
            rings.append(xy)
    return rings


def _oriented(ring, *, exterior):
    return ring if (ring_area(ring) > 0) == exterior else ring[::-1]


def _reference_polygons(mask, factor, offset=(0, 0)):
    """mask_polygons as it was: the whole grid labelled, every piece outlined on its own."""
    labels, _ = ndi.label(mask, structure=FOUR)
    polygons = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        piece = labels[box] == index
        filled = fill_holes(piece, FOUR)
        origin = (offset[0] + box[0].start, offset[1] + box[1].start)
        outer = _reference_rings(filled, factor, origin, fully_connected="low")
        if not outer:
            continue
        exterior = _oriented(max(outer, key=lambda ring: abs(ring_area(ring))), exterior=True)
        holes = []
        gaps, _ = ndi.label(filled & ~piece, structure=EIGHT)
        for gap_index, gap_box in enumerate(ndi.find_objects(gaps), start=1):
            gap = gaps[gap_box] == gap_index
            gap_offset = (origin[0] + gap_box[0].start, origin[1] + gap_box[1].start)
            rings = _reference_rings(fill_holes(gap, EIGHT), factor, gap_offset, fully_connected="high")
            if rings:
                holes.append(_oriented(max(rings, key=lambda ring: abs(ring_area(ring))), exterior=False))
        polygons.append([exterior, *holes])
    return sorted(polygons, key=lambda polygon: -ring_area(polygon[0]))


def _specks(shape, count, seed):
    """A sparse mask of repeated small shapes (cells, pairs, rings with a hole, a ring around a speck) and random ones."""
    rng = np.random.default_rng(seed)
    shapes = [np.ones((1, 1)), np.ones((1, 2)), np.ones((3, 1)), np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]]),
              np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]),
              np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]), np.array([[1, 0], [0, 1]])]
    mask = np.zeros(shape, bool)
    for _ in range(count):
        speck = shapes[rng.integers(len(shapes))] if rng.random() < 0.7 else rng.random(rng.integers(1, 7, 2)) < 0.6
        y, x = rng.integers(0, shape[0] - speck.shape[0]), rng.integers(0, shape[1] - speck.shape[1])
        mask[y: y + speck.shape[0], x: x + speck.shape[1]] |= speck.astype(bool)
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_sparse_pieces_are_the_labelled_pieces_in_label_order(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(tuple(rng.integers(1, 150, 2))) < [0.003, 0.02, 0.2, 0.5, 0.01, 0.05][seed]
    labels, count = ndi.label(mask, structure=FOUR)
    expected = [(box, labels[box] == index) for index, box in enumerate(ndi.find_objects(labels), start=1)]
    pieced = list(_sparse_pieces(mask))
    assert len(pieced) == count
    for (box, piece), (sparse_box, sparse_piece) in zip(expected, pieced):
        assert sparse_box == box and sparse_piece.tobytes() == piece.tobytes() and sparse_piece.shape == piece.shape


def test_sparse_pieces_of_an_empty_or_edge_touching_mask():
    assert list(_sparse_pieces(np.zeros((40, 50), bool))) == []
    mask = np.zeros((40, 50), bool)
    mask[:, -1] = mask[-1, :] = mask[0, 0] = True  # along the last column and row: no wrap-around links
    mask[5, 0] = True  # the cell right of (4, 49) in raster order, not its neighbour
    labels, _ = ndi.label(mask, structure=FOUR)
    assert [box for box, _ in _sparse_pieces(mask)] == ndi.find_objects(labels)


@pytest.mark.parametrize(("shape", "count", "factor", "offset"),
                         [((600, 800), 400, 4, (0, 0)), ((400, 300), 60, 16, (7, 3)), ((64, 64), 300, 3, (0, 0))])
def test_mask_polygons_equal_the_piece_by_piece_outlines(shape, count, factor, offset):
    mask = _specks(shape, count, seed=count)
    for grid in (mask, ndi.binary_dilation(mask, iterations=2)):  # sparse and dense
        assert mask_polygons(grid, factor, offset=offset) == _reference_polygons(grid, factor, offset)


def test_pieces_sparse_and_dense_paths_agree():
    mask = _specks((400, 500), 150, seed=3)
    assert np.count_nonzero(mask) * 64 < mask.size  # the sparse path
    labels, _ = ndi.label(mask, structure=FOUR)
    assert [box for box, _ in _pieces(mask)] == [box for box in ndi.find_objects(labels)]


@pytest.mark.parametrize("slide_shape", [(1190, 1570), (1200, 1600)])
def test_sparse_mask_pixels_equal_the_cell_sums(slide_shape):
    mask = _specks((300, 400), 200, seed=1)
    assert np.count_nonzero(mask) * 64 < mask.size
    assert mask_pixels(mask, 4, slide_shape) == int(cell_pixels(mask.shape, 4, slide_shape)[mask].sum())
    part = mask[20:, 33:]
    assert mask_pixels(part, 4, slide_shape, offset=(20, 33)) == int(
        cell_pixels(mask.shape, 4, slide_shape)[20:, 33:][part].sum())


def test_artefacts_on_tissue_equal_the_blown_up_tissue_mask():
    rng = np.random.default_rng(2)
    tissue = rng.random((25, 31)) < 0.5
    debris = rng.random((98, 121)) < 0.05
    blown_up = np.repeat(np.repeat(tissue, 4, 0), 4, 1)[:98, :121]
    assert np.array_equal(_on_tissue(debris, tissue, 4), debris & blown_up)
    inside = debris & blown_up
    assert np.array_equal(_on_tissue(inside, tissue, 4), inside)


def test_windows_of_a_slide_file_are_read_without_culling_its_graph(tmp_path, monkeypatch):
    """A file's levels are plain dict graphs: windows look their chunks up directly (a cull per window
    walked every key of the slide); shared chunks still give the file's pixels."""
    image = np.random.default_rng(5).integers(0, 4000, (2, 120, 150), dtype=np.uint16)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, image, tile=(16, 16), compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "Channel": {"Name": ["DAPI", "CD3"]}})
    slide = open_slide(path, chunk_size=32)
    data = slide.levels[0].data
    windows = [CropWindow(0, 1, y0, y1, x0, x1, (1.0, 1.0))
               for y0, y1, x0, x1 in ((0, 40, 0, 50), (30, 100, 20, 90), (90, 120, 100, 150))]
    uses: dict = {}
    for window in windows:
        for name in ("DAPI", "CD3"):
            for key, _ in window_chunks(data, window, slide.channel_index(name)):
                uses[key] = uses.get(key, 0) + 1
    from dask.highlevelgraph import HighLevelGraph

    culls = []
    original = HighLevelGraph.cull
    monkeypatch.setattr(HighLevelGraph, "cull", lambda graph, keys: culls.append(len(keys)) or original(graph, keys))
    shared = SharedChunks(uses)
    for window in windows + [CropWindow(0, 1, 0, 20, 120, 150, (1.0, 1.0))]:  # the last: chunks no window counted
        planes = read_window(slide, window, ["DAPI", "CD3"], shared=shared)
        for index, name in enumerate(("DAPI", "CD3")):
            assert np.array_equal(planes[name], image[index, window.y0: window.y1, window.x0: window.x1])
    assert culls == []
