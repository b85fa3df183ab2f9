"""The researcher: observe -> brain decides -> execute tool calls -> repeat, until a typed outcome.

`Researcher` is plain Python around two seams: a brain and a `ToolExecutor`. The campaign runs it
as a Ray actor (num_cpus=0, max_restarts) whose state lives in the forum store: the brain's state,
the step and the results of the last step's tool calls, saved as soon as they ran. So a restarted
actor continues where it was, answers the model's last calls with what they really returned, and
never resubmits a finished trial. Its transcript is one JSONL file appended event by event, across
restarts; so is its tape (`aar_ray.agents.tape`): every step's observation, what the brain was handed
and returned, the API exchanges, each tool result, for `aar replay`. Budgets (trials, GPU-seconds, steps, deadline) are checked here, in the harness, not by
the brain; LLM tokens and dollars by the budget authority before every call.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aar_ray import vault
from aar_ray.agents import compose
from aar_ray.agents.base import (BrainError, BudgetExceeded, CampaignStopped, DeadlineReached, Finished,
                                 ResearchOutcome, StepLimit, ToolCall, ToolResult, Transcript, call)
from aar_ray.agents.tape import Tape
from aar_ray.agents.tools import validate
from aar_ray.config import ResearcherBudget
from aar_ray.sandbox.contract import TrialState
from aar_ray.scoring import ScoringError
from aar_ray.w2s.cache import content_key
from aar_ray.w2s.methods import source_hash


class ToolExecutor:
    """Runs one researcher's tool calls against the forum, the scorer and the pool."""

    def __init__(self, researcher: str, forum: Any, scorer: Any, pool: Any, budget: ResearcherBudget,
                 trial_settings: Any, submit_job: Any, seeds: list[int], total_trials: int | None = None):
        self.rid = researcher
        self.forum, self.scorer, self.pool = forum, scorer, pool
        self.budget = budget
        self.trial_settings = trial_settings
        self.submit_job = submit_job  # (trial_id, owner, source, fidelity) -> None; the pool's job runs the trial
        self.seeds = seeds
        self.total_trials = total_trials  # the campaign's trial budget, shared by all researchers
        self.finished_summary: str | None = None

    def execute(self, c: ToolCall) -> ToolResult:
        problem = validate(c.name, c.input)
        if problem:
            return ToolResult(c.id, c.name, {"error": problem}, is_error=True)
        try:
            return ToolResult(c.id, c.name, getattr(self, f"_tool_{c.name}")(c.input))
        except ToolRefused as e:
            return ToolResult(c.id, c.name, {"error": str(e)}, is_error=True)
        except Exception as e:  # the forum/scorer refused or broke: the brain gets a reason, never a crash
            return ToolResult(c.id, c.name, {"error": f"{type(e).__name__}: {e}"}, is_error=True)

    # ---------- tools ----------

    def _tool_submit_method(self, inp: dict) -> dict:
        if self.total_trials is not None:  # finished trials and those in flight: never start one past the budget
            n = call(self.forum, "budget_counts")
            if n["finished"] + n["in_flight"] >= self.total_trials:
                raise ToolRefused(f"the campaign's trial budget is spent or committed: {n['finished']} finished and "
                                  f"{n['in_flight']} running, of {self.total_trials}")
        gpu_s = self.gpu_seconds()
        if gpu_s >= self.budget.gpu_seconds:
            raise ToolRefused(f"GPU-second budget spent: {gpu_s:.0f} of {self.budget.gpu_seconds:.0f}")
        comp = inp.get("composition")
        source = compose.compile_composition(comp) if comp is not None else inp["source"]
        method_id = source_hash(source)
        trial_id = "t" + content_key("trial", method_id, inp["fidelity"], self.seeds)[:15]
        existing = call(self.forum, "trials", None, trial_id)
        try:  # the scorer counts the query (and refuses past the budget) before anything runs
            scored = call(self.scorer, "admit", self.rid, trial_id)
        except ScoringError as e:
            raise ToolRefused(str(e)) from None
        call(self.forum, "add_method", method_id, self.rid, inp["name"], source, inp["rationale"], comp)
        if existing:  # the same method and fidelity was already tried (by anyone): its result is shared
            out = {"trial_id": trial_id, "method_id": method_id, "status": existing[0]["status"],
                   "composition": comp, "note": "this exact trial already exists; its result is shared (one query)"}
            return {**out, **({"val_pgr": scored["val_pgr"], "queries_left": scored["queries_left"]} if scored else {})}
        call(self.forum, "upsert_trial", trial_id, self.rid, method_id, inp["name"], inp["fidelity"], TrialState.QUEUED)
        self.submit_job(trial_id, self.rid, source, inp["fidelity"], inp["name"])
        return {"trial_id": trial_id, "method_id": method_id, "status": TrialState.QUEUED.value, "composition": comp}

    def _tool_get_results(self, inp: dict) -> dict:
        rows = call(self.forum, "trials", self.rid, inp.get("trial_id"))
        out = []
        for r in rows:
            item = {"trial_id": r["trial_id"], "name": r["name"], "method_id": r["method_id"],
                    "fidelity": r["fidelity"], "status": r["status"]}
            if r["status"] == TrialState.SCORED:
                item["val_pgr"] = {"mean": r["val_pgr_mean"], "std": r["val_pgr_std"]}
                item["val_acc"] = r["val_acc"]
            if r["error"]:
                item["reason"] = r["error"]
            out.append(item)
        return {"trials": out, "queries_left": call(self.scorer, "queries_left", self.rid)}

    def _tool_leaderboard(self, inp: dict) -> dict:
        return {"leaderboard": call(self.forum, "leaderboard", inp.get("limit", 10))}

    def _tool_read_forum(self, inp: dict) -> dict:
        return {"findings": call(self.forum, "read_forum", inp.get("limit", 20))}

    def _tool_post_finding(self, inp: dict) -> dict:
        return {"finding_id": call(self.forum, "post_finding", self.rid, inp["text"], inp.get("trial_id"))}

    def _tool_read_method(self, inp: dict) -> dict:
        return call(self.forum, "read_method", inp["method_id"])

    def _tool_finish(self, inp: dict) -> dict:
        self.finished_summary = inp.get("summary", "")
        return {"ok": True}

    # ---------- accounting ----------

    def gpu_seconds(self) -> float:
        snap = call(self.pool, "owner_status", self.rid)
        return float(snap.get("gpu_seconds", 0.0)) if snap else 0.0

    def queries_left(self) -> int:
        return int(call(self.scorer, "queries_left", self.rid))

    def pending(self) -> int:
        return sum(1 for t in call(self.forum, "trials", self.rid) if t["status"] == TrialState.QUEUED)


