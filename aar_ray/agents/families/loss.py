"""Loss design: what the student is trained toward, given that the teacher is often wrong.

Burns et al.'s auxiliary confidence loss (the student may overrule the teacher once it is sure),
label smoothing (an overconfident teacher is tempered), and soft bootstrapping (Reed et al. 2014:
the targets mix the teacher with the student's own first-round predictions).
"""
from __future__ import annotations

from aar_ray.agents.families._render import param_rows, render

NAME = "loss"
SPACE = {"kind": ["confidence", "smoothing", "bootstrap"], "strength": [0.25, 0.5, 0.75],
         "warmup": [0.1, 0.2, 0.4], "epochs_mult": [0.5, 1.0, 2.0]}
OPENER = {"kind": "confidence", "strength": 0.5, "warmup": 0.2, "epochs_mult": 1.0}
RECIPES = ("probe", "lora", "full")
NOTES = {"kind": "confidence | smoothing | bootstrap",
         "strength": "confidence: most weight on the hardened student; smoothing: pull to 0.5; bootstrap: "
                     "weight of round 1",
         "warmup": "confidence: share of training over which that weight ramps up",
         "epochs_mult": "epochs, relative to the recipe's"}

WHY = {
    "confidence": "The target mixes the weak label with the student's own hardened prediction, (1 - a) * weak + a * "
                  "hard(student); a ramps from 0 to STRENGTH over the first WARMUP of training, so the student "
                  "first learns from the teacher and then may disagree with it confidently. The hardening "
                  "threshold keeps the weak labels' class balance (Burns et al. 2023, section 4.3.2).",
    "smoothing": "The weak labels are pulled toward 0.5 by STRENGTH before fitting: an overconfident teacher's "
                 "mistakes weigh less, so the student's own knowledge can outvote them.",
    "bootstrap": "Round 1 fits the weak labels; round 2 fits (1 - STRENGTH) * weak + STRENGTH * round 1. Round 1 "
                 "has already averaged part of the teacher's noise away through the student's representation "
                 "(soft bootstrapping, Reed et al. 2014).",
}
EPOCHS = '''
def epochs(ctx):
    """The recipe's epochs (already shortened under fidelity 'quick') times EPOCHS_MULT."""
    base = ctx.epochs if ctx.recipe == "probe" else ctx.finetune_epochs
    return max(1, round(EPOCHS_MULT * base))
'''
CODE = {
    "confidence": '''
def loss(logits, weak, progress):
    alpha = STRENGTH * min(1.0, progress / max(WARMUP, 1e-6))
    probs = torch.sigmoid(logits).detach()  # (B,)
    share = (weak > 0.5).float().mean()
    # the top `share` of the batch is called positive: the student cannot collapse to one class
    thresh = torch.quantile(probs, (1.0 - share).clamp(0.0, 1.0))
    hard = (probs >= thresh).float() if share > 0 else torch.zeros_like(probs)
    return F.binary_cross_entropy_with_logits(logits, (1 - alpha) * weak + alpha * hard)


def run(ctx):
    return ctx.fit(loss_fn=loss, epochs=epochs(ctx)).predict("eval")
''',
    "smoothing": '''
def loss(logits, weak, progress):
    return F.binary_cross_entropy_with_logits(logits, (1 - STRENGTH) * weak + STRENGTH * 0.5)


def run(ctx):
    return ctx.fit(loss_fn=loss, epochs=epochs(ctx)).predict("eval")
''',
    "bootstrap": '''
def loss(logits, target, progress):
    return F.binary_cross_entropy_with_logits(logits, target)


def run(ctx):
    first = ctx.fit(loss_fn=loss, epochs=epochs(ctx))
    target = (1 - STRENGTH) * ctx.weak_labels + STRENGTH * first.predict("train")  # (N_b,)
    return ctx.fit(targets=target, loss_fn=loss, epochs=epochs(ctx), seed_offset=1).predict("eval")
''',
}


def canonical(p: dict) -> dict:
    return {k: v for k, v in p.items() if k != "warmup" or p["kind"] == "confidence"}


def write(p: dict) -> str:
    title = f"loss: {p['kind']} (strength {p['strength']}, epochs x{p['epochs_mult']})"
    return render(NAME, title, WHY[p["kind"]], param_rows(p, NOTES), [EPOCHS, CODE[p["kind"]]])
