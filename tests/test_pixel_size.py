"""PixelSize: one (y, x) value for the level-0 pixel size, x first only at the boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from tlsquant.io import open_slide
from tlsquant.io.writers import write_ome_tiff
from tlsquant.pixel_size import PixelSize


def test_array_order_and_named_access():
    size = PixelSize.from_xy(0.5, 0.25)
    assert size == (0.25, 0.5) and (size.y_um, size.x_um) == (0.25, 0.5) and size.xy() == (0.5, 0.25)
    assert size.area_um2 == pytest.approx(0.125) and size.mean_um == pytest.approx(np.sqrt(0.125))
    assert size.to_px(1.0) == (4.0, 2.0)  # 1 µm is 4 rows and 2 columns
    assert size.scaled(4) == (1.0, 2.0) and not size.is_square and PixelSize.square(0.5).is_square
    assert str(size) == "0.5 x 0.25 µm/px (x by y)" and str(PixelSize.square(0.5)) == "0.5 µm/px"


def test_a_slide_with_non_square_pixels_reports_them_in_array_order(tmp_path):
    image = np.zeros((2, 40, 60), np.uint16)
    path = tmp_path / "s.ome.tiff"
    write_ome_tiff(path, [image], channel_names=["DAPI", "CD20"], pixel_size_um=(0.5, 0.25))  # (x, y) here
    slide = open_slide(path)
    assert slide.pixel_size == PixelSize(y_um=0.25, x_um=0.5)
    assert slide.level_pixel_size_um(0) == slide.pixel_size
