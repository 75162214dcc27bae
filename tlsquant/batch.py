"""Cohort runs: a manifest of slides analysed in parallel, resumable, one failure never sinks the batch.

Layout of OUTDIR::

    slides/<slide_id>/summary.json, tls.csv, tls.geojson, qc.png   (per slide; summary last)
    cohort.csv                 one row per completed slide: manifest columns + metrics
    cohort_tls.csv (.parquet)  one row per TLS of those slides, slide_id first
    cohort_sensitivity.csv     with sensitivity.enabled: every slide's scenarios (TLS metrics under scaled thresholds)
    failures.csv               slide_id, path, error_type, error
    batch.log                  (written by the CLI)

With ``--shard I/N`` the cohort and failure tables are ``cohort.shard-I-of-N.csv`` and
``failures.shard-I-of-N.csv``; ``collect`` merges them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Config
from .errors import StaleResultError, TLSQuantError
from .provenance import completion, provenance

log = logging.getLogger("tlsquant.batch")

REQUIRED_COLUMNS = ("slide_id", "path")
# manifest columns that steer the analysis; every other column is clinical data carried into the cohort
RUN_COLUMNS = ("slide_id", "path", "pixel_size_um", "annotations", "channels", "config")
FAILURE_COLUMNS = ["slide_id", "path", "error_type", "error"]
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# device names Windows (and SMB shares) refuse as a folder name, whatever the case or extension
_RESERVED_ID = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
# a folder name every file system accepts, with room for ".summary.json.partial-<pid>" inside
MAX_ID_LENGTH = 100


class ManifestError(TLSQuantError, ValueError):
    """The manifest cannot be used at all (missing columns, duplicate or unsafe ids)."""


@dataclass(frozen=True)
class SlideJob:
    """One manifest row, resolved: what a worker needs to analyse one slide."""

    slide_id: str
    path: Path
    pixel_size_um: float | None
    clinical: dict[str, Any] = field(default_factory=dict, compare=False)
    annotations: Path | None = None  # QuPath GeoJSON of the slide's regions (manifest column ``annotations``)
    channel_names: tuple[str, ...] | None = None  # manifest column ``channels``: this slide's panel
    config_path: Path | None = None  # manifest column ``config``: this slide's TOML (mixed panels in one cohort)


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
        elif len(slide_id) > MAX_ID_LENGTH:
            errors.append(f"line {line}: slide_id is {len(slide_id)} characters long, at most {MAX_ID_LENGTH} "
                          f"(it names the output folder): {slide_id[:40]}...")
        elif _RESERVED_ID.match(slide_id):
            errors.append(f"line {line}: slide_id {slide_id!r} is a device name Windows reserves (CON, PRN, AUX, "
                          f"NUL, COM0-9, LPT0-9, in any case and with any extension); it cannot name the output "
                          f"folder there or on an SMB share")
        elif slide_id.endswith("."):
            errors.append(f"line {line}: slide_id {slide_id!r} ends in '.', which Windows and SMB shares drop "
                          f"from folder names (it names the output folder)")
    duplicated = table["slide_id"][table["slide_id"].duplicated(keep=False) & (table["slide_id"] != "")]
    for slide_id in sorted(set(duplicated)):
        lines = [str(i + 2) for i in table.index[table["slide_id"] == slide_id]]
        errors.append(f"slide_id {slide_id!r} appears on lines {', '.join(lines)}")
    folded = table["slide_id"].str.casefold()
    for key in sorted(set(folded[folded.duplicated(keep=False) & (folded != "")])):
        spellings = sorted(set(table["slide_id"][folded == key]))
        if len(spellings) > 1:  # exact repeats are reported above
            lines = [str(i + 2) for i in table.index[folded == key]]
            errors.append(f"slide_ids {', '.join(map(repr, spellings))} on lines {', '.join(lines)} differ only in "
                          f"case: on macOS, Windows and SMB shares they name the same output folder")
    if errors:
        raise ManifestError(f"{path}: {len(errors)} problem(s) in the manifest:\n  " + "\n  ".join(errors))
    jobs, problems = [], []
    clinical_columns = [c for c in table.columns if c not in RUN_COLUMNS]
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
        annotations_text = values.get("annotations", "")
        annotations = (path.parent / annotations_text) if annotations_text else None
        if not error and annotations is not None and not annotations.is_file():
            error = ("ManifestError", f"{annotations}: annotations file not found (manifest line {line})")
        config_text = values.get("config", "")
        config_path = (path.parent / config_text) if config_text else None
        if not error and config_path is not None and not config_path.is_file():
            error = ("ManifestError", f"{config_path}: config file not found (manifest line {line}, column config)")
        channel_names = None
        if not error and values.get("channels", ""):
            channel_names, channel_error = _manifest_channels(values["channels"], path.parent, line)
            error = ("ManifestError", channel_error) if channel_error else None
        if error:
            problems.append({"slide_id": slide_id, "path": slide_path, "error_type": error[0], "error": error[1]})
            continue
        jobs.append(SlideJob(slide_id, resolved, pixel_size, {c: values[c] for c in clinical_columns}, annotations,
                             channel_names, config_path))
    return Manifest(path, table, jobs, problems)


def _manifest_channels(text: str, folder: Path, line: int) -> tuple[tuple[str, ...] | None, str | None]:
    """A ``channels`` cell: names separated by ``;`` or ``|`` (or ``,`` in a quoted cell), or a markers file."""
    candidate = folder / text
    if candidate.is_file():
        from .io import read_channel_names

        try:
            return tuple(read_channel_names(candidate)), None
        except (OSError, ValueError, TLSQuantError) as exc:
            return None, f"line {line}: channels file {candidate}: {exc}"
    names = tuple(name.strip() for name in re.split(r"[;|,]", text))
    if any(not name for name in names):
        return None, f"line {line}: channels {text!r} has an empty name (names separated by ';', '|' or ',')"
    if len(set(names)) < len(names):
        return None, f"line {line}: channels {text!r} repeats a name"
    return names, None


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


def is_safe_id(slide_id: str) -> bool:
    """Whether ``slide_id`` can name a folder under the output folder (nothing else: no ``..``, no ``/``)."""
    return (bool(_SAFE_ID.match(slide_id)) and len(slide_id) <= MAX_ID_LENGTH and not slide_id.endswith(".")
            and not _RESERVED_ID.match(slide_id))


def is_complete(outdir: Path, slide_id: str, expected: dict[str, Any] | None = None) -> bool:
    """Whether the slide's outputs are whole (and, given ``expected``, made with that provenance)."""
    status = completion(slide_dir(outdir, slide_id), slide_id, expected or {})
    return status.complete if expected is not None else status.whole


