"""The cell pass's compiled kernels against their numpy or scipy oracles: identical results, not close ones."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

import tlsquant.cells as cells
from tlsquant.cells import ThresholdGrid, cell_bodies, distance_to_background, segment_nuclei

pytest.importorskip("numba")

PIXELS = [(0.5, 0.5), (1.0, 1.0), (0.325, 0.325), (0.4, 0.6)]


def _blobs(rng, shape, sigma=2.0, level=0.5):
    return ndi.gaussian_filter(rng.random(shape), sigma) > level


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
@pytest.mark.parametrize("pixel", PIXELS)
def test_fused_smoothing_and_threshold_equal_scipys(dtype, pixel, rng):
    for shape in ((1, 7), (2, 3), (3, 3), (37, 53)):
        stain = (rng.random(shape) * 200).astype(dtype)
        for sigma_um in (0.0, 0.3, 0.7):
            image = np.asarray(stain, np.float32)
            if sigma_um > 0:
                image = ndi.gaussian_filter(image, cells._px(sigma_um, pixel), truncate=3.0)
            grid = (rng.random((3, 4)) * 200).astype(np.float32)
            per_pixel = grid[np.ix_((np.arange(shape[0]) + 5) // 16, (np.arange(shape[1]) + 9) // 16)]
            for threshold, pixels in ((100.5, 100.5), (np.float64(100.3), np.float64(100.3)), (per_pixel, per_pixel),
                                      (ThresholdGrid(grid, 16, 5, 9), per_pixel)):
                smoothed, foreground = cells._smooth_and_threshold(stain, threshold, sigma_um=sigma_um,
                                                                   pixel_size_um=pixel)
                np.testing.assert_array_equal(smoothed, image)
                np.testing.assert_array_equal(foreground, image > pixels)


@pytest.mark.parametrize("pixel", PIXELS)
def test_compiled_distance_equals_scipys_exactly(pixel, rng, monkeypatch):
    for sigma in (2.0, 8.0):
        mask = _blobs(rng, (120, 97), sigma)
        want = ndi.distance_transform_edt(mask, sampling=pixel).astype(np.float32)
        np.testing.assert_array_equal(distance_to_background(mask, pixel), want)
        monkeypatch.setattr(cells, "DISTANCE_SEARCH_PX", 0)  # every row through the lower envelope
        np.testing.assert_array_equal(distance_to_background(mask, pixel), want)
        monkeypatch.undo()
    solid = np.ones((9, 11), bool)
    assert np.isinf(distance_to_background(solid, pixel)).all()
    assert not distance_to_background(~solid, pixel).any()
    with monkeypatch.context() as patch:
        patch.setattr(cells, "_compiled", lambda loops: None)
        assert np.isinf(distance_to_background(solid, pixel)).all()


@pytest.mark.parametrize("pixel", PIXELS)
@pytest.mark.parametrize("settled_um", [-100.0, 0.0, 1.0, 100.0])
def test_two_pass_claim_equals_the_whole_reach(pixel, settled_um, rng, monkeypatch):
    # random foreground, distance maxima as centres, some zero radii (clump centres) and centres at the edges
    mask = _blobs(rng, (90, 110), 3.0, 0.45)
    distance = distance_to_background(mask, pixel)
    peaks = cells._local_maxima(distance, mask, cells._px(1.5, pixel))
    peaks[0, ::17] = True
    radius = np.where(rng.random(mask.shape) < 0.2, np.float32(0), distance)
    want = None
    for bucket in (4, 16):
        monkeypatch.setattr(cells, "CLAIM_SETTLED_UM", settled_um)
        monkeypatch.setattr(cells, "CLAIM_BUCKET_PX", bucket)
        got = cells._nearest_centre(peaks, radius, mask, pixel_size_um=pixel, reach_um=8.9, origin=(3, 5))
        if want is None:
            monkeypatch.setattr(cells, "_claim_compiled", lambda: None)
            want = cells._nearest_centre(peaks, radius, mask, pixel_size_um=pixel, reach_um=8.9, origin=(3, 5))
        monkeypatch.undo()
        np.testing.assert_array_equal(got, want)
    assert want.max() > 10


def test_plateau_roots_equal_scipys_labels(rng, monkeypatch):
    mask = rng.random((70, 90)) < 0.25
    flat = np.flatnonzero(mask)
    compiled = cells._plateau_roots(flat, mask.shape)
    monkeypatch.setattr(cells, "_compiled", lambda loops: None)
    np.testing.assert_array_equal(compiled, cells._plateau_roots(flat, mask.shape))


def _rings_by_brute_force(nuclei, pixel, ring_um):
    """Every background pixel within ``ring_um`` of a nucleus: the label of the nearest nucleus pixel, lowest on ties."""
    grown = nuclei.copy()
    ys, xs = np.nonzero(nuclei)
    labels = nuclei[ys, xs]
    for y, x in zip(*np.nonzero(nuclei == 0)):
        step = np.sqrt(((ys - y) * pixel[0]) ** 2 + ((xs - x) * pixel[1]) ** 2)
        near = step <= ring_um
        if near.any():
            nearest = step[near].min()
            grown[y, x] = labels[near][step[near] == nearest].min()
    return grown


@pytest.mark.parametrize("pixel", PIXELS)
def test_rings_grow_only_from_exposed_sides_yet_match_brute_force(pixel, rng):
    nuclei, _ = ndi.label(_blobs(rng, (48, 56), 1.5, 0.55))
    nuclei = nuclei.astype(np.int32)
    np.testing.assert_array_equal(cell_bodies(nuclei, pixel_size_um=pixel, ring_um=2.0),
                                  _rings_by_brute_force(nuclei, pixel, 2.0))


def test_one_pass_marker_sums_equal_per_marker_sums(rng):
    nuclei, n = ndi.label(_blobs(rng, (60, 70), 1.5, 0.55))
    nuclei = nuclei.astype(np.int32)
    bodies = cell_bodies(nuclei, pixel_size_um=(0.5, 0.5), ring_um=2.0)
    for dtype in (np.uint16, np.float32):
        band = (rng.random((3, 60, 90)) * 1000).astype(dtype)
        markers = [band[k, :, 10:80] for k in range(3)]  # windows of a band: strided views
        nucleus_sums, ring_sums = cells._all_marker_sums(nuclei, bodies, markers, n)
        for k, values in enumerate(markers):
            want = cells._marker_sums(nuclei, bodies, np.ascontiguousarray(values), n)
            np.testing.assert_array_equal(nucleus_sums[k], want[0])
            np.testing.assert_array_equal(ring_sums[k], want[1])


def test_rings_in_one_signed_array_give_the_sums_of_two_label_arrays(rng, monkeypatch):
    nuclei, n = ndi.label(_blobs(rng, (60, 70), 1.5, 0.55))
    nuclei = nuclei.astype(np.int32)
    bodies = cell_bodies(nuclei, pixel_size_um=(0.5, 0.4), ring_um=2.0)
    signed = cells._grow_rings(nuclei.copy(), pixel_size_um=(0.5, 0.4), ring_um=2.0)
    np.testing.assert_array_equal(signed, np.where(nuclei > 0, nuclei, -bodies))
    markers = [(rng.random((60, 70)) * 1000).astype(np.uint16) for _ in range(3)]
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(cells, "_compiled", lambda loops: None)
        for got, want in ((cells._cell_sums(signed, signed, n, (7, 11)), cells._cell_sums(nuclei, bodies, n, (7, 11))),
                          (cells._all_marker_sums(signed, signed, markers, n),
                           cells._all_marker_sums(nuclei, bodies, markers, n))):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        edges = (True, True, True, True)
        np.testing.assert_array_equal(cells._touching_cut_sides(signed, edges, n),
                                      cells._touching_cut_sides(bodies, edges, n))


def test_segmentation_with_a_threshold_grid_equals_per_pixel_thresholds(rng):
    image = ndi.gaussian_filter(rng.random((140, 150)) * 1000, 2.0).astype(np.float32)
    grid = rng.uniform(480, 520, (10, 11))
    per_pixel = grid[np.ix_((np.arange(140) + 7) // 16, (np.arange(150) + 3) // 16)]
    np.testing.assert_array_equal(
        segment_nuclei(image, pixel_size_um=(0.5, 0.5), threshold=ThresholdGrid(grid, 16, 7, 3)),
        segment_nuclei(image, pixel_size_um=(0.5, 0.5), threshold=per_pixel))


def _counted_blocks(image, chunks, decoded):
    """``image`` as a dask array whose reader tasks note each block they decode in ``decoded``."""
    def decode(block_info=None):  # a reader task, as a slide's: no input blocks, a fresh array out
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        decoded.append((y0, x0))
        return image[y0:y1, x0:x1].copy()

    return da.map_blocks(decode, dtype=image.dtype, chunks=chunks, meta=np.empty((0, 0), image.dtype))


def test_band_reads_equal_slices_and_decode_shared_blocks_once(rng):
    image = rng.integers(0, 60000, (300, 410)).astype(np.uint16)
    chunks = ((64,) * 4 + (44,), (96,) * 4 + (26,))
    regions = [((10, 140), (0, 200)), ((10, 140), (190, 410)), ((100, 290), (0, 200)), ((100, 290), (150, 410))]
    for rechunked in (False, True):  # blocks decoded by one task, or built from several
        decoded = []
        array = (_counted_blocks(image, ((50,) * 6, (50,) * 8 + (10,)), decoded).rechunk(chunks) if rechunked
                 else _counted_blocks(image, chunks, decoded))
        sources = cells._Sources([array, array + 1])
        sources.share(regions)
        assert sources.shared
        try:
            for reader, (rows, cols) in enumerate(regions):
                out = [np.empty((rows[1] - rows[0], cols[1] - cols[0]), np.uint16) for _ in range(2)]
                sources.read(rows, cols, out, reader=reader)
                sources.finish(reader)
                np.testing.assert_array_equal(out[0], image[rows[0]:rows[1], cols[0]:cols[1]])
                np.testing.assert_array_equal(out[1], image[rows[0]:rows[1], cols[0]:cols[1]] + np.uint16(1))
            if not rechunked:  # each block decoded once per channel, though most are read by two or more readers
                blocks = [(y, x) for y in (0, 64, 128, 192, 256) for x in (0, 96, 192, 288, 384)]
                assert sorted(decoded) == sorted(blocks * 2)
            # all readers finished: nothing kept
            assert not [k for k in cells._SHARED_BLOCKS._items if k[0] in {a.name for a in sources.arrays}]
            assert not [k for k in cells._SHARED_BLOCKS._waiting if k[0] in {a.name for a in sources.arrays}]
            out = [np.empty((130, 200), np.uint16)]
            sources.read((10, 140), (0, 200), out)  # a read of no reader: decoded, nothing kept
            np.testing.assert_array_equal(out[0], image[10:140, :200])
        finally:
            cells._SHARED_BLOCKS.discard({a.name for a in sources.arrays})


def test_shared_blocks_keep_what_is_needed_first_within_their_limit():
    shared = cells._SharedBlocks(10_000)
    first, second = ("x", 0), ("x", 1)  # readers: (first array's name, index)

    def put(key, nbytes, due):
        shared.take(key, first, (first, second))
        shared.put(key, (np.zeros((1, nbytes), np.uint8), 0, 0), due=due)

    put(("x", 0, 0), 4500, due=5)
    put(("x", 0, 1), 4500, due=5)
    put(("x", 0, 2), 1500, due=6)  # due later than all that is kept: not kept
    assert set(shared._items) == {("x", 0, 0), ("x", 0, 1)}
    put(("x", 0, 3), 1500, due=5)  # as soon and smaller (a take saves as much decoding): displaces the newest larger
    assert set(shared._items) == {("x", 0, 0), ("x", 0, 3)} and shared._bytes == 6000
    put(("x", 0, 4), 4000, due=4)  # sooner: fits
    put(("x", 0, 5), 6000, due=3)  # sooner still: displaces what is due last, no more than needed
    assert set(shared._items) == {("x", 0, 4), ("x", 0, 5)} and shared._bytes == 10_000
    put(("x", 0, 6), 20_000, due=0)  # larger than the limit: never kept
    assert set(shared._items) == {("x", 0, 4), ("x", 0, 5)}
    kept, waiting = shared.take(("x", 0, 5), second, (first, second))  # the last reader takes it: gone
    assert kept[0].nbytes == 6000 and not waiting
    assert set(shared._items) == {("x", 0, 4)} and shared._bytes == 4000
    shared.finish(second)  # the second reads no more: what only it waited for goes
    assert not shared._items and not shared._waiting
    put(("x", 0, 8), 100, due=1)  # nor is what only finished readers still need kept
    assert not shared._items
    shared.discard({"x"})
    assert not shared._finished and not shared._waiting


def test_a_read_frees_its_decoded_blocks_without_the_cycle_collector(rng):
    # decoded blocks held by a reference cycle pile up until the collector runs: ~1 GB over a whole slide
    import gc
    import weakref

    image = rng.integers(0, 60000, (300, 410)).astype(np.uint16)
    decoded = []

    def decode(block_info=None):  # a reader task, as a slide's: no input blocks, a fresh array out
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        out = image[y0:y1, x0:x1].copy()
        decoded.append(weakref.ref(out))
        return out

    chunks = ((64,) * 4 + (44,), (96,) * 4 + (26,))
    array = da.map_blocks(decode, dtype=np.uint16, chunks=chunks, meta=np.empty((0, 0), np.uint16)) + 1
    sources = cells._Sources([array])
    out = [np.empty((130, 200), np.uint16)]
    enabled = gc.isenabled()
    gc.disable()
    try:
        sources.read((10, 140), (0, 200), out)
        assert decoded and not [ref for ref in decoded if ref() is not None]
    finally:
        if enabled:
            gc.enable()
    np.testing.assert_array_equal(out[0], image[10:140, :200] + np.uint16(1))


def test_band_windows_equal_slices_and_hold_only_the_shared_columns(rng):
    image = rng.integers(0, 60000, (3, 120, 700)).astype(np.uint16)
    sources = cells._Sources([da.from_array(plane, chunks=(120, 64)) for plane in image])
    windows = [(0, 150), (110, 290), (250, 430), (500, 700)]  # overlapping, then one after a gap
    for channels in ([0], [1, 2]):
        band = cells._BandWindows(sources, channels, (10, 110))
        for k, (x0, x1) in enumerate(windows):
            got = band.window(x0, x1)
            for c, window in zip(channels, got):
                np.testing.assert_array_equal(window, image[c, 10:110, x0:x1])
            next_x0 = windows[k + 1][0] if k + 1 < len(windows) else None
            band.release(next_x0)
            held = band.held or []
            assert all(h.shape == (100, band.held_x[1] - band.held_x[0]) for h in held)
            if held:  # the next window's first column on, up to the end of the last chunk read
                assert band.held_x[0] == next_x0 and band.held_x[1] - x1 < 64


def _plan_and_masks(image, names, markers, compartments):
    """A cell plan for a 0.5 µm synthetic render, and masks counting every cell as tissue."""
    plan = cells.CellPlan(markers=tuple(markers), compartments=compartments, thresholds=(800.0,) * len(markers),
                          nuclear_threshold=float(np.median(image[names.index("DAPI")])) + 1,
                          pixel_size_um=(0.5, 0.5), sigma_um=0.3, min_distance_um=1.5, min_area_um2=8.0,
                          max_area_um2=250.0, ring_um=2.0, fine_factor=4, coarse_factor=16, n_tls=1, keep_table=True)
    coarse = tuple(-(-s // 16) for s in image.shape[1:])
    fine = tuple(-(-s // 4) for s in image.shape[1:])
    return plan, dict(tissue=np.ones(coarse, bool), tumour=np.zeros(coarse, bool), debris=np.zeros(fine, bool),
                      tls_labels=np.zeros(fine, np.int32))


def test_cells_equal_with_markers_read_one_at_a_time_and_shared_blocks_mostly_not_kept(monkeypatch):
    from tlsquant import synthetic

    scene = synthetic.make_scene(seed=7, width_um=420, height_um=330, pixel_size_um=0.5, tls_counts=(1, 0, 0),
                                 tls_radius_um=(50, 50), extra_channels=("CD8",))
    image = synthetic.render(scene).compute()
    names = list(scene.channel_names)
    markers = ("CD20", "CD3", "TFE3", "CD8")
    plan, masks = _plan_and_masks(image, names, markers, ("ring", "ring", "nucleus", "cell"))
    order = [names.index(name) for name in ("DAPI", *markers)]

    def run():  # blocks of 256 px read through 64 px tiles: many blocks shared by neighbouring runs
        lazy, tiles = (da.from_array(image, chunks=(1, size, size)) for size in (256, 64))
        return cells.compute_cells(lazy[order[0]], [lazy[k] for k in order[1:]], plan, **masks,
                                   halo_source=[tiles[k] for k in order], scheduler="threads", num_workers=2)

    want = run()
    assert want.total > 500
    monkeypatch.setattr(cells, "MARKER_GROUP", 1)
    monkeypatch.setattr(cells._SHARED_BLOCKS, "limit_bytes", 40_000)  # about five tiles' halos kept at a time
    got = run()
    pd.testing.assert_frame_equal(got.table, want.table, check_exact=True)
    np.testing.assert_array_equal(got.counts, want.counts)
    assert got.nucleus_area_um2 == want.nucleus_area_um2
    assert not cells._SHARED_BLOCKS._items and not cells._SHARED_BLOCKS._waiting


def test_block_edges_a_halo_before_tile_edges_decode_each_tile_once_and_change_no_cell(monkeypatch):
    """Cores end ``halo`` px before the tile edges, so a window's far halo ends on a tile edge: the next row of
    tiles is not decoded for a few rows of it, and what the next block needs of this one's tiles is a strip the
    shared blocks keep even when whole tile rows would not fit."""
    from tlsquant import synthetic

    assert cells._halo_on_edges((256, 256, 256, 100), 40) == (216, 256, 256, 140)
    assert cells._halo_on_edges((256,), 40) == (256,) and cells._halo_on_edges((60, 60), 40) == (60, 60)
    scene = synthetic.make_scene(seed=7, width_um=600, height_um=500, pixel_size_um=0.5, tls_counts=(1, 0, 0),
                                 tls_radius_um=(50, 50))
    image = synthetic.render(scene).compute()
    names = list(scene.channel_names)
    order = [names.index(name) for name in ("DAPI", "CD20", "CD3")]
    plan, masks = _plan_and_masks(image, names, ("CD20", "CD3"), ("ring", "ring"))
    tile, core = 192, 384
    assert 2 * plan.halo_px < tile < core - plan.halo_px

    def run():  # cores of two tiles read through counted tiles, one block row after the other
        decoded = {k: [] for k in order}
        tiles = [_counted_blocks(image[k], ((tile,) * -(-image.shape[1] // tile), (tile,) * -(-image.shape[2] // tile)),
                                 decoded[k]) for k in order]
        cores = [da.from_array(image[k], chunks=core) for k in order]
        result = cells.compute_cells(cores[0], cores[1:], plan, **masks, halo_source=tiles, scheduler="sync")
        return result, [(k, *corner) for k, corners in decoded.items() for corner in corners]

    # room for the strips where block rows meet, not for a row of whole tiles
    strip_bytes = 2 * plan.halo_px * image.shape[2] * 2 * len(order)
    monkeypatch.setattr(cells._SHARED_BLOCKS, "limit_bytes", 2 * strip_bytes)
    got, decoded = run()
    assert got.total > 500
    assert len(decoded) == len(set(decoded))  # every tile of every channel decoded once
    monkeypatch.setattr(cells, "_halo_on_edges", lambda chunks, halo: chunks)  # cores on the tile edges
    want, decoded_before = run()
    assert len(decoded_before) > len(decoded), (len(decoded_before), len(decoded))
    pd.testing.assert_frame_equal(got.table, want.table, check_exact=True)
    np.testing.assert_array_equal(got.counts, want.counts)
