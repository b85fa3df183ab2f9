"""GPU-aware task pool on Ray: fair share by GPU-seconds, quotas, driver-enforced timeouts, retries
on lost workers, exactly-once results per idempotency key, and backfill (`JobSpec.backfill`: below
every researcher job, only on resources none is waiting for).

    ray.init(...)
    with TaskPool(PoolConfig(quota_gpu_s={"alice": 3600}), ledger=SqliteLedger("runs/ledger.db")) as pool:
        h = pool.submit(JobSpec(fn=train, args=(cfg,), owner="alice", num_gpus=1, key=cfg_hash))
        h.result()
"""
from aar_ray.pool.ledger import Ledger, LedgerEntry, MemoryLedger, SqliteLedger
from aar_ray.pool.policy import jain_index
from aar_ray.pool.pool import JobHandle, TaskPool
from aar_ray.pool.spec import (ErrorKind, JobError, JobFailed, JobInfo, JobSpec, JobStatus, OwnerStatus,
                               PoolConfig, PoolSnapshot)

__all__ = [
    "ErrorKind", "JobError", "JobFailed", "JobHandle", "JobInfo", "JobSpec", "JobStatus", "Ledger",
    "LedgerEntry", "MemoryLedger", "OwnerStatus", "PoolConfig", "PoolSnapshot", "SqliteLedger", "TaskPool",
    "jain_index",
]
