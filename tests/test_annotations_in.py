"""Annotations in: QuPath exports parse; tumour, exclusions and ROI reach the analysis exactly; bad files are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlsquant.annotations import region_masks
from tlsquant.batch import read_manifest
from tlsquant.config import Annotations
from tlsquant.qupath import AnnotationError, parse_features, read_features

from .loop_helpers import analyse_into, load, shared_analysis

HOLED = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]], [[40, 40], [40, 60], [60, 60], [60, 40], [40, 40]]]
QUPATH_EXPORT = {  # as QuPath 0.4-0.6 writes them, with the older forms QuPath still reads
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "id": "0d7c5e4e-7d07-4c8a-9a56-2f2d4f1f6c1b",
         "geometry": {"type": "Polygon", "coordinates": HOLED},
         "properties": {"objectType": "annotation", "name": "bed", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Area µm^2": 9600.0, "Bad": "NaN"}, "metadata": {"by": "JD"}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [HOLED, [[[200, 200], [300, 200], [300, 300], [200, 200]]]]},
         "properties": {"objectType": "annotation", "classification": {"names": ["TLS", "mature"], "color": [1, 2, 3]},
                        "measurements": [{"name": "Old style", "value": 2.0}]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[5, 5], [9, 5], [9, 9], [5, 5]]]},
         "properties": {"classification": "Ignore*"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {"objectType": "annotation"}},
    ],
}


def test_qupath_export_forms_parse():
    items, notes = parse_features(QUPATH_EXPORT, "export.geojson")
    assert [i.names for i in items] == [("Tumor",), ("TLS", "mature"), ("Ignore*",)]
    assert items[0].polygons == [HOLED] and items[0].object_id.startswith("0d7c5e4e")
    assert items[0].measurements == {"Area µm^2": 9600.0} and items[0].metadata == {"by": "JD"}
    assert len(items[1].polygons) == 2 and items[1].class_name == "TLS: mature"
    assert items[1].measurements == {"Old style": 2.0}
    assert notes == ["export.geojson: feature 3: a Point encloses no area, skipped"]
    bare, _ = parse_features(QUPATH_EXPORT["features"], "list.geojson")  # a bare list of features
    assert [i.names for i in bare] == [i.names for i in items]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1, column 2"),
    (json.dumps({"type": "Polygon", "coordinates": []}), "expected a GeoJSON FeatureCollection or a list of features"),
    (json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}}]),
     "feature 0 polygon 0 ring 0: a ring needs at least 3 distinct positions, found 2"),
    (json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 0], [1, 1], [1, 0], [0, 0]]]}}]),
     "ring positions must be numbers"),
    (json.dumps([{"type": "Feature", "geometry": {"type": "Circle", "coordinates": [1, 2]}}]),
     "geometry type 'Circle' is not supported; expected Polygon or MultiPolygon"),
    (json.dumps([{"type": "Feature", "properties": {"classification": 5},
                  "geometry": {"type": "Polygon", "coordinates": [HOLED[0]]}}]),
     "classification must be a string or an object with 'name' or 'names'"),
    (json.dumps([{"type": "Feature"}]), "feature 0: expected a GeoJSON Feature with a geometry"),
])
def test_malformed_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message.replace("(", r"\(").replace("*", r"\*")) as caught:
        read_features(path)
    assert str(path) in str(caught.value)


def masks(features, *, slide_shape=(600, 800), pixel_size_um=2.0, **settings):
    items, _ = parse_features({"type": "FeatureCollection", "features": features}, "drawn.geojson")
    return region_masks(items, Annotations(**settings), slide_shape=slide_shape, pixel_size_um=pixel_size_um,
                        fine_factor=1, coarse_factor=4)


def polygon_feature(rings, cls):
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings}, "properties": {"classification": cls}}


def test_bad_geometry_is_an_error_or_a_recorded_repair():
    # µm coordinates on a 2 µm/px slide reach beyond the slide's pixels but not beyond its µm extent
    with pytest.raises(AnnotationError, match="look like µm; export level-0 pixel coordinates"):
        masks([polygon_feature([[[100, 100], [1500, 100], [1500, 1100], [100, 100]]], "Tumor")])
    with pytest.raises(AnnotationError, match="lies outside the slide .* is it from another image"):
        masks([polygon_feature([[[5000, 5000], [5100, 5000], [5100, 5100], [5000, 5000]]], "Fold")])
    clipped = masks([polygon_feature([[[700, 500], [850, 500], [850, 650], [700, 650], [700, 500]]], "Fold")])
    assert any("partly outside the slide, clipped" in n for n in clipped.notes)
    assert clipped.exclude_coarse[125:, 175:].all() and not clipped.exclude_coarse[:124].any()
    bowtie = masks([polygon_feature([[[0, 0], [400, 400], [400, 0], [0, 400], [0, 0]]], "Tumor")])
    assert any("crosses itself; filled by the even-odd rule" in n for n in bowtie.notes)
    assert bowtie.tumour[50, 10] and bowtie.tumour[50, 90] and not bowtie.tumour[10, 50]  # the two side lobes
    # µm on a slide finer than 1 µm/px cannot leave the slide: a warning, recorded
    fine = masks([polygon_feature([[[0, 0], [300, 0], [300, 200], [0, 0]]], "Tumor")], slide_shape=(1200, 1600),
                 pixel_size_um=0.25)
    assert any(n.startswith("warning: all outlines lie within the top-left 0.25") for n in fine.notes)


def test_classes_map_by_name_wildcard_and_base_class():
    drawn = masks([polygon_feature([HOLED[0]], "Ignore*"), polygon_feature([HOLED[0]], "necrosis"),
                   polygon_feature([HOLED[0]], "Tumor: edge"), polygon_feature([HOLED[0]], "Region*"),
                   polygon_feature([HOLED[0]], "Stroma")])
    assert drawn.counts == {"tumour": 1, "exclude": 2, "roi": 1} and drawn.ignored == {"Stroma": 1}


@pytest.fixture(scope="module")
def base():
    return shared_analysis()


def write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def cells_mm2(mask, factor, pixel_um):
    return mask.sum() * (factor * pixel_um) ** 2 / 1e6


def test_own_annotations_reimported_change_nothing(base, tmp_path):
    result, out, slide = base
    again = analyse_into(slide, tmp_path / "again", annotations=out / "annotations.geojson")
    for key in ("tissue_area_mm2", "tumour_area_mm2", "tls_count", "tls_density_per_mm2", "tls_area_pct"):
        assert again.summary[key] == result.summary[key], key
    regions = again.summary["regions"]
    assert regions["tumour"].startswith("annotation (replaces") and regions["features"]["tumour"] == 1
    assert regions["ignored_classes"]["Tissue"] == 1 and "TLS candidate: small" in regions["ignored_classes"]
    assert result.summary["regions"] == {"annotations": None, "tissue": "automatic", "tumour": "automatic",
                                         "tls": "automatic"}


def test_a_fold_is_removed_from_tissue_tumour_and_tls(base, tmp_path):
    result, out, slide = base
    c, f, px = result.coarse_factor, result.fine_factor, result.pixel_size_um[0]
    tls_id = int(result.tls["tls_id"].iloc[0])
    rows, cols = np.nonzero(result.tls_labels == tls_id)
    # a fold on coarse grid lines covering the top half of the first TLS and the tissue around it
    r0, r1 = (rows.min() * f // c) - 10, (rows.min() + rows.max()) // 2 * f // c
    c0, c1 = (cols.min() * f // c) - 10, (cols.max() * f // c) + 10
    fold = [[[c0 * c, r0 * c], [c1 * c, r0 * c], [c1 * c, r1 * c], [c0 * c, r1 * c], [c0 * c, r0 * c]]]
    folded = analyse_into(slide, tmp_path / "fold", annotations=write(tmp_path / "fold.geojson", [
        polygon_feature([[[int(v) for v in p] for p in fold[0]]], {"name": "Fold", "color": [0, 0, 0]})]))
    s = folded.summary
    assert s["tissue_area_mm2"] == pytest.approx(
        result.summary["tissue_area_mm2"] - cells_mm2(result.tissue_mask[r0:r1, c0:c1], c, px))
    assert s["tumour_area_mm2"] == pytest.approx(
        result.summary["tumour_area_mm2"] - cells_mm2(result.tumour_mask[r0:r1, c0:c1], c, px))
    assert s["regions"]["excluded_area_mm2"] == pytest.approx(cells_mm2(result.tissue_mask[r0:r1, c0:c1], c, px))
    kept = (result.tls_labels == tls_id).sum() - (result.tls_labels == tls_id)[r0 * c // f: r1 * c // f,
                                                                              c0 * c // f: c1 * c // f].sum()
    assert folded.tls.loc[folded.tls["tls_id"] == tls_id, "area_um2"].item() == pytest.approx(kept * (f * px) ** 2)
    assert not folded.tumour_mask[r0:r1, c0:c1].any() and "annotated exclusions removed" in s["regions"]["tumour"]


def test_a_drawn_tumour_replaces_or_restricts_and_a_roi_limits(base, tmp_path):
    result, out, slide = base
    c, px = result.coarse_factor, result.pixel_size_um[0]
    rows, cols = np.nonzero(result.tumour_mask)
    r0, r1 = int(rows.min()) - 5, int(rows.min() + rows.max()) // 2  # the top half of the bed and some stroma
    c0, c1 = int(cols.min()) - 5, int(cols.max()) + 5
    box = [[[c0 * c, r0 * c], [c1 * c, r0 * c], [c1 * c, r1 * c], [c0 * c, r1 * c], [c0 * c, r0 * c]]]
    drawn = write(tmp_path / "tumour.geojson", [polygon_feature(box, "Tumor")])
    replaced = analyse_into(slide, tmp_path / "replace", annotations=drawn)
    assert replaced.summary["tumour_area_mm2"] == pytest.approx(cells_mm2(result.tissue_mask[r0:r1, c0:c1], c, px))
    restricted = analyse_into(slide, tmp_path / "restrict", "annotations.tumour_mode=restrict", annotations=drawn)
    assert restricted.summary["tumour_area_mm2"] == pytest.approx(cells_mm2(result.tumour_mask[r0:r1, c0:c1], c, px))
    assert restricted.summary["regions"]["tumour"] == "automatic, restricted to the annotation"
    roi = analyse_into(slide, tmp_path / "roi", annotations=write(tmp_path / "roi.geojson",
                                                                  [polygon_feature(box, "Region*")]))
    assert roi.summary["tissue_area_mm2"] == pytest.approx(cells_mm2(result.tissue_mask[r0:r1, c0:c1], c, px))
    assert (roi.tls_labels[: r0 * c // result.fine_factor] == 0).all()
    assert load(tmp_path / "roi" / "summary.json")["regions"]["features"]["roi"] == 1


def test_manifest_annotations_column(tmp_path):
    (tmp_path / "a.ome.tiff").write_bytes(b"x")
    (tmp_path / "a.geojson").write_text("[]")
    (tmp_path / "m.csv").write_text("slide_id,path,annotations,group\na,a.ome.tiff,a.geojson,good\n"
                                    "b,a.ome.tiff,missing.geojson,poor\n")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.jobs[0].annotations == tmp_path / "a.geojson" and manifest.jobs[0].clinical == {"group": "good"}
    assert "missing.geojson: annotations file not found (manifest line 3)" in manifest.problems[0]["error"]
