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
