"""Cells: nuclear segmentation on hand-made images, chunked vs whole-array oracle, accuracy on synthetic slides."""

from __future__ import annotations

import gzip
import json

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from tlsquant import analyze_slide, load_config, open_slide, synthetic
from tlsquant.batch import flatten_summary
from tlsquant.cells import REGIONS, CellPlan, cell_bodies, compute_cells, segment_nuclei
from tlsquant.errors import ChannelError, ConfigError
from tlsquant.outputs import write_slide_outputs
from tlsquant.pipeline import marker_key

PIXEL = (0.5, 0.5)


def _discs(shape, centres_um, radii_um, pixel=PIXEL, value=1000.0, background=50.0):
    y = (np.arange(shape[0]) + 0.5)[:, None] * pixel[0]
    x = (np.arange(shape[1]) + 0.5)[None, :] * pixel[1]
    image = np.full(shape, background, np.float32)
    owner = np.full(shape, -1)
    best = np.full(shape, np.inf)
    for k, ((cy, cx), r) in enumerate(zip(centres_um, radii_um)):
        d = np.hypot(y - cy, x - cx)
        inside = (d <= r) & (d < best)
        owner[inside], best[inside] = k, d[inside]
    image[owner >= 0] = value
    return image


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_separate_nuclei_are_found_with_their_area_and_centre(dtype):
    centres = [(10.0, 10.0), (10.0, 30.0), (30.0, 12.0), (28.0, 33.0)]
    radii = [3.0, 2.6, 3.4, 4.0]
    image = _discs((90, 90), centres, radii, value=200).astype(dtype)
    original = image.copy()
    labels = segment_nuclei(image, pixel_size_um=PIXEL, threshold=120, sigma_um=0)
    np.testing.assert_array_equal(image, original)  # input untouched
    assert labels.dtype == np.int32 and labels.max() == 4
    for (cy, cx), r in zip(centres, radii):
        label = labels[int(cy / 0.5), int(cx / 0.5)]
        ys, xs = np.nonzero(labels == label)
        assert ys.size * 0.25 == pytest.approx(np.pi * r * r, rel=0.1)
        assert ((ys.mean() + 0.5) * 0.5, (xs.mean() + 0.5) * 0.5) == pytest.approx((cy, cx), abs=0.3)


def test_touching_nuclei_are_split_at_their_contact():
    image = _discs((60, 80), [(15.0, 12.0), (15.0, 17.5), (15.0, 24.0)], [3.0, 3.0, 3.5])
    labels = segment_nuclei(image, pixel_size_um=PIXEL, threshold=500, sigma_um=0)
    assert labels.max() == 3
    assert len({labels[30, int(x / 0.5)] for x in (12.0, 17.5, 24.0)}) == 3


def _ellipses(shape, centres_um, semi_axes_um, angles_deg, pixel=PIXEL, value=1000.0, background=50.0):
    """Hard-edged elliptic nuclei: every pixel whose centre lies inside an outline is stained."""
    y = (np.arange(shape[0]) + 0.5)[:, None] * pixel[0]
    x = (np.arange(shape[1]) + 0.5)[None, :] * pixel[1]
    image = np.full(shape, background, np.float32)
    for (cy, cx), (a, b), angle in zip(centres_um, semi_axes_um, angles_deg):
        # the same test, pixel for pixel, on a window holding the outline (its circumscribed square, one pixel more)
        reach = max(a, b)
        rows = slice(max(int((cy - reach) / pixel[0]) - 1, 0), max(int((cy + reach) / pixel[0]) + 2, 0))
        cols = slice(max(int((cx - reach) / pixel[1]) - 1, 0), max(int((cx + reach) / pixel[1]) + 2, 0))
        yw, xw = y[rows], x[:, cols]
        t = np.deg2rad(angle)
        u = (xw - cx) * np.cos(t) + (yw - cy) * np.sin(t)
        v = -(xw - cx) * np.sin(t) + (yw - cy) * np.cos(t)
        image[rows, cols][(u / a) ** 2 + (v / b) ** 2 <= 1] = value
    return image


# sub-pixel offsets of a shape's centre, in pixels
OFFSETS = ((0.0, 0.0), (0.25, 0.5), (0.5, 0.25), (0.33, 0.8))


def _nuclei(centres_um, semi_axes_um, angles_deg, pixel_um, size_um=40.0):
    pixel = (pixel_um, pixel_um)
    n = int(size_um / pixel_um)
    image = _ellipses((n, n), centres_um, semi_axes_um, angles_deg, pixel=pixel)
    return segment_nuclei(image, pixel_size_um=pixel, threshold=500, min_distance_um=1.5)


