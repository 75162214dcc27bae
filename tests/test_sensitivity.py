"""Threshold sensitivity: scenarios counted in one pass equal separate runs with the scaled thresholds."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pandas as pd
import pytest

import tlsquant.sensitivity as sensitivity
from tlsquant import analyze_slide, load_config, open_slide, synthetic
from tlsquant.errors import ConfigError
from tlsquant.segment.aggregates import debris_zone, grow_to_half_level, half_level_seeds, same_growth
from tlsquant.segment.evidence import EvidenceMaps
from tlsquant.segment.regions import smooth, smooth_reach
from tlsquant.sensitivity import COHORT_SENSITIVITY_COLUMNS, SENSITIVITY_COLUMNS, cohort_sensitivity, sensitivity_figure
from tlsquant.steps import artefact_zone, find_tls, staged_tls, tissue_and_tumour

ROLES = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")
SCENARIOS = ["sensitivity.enabled=true", f"sensitivity.roles={list(ROLES)!r}".replace("'", '"')]
# the threshold sample of the main slide: two level-0 windows of 256 px (16 of them double the CPU of each
# analysis); the scenarios and the separate runs share it as they share the rest of the config. With it the slide
# still has pixel AF subtraction, crosstalk, 15 scenarios that move the metrics and scenarios through every shortcut.
PLAIN = ["cells.enabled=false", "outputs.qc_png=false", "thresholds.sample_windows=2"]
SENSITIVITY = PLAIN + SCENARIOS
# the debris slide keeps the sample of 16 windows (its whole image): with fewer its scenarios miss shortcut paths
DEBRIS_PLAIN = ["cells.enabled=false", "outputs.qc_png=false", "thresholds.sample_windows=16"]
DEBRIS_SENSITIVITY = DEBRIS_PLAIN + SCENARIOS
METRICS = [c for c in SENSITIVITY_COLUMNS if c not in ("parameter", "role", "channel", "scale")]


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    # a realistic scan: autofluorescence channel (pixel AF subtraction), crosstalk, debris, red blood cells
    scene = synthetic.make_scene(seed=3, width_um=1300, height_um=1000, pixel_size_um=1.0, tls_counts=(3, 1, 1),
                                 tls_radius_um=(45, 90), extra_channels=("Autofluorescence",),
                                 realism=synthetic.Realism())
    # uncompressed: the same pixels, written and read back for less CPU (the oracles below read it ~30 times)
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("sensitivity") / "slide.ome.tiff", compression="none")
    return path


def _captured_analysis(slide_path, overrides, **options):
    """analyze_slide with sensitivity on, and the arguments its threshold_sensitivity was called with."""
    calls = []
    original = sensitivity.threshold_sensitivity

    def capture(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    sensitivity.threshold_sensitivity = capture  # the pipeline imports it when it runs
    try:
        result = analyze_slide(open_slide(slide_path), load_config(None, overrides), **options)
    finally:
        sensitivity.threshold_sensitivity = original
    return result, calls[0]


@pytest.fixture(scope="module")
def captured(slide_path):
    return _captured_analysis(slide_path, SENSITIVITY + ["compute.chunk_px=512"])


@pytest.fixture(scope="module")
def scenarios(captured):
    return captured[0].sensitivity


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


def _fingerprint(maps) -> str:
    """A digest of everything in evidence maps that the steps read: each map's name, type, shape and counts."""
    digest = hashlib.blake2b()
    for grid in ("fine", "coarse"):
        for name in sorted(getattr(maps, grid)):
            values = np.ascontiguousarray(getattr(maps, grid)[name])
            digest.update(f"{grid}/{name}/{values.dtype}/{values.shape}".encode())
            digest.update(values)
    for vector in (maps.fine_rows, maps.fine_cols, maps.coarse_rows, maps.coarse_cols):
        digest.update(np.ascontiguousarray(vector, np.int64))
    digest.update(f"{maps.fine_factor}/{maps.coarse_factor}".encode())
    return digest.hexdigest()


