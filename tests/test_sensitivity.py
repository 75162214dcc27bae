"""Threshold sensitivity: scenarios counted in one pass equal separate runs with the scaled thresholds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tlsquant import analyze_slide, load_config, open_slide, synthetic
from tlsquant.errors import ConfigError
from tlsquant.sensitivity import COHORT_SENSITIVITY_COLUMNS, SENSITIVITY_COLUMNS, cohort_sensitivity, sensitivity_figure

ROLES = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")
PLAIN = ["cells.enabled=false", "outputs.qc_png=false", "thresholds.sample_windows=16"]
SENSITIVITY = PLAIN + ["sensitivity.enabled=true", f"sensitivity.roles={list(ROLES)!r}".replace("'", '"')]
METRICS = [c for c in SENSITIVITY_COLUMNS if c not in ("parameter", "role", "channel", "scale")]


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    # a realistic scan: autofluorescence channel (pixel AF subtraction), crosstalk, debris, red blood cells
    scene = synthetic.make_scene(seed=3, width_um=1300, height_um=1000, pixel_size_um=1.0, tls_counts=(3, 1, 1),
                                 tls_radius_um=(45, 90), extra_channels=("Autofluorescence",),
                                 realism=synthetic.Realism())
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("sensitivity") / "slide.ome.tiff")
    return path


@pytest.fixture(scope="module")
def scenarios(slide_path):
    return analyze_slide(open_slide(slide_path), load_config(None, SENSITIVITY + ["compute.chunk_px=512"])).sensitivity


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=0, abs_tol=0))


def _check(row, summary):
    for metric in METRICS:
        assert _same(row[metric], summary[metric]), (row["role"], row["scale"], metric, row[metric], summary[metric])


@pytest.mark.slow
def test_baseline_row_is_the_plain_analysis(slide_path, scenarios):
    plain = analyze_slide(open_slide(slide_path), load_config(None, PLAIN)).summary
    assert list(scenarios.columns) == SENSITIVITY_COLUMNS
    assert scenarios.iloc[0]["parameter"] == "baseline"
    _check(scenarios.iloc[0], plain)
    assert len(scenarios) == 1 + len(ROLES) * 4 + 2


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_scaled_threshold_equals_a_separate_run(slide_path, scenarios, role):
    # the oracle: a separate analysis with thresholds.<role>.scale set gives the scenario's numbers exactly
    rows = scenarios[(scenarios["parameter"] == "threshold") & (scenarios["role"] == role)]
    scales = (0.8, 1.25) if role not in ("b_cells", "tumour") else (0.8, 0.9, 1.1, 1.25)
    for scale in scales:
        config = load_config(None, PLAIN + [f"thresholds.{role}.scale={scale}", "compute.chunk_px=1024"])
        separate = analyze_slide(open_slide(slide_path), config).summary
        _check(rows[rows["scale"] == scale].iloc[0], separate)


@pytest.mark.slow
def test_min_area_scenarios_equal_separate_runs(slide_path, scenarios):
    rows = scenarios[scenarios["parameter"] == "min_tls_area"]
    for scale in (0.75, 1.25):
        config = load_config(None, PLAIN + [f"tls.min_area_um2={6000.0 * scale}"])
        _check(rows[rows["scale"] == scale].iloc[0], analyze_slide(open_slide(slide_path), config).summary)


@pytest.mark.slow
def test_scenarios_move_the_metrics(scenarios):
    # the check above must not pass by every scenario being the baseline
    changed = scenarios[METRICS].ne(scenarios.iloc[0][METRICS]).any(axis=1)
    assert changed.sum() >= 10


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [256, 700])
def test_chunking_does_not_change_the_scenarios(slide_path, scenarios, chunk):
    other = analyze_slide(open_slide(slide_path), load_config(None, SENSITIVITY + [f"compute.chunk_px={chunk}"]))
    pd.testing.assert_frame_equal(other.sensitivity, scenarios)
    assert other.summary["sensitivity"]["scenarios"][0]["parameter"] == "baseline"


def test_off_by_default_and_validated(slide_path):
    assert load_config().sensitivity.enabled is False
    with pytest.raises(ConfigError, match="scale must be > 0"):
        load_config(None, ["thresholds.b_cells.scale=0"])
    with pytest.raises(ConfigError, match="sensitivity.roles"):
        load_config(None, ['sensitivity.roles=["cd20"]'])
    with pytest.raises(ConfigError, match="sensitivity.scales"):
        load_config(None, ["sensitivity.scales=[0.8, -1]"])


def _cohort(shift: float) -> pd.DataFrame:
    rows = []
    for index in range(8):
        group = "good" if index < 4 else "poor"
        for scale in (1.0, 0.8, 1.25):
            parameter = "baseline" if scale == 1.0 else "threshold"
            value = index + (10 if group == "good" else 0) * (shift if scale == 0.8 else 1)
            rows.append({"slide_id": f"s{index}", "group": group, "parameter": parameter,
                         "role": "" if scale == 1.0 else "b_cells", "channel": "" if scale == 1.0 else "CD20",
                         "scale": scale, "tls_density_per_mm2": value, "tls_area_pct": value / 10,
                         "tls_mature_count": index % 2})
    return pd.DataFrame(rows)


def test_cohort_table_says_whether_the_conclusion_holds(tmp_path):
    table = cohort_sensitivity(_cohort(shift=0.0), "group", alpha=0.05)
    assert list(table.columns) == COHORT_SENSITIVITY_COLUMNS
    assert table.iloc[0]["parameter"] == "baseline"
    density = table[table["metric"] == "tls_density_per_mm2"].set_index("scale")
    assert density.loc[1.0, "significant"] and density.loc[1.0, "p"] == pytest.approx(2 / 70)
    assert density.loc[1.25, "holds"] and not density.loc[0.8, "holds"]  # at 0.8 the groups no longer separate
    mature = table[table["metric"] == "tls_mature_count"]
    assert mature["holds"].all() and not mature["significant"].any()
    path = sensitivity_figure(table, tmp_path / "sensitivity.png")
    assert path.stat().st_size > 1000 and np.isfinite(table["p"].astype(float)).all()
