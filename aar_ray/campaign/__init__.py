"""The campaign driver: `aar campaign experiments/<preset>.yaml [overrides]`.

  1. connect to Ray (RAY_ADDRESS, or start a local one);
  2. start the scorer, forum, trial service (the pool) and N researchers;
  3. compute and cache the baselines (inside the scorer) and run the built-in methods;
  4. supervise until the budget or the deadline, showing progress;
  5. run the held-out math and code stage and the audits on the top-k methods;
  6. write the report.
Every campaign has an id; rerunning with the same id resumes from what is recorded: finished trials
are reused by content key (pool ledger, scorer state, MLflow), researchers restart from the forum.

One file per responsibility:
    driver.py       run_campaign: one short function per phase above; the CLI entry
    services.py     the Ray actors (scorer, forum, trial service) and the trial service itself
    researchers.py  the researcher actor and its brain
    progress.py     the live view (rich on a TTY, log lines otherwise)
    heldout.py      the held-out stage and the audits (all jobs submitted, then ray.wait)
    backfill.py     idle GPUs run the held-out stage's pieces for the current top trials ahead of it
Settings: `aar_ray.config.CampaignConfig` (every knob, with its one-line docstring).
"""
from aar_ray.campaign.driver import CampaignError, campaign_main, run_campaign
from aar_ray.config import CampaignConfig

__all__ = ["CampaignConfig", "CampaignError", "campaign_main", "run_campaign"]
