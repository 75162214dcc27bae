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
    pytest.importorskip("qtpy", reason="napari tests need a Qt binding (the napari extra)")
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
