"""Reviewed TLS back: a script edits tls.geojson / annotations.geojson as a reviewer would; metrics follow exactly."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from tlsquant.cli import main
from tlsquant.review import ReviewError, review_slide

from .loop_helpers import load, shared_analysis


@pytest.fixture(scope="module")
def analysed():
    result, folder, _ = shared_analysis()
    assert len(result.tls) >= 2 and result.summary["tumour_area_mm2"] > 0
    return result, folder


def write(path, collection):
    path.write_text(json.dumps(collection))
    return path


def square(x0, y0, side):
    return [[[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]]


def deep_inside(mask, factor):
    """Level-0 px (x, y) of the cell deepest inside ``mask``."""
    row, col = np.unravel_index(np.argmax(ndi.distance_transform_edt(mask)), mask.shape)
    return (col + 0.5) * factor, (row + 0.5) * factor


def test_an_unedited_review_reproduces_the_analysis(analysed, tmp_path):
    result, out = analysed
    reviewed = review_slide(out, out / "tls.geojson")
    assert reviewed.diff == {"added": [], "removed": [], "restaged": [], "redrawn": [], "metrics_changed": {}}
    table = pd.read_csv(out / "tls.csv")
    for column in ("tls_id", "area_um2", "centroid_x_um", "centroid_y_um", "stage", "location", "counted",
                   "distance_to_tumour_um", "b_cell_fraction", "bbox_x0_px", "bbox_y1_px"):
        assert list(reviewed.tls[column]) == list(table[column]), column
    for key in ("tumour_area_mm2", "tissue_area_mm2", "tls_density_per_mm2", "tls_area_pct", "tls_counted"):
        assert reviewed.summary[key] == pytest.approx(result.summary[key], rel=1e-12), key


def test_deleted_added_restaged_and_a_fold_change_the_metrics_exactly(analysed, tmp_path):
    result, out = analysed
    px = result.pixel_size_um[0]
    cell_um2 = (result.fine_factor * px) ** 2
    tls = load(out / "tls.geojson")
    features = tls["features"]
    deleted, restaged = features[0], features[1]
    deleted_id = int(deleted["properties"]["metadata"]["tls_id"])
    restaged_id = int(restaged["properties"]["metadata"]["tls_id"])
    old_stage = restaged["properties"]["metadata"]["stage"]
    new_stage = "primary" if old_stage == "mature" else "mature"
    edited = copy.deepcopy(tls)
    edited["features"] = [f for f in edited["features"] if f["id"] != deleted["id"]]
    for item in edited["features"]:
        if item["id"] == restaged["id"]:
            item["properties"]["classification"] = {"names": ["TLS", new_stage], "color": [1, 2, 3]}
    # a TLS the reviewer drew: a 60 x 60 px square on grid lines deep in the tumour, QuPath's string class form
    x, y = deep_inside(result.tumour_mask & (ndi.distance_transform_edt(result.tumour_mask) > 10),
                       result.coarse_factor)
    x0, y0 = int(x // result.fine_factor) * result.fine_factor, int(y // result.fine_factor) * result.fine_factor
    side = 60 * int(result.fine_factor)
    edited["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square(x0, y0, side)},
                               "properties": {"objectType": "annotation", "classification": "TLS: primary"}})
    reviewed = review_slide(out, write(tmp_path / "edited.geojson", edited))
    table = pd.read_csv(out / "tls.csv").set_index("tls_id")
    new_id = int(table.index.max()) + 1
    assert reviewed.diff["removed"] == [deleted_id] and reviewed.diff["added"] == [new_id]
    assert reviewed.diff["restaged"] == [{"tls_id": restaged_id, "from": old_stage, "to": new_stage}]
    assert reviewed.diff["redrawn"] == []
    rows = reviewed.tls.set_index("tls_id")
    assert rows.loc[new_id, "area_um2"] == pytest.approx(60 * 60 * cell_um2)  # by hand: 60 x 60 cells
    assert rows.loc[new_id, "location"] == "intratumoral" and rows.loc[new_id, "counted"]
    assert rows.loc[new_id, "review_status"] == "added" and pd.isna(rows.loc[new_id, "b_cell_fraction"])
    assert rows.loc[restaged_id, "stage"] == new_stage and rows.loc[restaged_id, "review_status"] == "restaged"
    expected = table.drop(index=deleted_id)
    counted = int(expected["counted"].sum()) + 1
    counted_area = float(expected.loc[expected["counted"], "area_um2"].sum()) + 60 * 60 * cell_um2
    tumour = result.summary["tumour_area_mm2"]
    s = reviewed.summary
    assert s["tls_count"] == len(table) and s["tls_counted"] == counted
    assert s["tls_density_per_mm2"] == pytest.approx(counted / tumour)
    assert s["tls_area_pct"] == pytest.approx(100 * counted_area / (tumour * 1e6))
    mature = sum(1 for i, r in expected.iterrows() if (new_stage if i == restaged_id else r["stage"]) == "mature")
    assert s["tls_mature_count"] == mature

    # now a fold drawn over part of the tumour bed, in the regions file: tumour and tissue lose exactly those cells
    regions = load(out / "annotations.geojson")
    c = result.coarse_factor
    rows_, cols_ = np.nonzero(result.tumour_mask)
    r0, c0 = int(rows_.min()), int(cols_.min())
    r1, c1 = r0 + int(rows_.max() - r0) // 2, c0 + int(cols_.max() - c0) // 2
    fold = [[[c0 * c, r0 * c], [c1 * c, r0 * c], [c1 * c, r1 * c], [c0 * c, r1 * c], [c0 * c, r0 * c]]]
    regions["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": fold},
                                "properties": {"classification": {"name": "Fold", "color": [0, 0, 0]}}})
    folded = review_slide(out, out / "tls.geojson", annotations=write(tmp_path / "regions.geojson", regions))
    cell_mm2 = (c * px) ** 2 / 1e6
    lost_tumour = result.tumour_mask[r0:r1, c0:c1].sum() * cell_mm2
    lost_tissue = result.tissue_mask[r0:r1, c0:c1].sum() * cell_mm2
    assert lost_tumour > 0
    assert folded.summary["tumour_area_mm2"] == pytest.approx(tumour - lost_tumour)
    assert folded.summary["tissue_area_mm2"] == pytest.approx(result.summary["tissue_area_mm2"] - lost_tissue)
    f = result.fine_factor
    for tls_id, row in folded.tls.set_index("tls_id").iterrows():
        inside = (result.tls_labels == tls_id)[r0 * c // f: r1 * c // f, c0 * c // f: c1 * c // f].sum()
        assert row["area_um2"] == pytest.approx(table.loc[tls_id, "area_um2"] - inside * cell_um2)
    gone = [i for i in table.index if (result.tls_labels == i).sum() == (result.tls_labels == i)[
        r0 * c // f: r1 * c // f, c0 * c // f: c1 * c // f].sum()]
    assert sorted(folded.diff["removed"]) == sorted(gone)


def test_review_command_writes_the_reviewed_files(analysed, capsys):
    _, out = analysed
    assert main(["review", str(out), "--tls", str(out / "tls.geojson")]) == 0
    assert "0 added, 0 removed" in capsys.readouterr().out
    summary = load(out / "summary.reviewed.json")
    assert summary["review"]["added"] == [] and summary["tls_count"] == load(out / "summary.json")["tls_count"]
    assert list(pd.read_csv(out / "tls.reviewed.csv")["review_status"]) == ["unchanged"] * summary["tls_count"]


def test_review_errors_are_clear(analysed, tmp_path, capsys):
    _, out = analysed
    unclassified = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square(10, 10, 20)}, "properties": {}}]}
    with pytest.raises(ReviewError, match="feature 0 unclassified has no class; classify it 'TLS: primary'"):
        review_slide(out, write(tmp_path / "a.geojson", unclassified))
    unclassified["features"][0]["properties"]["classification"] = "TLS: huge"
    with pytest.raises(ReviewError, match=r"stage \('huge',\) is not one of primary, mature"):
        review_slide(out, write(tmp_path / "a.geojson", unclassified))
    with pytest.raises(ReviewError, match="no summary.json"):
        review_slide(tmp_path, out / "tls.geojson")
    assert main(["review", str(out), "--tls", str(tmp_path / "missing.geojson")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