PROGRESS_TOPIC = "tlsquant-progress"  # dask.distributed event topic of the steps inside running slides


def _step_publisher(slide_id: str):
    """Send this slide's steps to the scheduler's event log under :data:`PROGRESS_TOPIC` (for the client
    that draws the batch's progress); None outside a dask.distributed worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return lambda event: worker.log_event(PROGRESS_TOPIC, {"slide_id": slide_id, **event})


def process_slide(job: SlideJob, outdir: str | Path, config: Config, threads: int = 1,
                  report_steps: bool = False) -> float | Exception:
    """Analyse one slide and write its outputs (runs inside a worker).

    Returns the seconds it took, or the exception that stopped it: a failed slide is a result
    of the batch, not a task failure (which dask.distributed would log with a traceback).
    ``report_steps``: publish the analysis's steps and block counts as dask.distributed events
    (topic :data:`PROGRESS_TOPIC`), so the client can show progress within the slide.
    """
    from . import progress
    from .workflow import analyze_to_folder

    publish = _step_publisher(job.slide_id) if report_steps else None
    reporter = progress.reporting(progress.EventReporter(publish)) if publish else contextlib.nullcontext()
    started = time.perf_counter()
    try:
        with reporter:
                analyze_to_folder(job.path, slide_dir(Path(outdir), job.slide_id), config, slide_id=job.slide_id,
                              pixel_size_um=job.pixel_size_um, channel_names=job.channel_names,
                              scheduler="threads" if threads > 1 else "sync",
                              num_workers=threads, annotations=job.annotations)
    except Exception as exc:
        return exc
    return time.perf_counter() - started


def flatten_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a summary.json, as cohort columns (no timings: they vary)."""
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if key in ("config", "segmentation", "source", "timing_seconds", "outputs", "thresholds", "warnings",
                   "provenance"):
            continue
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                row[f"{key}_{sub}"] = sub_value
        else:
            row[key] = value
    for role, threshold in summary.get("thresholds", {}).items():
        row[f"threshold_{role}"] = threshold["value"]
    row["warnings"] = "; ".join(summary.get("warnings", []))
    row["config_hash"] = (summary.get("provenance") or {}).get("config_hash")
    return row