def _count_nuclei(centres_um, semi_axes_um, angles_deg, pixel_um):
    return _nuclei(centres_um, semi_axes_um, angles_deg, pixel_um).max()


def _along(angle_deg, steps_um, offset_px, pixel_um, middle_um=20.0):
    """Centres spaced along a line at ``angle_deg`` through the middle, shifted by a sub-pixel offset."""
    t = np.deg2rad(angle_deg)
    return [(middle_um + s * np.sin(t) + offset_px[0] * pixel_um, middle_um + s * np.cos(t) + offset_px[1] * pixel_um)
            for s in steps_um]


@pytest.mark.parametrize("pixel_um", [0.5, 1.0])
def test_a_spindle_nucleus_is_one_nucleus(pixel_um):
    # 10 x 3.5 µm (stromal, endothelial): the pixel grid leaves a row of maxima along its ridge
    for angle in range(0, 180, 15):
        for offset in OFFSETS:
            assert _count_nuclei(_along(angle, [0], offset, pixel_um), [(5.0, 1.75)], [angle], pixel_um) == 1, \
                (angle, offset)


@pytest.mark.xfail(strict=True, reason="a 5 µm wide oval's maxima are not thin (THIN_MAXIMUM_UM): about one in four "
                                       "still splits, as crowded round nuclei that touch without a saddle look the same")
@pytest.mark.parametrize("pixel_um", [0.5, 1.0])
def test_a_wide_oval_nucleus_is_one_nucleus(pixel_um):
    for angle in range(0, 180, 15):
        for offset in OFFSETS:
            assert _count_nuclei(_along(angle, [0], offset, pixel_um), [(4.5, 2.5)], [angle], pixel_um) == 1


@pytest.mark.parametrize("pixel_um", [0.5, 1.0])
def test_touching_round_nuclei_and_lymphocyte_chains_stay_apart(pixel_um):
    # two 8 µm nuclei 7 µm apart; three 6 µm lymphocytes in a row, 5.5 µm apart
    for steps, radius in (([-3.5, 3.5], 4.0), ([-5.5, 0, 5.5], 3.0)):
        for angle in range(0, 180, 30):
            for offset in OFFSETS:
                centres = _along(angle, steps, offset, pixel_um)
                labels = _nuclei(centres, [(radius, radius)] * len(steps), [0] * len(steps), pixel_um)
                owners = {int(labels[int(y / pixel_um), int(x / pixel_um)]) for y, x in centres}
                assert 0 not in owners and len(owners) == len(steps), (angle, offset)
                if pixel_um < 1:  # at 1 µm/px the pixel grid still splits some round nuclei of this size in two
                    assert labels.max() == len(steps), (angle, offset)


def _spindle_field(rng, size_px, pixel_um, count):
    """Spindle and oval nuclei at random places and angles, some touching or crossing."""
    size_um = size_px * pixel_um
    centres = rng.uniform(5, size_um - 5, (count, 2))
    semi = np.c_[rng.uniform(3.5, 6.0, count), rng.uniform(1.2, 2.6, count)]
    return _ellipses((size_px, size_px), centres, semi, rng.uniform(0, 180, count), pixel=(pixel_um, pixel_um))


def test_compiled_and_plain_saddle_tests_agree(rng, monkeypatch):
    pytest.importorskip("numba")
    import tlsquant.cells as cells

    image = _spindle_field(rng, 300, 1.0, 250)
    compiled = segment_nuclei(image, pixel_size_um=(1.0, 1.0), threshold=500, min_distance_um=1.5)
    monkeypatch.setattr(cells, "_saddle_compiled", lambda: cells._no_saddle_loops)
    plain = segment_nuclei(image, pixel_size_um=(1.0, 1.0), threshold=500, min_distance_um=1.5)
    assert compiled.max() > 150
    np.testing.assert_array_equal(compiled, plain)


@pytest.mark.slow
def test_chunked_spindle_cells_equal_the_whole_array(rng):
    # thin maxima are compared with maxima and saddles up to SADDLE_REACH_UM away: chunk edges cut through them
    image = _spindle_field(rng, 640, 1.0, 1400)
    marker = np.where(image > 500, 900.0, 100.0).astype(np.float32)
    plan = CellPlan(markers=("M",), compartments=("nucleus",), thresholds=(500.0,), nuclear_threshold=500.0,
                    pixel_size_um=(1.0, 1.0), sigma_um=0.3, min_distance_um=1.5, min_area_um2=8.0,
                    max_area_um2=250.0, ring_um=2.0, fine_factor=4, coarse_factor=16, n_tls=0, keep_table=True)
    masks = dict(tissue=np.ones((40, 40), bool), tumour=np.zeros((40, 40), bool), debris=np.zeros((160, 160), bool),
                 tls_labels=np.zeros((160, 160), np.int32))

    def cells_with(chunks):
        return compute_cells(da.from_array(image, chunks=chunks), [da.from_array(marker, chunks=chunks)], plan,
                             **masks, scheduler="sync").table

    whole = cells_with(image.shape)
    assert len(whole) > 900
    for chunks in ((128, 128), (200, 150), (256, 320)):
        pd.testing.assert_frame_equal(cells_with(chunks), whole, check_exact=True)