def _whole_scenario(base, group, scale, known: dict | None = None):
    """A scenario recomputed the plain way: whole maps, every step run again; (bed, zone, TLS labels, metrics).

    ``known`` keeps these by all they depend on (the scenario's maps by content, the config but for its compute
    settings, the grid; no drawn regions) for other checks of the same scenario: another tile size or chunk size.
    """
    maps = base.evidence.scenario(group, scale)
    config, grids, regions = base.config, base.grids, base.regions
    key = None
    if known is not None and regions is None:
        key = (_fingerprint(maps), repr(dataclasses.replace(config, compute=None)), repr(grids), base.has_t_cells)
        if key in known:
            return known[key]
    bed = tissue_and_tumour(maps, config, grids, regions)
    zone = artefact_zone(maps, config, grids)
    found = find_tls(maps, config, grids, regions, has_t_cells=base.has_t_cells, debris=zone)
    staged = staged_tls(maps, found.labels, zone, bed.distance, config, grids)
    result = bed, zone, found.labels, sensitivity._metrics_of(staged, bed, config)
    if key is not None:
        known[key] = result
    return result


def _check_every_scenario(call, known: dict | None = None) -> dict:
    """Each scenario's shortcuts against the whole recomputation: bed, artefact zone, TLS labels and metrics
    (``known``: whole recomputations kept, see :func:`_whole_scenario`)."""
    (evidence, config, grids, regions), options = call[0], call[1]
    base = sensitivity._baseline(evidence, config, grids, regions, options["has_t_cells"], *options["baseline"])
    shortcuts = {"same bed": 0, "zone patched": 0, "baseline TLS": 0}
    for group in range(len(options["groups"])):
        for scale in range(len(config.sensitivity.scales)):
            scenario = sensitivity._scenario(base, group, scale)
            if scenario is None:
                assert not evidence.changed_maps(group, scale)
                continue
            bed, zone, whole_labels, expected = _whole_scenario(base, group, scale, known)
            for name in ("tissue", "tumour", "distance", "margin"):
                a, b = getattr(scenario.bed, name), getattr(bed, name)
                assert (a is None and b is None) or np.array_equal(a, b), (group, scale, name)
            for name in ("tissue_area_mm2", "tumour_area_mm2", "margin_area_mm2"):
                assert getattr(scenario.bed, name) == getattr(bed, name), (group, scale, name)
            assert np.array_equal(scenario.zone, zone), (group, scale)
            labels = base.found.labels if scenario.labels is None else scenario.labels
            assert np.array_equal(labels, whole_labels), (group, scale)
            got = sensitivity._threshold_scenario(base, group, scale)
            assert all(_same(got[k], expected[k]) for k in METRICS), (group, scale, got, expected)
            shortcuts["same bed"] += scenario.bed.tissue is base.bed.tissue
            shortcuts["zone patched"] += scenario.zone is not base.found.debris
            shortcuts["baseline TLS"] += scenario.labels is None
    return shortcuts


@pytest.fixture(scope="module")
def whole_recomputations():
    """Whole recomputations of scenarios, kept for the module's checks (each computed once for both tile sizes,
    and for both chunk sizes of the debris slide when their maps are the same)."""
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("tile", [128, 24])
def test_every_scenario_equals_its_whole_recomputation(captured, whole_recomputations, monkeypatch, tile):
    # the oracle for each shortcut, on every scenario: the steps redone on whole maps give the same bed,
    # artefact zone, TLS and metrics as the scenario's tiles, reused candidates and reused staging
    # (small tiles: this small slide's changes are then redone in tiles rather than whole)
    monkeypatch.setattr(sensitivity, "TILE", tile)
    shortcuts = _check_every_scenario(captured[1], whole_recomputations)
    assert shortcuts["same bed"] and shortcuts["baseline TLS"], shortcuts


@pytest.fixture(scope="module")
def debris_near_tls(tmp_path_factory):
    # debris and red blood cells scattered densely, so scaled thresholds move artefact zones at the TLS
    scene = synthetic.make_scene(seed=11, width_um=900, height_um=800, pixel_size_um=1.0, tls_counts=(2, 1, 1),
                                 tls_radius_um=(45, 80), extra_channels=("Autofluorescence",),
                                 realism=synthetic.Realism(debris=8.0, rbc=4.0))
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("debris") / "slide.ome.tiff", compression="none")
    return path


@pytest.fixture(scope="module")
def separate_debris_runs(debris_near_tls):
    """Separate analyses of the debris slide with one scaled threshold, by (role, scale), each run once: their
    config has no chunk size, so both chunk sizes below compare with the same run."""
    runs = {}

    def run(role, scale):
        if (role, scale) not in runs:
            config = load_config(None, DEBRIS_PLAIN + [f"thresholds.{role}.scale={scale}", "tls.require_t_cell_zone=true"])
            runs[role, scale] = analyze_slide(open_slide(debris_near_tls), config).summary
        return runs[role, scale]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [300, 1024])
