"""annotations.geojson and tls.geojson as QuPath 0.4-0.6 reads them: ids, classes, measurements, exact outlines."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import pytest

from tlsquant.outputs.annotations import margin_band
from tlsquant.polygons import mask_polygons, rasterise, ring_area
from tlsquant.qupath import NAMESPACE, feature, measurement_values, object_id

from .loop_helpers import analyse_into, load, shared_analysis


@pytest.fixture(scope="module")
def analysed():
    result, folder, _ = shared_analysis()
    assert len(result.tls) >= 2 and result.summary["tumour_area_mm2"] > 0
    return result, folder


def qupath_accepts(item: dict) -> None:
    """What QuPath's GeoJSON reader (QuPathTypeAdapters / PathClassTypeAdapter, v0.4.0-v0.6) needs of a feature."""
    assert item["type"] == "Feature"
    uuid.UUID(item["id"])  # a UUID string, else QuPath drops the id and makes a random one
    properties = item["properties"]
    assert properties["objectType"] == "annotation"
    cls = properties["classification"]
    # an object needs a colour and name or names (PathClassTypeAdapter throws otherwise)
    assert ("name" in cls or "names" in cls) and len(cls["color"]) == 3
    # read as Map<String, Double> in 0.4: numbers only, never null or boolean
    for value in properties.get("measurements", {}).values():
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    for value in properties.get("metadata", {}).values():
        assert isinstance(value, str)
    geometry = item["geometry"]
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    assert geometry["type"] in ("Polygon", "MultiPolygon")
    for polygon in polygons:
        assert ring_area(polygon[0]) > 0 and all(ring_area(hole) < 0 for hole in polygon[1:])
        for ring in polygon:
            assert ring[0] == ring[-1] and len(ring) >= 4


def by_region(collection):
    return {item["properties"]["metadata"]["region"]: item for item in collection["features"]}


def polygons_of(item):
    geometry = item["geometry"]
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]


def test_every_feature_is_one_qupath_reads(analysed):
    _, out = analysed
    for name in ("tls.geojson", "annotations.geojson"):
        collection = load(out / name)
        assert collection["type"] == "FeatureCollection" and collection["features"]
        for item in collection["features"]:
            qupath_accepts(item)
        ids = [item["id"] for item in collection["features"]]
        assert len(set(ids)) == len(ids)


def test_ids_are_uuid5_of_slide_and_object_and_stable(analysed, tmp_path):
    result, out = analysed
    tls = load(out / "tls.geojson")["features"]
    assert [item["id"] for item in tls] == [str(uuid.uuid5(NAMESPACE, f"{result.slide_id}/tls/{i}"))
                                            for i in result.tls["tls_id"]]
    regions = by_region(load(out / "annotations.geojson"))
    assert regions["tumour"]["id"] == object_id(result.slide_id, "tumour")
    from tlsquant.outputs import write_slide_outputs

    write_slide_outputs(result, tmp_path / "again")  # a rerun writes the same ids
    assert load(tmp_path / "again" / "tls.geojson") == load(out / "tls.geojson")


def test_tls_carry_metadata_and_every_numeric_column(analysed):
    result, out = analysed
    table = pd.read_csv(out / "tls.csv")
    for item, row in zip(load(out / "tls.geojson")["features"], table.to_dict("records")):
        properties = item["properties"]
        assert properties["classification"]["names"] == ["TLS", row["stage"]]
        assert properties["metadata"] == {"slide_id": result.slide_id, "tls_id": str(row["tls_id"]),
                                          "stage": row["stage"], "location": row["location"],
                                          "counted": str(bool(row["counted"])).lower()}
        measurements = properties["measurements"]
        for column, value in row.items():
            if column in ("slide_id", "stage", "location"):
                continue
            if isinstance(value, float) and np.isnan(value):
                assert column not in measurements  # an empty cell is left out, never null
            else:
                assert measurements[column] == pytest.approx(float(value))
        assert measurements["mature"] == float(row["stage"] == "mature")
        assert measurements["location_code"] == ["intratumoral", "peritumoral", "distal"].index(row["location"])