def build_cohort(manifest: Manifest, outdir: Path, *, shard: tuple[int, int] | None = None,
                 expected: dict[str, Any] | Callable[[str], dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per completed slide of the manifest (in manifest order): manifest columns + metrics.

    With ``expected`` (a :func:`tlsquant.provenance.provenance` record, or a function of the
    slide id giving one) only slides made that way count; without, every whole slide counts,
    and slides made with different configs or tlsquant versions are refused
    (:class:`StaleResultError`): one cohort, one config — per value of the manifest's
    ``config`` column where it has one (mixed panels).
    """
    rows = []
    for position, record in enumerate(manifest.table.to_dict("records")):
        if not in_shard(position, shard) or not is_safe_id(record["slide_id"]):
            continue
        wanted = expected(record["slide_id"]) if callable(expected) else expected
        if wanted is None and expected is not None:
            continue  # no config could be made for this slide
        if not is_complete(outdir, record["slide_id"], wanted):
            continue
        summary = json.loads((slide_dir(outdir, record["slide_id"]) / "summary.json").read_text(encoding="utf-8"))
        metrics = flatten_summary(summary)
        metrics.pop("slide_id", None)
        rows.append({**record, **metrics})
    made = {(row.get("config", ""), row.get("config_hash"), row.get("tlsquant_version")) for row in rows}
    if len(made) > len({key[0] for key in made}):
        by_run: dict[tuple, list[str]] = {}
        for row in rows:
            by_run.setdefault((row.get("config_hash"), row.get("tlsquant_version")), []).append(row["slide_id"])
        described = "; ".join(f"config {h} / tlsquant {v}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
                              for (h, v), ids in by_run.items())
        raise StaleResultError(f"{outdir}: the slides were analysed with different configs or tlsquant versions "
                               f"({described}); rerun the batch with one config to make a cohort")
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
# (slide_id, event): a step inside a running slide, as tlsquant.progress.EventReporter publishes it,
# plus "batch_total"; called from the client's event-loop thread
StepCallback = Callable[[str, dict], None]


def run_batch(manifest: Manifest | str | Path, outdir: str | Path, config: Config, *, client=None,
              workers: int | None = None, threads_per_worker: int = 1, shard: tuple[int, int] | None = None,
              overwrite: bool = False, refuse_stale: bool = False, fail_fast: bool = False,
              progress: ProgressCallback | None = None, lock: bool = True,
              overrides: Sequence[str] = (), step_progress: StepCallback | None = None) -> BatchResult:
    """Analyse every slide of ``manifest`` on dask.distributed and write the cohort tables.

    A slide whose manifest row names a ``config`` TOML is analysed with that file plus
    ``overrides`` (the ``--set`` values), the others with ``config``; a ``channels`` cell
    names that slide's channels (mixed panels in one cohort).

    ``client``: an existing ``distributed.Client`` (a scheduler address or SLURM cluster);
    without one a local cluster of ``workers`` processes (default: one per core) is started
    and closed. A slide whose outputs are whole and were made with this config, from this
    very file, by a compatible tlsquant version is skipped (``overwrite``: analysed again
    anyway). Outputs made another way are re-analysed, or with ``refuse_stale`` reported as
    failures (:class:`StaleResultError`). ``lock``: hold the output folder's lock for the run
    (the CLI takes it itself, earlier). A full disk or read-only output stops the batch.
    ``progress`` hears of each slide finished, skipped or failed; ``step_progress`` of the
    steps and block counts inside the slides running (published by the workers).
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    from .io.atomic import check_output_dir
    from .io.lock import output_lock

    outdir = check_output_dir(outdir)
    with output_lock(outdir) if lock else contextlib.nullcontext():
        return _run_batch(manifest, outdir, config, client=client, workers=workers,
                          threads_per_worker=threads_per_worker, shard=shard, overwrite=overwrite,
                          refuse_stale=refuse_stale, fail_fast=fail_fast, progress=progress, overrides=overrides,
                          step_progress=step_progress)


def job_configs(jobs: list[SlideJob], config: Config, overrides: Sequence[str]) -> tuple[dict[str, Config], list[dict]]:
    """Each slide's config (its manifest ``config`` file + ``overrides``, else ``config``), and the
    slides whose file does not load, as failures."""
    from .config import load_config

    loaded: dict[Path, Config | Exception] = {}
    configs, failures = {}, []
    for job in jobs:
        if job.config_path is None:
            configs[job.slide_id] = config
            continue
        if job.config_path not in loaded:
            try:
                loaded[job.config_path] = load_config(job.config_path, list(overrides))
            except TLSQuantError as exc:
                loaded[job.config_path] = exc
        made = loaded[job.config_path]
        if isinstance(made, Exception):
            failures.append({"slide_id": job.slide_id, "path": str(job.path), "error_type": type(made).__name__,
                             "error": f"{job.config_path}: {made}"})
        else:
            configs[job.slide_id] = made
    return configs, failures


def _run_batch(manifest: Manifest, outdir: Path, config: Config, *, client, workers, threads_per_worker, shard,
               overwrite, refuse_stale, fail_fast, progress, overrides=(), step_progress=None) -> BatchResult:
    from .io.atomic import remove_partials

    remove_partials(outdir)
    positions = {row["slide_id"]: i for i, row in enumerate(manifest.table.to_dict("records"))}
    jobs = [job for job in manifest.jobs if in_shard(positions[job.slide_id], shard)]
    failures = [p for p in manifest.problems if in_shard(positions.get(p["slide_id"], 0), shard)]
    rejected = list(failures)
    for problem in failures:
        log.error("%s: %s", problem["slide_id"], problem["error"])
    configs, unloadable = job_configs(jobs, config, overrides)
    failures.extend(unloadable)
    rejected.extend(unloadable)
    jobs = [job for job in jobs if job.slide_id in configs]
    made_now = {slide_id: config_provenance(made) for slide_id, made in configs.items()}
    skipped, todo = [], []
    for job in jobs:
        status = completion(slide_dir(outdir, job.slide_id), job.slide_id, {**made_now[job.slide_id], **_input(job)})
        if status.complete and not overwrite:
            skipped.append(job.slide_id)
        elif status.stale and refuse_stale and not overwrite:
            failures.append({"slide_id": job.slide_id, "path": str(job.path), "error_type": "StaleResultError",
                             "error": f"{slide_dir(outdir, job.slide_id)}: outputs exist but were {status.reason}; "
                                      f"not re-analysed (--no-overwrite)"})
            log.error("%s: outputs %s; refused under --no-overwrite", job.slide_id, status.reason)
        else:
            if status.stale:
                log.warning("%s: outputs %s: analysing again", job.slide_id, status.reason)
            todo.append(job)
    total = len(jobs) + len(rejected)
    done = 0
    for failure in failures:  # rejected up front (manifest) or refused as stale
        done += 1
        if progress:
            progress(failure["slide_id"], "failed", done, total)
    for slide_id in skipped:
        done += 1
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
                                       processes=True, dashboard_address=":0")  # ":0": any free port, no clash warning
            client = Client(own_cluster)
            log.info("local cluster: %d worker processes x %d threads, dashboard %s", len(own_cluster.workers),
                     threads_per_worker, own_cluster.dashboard_link)
        try:
            processed = _run_jobs(client, todo, outdir, configs, threads_per_worker, failures, fail_fast,
                                  progress, done, total, step_progress)
        finally:
            if own_cluster is not None:
                client.close()
                own_cluster.close()
    cohort_name, failures_name = table_names(shard)
    failure_table = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    failure_table = failure_table.sort_values("slide_id", key=lambda ids: ids.map(positions)).reset_index(drop=True)
    # failures first: on a disk that is filling up, the list of what failed is the more useful file
    _write_csv(failure_table, outdir / failures_name)
    cohort = build_cohort(manifest, outdir, shard=shard, expected=made_now.get)
    # a slide that failed or was refused is in failures.csv only, even where older outputs of it remain
    failed = set(failure_table["slide_id"])
    if len(cohort) and failed:
        cohort = cohort[~cohort["slide_id"].isin(failed)].reset_index(drop=True)
    if len(cohort) or not _earlier_cohort_holds(manifest, outdir, outdir / cohort_name, shard):
        _write_csv(cohort, outdir / cohort_name)
        write_cohort_tls(cohort, outdir, cohort_name.replace("cohort", "cohort_tls", 1))
        write_cohort_sensitivity(cohort, outdir, cohort_name.replace("cohort", "cohort_sensitivity", 1))
    else:  # nothing complete with this config (every slide refused as stale, say): keep the cohort that is still true
        log.warning("%s: no slide is complete with this config; kept the cohort of an earlier run (its config_hash "
                    "column names that run's config)", outdir / cohort_name)
    return BatchResult(cohort, failure_table, processed, skipped, outdir / cohort_name, outdir / failures_name)


def write_cohort_tls(cohort: pd.DataFrame, outdir: Path, name: str) -> Path:
    """Every TLS of the cohort's slides in one table (``slide_id`` first, the slides in cohort order),
    as CSV and, where pyarrow is installed, as Parquet beside it."""
    pieces = []
    for slide_id in cohort["slide_id"] if len(cohort) else []:
        path = slide_dir(outdir, str(slide_id)) / "tls.csv"
        table = pd.read_csv(path)
        if "slide_id" not in table.columns:  # tls.csv of tlsquant before 0.1: no slide column
            table.insert(0, "slide_id", str(slide_id))
        pieces.append(table.astype({"slide_id": str}))
    pieces = [piece for piece in pieces if len(piece)]
    if pieces:
        table = pd.concat(pieces, ignore_index=True)
    else:
        from .measure import TLS_COLUMNS

        table = pd.DataFrame(columns=["slide_id", *TLS_COLUMNS])
    path = outdir / name
    _write_csv(table, path)
    try:
        import pyarrow  # noqa: F401  (the [tables] extra)
    except ImportError:
        return path
    from .io.atomic import atomic_path

    with atomic_path(path.with_suffix(".parquet")) as temporary:
        table.to_parquet(temporary, index=False, engine="pyarrow")
    return path


def write_cohort_sensitivity(cohort: pd.DataFrame, outdir: Path, name: str) -> Path | None:
    """Every slide's sensitivity.csv in one table (``slide_id`` first, cohort order), or None when no
    slide of the cohort was analysed with ``sensitivity.enabled`` (an older table of that name is removed:
    it would describe other slides)."""
    from .outputs import SENSITIVITY

    pieces = []
    for slide_id in cohort["slide_id"] if len(cohort) else []:
        path = slide_dir(outdir, str(slide_id)) / SENSITIVITY
        if path.is_file():
            table = pd.read_csv(path)
            table.insert(0, "slide_id", str(slide_id))
            pieces.append(table)
    path = outdir / name
    if not pieces:
        path.unlink(missing_ok=True)
        return None
    _write_csv(pd.concat(pieces, ignore_index=True), path)
    return path


def _earlier_cohort_holds(manifest: Manifest, outdir: Path, path: Path, shard: tuple[int, int] | None) -> bool:
    """Whether the cohort table at ``path`` lists exactly the whole slides of the folder, as made (one config)."""
    try:
        earlier = pd.read_csv(path, dtype=str, keep_default_na=False)
        whole = build_cohort(manifest, outdir, shard=shard)  # refuses slides made with several configs
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return False
    if not len(earlier) or "config_hash" not in earlier.columns or len(earlier) != len(whole):
        return False
    return (list(earlier["slide_id"]) == [str(v) for v in whole["slide_id"]]
            and list(earlier["config_hash"]) == [str(v) for v in whole["config_hash"]])


def config_provenance(config: Config) -> dict[str, Any]:
    """The provenance every slide of this run must match (its input is added per slide)."""
    return provenance(config, None)


def _input(job: SlideJob) -> dict[str, Any]:
    from .provenance import input_signature

    record: dict[str, Any] = {"annotations": None}
    if job.channel_names is not None:  # a renamed panel makes the slide's results stale
        record["channels"] = list(job.channel_names)
    try:
        record["input"] = {"path": str(job.path), **input_signature(job.path)}
        if job.annotations is not None:
            record["annotations"] = {"path": str(job.annotations), **input_signature(job.annotations)}
    except OSError:
        pass
    return record


def _run_jobs(client, jobs, outdir, configs, threads, failures, fail_fast, progress, done, total,
              step_progress=None) -> list[str]:
    if step_progress is None:
        return _await_jobs(client, jobs, outdir, configs, threads, failures, fail_fast, progress, done, total, False)

    def on_event(event) -> None:  # (scheduler timestamp, message), on the client's event-loop thread
        message = dict(event[1])
        try:
            step_progress(message.pop("slide_id"), {**message, "batch_total": total})
        except Exception:  # drawing progress never stops a batch
            log.debug("progress display failed", exc_info=True)

    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    try:
        return _await_jobs(client, jobs, outdir, configs, threads, failures, fail_fast, progress, done, total, True)
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)


