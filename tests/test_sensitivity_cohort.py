"""Threshold sensitivity from the command line: per-slide sensitivity.csv, the cohort table, compare per scenario."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tlsquant import synthetic
from tlsquant.cli import main
from tlsquant.sensitivity import COHORT_SENSITIVITY_COLUMNS, SENSITIVITY_COLUMNS


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three small slides, two good and one poor, analysed by `tlsquant batch --sensitivity`."""
    root = tmp_path_factory.mktemp("sensitivity-cohort")
    rows = []
    for k in range(3):
        good = k < 2
        scene = synthetic.make_scene(seed=300 + k, width_um=1800, height_um=1400, pixel_size_um=2.5, dtype="uint8",
                                     tls_counts=(2, 1, 0) if good else (0, 1, 0), tls_radius_um=(55, 75))
        path, _ = synthetic.write_slide(scene, root / f"s{k}.ome.tiff")
        rows.append({"slide_id": f"s{k}", "path": path.name, "response": "good" if good else "poor"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    out = root / "out"
    assert main(["batch", str(root / "manifest.csv"), "-o", str(out), "--sensitivity", "--workers", "1", "-q",
                 "--set", "outputs.qc_png=false"]) == 0
    return out


@pytest.mark.slow
def test_each_slide_writes_its_scenarios_and_the_baseline_is_its_summary(cohort):
    for k in range(3):
        folder = cohort / "slides" / f"s{k}"
        table = pd.read_csv(folder / "sensitivity.csv")
        summary = json.loads((folder / "summary.json").read_text())
        assert list(table.columns) == SENSITIVITY_COLUMNS and "sensitivity.csv" in summary["outputs"]
        baseline = table.iloc[0]
        assert baseline["parameter"] == "baseline" and baseline["tls_count"] == summary["tls_count"]
        assert baseline["tls_density_per_mm2"] == pytest.approx(summary["tls_density_per_mm2"], rel=1e-12)
        assert summary["sensitivity"]["range"]["tls_density_per_mm2"][0] <= summary["tls_density_per_mm2"]


@pytest.mark.slow
def test_the_cohort_table_gathers_every_slide(cohort):
    table = pd.read_csv(cohort / "cohort_sensitivity.csv", dtype={"slide_id": str})
    assert list(table.columns) == ["slide_id", *SENSITIVITY_COLUMNS]
    per_slide = table.groupby("slide_id").size()
    assert sorted(per_slide.index) == ["s0", "s1", "s2"] and per_slide.nunique() == 1


@pytest.mark.slow
def test_compare_tests_every_scenario(cohort, tmp_path, capsys):
    assert main(["compare", str(cohort / "cohort.csv"), "--group", "response", "-o", str(tmp_path / "cmp")]) == 0
    assert "threshold sensitivity: the conclusion holds in" in capsys.readouterr().out
    result = pd.read_csv(tmp_path / "cmp" / "sensitivity_comparison.csv")
    assert list(result.columns) == COHORT_SENSITIVITY_COLUMNS
    scenarios = pd.read_csv(cohort / "slides" / "s0" / "sensitivity.csv")
    assert len(result) == len(scenarios) * 3  # density, area % and mature count per scenario
    baseline = result[result["parameter"] == "baseline"].set_index("metric")
    stats = pd.read_csv(tmp_path / "cmp" / "stats.csv").set_index("metric")
    assert baseline.loc["tls_density_per_mm2", "p"] == pytest.approx(stats.loc["tls_density_per_mm2", "p"])
    assert (tmp_path / "cmp" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    assert "Threshold sensitivity" in page
