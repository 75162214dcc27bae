"""open_slide on every supported layout: names, pixel size, shape, levels, laziness."""

from __future__ import annotations

import pickle

import dask
import numpy as np
import pytest
import tifffile

import tlsquant
from tlsquant import open_slide
from tlsquant.errors import ChannelError, CorruptSlideError, PixelSizeError, SlideFormatError, SlideNotFoundError
from tlsquant.io.writers import (
    build_pyramid,
    downsample_mean,
    write_ome_tiff,
    write_ome_zarr,
    write_qptiff,
)

NAMES = ["DAPI", "CD20", "TFE3"]


def _pyramid(dtype, rng, shape=(3, 530, 700)):
    if dtype == "float32":
        level0 = rng.random(shape, dtype=np.float32) * 50
    else:
        level0 = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    return build_pyramid(level0, min_size=128)


WRITERS = {
    "ome-tiff": (write_ome_tiff, "x.ome.tiff"),
    "qptiff": (write_qptiff, "x.qptiff"),
    "ome-zarr": (write_ome_zarr, "x.ome.zarr"),
}


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_round_trip_every_layout_and_dtype(tmp_path, rng, fmt, dtype):
    levels = _pyramid(dtype, rng)
    writer, name = WRITERS[fmt]
    kwargs = {"compression": "zlib"} if fmt == "qptiff" and dtype == "float32" else {}
    path = writer(tmp_path / name, levels, channel_names=NAMES, pixel_size_um=(0.4965, 0.4965), **kwargs)
    slide = open_slide(path)
    assert slide.format == fmt
    assert slide.channel_names == tuple(NAMES)
    assert slide.pixel_size_um == pytest.approx(0.4965, rel=1e-3)
    assert slide.shape == levels[0].shape
    assert slide.dtype == np.dtype(dtype)
    assert [lvl.shape for lvl in slide.levels] == [lv.shape for lv in levels]
    for level, expected in zip(slide.levels, levels):
        np.testing.assert_array_equal(level.data.compute(), expected)
    assert slide.levels[1].downsample_x == pytest.approx(levels[0].shape[2] / levels[1].shape[2])


def test_each_level_equals_level0_downsampled(small_pyramid, tmp_path):
    path = write_ome_tiff(tmp_path / "s.ome.tiff", small_pyramid, channel_names=[f"c{i}" for i in range(small_pyramid[0].shape[0])], pixel_size_um=(2.0, 2.0))
    slide = open_slide(path)
    expected = slide.levels[0].data.compute()
    for level in slide.levels[1:]:
        expected = downsample_mean(expected)
        np.testing.assert_array_equal(level.data.compute(), expected)


def test_qptiff_prefers_biomarker_and_ignores_preview_pages(tmp_path, rng):
    levels = _pyramid("uint16", rng, shape=(4, 300, 400))
    markers = ["CD20", "Autofluorescence", "DAPI", "TFE3"]  # shuffled, with a channel outside the panel
    fluors = ["Opal 570", "Sample AF", "DAPI", "Opal 480"]
    path = write_qptiff(tmp_path / "s.qptiff", levels, channel_names=markers, fluorophores=fluors,
                        pixel_size_um=(0.4965, 0.4965))
    slide = open_slide(path)
    assert slide.channel_names == tuple(markers)
    assert slide.metadata["ignored_pages"] == ["Thumbnail", "Overview", "Label"]
    np.testing.assert_array_equal(slide.channel("tfe3").compute(), levels[0][3])
    no_biomarker = write_qptiff(tmp_path / "f.qptiff", levels, channel_names=markers, fluorophores=fluors,
                                pixel_size_um=(0.5, 0.5), include_biomarker=False)
    assert open_slide(no_biomarker).channel_names == tuple(fluors)


def test_qptiff_pixel_size_falls_back_to_scan_profile(tmp_path, rng):
    levels = _pyramid("uint8", rng, shape=(2, 200, 300))
    path = write_qptiff(tmp_path / "s.qptiff", levels, channel_names=["DAPI", "CD20"],
                        pixel_size_um=(0.5, 0.5), resolution_tags=False)
    slide = open_slide(path)
    assert slide.pixel_size_um == pytest.approx(0.5)
    assert slide.metadata["pixel_size_source"] == "QPTIFF ScanProfile PixelSizeMicrons"


