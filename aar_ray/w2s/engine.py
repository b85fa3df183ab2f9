"""The weak-to-strong pipeline, Ray-free: `train(cfg) -> Result` runs on a laptop.

For each seed:
  1. the weak supervisor (the weak base, trained with the preset's recipe) is fit on half A's ground truth;
  2. it gives soft labels on half B;
  3. the ceiling is the strong base trained with the same recipe on B's ground truth;
  4. the transfer is the strong base trained on B's weak labels by a method;
  5. PGR comes from test accuracies.
Weak and ceiling results are cached by content key: every trial of a (task, seed) shares them.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aar_ray.config import W2SConfig
from aar_ray.w2s import cache
from aar_ray.w2s.api import MethodContext, baseline_probe, validate_predictions  # noqa: F401 (re-exported)
from aar_ray.w2s.finetune import finetune
from aar_ray.w2s.metrics import accuracy, mean_std, pgr
from aar_ray.w2s.methods import load_module, method_name, resolve, source_hash
from aar_ray.w2s.models import Base, features, load_base, resolve_device
from aar_ray.w2s.tasks import TaskData, build_task, split_ab

BASELINE_VERSION = 1  # bump when the baseline recipes' code (probe or finetune.py) changes their results


@dataclass
class Experiment:
    """A task with its two bases, ready for any number of seeds and methods."""

    cfg: W2SConfig  # with the world's seed resolved
    task: TaskData
    weak: Base
    strong: Base
    device: torch.device
    world_public: bool = True  # False: the world's seed is this installation's secret

    def weak_inputs(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs as the weak base's tokenizer sees them (the same ids for built-in world tasks)."""
        if self.weak.tokenizer is self.task.tokenizer:
            return self.task.input_ids[idx], self.task.attention_mask[idx]
        enc = self.weak.tokenizer([self.task.texts[i] for i in idx], padding="longest", truncation=True,
                                  max_length=self.cfg.max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]


@dataclass
class Baseline:
    """The shared reference of one (task, seed): weak labels on B, weak and ceiling accuracies."""

    idx_a: np.ndarray
    idx_b: np.ndarray
    weak_labels: torch.Tensor  # (N_b,) soft P(label = 1) from the weak supervisor
    weak_acc: dict[str, float]  # split -> accuracy
    ceiling_acc: dict[str, float]


@dataclass
class TrialInputs:
    """What a method receives for one seed (no labels), plus the harness's private eval mapping."""

    ctx: MethodContext
    eval_idx: np.ndarray  # task indices of ctx.eval_ids rows; kept by the harness, not the method


@dataclass
class SeedResult:
    seed: int
    weak_acc: dict[str, float]
    ceiling_acc: dict[str, float]
    transfer_acc: dict[str, float]
    pgr: dict[str, float]
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class MethodResult:
    name: str
    source: str
    source_hash: str
    seeds: list[SeedResult]
    predictions: dict[int, torch.Tensor] = field(default_factory=dict)  # seed -> (N_eval,) in eval_idx order

    def summary(self, split: str = "test") -> dict:
        return {
            "transfer_acc": mean_std([s.transfer_acc[split] for s in self.seeds]),
            "pgr": {**mean_std([s.pgr[split] for s in self.seeds]), "per_seed": [s.pgr[split] for s in self.seeds]},
        }


@dataclass
class Result:
    cfg: W2SConfig
    task: str
    seeds: list[int]
    baselines: dict[int, Baseline]
    methods: dict[str, MethodResult]
    weak_key: str = ""
    strong_key: str = ""
    split: np.ndarray | None = None  # (N,) split name of every task example

    def eval_rows(self, seed: int) -> tuple[np.ndarray, list[str]]:
        """Task indices of a seed's prediction rows and their split names (for the predictions artifact)."""
        idx = eval_order(self.split, seed)
        return idx, self.split[idx].tolist()

    def to_json(self, split: str = "test") -> dict:
        """The `aar w2s --out` schema."""
        return {
            "task": self.task,
            "seeds": list(self.seeds),
            "weak_acc": mean_std([self.baselines[s].weak_acc[split] for s in self.seeds]),
            "ceiling_acc": mean_std([self.baselines[s].ceiling_acc[split] for s in self.seeds]),
            "methods": {name: m.summary(split) for name, m in self.methods.items()},
        }


