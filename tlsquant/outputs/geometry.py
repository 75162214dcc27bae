"""The colours of each outline class (QuPath-style names)."""

from __future__ import annotations

# QuPath-style classes (name, RGB)
STAGE_COLOURS = {
    "mature": (230, 40, 200),
    "primary": (40, 200, 230),
    "secondary_follicle": (230, 40, 200),
    "primary_follicle": (250, 170, 40),
    "early": (40, 200, 230),
}
TUMOUR_COLOUR = (200, 0, 0)
