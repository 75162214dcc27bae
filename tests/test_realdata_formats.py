"""Reader reach on files written by real instruments and converters (../shared/realdata; skipped when absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from tlsquant import open_slide
from tlsquant.errors import PixelSizeError

from .conftest import REALDATA

pytestmark = pytest.mark.realdata


def test_inform_component_field():
    path = REALDATA / "inform_component_data.tif"
    slide = open_slide(path)
    assert slide.format == "inform-component"
    assert slide.channel_names == ("Alexa 594", "Cy3", "Cy5", "DAPI", "FITC")  # not the ScanProfile's <Name>s
    assert slide.shape == (5, 260, 348) and slide.dtype == np.float32
    # pixels/cm with numerator 2**32 - 1: 1e4 * 213523 / 4294967295 µm
    assert slide.pixel_size_um == pytest.approx(1e4 * 213523 / 4294967295, rel=1e-9)
    assert slide.metadata["ignored_pages"] == ["Thumbnail"]
    np.testing.assert_array_equal(slide.channel("cy5").compute(), tifffile.imread(path, key=2))
    mapped = open_slide(path, marker_map={"Cy5": "CD20", "Alexa 594": "CD8"})
    assert mapped.channel_index("CD20") == 2 and mapped.has_channel("cd-8")


def test_inform_field_as_a_one_field_mosaic(tmp_path):
    folder = tmp_path / "fields"
    folder.mkdir()
    (folder / "case_[5000,8000]_component_data.tif").symlink_to(REALDATA / "inform_component_data.tif")
    slide = open_slide(folder)
    assert slide.format == "inform-mosaic" and slide.shape == (5, 260, 348)
    assert slide.metadata["field_positions_source"].startswith("inForm file names")
    np.testing.assert_array_equal(slide.levels[0].data.compute()[3], tifffile.imread(REALDATA / "inform_component_data.tif", key=3))


def test_bioformats2raw_store():
    path = REALDATA / "bioformats2raw_fake_series.zarr"
    with pytest.raises(PixelSizeError, match="no physical pixel size"):
        open_slide(path)
    slide = open_slide(path, pixel_size_um=0.5)
    assert slide.format == "ome-zarr" and slide.shape == (1, 512, 512) and slide.dtype == np.uint8
    assert [lvl.shape for lvl in slide.levels] == [(1, 512, 512), (1, 256, 256)]
    assert slide.metadata["bioformats2raw_series"] == "0" and slide.metadata["other_series"] == ["1"]
    assert slide.metadata["ngff_version"] == "0.4"


def test_spatialdata_ngff_store():
    path = REALDATA / "spatialdata_blobs_v04.ome.zarr"
    with pytest.raises(PixelSizeError, match="no physical pixel size"):  # axis unit "unit" is no length
        open_slide(path)
    slide = open_slide(path, pixel_size_um=1.0, channel_names=["DAPI", "CD20", "CD3"])
    assert slide.shape == (3, 12, 12) and slide.dtype == np.float32
    assert slide.metadata["dtype_conversion"] == "pixel type float64 read as float32"
    assert slide.metadata["ngff_version"] == "0.4-dev-spatialdata" and "reader_warnings" not in slide.metadata
    assert slide.channel_index("cd-20") == 1


def test_bfconvert_subifd_pyramid():
    path = REALDATA / "bfconvert_subifd_pyramid.ome.tiff"
    with pytest.raises(PixelSizeError, match="no physical pixel size"):
        open_slide(path)
    slide = open_slide(path, pixel_size_um=0.5)
    # one channel of 4 interleaved grayscale samples (photometric minisblack): not brightfield RGB
    assert slide.shape == (4, 25, 26) and slide.dtype == np.uint8
    assert [lvl.shape[1:] for lvl in slide.levels] == [(25, 26), (12, 13), (6, 6), (3, 3)]  # SubIFD levels


def test_mibi_folder_of_channel_tiffs():
    path = REALDATA / "maui_mibi_point2"
    with pytest.raises(PixelSizeError, match="72 dpi, an image-editor default"):
        open_slide(path)
    slide = open_slide(path, pixel_size_um=0.5)
    assert slide.format == "tiff-folder" and slide.shape == (13, 1024, 1024) and slide.dtype == np.uint8
    assert slide.channel_names[:3] == ("CD20", "CD3", "CD31") and slide.channel_index("dsdna") == 12
    assert slide.metadata["pixel_size_file_problem"].endswith("not a microscope pixel size")
    np.testing.assert_array_equal(slide.channel("CD20").compute(), tifffile.imread(path / "CD20.tif"))


def test_info_on_every_real_file(capsys):
    from tlsquant.cli import main

    paths = [REALDATA / name for name in (
        "small_vectra.qptiff", "visinity_test_image.ome.tiff", "cropped_reactive_core.ome.tiff",
        "inform_component_data.tif", "maui_mibi_point2", "bfconvert_subifd_pyramid.ome.tiff",
        "bioformats2raw_fake_series.zarr", "spatialdata_blobs_v04.ome.zarr")]
    assert main(["info", "--json", *map(str, paths)]) == 1  # several need a pixel size
    infos = json.loads(capsys.readouterr().out)
    assert len(infos) == len(paths)
    by_name = {info["path"].rsplit("/", 1)[-1]: info for info in infos}
    assert by_name["small_vectra.qptiff"]["pixel_size_um"] == pytest.approx(0.4965, rel=1e-3)
    assert by_name["cropped_reactive_core.ome.tiff"]["pixel_size_um"] is None  # 10000 µm/px is refused
    assert any("pixel size" in m for m in by_name["maui_mibi_point2"]["missing"])
    assert not any("pixel size" in m for m in by_name["inform_component_data.tif"]["missing"])
