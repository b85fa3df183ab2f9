"""Forum and leaderboard: shared findings, submitted methods, trials and researchers' state.

Persisted in sqlite under the campaign directory, so a restarted researcher (or a resumed
campaign) finds everything. Researchers see validation numbers only: test PGR never enters this
store (it lives with the scorer and MLflow). Following the AAR rule, a finding that claims a
result must link a scored trial with all its seeds.

`Forum` is plain Python; the campaign runs it as a named Ray actor (`FORUM_NAME`).
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path

from aar_ray.sandbox.contract import TrialState, TrialStatus

FORUM_NAME = "aar-forum"
_CLAIM = re.compile(r"(\d+\.\d+|\d+\s*%|\bpgr\b\s*(=|of|:|is)\s*-?\d)", re.I)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS methods (method_id TEXT PRIMARY KEY, researcher TEXT, name TEXT, source TEXT,
    rationale TEXT, composition TEXT, created REAL);
CREATE TABLE IF NOT EXISTS trials (trial_id TEXT PRIMARY KEY, researcher TEXT, method_id TEXT, name TEXT,
    fidelity TEXT, status TEXT, val_pgr_mean REAL, val_pgr_std REAL, val_acc REAL, seeds INTEGER, error TEXT,
    created REAL, updated REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS findings (id INTEGER PRIMARY KEY AUTOINCREMENT, researcher TEXT, text TEXT,
    trial_id TEXT, created REAL);
CREATE TABLE IF NOT EXISTS state (researcher TEXT PRIMARY KEY, data TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT);
"""


class ForumError(ValueError):
    """A forum request was refused; the message says why."""


