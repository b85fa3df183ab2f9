"""Naive: train the student with the recipe (`ctx.fit`), cross-entropy to the soft weak labels.

The reference point of every campaign (Burns et al. 2023, "naive finetuning").
"""
import torch
import torch.nn.functional as F


def loss(logits: torch.Tensor, weak: torch.Tensor, progress: float) -> torch.Tensor:
    """Binary cross-entropy of logits (B,) to the weak soft labels (B,)."""
    return F.binary_cross_entropy_with_logits(logits, weak)


def run(ctx) -> torch.Tensor:
    student = ctx.fit(loss_fn=loss)  # targets default to ctx.weak_labels
    return student.predict("eval")  # (N_eval,) P(label = 1)
