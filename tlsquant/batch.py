"""Cohort runs: a manifest of slides analysed in parallel, resumable, one failure never sinks the batch.

Layout of OUTDIR::

    slides/<slide_id>/summary.json, tls.csv, tls.geojson, qc.png   (per slide; summary last)
    cohort.csv                 one row per completed slide: manifest columns + metrics
    failures.csv               slide_id, path, error_type, error
    batch.log                  (written by the CLI)

With ``--shard I/N`` the cohort and failure tables are ``cohort.shard-I-of-N.csv`` and
``failures.shard-I-of-N.csv``; ``collect`` merges them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Config
from .errors import TLSQuantError

log = logging.getLogger("tlsquant.batch")

REQUIRED_COLUMNS = ("slide_id", "path")
FAILURE_COLUMNS = ["slide_id", "path", "error_type", "error"]
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(TLSQuantError, ValueError):
    """The manifest cannot be used at all (missing columns, duplicate or unsafe ids)."""


@dataclass(frozen=True)
class SlideJob:
    """One manifest row, resolved: what a worker needs to analyse one slide."""

    slide_id: str
    path: Path
    pixel_size_um: float | None
    clinical: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class Manifest:
    path: Path
    table: pd.DataFrame  # the rows as read (strings), manifest order
    jobs: list[SlideJob]  # rows that passed validation
    problems: list[dict[str, str]]  # rows that did not: slide_id, path, error_type, error


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest CSV.

    Problems that make the whole manifest unusable raise :class:`ManifestError` listing all
    of them; problems of single rows (missing file, bad pixel size) are returned in
    ``problems`` so the other slides can still run.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable CSV manifest ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(
            f"{path}: manifest needs columns {', '.join(REQUIRED_COLUMNS)} (optional pixel_size_um and any "
            f"clinical columns); missing {', '.join(missing)}; found {', '.join(table.columns)}"
        )
    table = table.apply(lambda column: column.str.strip())
    errors = []
    for line, slide_id in zip(range(2, len(table) + 2), table["slide_id"]):
        if not slide_id:
            errors.append(f"line {line}: empty slide_id")
        elif not _SAFE_ID.match(slide_id):
            errors.append(f"line {line}: slide_id {slide_id!r} must be letters, digits, '.', '_' or '-' "
                          f"(it names the output folder)")
    duplicated = table["slide_id"][table["slide_id"].duplicated(keep=False) & (table["slide_id"] != "")]
    for slide_id in sorted(set(duplicated)):
        lines = [str(i + 2) for i in table.index[table["slide_id"] == slide_id]]
        errors.append(f"slide_id {slide_id!r} appears on lines {', '.join(lines)}")
    if errors:
        raise ManifestError(f"{path}: {len(errors)} problem(s) in the manifest:\n  " + "\n  ".join(errors))
    jobs, problems = [], []
    clinical_columns = [c for c in table.columns if c not in ("slide_id", "path", "pixel_size_um")]
    for line, values in zip(range(2, len(table) + 2), table.to_dict("records")):
        slide_id, slide_path = values["slide_id"], values["path"]
        resolved = (path.parent / slide_path) if slide_path else None
        pixel_text = values.get("pixel_size_um", "")
        pixel_size = None
        error = None
        if not slide_path:
            error = ("ManifestError", f"line {line}: empty path")
        elif not resolved.exists():
            error = ("SlideNotFoundError", f"{resolved}: no such file or directory (manifest line {line})")
        elif pixel_text:
            try:
                pixel_size = float(pixel_text)
                if not math.isfinite(pixel_size) or pixel_size <= 0:
                    raise ValueError
            except ValueError:
                error = ("ManifestError", f"line {line}: pixel_size_um must be a positive number in µm, got {pixel_text!r}")
        if error:
            problems.append({"slide_id": slide_id, "path": slide_path, "error_type": error[0], "error": error[1]})
            continue
        jobs.append(SlideJob(slide_id, resolved, pixel_size, {c: values[c] for c in clinical_columns}))
    return Manifest(path, table, jobs, problems)


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (I from 0 to N-1) -> (I, N)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise TLSQuantError(f"--shard expects I/N such as 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise TLSQuantError(f"--shard {text}: I must be between 0 and N-1 (N >= 1)")
    return index, count


def in_shard(position: int, shard: tuple[int, int] | None) -> bool:
    return shard is None or position % shard[1] == shard[0]


def slide_dir(outdir: Path, slide_id: str) -> Path:
    return Path(outdir) / "slides" / slide_id


def is_complete(outdir: Path, slide_id: str) -> bool:
    """A slide is complete when its summary.json (written last) exists and names it."""
    summary = slide_dir(outdir, slide_id) / "summary.json"
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("slide_id") == slide_id
    except (OSError, json.JSONDecodeError):
        return False


def process_slide(job: SlideJob, outdir: str | Path, config: Config, threads: int = 1) -> str:
    """Analyse one slide and write its outputs (runs inside a worker). Returns the slide id."""
    from .io import open_slide
    from .io.outputs import write_slide_outputs
    from .pipeline import analyze_slide

    slide = open_slide(job.path, pixel_size_um=job.pixel_size_um, chunk_size=config.compute.chunk_px or None)
    result = analyze_slide(slide, config, scheduler="threads" if threads > 1 else "sync", num_workers=threads)
    result.summary["slide_id"] = job.slide_id
    result.slide_id = job.slide_id
    write_slide_outputs(result, slide_dir(Path(outdir), job.slide_id), slide=slide)
    return job.slide_id


def flatten_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a summary.json, as cohort columns (no timings: they vary)."""
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if key in ("config", "segmentation", "source", "timing_seconds", "outputs", "thresholds", "warnings"):
            continue
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                row[f"{key}_{sub}"] = sub_value
        else:
            row[key] = value
    for role, threshold in summary.get("thresholds", {}).items():
        row[f"threshold_{role}"] = threshold["value"]
    row["warnings"] = "; ".join(summary.get("warnings", []))
    return row


