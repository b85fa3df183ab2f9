"""The pool on a loopback multi-node cluster started by cluster/local.py: head (no resources) plus
two worker nodes with 2 logical GPUs each. The last test crashes a worker node mid-job."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

import pool_helpers as H
from aar_ray.pool import JobSpec, JobStatus, MemoryLedger, TaskPool

pytestmark = pytest.mark.slow  # ~20 s of cluster start-up on a 2-core box

GPUS_PER_WORKER = 2

# Ray 2.60: after a local Ray session in this process (earlier test files start one), a driver
# session on a `ray start` cluster gets its actors killed at creation ("all references to the
# actor were removed"). So the real tests run in a fresh interpreter: the wrapper below re-runs
# this file in a child pytest, and only the child runs them.
IN_CHILD = os.environ.get("AAR_POOL_MULTINODE_CHILD") == "1"
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs inside test_multinode_suite_in_fresh_interpreter")


@pytest.mark.skipif(IN_CHILD, reason="this is the parent wrapper")
def test_multinode_suite_in_fresh_interpreter():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env={**os.environ, "AAR_POOL_MULTINODE_CHILD": "1"}, capture_output=True, text=True,
                          cwd=H.ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "2 passed, 1 skipped" in proc.stdout


@pytest.fixture(scope="module")
def cluster():
    script = H.load_cluster_script()
    # Short dir: Ray's unix socket paths live under it.
    root = Path(tempfile.mkdtemp(prefix="aarc", dir="/tmp"))
    try:
        state = script.up(root, workers=2, gpus_per_worker=GPUS_PER_WORKER, cpus_per_worker=1)
        script.connect(state.address, log_to_driver=False, logging_level="ERROR")
        yield script, root
    finally:
        ray.shutdown()
        script.down(root)
        assert H.ray_processes_under(str(root) + "/") == []
        for leftover in root.glob("*.log"):
            leftover.unlink()
        root.rmdir()


def _worker_nodes() -> dict[str, str]:
    return {n["NodeName"]: n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeName"] != "head"}


@child_only
def test_cluster_has_two_gpu_worker_nodes_and_jobs_use_both(cluster):
    workers = _worker_nodes()
    assert sorted(workers) == ["w1", "w2"]
    assert ray.cluster_resources()["GPU"] == 2 * GPUS_PER_WORKER
    with TaskPool() as pool:
        handles = [pool.submit(JobSpec(fn=H.sleep_and_report, args=(1.0, i), owner=f"r{i}", num_gpus=1))
                   for i in range(2 * GPUS_PER_WORKER)]
        results = [h.result(timeout=90) for h in handles]
    # 4 one-GPU jobs at once on 2 nodes x 2 GPUs: Ray must use both nodes and every GPU on each.
    assert {r["node_id"] for r in results} == set(workers.values())
    for node_id in workers.values():
        assert sorted(g for r in results if r["node_id"] == node_id for g in r["gpu_ids"]) == ["0", "1"]


@child_only
def test_node_killed_mid_job_result_delivered_once_from_another_node(cluster, tmp_path):
    script, root = cluster
    marker = str(tmp_path / "started")
    delivered = []
    ledger = MemoryLedger()
    with TaskPool(ledger=ledger, on_finish=lambda info, value: delivered.append((info.key, value))) as pool:
        h = pool.submit(JobSpec(fn=H.mark_node_then_sleep, args=(marker, 3.0), owner="a", num_gpus=1,
                                key="trial-node-kill", max_retries=2))
        H.wait_until(lambda: len(H.lines(marker)) == 1, 60, "the job to start")
        first_node = H.lines(marker)[0]
        victim = H.node_name_of(first_node)
        assert victim in ("w1", "w2")
        script.kill_node(root, victim)
        result = h.result(timeout=90)
        info = h.info()
    assert info.status is JobStatus.DONE and info.attempts == 2
    assert result["node_id"] != first_node and H.node_name_of(result["node_id"]) in ("w1", "w2")
    assert H.lines(marker) == [first_node, result["node_id"]]  # ran twice, once per node...
    assert delivered == [("trial-node-kill", result)]  # ...delivered once
    assert len(ledger) == 1 and ledger.get("trial-node-kill").value == result
