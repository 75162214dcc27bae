"""qc.png at whole-slide scale (size rule, rejected candidates, margin, artefacts) and the TLS gallery."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re

import dask.array as da
import numpy as np
import pytest
from PIL import Image

from tlsquant import analyze_slide, open_slide, synthetic
from tlsquant.config import load_config
from tlsquant.outputs import qc as qc_module
from tlsquant.outputs import write_slide_outputs
from tlsquant.outputs.gallery import GAP_PX, crop_window, gallery_entries, gallery_html, write_tls_gallery
from tlsquant.outputs.qc import CANDIDATE_LINE, draw_qc_picture, picture_scale
from tlsquant.slide import Level, Slide


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, two_tls_slide):
    """A small single-level slide (2.5 µm/px, two TLS, rejected small aggregates, artefacts), analysed once."""
    folder = tmp_path_factory.mktemp("qc")
    slide = open_slide(two_tls_slide)
    result = analyze_slide(slide, config=load_config(overrides=["cells.enabled=false"]))
    assert len(result.tls) == 2 and result.rejected_candidates and result.tumour_mask.any()
    return slide, result, folder


def _pixels(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)


# -- size rule ----------------------------------------------------------------------------------

def test_small_slide_keeps_the_usual_size_from_the_cheapest_level():
    scale = picture_scale([2000, 1000, 500], [1, 2, 4], pixel_size_um=1.0, min_tls_area_um2=6000)
    assert (scale.level, scale.step, scale.long_side_px) == (1, 1, 1000) and scale.legible
    assert scale.min_tls_px == pytest.approx(2 * np.sqrt(6000 / np.pi) / 2)


def test_big_slide_grows_until_a_minimum_tls_is_visible():
    # 20 mm at 0.5 µm/px: 1200 px would give a 6000 µm² TLS 5 px
    scale = picture_scale([40000, 10000, 2500], [1, 4, 16], pixel_size_um=0.5, min_tls_area_um2=6000)
    assert scale.legible and scale.min_tls_px >= 8 and 1200 < scale.long_side_px <= 4000
    assert scale.level == 2  # never level 0 of a pyramid when a coarse level suffices
    single = picture_scale([40000], [1], pixel_size_um=0.5, min_tls_area_um2=6000)
    assert single.legible and single.min_tls_px >= 8 and single.long_side_px < 2 * 1831


def test_picture_is_capped_and_says_so():
    scale = picture_scale([100000], [1], pixel_size_um=0.5, min_tls_area_um2=6000, max_px=4000)
    assert scale.long_side_px <= 4000 and not scale.legible and scale.min_tls_px < 8
    for sides, px in (([30000, 7500], 0.25), ([9000], 2.0), ([120000, 30000, 7500, 1875], 0.5)):
        scale = picture_scale(sides, [sides[0] / s for s in sides], pixel_size_um=px, min_tls_area_um2=5000,
                              target_px=1200, max_px=3000)
        assert scale.long_side_px <= 3000 and scale.legible == (scale.min_tls_px >= 8)


def test_capped_picture_title_points_to_the_gallery(analysed):
    slide, result, _ = analysed
    figure, info = draw_qc_picture(result, slide, max_px=100)
    assert not info["scale"].legible and "tls_gallery.html" in info["title"]
    assert max(info["image_px"]) <= 100
    figure, info = draw_qc_picture(result, slide)
    assert info["scale"].legible and "tls_gallery" not in info["title"]


# -- what qc.png shows --------------------------------------------------------------------------

def test_qc_picture_legend_names_candidates_margin_and_artefacts(analysed, tmp_path):
    slide, result, _ = analysed
    figure, info = draw_qc_picture(result, slide)
    reasons = {}
    for reason, _, _ in result.rejected_candidates:
        reasons[reason] = reasons.get(reason, 0) + 1
    legend = info["legend"]
    assert "tumour bed" in legend and f"peritumoral margin ({result.config.location.margin_um:g} µm)" in legend
    assert any(label.startswith("excluded artefacts") for label in legend)
    assert {f"rejected: {qc_module.REASON_LABELS[r]} ({n})" for r, n in reasons.items()} <= set(legend)
    assert "TLS primary" in legend and len(info["candidates"]) == len(result.rejected_candidates)
    # the written file is the figure, pixel for pixel in size
    qc_module.write_qc_picture(result, slide, tmp_path / "qc.png")
    assert Image.open(tmp_path / "qc.png").size == info["size_px"]


def test_rejected_candidates_are_drawn_where_they_are(analysed):
    slide, result, _ = analysed
    figure, info = draw_qc_picture(result, slide)
    with_candidates = _pixels(figure)
    figure, _ = draw_qc_picture(dataclasses.replace(result, rejected_candidates=[]), slide)
    without = _pixels(figure)
    top = info["image_top_px"]
    colour = np.asarray(CANDIDATE_LINE)
    for candidate in info["candidates"]:
        x0, y0, x1, y1 = (int(round(v)) for v in candidate["bbox_px"])
        box = (slice(top + y0 - 1, top + y1 + 2), slice(x0 - 1, x1 + 2))
        changed = (with_candidates[box] != without[box]).any(axis=2)
        assert changed.any()  # dashed outline there
        assert (np.abs(with_candidates[box][changed] - colour).max(axis=1) <= 40).any()


def test_margin_is_drawn_at_the_margin_distance(analysed, monkeypatch):
    slide, result, _ = analysed
    figure, info = draw_qc_picture(result, slide)
    drawn = _pixels(figure)
    scale = info["scale"]
    px = result.pixel_size_um[0] * scale.downsample
    tumour_rings = [ring / scale.downsample for ring in qc_module._rings(result.tumour_mask, result.coarse_factor)]
    tumour_xy = np.concatenate(tumour_rings)
    margin_xy = np.concatenate(info["margin_rings"])
    # away from the slide's edge the line lies margin_um (one coarse cell of slack) from the bed
    width, height = info["image_px"]
    inner = margin_xy[(margin_xy[:, 0] > 2) & (margin_xy[:, 0] < width - 3) & (margin_xy[:, 1] > 2) & (margin_xy[:, 1] < height - 3)]
    assert len(inner)
    nearest = np.min(np.hypot(*(inner[:, None, :] - tumour_xy[None]).transpose(2, 0, 1)), axis=1) * px
    cell_um = result.coarse_factor * result.pixel_size_um[0]
    assert np.all(np.abs(nearest - result.config.location.margin_um) <= 2 * cell_um)
    monkeypatch.setattr(qc_module, "margin_rings", lambda result: [])
    figure, _ = draw_qc_picture(result, slide)
    changed = (drawn != _pixels(figure)).any(axis=2)
    assert changed.sum() > 20
    assert (np.abs(drawn[changed] - np.asarray(qc_module.MARGIN_LINE)).max(axis=1) <= 40).any()


# -- the gallery --------------------------------------------------------------------------------

def test_gallery_has_one_captioned_embedded_picture_per_tls(analysed, tmp_path):
    slide, result, _ = analysed
    out = tmp_path / "out"
    lossless = dataclasses.replace(result, config=load_config(overrides=["outputs.gallery_png=true"]))
    written = write_slide_outputs(lossless, out, slide=slide)
    assert {"gallery", "gallery_crops"} <= set(written)
    summary = json.loads((out / "summary.json").read_text())
    assert {"tls_gallery.html", "tls_gallery"} <= set(summary["outputs"])
    page = (out / "tls_gallery.html").read_text()
    assert page.count("<figure") == len(result.tls) and "http" not in page.split("<body>")[1]
    images = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(images) == len(result.tls)
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "JPEG"
    for row in result.tls.itertuples():
        caption = re.search(rf'<figure id="tls-{row.tls_id}">.*?<figcaption>(.*?)</figcaption>', page).group(1)
        assert caption.startswith(f"TLS {row.tls_id} · {row.stage} · {row.location}")
        assert f"{row.area_um2:,.0f} µm²" in caption
        assert Image.open(out / "tls_gallery" / f"TLS-{row.tls_id}.png").format == "PNG"
    assert sorted(p.name for p in (out / "tls_gallery").iterdir()) == sorted(f"TLS-{i}.png" for i in result.tls.tls_id)
    # by default the page alone: the same JPEGs, no folder (an earlier run's goes)
    written = write_slide_outputs(result, out, slide=slide)
    assert "gallery" in written and "gallery_crops" not in written and not (out / "tls_gallery").exists()
    assert re.findall(r'src="data:image/jpeg;base64,([^"]+)"', (out / "tls_gallery.html").read_text()) == images
    # switched off (with the other pictures: quicker): both go, as any output this run does not make
    write_slide_outputs(dataclasses.replace(result, config=load_config(overrides=["outputs.qc_png=false"])), out,
                        slide=slide)
    assert not (out / "tls_gallery.html").exists() and not (out / "tls_gallery").exists()


def test_gallery_crops_are_native_resolution_with_one_panel_per_role(analysed):
    slide, result, _ = analysed
    entries, total = gallery_entries(result, slide)
    assert total == len(entries) == 2
    roles = result.summary["segmentation"]["channel_roles"]
    for entry in entries:
        assert entry.window.level == 0 and entry.window.step == 1 and entry.window.downsample == (1, 1)
        row = result.tls.set_index("tls_id").loc[entry.tls_id]
        assert entry.window.x0 <= row.bbox_x0_px and entry.window.x1 >= row.bbox_x1_px
        assert entry.panels[1:] == [f"{roles['b_cells']} (B cells)", f"{roles['t_cells']} (T cells)",
                                    f"{roles['fdc']} (FDC)", f"{roles['germinal_centre']} (germinal centre)"]
        height, width = entry.window.crop_shape
        picture = Image.open(io.BytesIO(entry.png))
        # whole slide px, blown up by a whole factor on this coarse (2.5 µm) slide
        assert picture.size[0] == len(entry.panels) * (width * entry.zoom + GAP_PX) - GAP_PX
        assert picture.size[1] > height * entry.zoom


def test_gallery_is_capped_to_the_largest_and_says_so(analysed):
    slide, result, _ = analysed
    entries, total = gallery_entries(result, slide, max_tls=1)
    assert total == 2 and len(entries) == 1
    assert entries[0].tls_id == int(result.tls.sort_values("area_um2").tls_id.iloc[-1])
    page = gallery_html(result, entries, total, max_tls=1)
    assert "Showing the 1 largest of 2 TLS" in page and page.count("<figure") == 1


def test_gallery_without_tls_writes_a_page_and_no_folder(analysed, tmp_path):
    slide, result, _ = analysed
    empty = dataclasses.replace(result, tls=result.tls.iloc[:0], tls_labels=np.zeros_like(result.tls_labels))
    written = write_tls_gallery(empty, slide, tmp_path / "tls_gallery.html", tmp_path / "tls_gallery")
    assert set(written) == {"gallery"} and "No TLS were found" in (tmp_path / "tls_gallery.html").read_text()
    assert not (tmp_path / "tls_gallery").exists()


class _Recorder:
    """An array that notes every block read from it."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


