"""Dask clusters for batch runs: local processes, an existing scheduler, or SLURM via dask-jobqueue."""

from __future__ import annotations

from .config import Cluster
from .errors import TLSQuantError


def slurm_cluster(settings: Cluster, *, log_directory: str | None = None):
    """A dask-jobqueue SLURMCluster from the ``[cluster]`` config (jobs are not started yet)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise TLSQuantError(
            "--cluster slurm needs dask-jobqueue: pip install 'tlsquant[slurm]'"
        ) from None
    options = dict(
        cores=settings.cores,
        processes=settings.processes,
        memory=settings.memory,
        walltime=settings.walltime,
        job_extra_directives=list(settings.job_extra_directives),
        job_script_prologue=list(settings.job_script_prologue),
    )
    if settings.queue:
        options["queue"] = settings.queue
    if settings.account:
        options["account"] = settings.account
    if settings.interface:
        options["interface"] = settings.interface
    if settings.local_directory:
        options["local_directory"] = settings.local_directory
    if log_directory:
        options["log_directory"] = log_directory
    return SLURMCluster(**options)


def connect(address: str):
    """A client for an existing dask scheduler (``tcp://host:8786``)."""
    from distributed import Client

    try:
        return Client(address, timeout="20s")
    except OSError as exc:
        raise TLSQuantError(f"--scheduler {address}: cannot reach the dask scheduler ({exc})") from None
