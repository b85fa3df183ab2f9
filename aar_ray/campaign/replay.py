"""`aar replay <campaign-id> [--until TRIAL]`: rerun a recorded campaign from its tapes and check that
it does the same, stopping at the first difference.

The replay is a new campaign, `<id>-replay` (its own directory, MLflow experiment and tapes, wiped
first), on the record's config and world (the world seed the record's scorer used), with fresh
services. Only what came from outside the harness comes from the tapes (`aar_ray.agents.tape`): a
Claude brain is rebuilt with the recorded API replies (`RecordedAPI`: no key, no network), an offline
brain with its direction and seed. Everything else runs for real: every tool call, every trial
(sandboxed, in the pool), the scorer, the forum, MLflow.

One thread plays the record's events in their recorded order (`Record.timeline`): each researcher's
(re)starts, steps (observe and decide, each call, save) and outcome, and each trial's landing on the
forum. Trials run as soon as they are submitted but land (are scored and reach the forum) only at
their recorded place (`TrialService.release`), so every tool call sees what it saw then, trials
still queued included. It checks, and stops at the first difference:
  - what each brain was handed: the observation and the tool results, less wall-clock fields
    (seconds_left, the forum's timestamps);
  - each request a Claude brain builds, exactly, and each call a brain returns;
  - each tool result, exactly: what a brain saw must not change;
  - each trial's state and status and, when scored, its validation and test PGR (mean, std, per seed)
    within SCORE_TOL of the recorded scorer's;
  - held-out and audit results and flags, when the record got that far.
Known limits: a call in flight when the record's campaign was killed is not made again (the record's
budget authority counted it at its worst case); events less than a forum round trip apart may have
been seen in either order.
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import shutil
import sys
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aar_ray.agents import tape
from aar_ray.agents.base import ResearchOutcome
from aar_ray.agents.replay import CutShort, Divergence, RecordedAPI, RecordedOutcome, ReplayBrain, Step, as_json, difference
from aar_ray.agents.tape import TAPES, TRIALS_TAPE
from aar_ray.config import CampaignConfig, ConfigError, load_written
from aar_ray.sandbox.contract import TrialState, TrialStatus

SUFFIX = "-replay"
# PGR is a ratio of accuracies (counts over the eval rows), so a real change in a trial moves it by at
# least 1/N of the weak-ceiling gap (above 1e-3 on every built-in task); the float noise of averaging
# the same numbers in another order is ~1e-15.
SCORE_TOL = 1e-6


class ReplayError(Exception):
    """The replay cannot start (no such campaign, no tapes, no world seed); the message says why."""


@dataclass
class Record:
    """A recorded campaign, as the replay reads it."""

    cid: str
    run_dir: Path
    cfg: CampaignConfig  # the record's config, as `<cid>-replay` (its world pinned where this installation's differs)
    deadline: float  # the record's research deadline (a Claude brain's system prompt states it)
    tapes: dict[str, list[dict]]  # researcher id -> its tape's events
    trials: list[dict]  # the trial service's tape
    scorer: dict[str, dict]  # trial_id -> the record's scorer numbers (val, test, private, flags)

    def steps(self, rid: str) -> deque:
        """The researcher's steps: each observation, the brain's answer, or how the loop ended there."""
        out: list[Step] = []
        for ev in self.tapes[rid]:
            if ev["kind"] == "observe":
                out.append(Step(ev))
            elif ev["kind"] == "act" and out and out[-1].observe["step"] == ev["step"]:
                out[-1].act = ev
            elif ev["kind"] == "reserve" and out and out[-1].observe["step"] == ev["step"]:
                out[-1].reserve = ev
            elif ev["kind"] == "outcome" and out and out[-1].act is None:
                out[-1].outcome = ev
        return deque(out)

    def exchanges(self, rid: str) -> list[dict]:
        return [ev for ev in self.tapes[rid] if ev["kind"] == "exchange"]

    def brain(self) -> str:
        kinds = {ev["brain"] for events in self.tapes.values() for ev in events if ev["kind"] == "start"}
        return kinds.pop() if len(kinds) == 1 else self.cfg.brain

    def timeline(self) -> list[tuple[str | None, dict]]:
        """(researcher id or None for a trial, event) in recorded time order; each tape keeps its own order."""
        played = ("start", "observe", "result", "saved", "outcome")
        streams = [[(ev["t"], rid, ev) for ev in events if ev["kind"] in played] for rid, events in self.tapes.items()]
        streams.append([(ev["t"], None, ev) for ev in self.trials])
        return [(rid, ev) for _, rid, ev in heapq.merge(*streams, key=lambda x: x[0])]


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def load_record(cid: str) -> Record:
    from aar_ray.home import runs_dir

    run_dir = runs_dir() / cid
    tapes_dir = run_dir / TAPES
    if not (run_dir / "config.yaml").is_file():
        raise ReplayError(f"no recorded campaign {cid!r}: {run_dir / 'config.yaml'} does not exist")
    if not tapes_dir.is_dir():
        raise ReplayError(f"campaign {cid!r} has no tapes ({tapes_dir}): it was recorded before campaigns kept them")
    try:
        tapes = {p.stem: tape.read(p) for p in sorted(tapes_dir.glob("*.jsonl")) if p.name != TRIALS_TAPE}
        trials = tape.read(tapes_dir / TRIALS_TAPE) if (tapes_dir / TRIALS_TAPE).exists() else []
    except ValueError as e:  # a line broken in the middle of a tape
        raise ReplayError(str(e)) from None
    private = run_dir / "private"
    scorer = {t["trial_id"]: {k: t[k] for k in ("val", "test", "private", "flags")}
              for t in _json(private / "scorer.json").get("trials", [])}
    deadline = _json(private / "budget.json").get("deadline_at") or 0.0
    return Record(cid, run_dir, replay_config(cid, run_dir), deadline, tapes, trials, scorer)


def replay_config(cid: str, run_dir: Path) -> CampaignConfig:
    """The record's config.yaml as campaign `<cid>-replay`, beside it, on the record's world."""
    written = load_written(CampaignConfig, run_dir / "config.yaml")
    overrides = [f"campaign_id={cid}{SUFFIX}", f"runs_dir={run_dir.parent}"]
    if written.w2s.world.seed is None:  # the record's installation's secret world
        from aar_ray.w2s.world import secret_seed

        seed = recorded_world_seed(cid)
        if seed != secret_seed():  # another installation's: public here (the record's MLflow tags name it)
            overrides.append(f"w2s.world.seed={seed}")
    return load_written(CampaignConfig, run_dir / "config.yaml", overrides)


def recorded_world_seed(cid: str) -> int:
    """The world seed the record's scorer used: its campaign run's `aar.world_seed` tag in MLflow."""
    from aar_ray import tracking
    from aar_ray.campaign.driver import experiment_name

    tracker = tracking.MlflowTracker()
    exp = tracker.experiment_id(experiment_name(cid))
    runs = tracker.find_runs(exp, "campaign", **{"aar.campaign_id": cid}) if exp else []
    seed = runs[0].tags.get("aar.world_seed") if runs else None
    if seed is None:
        raise ReplayError(f"cannot tell campaign {cid!r}'s world: its config does not pin w2s.world.seed and its "
                          f"campaign run in MLflow ({tracking.tracking_uri()}) has no aar.world_seed tag")
    return int(seed)


@dataclass
class Replayer:
    """Plays a record's timeline against a fresh campaign's services (see the module docstring)."""

    rec: Record
    run: object  # the replay's `driver.Run`
    svc: object  # its `services.Services`
    until: str | None = None
    researchers: dict = field(default_factory=dict)  # rid -> Researcher
    steps: dict = field(default_factory=dict)  # rid -> deque[Step], shared by its rebuilt brains
    apis: dict = field(default_factory=dict)  # rid -> RecordedAPI
    calls: dict = field(default_factory=dict)  # rid -> the calls of its current step
    ended: dict = field(default_factory=dict)  # rid -> the outcome the replay reached, not yet matched
    outcomes: dict = field(default_factory=dict)  # rid -> its outcome's kind, once matched
    landed: set = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)

    def play(self) -> bool:
        """Every recorded event in order; True when the `until` trial landed (the rest is not played)."""
        on = {"start": self._start, "observe": self._observe, "result": self._result, "saved": self._saved,
              "outcome": self._outcome}
        for rid, ev in self.rec.timeline():
            if rid is None:
                if self._land(ev):
                    return True
            else:
                on[ev["kind"]](rid, ev)
        return False

    def _start(self, rid: str, ev: dict) -> None:
        """The record's actor (re)started here: so does the replay's, from the replay's forum."""
        from aar_ray.agents.researcher import Researcher
        from aar_ray.campaign.researchers import link_traces, make_brain, make_executor, record_outcome

        cfg, run, svc = self.run.cfg, self.run, self.svc
        if rid not in self.steps:
            self.steps[rid], self.apis[rid] = self.rec.steps(rid), RecordedAPI(rid, self.rec.exchanges(rid))
        # no waiting between recorded retries: the faults come from the tape
        quick = dataclasses.replace(cfg, claude=dataclasses.replace(cfg.claude, backoff_base_s=0.0, backoff_max_s=0.0,
                                                                    retry_after_max_s=0.0))
        inner = make_brain(ev["brain"], rid, ev["direction"], ev["seed"], quick, self.rec.deadline,
                           run.researcher_runs.get(rid), client=self.apis[rid]) if "brain" in ev else None
        link_traces(inner, run.researcher_runs.get(rid))
        r = Researcher(rid, ReplayBrain(rid, self.steps[rid], inner), make_executor(rid, cfg, svc.forum, svc.scorer,
                                                                                    svc.trials),
                       cfg.researcher, self.rec.deadline, run.run_dir / "transcripts",
                       on_save=functools.partial(record_outcome, run.researcher_runs.get(rid)),
                       tape_dir=run.run_dir / TAPES, brain_info={k: ev[k] for k in ("brain", "direction", "seed") if k in ev})
        if r.steps_done != ev["step"]:
            raise Divergence(f"{rid} restart", f"the record's actor restored step {ev['step']}, "
                                               f"the replay's restored step {r.steps_done}")
        self.researchers[rid] = r

    def _observe(self, rid: str, ev: dict) -> None:
        r = self.researchers[rid]
        try:
            self.calls[rid] = r.decide(r.observe())
        except CutShort as cut:
            self.calls[rid] = []
            if cut.reserve:
                self._reserve(rid, cut)
        except ResearchOutcome as o:  # the brain ended the loop (a budget, the API gone): compared at the outcome
            self.ended[rid] = o

    def _reserve(self, rid: str, cut: CutShort) -> None:
        """The reservation of a call the record's actor died in: kept open, as the record's authority
        counted it after the restart."""
        import ray

        r = cut.reserve
        try:
            ray.get(self.svc.budget.reserve.remote(rid, r["dollars"], r["tokens"], r["how"]))
        except ResearchOutcome as o:
            raise Divergence(f"{cut}, budget reservation", f"the record's authority granted it, the replay's "
                                                            f"refused it: {o}") from None

    def _result(self, rid: str, ev: dict) -> None:
        calls, i = self.calls.get(rid, []), ev["index"]
        where = f"{rid} step {ev['step']} call {i + 1}"
        if i >= len(calls):
            raise Divergence(where, f"the record ran {ev['name']} ({ev['id']}) here; the replay's step has "
                                    f"{len(calls)} call(s)")
        where += f" ({calls[i].name} {calls[i].id})"
        got = as_json(asdict(self.researchers[rid].run_call(calls[i])))
        want = {k: ev[k] for k in ("id", "name", "content", "is_error")}
        found = difference(want, got)
        if found:
            raise Divergence(where, found, want["content"], got["content"])
        self.counts["tool results"] += 1

    def _saved(self, rid: str, ev: dict) -> None:
        try:
            self.researchers[rid].settle()
        except ResearchOutcome as o:  # it called finish
            self.ended[rid] = o

    def _outcome(self, rid: str, ev: dict) -> None:
        """The record's loop ended here. An outcome the replay reached itself must be the same; one the
        record's harness decided on wall time or from outside (deadline, wind-down, a crash) is taken as is."""
        got = self.ended.pop(rid, None)
        if got is not None and (got.kind, str(got)) != (ev["outcome"], ev["message"]):
            raise Divergence(f"{rid} outcome", f"expected {ev['outcome']} ({ev['message']}), got {got.kind} ({got})")
        r = self.researchers[rid]
        r.brain.close()
        r.save_transcript(got or RecordedOutcome(ev["outcome"], ev["message"]))
        self.outcomes[rid] = ev["outcome"]

    def _land(self, ev: dict) -> bool:
        """A trial's outcome reached the record's forum here: the replay's lands now; both must agree."""
        import ray

        tid = ev["trial_id"]
        where = f"trial {tid} ({ev['owner']})"
        if not ray.get(self.svc.trials.release.remote(tid, ev["status"] == TrialStatus.CANCELLED.value)):
            raise Divergence(where, f"the record has it end here ({ev['state']}, {ev['status']}); the replay never "
                                    "submitted it")
        row = ray.get(self.svc.forum.trials.remote(None, tid))[0]
        found = difference({"state": ev["state"], "status": ev["status"]}, {"state": row["status"], "status": row["outcome"]})
        if found:
            raise Divergence(where, found, ev, row)
        if ev["state"] == TrialState.SCORED.value:
            self._check_score(where, tid)
        self.landed.add(tid)
        return tid == self.until

    def _check_score(self, where: str, tid: str) -> None:
        import ray

        want = self.rec.scorer.get(tid)
        if want is None:
            raise Divergence(where, "the record's scorer state has no numbers for this scored trial")
        got = as_json(ray.get(self.svc.scorer.numbers.remote(tid)))
        want, got = {k: want[k] for k in ("val", "test")}, {k: got[k] for k in ("val", "test")}
        found = difference(want, got, tol=SCORE_TOL)
        if found:
            raise Divergence(f"{where}, score", found, want, got)

    def finish(self) -> None:
        """After the last event: nothing recorded is left unplayed; then the held-out stage and audits,
        when the record reached them."""
        import ray

        for rid, steps in self.steps.items():
            if steps or self.apis[rid].left:
                raise Divergence(f"{rid} end", f"the record has {len(steps)} more step(s) and {self.apis[rid].left} "
                                               "more API attempt(s) than were played")
        ray.get(self.svc.trials.cancel_all.remote())  # trials the record never saw end (it was killed)
        if any(n["private"] for n in self.rec.scorer.values()):
            self._heldout()

    def _heldout(self) -> None:
        import ray

        from aar_ray.campaign.heldout import run_heldout_and_audits
        from aar_ray.campaign.progress import Progress

        progress = Progress(self.run.cfg.progress, [(r, self.run.directions[r]) for r in self.run.rids])
        try:
            run_heldout_and_audits(self.run.cfg, self.svc, progress, self.run.t_start)
        finally:
            progress.close()
        for tid, want in self.rec.scorer.items():
            got = ray.get(self.svc.scorer.numbers.remote(tid))
            if got is None:
                raise Divergence(f"trial {tid}", "scored in the record, never in the replay")
            want, got = {k: want[k] for k in ("private", "flags")}, as_json({k: got[k] for k in ("private", "flags")})
            found = difference(want, got, tol=SCORE_TOL)
            if found:
                raise Divergence(f"trial {tid}, held-out and audits", found, want, got)
            self.counts["held-out and audited trials"] += bool(want["private"])

    def summary(self) -> str:
        apis = sum(len(self.rec.exchanges(r)) for r in self.steps)
        steps = sum(r.steps_done for r in self.researchers.values())
        parts = [f"{len(self.researchers)} researcher(s)", f"{steps} steps",
                 f"{self.counts['tool results']} tool results", f"{len(self.landed)} trials (scores within {SCORE_TOL:g})"]
        parts += [f"{apis} API calls from the tape"] if apis else []
        n = self.counts["held-out and audited trials"]
        return ", ".join(parts + ([f"held-out and audits of {n} trial(s)"] if n else []))


