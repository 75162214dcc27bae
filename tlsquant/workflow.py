"""Open, analyse and write one slide: the one path both ``tlsquant analyze`` and batch workers take."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .config import Config


def analyze_to_folder(path: str | Path, outdir: str | Path, config: Config, *, slide_id: str | None = None,
                      pixel_size_um: float | tuple[float, float] | None = None,
                      channel_names: Sequence[str] | None = None, scheduler=None, num_workers: int | None = None,
                      annotations: str | Path | None = None):
    """Analyse the slide at ``path`` and write its outputs into ``outdir``; returns the SlideResult.

    ``slide_id`` replaces the id taken from the file name (a manifest's). Every dask
    computation, the output pictures included, runs on ``scheduler`` (default: the
    config's), never on a distributed client the caller happens to run inside: a batch
    worker finishes its slide without queueing behind other slides. ``annotations``: a QuPath
    GeoJSON of the slide's regions (tumour bed, exclusions, region of interest).
    """
    import dask

    from . import progress
    from .io import open_slide
    from .memory import release_free_memory
    from .outputs import write_slide_outputs
    from .pipeline import analyze_slide

    slide = open_slide(path, pixel_size_um=pixel_size_um, channel_names=channel_names,
                       chunk_size=config.compute.chunk_px or None, marker_map=config.channels.fluorophores)
    chosen = scheduler or config.compute.scheduler
    # "distributed" asks for the current client on purpose; anything else stays in this process
    settings = {} if chosen == "distributed" or not isinstance(chosen, str) else {"scheduler": chosen}
    with dask.config.set(**settings):
        result = analyze_slide(slide, config, scheduler=scheduler, num_workers=num_workers, annotations=annotations)
        if slide_id is not None:
            result.summary["slide_id"] = slide_id
            result.slide_id = slide_id
        release_free_memory()
        progress.step("writing outputs")
        write_slide_outputs(result, outdir, slide=slide)
        progress.end()
    return result
