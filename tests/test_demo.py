"""The demo's slides exist without a source checkout: written from the same specs as test_images/."""

from __future__ import annotations

import json

import pytest

import tlsquant.demo as demo

from .conftest import TEST_IMAGES


@pytest.mark.slow
def test_an_install_without_test_images_writes_the_same_slides(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "bundled_images", lambda: None)
    slides, folder = demo.demo_slides(tmp_path)
    assert [p.name for p in slides] == sorted(demo.DEMO_SLIDES) and folder == tmp_path / "demo-slides"
    for name in demo.DEMO_SLIDES:
        stem = name.split(".")[0]
        made = json.loads((folder / f"{stem}.truth.json").read_text())
        bundled = json.loads((TEST_IMAGES / f"{stem}.truth.json").read_text())
        for key in ("seed", "shape", "pixel_size_um", "dtype", "tls_count"):
            assert made[key] == bundled[key], (name, key)
        assert sorted(made["channel_names"]) == sorted(bundled["channel_names"])
        assert bool(made.get("realism")) == bool(bundled.get("realism"))
