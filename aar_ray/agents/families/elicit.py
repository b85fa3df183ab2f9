"""Unsupervised elicitation: read what the student knows without labels; use weak labels only to orient.

The student's knowledge is read first, with no label: the main directions of its hidden states
(contrast-free PCA, after Burns et al. 2022's unsupervised probing), the answers it gives (its
next-token distribution after the input), or what it states about those answers (for each answer,
its next token after `<answer> is`, the public layout of statements in the built-in world). Only
then do the weak labels decide which side of each elicited variable means label 1: by their mean
per variable (cells), or by a probe on the elicited variables.
"""
from __future__ import annotations

from aar_ray.agents.families._render import param_rows, render

NAME = "elicit"
SPACE = {"read": ["hidden", "answer", "statement"], "orient": ["cells", "probe"], "per_question": [True, False],
         "shrink": [1.0, 10.0], "components": [4, 16]}
OPENER = {"read": "hidden", "orient": "cells", "per_question": True, "shrink": 1.0, "components": 4}
RECIPES = ("probe", "lora", "full")
NOTES = {"read": "hidden (principal directions) | answer (next-token distribution) | statement (what the "
                 "student states about its answers)",
         "orient": "cells: weak labels' covariance with each variable | probe: a probe on the variables",
         "per_question": "cells: orient each question (the input's last token) on its own",
         "shrink": "cells: pseudo-examples of no covariance in every variable",
         "components": "hidden: principal directions read"}
READ_WHY = {
    "hidden": "It reads the top COMPONENTS principal directions of the student's last hidden state over all "
              "inputs (train and eval, no label).",
    "answer": "It reads the student's answer to each input: its next-token distribution.",
    "statement": "It reads what the student states about its answers: for each answer it gives with some mass, "
                 "its next-token distribution after `<bos> <answer> is`, averaged under its answer distribution "
                 "(two hops: the answer, then what the student says of it).",
}
ORIENT_WHY = {
    "cells": "Then, per elicited variable, the weak labels' covariance with it (shrunk by SHRINK pseudo-examples) "
             "says which side means label 1; the score is each input's variables weighted by those covariances, "
             "so the teacher's noise averages out over all inputs that share a variable.",
    "probe": "Then a linear probe on the elicited variables is fit to the weak labels.",
}
CELLS = '''
def questions(ids, mask):
    """(N,) the last real token of each input: which question it asks."""
    if not PER_QUESTION:
        return torch.zeros(len(ids), dtype=torch.long)
    return ids.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)


def orient_cells(ctx, z_train, z_eval):
    """P(label = 1) (N_e,) from elicited variables: weak-label covariance per variable, per question."""
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
    """P(label = 1) (N_e,) from a probe on the elicited variables, fit to the weak labels."""
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
    "statement": '''
MASS = 0.01  # an answer is read about if the student gives it this much mass on some input
VERB = "is"  # statements about values in the built-in world read `<value> is <property>`


@torch.no_grad()
def next_token_probs(model, ids, batch_size=512):
    """(N, V) next-token distribution after unpadded prompts ids (N, T)."""
    device = next(model.parameters()).device
    out = [torch.softmax(model(input_ids=ids[i:i + batch_size].to(device)).logits[:, -1].float(), -1).cpu()
           for i in range(0, len(ids), batch_size)]
    return torch.cat(out)


def read(ctx):
    """(z_train, z_eval): E over the student's answers of what it states about them, (N, V)."""
    a_train, a_eval = ctx.features("train", kind="softmax"), ctx.features("eval", kind="softmax")
    tok = ctx.student.tokenizer
    verb = tok.convert_tokens_to_ids(VERB)
    if verb is None or verb == tok.unk_token_id:  # no statement layout to ask in: read the answers
        return a_train, a_eval
    answers = torch.nonzero(torch.cat([a_train, a_eval]).amax(0) >= MASS).squeeze(1)  # (C,)
    prompts = torch.stack([torch.full_like(answers, tok.bos_token_id), answers, torch.full_like(answers, verb)], 1)
    said = next_token_probs(ctx.student.model, prompts)  # (C, V) what it states about each answer
    compose = lambda a: (a[:, answers] / a[:, answers].sum(1, keepdim=True).clamp_min(1e-8)) @ said  # noqa: E731
    return compose(a_train), compose(a_eval)
''',
}
RUN = '''
def run(ctx):
    z_train, z_eval = read(ctx)  # no label used yet
    return orient_{orient}(ctx, z_train, z_eval)
'''


def canonical(p: dict) -> dict:
    keep = ["read", "orient"] + (["per_question", "shrink"] if p["orient"] == "cells" else [])
    return {k: p[k] for k in keep + (["components"] if p["read"] == "hidden" else [])}


def trains(p: dict) -> bool:
    """Only the probe orientation trains (fidelity 'quick' changes nothing else)."""
    return p["orient"] == "probe"


def write(p: dict) -> str:
    title = f"elicit: read the student's {p['read']}, orient by {p['orient']}"
    code = [READ[p["read"]], CELLS if p["orient"] == "cells" else PROBE, RUN.replace("{orient}", p["orient"])]
    return render(NAME, title, READ_WHY[p["read"]] + " " + ORIENT_WHY[p["orient"]], param_rows(p, NOTES), code)
