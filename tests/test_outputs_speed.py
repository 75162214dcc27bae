"""The per-slide pictures' cheap paths draw what the plain ones drew: direct window reads, shared chunks,
qc.png's background drawn without resampling, pooled artefact masks, outlines found once, writers all at once."""

from __future__ import annotations

import dataclasses
import io
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
from PIL import Image

import tlsquant
from tlsquant import analyze_slide, open_slide
from tlsquant.config import load_config
from tlsquant.outputs import _run_all, write_slide_outputs
from tlsquant.outputs import gallery as gallery_module
from tlsquant.outputs import qc as qc_module
from tlsquant.outputs.gallery import GAP_PX, CropWindow, SharedChunks, read_window, render_tls, window_chunks
from tlsquant.outputs.qc import _one_to_one_image, _pooled, composite, draw_qc_picture, picture_scale
from tlsquant.slide import Level, Slide

CHANNELS = ["DAPI", "CD20", "CD3"]


@pytest.fixture(scope="module")
def tiled_slide(tmp_path_factory):
    """A 3-channel uint16 OME-TIFF (150 x 230 px) in 16 px tiles, and its pixels."""
    image = np.random.default_rng(7).integers(0, 4000, (3, 150, 230), dtype=np.uint16)
    path = tmp_path_factory.mktemp("tiles") / "slide.ome.tif"
    tifffile.imwrite(path, image, tile=(16, 16), compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "Channel": {"Name": CHANNELS}})
    return path, image


@pytest.fixture(scope="module")
def analysed(two_tls_slide):
    slide = open_slide(two_tls_slide)
    return slide, analyze_slide(slide, config=load_config(overrides=["cells.enabled=false"]))


def _raising_scheduler(*args, **kwargs):
    raise AssertionError("the window was computed through a dask scheduler")


def _windows():
    # inside one chunk, across chunk edges, at the image's far edges, the whole image
    return [CropWindow(0, 1, y0, y1, x0, x1, (1.0, 1.0))
            for y0, y1, x0, x1 in ((3, 12, 5, 14), (10, 75, 20, 131), (100, 150, 200, 230), (0, 150, 0, 230))]


def _with_level(slide: Slide, data) -> Slide:
    return Slide(slide.path, slide.format, slide.channel_names, slide.pixel_size_x_um, slide.pixel_size_y_um,
                 (Level(data, 1.0, 1.0),))


# -- windows read directly ------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_px", [16, 32, 48, 512])
def test_windows_read_directly_equal_the_pixels(tiled_slide, chunk_px):
    path, image = tiled_slide
    slide = open_slide(path, chunk_size=chunk_px)
    with dask.config.set(scheduler=_raising_scheduler):  # the chunks' tasks run here, no graph is scheduled
        for window in _windows():
            planes = read_window(slide, window, ["CD3", "DAPI"])
            for name in ("CD3", "DAPI"):
                expected = image[CHANNELS.index(name), window.y0: window.y1, window.x0: window.x1].astype(np.float32)
                assert planes[name].dtype == np.float32 and np.array_equal(planes[name], expected)


