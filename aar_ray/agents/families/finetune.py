"""Fine-tuning variants (recipes lora and full): how the student's own weights learn from the teacher.

Under a fine-tuning recipe the student moves its weights, not only a probe, so how long and how fast
it trains decides how much of the teacher's noise it memorizes. Variants: the loss (cross-entropy
or Burns' confidence loss), training on the teacher's confident share only, epochs and learning rate.
"""
from __future__ import annotations

from aar_ray.agents.families._render import param_rows, render

NAME = "finetune"
SPACE = {"loss": ["ce", "confidence"], "keep": [1.0, 0.7, 0.5], "epochs_mult": [0.5, 1.0, 2.0],
         "lr_mult": [0.3, 1.0, 3.0]}
OPENER = {"loss": "ce", "keep": 0.7, "epochs_mult": 1.0, "lr_mult": 1.0}
RECIPES = ("lora", "full")
NOTES = {"loss": "ce | confidence (Burns' auxiliary confidence loss, alpha 0.5 after 20% warm-up)",
         "keep": "share of the most confident weak labels trained on",
         "epochs_mult": "epochs, relative to the recipe's",
         "lr_mult": "learning rate, relative to the recipe's"}
CODE = '''
def loss(logits, weak, progress):
    if LOSS == "ce":
        return F.binary_cross_entropy_with_logits(logits, weak)
    alpha = 0.5 * min(1.0, progress / 0.2)
    probs = torch.sigmoid(logits).detach()  # (B,)
    share = (weak > 0.5).float().mean()
    thresh = torch.quantile(probs, (1.0 - share).clamp(0.0, 1.0))  # keeps the weak labels' class balance
    hard = (probs >= thresh).float() if share > 0 else torch.zeros_like(probs)
    return F.binary_cross_entropy_with_logits(logits, (1 - alpha) * weak + alpha * hard)


def run(ctx):
    rows = torch.argsort((ctx.weak_labels - 0.5).abs(), descending=True)
    rows = rows[: max(1, round(KEEP * len(rows)))]  # (K,) most confident first
    lr = (ctx.finetune_cfg.full_lr if ctx.recipe == "full" else ctx.finetune_cfg.lr) * LR_MULT
    epochs = max(1, round(EPOCHS_MULT * ctx.finetune_epochs))
    return ctx.fit(rows=rows, loss_fn=loss, epochs=epochs, lr=lr).predict("eval")
'''


def canonical(p: dict) -> dict:
    return dict(p)


def write(p: dict) -> str:
    why = (f"Fine-tunes the student ({'cross-entropy' if p['loss'] == 'ce' else 'confidence loss'}) on the "
           f"{p['keep']:.0%} of B whose weak labels are most confident, for {p['epochs_mult']}x the recipe's epochs "
           f"at {p['lr_mult']}x its learning rate.")
    title = f"finetune: {p['loss']}, keep {p['keep']}, epochs x{p['epochs_mult']}, lr x{p['lr_mult']}"
    return render(NAME, title, why, param_rows(p, NOTES), [CODE])
