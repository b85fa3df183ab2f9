"""Accuracy, PGR and their spread over seeds."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


def accuracy(probs: "torch.Tensor", labels: "torch.Tensor") -> float:
    """Share of examples where P(label = 1) > 0.5 agrees with the 0/1 label."""
    if probs.shape != labels.shape:
        raise ValueError(f"predictions {tuple(probs.shape)} and labels {tuple(labels.shape)} differ in shape")
    return float(((probs > 0.5).long() == labels.long()).float().mean())


def pgr(weak: float, ceiling: float, transfer: float) -> float:
    """Performance gap recovered: (transfer - weak) / (ceiling - weak).

    0 means the student only imitates its teacher; 1 means it recovers the whole gap. Undefined
    (NaN) when there is no gap to recover.
    """
    gap = ceiling - weak
    if abs(gap) < 1e-9:
        return float("nan")
    return (transfer - weak) / gap


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return {"mean": m, "std": 0.0}
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return {"mean": m, "std": math.sqrt(var)}
