"""Weak-label denoising: treat the true label as latent and the teacher as a noisy annotator.

EM in the manner of Dawid and Skene (1979) with one annotator whose soft labels are taken as
calibrated over the whole set but not within a group: a label prior per input group is estimated
from the posteriors, and the posteriors from the teacher's label re-weighed by its group's prior;
the student is fit to the posteriors, which carries them to the inputs the teacher never labelled.
"""
from __future__ import annotations

from aar_ray.agents.families._render import param_rows, render

NAME = "denoise"
SPACE = {"group": ["last", "first", "answer"], "rounds": [1, 3, 10], "prior": [1.0, 10.0, 100.0]}
OPENER = {"group": "last", "rounds": 1, "prior": 10.0}
RECIPES = ("probe", "lora", "full")
NOTES = {"group": "whose labels share a rate: last (the input's last token, its question) | first (its subject) | answer "
                  "(the student's top next token)",
         "rounds": "EM rounds",
         "prior": "pseudo-examples pulling each group's label rate toward the overall one"}
CODE = '''
def groups(ctx):
    """(N_b,) a group id per train input."""
    if GROUP == "answer":
        return ctx.features("train", kind="softmax").argmax(1)
    col = ctx.train_mask.sum(1) - 1 if GROUP == "last" else torch.ones(len(ctx.train_ids), dtype=torch.long)
    return ctx.train_ids.gather(1, col[:, None]).squeeze(1)


def group_prior(q, inv):
    """(N_b,) each example's group's label rate under posteriors q, shrunk toward the overall rate."""
    n = int(inv.max()) + 1
    pooled = torch.zeros(n).index_add_(0, inv, q) + PRIOR * q.mean()
    return (pooled / (torch.bincount(inv, minlength=n).float() + PRIOR))[inv]


def run(ctx):
    weak = ctx.weak_labels.float().clamp(0.01, 0.99)  # (N_b,)
    _, inv = torch.unique(groups(ctx), return_inverse=True)
    base = torch.logit(weak.mean())  # the teacher is taken as calibrated over all of B...
    q = weak
    for _ in range(ROUNDS):  # ...but not within a group: its group's rate re-weighs each label
        q = torch.sigmoid(torch.logit(weak) + torch.logit(group_prior(q, inv).clamp(0.01, 0.99)) - base)
    return ctx.fit(targets=q).predict("eval")  # the student carries the denoised labels to eval inputs
'''


def canonical(p: dict) -> dict:
    return dict(p)


def write(p: dict) -> str:
    why = (f"Each of ROUNDS EM rounds estimates a label rate per group ({p['group']}, shrunk by PRIOR "
           "pseudo-examples toward the overall rate) and moves each weak label by its group's rate in log-odds: "
           "logit q = logit weak + logit rate(group) - logit rate(all). A label the teacher gives with little "
           "confidence, against its group, is overruled by the group. The student is fit to the posteriors.")
    title = f"denoise: EM over the teacher's errors, prior per {p['group']} group, {p['rounds']} round(s)"
    return render(NAME, title, why, param_rows(p, NOTES), [CODE])
