"""Researchers: tools and their validation, the offline brain, the forum, the loop, budgets, restarts."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from aar_ray.agents import compose, families
from aar_ray.agents.base import ToolCall, ToolResult
from aar_ray.agents.compose import spec_from_source
from aar_ray.agents.offline import OfflineBrain
from aar_ray.agents.researcher import Researcher, ToolExecutor
from aar_ray.agents.tools import TOOLS, validate
from aar_ray.config import ResearcherBudget, ScoringConfig
from aar_ray.forum import Forum, ForumError
from aar_ray.scoring import Scorer

from w2s_helpers import assert_benchmark_room, tiny_cfg


# ---------- tools ----------

def test_tool_schemas_and_validation():
    assert {t["name"] for t in TOOLS} == {"submit_method", "get_results", "leaderboard", "read_forum",
                                          "post_finding", "read_method", "finish"}
    ok = {"name": "m1", "rationale": "r", "fidelity": "quick", "composition": {"loss": "confidence"}}
    assert validate("submit_method", ok) is None
    assert "exactly one of" in validate("submit_method", {**ok, "source": "def run(ctx): return 1"})
    assert "fidelity" in validate("submit_method", {**ok, "fidelity": "medium"})
    assert "composition/loss" in validate("submit_method", {**ok, "composition": {"loss": "magic"}})
    assert "seed" in validate("submit_method", {**ok, "seed": 3})  # seeds cannot be chosen from outside
    assert validate("teleport", {}).startswith("unknown tool 'teleport'")
    assert "not of type 'object'" in validate("get_results", [1, 2])


def test_composition_compiles_to_a_method_file():
    src = compose.compile_composition({"weighting": "reliability", "power": 4, "rounds": 2})
    assert src == compose.compile_composition({"rounds": 2, "power": 4, "weighting": "reliability"})
    spec = spec_from_source(src)
    assert spec["weighting"] == "reliability" and spec["rounds"] == 2 and spec["loss"] == "ce"
    compile(src, "m.py", "exec")  # valid Python
    with pytest.raises(ValueError, match="unknown composition keys"):
        compose.compile_composition({"bogus": 1})


# ---------- forum ----------

def test_forum_persists_and_guards_claims(tmp_path):
    f = Forum(tmp_path / "forum.db", n_seeds=2)
    f.add_method("m1", "r0", "naive", "src", "why")
    f.upsert_trial("t1", "r0", "m1", "naive", "full", "queued")
    with pytest.raises(ForumError, match="not a scored trial"):
        f.post_finding("r0", "it works", "t1")
    with pytest.raises(ForumError, match="must give the trial_id"):
        f.post_finding("r0", "PGR is 0.61 with this trick")
    f.upsert_trial("t1", "r0", "m1", "naive", "full", "scored",
                   {"val_pgr": {"mean": 0.5, "std": 0.1}, "val_acc": 0.8, "seeds": 1})
    with pytest.raises(ForumError, match="1 of 2 seeds"):
        f.post_finding("r0", "result", "t1")
    f.upsert_trial("t1", "r0", "m1", "naive", "full", "scored", {"val_pgr": {"mean": 0.5, "std": 0.1}, "seeds": 2})
    fid = f.post_finding("r0", "confidence weighting helps: see trial", "t1")
    f.post_finding("r1", "an idea without numbers")
    f.save_state("r0", {"step": 7})
    g = Forum(tmp_path / "forum.db", n_seeds=2)  # a restarted actor reopens the same store
    assert [x["id"] for x in g.read_forum()][-1] == fid
    assert g.load_state("r0") == {"step": 7}
    board = g.leaderboard()
    assert board == [{"trial_id": "t1", "researcher": "r0", "method_id": "m1", "name": "naive", "fidelity": "full",
                      "val_pgr_mean": 0.5, "val_pgr_std": 0.1, "seeds": 2}]
    assert not any("test" in k for k in board[0])


# ---------- method families ----------

def test_every_family_writes_a_readable_method_that_parses_back():
    for recipe in ("probe", "lora"):
        for fam, space in families.space(recipe).items():
            for key, choices in space.items():
                for v in choices:
                    params = families.canonical(fam, {key: v})
                    src = families.write(fam, params)
                    compile(src, f"{fam}.py", "exec")  # valid Python
                    assert src.startswith('"""' + fam + ": ")  # the docstring says what it does, family first
                    assert f"FAMILY = {fam!r}" in src and "def run(ctx)" in src
                    assert families.parse(src) == (fam, params)
                    assert families.write(fam, params) == src  # deterministic
    assert "finetune" in families.names("lora") and "finetune" not in families.names("probe")
    assert families.parse(compose.compile_composition({"loss": "ce"})) is None
    assert families.family_of("cluster_3") == "cluster" and families.family_of("naive") is None
    with pytest.raises(ValueError, match="no parameters"):
        families.write("loss", {"bogus": 1})