class Forum:
    def __init__(self, path: str | Path, n_seeds: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.n_seeds = n_seeds
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        if "outcome" not in {r[1] for r in self._db.execute("PRAGMA table_info(trials)")}:  # a forum from before
            self._db.execute("ALTER TABLE trials ADD COLUMN outcome TEXT")

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            return self._db.execute(sql, args).fetchall()

    # ---------- methods ----------

    def add_method(self, method_id: str, researcher: str, name: str, source: str, rationale: str,
                   composition: dict | None = None) -> None:
        self._q("INSERT OR IGNORE INTO methods VALUES (?,?,?,?,?,?,?)",
                (method_id, researcher, name, source, rationale, json.dumps(composition) if composition else None,
                 time.time()))

    def read_method(self, method_id: str) -> dict:
        rows = self._q("SELECT method_id, researcher, name, source, rationale FROM methods WHERE method_id = ?",
                       (method_id,))
        if not rows:
            raise ForumError(f"no method with method_id {method_id!r}")
        return dict(rows[0])

    # ---------- trials ----------

    def upsert_trial(self, trial_id: str, researcher: str, method_id: str, name: str, fidelity: str,
                     status: TrialState, val: dict | None = None, error: str | None = None,
                     outcome: TrialStatus | None = None) -> float:
        """A trial's row: its state, validation numbers when scored, and how its job ended (`outcome`).
        Returns when it was written (this store's clock: what the trials' tape orders by)."""
        status = TrialState(status).value  # a bad state fails here, not in a reader
        outcome = TrialStatus(outcome).value if outcome is not None else None
        val = val or {}
        with self._lock:
            now = time.time()  # under the lock: every reader after this time sees the row
            self._db.execute(
                "INSERT INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(trial_id) DO UPDATE SET "
                "status=excluded.status, val_pgr_mean=COALESCE(excluded.val_pgr_mean, val_pgr_mean), "
                "val_pgr_std=COALESCE(excluded.val_pgr_std, val_pgr_std), val_acc=COALESCE(excluded.val_acc, val_acc),"
                " seeds=COALESCE(excluded.seeds, seeds), error=excluded.error, updated=excluded.updated, "
                "outcome=excluded.outcome",
                (trial_id, researcher, method_id, name, fidelity, status, val.get("val_pgr", {}).get("mean"),
                 val.get("val_pgr", {}).get("std"), val.get("val_acc"), val.get("seeds"), error, now, now, outcome))
        return now

    def budget_counts(self, exclude: str = "driver") -> dict[str, int]:
        """Researcher trials that used the campaign's trial budget: `finished` (scored, or failed for a
        reason of the method's) and `in_flight` (queued). Cancelled trials and the harness's own faults
        used nothing."""
        rows = self._q("SELECT status, outcome FROM trials WHERE researcher != ?", (exclude,))
        harness = {s.value for s in TrialStatus if s.harness_fault}
        finished = sum(1 for r in rows if r["status"] == TrialState.SCORED.value
                       or (r["status"] == TrialState.FAILED.value and r["outcome"] not in harness))
        return {"finished": finished, "in_flight": sum(1 for r in rows if r["status"] == TrialState.QUEUED.value)}

    def trials(self, researcher: str | None = None, trial_id: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM trials WHERE 1=1", []
        if researcher:
            sql, args = sql + " AND researcher = ?", args + [researcher]
        if trial_id:
            sql, args = sql + " AND trial_id = ?", args + [trial_id]
        return [dict(r) for r in self._q(sql + " ORDER BY created", tuple(args))]

    def leaderboard(self, limit: int = 20) -> list[dict]:
        """Scored trials by validation PGR (the only numbers researchers see)."""
        rows = self._q("SELECT trial_id, researcher, method_id, name, fidelity, val_pgr_mean, val_pgr_std, seeds "
                       "FROM trials WHERE status = ? ORDER BY val_pgr_mean DESC LIMIT ?", (TrialState.SCORED.value, limit))
        return [dict(r) for r in rows]

    # ---------- findings ----------

    def post_finding(self, researcher: str, text: str, trial_id: str | None = None) -> int:
        if trial_id:
            t = self.trials(trial_id=trial_id)
            if not t or t[0]["status"] != TrialState.SCORED:
                raise ForumError(f"trial {trial_id!r} is not a scored trial; link one that has finished")
            if (t[0]["seeds"] or 0) < self.n_seeds:
                raise ForumError(f"trial {trial_id!r} has {t[0]['seeds']} of {self.n_seeds} seeds; a result needs all")
        elif _CLAIM.search(text):
            raise ForumError("this finding states a number; a finding that claims a result must give the "
                             "trial_id of a scored trial")
        with self._lock:
            cur = self._db.execute("INSERT INTO findings (researcher, text, trial_id, created) VALUES (?,?,?,?)",
                                   (researcher, text, trial_id, time.time()))
            return int(cur.lastrowid)

    def read_forum(self, limit: int = 20) -> list[dict]:
        return [dict(r) for r in self._q("SELECT id, researcher, text, trial_id, created FROM findings "
                                         "ORDER BY id DESC LIMIT ?", (limit,))]

    # ---------- researcher state ----------

    def save_state(self, researcher: str, data: dict) -> None:
        self._q("INSERT INTO state VALUES (?,?,?) ON CONFLICT(researcher) DO UPDATE SET data=excluded.data, "
                "updated=excluded.updated", (researcher, json.dumps(data), time.time()))

    def load_state(self, researcher: str) -> dict | None:
        rows = self._q("SELECT data FROM state WHERE researcher = ?", (researcher,))
        return json.loads(rows[0]["data"]) if rows else None

    def set_stop(self, kind: str | None, reason: str = "") -> None:
        """The campaign-wide wind-down signal researchers poll, with why (`kind`: trial_budget,
        gpu_budget, dollar_budget, deadline); None clears it. Persisted with the forum."""
        value = json.dumps({"kind": kind, "reason": reason}) if kind else ""
        self._q("INSERT INTO control VALUES ('stop', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (value,))

    def stop_requested(self) -> dict | None:
        """None, or {"kind", "reason"} of the wind-down."""
        rows = self._q("SELECT value FROM control WHERE key = 'stop'")
        return json.loads(rows[0]["value"]) if rows and rows[0]["value"] else None

    def stats(self) -> dict:
        rows = self._q("SELECT status, COUNT(*) AS n FROM trials GROUP BY status")
        return {r["status"]: r["n"] for r in rows}
