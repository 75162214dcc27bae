"""Reliability: stale results, crash leftovers, locks, unwritable outputs, hostile and damaged files."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from tlsquant import synthetic
from tlsquant.batch import ManifestError, collect, read_manifest, run_batch
from tlsquant.cli import main
from tlsquant.config import load_config
from tlsquant.errors import OutputError, OutputLockedError, StaleResultError
from tlsquant.io.lock import output_lock
from tlsquant.provenance import config_hash

from .conftest import TEST_IMAGES

FAST = ["cells.enabled=false", "outputs.qc_png=false"]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    with distributed.Client(cluster) as connected:
        yield connected
    cluster.close()


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliable")
    rows = []
    for k in range(2):
        scene = synthetic.make_scene(seed=300 + k, width_um=1200, height_um=900, pixel_size_um=2.5, dtype="uint8",
                                     tls_counts=(2, 1, 0), tls_radius_um=(50, 70))
        path, _ = synthetic.write_slide(scene, root / f"s{k}.ome.tiff")
        rows.append({"slide_id": f"s{k}", "path": path.name, "arm": "A" if k else "B"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def _copy(two_slides, tmp_path):
    for item in two_slides.iterdir():
        shutil.copy2(item, tmp_path / item.name)
    return tmp_path / "manifest.csv"


@pytest.mark.slow
def test_config_change_reanalyses_or_is_refused_and_the_cohort_names_its_config(two_slides, tmp_path, client):
    manifest = _copy(two_slides, tmp_path)
    out = tmp_path / "out"
    first = load_config(overrides=FAST)
    assert sorted(run_batch(manifest, out, first, client=client).processed) == ["s0", "s1"]
    assert run_batch(manifest, out, first, client=client).skipped == ["s0", "s1"]
    cohort = pd.read_csv(out / "cohort.csv")
    assert set(cohort["config_hash"]) == {config_hash(first)}
    # a new setting: stale outputs are analysed again, not reused
    second = load_config(overrides=[*FAST, "tls.min_area_um2=20000"])
    assert config_hash(second) != config_hash(first)
    again = run_batch(manifest, out, second, client=client)
    assert sorted(again.processed) == ["s0", "s1"] and again.skipped == []
    assert set(pd.read_csv(out / "cohort.csv")["config_hash"]) == {config_hash(second)}
    # compute settings change nothing in the results: no re-analysis
    faster = load_config(overrides=[*FAST, "tls.min_area_um2=20000", "compute.workers=3"])
    assert run_batch(manifest, out, faster, client=client).skipped == ["s0", "s1"]
    # under --no-overwrite a stale slide is a failure with a clear message, never silently mixed in
    refused = run_batch(manifest, out, first, client=client, refuse_stale=True)
    assert refused.processed == [] and list(refused.failures["error_type"]) == ["StaleResultError"] * 2
    assert "made with another config" in refused.failures.loc[0, "error"]
    assert len(refused.cohort) == 0
    # ... and the cohort.csv of the earlier run, still true of the slide folders, is kept, not emptied
    kept = pd.read_csv(out / "cohort.csv")
    assert sorted(kept["slide_id"]) == ["s0", "s1"] and set(kept["config_hash"]) == {config_hash(second)}


@pytest.mark.slow
def test_changed_slide_file_is_analysed_again(two_slides, tmp_path, client):
    manifest = _copy(two_slides, tmp_path)
    config = load_config(overrides=FAST)
    run_batch(manifest, tmp_path / "out", config, client=client)
    stat = os.stat(tmp_path / "s1.ome.tiff")
    os.utime(tmp_path / "s1.ome.tiff", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    # refused under --no-overwrite: s1 is a failure and so not in the cohort, though its old outputs share the config
    refused = run_batch(manifest, tmp_path / "out", config, client=client, refuse_stale=True)
    assert list(refused.failures["slide_id"]) == ["s1"] and "slide file changed" in refused.failures.loc[0, "error"]
    assert list(refused.cohort["slide_id"]) == ["s0"]
    assert list(pd.read_csv(tmp_path / "out" / "cohort.csv")["slide_id"]) == ["s0"]
    result = run_batch(manifest, tmp_path / "out", config, client=client)
    assert result.processed == ["s1"] and result.skipped == ["s0"]


def test_collect_refuses_a_cohort_made_with_two_configs(two_slides, tmp_path, client):
    manifest = _copy(two_slides, tmp_path)
    out = tmp_path / "out"
    run_batch(manifest, out, load_config(overrides=FAST), client=client, shard=(0, 2))
    run_batch(manifest, out, load_config(overrides=[*FAST, "tls.min_area_um2=9000"]), client=client, shard=(1, 2))
    with pytest.raises(StaleResultError, match="different configs"):
        collect(manifest, out)


@pytest.mark.slow
def test_a_failed_write_leaves_nothing_complete_and_the_rerun_cleans_up(two_slides, tmp_path, client, monkeypatch):
    manifest = _copy(two_slides, tmp_path)
    out = tmp_path / "out"
    config = load_config(overrides=[*FAST, "outputs.masks_zarr=true"])
    run_batch(manifest, out, config, client=client)
    folder = out / "slides" / "s0"
    assert (folder / "masks.ome.zarr").is_dir()
    # what a killed run leaves behind
    (folder / ".qc.png.partial-99999").write_bytes(b"half")
    (out / ".cohort.csv.partial-99998").write_text("half")
    # the disk fills while the GeoJSON is written: the old summary is gone first, so the folder is not complete
    from tlsquant import outputs

    real = outputs.write_text_atomic

    def full_disk(path, text):
        if path.name == "tls.geojson":
            raise outputs.output_error(path, OSError(errno.ENOSPC, "No space left on device"))
        return real(path, text)

    monkeypatch.setattr(outputs, "write_text_atomic", full_disk)
    failed = run_batch(manifest, out, config, client=client, overwrite=True)
    assert failed.failures.loc[0, "error_type"] == "OutputError" and "disk is full" in failed.failures.loc[0, "error"]
    # the batch stopped: nothing more can be written there
    assert "batch stopped" in failed.failures.loc[len(failed.failures) - 1, "error"] or len(failed.failures) == 2
    assert not (folder / "summary.json").exists() and not (folder / ".qc.png.partial-99999").exists()
    assert not (out / ".cohort.csv.partial-99998").exists()
    monkeypatch.setattr(outputs, "write_text_atomic", real)
    # a rerun without masks: the old masks do not survive beside the new results
    plain = load_config(overrides=FAST)
    rerun = run_batch(manifest, out, plain, client=client)
    assert sorted(rerun.processed) == ["s0", "s1"]
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted([*summary["outputs"], "summary.json"])
    assert "masks.ome.zarr" not in summary["outputs"]


def test_a_second_writer_is_refused(two_slides, tmp_path, capsys):
    manifest = _copy(two_slides, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out):
        assert main(["analyze", str(tmp_path / "s0.ome.tiff"), "-o", str(out), "-q", "--set", "cells.enabled=false"]) == 2
        assert "another tlsquant run is writing here" in capsys.readouterr().err
        assert main(["batch", str(manifest), "-o", str(out), "-q"]) == 2
        assert "another tlsquant run is writing here" in capsys.readouterr().err
        with pytest.raises(OutputLockedError):
            run_batch(manifest, out, load_config(overrides=FAST))
    assert not list(out.iterdir())  # nothing was written, the lock file went with its holder


def test_bad_output_places_fail_before_any_work(two_slides, tmp_path, capsys):
    slide = str(two_slides / "s0.ome.tiff")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for target, expected in ((a_file, "is a file, expected a folder"), (a_file / "inside", "is a file")):
        assert main(["analyze", slide, "-o", str(target), "-q"]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"),
                    reason="needs root to mount a small tmpfs")
@pytest.mark.slow
def test_full_and_read_only_disks_give_clear_errors(two_slides, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        (mount / "filler").write_bytes(b"\0" * 60_000)
        run = subprocess.run([sys.executable, "-m", "tlsquant", "analyze", str(two_slides / "s0.ome.tiff"),
                              "-o", str(mount / "out"), "-q"], capture_output=True, text=True)
        assert run.returncode == 2, run.stderr
        assert "disk is full" in run.stderr and "Traceback" not in run.stderr
        assert not (mount / "out" / "summary.json").exists()
        assert not [p for p in (mount / "out").iterdir() if ".partial-" in p.name]
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        # refused before any work (nothing is open when the process ends): in this process
        assert main(["analyze", str(two_slides / "s0.ome.tiff"), "-o", str(mount / "ro"), "-q"]) == 2
        err = capsys.readouterr().err
        assert "read-only" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_slide_ids_that_cannot_name_a_folder_are_refused_up_front(tmp_path):
    from tlsquant.batch import is_safe_id

    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(f"slide_id,path\n{'x' * 300},a.tif\n")
    with pytest.raises(ManifestError, match="300 characters long, at most 100"):
        read_manifest(tmp_path / "m.csv")
    # Windows device names, trailing dots and ids that differ only in case (one folder on macOS, Windows, SMB)
    ids = ["CON", "nul.txt", "Lpt3", "com1.tar.gz", "abc.", "S1", "ok", "s1", "console", "com10"]
    (tmp_path / "m.csv").write_text("slide_id,path\n" + "".join(f"{i},a.tif\n" for i in ids))
    with pytest.raises(ManifestError) as refused:
        read_manifest(tmp_path / "m.csv")
    message = str(refused.value)
    for line, slide_id in ((2, "CON"), (3, "nul.txt"), (4, "Lpt3"), (5, "com1.tar.gz")):
        assert f"line {line}: slide_id {slide_id!r} is a device name Windows reserves" in message
    assert "line 6: slide_id 'abc.' ends in '.'" in message
    assert "slide_ids 'S1', 's1' on lines 7, 9 differ only in case" in message
    assert "console" not in message and "com10" not in message and "'ok'" not in message
    assert not any(map(is_safe_id, ["CON", "aux.1", "x.", "..", "a/b"])) and all(map(is_safe_id, ["console", "com10"]))


def test_a_stale_lock_file_another_user_left_is_replaced(tmp_path, monkeypatch):
    import builtins

    from tlsquant.io import lock
    from tlsquant.io.lock import LOCK_NAME

    out = tmp_path / "shared"
    out.mkdir()
    stale = out / LOCK_NAME
    stale.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x", "command": "killed"}))
    stale.chmod(0o444)  # another user's file: readable, not writable by us, in a folder we may write
    if os.geteuid() == 0:  # root writes any file: open it as other users would
        def as_a_user(file, mode="r", *args, **kwargs):
            if set(mode) & set("wa+") and os.path.exists(file) and not os.stat(file).st_mode & 0o222:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return builtins.open(file, mode, *args, **kwargs)
        monkeypatch.setattr(lock, "open", as_a_user, raising=False)
    with output_lock(out):
        assert json.loads(stale.read_text())["pid"] == os.getpid()  # a fresh file, ours
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"), output_lock(out):
            pass
    assert not stale.exists()


def _run_cli_and_terminate(args, out, *, after_s: float = 0.05):
    """Start ``python -m tlsquant ARGS -o OUT -q``, send SIGTERM once it holds OUT's lock; (exit code, stderr).

    The lock is taken before the analysis starts; a bundled slide is analysed in about a second,
    so the signal goes soon after (a longer wait lets the run finish first).
    """
    import signal
    import time

    from tlsquant.io.lock import LOCK_NAME

    run = subprocess.Popen([sys.executable, "-m", "tlsquant", *args, "-o", str(out), "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / LOCK_NAME).exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(after_s)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    return run.returncode, err


def test_sigterm_is_an_interruption_with_its_own_exit_code(tmp_path):
    out = tmp_path / "out"
    code, err = _run_cli_and_terminate(["analyze", str(TEST_IMAGES / "synthetic-d.ome.tiff")], out)
    assert code == 143 and err == "terminated\n", (code, err)
    assert not (out / "summary.json").exists()


def test_output_error_survives_pickling_with_its_errno():
    import pickle

    from tlsquant.io.atomic import output_error

    error = pickle.loads(pickle.dumps(output_error("x/y", OSError(errno.EROFS, "Read-only file system"))))
    assert isinstance(error, OutputError) and error.reason_errno == errno.EROFS and "read-only" in str(error)


# -- damaged and hostile files ----------------------------------------------------------------

XXE = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<PerkinElmer-QPI-ImageDescription><Name>&x;</Name></PerkinElmer-QPI-ImageDescription>"""
LAUGHS = ("<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\">"
          + "".join(f"<!ENTITY {chr(98 + k)} \"{('&' + chr(97 + k) + ';') * 10}\">" for k in range(8))
          + "]><PerkinElmer-QPI-ImageDescription><Name>&i;</Name></PerkinElmer-QPI-ImageDescription>")