# ---------- offline brain ----------

def fake_val(source: str, fidelity: str) -> float:
    """A made-up landscape: families differ, quick runs score a little lower."""
    from aar_ray.w2s.methods import source_hash

    base = {"select": 0.30, "loss": 0.20, "denoise": 0.25, "ensemble": 0.10, "cluster": 0.15}[families.parse(source)[0]]
    bump = 0.01 * (int(source_hash(source), 16) % 7)
    return round(base + bump - (0.02 if fidelity == "quick" else 0.0), 2)


def _script(brain: OfflineBrain, steps: int, budget: int = 6) -> list[list[tuple]]:
    """Drive a brain against a scripted harness that scores each submission at once."""
    out, results, left, mine = [], [], budget, []
    for i in range(steps):
        calls = brain.act(json.dumps({"queries_left": left}), results)
        out.append([(c.name, json.dumps(c.input, sort_keys=True)) for c in calls])
        results = []
        for c in calls:
            if c.name == "submit_method":
                left -= 1
                mine.append({"trial_id": f"t{i}", "status": "scored",
                             "val_pgr": {"mean": fake_val(c.input["source"], c.input["fidelity"])}})
                results.append(ToolResult(c.id, c.name, {"trial_id": f"t{i}", "status": "queued"}))
            elif c.name == "get_results":
                results.append(ToolResult(c.id, c.name, {"trials": list(mine), "queries_left": left}))
            elif c.name == "leaderboard":
                results.append(ToolResult(c.id, c.name, {"leaderboard": [
                    {"trial_id": "naive", "name": "naive", "method_id": "m0", "fidelity": "full",
                     "researcher": "driver", "val_pgr_mean": 0.22}]}))
    return out


def _submits(script: list[list[tuple]]) -> list[dict]:
    return [json.loads(inp) for step in script for name, inp in step if name == "submit_method"]


def test_offline_brain_is_deterministic_and_submits_readable_family_methods():
    a = _script(OfflineBrain("data selection and filtering", seed=1), 10, budget=8)
    b = _script(OfflineBrain("data selection and filtering", seed=1), 10, budget=8)
    c = _script(OfflineBrain("data selection and filtering", seed=2), 10, budget=8)
    assert a == b
    assert a != c
    subs = _submits(a)
    assert len(subs) == 8  # exactly its query budget
    first = subs[0]
    assert first["name"] == "select_1" and first["fidelity"] == "quick"
    assert families.parse(first["source"]) == ("select", families.canonical("select", {}))  # its direction's opener
    for s in subs:  # readable source methods, named after their family
        fam, _ = families.parse(s["source"])
        assert s["name"].startswith(fam + "_") and "composition" not in s
        assert s["source"].startswith('"""' + fam)
    names = [n for step in a for n, _ in step]
    assert "post_finding" in names and "leaderboard" in names and names[-1] == "finish"
    findings = [json.loads(i)["text"] for step in a for n, i in step if n == "post_finding"]
    assert all(f.startswith("[") or f.startswith("Following") for f in findings)  # each names its family
    # state round-trips: a restored brain makes the same next decision
    x = OfflineBrain("loss design", seed=3)
    _script(x, 3)
    y = OfflineBrain("loss design", seed=3)
    y.restore(json.loads(json.dumps(x.state())))
    obs = json.dumps({"queries_left": 2})
    assert [(c.name, c.input) for c in x.act(obs, [])] == [(c.name, c.input) for c in y.act(obs, [])]


def test_offline_brain_promotes_its_best_quick_trial_to_full_fidelity():
    subs = _submits(_script(OfflineBrain("data selection and filtering", seed=0), 10, budget=8))
    quick = {s["source"]: s["name"] for s in subs if s["fidelity"] == "quick"}
    full = [s for s in subs if s["fidelity"] == "full"]
    promoted = [s for s in full if s["source"] in quick]
    assert promoted, [(s["name"], s["fidelity"]) for s in subs]
    assert "confirming it at full fidelity" in promoted[0]["rationale"]
    assert subs.index(promoted[0]) >= 2  # a rung of at least two quick trials came first


