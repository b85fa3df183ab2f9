"""Generic probing and clustering: read the student's representation without labels; weak labels only orient.

The student's representation is read first, with no label and no knowledge of any task's layout: the
main directions of its hidden states (contrast-free PCA, after Burns et al. 2022's unsupervised
probing), k-means clusters of them, or the answers it gives (its next-token distribution after the
input). Only then do the weak labels decide which side of each variable means label 1: by their mean
per variable (cells), or by a probe on the variables.
"""
from __future__ import annotations

from aar_ray.agents.families._render import param_rows, render

NAME = "cluster"
SPACE = {"read": ["hidden", "kmeans", "answer"], "orient": ["cells", "probe"], "per_question": [True, False],
         "shrink": [1.0, 10.0], "components": [4, 16]}
OPENER = {"read": "hidden", "orient": "cells", "per_question": True, "shrink": 1.0, "components": 4}
RECIPES = ("probe", "lora", "full")
NOTES = {"read": "hidden (principal directions) | kmeans (clusters of the hidden states) | answer (next-token "
                 "distribution)",
         "orient": "cells: weak labels' covariance with each variable | probe: a probe on the variables",
         "per_question": "cells: orient each question (the input's last token) on its own",
         "shrink": "cells: pseudo-examples of no covariance in every variable",
         "components": "hidden: principal directions read; kmeans: clusters"}
READ_WHY = {
    "hidden": "It reads the top COMPONENTS principal directions of the student's last hidden state over all "
              "inputs (train and eval, no label).",
    "answer": "It reads the student's answer to each input: its next-token distribution.",
    "kmeans": "It reads which of COMPONENTS k-means clusters of the student's standardized last hidden states "
              "(train and eval, no label) each input falls in.",
}
ORIENT_WHY = {
    "cells": "Then, per variable, the weak labels' covariance with it (shrunk by SHRINK pseudo-examples) "
             "says which side means label 1; the score is each input's variables weighted by those covariances, "
             "so the teacher's noise averages out over all inputs that share a variable.",
    "probe": "Then a linear probe on the variables is fit to the weak labels.",
}
CELLS = '''
def questions(ids, mask):
    """(N,) the last real token of each input: which question it asks."""
    if not PER_QUESTION:
        return torch.zeros(len(ids), dtype=torch.long)
    return ids.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)


def orient_cells(ctx, z_train, z_eval):
    """P(label = 1) (N_e,) from variables: weak-label covariance per variable, per question."""
    weak = ctx.weak_labels.float()
    q_train, q_eval = questions(ctx.train_ids, ctx.train_mask), questions(ctx.eval_ids, ctx.eval_mask)
    score = torch.zeros(len(z_eval))  # a question B never asks stays at P = 0.5
    for q in q_train.unique():
        z, w = z_train[q_train == q], weak[q_train == q]
        cov = (z * (w - w.mean())[:, None]).sum(0) / (z.abs().sum(0) + SHRINK)  # (K,)
        score[q_eval == q] = z_eval[q_eval == q] @ cov
    # only the sign decides a label; the scale keeps the probabilities away from 0.5
    return torch.sigmoid(score / score.abs().mean().clamp_min(1e-8))
'''
PROBE = '''
def orient_probe(ctx, z_train, z_eval):
    """P(label = 1) (N_e,) from a probe on the variables, fit to the weak labels."""
    # principal coordinates have arbitrary scales; distributions over tokens are used as they are
    return ctx.fit_probe(z_train, ctx.weak_labels, standardize=(READ == "hidden"))(z_eval)
'''
READ = {
    "hidden": '''
def read(ctx):
    """(z_train, z_eval): the inputs' coordinates on the main directions of the hidden states."""
    h_train, h_eval = ctx.features("train", kind="hidden"), ctx.features("eval", kind="hidden")
    h = torch.cat([h_train, h_eval])
    mean = h.mean(0)
    _, _, v = torch.pca_lowrank(h - mean, q=COMPONENTS, center=False, niter=4)  # (D, K)
    return (h_train - mean) @ v, (h_eval - mean) @ v
''',
    "answer": '''
def read(ctx):
    """(z_train, z_eval): the student's next-token distributions (N, V)."""
    return ctx.features("train", kind="softmax"), ctx.features("eval", kind="softmax")
''',
    "kmeans": '''
def read(ctx):
    """(z_train, z_eval): one-hot clusters of k-means (COMPONENTS centres) on the standardized hidden states."""
    h_train, h_eval = ctx.features("train", kind="hidden"), ctx.features("eval", kind="hidden")
    h = torch.cat([h_train, h_eval])
    h = (h - h.mean(0)) / h.std(0).clamp_min(1e-6)
    g = torch.Generator().manual_seed(ctx.seed)
    centres = h[torch.randperm(len(h), generator=g)[:COMPONENTS]].clone()  # (K, D)
    for _ in range(20):  # Lloyd's iterations
        assign = torch.cdist(h, centres).argmin(1)  # (N,)
        for k in range(COMPONENTS):
            if (assign == k).any():
                centres[k] = h[assign == k].mean(0)
    z = F.one_hot(torch.cdist(h, centres).argmin(1), COMPONENTS).float()  # (N, K)
    return z[: len(h_train)], z[len(h_train):]
''',
}
RUN = '''
def run(ctx):
    z_train, z_eval = read(ctx)  # no label used yet
    return orient_{orient}(ctx, z_train, z_eval)
'''


def canonical(p: dict) -> dict:
    keep = ["read", "orient"] + (["per_question", "shrink"] if p["orient"] == "cells" else [])
    return {k: p[k] for k in keep + (["components"] if p["read"] in ("hidden", "kmeans") else [])}


def trains(p: dict) -> bool:
    """Only the probe orientation trains (fidelity 'quick' changes nothing else)."""
    return p["orient"] == "probe"


def write(p: dict) -> str:
    title = f"cluster: read the student's {p['read']}, orient by {p['orient']}"
    code = [READ[p["read"]], CELLS if p["orient"] == "cells" else PROBE, RUN.replace("{orient}", p["orient"])]
    return render(NAME, title, READ_WHY[p["read"]] + " " + ORIENT_WHY[p["orient"]], param_rows(p, NOTES), code)
