"""Ensembles and co-training across the student's views: its next-token distribution and its layers.

Members read different features of the same student (the softmax over next tokens, hidden states
of different layers), so their errors differ; averaging them, or letting members relabel the data
for each other where they agree (co-training, Blum and Mitchell 1998), cancels some of the
teacher's mistakes that one view alone would copy.
"""
from __future__ import annotations

from aar_ray.agents.families._render import param_rows, render

NAME = "ensemble"
SPACE = {"views": ["softmax+hidden", "layers", "softmax+layers"], "combine": ["mean", "cotrain"],
         "rounds": [1, 2], "agree": [0.6, 0.7, 0.8]}
OPENER = {"views": "softmax+hidden", "combine": "mean", "rounds": 1, "agree": 0.7}
RECIPES = ("probe", "lora", "full")
NOTES = {"views": "softmax+hidden | layers (the last three hidden layers) | softmax+layers",
         "combine": "mean: average the members; cotrain: members relabel the data for each other",
         "rounds": "cotrain: relabel-and-refit rounds",
         "agree": "cotrain: the other members' mean must be this sure to overrule the teacher"}
WHY = {
    "mean": "One linear probe per view of the student, each fit to the weak labels; the prediction is their mean.",
    "cotrain": "One linear probe per view, fit to the weak labels; then, ROUNDS times, each member is refit to the "
               "teacher's labels overruled wherever the other members agree with AGREE confidence (co-training). "
               "The prediction is the members' mean.",
}
VIEWS = '''
def views(ctx):
    """(kind, layer) of each member's features."""
    n = ctx.student.model.config.num_hidden_layers
    layers = [("hidden", -k) for k in range(1, min(n, 3) + 1)]
    if VIEWS == "softmax+hidden":
        return [("softmax", -1), ("hidden", -1)]
    return layers if VIEWS == "layers" else [("softmax", -1)] + layers


def fit_member(ctx, kind, layer, target, offset):
    """A probe on one view: its predictions on the train (N_b,) and eval (N_e,) inputs."""
    x = ctx.features("train", kind=kind, layer=layer)
    probe = ctx.fit_probe(x, target, seed_offset=offset, standardize=(kind == "hidden"))
    return probe(x), probe(ctx.features("eval", kind=kind, layer=layer))


def bagged(ctx, n=3):
    """Fine-tuning recipes have no feature views: n students on bootstrap resamples instead."""
    preds = []
    for k in range(n):
        g = torch.Generator().manual_seed(ctx.seed * 1000 + k)
        rows = torch.randint(len(ctx.weak_labels), (len(ctx.weak_labels),), generator=g)
        preds.append(ctx.fit(rows=rows, seed_offset=k).predict("eval"))
    return torch.stack(preds).mean(0)
'''
CODE = {
    "mean": '''
def run(ctx):
    if ctx.recipe != "probe":
        return bagged(ctx)
    out = [fit_member(ctx, kind, layer, ctx.weak_labels, k) for k, (kind, layer) in enumerate(views(ctx))]
    return torch.stack([ev for _, ev in out]).mean(0)  # (N_e,)
''',
    "cotrain": '''
def relabel(weak, others):
    """The teacher's labels, overruled where the other members are confidently of one mind."""
    sure = (others - 0.5).abs() >= AGREE - 0.5
    return torch.where(sure, others, weak)


def run(ctx):
    if ctx.recipe != "probe":
        return bagged(ctx)
    members = views(ctx)
    targets = [ctx.weak_labels] * len(members)
    for r in range(ROUNDS + 1):
        out = [fit_member(ctx, kind, layer, t, 10 * r + k) for k, ((kind, layer), t) in enumerate(zip(members, targets))]
        train = torch.stack([tr for tr, _ in out])  # (M, N_b)
        others = (train.sum(0, keepdim=True) - train) / (len(out) - 1)  # (M, N_b) the rest's mean
        targets = [relabel(ctx.weak_labels, others[k]) for k in range(len(out))]
    return torch.stack([ev for _, ev in out]).mean(0)  # (N_e,)
''',
}


def canonical(p: dict) -> dict:
    keep = ("views", "combine") + (("rounds", "agree") if p["combine"] == "cotrain" else ())
    return {k: p[k] for k in keep}


def write(p: dict) -> str:
    title = f"ensemble: {p['combine']} over views {p['views']}"
    return render(NAME, title, WHY[p["combine"]], param_rows(p, NOTES), [VIEWS, CODE[p["combine"]]])
