"""Shared pieces of the task-pool tests: job functions, Ray fixtures' plumbing, the cluster script."""
from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import ray
import ray.cloudpickle

ROOT = Path(__file__).resolve().parent.parent

# Ray workers do not have tests/ on sys.path: ship these functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def init_local_ray(num_gpus: int, num_cpus: int = 2) -> None:
    """A private single-node Ray with logical GPUs; never attaches to someone else's cluster."""
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             object_store_memory=100 * 1024 * 1024, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="ERROR")


def load_cluster_script() -> ModuleType:
    """cluster/local.py is a script, not a package module; load it by path."""
    spec = importlib.util.spec_from_file_location("aar_cluster_local", ROOT / "cluster" / "local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def wait_until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


# ---- job functions (run on Ray workers) ------------------------------------------------------

def sleep_and_report(seconds: float, tag: Any = None) -> dict:
    """Sleeps, then says where and on which GPUs it ran, with worker-side timestamps."""
    start = time.time()
    time.sleep(seconds)
    return {"tag": tag, "start": start, "end": time.time(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def append_line_and_return(path: str, value: Any, seconds: float = 0.0) -> Any:
    """Counts its own executions in a file, so tests can tell 'ran once' from 'delivered once'."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    time.sleep(seconds)
    return value


def crash_worker_first_time(marker: str, value: Any) -> Any:
    """SIGKILLs its own worker process on the first attempt, as a dying worker would."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def always_crash_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def count_and_raise(path: str) -> None:
    with open(path, "a") as f:
        f.write("x\n")
    raise RuntimeError("still broken")


def mark_node_then_sleep(marker: str, seconds: float) -> dict:
    """Writes node id to marker as it starts (so a test can kill that node), then sleeps."""
    node_id = ray.get_runtime_context().get_node_id()
    with open(marker, "a") as f:
        f.write(node_id + "\n")
    time.sleep(seconds)
    return {"node_id": node_id}


def lines(path: str) -> list[str]:
    return Path(path).read_text().split() if Path(path).exists() else []


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def ray_processes_under(path: str) -> list[int]:
    """PIDs whose command line mentions path (for 'no Ray process left behind' checks)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def node_name_of(node_id: str) -> Optional[str]:
    return next((n["NodeName"] for n in ray.nodes() if n["NodeID"] == node_id), None)
