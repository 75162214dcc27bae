"""Step 2: the evidence maps' bins, and whether their memory fits this machine."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..config import Config
from ..errors import SlideTooLargeError
from ..pixel_size import PixelSize
from ..slide import Slide


@dataclass(frozen=True)
class Grid:
    """The fine (TLS) and coarse (tissue, tumour) bins: ``fine_factor`` / ``coarse_factor`` level-0 px a side."""

    fine_factor: int
    coarse_factor: int
    pixel_size: PixelSize  # level 0, (y, x) µm/px

    @property
    def fine_bin(self) -> PixelSize:
        """A fine bin's (height, width) in µm."""
        return self.pixel_size.scaled(self.fine_factor)

    @property
    def coarse_bin(self) -> PixelSize:
        """A coarse bin's (height, width) in µm."""
        return self.pixel_size.scaled(self.coarse_factor)

    @property
    def fine_um(self) -> float:
        """A fine bin's side in µm (the geometric mean for non-square pixels)."""
        return self.fine_bin.mean_um

    @property
    def coarse_um(self) -> float:
        """A coarse bin's side in µm (the geometric mean for non-square pixels)."""
        return self.coarse_bin.mean_um

    @property
    def pixel_area_um2(self) -> float:
        return self.pixel_size.area_um2

    @property
    def bins_per_coarse(self) -> int:
        """Fine bins along one side of a coarse bin."""
        return self.coarse_factor // self.fine_factor


def plan_grid(slide: Slide, config: Config) -> Grid:
    """Fine bins of about ``evidence.grid_um``, coarse bins a whole multiple of them near ``tumour.grid_um``."""
    pixel_um = slide.pixel_size.mean_um
    fine = max(1, round(config.evidence.grid_um / pixel_um))
    coarse = fine * max(1, round(config.tumour.grid_um / (fine * pixel_um)))
    return Grid(fine, coarse, slide.pixel_size)


def available_memory_gb() -> float:
    """Physical memory of this machine in GB (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        return 0.0


def check_memory(slide: Slide, *, fine_factor: int, coarse_factor: int, n_channels: int, limit_gb: float) -> float:
    """Estimated GB the whole-slide maps need; a slide over ``limit_gb`` is refused before any pixel is read.

    The maps are the only part of the analysis that grows with the slide (the pixel passes
    go block by block), so a header claiming an absurd size (200,000 x 200,000 px from a
    tiny file) is caught here. ``limit_gb`` 0 means three quarters of this machine's memory.
    """
    height, width = slide.shape[1:]
    fine = math.ceil(height / fine_factor) * math.ceil(width / fine_factor)
    coarse = math.ceil(height / coarse_factor) * math.ceil(width / coarse_factor)
    # bytes per grid bin, from measured peaks (35,328 x 31,744 px, 7 channels: 1.46 GiB, the TLS step):
    # fine evidence counts (one byte a map), labels, masks and band temporaries; coarse background,
    # threshold and distance maps; what the interpreter and libraries hold (~0.3 GB) comes on top
    need_gb = (fine * (n_channels + 10) + coarse * (12 * n_channels + 48)) / 1e9
    limit = limit_gb or 0.75 * available_memory_gb()
    if limit and need_gb > limit:
        raise SlideTooLargeError(
            f"{slide.path}: {width:,} x {height:,} px at {slide.pixel_size_x_um:g} µm/px "
            f"({width * slide.pixel_size_x_um / 1000:.1f} x {height * slide.pixel_size_y_um / 1000:.1f} mm) needs about "
            f"{need_gb:.1f} GB for its whole-slide maps, more than compute.max_memory_gb allows ({limit:.1f} GB); "
            f"check the file (a damaged header?) and the pixel size, or raise compute.max_memory_gb")
    return need_gb
