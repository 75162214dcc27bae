"""Agreement measures against independent computations, and validate on an edited copy of an analysis."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest

from tlsquant.agreement import bland_altman, cohen_kappa, dice, icc_agreement, lins_ccc, match_masks, validate
from tlsquant.cli import main

from .loop_helpers import load, shared_analysis


def kappa_by_hand(a, b):
    labels = sorted(set(a) | set(b))
    n = len(a)
    observed = sum(1 for x, y in zip(a, b) if x == y) / n
    expected = sum((a.count(label) / n) * (b.count(label) / n) for label in labels)
    return (observed - expected) / (1 - expected)


KAPPA_A = ["mature", "mature", "primary", "primary", "primary", "mature", "primary", "primary", "mature", "primary"]
KAPPA_B = ["mature", "primary", "primary", "primary", "mature", "mature", "primary", "primary", "mature", "primary"]


def test_kappa_matches_a_hand_computation():
    a, b = KAPPA_A, KAPPA_B
    # by hand: p_o = 8/10, p_e = 0.4 * 0.4 + 0.6 * 0.6 = 0.52, kappa = 0.28 / 0.48
    assert cohen_kappa(a, b) == pytest.approx(0.28 / 0.48) == pytest.approx(kappa_by_hand(a, b))
    three = (["early", "primary_follicle", "secondary_follicle", "early", "early"],
             ["early", "secondary_follicle", "secondary_follicle", "primary_follicle", "early"])
    assert cohen_kappa(*three) == pytest.approx(kappa_by_hand(*three))
    assert cohen_kappa(["a", "a"], ["a", "a"]) == 1.0 and cohen_kappa([], []) is None


def test_kappa_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    assert cohen_kappa(KAPPA_A, KAPPA_B) == pytest.approx(metrics.cohen_kappa_score(KAPPA_A, KAPPA_B))


def test_dice_and_matching_on_hand_made_masks():
    a = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 cells
    b = np.zeros((10, 10), bool)
    b[2:6, 0:4] = True  # 16 cells, 8 shared
    assert dice(a, b) == pytest.approx(2 * 8 / 32)
    far = np.zeros((10, 10), bool)
    far[8:10, 8:10] = True
    # a-b IoU 8/24 = 0.33 is matched; far matches nothing; a second manual overlapping a less is left over
    c = np.zeros((10, 10), bool)
    c[0:4, 3:7] = True  # shares 4 cells with a: IoU 4/28
    matches = match_masks([a, far], [c, b])
    assert [(i, j) for i, j, _, _ in matches] == [(0, 1)]
    assert matches[0][2] == pytest.approx(8 / 24) and matches[0][3] == pytest.approx(0.5)


def test_bland_altman_ccc_and_icc_against_independent_values():
    x = np.array([0.10, 0.02, 0.30, 0.05, 0.12])
    y = np.array([0.08, 0.03, 0.25, 0.06, 0.15])
    stats = bland_altman(x, y)
    d = x - y
    assert stats["bias"] == pytest.approx(sum(d) / 5)
    sd = math.sqrt(sum((v - sum(d) / 5) ** 2 for v in d) / 4)
    assert stats["loa_high"] == pytest.approx(sum(d) / 5 + 1.96 * sd)
    mx, my = x.mean(), y.mean()
    sxy = sum((p - mx) * (q - my) for p, q in zip(x, y)) / 5
    ccc = 2 * sxy / (sum((p - mx) ** 2 for p in x) / 5 + sum((q - my) ** 2 for q in y) / 5 + (mx - my) ** 2)
    assert lins_ccc(x, y) == pytest.approx(ccc)
    # Shrout & Fleiss (1979), table 2: six targets, four judges; ICC(2,1) = 0.29
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc_agreement(ratings) == pytest.approx(0.2898, abs=5e-4)
    assert icc_agreement(np.column_stack([x, x])) == pytest.approx(1.0)


@pytest.mark.slow
def test_validate_an_edited_copy(tmp_path, capsys):
    result, out, _ = shared_analysis()
    n = len(result.tls)
    manual = copy.deepcopy(load(out / "tls.geojson"))
    deleted = manual["features"].pop(0)  # the pathologist does not call the first one a TLS
    restaged = manual["features"][0]
    old = restaged["properties"]["metadata"]["stage"]
    new = "primary" if old == "mature" else "mature"
    restaged["properties"]["classification"] = f"TLS: {new}"
    for item in manual["features"]:
        item.pop("id")  # drawn by hand: no tlsquant ids
    manual["features"].append({"type": "Feature", "properties": {"classification": "TLS"},  # a missed one, unstaged
                               "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [40, 10], [40, 40], [10, 40],
                                                                                 [10, 10]]]}})
    tumour = [f for f in load(out / "annotations.geojson")["features"] if f["properties"]["metadata"]["region"] == "tumour"]
    manual["features"] += tumour
    path = tmp_path / "manual.geojson"
    path.write_text(json.dumps(manual))
    cohort = validate(out, path, tmp_path / "agreement", figures=False)
    assert cohort["true_positives"] == n - 1 and cohort["precision"] == pytest.approx((n - 1) / n)
    assert cohort["recall"] == pytest.approx((n - 1) / n) and cohort["f1"] == pytest.approx((n - 1) / n)
    assert cohort["mean_dice"] == pytest.approx(1.0)
    pairs = pd.read_csv(tmp_path / "agreement" / "agreement_tls.csv")
    assert deleted["properties"]["tls_id"] not in set(pairs["auto_tls_id"])
    expected_kappa = cohen_kappa(list(pairs["stage_auto"]), list(pairs["stage_manual"]))
    assert cohort["stage_kappa"] == pytest.approx(expected_kappa)
    assert (pairs["stage_auto"] != pairs["stage_manual"]).sum() == 1
    slides = pd.read_csv(tmp_path / "agreement" / "agreement_slides.csv")
    assert slides.loc[0, "tumour_dice"] == pytest.approx(1.0)
    assert slides.loc[0, "tumour_area_mm2_manual"] == pytest.approx(result.summary["tumour_area_mm2"])
    confusion = pd.read_csv(tmp_path / "agreement" / "stage_confusion.csv", index_col=0)
    assert int(confusion.to_numpy().sum()) == n - 1
    assert main(["validate", str(out), "--manual", str(path), "-o", str(tmp_path / "cli")]) == 0
    assert "TLS precision" in capsys.readouterr().out
    assert (tmp_path / "cli" / "bland_altman.png").read_bytes()[:4] == b"\x89PNG"