def _await_jobs(client, jobs, outdir, configs, threads, failures, fail_fast, progress, done, total,
                report_steps) -> list[str]:
    from distributed import as_completed

    from .io.atomic import FATAL_ERRNOS

    futures = {client.submit(process_slide, job, str(outdir), configs[job.slide_id], threads, report_steps,
                             key=f"slide-{job.slide_id}-{time.time_ns()}", pure=False): job for job in jobs}
    processed = []
    stopped = None
    for future in as_completed(futures, with_results=False):
        job = futures[future]
        done += 1
        try:
            seconds = future.result()
            if isinstance(seconds, Exception):
                raise seconds
        except Exception as exc:  # a failed slide is recorded, the batch goes on
            failures.append({"slide_id": job.slide_id, "path": str(job.path), "error_type": type(exc).__name__,
                             "error": str(exc)})
            log.error("%s: %s: %s", job.slide_id, type(exc).__name__, exc)
            if progress:
                progress(job.slide_id, "failed", done, total)
            if getattr(exc, "reason_errno", None) in FATAL_ERRNOS:  # nothing more can be written
                stopped = f"batch stopped after {job.slide_id}: {exc}"
                log.error("%s", stopped)
            if fail_fast or stopped:
                for other in futures:
                    other.cancel()
                break
            continue
        processed.append(job.slide_id)
        log.info("%s: done in %.1f s", job.slide_id, seconds)
        if progress:
            progress(job.slide_id, "done", done, total)
    if stopped:
        finished = set(processed) | {f["slide_id"] for f in failures}
        for job in jobs:
            if job.slide_id not in finished:
                failures.append({"slide_id": job.slide_id, "path": str(job.path), "error_type": "OutputError",
                                 "error": f"not analysed: {stopped}"})
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
    write_cohort_tls(cohort, outdir, "cohort_tls.csv")
    write_cohort_sensitivity(cohort, outdir, "cohort_sensitivity.csv")
    _write_csv(failures, outdir / "failures.csv")
    return cohort, failures
