"""Reliability: stale results, crash leftovers, locks, unwritable outputs, hostile and damaged files."""

from __future__ import annotations

import errno
import json
import os
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


def test_changed_slide_file_is_analysed_again(two_slides, tmp_path, client):
    manifest = _copy(two_slides, tmp_path)
    config = load_config(overrides=FAST)
    run_batch(manifest, tmp_path / "out", config, client=client)
    stat = os.stat(tmp_path / "s1.ome.tiff")
    os.utime(tmp_path / "s1.ome.tiff", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    result = run_batch(manifest, tmp_path / "out", config, client=client)
    assert result.processed == ["s1"] and result.skipped == ["s0"]


def test_collect_refuses_a_cohort_made_with_two_configs(two_slides, tmp_path, client):
    manifest = _copy(two_slides, tmp_path)
    out = tmp_path / "out"
    run_batch(manifest, out, load_config(overrides=FAST), client=client, shard=(0, 2))
    run_batch(manifest, out, load_config(overrides=[*FAST, "tls.min_area_um2=9000"]), client=client, shard=(1, 2))
    with pytest.raises(StaleResultError, match="different configs"):
        collect(manifest, out)


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
def test_full_and_read_only_disks_give_clear_errors(two_slides, tmp_path):
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
        run = subprocess.run([sys.executable, "-m", "tlsquant", "analyze", str(two_slides / "s0.ome.tiff"),
                              "-o", str(mount / "ro"), "-q"], capture_output=True, text=True)
        assert run.returncode == 2 and "read-only" in run.stderr and "Traceback" not in run.stderr
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_slide_ids_that_cannot_name_a_folder_are_refused_up_front(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(f"slide_id,path\n{'x' * 300},a.tif\n")
    with pytest.raises(ManifestError, match="300 characters long, at most 100"):
        read_manifest(tmp_path / "m.csv")


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

    def huge(path):
        tifffile.imwrite(path, np.zeros((5, 256, 256), np.uint16), tile=(256, 256), compression="zlib",
                         photometric="minisblack", resolution=(20000, 20000), resolutionunit="CENTIMETER",
                         metadata={"axes": "CYX"})
        with tifffile.TiffFile(path, mode="r+") as tif:
            for page in tif.pages:
                page.tags["ImageWidth"].overwrite(200000)
                page.tags["ImageLength"].overwrite(200000)
    add("huge-header.tif", huge, "")  # refused by the memory guard or as damaged
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