def test_qptiff_non_square_pixels_every_level(tmp_path, rng):
    levels = _pyramid("uint16", rng, shape=(2, 301, 400))  # odd height: level 1 is 151 rows, not 150.5
    path = write_qptiff(tmp_path / "s.qptiff", levels, channel_names=["DAPI", "CD20"], pixel_size_um=(0.65, 0.8))
    slide = open_slide(path)
    assert (slide.pixel_size_x_um, slide.pixel_size_y_um) == pytest.approx((0.65, 0.8), rel=1e-6)
    with tifffile.TiffFile(path) as tif:
        reduced = [page for page in tif.pages if "ReducedResolution" in (page.description or "")][0]
        x_per_cm = reduced.tags["XResolution"].value[0] / reduced.tags["XResolution"].value[1]
        y_per_cm = reduced.tags["YResolution"].value[0] / reduced.tags["YResolution"].value[1]
    assert reduced.shape == levels[1].shape[1:]
    assert 1e4 / x_per_cm == pytest.approx(0.65 * 400 / levels[1].shape[2], rel=1e-6)
    assert 1e4 / y_per_cm == pytest.approx(0.8 * 301 / levels[1].shape[1], rel=1e-6)


@pytest.mark.parametrize("unit, expected", [("µm", 0.65), ("nm", 0.65), ("mm", 0.65)])
def test_ome_physical_size_units_and_non_square_pixels(tmp_path, rng, unit, expected):
    levels = _pyramid("uint16", rng, shape=(2, 300, 400))
    path = write_ome_tiff(tmp_path / "s.ome.tiff", levels, channel_names=["DAPI", "CD20"],
                          pixel_size_um=(0.65, 0.8), physical_unit=unit)
    slide = open_slide(path)
    assert slide.pixel_size_x_um == pytest.approx(expected, rel=1e-6)
    assert slide.pixel_size_y_um == pytest.approx(0.8, rel=1e-6)
    assert slide.level_pixel_size_um(1) == pytest.approx((1.6, 1.3))


def test_ome_pyramid_stored_as_separate_series(tmp_path, rng):
    levels = _pyramid("uint16", rng)
    path = write_ome_tiff(tmp_path / "s.ome.tiff", levels, channel_names=NAMES, pixel_size_um=(0.5, 0.5),
                          pyramid="series")
    slide = open_slide(path)
    assert [lvl.shape for lvl in slide.levels] == [lv.shape for lv in levels]
    np.testing.assert_array_equal(slide.levels[2].data.compute(), levels[2])


@pytest.mark.parametrize("compression", ["zlib", "lzw", "zstd", "jpeg"])
def test_compressed_tiles_decode(tmp_path, rng, compression):
    levels = _pyramid("uint8", rng, shape=(2, 300, 300))
    path = write_ome_tiff(tmp_path / "s.ome.tiff", levels, channel_names=["DAPI", "CD20"],
                          pixel_size_um=(0.5, 0.5), compression=compression)
    decoded = open_slide(path).levels[0].data.compute()
    if compression == "jpeg":  # lossy: close, not equal
        assert np.mean(np.abs(decoded.astype(int) - levels[0])) < 80
    else:
        np.testing.assert_array_equal(decoded, levels[0])
    assert open_slide(path).compression == {"zlib": "deflate"}.get(compression, compression)