def test_anisotropic_pixels_are_handled_in_micrometres():
    pixel = (0.4, 0.6)
    centres = [(8.0, 8.0), (8.0, 20.0), (20.0, 14.0)]
    image = _discs((80, 60), centres, [3.0, 3.0, 3.0], pixel=pixel)
    labels = segment_nuclei(image, pixel_size_um=pixel, threshold=500, sigma_um=0.3)
    assert labels.max() == 3
    areas = np.bincount(labels.ravel())[1:] * pixel[0] * pixel[1]
    np.testing.assert_allclose(areas, np.pi * 9, rtol=0.12)


def test_specks_clumps_and_empty_images_give_no_nuclei():
    speck = _discs((40, 40), [(10.0, 10.0)], [1.0])  # ~3 µm²: below min_area_um2
    assert segment_nuclei(speck, pixel_size_um=PIXEL, threshold=500, sigma_um=0).max() == 0
    # a solid 40 µm blob is debris or a clump: thicker than any accepted nucleus, and its rim goes too
    clump = _discs((200, 200), [(50.0, 50.0)], [20.0])
    assert segment_nuclei(clump, pixel_size_um=PIXEL, threshold=500, sigma_um=0, min_distance_um=2.0).max() == 0
    assert segment_nuclei(np.zeros((30, 30), np.uint16), pixel_size_um=PIXEL, threshold=10).max() == 0


@pytest.mark.xfail(strict=True, reason="known limit: at the default cells.min_distance_um (1.5 µm) a perfectly "
                   "uniform 40 µm disc (no stain maxima to split at) breaks into ~30 symmetric fragments")
def test_a_uniform_clump_gives_no_nuclei_at_the_default_spacing():
    clump = _discs((200, 200), [(50.0, 50.0)], [20.0])
    assert segment_nuclei(clump, pixel_size_um=PIXEL, threshold=500, sigma_um=0).max() == 0


@pytest.mark.parametrize("pixel", [(0.5, 0.5), (0.4, 0.6), (0.325, 0.325)])
def test_footprint_filters_equal_scipys(pixel, rng):
    from tlsquant.cells import _ellipse, _footprint_filter, _px

    image = rng.random((61, 83)).astype(np.float32)
    image[rng.random(image.shape) < 0.3] = 0
    for radius_um in (1.5, 3.0):
        footprint = _ellipse(_px(radius_um, pixel))
        for mode, cval in (("constant", np.inf), ("nearest", 0.0)):
            np.testing.assert_array_equal(_footprint_filter(np.maximum, image, footprint, mode=mode, cval=cval),
                                          ndi.maximum_filter(image, footprint=footprint, mode=mode, cval=cval))
            np.testing.assert_array_equal(_footprint_filter(np.minimum, image, footprint, mode=mode, cval=cval),
                                          ndi.minimum_filter(image, footprint=footprint, mode=mode, cval=cval))


def test_fast_distance_transform_equals_scipys(rng):
    from tlsquant.cells import distance_to_background

    mask = ndi.gaussian_filter(rng.random((300, 260)), 2) > 0.5
    for pixel in ((0.5, 0.5), (1.0, 1.0), (0.325, 0.325), (0.4, 0.6)):
        np.testing.assert_array_equal(distance_to_background(mask, pixel),
                                      ndi.distance_transform_edt(mask, sampling=pixel).astype(np.float32))


def test_compiled_and_numpy_nucleus_splits_agree(monkeypatch):
    pytest.importorskip("numba")
    import tlsquant.cells as cells

    centres = [(5.0 + 5.6 * i + 0.8 * (j % 2), 5.0 + 5.4 * j) for i in range(6) for j in range(6)]
    image = _discs((80, 80), centres, [2.4 + 0.1 * (k % 5) for k in range(36)], pixel=PIXEL)
    compiled = segment_nuclei(image, pixel_size_um=PIXEL, threshold=500)
    monkeypatch.setattr(cells, "_claim_compiled", lambda: None)
    plain = segment_nuclei(image, pixel_size_um=PIXEL, threshold=500)
    assert compiled.max() > 20
    np.testing.assert_array_equal(compiled, plain)