def prepare(cfg: W2SConfig, progress: bool = True) -> Experiment:
    """Build the task and load (pretraining and caching if needed) both bases."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    cfg, public = resolve_world(cfg)
    device = resolve_device(cfg.device)
    task = build_task(cfg)
    weak = load_base(cfg.weak, device, task, "weak", progress)
    strong = load_base(cfg.strong, device, task, "strong", progress)
    return Experiment(cfg, task, weak, strong, device, public)


def resolve_world(cfg: W2SConfig) -> tuple[W2SConfig, bool]:
    """(`cfg` with its world's seed, whether the world is public): see WorldConfig.seed."""
    from dataclasses import replace

    from aar_ray.w2s.world import resolve_seed

    world, public = resolve_seed(cfg.world)
    return replace(cfg, world=world), public


def baseline(exp: Experiment, seed: int) -> Baseline:
    """Weak supervisor and ceiling for one seed with the preset's recipe, cached by content key."""
    cfg, task = exp.cfg, exp.task
    idx_a, idx_b = split_ab(task, seed)
    key = cache.content_key("baseline", BASELINE_VERSION, task.fingerprint, exp.weak.key, exp.strong.key,
                            *recipe_key(cfg), seed)
    hit = cache.load("baselines", key)
    if hit is not None:
        return Baseline(idx_a, idx_b, hit["weak_labels"], hit["weak_acc"], hit["ceiling_acc"])
    labels = task.labels
    val, test = task.indices("val"), task.indices("test")
    # 1. weak supervisor: the weak base trained on A's ground truth
    weak = fit_baseline(exp, exp.weak, *exp.weak_inputs(idx_a), labels[idx_a], seed)

    def weak_predict(idx: np.ndarray) -> torch.Tensor:
        return weak(*exp.weak_inputs(idx))

    weak_labels = weak_predict(idx_b)  # 2. soft labels on B, (N_b,)
    weak_acc = {s: accuracy(weak_predict(i), labels[i]) for s, i in (("val", val), ("test", test))}
    weak_acc["train_b"] = accuracy(weak_labels, labels[idx_b])
    del weak  # a 'full' student owns a copy of its base
    # 3. ceiling: the strong base trained on B's ground truth
    ceiling = fit_baseline(exp, exp.strong, task.input_ids[idx_b], task.attention_mask[idx_b], labels[idx_b], seed)
    ceiling_acc = {s: accuracy(ceiling(task.input_ids[i], task.attention_mask[i]), labels[i])
                   for s, i in (("val", val), ("test", test))}
    cache.save("baselines", key, {"weak_labels": weak_labels, "weak_acc": weak_acc, "ceiling_acc": ceiling_acc})
    return Baseline(idx_a, idx_b, weak_labels, weak_acc, ceiling_acc)


def recipe_key(cfg: W2SConfig) -> tuple:
    """What of the recipe changes baseline results. The probe's part is what it was before recipes
    existed, so cached probe baselines stay valid."""
    if cfg.recipe == "probe":
        return (asdict(cfg.probe),)
    return ({"recipe": cfg.recipe, "finetune": asdict(cfg.finetune)},)


Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, mask) (N, T) -> P(label = 1) (N,)


def fit_baseline(exp: Experiment, base: Base, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                 seed: int) -> Predict:
    """A base trained on ground truth with the preset's recipe (cross-entropy)."""
    cfg = exp.cfg
    if cfg.recipe != "probe":
        return finetune(base, ids, mask, labels.float(), cfg.finetune, cfg.recipe, seed)
    probe, _ = baseline_probe(base, ids, mask, labels, cfg.probe, seed, cfg.batch_size_features)
    return lambda i, m: probe(features(base, i, m, cfg.probe.features, cfg.probe.layer, cfg.batch_size_features))