def test_windows_read_directly_from_chunks_holding_several_channels(tiled_slide):
    # a level whose chunks hold all channels (and whose graph is more than one layer deep)
    path, image = tiled_slide
    slide = open_slide(path, chunk_size=16)

    def block(block_info=None):  # as a file reader's tasks: each cuts its block from the image
        (c0, c1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return image[c0:c1, y0:y1, x0:x1]

    read = da.map_blocks(block, dtype=image.dtype, chunks=((3,), (40,) * 3 + (30,), (40,) * 5 + (30,)),
                         meta=np.empty((0, 0, 0), image.dtype))
    data = read.rechunk((3, 33, 57)) + np.uint16(1)
    with dask.config.set(scheduler=_raising_scheduler):
        for window in _windows():
            planes = read_window(_with_level(slide, data), window, ["CD20", "CD3"])
            for name in ("CD20", "CD3"):
                expected = (image[CHANNELS.index(name), window.y0: window.y1, window.x0: window.x1] + 1).astype(np.float32)
                assert np.array_equal(planes[name], expected)


def test_overlapping_windows_decode_each_shared_chunk_once_and_keep_none(tiled_slide, monkeypatch):
    path, image = tiled_slide
    slide = open_slide(path, chunk_size=32)
    data = slide.levels[0].data
    windows = [CropWindow(0, 1, 10, 60, 10, 60, (1.0, 1.0)), CropWindow(0, 1, 40, 90, 40, 90, (1.0, 1.0)),
               CropWindow(0, 1, 50, 70, 50, 70, (1.0, 1.0))]
    channels = ["DAPI", "CD3"]
    uses: dict = {}
    for window in windows:
        for name in channels:
            for key, _ in window_chunks(data, window, slide.channel_index(name)):
                uses[key] = uses.get(key, 0) + 1
    assert max(uses.values()) == 3  # the windows do overlap
    import tlsquant.blocks as blocks

    decoded = []
    original = blocks.run_task
    monkeypatch.setattr(blocks, "run_task", lambda graph, values, key: decoded.append(key) or original(graph, values, key))
    shared = SharedChunks(uses)
    for window in windows:
        planes = read_window(slide, window, channels, shared=shared)
        for name in channels:
            assert np.array_equal(planes[name], image[CHANNELS.index(name), window.y0: window.y1, window.x0: window.x1])
    assert sorted(decoded) == sorted(uses)  # every chunk decoded once
    assert not shared._kept  # dropped after its last window


def test_gallery_reads_from_tiles_equal_the_dask_reads(analysed, monkeypatch):
    slide, result = analysed
    direct = gallery_module.gallery_entries(result, slide)[0]
    monkeypatch.setattr(gallery_module, "_read_chunks", lambda *args: (_ for _ in ()).throw(tlsquant.blocks.NotTaskSpec))
    through_dask = gallery_module.gallery_entries(result, slide)[0]
    assert [e.png for e in direct] == [e.png for e in through_dask]
    assert [e.jpeg() for e in direct] == [e.jpeg() for e in through_dask]


# -- the gallery's drawing ------------------------------------------------------------------------

def test_outlines_are_on_every_panel_this_tls_on_top():
    # black planes: only the outlines (and the caption, labels, scale bar) are drawn
    size = 120
    window = CropWindow(0, 1, 0, size, 0, size, (1.0, 1.0))
    roles = {"b_cells": "CD20", "t_cells": "CD3", "fdc": "CD21", "nuclei": "DAPI"}
    planes = {name: np.zeros((size, size), np.float32) for name in roles.values()}
    row = type("Row", (), dict(tls_id=1, stage="mature", location="intratumoral", distance_to_tumour_um=None,
                               area_um2=5000.0, counted=True))()
    square = np.array([[20, 20], [20, 80], [80, 80], [80, 20], [20, 20]], float)  # (x, y), level-0 px
    crossing = np.array([[50, 5], [50, 100]], float)  # a neighbour crossing the square at (50, 20) and (50, 80)
    png, panels, _, zoom = render_tls(row, planes, window, roles=roles, thresholds={}, rings={1: [square], 2: [crossing]},
                                      pixel_size_um=0.5)
    assert zoom == 2 and len(panels) == 4  # a 120 px crop blown up to at least 200 px
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    side = size * zoom
    shown = [picture[-side:, index * (side + GAP_PX): index * (side + GAP_PX) + side] for index in range(len(panels))]
    for panel in shown[2:]:
        assert np.array_equal(panel, shown[1])  # the grey panels are alike: black with the outlines
    assert np.array_equal(shown[0][: side - 40], shown[1][: side - 40])  # the overlay too, above its scale bar
    stage = np.asarray(gallery_module._stage_colour("mature"))
    own, grey = (shown[1] == stage).all(axis=2), (shown[1] == 170).all(axis=2)
    assert own.sum() > 4 * 60 * zoom and grey[zoom * 30: zoom * 70, zoom * 50].all()
    assert own[zoom * 80, zoom * 50] and own[zoom * 20, zoom * 50]  # this TLS over its neighbour where they cross


# -- qc.png ---------------------------------------------------------------------------------------

def test_one_to_one_image_is_what_matplotlib_resamples(monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(3)
    for height, width, below, above in ((7, 5, 3, 2), (300, 400, 61, 20), (257, 511, 40, 33)):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        rgb[0, :256 if width >= 256 else width] = np.arange(256)[:width, None]  # every value
        total = below + height + above
        figure = plt.figure(figsize=(width / 100, total / 100), dpi=100)
        axes = figure.add_axes([0, below / total, 1, height / total])
        image = _one_to_one_image(axes, rgb)
        axes.set_xlim(-0.5, width - 0.5)
        axes.set_ylim(height - 0.5, -0.5)
        axes.set_axis_off()
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        with monkeypatch.context() as patch:
            patch.setattr(matplotlib.image, "_resample", lambda *a, **k: pytest.fail("resampled at 1:1"))
            fast, x, y, _ = image.make_image(renderer, 1.0)
        slow, x_slow, y_slow, _ = matplotlib.image.AxesImage.make_image(image, renderer, 1.0)
        assert np.array_equal(fast, slow) and (x, y) == (x_slow, y_slow)
        plt.close(figure)


def test_qc_picture_is_drawn_without_resampling_its_background(analysed, monkeypatch):
    import matplotlib.image

    slide, result = analysed
    figure, _ = draw_qc_picture(result, slide)
    monkeypatch.setattr(matplotlib.image, "_resample", lambda *a, **k: pytest.fail("resampled at 1:1"))
    figure.canvas.draw()


def test_qc_picture_outlines_every_tls_in_one_collection(analysed):
    from matplotlib.collections import LineCollection

    slide, result = analysed
    assert len(result.tls) == 2
    figure, _ = draw_qc_picture(result, slide)
    collections = [c for c in figure.axes[0].collections if isinstance(c, LineCollection)]
    assert len(collections) <= 5  # tumour bed, margin, artefacts, candidates and the TLS: not one per TLS
    rings = qc_module.tls_rings(result)
    tls = collections[-1]
    expected = [np.asarray(qc_module.STAGE_COLOURS[row.stage]) / 255 for row in result.tls.itertuples()
                for _ in rings[row.tls_id]]
    assert len(tls.get_segments()) == len(expected)
    assert np.allclose(tls.get_colors()[:, :3], expected)


def test_composite_is_the_whole_plane_arithmetic(analysed):
    slide, result = analysed
    scale = picture_scale([max(level.shape[1:]) for level in slide.levels], [level.downsample_x for level in slide.levels],
                          pixel_size_um=result.pixel_size.x_um, min_tls_area_um2=result.config.tls.min_area_um2)
    data = slide.levels[scale.level].data
    height, width = data.shape[1] // scale.step, data.shape[2] // scale.step
    expected = np.zeros((height, width, 3), np.float32)
    for role, colour in qc_module.ROLE_COLOURS.items():
        if role in result.roles:
            plane = qc_module._binned(data[slide.channel_index(result.roles[role]), : height * scale.step,
                                           : width * scale.step], scale.step).astype(np.float32)
            low, high = np.percentile(plane, [60, 99.8])
            stretched = np.clip((plane - low) / max(high - low, 1e-6), 0, 1)
            expected += stretched[..., None] * np.asarray(colour, np.float32)
    expected = (np.clip(expected, 0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(composite(slide, result.roles, scale), expected)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_pooled_mask_is_any_over_each_bin(size):
    mask = np.random.default_rng(size).random((53, 38)) > 0.97
    height, width = -(-53 // size) * size, -(-38 // size) * size
    padded = np.zeros((height, width), bool)
    padded[:53, :38] = mask
    expected = padded.reshape(height // size, size, width // size, size).any(axis=(1, 3))
    assert np.array_equal(_pooled(mask, size), expected)


# -- the writers together -------------------------------------------------------------------------

def test_tls_outlines_are_found_once_for_qc_and_gallery(analysed, tmp_path, monkeypatch):
    slide, result = analysed
    calls = []
    original = qc_module.tls_rings

    def counted(result):
        calls.append(1)
        return original(result)

    monkeypatch.setattr(qc_module, "tls_rings", counted)
    monkeypatch.setattr(gallery_module, "tls_rings", counted)
    threaded = dataclasses.replace(result, config=load_config(overrides=["compute.workers=2"]))
    write_slide_outputs(threaded, tmp_path / "out", slide=slide)
    assert len(calls) == 1 and (tmp_path / "out" / "qc.png").is_file() and (tmp_path / "out" / "tls_gallery.html").is_file()


def test_writers_run_all_at_once():
    # three writers that each wait for the others: they end only when all three run together
    barrier = threading.Barrier(3, timeout=10)

    def writer(number):
        return lambda: barrier.wait() is not None and {str(number): number}

    assert _run_all([writer(1), writer(2), writer(3)], 2) == [{"1": 1}, {"2": 2}, {"3": 3}]