def _qptiff_with(path, description: str):
    with tifffile.TiffWriter(path) as tif:
        for _ in range(3):
            tif.write(np.zeros((64, 64), np.uint8), description=description, photometric="minisblack",
                      resolution=(20000, 20000), resolutionunit="CENTIMETER")


SIX = ["DAPI", "CD3", "CD20", "CD21", "CD23", "TFE3"]


def _six_planes() -> np.ndarray:
    data = np.full((6, 256, 384), 100, np.uint16)  # no chunk equal to zarr's fill value: every chunk is stored
    data[:, 64:192, 96:288] = 500
    return data


def _six_channels(path, *, ome: bool = True, tile: int = 16, **page0_tags):
    """A small tiled 6-channel (OME-)TIFF with the default channel names; ``page0_tags`` overwrite page 0's tags."""
    tifffile.imwrite(path, _six_planes(), tile=(tile, tile), compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": SIX}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
                     if ome else None)
    with tifffile.TiffFile(path, mode="r+") as tif:
        for tag, value in page0_tags.items():
            tif.pages[0].tags[tag].overwrite(value)


def _first_tile_rotten(path):
    """A 6-channel OME-TIFF of 384 small tiles per channel whose first tile does not decode: fails mid-analysis."""
    _six_channels(path)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)