def test_gallery_reads_only_the_crop_windows(analysed):
    slide, result, _ = analysed
    recorder = _Recorder(np.asarray(slide.levels[0].data))
    chunk = 32
    watched = Slide(slide.path, slide.format, slide.channel_names, slide.pixel_size_x_um, slide.pixel_size_y_um,
                    (Level(da.from_array(recorder, chunks=(1, chunk, chunk), meta=np.empty((0, 0, 0), recorder.dtype)),
                           1.0, 1.0),))
    entries, _ = gallery_entries(result, watched)
    reference, _ = gallery_entries(result, slide)
    assert [e.png for e in entries] == [e.png for e in reference]  # same pictures as the file's own reader
    windows = [e.window for e in entries]
    _, height, width = recorder.shape
    read_px = 0
    for key in recorder.reads:
        rows, cols = key[1], key[2]
        read_px += (rows.stop - rows.start) * (cols.stop - cols.start)
        # every block read touches a window (blocks are whole chunks around it)
        assert any(rows.start < w.y1 and rows.stop > w.y0 and cols.start < w.x1 and cols.stop > w.x0 for w in windows)
    channels = len({key[0].start if isinstance(key[0], slice) else key[0] for key in recorder.reads})
    assert read_px < 0.35 * channels * height * width  # windows, never whole channels


