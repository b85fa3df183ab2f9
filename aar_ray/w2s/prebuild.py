"""Pretrain the tiny bases that several experiments need, side by side in child processes.

A tiny base's pretraining step is a few small matmuls and many smaller ops: on a 2-core machine one
process runs the strong base of the math task at 109 ms/step on 2 threads against 121 on 1 (intra-op
threads barely help at these sizes), while two 1-thread processes side by side run at ~137 ms/step
each. So several missing bases (the held-out tasks' weak and strong, a benchmark's worlds) finish
sooner as one process per core than one after another. Each child builds one base into the shared
content-keyed cache (atomically, `cache.building`), exactly as `models.load_base` would in process;
everything else then reads it from the cache.

A child costs ~5 s of CPU before it trains (importing torch and transformers), so only bases whose
pretraining is estimated at MIN_CHILD_S or more go to children, and only when there are two or more
of them: small bases (a test's, a small campaign's) are built in process as before. Only CPU builds
go through here; on a GPU the bases are built in process.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aar_ray.config import W2SConfig, loads_written, to_yaml

ROLES = ("weak", "strong")
# A pretraining step's estimated seconds on 2 cores: a fixed part (many small ops) plus a part per unit of
# batch x sequence x layers x d_model^2. Fitted to the full-size bases measured here (strong facts 800
# steps 61 s, strong math 87 s; weak facts 600 steps ~7 s); good to a factor of ~1.5, which is all the
# choice below needs.
STEP_S, UNIT_S = 8e-3, 1.2e-9
MIN_CHILD_S = 5.0


@dataclasses.dataclass(frozen=True)
class Job:
    """One missing base: which experiment's, which role, and a rough cost to schedule the longest first."""

    cfg: W2SConfig  # its world's seed resolved (the secret one too: it travels on the child's stdin only)
    role: str
    key: str
    est_s: float  # estimated pretraining time in process (STEP_S, UNIT_S)
    public: bool

    @property
    def label(self) -> str:
        world = f"world {self.cfg.world.seed}" if self.public else "the secret world"  # never print a secret seed
        return f"{self.role} base of task {self.cfg.task!r} on {world}"


def missing(cfgs: list[W2SConfig]) -> list[Job]:
    """The tiny bases these experiments need on the CPU that the cache does not hold yet, once each."""
    from aar_ray.w2s import engine, models
    from aar_ray.w2s.student import resolve_device
    from aar_ray.w2s.tasks import build_task

    jobs: dict[str, Job] = {}
    for cfg in cfgs:
        roles = [r for r in ROLES if getattr(cfg, r).kind == "tiny"]
        if not roles or resolve_device(cfg.device).type != "cpu":
            continue
        cfg, public = engine.resolve_world(cfg)
        task = build_task(cfg)
        for role in roles:
            m = getattr(cfg, role)
            if role not in task.corpus:
                continue  # load_base says why, in process
            key = models.base_key(m, task, role)
            if key not in jobs and not models.is_built(key):
                seq = task.corpus[role].shape[1]
                est_s = m.steps_for(task.name) * (STEP_S + UNIT_S * m.pretrain_batch * seq * m.n_layer * m.d_model ** 2)
                jobs[key] = Job(cfg, role, key, est_s, public)
    return sorted(jobs.values(), key=lambda j: -j.est_s)  # the longest first


def prebuild(cfgs: list[W2SConfig], workers: int | None = None, log=print, min_s: float = MIN_CHILD_S) -> list[str]:
    """Pretrain the missing tiny bases of `cfgs` estimated at `min_s` or more, when there are two or more,
    in up to `workers` child processes (default: one per core), each on cores // workers threads; returns
    the keys built (the rest are left to the in-process build). Raises RuntimeError naming the base and
    the child's error if one fails (the others still land in the cache)."""
    jobs = [j for j in missing(cfgs) if j.est_s >= min_s]
    if len(jobs) < 2:
        return []
    cores = len(os.sched_getaffinity(0))
    workers = max(1, min(workers or cores, len(jobs)))
    threads = max(1, cores // workers)
    log(f"[aar] pretraining {len(jobs)} base(s) in {workers} process(es) of {threads} thread(s) each", flush=True)
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def build(job: Job) -> str | None:
        proc = subprocess.run([sys.executable, "-m", "aar_ray.w2s.prebuild", job.role, str(threads), str(os.getpid())],
                              input=to_yaml(job.cfg), capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return f"{job.label}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        log(f"[aar] pretrained the {job.label} ({time.time() - t0:.0f}s)", flush=True)
        return None

    with ThreadPoolExecutor(workers) as pool:
        errors = [e for e in pool.map(build, jobs) if e]
    if errors:
        raise RuntimeError("pretraining failed for " + "; ".join(errors))
    return [j.key for j in jobs]


def _child(role: str, threads: int, parent: int) -> None:
    """Build one base: the config on stdin (to_yaml's text; it may hold a secret world's seed, so never
    the command line), then exactly what load_base does in process."""
    import signal

    import torch

    from aar_ray.sandbox.launch import die_with
    from aar_ray.w2s import models
    from aar_ray.w2s.tasks import build_task

    if not die_with(parent, signal.SIGKILL):  # a campaign killed meanwhile leaves no pretraining behind
        return
    torch.set_num_threads(threads)
    cfg = loads_written(W2SConfig, sys.stdin.read())
    models.load_base(getattr(cfg, role), torch.device("cpu"), build_task(cfg), role, progress=False)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
