"""The synthetic slide generator: deterministic pixels and self-consistent truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlsquant import open_slide, synthetic


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
