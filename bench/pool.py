"""Benchmark the task pool against raw Ray and against one-GPU-per-researcher.

    python bench/pool.py            # ~3.5 min on 2 cores; writes bench/results/pool.json

Three measurements, all on one private Ray instance with 8 logical GPUs, in this one run:
- overhead: N no-op one-GPU jobs through the pool vs the same N as raw Ray GPU tasks (Ray's default,
  a fresh process per GPU task), also vs raw calls on 8 long-lived GPU actors (the mechanism the pool
  uses; pure pool overhead) and, for CPU no-ops, vs raw CPU tasks;
- utilization: 9 simulated researchers loop think -> submit a batch of seeds -> read results, for a
  fixed window. Pool: they keep thinking while jobs run (up to 2 batches outstanding), first alone, then
  with a backfill producer keeping idle GPUs on one-seed pieces the campaign will want anyway (held-out
  evaluations and shuffled-teacher audits of the leaders, full-fidelity reruns of promising quick
  trials), below every researcher job; then the final stage asks for the leaders' held-out pieces and
  counts those backfill already ran. Baseline: each runs its seeds one at a time on its own fixed GPU
  (researchers 0 and 8 share GPU 0, as round-robin CUDA_VISIBLE_DEVICES would). GPU-busy fraction
  from the pool's job start/end times (baseline: worker-side);
- fairness: 9 owners with different job lengths all backlogged; Jain's index of their GPU-seconds.
"""
from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import ray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aar_ray.pool import JobSpec, JobStatus, TaskPool, jain_index  # noqa: E402
from aar_ray.pool.ray_layer import GpuWorker, _run_task  # noqa: E402

GPUS = 8
RESEARCHERS = 9
WINDOW_S = 20.0  # each utilization scenario submits for this long
N_NOOP = 48  # raw GPU tasks start a process each (~0.5 s on 2 cores): keeps that leg ~25 s
N_NOOP_CPU = 100
SEED = 0
BACKFILL = "driver"  # the owner of backfill pieces, as in a campaign
TOP_K = 3  # leaders that get the final stage (held-out evaluations, audits), as scoring.top_k
FINAL_KINDS = ("heldout:math", "heldout:code", "audit:shuffled")
FINAL_SEEDS = 5  # harness seeds of a full-fidelity result: one backfill piece each
QUEUE_DEPTH = 2 * GPUS  # backfill pieces the producer keeps queued: enough for every GPU that frees up


def noop() -> None:
    return None


def sleep_job(seconds: float) -> tuple[float, float]:
    """A stand-in trial: holds its GPU for `seconds`; returns worker-side (start, end)."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---- overhead ----------------------------------------------------------------------------------

def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_overhead_pool(pool: TaskPool) -> dict:
    def through_pool(n: int, **res) -> None:
        handles = [pool.submit(JobSpec(fn=noop, owner=f"o{i % RESEARCHERS}", **res)) for i in range(n)]
        pool.wait(handles, num_returns=n)

    through_pool(GPUS, num_gpus=1)  # warm: start the 8 GPU worker actors
    pool_gpu = min(_timed(lambda: through_pool(N_NOOP, num_gpus=1)) for _ in range(3))
    through_pool(N_NOOP_CPU, num_cpus=0.01)  # warm Ray's CPU workers
    pool_cpu = min(_timed(lambda: through_pool(N_NOOP_CPU, num_cpus=0.01)) for _ in range(2))
    return {"pool_gpu": pool_gpu, "pool_cpu": pool_cpu}


def bench_overhead_raw() -> dict:
    """Raw Ray on the same instance; run after the pool has released its GPUs."""
    gpu_task = _run_task.options(num_gpus=1, num_cpus=0)
    cpu_task = _run_task.options(num_cpus=0.01)
    raw_gpu_tasks = _timed(lambda: ray.get([gpu_task.remote(noop, (), {}) for _ in range(N_NOOP)]))
    actors = [GpuWorker.options(num_gpus=1).remote() for _ in range(GPUS)]
    ray.get([a.ready.remote() for a in actors])
    raw_actors = min(_timed(lambda: ray.get([actors[i % GPUS].run.remote(noop, (), {}) for i in range(N_NOOP)]))
                     for _ in range(3))
    for a in actors:
        ray.kill(a)
    ray.get([cpu_task.remote(noop, (), {}) for _ in range(N_NOOP_CPU)])  # warm, as the pool's CPU leg was
    raw_cpu = min(_timed(lambda: ray.get([cpu_task.remote(noop, (), {}) for _ in range(N_NOOP_CPU)]))
                  for _ in range(2))
    return {"raw_gpu_tasks": raw_gpu_tasks, "raw_gpu_actors": raw_actors, "raw_cpu_tasks": raw_cpu}


def overhead_summary(t: dict) -> dict:
    return {
        "overhead_ratio": t["pool_gpu"] / t["raw_gpu_tasks"],
        "overhead_ratio_vs_raw_actors": t["pool_gpu"] / t["raw_gpu_actors"],
        "overhead_ratio_cpu": t["pool_cpu"] / t["raw_cpu_tasks"],
        "noop_ms": {k: 1e3 * v / (N_NOOP_CPU if k.endswith("cpu") or k == "raw_cpu_tasks" else N_NOOP)
                    for k, v in t.items()},
    }


# ---- utilization -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """One researcher's scripted behaviour, identical in both scenarios."""

    think_s: list[float]
    batches: list[list[float]]  # job durations per experiment (its seeds)


