"""The command line: info and synth, with their errors."""

from __future__ import annotations

import json

import pytest

from tlsquant.cli import main

from .conftest import TEST_IMAGES


@pytest.mark.parametrize("name, fmt", [
    ("synthetic-a.ome.tiff", "ome-tiff"), ("synthetic-b.qptiff", "qptiff"), ("synthetic-c.ome.zarr", "ome-zarr"),
])
def test_info_json_on_bundled_images(capsys, name, fmt):
    assert main(["info", "--json", str(TEST_IMAGES / name)]) == 0
    info = json.loads(capsys.readouterr().out)
    stem = name.split(".")[0]
    truth = json.loads((TEST_IMAGES / f"{stem}.truth.json").read_text())
    assert info["format"] == fmt
    assert info["channels"] == truth["channel_names"]
    assert info["pixel_size_um"] == pytest.approx(truth["pixel_size_um"], rel=1e-3)
    assert info["shape"] == truth["shape"]
    assert info["levels"][0] == truth["shape"] and len(info["levels"]) >= 2
    assert info["dtype"] == truth["dtype"]
    assert {"tile_shape", "compression"} <= info.keys()


def test_info_text_and_overrides(capsys, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\ne\nf\n")
    assert main(["info", str(TEST_IMAGES / "synthetic-a.ome.tiff"), "--channels", str(names), "--pixel-size", "0.5,0.6"]) == 0
    out = capsys.readouterr().out
    assert "0.5 x 0.6 µm/px (user)" in out and "a, b, c, d, e, f  (user)" in out


def test_info_errors_exit_2_with_a_message(capsys, tmp_path):
    assert main(["info", str(tmp_path / "missing.qptiff")]) == 2
    assert "missing.qptiff: no such file" in capsys.readouterr().err
    assert main(["info", str(TEST_IMAGES / "synthetic-a.ome.tiff"), "--channels", "a,b"]) == 2
    assert "channel_names has 2 names" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "x", "--pixel-size", "abc"])


def test_synth_writes_slide_and_truth(capsys, tmp_path):
    assert main(["synth", str(tmp_path / "out"), "--seed", "3", "--size", "1.2x0.9", "--pixel-size", "2.5",
                 "--tls", "1,1,0", "--format", "ome-tiff,qptiff", "--dtype", "uint8"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["synthetic-s3.ome.tiff", "synthetic-s3.qptiff", "synthetic-s3.truth.json"]
    assert main(["info", "--json", str(tmp_path / "out" / "synthetic-s3.qptiff")]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert info["shape"] == [6, 360, 480]


@pytest.mark.slow
def test_analyze_writes_outputs_and_reports(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["analyze", str(TEST_IMAGES / "synthetic-b.qptiff"), "-o", str(out), "--set",
                 "maturation.scheme=silina", "--workers", "1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "synthetic-b: tumour" in text and "density" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["maturation"]["scheme"] == "silina"
    assert summary["config"]["compute"]["workers"] == 1
    by_stage = summary["tls_count_by_stage"]
    assert set(by_stage) == {"early", "primary_follicle", "secondary_follicle"}
    # Silina counts under its own names: no "primary" count that silently holds the early TLS
    assert "tls_primary_count" not in summary
    assert summary["tls_early_count"] == by_stage["early"] and summary["tls_primary_follicle_count"] == by_stage["primary_follicle"]
    assert summary["tls_mature_count"] == by_stage["secondary_follicle"] and sum(by_stage.values()) == summary["tls_count"]
    assert f"{by_stage['early']} early" in text
    # the QC pictures are on by default: the CLI writes both, as PNG, and the summary lists them
    for picture in ("qc.png", "thresholds.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture in summary["outputs"], picture


@pytest.mark.slow
def test_analyze_counts_cells_and_writes_the_cell_table(capsys, tmp_path):
    # 1 µm pixels, the coarsest that gets cells; the QC pictures are checked in the test above
    assert main(["synth", str(tmp_path / "fine.ome.tiff"), "--seed", "5", "--size", "1.0x0.75", "--pixel-size", "1.0",
                 "--tls", "1,0,0"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "fine.ome.tiff"), "-o", str(tmp_path / "out"), "--cells-table", "-q",
                 "--set", "outputs.qc_png=false"]) == 0
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert f"fine: {summary['cells']['total']} cells" in text and "cd20+" in text
    assert (tmp_path / "out" / "cells.csv.gz").is_file() and summary["config"]["outputs"]["cells_table"] is True


def test_analyze_errors_exit_2(capsys, tmp_path):
    slide = str(TEST_IMAGES / "synthetic-a.ome.tiff")
    assert main(["analyze", slide, "-o", str(tmp_path), "--set", "tls.min_area_um2=-1"]) == 2
    assert "tls.min_area_um2 must be > 0, got -1.0" in capsys.readouterr().err
    assert main(["analyze", slide, "-o", str(tmp_path), "--set", "channels.b_cells=MS4A1"]) == 2
    assert "channels.b_cells = 'MS4A1' but the slide has no such channel" in capsys.readouterr().err
    assert main(["analyze", slide, "-o", str(tmp_path), "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: config file not found" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_demo_runs_the_whole_flow_and_matches_the_truth(capsys, tmp_path):
    # one worker process: the slides one after the other, each worker process's start-up paid once
    assert main(["demo", "-o", str(tmp_path), "--workers", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and (tmp_path / "comparison" / "report.html").is_file()
    assert (tmp_path / "cohort.csv").is_file() and (tmp_path / "comparison" / "stats.csv").is_file()
    assert "synthetic-a: done" in (tmp_path / "batch.log").read_text()
    assert "cells: not measured" in out  # 2.5 µm/px cannot resolve nuclei, and the demo says so
    # outcome analysis on the seeded synthetic patients: response rates, PFS by TLS group, report
    assert "clinical outcomes on a synthetic cohort of 60 patients" in out and "ORR" in out
    assert (tmp_path / "outcomes" / "outcomes.html").is_file()
    # the survival part needs the [outcomes] extra, which the [test] extra installs
    assert "log-rank" in out and (tmp_path / "outcomes" / "figures" / "km_PFS.png").is_file()
    for stem in ("synthetic-a", "synthetic-b", "synthetic-c"):
        truth = json.loads((TEST_IMAGES / f"{stem}.truth.json").read_text())
        summary = json.loads((tmp_path / "slides" / stem / "summary.json").read_text())
        assert summary["tls_count"] == truth["tls_count"]
        assert summary["tls_density_per_mm2"] == pytest.approx(truth["tls_density_per_mm2"], rel=0.1)
        assert stem in out
