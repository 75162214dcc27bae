"""agreement.html / .md: validate's page for a lab meeting, self-contained."""

from __future__ import annotations

import copy
import json
import re

import pandas as pd

from tlsquant.agreement import validate
from tlsquant.agreement_report import write_agreement_report

from .loop_helpers import load, shared_analysis

COHORT = {"slides": 2, "matching": {"min_iou": 0.3, "method": "Hungarian on IoU"}, "true_positives": 5, "n_auto": 6,
          "n_manual": 7, "precision": 5 / 6, "recall": 5 / 7, "f1": 10 / 13, "mean_dice": 0.81, "stage_kappa": 0.6,
          "stage_pairs": 5, "slides_without_manual": ["S3"],
          "tls_density_per_mm2": {"n": 2, "bias": -0.05, "sd": 0.02, "loa_low": -0.0892, "loa_high": -0.0108,
                                  "lins_ccc": 0.97, "icc_2_1": 0.95},
          "tls_area_pct": {"n": 2, "bias": 0.1, "sd": None, "loa_low": None, "loa_high": None, "lins_ccc": None,
                           "icc_2_1": None}}
SLIDES = pd.DataFrame([{"slide_id": "S1", "n_auto": 3, "n_manual": 3, "true_positives": 3, "precision": 1.0,
                        "recall": 1.0, "f1": 1.0, "mean_dice": 0.9, "tumour_dice": None,
                        "tls_density_per_mm2_auto": 0.5, "tls_density_per_mm2_manual": 0.52},
                       {"slide_id": "S2<b>", "n_auto": 3, "n_manual": 4, "true_positives": 2, "precision": 2 / 3,
                        "recall": 0.5, "f1": 4 / 7, "mean_dice": 0.7, "tumour_dice": 0.93}])
CONFUSION = pd.DataFrame([[3, 1], [0, 1]], index=["primary", "mature"], columns=["primary", "mature"])


def test_the_page_states_every_measure_and_escapes_names(tmp_path):
    paths = write_agreement_report(COHORT, SLIDES, CONFUSION, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    for text in ("0.833", "0.714", "0.769", "0.810", "0.600 (5 pairs)", "-0.089 to -0.011", "0.970", "0.950",
                 "manual: mature", "auto: primary", "No manual annotations for: S3", "IoU of at least 0.3", "κ"):
        assert text in page, text
    assert "S2&lt;b&gt;" in page and "<b>" not in page  # a slide id is text, never markup
    assert "<td>–</td>" in page  # a measure that needs more slides is shown as missing, not as 0
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "| precision | 0.833 |" in markdown and "| S1 | 3 | 3 | 3 | 1.000 |" in markdown


def test_validate_writes_a_page_with_its_figures_inside(tmp_path):
    _, out, _ = shared_analysis()
    manual = copy.deepcopy(load(out / "tls.geojson"))
    manual["features"].pop(0)
    path = tmp_path / "manual.geojson"
    path.write_text(json.dumps(manual))
    cohort = validate(out, path, tmp_path / "agreement")
    page = (tmp_path / "agreement" / "agreement.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert f"{cohort['true_positives']}" in page and "Per slide" in page
