"""Chunked evidence maps equal the whole-array computation for any chunking."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from tlsquant.segment.evidence import COARSE_MAPS, FINE_MAPS, EvidencePlan, compute_evidence

ROLES = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells")


def _whole_array_oracle(images, plan):
    positive = {role: image > t for role, image, t in zip(plan.roles, images, plan.thresholds)}
    voters = [positive[r] for r in ("tumour", "b_cells", "fdc", "germinal_centre", "t_cells")]
    debris = np.sum(voters, axis=0) >= plan.min_votes
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
    stack = [rng.integers(0, 100, shape).astype(np.uint16) for _ in ROLES]
    # objects straddling chunk edges: a bright disc in b_cells, debris bright everywhere
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    disc = (yy - 256) ** 2 + (xx - 300) ** 2 < 70**2
    stack[2][disc] += 200
    debris = (yy - 128) ** 2 + (xx - 128) ** 2 < 15**2
    for plane in stack:
        plane[debris] += 300
    return stack


@pytest.mark.parametrize("chunk", [64, 100, 256, 1000])
def test_chunked_counts_equal_whole_array(images, chunk):
    plan = EvidencePlan(ROLES, (120.0,) * 6, 3, 9, 4)
    oracle = _whole_array_oracle(images, plan)
    arrays = [da.from_array(image, chunks=chunk) for image in images]
    maps = compute_evidence(arrays, plan, scheduler="threads", num_workers=2)
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


def test_autofluorescence_channel_decides_debris(images):
    roles = ROLES + ("autofluorescence",)
    af = np.zeros_like(images[0])
    af[:10, :10] = 500
    plan = EvidencePlan(roles, (120.0,) * 7, 5, 10, 4)
    maps = compute_evidence([da.from_array(i, chunks=200) for i in list(images) + [af]], plan, scheduler="sync")
    assert maps.fine["debris"].sum() == 100  # only where the AF channel is bright
