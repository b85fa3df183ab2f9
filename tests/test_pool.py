"""Task pool: pure policy rules with exact answers, then the pool on a real single-node Ray with
4 logical GPUs (2 CPUs)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray

import pool_helpers as H
from aar_ray.pool import (ErrorKind, JobFailed, JobSpec, JobStatus, MemoryLedger, PoolConfig, SqliteLedger,
                          TaskPool, jain_index)
from aar_ray.pool.ledger import LedgerEntry
from aar_ray.pool.policy import (Candidate, RunningPiece, backfill_victims, over_quota, pick_dispatch, pick_next,
                                 should_retry)

GPUS = 4


# ---- pure policy -------------------------------------------------------------------------------

def _c(job_id: str, owner: str, seq: int, priority: int = 0, gpus: float = 1.0, backfill: bool = False) -> Candidate:
    return Candidate(job_id=job_id, owner=owner, priority=priority, seq=seq, num_gpus=gpus, backfill=backfill)


def test_pick_next_prefers_least_weighted_usage_then_priority_within_owner():
    queued = [_c("a1", "alice", 0), _c("a2", "alice", 1, priority=5), _c("b1", "bob", 2)]
    fits = lambda c: True  # noqa: E731
    assert pick_next(queued, {"alice": 10.0, "bob": 3.0}, {}, fits).job_id == "b1"
    assert pick_next(queued, {"alice": 1.0, "bob": 3.0}, {}, fits).job_id == "a2"  # priority beats age
    # weight 4 makes alice's 10 GPU-s count as 2.5 < bob's 3
    assert pick_next(queued, {"alice": 10.0, "bob": 3.0}, {"alice": 4.0}, fits).job_id == "a2"
    # equal usage: the owner whose next job is older goes first
    assert pick_next([_c("b1", "bob", 0), _c("a1", "alice", 1)], {}, {}, fits).job_id == "b1"


def test_pick_next_backfills_other_owners_but_never_reorders_within_one():
    queued = [_c("big", "alice", 0, gpus=4), _c("a_small", "alice", 1, gpus=1), _c("b_small", "bob", 2, gpus=1)]
    fits_two = lambda c: c.num_gpus <= 2  # noqa: E731
    # alice is owed (usage 0) but her head job needs 4 GPUs: bob's small job backfills; alice's own
    # small job does not jump her big one.
    assert pick_next(queued, {"bob": 5.0}, {}, fits_two).job_id == "b_small"
    assert pick_next(queued[:2], {}, {}, fits_two) is None


def test_pick_dispatch_runs_backfill_only_when_no_researcher_job_waits():
    pieces = [_c("b1", "driver", 0, backfill=True), _c("b2", "driver", 1, backfill=True)]
    yes, no = (lambda c: True), (lambda c: False)  # noqa: E731
    fits_two = lambda c: c.num_gpus <= 2  # noqa: E731
    # a researcher job goes first although the backfill owner is owed more and its pieces are older
    assert pick_dispatch([*pieces, _c("r1", "bob", 2)], {"bob": 99.0}, {}, yes, yes).job_id == "r1"
    # bob's 4-GPU job does not fit in 2 free GPUs: pieces that would fit wait for him, not on his GPUs
    assert pick_dispatch([*pieces, _c("r1", "bob", 2, gpus=4)], {}, {}, fits_two, fits_two) is None
    # with no researcher job queued, backfill goes where `fits_idle` says (resources free now)
    assert pick_dispatch(pieces, {}, {}, yes, no) is None
    assert pick_dispatch(pieces, {}, {}, no, yes).job_id == "b1"


def test_backfill_victims_are_the_youngest_pieces_that_make_room():
    running = [RunningPiece("old", 1.0, 10.0), RunningPiece("mid", 1.0, 20.0), RunningPiece("young", 1.0, 30.0)]
    assert backfill_victims(1.0, 1.0, running) == []  # it fits already
    assert backfill_victims(1.0, 0.0, running) == ["young"]
    assert backfill_victims(2.0, 0.5, running) == ["young", "mid"]
    assert backfill_victims(4.0, 0.0, running) == []  # all three would not make room: keep their work


def test_should_retry_and_quota_rules():
    assert should_retry(ErrorKind.WORKER_LOST, attempts=1, max_retries=2, retry_exceptions=False)
    assert should_retry(ErrorKind.WORKER_LOST, attempts=2, max_retries=2, retry_exceptions=False)
    assert not should_retry(ErrorKind.WORKER_LOST, attempts=3, max_retries=2, retry_exceptions=False)
    assert not should_retry(ErrorKind.USER, attempts=1, max_retries=2, retry_exceptions=False)
    assert should_retry(ErrorKind.USER, attempts=1, max_retries=2, retry_exceptions=True)
    for kind in (ErrorKind.TIMEOUT, ErrorKind.CANCELLED, ErrorKind.QUOTA, ErrorKind.SYSTEM):
        assert not should_retry(kind, attempts=1, max_retries=5, retry_exceptions=True)
    assert over_quota(10.0, 10.0) and not over_quota(9.99, 10.0) and not over_quota(1e9, None)


def test_jain_index():
    assert jain_index([3.0, 3.0, 3.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert jain_index([1.0, 3.0]) == pytest.approx(16 / 20)


def test_sqlite_ledger_first_writer_wins_and_survives_reopen(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    first = LedgerEntry("k", {"acc": 0.9}, "alice", "j1", 2.0, 100.0)
    assert ledger.put(first) is True
    assert ledger.put(LedgerEntry("k", {"acc": 0.1}, "bob", "j2", 1.0, 101.0)) is False
    ledger.close()
    reopened = SqliteLedger(path)
    assert reopened.get("k") == first
    assert reopened.get("missing") is None
    assert len(reopened) == 1


def test_jobspec_validation():
    with pytest.raises(ValueError, match="num_gpus"):
        JobSpec(fn=print, owner="a", num_gpus=1.5)
    with pytest.raises(ValueError, match="owner"):
        JobSpec(fn=print, owner="")
    with pytest.raises(ValueError, match="timeout_s"):
        JobSpec(fn=print, owner="a", timeout_s=0)
    assert JobSpec(fn=print, owner="a", num_gpus=1).cpus == 0.0
    assert JobSpec(fn=print, owner="a").cpus == 1.0


# ---- the pool on real Ray --------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    H.init_local_ray(num_gpus=GPUS)
    yield
    ray.shutdown()


@pytest.fixture
def make_pool(ray_local):
    pools: list[TaskPool] = []

    def make(**kwargs) -> TaskPool:
        pools.append(TaskPool(**kwargs))
        return pools[-1]

    yield make
    for p in pools:
        p.close()


def test_never_more_gpus_in_use_than_exist(make_pool):
    pool = make_pool()
    handles = [pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.4, i), owner=f"r{i % 3}", num_gpus=1))
               for i in range(12)]
    results = [h.result(timeout=60) for h in handles]
    intervals = [(r["start"], r["end"]) for r in results]
    assert H.max_overlap(intervals) == GPUS
    # Ray assigned the GPUs (CUDA_VISIBLE_DEVICES), and jobs that overlapped never shared one.
    for r in results:
        assert len(r["gpu_ids"]) == 1 and r["cuda_visible_devices"] == r["gpu_ids"][0]
    for i, a in enumerate(results):
        for b in results[i + 1:]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["gpu_ids"] != b["gpu_ids"]
    assert {g for r in results for g in r["gpu_ids"]} <= {str(i) for i in range(GPUS)}
    snap = pool.snapshot()
    assert sum(o.done for o in snap.owners.values()) == 12
    assert snap.in_flight == 0 and snap.gpus_total == GPUS


def test_fair_share_order_under_contention(make_pool):
    """One job at a time (each takes all 4 GPUs). 'greedy' already used a GPU-heavy job and queues
    4 more; 'light' queues 2 later. Fair share runs light's first; greedy's priority-5 job leads its rest."""
    pool = make_pool()
    whole = dict(owner="greedy", num_gpus=GPUS)
    blocker = pool.submit(JobSpec(fn=H.sleep_and_report, args=(1.0, "blocker"), **whole))
    H.wait_until(lambda: blocker.info().started_at is not None, 30, "blocker to start")
    greedy = [pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.2, f"g{i}"), priority=5 if i == 3 else 0, **whole))
              for i in range(1, 5)]
    light = [pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.2, f"l{i}"), owner="light", num_gpus=GPUS))
             for i in range(1, 3)]
    results = [h.result(timeout=60) for h in [blocker, *greedy, *light]]
    order = [r["tag"] for r in sorted(results, key=lambda r: r["start"])]
    assert order == ["blocker", "l1", "l2", "g3", "g1", "g2", "g4"]


def test_in_flight_is_bounded(make_pool):
    pool = make_pool(config=PoolConfig(max_in_flight=2))
    handles = [pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.3, i), owner="a", num_cpus=0.01))
               for i in range(6)]
    seen = []
    while not all(h.done() for h in handles):
        seen.append(pool.snapshot().in_flight)
        time.sleep(0.02)
    results = [h.result() for h in handles]
    assert max(seen) == 2
    assert H.max_overlap([(r["start"], r["end"]) for r in results]) == 2


def test_quota_exhaustion_is_a_status_not_a_hang(make_pool):
    # Each job holds 4 GPUs for 0.4 s = 1.6 GPU-s, over the 1.0 quota after the first.
    pool = make_pool(config=PoolConfig(quota_gpu_s={"q": 1.0}))
    spec = dict(fn=H.sleep_and_report, args=(0.4,), owner="q", num_gpus=GPUS)
    handles = [pool.submit(JobSpec(**spec)) for _ in range(3)]
    assert handles[0].result(timeout=30)["gpu_ids"] == [str(i) for i in range(GPUS)]
    pool.wait(handles, num_returns=3, timeout=10)
    assert [h.status for h in handles] == [JobStatus.DONE, JobStatus.QUOTA_EXHAUSTED, JobStatus.QUOTA_EXHAUSTED]
    with pytest.raises(JobFailed, match="quota") as err:
        handles[1].result(timeout=0)
    assert err.value.error.kind is ErrorKind.QUOTA
    late = pool.submit(JobSpec(**spec))
    assert late.status is JobStatus.QUOTA_EXHAUSTED  # decided at submit, no waiting
    other = pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.1,), owner="other", num_gpus=1))
    assert other.result(timeout=30)["tag"] is None
    snap = pool.snapshot().owners["q"]
    assert (snap.done, snap.quota_exhausted, snap.queued, snap.running) == (1, 3, 0, 0)
    assert snap.gpu_seconds == pytest.approx(1.6, abs=0.4) and snap.quota_gpu_s == 1.0


@pytest.mark.parametrize("fresh_process", [False, True], ids=["worker_actor", "fresh_process"])
def test_stuck_job_is_killed_at_timeout_and_its_gpu_reused(make_pool, fresh_process):
    pool = make_pool()
    stuck = [pool.submit(JobSpec(fn=H.sleep_and_report, args=(600,), owner="s", num_gpus=1, timeout_s=1.0,
                                 fresh_process=fresh_process)) for _ in range(GPUS)]
    H.wait_until(lambda: all(h.info().started_at is not None for h in stuck), 30, "stuck jobs to start")
    after = [pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.0, i), owner="t", num_gpus=1,
                                 fresh_process=fresh_process)) for i in range(GPUS)]
    results = [h.result(timeout=60) for h in after]
    for h in stuck:
        with pytest.raises(JobFailed, match="timeout_s=1"):
            h.result(timeout=0)
        assert h.status is JobStatus.TIMEOUT and h.error.kind is ErrorKind.TIMEOUT
        assert h.info().gpu_seconds == pytest.approx(1.0, abs=0.3)
    # The GPUs held by the stuck jobs are back in use within seconds of their deadline.
    deadline = max(h.info().started_at for h in stuck) + 1.0
    assert max(r["start"] for r in results) - deadline < 5.0
    assert sorted(g for r in results for g in r["gpu_ids"]) == [str(i) for i in range(GPUS)]


def test_killed_worker_is_retried_up_to_max_retries(make_pool, tmp_path):
    pool = make_pool()
    ok = pool.submit(JobSpec(fn=H.crash_worker_first_time, args=(str(tmp_path / "m"), 42), owner="a", num_gpus=1))
    assert ok.result(timeout=60) == 42
    assert ok.info().attempts == 2 and ok.status is JobStatus.DONE
    never = pool.submit(JobSpec(fn=H.always_crash_worker, owner="a", num_gpus=1, max_retries=1))
    with pytest.raises(JobFailed) as err:
        never.result(timeout=60)
    assert err.value.status is JobStatus.FAILED and err.value.error.kind is ErrorKind.WORKER_LOST
    assert never.info().attempts == 2
    cpu = pool.submit(JobSpec(fn=H.crash_worker_first_time, args=(str(tmp_path / "c"), 7), owner="a", num_cpus=0.01))
    assert cpu.result(timeout=60) == 7 and cpu.info().attempts == 2


def test_user_exception_reaches_owner_with_traceback_and_is_retried_only_if_asked(make_pool, tmp_path):
    pool = make_pool()
    h = pool.submit(JobSpec(fn=H.raise_value_error, args=("bad lr",), owner="a", num_gpus=1))
    with pytest.raises(JobFailed) as err:
        h.result(timeout=60)
    assert err.value.error.kind is ErrorKind.USER and err.value.error.message == "ValueError: bad lr"
    assert "in raise_value_error" in err.value.error.traceback
    assert h.info().attempts == 1
    counter = str(tmp_path / "count")
    r = pool.submit(JobSpec(fn=H.count_and_raise, args=(counter,), owner="a", num_gpus=1, max_retries=2,
                            retry_exceptions=True))
    with pytest.raises(JobFailed, match="still broken"):
        r.result(timeout=60)
    assert r.info().attempts == 3 and len(H.lines(counter)) == 3


def test_exactly_once_per_idempotency_key(make_pool, tmp_path):
    runs = str(tmp_path / "runs")
    delivered = []
    ledger_path = tmp_path / "ledger.db"
    pool = make_pool(ledger=SqliteLedger(ledger_path), on_finish=lambda info, value: delivered.append((info.key, value)))
    spec = JobSpec(fn=H.append_line_and_return, args=(runs, "v1", 0.3), owner="a", num_gpus=1, key="trial-1")
    first, dup = pool.submit(spec), pool.submit(spec)  # a duplicate while it runs joins the same job
    assert dup.job_id == first.job_id
    assert first.result(timeout=60) == "v1"
    again = pool.submit(spec)
    assert again.result(timeout=0) == "v1"
    assert H.lines(runs) == ["v1"] and delivered == [("trial-1", "v1")]
    # A resumed campaign: new pool, same ledger file. The key is answered from the record.
    pool.close()
    resumed = make_pool(ledger=SqliteLedger(ledger_path))
    h = resumed.submit(spec)
    assert h.status is JobStatus.DONE and h.info().from_ledger and h.result(timeout=0) == "v1"
    assert H.lines(runs) == ["v1"]
    # A failed key is not recorded: resubmitting it runs again.
    bad = JobSpec(fn=H.raise_value_error, args=("x",), owner="a", key="trial-2")
    with pytest.raises(JobFailed):
        resumed.submit(bad).result(timeout=60)
    with pytest.raises(JobFailed):
        resumed.submit(bad).result(timeout=60)
    assert [j.attempts for j in resumed.jobs() if j.key == "trial-2"] == [1, 1]


def test_cancel_queued_and_running(make_pool, tmp_path):
    pool = make_pool()
    runs = str(tmp_path / "runs")
    hog = pool.submit(JobSpec(fn=H.sleep_and_report, args=(600,), owner="a", num_gpus=GPUS))
    H.wait_until(lambda: hog.info().started_at is not None, 30, "hog to start")
    queued = pool.submit(JobSpec(fn=H.append_line_and_return, args=(runs, "q"), owner="a", num_gpus=1))
    assert queued.status is JobStatus.QUEUED and queued.cancel() is True
    assert queued.status is JobStatus.CANCELLED
    assert hog.cancel() is True
    with pytest.raises(JobFailed, match="cancelled while running"):
        hog.result(timeout=10)
    assert hog.cancel() is False  # already ended
    after = pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.0,), owner="a", num_gpus=GPUS))
    assert len(after.result(timeout=30)["gpu_ids"]) == GPUS  # the cancelled job's GPUs are free
    assert H.lines(runs) == []
    snap = pool.snapshot().owners["a"]
    assert (snap.cancelled, snap.done) == (2, 1)


def test_unschedulable_request_fails_at_once(make_pool):
    pool = make_pool()
    h = pool.submit(JobSpec(fn=H.sleep_and_report, args=(0,), owner="a", num_gpus=GPUS + 1))
    assert h.status is JobStatus.FAILED and h.error.kind is ErrorKind.UNSCHEDULABLE


def test_submit_from_many_threads(make_pool):
    """Researchers submit concurrently; every job runs once and the counts add up."""
    pool = make_pool(ledger=MemoryLedger())
    handles = []
    lock = threading.Lock()

    def researcher(i: int) -> None:
        for j in range(5):
            h = pool.submit(JobSpec(fn=H.sleep_and_report, args=(0.0, (i, j)), owner=f"r{i}", num_gpus=0.5))
            with lock:
                handles.append(h)

    threads = [threading.Thread(target=researcher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tags = sorted(tuple(h.result(timeout=60)["tag"]) for h in handles)
    assert tags == sorted((i, j) for i in range(4) for j in range(5))
    assert {o: s.done for o, s in pool.snapshot().owners.items()} == {f"r{i}": 5 for i in range(4)}


# ---- backfill: below every researcher job, one piece at a time ---------------------------------

def _piece(seconds: float, tag, **kw) -> JobSpec:
    return JobSpec(fn=H.sleep_and_report, args=(seconds, tag), owner="driver", num_gpus=1, backfill=True, **kw)


def _researcher(seconds: float, tag, owner: str = "r0") -> JobSpec:
    return JobSpec(fn=H.sleep_and_report, args=(seconds, tag), owner=owner, num_gpus=1)


def test_backfill_starts_only_when_no_researcher_job_is_queued(make_pool):
    """Backfill queued first still waits: researcher jobs submitted later take every GPU that frees up."""
    pool = make_pool()
    first = [pool.submit(_researcher(0.6, f"a{i}")) for i in range(GPUS)]
    H.wait_until(lambda: all(h.info().started_at for h in first), 30, "the first wave to start")
    pieces = [pool.submit(_piece(0.2, f"b{i}")) for i in range(6)]
    second = [pool.submit(_researcher(0.3, f"c{i}", owner="r1")) for i in range(GPUS)]
    for h in first + pieces + second:
        h.result(timeout=60)
    jobs = pool.jobs()
    researcher, backfill = [j for j in jobs if not j.backfill], [j for j in jobs if j.backfill]
    assert len(backfill) == 6 and all(j.status is JobStatus.DONE for j in jobs)
    # no piece started while any researcher job was queued (submitted, not yet started)
    for b in backfill:
        assert not any(r.submitted_at <= b.started_at < r.started_at for r in researcher), b
    assert min(b.started_at for b in backfill) >= max(r.started_at for r in researcher)
    results = [h.result() for h in pieces + second]
    assert H.max_overlap([(r["start"], r["end"]) for r in results]) <= GPUS


def test_researcher_job_waits_behind_at_most_one_backfill_piece(make_pool):
    piece_s = 1.0
    pool = make_pool()
    pieces = [pool.submit(_piece(piece_s, f"b{i}")) for i in range(2 * GPUS)]
    H.wait_until(lambda: sum(h.info().started_at is not None for h in pieces) == GPUS, 30, "a GPU-full of pieces")
    researcher = [pool.submit(_researcher(0.1, f"r{i}")) for i in range(GPUS)]
    for h in researcher + pieces:
        h.result(timeout=60)
    r_info = [h.info() for h in researcher]
    first, queued = [h.info() for h in pieces[:GPUS]], [h.info() for h in pieces[GPUS:]]
    for r in r_info:
        # it waited for a running piece to end (no preemption by default), and for no more than one
        assert r.started_at >= min(b.finished_at for b in first)
        assert r.started_at - r.submitted_at <= piece_s + 0.5
    # the pieces still queued when the researcher came all started after its jobs
    assert min(b.started_at for b in queued) >= max(r.started_at for r in r_info)
    assert all(b.preempted == 0 and b.attempts == 1 for b in first + queued)


def test_backfill_preempted_on_demand_is_requeued_and_finishes(make_pool):
    """With backfill_preempt_after_s, a researcher job does not wait out a long piece: the youngest is
    cancelled, requeued (not counted as an attempt) and runs again once the GPU is free."""
    pool = make_pool(config=PoolConfig(backfill_preempt_after_s=0.2))
    pieces = [pool.submit(_piece(3.0 + 0.1 * i, f"b{i}")) for i in range(GPUS)]
    H.wait_until(lambda: all(h.info().started_at is not None for h in pieces), 30, "pieces to start")
    youngest = max(pieces, key=lambda h: h.info().started_at)
    r = pool.submit(_researcher(0.1, "r"))
    r.result(timeout=30)
    wait = r.info().started_at - r.info().submitted_at
    assert 0.2 <= wait < 2.5  # the threshold plus a tick, not the 3 s a piece still had to run
    assert youngest.info().preempted == 1
    for h in pieces:
        h.result(timeout=60)
    assert youngest.info().preempted == 1 and youngest.info().attempts == 1  # requeued, then ran to the end once
    assert youngest.result()["start"] >= r.result()["end"]  # its rerun began anew after the researcher job
    assert [h.info().preempted for h in pieces].count(0) == GPUS - 1


def test_backfill_results_are_reused_by_key_and_a_researcher_submit_promotes_a_queued_piece(make_pool, tmp_path):
    runs = str(tmp_path / "runs")
    pool = make_pool()
    hogs = [pool.submit(_researcher(0.5, f"h{i}")) for i in range(GPUS)]
    H.wait_until(lambda: all(h.info().started_at for h in hogs), 30, "hogs to start")
    spec = lambda k: JobSpec(fn=H.append_line_and_return, args=(runs, k, 0.2), owner="driver", num_gpus=1,  # noqa: E731
                             key=f"heldout:{k}", backfill=True)
    pieces = [pool.submit(spec(f"k{i}")) for i in range(GPUS + 2)]
    # the held-out stage asks for k5 as ordinary work: it joins the queued piece, which leaves backfill
    wanted = pool.submit(JobSpec(fn=H.append_line_and_return, args=(runs, "k5", 0.2), owner="driver", num_gpus=1,
                                 key="heldout:k5"))
    assert wanted.job_id == pieces[5].job_id and not wanted.info().backfill and pieces[0].info().backfill
    assert wanted.result(timeout=60) == "k5"
    assert [h.result(timeout=60) for h in pieces] == [f"k{i}" for i in range(GPUS + 2)]
    assert wanted.info().started_at <= min(h.info().started_at for h in pieces[:5])  # it went first
    # every key ran once; later submits, backfill or not, are answered without running
    again = [pool.submit(spec(f"k{i}")) for i in range(GPUS + 2)] + [pool.submit(
        JobSpec(fn=H.append_line_and_return, args=(runs, "k0"), owner="r1", num_gpus=1, key="heldout:k0"))]
    assert [h.result(timeout=0) for h in again] == [f"k{i}" for i in range(GPUS + 2)] + ["k0"]
    assert sorted(H.lines(runs)) == sorted(f"k{i}" for i in range(GPUS + 2))
    assert [h.info().backfill for h in pieces] == [i != 5 for i in range(GPUS + 2)]  # a finished piece stays one
