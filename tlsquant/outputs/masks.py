"""masks.ome.zarr: tumour, tissue and TLS label masks for napari."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path


def write_masks(result, path: Path) -> Path:
    """Tumour, tissue and TLS label masks as a small OME-Zarr (one dataset per grid)."""
    import zarr

    px, py = result.pixel_size_um
    with atomic_path(path) as temporary:
        root = zarr.open_group(str(temporary), mode="w")
        for name, data, factor in (("tls_labels", result.tls_labels, result.fine_factor),
                                   ("tumour_mask", result.tumour_mask.astype(np.uint8), result.coarse_factor),
                                   ("tissue_mask", result.tissue_mask.astype(np.uint8), result.coarse_factor)):
            group = root.create_group(name)
            array = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1024, 1024))
            array[...] = data
            group.attrs["ome"] = {"version": "0.5", "multiscales": [{
                "name": name,
                "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                         {"name": "x", "type": "space", "unit": "micrometer"}],
                "datasets": [{"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": [py * factor, px * factor]}]}],
            }]}
    return path
