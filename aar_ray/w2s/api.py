"""The method interface: what a weak-to-strong method sees and what it must return.

A method is one Python file that defines

    def run(ctx: MethodContext) -> torch.Tensor:
        '''Return P(label = 1) for every evaluation example, shape (len(ctx.eval_ids),).'''

It never sees a ground-truth label: the context holds the student's inputs, the weak supervisor's
soft labels on them, and unlabelled evaluation inputs (validation and test, mixed, in an order the
method cannot use to tell them apart).

Training a student. `ctx.fit(targets=None, loss_fn=..., sample_weight=None, epochs=None, lr=None,
rows=None, seed_offset=0)` trains one with the experiment's recipe (`ctx.recipe`) and returns a
`Predictor`: `.predict("train" | "eval")` gives P(label = 1) on the context's inputs, and
`predictor(ids, mask)` on any. Write methods against `fit` and they run under every recipe:
  'probe'  a linear probe on the frozen student's features (`ctx.features("train")`), the CPU default;
  'lora'   LoRA adapters on the student plus a scalar head (`aar_ray.w2s.finetune`);
  'full'   every weight of a copy of the student plus a scalar head.
targets (N_b,) default to the weak labels; `rows` trains on a subset of the train inputs (targets and
sample_weight are indexed by it); epochs and lr are in the recipe's units (default: its config).
A method may also call a recipe directly: `ctx.fit_probe(x, targets, ...)` on features it chooses
(`ctx.features("train", kind="softmax" | "hidden", layer=...)`), `ctx.finetune(...)` (fit's arguments;
LoRA unless the recipe is 'full'), or train `ctx.student.model` itself (shared: leave it as found).

Losses take `(logits, weak, progress)` with progress running 0 -> 1 over training, and return a
scalar or per-example values (B,), which are averaged with `sample_weight` when given. The built-ins
define theirs as module-level `loss` functions, so they can be tested on hand-made tensors. Every
call records its training loss per (optimizer) step in `ctx.losses`.

The weak and ceiling baselines use the same recipe (`baseline_probe` for 'probe': a linear probe on
the frozen model's next-token distribution, config `probe`; `finetune` with config `finetune`
otherwise), trained with cross-entropy, so every method is measured against a like-for-like gap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from aar_ray.config import FinetuneConfig, ProbeConfig
from aar_ray.w2s.student import Base, features

LossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def validate_predictions(preds: object, n: int) -> torch.Tensor:
    """Predictions must be a finite float tensor of shape (n,) with values in [0, 1]."""
    if not isinstance(preds, torch.Tensor):
        raise ValueError(f"run(ctx) must return a torch.Tensor, got {type(preds).__name__}")
    preds = preds.detach().to("cpu")
    if preds.dim() == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    if tuple(preds.shape) != (n,):
        raise ValueError(f"run(ctx) must return shape ({n},), got {tuple(preds.shape)}")
    if not preds.is_floating_point():
        raise ValueError(f"run(ctx) must return floating-point probabilities, got {preds.dtype}")
    preds = preds.float()
    if not torch.isfinite(preds).all():
        raise ValueError(f"run(ctx) returned {int((~torch.isfinite(preds)).sum())} non-finite values")
    if preds.min() < 0 or preds.max() > 1:
        raise ValueError(f"run(ctx) must return probabilities in [0, 1], got range [{preds.min():.3g}, {preds.max():.3g}]")
    return preds


def soft_ce(logits: torch.Tensor, targets: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy of logits (B,) against soft targets (B,) in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def reduce_loss(per: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """A loss_fn's value as one scalar: a scalar as is; per-example values (B,) averaged, with
    `weight` (B,) when given (a weighted mean: weights need not sum to 1)."""
    if per.dim() == 0:
        return per
    if weight is None:
        return per.mean()
    return (per * weight).sum() / weight.sum().clamp_min(1e-8)


class LinearProbe(torch.nn.Module):
    """Logistic regression on features; standardizes by the fit set's statistics."""

    def __init__(self, dim: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.linear = torch.nn.Linear(dim, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std).squeeze(-1)  # (N, D) -> (N,)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))  # (N,) P(label = 1)


def fit_probe(x: torch.Tensor, targets: torch.Tensor, cfg: ProbeConfig, seed: int, loss_fn: LossFn = soft_ce,
              epochs: int | None = None, sample_weight: torch.Tensor | None = None,
              on_step: Callable[[int, float], None] | None = None, standardize: bool = False) -> LinearProbe:
    """Train a linear probe on x (N, D) toward targets (N,) in [0, 1] with minibatch AdamW."""
    x, targets = x.float(), targets.float()
    mean = x.mean(0) if standardize else torch.zeros(x.shape[1])
    std = x.std(0).clamp_min(1e-6) if standardize else torch.ones(x.shape[1])
    g = torch.Generator().manual_seed(seed)
    probe = LinearProbe(x.shape[1], mean, std)
    with torch.no_grad():  # seeded init, independent of global RNG state
        probe.linear.weight.copy_(torch.randn(probe.linear.weight.shape, generator=g) * 0.01)
        probe.linear.bias.zero_()
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = epochs or cfg.epochs
    n, bs = len(x), cfg.batch_size
    total = epochs * ((n + bs - 1) // bs)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            logits = probe.logits(x[idx])  # (B,)
            per = loss_fn(logits, targets[idx], step / total)  # scalar or (B,)
            loss = reduce_loss(per, None if sample_weight is None else sample_weight[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(step, loss.item())
            step += 1
    return probe


def baseline_probe(base: Base, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, cfg: ProbeConfig,
                   seed: int, batch_size: int = 256) -> tuple[LinearProbe, torch.Tensor]:
    """The fixed weak/ceiling recipe; returns the probe and the features it was fit on."""
    x = features(base, ids, mask, cfg.features, cfg.layer, batch_size)
    return fit_probe(x, targets, cfg, seed, standardize=(cfg.features == "hidden")), x


@dataclass
class MethodContext:
    """Everything a method may use. It holds no ground-truth label."""

    student: Base
    """The strong pretrained base (frozen copy; a method may fine-tune it)."""
    train_ids: torch.Tensor
    """(N_b, T) the student's training inputs (half B of the train split)."""
    train_mask: torch.Tensor
    """(N_b, T) attention mask of train_ids."""
    weak_labels: torch.Tensor
    """(N_b,) the weak supervisor's soft labels, P(label = 1)."""
    eval_ids: torch.Tensor
    """(N_e, T) unlabelled evaluation inputs (validation and test mixed)."""
    eval_mask: torch.Tensor
    """(N_e, T) attention mask of eval_ids."""
    probe: ProbeConfig
    """The baseline recipe, as a starting point."""
    seed: int
    """Seed chosen by the harness; use it for all randomness."""
    fidelity: str = "full"
    """'quick' (a quarter of the epochs, for exploration) or 'full'."""
    batch_size: int = 256
    recipe: str = "probe"
    """How `fit` trains a student: 'probe' (linear probe on frozen features), 'lora' or 'full'."""
    finetune_cfg: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The fine-tuning recipe of `finetune` (and of `fit` when recipe is 'lora' or 'full')."""
    losses: list[tuple[int, float]] = field(default_factory=list)
    _feats: dict = field(default_factory=dict, repr=False)

    @property
    def epochs(self) -> int:
        """The probe's epochs (a quarter of them under fidelity 'quick')."""
        return max(1, self.probe.epochs // 4) if self.fidelity == "quick" else self.probe.epochs

    @property
    def finetune_epochs(self) -> int:
        """The fine-tuning recipe's epochs (a quarter of them under fidelity 'quick')."""
        n = self.finetune_cfg.epochs
        return max(1, n // 4) if self.fidelity == "quick" else n

    def inputs(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of the 'train' or 'eval' inputs."""
        if which not in ("train", "eval"):
            raise ValueError(f"which must be 'train' or 'eval', got {which!r}")
        return (self.train_ids, self.train_mask) if which == "train" else (self.eval_ids, self.eval_mask)

    def features(self, which: str = "train", kind: str | None = None, layer: int | None = None) -> torch.Tensor:
        """Frozen-student features of the 'train' or 'eval' inputs (cached)."""
        ids, mask = self.inputs(which)
        kind = kind or self.probe.features
        layer = self.probe.layer if layer is None else layer
        key = (which, kind, layer)
        if key not in self._feats:
            self._feats[key] = features(self.student, ids, mask, kind, layer, self.batch_size)
        return self._feats[key]

    def fit_probe(self, x: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn = soft_ce, epochs: int | None = None,
                  sample_weight: torch.Tensor | None = None, seed_offset: int = 0, lr: float | None = None,
                  weight_decay: float | None = None, standardize: bool | None = None) -> LinearProbe:
        """Fit a linear probe with the recipe's optimizer; records the training loss per step.

        standardize z-scores features by the fit set's statistics; by default it does so when the
        recipe reads hidden states (their scale is arbitrary), not for next-token distributions.
        """
        cfg = self.probe
        if lr is not None or weight_decay is not None:
            cfg = ProbeConfig(features=cfg.features, layer=cfg.layer, epochs=cfg.epochs, batch_size=cfg.batch_size,
                              lr=cfg.lr if lr is None else lr,
                              weight_decay=cfg.weight_decay if weight_decay is None else weight_decay)
        offset = len(self.losses)
        return fit_probe(x, targets, cfg, self.seed + 1000 * seed_offset, loss_fn, epochs or self.epochs, sample_weight,
                         on_step=lambda s, v: self.losses.append((offset + s, v)),
                         standardize=(cfg.features == "hidden") if standardize is None else standardize)

    def finetune(self, targets: torch.Tensor | None = None, loss_fn: LossFn = soft_ce,
                 sample_weight: torch.Tensor | None = None, epochs: int | None = None, lr: float | None = None,
                 rows: torch.Tensor | None = None, seed_offset: int = 0, recipe: str | None = None) -> Predictor:
        """Fine-tune the student (recipe 'lora' unless the context's is 'full') on the train inputs.

        targets (N_b,) default to the weak labels; `rows` trains on a subset of the train inputs
        (targets and sample_weight are given for all N_b rows). Records the loss per optimizer step.
        """
        from aar_ray.w2s.finetune import finetune

        recipe = recipe or (self.recipe if self.recipe != "probe" else "lora")
        targets, weight, ids, mask = self._rows(targets, sample_weight, rows)
        offset = len(self.losses)
        student = finetune(self.student, ids, mask, targets, self.finetune_cfg, recipe, self.seed + 1000 * seed_offset,
                           loss_fn, epochs or self.finetune_epochs, lr, weight,
                           on_step=lambda s, v: self.losses.append((offset + s, v)))
        return Predictor(self, student)

    def fit(self, targets: torch.Tensor | None = None, loss_fn: LossFn = soft_ce,
            sample_weight: torch.Tensor | None = None, epochs: int | None = None, lr: float | None = None,
            rows: torch.Tensor | None = None, seed_offset: int = 0) -> Predictor:
        """Train a student with the context's recipe: `fit_probe` on `features("train")` for 'probe',
        `finetune` otherwise. Same arguments as `finetune`; epochs and lr are in the recipe's units."""
        if self.recipe != "probe":
            return self.finetune(targets, loss_fn, sample_weight, epochs, lr, rows, seed_offset)
        targets, weight, _, _ = self._rows(targets, sample_weight, rows)
        x = self.features("train")
        probe = self.fit_probe(x if rows is None else x[rows], targets, loss_fn, epochs, weight, seed_offset, lr)
        kind, layer = self.probe.features, self.probe.layer
        return Predictor(self, lambda ids, mask: probe(features(self.student, ids, mask, kind, layer, self.batch_size)),
                         lambda which: probe(self.features(which)))

    def _rows(self, targets, sample_weight, rows):
        """Targets, weights and inputs of the chosen train rows (all rows when `rows` is None)."""
        targets = self.weak_labels if targets is None else targets
        if rows is None:
            return targets, sample_weight, self.train_ids, self.train_mask
        return (targets[rows], None if sample_weight is None else sample_weight[rows], self.train_ids[rows],
                self.train_mask[rows])


class Predictor:
    """A trained student, whatever the recipe: P(label = 1) for the context's inputs or any inputs."""

    def __init__(self, ctx: MethodContext, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 on_context: Callable[[str], torch.Tensor] | None = None):
        self.ctx, self.model, self._on_context = ctx, model, on_context

    def predict(self, which: str = "eval") -> torch.Tensor:
        """(N,) P(label = 1) on the context's 'train' or 'eval' inputs."""
        if self._on_context is not None:
            self.ctx.inputs(which)  # validates `which`
            return self._on_context(which)  # the probe reads the context's cached features
        return self.model(*self.ctx.inputs(which))

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N,) P(label = 1) for token inputs ids/mask (N, T), right-padded."""
        return self.model(ids, mask)
