"""The exactly-once ledger: idempotency key -> recorded result.

The pool records a key once, when its job first finishes DONE, and answers later submissions of the
key from here without running anything. `SqliteLedger` survives a driver crash, so a resumed campaign
that resubmits its trials only runs the unfinished ones. Anything with `get` and `put` works (a
campaign may back it with MLflow runs tagged by key).
"""
from __future__ import annotations

import pickle
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol


@dataclass(frozen=True)
class LedgerEntry:
    """The recorded outcome of a finished key."""

    key: str
    value: Any
    owner: str
    job_id: str
    gpu_seconds: float
    finished_at: float
    """time.time() when it finished."""


class Ledger(Protocol):
    def get(self, key: str) -> Optional[LedgerEntry]:
        """The entry for key, or None if it never finished."""

    def put(self, entry: LedgerEntry) -> bool:
        """Record entry unless its key exists. True if this call recorded it (first writer wins)."""


class MemoryLedger:
    """Exactly-once within one driver process."""

    def __init__(self) -> None:
        self._entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[LedgerEntry]:
        with self._lock:
            return self._entries.get(key)

    def put(self, entry: LedgerEntry) -> bool:
        with self._lock:
            if entry.key in self._entries:
                return False
            self._entries[entry.key] = entry
            return True

    def __len__(self) -> int:
        return len(self._entries)


class SqliteLedger:
    """Exactly-once across driver restarts, and across pools sharing the file (first writer wins)."""

    _SCHEMA = """CREATE TABLE IF NOT EXISTS ledger (
        key TEXT PRIMARY KEY, value BLOB NOT NULL, owner TEXT NOT NULL, job_id TEXT NOT NULL,
        gpu_seconds REAL NOT NULL, finished_at REAL NOT NULL)"""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection guarded by a lock: the pool writes from its dispatcher thread and reads
        # from submitting threads.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(self._SCHEMA)
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[LedgerEntry]:
        with self._lock:
            row = self._conn.execute(
                "SELECT key, value, owner, job_id, gpu_seconds, finished_at FROM ledger WHERE key = ?",
                (key,)).fetchone()
        if row is None:
            return None
        return LedgerEntry(row[0], pickle.loads(row[1]), row[2], row[3], row[4], row[5])

    def put(self, entry: LedgerEntry) -> bool:
        blob = pickle.dumps(entry.value)
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?, ?, ?)",
                (entry.key, blob, entry.owner, entry.job_id, entry.gpu_seconds, entry.finished_at))
            return cur.rowcount == 1

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