def test_blurred_clumps_are_split_at_stain_maxima():
    # a 5 x 5 lattice of nuclei 6 µm apart, blurred as out of focus: the foreground merges
    # into one slab thicker than any nucleus; each nucleus is still a maximum of the stain
    centres = [(10.0 + 6 * i, 10.0 + 6 * j) for i in range(5) for j in range(5)]
    sharp = _discs((100, 100), centres, [2.8] * 25, pixel=PIXEL).astype(np.float32)
    blurred = ndi.gaussian_filter(sharp, 2.0 / PIXEL[0])
    labels = segment_nuclei(blurred, pixel_size_um=PIXEL, threshold=0.3 * blurred.max(), sigma_um=0.3,
                            min_distance_um=2.0)
    found = np.array(ndi.center_of_mass(labels > 0, labels, np.arange(1, labels.max() + 1))) * PIXEL[0]
    assert labels.max() == 25
    distance = np.hypot(*(found[:, None, :] - np.array(centres)[None]).transpose(2, 0, 1))
    assert (distance.min(axis=1) < 1.5).all()


def test_cell_bodies_are_rings_that_never_overlap():
    image = _discs((60, 80), [(15.0, 12.0), (15.0, 22.0)], [3.0, 3.0])
    nuclei = segment_nuclei(image, pixel_size_um=PIXEL, threshold=500, sigma_um=0)
    bodies = cell_bodies(nuclei, pixel_size_um=PIXEL, ring_um=2.0)
    np.testing.assert_array_equal(bodies[nuclei > 0], nuclei[nuclei > 0])  # nuclei keep their pixels
    for label in (1, 2):
        ring_area = ((bodies == label) & (nuclei == 0)).sum() * 0.25
        # a free 2 µm ring around a 3 µm nucleus is pi*(5²-3²) = 50 µm²; the neighbour takes a share
        assert 30 < ring_area < 52
    assert cell_bodies(nuclei, pixel_size_um=PIXEL, ring_um=0).max() == 2


# -- chunked vs whole-array oracle -------------------------------------------------------------

@pytest.fixture(scope="module")
def cell_scene():
    """A 0.5 µm slide region through a TLS, a tumour edge and debris, rendered in memory."""
    scene = synthetic.make_scene(seed=61, width_um=1000, height_um=760, pixel_size_um=0.5, tls_counts=(1, 1, 0),
                                 tls_radius_um=(60, 75), extra_channels=("CD8",))
    return scene, synthetic.render(scene).compute()


def _plan(scene, image, n_tls=2, keep_table=True, **overrides):
    names = list(scene.channel_names)
    dapi = image[names.index("DAPI")]
    from skimage.filters import threshold_otsu

    values = dict(markers=("CD20", "CD3", "TFE3", "CD8"), compartments=("ring", "ring", "nucleus", "cell"),
                  thresholds=(800.0, 800.0, 800.0, 800.0), nuclear_threshold=float(threshold_otsu(dapi[::3, ::3])),
                  pixel_size_um=(0.5, 0.5), sigma_um=0.3, min_distance_um=2.0, min_area_um2=8.0, max_area_um2=250.0,
                  ring_um=2.0, fine_factor=4, coarse_factor=16, n_tls=n_tls, keep_table=keep_table)
    values.update(overrides)
    return CellPlan(**values)


