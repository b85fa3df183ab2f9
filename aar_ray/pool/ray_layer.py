"""The only module of the pool that calls Ray: start, wait for, and kill work; classify failures.

Two ways to run a job:
- Ray tasks, for CPU jobs and for GPU jobs with `fresh_process=True`. Ray's own retries are off
  (max_retries=0) so that the pool counts attempts and charges GPU-seconds for each one.
- `GpuWorker` actors, for the other GPU jobs. Ray gives a GPU task a fresh process each time
  (max_calls=1) so CUDA state cannot leak; that costs ~0.5 s per job on a small box and kept 8 logical
  GPUs 10% busy with half-second jobs. An actor reserves its GPUs once, Ray sets its
  CUDA_VISIBLE_DEVICES once, and it runs jobs back to back. Reusing a *task* worker instead
  (max_calls>1) would be wrong on real GPUs: a process that initialised CUDA cannot move to the
  GPU id Ray hands its next task.
"""
from __future__ import annotations

import gc
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

import ray
import ray.exceptions as rex

from aar_ray.pool.spec import ErrorKind, JobSpec


@dataclass(frozen=True)
class RunOutcome:
    """What a worker reports for one run. User exceptions come back as text, never as objects,
    so a class the driver cannot import still reaches the owner with its traceback."""

    ok: bool
    value: Any
    error: str
    traceback: str
    node_id: str
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class RayFailure:
    """The run produced no RunOutcome: Ray reported an error instead."""

    kind: ErrorKind
    message: str
    traceback: str = ""


Fetched = Union[RunOutcome, RayFailure]


@dataclass(frozen=True)
class WorkerShape:
    """Resources a GpuWorker actor reserves; jobs reuse a worker only of their exact shape."""

    num_gpus: float
    num_cpus: float
    memory_bytes: Optional[int]

    @staticmethod
    def of(spec: JobSpec) -> "WorkerShape":
        return WorkerShape(spec.num_gpus, spec.cpus, spec.memory_bytes)


def _invoke(fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> RunOutcome:
    node_id = ray.get_runtime_context().get_node_id()
    start = time.time()
    try:
        value = fn(*args, **kwargs)
    except Exception as e:  # the job's own failure: report it, keep the worker
        return RunOutcome(False, None, f"{type(e).__name__}: {e}", traceback.format_exc(),
                          node_id, start, time.time())
    return RunOutcome(True, value, "", "", node_id, start, time.time())


def _release_cuda_cache() -> None:
    """Hand cached CUDA blocks back between jobs on a long-lived worker; no-op without torch+CUDA
    (a full gc costs milliseconds, so only pay it when there is GPU memory to free)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


@ray.remote(max_retries=0)
def _run_task(fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> RunOutcome:
    return _invoke(fn, args, kwargs)


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class GpuWorker:
    """Holds its GPU reservation for life and runs one job at a time on it."""

    def ready(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> RunOutcome:
        try:
            return _invoke(fn, args, kwargs)
        finally:
            _release_cuda_cache()


def _ray_options(num_gpus: float, num_cpus: float, memory_bytes: Optional[int]) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": num_cpus}
    if memory_bytes is not None:
        opts["memory"] = memory_bytes
    return opts


def classify(err: BaseException) -> RayFailure:
    """Map a Ray error from ray.get to what the pool should do about it."""
    if isinstance(err, (rex.TaskUnschedulableError, rex.ActorUnschedulableError)):
        return RayFailure(ErrorKind.UNSCHEDULABLE, str(err))
    if isinstance(err, (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError,
                        rex.ObjectLostError, rex.LocalRayletDiedError, rex.OutOfMemoryError,
                        rex.TaskCancelledError, rex.RaySystemError)):
        return RayFailure(ErrorKind.WORKER_LOST, f"{type(err).__name__}: {err}")
    if isinstance(err, rex.RayTaskError):
        # Our wrapper catches the job's exceptions, so this is Ray failing around it, e.g. an
        # argument or result that does not unpickle. The job itself would fail the same way again.
        return RayFailure(ErrorKind.SYSTEM, f"{type(err).__name__}", str(err))
    return RayFailure(ErrorKind.SYSTEM, f"{type(err).__name__}: {err}")


class RayBackend:
    """Thin, stateless wrapper over the Ray calls the pool makes."""

    def cluster(self) -> tuple[float, float, frozenset[str]]:
        """(GPUs on live nodes, CPUs on live nodes, ids of live nodes)."""
        alive = [n for n in ray.nodes() if n.get("Alive")]
        gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in alive)
        cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in alive)
        return gpus, cpus, frozenset(n["NodeID"] for n in alive)

    def start_task(self, spec: JobSpec) -> ray.ObjectRef:
        opts = _ray_options(spec.num_gpus, spec.cpus, spec.memory_bytes)
        return _run_task.options(**opts).remote(spec.fn, spec.args, dict(spec.kwargs))

    def start_worker(self, shape: WorkerShape) -> tuple[ray.actor.ActorHandle, ray.ObjectRef]:
        actor = GpuWorker.options(**_ray_options(shape.num_gpus, shape.num_cpus, shape.memory_bytes)).remote()
        return actor, actor.ready.remote()

    def run_on_worker(self, actor: ray.actor.ActorHandle, spec: JobSpec) -> ray.ObjectRef:
        return actor.run.remote(spec.fn, spec.args, dict(spec.kwargs))

    def kill_worker(self, actor: ray.actor.ActorHandle) -> None:
        # SIGKILLs the process: a stuck job cannot ignore it, and Ray frees the GPU right after.
        ray.kill(actor, no_restart=True)

    def cancel_task(self, ref: ray.ObjectRef) -> None:
        try:
            ray.cancel(ref, force=True)
        except (ValueError, rex.RayError):
            pass  # it finished in the meantime; nothing holds the GPU any more

    def wait(self, refs: list[ray.ObjectRef], timeout_s: float) -> list[ray.ObjectRef]:
        """Refs that are ready: blocks until at least one is, or timeout_s passes."""
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout_s, fetch_local=False)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            ready += more
        return ready

    def fetch(self, ref: ray.ObjectRef) -> Fetched:
        try:
            return ray.get(ref)
        except Exception as err:  # every Ray error becomes data; the policy decides
            return classify(err)

    def fetch_ready(self, ref: ray.ObjectRef) -> Union[str, RayFailure]:
        """The node id a GpuWorker reported when it came up, or why it did not."""
        try:
            return ray.get(ref)
        except Exception as err:
            return classify(err)
