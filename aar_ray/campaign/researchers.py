"""A researcher as a Ray actor: the `Researcher` loop with its brain, its tools and its MLflow run.

Restarts (max_restarts) rebuild it from its state on the forum; `run` resumes the loop.
"""
from __future__ import annotations

from pathlib import Path

from aar_ray.campaign.services import FORUM, SCORER, TRIALS
from aar_ray.config import CampaignConfig


def make_brain(kind: str, direction: str, seed: int, cfg: CampaignConfig):
    """The researcher's brain: Claude (priced, capped by `researcher.dollars`/`tokens`) or offline."""
    if kind == "claude":
        from aar_ray.agents.claude import ClaudeBrain
        from aar_ray.agents.prompts import system_prompt

        return ClaudeBrain(cfg.claude, system_prompt(direction), seed=seed, budget=cfg.researcher)
    from aar_ray.agents.offline import OfflineBrain

    return OfflineBrain(direction, seed=seed, recipe=cfg.w2s.recipe)


class ResearcherActor:
    """One researcher; its methods: `run() -> outcome dict`."""

    def __init__(self, rid: str, kind: str, direction: str, seed: int, cfg: CampaignConfig, deadline: float,
                 transcript_dir: str, researcher_run: str | None):
        import ray

        from aar_ray.agents.researcher import Researcher, ToolExecutor

        forum, scorer, service = (ray.get_actor(n) for n in (FORUM, SCORER, TRIALS))
        self.rid, self.researcher_run = rid, researcher_run
        executor = ToolExecutor(rid, forum, scorer, service, cfg.researcher, cfg.trial,
                                lambda *a: ray.get(service.submit.remote(*a)), list(cfg.scoring.seeds),
                                total_trials=cfg.budget.trials)
        self.researcher = Researcher(rid, make_brain(kind, direction, seed, cfg), executor, cfg.researcher, deadline,
                                     Path(transcript_dir), stop_flag=lambda: ray.get(forum.stop_requested.remote()),
                                     on_save=self._record)

    def _record(self, rid: str, outcome: str, spend: dict, path: str) -> None:
        from aar_ray import tracking

        tr = tracking.default_tracker()
        if not tr.enabled or not self.researcher_run:
            return
        tr.set_tags(self.researcher_run, {"outcome": outcome})
        tr.log_metrics(self.researcher_run, {"tokens": sum(spend.get(k, 0) for k in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")),
            "dollars": spend.get("dollars", 0.0)})
        tr.log_file(self.researcher_run, path, "transcript")

    def run(self) -> dict:
        return self.researcher.run()