def _fresh(cfg: CampaignConfig) -> None:
    """A replay starts from nothing: the previous replay's directory goes (its ledger would answer
    trials without running them), and so do its MLflow runs (deleted, restorable)."""
    from aar_ray import tracking
    from aar_ray.campaign.driver import experiment_name, runs_root

    shutil.rmtree(runs_root(cfg) / cfg.campaign_id, ignore_errors=True)
    tracker = tracking.MlflowTracker()
    exp = tracker.experiment_id(experiment_name(cfg.campaign_id))
    if exp:
        tracker.clear_experiment(exp)


def replay(rec: Record, until: str | None = None) -> str:
    """Replay `rec` (up to the trial `until`); returns the summary; raises Divergence at the first difference."""
    import ray

    from aar_ray import vault
    from aar_ray.campaign import driver
    from aar_ray.campaign.services import start_services

    sandbox = driver.sandbox_requirement(rec.cfg)
    _fresh(rec.cfg)
    run = driver.open_run(rec.cfg, kind=rec.brain())
    run.tracker.set_tags(run.campaign_run, {"aar.replay_of": rec.cid})
    started = driver.connect_ray(run.cfg, namespace=f"aar-{run.cfg.campaign_id}")
    verdict = "diverged"
    try:
        run.cfg, _ = driver.fit_to_cluster(run.cfg, *driver.cluster_gpus())
        # the replay needs no API key, so its vault holds none; MLflow's credentials, if any, it does
        secrets = {k: v for k, v in vault.from_env().items() if k in vault.MLFLOW_SECRETS}
        svc = start_services(run.cfg, run.run_dir, run.experiment_id, run.researcher_runs, driver.worker_env(),
                             sandbox.required, secrets, hold=True)
        ray.get(svc.forum.set_stop.remote(None))
        driver.score_baselines(run, svc)
        player = Replayer(rec, run, svc, until)
        try:
            if not player.play():
                player.finish()
            verdict = "identical"
        except Divergence as d:
            verdict = f"diverged at {d.where}: {d.diff}"
            raise
        finally:
            ray.get(svc.trials.cancel_all.remote())
        return player.summary()
    finally:
        run.tracker.set_tags(run.campaign_run, {"aar.replay": verdict})
        for run_id in set(run.researcher_runs.values()):
            run.tracker.end_run(run_id, "FINISHED" if verdict == "identical" else "FAILED")
        if started:
            ray.shutdown()


