"""Command-line interface: parse, call the library, report. No computation lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .errors import TLSQuantError

log = logging.getLogger("tlsquant")


def _pixel_size(text: str) -> float | tuple[float, float]:
    """``0.5`` or ``0.5,0.52`` (x,y) in µm/px."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pixel-size expects µm/px such as 0.5 or 0.5,0.52, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"--pixel-size takes one or two numbers, got {text!r}")


def _channel_names(text: str | None) -> list[str] | None:
    """Comma-separated names, or a file (one per line, or CSV with a marker_name column)."""
    if text is None:
        return None
    from .io import read_channel_names

    if Path(text).is_file():
        return read_channel_names(text)
    return [name.strip() for name in text.split(",")]


def _add_slide_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pixel-size", type=_pixel_size, metavar="UM",
                        help="level-0 pixel size in µm/px (x or x,y); overrides the file")
    parser.add_argument("--channels", metavar="NAMES|FILE",
                        help="channel names in file order: 'DAPI,CD3,...' or a text/CSV file")


def _open(args):
    from .io import open_slide

    return open_slide(args.slide, pixel_size_um=args.pixel_size, channel_names=_channel_names(args.channels))


def cmd_info(args) -> int:
    from .config import Channels
    from .errors import PixelSizeError
    from .io.describe import describe_slide, format_description

    config = _load_config(args)
    roles = {role: getattr(config.channels, role) for role in Channels.REQUIRED + ("t_cells",)}
    status = 0
    described = []
    for path in args.slide:
        try:
            description = describe_slide(
                path, pixel_size_um=args.pixel_size, channel_names=_channel_names(args.channels),
                marker_map=config.channels.fluorophores, roles=roles, required_roles=Channels.REQUIRED,
            )
        except TLSQuantError as exc:
            if len(args.slide) == 1 and not isinstance(exc, PixelSizeError):
                raise
            print(f"tlsquant info: error: {exc}", file=sys.stderr)
            status = 2
            continue
        if description["pixel_size_problem"]:
            status = max(status, 1)
        described.append(description)
        if not args.json:
            print("\n".join(format_description(description)))
    if args.json:
        infos = [{**d["info"], "missing": d["missing"]} for d in described]
        print(json.dumps(infos[0] if len(args.slide) == 1 and infos else infos, indent=2))
    return status


