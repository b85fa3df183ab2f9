"""Pretrain the tiny bases that several experiments need, side by side in child processes.

A tiny base's pretraining step is a few small matmuls and many smaller ops: on a 2-core machine one
process runs the strong base of the math task at 109 ms/step on 2 threads against 121 on 1 (intra-op
threads barely help at these sizes), while two 1-thread processes side by side run at ~137 ms/step
each. So several missing bases (the held-out tasks' weak and strong, a benchmark's worlds) finish
sooner as one process per core than one after another. Each child builds one base into the shared
content-keyed cache (atomically, `cache.building`), exactly as `models.load_base` would in process;
everything else then reads it from the cache.

Only CPU builds go through here; on a GPU the bases are built in process as before.
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


@dataclasses.dataclass(frozen=True)
class Job:
    """One missing base: which experiment's, which role, and a rough cost to schedule the longest first."""

    cfg: W2SConfig  # its world's seed resolved (the secret one too: it travels on the child's stdin only)
    role: str
    key: str
    cost: float
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
                cost = float(m.pretrain_steps * m.pretrain_batch * seq * m.n_layer * m.d_model ** 2)
                jobs[key] = Job(cfg, role, key, cost, public)
    return sorted(jobs.values(), key=lambda j: -j.cost)


def prebuild(cfgs: list[W2SConfig], workers: int | None = None, log=print) -> list[str]:
    """Pretrain every missing tiny base of `cfgs` in up to `workers` child processes (default: one per
    core), each on cores // workers threads; returns the keys built. Raises RuntimeError naming the base
    and the child's error if one fails (the others still land in the cache)."""
    jobs = missing(cfgs)
    if not jobs:
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
