"""Where results live: one lasting results home per installation or cluster, resolved on the driver
before anything is written, never inside Ray's temporary copy of an uploaded working directory.

    home()        $AAR_HOME; else the checkout, when the code runs from one; else (a `ray job submit`
                  job, whose code is Ray's temporary copy) ~/.aar on the driver's node
    runs_dir()    campaign directories (config, forum, ledger, transcripts, report)
    mlflow_dir()  the default MLflow store (sqlite + artifacts), used when MLFLOW_TRACKING_URI is unset
    cache_dir()   pretrained bases, baselines, the method runtime, the world's secret seed

Every variable the harness reads is in ENV_VARS (the README's table says the same) and is checked
at start by `check_env`, so a bad value fails with its name instead of deep inside Ray.
"""
from __future__ import annotations

import os
from pathlib import Path

from aar_ray.config import PROJECT_ROOT, ConfigError

ENV_VARS: dict[str, str] = {
    "AAR_HOME": "the results home: runs/, .mlflow/ and .aar_cache/ go under it (default: the checkout; "
                "~/.aar for a `ray job submit` job)",
    "AAR_RUNS_DIR": "campaign directories (default: $AAR_HOME/runs)",
    "AAR_MLFLOW_DIR": "the default MLflow store, when MLFLOW_TRACKING_URI is unset (default: $AAR_HOME/.mlflow)",
    "AAR_CACHE_DIR": "pretrained bases, baselines, the method runtime and the world's secret seed "
                     "(default: $AAR_HOME/.aar_cache)",
    "AAR_RAY_TMPDIR": "Ray's temp dir for a local Ray the driver starts (default: Ray's /tmp/ray); at most "
                      "MAX_RAY_TMPDIR characters, since Ray's socket paths must fit in 107 bytes",
    "AAR_TRACKING": "'off' disables MLflow (pure unit tests and benchmarks only)",
    "AAR_GIT_SHA": "the git SHA recorded on every run, when the code is not a git checkout (set by `aar submit`)",
    "AAR_GIT_DIRTY": "'true' when that checkout had uncommitted changes (set by `aar submit`)",
}
MAX_RAY_TMPDIR = 40  # Ray appends ~/session_<date>_<time>_<pid>/sockets/plasma_store (~66 bytes) to it
UPLOAD_MARK = "runtime_resources/working_dir_files"  # where Ray unpacks an uploaded working dir


def in_ray_upload(path: Path = PROJECT_ROOT) -> bool:
    """Whether `path` is Ray's temporary copy of an uploaded working dir (deleted when Ray cleans up)."""
    return UPLOAD_MARK in str(path)


def home() -> Path:
    if os.environ.get("AAR_HOME"):
        return Path(os.environ["AAR_HOME"]).expanduser().resolve()
    if not in_ray_upload():
        return PROJECT_ROOT
    return Path.home() / ".aar"


def runs_dir() -> Path:
    return Path(os.environ.get("AAR_RUNS_DIR") or home() / "runs")


def mlflow_dir() -> Path:
    return Path(os.environ.get("AAR_MLFLOW_DIR") or home() / ".mlflow")


def cache_dir() -> Path:
    return Path(os.environ.get("AAR_CACHE_DIR") or home() / ".aar_cache")


def check_env() -> None:
    """Refuse bad AAR_* values with a message naming the variable; warn about a results home that
    would not last."""
    tmp = os.environ.get("AAR_RAY_TMPDIR", "")
    if len(tmp) > MAX_RAY_TMPDIR:
        raise ConfigError(f"AAR_RAY_TMPDIR: {tmp!r} is {len(tmp)} characters; Ray's socket paths under it must fit "
                          f"in 107 bytes, so use a path of at most {MAX_RAY_TMPDIR} (e.g. /tmp/aar-ray)")
    tracking = os.environ.get("AAR_TRACKING", "")
    if tracking and tracking.lower() not in ("on", "off", "0", "1", "true", "false"):
        raise ConfigError(f"AAR_TRACKING: must be 'on' or 'off', got {tracking!r}")
    for name in ("AAR_HOME", "AAR_RUNS_DIR", "AAR_MLFLOW_DIR", "AAR_CACHE_DIR"):
        value = os.environ.get(name)
        if value and in_ray_upload(Path(value).expanduser().resolve()):
            raise ConfigError(f"{name}: {value} is inside Ray's temporary copy of the working dir, which Ray deletes; "
                              "point it at a lasting directory")
    dirty = os.environ.get("AAR_GIT_DIRTY", "")
    if dirty and dirty not in ("true", "false"):
        raise ConfigError(f"AAR_GIT_DIRTY: must be 'true' or 'false', got {dirty!r}")