def test_offline_brain_respects_queries_left():
    brain = OfflineBrain("loss design", seed=0)
    assert not [c for c in brain.act(json.dumps({"queries_left": 0}), []) if c.name == "submit_method"]
    brain = OfflineBrain("loss design", seed=0)
    calls = brain.act(json.dumps({"queries_left": 1}), [])
    subs = [c for c in calls if c.name == "submit_method"]
    assert len(subs) == 1 and subs[0].input["fidelity"] == "full"  # no query left to promote a quick one
    script = _script(OfflineBrain("teacher calibration", seed=4), 12, budget=4)
    assert len(_submits(script)) == 4 and script[-1][-1][0] == "finish"


# ---------- the loop, in process ----------

class InlineJobs:
    """Runs a trial at once in-process and scores it, like the trial service does with the pool."""

    def __init__(self, scorer, forum):
        self.scorer, self.forum, self.count = scorer, forum, 0

    def __call__(self, trial_id, owner, source, fidelity, name):
        from w2s_helpers import run_request
        from aar_ray.w2s.methods import source_hash

        self.count += 1
        preds = run_request(source, self.scorer.request(fidelity))
        val = self.scorer.score(owner, trial_id, name, source, fidelity, preds)
        self.forum.upsert_trial(trial_id, owner, source_hash(source), name, fidelity, "scored", val)

    def owner_status(self, owner):
        return {"gpu_seconds": 0.0}


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AAR_TRACKING", "off")
    scorer = Scorer(tiny_cfg(), ScoringConfig(seeds=[0, 1], query_budget=3))
    forum = Forum(tmp_path / "forum.db", n_seeds=2)
    return scorer, forum, InlineJobs(scorer, forum), tmp_path


def _researcher(world, rid="r0", budget=None, brain=None):
    scorer, forum, jobs, tmp = world
    budget = budget or ResearcherBudget(idle_wait_s=0.0, steps=40)
    ex = ToolExecutor(rid, forum, scorer, jobs, budget, None, jobs, [0, 1], total_trials=10)
    return Researcher(rid, brain or OfflineBrain("data selection and filtering", seed=0), ex, budget,
                      time.time() + 600, tmp / "transcripts")


def test_offline_researcher_loop_end_to_end(world):
    scorer, forum, jobs, tmp = world
    out = _researcher(world).run()
    assert out["outcome"] == "finished", out
    mine = forum.trials("r0")
    assert len(mine) == 3 and all(t["status"] == "scored" for t in mine)  # exactly its query budget
    assert jobs.count == 3
    findings = forum.read_forum()
    assert findings and all(f["trial_id"] for f in findings)  # every claim links a scored trial
    events = [json.loads(l) for l in Path(out["transcript"]).read_text().splitlines()]
    assert events[-1]["kind"] == "outcome" and events[-1]["outcome"] == "finished"
    # the researcher never saw a test number: every tool result it got is in the transcript
    tool_text = json.dumps([e.get("result") for e in events if e["kind"] == "tool"])
    assert "test" not in tool_text.replace("test_", "")
    for r in scorer.driver_results():
        assert f"{r['test_pgr']['mean']:.6f}" not in tool_text


def test_malformed_calls_become_error_results(world):
    class Scripted:
        def __init__(self):
            from aar_ray.agents.base import Spend
            self.spend, self.n = Spend(), 0

        def act(self, obs, results):
            self.n += 1
            self.results = results
            if self.n == 1:
                return [ToolCall("a", "submit_method", {"name": "x"}), ToolCall("b", "warp_drive", {}),
                        ToolCall("c", "read_method", {"method_id": "nope"}), ToolCall("d", "get_results", "oops")]
            return [ToolCall("e", "finish", {"summary": "done"})]

        def state(self):
            return {}

        def restore(self, s):
            pass

    brain = Scripted()
    out = _researcher(world, brain=brain).run()
    assert out["outcome"] == "finished"
    errs = {r.id: r for r in brain.results}
    assert all(r.is_error for r in errs.values())
    assert "required property" in errs["a"].content["error"]
    assert "unknown tool 'warp_drive'" in errs["b"].content["error"]
    assert "no method with method_id 'nope'" in errs["c"].content["error"]
    assert "not of type 'object'" in errs["d"].content["error"]