def test_debris_near_tls_and_a_t_cell_zone_at_two_chunk_sizes(debris_near_tls, separate_debris_runs,
                                                               whole_recomputations, chunk):
    overrides = DEBRIS_SENSITIVITY + [f"compute.chunk_px={chunk}", "tls.require_t_cell_zone=true"]
    result, call = _captured_analysis(debris_near_tls, overrides)
    shortcuts = _check_every_scenario(call, whole_recomputations)
    assert shortcuts["zone patched"] and shortcuts["baseline TLS"], shortcuts
    rows = result.sensitivity[result.sensitivity["parameter"] == "threshold"]
    for role, scale in (("autofluorescence", 1.25), ("tumour", 0.8), ("t_cells", 0.8)):
        row = rows[(rows["role"] == role) & (rows["scale"] == scale)]
        if len(row):
            _check(row.iloc[0], separate_debris_runs(role, scale))


@pytest.mark.slow
def test_drawn_exclusion_over_a_tls(slide_path, captured, tmp_path, monkeypatch):
    # drawn regions clip tissue, tumour and TLS after the masks are found: scenarios equal separate runs with them,
    # and the analysis's own excluded area is not overwritten by a scenario's
    import json

    plain = captured[0]
    f = plain.fine_factor
    rows, cols = np.nonzero(plain.tls_labels == 1)
    y0, y1 = int(rows.min()) * f - 40, int(rows.min() + rows.max()) // 2 * f
    x0, x1 = int(cols.min()) * f - 40, int(cols.max()) * f + 40
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    path = tmp_path / "fold.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "Fold"}}}]}))
    result, call = _captured_analysis(slide_path, SENSITIVITY, annotations=path)
    # scenarios that redo tissue and tumour apply a copy of the drawn regions, which records its excluded area:
    # never the analysis's own object (the same area here, so only the object can tell)
    applied = []
    original = sensitivity.tissue_and_tumour

    def spy(*args, **kwargs):
        applied.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "tissue_and_tumour", spy)
    _check_every_scenario(call)
    monkeypatch.undo()
    assert applied and all(drawn is not None and drawn is not call[0][3] for drawn in applied)
    alone = analyze_slide(open_slide(slide_path), load_config(None, PLAIN), annotations=path)
    assert result.summary["regions"]["excluded_area_mm2"] == alone.summary["regions"]["excluded_area_mm2"]
    rows = result.sensitivity[result.sensitivity["parameter"] == "threshold"]
    for role, scale in (("nuclei", 0.8), ("b_cells", 1.25)):
        config = load_config(None, PLAIN + [f"thresholds.{role}.scale={scale}"])
        separate = analyze_slide(open_slide(slide_path), config, annotations=path).summary
        _check(rows[(rows["role"] == role) & (rows["scale"] == scale)].iloc[0], separate)


@pytest.mark.parametrize("sigma_um, bin_um", [(8.0, 2.0), (3.0, 1.0)])
@pytest.mark.parametrize("changes", [5, 60, 4000])
def test_smoothing_in_tiles_is_bit_exact(sigma_um, bin_um, changes):
    # a map redone in tiles around its changed cells (or whole when they spread) equals the whole map redone
    rng = np.random.default_rng(changes)
    occupancy = (rng.random((300, 410)) < 0.3).astype(np.float32)
    before = smooth(occupancy, sigma_um=sigma_um, bin_um=bin_um)
    cells = rng.integers(0, occupancy.size, changes)
    cells = np.r_[cells, 0, occupancy.size - 1, 409, 299 * 410]  # the corners, where the slide edge is read as empty
    rows, cols = np.divmod(cells, 410)
    changed = occupancy.copy()
    changed[rows, cols] = 1.0 - changed[rows, cols]
    reach = smooth_reach(sigma_um=sigma_um, bin_um=bin_um) + 1
    after, moved = sensitivity._updated(before, (rows, cols), reach,
                                        lambda box: smooth(changed[box], sigma_um=sigma_um, bin_um=bin_um),
                                        lambda: smooth(changed, sigma_um=sigma_um, bin_um=bin_um))
    whole = smooth(changed, sigma_um=sigma_um, bin_um=bin_um)
    assert np.array_equal(after, whole)
    assert np.array_equal(np.sort(np.ravel_multi_index(moved, whole.shape)), np.flatnonzero(whole != before))