def eval_order(split: np.ndarray, seed: int) -> np.ndarray:
    """Validation and test indices in a seeded random order."""
    eval_idx = np.flatnonzero((split == "val") | (split == "test"))
    return eval_idx[np.random.default_rng([seed, 17]).permutation(len(eval_idx))]


def trial_inputs(exp: Experiment, seed: int, base: Baseline, fidelity: str | None = None) -> TrialInputs:
    """A method's inputs for one seed: B's inputs with weak labels, and unlabelled eval inputs.

    Eval rows are validation and test examples in a seeded random order, so a method cannot tell
    which rows are test. The mapping back to task indices stays with the harness.
    """
    task = exp.task
    eval_idx = eval_order(task.split, seed)
    ctx = MethodContext(
        student=exp.strong,
        train_ids=task.input_ids[base.idx_b].clone(),
        train_mask=task.attention_mask[base.idx_b].clone(),
        weak_labels=base.weak_labels.clone(),
        eval_ids=task.input_ids[eval_idx].clone(),
        eval_mask=task.attention_mask[eval_idx].clone(),
        probe=exp.cfg.probe,
        seed=seed,
        fidelity=fidelity or exp.cfg.fidelity,
        batch_size=exp.cfg.batch_size_features,
        recipe=exp.cfg.recipe,
        finetune_cfg=exp.cfg.finetune,
    )
    return TrialInputs(ctx, eval_idx)


def score(exp: Experiment, base: Baseline, eval_idx: np.ndarray, preds: torch.Tensor) -> tuple[dict, dict]:
    """Transfer accuracy and PGR per split from eval predictions (trusted side: reads labels)."""
    labels = exp.task.labels[eval_idx]
    acc, out_pgr = {}, {}
    for split in ("val", "test"):
        rows = exp.task.split[eval_idx] == split
        acc[split] = accuracy(preds[rows], labels[rows])
        out_pgr[split] = pgr(base.weak_acc[split], base.ceiling_acc[split], acc[split])
    return acc, out_pgr


# A runner turns (method file, inputs) into eval predictions and training losses. The default runs
# trusted code in-process; agent code goes through the sandbox's runner instead.
Runner = Callable[[Path, TrialInputs], tuple[torch.Tensor, list]]


def run_in_process(method_path: Path, inputs: TrialInputs) -> tuple[torch.Tensor, list]:
    module = load_module(method_path)
    torch.manual_seed(inputs.ctx.seed)
    preds = module.run(inputs.ctx)
    return validate_predictions(preds, len(inputs.eval_idx)), list(inputs.ctx.losses)


def run_method(exp: Experiment, method: str, seeds: list[int] | None = None, runner: Runner = run_in_process,
               fidelity: str | None = None) -> MethodResult:
    path = resolve(method)
    source = path.read_text()
    seeds_out, preds_out = [], {}
    for seed in seeds or exp.cfg.seeds:
        t0 = time.time()
        base = baseline(exp, seed)
        inputs = trial_inputs(exp, seed, base, fidelity)
        preds, losses = runner(path, inputs)
        acc, p = score(exp, base, inputs.eval_idx, preds)
        seeds_out.append(SeedResult(seed, base.weak_acc, base.ceiling_acc, acc, p, losses, time.time() - t0))
        preds_out[seed] = preds
    return MethodResult(method_name(method), source, source_hash(source), seeds_out, preds_out)


def train(cfg: W2SConfig, progress: bool = True, runner: Runner = run_in_process) -> Result:
    """Run every configured method on every seed; returns per-seed and aggregate numbers."""
    exp = prepare(cfg, progress)
    baselines = {s: baseline(exp, s) for s in cfg.seeds}
    methods = {}
    for m in cfg.methods:
        r = run_method(exp, m, runner=runner)
        methods[r.name] = r
    return Result(cfg, exp.task.name, list(cfg.seeds), baselines, methods, exp.weak.key, exp.strong.key,
                  exp.task.split)
