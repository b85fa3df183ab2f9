"""The one MLflow seam. Nothing else in aar_ray imports mlflow.

Hierarchy: one experiment per campaign (or per preset, for `aar w2s`); nested runs
researcher -> trial -> seed (`aar w2s`: invocation -> trial -> seed). Every trial run carries its
content key as a tag, so recording the same trial twice never creates a second run.

Store: `MLFLOW_TRACKING_URI` when set (a remote `mlflow server` for clusters; workers log there
too), else a sqlite database in the project-local `.mlflow/` directory.
Secrets: values of environment variables named like keys, tokens, secrets or passwords, and every
secret this process got from the campaign's vault (`aar_ray.vault`), are redacted from every param,
tag and text artifact before it leaves the process. An MLflow client in a Ray actor gets its
credentials from the vault, never from a runtime_env (Ray logs those).
Traces: `MlflowCallTracer` records each Claude Messages API call as one MLflow trace (see there).
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

from aar_ray import vault
from aar_ray.config import PROJECT_ROOT, flatten, to_dict, to_yaml
from aar_ray.home import mlflow_dir

CONTENT_KEY = "aar.content_key"
LEVEL = "aar.level"  # campaign | researcher | trial | seed | w2s
PARENT = "mlflow.parentRunId"
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)  # env names: redact their values
_SECRET_FIELD = re.compile(r"(^|[_.-])(api_?key|token|secret|password|passwd|credentials?)$", re.I)  # dict keys
_PARAM_MAX = 6000  # MLflow's param value limit


def store_dir() -> Path:
    """The default local store's directory (in the results home)."""
    return mlflow_dir()


def artifacts_dir(uri: str) -> Path | None:
    """Where a sqlite store keeps its artifacts: beside its database file, wherever that lives (never
    relative to the code, which may be Ray's temporary copy). None for a server (it has its own)."""
    if not uri.startswith("sqlite:"):
        return None
    db = uri.removeprefix("sqlite:").lstrip("/")
    return Path("/" + db).parent / "artifacts"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    d = store_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def _secrets() -> list[str]:
    env = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6}
    return sorted(env | set(vault.known_values()), key=len, reverse=True)


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

    # a submitted job runs Ray's copy of the checkout, without .git: `aar submit` passes what it was
    sha = git("rev-parse", "HEAD") or os.environ.get("AAR_GIT_SHA") or "unknown"
    dirty = str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower() if git("rev-parse", "HEAD") \
        else os.environ.get("AAR_GIT_DIRTY", "unknown")
    tags = {
        "git_sha": sha,
        "git_dirty": dirty,
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
                  tags: dict[str, str] | None = None, start_time: float | None = None) -> str:
        return f"null-{name}"

    def log_params(self, run_id: str, params: dict[str, Any]) -> None: ...

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None: ...

    def log_series(self, run_id: str, key: str, points: Iterable[tuple[int, float]]) -> None: ...

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...

    def log_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...

    def end_run(self, run_id: str, status: str = "FINISHED", end_time: float | None = None) -> None: ...

    def clear_experiment(self, experiment_id: str) -> int:
        """Delete every run of an experiment (soft: restorable); returns how many."""
        return 0

    def describe_experiment(self, experiment_id: str, text: str) -> None: ...

    def share_view(self, experiment_id: str, key: str, metrics: list[str], expanded: list[str],
                   order_by: str) -> None: ...


NullTracker = Tracker
VIEW_KEY = "aar-pgr"  # the shared runs-table view: open #/experiments/<id>/runs?viewStateShareKey=aar-pgr
DESCRIPTION = "mlflow.note.content"  # the description MLflow's UI shows on a run or an experiment page


