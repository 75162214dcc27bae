"""masks.ome.zarr as NGFF labels registered in µm, the OME-Zarr slide's omero block, cells.parquet and cells.h5ad."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage as ndi

from tlsquant import analyze_slide, open_slide
from tlsquant.config import load_config
from tlsquant.errors import TLSQuantError
from tlsquant.outputs import write_slide_outputs
from tlsquant.outputs.geometry import STAGE_COLOURS
from tlsquant.outputs.tables import cells_anndata, compartment_intensities, write_cell_tables
from tlsquant.pixel_size import PixelSize
from tlsquant.steps import CellMarker


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, two_tls_slide):
    """One small slide (2.5 µm/px, two TLS) analysed with masks on; built once for the module."""
    folder = tmp_path_factory.mktemp("exports")
    slide = open_slide(two_tls_slide)
    result = analyze_slide(slide, config=load_config(overrides=["cells.enabled=false", "outputs.masks_zarr=true",
                                                                "outputs.qc_png=false"]))
    write_slide_outputs(result, folder / "out", slide=slide)
    return result, folder / "out"


def _world(attrs: dict, index: np.ndarray) -> np.ndarray:
    """Array index (row, col) → world (y, x) µm through the first dataset's scale then translation."""
    transforms = attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert [t["type"] for t in transforms] == ["scale", "translation"]
    return np.asarray(index) * transforms[0]["scale"] + transforms[1]["translation"]


def test_masks_are_ngff_labels_with_stage_colours(analysed):
    result, out = analysed
    root = zarr.open_group(str(out / "masks.ome.zarr"), mode="r")
    assert root.attrs["ome"]["version"] == "0.5"
    assert root.attrs["ome"]["multiscales"][0]["axes"][0] == {"name": "y", "type": "space", "unit": "micrometer"}
    assert root.attrs["ome"]["omero"]["channels"][0]["color"]  # napari-ome-zarr needs a colour
    assert root["labels"].attrs["ome"]["labels"] == ["tls", "tumour", "tissue"]
    tls = root["labels/tls"]
    assert np.array_equal(np.asarray(tls["0"]), result.tls_labels)
    assert np.array_equal(np.asarray(root["labels/tumour/0"]), result.tumour_mask.astype(np.uint8))
    label = tls.attrs["ome"]["image-label"]
    colours = {c["label-value"]: c["rgba"] for c in label["colors"]}
    assert len(result.tls) == 2
    for row in result.tls.itertuples():
        assert colours[row.tls_id] == [*STAGE_COLOURS[row.stage], 255]
    assert {p["label-value"]: p["stage"] for p in label["properties"]} == dict(zip(result.tls.tls_id, result.tls.stage))


def test_mask_transforms_register_grids_on_the_slide_in_um(analysed):
    result, out = analysed
    root = zarr.open_group(str(out / "masks.ome.zarr"), mode="r")
    px, py = result.pixel_size_um
    for name, factor in (("tls", result.fine_factor), ("tumour", result.coarse_factor), ("tissue", result.coarse_factor)):
        transforms = root[f"labels/{name}"].attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        assert transforms[0]["scale"] == pytest.approx([py * factor, px * factor])
        # cell k covers level-0 px [k f, (k+1) f): its centre at (k + 0.5) f px, with pixel centres at (i + 0.5) px
        assert transforms[1]["translation"] == pytest.approx([0.5 * py * factor, 0.5 * px * factor])
    # a TLS label's centroid in world µm is tls.csv's centroid (the same frame)
    tls = np.asarray(root["labels/tls/0"])
    for row in result.tls.itertuples():
        y, x = _world(root["labels/tls"].attrs, ndi.center_of_mass(tls == row.tls_id))
        assert (x, y) == pytest.approx((row.centroid_x_um, row.centroid_y_um), abs=0.5 * px * result.fine_factor)


def test_masks_keep_pyramid_levels_for_big_grids(tmp_path):
    labels = np.zeros((2100, 900), np.int32)
    labels[1000:1010, 100:120] = 1
    result = SimpleNamespace(tls_labels=labels, tissue_mask=np.ones((700, 300), bool), tumour_mask=np.zeros((700, 300), bool),
                             fine_factor=4, coarse_factor=12, pixel_size=PixelSize(0.5, 0.5),
                             tls=pd.DataFrame({"tls_id": [1], "stage": ["mature"], "area_um2": [200.0]}))
    from tlsquant.outputs.masks import write_masks

    root = zarr.open_group(str(write_masks(result, tmp_path / "m.ome.zarr")), mode="r")
    datasets = root["labels/tls"].attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[2.0, 2.0], [4.0, 4.0], [8.0, 8.0]]
    assert all(d["coordinateTransformations"][1]["translation"] == [1.0, 1.0] for d in datasets)  # nearest: cell 0 kept
    assert np.array_equal(np.asarray(root["labels/tls/2"]), labels[::4, ::4])


def test_ome_zarr_slide_writes_omero_colour_and_window(tmp_path):
    from tlsquant.io.writers import build_pyramid, write_ome_zarr

    level0 = np.zeros((2, 600, 600), np.uint16)
    level0[1, 100:200, 100:200] = 3000
    path = write_ome_zarr(tmp_path / "s.ome.zarr", build_pyramid(level0), channel_names=["DAPI", "CD20"],
                          pixel_size_um=(0.5, 0.5))
    ome = zarr.open_group(str(path), mode="r").attrs["ome"]
    channels = ome["omero"]["channels"]
    assert [c["label"] for c in channels] == ["DAPI", "CD20"]
    assert channels[0]["color"] == "0000FF" and len(channels[1]["color"]) == 6
    assert all(c["window"]["min"] == 0 and c["window"]["max"] == 65535 and c["window"]["end"] > c["window"]["start"]
               for c in channels)
    level1 = ome["multiscales"][0]["datasets"][1]["coordinateTransformations"]
    assert level1 == [{"type": "scale", "scale": [1.0, 1.0, 1.0]}, {"type": "translation", "translation": [0.0, 0.5, 0.5]}]
    slide = open_slide(path)
    assert list(slide.channel_names) == ["DAPI", "CD20"] and slide.pixel_size_um == 0.5


