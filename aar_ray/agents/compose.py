"""Compile a building-block composition into a method file.

The result is ordinary method source (`run(ctx)`), stored and run through the sandbox like any
agent-written method, so a composition is as readable as a hand-written method and is scored the
same way. Blocks: features, label transform (hard labels, smoothing), filtering (keep the most
confident share), example weighting (by confidence, or by the teacher's estimated reliability per
input group), loss (cross-entropy, Burns' auxiliary confidence loss, bootstrapping), schedule
(epochs, lr, weight decay), self-training rounds and bagged ensembles.
"""
from __future__ import annotations

import ast
import json
import re

from aar_ray.agents.tools import COMPOSITION_SCHEMA

DEFAULTS: dict = {
    "loss": "ce", "alpha": 0.5, "warmup": 0.2, "eps": 0.2, "beta": 0.5, "weighting": "none", "power": 1.0,
    "keep": 1.0, "hard_labels": False, "features": "softmax", "epochs_mult": 1.0, "lr": None,
    "weight_decay": None, "ensemble": 1, "rounds": 1,
}

_TEMPLATE = '''"""Composed method: {summary}

Built from building blocks by the harness (aar_ray.agents.compose); SPEC holds the choices.
"""
import torch
import torch.nn.functional as F

SPEC = {spec}


def targets(weak, student=None, progress=0.0):
    t = (weak > 0.5).float() if SPEC["hard_labels"] else weak
    if SPEC["loss"] == "smoothing":
        t = (1 - SPEC["eps"]) * t + SPEC["eps"] * 0.5
    if SPEC["loss"] == "bootstrap" and student is not None:
        t = SPEC["beta"] * t + (1 - SPEC["beta"]) * student
    return t


def loss(logits, t, progress):
    """Per-example loss (B,); the harness averages it with the example weights."""
    if SPEC["loss"] == "confidence":
        alpha = SPEC["alpha"] * min(1.0, progress / max(SPEC["warmup"], 1e-6))
        probs = torch.sigmoid(logits).detach()
        share = (t > 0.5).float().mean()
        thresh = torch.quantile(probs, (1.0 - share).clamp(0.0, 1.0))
        hard = (probs >= thresh).float() if share > 0 else torch.zeros_like(probs)
        t = (1 - alpha) * t + alpha * hard
    return F.binary_cross_entropy_with_logits(logits, t, reduction="none")


def fit(ctx, x, t, weight, offset):
    return ctx.fit_probe(x, t, loss_fn=loss, sample_weight=weight, seed_offset=offset,
                         epochs=max(1, int(round(ctx.epochs * SPEC["epochs_mult"]))), lr=SPEC["lr"],
                         weight_decay=SPEC["weight_decay"])


def group_agreement(ids, p, weak):
    """Per input group (first token after <bos>): how often the teacher agrees with the student."""
    _, inv = torch.unique(ids[:, 1], return_inverse=True)
    agree = 1 - ((p > 0.5).float() - (weak > 0.5).float()).abs()
    n = torch.bincount(inv).float()
    return (torch.zeros(len(n)).index_add_(0, inv, agree) / n)[inv]


def one_student(ctx, x, weak, ids, offset):
    weight = torch.ones(len(weak))
    if SPEC["weighting"] == "confidence":
        weight = (2 * weak - 1).abs() ** SPEC["power"] + 1e-3
    student = None
    probe = None
    for r in range(SPEC["rounds"] + (1 if SPEC["loss"] == "bootstrap" else 0)):
        probe = fit(ctx, x, targets(weak, student), weight, offset + 10 * r)
        student = probe(x)
        if SPEC["weighting"] == "reliability":
            weight = group_agreement(ids, student, weak) ** SPEC["power"] + 1e-3
    return probe


def run(ctx):
    x, weak, ids = ctx.features("train", kind=SPEC["features"]), ctx.weak_labels, ctx.train_ids
    if SPEC["keep"] < 1.0:
        idx = torch.argsort((weak - 0.5).abs(), descending=True)[: max(1, int(SPEC["keep"] * len(weak)))]
        x, weak, ids = x[idx], weak[idx], ids[idx]
    x_eval = ctx.features("eval", kind=SPEC["features"])
    preds = []
    for k in range(SPEC["ensemble"]):
        if SPEC["ensemble"] > 1:  # bagging: each student sees a bootstrap resample
            g = torch.Generator().manual_seed(ctx.seed * 1000 + k)
            b = torch.randint(len(weak), (len(weak),), generator=g)
            preds.append(one_student(ctx, x[b], weak[b], ids[b], 100 * k)(x_eval))
        else:
            preds.append(one_student(ctx, x, weak, ids, 0)(x_eval))
    return torch.stack(preds).mean(0)
'''


def normalize(composition: dict) -> dict:
    """Fill defaults; unknown keys are rejected by the tool schema before this."""
    unknown = set(composition) - set(COMPOSITION_SCHEMA["properties"])
    if unknown:
        raise ValueError(f"unknown composition keys: {sorted(unknown)}")
    spec = {**DEFAULTS, **composition}
    spec["rounds"] = int(spec["rounds"])
    spec["ensemble"] = int(spec["ensemble"])
    return spec


def summary(spec: dict) -> str:
    parts = [f"loss={spec['loss']}"]
    for k in ("weighting", "keep", "hard_labels", "features", "epochs_mult", "lr", "weight_decay", "ensemble", "rounds"):
        if spec[k] != DEFAULTS[k]:
            parts.append(f"{k}={spec[k]}")
    return ", ".join(parts)


def compile_composition(composition: dict) -> str:
    """Method source for a composition (deterministic: the same composition gives the same file)."""
    spec = normalize(composition)
    return _TEMPLATE.format(summary=summary(spec), spec=json.dumps(spec, sort_keys=True).replace("null", "None")
                            .replace("true", "True").replace("false", "False"))


def spec_from_source(source: str) -> dict | None:
    """The SPEC dict of a composed method's source, or None for any other method."""
    m = re.search(r"^SPEC = (\{.*\})$", source, re.M)
    if not m:
        return None
    try:
        spec = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    return spec if isinstance(spec, dict) else None
