"""Realistic slides (autofluorescence, stain gain, crosstalk, red blood cells, folds, blur): accuracy and invariance."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from tlsquant import analyze_slide, load_config, open_slide, synthetic
from tlsquant.io.writers import build_pyramid
from tlsquant.slide import Level, Slide
from tlsquant.validate import acceptance_misses, match_tls, score

pytestmark = pytest.mark.slow  # every test here analyses realistic slides end to end

NO_CELLS = load_config(None, ["cells.enabled=false"])


def _memory_slide(image: np.ndarray, scene: synthetic.Scene) -> Slide:
    levels = tuple(Level(da.from_array(np.asarray(level), chunks=(1, 512, 512)), 2.0**k, 2.0**k)
                   for k, level in enumerate(build_pyramid(image, min_size=128)))
    return Slide(Path("realistic.ome.tiff"), "ome-tiff", scene.channel_names, scene.pixel_size_x_um,
                 scene.pixel_size_y_um, levels)


@pytest.fixture(scope="module")
def gain_slide():
    scene = synthetic.make_scene(seed=61, width_um=1800, height_um=1350, pixel_size_um=1.0, tls_counts=(2, 2, 1),
                                 tls_radius_um=(55, 90), realism=synthetic.Realism.default())
    image = synthetic.render(scene).compute()
    slide = _memory_slide(image, scene)
    return scene, image, analyze_slide(slide, NO_CELLS), synthetic.truth(scene)


def test_realistic_slide_is_measured_right(gain_slide):
    _, _, result, truth = gain_slide
    scores = score(result.summary, result.tls, truth)
    assert not acceptance_misses(scores), scores
    # artefacts were found and reported, and none of them became a TLS
    assert result.summary["excluded_artefact_area_mm2"] > 0
    bright = [artefact for artefact in truth["artefacts"] if artefact["kind"] in ("rbc", "debris")]
    assert bright
    for artefact in bright:
        distances = np.hypot(result.tls["centroid_x_um"] - artefact["x_um"], result.tls["centroid_y_um"] - artefact["y_um"])
        near_truth = [t for t in truth["tls"] if np.hypot(t["centroid_x_um"] - artefact["x_um"],
                                                          t["centroid_y_um"] - artefact["y_um"]) < 200]
        assert near_truth or (distances > 60).all()


@pytest.mark.parametrize("channel,factor", [("CD20", 0.5), ("CD23", 2.0), ("CD21", 2.0), ("TFE3", 0.5), ("DAPI", 2.0)])
def test_stain_gain_of_one_channel_changes_nothing(gain_slide, channel, factor):
    """Scaling one channel (stain, AF and all) by 0.5 or 2 keeps TLS, stages and the tumour bed."""
    scene, image, reference, _ = gain_slide
    scaled = image.copy()
    index = scene.channel_names.index(channel)
    scaled[index] = np.clip(np.rint(image[index].astype(np.float64) * factor), 0, 65535).astype(image.dtype)
    result = analyze_slide(_memory_slide(scaled, scene), NO_CELLS)
    assert len(result.tls) == len(reference.tls)
    truth_like = [{"tls_id": row.tls_id, "centroid_x_um": row.centroid_x_um, "centroid_y_um": row.centroid_y_um,
                   "area_um2": row.area_um2} for row in reference.tls.itertuples()]
    pairs = match_tls(result.tls, truth_like)
    assert len(pairs) == len(reference.tls)
    stages = reference.tls.set_index("tls_id")["stage"]
    for row, item in pairs:
        assert row.stage == stages[item["tls_id"]]
        assert row.area_um2 == pytest.approx(item["area_um2"], rel=0.1)
    assert result.summary["tumour_area_mm2"] == pytest.approx(reference.summary["tumour_area_mm2"], rel=0.02)
    assert result.summary["tissue_area_mm2"] == pytest.approx(reference.summary["tissue_area_mm2"], rel=0.02)


@pytest.fixture(scope="module")
def af_channel_slide(tmp_path_factory):
    scene = synthetic.make_scene(seed=62, width_um=1800, height_um=1350, pixel_size_um=0.8, dtype="float32",
                                 tls_counts=(2, 2, 1), tls_radius_um=(55, 90), shuffle_channels=True,
                                 extra_channels=("Autofluorescence",), realism=synthetic.Realism.default())
    path, truth_path = synthetic.write_slide(scene, tmp_path_factory.mktemp("af") / "slide.qptiff")
    return path, json.loads(truth_path.read_text()), analyze_slide(path, NO_CELLS)


def test_an_autofluorescence_channel_is_used_not_feared(af_channel_slide):
    path, truth, result = af_channel_slide
    scores = score(result.summary, result.tls, truth)
    assert not acceptance_misses(scores), scores
    thresholds = result.summary["thresholds"]
    assert thresholds["b_cells"]["autofluorescence_share"] > 0  # AF subtracted pixel by pixel
    # the AF channel flags artefacts, not tissue: a small share of the tissue at most
    assert result.summary["excluded_artefact_area_mm2"] < 0.05 * result.summary["tissue_area_mm2"]


def test_realistic_results_do_not_depend_on_chunking(af_channel_slide):
    path, _, default_chunks = af_channel_slide
    assert len(open_slide(path).levels[0].data.chunks[2]) > 1  # the slide's own chunks (about 2048 px) cut it too
    results = [analyze_slide(open_slide(path, chunk_size=256), NO_CELLS), default_chunks]
    a, b = ({k: v for k, v in r.summary.items() if k != "timing_seconds"} for r in results)
    assert a == b
    assert results[0].tls.equals(results[1].tls)
