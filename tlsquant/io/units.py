"""Physical length units found in slide metadata, converted to micrometres."""

from __future__ import annotations

import math
from fractions import Fraction

from ..errors import PixelSizeError

# OME UnitsLength spellings (and common variants) -> micrometres per unit
_MICROMETRES_PER_UNIT = {
    "m": 1e6,
    "dm": 1e5,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu, as some writers emit
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "in": 25_400.0,
    "inch": 25_400.0,
}

# Below 0.01 µm/px is beyond any light microscope, above 50 µm/px no cell is
# resolved: such a value is a writer's placeholder, not a measurement.
PLAUSIBLE_PIXEL_SIZE_UM = (0.01, 50.0)

PIXEL_SIZE_HINT = (
    "pass the level-0 pixel size explicitly: open_slide(..., pixel_size_um=0.5) "
    "or --pixel-size 0.5 on the command line"
)


def length_to_um(value: float, unit: str | None, *, source: str) -> float:
    """Convert ``value`` in ``unit`` to micrometres.

    ``unit`` None means the OME default (µm). ``source`` names the file and field
    for the error message.
    """
    key = "µm" if unit is None else unit.strip().lower()
    if key in ("pixel", "referenceframe", "reference frame", "px"):
        raise PixelSizeError(
            f"{source}: the pixel size is given in {unit!r}, which is not a physical unit; "
            + PIXEL_SIZE_HINT
        )
    try:
        factor = _MICROMETRES_PER_UNIT[key]
    except KeyError:
        raise PixelSizeError(
            f"{source}: unknown length unit {unit!r}; expected one of m, mm, µm, nm, ... ; "
            + PIXEL_SIZE_HINT
        ) from None
    return float(value) * factor


def resolution_to_um(rational: tuple[int, int], unit: int, *, source: str) -> float | None:
    """Pixel size in µm from a TIFF X/YResolution rational (pixels per unit).

    Returns None when the tag carries no physical size (unit NONE, or 0 / 1).
    """
    numerator, denominator = (int(v) for v in rational)
    if unit == 1 or numerator == 0 or denominator == 0:
        return None
    pixels_per_unit = Fraction(numerator, denominator)
    if unit == 2:
        um_per_unit = 25_400
    elif unit == 3:
        um_per_unit = 10_000
    else:
        raise PixelSizeError(f"{source}: unknown TIFF ResolutionUnit {unit}; " + PIXEL_SIZE_HINT)
    return float(Fraction(um_per_unit) / pixels_per_unit)


def check_pixel_size(value_um: float, *, source: str) -> float:
    """Return ``value_um`` if it is a plausible microscope pixel size, else raise."""
    low, high = PLAUSIBLE_PIXEL_SIZE_UM
    if not (isinstance(value_um, (int, float)) and math.isfinite(value_um)) or value_um <= 0:
        raise PixelSizeError(f"{source}: pixel size must be a positive number in µm, got {value_um!r}")
    if not low <= value_um <= high:
        raise PixelSizeError(
            f"{source}: pixel size {value_um:g} µm/px is outside the plausible range "
            f"{low:g}-{high:g} µm/px (a placeholder written by the converter?); " + PIXEL_SIZE_HINT
        )
    return float(value_um)