class MlflowTracker(Tracker):
    """Records to MLflow through an explicit-run-id client (safe in Ray actors and workers)."""

    enabled = True

    def __init__(self, uri: str | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        vault.install_mlflow_credentials()  # in a campaign's actor: from the vault, in memory
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
        art = artifacts_dir(self.uri)  # a local store's artifacts go beside its database
        location = (art / re.sub(r"[^\w.-]", "_", name)).as_uri() if art is not None else None
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
                  tags: dict[str, str] | None = None, start_time: float | None = None) -> str:
        """A new run; `start_time` (seconds since the epoch) when the work it records began earlier."""
        tags = {k: str(v) for k, v in redact(dict(tags or {})).items()}
        if parent:
            tags[PARENT] = parent
        ms = int(start_time * 1000) if start_time is not None else None
        return self.client.create_run(experiment_id, start_time=ms, run_name=name, tags=tags).info.run_id

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

    def end_run(self, run_id: str, status: str = "FINISHED", end_time: float | None = None) -> None:
        self.client.set_terminated(run_id, status, end_time=int(end_time * 1000) if end_time is not None else None)

    def clear_experiment(self, experiment_id: str) -> int:
        runs = self.find_runs(experiment_id)
        for r in runs:
            self.client.delete_run(r.run_id)
        return len(runs)

    def describe_experiment(self, experiment_id: str, text: str) -> None:
        """The experiment's description, and the classic runs view (not the GenAI overview) as its page."""
        self.client.set_experiment_tag(experiment_id, DESCRIPTION, redact(text))
        self.client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")

    def share_view(self, experiment_id: str, key: str, metrics: list[str], expanded: list[str],
                   order_by: str) -> None:
        """A runs-table view the UI opens from a link (`?viewStateShareKey=<key>`, MLflow's shared view
        state, an experiment tag): these metric columns shown, these parent runs expanded, sorted."""
        import json

        state = {"selectedColumns": [f"metrics.`{m}`" for m in metrics], "runsExpanded": {r: True for r in expanded},
                 "orderByKey": f"metrics.`{order_by}`", "orderByAsc": False}
        self.client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(state))


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
    """A trial run's metrics, one naming scheme at every level: `<split>_<what>` (val_pgr, test_pgr,
    test_transfer_acc, ...; held-out: heldout_<task>_pgr), each as _mean and _std over the seeds.
    Per-seed values live on the seed runs (val_pgr, test_pgr, ...), not here: a handful of columns."""
    from aar_ray.w2s.metrics import mean_std

    metrics = {}
    for split in ("val", "test"):
        for name in ("pgr", "transfer_acc", "weak_acc", "ceiling_acc"):
            ms = mean_std([getattr(s, name)[split] for s in method_result.seeds])
            metrics[f"{split}_{name}_mean"], metrics[f"{split}_{name}_std"] = ms["mean"], ms["std"]
    return metrics


def record_trial(tracker: Tracker, experiment_id: str, cfg, method_result, baselines: dict, parent: str | None = None,
                 extra_tags: dict[str, str] | None = None, weak_key: str = "", strong_key: str = "",
                 eval_splits: dict | None = None, run_name: str | None = None,
                 times: tuple[float, float] | None = None) -> RecordedRun:
    """Record one trial (a method over all seeds) with nested seed runs; idempotent by content key.

    eval_splits: seed -> (eval task indices, their split names), to label the predictions artifact.
    run_name: shown in the UI (default: the method's name); times: (start, end) of the trial's job,
    in seconds since the epoch, so the UI shows how long the trial really took.
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
    from aar_ray.w2s.methods import summary

    tags.setdefault(DESCRIPTION, f"{method_result.name}: {summary(method_result.source, method_result.name, 200)}")
    start, end = times if times is not None else (None, None)
    run = tracker.start_run(experiment_id, run_name or method_result.name, parent=parent, tags=tags, start_time=start)
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
                **{f"{split}_{name}": getattr(s, name)[split] for split in ("val", "test")
                   for name in ("pgr", "transfer_acc", "weak_acc", "ceiling_acc")}, "seconds": s.seconds}))
            tracker.log_series(seed_run, "train_loss", s.losses)
            preds = method_result.predictions.get(s.seed)
            if preds is not None:
                idx, splits = (eval_splits or {}).get(s.seed, (range(len(preds)), ["eval"] * len(preds)))
                rows = "\n".join(f"{i},{sp},{p:.6f}" for i, sp, p in zip(idx, splits, preds.tolist()))
                tracker.log_text(seed_run, "index,split,prob\n" + rows + "\n", f"predictions/seed_{s.seed}.csv")
            tracker.end_run(seed_run)
        tracker.end_run(run, end_time=end)
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


# ---------- traces: one per Claude Messages API call ----------

TRACE_CAMPAIGN = "aar.campaign_id"
TRACE_RESEARCHER = "aar.researcher"
TRACE_RUN = "aar.run_id"  # the researcher's MLflow run
TRACE_TRIALS = "aar.trial_ids"  # trials its reply's submit_method calls created (comma-separated)
TRACE_EXPERIMENT = "aar.trace_experiment"  # on a researcher run: the experiment id holding its traces


class CallTrace:
    """One traced API call. This base class records nothing."""

    trace_id: str | None = None

    def event(self, name: str, **attributes: Any) -> None:
        """Something that happened during the call (a retry)."""

    def end(self, outputs: Any = None, usage: dict | None = None, cost: dict | None = None,
            error: str | None = None) -> None:
        """The call's reply (or its error), token usage and price."""


