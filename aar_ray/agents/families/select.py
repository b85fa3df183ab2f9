"""Data selection: which weak labels to learn from, and how much to trust each.

Confident subsets (train on the labels the teacher is surest of), confidence weighting, and
reliability weighting (estimate how far the teacher can be trusted on each input group from its
agreement with the student, reweight, refit).
"""
from __future__ import annotations

from aar_ray.agents.families._render import param_rows, render

NAME = "select"
SPACE = {"mode": ["confident", "weighted", "reliability"], "keep": [0.4, 0.6, 0.8], "power": [1, 2, 4],
         "group": ["first", "last"], "rounds": [1, 2, 3]}
OPENER = {"mode": "confident", "keep": 0.6, "power": 2, "group": "first", "rounds": 1}
RECIPES = ("probe", "lora", "full")
NOTES = {"mode": "confident | weighted | reliability",
         "keep": "confident: share of the most confident weak labels trained on",
         "power": "weighted: |2w - 1| ** POWER; reliability: group agreement ** POWER",
         "group": "reliability: the input token naming a group (first: the subject; last: the question)",
         "rounds": "reliability: refits with re-estimated weights"}
RELEVANT = {"confident": ("mode", "keep"), "weighted": ("mode", "power"),
            "reliability": ("mode", "power", "group", "rounds")}
WHY = {
    "confident": "Keeps the KEEP share of B with the largest |weak - 0.5| and trains on those rows alone: the "
                 "teacher's coin flips are dropped, trading data for label quality.",
    "weighted": "Weights every example by |2 * weak - 1| ** POWER: all data is kept, but the teacher's "
                "unsure labels count less.",
    "reliability": "Fits a student, then measures per input group (the GROUP token of the input) how often the "
                   "teacher agrees with it, and refits with each example weighted by its group's agreement ** "
                   "POWER, ROUNDS times: where the teacher is unreliable as a whole, its labels count less.",
}
CODE = {
    "confident": '''
def run(ctx):
    rows = torch.argsort((ctx.weak_labels - 0.5).abs(), descending=True)
    rows = rows[: max(1, round(KEEP * len(rows)))]  # (K,) most confident first
    return ctx.fit(rows=rows).predict("eval")
''',
    "weighted": '''
def run(ctx):
    weight = (2 * ctx.weak_labels - 1).abs() ** POWER + 1e-3  # (N_b,)
    return ctx.fit(sample_weight=weight).predict("eval")
''',
    "reliability": '''
def group_ids(ids, mask):
    """(N,) the token that names each input's group: the first after <bos>, or the last real one."""
    col = torch.ones(len(ids), dtype=torch.long) if GROUP == "first" else mask.sum(1) - 1
    return ids.gather(1, col[:, None]).squeeze(1)


def agreement(groups, student, weak):
    """(N,) per example: how often the teacher agrees with the student in its group."""
    _, inv = torch.unique(groups, return_inverse=True)
    agree = ((student > 0.5) == (weak > 0.5)).float()
    n = torch.bincount(inv).float()
    return (torch.zeros(len(n)).index_add_(0, inv, agree) / n)[inv]


def run(ctx):
    groups = group_ids(ctx.train_ids, ctx.train_mask)
    student = ctx.fit()
    for r in range(ROUNDS):
        weight = agreement(groups, student.predict("train"), ctx.weak_labels) ** POWER + 1e-3
        student = ctx.fit(sample_weight=weight, seed_offset=r + 1)
    return student.predict("eval")
''',
}


def canonical(p: dict) -> dict:
    return {k: p[k] for k in RELEVANT[p["mode"]]}


def write(p: dict) -> str:
    detail = ", ".join(f"{k} {p[k]}" for k in RELEVANT[p["mode"]][1:])
    return render(NAME, f"select: {p['mode']} ({detail})", WHY[p["mode"]], param_rows(p, NOTES), [CODE[p["mode"]]])