def test_artefact_zone_in_tiles_is_exact():
    rng = np.random.default_rng(4)
    fraction = np.where(rng.random((260, 300)) < 0.01, rng.random((260, 300)), 0).astype(np.float32)
    before = debris_zone(fraction, bin_um=2.0, dilate_um=4.0, min_fraction=0.05)
    cells = np.r_[rng.integers(0, fraction.size, 30), 0, fraction.size - 1]
    rows, cols = np.divmod(cells, 300)
    changed = fraction.copy()
    changed[rows, cols] = np.where(changed[rows, cols] > 0, 0.0, 0.5)
    after, _ = sensitivity._updated(before, (rows, cols), 2,
                                    lambda box: debris_zone(changed[box], bin_um=2.0, dilate_um=4.0, min_fraction=0.05),
                                    lambda: debris_zone(changed, bin_um=2.0, dilate_um=4.0, min_fraction=0.05))
    assert np.array_equal(after, debris_zone(changed, bin_um=2.0, dilate_um=4.0, min_fraction=0.05))


def test_patched_maps_equal_the_scenario_maps():
    # cells listed twice (cut by a block edge), differences of both signs, uint8 and uint16 counts
    rng = np.random.default_rng(1)
    fine = {"b_cells": rng.integers(4, 12, (20, 30)).astype(np.uint8), "nuclei": np.full((20, 30), 16, np.uint8)}
    coarse = {"nuclei": rng.integers(100, 200, (5, 8)).astype(np.uint16)}
    cells = np.array([3, 3, 17, 599, 250], np.int32)
    deltas = np.array([[1, -2, 3, -4, 0], [0, 0, 0, 0, 0], [2, 2, -1, 1, 4]], np.int8)
    evidence = EvidenceMaps(fine, coarse, np.full(20, 4), np.full(30, 4), np.full(5, 16), np.full(8, 16), 4, 16,
                            scenario_deltas=[{"fine": {"b_cells": (cells, deltas), "nuclei": (cells[:2], -deltas[:, :2] ** 2)},
                                              "coarse": {"nuclei": (np.array([0, 39, 0]), np.array([[-5, 7, -1]] * 3, np.int16))}}])
    for scale in range(3):
        maps, changed = sensitivity._scenario_maps(evidence, 0, scale)
        whole = evidence.scenario(0, scale)
        for grid in ("fine", "coarse"):
            for name in getattr(whole, grid):
                assert np.array_equal(getattr(maps, grid)[name], getattr(whole, grid)[name]), (scale, grid, name)
                assert getattr(maps, grid)[name].dtype == getattr(whole, grid)[name].dtype
        assert set(changed) == evidence.changed_maps(0, scale)


def test_same_growth_never_claims_a_change_away():
    # random bumps near and far from aggregates: whenever same_growth says the growth is the same, it is
    rng = np.random.default_rng(7)
    occupancy = np.zeros((200, 260), np.float32)
    for y, x, r in ((50, 60, 14), (120, 170, 20), (160, 50, 9), (60, 200, 6)):
        yy, xx = np.ogrid[:200, :260]
        occupancy[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1.0
    occupancy[rng.random(occupancy.shape) < 0.08] = 1.0
    settings = dict(seed=0.25, min_plateau=0.35, edge_fraction=0.5, reach=18)
    density = smooth(occupancy, sigma_um=8.0, bin_um=2.0)
    seeds = half_level_seeds(density, **settings)
    mask, levels = grow_to_half_level(density, **settings)
    verdicts = []
    for trial in range(60):
        changed = occupancy.copy()
        rows, cols = rng.integers(0, 200, 1 + trial % 4), rng.integers(0, 260, 1 + trial % 4)
        changed[rows, cols] = 1.0 - changed[rows, cols]
        other = smooth(changed, sigma_um=8.0, bin_um=2.0)
        moved = np.nonzero(other != density)
        same = same_growth(seeds, density, other, moved)
        verdicts.append(same)
        if same:
            other_mask, other_levels = grow_to_half_level(other, **settings)
            assert np.array_equal(other_mask, mask) and other_levels == levels, trial
    assert any(verdicts) and not all(verdicts)


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


def test_touches_means_a_cell_inside_the_box():
    # the test that decides whether a TLS's candidate or staging may be reused: a changed cell inside its box
    box = (slice(10, 20), slice(5, 8))

    def cells(*row_col):
        return np.array([r for r, _ in row_col], np.intp), np.array([c for _, c in row_col], np.intp)

    assert sensitivity._touches(box, cells((10, 5)))  # the first row and column are inside
    assert sensitivity._touches(box, cells((0, 0), (19, 7)))  # the last ones too, among cells outside
    assert not sensitivity._touches(box, cells((20, 5), (10, 8), (9, 6), (15, 4)))  # just outside on each side
    assert not sensitivity._touches(box, cells())