def test_outlines_rasterise_back_to_the_masks_exactly(analysed):
    result, out = analysed
    regions = by_region(load(out / "annotations.geojson"))
    coarse, fine = result.tissue_mask.shape, result.tls_labels.shape
    assert (rasterise(polygons_of(regions["tumour"]), coarse, result.coarse_factor) == result.tumour_mask).all()
    assert (rasterise(polygons_of(regions["tissue"]), coarse, result.coarse_factor) == result.tissue_mask).all()
    band = margin_band(result)
    assert band.any() and (rasterise(polygons_of(regions["margin"]), coarse, result.coarse_factor) == band).all()
    # the band is a ring around the tumour: its polygon keeps the hole
    assert any(len(polygon) > 1 for polygon in polygons_of(regions["margin"]))
    ratio = result.coarse_factor // result.fine_factor
    tissue = np.repeat(np.repeat(result.tissue_mask, ratio, 0), ratio, 1)[: fine[0], : fine[1]]
    artefacts = rasterise(polygons_of(regions["artefacts"]), fine, result.fine_factor)
    assert (artefacts == (result.debris_mask & tissue)).all()
    for item in load(out / "tls.geojson")["features"]:
        tls_id = int(item["properties"]["metadata"]["tls_id"])
        assert (rasterise(polygons_of(item), fine, result.fine_factor) == (result.tls_labels == tls_id)).all()
    summary = load(out / "summary.json")
    assert regions["tumour"]["properties"]["measurements"]["Area mm^2"] == pytest.approx(summary["tumour_area_mm2"])
    assert regions["tissue"]["properties"]["measurements"]["Area mm^2"] == pytest.approx(summary["tissue_area_mm2"])


def test_rejected_candidates_keep_their_reason(analysed):
    result, out = analysed
    candidates = [item for item in load(out / "annotations.geojson")["features"]
                  if item["properties"]["metadata"]["region"] == "candidate"]
    segmentation = load(out / "summary.json")["segmentation"]
    rejected = sum(v for k, v in segmentation.items() if k.startswith("rejected_"))
    assert len(candidates) == rejected == len(result.rejected_candidates) > 0
    for item in candidates:
        reason = item["properties"]["metadata"]["reason"]
        assert item["properties"]["classification"]["names"] == ["TLS candidate", reason]
    reasons = pd.Series([item["properties"]["metadata"]["reason"] for item in candidates]).value_counts()
    for reason, count in reasons.items():
        assert segmentation[f"rejected_{reason}"] == count


def test_polygons_keep_holes_and_pieces():
    mask = np.zeros((12, 20), bool)
    mask[1:9, 1:9] = True
    mask[3:6, 3:6] = False  # a hole
    mask[2:5, 12:18] = True  # a second piece
    polygons = mask_polygons(mask, 4)
    assert len(polygons) == 2 and [len(p) for p in polygons] == [2, 1]
    assert (rasterise(polygons, mask.shape, 4) == mask).all()
    item = feature(object_id=object_id("s", "x"), polygons=polygons, names=("Tumor",), colour=(1, 2, 3), name="x")
    assert item["geometry"]["type"] == "MultiPolygon"


def test_measurements_never_null_or_boolean():
    assert measurement_values({"a": None, "b": float("nan"), "c": True, "d": np.int64(3), "e": "text",
                               "f": np.float32(0.5), "g": float("inf")}) == {"c": 1.0, "d": 3, "f": 0.5}


def test_a_slide_without_tumour_writes_no_null_measurement(analysed, tmp_path):
    # an impossible tumour threshold: every TLS is distal with no distance to the tumour
    result = analyse_into(shared_analysis()[2], tmp_path / "out", "tumour.min_area_mm2=1000")
    assert result.summary["tumour_area_mm2"] == 0 and len(result.tls)
    for item in load(tmp_path / "out" / "tls.geojson")["features"]:
        qupath_accepts(item)
        assert "distance_to_tumour_um" not in item["properties"]["measurements"]
    assert "tumour" not in by_region(load(tmp_path / "out" / "annotations.geojson"))