def _zarr_with(path, *, version="0.5", corrupt=True):
    """A 6-channel OME-Zarr of 32 px chunks with chunk (0, 1, 2) of level 0 garbled (``corrupt``) or deleted."""
    from tlsquant.io.writers import write_ome_zarr

    data = _six_planes()
    write_ome_zarr(path, [data], channel_names=SIX, pixel_size_um=(0.5, 0.5), chunk=32, version=version)
    chunk = path / "0" / ("c/0/1/2" if version == "0.5" else "0.1.2")
    assert chunk.is_file()
    if corrupt:
        chunk.write_bytes(b"\x00garbage" * 4)
    else:
        chunk.unlink()


def _corpus(root):
    """(name, path, what the error must say; None: it must work) for damaged, hostile and unusable inputs."""
    d = TEST_IMAGES / "synthetic-d.ome.tiff"
    b = TEST_IMAGES / "synthetic-b.qptiff"
    data_d, data_b = d.read_bytes(), b.read_bytes()
    items = []

    def add(name, content, expected):
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif callable(content):
            content(path)
        items.append((name, path, expected))

    add("empty.tif", b"", "not a")
    add("noise.tif", np.random.default_rng(1).bytes(5000), "not a")
    add("text.ome.tiff", b"hello, not an image\n" * 50, "not a")
    add("png.tif", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "detected format PNG")
    add("header-only.tif", b"II*\x00" + b"\x00" * 64, "not a")
    for fraction in (0.02, 0.1, 0.3, 0.6, 0.95):
        add(f"cut-{fraction}.ome.tiff", data_d[: int(len(data_d) * fraction)], "truncated or corrupt")
    for fraction in (0.3, 0.7):
        add(f"cut-{fraction}.qptiff", data_b[: int(len(data_b) * fraction)], "truncated or corrupt")
    # flipped bytes inside the compressed tiles of every channel
    damaged = bytearray(data_d)
    for offset in range(20000, len(damaged) - 20000, 997):
        damaged[offset] ^= 0xFF
    add("bitrot.ome.tiff", bytes(damaged), "corrupt")
    add("xxe.qptiff", lambda p: _qptiff_with(p, XXE), "unsafe")
    add("laughs.qptiff", lambda p: _qptiff_with(p, LAUGHS), "unsafe")
    add("bad-xml.qptiff", lambda p: _qptiff_with(p, "<PerkinElmer-QPI-ImageDescription><Name>x</Nam>"), "malformed")

    def huge(path):  # a header consistent in itself (one 200,000 px tile per page): only its size is absurd
        tifffile.imwrite(path, np.zeros((5, 256, 256), np.uint16), tile=(256, 256), compression="zlib",
                         photometric="minisblack", resolution=(20000, 20000), resolutionunit="CENTIMETER",
                         metadata={"axes": "CYX"})
        with tifffile.TiffFile(path, mode="r+") as tif:
            for page in tif.pages:
                for tag in ("ImageWidth", "ImageLength", "TileWidth", "TileLength"):
                    page.tags[tag].overwrite(200000)
    add("huge-header.tif", huge, "")  # refused by the memory guard or as damaged
    # one page's header damaged: refused naming the page, never read as five channels
    add("wide-page0.ome.tiff", lambda p: _six_channels(p, ImageWidth=4_000_000_000), "page 0: its header says")
    add("tile-7.ome.tiff", lambda p: _six_channels(p, tile=256, TileWidth=7, TileLength=7), "in 7 x 7 px tiles")
    add("short-page0.ome.tiff", lambda p: _six_channels(p, ImageLength=250), "page 0 is 250 x 384 px")
    add("short-page0.tif", lambda p: _six_channels(p, ome=False, ImageLength=250), "page 0 is 250 x 384 px")
    add("8bit-page0.ome.tiff", lambda p: _six_channels(p, BitsPerSample=8), "channel 1 (page 0) is 256 x 384 px uint8")
    add("rotten-tile.ome.tiff", _first_tile_rotten, "cannot read channel 1, rows 0-256")
    add("bad-chunk.ome.zarr", _zarr_with, "array '0' (level 0), channel 1, rows 0-256, columns 0-384, chunk 0/c/0/1/2")
    add("bad-chunk-v2.ome.zarr", lambda p: _zarr_with(p, version="0.4"), "chunk 0/0.1.2")
    add("missing-chunk.ome.zarr", lambda p: _zarr_with(p, corrupt=False), None)  # zarr's fill value: analysed
    add("rgb.tif", lambda p: tifffile.imwrite(p, np.zeros((64, 64, 3), np.uint8), photometric="rgb"), "brightfield")
    add("no-size.ome.tiff", lambda p: tifffile.imwrite(p, np.zeros((3, 64, 64), np.uint16),
                                                       metadata={"axes": "CYX"}), "no such channel")
    add("empty-dir", lambda p: p.mkdir(), "")
    add("missing.ome.tiff", lambda p: None, "no such file")
    add("zarr-no-metadata.zarr", lambda p: p.mkdir(), "")

    def bad_zattrs(path):
        path.mkdir()
        (path / ".zattrs").write_text("{not json")
        (path / ".zgroup").write_text('{"zarr_format": 2}')
    add("bad-zattrs.ome.zarr", bad_zattrs, "")

    def stale_ome(path):
        names = [f"C{k}" for k in range(10)]
        tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint16), metadata={"axes": "CYX", "Channel": {"Name": names[:3]}})
        with tifffile.TiffFile(path, mode="r+") as tif:
            text = tif.pages[0].description.replace('SizeC="3"', 'SizeC="10"')
            tif.pages[0].tags["ImageDescription"].overwrite(text)
    add("stale-ome.ome.tiff", stale_ome, "")

    def mixed_folder(path):
        path.mkdir()
        tifffile.imwrite(path / "DAPI.tif", np.zeros((64, 64), np.uint8))
        tifffile.imwrite(path / "CD20.tif", np.zeros((32, 64), np.uint8))
    add("mixed-folder", mixed_folder, "")

    def junk_folder(path):
        path.mkdir()
        (path / "notes.txt").write_text("x")
    add("junk-folder", junk_folder, "")
    add("tiny.ome.tiff", lambda p: tifffile.imwrite(p, np.zeros((1, 1), np.uint16)), "")
    add("wrong-ext.qptiff", lambda p: shutil.copy(d, p), None)  # an OME-TIFF named .qptiff: read for what it is
    add("dir-named.tif", lambda p: p.mkdir(), "")
    add("symlink-loop.tif", lambda p: os.symlink(p, p), "")
    add("float-nan.ome.tiff", lambda p: tifffile.imwrite(p, np.full((2, 64, 64), np.nan, np.float32),
                                                          metadata={"axes": "CYX"}), "")
    def nan_slide(path):
        names = ["DAPI", "CD3", "CD20", "CD21", "CD23", "TFE3"]
        data = np.zeros((6, 96, 96), np.float32)
        data[:, :40] = np.nan
        data[:, 50:60] = np.inf
        tifffile.imwrite(path, data, metadata={"axes": "CYX", "Channel": {"Name": names}})
    add("nan-padding.ome.tiff", nan_slide, None)  # non-finite values read as 0: an empty slide, analysed
    add("int-dtype.ome.tiff", lambda p: tifffile.imwrite(p, np.zeros((2, 64, 64), np.int32),
                                                          metadata={"axes": "CYX"}), "")
    return items


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus"))