def _parse_size(text: str) -> tuple[float, float]:
    try:
        width, height = (float(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects WIDTHxHEIGHT in mm such as 4x3, got {text!r}") from None
    return width, height


def _parse_counts(text: str) -> tuple[int, int, int]:
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 0:
        raise argparse.ArgumentTypeError(
            f"--tls expects three counts INTRA,PERI,DISTAL such as 5,3,2, got {text!r}"
        )
    return counts  # type: ignore[return-value]


def cmd_synth(args) -> int:
    from . import synthetic

    out = Path(args.out)
    try:
        synthetic.format_for(out)
        targets = [out]
    except ValueError:  # not a slide name: a directory to fill
        out.mkdir(parents=True, exist_ok=True)
        ext = {"ome-tiff": ".ome.tiff", "qptiff": ".qptiff", "ome-zarr": ".ome.zarr"}
        formats = args.format.split(",")
        for fmt in formats:
            if fmt not in ext:
                raise TLSQuantError(f"--format must be ome-tiff, qptiff or ome-zarr, got {fmt!r}")
        targets = [out / f"synthetic-s{args.seed}{ext[fmt]}" for fmt in formats]
    width_mm, height_mm = args.size
    realism = None
    if args.realistic or args.realism:
        try:
            realism = synthetic.Realism.parse(args.realism or "")
        except ValueError as exc:
            raise TLSQuantError(f"--realism: {exc}") from None
    if not 0 < args.tissue_scale <= 1.1:
        raise TLSQuantError(f"--tissue-scale must be in (0, 1.1], got {args.tissue_scale}")
    scene = synthetic.make_scene(
        seed=args.seed,
        width_um=width_mm * 1000,
        height_um=height_mm * 1000,
        pixel_size_um=args.pixel_size,
        dtype=args.dtype,
        tls_counts=args.tls,
        extra_channels=[c for c in (args.extra_channels or "").split(",") if c],
        shuffle_channels=args.shuffle_channels,
        noise=args.noise,
        realism=realism,
        tissue_scale=args.tissue_scale,
    )
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        slide_path, truth_file = synthetic.write_slide(scene, target, tile=args.tile)
        print(f"wrote {slide_path}  (truth: {truth_file})")
    return 0


def _overrides(args) -> list[str]:
    """The --set values, plus the settings other options stand for."""
    overrides = list(args.set or ())
    if getattr(args, "cells_table", False):
        overrides.append("outputs.cells_table=true")
    if getattr(args, "sensitivity", False):
        overrides.append("sensitivity.enabled=true")
    return overrides


def _load_config(args):
    from .config import load_config

    return load_config(args.config, _overrides(args))


def _progress(enabled: bool):
    """The analysis's steps and blocks on stderr: redrawn in place on a terminal, else a line per step start and end."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    from .progress import StreamReporter, reporting

    return reporting(StreamReporter(sys.stderr, live=sys.stderr.isatty()))


def _analyze_one(slide_path, outdir: Path, config, *, pixel_size=None, channels=None, progress=False,
                 annotations=None):
    from .io.atomic import check_output_dir
    from .io.lock import output_lock
    from .workflow import analyze_to_folder

    outdir = check_output_dir(outdir)  # before any work: a bad -o fails in a second, not after the analysis
    with output_lock(outdir), _progress(progress):
        result = analyze_to_folder(slide_path, outdir, config, pixel_size_um=pixel_size, channel_names=channels,
                                   annotations=annotations)
    for warning in result.warnings:
        log.warning("%s: %s", result.slide_id, warning)
    return result


ANALYZE_JSON_KEYS = ("slide_id", "tlsquant_version", "pixel_size_um", "tissue_area_mm2", "tumour_area_mm2", "tls_count",
                     "tls_counted", "tls_mature_count", "tls_primary_count", "tls_early_count",
                     "tls_primary_follicle_count", "tls_count_by_stage", "tls_count_by_location",
                     "tls_density_per_mm2", "tls_mature_density_per_mm2", "tls_area_pct", "excluded_artefact_area_mm2",
                     "cells", "warnings")


def _print_json(value) -> None:
    """One JSON document on stdout (NaN as null), for scripts."""
    import numpy as np

    def plain(item):
        if isinstance(item, dict):
            return {str(k): plain(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [plain(v) for v in item]
        if isinstance(item, np.generic):
            item = item.item()
        if isinstance(item, float) and item != item:
            return None
        return item

    print(json.dumps(plain(value), indent=2, ensure_ascii=False, default=str))


def _stage_counts(summary: dict) -> str:
    """"2 mature, 3 primary" (binary) or "1 early, 2 primary_follicle, 2 secondary_follicle" (Silina)."""
    return ", ".join(f"{count} {stage}" for stage, count in summary["tls_count_by_stage"].items())


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def cmd_analyze(args) -> int:
    config = _load_config(args)
    if args.threads is not None:
        from dataclasses import replace

        config = replace(config, compute=replace(config.compute, workers=args.threads))
    outdir = Path(args.output)
    result = _analyze_one(args.slide, outdir, config, pixel_size=args.pixel_size,
                          channels=_channel_names(args.channels),
                          progress=not args.quiet and not args.json,
                          annotations=args.annotations)
    s = result.summary
    if args.json:
        _print_json({key: s.get(key) for key in ANALYZE_JSON_KEYS if key in s} | {"output": str(outdir)})
        return 0
    print(f"{s['slide_id']}: tumour {s['tumour_area_mm2']:.3f} mm², {s['tls_count']} TLS "
          f"({_stage_counts(s)}; {s['tls_counted']} counted), "
          f"density {_fmt(s['tls_density_per_mm2'], '.3f')} /mm², area {_fmt(s['tls_area_pct'], '.3f')} %")
    if "cells" in s:
        b_key = s["segmentation"]["cells"]["markers"].get(s["segmentation"]["channel_roles"]["b_cells"], {}).get("key")
        b_pct = s.get(f"{b_key}_pct") if b_key else None
        print(f"{s['slide_id']}: {s['cells']['total']} cells ({s['cells']['in_tumour']} in tumour, "
              f"{s['cells']['in_tls']} in TLS), {b_key or 'B-cell marker'}+ {_fmt(b_pct, '.2f')} %")
    print(f"outputs in {outdir}")
    return 0


def cmd_review(args) -> int:
    from .review import review_slide, write_review

    result = review_slide(args.slide_folder, args.tls, annotations=args.annotations)
    write_review(result, args.slide_folder)
    diff, s = result.diff, result.summary
    print(f"{s['slide_id']}: reviewed {s['tls_count']} TLS ({len(diff['added'])} added, {len(diff['removed'])} removed, "
          f"{len(diff['restaged'])} restaged, {len(diff['redrawn'])} redrawn); density "
          f"{_fmt(s['tls_density_per_mm2'], '.3f')} /mm², area {_fmt(s['tls_area_pct'], '.3f')} %")
    for key, change in diff["metrics_changed"].items():
        print(f"  {key}: {change['automatic']} -> {change['reviewed']}")
    print(f"outputs in {args.slide_folder}: summary.reviewed.json, tls.reviewed.csv")
    return 0


def cmd_validate(args) -> int:
    from .agreement import validate

    cohort = validate(args.results, args.manual, args.output, min_iou=args.min_iou, figures=not args.no_figures)

    def show(value):
        return _fmt(value, ".3f")

    print(f"{cohort['slides']} slide(s): TLS precision {show(cohort['precision'])}, recall {show(cohort['recall'])}, "
          f"F1 {show(cohort['f1'])}, mean Dice {show(cohort['mean_dice'])}, stage kappa {show(cohort['stage_kappa'])}")
    for metric in ("tls_density_per_mm2", "tls_area_pct"):
        m = cohort[metric]
        print(f"  {metric}: bias {show(m['bias'])} (LoA {show(m['loa_low'])} to {show(m['loa_high'])}), "
              f"Lin's CCC {show(m['lins_ccc'])}, ICC(2,1) {show(m['icc_2_1'])}")
    if cohort["slides_without_manual"]:
        print(f"  no manual annotations for: {', '.join(cohort['slides_without_manual'])}")
    print(f"outputs in {args.output}: agreement.html (report), agreement_slides.csv, agreement_tls.csv, "
          "stage_confusion.csv, agreement.json"
          + ("" if args.no_figures else ", bland_altman.png, agreement_scatter.png"))
    return 0


def _batch_logging(outdir: Path) -> logging.Handler:
    outdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(outdir / "batch.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("tlsquant").addHandler(handler)
    return handler


def _quiet_dask(verbose: bool) -> None:
    """dask.distributed gives its loggers their own levels on import: turn them down to warnings."""
    import distributed  # noqa: F401  (configures its loggers)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("distributed", "dask_jobqueue")):
            logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _batch_display():
    """A bar with the step of each running slide, redrawn in place on a terminal; plain lines in a log file or a pipe."""
    import shutil

    from .progress import BatchDisplay

    return BatchDisplay(sys.stderr, live=sys.stderr.isatty(), width=shutil.get_terminal_size((120, 24)).columns - 1)


def cmd_batch(args) -> int:
    from .batch import read_manifest
    from .io.atomic import check_output_dir
    from .io.lock import output_lock

    config = _load_config(args)
    manifest = read_manifest(args.manifest)
    outdir = check_output_dir(args.output)
    with output_lock(outdir):
        return _batch(args, config, manifest, outdir)


def _batch(args, config, manifest, outdir: Path) -> int:
    from .batch import parse_shard, run_batch
    from .provenance import config_hash

    _quiet_dask(args.verbose)
    handler = _batch_logging(outdir)
    console_quiet = _BatchConsoleFilter()  # slide failures are listed once, at the end
    for console in logging.root.handlers:
        console.addFilter(console_quiet)
    log.info("tlsquant %s batch: %d slides in %s (%d rejected up front)", __version__,
             len(manifest.jobs) + len(manifest.problems), args.manifest, len(manifest.problems))
    log.info("config %s: %s", config_hash(config), _config_json(config))
    started = time.perf_counter()
    client = cluster = None
    display = None if args.quiet or args.json else _batch_display()
    try:
        if args.scheduler:
            from .cluster import connect

            client = connect(args.scheduler)
        elif args.cluster == "slurm":
            from distributed import Client

            from .cluster import slurm_cluster

            cluster = slurm_cluster(config.cluster, log_directory=str(outdir / "slurm-logs"))
            cluster.scale(jobs=config.cluster.jobs)
            client = Client(cluster)
        result = run_batch(manifest, outdir, config, client=client, workers=args.workers,
                           threads_per_worker=args.threads,
                           shard=parse_shard(args.shard) if args.shard else None, overwrite=args.overwrite,
                           refuse_stale=args.no_overwrite, fail_fast=args.fail_fast,
                           progress=display, lock=False, overrides=_overrides(args),
                           step_progress=display.step if display else None)
        log.info("batch finished in %.1f s: %d analysed, %d already complete, %d failed", time.perf_counter() - started,
                 len(result.processed), len(result.skipped), len(result.failures))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        logging.getLogger("tlsquant").removeHandler(handler)
        handler.close()
        for console in logging.root.handlers:
            console.removeFilter(console_quiet)
    if args.json:
        _print_json({"analysed": result.processed, "already_complete": result.skipped,
                     "failed": result.failures.to_dict("records"), "cohort": str(result.cohort_path),
                     "failures": str(result.failures_path) if len(result.failures) else None})
        return 1 if len(result.failures) else 0
    print(f"{len(result.processed)} analysed, {len(result.skipped)} already complete, "
          f"{len(result.failures)} failed; cohort: {result.cohort_path}")
    if len(result.failures):
        print(f"failures: {result.failures_path}", file=sys.stderr)
        for row in result.failures.itertuples(index=False):
            print(f"  {row.slide_id}: {row.error_type}: {row.error}", file=sys.stderr)
        return 1
    return 0


class _BatchConsoleFilter(logging.Filter):
    """Keeps the batch's per-slide errors off the console (batch.log has them): the CLI lists them once at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "tlsquant.batch"


def _config_json(config) -> str:
    from dataclasses import asdict

    return json.dumps(asdict(config), sort_keys=True, default=str)


def cmd_collect(args) -> int:
    from .batch import collect

    cohort, failures = collect(args.manifest, args.output)
    print(f"cohort: {len(cohort)} slides -> {Path(args.output) / 'cohort.csv'}; {len(failures)} failed")
    return 1 if len(failures) else 0


def cmd_compare(args) -> int:
    import pandas as pd

    from .io.atomic import check_output_dir
    from .report import write_report
    from .stats import compare_groups, compare_many

    cohort_path = Path(args.cohort)
    if not cohort_path.is_file():
        raise TLSQuantError(f"{cohort_path}: cohort table not found")
    table = pd.read_csv(cohort_path)
    groups = [g.strip() for g in args.groups.split(",")] if args.groups else None
    metrics = args.metrics.split(",") if args.metrics else None
    check_output_dir(args.output)
    if args.group not in table.columns:
        raise TLSQuantError(f"{cohort_path}: --group column {args.group!r} not found; columns: "
                            f"{', '.join(map(str, table.columns))}")
    present = table[args.group].dropna().astype(str).unique()
    omnibus = None
    if (groups is None and len(present) > 2) or (groups is not None and len(groups) > 2):
        omnibus, stats = compare_many(table, args.group, metrics=metrics, groups=groups)
    else:
        stats = compare_groups(table, args.group, metrics=metrics, groups=groups)
    slides_dir = cohort_path.parent / "slides"
    failures_path = cohort_path.parent / cohort_path.name.replace("cohort", "failures", 1)
    failures = pd.read_csv(failures_path, dtype=str) if failures_path.is_file() and failures_path != cohort_path else None
    sensitivity = _compare_sensitivity(cohort_path, table, args, groups, omnibus is not None)
    written = write_report(table, stats, args.group, args.output, slides_dir=slides_dir if slides_dir.is_dir() else None,
                           omnibus=omnibus, failures=failures, sensitivity=sensitivity)
    if args.json:
        _print_json({"comparisons": stats.to_dict("records"),
                     "omnibus": omnibus.to_dict("records") if omnibus is not None else None,
                     "sensitivity": sensitivity[0].to_dict("records") if sensitivity else None,
                     "report": str(written["html"])})
        return 0
    if omnibus is not None:
        print(omnibus[["metric", "n", "h", "p", "q"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    shown = stats[["metric", "group_a", "group_b", "n_a", "n_b", "median_a", "median_b", "p", "q", "method"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if sensitivity:
        from .sensitivity import scenario_label

        result = sensitivity[0]
        scenarios = result[result["parameter"] != "baseline"]
        changed = scenarios[~scenarios["holds"].astype(bool)]
        print(f"threshold sensitivity: the conclusion holds in {len(scenarios) - len(changed)} of {len(scenarios)} "
              f"scenario comparisons" + (" (changes: " + ", ".join(
                  f"{r.metric} at {scenario_label(r.parameter, r.role, r.channel, r.scale)}"
                  for r in changed.fillna("").itertuples()) + ")"
                  if len(changed) else "") + "; sensitivity_comparison.csv, sensitivity.png")
    print(f"report: {written['html']}  (self-contained; also {written['markdown'].name}, stats.csv, figures/)")
    return 0


def _compare_sensitivity(cohort_path: Path, table, args, groups, many_groups: bool):
    """With cohort_sensitivity.csv beside the cohort: (table, figure) of the comparison per threshold scenario."""
    from .sensitivity import compare_sensitivity

    path = cohort_path.parent / cohort_path.name.replace("cohort", "cohort_sensitivity", 1)
    if not path.is_file() or path == cohort_path:
        return None
    if many_groups:
        log.warning("%s: threshold sensitivity compares two groups; not run for 3 or more", path)
        return None
    metrics = args.metrics.split(",") if args.metrics else None
    return compare_sensitivity(path, table, args.group, args.output, groups=groups, metrics=metrics)


def _parse_categories(text: str | None) -> dict[str, list[str]] | None:
    if not text:
        return None
    mapping: dict[str, list[str]] = {}
    for item in text.split(","):
        category, sep, label = item.partition("=")
        if not sep or not label.strip():
            raise TLSQuantError(f"--categories expects CATEGORY=LABEL pairs separated by commas, got {item!r}")
        mapping.setdefault(category.strip().upper(), []).append(label.strip())
    return mapping


def _survival_endpoints(args) -> list:
    from .outcomes import SurvivalEndpoint

    endpoints = []
    for name in ("pfs", "os"):
        spec = getattr(args, name)
        if spec:
            time, sep, event = spec.partition(",")
            if not sep:
                raise TLSQuantError(f"--{name} expects TIME,EVENT column names, got {spec!r}")
            endpoints.append(SurvivalEndpoint(name.upper(), time.strip(), event.strip()))
    return endpoints


def _print_outcomes(result) -> None:
    fmt = {"float_format": lambda v: f"{v:.4g}", "index": False}
    if len(result.response_rates):
        print(result.response_rates[["endpoint", "group", "responders", "n", "rate", "ci_low", "ci_high"]].to_string(**fmt))
        print(result.response_tests[["endpoint", "groups", "responders", "n", "odds_ratio", "p"]].to_string(**fmt))
        print(result.roc[["metric", "auc", "auc_ci_low", "auc_ci_high"]].to_string(**fmt))
    if len(result.survival_medians):
        print(result.survival_medians[["endpoint", "group", "n", "events", "median", "median_ci_low", "median_ci_high"]]
              .to_string(**fmt))
        print(result.survival_tests[["endpoint", "test", "comparison", "hr", "hr_ci_low", "hr_ci_high", "p"]].to_string(**fmt))
    if len(result.cutpoints):
        print("optimal cut-point (exploratory): " + result.cutpoints[
            ["metric", "cut", "n_low", "n_high", "p_uncorrected", "p_corrected"]].to_string(**fmt))


def cmd_outcomes(args) -> int:
    import pandas as pd

    from .groups import parse_cut
    from .outcome_report import write_outcome_report
    from .outcomes import analyze_outcomes

    cohort_path = Path(args.cohort)
    if not cohort_path.is_file():
        raise TLSQuantError(f"{cohort_path}: cohort table not found")
    table = pd.read_csv(cohort_path)
    result = analyze_outcomes(
        table, response=args.response, survival=_survival_endpoints(args), group_by=args.group_by,
        cut=parse_cut(args.cut), metrics=args.metrics.split(",") if args.metrics else None,
        categories=_parse_categories(args.categories), ci_method=args.ci, exclude_not_evaluable=args.exclude_ne,
        min_share=args.min_share, cut_correction=args.cut_correction, n_permutations=args.permutations, seed=args.seed)
    written = write_outcome_report(result, args.output)
    print(f"groups: {result.group_rule}")
    _print_outcomes(result)
    print(f"report: {written['html']}  (also {written['markdown'].name}, outcomes_*.csv, figures/)")
    return 0


def cmd_demo(args) -> int:
    """The whole flow on the demo slides: manifest -> batch -> cohort -> comparison -> report."""
    from .demo import run_demo

    outroot = Path(args.output)
    _quiet_dask(args.verbose)
    handler = _batch_logging(outroot)
    try:
        display = None if args.quiet else _batch_display()
        # the steps inside the four small slides: on a terminal (one line redrawn), not as 48 lines in a log
        run = run_demo(outroot, workers=args.workers, progress=display,
                       step_progress=display.step if display and display.live else None)
    finally:
        logging.getLogger("tlsquant").removeHandler(handler)
        handler.close()
    cohort = run.batch.cohort
    header = (f"{'slide':<14}{'group':<7}{'tumour mm²':>11}{'TLS':>5}{'mature':>7}{'density/mm²':>13}"
              f"{'area %':>8}   truth (density, area %)")
    print(header)
    print("-" * len(header))
    for row in cohort.itertuples(index=False):
        t = run.truth.get(row.slide_id)
        truth = f"   {t['tls_density_per_mm2']:.3f}, {t['tls_area_pct']:.3f}" if t else ""
        print(f"{row.slide_id:<14}{row.response:<7}{row.tumour_area_mm2:>11.3f}{row.tls_count:>5}"
              f"{row.tls_mature_count:>7}{_fmt(row.tls_density_per_mm2, '.3f'):>13}{_fmt(row.tls_area_pct, '.3f'):>8}{truth}")
    if "cells_total" not in cohort.columns:
        print("cells: not measured — the bundled slides are 2-2.5 µm/px, too coarse for nuclei "
              "(cells.max_pixel_size_um = 1); try a 0.5 µm slide from `tlsquant synth`")
    print()
    print(run.stats[["metric", "n_a", "n_b", "median_a", "median_b", "p", "method"]].to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nper-slide outputs: {outroot}/slides/<slide>/ (summary.json, tls.csv, tls.geojson, annotations.geojson, "
          f"qc.png, tls_gallery.html, thresholds.png)")
    print(f"cohort: {run.batch.cohort_path}\nreport: {run.report['html']}")
    _demo_outcomes(outroot)
    return 1 if len(run.batch.failures) else 0


def _demo_outcomes(outroot: Path) -> None:
    """Outcome analysis on a seeded synthetic patient cohort (four slides are too few for it)."""
    from .outcome_report import write_outcome_report
    from .outcomes import SurvivalEndpoint, analyze_outcomes
    from .synthetic_outcomes import synthetic_outcome_cohort

    patients = synthetic_outcome_cohort(60, seed=0)
    patients_path = outroot / "outcome_cohort.csv"
    patients.to_csv(patients_path, index=False)
    try:
        import lifelines  # noqa: F401
        survival = [SurvivalEndpoint("PFS", "pfs_months", "pfs_event")]
    except ImportError:
        survival = []
        print('\nsurvival analysis skipped: it needs lifelines (pip install -e ".[outcomes]")')
    result = analyze_outcomes(patients, response="response", survival=survival)
    written = write_outcome_report(result, outroot / "outcomes", title="tlsquant demo: TLS and outcomes (synthetic patients)")
    print(f"\nclinical outcomes on a synthetic cohort of {len(patients)} patients (seeded; simulated TLS density, "
          f"RECIST response and PFS): {patients_path}")
    print(f"groups: {result.group_rule}")
    _print_outcomes(result)
    print(f"outcomes report: {written['html']}\n"
          f"same as: tlsquant outcomes {patients_path} --response response --pfs pfs_months,pfs_event -o {outroot / 'outcomes'}")


def _subparser_class(common: argparse.ArgumentParser):
    """Subcommand parsers that all share the options of ``common``."""

    class SubcommandParser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("parents", []).append(common)
            super().__init__(*args, **kwargs)

    return SubcommandParser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsquant",
        description="Quantify tertiary lymphoid structures in multiplex immunofluorescence slides.",
    )
    parser.add_argument("--version", action="version", version=f"tlsquant {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    # -v also after the subcommand; SUPPRESS keeps an absent one from resetting the global one
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_subparser_class(verbose))

    demo = sub.add_parser("demo", help="analyse the bundled test_images/ (or equivalent synthetic slides) and print "
                                       "a summary table")
    demo.add_argument("-o", "--output", default="tlsquant-demo", help="output folder (default tlsquant-demo)")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    batch = sub.add_parser("batch", help="analyse every slide of a manifest CSV (resumable, parallel)")
    batch.add_argument("manifest", help="CSV with slide_id, path (relative to it), optional pixel_size_um, annotations, "
                                        "channels (this slide's names, ';'-separated, or a markers file), config "
                                        "(this slide's TOML: mixed panels), clinical columns")
    batch.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    batch.add_argument("--config", metavar="TOML")
    batch.add_argument("--set", action="append", metavar="KEY=VALUE")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing dask scheduler, e.g. tcp://node:8786")
    where.add_argument("--cluster", choices=["slurm"], help="start SLURM workers with dask-jobqueue ([cluster] config)")
    batch.add_argument("--shard", metavar="I/N", help="process only rows with index %% N == I (SLURM array jobs)")
    batch.add_argument("--overwrite", action="store_true", help="re-analyse slides whose outputs are complete")
    batch.add_argument("--no-overwrite", action="store_true",
                       help="never replace outputs made with another config, file or version: report them as "
                            "failures (default: analyse such slides again)")
    batch.add_argument("--fail-fast", action="store_true", help="stop at the first failed slide")
    batch.add_argument("--cells-table", action="store_true", help="also write cells.csv.gz per slide (one row per cell)")
    batch.add_argument("--sensitivity", action="store_true",
                       help="also measure TLS density, area %% and mature count with each channel's threshold scaled "
                            "(sensitivity.csv per slide, cohort_sensitivity.csv; compare then tests every scenario)")
    batch.add_argument("--threads", type=int, default=1, metavar="N",
                       help="threads per worker process for each slide's full-resolution passes (default 1)")
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    batch.add_argument("--json", action="store_true", help="print the outcome as one JSON object (no progress bar)")
    batch.set_defaults(func=cmd_batch)

    collect = sub.add_parser("collect", help="merge the outputs of sharded batch runs into cohort.csv")
    collect.add_argument("manifest")
    collect.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    collect.set_defaults(func=cmd_collect)

    compare = sub.add_parser("compare", help="Mann-Whitney comparison of two groups (Kruskal-Wallis and pairwise tests for more), with figures "
                                          "and a self-contained report")
    compare.add_argument("cohort", help="cohort.csv from tlsquant batch")
    compare.add_argument("--group", required=True, help="column holding the group labels")
    compare.add_argument("--groups", metavar="A,B[,C...]", help="the labels to compare, in order (default: every "
                         "label present; three or more get a Kruskal-Wallis test and pairwise tests)")
    compare.add_argument("--metrics", metavar="M1,M2", help="columns to test (default: TLS density, area %%, ...)")
    compare.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    compare.add_argument("--json", action="store_true", help="print the comparisons as one JSON object")
    compare.set_defaults(func=cmd_compare)

    outcomes = sub.add_parser("outcomes", help="response rates, ROC and survival by TLS group, with figures and a report")
    outcomes.add_argument("cohort", help="cohort table (cohort.csv with clinical columns added)")
    outcomes.add_argument("--response", metavar="COLUMN", help="RECIST best overall response (CR, PR, SD, PD, NE)")
    outcomes.add_argument("--categories", metavar="CAT=LABEL,...",
                          help="labels used for the RECIST categories, e.g. PR=responder,PD=non-responder")
    outcomes.add_argument("--pfs", metavar="TIME,EVENT", help="progression-free survival columns (time, 1 = event)")
    outcomes.add_argument("--os", metavar="TIME,EVENT", help="overall survival columns (time, 1 = death)")
    outcomes.add_argument("--group-by", metavar="COLUMN", help="metric or label column (default tls_density_per_mm2)")
    outcomes.add_argument("--cut", default=None,
                          help="median (default), tertiles, present (> 0), a number, or optimal (exploratory, on the "
                               "first survival endpoint)")
    outcomes.add_argument("--metrics", metavar="M1,M2", help="metrics for ROC (default: the TLS metrics present)")
    outcomes.add_argument("--ci", choices=["clopper-pearson", "wilson"], default="clopper-pearson",
                          help="confidence interval of ORR and DCR (default clopper-pearson)")
    outcomes.add_argument("--exclude-ne", action="store_true", help="leave NE patients out of the ORR/DCR denominator")
    outcomes.add_argument("--min-share", type=float, default=0.1, help="optimal cut: least share per group (default 0.1)")
    outcomes.add_argument("--cut-correction", choices=["permutation", "lausen-schumacher"], default="permutation",
                          help="optimal cut: p-value correction for the search (default permutation)")
    outcomes.add_argument("--permutations", type=int, default=2000, help="optimal cut: permutations (default 2000)")
    outcomes.add_argument("--seed", type=int, default=0, help="optimal cut: random seed of the permutations")
    outcomes.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    outcomes.set_defaults(func=cmd_outcomes)

    analyze = sub.add_parser("analyze", help="find, stage and measure the TLS of one slide")
    analyze.add_argument("slide", help="QPTIFF, OME-TIFF, TIFF, OME-Zarr or zarr path")
    analyze.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the outputs")
    analyze.add_argument("--config", metavar="TOML", help="configuration file (default: built-in defaults)")
    analyze.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override one setting, e.g. --set tls.min_area_um2=8000 (repeatable)")
    analyze.add_argument("--threads", type=int, metavar="N", help="threads for the full-resolution passes (default: cores)")
    analyze.add_argument("--workers", type=int, dest="threads", help=argparse.SUPPRESS)  # old name of --threads
    analyze.add_argument("--json", action="store_true", help="print the slide's headline metrics as one JSON object")
    analyze.add_argument("--cells-table", action="store_true", help="also write cells.csv.gz (one row per cell)")
    analyze.add_argument("--sensitivity", action="store_true",
                         help="also measure TLS density, area %% and mature count with each channel's threshold "
                              "scaled (sensitivity.csv; settings in [sensitivity])")
    analyze.add_argument("--annotations", metavar="GEOJSON",
                         help="QuPath annotations of this slide: tumour bed, exclusions, region of interest "
                              "(classes mapped by the [annotations] config section)")
    analyze.add_argument("-q", "--quiet", action="store_true", help="no progress (steps and blocks of each pass)")
    _add_slide_options(analyze)
    analyze.set_defaults(func=cmd_analyze)

    review = sub.add_parser("review", help="recompute a slide's TLS metrics from outlines reviewed in QuPath")
    review.add_argument("slide_folder", help="the slide's output folder (from analyze, or OUTDIR/slides/<id>)")
    review.add_argument("--tls", required=True, metavar="GEOJSON",
                        help="the reviewed TLS exported from QuPath (classes 'TLS: <stage>')")
    review.add_argument("--annotations", metavar="GEOJSON",
                        help="reviewed regions (tumour bed, exclusions); default: the folder's annotations.geojson")
    review.set_defaults(func=cmd_review)

    validate = sub.add_parser("validate", help="agreement of analysed slides with manual QuPath annotations")
    validate.add_argument("results", help="a slide folder, or a batch output folder (slides/<id>/)")
    validate.add_argument("--manual", required=True, metavar="GEOJSON|FOLDER",
                          help="the manual annotations: one GeoJSON for one slide, or a folder of <slide_id>.geojson "
                               "(TLS classed 'TLS: <stage>'; a tumour outline optional)")
    validate.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for tables and figures")
    validate.add_argument("--min-iou", type=float, default=0.25,
                          help="least intersection over union of a matched TLS pair (default 0.25)")
    validate.add_argument("--no-figures", action="store_true", help="tables only")
    validate.set_defaults(func=cmd_validate)

    info = sub.add_parser("info", help="describe slides: format, channels, pixel size, pyramid, where each came "
                                       "from and what you must still supply (exit 1 if a pixel size is missing)")
    info.add_argument("slide", nargs="+", help="QPTIFF, inForm, OME-TIFF, TIFF, TIFF folder, OME-Zarr or zarr path(s)")
    info.add_argument("--json", action="store_true", help="print one JSON object (a list for several slides)")
    info.add_argument("--config", metavar="TOML", help="check the channels this configuration needs")
    info.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    _add_slide_options(info)
    info.set_defaults(func=cmd_info)

    synth = sub.add_parser("synth", help="write a synthetic slide with known truth")
    synth.add_argument("out", help="a .ome.tiff/.qptiff/.ome.zarr path, or a directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=_parse_size, default=(4.0, 3.0), metavar="WxH",
                       help="slide extent in mm (default 4x3)")
    synth.add_argument("--pixel-size", type=float, default=1.0, metavar="UM", help="µm/px (default 1.0)")
    synth.add_argument("--dtype", choices=["uint8", "uint16", "float32"], default="uint16")
    synth.add_argument("--tls", type=_parse_counts, default=(5, 3, 2), metavar="I,P,D",
                       help="intratumoral, peritumoral, distal TLS to place (default 5,3,2)")
    synth.add_argument("--format", default="ome-tiff",
                       help="when OUT is a directory: ome-tiff, qptiff, ome-zarr (comma-separated)")
    synth.add_argument("--extra-channels", metavar="NAMES", help="e.g. CD8,CD68,Autofluorescence")
    synth.add_argument("--shuffle-channels", action="store_true", help="store channels in random order")
    synth.add_argument("--noise", type=float, default=1.0, help="noise scale (default 1.0)")
    synth.add_argument("--tile", type=int, default=256, help="storage tile size in px (default 256)")
    synth.add_argument("--realistic", action="store_true",
                       help="render like a real FFPE scan: autofluorescence, uneven illumination, stain gain, "
                            "crosstalk, red blood cells, folds, blur, debris")
    synth.add_argument("--realism", metavar="NAME=S,...",
                       help="strengths of the realistic phenomena (0 = off, 1 = ordinary; implies --realistic), "
                            "e.g. folds=2,blur=0 or all=0,rbc=1; names: autofluorescence, edge_rim, illumination, "
                            "dark_offset, stain_gain, cell_brightness, crosstalk, rbc, folds, blur, debris")
    synth.add_argument("--tissue-scale", type=float, default=1.0, metavar="F",
                       help="shrink the tissue within the slide, e.g. 0.7 leaves most of it glass (default 1.0)")
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("tlsquant").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for handler in logging.root.handlers:  # the console shows warnings; batch.log keeps everything
        handler.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    import signal
    import threading

    terminated: list[int] = []

    def on_sigterm(signum, frame):  # a scheduler's or kill's SIGTERM: unwind as on Ctrl-C, then exit 143
        terminated.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except TLSQuantError as exc:
        print(f"tlsquant {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file problem the library did not anticipate: still one clear line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tlsquant {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"tlsquant {args.command}: error: out of memory; use fewer --workers, smaller compute.chunk_px, "
              f"or a machine with more memory", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an input nobody foresaw: one line, the traceback under -v
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"tlsquant {args.command}: internal error: {type(exc).__name__}: {first} (rerun with -v for the "
              f"traceback and please report it)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