def _show(d: Divergence) -> str:
    """The diff a person reads: where, the first difference, then the whole of both sides (shortened)."""
    def whole(value) -> str:
        text = json.dumps(value, indent=1, sort_keys=True, default=str)
        return text if len(text) <= 3000 else text[:3000] + "\n  ..."

    lines = [f"replay: {d.where} differs from the record", f"  first difference: {d.diff}"]
    if d.expected is not None or d.got is not None:
        lines += ["  expected (the record):", whole(d.expected), "  got (the replay):", whole(d.got)]
    return "\n".join(lines)


def replay_main(cid: str, until: str | None = None) -> int:
    """The CLI: 0 and `replay: identical: ...` when everything matched, 1 and `replay: diverged at ...`
    otherwise, 2 when the replay could not start."""
    from aar_ray.home import check_env

    try:
        check_env()
        rec = load_record(cid)
        trials = {ev["trial_id"] for ev in rec.trials}
        if until and until not in trials:
            raise ReplayError(f"--until {until}: the record has no such trial; it has {', '.join(sorted(trials)) or 'none'}")
        summary = replay(rec, until)
    except (ReplayError, ConfigError) as e:
        print(f"aar replay: {e}", file=sys.stderr)
        return 2
    except Divergence as d:
        print(_show(d), flush=True)
        print(f"replay: diverged at {d.where}: {d.diff}", flush=True)
        return 1
    print(f"replay: identical{f' up to trial {until}' if until else ''}: {summary}", flush=True)
    return 0
