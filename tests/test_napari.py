"""The napari reader plugin: layer data of an output folder (no napari needed) and the real napari viewer model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import ndimage as ndi

from tlsquant import analyze_slide, open_slide, synthetic
from tlsquant.config import load_config
from tlsquant.napari_plugin import napari_get_reader, output_folder_layers, read_output_folder
from tlsquant.outputs import write_slide_outputs
from tlsquant.outputs.geometry import STAGE_COLOURS

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One small slide (2.5 µm/px, two TLS) analysed with masks on; built once for the module."""
    base = tmp_path_factory.mktemp("napari")
    scene = synthetic.make_scene(seed=1, width_um=1200, height_um=900, pixel_size_um=2.5,
                                 tls_counts=(1, 1, 0), tls_radius_um=(55, 70))
    path, _ = synthetic.write_slide(scene, base / "slide.ome.tiff", pyramid_min_size=128)  # two levels
    slide = open_slide(path)
    result = analyze_slide(slide, config=load_config(overrides=["cells.enabled=false", "outputs.masks_zarr=true",
                                                                "outputs.qc_png=false"]))
    write_slide_outputs(result, base / "out", slide=slide)
    return base / "out"


def test_reader_accepts_output_folders_only(folder, tmp_path):
    assert napari_get_reader(str(folder)) is read_output_folder
    assert napari_get_reader([str(folder / "summary.json")]) is read_output_folder
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader(str(folder / "tls.csv")) is None


def test_layer_data_of_an_output_folder(folder):
    summary = json.loads((folder / "summary.json").read_text())
    layers = output_folder_layers(folder)
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels", "labels", "shapes"]
    data, image, _ = layers[0]
    slide = open_slide(summary["source"]["path"])
    assert image["name"] == list(slide.channel_names) and image["channel_axis"] == 0
    assert image["scale"] == (2.5, 2.5) and image["translate"] == (1.25, 1.25)
    assert image["multiscale"] and [d.shape for d in data] == [level.data.shape for level in slide.levels]
    labels = {kwargs["name"]: (data, kwargs) for data, kwargs, kind in layers if kind == "labels"}
    tls_data, tls_kwargs = labels["TLS"]
    assert tls_kwargs["scale"] == (2.5, 2.5) and tls_kwargs["translate"] == (1.25, 1.25)
    assert labels["tumour"][1]["scale"] == (7.5, 7.5) and labels["tumour"][1]["translate"] == (3.75, 3.75)
    table = {row["tls_id"]: row for row in _tls_rows(folder)}
    for tls_id, row in table.items():
        assert tls_kwargs["colormap"][tls_id] == pytest.approx([v / 255 for v in STAGE_COLOURS[row["stage"]]] + [1.0])
    shapes, shape_kwargs, _ = layers[-1]
    assert shape_kwargs["features"]["tls_id"] == sorted(table)
    for polygon, tls_id in zip(shapes, shape_kwargs["features"]["tls_id"]):
        y, x = polygon.mean(0)  # vertices in µm: close to the centroid of tls.csv
        assert abs(x - table[tls_id]["centroid_x_um"]) < 40 and abs(y - table[tls_id]["centroid_y_um"]) < 40


def _tls_rows(folder):
    import pandas as pd

    return pd.read_csv(folder / "tls.csv").to_dict("records")


def test_napari_opens_the_folder_and_tls_labels_sit_on_cd20(folder):
    # qtpy without a binding (napari-ome-zarr alone pulls in napari and qtpy) raises ImportError, not ModuleNotFoundError
    pytest.importorskip("qtpy", reason="napari tests need a Qt binding (the napari extra)", exc_type=ImportError)
    napari = pytest.importorskip("napari")
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    viewer = ViewerModel()  # the napari model without a window: no OpenGL needed
    layers = viewer.open(str(folder), plugin="tlsquant")
    kinds = {type(layer).__name__ for layer in layers}
    assert kinds == {"Image", "Labels", "Shapes"}
    cd20 = viewer.layers["CD20"]
    assert isinstance(cd20, napari.layers.Image) and cd20.multiscale
    assert tuple(cd20.scale) == (2.5, 2.5) and tuple(cd20.translate) == (1.25, 1.25)
    tls = viewer.layers["TLS"]
    assert isinstance(tls, napari.layers.Labels) and tuple(tls.scale) == (2.5, 2.5)
    assert isinstance(viewer.layers["TLS outlines"], napari.layers.Shapes)
    labels = np.asarray(tls.data[0] if tls.multiscale else tls.data)
    level0 = np.asarray(cd20.data[0] if cd20.multiscale else cd20.data)
    tissue = np.asarray(viewer.layers["tissue"].data)
    background = np.median(level0[np.kron(tissue, np.ones((3, 3), bool))[: level0.shape[0], : level0.shape[1]] > 0])
    for tls_id in np.unique(labels[labels > 0]):
        centre = tls.data_to_world(ndi.center_of_mass(labels == tls_id))  # world µm
        pixel = np.round(cd20.world_to_data(centre)).astype(int)  # the CD20 pixel there
        window = level0[pixel[0] - 2: pixel[0] + 3, pixel[1] - 2: pixel[1] + 3]
        assert window.mean() > 3 * background, (tls_id, centre, window.mean(), background)
    viewer.layers.clear()


