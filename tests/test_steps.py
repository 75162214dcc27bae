"""The named analysis steps, each on its own; run in order they give analyze_slide's result."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from tlsquant import analyze_slide, load_config, open_slide, synthetic
from tlsquant.errors import ConfigError, SlideTooLargeError
from tlsquant.pixel_size import PixelSize
from tlsquant.steps import (
    check_memory,
    count_evidence,
    find_tls,
    measure_tls,
    model_signal,
    plan_channels,
    plan_grid,
    slide_metrics_of,
    tissue_and_tumour,
)
from tlsquant.steps.tls import artefact_area_mm2

PLAIN = ["cells.enabled=false", "outputs.qc_png=false"]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    scene = synthetic.make_scene(seed=11, width_um=1200, height_um=900, pixel_size_um=1.0, tls_counts=(2, 1, 0),
                                 tls_radius_um=(50, 70), extra_channels=("Vimentin",))
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("steps") / "slide.ome.tiff")
    return open_slide(path)


def test_plan_channels_names_every_role_and_scored_marker(slide):
    plan = plan_channels(slide, load_config())
    assert plan.roles["nuclei"] == "DAPI" and plan.roles["b_cells"] == "CD20" and plan.measure_cells
    scored = {m.channel: m.compartment for m in plan.cell_markers}
    assert scored["CD20"] == "ring" and "DAPI" not in scored and "Vimentin" in scored
    assert plan.b_cell_key == "cd20" and set(plan.channels) >= set(plan.roles.values()) | set(scored)


def test_a_marker_of_unknown_compartment_is_left_out_with_a_warning_or_refused_when_asked_for(slide):
    config = load_config(None, ["cells.ring_markers=[\"CD3\", \"CD20\", \"CD21\", \"CD23\"]"])
    plan = plan_channels(slide, config)
    assert "Vimentin" not in {m.channel for m in plan.cell_markers}
    assert any("not scored per cell: " in w and "Vimentin" in w and "cells.ring_markers" in w for w in plan.warnings)
    explicit = load_config(None, ["cells.markers=[\"CD20\", \"Vimentin\"]",
                                  "cells.ring_markers=[\"CD3\", \"CD20\", \"CD21\", \"CD23\"]"])
    with pytest.raises(ConfigError, match="Vimentin"):
        plan_channels(slide, explicit)


def test_cells_are_skipped_with_the_reason_on_coarse_pixels(tmp_path):
    scene = synthetic.make_scene(seed=1, width_um=800, height_um=600, pixel_size_um=2.0, tls_counts=(1, 0, 0))
    path, _ = synthetic.write_slide(scene, tmp_path / "coarse.ome.tiff")
    plan = plan_channels(open_slide(path), load_config())
    assert not plan.measure_cells and plan.cell_markers == () and "coarser than cells.max_pixel_size_um" in plan.cells_skipped
    assert plan.cells_skipped in plan.warnings


def test_plan_grid_bins_in_micrometres(slide):
    grid = plan_grid(slide, load_config())
    assert (grid.fine_factor, grid.coarse_factor) == (2, 8)  # 2 µm and 8 µm bins at 1 µm/px
    assert grid.fine_bin == PixelSize(2.0, 2.0) and grid.coarse_um == 8.0 and grid.bins_per_coarse == 4


def test_check_memory_refuses_an_absurd_slide_before_reading_it(slide):
    with pytest.raises(SlideTooLargeError, match="compute.max_memory_gb"):
        check_memory(slide, fine_factor=1, coarse_factor=1, n_channels=8, limit_gb=1e-6)
    assert 0 < check_memory(slide, fine_factor=2, coarse_factor=8, n_channels=8, limit_gb=100) < 1


def test_the_steps_in_order_give_the_analysis(slide):
    config = load_config(None, PLAIN)
    plan = plan_channels(slide, config)
    grid = plan_grid(slide, config)
    signal = model_signal(slide, config, plan, grid, scheduler="sync")
    evidence = count_evidence(slide, config, plan, grid, signal, scheduler="sync")
    bed = tissue_and_tumour(evidence, config, grid)
    found = find_tls(evidence, config, grid, has_t_cells="t_cells" in plan.roles)
    tls = measure_tls(evidence, config, plan, grid, bed, found, None, slide_shape=slide.shape[1:])
    metrics = slide_metrics_of(tls, config, plan, bed, None)
    result = analyze_slide(slide, config)
    pd.testing.assert_frame_equal(tls, result.tls)
    assert np.array_equal(found.labels, result.tls_labels) and np.array_equal(bed.tumour, result.tumour_mask)
    areas = {"margin_area_mm2": round(bed.margin_area_mm2, 6),
             "excluded_artefact_area_mm2": round(artefact_area_mm2(evidence, found.debris, bed.tissue, grid), 6)}
    assert {**metrics, **areas} == result.metrics and result.metrics["tls_count"] == result.summary["tls_count"] >= 2
    assert result.roles == plan.roles and result.thresholds == result.summary["thresholds"]
    assert result.pixel_size == PixelSize(1.0, 1.0) and result.pixel_size_um == (1.0, 1.0)


def test_tls_detection_is_a_function_of_the_maps_alone(slide):
    # one map changed by hand: B cells wiped from one TLS's box remove exactly that TLS
    config = load_config(None, PLAIN)
    plan, grid = plan_channels(slide, config), plan_grid(slide, config)
    evidence = count_evidence(slide, config, plan, grid, model_signal(slide, config, plan, grid), scheduler="sync")
    before = find_tls(evidence, config, grid, has_t_cells=True)
    box = tuple(slice(max(0, s.start - 10), s.stop + 10) for s in ndi.find_objects(before.labels)[0])
    evidence.fine["b_cells"][box] = 0
    after = find_tls(evidence, config, grid, has_t_cells=True)
    assert after.labels.max() == before.labels.max() - 1 and not after.labels[box].any()
