"""One pixel-size value for the whole package: level-0 µm per pixel in array order (y, x).

Files and users speak of pixel sizes as "x by y" and most slides have square pixels, which
hides a swapped pair until a slide with non-square pixels arrives. Inside tlsquant a pixel
size is a :class:`PixelSize`: a named (y, x) pair, so ``size.x_um`` says which one it is and
``np.asarray(size)`` lines up with an image's axes. Only the boundaries (a user's
``--pixel-size X,Y``, summary.json's ``pixel_size_um`` / ``pixel_size_y_um``) use x first.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class PixelSize(NamedTuple):
    """Level-0 pixel size in µm/px, in array order: ``PixelSize(y_um, x_um)``."""

    y_um: float
    x_um: float

    @classmethod
    def square(cls, um: float) -> PixelSize:
        """Square pixels of ``um`` µm."""
        return cls(float(um), float(um))

    @classmethod
    def from_xy(cls, x_um: float, y_um: float) -> PixelSize:
        """From an (x, y) pair, as files and command lines give it."""
        return cls(float(y_um), float(x_um))

    @property
    def area_um2(self) -> float:
        """Area of one pixel in µm²."""
        return self.y_um * self.x_um

    @property
    def mean_um(self) -> float:
        """The side of a square pixel of the same area (geometric mean), for isotropic rules."""
        return math.sqrt(self.y_um * self.x_um)

    @property
    def is_square(self) -> bool:
        return math.isclose(self.y_um, self.x_um, rel_tol=1e-9)

    def scaled(self, factor: float) -> PixelSize:
        """The size of a bin or level ``factor`` level-0 pixels on a side."""
        return PixelSize(self.y_um * factor, self.x_um * factor)

    def to_px(self, um: float) -> tuple[float, float]:
        """``um`` µm as (rows, columns) of pixels."""
        return um / self.y_um, um / self.x_um

    def xy(self) -> tuple[float, float]:
        """(x, y): the order of files, command lines and summary.json."""
        return self.x_um, self.y_um

    def __str__(self) -> str:
        return f"{self.x_um:g} µm/px" if self.is_square else f"{self.x_um:g} x {self.y_um:g} µm/px (x by y)"