def test_query_budget_is_enforced_by_the_scorer_and_resubmissions_count(world):
    scorer, forum, jobs, tmp = world
    ex = ToolExecutor("r9", forum, scorer, jobs, ResearcherBudget(idle_wait_s=0.0), None, jobs, [0, 1],
                      total_trials=10)
    args = {"name": "a", "rationale": "r", "fidelity": "quick", "composition": {"loss": "ce"}}
    first = ex.execute(ToolCall("1", "submit_method", args))
    assert not first.is_error and first.content["status"] == "queued" and scorer.queries_left("r9") == 2
    again = ex.execute(ToolCall("2", "submit_method", args))  # the same method: answered from the record...
    assert not again.is_error and again.content["status"] == "scored" and "val_pgr" in again.content
    assert again.content["queries_left"] == 1 == scorer.queries_left("r9")  # ...and still a query
    third = ex.execute(ToolCall("3", "submit_method", {**args, "composition": {"loss": "smoothing"}}))
    assert not third.is_error
    fourth = ex.execute(ToolCall("4", "submit_method", {**args, "composition": {"loss": "bootstrap"}}))
    assert fourth.is_error and "has used all 3 of its 3 scorer queries" in fourth.content["error"]
    assert len(forum.trials("r9")) == 2 and jobs.count == 2  # a refused query runs nothing
    assert [r["trial_id"] for r in scorer.refusals] == [fourth_id(ex, args)]


def fourth_id(ex, args):
    from aar_ray.agents import compose
    from aar_ray.w2s.cache import content_key
    from aar_ray.w2s.methods import source_hash

    src = compose.compile_composition({"loss": "bootstrap"})
    return "t" + content_key("trial", source_hash(src), args["fidelity"], ex.seeds)[:15]


def test_restarted_researcher_continues_without_resubmitting(world):
    scorer, forum, jobs, tmp = world
    r = _researcher(world)
    for _ in range(3):  # a few steps, then the actor "dies"
        r.step()
    before = {t["trial_id"] for t in forum.trials("r0")}
    assert before
    jobs.count = 0
    again = _researcher(world)  # a new process: state comes from the forum
    assert again._step == 3 and again.transcript.events[-1]["kind"] == "restored"
    out = again.run()
    assert out["outcome"] == "finished"
    after = [t["trial_id"] for t in forum.trials("r0")]
    assert len(after) == len(set(after)) == 3
    assert jobs.count == 3 - len(before)  # finished trials were not run again


@pytest.mark.slow
@pytest.mark.benchmark_bases("facts@4")
def test_offline_team_beats_naive_on_the_benchmark(tmp_path, monkeypatch):
    """Three offline researchers with a modest budget (6 scored trials each) beat naive's validation PGR by
    more than its seed std."""
    monkeypatch.setenv("AAR_TRACKING", "off")
    from aar_ray.config import load_config, W2SConfig
    from aar_ray.w2s.methods import resolve

    # world 4: the benchmark's numbers are tuned and reported on worlds 0-2, never this one
    cfg = load_config(W2SConfig, Path(__file__).resolve().parents[1] / "experiments/w2s_quick.yaml",
                      ["torch_threads=2", "world.seed=4"])  # in process, alone: both cores
    scorer = Scorer(cfg, ScoringConfig(seeds=[0, 1, 2], query_budget=6), exempt=("driver",))
    forum = Forum(tmp_path / "forum.db", n_seeds=3)
    jobs = InlineJobs(scorer, forum)
    jobs("naive", "driver", resolve("naive").read_text(), "full", "naive")
    # first, the benchmark's own properties on this world too (tests/test_benchmark.py checks world 0)
    gaps = [b["ceiling"]["test"] - b["weak"]["test"] for b in scorer.baselines().values()]
    assert_benchmark_room(sum(gaps) / len(gaps), scorer.trials["naive"].test, (gaps, scorer.trials["naive"].test))
    budget = ResearcherBudget(idle_wait_s=0.0)
    for i, direction in enumerate(["data selection and filtering", "loss design", "teacher calibration"]):
        ex = ToolExecutor(f"r{i}", forum, scorer, jobs, budget, None, jobs, [0, 1, 2], total_trials=18)
        Researcher(f"r{i}", OfflineBrain(direction, seed=i), ex, budget, time.time() + 3600, tmp_path / "t").run()
    # the scorer's numbers, not the forum's (rounded for researchers to show_decimals)
    rows = scorer.driver_results()
    best = max(r["val_pgr"]["mean"] for r in rows if r["researcher"] != "driver")
    line = next(r["val_pgr"] for r in rows if r["trial_id"] == "naive")
    assert best > line["mean"] + line["std"], (best, line)


