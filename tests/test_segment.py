"""Tumour bed and aggregate detection on hand-made fraction maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tlsquant.classify import largest_network_um2, stage
from tlsquant.config import TLS
from tlsquant.measure import (
    TLS_COLUMNS,
    empty_tls_table,
    locate,
    signed_tumour_distance,
    slide_metrics,
)
from tlsquant.segment.aggregates import detect_aggregates
from tlsquant.segment.regions import footprint_dilation, tissue_mask, tumour_mask

BIN_UM = 2.0


def _disc(shape, cy, cx, radius, value=1.0):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) * value


def _dotted(mask, rng, density=0.35):
    """Separate 'nuclei': a random share of cells inside the mask are positive."""
    return (mask & (rng.random(mask.shape) < density)).astype(np.float32)


def test_tumour_bed_includes_enclosed_stroma_and_tls(rng):
    shape = (250, 300)  # coarse grid of 8 µm cells
    bed = _disc(shape, 125, 150, 90) > 0
    holes = (_disc(shape, 110, 130, 20) > 0) | (_disc(shape, 150, 190, 12) > 0)
    fraction = _dotted(bed & ~holes, rng)
    mask, info = tumour_mask(fraction, bin_um=8.0, sigma_um=20, edge_fraction=0.5,
                             min_positive_fraction=0.04, closing_um=50, min_area_mm2=0.02)
    assert mask[holes].all()  # holes belong to the bed
    assert mask.sum() == pytest.approx(bed.sum(), rel=0.05)
    assert info["tumour_fraction_level"] == pytest.approx(0.35, abs=0.05)
    empty, _ = tumour_mask(np.zeros(shape), bin_um=8.0, sigma_um=20, edge_fraction=0.5,
                           min_positive_fraction=0.04, closing_um=50, min_area_mm2=0.02)
    assert not empty.any()


def _detect(fraction, **overrides):
    options = dict(bin_um=BIN_UM, sigma_um=8.0, min_b_fraction=0.15, min_b_plateau=0.2, edge_fraction=0.5,
                   min_area_um2=6000.0, max_debris_fraction=TLS.max_debris_fraction,
                   t_zone_width_um=TLS.t_zone_width_um)
    options.update(overrides)
    return detect_aggregates(fraction, **options)


def test_dense_aggregates_are_found_with_their_area(rng):
    shape = (400, 400)
    big = _disc(shape, 100, 100, 35) > 0       # 35 cells = 70 µm radius: 15,400 µm²
    dim = _disc(shape, 300, 120, 30) > 0       # sparser but still dense
    small = _disc(shape, 100, 300, 10) > 0     # 1,250 µm²: below TLS size
    loose = _disc(shape, 300, 300, 60) > 0     # a loose infiltrate
    fraction = (_dotted(big, rng, 0.45) + _dotted(dim, rng, 0.3) + _dotted(small, rng, 0.5)
                + _dotted(loose, rng, 0.05))
    labels, info = _detect(fraction)
    assert labels.max() == 2
    for truth in (big, dim):
        found = np.unique(labels[truth])
        found = found[found > 0]
        assert len(found) == 1
        assert (labels == found[0]).sum() == pytest.approx(truth.sum(), rel=0.1)
    assert not labels[small].any() and not labels[loose].any()
    assert info["rejected_small"] >= 1


def test_debris_and_missing_t_zone_reject_aggregates(rng):
    shape = (200, 200)
    blob = _disc(shape, 100, 100, 35) > 0
    fraction = _dotted(blob, rng, 0.45)
    debris = _disc(shape, 100, 100, 30) > 0
    labels, info = _detect(fraction, debris=debris)
    assert labels.max() == 0 and info["rejected_debris"] == 1
    no_t = np.zeros(shape)
    labels, info = _detect(fraction, t_fraction=no_t, min_t_fraction=0.05)
    assert labels.max() == 0 and info["rejected_no_t_zone"] == 1
    ring = (_disc(shape, 100, 100, 48) > 0) & ~blob
    labels, _ = _detect(fraction, t_fraction=_dotted(ring, rng, 0.4), min_t_fraction=0.05)
    assert labels.max() == 1


def test_a_patch_of_an_infiltrate_is_not_a_follicle_however_sharply_it_ends(rng):
    """Follicles are packed with B cells; a dense infiltrate patch holds a third to a half as many. A follicle
    whose T-cell zone is rich in B cells has a low contrast to its surroundings but the follicle's density."""
    shape = (400, 400)
    follicle = _disc(shape, 100, 100, 40) > 0
    rim = (_disc(shape, 100, 100, 60) > 0) & ~follicle  # T-cell zone with scattered B cells
    second = _disc(shape, 300, 100, 35) > 0
    patch = _disc(shape, 200, 300, 40) > 0  # sharply bounded, but a third as dense
    fraction = (_dotted(follicle, rng, 0.85) + _dotted(rim, rng, 0.15) + _dotted(second, rng, 0.8)
                + _dotted(patch, rng, 0.3))
    labels, info = _detect(fraction, min_contrast=4.5, min_relative_density=0.6, rejected=(rejected := []))
    assert labels.max() == 2 and labels[follicle].any() and labels[second].any() and not labels[patch].any()
    assert info["rejected_low_density"] == 1 and [r[0] for r in rejected] == ["low_density"]
    assert info["b_density_reference"] == pytest.approx(0.85, abs=0.05)
    # the old rule alone (contrast >= 6.5) loses the follicle with the B-rich T-cell zone and keeps the patch
    labels, _ = _detect(fraction, min_contrast=6.5)
    assert not labels[follicle].any() and labels[patch].any()
    # gain-free: the same answer when the whole map is scaled (as occupancy is by a brighter stain)
    labels_scaled, _ = _detect(fraction * 0.8, min_b_fraction=0.12, min_b_plateau=0.16, min_contrast=4.5,
                               min_relative_density=0.6)
    assert labels_scaled.max() == 2 and not labels_scaled[patch].any()


