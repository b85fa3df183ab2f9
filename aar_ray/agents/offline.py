"""OfflineBrain: a deterministic heuristic researcher that explores method families.

Its space is the families of `aar_ray.agents.families` (loss design, data selection, ensembles and
co-training, weak-label denoising, generic probing and clustering, and fine-tuning variants under a
fine-tuning recipe), not one template's knobs. Each trial is a method file a family writes, named
after its family (`cluster_3`) and submitted as `source`. The brain
  - starts in its direction's family with that family's first idea, then sweeps the family's main
    design choice (each variant of the idea), then mutates the family's best configuration;
  - reads the leaderboard and the sources of the forum's best methods (a family method's source
    says its family and parameters), and follows another family when it leads by a clear margin;
  - leaves a family on a plateau for the untried family its direction leans toward next, and once
    every family is tried, prefers the ones that improved most recently;
  - uses successive halving: a method that trains goes in at fidelity "quick"; the top 1/ETA of its
    quick trials that come near the best full result are promoted to "full"; all within the scorer's
    query budget (`queries_left`);
  - posts a finding, naming the family, when its best improves or when it leaves a family.
Everything is a tool call through the interface Claude uses, and everything it decides from is in
`state()`, so a restarted actor continues where it was.
"""
from __future__ import annotations

import ast
import json
import math
import random

from aar_ray.agents import families
from aar_ray.agents.base import Spend, ToolCall, ToolResult
from aar_ray.sandbox.contract import TrialState
from aar_ray.w2s.methods import source_hash

# direction -> (the families it leans toward, first to last; its first idea in the first of them).
# Families a direction does not list come after these, in an order drawn from the brain's seed.
DIRECTIONS: dict[str, tuple[list[str], dict]] = {
    "loss design": (["loss", "select", "denoise", "ensemble", "cluster"], {}),
    "data selection and filtering": (["select", "denoise", "loss", "cluster", "ensemble"], {}),
    "teacher calibration": (["denoise", "select", "cluster", "loss", "ensemble"], {}),
    "student self-training": (["loss", "ensemble", "denoise", "select", "cluster"], {"kind": "bootstrap"}),
    "ensembles": (["ensemble", "loss", "select", "cluster", "denoise"], {}),
    "curriculum": (["select", "loss", "denoise", "ensemble", "cluster"], {"mode": "weighted"}),
    "representation probing": (["cluster", "ensemble", "denoise", "select", "loss"], {}),
    "fine-tuning": (["finetune", "loss", "select", "denoise", "ensemble", "cluster"], {}),
}
MAX_INFLIGHT = 2
ETA = 2  # successive halving: the top 1/ETA of the quick trials are candidates for full fidelity
TOL = 0.02  # ...if less than this below the best full result (quick naive scored 0.018 below full on world 0)
MIN_GAIN = 0.02  # smaller changes are within the shown PGR's rounding and seed noise
PATIENCE = 2  # trials in a family without a MIN_GAIN improvement: a plateau
FOLLOW = 0.05  # another family this far above my best is evidence enough to switch to it
BOARD = 20  # leaderboard rows read each step
READS = 3  # sources read each step
NEG = float("-inf")