def _masks(shape, plan):
    f, c = plan.fine_factor, plan.coarse_factor
    fine = (-(-shape[0] // f), -(-shape[1] // f))
    coarse = (-(-shape[0] // c), -(-shape[1] // c))
    tissue = np.ones(coarse, bool)
    tumour = np.zeros(coarse, bool)
    tumour[: coarse[0] // 2] = True
    tls = np.zeros(fine, np.int32)
    tls[100:180, 100:200] = 1
    tls[250:300, 300:420] = 2
    debris = np.zeros(fine, bool)
    debris[185:200, 220:250] = True  # mid-tissue, clear of the TLS boxes
    margin = np.zeros(coarse, bool)
    margin[coarse[0] // 2: coarse[0] // 2 + 4] = True  # a band below the tumour half
    return dict(tissue=tissue, tumour=tumour, debris=debris, tls_labels=tls, margin=margin)


def _run(scene, image, chunks, plan, **kwargs):
    names = list(scene.channel_names)
    lazy = da.from_array(image, chunks=(1, *chunks))
    masks = _masks(image.shape[1:], plan)
    return compute_cells(lazy[names.index("DAPI")], [lazy[names.index(m)] for m in plan.markers], plan, **masks,
                         **kwargs)


@pytest.fixture(scope="module")
def whole_cells(cell_scene):
    """The oracle: cells of the whole array as one block."""
    scene, image = cell_scene
    return _run(scene, image, image.shape[1:], _plan(scene, image), scheduler="sync")


@pytest.mark.slow
def test_chunked_cells_equal_the_whole_array(cell_scene, whole_cells, process_pool):
    scene, image = cell_scene
    plan = _plan(scene, image)
    whole = whole_cells
    table = whole.table
    assert whole.total == len(table) > 3000
    # cells cut by the chunk edges below: their nuclei straddle a boundary
    radius_px = np.sqrt(table["nucleus_area_um2"] / np.pi) / 0.5
    for step in (256, 300, 512):
        x_px = table["centroid_x_um"] / 0.5
        offset = np.abs(x_px - np.round(x_px / step) * step)
        assert ((offset < radius_px) & (x_px > step / 2)).sum() > 20
    for chunks, options in (((256, 256), {"scheduler": "threads", "num_workers": 2}),
                            ((300, 410), {"scheduler": "sync"}),
                            ((512, 512), {"scheduler": "processes", "num_workers": 2})):
        with dask.config.set(pool=process_pool if options["scheduler"] == "processes" else None):
            chunked = _run(scene, image, chunks, plan, **options)
        pd.testing.assert_frame_equal(chunked.table, table, check_exact=True)
        np.testing.assert_array_equal(chunked.counts, whole.counts)
        np.testing.assert_array_equal(chunked.tls_counts, whole.tls_counts)
        assert (chunked.in_artefacts, chunked.excluded_outside_tissue) == (whole.in_artefacts, 0)
        assert chunked.nucleus_area_um2 == whole.nucleus_area_um2


def test_block_counts_agree_with_the_cell_table(cell_scene):
    scene, image = cell_scene
    plan = _plan(scene, image)
    cells = _run(scene, image, (384, 384), plan, scheduler="sync")
    table = cells.table
    positive = table[[f"{m}_positive" for m in plan.markers]].to_numpy()
    np.testing.assert_array_equal(cells.counts[0], [len(table), *positive.sum(0)])
    # cells in artefact zones are counted, but left out of the tumour, TLS and marker shares
    artefact = table["in_artefact"].to_numpy()
    assert cells.in_artefacts == artefact.sum() > 0
    row = {name: cells.counts[k] for k, name in enumerate(REGIONS)}
    np.testing.assert_array_equal(row["artefact"], [artefact.sum(), *positive[artefact].sum(0)])
    tumour = table["in_tumour"].to_numpy() & ~artefact
    np.testing.assert_array_equal(row["tumour"], [tumour.sum(), *positive[tumour].sum(0)])
    margin = table["in_margin"].to_numpy() & ~artefact
    assert margin.sum() > 20 and not (margin & tumour).any()
    np.testing.assert_array_equal(row["margin"], [margin.sum(), *positive[margin].sum(0)])
    in_tls = (table["tls_id"].to_numpy() > 0) & ~artefact
    np.testing.assert_array_equal(row["tls"], [in_tls.sum(), *positive[in_tls].sum(0)])
    np.testing.assert_array_equal(cells.scored("all"), [(~artefact).sum(), *positive[~artefact].sum(0)])
    for tls_id in (1, 2):
        assert cells.tls_counts[tls_id, 0] == ((table["tls_id"] == tls_id) & ~artefact).sum()
    # compartments: nucleus for TFE3, ring for CD20, nucleus + ring for CD8
    assert table["TFE3_positive"].equals(table["TFE3_nucleus"] > 800)
    assert (table["cell_id"].to_numpy() == np.arange(1, len(table) + 1)).all()
    assert table["centroid_y_um"].is_monotonic_increasing


def test_only_counts_come_back_without_a_table(cell_scene, whole_cells):
    scene, image = cell_scene
    counts_only = _run(scene, image, (512, 512), _plan(scene, image, keep_table=False), scheduler="sync")
    assert counts_only.table is None and whole_cells.table is not None
    np.testing.assert_array_equal(counts_only.counts, whole_cells.counts)
    np.testing.assert_array_equal(counts_only.tls_counts, whole_cells.tls_counts)


def test_halo_covers_the_largest_nucleus_and_its_ring():
    plan = _plan(synthetic.make_scene(seed=1, width_um=400, height_um=300), np.zeros((6, 10, 10), np.uint16),
                 nuclear_threshold=1.0)
    assert plan.halo_px * 0.5 >= 2 * np.sqrt(plan.max_area_um2 / np.pi) + plan.ring_um


# -- whole slides with known cells ----------------------------------------------------------------

CASES = {
    "uint16-0.5um-ometiff": (dict(seed=71, pixel_size_um=0.5, dtype="uint16", extra_channels=("CD8", "CD68")), ".ome.tiff"),
    "float32-1um-qptiff-shuffled": (dict(seed=72, pixel_size_um=1.0, dtype="float32", shuffle_channels=True,
                                         extra_channels=("CD8", "Autofluorescence"), noise=1.5), ".qptiff"),
    "uint8-0.65um-zarr": (dict(seed=73, pixel_size_um=0.65, dtype="uint8", noise=0.7), ".ome.zarr"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def slide_with_cells(request, tmp_path_factory):
    kwargs, suffix = CASES[request.param]
    # the smallest section where two TLS fit for every case: about 10 000 cells each
    scene = synthetic.make_scene(**{"width_um": 1400, "height_um": 1050, "tls_counts": (2, 1, 1),
                                    "tls_radius_um": (55, 75), **kwargs})
    folder = tmp_path_factory.mktemp(request.param)
    path, truth_path = synthetic.write_slide(scene, folder / f"slide{suffix}")
    config = load_config(None, ["outputs.cells_table=true", "outputs.qc_png=false"])  # pictures: test_pipeline
    slide = open_slide(path)
    result = analyze_slide(slide, config)
    write_slide_outputs(result, folder / "out", slide=slide)
    return result, json.loads(truth_path.read_text()), folder / "out", scene


@pytest.mark.slow
def test_cell_counts_and_percentages_match_the_truth(slide_with_cells):
    result, truth, _, _ = slide_with_cells
    summary, cells = result.summary, truth["cells"]
    assert summary["cells"]["total"] == pytest.approx(cells["total"], rel=0.10)
    assert summary["cd20_pct"] == pytest.approx(cells["cd20_pct"], rel=0.15)
    for channel, marker, key in (("CD3", "cd3_positive", "cd3_pct"), ("CD8", "cd8_positive", "cd8_pct"),
                                 ("CD68", "cd68_positive", "cd68_pct")):
        assert (key in summary) == (channel in truth["channel_names"]), key  # every marker of the slide is scored
        if key in summary:
            assert summary[key] == pytest.approx(100 * cells[marker] / cells["total"], rel=0.15)
    # TFE3 is nuclear: its positive share is the tumour-cell share
    assert summary["tfe3_pct"] == pytest.approx(100 * cells["tumour_cells"] / cells["total"], rel=0.15)
    assert summary["cells"]["in_tumour"] == pytest.approx(cells["in_tumour"], rel=0.15)
    assert summary["tfe3_pct_tumour"] > 60 > summary["tfe3_pct_tls"]
    assert summary["cd20_pct_tls"] > 70  # follicles are B-cell zones
    assert 20 < summary["cells"]["mean_nucleus_area_um2"] < 40  # nuclei of 2.6-3.5 µm radius


@pytest.mark.slow
def test_tls_rows_carry_their_cells(slide_with_cells):
    result, truth, _, _ = slide_with_cells
    tls = result.tls
    assert len(tls) == len(truth["tls"]) >= 2
    for row in tls.itertuples():
        # about one nucleus per 36 µm² of follicle, 85 % of them B cells
        assert row.cell_count == pytest.approx(row.area_um2 / 36.0, rel=0.35)
        assert 70 < row.b_cell_pct <= 100 and row.t_cell_pct < 30
    assert tls["cell_count"].sum() <= result.summary["cells"]["in_tls"]


@pytest.mark.slow
def test_cell_table_file_matches_the_summary(slide_with_cells):
    result, _, out, scene = slide_with_cells
    with gzip.open(out / "cells.csv.gz", "rt") as handle:
        table = pd.read_csv(handle)
    summary = json.loads((out / "summary.json").read_text())
    assert "cells.csv.gz" in summary["outputs"]
    assert len(table) == summary["cells"]["total"]
    assert list(table.columns[:9]) == ["cell_id", "centroid_x_um", "centroid_y_um", "nucleus_area_um2",
                                       "cell_area_um2", "in_tumour", "in_margin", "tls_id", "in_artefact"]
    assert table["in_artefact"].sum() == summary["cells"]["in_artefacts"]
    scored = table[~table["in_artefact"]]
    assert scored["CD20_positive"].mean() * 100 == pytest.approx(summary["cd20_pct"], abs=1e-9)
    assert table["centroid_x_um"].max() <= scene.width_px * scene.pixel_size_x_um
    np.testing.assert_allclose(table["centroid_x_um"], result.cells["centroid_x_um"], rtol=1e-7, atol=0.01)
    markers = summary["segmentation"]["cells"]["markers"]
    assert "DAPI" not in markers and "Autofluorescence" not in markers
    assert markers["TFE3"]["compartment"] == "nucleus" and markers["CD20"]["compartment"] == "ring"
    row = flatten_summary(summary)
    assert {"cells_total", "cells_in_tls", "cd20_pct", "cd20_pct_tumour", "cd20_pct_tls"} <= set(row)
    # densities per region: positive cells of the region's table rows over the region's area
    for region, column in (("tumour", "in_tumour"), ("margin", "in_margin"), ("tls", "tls_id")):
        inside = scored[scored[column].astype(bool)]
        assert summary["cells"][f"in_{region}"] == len(inside)
        area = {"tumour": summary["tumour_area_mm2"], "margin": summary["margin_area_mm2"],
                "tls": summary["tls_total_area_um2"] / 1e6}[region]
        assert summary[f"cd20_per_mm2_{region}"] == pytest.approx(inside["CD20_positive"].sum() / area, rel=1e-5)
        assert summary["cells"][f"per_mm2_{region}"] == pytest.approx(len(inside) / area, rel=1e-5)  # areas rounded
    assert summary["margin_area_mm2"] > 0 and summary["cells"]["in_margin"] > 0


@pytest.mark.slow
def test_chunk_size_does_not_change_cells(tmp_path):
    # 1 µm pixels, the coarsest that still gets cells: every chunk size below cuts the slide and its nuclei
    scene = synthetic.make_scene(seed=74, width_um=1200, height_um=900, pixel_size_um=1.0, tls_counts=(1, 1, 0),
                                 tls_radius_um=(55, 70))
    path, _ = synthetic.write_slide(scene, tmp_path / "inv.ome.tiff", tile=128)
    config = load_config(None, ["outputs.cells_table=true"])
    runs = [analyze_slide(open_slide(path, chunk_size=chunk), config, scheduler="threads", num_workers=2)
            for chunk in (256, 640, 1024)]
    for run in runs[1:]:
        pd.testing.assert_frame_equal(run.cells, runs[0].cells, check_exact=True)
        pd.testing.assert_frame_equal(run.tls, runs[0].tls, check_exact=True)
        for key in ("cells", "cd20_pct", "cd3_pct_tumour", "tfe3_pct_tls"):
            assert run.summary[key] == runs[0].summary[key]


# -- configuration -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fine_slide(tmp_path_factory):
    scene = synthetic.make_scene(seed=75, width_um=1000, height_um=750, pixel_size_um=1.0, tls_counts=(1, 0, 0),
                                 tls_radius_um=(55, 65), extra_channels=("CD8",))
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("fine") / "fine.ome.tiff")
    return path


def test_markers_compartments_and_threshold_overrides(fine_slide):
    config = load_config(None, ['cells.markers=["cd20", "CD8"]', 'cells.whole_cell_markers=["CD8"]',
                                'thresholds.markers.CD8={method="fixed", value=1e9}'])
    result = analyze_slide(fine_slide, config)
    markers = result.summary["segmentation"]["cells"]["markers"]
    assert list(markers) == ["CD20", "CD8"]
    assert {k: markers["CD8"][k] for k in ("key", "compartment", "method", "value")} == {
        "key": "cd8", "compartment": "cell", "method": "fixed", "value": 1e9}
    assert result.summary["cd8_pct"] == 0.0 and result.summary["cd20_pct"] > 0
    assert "cd3_pct" not in result.summary and result.tls["t_cell_pct"].isna().all()
    # a name rule reaches the pixel threshold of the channel's role too: one threshold per channel
    config = load_config(None, ['thresholds.markers.CD20={method="fixed", value=1e9}'])
    result = analyze_slide(fine_slide, config)
    assert result.summary["thresholds"]["b_cells"]["value"] == 1e9 and result.summary["tls_count"] == 0


def test_unknown_cell_marker_is_a_clear_error(fine_slide):
    with pytest.raises(ChannelError, match=r"cells.markers names 'PD-1' but the slide has no such channel; channels present: DAPI"):
        analyze_slide(fine_slide, load_config(None, ['cells.markers=["CD20", "PD-1"]']))
    with pytest.raises(ConfigError, match=r"cells.min_area_um2 \(300.0\) must be below cells.max_area_um2"):
        load_config(None, ["cells.min_area_um2=300"])
    with pytest.raises(ConfigError, match=r"thresholds.markers.CD8.method must be one of"):
        load_config(None, ['thresholds.markers.CD8={method="magic"}'])


def test_coarse_or_disabled_slides_skip_cells_and_say_why(fine_slide):
    coarse = analyze_slide(fine_slide, load_config(None, ["cells.max_pixel_size_um=0.5"]))
    assert coarse.summary["segmentation"]["cells"]["measured"] is False
    assert any("cells not measured: pixel size 1 µm" in w for w in coarse.warnings)
    assert "cells" not in coarse.summary and "cd20_pct" not in coarse.summary
    assert coarse.tls["cell_count"].isna().all()
    disabled = analyze_slide(fine_slide, load_config(None, ["cells.enabled=false"]))
    assert disabled.summary["segmentation"]["cells"] == {"measured": False, "reason": "cells.enabled is false"}
    assert not any("cells not measured" in w for w in disabled.warnings)


def test_marker_keys_are_column_safe():
    assert [marker_key(n) for n in ("CD20", "MUM-1", "PD-L1", "FoxP3", "Opal 570")] == \
        ["cd20", "mum1", "pdl1", "foxp3", "opal570"]


@pytest.mark.slow
def test_cell_metrics_reach_the_cohort_and_the_comparison(tmp_path, dask_client):
    from tlsquant.cli import main

    rows = []
    for k in range(4):
        good = k < 2
        # 1.2 x 0.9 mm: one TLS fits in each good slide, enough to lift its CD20 share clear of the poor ones;
        # the poor ones, with no TLS to fit, are smaller
        width_um, height_um = (1200, 900) if good else (900, 675)
        scene = synthetic.make_scene(seed=80 + k, width_um=width_um, height_um=height_um, pixel_size_um=1.0,
                                     tls_counts=(2, 1, 0) if good else (0, 0, 0), tls_radius_um=(60, 80),
                                     n_infiltrates=0, n_aggregates=0)
        path, truth_path = synthetic.write_slide(scene, tmp_path / f"case{k}.ome.tiff")
        assert (json.loads(truth_path.read_text())["tls_count"] > 0) == good
        rows.append({"slide_id": f"case{k}", "path": path.name, "response": "good" if good else "poor"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    # on the shared cluster, without the QC pictures: cluster start-up and pictures are tested in test_batch
    assert main(["batch", str(tmp_path / "manifest.csv"), "-o", str(tmp_path / "out"), "--scheduler",
                 dask_client.scheduler.address, "--set", "outputs.qc_png=false", "-q"]) == 0
    cohort = pd.read_csv(tmp_path / "out" / "cohort.csv")
    for row in cohort.itertuples():
        summary = json.loads((tmp_path / "out" / "slides" / row.slide_id / "summary.json").read_text())
        assert row.cd20_pct == pytest.approx(summary["cd20_pct"]) and row.cells_total == summary["cells"]["total"]
    good, poor = cohort[cohort.response == "good"], cohort[cohort.response == "poor"]
    assert good.cd20_pct.min() > poor.cd20_pct.max()  # follicles full of B cells
    assert main(["compare", str(tmp_path / "out" / "cohort.csv"), "--group", "response", "--groups", "good,poor",
                 "--metrics", "cd20_pct,cd20_pct_tumour", "-o", str(tmp_path / "stats")]) == 0
    stats = pd.read_csv(tmp_path / "stats" / "stats.csv")
    row = stats.set_index("metric").loc["cd20_pct"]
    assert row.p == pytest.approx(1 / 3) and row.method == "exact" and row.median_a > row.median_b


def test_compiled_and_numpy_cell_sums_agree(monkeypatch, rng):
    pytest.importorskip("numba")
    import tlsquant.cells as cells

    image = _discs((90, 90), [(10.0, 10.0), (10.0, 16.0), (30.0, 12.0), (28.0, 33.0)], [3.0, 2.6, 3.4, 4.0])
    nuclei = segment_nuclei(image, pixel_size_um=PIXEL, threshold=500, sigma_um=0)
    bodies = cell_bodies(nuclei, pixel_size_um=PIXEL, ring_um=2.0)
    n = int(nuclei.max())
    for values in ((rng.random(nuclei.shape) * 1000).astype(np.uint16), rng.random(nuclei.shape).astype(np.float32)):
        compiled = cells._cell_sums(nuclei, bodies, n, (7, 11)), cells._marker_sums(nuclei, bodies, values, n)
        with monkeypatch.context() as patch:
            patch.setattr(cells, "_compiled", lambda loops: None)
            plain = cells._cell_sums(nuclei, bodies, n, (7, 11)), cells._marker_sums(nuclei, bodies, values, n)
        for got, want in zip((*compiled[0], *compiled[1]), (*plain[0], *plain[1])):
            np.testing.assert_array_equal(got, want)