def test_plain_multipage_and_multisample_tiff(tmp_path, rng):
    data = rng.integers(0, 4000, (3, 120, 160), dtype=np.uint16)
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as tw:
        for plane in data:
            tw.write(plane, metadata=None, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    slide = open_slide(pages, channel_names=["DAPI", "CD20", "TFE3"])
    assert slide.format == "tiff" and slide.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(slide.levels[0].data.compute(), data)
    assert open_slide(pages).channel_names == ("Channel 1", "Channel 2", "Channel 3")

    # interleaved samples of a grayscale (not RGB) page are channels; RGB is refused (test_formats)
    samples = tmp_path / "samples.tif"
    tifffile.imwrite(samples, np.moveaxis(data.astype(np.uint8), 0, -1), photometric="minisblack",
                     planarconfig="contig", resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH", tile=(64, 64))
    slide = open_slide(samples)
    assert slide.shape == (3, 120, 160) and slide.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(slide.levels[0].data.compute(), data.astype(np.uint8))


def test_plain_zarr_array_needs_names_and_pixel_size(tmp_path, rng):
    import zarr

    data = rng.integers(0, 255, (2, 90, 70), dtype=np.uint8)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, dtype=data.dtype, chunks=(1, 32, 32))
    array[...] = data
    with pytest.raises(PixelSizeError, match="pixel"):
        open_slide(tmp_path / "a.zarr")
    slide = open_slide(tmp_path / "a.zarr", pixel_size_um=0.5, channel_names=["dapi", "cd20"])
    assert slide.format == "zarr"
    np.testing.assert_array_equal(slide.channel("CD20").compute(), data[1])


def test_ome_zarr_v04_and_v05(tmp_path, rng):
    levels = _pyramid("uint16", rng)
    for version in ("0.4", "0.5"):
        path = write_ome_zarr(tmp_path / f"v{version}.ome.zarr", levels, channel_names=NAMES,
                              pixel_size_um=(0.5, 0.5), version=version)
        slide = open_slide(path)
        assert slide.channel_names == tuple(NAMES)
        assert slide.pixel_size_um == pytest.approx(0.5)
        assert slide.metadata["ngff_version"] == version
        np.testing.assert_array_equal(slide.levels[-1].data.compute(), levels[-1])


def test_channel_lookup_is_case_insensitive_and_errors_list_channels(tmp_path, rng):
    levels = _pyramid("uint8", rng, shape=(3, 300, 300))
    slide = open_slide(write_ome_tiff(tmp_path / "s.ome.tiff", levels, channel_names=NAMES, pixel_size_um=(0.5, 0.5)))
    np.testing.assert_array_equal(slide.channel("cd20").compute(), levels[0][1])
    np.testing.assert_array_equal(slide.channel(" Tfe3 ", level=1).compute(), levels[1][2])
    with pytest.raises(ChannelError, match="no channel named 'CD23'; channels present: DAPI, CD20, TFE3"):
        slide.channel("CD23")
    with pytest.raises(KeyError):  # also the matching built-in
        slide.channel("CD23")
    with pytest.raises(IndexError, match="level 9"):
        slide.channel("DAPI", level=9)


def test_user_overrides_and_their_errors(tmp_path, rng):
    levels = _pyramid("uint8", rng, shape=(3, 100, 100))
    path = write_ome_tiff(tmp_path / "s.ome.tiff", levels, channel_names=NAMES, pixel_size_um=(0.5, 0.5))
    slide = open_slide(path, pixel_size_um=(0.3, 0.31), channel_names=["a", "b", "c"])
    assert (slide.pixel_size_x_um, slide.pixel_size_y_um) == (0.3, 0.31)
    assert slide.metadata["pixel_size_source"] == "user"
    with pytest.raises(ChannelError, match="channel_names has 2 names .* the file has 3 channels"):
        open_slide(path, channel_names=["a", "b"])
    with pytest.raises(ChannelError, match="unique.*repeated: A"):
        open_slide(path, channel_names=["A", "a", "c"])
    with pytest.raises(PixelSizeError, match="pixel_size_um: pixel size must be a positive number"):
        open_slide(path, pixel_size_um=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        open_slide(path, chunk_size=0)


def test_missing_pixel_size_says_how_to_pass_it(tmp_path, rng):
    path = tmp_path / "nores.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (2, 64, 64), dtype=np.uint8), metadata=None)
    with pytest.raises(PixelSizeError, match=r"nores.tif: the file records no physical pixel size; pass .*--pixel-size"):
        open_slide(path)
    assert open_slide(path, pixel_size_um=0.5).pixel_size_um == 0.5


def test_non_physical_and_implausible_pixel_sizes_are_refused(tmp_path, rng):
    data = rng.integers(0, 255, (1, 64, 64), dtype=np.uint8)
    ome_pixel = tmp_path / "pixelunit.ome.tif"
    tifffile.imwrite(ome_pixel, data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "pixel",
                                                          "PhysicalSizeY": 1.0, "PhysicalSizeYUnit": "pixel"})
    with pytest.raises(PixelSizeError, match="'pixel', which is not a physical unit"):
        open_slide(ome_pixel)
    bogus = tmp_path / "bogus.ome.tif"
    tifffile.imwrite(bogus, data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 10000.0, "PhysicalSizeY": 10000.0})
    with pytest.raises(PixelSizeError, match="10000 µm/px is outside the plausible range"):
        open_slide(bogus)
    assert open_slide(bogus, pixel_size_um=0.65).pixel_size_um == 0.65