class OfflineBrain:
    def __init__(self, direction: str, seed: int = 0, recipe: str = "probe"):
        self.direction = direction if direction in DIRECTIONS else "loss design"
        self.seed, self.recipe = seed, recipe
        self.spend = Spend()
        self.rng = random.Random(f"{seed}:{self.direction}")
        self.order = self._family_order()
        self.trials: dict[str, dict] = {}  # my trials: family, params, fidelity, name, why, val, state, t
        self.others: dict[str, dict] = {}  # others' scored trials seen on the leaderboard
        self.parsed: dict[str, list] = {}  # method_id -> [family, params], from sources read
        self.read: list[str] = []  # method_ids asked for
        self.plans: dict[str, dict] = {}  # submit call id -> the trial it submits
        self.promoted: list[str] = []  # quick trials already sent to full fidelity
        self.exhausted: list[str] = []  # families with nothing untried left
        self.notes: list[list] = []  # findings to post: [text, trial_id or None]
        self.focus: str | None = None
        self.best: list | None = None  # [val, trial_id] of my best scored trial
        self.naive: float | None = None
        self.step = self._n_calls = self._clock = 0

    def _family_order(self) -> list[str]:
        avail = families.names(self.recipe)
        listed = [f for f in DIRECTIONS[self.direction][0] if f in avail]
        rest = [f for f in avail if f not in listed]
        self.rng.shuffle(rest)
        return listed + rest

    # ---------- state (persisted by the researcher, so a restarted actor continues) ----------

    FIELDS = ("order", "trials", "others", "parsed", "read", "plans", "promoted", "exhausted", "notes", "focus",
              "best", "naive", "step", "_n_calls", "_clock")

    def state(self) -> dict:
        return {"rng": repr(self.rng.getstate()), **{k: getattr(self, k) for k in self.FIELDS}}

    def restore(self, s: dict) -> None:
        self.rng.setstate(ast.literal_eval(s["rng"]))
        for k in self.FIELDS:
            setattr(self, k, s[k])

    # ---------- the decision ----------

    def act(self, observation: str, results: list[ToolResult]) -> list[ToolCall]:
        self.step += 1
        for r in results:
            self._absorb(r)
        left = int(_parse(observation).get("queries_left", 0))  # every scored submission is one query
        calls = [self._call("get_results", {})] if self._pending() else []
        calls.append(self._call("leaderboard", {"limit": BOARD}))
        calls += [self._call("read_method", {"method_id": m}) for m in self._to_read()]
        submit = None
        if left > 0 and len(self._pending()) < MAX_INFLIGHT:
            plan = self._next_trial(left)
            submit = plan and self._submit(plan)
        self._note_new_best()
        calls += [self._call("post_finding", {"text": t, **({"trial_id": tid} if tid else {})}) for t, tid in self.notes]
        self.notes = []
        if submit:
            calls.append(submit)
        if left <= 0 and not self._pending():
            calls.append(self._call("finish", {"summary": self._summary()}))
        return calls

    def _call(self, name: str, data: dict) -> ToolCall:
        self._n_calls += 1
        return ToolCall(f"off_{self.seed}_{self._n_calls}", name, data)

    def _submit(self, plan: dict) -> ToolCall:
        plan["name"] = f"{plan['family']}_{len(self.plans) + 1}"
        source = families.write(plan["family"], plan["params"])
        call = self._call("submit_method", {"name": plan["name"], "source": source, "fidelity": plan["fidelity"],
                                            "rationale": f"[{self.direction}] {plan['why']}"})
        self.plans[call.id] = plan
        return call

    def _pending(self) -> list[str]:
        return [tid for tid, t in self.trials.items() if t["state"] == "pending"]

    # ---------- what comes back ----------

    def _absorb(self, r: ToolResult) -> None:
        if r.is_error or not isinstance(r.content, dict):
            if r.name == "submit_method":  # refused (a budget): nothing was run
                self.plans.pop(r.id, None)
            return
        c = r.content
        if r.name == "submit_method" and c.get("trial_id") and r.id in self.plans:
            self.trials[c["trial_id"]] = {**self.plans[r.id], "val": None, "state": "pending", "t": None}
            if c.get("val_pgr"):  # the same trial existed (someone ran it): its result is shared
                self._scored(c["trial_id"], c["val_pgr"]["mean"])
        elif r.name == "get_results":
            for t in c.get("trials", []):
                tid = t.get("trial_id")
                if tid not in self.trials or self.trials[tid]["state"] != "pending":
                    continue
                if t.get("status") == TrialState.SCORED and t.get("val_pgr"):
                    self._scored(tid, t["val_pgr"]["mean"])
                elif t.get("status") in (TrialState.FAILED, TrialState.REFUSED, TrialState.CANCELLED):
                    self.trials[tid]["state"] = "failed"
        elif r.name == "leaderboard":
            self._absorb_board([row for row in c.get("leaderboard", []) if isinstance(row, dict)])
        elif r.name == "read_method":
            got = families.parse(c.get("source", ""))
            if got and c.get("method_id"):
                self.parsed[c["method_id"]] = [got[0], got[1]]

    def _scored(self, tid: str, val: float) -> None:
        self._clock += 1
        self.trials[tid].update(val=float(val), state="scored", t=self._clock)

    def _absorb_board(self, rows: list[dict]) -> None:
        for row in rows:
            tid, val = row.get("trial_id"), row.get("val_pgr_mean")
            if val is None or tid in self.trials:
                continue
            if row.get("name") == "naive":
                self.naive = float(val)
            fam = families.family_of(str(row.get("name", "")))
            if fam in self.order and tid not in self.others:
                self._clock += 1
                self.others[tid] = {"family": fam, "val": float(val), "fidelity": row.get("fidelity"),
                                    "method_id": row.get("method_id"), "name": row.get("name"),
                                    "researcher": row.get("researcher"), "t": self._clock}

    def _to_read(self) -> list[str]:
        """Sources of others' family methods not yet read, the best first, READS a step: what they tried,
        with which parameters (reading costs no query)."""
        rows = sorted(self.others.values(), key=lambda o: (-o["val"], o["t"]))
        want = list(dict.fromkeys(o["method_id"] for o in rows if o["method_id"] and o["method_id"] not in self.read))
        self.read += want[:READS]
        return want[:READS]

    # ---------- what is known, per family ----------

    def _params_of(self, other: dict) -> dict | None:
        got = self.parsed.get(other["method_id"])
        return got[1] if got else None

    def _results(self, fam: str) -> list[dict]:
        """Every scored result in `fam` (mine and others'), oldest first: val, params (None if unread), t."""
        mine = [{"val": t["val"], "params": t["params"], "t": t["t"], "mine": True, "tid": tid,
                 "fidelity": t["fidelity"]} for tid, t in self.trials.items()
                if t["family"] == fam and t["state"] == "scored"]
        theirs = [{"val": o["val"], "params": self._params_of(o), "t": o["t"], "mine": False, "tid": tid,
                   "fidelity": o["fidelity"]} for tid, o in self.others.items() if o["family"] == fam]
        return sorted(mine + theirs, key=lambda x: x["t"])

    def _family_best(self, fam: str) -> float:
        return max((x["val"] for x in self._results(fam)), default=NEG)

    def _recent_gain(self, fam: str) -> float:
        """How much the family's latest result raised its best (0 when it did not; -inf untried)."""
        vals = [x["val"] for x in self._results(fam)]
        if not vals:
            return NEG
        return max(0.0, vals[-1] - max(vals[:-1], default=NEG)) if len(vals) > 1 else 0.0

    def _plateau(self, fam: str) -> bool:
        """Its main choice swept, and either no variant beat naive by MIN_GAIN (its knobs are not worth
        tuning) or none of my last PATIENCE trials in it gained MIN_GAIN."""
        if self._unswept(fam, self._parent(fam)):
            return False
        if self.naive is not None and self._family_best(fam) < self.naive + MIN_GAIN:
            return True
        res = self._results(fam)
        ideas = [i for i, x in enumerate(res) if x["mine"] and not self.trials[x["tid"]].get("promotion")]
        gains = [res[i]["val"] - max((y["val"] for y in res[:i]), default=NEG) for i in ideas]  # promotions only confirm
        return len(gains) >= PATIENCE and all(g < MIN_GAIN for g in gains[-PATIENCE:])

    def _parent(self, fam: str) -> dict:
        """The family's best known configuration (mine or one read from another's source), else its opener."""
        known = [x for x in self._results(fam) if x["params"] is not None]
        if known:
            return dict(max(known, key=lambda x: (x["val"], -x["t"]))["params"])
        first, opener = self.order[0], DIRECTIONS[self.direction][1]
        return families.canonical(fam, opener if fam == first else {})

    def _tried(self, fam: str, params: dict, fidelity: str | None = None) -> bool:
        """Whether this method (at this fidelity, or any) was tried, by me or by anyone on the board."""
        for x in self._results(fam) + [dict(t, val=None) for t in self.trials.values()
                                       if t["family"] == fam and t["state"] == "pending"]:
            if x["params"] == params and fidelity in (None, x["fidelity"]):
                return True
        mid = source_hash(families.write(fam, params))
        return any(o["method_id"] == mid and fidelity in (None, o["fidelity"]) for o in self.others.values())

    # ---------- the next trial ----------

    def _next_trial(self, left: int) -> dict | None:
        promo = self._promotion(left)
        if promo:
            return promo
        for _ in range(len(self.order)):
            fam = self._choose_family()
            params, why = self._params_in(fam)
            if params is not None:
                trains = families.trains(fam, params) and left > 2  # keep queries to promote the best
                return {"family": fam, "params": params, "fidelity": "quick" if trains else "full",
                        "why": f"{families.describe(fam, params)}: {why}."}
            self.exhausted.append(fam)
        return None

    def _promotion(self, left: int) -> dict | None:
        """Successive halving: a quick trial in the top 1/ETA of mine, near the best full result, goes full."""
        quick = sorted([(tid, t) for tid, t in self.trials.items() if t["state"] == "scored" and
                        t["fidelity"] == "quick"], key=lambda kv: (-kv[1]["val"], kv[1]["t"]))
        top = quick[: max(len(quick) // ETA, 1 if left <= 1 else 0)]  # the last query confirms the best
        fulls = [t["val"] for t in self.trials.values() if t["state"] == "scored" and t["fidelity"] == "full"]
        known = fulls + [o["val"] for o in self.others.values() if o["fidelity"] == "full"]
        bar = max(known + ([self.naive] if self.naive is not None else []), default=NEG) - TOL
        for tid, t in top:
            if tid not in self.promoted and t["val"] > bar and not self._tried(t["family"], t["params"], "full"):
                self.promoted.append(tid)
                return {"family": t["family"], "params": t["params"], "fidelity": "full", "promotion": tid,
                        "why": f"{t['name']} ranked in the top 1/{ETA} of my quick trials: confirming it at full fidelity"}
        return None

    def _choose_family(self) -> str:
        """Follow a family that leads clearly; else stay until a plateau; else the next untried; else
        the family that improved most recently (less-tried ones first)."""
        live = [f for f in self.order if f not in self.exhausted] or list(self.order)
        mine = self.best[0] if self.best else NEG
        lead = max(live, key=lambda f: (self._family_best(f), -self.order.index(f)))
        if lead != self.focus and self._family_best(lead) >= mine + FOLLOW and self.best is not None:
            return self._switch(lead, "follow")
        if self.focus in live and not self._plateau(self.focus):
            return self.focus
        if self.focus is None:  # the first move: the direction's own family
            return self._switch(self.order[0], "explore")
        untried = [f for f in live if not self._results(f) and f != self.focus]
        unswept = [f for f in live if f != self.focus and self._unswept(f, self._parent(f))]
        if untried or unswept:  # a family nobody tried, else one whose main choice is not yet covered
            return self._switch((untried or unswept)[0], "explore")
        n_mine = lambda f: sum(x["mine"] for x in self._results(f))  # noqa: E731
        rest = [f for f in live if f != self.focus] or live
        pick = max(rest, key=lambda f: (self._recent_gain(f) > 0, self._family_best(f) + 0.1 / math.sqrt(1 + n_mine(f))))
        return self._switch(pick, "revisit")

    def _switch(self, fam: str, why: str) -> str:
        old, self.focus = self.focus, fam
        if old is None or old == fam:
            return fam
        mine = [(t["val"], -t["t"], tid, t["name"]) for tid, t in self.trials.items()
                if t["family"] == old and t["state"] == "scored"]
        if why == "follow":
            lead = max((x for x in self._results(fam)), key=lambda x: x["val"])
            self.notes.append([f"Following the evidence: the {fam} family leads at val PGR {lead['val']:.2f}; "
                               f"moving from {old} to {fam}.", lead["tid"]])
        elif mine:
            val, _, tid, name = max(mine)  # the earliest of equals
            below = self.naive is not None and val < self.naive + MIN_GAIN
            reason = (f"no variant beat naive ({self.naive:.2f}) by {MIN_GAIN}" if below else
                      f"no gain of {MIN_GAIN} in my last {PATIENCE}")
            self.notes.append([f"[{old}] plateau after {len(mine)} trials, best val PGR {val:.2f} ({name}); "
                               f"{reason}. Moving on to {fam} ({why}).", tid])
        return fam

    def _params_in(self, fam: str) -> tuple[dict | None, str]:
        """An untried configuration: my direction's opener (in its family), then each variant of the
        family's main choice in an order of my own (teammates entering a family together mostly try
        different variants), then mutations of the family's best."""
        parent = self._parent(fam)
        if fam == self.order[0] and not self._results(fam) and not self._tried(fam, parent):
            return parent, "my direction's first idea"
        for cand in self._unswept(fam, parent):
            return cand, f"the family's main choice ({next(iter(families.FAMILIES[fam].SPACE))}) not yet tried"
        for _ in range(40):
            cand = self._mutate(fam, parent)
            if not self._tried(fam, cand):
                return cand, f"a variation of the family's best, {families.describe(fam, parent)}"
        return None, ""

    def _unswept(self, fam: str, parent: dict) -> list[dict]:
        """The parent with each value of the family's main choice that no known result has used."""
        space = families.FAMILIES[fam].SPACE
        main = next(iter(space))
        used = {x["params"][main] for x in self._results(fam) if x["params"] is not None}
        values = list(space[main])
        random.Random(f"{self.seed}:{fam}").shuffle(values)  # a sweep order of its own: the rng stays untouched
        cands = [families.canonical(fam, {**parent, main: v}) for v in values if v not in used]
        return [c for c in cands if not self._tried(fam, c)]

    def _mutate(self, fam: str, parent: dict) -> dict:
        space, child = families.FAMILIES[fam].SPACE, dict(parent)
        for _ in range(1 + (self.rng.random() < 0.3)):
            key = self.rng.choice(sorted(child))
            child[key] = self.rng.choice([v for v in space[key] if v != child[key]] or space[key])
        return families.canonical(fam, child)

    # ---------- findings and summary ----------

    def _note_new_best(self) -> None:
        scored = [(t["val"], -t["t"], tid) for tid, t in self.trials.items() if t["state"] == "scored"]
        if not scored:
            return
        val, _, tid = max(scored)
        if self.best is not None and val <= self.best[0]:
            return
        t = self.trials[tid]
        what = f"raised my best val PGR from {self.best[0]:.2f} to" if self.best else "my first result: val PGR"
        naive = f" (naive: {self.naive:.2f})" if self.naive is not None else ""
        self.notes.append([f"[{t['family']}] {t['name']}, {families.describe(t['family'], t['params'])} at "
                           f"{t['fidelity']} fidelity, {what} {val:.2f}{naive}.", tid])
        self.best = [val, tid]

    def _summary(self) -> str:
        if not self.best:
            return f"[{self.direction}] no scored trials."
        fams = [f for f in self.order if any(t["family"] == f for t in self.trials.values())]
        per = "; ".join(f"{f}: best {self._family_best(f):.2f}" for f in fams)
        t = self.trials[self.best[1]]
        return (f"[{self.direction}] families tried: {per}. Best: {t['name']} "
                f"{families.describe(t['family'], t['params'])}, val PGR {self.best[0]:.2f}.")


def _parse(observation: str) -> dict:
    try:
        obs = json.loads(observation)
        return obs if isinstance(obs, dict) else {}
    except (TypeError, ValueError):
        return {}
