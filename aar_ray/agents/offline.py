"""OfflineBrain: a deterministic heuristic researcher that needs no key, no GPU and no network.

It composes methods from building blocks (`aar_ray.agents.compose`), explores the blocks its
research direction points at, exploits the forum's best (reading its source, then mutating its
composition), keeps a couple of trials in flight while it "thinks", and posts a finding linked to
the trial whenever it beats its own best. Everything it does is a tool call through the same
interface Claude uses, so its behaviour exercises the whole harness.
"""
from __future__ import annotations

import ast
import json
import random
import re

from aar_ray.agents.base import Spend, ToolCall, ToolResult
from aar_ray.sandbox.contract import TrialState

# the blocks each direction explores first (its deliberately vague starting point)
DIRECTION_KEYS: dict[str, list[str]] = {
    "loss design": ["loss", "alpha", "warmup", "eps", "beta"],
    "data selection and filtering": ["weighting", "power", "rounds", "keep"],
    "teacher calibration": ["hard_labels", "eps", "loss", "weighting"],
    "student self-training": ["rounds", "loss", "beta", "weighting"],
    "ensembles": ["ensemble", "epochs_mult", "rounds"],
    "curriculum": ["epochs_mult", "lr", "warmup"],
    "representation probing": ["features", "weight_decay", "lr"],
}
CHOICES: dict[str, list] = {
    "loss": ["ce", "confidence", "smoothing", "bootstrap"],
    "alpha": [0.25, 0.5, 0.75],
    "warmup": [0.1, 0.2, 0.4],
    "eps": [0.1, 0.2, 0.3],
    "beta": [0.3, 0.5, 0.7],
    "weighting": ["none", "confidence", "reliability"],
    "power": [1, 2, 4, 6],
    "rounds": [1, 2, 3],
    "keep": [1.0, 0.8, 0.6],
    "hard_labels": [False, True],
    "features": ["softmax", "hidden"],
    "epochs_mult": [0.5, 1.0, 2.0],
    "lr": [None, 0.003, 0.03],
    "weight_decay": [None, 0.01, 0.1],
    "ensemble": [1, 3],
}
# a researcher's first idea in each direction: what a person new to the problem would try first
OPENERS: dict[str, dict] = {
    "loss design": {"loss": "confidence"},
    "data selection and filtering": {"weighting": "confidence", "power": 1},
    "teacher calibration": {"loss": "smoothing", "eps": 0.2},
    "student self-training": {"loss": "bootstrap", "rounds": 2},
    "ensembles": {"ensemble": 3},
    "curriculum": {"epochs_mult": 2.0},
    "representation probing": {"weight_decay": 0.01},
}
MAX_INFLIGHT = 2


def spec_from_source(source: str) -> dict | None:
    """The SPEC dict of a composed method's source, or None for hand-written methods."""
    m = re.search(r"^SPEC = (\{.*\})$", source, re.M)
    if not m:
        return None
    try:
        spec = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    return spec if isinstance(spec, dict) else None


