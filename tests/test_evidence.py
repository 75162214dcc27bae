"""Chunked evidence maps equal the whole-array computation for any chunking, with local thresholds and crosstalk."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from tlsquant.background import expand
from tlsquant.segment.evidence import COARSE_MAPS, FINE_MAPS, EvidencePlan, ScaledThresholds, compute_evidence, scaled_level

ROLES = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells")
GRID = 9  # threshold-map cell, level-0 px


def _threshold_maps(shape, roles):
    rows, cols = -(-shape[0] // GRID), -(-shape[1] // GRID)
    gradient = np.linspace(100.0, 140.0, cols, dtype=np.float32)[None, :].repeat(rows, 0)  # a background gradient
    return {role: gradient + 0.5 * k for k, role in enumerate(roles)}


def _whole_array_oracle(images, plan, thresholds, backgrounds):
    data = dict(zip(plan.roles, images))
    values = {role: data[role].astype(np.float32) for role in plan.roles}
    for target, sources in plan.crosstalk:
        for source, kappa in sources:
            values[target] = values[target] - np.float32(kappa) * (
                data[source].astype(np.float32) - expand(backgrounds[source], GRID, 0, 0, data[source].shape))
    positive = {role: values[role] > expand(thresholds[role], GRID, 0, 0, values[role].shape) for role in plan.roles}
    votes = (positive["tumour"].astype(int) + positive["b_cells"] + positive["t_cells"]
             + (positive["fdc"] | positive["germinal_centre"]))
    debris = votes >= plan.min_votes
    if "autofluorescence" in positive:
        debris |= positive["autofluorescence"]
    maps = {}
    for names, factor, key in ((FINE_MAPS, plan.fine_factor, "fine"), (COARSE_MAPS, plan.coarse_factor, "coarse")):
        height, width = images[0].shape
        padded_h, padded_w = -(-height // factor) * factor, -(-width // factor) * factor
        out = {}
        for name in names:
            mask = debris if name == "debris" else positive[name] & ~debris
            padded = np.zeros((padded_h, padded_w), np.int64)
            padded[:height, :width] = mask
            out[name] = padded.reshape(padded_h // factor, factor, padded_w // factor, factor).sum(axis=(1, 3))
        maps[key] = out
    return maps


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    shape = (517, 631)  # not a multiple of any grid or chunk
    stack = [rng.integers(0, 100, shape).astype(np.uint16) + np.linspace(0, 40, shape[1]).astype(np.uint16)
             for _ in ROLES]
    # objects straddling chunk edges: a bright disc in b_cells (with 10 % crosstalk into t_cells), debris bright everywhere
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    disc = (yy - 256) ** 2 + (xx - 300) ** 2 < 70**2
    stack[2][disc] += 200
    stack[5][disc] += 20
    debris = (yy - 128) ** 2 + (xx - 128) ** 2 < 15**2
    for plane in stack:
        plane[debris] += 300
    return stack


@pytest.mark.parametrize("chunk", [64, 100, 256, 1000])
def test_chunked_counts_equal_whole_array(images, chunk):
    crosstalk = (("t_cells", (("b_cells", 0.1),)),)
    plan = EvidencePlan(ROLES, 3, 9, GRID, 3, crosstalk)
    thresholds = _threshold_maps(images[0].shape, ROLES)
    backgrounds = {"b_cells": thresholds["b_cells"] - 30}
    oracle = _whole_array_oracle(images, plan, thresholds, backgrounds)
    arrays = [da.from_array(image, chunks=chunk) for image in images]
    maps = compute_evidence(arrays, plan, thresholds=thresholds, backgrounds=backgrounds, scheduler="threads",
                            num_workers=2)
    for name in FINE_MAPS:
        np.testing.assert_array_equal(maps.fine[name], oracle["fine"][name])
    for name in COARSE_MAPS:
        np.testing.assert_array_equal(maps.coarse[name], oracle["coarse"][name])
    assert maps.fine["debris"].sum() > 0 and maps.fine["b_cells"].sum() > 0
    assert maps.pixels("fine").sum() == images[0].size and maps.pixels("coarse")[-1, -1] == (517 % 9) * (631 % 9)
    np.testing.assert_allclose(maps.fraction("fine", "b_cells"), maps.fine["b_cells"] / maps.pixels("fine"), rtol=1e-6)
    box = (slice(100, 173), slice(150, 211))
    np.testing.assert_allclose(maps.fraction("fine", "b_cells", box),
                               maps.fine["b_cells"][box] / maps.pixels("fine", box), rtol=1e-6)


def test_crosstalk_is_removed_before_thresholding(images):
    thresholds = _threshold_maps(images[0].shape, ROLES)
    thresholds["t_cells"] = thresholds["t_cells"] + 10  # the disc's crosstalk (+20) would cross it, noise alone not
    arrays = [da.from_array(image, chunks=128) for image in images]
    plain = compute_evidence(arrays, EvidencePlan(ROLES, 3, 9, GRID, 3), thresholds=thresholds, scheduler="sync")
    plan = EvidencePlan(ROLES, 3, 9, GRID, 3, (("t_cells", (("b_cells", 0.1),)),))
    fixed = compute_evidence(arrays, plan, thresholds=thresholds, backgrounds={"b_cells": thresholds["b_cells"] - 60},
                             scheduler="sync")
    disc = (slice(60, 100), slice(80, 120))  # fine grid, inside the disc
    assert plain.fraction("fine", "t_cells", disc).mean() > 2 * fixed.fraction("fine", "t_cells", disc).mean()


def test_one_channel_in_two_roles_votes_once(images):
    # tumour and t_cells read the same channel: a positive pixel there is one lineage, not two
    roles = ROLES
    stack = list(images)
    stack[1] = images[1].copy()
    stack[1][400:480, 400:500] += 250  # a patch of tumour nuclei
    stack[5] = stack[1]
    thresholds = _threshold_maps(images[0].shape, roles)
    thresholds["t_cells"] = thresholds["tumour"]
    channels = ("DAPI", "X", "CD20", "CD21", "CD23", "X")
    twice = EvidencePlan(roles, 3, 9, GRID, 2)
    once = EvidencePlan(roles, 3, 9, GRID, 2, channels=channels)
    arrays = [da.from_array(image, chunks=200) for image in stack]
    a = compute_evidence(arrays, twice, thresholds=thresholds, scheduler="sync")
    b = compute_evidence(arrays, once, thresholds=thresholds, scheduler="sync")
    assert b.fine["debris"].sum() < a.fine["debris"].sum()


def test_autofluorescence_channel_decides_debris(images):
    roles = ROLES + ("autofluorescence",)
    af = np.zeros_like(images[0])
    af[:10, :10] = 500
    plan = EvidencePlan(roles, 5, 10, GRID, 4)
    thresholds = {role: np.full((-(-517 // GRID), -(-631 // GRID)), 400.0, np.float32) for role in roles}
    maps = compute_evidence([da.from_array(i, chunks=200) for i in list(images) + [af]], plan, thresholds=thresholds,
                            scheduler="sync")
    assert maps.fine["debris"].sum() == 100  # only where the AF channel is bright


@pytest.mark.parametrize("chunk", [64, 100, 256, 1000])
@pytest.mark.parametrize("as_float", [False, True])
def test_scaled_thresholds_in_one_pass_equal_separate_passes(images, chunk, as_float):
    # each scenario group's maps, counted alongside the baseline, equal a separate pass with its thresholds;
    # tumour and t_cells read one channel (scaled together), crosstalk into t_cells, an AF channel
    roles = ROLES + ("autofluorescence",)
    stack = [image.astype(np.float32) if as_float else image for image in images]
    af = np.zeros_like(stack[0])
    af[300:340, 50:120] = 500
    stack.append(af)
    thresholds = _threshold_maps(images[0].shape, roles)
    thresholds["autofluorescence"] = thresholds["autofluorescence"] + 300
    backgrounds = {"b_cells": thresholds["b_cells"] - 30}
    crosstalk = (("t_cells", (("b_cells", 0.1),)),)
    channels = ("DAPI", "X", "CD20", "CD21", "CD23", "CD3", "AF")
    scales = (0.8, 0.9, 1.1, 1.25)
    groups = (("nuclei",), ("b_cells",), ("fdc",), ("germinal_centre",), ("tumour",), ("autofluorescence",))
    # scaled: the margin of 60 above a background (or, for AF, a margin map), as the pipeline scales them
    scaled = {role: ScaledThresholds(thresholds[role] - 60, None, (1.0,) * 4, tuple(60 * s for s in scales))
              for role in ROLES}
    spread = np.linspace(40, 80, thresholds["b_cells"].size, dtype=np.float32).reshape(thresholds["b_cells"].shape)
    scaled["autofluorescence"] = ScaledThresholds(thresholds["autofluorescence"] - spread, spread, scales, (0.0,) * 4)
    levels = {role: [scaled_level(t.base, t.spread, c, d, t.base.shape) for c, d in zip(t.factors, t.shifts)]
              for role, t in scaled.items()}
    plan = EvidencePlan(roles, 3, 9, GRID, 2, crosstalk, channels=channels, scenarios=groups)
    arrays = [da.from_array(image, chunks=chunk) for image in stack]
    maps = compute_evidence(arrays, plan, thresholds=thresholds, backgrounds=backgrounds, scaled=scaled,
                            scheduler="threads", num_workers=2)
    plain = EvidencePlan(roles, 3, 9, GRID, 2, crosstalk, channels=channels)
    whole = [da.from_array(image, chunks=image.shape) for image in stack]
    changed = 0
    for g, group in enumerate(groups):
        for k in range(len(scales)):
            key = (as_float, g, k)
            if key not in _SEPARATE:  # the separate passes do not depend on the chunking: count them once
                _SEPARATE[key] = compute_evidence(whole, plain, thresholds={**thresholds, **{r: levels[r][k] for r in group}},
                                                  backgrounds=backgrounds, scheduler="sync")
            separate = _SEPARATE[key]
            scenario = maps.scenario(g, k)
            for name in FINE_MAPS:
                np.testing.assert_array_equal(scenario.fine[name], separate.fine[name], err_msg=f"{group} {k} {name}")
            for name in COARSE_MAPS:
                np.testing.assert_array_equal(scenario.coarse[name], separate.coarse[name], err_msg=f"{group} {k} {name}")
            changed += len(maps.changed_maps(g, k))
    assert changed >= len(groups) * len(scales)  # every scenario moved some map
    baseline = compute_evidence(whole, plain, thresholds=thresholds, backgrounds=backgrounds, scheduler="sync")
    for name in FINE_MAPS:  # the baseline is untouched
        np.testing.assert_array_equal(maps.fine[name], baseline.fine[name])


_SEPARATE: dict = {}


def test_packed_counts_add_up_as_a_whole_array():
    from tlsquant.segment.evidence import PackedCounts

    rng = np.random.default_rng(3)
    shape = (70, 90)
    whole = np.zeros((3, *shape), np.uint16)
    packed = PackedCounts(3, shape, np.uint16)
    counted = 0
    for _ in range(60):  # blocks anywhere, overlapping, some maps empty, to the grid's end
        y0, x0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, shape[0] - y0 + 1), rng.integers(1, shape[1] - x0 + 1)
        counts = (rng.random((3, h, w)) < 0.05).astype(np.uint16) * rng.integers(1, 900, (3, h, w)).astype(np.uint16)
        counts[rng.integers(0, 3)] = 0
        whole[:, y0 : y0 + h, x0 : x0 + w] += counts
        packed.add((y0, x0), counts)
        counted += bool(counts.any())
    packed.add((5, 5), np.zeros((3, 4, 4), np.uint16))  # nothing counted: nothing kept
    assert whole.any() and len(packed.parts) == counted > 40
    assert np.array_equal(packed.whole(), whole)
