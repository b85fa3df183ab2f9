"""Auxiliary confidence loss (Burns et al. 2023, section 4.3.2).

The target mixes the weak label with the student's own hardened prediction:
    target = (1 - alpha) * weak + alpha * hard(student)
alpha ramps linearly from 0 to ALPHA_MAX over the first WARMUP share of training, so the student
first learns from the teacher and then is allowed to disagree with it confidently. The hardening
threshold is the batch quantile that makes the student's predicted class balance match the weak
labels', so the student cannot collapse to one class.
"""
import torch
import torch.nn.functional as F

ALPHA_MAX = 0.5
WARMUP = 0.2


def loss(logits: torch.Tensor, weak: torch.Tensor, progress: float) -> torch.Tensor:
    alpha = ALPHA_MAX * min(1.0, progress / WARMUP)
    probs = torch.sigmoid(logits).detach()  # (B,)
    pos_share = (weak > 0.5).float().mean()
    # threshold at the (1 - pos_share) quantile: the top pos_share of the batch is called positive
    thresh = torch.quantile(probs, (1.0 - pos_share).clamp(0.0, 1.0))
    hard = (probs >= thresh).float() if pos_share > 0 else torch.zeros_like(probs)
    target = (1.0 - alpha) * weak + alpha * hard
    return F.binary_cross_entropy_with_logits(logits, target)


def run(ctx) -> torch.Tensor:
    return ctx.fit(loss_fn=loss).predict("eval")
