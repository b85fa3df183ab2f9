"""How trials end, on a real local Ray.

Whatever ends a trial, every process it started is gone within seconds: the sandbox's own timeout,
the pool's timeout (the driver kills the worker), a TaskPool cancel, and a SIGKILL of the Ray worker
running it. The method forks a child that sleeps forever and double-forks a setsid daemon, under
bubblewrap and without it (the KubeRay pod's sandbox); the test looks for their names in /proc.
`ray job stop` ends a job by ending its driver: a SIGKILLed second driver's trials go the same way. A
dead node ends a trial as a killed worker does (the worker process dies, and the launcher's
parent-death signal does the rest).

A harness fault (the sandbox launcher failing, injected through $AAR_FAULT_DIR) is retried and
recorded once; a method's own failure is final.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pool_helpers as H  # noqa: E402
from adversarial import support  # noqa: E402

from aar_ray.config import ProbeConfig  # noqa: E402
from aar_ray.pool import JobFailed, JobSpec, JobStatus, TaskPool  # noqa: E402
from aar_ray.sandbox import SandboxLimits, request_for, run_sandboxed  # noqa: E402
from aar_ray.campaign.services import infra_fault, outcome_of_failure  # noqa: E402
from aar_ray.pool import MemoryLedger  # noqa: E402
from aar_ray.sandbox.contract import TrialStatus  # noqa: E402
from aar_ray.sandbox.runner import FAULT_DIR_ENV  # noqa: E402
from aar_ray.sandbox.trial import run_trial  # noqa: E402

FOREVER = '''
import ctypes, os, time
import torch


def _name(name):
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: what the test looks for


def run(ctx):
    if os.fork() == 0:                      # a child that sleeps forever
        _name("__TAG__c")
        while True:
            time.sleep(1)
    if os.fork() == 0:                      # a setsid daemon, double-forked
        os.setsid()
        if os.fork() == 0:
            _name("__TAG__d")
            while True:
                time.sleep(1)
        os._exit(0)
    _name("__TAG__m")
    while True:
        time.sleep(1)
'''
MODES = {"bwrap": SandboxLimits(), "direct": SandboxLimits(use_bwrap=False)}  # direct: a pod's sandbox
GONE_WITHIN_S = 5.0


def alive(tag: str) -> dict[int, str]:
    """pid -> name of the live (not zombie) processes whose name starts with `tag`."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            name = (d / "comm").read_text().strip()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if name.startswith(tag) and state != "Z":
            found[int(d.name)] = name
    return found


def started(tag: str, timeout_s: float = 120.0) -> dict[int, str]:
    """Wait until the method, its child and its daemon are all running."""
    H.wait_until(lambda: {n[-1] for n in alive(tag).values()} == {"m", "c", "d"}, timeout_s, f"{tag} to start")
    return alive(tag)


def assert_gone(tag: str, pids: dict[int, str]) -> None:
    t0 = time.monotonic()
    while alive(tag) and time.monotonic() - t0 < GONE_WITHIN_S:
        time.sleep(0.1)
    assert not alive(tag), f"survivors {alive(tag)} of {pids}, {GONE_WITHIN_S} s after the trial ended"


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        out.append(pid)
    return out


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """(source, request) factory: the FOREVER method under a fresh tag, on a tiny request."""
    d = tmp_path_factory.mktemp("lifecycle")
    os.chmod(d, 0o755)
    student = d / "student"
    student.mkdir()  # never loaded: the method does not touch the model

    def make(seed_timeout_s: float = 600.0) -> tuple[str, str, object]:
        tag = "ao" + os.urandom(3).hex()
        req = request_for(student, {0: support.make_inputs()}, probe=ProbeConfig(), seed_timeout_s=seed_timeout_s)
        return tag, FOREVER.replace("__TAG__", tag), req

    return make


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The fault-injection folder the Ray workers see (see runner._injected_fault)."""
    d = tmp_path_factory.mktemp("faults")
    os.environ[FAULT_DIR_ENV] = str(d)  # before ray.init: the workers inherit it
    yield d
    os.environ.pop(FAULT_DIR_ENV, None)


@pytest.fixture(scope="module")
def local_ray(faults):
    H.init_local_ray(num_gpus=1)
    yield
    ray.shutdown()


@pytest.mark.parametrize("mode", MODES)
def test_the_sandbox_timeout_kills_every_process(trial, tmp_path, mode):
    tag, source, req = trial(seed_timeout_s=15.0)
    method = tmp_path / "forever.py"
    method.write_text(source)
    out: list = []
    t = threading.Thread(target=lambda: out.append(run_sandboxed(req, method, limits=MODES[mode], check_source=False)))
    t.start()
    pids = started(tag)
    t.join(timeout=120)
    assert out and out[0].status is TrialStatus.TIMEOUT, out
    assert not alive(tag), f"the sandbox reported a timeout with {alive(tag)} of {pids} still running"


def _job(source: str, req, mode: str, **kw) -> JobSpec:
    return JobSpec(fn=run_trial, args=(source, req, MODES[mode], False), owner="t", max_retries=0, **kw)


def _cancel(h, pids: dict) -> None:
    assert h.cancel()


def _kill_worker(h, pids: dict) -> None:
    """SIGKILL the Ray worker running the trial: the launcher anchor's parent."""
    main = next(p for p, n in pids.items() if n.endswith("m"))
    anchor = [p for p in ancestors(main) if b"aar_ray.sandbox.launch" in Path(f"/proc/{p}/cmdline").read_bytes()][-1]
    worker = ancestors(anchor)[0]
    assert b"ray" in Path(f"/proc/{worker}/cmdline").read_bytes().lower()
    os.kill(worker, signal.SIGKILL)


