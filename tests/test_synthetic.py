"""The synthetic slide generator: deterministic pixels and self-consistent truth."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from tlsquant import open_slide, synthetic


@pytest.mark.slow
def test_same_seed_same_scene_and_pixels(small_scene):
    again = synthetic.make_scene(
        seed=11, width_um=1600, height_um=1200, pixel_size_um=2.0, tls_counts=(2, 1, 0),
        tls_radius_um=(45, 80), dtype="uint16",
    )
    assert again == small_scene
    whole = synthetic.render(small_scene).compute(scheduler="threads")
    np.testing.assert_array_equal(whole, synthetic.render(again).compute(scheduler="sync"))
    # any sub-block renders exactly what the whole image holds there
    part = synthetic.render_block(small_scene, 530, 600, 100, 250)
    np.testing.assert_array_equal(part, whole[:, 530:600, 100:250])
    other = synthetic.make_scene(seed=12, width_um=1600, height_um=1200, pixel_size_um=2.0)
    assert other != small_scene


def test_truth_geometry_is_consistent(small_scene):
    truth = synthetic.truth(small_scene)
    px = small_scene.pixel_size_x_um
    ys, xs = np.mgrid[0 : small_scene.height_px, 0 : small_scene.width_px]
    inside = small_scene.tumour.contains((xs + 0.5) * px, (ys + 0.5) * px)
    assert truth["tumour_area_mm2"] == pytest.approx(inside.sum() * px * px / 1e6, rel=0.01)
    assert 0 < truth["tumour_area_mm2"] < truth["tissue_area_mm2"]
    for row in truth["tls"]:
        inside_tumour = bool(small_scene.tumour.contains(row["centroid_x_um"], row["centroid_y_um"]))
        assert inside_tumour == (row["location"] == "intratumoral")
        if row["location"] == "peritumoral":
            assert row["distance_to_tumour_border_um"] < small_scene.margin_um
        if row["location"] == "distal":
            assert row["distance_to_tumour_border_um"] > small_scene.margin_um
        assert row["stage"] == ("mature" if row["silina_stage"] == "secondary_follicle" else "primary")
    counted = [r for r in truth["tls"] if r["counted"]]
    assert truth["tls_density_per_mm2"] == pytest.approx(len(counted) / truth["tumour_area_mm2"])
    assert all(a["area_um2"] < 2500 for a in truth["decoys"]["small_aggregates"])
    assert truth["cells"]["total"] > truth["cells"]["cd20_positive"] > 0


def test_blob_area_and_centroid_match_a_raster():
    blob = synthetic.Blob(500.0, 400.0, 120.0, 90.0, ((2, 0.1, 0.3), (3, 0.05, 1.0)))
    ys, xs = np.mgrid[0:800, 0:1000] + 0.5
    mask = blob.contains(xs, ys)
    assert blob.area_um2() == pytest.approx(mask.sum(), rel=0.005)
    cx, cy = blob.centroid_um()
    assert cx == pytest.approx(xs[mask].mean(), abs=0.3)
    assert cy == pytest.approx(ys[mask].mean(), abs=0.3)


def test_blob_tests_over_many_points_match_the_plain_formula():
    """contains() and _depth_um() settle most points of a region from bounds alone: never differently."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        harmonics = tuple((int(rng.integers(1, 7)), float(rng.uniform(-0.1, 0.1)), float(rng.uniform(0, 7)))
                          for _ in range(rng.integers(0, 5)))
        blob = synthetic.Blob(*rng.uniform(0, 500, 2), *rng.uniform(5, 400, 2), harmonics)
        theta = rng.uniform(-np.pi, np.pi, 4000)  # on and near the outline, then a grid around it
        scale = blob.relative_radius(theta) * (1 + rng.choice([0, 1e-15, -1e-15, 1e-9, -1e-9, 1e-3, -0.03], theta.size))
        points = [(blob.x_um + blob.radius_x_um * scale * np.cos(theta), blob.y_um + blob.radius_y_um * scale * np.sin(theta)),
                  (np.linspace(*blob.bbox_um(60)[::2], 90)[None, :], np.linspace(*blob.bbox_um(60)[1::2], 70)[:, None])]
        for x, y in points:
            u = (np.asarray(x, dtype=np.float64) - blob.x_um) / blob.radius_x_um
            v = (np.asarray(y, dtype=np.float64) - blob.y_um) / blob.radius_y_um
            rho, radius = np.hypot(u, v), blob.relative_radius(np.arctan2(v, u))
            for grow_um in (0.0, -20.0, 35.0):
                plain = rho <= radius + grow_um / min(blob.radius_x_um, blob.radius_y_um)
                np.testing.assert_array_equal(blob.contains(x, y, grow_um=grow_um), plain)
            depth = synthetic._depth_um(blob, x, y)
            for edge_um, grow_um in ((4.0, 0.0), (4.0, 25.0), (2.0, -10.0)):
                plain = 1.0 / (1.0 + np.exp(-np.clip((depth + grow_um) / edge_um, -30, 30)))
                np.testing.assert_array_equal(synthetic._soft_inside(blob, x, y, grow_um=grow_um, edge_um=edge_um), plain)