def build_cohort(manifest: Manifest, outdir: Path, *, shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """One row per completed slide of the manifest (in manifest order): manifest columns + metrics."""
    rows = []
    for position, record in enumerate(manifest.table.to_dict("records")):
        if not in_shard(position, shard) or not is_complete(outdir, record["slide_id"]):
            continue
        summary = json.loads((slide_dir(outdir, record["slide_id"]) / "summary.json").read_text())
        metrics = flatten_summary(summary)
        metrics.pop("slide_id", None)
        rows.append({**record, **metrics})
    return pd.DataFrame(rows, columns=list(manifest.table.columns) if not rows else None)


def table_names(shard: tuple[int, int] | None) -> tuple[str, str]:
    if shard is None:
        return "cohort.csv", "failures.csv"
    suffix = f"shard-{shard[0]}-of-{shard[1]}"
    return f"cohort.{suffix}.csv", f"failures.{suffix}.csv"


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    from .io.atomic import atomic_path

    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


@dataclass
class BatchResult:
    cohort: pd.DataFrame
    failures: pd.DataFrame
    processed: list[str]
    skipped: list[str]
    cohort_path: Path
    failures_path: Path


ProgressCallback = Callable[[str, str, int, int], None]  # (slide_id, status, done, total)


def run_batch(manifest: Manifest | str | Path, outdir: str | Path, config: Config, *, client=None,
              workers: int | None = None, threads_per_worker: int = 1, shard: tuple[int, int] | None = None,
              overwrite: bool = False, fail_fast: bool = False, progress: ProgressCallback | None = None) -> BatchResult:
    """Analyse every slide of ``manifest`` on dask.distributed and write the cohort tables.

    ``client``: an existing ``distributed.Client`` (a scheduler address or SLURM cluster);
    without one a local cluster of ``workers`` processes (default: one per core) is started
    and closed. Slides whose complete outputs exist are skipped unless ``overwrite``.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    positions = {row["slide_id"]: i for i, row in enumerate(manifest.table.to_dict("records"))}
    jobs = [job for job in manifest.jobs if in_shard(positions[job.slide_id], shard)]
    failures = [p for p in manifest.problems if in_shard(positions.get(p["slide_id"], 0), shard)]
    for problem in failures:
        log.error("%s: %s", problem["slide_id"], problem["error"])
    skipped = [job.slide_id for job in jobs if not overwrite and is_complete(outdir, job.slide_id)]
    todo = [job for job in jobs if job.slide_id not in skipped]
    total = len(jobs) + len(failures)
    done = len(skipped) + len(failures)
    for slide_id in skipped:
        log.info("%s: complete outputs exist, skipped", slide_id)
        if progress:
            progress(slide_id, "skipped", done, total)
    processed: list[str] = []
    if todo:
        own_cluster = None
        if client is None:
            from distributed import Client, LocalCluster

            n_workers = workers or os.cpu_count() or 1
            own_cluster = LocalCluster(n_workers=min(n_workers, len(todo)), threads_per_worker=threads_per_worker,
                                       processes=True, dashboard_address=None)
            client = Client(own_cluster)
        try:
            processed = _run_jobs(client, todo, outdir, config, threads_per_worker, failures, fail_fast,
                                  progress, done, total)
        finally:
            if own_cluster is not None:
                client.close()
                own_cluster.close()
    cohort_name, failures_name = table_names(shard)
    cohort = build_cohort(manifest, outdir, shard=shard)
    failure_table = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    failure_table = failure_table.sort_values("slide_id", key=lambda ids: ids.map(positions)).reset_index(drop=True)
    _write_csv(cohort, outdir / cohort_name)
    _write_csv(failure_table, outdir / failures_name)
    return BatchResult(cohort, failure_table, processed, skipped, outdir / cohort_name, outdir / failures_name)


def _run_jobs(client, jobs, outdir, config, threads, failures, fail_fast, progress, done, total) -> list[str]:
    from distributed import as_completed

    futures = {client.submit(process_slide, job, str(outdir), config, threads, key=f"slide-{job.slide_id}-{time.time_ns()}",
                             pure=False): job for job in jobs}
    processed = []
    iterator = as_completed(futures, with_results=False)
    for future in iterator:
        job = futures[future]
        done += 1
        try:
            future.result()
        except Exception as exc:  # a failed slide is recorded, the batch goes on
            failures.append({"slide_id": job.slide_id, "path": str(job.path), "error_type": type(exc).__name__,
                             "error": str(exc)})
            log.error("%s: %s: %s", job.slide_id, type(exc).__name__, exc)
            if progress:
                progress(job.slide_id, "failed", done, total)
            if fail_fast:
                for other in futures:
                    other.cancel()
                break
            continue
        processed.append(job.slide_id)
        log.info("%s: done", job.slide_id)
        if progress:
            progress(job.slide_id, "done", done, total)
    return processed


def collect(manifest: Manifest | str | Path, outdir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge shard outputs: cohort.csv from every complete slide, failures.csv from the shards."""
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    outdir = Path(outdir)
    cohort = build_cohort(manifest, outdir)
    completed = set(cohort["slide_id"]) if len(cohort) else set()
    pieces = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(outdir.glob("failures.shard-*.csv"))]
    failures = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=FAILURE_COLUMNS)
    failures = failures[~failures["slide_id"].isin(completed)].drop_duplicates("slide_id")
    _write_csv(cohort, outdir / "cohort.csv")
    _write_csv(failures, outdir / "failures.csv")
    return cohort, failures
