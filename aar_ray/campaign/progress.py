"""The campaign's live view: a rich table on a TTY, a log line every 10 s otherwise."""
from __future__ import annotations

import sys
import time

from aar_ray.sandbox.contract import TrialState


class Progress:
    """What each researcher has done, and what the pool is doing."""

    def __init__(self, mode: str, researchers: list[tuple[str, str]]):
        self.rich = mode == "rich" or (mode == "auto" and sys.stdout.isatty())
        self.researchers = researchers
        self.last_plain = 0.0
        self.live = None
        if self.rich:
            from rich.live import Live

            self.live = Live(refresh_per_second=2, transient=False)
            self.live.start()

    def update(self, forum_trials: list[dict], pool: dict, spend: dict, elapsed: float, phase: str) -> None:
        best: dict[str, float] = {}
        for t in forum_trials:
            if t["status"] == TrialState.SCORED and t["val_pgr_mean"] is not None:
                best[t["researcher"]] = max(best.get(t["researcher"], -9.0), t["val_pgr_mean"])
        counts = {rid: sum(1 for t in forum_trials if t["researcher"] == rid) for rid, _ in self.researchers}
        if self.live is not None:
            self.live.update(self._table(best, counts, pool, spend, elapsed, phase))
        elif time.time() - self.last_plain >= 10:
            self.last_plain = time.time()
            parts = [f"{rid}:{counts[rid]}t/{best[rid]:+.2f}" if rid in best else f"{rid}:{counts[rid]}t"
                     for rid, _ in self.researchers]
            print(f"[aar] {phase} {elapsed:.0f}s queue={pool.get('queued', 0)} running={pool.get('in_flight', 0)} "
                  f"gpus={pool.get('gpus_held', 0):.1f}/{pool.get('gpus_total', 0):.0f} " + " ".join(parts), flush=True)

    def _table(self, best: dict, counts: dict, pool: dict, spend: dict, elapsed: float, phase: str):
        from rich.table import Table

        table = Table(title=f"aar campaign · {phase} · {elapsed:.0f}s · queue {pool.get('queued', 0)} · "
                            f"running {pool.get('in_flight', 0)} · GPUs {pool.get('gpus_held', 0):.1f}/"
                            f"{pool.get('gpus_total', 0):.0f}")
        for col in ("researcher", "direction", "trials", "best val PGR", "GPU-s", "$"):
            table.add_column(col)
        for rid, direction in self.researchers:
            o = pool.get("owners", {}).get(rid, {})
            table.add_row(rid, direction, str(counts[rid]), f"{best[rid]:+.3f}" if rid in best else "—",
                          f"{o.get('gpu_seconds', 0.0):.0f}", f"{spend.get(rid, 0.0):.2f}")
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