def _stamp_by_sorting(cells, scene, y0, x0, shape):
    """The straightforward nearest-cell stamp: every (pixel, cell) pair sorted by pixel, distance, cell."""
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    n = len(cells)
    reach = float(cells.radius_um.max()) + synthetic.MEMBRANE_UM
    oy, ox = np.mgrid[-math.ceil(reach / py) : math.ceil(reach / py) + 1, -math.ceil(reach / px) : math.ceil(reach / px) + 1]
    cy, cx = cells.y_um / py - 0.5 - y0, cells.x_um / px - 0.5 - x0
    iy = np.rint(cy)[:, None].astype(np.int64) + oy.ravel()[None, :]
    ix = np.rint(cx)[:, None].astype(np.int64) + ox.ravel()[None, :]
    dist = np.hypot((iy - cy[:, None]) * py, (ix - cx[:, None]) * px)
    ok = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1]) & (dist <= cells.radius_um[:, None] + synthetic.MEMBRANE_UM)
    index = np.broadcast_to(np.arange(n)[:, None], ok.shape)[ok]
    flat, dist = (iy * shape[1] + ix)[ok], dist[ok]
    order = np.lexsort((index, dist, flat))
    flat, index, dist = flat[order], index[order], dist[order]
    first = np.r_[True, flat[1:] != flat[:-1]]
    label = np.full(shape[0] * shape[1], 2 * n)
    label[flat[first]] = index[first] + n * (dist[first] > cells.radius_um[index[first]])
    return label.reshape(shape)


