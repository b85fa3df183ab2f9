"""The one MLflow seam. Nothing else in aar_ray imports mlflow.

Hierarchy: one experiment per campaign (or per preset, for `aar w2s`); nested runs
researcher -> trial -> seed (`aar w2s`: invocation -> trial -> seed). Every trial run carries its
content key as a tag, so recording the same trial twice never creates a second run.

Store: `MLFLOW_TRACKING_URI` when set (a remote `mlflow server` for clusters; workers log there
too), else a sqlite database in the project-local `.mlflow/` directory.
Secrets: values of environment variables named like keys, tokens, secrets or passwords are
redacted from every param, tag and text artifact before it leaves the process.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from aar_ray.config import PROJECT_ROOT, flatten, to_dict, to_yaml

CONTENT_KEY = "aar.content_key"
LEVEL = "aar.level"  # campaign | researcher | trial | seed | w2s
PARENT = "mlflow.parentRunId"
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)  # env names: redact their values
_SECRET_FIELD = re.compile(r"(^|[_.-])(api_?key|token|secret|password|passwd|credentials?)$", re.I)  # dict keys
_PARAM_MAX = 6000  # MLflow's param value limit


def store_dir() -> Path:
    return Path(os.environ.get("AAR_MLFLOW_DIR") or PROJECT_ROOT / ".mlflow")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    d = store_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def _secrets() -> list[str]:
    return [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6]


def redact(value: Any) -> Any:
    """Replace any secret env-var value inside strings (recursively in dicts and lists) with ***."""
    if isinstance(value, str):
        for s in _secrets():
            value = value.replace(s, "***")
        return value
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_FIELD.search(str(k)) and isinstance(v, str) and v else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


@lru_cache(maxsize=1)
def provenance() -> dict[str, str]:
    """Git SHA + dirty flag, library versions and device: tags for every run."""
    import torch
    import transformers

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    tags = {
        "git_sha": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.machine()})",
    }
    for mod in ("ray", "mlflow"):
        try:
            tags[f"{mod}_version"] = __import__(mod).__version__
        except ImportError:
            tags[f"{mod}_version"] = "absent"
    return tags


@dataclass(frozen=True)
class RunView:
    """One recorded run, as the campaign and the report read it (no MLflow types leak out)."""

    run_id: str
    name: str
    status: str
    start_time: int | None
    """Milliseconds since the epoch."""
    end_time: int | None
    tags: dict
    metrics: dict
    params: dict


class Tracker:
    """The tracker interface. This base class records nothing (for pure unit tests)."""

    enabled = False

    def experiment(self, name: str) -> str:
        return name

    def experiment_id(self, name: str) -> str | None:
        """The id of an existing experiment, or None (creates nothing)."""
        return None

    def find_runs(self, experiment_id: str, level: str | None = None, **tags: str) -> list[RunView]:
        """Runs of an experiment at a level (campaign, researcher, trial, seed) whose tags match."""
        return []

    def find_run(self, experiment_id: str, content_key: str, keep: tuple[str, ...] = ("FINISHED",)) -> str | None:
        return None

    def start_run(self, experiment_id: str, name: str, parent: str | None = None,
                  tags: dict[str, str] | None = None) -> str:
        return f"null-{name}"

    def log_params(self, run_id: str, params: dict[str, Any]) -> None: ...

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None: ...

    def log_series(self, run_id: str, key: str, points: Iterable[tuple[int, float]]) -> None: ...

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...

    def log_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...

    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...


NullTracker = Tracker


class MlflowTracker(Tracker):
    """Records to MLflow through an explicit-run-id client (safe in Ray actors and workers)."""

    enabled = True

    def __init__(self, uri: str | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)

    def __reduce__(self):
        """Travels to Ray actors as its store's URI; the client is rebuilt there."""
        return MlflowTracker, (self.uri,)

    def experiment_id(self, name: str) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else None

    def find_runs(self, experiment_id: str, level: str | None = None, **tags: str) -> list[RunView]:
        conds = ([f"tags.`{LEVEL}` = '{level}'"] if level else []) + [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        out, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=" and ".join(conds), max_results=1000,
                                           page_token=token)
            out.extend(RunView(r.info.run_id, r.info.run_name or "", r.info.status, r.info.start_time,
                               r.info.end_time, dict(r.data.tags), dict(r.data.metrics), dict(r.data.params))
                       for r in page)
            token = page.token
            if not token:
                return out

    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep a local store's artifacts beside its database
            location = (store_dir() / "artifacts" / re.sub(r"[^\w.-]", "_", name)).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another worker
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def find_run(self, experiment_id: str, content_key: str, keep: tuple[str, ...] = ("FINISHED",)) -> str | None:
        """The recorded run with this content key; runs in other states (half-recorded by a crash) are deleted."""
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{CONTENT_KEY}` = '{content_key}'",
                                       max_results=10)
        kept = [r for r in runs if r.info.status in keep]
        for r in runs:  # a half-recorded run from a crash is replaced, never shown as a result
            if r.info.status not in keep:
                self.client.delete_run(r.info.run_id)
        return kept[0].info.run_id if kept else None

    def start_run(self, experiment_id: str, name: str, parent: str | None = None,
                  tags: dict[str, str] | None = None) -> str:
        tags = {k: str(v) for k, v in redact(dict(tags or {})).items()}
        if parent:
            tags[PARENT] = parent
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = redact(flatten(params))
        items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        import time
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def log_series(self, run_id: str, key: str, points: Iterable[tuple[int, float]]) -> None:
        from mlflow.entities import Metric

        import time
        ts = int(time.time() * 1000)
        items = [Metric(key, float(v), ts, int(s)) for s, v in points]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in redact(dict(tags)).items()])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, redact(text), artifact_file)

    def log_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def default_tracker() -> Tracker:
    """The real tracker, unless AAR_TRACKING=off (pure unit tests only)."""
    return Tracker() if os.environ.get("AAR_TRACKING", "").lower() in ("off", "0", "false") else MlflowTracker()


# ---------- what a weak-to-strong run records ----------

@dataclass(frozen=True)
class RecordedRun:
    """Where a recorded trial lives; `created` is False when the content key was already recorded."""

    run_id: str
    created: bool


def trial_content_key(cfg, method_result, weak_key: str = "", strong_key: str = "") -> str:
    """Identity of a trial: task, models, method source hash, seeds and result-affecting config."""
    from aar_ray.w2s.cache import content_key

    d = to_dict(cfg)
    for k in ("name", "methods", "device", "torch_threads", "batch_size_features"):  # do not change results
        d.pop(k, None)
    return content_key("trial", d, weak_key, strong_key, method_result.source_hash)


def _trial_metrics(method_result) -> dict[str, float]:
    """A trial run's metrics: test and val PGR, accuracies (mean, std and per seed)."""
    from aar_ray.w2s.metrics import mean_std

    summary, val = method_result.summary("test"), method_result.summary("val")
    metrics = {
        "pgr_mean": summary["pgr"]["mean"], "pgr_std": summary["pgr"]["std"],
        "transfer_acc_mean": summary["transfer_acc"]["mean"], "transfer_acc_std": summary["transfer_acc"]["std"],
        "val_pgr_mean": val["pgr"]["mean"], "val_pgr_std": val["pgr"]["std"],
    }
    for s in method_result.seeds:
        metrics.update({f"pgr_seed_{s.seed}": s.pgr["test"], f"weak_acc_seed_{s.seed}": s.weak_acc["test"],
                        f"ceiling_acc_seed_{s.seed}": s.ceiling_acc["test"],
                        f"transfer_acc_seed_{s.seed}": s.transfer_acc["test"]})
    for name in ("weak_acc", "ceiling_acc"):
        ms = mean_std([getattr(s, name)["test"] for s in method_result.seeds])
        metrics[f"{name}_mean"], metrics[f"{name}_std"] = ms["mean"], ms["std"]
    return metrics


def record_trial(tracker: Tracker, experiment_id: str, cfg, method_result, baselines: dict, parent: str | None = None,
                 extra_tags: dict[str, str] | None = None, weak_key: str = "", strong_key: str = "",
                 eval_splits: dict | None = None) -> RecordedRun:
    """Record one trial (a method over all seeds) with nested seed runs; idempotent by content key.

    eval_splits: seed -> (eval task indices, their split names), to label the predictions artifact.
    """
    key = trial_content_key(cfg, method_result, weak_key, strong_key)
    existing = tracker.find_run(experiment_id, key)
    if existing:
        return RecordedRun(existing, False)
    seeds = [s.seed for s in method_result.seeds]
    tags = {
        LEVEL: "trial", CONTENT_KEY: key, "task": cfg.task, "method": method_result.name,
        "method_source_hash": method_result.source_hash,
        "weak_model": cfg.weak.name_or_path or f"tiny(d={cfg.weak.d_model},L={cfg.weak.n_layer})",
        "strong_model": cfg.strong.name_or_path or f"tiny(d={cfg.strong.d_model},L={cfg.strong.n_layer})",
        "seeds": ",".join(map(str, seeds)), **provenance(), **(extra_tags or {}),
    }
    run = tracker.start_run(experiment_id, f"{method_result.name}", parent=parent, tags=tags)
    try:
        tracker.log_params(run, to_dict(cfg))
        tracker.log_metrics(run, _finite(_trial_metrics(method_result)))
        tracker.log_text(run, method_result.source, f"method/{method_result.name}.py")
        tracker.log_text(run, to_yaml(cfg), "config.yaml")
        for s in method_result.seeds:
            seed_run = tracker.start_run(experiment_id, f"{method_result.name}/seed={s.seed}", parent=run,
                                         tags={LEVEL: "seed", "seed": str(s.seed), "method": method_result.name,
                                               "task": cfg.task})
            tracker.log_metrics(seed_run, _finite({
                "weak_acc": s.weak_acc["test"], "ceiling_acc": s.ceiling_acc["test"],
                "transfer_acc": s.transfer_acc["test"], "pgr": s.pgr["test"],
                "val_weak_acc": s.weak_acc["val"], "val_ceiling_acc": s.ceiling_acc["val"],
                "val_transfer_acc": s.transfer_acc["val"], "val_pgr": s.pgr["val"], "seconds": s.seconds}))
            tracker.log_series(seed_run, "train_loss", s.losses)
            preds = method_result.predictions.get(s.seed)
            if preds is not None:
                idx, splits = (eval_splits or {}).get(s.seed, (range(len(preds)), ["eval"] * len(preds)))
                rows = "\n".join(f"{i},{sp},{p:.6f}" for i, sp, p in zip(idx, splits, preds.tolist()))
                tracker.log_text(seed_run, "index,split,prob\n" + rows + "\n", f"predictions/seed_{s.seed}.csv")
            tracker.end_run(seed_run)
        tracker.end_run(run)
    except BaseException:
        tracker.end_run(run, "FAILED")
        raise
    return RecordedRun(run, True)


UNSCORED_STATUS = "aar.status"  # on a trial run that produced no score: failed | timeout | cancelled | refused | ...
UNSCORED_REASON = "aar.reason"
SANDBOX = "aar.sandbox"  # on every trial run: the sandbox layers its trial ran under (comma list; 'none')


def record_unscored_trial(tracker: Tracker, experiment_id: str, trial_id: str, name: str, source: str, status: str,
                          reason: str, parent: str | None = None, extra_tags: dict[str, str] | None = None) -> str | None:
    """Record a trial that produced no score (its job failed, timed out, was cancelled or refused).

    The run is terminated FAILED (KILLED when the harness stopped it), carries the status and the
    reason as tags and the method's source as an artifact, so nothing a researcher submitted is
    missing from MLflow. Idempotent per trial id.
    """
    from aar_ray.w2s.cache import content_key
    from aar_ray.w2s.methods import source_hash

    key = content_key("unscored-trial", experiment_id, trial_id)
    end = "KILLED" if status in ("timeout", "cancelled") else "FAILED"
    existing = tracker.find_run(experiment_id, key, keep=("FAILED", "KILLED"))
    if existing:
        return existing
    tags = {LEVEL: "trial", CONTENT_KEY: key, "trial_id": trial_id, "method": name,
            "method_source_hash": source_hash(source), UNSCORED_STATUS: status, UNSCORED_REASON: reason[:4000],
            **provenance(), **(extra_tags or {})}
    run = tracker.start_run(experiment_id, name, parent=parent, tags=tags)
    try:
        tracker.log_text(run, source, f"method/{name}.py")
    finally:
        tracker.end_run(run, end)
    return run


def log_generalization(tracker: Tracker, run_id: str, pgr_by_task: dict[str, dict[str, float]]) -> None:
    """Held-out generalization on a trial's own run: {'math': {'mean', 'std'}, 'code': {...}}.

    Optional keys weak_acc, ceiling_acc and transfer_acc (test-split means) are logged beside the PGR.
    """
    metrics = {}
    for task, ms in pgr_by_task.items():
        metrics[f"heldout_{task}_pgr_mean"] = ms["mean"]
        metrics[f"heldout_{task}_pgr_std"] = ms["std"]
        for k in ("weak_acc", "ceiling_acc", "transfer_acc"):
            if k in ms:
                metrics[f"heldout_{task}_{k}"] = ms[k]
    tracker.log_metrics(run_id, _finite(metrics))


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    import math
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def record_w2s(cfg, result, tracker: Tracker | None = None) -> dict[str, RecordedRun]:
    """`aar w2s`: experiment = preset name; a parent run per invocation; a trial run per method."""
    tracker = tracker or default_tracker()
    if not tracker.enabled:
        return {}
    exp = tracker.experiment(cfg.name)
    parent = tracker.start_run(exp, f"w2s:{result.task}", tags={LEVEL: "w2s", "task": result.task, **provenance()})
    out = {}
    try:
        for r in result.methods.values():
            splits = {s: result.eval_rows(s) for s in result.seeds}
            out[r.name] = record_trial(tracker, exp, cfg, r, result.baselines, parent=parent,
                                       weak_key=result.weak_key, strong_key=result.strong_key, eval_splits=splits)
        tracker.end_run(parent)
    except BaseException:
        tracker.end_run(parent, "FAILED")
        raise
    return out


def enable_anthropic_autolog(experiment: str) -> None:
    """Trace every anthropic Messages call of this process to MLflow (ClaudeBrain's `mlflow_autolog`).

    Traces go to `experiment` (created like the tracker's, so a local store keeps their artifacts
    beside its database). They hold the request body and the reply, never the request headers, so
    the API key is not recorded.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import mlflow.anthropic

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=MlflowTracker(uri).experiment(experiment))
    mlflow.anthropic.autolog()
