"""The campaign report, rebuilt from a real MLflow sqlite store holding a synthetic campaign.

The campaign is written with `MlflowTracker` exactly as the driver and scorer lay it out (campaign ->
researchers -> trials -> seeds, plus the driver's baseline trials); the report must show those
numbers, rank by validation PGR (flagged trials demoted), embed valid plots, log itself on the campaign run,
and render in Chromium.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aar_ray import report, tracking
from aar_ray.config import PROJECT_ROOT

CID = "synthetic-1"
# (researcher, trial_id, method, val (mean, std), test (mean, std), wall_time_s, audit tag or None, heldout)
TRIALS = [
    ("r0", "r0-t1", "r0_smooth", (0.3100, 0.0500), (0.2500, 0.0400), 30.0, "clean", {}),
    ("r0", "r0-t2", "r0_ensemble", (0.6200, 0.0300), (0.5900, 0.0210), 95.0, "clean",
     {"math": (0.5100, 0.0600), "code": (0.2200, 0.0900)}),
    ("r0", "r0-t3", "r0_worse", (0.4000, 0.0100), (0.1100, 0.0700), 140.0, "val-test-gap", {}),
    ("r1", "r1-t1", "r1_shortcut", (0.9000, 0.0100), (0.8800, 0.0150), 60.0, "teacher-independent,probing",
     {"math": (0.9100, 0.0200)}),  # code held-out not computed: shown as —
    ("r1", "r1-t2", "r1_plain", (0.2000, 0.0800), (-0.0500, 0.1000), 120.0, None, {}),  # not audited yet
    ("r1", "r1-t3", "r1_undefined", None, None, 150.0, "clean", {}),  # PGR undefined: NaN is never logged
]
BASELINES = [("naive", (0.1000, 0.0200), (0.1200, 0.0300)), ("confidence", (0.2800, 0.0200), (0.3000, 0.0250)),
             ("label_smoothing", (0.1500, 0.0100), (0.1400, 0.0200))]
RESEARCHERS = {"r0": {"tokens": 12345, "dollars": 0.4321, "gpu_seconds": 88.5, "trials": 3, "query_refusals": 1},
               "r1": {"tokens": 2000, "dollars": 0.0, "gpu_seconds": 12.0, "trials": 3}}
NAIVE, BEST_HUMAN = 0.1200, 0.3000
UNSCORED = [("r0-t4", "r0_slow", "timeout", "timed out after 90 s (limit set by the harness)"),
            ("r0-t5", "r0_nan", "failed", "invalid predictions: 3 non-finite values | see log")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AAR_MLFLOW_DIR", str(root / "mlflow"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root, tracking.MlflowTracker()


def _trial(tr, exp, parent, tags, val, test, metrics, seeds=2):
    run = tr.start_run(exp, tags["method"], parent=parent, tags={tracking.LEVEL: "trial", **tags})
    if test is not None:
        metrics |= {"val_pgr_mean": val[0], "val_pgr_std": val[1], "test_pgr_mean": test[0], "test_pgr_std": test[1]}
    tr.log_metrics(run, metrics)
    for s in range(seeds):
        sr = tr.start_run(exp, f"{tags['method']}/seed={s}", parent=run, tags={tracking.LEVEL: "seed", "seed": str(s)})
        tr.end_run(sr)
    tr.end_run(run)
    return run


@pytest.fixture(scope="module")
def campaign(store):
    root, tr = store
    exp = tr.experiment(report.EXPERIMENT_PREFIX + CID)
    camp = tr.start_run(exp, "campaign", tags={tracking.LEVEL: "campaign", "aar.campaign_id": CID, "preset": "quick"})
    tr.log_params(camp, {"scoring": {"top_k": 3}})
    tr.log_metrics(camp, {"naive_test_pgr_mean": NAIVE, "best_human_test_pgr_mean": BEST_HUMAN,
                          "budget_trials": 12, "wall_s": 3725.0})
    for i, (name, val, test) in enumerate(BASELINES):
        _trial(tr, exp, camp, {"method": name, "aar.baseline": name, "researcher": "driver", "trial_id": f"base-{name}",
                               "fidelity": "full", "aar.audit": "not audited"}, val, test, {"wall_time_s": 5.0 + i})
    rr = {}
    for name, m in RESEARCHERS.items():
        rr[name] = tr.start_run(exp, name, parent=camp, tags={tracking.LEVEL: "researcher", "researcher": name,
                                                              "direction": f"dir of {name}", "brain": "offline",
                                                              "outcome": "budget"})
        tr.log_metrics(rr[name], m)
    for i, (res, tid, method, val, test, t, audit, held) in enumerate(TRIALS):
        tags = {"method": method, "researcher": res, "trial_id": tid, "fidelity": "full"}
        if audit is not None:  # what finalize_flags writes: the state, and the flags when there are any
            tags["aar.audit"] = audit
            if audit not in ("clean", "not audited"):
                tags["aar.flags"] = audit
        metrics = {"wall_time_s": t, "trial_index": i}
        for task, (m, s) in held.items():
            metrics |= {f"heldout_{task}_pgr_mean": m, f"heldout_{task}_pgr_std": s}
        _trial(tr, exp, rr[res], tags, val, test, metrics)
    # a half-recorded trial left by a crash (RUNNING): replaced on resume, never shown
    crashed = tr.start_run(exp, "r1_crashed", parent=rr["r1"], tags={tracking.LEVEL: "trial", "method": "r1_crashed",
                                                                     "researcher": "r1", "trial_id": "r1-t3"})
    tr.log_metrics(crashed, {"test_pgr_mean": 0.99, "test_pgr_std": 0.0, "val_pgr_mean": 0.99, "val_pgr_std": 0.0})
    # trials whose jobs produced no score, recorded the way the campaign's collector does it
    for tid, method, status, reason in UNSCORED:
        for _ in range(2):  # recording twice (a resumed collector) must not duplicate the run
            tracking.record_unscored_trial(tr, exp, tid, method, f"# {method}\n", status, reason, parent=rr["r0"],
                                           extra_tags={"researcher": "r0", "fidelity": "quick"})
    for r in rr.values():
        tr.end_run(r)
    tr.end_run(camp)
    out = root / "out"
    md = report.build_report(CID, out, tracker=tr)
    return {"tracker": tr, "camp": camp, "out": out, "md": md, "text": md.read_text()}


def _table(text: str, section: str) -> list[dict[str, str]]:
    """The first Markdown table under `## section`, as dicts keyed by header."""
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split(" | ")]  # noqa: E731
    head = split(lines[0])
    assert set(lines[1]) <= set("|-"), lines[1]
    return [dict(zip(head, split(ln))) for ln in lines[2:]]


def pm(ms) -> str:
    return f"{ms[0]:.4f} ± {ms[1]:.4f}"


def test_leaderboard_matches_mlflow_ranked_by_val_pgr_flagged_last(campaign):
    rows = _table(campaign["text"], "Leaderboard")
    # every finished trial, the crashed one excluded; numbers read back from MLflow itself
    client = campaign["tracker"].client
    exp = client.get_experiment_by_name(report.EXPERIMENT_PREFIX + CID).experiment_id
    runs = client.search_runs([exp], f"tags.`{tracking.LEVEL}` = 'trial' and attributes.status = 'FINISHED'")
    assert len(rows) == len(runs) == len(TRIALS) + len(BASELINES)
    by_method = {r.data.tags["method"]: r.data.metrics for r in runs}
    for row in rows:
        m = by_method[row["method"]]
        if "test_pgr_mean" in m:
            assert row["val PGR (ranks)"] == pm((m["val_pgr_mean"], m["val_pgr_std"]))
            assert row["test PGR"] == pm((m["test_pgr_mean"], m["test_pgr_std"]))
        else:
            assert row["val PGR (ranks)"] == row["test PGR"] == "—"
        assert row["fidelity"] == "full"
    # validation PGR ranks (never test); a flagged trial is shown, below every unflagged one
    assert [r["method"] for r in rows] == ["r0_ensemble", "r0_smooth", "confidence", "r1_plain", "label_smoothing",
                                           "naive", "r1_undefined", "r1_shortcut", "r0_worse"]
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    lb = {r["method"]: r for r in rows}
    assert lb["r1_shortcut"]["audit"] == "flagged: teacher-independent, probing"  # the best val PGR, demoted
    assert lb["r0_worse"]["audit"] == "flagged: val-test-gap"
    assert lb["r0_smooth"]["audit"] == "clean"
    assert lb["r1_plain"]["audit"] == "not audited"  # never shown as clean
    assert lb["r1_plain"]["test PGR"] == "-0.0500 ± 0.1000"
    assert (lb["r0_ensemble"]["researcher"], lb["r0_ensemble"]["trial"]) == ("r0", "r0-t2")
    assert lb["naive"]["researcher"] == "baseline"
    assert "r1_crashed" not in campaign["text"]
    assert "- **ranked by:** validation PGR" in campaign["text"]


def test_unscored_trials_are_recorded_once_and_listed_with_their_reason(campaign):
    client = campaign["tracker"].client
    exp = client.get_experiment_by_name(report.EXPERIMENT_PREFIX + CID).experiment_id
    runs = client.search_runs([exp], f"tags.`{tracking.UNSCORED_STATUS}` != ''")
    by_tid = {r.data.tags["trial_id"]: r for r in runs}
    assert len(runs) == len(by_tid) == 2
    assert by_tid["r0-t4"].info.status == "KILLED" and by_tid["r0-t5"].info.status == "FAILED"
    assert by_tid["r0-t5"].data.tags[tracking.UNSCORED_REASON].startswith("invalid predictions")
    assert by_tid["r0-t4"].data.tags[tracking.PARENT] is not None
    assert [a.path for a in client.list_artifacts(by_tid["r0-t4"].info.run_id, "method")] == ["method/r0_slow.py"]
    rows = _table(campaign["text"], "Not scored")
    assert [(r["method"], r["researcher"], r["trial"], r["status"]) for r in rows] == [
        ("r0_slow", "r0", "r0-t4", "timeout"), ("r0_nan", "r0", "r0-t5", "failed")]
    assert rows[1]["reason"] == "invalid predictions: 3 non-finite values \\| see log"  # a pipe is escaped
    assert "r0_slow" not in campaign["text"].split("## Leaderboard", 1)[1].split("## PGR over time", 1)[0]


def test_header_generalization_and_spend(campaign):
    text = campaign["text"]
    assert text.startswith(f"# Campaign report: {CID}\n")
    assert "- **preset:** quick" in text
    assert "- **researchers:** r0 (offline), r1 (offline)" in text
    assert ("- **trials:** 6 researcher + 3 baseline (budget 12); 2 not scored (listed below); "
            "1 unfinished not shown") in text
    assert "- **seed runs:** 18" in text
    assert "- **wall time:** 1h 02m 05s" in text
    assert f"- **naive test PGR:** {NAIVE:.4f}" in text
    assert f"- **best human-designed test PGR:** {BEST_HUMAN:.4f}" in text

    gen = _table(text, "Generalization")
    # top-3 researcher trials by val PGR (baselines are not candidates), plus any with held-out
    # numbers; the flagged one last, with its flags
    assert [(r["method"], r["test PGR"], r["math PGR"], r["code PGR"], r["audit"]) for r in gen] == [
        ("r0_ensemble", pm((0.59, 0.021)), pm((0.51, 0.06)), pm((0.22, 0.09)), "clean"),
        ("r0_smooth", pm((0.25, 0.04)), "—", "—", "clean"),
        ("r1_plain", pm((-0.05, 0.1)), "—", "—", "not audited"),
        ("r1_shortcut", pm((0.88, 0.015)), pm((0.91, 0.02)), "—", "flagged: teacher-independent, probing"),
    ]

    spend = {r["researcher"]: r for r in _table(text, "Spend")}
    cols = ("tokens", "dollars", "GPU-seconds", "trials", "recorded trials", "query refusals")
    assert tuple(spend["r0"][k] for k in cols) == ("12,345", "0.4321", "88.5", "3", "3", "1")
    assert tuple(spend["r1"][k] for k in cols) == ("2,000", "0.0000", "12.0", "3", "3", "0")  # refusals absent: 0
    assert tuple(spend["total"][k] for k in cols[:4]) == ("14,345", "0.4321", "100.5", "6")
    assert [(r["researcher"], r["direction"], r["outcome"]) for r in _table(text, "Researchers")] == [
        ("r0", "dir of r0", "budget"), ("r1", "dir of r1", "budget")]


def _n_colors(px: np.ndarray) -> int:
    packed = (px[..., 0].astype(np.uint32) << 16) | (px[..., 1].astype(np.uint32) << 8) | px[..., 2]
    return len(np.unique(packed))


def _assert_real_image(path: Path, min_colors: int = 50) -> np.ndarray:
    assert path.stat().st_size > 10_000, f"{path.name} is only {path.stat().st_size} bytes"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"))
    n = _n_colors(px)
    assert n >= min_colors, f"{path.name}: {n} colours"
    return px


def _has_color(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 12, min_px: int = 200) -> bool:
    return int((np.abs(px.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum()) >= min_px


def test_plots_html_and_artifacts(campaign):
    out = campaign["out"]
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"pgr_over_time.png", "leaderboard.png", "generalization.png"}
    for name in pngs:
        px = _assert_real_image(out / name)
        assert _has_color(px, (31, 119, 180)), f"{name}: no data drawn in C0"  # matplotlib's first colour
    for name in pngs:
        assert f"]({name})" in campaign["text"]  # Markdown references the PNG beside it
    page = (out / "report.html").read_text()
    assert page.count("src=\"data:image/png;base64,") == 3 and "src=\"http" not in page
    assert "<td>r1_shortcut</td>" in page and "<td>0.8800 ± 0.0150</td>" in page

    client = campaign["tracker"].client
    logged = {Path(f.path).name for f in client.list_artifacts(campaign["camp"], "report")}
    assert logged == {"report.md", "report.html"} | pngs
    (out / "dl").mkdir()
    assert Path(client.download_artifacts(campaign["camp"], "report/report.md", str(out / "dl"))).read_text() == \
        campaign["text"]


def test_report_main_cli_hook(campaign, tmp_path, capsys):
    assert report.report_main(CID, str(tmp_path / "again")) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"report: {tmp_path / 'again' / 'report.md'}"
    # rebuilding from MLflow alone gives the same tables
    again = (tmp_path / "again" / "report.md").read_text()
    for section in ("Leaderboard", "Generalization", "Spend"):
        assert _table(again, section) == _table(campaign["text"], section)
    assert report.report_main("no-such-campaign", str(tmp_path / "x")) == 1
    assert "no campaign 'no-such-campaign'" in capsys.readouterr().err
    assert report.default_out_dir(CID) == PROJECT_ROOT / "runs" / CID


def test_empty_campaign_reports_no_trials(store):
    root, tr = store
    exp = tr.experiment(report.EXPERIMENT_PREFIX + "empty-1")
    camp = tr.start_run(exp, "campaign", tags={tracking.LEVEL: "campaign", "preset": "quick"})
    r0 = tr.start_run(exp, "r0", parent=camp,
                      tags={tracking.LEVEL: "researcher", "researcher": "r0", "brain": "claude"})
    md = report.build_report("empty-1", root / "empty", tracker=tr)
    text = md.read_text()
    assert "No trials recorded yet." in text and "- **status:** RUNNING" in text
    assert "- **trials:** 0 researcher + 0 baseline" in text
    assert _table(text, "Spend")[0]["researcher"] == "r0"
    assert not list((root / "empty").glob("*.png"))
    assert (root / "empty" / "report.html").read_text().count("<h2>") == 3
    logged = {Path(f.path).name for f in tr.client.list_artifacts(camp, "report")}
    assert logged == {"report.md", "report.html"}
    tr.end_run(r0)
    tr.end_run(camp)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (bash .ci/install-apt.sh)")
def test_html_renders_in_headless_chromium(campaign, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,1600", (campaign["out"] / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shot.exists(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        px = np.asarray(im.convert("RGB"))
    assert _n_colors(px) > 200  # text antialiasing plus the plots
    assert (px.min(axis=-1) < 235).mean() > 0.05  # not a blank white page
    assert _has_color(px, (0x1f, 0x3b, 0x73), tol=6, min_px=2000)  # the page's table headers: CSS applied
    assert _has_color(px, (31, 119, 180), tol=20, min_px=500)  # the embedded leaderboard plot's bars


def _chromium(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot): what a person opening the link sees."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--virtual-time-budget=25000", "--window-size=1600,1000"]
    if screenshot is not None:
        subprocess.run([*base, f"--user-data-dir={profile}-shot", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=180)
    return subprocess.run([*base, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True, text=True,
                          timeout=180).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (bash .ci/install-apt.sh)")
def test_mlflow_ui_opens_on_the_trials_with_their_pgr(campaign, store, tmp_path):
    """A real `mlflow server` on the campaign's store, read by headless Chromium: the experiment
    opens as a runs table (not the GenAI overview), the shared view linked from the description shows
    every trial with its PGR columns without picking any by hand, and the campaign run's page shows
    the way to the report."""
    import os
    import socket
    import sys

    from aar_ray.campaign.driver import _describe
    from aar_ray.config import CampaignConfig
    from test_tracking import wait_healthy

    root, tr = store
    exp = tr.experiment_id(report.EXPERIMENT_PREFIX + CID)
    researchers = [r.run_id for r in tr.find_runs(exp, "researcher")]
    _describe(tr, exp, campaign["camp"], CampaignConfig(campaign_id=CID), "offline", {"r0": "dir of r0", "r1": "dir of r1"})
    tr.share_view(exp, tracking.VIEW_KEY, ["val_pgr_mean", "test_pgr_mean"], [campaign["camp"], *researchers],
                  "val_pgr_mean")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", tr.uri, "--artifacts-destination",
                             str(tracking.artifacts_dir(tr.uri))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, "mlflow server")
        shot = tmp_path / "runs.png"
        dom = _chromium(f"{url}/#/experiments/{exp}/runs?viewStateShareKey={tracking.VIEW_KEY}", tmp_path / "p1", shot)
        page = _chromium(f"{url}/#/experiments/{exp}/runs/{campaign['camp']}", tmp_path / "p2")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    # the runs table: PGR columns, every trial's row with its number, and the description
    assert "val_pgr_mean" in dom and "test_pgr_mean" in dom, dom[-3000:]
    for method in ("r0_ensemble", "r1_shortcut", "r0_smooth"):
        assert method in dom, method
    assert "0.62" in dom and "0.88" in dom  # r0_ensemble's val PGR, r1_shortcut's test PGR: the values, shown
    assert "Campaign synthetic-1" in dom and "Read the report" in dom
    with Image.open(shot) as im:
        assert _n_colors(np.asarray(im.convert("RGB"))) > 50
    # the campaign run's page: its description names the report and the shared view
    assert "report/report.html" in page and "The trials with their PGR" in page
    assert "naive_test_pgr_mean" in page  # its own metrics are on the page


def test_method_families_say_which_were_tried_and_which_moved_pgr():
    def trial(method, researcher, val, baseline=None):
        return report.Trial(run_id=method, method=method, researcher=researcher, trial_id=method, fidelity="full",
                            flags=[], audit="not audited", val=val, test=val, wall_time_s=1.0, index=0, heldout={},
                            baseline=baseline)

    trials = [trial("naive", "baseline", (0.30, 0.05), baseline="naive"),
              trial("select_1", "r0", (0.33, 0.02)), trial("select_4", "r1", (0.52, 0.03)),
              trial("loss_2", "r1", (0.34, 0.01)), trial("myidea", "r0", (0.10, 0.01)),
              trial("cluster_1", "r2", None)]  # not scored: not counted
    c = report.Campaign("fam", None, "FINISHED", "quick.yaml", {}, {}, None, [], trials, 0, 0)
    t = report.families_table(c)
    rows = {r[0]: dict(zip(t.headers, r)) for r in t.rows}
    assert list(rows) == ["select", "loss", "other"]  # by best validation PGR
    assert rows["select"]["trials"] == "2" and rows["select"]["researchers"] == "r0, r1"
    assert rows["select"]["best method"] == "select_4" and rows["select"]["vs naive (val)"] == "+0.220"
    assert rows["select"]["moved PGR"] == "yes"
    assert rows["loss"]["moved PGR"] == "no"  # +0.04: inside naive's seed std (0.05)
    assert rows["other"]["best method"] == "myidea" and rows["other"]["moved PGR"] == "no"
    md = report.render_markdown(c, {})
    assert "## Method families" in md and "| select | 2 | r0, r1 |" in md