def test_the_corpus_has_thirty_inputs(corpus):
    assert len(corpus) >= 30


@pytest.mark.slow
def test_damaged_and_hostile_files_get_one_clear_line(corpus, tmp_path, capsys):
    problems = []
    for name, path, expected in corpus:
        code = main(["analyze", str(path), "-o", str(tmp_path / name), "-q", "--pixel-size", "0.5",
                     "--set", "cells.enabled=false", "--set", "outputs.qc_png=false"])
        err = capsys.readouterr().err
        if expected is None:  # documented to work
            if code != 0 or not (tmp_path / name / "summary.json").is_file():
                problems.append(f"{name}: expected a result, got exit {code}: {err}")
            continue
        if (code != 2 or not err.startswith("tlsquant analyze: error: ") or "Traceback" in err
                or err.count("\n") != 1 or expected.lower() not in err.lower()
                or (tmp_path / name / "summary.json").exists()):
            problems.append(f"{name} (exit {code}, expected {expected!r}): {err}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_a_failed_read_is_one_line_to_the_end_of_the_process(corpus, tmp_path):
    """The one error line is all: no asyncio or zarr tracebacks when the interpreter exits after a failed read."""
    names = ("rotten-tile.ome.tiff", "bad-chunk.ome.zarr", "wide-page0.ome.tiff", "bitrot.ome.tiff")
    runs = {name: subprocess.Popen([sys.executable, "-m", "tlsquant", "analyze", str(path), "-o", str(tmp_path / name),
                                    "--set", "cells.enabled=false", "--set", "outputs.qc_png=false"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for name, path, _ in corpus if name in names}
    assert len(runs) == len(names)
    progress = re.compile(r"^[\w -]+: (started|[\d]+ blocks in [\d.]+ s|done in [\d.]+ s)$")
    for name, run in runs.items():
        _, err = run.communicate(timeout=120)
        lines = err.splitlines()
        said = [line for line in lines if not progress.match(line)]  # step lines come first (not a terminal)
        assert run.returncode == 2 and len(said) == 1 and "Traceback" not in err, f"{name}: {err[:2000]}"
        assert lines[-1] == said[0] and said[0].startswith("tlsquant analyze: error: ") and "corrupt" in said[0]
        assert len(lines) == 1 or lines[-2].endswith(": started")  # the step that failed is not reported as done


def test_a_missing_zarr_chunk_is_the_fill_value_and_a_garbled_one_is_named(tmp_path):
    from tlsquant.errors import CorruptSlideError
    from tlsquant.io import open_slide

    _zarr_with(tmp_path / "missing.ome.zarr", corrupt=False)
    pixels = open_slide(tmp_path / "missing.ome.zarr").levels[0].data[0].compute()
    assert (pixels[32:64, 64:96] == 0).all() and (pixels[:32] == 100).all()  # zarr's fill value, as zarr defines
    _zarr_with(tmp_path / "garbled.ome.zarr")
    slide = open_slide(tmp_path / "garbled.ome.zarr")
    with pytest.raises(CorruptSlideError, match=r"garbled.ome.zarr: cannot read array '0' \(level 0\), channel 1, "
                                                r"rows 0-256, columns 0-384, chunk 0/c/0/1/2 \(RuntimeError"):
        slide.levels[0].data[0].compute()
    assert slide.levels[0].data[1].compute().min() == 100  # the other channels read


def test_a_damaged_page_is_refused_even_when_channel_names_are_given(corpus, tmp_path, capsys):
    """Read as five unnamed channels, page 0 dropped, the slide used to be analysed under --channels: exit 0."""
    path = next(p for n, p, _ in corpus if n == "wide-page0.ome.tiff")
    code = main(["analyze", str(path), "-o", str(tmp_path / "out"), "-q", "--channels", "DAPI,CD3,CD20,CD21,CD23",
                 "--set", "cells.enabled=false"])
    err = capsys.readouterr().err
    assert code == 2 and "page 0: its header says 256 x 4,000,000,000 px" in err, err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_agreement_figures_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from tlsquant.agreement import write_figures

    values = {f"{metric}_{who}": [0.1, 0.4, 0.3, 0.8] for metric in ("tls_density_per_mm2", "tls_area_pct")
              for who in ("auto", "manual")}
    table = pd.DataFrame(values)
    written = write_figures(table, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agreement_scatter.png", "bland_altman.png"] == \
        sorted(p.name for p in written)
    assert (tmp_path / "bland_altman.png").read_bytes()[:4] == b"\x89PNG"
    real = Figure.savefig

    def disk_fills(figure, target, **kwargs):
        real(figure, target, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_fills)
    (tmp_path / "bland_altman.png").unlink()
    with pytest.raises(OutputError, match="disk is full"):
        write_figures(table, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agreement_scatter.png"]  # the earlier one, no partials


def test_hostile_xml_is_refused_fast_without_expanding(corpus):
    import time

    from tlsquant.errors import SlideFormatError
    from tlsquant.io import open_slide

    for name in ("xxe.qptiff", "laughs.qptiff"):
        path = next(p for n, p, _ in corpus if n == name)
        started = time.perf_counter()
        with pytest.raises(SlideFormatError, match="DTD or entities"):
            open_slide(path)
        assert time.perf_counter() - started < 2.0


def test_compare_treats_cohort_values_as_data_not_markup_or_paths(tmp_path, capsys):
    slides = tmp_path / "run" / "slides"
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "qc.png").write_bytes(b"not read")  # where "../../x" would point
    for slide_id in ("a1", "a2", "a3"):
        (slides / slide_id).mkdir(parents=True)
    script = "<script>alert(1)</script>"
    cohort = pd.DataFrame({
        "slide_id": ["a1", "a2", "a3", "../../x", "b2", "b3"],
        "arm": [script] * 3 + ["*bold* | pipe"] * 3,
        "tls_density_per_mm2": [0.3, 0.4, 0.5, 0.01, 0.02, 0.0],
        "tls_area_pct": [0.5, 0.6, 0.7, 0.0, 0.1, 0.05],
    })
    cohort.to_csv(tmp_path / "run" / "cohort.csv", index=False)
    out = tmp_path / "run" / "stats"
    assert main(["compare", str(tmp_path / "run" / "cohort.csv"), "--group", "arm", "-o", str(out)]) == 0
    capsys.readouterr()
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith("run") or str(p).startswith("x") for p in written)
    assert sorted(p.name for p in outside.iterdir()) == ["qc.png"]
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert script not in markdown and script not in page
    assert "&lt;script&gt;" in page and "\\*bold\\* \\| pipe" in markdown


def test_an_edited_annotations_file_makes_the_result_stale(tmp_path):
    import time

    from tlsquant.provenance import completion, provenance

    slide = tmp_path / "s.tif"
    slide.write_bytes(b"pixels")
    regions = tmp_path / "regions.geojson"
    regions.write_text('{"type": "FeatureCollection", "features": []}')
    config = load_config(overrides=FAST)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"slide_id": "s", "outputs": [],
                                                    "provenance": provenance(config, slide, annotations=regions)}))
    assert completion(folder, "s", provenance(config, slide, annotations=regions)).complete
    assert "annotations file changed" in completion(folder, "s", provenance(config, slide)).reason
    time.sleep(0.01)
    regions.write_text('{"type": "FeatureCollection", "features": [], "edited": true}')
    status = completion(folder, "s", provenance(config, slide, annotations=regions))
    assert not status.complete and status.stale and "annotations file changed" in status.reason


def test_an_absurd_header_is_refused_before_any_pixel_is_read(corpus, tmp_path, capsys):
    import time

    path = next(p for n, p, _ in corpus if n == "huge-header.tif")
    started = time.perf_counter()
    code = main(["analyze", str(path), "-o", str(tmp_path / "out"), "-q", "--channels", "DAPI,TFE3,CD20,CD21,CD23",
                 "--set", "compute.max_memory_gb=16"])
    err = capsys.readouterr().err
    assert code == 2 and "200,000 x 200,000 px" in err and "compute.max_memory_gb" in err, err
    assert time.perf_counter() - started < 10