@pytest.fixture(scope="module", params=["0.5", "0.4"])
def zarr_slide(request, folder):
    """The fixture's slide re-written as an OME-Zarr slide by tlsquant's writer (NGFF 0.5 on zarr v3, 0.4 on v2)."""
    from tlsquant.io.writers import write_ome_zarr

    summary = json.loads((folder / "summary.json").read_text())
    slide = open_slide(summary["source"]["path"])
    path = write_ome_zarr(folder.parent / f"slide-{request.param}.ome.zarr", [level.data for level in slide.levels],
                          channel_names=slide.channel_names, pixel_size_um=(2.5, 2.5), chunk=128,
                          version=request.param)
    return path, slide


def _ome_zarr_layers(path):
    """Layer-data tuples from napari-ome-zarr's own reader (no viewer, no Qt)."""
    reader = pytest.importorskip("napari_ome_zarr._reader", reason="needs napari-ome-zarr (the napari extra)")
    read = reader.napari_get_reader(str(path))
    assert read is not None, f"napari-ome-zarr does not take {path}"
    return read(str(path))


def _world_offset(kwargs):
    """Where napari-ome-zarr puts the centre of pixel (0, 0), in µm: its translate and/or its affine's."""
    offset = np.zeros(2)
    if kwargs.get("translate") is not None:
        offset += np.asarray(kwargs["translate"], float)[-2:]
    if kwargs.get("affine") is not None:
        offset += np.asarray(getattr(kwargs["affine"], "translate", np.zeros(2)), float)[-2:]
    return offset


def _registered(kwargs, scale):
    """Scale in µm per pixel, and the half-pixel translate tlsquant writes.

    napari-ome-zarr <= 0.10 reads only the first transform (the scale) of the first dataset and drops the
    translation (ome/napari-ome-zarr#73), so a zero offset is accepted too: pixel (0, 0) then sits at 0 µm.
    """
    assert list(np.asarray(kwargs["scale"], float)[-2:]) == pytest.approx([scale, scale])
    offset = _world_offset(kwargs)
    assert offset == pytest.approx([scale / 2, scale / 2]) or offset == pytest.approx([0.0, 0.0]), offset


def test_napari_ome_zarr_opens_a_tlsquant_ome_zarr_slide(zarr_slide):
    path, slide = zarr_slide
    layers = _ome_zarr_layers(path)
    assert [kind for _, _, kind in layers] == ["image"]
    data, kwargs, _ = layers[0]
    assert kwargs["channel_axis"] == 0  # one napari layer per channel
    names = kwargs["name"]  # napari-ome-zarr 0.10 prefixes "<multiscale name>: "
    assert [name.rsplit(": ", 1)[-1] for name in names] == list(slide.channel_names)
    assert len(kwargs["colormap"]) == len(slide.channel_names)
    assert len(kwargs["contrast_limits"]) == len(slide.channel_names)
    assert len(data) == len(slide.levels) >= 2  # the multiscale pyramid
    assert [tuple(level.shape) for level in data] == [tuple(level.data.shape) for level in slide.levels]
    np.testing.assert_array_equal(np.asarray(data[-1]), np.asarray(slide.levels[-1].data))
    _registered(kwargs, 2.5)


def test_napari_ome_zarr_opens_masks_zarr_with_its_labels(folder):
    import zarr

    layers = _ome_zarr_layers(folder / "masks.ome.zarr")
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels", "labels"]
    _, tissue_image, _ = layers[0]
    _registered(tissue_image, 7.5)
    labels = {kwargs["name"].rsplit("/", 1)[-1]: (data, kwargs) for data, kwargs, kind in layers if kind == "labels"}
    assert list(labels) == ["tls", "tumour", "tissue"]
    root = zarr.open_group(str(folder / "masks.ome.zarr"), mode="r")
    for name, scale in (("tls", 2.5), ("tumour", 7.5), ("tissue", 7.5)):
        data, kwargs = labels[name]
        datasets = root[f"labels/{name}"].attrs["ome"]["multiscales"][0]["datasets"]
        assert len(data) == len(datasets)
        np.testing.assert_array_equal(np.asarray(data[0]), root[f"labels/{name}/0"][...])
        _registered(kwargs, scale)
    tls_ids = {row["tls_id"] for row in _tls_rows(folder)}
    assert tls_ids and tls_ids <= set(np.unique(np.asarray(labels["tls"][0][0]))) - {0}
    assert tls_ids <= set(labels["tls"][1]["colormap"])  # stage colours from image-label
