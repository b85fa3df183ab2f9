"""The `aar` command line (also `python -m aar_ray`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aar_ray.config import ConfigError


def _table(result_json: dict) -> str:
    """The W2S results as a fixed-width table: one row per method."""
    w, c = result_json["weak_acc"], result_json["ceiling_acc"]
    lines = [
        f"task={result_json['task']}  seeds={result_json['seeds']}",
        f"weak acc    {w['mean']:.3f} ± {w['std']:.3f}",
        f"ceiling acc {c['mean']:.3f} ± {c['std']:.3f}   (gap {c['mean'] - w['mean']:.3f})",
        "",
        f"{'method':<20} {'transfer acc':>16} {'PGR':>16}   per-seed PGR",
    ]
    for name, m in result_json["methods"].items():
        t, p = m["transfer_acc"], m["pgr"]
        per = ", ".join(f"{v:+.2f}" for v in p["per_seed"])
        lines.append(f"{name:<20} {t['mean']:>8.3f} ± {t['std']:.3f} {p['mean']:>+8.3f} ± {p['std']:.3f}   [{per}]")
    return "\n".join(lines)


def cmd_w2s(args: argparse.Namespace) -> int:
    from aar_ray.config import W2SConfig, load_config
    from aar_ray.w2s.engine import train

    cfg = load_config(W2SConfig, args.preset, args.overrides)
    result = train(cfg)
    out = result.to_json()
    _record_w2s(cfg, result)
    print(_table(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _record_w2s(cfg, result) -> None:
    """Record the run in MLflow when the tracking seam is available."""
    try:
        from aar_ray import tracking
    except ImportError:
        return
    tracking.record_w2s(cfg, result)


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI over the default store (lean flags: one worker, no job execution)."""
    import socket
    import subprocess
    import urllib.request

    from aar_ray import tracking

    url = f"http://{args.host}:{args.port}"
    with socket.socket() as s:
        busy = s.connect_ex((args.host, args.port)) == 0
    if busy:
        try:
            is_mlflow = urllib.request.urlopen(url + "/health", timeout=3).read().strip() == b"OK"
        except OSError:
            is_mlflow = False
        if is_mlflow:
            print(f"The MLflow UI is already running at {url}")
            return 0
        print(f"aar ui: port {args.port} on {args.host} is taken by another program; pass --port", file=sys.stderr)
        return 1
    uri = store_uri(args.store) if args.store else tracking.tracking_uri()
    if not uri.startswith("sqlite:"):
        print(f"aar ui: {uri} is a tracking server: open it in a browser (there is nothing to serve here)")
        return 0
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", args.host, "--port", str(args.port), "--workers", "1",
           "--backend-store-uri", uri, "--artifacts-destination", str(tracking.artifacts_dir(uri))]
    print(f"MLflow UI at {url} (store {uri}); Ctrl-C stops it", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def store_uri(store: str) -> str:
    """`aar ui --store`: a tracking URI as is; a directory holding mlflow.db; or a results home (its .mlflow/)."""
    if "://" in store or store.startswith("sqlite:"):
        return store
    p = Path(store).expanduser().resolve()
    for db in (p / "mlflow.db", p / ".mlflow" / "mlflow.db"):
        if db.is_file():
            return f"sqlite:///{db}"
    raise ConfigError(f"--store: no MLflow store at {p} (looked for mlflow.db and .mlflow/mlflow.db)")


def cmd_campaign(args: argparse.Namespace) -> int:
    from aar_ray.campaign import campaign_main

    return campaign_main(args.preset, args.overrides)


def cmd_report(args: argparse.Namespace) -> int:
    from aar_ray.report import report_main

    return report_main(args.campaign_id, args.out)


def cmd_replay(args: argparse.Namespace) -> int:
    from aar_ray.campaign.replay import replay_main

    return replay_main(args.campaign_id, args.until)


def cmd_submit(args: argparse.Namespace) -> int:
    """`ray job submit` of a campaign from this checkout: results go to a lasting home (AAR_HOME,
    default this checkout), and runs carry this checkout's git SHA (the upload has no .git)."""
    import shutil
    import subprocess

    from aar_ray.config import PROJECT_ROOT
    from aar_ray.home import in_ray_upload

    if in_ray_upload():
        print("aar submit: run it from your checkout, not from inside a Ray job", file=sys.stderr)
        return 2

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()

    env = {"AAR_HOME": args.home or os.environ.get("AAR_HOME") or str(PROJECT_ROOT),
           "AAR_GIT_SHA": git("rev-parse", "HEAD") or "unknown",
           "AAR_GIT_DIRTY": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()}
    for k in ("MLFLOW_TRACKING_URI", "AAR_RUNS_DIR", "AAR_MLFLOW_DIR", "AAR_CACHE_DIR", "HF_HUB_OFFLINE"):
        if os.environ.get(k):  # not secrets: credentials travel by cluster.env or a Kubernetes Secret
            env[k] = os.environ[k]
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    cmd = [ray_bin, "job", "submit", *(["--address", args.address] if args.address else []),
           *(["--no-wait"] if args.no_wait else []), "--working-dir", str(PROJECT_ROOT),
           "--runtime-env-json", json.dumps({"env_vars": env}), "--",
           "python", "-m", "aar_ray", "campaign", args.preset, *args.overrides]
    print(f"aar submit: results home {env['AAR_HOME']}, git {env['AAR_GIT_SHA'][:12]}"
          f"{' (dirty)' if env['AAR_GIT_DIRTY'] == 'true' else ''}", flush=True)
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aar", description="Automated alignment research campaigns on Ray.")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("w2s", help="run a weak-to-strong experiment with every configured method")
    w.add_argument("preset", help="YAML preset, e.g. experiments/w2s_quick.yaml")
    w.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. task=math seeds=[0,1]")
    w.add_argument("--out", help="write the results as JSON to this path")
    w.set_defaults(func=cmd_w2s)
    c = sub.add_parser("campaign", help="run (or resume, with campaign_id=...) a research campaign")
    c.add_argument("preset", help="YAML preset, e.g. experiments/quick.yaml")
    c.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. n_researchers=2 campaign_id=my-run")
    c.set_defaults(func=cmd_campaign)
    r = sub.add_parser("report", help="rebuild a campaign's report from MLflow alone")
    r.add_argument("campaign_id")
    r.add_argument("--out", help="output directory (default runs/<campaign-id>/)")
    r.set_defaults(func=cmd_report)
    rp = sub.add_parser("replay", help="rerun a recorded campaign with its recorded brain replies (no key needed), "
                                       "checking every tool result and trial score against the record")
    rp.add_argument("campaign_id")
    rp.add_argument("--until", metavar="TRIAL", help="stop once this trial has landed (and matched)")
    rp.set_defaults(func=cmd_replay)
    s = sub.add_parser("submit", help="submit a campaign to a Ray cluster with `ray job submit`, recording to a "
                                      "lasting results home")
    s.add_argument("preset", help="YAML preset, e.g. experiments/quick.yaml")
    s.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. campaign_id=my-run")
    s.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""), help="the head's dashboard address")
    s.add_argument("--home", help="the results home on the cluster (default: $AAR_HOME, else this checkout)")
    s.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    s.set_defaults(func=cmd_submit)
    sub.add_parser("trial", help="run one method file through the sandbox on the quick task (see `aar trial --help`)")
    u = sub.add_parser("ui", help="serve the MLflow UI over the default store")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--store", help="a tracking URI, a directory holding mlflow.db, or a results home "
                                   "(default: MLFLOW_TRACKING_URI, else this results home's .mlflow/)")
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "trial":  # its own parser: any arguments, and always a JSON last line with --json
        from aar_ray.sandbox.cli import trial_main

        return trial_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"aar: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
