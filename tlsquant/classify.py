"""TLS maturation: a follicular dendritic-cell or germinal-centre network inside the TLS.

A network is connected positive area above a size, not a handful of scattered positive
cells: positive grid bins are closed over gaps of ``closing_um`` and the largest
connected piece inside the TLS must reach ``min_network_area_um2``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .segment.regions import disk

BINARY_STAGES = ("primary", "mature")
SILINA_STAGES = ("early", "primary_follicle", "secondary_follicle")


def largest_network_um2(positive: np.ndarray, region: np.ndarray, *, bin_um: float, closing_um: float) -> float:
    """Area (µm²) of the largest connected network of ``positive`` cells within ``region``."""
    network = positive & region
    if not network.any():
        return 0.0
    if closing_um > 0:
        network = ndi.binary_closing(network, structure=disk(closing_um, bin_um)) & region
    labels, count = ndi.label(network)
    if count == 0:
        return 0.0
    return float(np.bincount(labels.ravel())[1:].max() * bin_um * bin_um)


def stage(gc_network_um2: float, fdc_network_um2: float, *, scheme: str, min_network_area_um2: float) -> str:
    """The TLS stage under ``scheme``.

    binary (the reference study): mature with a CD23+ germinal-centre network, else primary.
    silina: secondary follicle-like with a CD23+ network, primary follicle-like with only a
    CD21+ FDC network, early with neither.
    """
    has_gc = gc_network_um2 >= min_network_area_um2
    if scheme == "binary":
        return "mature" if has_gc else "primary"
    if has_gc:
        return "secondary_follicle"
    return "primary_follicle" if fdc_network_um2 >= min_network_area_um2 else "early"


def is_mature(stage_name: str) -> bool:
    return stage_name in ("mature", "secondary_follicle")
