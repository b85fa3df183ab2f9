"""Confident-only: train only on the weak labels the teacher is most sure of.

Keeps the KEEP share of examples with the largest |weak - 0.5| and trains the student on their soft
labels alone (`rows`). Discarding the teacher's coin flips trades data for label quality.
"""
import torch
import torch.nn.functional as F

KEEP = 0.5


def loss(logits: torch.Tensor, weak: torch.Tensor, progress: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, weak)


def select(weak: torch.Tensor, keep: float = KEEP) -> torch.Tensor:
    """Indices of the `keep` share of examples with the most confident weak labels."""
    k = max(1, int(round(keep * len(weak))))
    return torch.argsort((weak - 0.5).abs(), descending=True)[:k]


def run(ctx) -> torch.Tensor:
    return ctx.fit(rows=select(ctx.weak_labels), loss_fn=loss).predict("eval")
