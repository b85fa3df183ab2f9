"""The probing watch: flag a researcher who uses the scorer as a label oracle, and only on evidence.

Probing the scorer means editing predictions, not methods: submit the same predictions with a few
validation examples flipped, read whether the (shown) score went up, keep the flips that helped and
revert those that hurt; the validation set becomes a training set. Honest work does not look like
that: changing a method's parameters moves its probabilities on nearly every example, even when
only a few cross 0.5. So a submission k is a *targeted flip* of an earlier one j when
  - their thresholded predictions differ on few validation examples D (1 <= |D| <= max_flips), and
  - most of the change between them is on D: sum |p_k - p_j| over D >= `concentration` x the sum
    over every example (the rest was left, or nearly left, as it was);
and a later submission *follows* it when, on D, it keeps k's side after the shown score rose, or
returns to j's side after it fell. `min_events` followed flips flag the researcher.
The scorer also rounds what it shows (validation PGR to two decimals), so a few flips mostly show
no change at all: probing costs queries and teaches little.

Pure numpy; the scorer persists `state()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Probe:
    base: int  # index of the submission j that was edited
    edit: int  # index of the edited submission k
    rows: np.ndarray  # D: the flipped validation rows
    direction: int  # sign of shown(k) - shown(j)


@dataclass
class ProbeWatch:
    max_flips_share: float = 0.05
    """A targeted flip changes the thresholded prediction of at most this share of validation examples."""
    concentration: float = 0.5
    """...and at least this share of the total probability change is on those examples."""
    min_events: int = 3
    """Followed flips that flag a researcher."""
    probs: dict[str, list[np.ndarray]] = field(default_factory=dict)  # researcher -> val probabilities per submission
    shown: dict[str, list[float]] = field(default_factory=dict)  # researcher -> the val PGR each one was shown
    events: dict[str, int] = field(default_factory=dict)
    _open: dict[str, list[_Probe]] = field(default_factory=dict)

    def add(self, researcher: str, probs: np.ndarray, shown: float) -> None:
        """Record one scored submission (validation-row probabilities, the score it was shown)."""
        probs = np.asarray(probs, dtype=np.float64)
        subs, scores = self.probs.setdefault(researcher, []), self.shown.setdefault(researcher, [])
        self._follow_up(researcher, probs)
        probe = self._targeted(subs, scores, probs, float(shown))
        subs.append(probs)
        scores.append(float(shown))
        if probe is not None:
            self._open.setdefault(researcher, []).append(probe)

    def flagged(self, researcher: str) -> bool:
        return self.events.get(researcher, 0) >= self.min_events

    def _max_flips(self, n: int) -> int:
        return max(1, int(self.max_flips_share * n))

    def _targeted(self, subs: list[np.ndarray], scores: list[float], probs: np.ndarray, shown: float) -> _Probe | None:
        """The earlier submission this one is a targeted flip of, if any (the nearest qualifying one)."""
        best = None
        for j, prev in enumerate(subs):
            if prev.shape != probs.shape:
                continue
            rows = np.flatnonzero((prev > 0.5) != (probs > 0.5))
            if not 1 <= len(rows) <= self._max_flips(len(probs)):
                continue
            change = np.abs(probs - prev)
            if change[rows].sum() < self.concentration * change.sum():
                continue
            if best is None or len(rows) < len(best.rows):
                delta = shown - scores[j]  # NaN (a seed without a gap) shows nothing to follow
                best = _Probe(j, len(subs), rows, int(np.sign(round(delta, 6))) if np.isfinite(delta) else 0)
        return best if best is not None and best.direction != 0 else None  # no change shown: nothing to follow

    def _follow_up(self, researcher: str, probs: np.ndarray) -> None:
        """Does this submission act on an open probe's result? Count it, and close the probe."""
        subs, still_open = self.probs[researcher], []
        for p in self._open.get(researcher, []):
            want = subs[p.edit] if p.direction > 0 else subs[p.base]  # kept the flips, or reverted them
            if probs.shape == want.shape and np.array_equal(probs[p.rows] > 0.5, want[p.rows] > 0.5) \
                    and not np.array_equal(probs[p.rows] > 0.5, subs[p.edit if p.direction < 0 else p.base][p.rows] > 0.5):
                self.events[researcher] = self.events.get(researcher, 0) + 1
            else:
                still_open.append(p)
        self._open[researcher] = still_open

    def state(self) -> dict:
        return {"probs": {r: [v.round(6).tolist() for v in vs] for r, vs in self.probs.items()},
                "shown": self.shown, "events": self.events,
                "open": {r: [[p.base, p.edit, p.rows.tolist(), p.direction] for p in ps] for r, ps in self._open.items()}}

    def restore(self, state: dict) -> None:
        self.probs = {r: [np.asarray(v) for v in vs] for r, vs in state.get("probs", {}).items()}
        self.shown = {r: list(v) for r, v in state.get("shown", {}).items()}
        self.events = dict(state.get("events", {}))
        self._open = {r: [_Probe(b, e, np.asarray(rows, dtype=int), d) for b, e, rows, d in ps]
                      for r, ps in state.get("open", {}).items()}
