"""Bootstrapping through an intermediate student.

Round 1 trains a student on the weak labels (naively). Round 2 trains a fresh student on
targets that mix the weak labels with round 1's predictions on the same inputs:
    target = BETA * weak + (1 - BETA) * round1
Round 1 is the intermediate model: it has already averaged away part of the teacher's noise with
the student's own representation, so its labels are a better teacher than the weak model alone.
(Burns et al. bootstrap through intermediate model sizes; with one student size we bootstrap
through the student itself, as in Reed et al. 2014's soft bootstrapping.)
"""
import torch
import torch.nn.functional as F

BETA = 0.5


def loss(logits: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def mix(weak: torch.Tensor, intermediate: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    return beta * weak + (1.0 - beta) * intermediate


def run(ctx) -> torch.Tensor:
    first = ctx.fit(loss_fn=loss)
    second = ctx.fit(targets=mix(ctx.weak_labels, first.predict("train")), loss_fn=loss, seed_offset=1)
    return second.predict("eval")
