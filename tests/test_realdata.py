"""Files written by real instruments and converters (../shared/realdata; skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlsquant import Level, Slide, analyze_slide, load_config, open_slide
from tlsquant.errors import PixelSizeError
from tlsquant.io import read_channel_names

from .conftest import REALDATA

pytestmark = pytest.mark.realdata


def test_vectra_polaris_qptiff():
    slide = open_slide(REALDATA / "small_vectra.qptiff")
    assert slide.format == "qptiff"
    # <Name> holds filter names; the nested ScanProfile <Name>s must not leak in
    assert slide.channel_names == ("DAPI", "FITC", "Cy3")
    # tags (unit cm) say 0.4965, the XML ScanProfile says 0.5: the tags win
    assert slide.pixel_size_um == pytest.approx(0.4965, rel=1e-3)
    assert slide.shape == (3, 1440, 1920) and slide.dtype == np.uint8
    assert slide.tile_shape == (16, 1920) and slide.compression == "lzw"
    assert slide.metadata["ignored_pages"] == ["Thumbnail", "Overview", "Label"]
    import tifffile

    expected = tifffile.imread(REALDATA / "small_vectra.qptiff", key=1)
    np.testing.assert_array_equal(slide.channel("fitc").compute(), expected)


def test_bioformats_jpeg_pyramid_without_pixel_size():
    path = REALDATA / "visinity_test_image.ome.tiff"
    with pytest.raises(PixelSizeError, match="no physical pixel size"):
        open_slide(path)
    slide = open_slide(path, pixel_size_um=0.65)
    assert slide.channel_names == ("CHAN_0", "CHAN_1")
    assert [lvl.shape for lvl in slide.levels] == [(2, 2048, 2048), (2, 1024, 1024), (2, 512, 512), (2, 256, 256)]
    assert slide.tile_shape == (512, 512) and slide.compression == "jpeg"
    level0 = slide.levels[0].data.compute().astype(np.float32)
    level1 = slide.levels[1].data.compute().astype(np.float32)
    binned = level0.reshape(2, 1024, 2, 1024, 2).mean(axis=(2, 4))
    # Bio-Formats' reduced level is a downsampled level 0 (JPEG: close, not equal)
    assert np.corrcoef(binned.ravel(), level1.ravel())[0, 1] > 0.95


def test_cycif_crop_needs_names_and_pixel_size_from_user():
    path = REALDATA / "cropped_reactive_core.ome.tiff"
    with pytest.raises(PixelSizeError, match="10000 µm/px is outside the plausible range"):
        open_slide(path)
    names = read_channel_names(REALDATA / "cropped_reactive_core.channels.csv")
    slide = open_slide(path, pixel_size_um=0.65, channel_names=names)
    assert slide.channel_index("cd20") == 27 and slide.channel_index("CD21") == 35
    assert slide.shape == (48, 100, 100) and slide.dtype == np.uint16
    assert len(slide.levels) == 4
    # the marker list kept beside the image (<slide>.channels.csv) is found without asking
    beside = open_slide(path, pixel_size_um=0.65)
    assert beside.channel_names == slide.channel_names
    assert beside.metadata["channel_names_source"] == f"marker list {REALDATA / 'cropped_reactive_core.channels.csv'}"
    assert beside.metadata["pixel_size_file_um"] == [10000.0, 10000.0]  # the file's bogus value, kept


@pytest.mark.realdata
def test_cells_on_real_lymphoid_tissue():
    """t-CyCIF reactive lymphoid crop: plausible nuclei, and B and T cells as mostly separate populations."""
    import dask.array as da
    import numpy as np

    from tlsquant.cells import CellPlan, compute_cells
    from tlsquant.config import ThresholdRule
    from tlsquant.thresholds import estimate_threshold

    names = read_channel_names(REALDATA / "cropped_reactive_core.channels.csv")
    slide = open_slide(REALDATA / "cropped_reactive_core.ome.tiff", pixel_size_um=0.65, channel_names=names)
    markers = ("CD20", "CD3D")
    # a 65 µm crop of dense lymphoid tissue is mostly positive pixels: a two-class split, not the
    # background-margin rule meant for whole slides
    otsu = ThresholdRule(method="otsu")
    planes = {name: slide.channel(name).compute() for name in ("DNA1", *markers)}
    plan = CellPlan(markers=markers, compartments=("ring", "ring"),
                    thresholds=tuple(estimate_threshold(planes[m].ravel(), otsu) for m in markers),
                    nuclear_threshold=estimate_threshold(planes["DNA1"].ravel(), otsu), pixel_size_um=(0.65, 0.65),
                    sigma_um=0.3, min_distance_um=2.0, min_area_um2=8.0, max_area_um2=250.0, ring_um=2.0,
                    fine_factor=3, coarse_factor=12, n_tls=0, keep_table=True)
    shape = planes["DNA1"].shape
    fine, coarse = (-(-shape[0] // 3), -(-shape[1] // 3)), (-(-shape[0] // 12), -(-shape[1] // 12))
    cells = compute_cells(da.from_array(planes["DNA1"]), [da.from_array(planes[m]) for m in markers], plan,
                          tissue=np.ones(coarse, bool), tumour=np.zeros(coarse, bool), debris=np.zeros(fine, bool),
                          tls_labels=np.zeros(fine, np.int32), scheduler="sync")
    table = cells.table
    area_um2 = shape[0] * shape[1] * 0.65**2
    assert 30 <= len(table) <= area_um2 / 30  # lymphocyte nuclei: 5-8 µm across, densely packed
    assert 20 < table["nucleus_area_um2"].mean() < 60
    b, t = table["CD20_positive"], table["CD3D_positive"]
    assert 0.1 < b.mean() < 0.6 and 0.1 < t.mean() < 0.6
    assert (b & t).sum() <= 0.3 * min(b.sum(), t.sum())


MIBI_FIELD = REALDATA / "maui_mibi_point2"
MIBI_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mibi-lymphoid.toml"
# MIBI exports carry no pixel size; fields are 400-800 µm across, so 1024 px at 0.5 µm/px (512 µm) is
# a typical field, and every µm setting (smoothing, minimum TLS area) is read at that scale
MIBI_PIXEL_SIZE_UM = 0.5


def mibi_slide() -> Slide:
    """The MIBI field as an in-memory Slide: one TIFF per channel (name = file stem), 2x and 4x mean pyramid."""
    import dask.array as da
    import tifffile

    from tlsquant.io.writers import build_pyramid

    files = sorted(MIBI_FIELD.glob("*.tif"))
    counts = np.stack([tifffile.imread(path) for path in files])
    levels = build_pyramid(counts, min_size=256, max_levels=3)  # the background model reads a low-res level
    return Slide(MIBI_FIELD, "tiff", tuple(path.stem for path in files), MIBI_PIXEL_SIZE_UM, MIBI_PIXEL_SIZE_UM,
                 levels=tuple(Level(da.from_array(level, chunks=(1, 512, 512)), 2.0**k, 2.0**k)
                              for k, level in enumerate(levels)))


def cd20_zone(cd20: np.ndarray, *, pixel_size_um: float, sigma_um: float = 10.0) -> np.ndarray:
    """The CD20+ zone, defined apart from tlsquant: ion counts smoothed over ~10 µm, above half their
    99th percentile, largest piece, holes filled."""
    from scipy import ndimage as ndi

    density = ndi.gaussian_filter(cd20.astype(np.float32), sigma_um / pixel_size_um)
    pieces, _ = ndi.label(density > 0.5 * np.percentile(density, 99))
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(pieces == sizes.argmax())


def test_mibi_follicle_is_one_tls_following_the_cd20_zone():
    """Real MIBI-TOF lymphoid field (ion counts): one B-cell follicle with a Ki67+ germinal centre, no tumour."""
    slide = mibi_slide()
    assert slide.shape == (13, 1024, 1024) and slide.dtype == np.uint8
    result = analyze_slide(slide, load_config(MIBI_CONFIG))

    assert len(result.tls) == 1
    tls = result.tls.iloc[0]
    height_um, width_um = (n * MIBI_PIXEL_SIZE_UM for n in slide.shape[1:])
    assert tls.centroid_x_um < 2 / 3 * width_um and tls.centroid_y_um > 1 / 3 * height_um  # lower-left two thirds
    assert tls.stage == "mature"  # Ki67+ germinal-centre network inside

    f = result.fine_factor
    tls_mask = np.repeat(np.repeat(result.tls_labels > 0, f, axis=0), f, axis=1)[: slide.shape[1], : slide.shape[2]]
    zone = cd20_zone(slide.channel("CD20").compute(), pixel_size_um=MIBI_PIXEL_SIZE_UM)
    iou = (tls_mask & zone).sum() / (tls_mask | zone).sum()
    assert iou >= 0.75  # measured 0.81 (Dice 0.90); the zone is 60% of the field

    assert result.summary["tumour_area_mm2"] == 0
    assert any("no tumour" in warning for warning in result.warnings)