@pytest.mark.parametrize("pixel_size", [(0.5, 0.5), (0.65, 1.0), (2.0, 2.0)])
def test_cells_are_stamped_nearest_first_ties_to_the_lower_index(pixel_size):
    scene = synthetic.make_scene(seed=9, width_um=500, height_um=400, pixel_size_um=pixel_size[0],
                                 pixel_size_y_um=pixel_size[1], tls_counts=(1, 0, 0), tls_radius_um=(60, 60))
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    h, w = scene.height_px, scene.width_px
    for y0, y1, x0, x1 in [(0, h, 0, w), (h // 3, h // 3 + 153, w // 2, w // 2 + 66)]:
        cells = synthetic._cells_in(scene, x0 * px - 12, y0 * py - 12, x1 * px + 12, y1 * py + 12)
        assert len(cells) > 20
        np.testing.assert_array_equal(synthetic._stamp(cells, scene, y0, x0, (y1 - y0, x1 - x0)),
                                      _stamp_by_sorting(cells, scene, y0, x0, (y1 - y0, x1 - x0)))
    # two cells of neighbouring lattice sites, 2.5 µm apart: the pixel centred halfway goes to the first listed
    fine = replace(scene, pixel_size_x_um=0.5, pixel_size_y_um=0.5)
    for xs in ([5.0, 7.5], [7.5, 5.0]):
        cells = synthetic.Cells(np.array(xs), np.array([3.0, 3.0]), np.array([3.0, 3.0]), np.zeros(2, np.int8),
                                *np.zeros((3, 2), bool), np.ones(2))
        label = synthetic._stamp(cells, fine, 0, 0, (12, 24))
        assert label[5, 12] == 0  # pixel centre (6.25, 2.75)
        np.testing.assert_array_equal(label, _stamp_by_sorting(cells, fine, 0, 0, (12, 24)))


def test_rendered_markers_sit_where_the_truth_says(small_scene):
    image = synthetic.render(small_scene).compute().astype(np.float32)
    names = small_scene.channel_names
    px = small_scene.pixel_size_x_um
    ys, xs = (np.mgrid[0 : small_scene.height_px, 0 : small_scene.width_px] + 0.5) * px
    tls_mask = np.zeros(xs.shape, bool)
    for item in small_scene.tls:
        tls_mask |= item.zone.contains(xs, ys)
    tissue = small_scene.tissue.contains(xs, ys)
    debris = np.zeros(xs.shape, bool)
    for blob in small_scene.debris:
        debris |= blob.contains(xs, ys)
    cd20 = image[names.index("CD20")]
    assert cd20[tls_mask & ~debris].mean() > 4 * cd20[tissue & ~tls_mask & ~debris].mean()
    tfe3 = image[names.index("TFE3")]
    tumour = small_scene.tumour.contains(xs, ys)
    assert tfe3[tumour & ~tls_mask & ~debris].mean() > 3 * tfe3[tissue & ~tumour & ~debris].mean()
    cd23 = image[names.index("CD23")]
    for item in small_scene.tls:
        core = item.zone.normalised_radius(xs, ys) < 0.4
        core &= ~debris
        if item.stage == "mature":
            assert cd23[core].mean() > 3 * cd23[tissue & ~tls_mask & ~debris].mean()
        else:
            assert cd23[core].mean() < 1.6 * cd23[tissue & ~tls_mask & ~debris].mean()
    for c in range(len(names)):  # debris is bright in every channel
        assert image[c][debris].mean() > 2 * image[c][tissue & ~debris].mean()


@pytest.mark.parametrize("suffix", [".ome.tiff", ".qptiff", ".ome.zarr"])
def test_write_slide_round_trips_with_truth(tmp_path, suffix):
    scene = synthetic.make_scene(seed=2, width_um=1200, height_um=900, pixel_size_um=2.5, dtype="float32",
                                 tls_counts=(1, 1, 0), tls_radius_um=(45, 60), shuffle_channels=True,
                                 extra_channels=("CD8",))
    slide_path, truth_path = synthetic.write_slide(scene, tmp_path / f"s{suffix}", pyramid_min_size=64)
    slide = open_slide(slide_path)
    assert slide.channel_names == scene.channel_names
    assert slide.pixel_size_um == pytest.approx(2.5)
    assert slide.shape == scene.shape
    np.testing.assert_array_equal(slide.levels[0].data.compute(), synthetic.render(scene).compute())
    truth = json.loads(truth_path.read_text())
    assert truth["channel_names"] == list(scene.channel_names)
    assert truth_path.name == "s.truth.json"


def test_unknown_output_suffix_is_refused(tmp_path, small_scene):
    with pytest.raises(ValueError, match="cannot tell the format"):
        synthetic.write_slide(small_scene, tmp_path / "s.png")


# -- realistic mode -----------------------------------------------------------------------------

REALISTIC = dict(seed=5, width_um=1000, height_um=750, tls_counts=(1, 1, 0), tls_radius_um=(45, 65),
                 extra_channels=("Autofluorescence",))
FLOAT_SCALE = synthetic.DTYPE_SCALE["float32"]
PEAK = synthetic.POSITIVE_PEAK * FLOAT_SCALE


@pytest.fixture(scope="module")
def base_scene():
    """A clean, noise-free float32 layout; each phenomenon is rendered on it alone."""
    return synthetic.make_scene(**REALISTIC, dtype="float32", noise=0.0)


@pytest.fixture(scope="module")
def rendered(base_scene):
    cache = {}

    def get(realism):
        if realism not in cache:
            scene = synthetic.with_realism(base_scene, realism)
            cache[realism] = scene, synthetic.render(scene).compute()
        return cache[realism]

    return get


@pytest.fixture(scope="module")
def grid(base_scene):
    ys, xs = np.mgrid[0 : base_scene.height_px, 0 : base_scene.width_px] + 0.5
    tissue = base_scene.tissue.contains(xs, ys)
    return xs, ys, tissue


def _difference(rendered, *names):
    scene, image = rendered(synthetic.Realism.only(*names))
    return scene, image, image - rendered(synthetic.Realism.off())[1]


@pytest.mark.slow
def test_realism_keeps_the_section_and_its_truth():
    clean = synthetic.make_scene(**REALISTIC)
    real = synthetic.make_scene(**REALISTIC, realism=synthetic.Realism())
    assert real.artefacts.vessels and real.artefacts.folds and real.artefacts.blur_patches and real.artefacts.debris
    assert synthetic.with_realism(real, None) == clean
    clean_truth, real_truth = synthetic.truth(clean), synthetic.truth(real)
    added = {"realism", "artefacts", "artefact_area_mm2"}
    assert set(real_truth) - set(clean_truth) == added
    assert {k: v for k, v in real_truth.items() if k not in added} == clean_truth
    json.dumps(real_truth)  # JSON-ready
    gains = real_truth["realism"]["stain_gain"]
    assert all(0.5 <= g <= 2.0 for g in gains.values()) and gains["Autofluorescence"] == 1.0
    assert len(set(gains.values())) == len(gains)  # drawn per channel
    crosstalk = real_truth["realism"]["crosstalk"]
    assert crosstalk["CD23"]["CD21"] == pytest.approx(0.08) and crosstalk["CD20"]["TFE3"] == pytest.approx(0.08)
    kinds = {row["kind"] for row in real_truth["artefacts"]}
    assert kinds == {"rbc", "fold", "blur", "debris"}
    for kind, area_mm2 in real_truth["artefact_area_mm2"].items():
        rows = [row for row in real_truth["artefacts"] if row["kind"] == kind]
        assert area_mm2 == pytest.approx(sum(row["area_um2"] for row in rows) / 1e6)
        assert all(row["area_um2"] > 0 and len(row["bbox"]) == 4 for row in rows)
    fold = real.artefacts.folds[0]
    fold_row = next(row for row in real_truth["artefacts"] if row["kind"] == "fold")
    assert fold_row["area_um2"] <= math.hypot(fold.x1_um - fold.x0_um, fold.y1_um - fold.y0_um) * fold.width_um + math.pi * fold.width_um**2 / 4
    # stain gains follow the channel name, not its position
    shuffled = synthetic.truth(synthetic.make_scene(**REALISTIC, shuffle_channels=True, realism=synthetic.Realism()))
    assert shuffled["realism"]["stain_gain"] == gains


def test_realism_settings_are_checked_and_parsed():
    assert synthetic.Realism.default() == synthetic.Realism()
    only = synthetic.Realism.only("rbc", "folds", strength=2)
    assert (only.rbc, only.folds, only.blur) == (2.0, 2.0, 0.0)
    assert synthetic.Realism.parse("all=0,blur=1.5") == synthetic.Realism.only("blur", strength=1.5)
    assert synthetic.Realism.parse("folds=0").folds == 0 and synthetic.Realism.parse("folds=0").rbc == 1
    with pytest.raises(ValueError, match="folds"):
        synthetic.Realism(folds=-1)
    with pytest.raises(ValueError, match="NAME=STRENGTH"):
        synthetic.Realism.parse("fog=1")
    with pytest.raises(ValueError, match="phenomena"):
        synthetic.Realism.only("fog")
    hash(synthetic.Realism())


@pytest.mark.parametrize("dtype", ["uint16", "uint8"])
def test_realistic_blocks_equal_the_whole(dtype):
    scene = synthetic.make_scene(**REALISTIC, dtype=dtype, realism=synthetic.Realism())
    whole = synthetic.render(scene).compute()
    assert whole.dtype == np.dtype(dtype)
    artefacts = scene.artefacts
    zone = artefacts.blur_patches[0].zone
    xd, yd = artefacts.vessels[0].discs_um()
    fold = artefacts.folds[0]
    points = [
        (zone.x_um + zone.radius_x_um * zone.relative_radius(np.array([0.0]))[0], zone.y_um),  # blur outline
        ((fold.x0_um + fold.x1_um) / 2, (fold.y0_um + fold.y1_um) / 2),
        (xd[len(xd) // 2], yd[len(yd) // 2]),
        (artefacts.debris[0].x_um, artefacts.debris[0].y_um),
    ]
    block = synthetic.RENDER_BLOCK
    for x_um, y_um in points:
        x, y = int(x_um), int(y_um)
        y0 = max(y // block * block, min(y - 30, scene.height_px - 70))
        x0 = max(x // block * block, min(x - 40, scene.width_px - 90))
        y1, x1 = min(y0 + 70, (y0 // block + 1) * block), min(x0 + 90, (x0 // block + 1) * block)
        part = synthetic.render_block(scene, y0, y1, x0, x1)
        np.testing.assert_array_equal(part, whole[:, y0:y1, x0:x1])


def test_realism_off_renders_like_the_clean_scene(base_scene, rendered):
    clean = synthetic.render(base_scene).compute()
    np.testing.assert_allclose(rendered(synthetic.Realism.off())[1], clean, atol=1e-4)


def test_autofluorescence_follows_the_emission_band_and_the_stroma(base_scene, rendered, grid):
    xs, ys, tissue = grid
    _, image, diff = _difference(rendered, "autofluorescence")
    names = base_scene.channel_names
    level = {name: np.median(diff[names.index(name)][tissue]) / PEAK for name in names}
    assert 0.2 < level["TFE3"] < 0.6 and 0.2 < level["CD20"] < 0.6  # Opal 480-570: strongest
    assert level["CD23"] < 0.15 and level["CD21"] < 0.2 and level["DAPI"] < 0.2  # far red and DAPI: weaker
    assert level["Autofluorescence"] > 0.6
    glass = image[:, ~tissue].mean(axis=1)
    assert np.all(np.median(image[:, tissue], axis=1) > glass)
    # stroma against tumour bed in bands either side of the tumour border (the slow variation is about equal there)
    lymphoid = np.zeros_like(tissue)
    for blob in [item.zone for item in base_scene.tls] + list(base_scene.tumour_holes):
        lymphoid |= blob.contains(xs, ys, grow_um=60)
    tumour = base_scene.tumour
    stroma = tumour.contains(xs, ys, grow_um=60) & ~tumour.contains(xs, ys, grow_um=25) & ~lymphoid
    bed = tumour.contains(xs, ys, grow_um=-25) & ~tumour.contains(xs, ys, grow_um=-60) & ~lymphoid
    af = image[names.index("Autofluorescence")]
    assert 1.3 < np.median(af[stroma]) / np.median(af[bed]) < 2.0
    # smooth variation plus fibres: AF is not flat
    assert np.std(af[stroma]) / np.mean(af[stroma]) > 0.08


def test_edge_rim_doubles_the_tissue_edge(base_scene, rendered, grid):
    xs, ys, tissue = grid
    _, image, diff = _difference(rendered, "edge_rim")
    rim = tissue & ~base_scene.tissue.contains(xs, ys, grow_um=-6)
    deep = base_scene.tissue.contains(xs, ys, grow_um=-40)
    off = rendered(synthetic.Realism.off())[1]
    dapi = base_scene.channel_names.index("DAPI")
    no_cells = off[dapi] < np.median(off[dapi][tissue]) * 1.05
    clean_af = 0.035 * FLOAT_SCALE
    assert np.median(diff[dapi][rim & no_cells]) > 0.7 * clean_af
    assert np.abs(diff[:, deep]).max() < 0.05 * clean_af


def test_crosstalk_shows_the_fdc_network_in_cd23(base_scene, rendered, grid):
    xs, ys, tissue = grid
    _, _, diff = _difference(rendered, "crosstalk")
    off = rendered(synthetic.Realism.off())[1]
    names = base_scene.channel_names
    primary = next(item for item in base_scene.tls if item.silina_stage == "primary_follicle")
    core = primary.zone.normalised_radius(xs, ys) < 0.65
    cd21 = off[names.index("CD21")]
    network = core & (cd21 > 0.6 * PEAK)
    cd23 = diff[names.index("CD23")]
    assert cd23[network].mean() > 5 * cd23[core & ~network].mean()
    expected = 0.08 * (cd21[network].mean() - np.median(cd21[core & ~network]))
    assert cd23[network].mean() == pytest.approx(expected, rel=0.3)
    cd20 = diff[names.index("CD20")]  # tumour marker TFE3 into CD20
    tumour = base_scene.tumour.contains(xs, ys, grow_um=-20)
    assert cd20[tumour].mean() > 10 * abs(cd20[tissue & ~base_scene.tumour.contains(xs, ys, grow_um=20)].mean())
    assert not diff[names.index("Autofluorescence")].any()


def test_red_blood_cells_are_bright_in_short_channels_without_dapi(base_scene, rendered, grid):
    xs, ys, tissue = grid
    scene, image, _ = _difference(rendered, "rbc")
    xd, yd = scene.artefacts.vessels[0].discs_um()
    on_cells = np.zeros_like(tissue)
    for cx, cy in zip(xd, yd):
        on_cells |= np.hypot(xs - cx, ys - cy) < 3.0
    names = base_scene.channel_names
    level = {name: np.median(image[names.index(name)][on_cells]) / PEAK for name in names}
    assert level["TFE3"] > 0.8 and level["CD20"] > 0.8 and level["CD3"] > 0.7
    assert level["CD23"] < 0.4 and level["CD21"] < 0.4
    assert level["Autofluorescence"] > 1.2
    off = rendered(synthetic.Realism.off())[1]
    dapi = names.index("DAPI")
    assert level["DAPI"] < 0.2 and np.percentile(image[dapi][on_cells], 95) < np.median(off[dapi][tissue]) * 1.2
    for item in base_scene.tls:  # >= 30 µm from every TLS
        assert not np.any(item.zone.contains(xd, yd, grow_um=item.rim_um + 30))
    row = next(r for r in synthetic.truth(scene)["artefacts"] if r["kind"] == "rbc")
    assert row["area_um2"] == pytest.approx(on_cells.sum() * (3.5 / 3.0) ** 2, rel=0.35)


def test_fold_multiplies_the_tissue_signal(base_scene, rendered, grid):
    xs, ys, tissue = grid
    scene, image, _ = _difference(rendered, "folds")
    off = rendered(synthetic.Realism.off())[1]
    fold = scene.artefacts.folds[0]
    assert 1.5 <= fold.gain <= 2.0 and 60 <= fold.width_um <= 200
    band = (fold.band(xs, ys) == 1) & base_scene.tissue.contains(xs, ys, grow_um=-5)
    dapi = base_scene.channel_names.index("DAPI")
    nuclei = band & (off[dapi] > 0.7 * PEAK)
    ratio = image[:, nuclei] / off[:, nuclei]
    assert np.median(ratio[dapi]) == pytest.approx(fold.gain, rel=0.08)
    assert np.all(np.median(ratio, axis=1) > 1.25)  # every channel, AF included
    outside = ~fold.contains(xs, ys) | ~tissue
    outside &= fold.band(xs, ys) == 0
    np.testing.assert_array_equal(image[:, outside], off[:, outside])


def test_blur_softens_only_its_patch(base_scene, rendered, grid):
    from scipy import ndimage

    xs, ys, tissue = grid
    scene, image, _ = _difference(rendered, "blur")
    off = rendered(synthetic.Realism.off())[1]
    patch = scene.artefacts.blur_patches[0]
    assert 1.5 <= patch.sigma_um <= 3.0
    inside = patch.zone.contains(xs, ys, grow_um=-15) & tissue
    dapi = base_scene.channel_names.index("DAPI")
    sharpness = np.abs(ndimage.laplace(image[dapi]))[inside].mean() / np.abs(ndimage.laplace(off[dapi]))[inside].mean()
    assert sharpness < 0.3
    far = ~patch.zone.contains(xs, ys, grow_um=12)
    np.testing.assert_array_equal(image[:, far], off[:, far])


def test_debris_specks_are_bright_in_every_channel(base_scene, rendered, grid):
    _, _, tissue = grid
    scene, image, _ = _difference(rendered, "debris")
    off = rendered(synthetic.Realism.off())[1]
    for speck in scene.artefacts.debris:
        centre = image[:, int(speck.y_um), int(speck.x_um)]
        assert np.all(centre > 3 * PEAK)
        assert np.all(centre > 5 * np.median(off[:, tissue], axis=1))


def test_stain_gain_scales_specific_signal_only(base_scene, rendered, grid):
    _, _, tissue = grid
    scene, image, _ = _difference(rendered, "stain_gain")
    off = rendered(synthetic.Realism.off())[1]
    gains = synthetic.truth(scene)["realism"]["stain_gain"]
    names = base_scene.channel_names
    assert gains["Autofluorescence"] == 1.0
    np.testing.assert_array_equal(image[names.index("Autofluorescence")], off[names.index("Autofluorescence")])
    for c, name in enumerate(names):
        if gains[name] > 1:
            assert np.all(image[c] >= off[c] - 1e-5)
        else:
            assert np.all(image[c] <= off[c] + 1e-5)
        # pixels of glass and of tissue without this marker keep their value
        plain = off[c] <= np.median(off[c][tissue]) * 1.0001
        np.testing.assert_allclose(image[c][plain], off[c][plain], rtol=1e-5)


@pytest.mark.slow
def test_illumination_and_dark_offset_reach_the_glass(base_scene, rendered, grid):
    _, _, tissue = grid
    off = rendered(synthetic.Realism.off())[1]
    dark = rendered(synthetic.Realism.only("dark_offset"))[1] - off
    np.testing.assert_allclose(dark, synthetic.DARK_OFFSET * FLOAT_SCALE, atol=1e-4)
    lit = rendered(synthetic.Realism.only("illumination"))[1][:, ~tissue] / off[:, ~tissue]
    assert lit.min() < 0.93 and lit.max() > 1.07 and 0.84 < lit.min() and lit.max() < 1.16


def test_cell_brightness_spreads_without_moving_cells(base_scene):
    clean = synthetic.all_cells(base_scene)
    real = synthetic.all_cells(synthetic.with_realism(base_scene, synthetic.Realism.only("cell_brightness")))
    np.testing.assert_array_equal(real.x_um, clean.x_um)
    np.testing.assert_array_equal(real.kind, clean.kind)
    assert np.std(np.log(clean.brightness)) == pytest.approx(0.18, rel=0.1)
    assert np.std(np.log(real.brightness)) == pytest.approx(0.35, rel=0.1)


def test_tissue_scale_leaves_most_of_the_slide_glass():
    scene = synthetic.make_scene(**REALISTIC, tissue_scale=0.7, realism=synthetic.Realism())
    truth = synthetic.truth(scene)
    assert truth["tissue_area_mm2"] < 0.5 * 1000 * 750 / 1e6
    xs, ys = scene.tumour.outline_um(256)
    assert np.all(scene.tissue.contains(xs, ys))
    with pytest.raises(ValueError, match="tissue_scale"):
        synthetic.make_scene(tissue_scale=0)


def test_synth_command_writes_a_realistic_slide(tmp_path):
    from tlsquant import cli

    target = tmp_path / "r.ome.tiff"
    assert cli.main(["synth", str(target), "--size", "0.6x0.45", "--pixel-size", "2", "--realism", "all=0,folds=1",
                     "--tissue-scale", "0.8", "--extra-channels", "Autofluorescence"]) == 0
    truth = json.loads((tmp_path / "r.truth.json").read_text())
    assert truth["realism"]["strengths"]["folds"] == 1.0 and truth["realism"]["strengths"]["rbc"] == 0.0
    assert [row["kind"] for row in truth["artefacts"]] == ["fold"]
    assert cli.main(["synth", str(target), "--realism", "fog=1"]) == 2