class ToolRefused(Exception):
    """The harness refuses a well-formed call (a budget); the brain gets the reason."""


@dataclass
class Researcher:
    """One researcher's loop. `run()` returns its outcome; the transcript is saved whatever happens."""

    rid: str
    brain: Any
    executor: ToolExecutor
    budget: ResearcherBudget
    deadline: float  # time.time() after which the campaign is over
    transcript_dir: Path
    stop_flag: Any = None  # callable -> None or {"kind", "reason"}: the campaign asks researchers to wind down
    on_save: Any = None  # callable(rid, outcome, spend, transcript_path): e.g. MLflow
    tape_dir: Path | None = None  # where its tape goes (None: no tape)
    brain_info: dict = field(default_factory=dict)  # what rebuilds the brain in a replay (kind, direction, seed)
    transcript: Transcript = field(init=False)
    tape: Tape = field(init=False)
    _results: list[ToolResult] = field(default_factory=list, init=False)
    _step: int = field(default=0, init=False)
    _observed_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.transcript = Transcript(self.rid, self.transcript_dir / f"{self.rid}.jsonl", scrub=vault.scrub)
        self.tape = Tape(self.tape_dir / f"{self.rid}.jsonl" if self.tape_dir else None, scrub=vault.scrub)
        self._hook("listen", self._brain_event)
        saved = call(self.executor.forum, "load_state", self.rid)
        if saved:  # a restarted actor continues from its persisted state, its last tool results included
            self.brain.restore(saved["brain"])
            self._step = saved["step"]
            self._results = [ToolResult(**r) for r in saved.get("results", [])]
            self.transcript.add("restored", step=self._step, results=len(self._results))
        self.tape.add("start", step=self._step, **self.brain_info)

    def _brain_event(self, kind: str, **data: Any) -> None:
        """The brain's events: API exchanges (whole requests) and budget reservations go to the tape, the
        rest to the transcript."""
        if kind == "api_exchange":
            self.tape.exchange(self._step + 1, data["request"], data["attempts"])
        elif kind == "api_reserved":
            self.tape.add("reserve", step=self._step + 1, **data)
        else:
            self.transcript.add(kind, **data)

    def _hook(self, name: str, *args: Any) -> None:
        """Call one of the brain's optional methods (see `aar_ray.agents.base.Brain`)."""
        fn = getattr(self.brain, name, None)
        if fn is not None:
            fn(*args)

    def observe(self) -> str:
        self._observed_at = time.time()  # before its reads: where the tape puts the observation
        return json.dumps({"step": self._step, "queries_left": self.executor.queries_left(),
                           "pending": self.executor.pending(), "seconds_left": round(self.deadline - time.time()),
                           "spend": {"tokens": self.brain.spend.tokens, "dollars": round(self.brain.spend.dollars, 4)}})

    @property
    def steps_done(self) -> int:
        return self._step

    def check_limits(self) -> None:
        if time.time() >= self.deadline:
            raise DeadlineReached("the campaign deadline passed")
        stop = self.stop_flag() if self.stop_flag is not None else None
        if stop:
            raise CampaignStopped(stop["kind"], f"the campaign is winding down: {stop['reason']}")
        if self._step >= self.budget.steps:
            raise StepLimit(f"used all {self.budget.steps} steps")
        spend = self.brain.spend
        if spend.tokens >= self.budget.tokens:
            raise BudgetExceeded(f"token budget spent: {spend.tokens} of {self.budget.tokens}", kind="token_budget")
        if spend.dollars >= self.budget.dollars:
            raise BudgetExceeded(f"dollar budget spent: ${spend.dollars:.2f} of ${self.budget.dollars:.2f}",
                                 kind="dollar_budget")

    def step(self) -> None:
        """Query the brain, execute its actions."""
        self.check_limits()
        calls = self.decide(self.observe())
        for c in calls:
            self.run_call(c)
        self.settle()
        if all(c.name in ("get_results", "leaderboard", "read_forum") for c in calls):
            self._wait_for_news()

    # the parts of a step, one by one (a replay runs them in the order the record has them)

    def decide(self, observation: str) -> list[ToolCall]:
        """The brain's next calls, taped with what it was given; the step counts once it answers."""
        self.tape.add("observe", t=self._observed_at, step=self._step + 1, observation=observation,
                      handed=[asdict(r) for r in self._results])
        calls = self.brain.act(observation, self._results)
        self._step += 1
        self._results = []
        self.tape.add("act", step=self._step, calls=[asdict(c) for c in calls], spend=vars(self.brain.spend))
        return calls

    def run_call(self, c: ToolCall) -> ToolResult:
        """Execute one of this step's calls."""
        t = time.time()
        r = self.executor.execute(c)
        self.tape.add("result", t=t, step=self._step, index=len(self._results), **asdict(r))
        self._results.append(r)
        self.transcript.add("tool", name=c.name, input=c.input, result=r.content, is_error=r.is_error)
        return r

    def settle(self) -> None:
        """The step's calls have run: tell the brain, persist, and end if it called `finish`."""
        self._hook("on_results", self._results)
        # saved before anything else can fail: a restart must answer these calls with what they returned
        call(self.executor.forum, "save_state", self.rid, {"brain": self.brain.state(), "step": self._step,
                                                           "results": [asdict(r) for r in self._results]})
        self.tape.add("saved", step=self._step)
        if self.executor.finished_summary is not None:
            raise Finished(self.executor.finished_summary)

    def _wait_for_news(self) -> None:
        """Nothing new to do until a trial comes back: wait for one (researchers think while jobs run)."""
        def pending() -> set[str]:
            return {t["trial_id"] for t in call(self.executor.forum, "trials", self.rid)
                    if t["status"] == TrialState.QUEUED}

        waiting = pending()
        end = time.time() + self.budget.idle_wait_s
        while waiting and time.time() < end and time.time() < self.deadline:
            time.sleep(min(0.5, self.budget.idle_wait_s))
            if pending() != waiting:
                return

    def run(self) -> dict:
        outcome: ResearchOutcome = BrainError("did not start")
        try:
            while True:
                self.step()
        except ResearchOutcome as o:
            outcome = o
        except Exception as e:  # an unexpected failure is an outcome too, never a lost transcript
            outcome = BrainError(vault.scrub(f"{type(e).__name__}: {e}"))
        finally:
            self._hook("close")  # e.g. flush the brain's traces before the actor can exit
            path = self.save_transcript(outcome)
        return {"researcher": self.rid, "outcome": outcome.kind, "message": str(outcome), "steps": self._step,
                "transcript": str(path), "spend": vars(self.brain.spend)}

    def save_transcript(self, outcome: ResearchOutcome) -> Path:
        """Append the outcome; hand the whole file (every run segment so far) to `on_save`."""
        self.transcript.add("outcome", outcome=outcome.kind, message=str(outcome))
        self.tape.add("outcome", step=self._step, outcome=outcome.kind, message=str(outcome))
        if self.on_save is not None:
            self.on_save(self.rid, outcome.kind, vars(self.brain.spend), str(self.transcript.path))
        return self.transcript.path