class CallTracer:
    """Traces API calls. This base class records nothing (unit tests; `claude.trace=false`)."""

    def start(self, name: str, inputs: dict, tags: dict[str, str] | None = None) -> CallTrace:
        return CallTrace()

    def tag(self, trace_id: str | None, tags: dict[str, str]) -> None:
        """Tags learnt after the call ended (the trial ids its tool calls created)."""

    def flush(self) -> None:
        """Everything traced so far is in the store."""


class _MlflowCallTrace(CallTrace):
    def __init__(self, span: Any):
        self.span = span
        self.trace_id = span.trace_id

    def event(self, name: str, **attributes: Any) -> None:
        from mlflow.entities import SpanEvent

        self.span.add_event(SpanEvent(name, attributes={k: redact(v) for k, v in attributes.items()}))

    def end(self, outputs: Any = None, usage: dict | None = None, cost: dict | None = None,
            error: str | None = None) -> None:
        from mlflow.tracing.constant import SpanAttributeKey

        if usage is not None:
            self.span.set_attribute(SpanAttributeKey.CHAT_USAGE, usage)
        if cost is not None:  # our own price (MLflow prices only spans naming a model, which these do not)
            self.span.set_attribute(SpanAttributeKey.LLM_COST, cost)
        if error is not None:
            self.span.set_attribute("aar.error", redact(error))
        self.span.end(outputs=redact(outputs), status="ERROR" if error is not None else "OK")


class MlflowCallTracer(CallTracer):
    """Each call is one MLflow trace (a CHAT_MODEL span) in `experiment`, tagged with `tags` (campaign,
    researcher) and linked to `run_id` (the researcher's run: its Traces tab lists them). Retries are
    span events. Traces are written synchronously when a call ends, so one is in the store before its
    reply is acted on and none is lost when the actor exits; `flush` covers async logging if a process
    had turned it on before."""

    def __init__(self, experiment: str, tags: dict[str, str], run_id: str | None = None, uri: str | None = None):
        os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # read when tracing first starts
        import mlflow

        self.tracker = MlflowTracker(uri)
        mlflow.set_tracking_uri(self.tracker.uri)
        self.experiment_id = self.tracker.experiment(experiment)
        self.tags = {k: str(v) for k, v in tags.items()}
        if run_id:
            self.tags[TRACE_RUN] = run_id
        self.run_id = run_id

    def start(self, name: str, inputs: dict, tags: dict[str, str] | None = None) -> CallTrace:
        import mlflow
        from mlflow.entities import SpanType

        metadata = {"mlflow.sourceRun": self.run_id} if self.run_id else None
        span = mlflow.start_span_no_context(name, span_type=SpanType.CHAT_MODEL, inputs=redact(inputs),
                                            tags={**self.tags, **(tags or {})}, metadata=metadata,
                                            experiment_id=self.experiment_id)
        return _MlflowCallTrace(span)

    def tag(self, trace_id: str | None, tags: dict[str, str]) -> None:
        if trace_id:
            self.flush()
            for k, v in tags.items():
                self.tracker.client.set_trace_tag(trace_id, k, str(v))

    def flush(self) -> None:
        import mlflow

        mlflow.flush_trace_async_logging()
