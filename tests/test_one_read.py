"""The one read of a slide with cells on (evidence counted and cells segmented together) against the two
passes it replaces: the same evidence maps, the same cells, whatever the signal model saw as tissue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import tlsquant.steps.cells as cell_step
from tlsquant import load_config, open_slide, synthetic
from tlsquant.cells import CellPlan, CellRecords, count_records
from tlsquant.steps import (
    count_cells,
    count_evidence,
    count_evidence_and_cells,
    find_tls,
    finish_cells,
    model_signal,
    plan_channels,
    plan_grid,
    tissue_and_tumour,
)

COMPUTE = {"scheduler": "threads", "num_workers": 2}


@pytest.fixture(scope="module")
def glass_and_tissue(tmp_path_factory):
    """A realistic 1 µm/px slide (the coarsest that gets cells) with glass around a smaller section: blocks
    of 256 px lie on glass, on tissue and on both."""
    scene = synthetic.make_scene(seed=74, width_um=1200, height_um=900, pixel_size_um=1.0, tls_counts=(1, 1, 0),
                                 tls_radius_um=(55, 70), tissue_scale=0.9, realism=synthetic.Realism())
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("one-read") / "slide.ome.tiff", tile=128)
    return path


def _prepared(path, config):
    slide = open_slide(path, chunk_size=256)
    plan = plan_channels(slide, config)
    grid = plan_grid(slide, config)
    assert plan.measure_cells
    return slide, plan, grid, model_signal(slide, config, plan, grid, **COMPUTE)


def _same_maps(one, two) -> None:
    for grid in ("fine", "coarse"):
        maps_one, maps_two = getattr(one, grid), getattr(two, grid)
        assert maps_one.keys() == maps_two.keys()
        for name in maps_one:
            assert np.array_equal(maps_one[name], maps_two[name]), (grid, name)


def _hinted(hint: np.ndarray, which: str) -> np.ndarray:
    if which == "model":
        return hint
    if which == "none":
        return np.zeros_like(hint)
    if which == "all":  # glass blocks too: what they find must not count
        return np.ones_like(hint)
    half = hint.copy()
    half[:, half.shape[1] // 2 :] = False  # the right half of the tissue unseen
    return half


@pytest.mark.parametrize("which", ["model", "half", "none", "all"])
def test_one_read_gives_the_two_passes_maps_and_cells(glass_and_tissue, which, monkeypatch):
    config = load_config(None, ["outputs.cells_table=true"])
    slide, plan, grid, signal = _prepared(glass_and_tissue, config)
    evidence = count_evidence(slide, config, plan, grid, signal, **COMPUTE)
    bed = tissue_and_tumour(evidence, config, grid, None)
    found = find_tls(evidence, config, grid, None, has_t_cells="t_cells" in plan.roles)
    assert found.labels.max() >= 1 and bed.tissue.any() and not bed.tissue.all()
    two_passes = count_cells(slide, config, plan, grid, signal, bed, found, **COMPUTE)

    seen = signal.tissue_hint
    signal.tissue_hint = _hinted(seen, which)  # what the one read takes as likely tissue
    segmented_per_pass = []
    original = cell_step.cell_pass

    def spy(*args, **kwargs):
        records, done = original(*args, **kwargs)
        segmented_per_pass.append(len(done) - len(kwargs.get("done", ())))  # blocks this pass segmented
        return records, done

    monkeypatch.setattr(cell_step, "cell_pass", spy)
    one_evidence, segmented = count_evidence_and_cells(slide, config, plan, grid, signal, **COMPUTE)
    signal.tissue_hint = seen  # the thresholds recorded are summarised over it
    _same_maps(one_evidence, evidence)
    one_read = finish_cells(slide, config, plan, grid, signal, bed, found, segmented, **COMPUTE)

    pd.testing.assert_frame_equal(one_read.counts.table, two_passes.counts.table, check_exact=True)
    assert np.array_equal(one_read.counts.counts, two_passes.counts.counts)
    assert np.array_equal(one_read.counts.tls_counts, two_passes.counts.tls_counts)
    assert one_read.counts.excluded_outside_tissue == two_passes.counts.excluded_outside_tissue
    assert one_read.counts.nucleus_area_um2 == two_passes.counts.nucleus_area_um2
    assert one_read.thresholds == two_passes.thresholds and one_read.counts.total > 1000
    read, rest = segmented_per_pass
    if which in ("model", "all"):  # the signal model's tissue covers every block in tissue: nothing is read twice
        assert read > 0 and rest == 0
    elif which == "half":  # blocks it missed are segmented once tissue is known
        assert read > 0 and rest > 0
    else:
        assert read == 0 and rest > 0


def test_one_read_counts_the_sensitivity_scenarios_as_the_counting_pass(glass_and_tissue):
    config = load_config(None, ["sensitivity.enabled=true"])
    slide, plan, grid, signal = _prepared(glass_and_tissue, config)
    evidence = count_evidence(slide, config, plan, grid, signal, **COMPUTE)
    one_evidence, _ = count_evidence_and_cells(slide, config, plan, grid, signal, **COMPUTE)
    _same_maps(one_evidence, evidence)
    groups = len(evidence.scenario_deltas)
    scales = len(config.sensitivity.scales)
    assert groups >= 2 and len(one_evidence.scenario_deltas) == groups
    changed = 0
    for group in range(groups):
        for scale in range(scales):
            assert one_evidence.changed_maps(group, scale) == evidence.changed_maps(group, scale)
            changed += len(evidence.changed_maps(group, scale))
            _same_maps(one_evidence.scenario(group, scale), evidence.scenario(group, scale))
    assert changed > 0


def test_cells_are_counted_by_their_centre_and_blocks_without_tissue_count_nowhere():
    plan = CellPlan(markers=("CD20",), compartments=("nucleus",), thresholds=(1.0,), nuclear_threshold=1.0,
                    pixel_size_um=(0.5, 0.5), sigma_um=1.0, min_distance_um=3.0, min_area_um2=5.0,
                    max_area_um2=200.0, ring_um=2.0, fine_factor=2, coarse_factor=8, n_tls=1)
    tissue = np.zeros((4, 4), bool)  # a 32 x 32 px slide, tissue in its top-left coarse cell
    tissue[0, 0] = True
    tls = np.zeros((16, 16), np.int32)
    tls[1, 1] = 1  # level-0 px 2-3

    def records(core, centres, positive):
        y, x = (np.array(v, float) for v in zip(*centres))
        n = y.size
        return CellRecords(core, y, x, np.full(n, 10, np.int64), np.full(n, 4, np.int64),
                           np.array(positive, bool).reshape(n, 1))

    in_tissue_block = records((0, 16, 0, 16), [(2.5, 2.5), (5.5, 6.5), (12.5, 12.5)], [True, False, True])
    glass_block = records((16, 32, 16, 32), [(20.5, 20.5)], [True])  # no tissue in its core: never read
    counts = count_records(plan, [in_tissue_block, glass_block], tissue=tissue, tumour=np.zeros_like(tissue),
                           debris=np.zeros((16, 16), bool), tls_labels=tls)
    assert counts.total == 2 and counts.excluded_outside_tissue == 1
    assert counts.counts[0].tolist() == [2, 1]  # cells, CD20+
    assert counts.tls_counts[1].tolist() == [1, 1]  # the cell centred at (2.5, 2.5) lies in TLS 1
    assert counts.nucleus_area_um2 == 20 * 0.25


def test_analysis_with_one_read_is_the_analysis_with_two_passes(glass_and_tissue):
    from tlsquant import analyze_slide

    runs = []
    for one_read in ("false", "true"):
        config = load_config(None, ["outputs.cells_table=true", f"compute.one_read={one_read}"])
        result = analyze_slide(open_slide(glass_and_tissue, chunk_size=256), config, **COMPUTE)
        runs.append(result)
    two, one = runs
    assert one.summary["config"]["compute"]["one_read"] and not two.summary["config"]["compute"]["one_read"]
    same = {k: v for k, v in one.summary.items() if k not in ("timing_seconds", "config", "provenance")}
    assert same == {k: v for k, v in two.summary.items() if k not in ("timing_seconds", "config", "provenance")}
    pd.testing.assert_frame_equal(one.tls, two.tls, check_exact=True)
    pd.testing.assert_frame_equal(one.cells, two.cells, check_exact=True)
    assert two.summary["tls_count"] >= 1 and two.summary["cells"]["total"] > 1000