class OfflineBrain:
    def __init__(self, direction: str, seed: int = 0):
        self.direction = direction if direction in DIRECTION_KEYS else "loss design"
        self.seed = seed
        self.spend = Spend()
        self.rng = random.Random(f"{seed}:{self.direction}")
        self.tried: list[str] = []  # canonical JSON of compositions submitted
        self.pending: dict[str, dict] = {}  # trial_id -> composition
        self.scored: dict[str, float] = {}  # trial_id -> val PGR mean
        self.compositions: dict[str, dict] = {}  # trial_id -> composition
        self.best: tuple[float, str] | None = None
        self.posted: set[str] = set()
        self.asked: set[str] = set()  # method_ids requested via read_method
        self.board: list[dict] = []
        self.adopted: dict | None = None  # the forum leader's composition, once read
        self.step = 0
        self._n_calls = 0

    # ---------- state (persisted by the researcher, so a restarted actor continues) ----------

    def state(self) -> dict:
        return {"rng": repr(self.rng.getstate()), "tried": self.tried, "pending": self.pending, "scored": self.scored,
                "compositions": self.compositions, "best": self.best, "posted": sorted(self.posted),
                "asked": sorted(self.asked), "board": self.board, "adopted": self.adopted, "step": self.step,
                "n_calls": self._n_calls}

    def restore(self, s: dict) -> None:
        self.rng.setstate(_literal_state(s["rng"]))
        self.tried, self.pending, self.scored = s["tried"], s["pending"], s["scored"]
        self.compositions, self.board, self.step = s["compositions"], s["board"], s["step"]
        self.adopted = s["adopted"]
        self.best = tuple(s["best"]) if s["best"] else None
        self.posted, self.asked, self._n_calls = set(s["posted"]), set(s["asked"]), s["n_calls"]

    # ---------- the decision ----------

    def act(self, observation: str, results: list[ToolResult]) -> list[ToolCall]:
        self.step += 1
        for r in results:
            self._absorb(r)
        obs = _parse(observation)
        trials_left = int(obs.get("queries_left", 0))  # the scorer's budget: every scored submission is one
        calls: list[ToolCall] = []
        if self.pending:
            calls.append(self._call("get_results", {}))
        new_best = self._new_best()
        if new_best:
            trial_id, pgr = new_best
            self.posted.add(trial_id)
            spec = self.compositions.get(trial_id, {})
            calls.append(self._call("post_finding", {
                "text": f"[{self.direction}] new best of mine with composition {json.dumps(spec, sort_keys=True)}; "
                        "see the linked trial for its validation numbers.", "trial_id": trial_id}))
        if self.step % 3 == 1:
            calls.append(self._call("leaderboard", {"limit": 5}))
        to_read = self._leader_to_read()
        if to_read:
            self.asked.add(to_read)
            calls.append(self._call("read_method", {"method_id": to_read}))
        if trials_left > 0 and len(self.pending) < MAX_INFLIGHT:
            comp = self._propose()
            if comp is not None:
                key = json.dumps(comp, sort_keys=True)
                self.tried.append(key)
                fidelity = "quick" if trials_left > 8 and len(self.scored) < 2 else "full"
                calls.append(self._call("submit_method", {
                    "name": f"{self.direction.split()[0]}_{len(self.tried)}", "composition": comp,
                    "rationale": self._rationale(comp), "fidelity": fidelity}))
        if trials_left <= 0 and not self.pending:
            calls.append(self._call("finish", {"summary": self._summary()}))
        return calls

    def _call(self, name: str, data: dict) -> ToolCall:
        self._n_calls += 1
        return ToolCall(f"off_{self.seed}_{self._n_calls}", name, data)

    def _absorb(self, r: ToolResult) -> None:
        if r.is_error or not isinstance(r.content, dict):
            return
        c = r.content
        if r.name == "submit_method" and c.get("trial_id"):
            comp = c.get("composition") or {}
            self.pending[c["trial_id"]] = comp
            self.compositions[c["trial_id"]] = comp
        elif r.name == "get_results":
            for t in c.get("trials", []):
                tid = t.get("trial_id")
                if t.get("status") == TrialState.SCORED and t.get("val_pgr") is not None:
                    self.scored[tid] = float(t["val_pgr"]["mean"])
                    self.pending.pop(tid, None)
                elif t.get("status") in (TrialState.FAILED, TrialState.REFUSED, TrialState.CANCELLED):
                    self.pending.pop(tid, None)
        elif r.name == "leaderboard":
            self.board = [row for row in c.get("leaderboard", []) if isinstance(row, dict)]
        elif r.name == "read_method":
            spec = spec_from_source(c.get("source", ""))
            if spec:
                self.adopted = spec

    def _new_best(self) -> tuple[str, float] | None:
        if not self.scored:
            return None
        tid, pgr = max(self.scored.items(), key=lambda kv: (kv[1], kv[0]))
        if tid in self.posted or (self.best and pgr <= self.best[0]):
            return None
        self.best = (pgr, tid)
        return tid, pgr

    def _leader_to_read(self) -> str | None:
        """Read the source of the forum's leader when it is someone else's and beats our best."""
        if not self.board:
            return None
        top = self.board[0]
        mine = self.best[0] if self.best else float("-inf")
        if top.get("method_id") and top["method_id"] not in self.asked and top.get("trial_id") not in self.scored \
                and (top.get("val_pgr_mean") or float("-inf")) > mine:
            return top["method_id"]
        return None

    def _propose(self) -> dict | None:
        """Next composition: the direction's opener, then mutations of the best known spec."""
        opener = OPENERS[self.direction]
        if json.dumps(opener, sort_keys=True) not in self.tried:
            return dict(opener)
        parent = self._parent()
        focus = DIRECTION_KEYS[self.direction]
        for _ in range(50):
            child = dict(parent)
            n_mut = 1 + (self.rng.random() < 0.4)
            for _ in range(n_mut):
                key = self.rng.choice(focus) if self.rng.random() < 0.7 else self.rng.choice(sorted(CHOICES))
                child[key] = self.rng.choice(CHOICES[key])
            child = {k: v for k, v in child.items() if v is not None}
            if json.dumps(child, sort_keys=True) not in self.tried:
                return child
        return None

    def _parent(self) -> dict:
        """Exploit: the best of our own scored compositions, or the forum leader's when it is better."""
        adopted = self.adopted
        mine = self.best[0] if self.best else float("-inf")
        leader = self.board[0].get("val_pgr_mean") if self.board else None
        if adopted and leader is not None and leader > mine:
            return {k: v for k, v in adopted.items() if k in CHOICES and v is not None}
        if self.best:
            return dict(self.compositions.get(self.best[1], OPENERS[self.direction]))
        return dict(OPENERS[self.direction])

    def _rationale(self, comp: dict) -> str:
        return (f"Direction '{self.direction}': testing {json.dumps(comp, sort_keys=True)}; "
                f"{'mutating my best so far' if self.best else 'a first probe of this direction'}.")

    def _summary(self) -> str:
        if not self.best:
            return f"[{self.direction}] no scored trials."
        pgr, tid = self.best
        return f"[{self.direction}] best composition {json.dumps(self.compositions.get(tid, {}), sort_keys=True)} " \
               f"(trial {tid}); {len(self.scored)} trials scored."


def _parse(observation: str) -> dict:
    try:
        obs = json.loads(observation)
        return obs if isinstance(obs, dict) else {}
    except (TypeError, ValueError):
        return {}


def _literal_state(text: str):
    """random.Random state from its repr (tuples of ints)."""
    return ast.literal_eval(text)