def test_unreadable_inputs_raise_clear_errors(tmp_path, rng):
    with pytest.raises(SlideNotFoundError, match="nowhere.qptiff: no such file"):
        open_slide(tmp_path / "nowhere.qptiff")
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "nowhere.qptiff")
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(SlideFormatError, match="notes.tif: not a TIFF"):
        open_slide(text)
    truncated = tmp_path / "cut.tif"
    truncated.write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(SlideFormatError, match="cut.tif: not a readable TIFF"):
        open_slide(truncated)
    stack = tmp_path / "zstack.ome.tif"
    tifffile.imwrite(stack, rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8), ome=True,
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with pytest.raises(SlideFormatError, match="axes 'ZCYX'"):
        open_slide(stack)
    ints = tmp_path / "int32.ome.tif"
    tifffile.imwrite(ints, np.zeros((1, 32, 32), np.int32), ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    converted = open_slide(ints)  # signed and wide integers are read as float32, with a note
    assert converted.dtype == np.float32 and converted.metadata["dtype_conversion"] == "pixel type int32 read as float32"


def test_opening_decodes_no_tile(tmp_path, rng):
    """Tile bytes overwritten with garbage: opening and metadata still work, reading fails."""
    levels = _pyramid("uint16", rng, shape=(3, 512, 512))
    path = write_ome_tiff(tmp_path / "s.ome.tiff", levels, channel_names=NAMES, pixel_size_um=(0.5, 0.5))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    raw = bytearray(path.read_bytes())
    for offset, count in zip(offsets, counts):
        raw[offset : offset + count] = b"\x5a" * count
    path.write_bytes(bytes(raw))
    slide = open_slide(path)
    assert slide.info()["shape"] == [3, 512, 512]
    np.testing.assert_array_equal(slide.channel("CD20").compute(), levels[0][1])  # other pages intact
    with pytest.raises(CorruptSlideError, match=r"s\.ome\.tiff: cannot read channel 1, rows 0-512, columns 0-512 .*corrupt or truncated"):
        slide.channel("DAPI").compute()


@pytest.mark.slow
def test_chunks_align_with_tiles_and_graph_pickles(tmp_path, rng):
    levels = _pyramid("uint16", rng, shape=(2, 1000, 1300))
    path = write_ome_tiff(tmp_path / "s.ome.tiff", levels, channel_names=["DAPI", "CD20"], pixel_size_um=(0.5, 0.5), tile=128)
    for chunk_size, step in [(None, 2048), (300, 256), (128, 128), (700, 640)]:
        data = open_slide(path, chunk_size=chunk_size).levels[0].data
        assert data.chunks[1][0] == min(step, 1000) and data.chunks[2][0] == min(step, 1300)
        assert all(c % 128 == 0 for c in data.chunks[1][:-1] + data.chunks[2][:-1])
    data = open_slide(path, chunk_size=256).levels[0].data
    pickle.loads(pickle.dumps(data))  # plain pickle: no open file handles in the graph
    with dask.config.set(scheduler="processes", num_workers=2):
        np.testing.assert_array_equal(data.compute(), levels[0])


def test_strip_files_keep_whole_rows(tmp_path, rng):
    data = rng.integers(0, 255, (2, 300, 5000), dtype=np.uint8)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, data, rowsperstrip=16, metadata=None, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    slide = open_slide(path, chunk_size=256)
    assert slide.tile_shape == (16, 5000)
    assert slide.levels[0].data.chunks[2] == (5000,)
    assert all(c % 16 == 0 for c in slide.levels[0].data.chunks[1][:-1])
    np.testing.assert_array_equal(slide.levels[0].data.compute(), data)


def test_slide_name_and_level_choice(tmp_path, rng):
    levels = _pyramid("uint8", rng, shape=(1, 600, 600))
    slide = open_slide(write_ome_tiff(tmp_path / "case-7.ome.tiff", levels, channel_names=["DAPI"], pixel_size_um=(0.5, 0.5)))
    assert slide.name == "case-7"
    assert slide.level_for_pixel_size(1.0) == 1
    assert slide.level_for_pixel_size(100.0) == len(slide.levels) - 1
    assert slide.level_for_pixel_size(0.1) == 0


def test_public_api():
    assert tlsquant.open_slide is open_slide
    assert isinstance(tlsquant.__version__, str)


@pytest.mark.slow
def test_concurrent_reads_of_many_pages_agree(tmp_path, rng):
    """Many threads reading different pages of one file share one handle safely."""
    levels = _pyramid("uint16", rng, shape=(8, 600, 600))
    path = write_qptiff(tmp_path / "s.qptiff", levels, channel_names=[f"m{i}" for i in range(8)],
                        pixel_size_um=(0.5, 0.5), tile=64)
    for _ in range(3):
        slide = open_slide(path, chunk_size=64)
        with dask.config.set(scheduler="threads", num_workers=8):
            np.testing.assert_array_equal(slide.levels[0].data.compute(), levels[0])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
@pytest.mark.parametrize("factor", [2, 3])
def test_pyramid_levels_in_memory_equal_the_chunked_mean(dtype, factor):
    from tlsquant.io.writers import downsample_mean

    info = np.iinfo(dtype)
    level = np.random.default_rng(factor).integers(info.min, info.max, (3, 301, 257), endpoint=True).astype(dtype)
    level[:, :7] = info.max  # bins of the largest values: their float32 sums must stay exact
    import dask.array as da

    chunks = (1, 96, 64) if factor == 2 else (1, 99, 63)  # whole bins per chunk, as the dask path keeps them
    chunked = downsample_mean(da.from_array(level, chunks=chunks), factor).compute()
    np.testing.assert_array_equal(downsample_mean(level, factor), chunked)
    assert downsample_mean(level, factor).dtype == level.dtype
