"""Tiles read straight from the file equal what the zarr store reads, and odd layouts fall back to the store."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import tlsquant
import tlsquant.io.lazy as lazy


def _both_ways(path, monkeypatch, chunk_px=96):
    direct = tlsquant.open_slide(path, chunk_size=chunk_px)
    stack_direct = np.stack([direct.channel(n).compute(scheduler="sync") for n in direct.channel_names])
    with monkeypatch.context() as patch:
        patch.setattr(lazy, "_tile_index", lambda *args: None)
        via_zarr = tlsquant.open_slide(path, chunk_size=chunk_px)
        stack_zarr = np.stack([via_zarr.channel(n).compute(scheduler="sync") for n in via_zarr.channel_names])
    return stack_direct, stack_zarr


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("compression", [None, "zlib", "zstd"])
def test_direct_tile_reads_equal_the_zarr_store(tmp_path, monkeypatch, dtype, compression, rng):
    # 150 x 230 px in 64 px tiles: partial tiles on the right and bottom, chunks that cut tiles
    image = (rng.random((3, 150, 230)) * 200).astype(dtype)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression=compression, predictor=compression is not None,
                     photometric="minisblack", metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                         "Channel": {"Name": ["DAPI", "CD20", "TFE3"]}})
    calls = []
    original = lazy._read_tiles
    monkeypatch.setattr(lazy, "_read_tiles", lambda *a: calls.append(1) or original(*a))
    direct, via_zarr = _both_ways(path, monkeypatch)
    assert calls  # the direct path ran
    np.testing.assert_array_equal(direct, image)
    np.testing.assert_array_equal(via_zarr, image)


def test_strips_and_interleaved_samples_use_the_store(tmp_path, monkeypatch, rng):
    image = (rng.random((2, 90, 70)) * 1000).astype(np.uint16)
    path = tmp_path / "strips.ome.tif"
    tifffile.imwrite(path, image, rowsperstrip=16, photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    monkeypatch.setattr(lazy, "_read_tiles", lambda *a: pytest.fail("strips must not be read as tiles"))
    slide = tlsquant.open_slide(path)
    np.testing.assert_array_equal(np.stack([slide.channel(n).compute(scheduler="sync") for n in slide.channel_names]),
                                  image)


def _read_located(offset, location):
    (y0, y1), (x0, x1) = location
    return offset + np.add.outer(np.arange(y0, y1) * 1000, np.arange(x0, x1))


def test_located_blocks_give_each_block_its_location_and_pickle():
    """The hand-built graph (no map_blocks): every block is read(*args, its location), any chunking, picklable."""
    import pickle

    whole = 7 + np.add.outer(np.arange(23) * 1000, np.arange(17))
    for chunks in [((23,), (17,)), ((5, 5, 13), (16, 1)), ((1,) * 23, (4, 4, 4, 4, 1))]:
        array = lazy.located_blocks(_read_located, (7,), chunks=chunks, dtype=np.int64, name=f"located-{len(chunks[0])}")
        assert array.chunks == chunks
        assert np.array_equal(array.compute(scheduler="sync"), whole)
        assert np.array_equal(array[3:20, 2:9].compute(scheduler="threads"), whole[3:20, 2:9])
        graph = dict(array.__dask_graph__())
        assert len(pickle.loads(pickle.dumps(graph))) == len(chunks[0]) * len(chunks[1])
