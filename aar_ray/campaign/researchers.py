"""A researcher as a Ray actor: the `Researcher` loop with its brain, its tools and its MLflow run.

Restarts (max_restarts) rebuild it from its state on the forum; `run` resumes the loop. A Claude
brain gets its API key from the campaign's vault, reserves every call with the budget authority and
traces every call to MLflow (`claude.trace`).
"""
from __future__ import annotations

import time
from pathlib import Path

from aar_ray.campaign.services import FORUM, SCORER, TRIALS
from aar_ray.config import CampaignConfig


def budget_lines(cfg: CampaignConfig, deadline: float) -> dict[str, str]:
    """The limits a researcher is held to, as its system prompt states them (stable: the deadline is
    the campaign's, kept across resumes, so the cached prompt prefix stays valid)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(deadline))
    return {
        "scored queries": f"{cfg.scoring.query_budget} (every submission that returns a score is one, a resubmission "
                          "of a scored method included)",
        "LLM dollars": f"${cfg.researcher.dollars:.2f} for you, ${cfg.budget.dollars:.2f} for all researchers together; "
                       "a reply whose worst-case cost could cross what is left is refused, and your research ends",
        "LLM tokens": f"{cfg.researcher.tokens:,} (input, output and cache, all counted)",
        "deadline": f"{when} ({cfg.budget.deadline_s / 60:g} minutes of research from the campaign's start; a restart "
                    "does not extend it)",
        "steps": f"{cfg.researcher.steps} replies",
        "campaign trials": f"{cfg.budget.trials} submissions by all researchers together",
    }


def make_tracer(cfg: CampaignConfig, rid: str, researcher_run: str | None):
    """The MLflow tracer of a Claude researcher's calls, or a null one (`claude.trace=false`, tracking off)."""
    from aar_ray import tracking
    from aar_ray.campaign.driver import experiment_name

    if not (cfg.claude.trace and tracking.default_tracker().enabled):
        return tracking.CallTracer()
    return tracking.MlflowCallTracer(cfg.claude.trace_experiment or experiment_name(cfg.campaign_id),
                                     {tracking.TRACE_CAMPAIGN: cfg.campaign_id, tracking.TRACE_RESEARCHER: rid},
                                     run_id=researcher_run)


def make_brain(kind: str, rid: str, direction: str, seed: int, cfg: CampaignConfig, deadline: float,
               researcher_run: str | None = None, client=None):
    """The researcher's brain: Claude (its key from the vault, its calls reserved with the campaign's
    budget authority, traced; `client`: the API's stand-in in a replay, no key then) or offline."""
    if kind == "claude":
        import ray

        from aar_ray import vault
        from aar_ray.agents.claude import ClaudeBrain
        from aar_ray.agents.prompts import system_prompt
        from aar_ray.budget import BUDGET

        prompt = system_prompt(direction, researcher=rid, budgets=budget_lines(cfg, deadline),
                               n_seeds=len(cfg.scoring.seeds))
        return ClaudeBrain(cfg.claude, prompt, seed=seed, budget=cfg.researcher, researcher=rid,
                           api_key=vault.get(vault.ANTHROPIC_KEY) if client is None else None,
                           authority=ray.get_actor(BUDGET), tracer=make_tracer(cfg, rid, researcher_run), client=client)
    from aar_ray.agents.offline import OfflineBrain

    return OfflineBrain(direction, seed=seed, recipe=cfg.w2s.recipe)


def make_executor(rid: str, cfg: CampaignConfig, forum, scorer, service):
    """A researcher's tools, on the campaign's forum, scorer and trial service (actor handles)."""
    import ray

    from aar_ray.agents.researcher import ToolExecutor

    return ToolExecutor(rid, forum, scorer, service, cfg.researcher, cfg.trial,
                        lambda *a: ray.get(service.submit.remote(*a)), list(cfg.scoring.seeds),
                        total_trials=cfg.budget.trials)


def link_traces(brain, researcher_run: str | None) -> None:
    """The researcher's run names the experiment holding its traces (each trace names the run)."""
    from aar_ray import tracking

    experiment = getattr(getattr(brain, "tracer", None), "experiment_id", None)
    if experiment and researcher_run:
        tracking.default_tracker().set_tags(researcher_run, {tracking.TRACE_EXPERIMENT: experiment})


def record_outcome(researcher_run: str | None, rid: str, outcome: str, spend: dict, path: str) -> None:
    """A researcher's end on its MLflow run: outcome, tokens and dollars, the transcript (every run
    segment so far)."""
    from aar_ray import tracking

    tr = tracking.default_tracker()
    if not tr.enabled or not researcher_run:
        return
    tr.set_tags(researcher_run, {"outcome": outcome})
    tr.log_metrics(researcher_run, {"tokens": sum(spend.get(k, 0) for k in (
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")),
        "dollars": spend.get("dollars", 0.0)})
    tr.log_file(researcher_run, path, "transcript")


class ResearcherActor:
    """One researcher; its methods: `run() -> outcome dict`. Its tape goes to `tape_dir` (if given)."""

    def __init__(self, rid: str, kind: str, direction: str, seed: int, cfg: CampaignConfig, deadline: float,
                 transcript_dir: str, researcher_run: str | None, tape_dir: str | None = None):
        import functools

        import ray

        from aar_ray.agents.researcher import Researcher

        forum, scorer, service = (ray.get_actor(n) for n in (FORUM, SCORER, TRIALS))
        executor = make_executor(rid, cfg, forum, scorer, service)
        brain = make_brain(kind, rid, direction, seed, cfg, deadline, researcher_run)
        link_traces(brain, researcher_run)
        self.researcher = Researcher(rid, brain, executor, cfg.researcher, deadline, Path(transcript_dir),
                                     stop_flag=lambda: ray.get(forum.stop_requested.remote()),
                                     on_save=functools.partial(record_outcome, researcher_run),
                                     tape_dir=Path(tape_dir) if tape_dir else None,
                                     brain_info={"brain": kind, "direction": direction, "seed": seed})

    def run(self) -> dict:
        return self.researcher.run()