def test_crop_window_picks_the_finest_level_that_fits():
    levels = [((20000, 30000), 1.0, 1.0), ((5000, 7500), 4.0, 4.0), ((1250, 1875), 16.0, 16.0)]
    small = crop_window((1000, 1000, 1200, 1200), levels, pixel_size_um=0.5, max_px=600)
    assert small.level == 0 and small.step == 1 and max(small.crop_shape) <= 600
    large = crop_window((1000, 1000, 2400, 2200), levels, pixel_size_um=0.5, max_px=600)
    assert large.level == 1 and max(large.crop_shape) <= 600
    huge = crop_window((0, 0, 30000, 20000), levels, pixel_size_um=0.5, max_px=600)
    assert huge.level == 2 and huge.step == 4 and max(huge.crop_shape) <= 600


def test_non_square_pixels_are_drawn_true_to_shape(tmp_path):
    # 0.5 µm across, 1 µm down: the picture's pixels are drawn twice as tall as wide, the TLS stay round
    scene = synthetic.make_scene(seed=4, width_um=900, height_um=700, pixel_size_um=0.5, pixel_size_y_um=1.0,
                                 tls_counts=(1, 0, 0))
    path, _ = synthetic.write_slide(scene, tmp_path / "tall.ome.tiff")
    slide = open_slide(path)
    result = analyze_slide(slide, load_config(None, ["cells.enabled=false"]))
    assert result.pixel_size == (1.0, 0.5)
    figure, info = draw_qc_picture(result, slide)
    width, height = info["image_px"]
    assert info["shown_px"] == (width, round(2 * height))
    assert abs(width * info["scale"].downsample * 0.5 - 900) <= info["scale"].downsample  # it spans the 900 µm
    figure.savefig(tmp_path / "qc.png")