def _cells_result(tmp_path, formats):
    rng = np.random.default_rng(0)
    n = 50
    cells = pd.DataFrame({
        "cell_id": np.arange(1, n + 1, dtype=np.int64),
        "centroid_x_um": rng.uniform(0, 500, n), "centroid_y_um": rng.uniform(0, 400, n),
        "nucleus_area_um2": np.full(n, 30.0, np.float32), "cell_area_um2": np.r_[np.full(n - 1, 80.0), 30.0].astype(np.float32),
        "in_tumour": rng.random(n) > 0.5, "in_margin": np.zeros(n, bool), "tls_id": rng.integers(0, 3, n).astype(np.int32),
        "in_artefact": np.zeros(n, bool),
        "CD20_nucleus": rng.uniform(0, 100, n).astype(np.float32), "CD20_ring": rng.uniform(0, 100, n).astype(np.float32),
        "CD20_positive": rng.random(n) > 0.7,
        "TFE3_nucleus": rng.uniform(0, 100, n).astype(np.float32), "TFE3_ring": rng.uniform(0, 100, n).astype(np.float32),
        "TFE3_positive": rng.random(n) > 0.5,
    })
    markers = (CellMarker("CD20", "ring", "cd20"), CellMarker("TFE3", "nucleus", "tfe3"))
    config = load_config(overrides=[f"outputs.cells_format={json.dumps(formats)}"])
    return SimpleNamespace(cells=cells, cell_markers=markers, config=config, slide_id="case 7",
                           pixel_size=PixelSize(0.5, 0.5))


def test_compartment_intensity_is_the_one_positivity_used():
    cells = pd.DataFrame({"nucleus_area_um2": [30.0, 30.0], "cell_area_um2": [90.0, 30.0],
                          "M_nucleus": [10.0, 10.0], "M_ring": [40.0, 0.0]})
    assert compartment_intensities(cells, {"M": "ring"})["M"].tolist() == [40.0, 10.0]  # no free ring: the nucleus
    assert compartment_intensities(cells, {"M": "nucleus"})["M"].tolist() == [10.0, 10.0]
    assert compartment_intensities(cells, {"M": "cell"})["M"].tolist() == [30.0, 10.0]  # (10*30 + 40*60) / 90


def test_cell_table_csv_only_by_default(tmp_path):
    result = _cells_result(tmp_path, ["csv"])
    assert load_config().outputs.cells_format == ("csv",)
    assert set(write_cell_tables(result, tmp_path)) == {"cells"}
    assert not (tmp_path / "cells.parquet").exists()


def test_cells_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    result = _cells_result(tmp_path, ["csv", "parquet"])
    written = write_cell_tables(result, tmp_path)
    back = pd.read_parquet(written["cells_parquet"])
    pd.testing.assert_frame_equal(back, result.cells)
    import pyarrow.parquet as pq

    metadata = json.loads(pq.read_schema(written["cells_parquet"]).metadata[b"tlsquant"])
    assert metadata["slide_id"] == "case 7" and metadata["compartments"] == {"CD20": "ring", "TFE3": "nucleus"}


def test_cells_h5ad_round_trip(tmp_path):
    anndata = pytest.importorskip("anndata")
    result = _cells_result(tmp_path, ["h5ad"])
    written = write_cell_tables(result, tmp_path)
    assert set(written) == {"cells_h5ad"}
    adata = anndata.read_h5ad(written["cells_h5ad"])
    cells = result.cells
    assert adata.shape == (50, 2) and list(adata.var_names) == ["CD20", "TFE3"]
    assert adata.var["compartment"].tolist() == ["ring", "nucleus"]
    expected = np.c_[np.where(cells.cell_area_um2 > cells.nucleus_area_um2, cells.CD20_ring, cells.CD20_nucleus), cells.TFE3_nucleus]
    np.testing.assert_allclose(adata.X, expected, rtol=1e-6)
    np.testing.assert_allclose(adata.obsm["spatial"], cells[["centroid_x_um", "centroid_y_um"]].to_numpy())
    assert adata.obs["cell_id"].tolist() == cells.cell_id.tolist()
    assert set(adata.obs["slide_id"]) == {"case 7"}
    for name in ("in_tumour", "tls_id", "in_artefact", "CD20_positive", "TFE3_positive"):
        assert adata.obs[name].tolist() == cells[name].tolist()
    uns = adata.uns["tlsquant"]
    assert uns["slide_id"] == "case 7" and uns["pixel_size_um"] == 0.5 and uns["tlsquant_version"]
    assert dict(uns["compartments"]) == {"CD20": "ring", "TFE3": "nucleus"}
    assert cells_anndata(cells, metadata={**uns, "compartments": dict(uns["compartments"])}).shape == (50, 2)


def test_missing_library_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(TLSQuantError, match=r"outputs.cells_format 'parquet' needs pyarrow: pip install 'tlsquant\[tables\]'"):
        write_cell_tables(_cells_result(tmp_path, ["parquet"]), tmp_path)