def test_network_needs_connected_area_not_scattered_cells(rng):
    region = _disc((120, 120), 60, 60, 50) > 0
    network = np.zeros((120, 120), bool)
    network[40:80:3, 30:90] = True  # a web of lines
    network[40:80, 30:90:3] = True
    scattered = np.zeros((120, 120), bool)
    scattered[rng.integers(15, 105, 30), rng.integers(15, 105, 30)] = True
    assert largest_network_um2(network, region, bin_um=2.0, closing_um=4.0) > 2000
    assert largest_network_um2(scattered, region, bin_um=2.0, closing_um=4.0) < 100
    assert largest_network_um2(np.zeros_like(region), region, bin_um=2.0, closing_um=4.0) == 0.0


def test_cd23_positive_b_cells_do_not_make_a_germinal_centre(rng):
    """Naive and mantle B cells carry some CD23: scattered cells, even packed in a follicle, stay below the
    default network area; a germinal-centre meshwork 60 µm across is far above it."""
    from tlsquant.config import Config

    rules = Config().maturation
    shape = (150, 150)  # 2 µm cells: a 300 µm box
    follicle = _disc(shape, 75, 75, 50) > 0
    cell_centres = follicle & (rng.random(shape) < 1 / 12)  # one B cell per ~50 µm², 15 % of them CD23+
    cd23_cells = cell_centres & (rng.random(shape) < 0.15)
    positive = np.zeros(shape, bool)
    for y, x in zip(*np.nonzero(cd23_cells)):  # a 7 µm membrane ring touches about 3 x 3 grid cells
        positive[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = True
    scattered = largest_network_um2(positive, follicle, bin_um=2.0, closing_um=rules.closing_um)
    meshwork = np.zeros(shape, bool)
    meshwork[45:106:3, 45:106] = True
    meshwork[45:106, 45:106:3] = True
    meshwork &= _disc(shape, 75, 75, 15) > 0  # 60 µm across
    gc = largest_network_um2(meshwork, follicle, bin_um=2.0, closing_um=rules.closing_um)
    assert scattered < rules.min_network_area_um2 < gc
    assert stage(scattered, 0, scheme="binary", min_network_area_um2=rules.min_network_area_um2) == "primary"
    assert stage(gc, 0, scheme="binary", min_network_area_um2=rules.min_network_area_um2) == "mature"


@pytest.mark.parametrize("gc, fdc, scheme, expected", [
    (900, 900, "binary", "mature"), (100, 900, "binary", "primary"), (0, 0, "binary", "primary"),
    (900, 900, "silina", "secondary_follicle"), (100, 900, "silina", "primary_follicle"),
    (100, 100, "silina", "early"),
])
def test_stage_rules(gc, fdc, scheme, expected):
    assert stage(gc, fdc, scheme=scheme, min_network_area_um2=600) == expected


def test_location_and_signed_distance():
    tumour = np.zeros((100, 100), bool)
    tumour[20:60, 20:60] = True
    distance = signed_tumour_distance(tumour, bin_um=(10.0, 10.0))
    assert distance[40, 40] < 0 and distance[40, 80] == pytest.approx(210.0)
    assert locate(-30.0, margin_um=500) == "intratumoral"
    assert locate(400.0, margin_um=500) == "peritumoral"
    assert locate(700.0, margin_um=500) == "distal"
    assert signed_tumour_distance(np.zeros((5, 5), bool), bin_um=(1.0, 1.0)) is None


def test_metrics_without_tumour_or_tls_are_null_not_inf():
    table = empty_tls_table()
    assert list(table.columns) == TLS_COLUMNS
    metrics = slide_metrics(table, tissue_area_mm2=3.0, tumour_area_mm2=0.0, stages=("primary", "mature"),
                            locations=("intratumoral", "peritumoral", "distal"))
    assert metrics["tls_count"] == 0 and metrics["tls_density_per_mm2"] is None and metrics["tls_area_pct"] is None
    metrics = slide_metrics(table, tissue_area_mm2=3.0, tumour_area_mm2=2.0, stages=("primary", "mature"),
                            locations=("intratumoral", "peritumoral", "distal"))
    assert metrics["tls_density_per_mm2"] == 0.0 and metrics["tls_area_pct"] == 0.0


def test_tissue_edge_follows_its_edge_fraction():
    shape = (120, 120)
    tissue = _disc(shape, 60, 60, 40) > 0
    fraction = tissue * 0.6
    options = dict(bin_um=8.0, sigma_um=40.0, min_fraction=0.03, min_area_mm2=0.01)
    half, _ = tissue_mask(fraction, **options)
    assert half.sum() == pytest.approx(tissue.sum(), rel=0.05)  # half the plateau: the true edge
    assert tissue_mask(fraction, **options, edge_fraction=0.5)[0].sum() == half.sum()
    assert tissue_mask(fraction, **options, edge_fraction=0.8)[0].sum() < 0.85 * half.sum()


def test_contrast_band_and_growth_reach_are_settings(rng):
    shape = (200, 200)
    core = _disc(shape, 100, 100, 30) > 0
    halo = (_disc(shape, 100, 100, 38) > 0) & ~core  # a dense rim just outside the outline
    fraction = _dotted(core, rng, 0.6) + _dotted(halo, rng, 0.2)
    bounded = dict(min_contrast=4.5)
    assert _detect(fraction, **bounded)[0].max() == 1  # band 10-40 µm: mostly past the rim
    labels, info = _detect(fraction, **bounded, contrast_band_um=(2.0, 12.0))  # the band is the rim itself
    assert labels.max() == 0 and info["rejected_low_contrast"] == 1
    area = (_detect(fraction)[0] > 0).sum()
    assert (_detect(fraction, grow_um=0.0, sigma_um=1.0)[0] > 0).sum() < area


def test_cell_metrics_name_the_b_cell_channel_by_its_role():
    from types import SimpleNamespace

    from tlsquant.cells import REGIONS
    from tlsquant.measure import cell_metrics

    counts = np.zeros((len(REGIONS), 3), np.int64)
    counts[REGIONS.index("all")] = (200, 30, 50)  # cells, MS4A1+, CD3+
    counts[REGIONS.index("tumour")] = (100, 5, 20)
    counts[REGIONS.index("tls")] = (40, 25, 10)
    cells = SimpleNamespace(total=200, counts=counts, nucleus_area_um2=6000.0, excluded_outside_tissue=0,
                            in_artefacts=0, scored=lambda region: counts[REGIONS.index(region)])
    metrics = cell_metrics(cells, keys=["ms4a1", "cd3"], tissue_area_mm2=1.0,
                           region_areas_mm2={"tumour": 0.5, "margin": 0.2, "tls": 0.05}, b_cell_key="ms4a1")
    assert metrics["b_cell_pct"] == metrics["ms4a1_pct"] == 15.0
    assert metrics["b_cell_pct_tls"] == 62.5 and metrics["b_cell_pct_tumour"] == 5.0
    assert "cd20_pct" not in metrics
    assert "b_cell_pct" not in cell_metrics(cells, keys=["ms4a1", "cd3"], tissue_area_mm2=1.0)


@pytest.mark.parametrize("shape", [(57, 83), (5, 3), (1, 1), (2, 40), (40, 2)])
def test_footprint_dilation_equals_scipy(shape):
    """The row-run dilation (artefact zones) gives scipy's binary_dilation bit for bit: discs of
    every radius (short runs as shifted ORs, long ones as running maxima), ellipses, masks
    sparse to dense, footprints larger than the mask."""
    from scipy import ndimage as ndi
    from skimage import morphology

    rng = np.random.default_rng(sum(shape))
    footprints = [morphology.disk(r) for r in (0, 1, 2, 3, 5, 9, 12)] + [morphology.ellipse(4, 2), morphology.ellipse(1, 6)]
    for density in (0.002, 0.05, 0.5):
        mask = rng.random(shape) < density
        for footprint in footprints:
            assert np.array_equal(footprint_dilation(mask, footprint),
                                  ndi.binary_dilation(mask, structure=footprint)), (density, footprint.shape)


def test_footprint_dilation_rejects_a_footprint_that_is_not_row_runs():
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    with pytest.raises(ValueError, match="row 1 is not one run"):
        footprint_dilation(np.zeros((4, 4), bool), ring)
