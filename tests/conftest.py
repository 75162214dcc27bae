"""Shared fixtures: small synthetic scenes and files, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlsquant import synthetic

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "test_images"
REALDATA = REPO.parent / "shared" / "realdata"


def _kernel_cache_is_cold() -> bool:
    """Whether the counting kernel has no numba cache yet (next to the sources, or in NUMBA_CACHE_DIR)."""
    import os

    places = [REPO / "tlsquant"] + ([Path(os.environ["NUMBA_CACHE_DIR"])] if os.environ.get("NUMBA_CACHE_DIR") else [])
    return not any(any(place.rglob("counting._count_loops*.nbi")) for place in places if place.is_dir())


_WARMING: list = []  # the warm-up processes, until the first test may run


def _warm_kernels() -> None:
    """Start compiling the numba kernels, in two processes side by side; :func:`_kernels_warm` waits for them.

    In a fresh clone each xdist worker and each dask worker process a test starts would
    compile them again (~10 CPU s each, ~100 CPU s a suite); afterwards they load from the
    on-disk cache in well under a second. The test workers start and collect meanwhile (the
    kernels compile on first call, not on import); no test runs before the warm-up ends.
    """
    import subprocess
    import sys

    script = Path(__file__).with_name("warm_kernels.py")
    _WARMING.extend(subprocess.Popen([sys.executable, str(script), str(part)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for part in (0, 1))


def _kernels_warm() -> None:
    while _WARMING:
        _WARMING.pop().wait()  # a failure here only means the tests compile for themselves (and report what broke)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """The controller, as each worker has collected: tests are handed out only after this returns."""
    _kernels_warm()


def pytest_collection_finish(session):
    _kernels_warm()  # a run without xdist


def pytest_configure(config):
    if not hasattr(config, "workerinput") and _kernel_cache_is_cold():  # the controller (or a run without xdist)
        _warm_kernels()
    # worker processes (local dask clusters, the process pools of scheduler="processes") are forked from one
    # server process that has imported numpy, dask and tlsquant already, instead of each being spawned as a
    # fresh interpreter that imports them again: seconds of CPU per process, most of the suite's cluster
    # start-up. Only the tests do this (dask's default, spawn, is what users get); the work is the same.
    import multiprocessing

    import dask

    multiprocessing.set_forkserver_preload(["tlsquant.pipeline", "tlsquant.batch", "tlsquant.workflow", "tlsquant.outputs",
                                            "tlsquant.sensitivity", "distributed", "matplotlib.pyplot"])
    # no MALLOC_TRIM_THRESHOLD_ from dask's nanny: it writes it into this process's environment before its first
    # worker starts, and every process forked or spawned afterwards (the forkserver, `python -m tlsquant`) then
    # hands large buffers back to the system and faults them in again (7 slides in one worker: 2.6-3.4 -> 0.8 sys s)
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver", "multiprocessing.context": "forkserver",
                     "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "realdata" in item.keywords and not REALDATA.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"{REALDATA} not present"))


@pytest.fixture(scope="session")
def small_scene() -> synthetic.Scene:
    return synthetic.make_scene(
        seed=11, width_um=1600, height_um=1200, pixel_size_um=2.0, tls_counts=(2, 1, 0),
        tls_radius_um=(45, 80), dtype="uint16",
    )


@pytest.fixture(scope="session")
def small_pyramid(small_scene):
    from tlsquant.io.writers import build_pyramid

    return build_pyramid(synthetic.render(small_scene).compute(), min_size=128)


@pytest.fixture(scope="session")
def dask_client():
    """Two local worker processes shared by the batch tests that do not test cluster start-up itself.

    Not the default client: ``dask.compute`` elsewhere in the session keeps its own scheduler.
    """
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as client:
            yield client


@pytest.fixture(scope="session")
def process_pool():
    """Two worker processes for ``scheduler="processes"``, started once.

    Without it dask starts a fresh pool for every ``dask.compute`` of an analysis (seconds each);
    use it as ``with dask.config.set(pool=process_pool):`` around the processes run only.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        yield pool


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def two_tls_slide(tmp_path_factory) -> Path:
    """A small single-level OME-TIFF (1.2 x 0.9 mm at 2.5 µm/px) with two TLS, written once for the output tests."""
    scene = synthetic.make_scene(seed=1, width_um=1200, height_um=900, pixel_size_um=2.5,
                                 tls_counts=(1, 1, 0), tls_radius_um=(55, 70))
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("two-tls") / "slide.ome.tiff")
    return path