ENDS = [  # (job options, what ends it, the job's status); the pool's own limit is far below the sandbox's
    pytest.param({"timeout_s": 25.0, "num_cpus": 0.5}, None, JobStatus.TIMEOUT, id="pool-timeout",
                 marks=pytest.mark.slow),
    pytest.param({"num_gpus": 1}, _cancel, JobStatus.CANCELLED, id="cancel-gpu-worker"),  # kills the actor
    pytest.param({"num_cpus": 0.5}, _kill_worker, JobStatus.FAILED, id="worker-sigkill"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("opts, stop, status", ENDS)
def test_however_the_pool_ends_a_trial_every_process_is_gone(local_ray, trial, opts, stop, status, mode):
    tag, source, req = trial()
    with TaskPool() as pool:
        h = pool.submit(_job(source, req, mode, **opts))
        pids = started(tag)
        if stop is not None:
            stop(h, pids)
        with pytest.raises(JobFailed):
            h.result(timeout=180)
        assert h.status is status
        assert_gone(tag, pids)


DRIVER = """
import sys, time
import ray
sys.path.insert(0, {tests!r})
from adversarial import support
from aar_ray.config import ProbeConfig
from aar_ray.pool import JobSpec, TaskPool
from aar_ray.sandbox import SandboxLimits, request_for
from aar_ray.sandbox.trial import run_trial

ray.init(address={address!r}, log_to_driver=False)
request = request_for({student!r}, {{0: support.make_inputs()}}, probe=ProbeConfig(), seed_timeout_s=600)
TaskPool().submit(JobSpec(fn=run_trial, args=({source!r}, request, SandboxLimits(use_bwrap={bwrap}), False),
                          owner="t", num_cpus=0.5))
time.sleep(3600)
"""


@pytest.mark.parametrize("mode", MODES)
def test_when_the_driver_dies_every_process_is_gone(local_ray, trial, tmp_path, mode):
    """`ray job stop` ends a job by ending its driver (SIGTERM, then SIGKILL): Ray then kills the job's
    workers, and the trials' launchers go with them. Here a second driver on the same Ray is SIGKILLed."""
    import subprocess

    tag, source, req = trial()
    script = DRIVER.format(tests=str(Path(__file__).resolve().parent), address=ray.get_runtime_context().gcs_address,
                           student=req.student.path, source=source, bwrap=mode == "bwrap")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids = started(tag)
    finally:
        driver.kill()
        driver.wait(timeout=60)
    assert_gone(tag, pids)  # Ray notices the dead driver and kills its workers; the launchers do the rest


HALF = "import torch\n\ndef run(ctx):\n    return torch.full((len(ctx.eval_ids),), 0.5)\n"
BROKEN = "def run(ctx):\n    raise ValueError('the method is broken')\n"


def test_a_harness_fault_is_retried_and_recorded_once(local_ray, trial, faults):
    _, _, req = trial()
    (faults / "launch-once").touch()  # the next launch fails: the launcher gets no command
    ledger = MemoryLedger()
    with TaskPool(ledger=ledger) as pool:
        spec = JobSpec(fn=run_trial, args=(HALF, req, SandboxLimits()), owner="t", key="k1", max_retries=2,
                       num_cpus=0.5, infra_fault=infra_fault)
        first = pool.submit(spec)
        out = first.result(timeout=300)
        assert out.status is TrialStatus.OK and not (faults / "launch-once").exists()
        assert [j.attempts for j in pool.jobs()] == [2] and len(ledger) == 1
        assert pool.submit(spec).job_id == first.job_id and len(ledger) == 1  # the key is not run again
        # past its retries, a harness fault is the trial's outcome (its own reason), never a result
        (faults / "launch-once").touch()
        h = pool.submit(JobSpec(fn=run_trial, args=(HALF, req, SandboxLimits()), owner="t", key="k2",
                                max_retries=0, num_cpus=0.5, infra_fault=infra_fault))
        with pytest.raises(JobFailed) as err:
            h.result(timeout=300)
        failed = outcome_of_failure(err.value)
        assert failed.status is TrialStatus.SANDBOX_ERROR and "sandbox setup failed" in failed.reason, failed
        assert len(ledger) == 1


def test_a_method_failure_is_final(local_ray, trial):
    _, _, req = trial()
    ledger = MemoryLedger()
    with TaskPool(ledger=ledger) as pool:
        h = pool.submit(JobSpec(fn=run_trial, args=(BROKEN, req, SandboxLimits()), owner="t", key="b", max_retries=2,
                                num_cpus=0.5, infra_fault=infra_fault))
        out = h.result(timeout=300)
        assert out.status is TrialStatus.FAILED and "the method is broken" in out.reason
        assert h.info().attempts == 1 and len(ledger) == 1


def test_a_worker_without_a_required_layer_never_returns_a_result(local_ray, trial):
    """The campaign requires cgroups; this worker's sandbox cannot apply them (use_cgroup off stands in
    for a worker without root): every attempt is a sandbox_error before any child starts, none is a result."""
    _, _, req = trial()
    ledger = MemoryLedger()
    with TaskPool(ledger=ledger) as pool:
        h = pool.submit(JobSpec(fn=run_trial, args=(HALF, req, SandboxLimits(use_cgroup=False, require=("cgroup",))),
                                owner="t", key="c", max_retries=1, num_cpus=0.5, infra_fault=infra_fault))
        with pytest.raises(JobFailed) as err:
            h.result(timeout=300)
        out = outcome_of_failure(err.value)
        assert out.status is TrialStatus.SANDBOX_ERROR and "required sandbox layers are unavailable here: ['cgroup']" \
            in out.reason, out
        assert h.info().attempts == 2 and len(ledger) == 0