class ProbingBrain:
    """A researcher that probes the scorer through the tools, as an agent would: it submits naive with
    a few evaluation predictions flipped, reads the shown validation PGR, keeps the flips when it rose
    and drops them when it fell, then flips the next few, until the scorer refuses it."""

    def __init__(self, naive_source: str, flips: int = 3):
        from aar_ray.agents.base import Spend

        self.spend, self.base, self.flips = Spend(), naive_source, flips
        self.k, self.kept, self.best, self.tried, self.seen, self.refusal = 0, [], None, {}, set(), None

    def _source(self, rows: list[int]) -> str:
        return self.base.replace("def run(ctx) -> torch.Tensor:", "def _naive(ctx):") + f'''

ROWS = {rows!r}


def run(ctx):
    p = _naive(ctx).clone()
    for i in ROWS:
        p[i] = 1.0 - float(p[i] > 0.5)
    return p
'''

    def act(self, obs, results):
        for r in results:
            if r.name == "submit_method" and r.is_error:
                self.refusal = r.content["error"]
            elif r.name == "get_results":
                for t in r.content["trials"]:
                    if t["status"] == "scored" and t["name"] not in self.seen and t["name"] in self.tried:
                        self.seen.add(t["name"])
                        v = t["val_pgr"]["mean"]
                        if self.best is None or v > self.best:  # follow the shown score
                            self.best, self.kept = v, self.tried[t["name"]]
        if self.refusal:
            return [ToolCall("f", "finish", {"summary": "refused"})]
        rows = self.kept + list(range(self.flips * self.k, self.flips * self.k + self.flips)) if self.k else []
        name, self.k = f"p{self.k}", self.k + 1
        self.tried[name] = rows
        return [ToolCall(f"g{self.k}", "get_results", {}),
                ToolCall(f"s{self.k}", "submit_method", {"name": name, "rationale": "probe", "fidelity": "full",
                                                         "source": self._source(rows)})]

    def state(self):
        return {}

    def restore(self, s):
        pass


def test_a_probing_researcher_is_refused_at_its_budget_and_flagged(tmp_path, monkeypatch):
    """The campaign's loop (researcher, tools, scorer, forum): a researcher that hill-climbs the shown
    validation PGR by flipping predictions is stopped by the scorer's query budget and flagged for
    probing; an honest offline researcher beside it is not."""
    from aar_ray.w2s.methods import resolve

    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AAR_TRACKING", "off")
    scorer = Scorer(tiny_cfg("world.n_entities=300"), ScoringConfig(seeds=[0, 1], query_budget=8))
    forum = Forum(tmp_path / "forum.db", n_seeds=2)
    jobs = InlineJobs(scorer, forum)
    world = (scorer, forum, jobs, tmp_path)
    budget = ResearcherBudget(idle_wait_s=0.0, steps=40)
    prober = ProbingBrain(resolve("naive").read_text())
    ex = ToolExecutor("bob", forum, scorer, jobs, budget, None, jobs, [0, 1], total_trials=20)
    out = Researcher("bob", prober, ex, budget, time.time() + 600, tmp_path / "transcripts").run()
    assert out["outcome"] == "finished" and "has used all 8 of its 8 scorer queries" in prober.refusal
    assert len(forum.trials("bob")) == 8 and [r["researcher"] for r in scorer.refusals] == ["bob"]
    assert "bob" in scorer.flagged_researchers(), (scorer.watch.events, prober.best, prober.kept)
    _researcher(world, rid="alice").run()
    assert forum.trials("alice") and "alice" not in scorer.flagged_researchers() and scorer.watch.events.get("alice", 0) == 0
    audit = {r["trial_id"]: r["audit"] for r in scorer.driver_results()}
    assert any("probing" in a for t, a in audit.items() if t in {x["trial_id"] for x in forum.trials("bob")})
