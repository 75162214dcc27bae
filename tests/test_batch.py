"""Cohort batch runs: manifest validation, failures, resume, workers, shards, SLURM job script."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from tlsquant import synthetic
from tlsquant.batch import ManifestError, collect, read_manifest, run_batch
from tlsquant.cli import main
from tlsquant.config import load_config

# qc.png and thresholds.png take most of a small slide's time: the tests of parallel runs, shards, overwrite
# and fail-fast leave them out (the end-to-end run below writes them, test_pipeline checks them)
NO_PICTURES = load_config(None, ["outputs.qc_png=false"])


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    """Seven small slides, good responders with more TLS than poor ones, plus a corrupt file."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "slides").mkdir()
    rows = []
    for k in range(7):
        good = k < 3
        # 1.6 x 1.2 mm: two TLS fit in a good responder's tumour (three asked), one in a poor one's
        scene = synthetic.make_scene(seed=200 + k, width_um=1600, height_um=1200, pixel_size_um=2.5, dtype="uint8",
                                     tls_counts=(3, 1, 0) if good else (0, 1, 0), tls_radius_um=(55, 75), noise=0.7)
        path, _ = synthetic.write_slide(scene, root / "slides" / f"case{k}.ome.tiff")
        rows.append({"slide_id": f"case{k}", "path": f"slides/{path.name}", "response": "good" if good else "poor",
                     "patient": f"P{k:02d}"})
    (root / "slides" / "broken.ome.tiff").write_bytes(b"II*\x00" + b"\x00" * 64)
    rows.append({"slide_id": "broken", "path": "slides/broken.ome.tiff", "response": "poor", "patient": "P07"})
    rows.append({"slide_id": "lost", "path": "slides/lost.ome.tiff", "response": "good", "patient": "P08"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def one_worker_run(cohort_dir, tmp_path_factory):
    """`tlsquant batch` of the cohort on a local cluster of one worker of its own, QC pictures included: its exit
    code, what it printed, its output folder and the cohort.csv it wrote (the end-to-end test goes on in that folder)."""
    out = tmp_path_factory.mktemp("one-worker") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["batch", str(cohort_dir / "manifest.csv"), "-o", str(out), "--workers", "1", "-q"])
    return SimpleNamespace(code=code, printed=printed.getvalue(), out=out, cohort=(out / "cohort.csv").read_text())


def _run_on(client, manifest, outdir, config, **options):
    """run_batch on the shared cluster (its as_completed finds the client as the current one)."""
    with client.as_current():
        return run_batch(manifest, outdir, config, client=client, **options)


def _wait_until_idle(client, timeout_s: float = 120) -> None:
    """Until no worker of ``client`` runs a task: a task cancelled while running goes on in its worker thread."""
    deadline = time.monotonic() + timeout_s
    while any(client.run(lambda dask_worker: len(dask_worker.state.all_running_tasks)).values()):
        assert time.monotonic() < deadline, "the shared cluster's workers are still busy"
        time.sleep(0.05)


def test_manifest_structural_problems_are_reported_together(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,path\na,x.tif\na,y.tif\n,z.tif\nb/c,w.tif\n")
    with pytest.raises(ManifestError) as error:
        read_manifest(bad)
    message = str(error.value)
    assert "3 problem(s)" in message and "'a' appears on lines 2, 3" in message
    assert "line 4: empty slide_id" in message and "'b/c' must be letters" in message
    (tmp_path / "cols.csv").write_text("id,file\n1,a.tif\n")
    with pytest.raises(ManifestError, match="missing slide_id, path"):
        read_manifest(tmp_path / "cols.csv")
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")


def test_row_problems_do_not_stop_the_manifest(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("slide_id,path,pixel_size_um,arm\na,a.tif,0.5,x\nb,missing.tif,,y\nc,a.tif,-1,y\n")
    manifest = read_manifest(tmp_path / "m.csv")
    assert [job.slide_id for job in manifest.jobs] == ["a"]
    assert manifest.jobs[0].pixel_size_um == 0.5 and manifest.jobs[0].clinical == {"arm": "x"}
    problems = {p["slide_id"]: p["error"] for p in manifest.problems}
    assert "missing.tif: no such file" in problems["b"] and "pixel_size_um must be a positive number" in problems["c"]


@pytest.mark.slow
def test_batch_end_to_end_with_failures_resume_and_statistics(cohort_dir, one_worker_run, capsys, dask_client):
    out = one_worker_run.out
    assert one_worker_run.code == 1, (out / "failures.csv").read_text()  # two slides failed
    assert "7 analysed, 0 already complete, 2 failed" in one_worker_run.printed
    failures = pd.read_csv(out / "failures.csv")
    assert list(failures["slide_id"]) == ["broken", "lost"]
    assert failures.loc[0, "error_type"] == "SlideFormatError" and "broken.ome.tiff" in failures.loc[0, "error"]
    assert failures.loc[1, "error_type"] == "SlideNotFoundError"
    cohort = pd.read_csv(out / "cohort.csv")
    assert list(cohort["slide_id"]) == [f"case{k}" for k in range(7)]
    assert {"response", "patient", "tls_density_per_mm2", "tls_area_pct", "tumour_area_mm2",
            "tls_count_by_stage_mature", "threshold_b_cells"} <= set(cohort.columns)
    assert (out / "batch.log").read_text().count("broken") >= 1
    for k in range(7):
        assert (out / "slides" / f"case{k}" / "summary.json").is_file()
    good = cohort[cohort.response == "good"]["tls_density_per_mm2"]
    poor = cohort[cohort.response == "poor"]["tls_density_per_mm2"]
    assert good.min() > poor.max()

    stamp = (out / "slides" / "case0" / "summary.json").stat().st_mtime_ns
    # the reruns on a running scheduler (--scheduler); the first run started a local cluster of its own
    scheduler = ["--scheduler", dask_client.scheduler.address]
    code = main(["batch", str(cohort_dir / "manifest.csv"), "-o", str(out), *scheduler, "-v"])  # -v after the command
    assert code == 1  # the two failures stay failures
    captured = capsys.readouterr()
    assert "0 analysed, 7 already complete, 2 failed" in captured.out
    # not a terminal: one plain line per event, no carriage-return redraws; each failure listed once
    assert "\r" not in captured.err, repr(captured.err)
    assert "1/9 lost: failed" in captured.err
    assert captured.err.count("broken.ome.tiff") == 1 and captured.err.count("lost:") == 2  # progress + list
    assert main(["batch", str(cohort_dir / "manifest.csv"), "-o", str(out), *scheduler, "--json"]) == 1
    printed = capsys.readouterr().out
    outcome = json.loads(printed)
    assert outcome["analysed"] == [] and len(outcome["already_complete"]) == 7
    assert [f["slide_id"] for f in outcome["failed"]] == ["broken", "lost"]
    log_text = (out / "batch.log").read_text()
    assert "config " in log_text and '"min_area_um2"' in log_text and "batch finished in" in log_text
    assert (out / "slides" / "case0" / "summary.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(pd.read_csv(out / "cohort.csv"), cohort)

    assert main(["compare", str(out / "cohort.csv"), "--group", "response", "--groups", "good,poor",
                 "-o", str(out / "stats")]) == 0
    stats = pd.read_csv(out / "stats" / "stats.csv")
    row = stats.set_index("metric").loc["tls_density_per_mm2"]
    assert (row.n_a, row.n_b) == (3, 4) and row.method == "exact"
    assert row.p == pytest.approx(2 / 35)  # complete separation, as in the reference study
    for name in ("tls_density_per_mm2.png", "tls_density_per_mm2.svg", "tls_area_pct.png"):
        assert (out / "stats" / "figures" / name).is_file()
    html = (out / "stats" / "report.html").read_text()
    assert 'alt="case0"' in html and "0.057" in html and 'src="thumbnails/' not in html  # embedded
    assert "| TLS density (per mm² tumour) | good vs poor | 3 vs 4 |" in (out / "stats" / "report.md").read_text()
    capsys.readouterr()
    assert main(["compare", str(out / "cohort.csv"), "--group", "response", "--groups", "good,poor",
                 "-o", str(out / "stats2"), "--json"]) == 0
    compared = {row["metric"]: row for row in json.loads(capsys.readouterr().out)["comparisons"]}
    assert compared["tls_density_per_mm2"]["p"] == pytest.approx(2 / 35)


@pytest.mark.slow
def test_one_and_two_workers_and_shards_give_the_same_cohort(cohort_dir, one_worker_run, tmp_path, dask_client):
    # the whole cohort on one worker of its own (one_worker_run, with the QC pictures); the two shards each on the
    # shared cluster's two worker processes, without them
    one = pd.read_csv(io.StringIO(one_worker_run.cohort))
    assert len(one) == 7
    assert len(dask_client.scheduler_info()["workers"]) == 2
    shared = tmp_path / "sharded"
    for index in range(2):
        part = _run_on(dask_client, cohort_dir / "manifest.csv", shared, NO_PICTURES, shard=(index, 2))
        assert (shared / f"cohort.shard-{index}-of-2.csv").is_file()
        assert len(part.cohort) + len(part.failures) == len(range(index, 9, 2))
        assert len(part.processed) == (4, 3)[index]  # case0, 2, 4, 6 | case1, 3, 5: both workers busy
    cohort, failures = collect(cohort_dir / "manifest.csv", shared)
    assert sorted(failures["slide_id"]) == ["broken", "lost"]
    # the same cohort, to the last digit; only the config hash differs, as the pictures are a setting
    (with_pictures,), (without,) = set(one["config_hash"]), set(cohort["config_hash"])
    assert with_pictures != without
    assert (shared / "cohort.csv").read_text().replace(without, with_pictures) == one_worker_run.cohort


@pytest.mark.slow
def test_overwrite_and_fail_fast(cohort_dir, tmp_path, dask_client):
    subset = tmp_path / "m.csv"
    table = pd.read_csv(cohort_dir / "manifest.csv")
    table["path"] = [str(cohort_dir / p) for p in table["path"]]
    table.iloc[[7, 0, 1]].to_csv(subset, index=False)
    result = _run_on(dask_client, subset, tmp_path / "ff", NO_PICTURES, fail_fast=True)
    assert list(result.failures["slide_id"]) == ["broken"]
    assert len(result.processed) < 2
    # a slide fail-fast cancelled while it ran goes on in its worker: let it end, so none writes into the rerun
    _wait_until_idle(dask_client)
    again = _run_on(dask_client, subset, tmp_path / "ff", NO_PICTURES, overwrite=True)
    assert sorted(again.processed) == ["case0", "case1"] and again.skipped == []


@pytest.mark.slow
def test_mixed_panels_in_one_batch(cohort_dir, tmp_path, dask_client):
    """Two panels in one cohort: a slide named by the manifest's channels column and analysed with its own
    config gives the same TLS as the same pixels under the default panel; a panel without its config fails alone."""
    panel_b = "DAPI;CD3E;MS4A1;CR2;FCER2;TFE3-fusion"  # the file's channel order, other names
    (tmp_path / "panel-b.toml").write_text('[channels]\ntumour = "TFE3-fusion"\nb_cells = "MS4A1"\nfdc = "CR2"\n'
                                           'germinal_centre = "FCER2"\nt_cells = "CD3E"\n')
    rows = [
        {"slide_id": "a3", "path": str(cohort_dir / "slides" / "case3.ome.tiff"), "channels": "", "config": ""},
        {"slide_id": "b3", "path": str(cohort_dir / "slides" / "case3.ome.tiff"), "channels": panel_b,
         "config": "panel-b.toml"},
        {"slide_id": "b0", "path": str(cohort_dir / "slides" / "case0.ome.tiff"), "channels": panel_b,
         "config": "panel-b.toml"},
        {"slide_id": "b_alone", "path": str(cohort_dir / "slides" / "case0.ome.tiff"), "channels": panel_b, "config": ""},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "mixed.csv", index=False)
    manifest = read_manifest(tmp_path / "mixed.csv")
    assert manifest.jobs[1].channel_names == tuple(panel_b.split(";")) and manifest.jobs[1].config_path.name == "panel-b.toml"
    result = _run_on(dask_client, manifest, tmp_path / "out", NO_PICTURES, overrides=["outputs.qc_png=false"])
    assert list(result.failures["slide_id"]) == ["b_alone"] and "ChannelError" in result.failures["error_type"].iloc[0]
    cohort = result.cohort.set_index("slide_id")
    assert list(cohort.index) == ["a3", "b3", "b0"]
    assert cohort.loc["a3", "config_hash"] != cohort.loc["b3", "config_hash"] == cohort.loc["b0", "config_hash"]
    for column in ("tls_count", "tls_mature_count", "tumour_area_mm2", "tls_density_per_mm2", "tls_area_pct"):
        assert cohort.loc["a3", column] == cohort.loc["b3", column]
    summary = json.loads((tmp_path / "out" / "slides" / "b3" / "summary.json").read_text())
    assert summary["segmentation"]["channel_roles"]["b_cells"] == "MS4A1" and summary["source"]["channels"][2] == "MS4A1"
    per_tls = pd.read_csv(tmp_path / "out" / "cohort_tls.csv")
    assert list(per_tls.columns[:2]) == ["slide_id", "tls_id"]
    assert per_tls.groupby("slide_id").size().to_dict() == {s: int(cohort.loc[s, "tls_count"]) for s in cohort.index
                                                             if cohort.loc[s, "tls_count"]}
    a3, b3 = (per_tls[per_tls.slide_id == s].drop(columns="slide_id").reset_index(drop=True) for s in ("a3", "b3"))
    pd.testing.assert_frame_equal(a3, b3)
    # renaming a slide's panel in the manifest makes its results stale: it is analysed again
    rows[2]["channels"] = panel_b.lower()  # roles still match (case-insensitive), the recorded names differ
    pd.DataFrame(rows).to_csv(tmp_path / "mixed.csv", index=False)
    again = _run_on(dask_client, tmp_path / "mixed.csv", tmp_path / "out", NO_PICTURES, overrides=["outputs.qc_png=false"])
    assert again.processed == ["b0"] and again.skipped == ["a3", "b3"]


def test_slurm_job_script_follows_the_config():
    pytest.importorskip("dask_jobqueue")
    from tlsquant.cluster import slurm_cluster

    config = load_config(None, ["cluster.queue=compute", "cluster.cores=8", "cluster.memory='32GB'",
                                "cluster.walltime='02:00:00'", "cluster.job_extra_directives=['--qos=long']",
                                "cluster.job_script_prologue=['module load python/3.11']"])
    cluster = slurm_cluster(config.cluster)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p compute" in script and "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH -t 02:00:00" in script and "#SBATCH --qos=long" in script
    assert "module load python/3.11" in script and "--nthreads 8" in script


def _slurm_is_up() -> bool:
    """A SLURM controller answers and a node is idle (tests/slurm/start_single_node.sh starts one)."""
    import subprocess

    if shutil.which("sinfo") is None:
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "idle" in states or "mix" in states


@pytest.mark.skipif(not _slurm_is_up(), reason="no running SLURM here (see tests/slurm/start_single_node.sh)")
@pytest.mark.slow
def test_batch_on_a_real_slurm_cluster(cohort_dir, tmp_path):
    from distributed import Client

    from tlsquant.cluster import slurm_cluster

    config = load_config(None, ["cluster.cores=1", "cluster.memory='2GB'", "cluster.jobs=1",
                                "cluster.interface='lo'", "cluster.walltime='00:10:00'"])
    subset = tmp_path / "m.csv"
    table = pd.read_csv(cohort_dir / "manifest.csv")
    table["path"] = [str(cohort_dir / p) for p in table["path"]]
    table.iloc[:2].to_csv(subset, index=False)
    cluster = slurm_cluster(config.cluster, log_directory=str(tmp_path / "logs"))
    cluster.scale(jobs=1)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=120)
            result = run_batch(subset, tmp_path / "out", config, client=client)
    finally:
        cluster.close()
    assert result.processed and len(result.cohort) == 2