def make_plans(rng: random.Random) -> list[Plan]:
    plans = []
    for r in range(RESEARCHERS):
        seeds = (3, 5, 8)[r % 3]  # some researchers run bigger sweeps than others
        # Thinking takes about as long as an experiment's trials (minutes in AAR, seconds here).
        thinks = [rng.uniform(3.0, 9.0) for _ in range(200)]
        # Trials last 0.5-8 s, median ~2 s: a log-normal spread, like real fine-tuning runs.
        batches = [[min(8.0, max(0.5, rng.lognormvariate(0.7, 0.5))) for _ in range(seeds)] for _ in range(200)]
        plans.append(Plan(thinks, batches))
    return plans


@dataclass
class Record:
    owner: str
    submitted: float
    start: float
    end: float


def run_pool_researchers(plans: list[Plan], t0: float, pool: TaskPool, prefix: str = "r",
                         on_result: Optional[Callable[[str], None]] = None) -> None:
    """Owners are f"{prefix}{r}"; on_result gets the id of each experiment its researcher has read."""
    def researcher(r: int) -> None:
        outstanding: list[tuple[str, list]] = []
        for b, (think, batch) in enumerate(zip(plans[r].think_s, plans[r].batches)):
            time.sleep(think)
            if time.time() - t0 > WINDOW_S:
                return
            outstanding.append((f"{prefix}{r}-e{b}", [pool.submit(JobSpec(
                fn=sleep_job, args=(d,), owner=f"{prefix}{r}", num_gpus=1)) for d in batch]))
            # Read finished experiments; with more than 2 out, wait for the oldest (a researcher
            # only juggles so many experiments at once).
            while len(outstanding) > 2 or (outstanding and all(h.done() for h in outstanding[0][1])):
                experiment, oldest = outstanding.pop(0)
                pool.wait(oldest, num_returns=len(oldest))
                if on_result is not None:
                    on_result(experiment)

    threads = [threading.Thread(target=researcher, args=(r,)) for r in range(RESEARCHERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pool_timeline(pool: TaskPool, owners: set[str]) -> list[Record]:
    """Every job's submit/start/end from the pool's own records (driver clock); a job still
    running counts as busy until now, one never started as queued until now."""
    now = time.time()
    return [Record(j.owner, j.submitted_at, j.started_at or now, j.finished_at or now)
            for j in pool.jobs() if j.owner in owners and (j.started_at or j.finished_at is None)]


def run_baseline_researchers(plans: list[Plan], t0: float, records: list[Record]) -> None:
    gpus = [GpuWorker.options(num_gpus=1).remote() for _ in range(GPUS)]
    ray.get([g.ready.remote() for g in gpus])
    lock = threading.Lock()
    t_start = time.time()

    def researcher(r: int) -> None:
        gpu = gpus[r % GPUS]
        for think, batch in zip(plans[r].think_s, plans[r].batches):
            time.sleep(think)
            if time.time() - t_start > WINDOW_S:
                return
            for d in batch:  # one seed at a time on its own GPU
                submitted = time.time()
                out = ray.get(gpu.run.remote(sleep_job, (d,), {}))
                with lock:
                    records.append(Record(f"r{r}", submitted, *out.value))

    threads = [threading.Thread(target=researcher, args=(r,)) for r in range(RESEARCHERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in gpus:
        ray.kill(g)
    records[:] = [Record(x.owner, x.submitted - t_start + t0, x.start - t_start + t0, x.end - t_start + t0)
                  for x in records]


def busy_fraction(records: list[Record], t0: float, t1: float) -> float:
    busy = sum(max(0.0, min(x.end, t1) - max(x.start, t0)) for x in records)
    return busy / (GPUS * (t1 - t0))


def busy_while_queued(records: list[Record], t0: float, t1: float, step: float = 0.01) -> float:
    """Mean fraction of GPUs busy over the instants when at least one job was waiting to start."""
    ts = np.arange(t0, t1, step)
    sub = np.array([x.submitted for x in records])
    start = np.array([x.start for x in records])
    end = np.array([x.end for x in records])
    queued = ((sub[None, :] <= ts[:, None]) & (ts[:, None] < start[None, :])).sum(1)
    running = ((start[None, :] <= ts[:, None]) & (ts[:, None] < end[None, :])).sum(1)
    mask = queued > 0
    return float((running[mask] / GPUS).mean()) if mask.any() else float("nan")


def drain(pool: TaskPool) -> None:
    """Let the jobs researchers left behind at the window's end finish, so the next phase starts empty."""
    while pool.snapshot().queued or pool.snapshot().in_flight:
        time.sleep(0.1)


def bench_utilization_pool(pool: TaskPool, plans: list[Plan]) -> dict:
    """The researchers alone on the pool: idle GPUs while they think."""
    t0 = time.time()
    run_pool_researchers(plans, t0, pool, prefix="a")
    records, t1 = pool_timeline(pool, {f"a{r}" for r in range(RESEARCHERS)}), t0 + WINDOW_S
    drain(pool)
    return {"utilization_pool_no_backfill": busy_fraction(records, t0, t1),
            "utilization_pool_while_queued": busy_while_queued(records, t0, t1),
            "jobs_pool_no_backfill": sum(t0 <= x.start < t1 for x in records),
            "researcher_wait_p95_s_no_backfill": p95([x.start - x.submitted for x in records])}


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else 0.0


def utilization_summary(t0: float, base_records: list[Record]) -> dict:
    t1 = t0 + WINDOW_S
    return {"utilization_baseline": busy_fraction(base_records, t0, t1),
            "jobs_baseline": sum(t0 <= x.start < t1 for x in base_records)}


# ---- backfill ----------------------------------------------------------------------------------

def piece_seconds(key: str) -> float:
    """A piece's length, fixed by its key: one seed of a trial, with the spread of researchers' seeds."""
    return min(8.0, max(0.5, random.Random(key).lognormvariate(0.7, 0.5)))


def trial_score(trial: str) -> float:
    """A quick trial's validation PGR, fixed by its id (its own RNG: the researchers' plans are unchanged)."""
    return random.Random(f"score:{trial}").random()


def final_keys(trial: str) -> list[str]:
    return [f"{kind}:{trial}:s{seed}" for kind in FINAL_KINDS for seed in range(FINAL_SEEDS)]


class Backfill:
    """The campaign's backfill producer at bench scale. What it wants, most useful first: the final stage's
    pieces of the top-k trials by validation score (held-out math and code, the shuffled-teacher audit:
    one seed each), then full-fidelity reruns of the top half of the quick trials (successive halving).
    Each piece is keyed by content; the pool never runs a key twice."""

    def __init__(self, pool: TaskPool, prior: list[str]):
        self.pool = pool
        self.trials = list(prior)  # the leaderboard: the campaign's trials before this window, then new ones
        self.handles: dict = {}  # key -> JobHandle
        self.lock = threading.Lock()

    def add(self, trial: str) -> None:
        with self.lock:
            self.trials.append(trial)

    def ranked(self) -> list[str]:
        with self.lock:
            return sorted(self.trials, key=lambda t: -trial_score(t))

    def wanted(self) -> list[tuple[str, int]]:
        """(key, priority): the leaders' final-stage pieces jump ahead of queued promotions."""
        ranked = self.ranked()
        final = [(k, 1) for t in ranked[:TOP_K] for k in final_keys(t)]
        return final + [(f"full:{t}:s{s}", 0) for t in ranked[: len(ranked) // 2] for s in range(FINAL_SEEDS)]

    def top_up(self) -> None:
        queued = sum(h.status is JobStatus.QUEUED for h in self.handles.values())
        for key, priority in self.wanted():
            if queued >= QUEUE_DEPTH:
                return
            if key not in self.handles:
                self.handles[key] = self.pool.submit(JobSpec(fn=sleep_job, args=(piece_seconds(key),), owner=BACKFILL,
                                                             num_gpus=1, key=key, priority=priority, backfill=True))
                queued += 1

    def run_until(self, t1: float) -> None:
        while time.time() < t1:
            self.top_up()
            time.sleep(0.05)


def final_stage(pool: TaskPool, producer: Backfill) -> dict:
    """After the research: the leaders' held-out pieces as ordinary jobs, as the campaign's final stage
    asks for them. A piece backfill finished is answered from the record; a queued one is promoted."""
    keys = [k for t in producer.ranked()[:TOP_K] for k in final_keys(t)]
    for key, h in producer.handles.items():
        if key not in keys and h.status is JobStatus.QUEUED:
            h.cancel()  # nobody wants it any more
    done = sum(k in producer.handles and producer.handles[k].status is JobStatus.DONE for k in keys)
    t = time.time()
    handles = [pool.submit(JobSpec(fn=sleep_job, args=(piece_seconds(k),), owner=BACKFILL, num_gpus=1, key=k))
               for k in keys]
    pool.wait(handles, num_returns=len(handles))
    wall = time.time() - t
    pool.wait(list(producer.handles.values()), num_returns=len(producer.handles))  # running pieces end
    drain(pool)
    ran = Counter(j.key for j in pool.jobs() if j.key is not None and j.started_at is not None)
    return {"final_stage_pieces": len(keys), "final_stage_done_by_backfill": done, "final_stage_s": wall,
            "backfill_keys_run_twice": sum(n > 1 for n in ran.values())}


def merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def waits_behind_backfill(researcher: list[Record], backfill: list[Record]) -> list[float]:
    """Per researcher job: seconds it was queued while a backfill piece held a GPU. An upper bound on what
    backfill cost it: some of that time it would have waited for other researchers' jobs anyway."""
    spans = merged([(x.start, x.end) for x in backfill])
    return [sum(max(0.0, min(e, x.start) - max(s, x.submitted)) for s, e in spans) for x in researcher]


def bench_utilization_backfill(pool: TaskPool, plans: list[Plan]) -> tuple[float, dict]:
    """The same researchers, with the backfill producer filling what they leave idle."""
    producer = Backfill(pool, prior=[f"prior{r}" for r in range(RESEARCHERS)])
    t0 = time.time()
    feeder = threading.Thread(target=producer.run_until, args=(t0 + WINDOW_S,))
    feeder.start()
    run_pool_researchers(plans, t0, pool, prefix="r", on_result=producer.add)
    feeder.join()
    owners = {f"r{r}" for r in range(RESEARCHERS)}
    researcher, backfill = pool_timeline(pool, owners), pool_timeline(pool, {BACKFILL})
    t1 = t0 + WINDOW_S
    waits = waits_behind_backfill(researcher, backfill)
    summary = {"utilization_pool": busy_fraction(researcher + backfill, t0, t1),
               "utilization_pool_researchers": busy_fraction(researcher, t0, t1),
               "jobs_pool": sum(t0 <= x.start < t1 for x in researcher),
               "backfill_jobs": sum(t0 <= x.start < t1 for x in backfill),
               "researcher_wait_p95_s": p95([x.start - x.submitted for x in researcher]),
               "backfill_wait_p95_s": p95(waits), "backfill_wait_max_s": max(waits, default=0.0),
               "backfill_piece_max_s": max((x.end - x.start for x in backfill), default=0.0)}
    return t0, {**summary, **final_stage(pool, producer)}


# ---- fairness ----------------------------------------------------------------------------------

def bench_fairness(pool: TaskPool, phase_s: float = 10.0) -> dict:
    """All 9 owners backlogged for the whole phase, with job lengths 0.3-1.5 s and different
    submission volumes; fair share should still give each about the same GPU-seconds."""
    handles = []
    for r in range(RESEARCHERS):
        length = 0.3 + 0.15 * r
        n = int(3 * phase_s * GPUS / RESEARCHERS / length) + 2  # ~3x what fair share can run
        handles += [pool.submit(JobSpec(fn=sleep_job, args=(length,), owner=f"f{r}", num_gpus=1)) for _ in range(n)]
    time.sleep(phase_s)
    snap = pool.snapshot()
    for h in handles:
        h.cancel()
    gpu_s = [snap.owners[f"f{r}"].gpu_seconds for r in range(RESEARCHERS)]
    return {"jain_index": jain_index(gpu_s), "fairness_gpu_seconds": {f"f{r}": round(g, 2) for r, g in enumerate(gpu_s)},
            "fairness_utilization": sum(gpu_s) / (GPUS * phase_s)}


def main() -> None:
    t_all = time.time()
    ray.init(address="local", num_cpus=2, num_gpus=GPUS, include_dashboard=False,
             object_store_memory=100 * 1024 * 1024, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="ERROR")
    try:
        plans = make_plans(random.Random(SEED))
        # One pool, kept warm across its phases (its 8 GPU worker actors start once); then it
        # closes, freeing the GPUs for the baseline and the raw-Ray legs.
        with TaskPool() as pool:
            timings = bench_overhead_pool(pool)
            alone = bench_utilization_pool(pool, plans)
            t0, backfilled = bench_utilization_backfill(pool, plans)
            fairness = bench_fairness(pool)
        base_records: list[Record] = []
        run_baseline_researchers(plans, t0, base_records)
        timings.update(bench_overhead_raw())
        result = {**overhead_summary(timings), **alone, **backfilled, **utilization_summary(t0, base_records),
                  **fairness}
    finally:
        ray.shutdown()
    result["utilization_ratio"] = result["utilization_pool"] / result["utilization_baseline"]
    result["config"] = {"gpus": GPUS, "researchers": RESEARCHERS, "window_s": WINDOW_S, "n_noop": N_NOOP,
                        "n_noop_cpu": N_NOOP_CPU, "seed": SEED, "ray": ray.__version__,
                        # Shared 2-core boxes swing wildly; the load says how much to trust a run.
                        "load_avg_1m_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    result["wall_s"] = time.time() - t_all
    out = ROOT / "bench" / "results" / "pool.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(summary(result))
    print(f"wrote {out.relative_to(ROOT)}")


def summary(r: dict) -> str:
    ms = r["noop_ms"]

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    return "\n".join([
        f"task pool benchmark: {GPUS} logical GPUs, {RESEARCHERS} researchers, ray {ray.__version__}, {r['wall_s']:.0f} s, "
        f"load {r['config']['load_avg_1m_at_end']:.1f} on {r['config']['cpu_count']} CPUs",
        f"overhead (no-op, ms/job): pool {ms['pool_gpu']:.1f} | raw GPU tasks {ms['raw_gpu_tasks']:.1f} "
        f"| raw GPU actors {ms['raw_gpu_actors']:.1f} | pool CPU {ms['pool_cpu']:.1f} | raw CPU tasks {ms['raw_cpu_tasks']:.1f}",
        f"  overhead_ratio (pool / raw GPU tasks)   {r['overhead_ratio']:.2f}  {verdict(r['overhead_ratio'] <= 1.2)} (<= 1.2)",
        f"  pool / raw GPU actors (same mechanism)  {r['overhead_ratio_vs_raw_actors']:.2f}",
        f"  pool / raw CPU tasks                    {r['overhead_ratio_cpu']:.2f}",
        f"utilization over {WINDOW_S:.0f} s: pool with backfill {r['utilization_pool']:.3f} "
        f"(researchers {r['utilization_pool_researchers']:.2f}, {r['jobs_pool']} jobs + {r['backfill_jobs']} "
        f"backfill pieces) | pool alone {r['utilization_pool_no_backfill']:.2f} ({r['jobs_pool_no_backfill']} jobs) "
        f"| baseline {r['utilization_baseline']:.2f} ({r['jobs_baseline']} jobs)",
        f"  utilization_pool                        {r['utilization_pool']:.3f}  {verdict(r['utilization_pool'] >= 0.98)} (>= 0.98)",
        f"  utilization_ratio                       {r['utilization_ratio']:.2f}  {verdict(r['utilization_ratio'] >= 1.5)} (>= 1.5)",
        f"  pool alone while work is queued         {r['utilization_pool_while_queued']:.3f}",
        f"  researcher wait p95: {r['researcher_wait_p95_s']:.2f} s with backfill, "
        f"{r['researcher_wait_p95_s_no_backfill']:.2f} s alone; behind backfill p95 {r['backfill_wait_p95_s']:.2f} s, "
        f"max {r['backfill_wait_max_s']:.2f} s (longest piece {r['backfill_piece_max_s']:.2f} s)",
        f"  final stage: {r['final_stage_done_by_backfill']} of {r['final_stage_pieces']} held-out/audit pieces "
        f"already done by backfill, rest in {r['final_stage_s']:.1f} s; keys run twice: {r['backfill_keys_run_twice']}",
        f"fairness (all backlogged, GPUs {r['fairness_utilization']:.2f} busy): jain_index {r['jain_index']:.3f}",
        f"  GPU-seconds per owner {r['fairness_gpu_seconds']}",
        "  scenario: think U(3,9) s, batches of 3/5/8 seeds of 0.5-8 s (median 2 s), <= 2 batches outstanding;",
        f"  backfill: one-seed pieces of the same spread, <= {QUEUE_DEPTH} queued, top {TOP_K} x {FINAL_KINDS} x "
        f"{FINAL_SEEDS} seeds first",
    ])


if __name__ == "__main__":
    main()
