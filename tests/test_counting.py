"""The compiled counting sweep gives exactly the counts of the numpy block pass, in every configuration."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from tlsquant.segment import counting, evidence
from tlsquant.segment.evidence import COARSE_MAPS, FINE_MAPS, EvidencePlan, compute_evidence

pytestmark = pytest.mark.skipif(not counting.available(), reason="numba is not installed")
GRID = 7


def _case(rng, roles, dtype, shape=(301, 389)):
    """Noisy channels with stain patches, debris bright in all, thresholds around the noise (some below zero)."""
    rows, cols = -(-shape[0] // GRID), -(-shape[1] // GRID)
    stack = []
    for k, _ in enumerate(roles):
        plane = rng.normal(100, 25, shape)
        plane[rng.random(shape) < 0.05] += 150
        plane[40 + 20 * k : 90 + 20 * k, 60:160] += 120  # overlapping patches: votes between lineages
        plane[200:230, 300:340] += 400  # debris
        stack.append(np.clip(plane, 0, None).astype(dtype))
    thresholds = {role: rng.uniform(90, 160, (rows, cols)).astype(np.float32) for role in roles}
    thresholds[roles[0]][:3, :3] = -5.5  # below every value: clipped for unsigned data, as numpy does
    backgrounds = {role: rng.uniform(60, 110, (rows, cols)).astype(np.float32) for role in roles}
    return stack, thresholds, backgrounds


def _both(stack, plan, thresholds, backgrounds, chunk, monkeypatch):
    arrays = [da.from_array(plane, chunks=chunk) for plane in stack]
    kwargs = dict(thresholds=thresholds, backgrounds=backgrounds, scheduler="sync")
    compiled = compute_evidence(arrays, plan, **kwargs)
    monkeypatch.setattr(evidence, "COMPILED", False)
    reference = compute_evidence(arrays, plan, **kwargs)
    monkeypatch.setattr(evidence, "COMPILED", True)
    return compiled, reference


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("chunk", [64, 97, 1000])
def test_compiled_equals_numpy_with_crosstalk_af_and_shared_channels(dtype, chunk, monkeypatch):
    roles = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")
    stack, thresholds, backgrounds = _case(np.random.default_rng(7), roles, dtype)
    stack[4] = stack[3]  # CD21 and CD23 read one channel: one vote
    plan = EvidencePlan(roles, 3, 9, GRID, 2,
                        crosstalk=(("t_cells", (("b_cells", 0.1), ("fdc", 0.05))), ("tumour", (("nuclei", 0.02),))),
                        pixel_af=(("b_cells", 0.3), ("t_cells", 0.25)), af_glass=12.5,
                        channels=("DAPI", "TFE3", "CD20", "CD21", "CD21", "CD3", "AF"))
    compiled, reference = _both(stack, plan, thresholds, backgrounds, chunk, monkeypatch)
    for name in FINE_MAPS:
        np.testing.assert_array_equal(compiled.fine[name], reference.fine[name], err_msg=name)
        assert compiled.fine[name].dtype == reference.fine[name].dtype
    for name in COARSE_MAPS:
        np.testing.assert_array_equal(compiled.coarse[name], reference.coarse[name], err_msg=name)
    assert compiled.fine["debris"].sum() > 0 and compiled.fine["t_cells"].sum() > 0


@pytest.mark.parametrize("min_votes", [1, 2, 3, 5])
def test_compiled_equals_numpy_with_absent_roles(min_votes, monkeypatch):
    roles = ("nuclei", "b_cells", "tumour")  # no T cells, no FDC, no AF channel
    stack, thresholds, backgrounds = _case(np.random.default_rng(min_votes), roles, np.uint16)
    plan = EvidencePlan(roles, 4, 16, GRID, min_votes)
    compiled, reference = _both(stack, plan, thresholds, backgrounds, 128, monkeypatch)
    for name in FINE_MAPS:
        np.testing.assert_array_equal(compiled.fine[name], reference.fine[name], err_msg=name)
    for name in COARSE_MAPS:
        np.testing.assert_array_equal(compiled.coarse[name], reference.coarse[name], err_msg=name)
    # one vote makes every positive pixel debris
    assert compiled.fine["t_cells"].sum() == 0 and (compiled.fine["b_cells"].sum() > 0) == (min_votes > 1)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_scenarios_counted_beside_the_sweep_equal_the_numpy_pass(dtype, monkeypatch):
    """With sensitivity scenarios the sweep counts the baseline and the band's pixels are decided alone."""
    roles = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")
    stack, thresholds, backgrounds = _case(np.random.default_rng(11), roles, dtype)
    scales = (0.8, 1.25)
    scaled = {role: evidence.ScaledThresholds(thresholds[role] - 40, None, (1.0,) * 2, tuple(40 * s for s in scales))
              for role in ("b_cells", "fdc", "t_cells")}
    plan = EvidencePlan(roles, 3, 9, GRID, 2, crosstalk=(("t_cells", (("b_cells", 0.1),)),),
                        pixel_af=(("fdc", 0.3),), af_glass=12.5, scenarios=(("b_cells",), ("fdc",), ("t_cells",)))
    arrays = [da.from_array(plane, chunks=100) for plane in stack]
    kwargs = dict(thresholds=thresholds, backgrounds=backgrounds, scaled=scaled, scheduler="sync")
    compiled = compute_evidence(arrays, plan, **kwargs)
    monkeypatch.setattr(evidence, "COMPILED", False)
    reference = compute_evidence(arrays, plan, **kwargs)
    moved = 0
    for g in range(3):
        for k in range(len(scales)):
            a, b = compiled.scenario(g, k), reference.scenario(g, k)
            for name in FINE_MAPS:
                np.testing.assert_array_equal(a.fine[name], b.fine[name], err_msg=f"{g} {k} {name}")
            for name in COARSE_MAPS:
                np.testing.assert_array_equal(a.coarse[name], b.coarse[name], err_msg=f"{g} {k} {name}")
            moved += len(compiled.changed_maps(g, k))
    assert moved >= 6  # every scenario changed some map
