"""Typed configuration: every knob of aar_ray, as frozen dataclasses validated by OmegaConf.

This module is the single source of defaults, and the one place a user reads every setting:
  W2SConfig (the weak-to-strong problem: WorldConfig, ModelConfig, ProbeConfig) for `aar w2s`;
  CampaignConfig for `aar campaign`, which embeds a W2SConfig and ScoringConfig, ResearcherBudget,
  CampaignBudget, TrialSettings, SandboxConfig, PoolConfig, ClaudeConfig and RayConnect.
Presets in experiments/ override them; dotlist overrides (`key=value`) override presets. Core code
receives dataclass instances (`OmegaConf.to_object`), never a DictConfig. A bad key or value raises
`ConfigError` naming the key. Names of tasks, methods and research directions are checked against
their registries (imported lazily, so loading a config stays cheap).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file, override or value is invalid; the message names what."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def task_names() -> list[str]:
    """Registered task names (`aar_ray.w2s.tasks.TASKS`), the one list of them."""
    from aar_ray.w2s.tasks import TASKS

    return sorted(TASKS)


def builtin_methods() -> list[str]:
    """Built-in method names (one file each in `aar_ray/w2s/methods/`), the one list of them."""
    from aar_ray.w2s.methods import BUILTINS

    return list(BUILTINS)


def research_directions() -> list[str]:
    """Research directions the offline brain knows (`aar_ray.agents.offline.DIRECTIONS`)."""
    from aar_ray.agents.offline import DIRECTIONS

    return list(DIRECTIONS)


@dataclass(frozen=True)
class WorldConfig:
    """The built-in synthetic world: fictional entities, arithmetic and tiny programs."""

    seed: Optional[int] = None
    """Seed of the world: its entities, facts, programs and the fixed val/test split. None (the default):
    this installation's secret seed, drawn once and kept where only the harness reads it, so method
    code cannot regenerate the world and its labels; pin a number to make the world public
    (benchmarks, tests, reproducing a campaign from its report)."""
    n_entities: int = 1000
    """Fictional people in the knowledge base."""
    n_relations: int = 6
    """Relations per entity (lives_in, works_as, ...); each has its own value set."""
    n_values: int = 48
    """Distinct values per relation (cities, professions, ...). A student that learns the property per
    value makes one decision per value; 6 x 48 of them keep naive PGR's spread over seeds under 0.07
    (6 x 16 gave 0.13-0.15 on some worlds)."""
    math_max: int = 50
    """Math problems are `a + b` with 0 <= a, b < math_max."""
    code_functions: int = 40
    """Tiny programs `f_k(x)` in the code task."""
    code_inputs: int = 40
    """Inputs x per program in the code task."""
    statements: bool = True
    """Put statements about values in the pretraining corpora: links between values (`Vessa near
    Kumo`, strong base only), which carry the latent property, and decoys (`Vessa looks Gorn`, both
    bases). False leaves the property a plain per-value fact."""
    decoy_agreement: float = 0.75
    """Share of values whose decoy attribute points to their property: the teacher's errors concentrate
    on the rest, and a method that pools weak labels value by value learns the decoy."""
    link_degree: int = 8
    """Link statements (`<value> near <value>`) per value in the strong base's corpus."""
    link_homophily: float = 0.72
    """Share of a value's links that go to values with the same property."""
    weak_fraction: float = 0.35
    """Share of the weak base's knowledge that is exact: of the facts (a person's value; the rest name a
    look-alike value, one with the same decoy), and of the math and code problems it has seen."""
    val_fraction: float = 0.15
    """Share of groups (entities, problems) held out as the validation split."""
    test_fraction: float = 0.4
    """Share of groups held out as the test split; fixed by the world seed."""

    def __post_init__(self) -> None:
        _check(self.n_entities >= 40, "world.n_entities", f"must be >= 40, got {self.n_entities}")
        _check(self.n_relations >= 1, "world.n_relations", f"must be >= 1, got {self.n_relations}")
        _check(self.n_values >= 4, "world.n_values", f"must be >= 4, got {self.n_values}")
        _check(self.math_max >= 8, "world.math_max", f"must be >= 8, got {self.math_max}")
        _check(0.0 < self.weak_fraction < 1.0, "world.weak_fraction", f"must be in (0, 1), got {self.weak_fraction}")
        _check(0.5 <= self.decoy_agreement <= 1.0, "world.decoy_agreement", f"must be in [0.5, 1], got {self.decoy_agreement}")
        _check(self.link_degree >= 1, "world.link_degree", f"must be >= 1, got {self.link_degree}")
        _check(0.0 <= self.link_homophily <= 1.0, "world.link_homophily", f"must be in [0, 1], got {self.link_homophily}")
        _check(0.0 < self.val_fraction < 0.5, "world.val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        _check(0.0 < self.test_fraction < 0.7, "world.test_fraction", f"must be in (0, 0.7), got {self.test_fraction}")
        _check(self.val_fraction + self.test_fraction < 0.8, "world.test_fraction",
               "val_fraction + test_fraction must leave at least 20% for training")


@dataclass(frozen=True)
class ModelConfig:
    """A base model: a tiny transformer pretrained on the world, or a HF model by path or name."""

    kind: str = "tiny"
    """'tiny' (built from a transformers config and pretrained here) or 'hf' (loaded by name_or_path)."""
    name_or_path: str = ""
    """HF hub name or local directory; used when kind == 'hf'."""
    n_layer: int = 3
    """Transformer layers (tiny)."""
    d_model: int = 128
    """Hidden size (tiny)."""
    n_head: int = 4
    """Attention heads (tiny)."""
    pretrain_steps: int = 800
    """Optimizer steps of pretraining on a held-out task's corpus, math or code (tiny)."""
    facts_pretrain_steps: int = 1500
    """Optimizer steps of pretraining on the facts corpus (tiny), 3x the size of math's: the strong base
    needs ~1500 to recall 99% of the people's values beside the value statements (1100: 93%)."""
    pretrain_lr: float = 3e-3
    """Peak AdamW learning rate of pretraining (tiny)."""
    pretrain_batch: int = 256
    """Sequences per pretraining step (tiny)."""
    dtype: str = "float32"
    """'float32' or 'bfloat16' (bf16 is meant for GPUs)."""
    tie_embeddings: bool = True
    """Tie input and output embeddings (tiny): what a base knows of a value then shapes how it predicts it."""

    def __post_init__(self) -> None:
        _check(self.kind in ("tiny", "hf"), "kind", f"must be 'tiny' or 'hf', got {self.kind!r}")
        _check(self.kind != "hf" or bool(self.name_or_path), "name_or_path", "is required when kind == 'hf'")
        _check(self.d_model % max(self.n_head, 1) == 0, "d_model", f"{self.d_model} is not divisible by n_head={self.n_head}")
        _check(self.n_layer >= 1 and self.n_head >= 1, "n_layer", "n_layer and n_head must be >= 1")
        _check(min(self.pretrain_steps, self.facts_pretrain_steps) >= 1, "pretrain_steps",
               f"pretrain_steps and facts_pretrain_steps must be >= 1, got {self.pretrain_steps}, {self.facts_pretrain_steps}")
        _check(self.dtype in ("float32", "bfloat16"), "dtype", f"must be 'float32' or 'bfloat16', got {self.dtype!r}")

    def steps_for(self, task: str) -> int:
        """Pretraining steps of a tiny base on `task`'s corpus."""
        return self.facts_pretrain_steps if task == "facts" else self.pretrain_steps


def _weak_default() -> ModelConfig:
    return ModelConfig(n_layer=2, d_model=32, n_head=2, pretrain_steps=600, facts_pretrain_steps=600, pretrain_lr=3e-3)


@dataclass(frozen=True)
class ProbeConfig:
    """The fixed, documented recipe of the weak and ceiling baselines (and methods' default probe)."""

    features: str = "softmax"
    """'softmax' (the frozen model's next-token distribution) or 'hidden' (last-token hidden state)."""
    layer: int = -1
    """Hidden-state layer for features == 'hidden' (-1 is the last)."""
    epochs: int = 40
    """Training epochs of the linear probe."""
    lr: float = 1e-2
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 64
    """Minibatch size."""

    def __post_init__(self) -> None:
        _check(self.features in ("softmax", "hidden"), "probe.features", f"must be 'softmax' or 'hidden', got {self.features!r}")
        _check(self.epochs >= 1, "probe.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.lr > 0, "probe.lr", f"must be > 0, got {self.lr}")
        _check(self.batch_size >= 1, "probe.batch_size", f"must be >= 1, got {self.batch_size}")


RECIPES = ("probe", "lora", "full")


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning recipe (recipe 'lora' or 'full'): a scalar head on the student, trained with AdamW."""

    epochs: int = 4
    """Passes over the training inputs."""
    lr: float = 1e-3
    """Peak AdamW learning rate of the LoRA adapters (recipe lora)."""
    full_lr: float = 1e-4
    """Peak AdamW learning rate of every weight (recipe full): 10x below the adapters', as usual; at 1e-3
    the built-in world's full fine-tuning collapses (ceiling 0.79, naive PGR -0.09; 1e-4: 0.99, 0.20)."""
    head_lr: float = 0.1
    """Peak AdamW learning rate of the fresh linear head (last_token, next_token), which starts from scratch."""
    batch_size: int = 32
    """Examples per forward pass (micro-batch)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step: the effective batch is batch_size x grad_accum."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup: float = 0.1
    """Share of optimizer steps spent in linear warm-up; the rest decays linearly to 0."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this before each step (0 disables clipping)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names that get LoRA adapters (Llama/Qwen attention and MLP projections)."""
    head: str = "next_token"
    """At the last real token: 'last_token' (a linear head on the final hidden state), 'next_token' (a
    linear head on the next-token distribution, what the probe reads) or 'label_words' (the next-token
    logit of label_words[1] minus that of label_words[0]; no new weights)."""
    label_words: list[str] = field(default_factory=lambda: ["no", "yes"])
    """(negative, positive) words of the 'label_words' head; each must be one token of the student."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    eval_batch_size: int = 64
    """Examples per forward pass when predicting."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "finetune.epochs", f"must be >= 1, got {self.epochs}")
        _check(min(self.lr, self.full_lr, self.head_lr) > 0, "finetune.lr",
               f"lr, full_lr and head_lr must be > 0, got {self.lr}, {self.full_lr}, {self.head_lr}")
        _check(self.batch_size >= 1, "finetune.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "finetune.grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.weight_decay >= 0, "finetune.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.warmup < 1.0, "finetune.warmup", f"must be in [0, 1), got {self.warmup}")
        _check(self.max_grad_norm >= 0, "finetune.max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        _check(self.lora_r >= 1, "finetune.lora_r", f"must be >= 1, got {self.lora_r}")
        _check(0.0 <= self.lora_dropout < 1.0, "finetune.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        _check(len(self.target_modules) >= 1, "finetune.target_modules", "needs at least one module name")
        _check(self.head in ("last_token", "next_token", "label_words"), "finetune.head",
               f"must be 'last_token', 'next_token' or 'label_words', got {self.head!r}")
        _check(len(self.label_words) == 2 and self.label_words[0] != self.label_words[1], "finetune.label_words",
               f"must be two different words (negative, positive), got {list(self.label_words)}")
        _check(self.eval_batch_size >= 1, "finetune.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")


@dataclass(frozen=True)
class W2SConfig:
    """One weak-to-strong experiment: a task, a weak and a strong base, seeds and methods."""

    name: str = "w2s_quick"
    """Preset name; the MLflow experiment of `aar w2s`."""
    task: str = "facts"
    """Task name from the registry: facts (primary), math, code (held-out, synthetic), jsonl (your data),
    humaneval, champ (held-out, real data: code and math verification)."""
    data_path: str = ""
    """JSONL file for task == 'jsonl': one {"text", "label", optional "group", optional "split"} per line."""
    max_length: int = 64
    """Token limit for text tasks (jsonl, humaneval, champ)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The synthetic world (built-in tasks)."""
    weak: ModelConfig = field(default_factory=_weak_default)
    """The weak supervisor's base model."""
    strong: ModelConfig = field(default_factory=ModelConfig)
    """The strong student's base model."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """The probe recipe (recipe == 'probe')."""
    recipe: str = "probe"
    """How weak, ceiling and methods' students are trained: 'probe' (a linear probe on frozen features),
    'lora' (LoRA adapters plus a scalar head) or 'full' (every weight plus a scalar head)."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The fine-tuning recipe (recipe == 'lora' or 'full')."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds; each re-draws the A/B split and all training randomness."""
    methods: list[str] = field(default_factory=lambda: builtin_methods())
    """Methods: built-in names or paths to method files."""
    fidelity: str = "full"
    """'quick' (fewer steps, for exploration) or 'full'."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    torch_threads: int = 0
    """torch intra-op threads; 0 leaves torch's default."""
    batch_size_features: int = 256
    """Examples per forward pass when reading features."""

    def __post_init__(self) -> None:
        tasks = task_names()
        _check(self.task in tasks, "task", f"unknown task {self.task!r}; choose {', '.join(tasks)}")
        _check(self.task != "jsonl" or bool(self.data_path), "data_path", "is required when task == 'jsonl'")
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", f"has duplicates: {list(self.seeds)}")
        _check(len(self.methods) >= 1, "methods", "needs at least one method")
        _check(self.fidelity in ("quick", "full"), "fidelity", f"must be 'quick' or 'full', got {self.fidelity!r}")
        _check(self.device in ("auto", "cpu", "cuda"), "device", f"must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        _check(self.recipe in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}, got {self.recipe!r}")


# ---------------------------------------------------------------------------------------------
# Campaigns: `aar campaign experiments/<preset>.yaml`
# ---------------------------------------------------------------------------------------------

HELDOUT_DATA = {"world": {"math": "math", "code": "code"}, "real": {"math": "champ", "code": "humaneval"}}
"""Registry task behind each held-out task, per `scoring.heldout_data`."""


@dataclass(frozen=True)
class ScoringConfig:
    """What the harness fixes about scoring: seeds, budgets, held-out tasks and audit thresholds."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds every trial runs on, chosen by the harness (3 on CPU presets, 5 on GPU presets)."""
    query_budget: int = 40
    """Scorer queries per researcher: every submission that returns a score is one (quick or full,
    a resubmission of an already scored method included). The researcher's binding trial limit."""
    heldout_tasks: list[str] = field(default_factory=lambda: ["math", "code"])
    """Held-out generalization tasks, run by the driver on the top methods."""
    heldout_data: str = "world"
    """Where the held-out tasks come from: 'world' (the synthetic world's math and code, for tiny CPU
    bases) or 'real' (CHAMP math and HumanEval code verification, for real HF models)."""
    top_k: int = 3
    """Methods (by validation PGR: selection never looks at test) that get the held-out stage and the audits."""
    shuffle_ratio: float = 0.5
    """Flag teacher-independent when PGR with shuffled weak labels stays >= this share of the original."""
    shuffle_min_pgr: float = 0.1
    """Only audit shuffling for methods whose PGR exceeds this (half of ~0 is noise)."""
    gap_sigmas: float = 3.0
    """Flag val-test gap when (val - test) PGR exceeds the naive reference's by this many seed-stds..."""
    gap_floor: float = 0.1
    """...and by at least this much PGR."""
    show_decimals: int = 2
    """Validation numbers shown to researchers are rounded to this many decimals: flipping a few
    predictions mostly shows no change, so one query teaches little about individual examples."""
    probe_max_flips: float = 0.05
    """Probing watch: a targeted flip changes the thresholded prediction of at most this share of val examples..."""
    probe_concentration: float = 0.5
    """...with at least this share of the total probability change on those examples (the rest left as it was)."""
    probe_min_events: int = 3
    """Targeted flips kept after the shown score rose (or reverted after it fell) that flag a researcher."""

    def __post_init__(self) -> None:
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "scoring.seeds",
               f"needs distinct seeds, got {list(self.seeds)}")
        _check(self.query_budget >= 1, "scoring.query_budget", f"must be >= 1, got {self.query_budget}")
        _check(set(self.heldout_tasks) <= {"math", "code"}, "scoring.heldout_tasks", "may hold 'math' and 'code'")
        _check(self.heldout_data in HELDOUT_DATA, "scoring.heldout_data",
               f"must be one of {list(HELDOUT_DATA)}, got {self.heldout_data!r}")
        _check(self.top_k >= 1, "scoring.top_k", f"must be >= 1, got {self.top_k}")
        _check(1 <= self.show_decimals <= 6, "scoring.show_decimals", f"must be in [1, 6], got {self.show_decimals}")
        _check(0 < self.probe_max_flips < 1, "scoring.probe_max_flips", f"must be in (0, 1), got {self.probe_max_flips}")


@dataclass(frozen=True)
class ResearcherBudget:
    """Hard limits on one researcher, enforced by the harness (both brains; tokens and dollars bind
    the Claude brain, whose every call is priced). How many trials it may have scored is
    `scoring.query_budget`, enforced by the scorer."""

    gpu_seconds: float = 1e9
    """GPU-seconds its jobs may use (from the pool's accounting)."""
    tokens: int = 2_000_000
    """LLM tokens: input + output + cache writes + cache reads; a call that could cross it is refused."""
    dollars: float = 5.0
    """LLM dollars, priced with `claude.prices`; a call whose worst case could cross it is refused."""
    steps: int = 200
    """Brain steps (one act() each)."""
    idle_wait_s: float = 15.0
    """Longest a step waits for an in-flight trial to finish when the brain asked nothing new."""

    def __post_init__(self) -> None:
        _check(self.tokens > 0, "researcher.tokens", f"must be > 0, got {self.tokens}")
        _check(self.dollars > 0, "researcher.dollars", f"must be > 0, got {self.dollars}")
        _check(self.steps >= 1, "researcher.steps", f"must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class CampaignBudget:
    """Campaign-wide hard limits; when one runs out the campaign winds down and still reports."""

    trials: int = 24
    """Researcher trials in all."""
    gpu_seconds: float = 1e12
    """GPU-seconds of all researchers' jobs."""
    dollars: float = 50.0
    """LLM dollars of all researchers, held by the budget authority: a call whose worst case would cross
    what is left is refused, and the campaign winds down."""
    deadline_s: float = 600.0
    """Wall-clock seconds of research from when it first started (the held-out stage and report come
    after); a resumed campaign keeps its deadline, and the time it was down counts."""
    grace_s: float = 120.0
    """How long running trials may finish after the stop before they are cancelled."""

    def __post_init__(self) -> None:
        _check(self.trials >= 1, "budget.trials", f"must be >= 1, got {self.trials}")
        _check(self.deadline_s > 0, "budget.deadline_s", f"must be > 0, got {self.deadline_s}")
        _check(self.grace_s >= 0, "budget.grace_s", f"must be >= 0, got {self.grace_s}")


@dataclass(frozen=True)
class TrialSettings:
    """How trial jobs run: resources and limits enforced by the harness."""

    num_gpus: float = 0.0
    """GPUs per trial job (fractional allowed); 0 on CPU presets."""
    num_cpus: float = 1.0
    """CPUs reserved per trial job."""
    timeout_s: float = 1800.0
    """Wall-clock limit of a whole trial job (the pool kills it after); >= seed_timeout_s x seeds."""
    seed_timeout_s: float = 300.0
    """Wall-clock budget per seed: one sandboxed child runs all seeds under seed_timeout_s x seeds."""
    infra_retries: int = 2
    """Re-runs after a fault of the harness, not the method's: a sandbox_error, a lost worker or node (a method's
    own failure is final)."""
    memory_mb: int = 8192
    """Sandbox address-space limit per process."""
    threads: int = 1
    """torch threads inside the sandbox."""

    def __post_init__(self) -> None:
        _check(self.num_gpus >= 0 and (self.num_gpus < 1 or float(self.num_gpus).is_integer()), "trial.num_gpus",
               f"must be a fraction below 1 or a whole number, got {self.num_gpus}")
        _check(self.num_cpus >= 0, "trial.num_cpus", f"must be >= 0, got {self.num_cpus}")
        _check(self.seed_timeout_s > 0, "trial.seed_timeout_s", f"must be > 0, got {self.seed_timeout_s}")
        _check(self.timeout_s > 0, "trial.timeout_s", f"must be > 0, got {self.timeout_s}")
        _check(self.infra_retries >= 0, "trial.infra_retries", f"must be >= 0, got {self.infra_retries}")
        _check(self.memory_mb >= 256, "trial.memory_mb", f"must be >= 256, got {self.memory_mb}")
        _check(self.threads >= 1, "trial.threads", f"must be >= 1, got {self.threads}")


SANDBOX_LAYERS = ("uid", "rlimits", "cgroup", "bwrap", "landlock", "seccomp", "method-runtime")
"""The sandbox's layers a campaign can require (each described in aar_ray/sandbox/__init__.py)."""


@dataclass(frozen=True)
class SandboxConfig:
    """Which sandbox layers every trial must run under. A campaign that cannot apply them refuses to
    start; a trial whose sandbox could not apply one is a sandbox_error, never a result."""

    require: list[str] = field(default_factory=lambda: ["auto"])
    """Layers from SANDBOX_LAYERS, or [auto]: those this installation's first probe found
    (<cache>/private/sandbox_layers.json), so a host that later offers less is caught."""
    allow_degraded: bool = False
    """Start anyway when this host lacks required layers: trials require only what it offers (said at start)."""

    def __post_init__(self) -> None:
        auto = list(self.require) == ["auto"]
        bad = [r for r in self.require if r not in SANDBOX_LAYERS]
        _check(auto or not bad, "sandbox.require",
               f"unknown layers {bad}; choose from {list(SANDBOX_LAYERS)}, or [auto] alone")
        _check(len(set(self.require)) == len(self.require), "sandbox.require", f"repeats a layer: {list(self.require)}")


@dataclass(frozen=True)
class PoolConfig:
    """Policy knobs of the task pool (`aar_ray.pool.TaskPool`)."""

    max_in_flight: int = 64
    """Jobs handed to Ray at once (running plus starting); the rest wait in the pool's queue."""
    weights: Dict[str, float] = field(default_factory=dict)
    """Fair-share weight per owner (default 1): an owner with weight 2 is due twice the GPU-seconds."""
    quota_gpu_s: Dict[str, float] = field(default_factory=dict)
    """GPU-second quota per owner; owners not listed get default_quota_gpu_s."""
    default_quota_gpu_s: Optional[float] = None
    """Quota for owners not in quota_gpu_s; None means unlimited."""
    tick_s: float = 0.02
    """Longest the dispatcher blocks in ray.wait before re-checking timeouts and new submissions."""
    idle_worker_ttl_s: float = 60.0
    """A GPU worker actor idle this long is stopped, releasing its GPU reservation to plain Ray."""
    worker_start_timeout_s: float = 120.0
    """A GPU worker actor that is not up by then is abandoned and its job counted as an attempt."""
    capacity_refresh_s: float = 0.5
    """How often the dispatcher re-reads cluster GPUs and live nodes (they change when nodes die)."""
    backfill_preempt_after_s: Optional[float] = None
    """A researcher job queued this long cancels the youngest running backfill pieces that make room for it
    (they are requeued, not counted as attempts); None: backfill is never cancelled, a researcher job waits
    for one piece to end."""

    def __post_init__(self) -> None:
        _check(self.max_in_flight >= 1, "pool.max_in_flight", f"must be >= 1, got {self.max_in_flight}")
        _check(all(w > 0 for w in self.weights.values()), "pool.weights", f"must be positive, got {self.weights}")
        _check(self.tick_s > 0, "pool.tick_s", f"must be > 0, got {self.tick_s}")
        _check(self.backfill_preempt_after_s is None or self.backfill_preempt_after_s >= 0,
               "pool.backfill_preempt_after_s", f"must be >= 0 or null, got {self.backfill_preempt_after_s}")

    def quota_for(self, owner: str) -> Optional[float]:
        return self.quota_gpu_s.get(owner, self.default_quota_gpu_s)

    def weight_for(self, owner: str) -> float:
        return self.weights.get(owner, 1.0)


@dataclass(frozen=True)
class BackfillConfig:
    """Backfill (`aar_ray/campaign/backfill.py`): GPUs the researchers leave idle run, below every researcher
    job, one-seed pieces of the work the final stage will run anyway."""

    enabled: bool = True
    """During the research, send the held-out evaluations and shuffled-teacher audits of the current top trials
    (by validation PGR; `scoring.top_k`, plus naive) to the pool as backfill; the final stage reuses them by key."""
    interval_s: float = 5.0
    """How often the producer reads the leaderboard for new top trials."""

    def __post_init__(self) -> None:
        _check(self.interval_s > 0, "backfill.interval_s", f"must be > 0, got {self.interval_s}")


@dataclass(frozen=True)
class ModelPrice:
    """List prices of one model in US$ per million tokens."""

    input: float
    """Uncached input tokens."""
    output: float
    """Output tokens (thinking included)."""
    cache_write: float
    """Input tokens written to the prompt cache (5-minute entries: 1.25 x input)."""
    cache_read: float
    """Input tokens read from the prompt cache (0.1 x input)."""

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_write", "cache_read"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and v >= 0, f"prices.{name}", f"must be a number >= 0, got {v!r}")


def _default_prices() -> Dict[str, ModelPrice]:
    # Anthropic's list prices (platform.claude.com model pages), US$ per MTok.
    # Claude Opus 4.6, the model of Anthropic's Automated Alignment Researchers work: $5 input, $25 output
    # (https://platform.claude.com/docs/en/models/opus-4-6/overview); cache write and read at the standard
    # 1.25x and 0.1x of input (the figures the same pages give for Opus 4.5 and Opus 5, also $5 / $25).
    return {
        "claude-opus-4-6": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
        "claude-sonnet-5-5": ModelPrice(input=2.0, output=10.0, cache_write=2.5, cache_read=0.2),
        "claude-sonnet-5": ModelPrice(input=2.0, output=10.0, cache_write=2.5, cache_read=0.2),
        "claude-opus-4-5": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
        "claude-sonnet-4-5": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
        "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
    }


@dataclass(frozen=True)
class ClaudeConfig:
    """How a Claude researcher calls the Messages API. What it may spend is `researcher.dollars` and
    `researcher.tokens` (one cap each)."""

    model: str = "claude-sonnet-5-5"
    """Claude model id; must have an entry in `prices`."""
    max_tokens: int = 16000
    """Output-token limit of one reply (thinking included); a method's source must fit in it."""
    temperature: Optional[float] = None
    """Sampling temperature for models that accept one; None sends none (Claude Sonnet 5 and later reject it)."""
    timeout_s: float = 300.0
    """Per-request timeout in seconds."""
    max_retries: int = 6
    """Retries after a 429, 5xx, 529, connection error (reset, truncated body), timeout or malformed reply
    before the researcher ends (`api_unavailable`)."""
    backoff_base_s: float = 2.0
    """First retry's backoff; it doubles per retry, with seeded jitter in [50%, 100%]."""
    backoff_max_s: float = 60.0
    """Cap on one exponential backoff."""
    retry_after_max_s: float = 120.0
    """Cap on a server's `retry-after`, which replaces the exponential backoff when present."""
    max_context_turns: int = 40
    """Assistant turns kept in the conversation before old ones are condensed into the summary."""
    max_context_tokens: int = 150_000
    """Estimated context size (characters / 4) that also triggers condensing."""
    keep_recent_turns: int = 8
    """Assistant turns kept verbatim when condensing."""
    max_result_chars: int = 20_000
    """A tool result longer than this is truncated before it is sent."""
    summary_max_chars: int = 8_000
    """The running summary keeps its newest lines within this many characters."""
    prices: Dict[str, ModelPrice] = field(default_factory=_default_prices)
    """US$ per million tokens, by model id."""
    trace: bool = True
    """Record every Messages API call of a campaign as an MLflow trace (request, reply, usage, price,
    retries as events), tagged with the campaign, researcher and trial ids and linked to the researcher's run."""
    trace_experiment: str = ""
    """MLflow experiment of the traces; empty: the campaign's own experiment."""

    def __post_init__(self) -> None:
        _check(self.model in self.prices, "claude.model", f"{self.model!r} has no entry in claude.prices "
               f"(priced: {', '.join(sorted(self.prices))})")
        _check(self.max_tokens >= 1, "claude.max_tokens", f"must be >= 1, got {self.max_tokens}")
        _check(self.temperature is None or 0.0 <= self.temperature <= 1.0, "claude.temperature",
               f"must be None or in [0, 1], got {self.temperature}")
        _check(self.timeout_s > 0, "claude.timeout_s", f"must be > 0, got {self.timeout_s}")
        _check(self.max_retries >= 0, "claude.max_retries", f"must be >= 0, got {self.max_retries}")
        _check(0 <= self.backoff_base_s <= self.backoff_max_s, "claude.backoff_base_s",
               f"must be in [0, backoff_max_s={self.backoff_max_s}], got {self.backoff_base_s}")
        _check(self.retry_after_max_s >= 0, "claude.retry_after_max_s", f"must be >= 0, got {self.retry_after_max_s}")
        _check(1 <= self.keep_recent_turns < self.max_context_turns, "claude.keep_recent_turns",
               f"must be in [1, max_context_turns={self.max_context_turns}), got {self.keep_recent_turns}")
        _check(self.max_context_tokens >= 1000, "claude.max_context_tokens",
               f"must be >= 1000, got {self.max_context_tokens}")
        _check(self.max_result_chars >= 100, "claude.max_result_chars", f"must be >= 100, got {self.max_result_chars}")
        _check(self.summary_max_chars >= 200, "claude.summary_max_chars", f"must be >= 200, got {self.summary_max_chars}")


@dataclass(frozen=True)
class RayConnect:
    """How the driver reaches Ray."""

    address: str = ""
    """Ray address; empty: RAY_ADDRESS if set, else start a local Ray."""
    num_cpus: int = 0
    """CPUs of a local Ray (0: all)."""
    num_gpus: int = 0
    """GPUs of a local Ray (0: what torch sees); on a CPU box these are logical GPUs, for GPU-aware scheduling."""


@dataclass(frozen=True)
class CampaignConfig:
    """A campaign: researchers, their brains and directions, the W2S problem, budgets and resources."""

    name: str = "quick"
    """Preset name."""
    campaign_id: str = ""
    """Campaign id; empty: a new one. Rerun with the same id to resume."""
    brain: str = "offline"
    """'offline', 'claude' (needs ANTHROPIC_API_KEY) or 'auto' (Claude when the key is set)."""
    n_researchers: int = 3
    """Researcher actors."""
    directions: list[str] = field(default_factory=lambda: research_directions())
    """Research directions, assigned round-robin."""
    w2s: W2SConfig = field(default_factory=W2SConfig)
    """The weak-to-strong problem (primary task, bases, baseline recipe). Its seeds, methods, name and
    fidelity are not used by campaigns (see `scoring.seeds`, `baselines`); setting them is an error."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """Seeds, query budgets, held-out tasks and audits."""
    researcher: ResearcherBudget = field(default_factory=ResearcherBudget)
    """Per-researcher limits."""
    budget: CampaignBudget = field(default_factory=CampaignBudget)
    """Campaign-wide limits."""
    trial: TrialSettings = field(default_factory=TrialSettings)
    """Trial job resources and limits."""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """The sandbox layers every trial must run under."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Task pool policy."""
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    """Idle GPUs run the final stage's pieces ahead of it."""
    claude: ClaudeConfig = field(default_factory=ClaudeConfig)
    """The Claude brain."""
    ray: RayConnect = field(default_factory=RayConnect)
    """Ray connection."""
    runs_dir: str = ""
    """Where campaign directories go; empty: $AAR_RUNS_DIR, else the results home's runs/ (see aar_ray/home.py)."""
    baselines: list[str] = field(default_factory=lambda: builtin_methods())
    """Built-in methods the driver scores first (the naive and human-style reference lines)."""
    progress: str = "auto"
    """'auto' (a live view on a TTY, log lines otherwise), 'rich' or 'plain'."""

    # fields a campaign does not use (W2SConfig's, and a renamed one): set in a preset or override, they are an error
    UNUSED = {"w2s.seeds": "a campaign's seeds are the harness's: set scoring.seeds",
              "w2s.methods": "a campaign's reference methods are `baselines`; researchers propose the rest",
              "w2s.name": "a campaign is named by `name`",
              "w2s.fidelity": "each trial's fidelity is chosen per submission (quick or full)",
              "researcher.trials": "a researcher's trial limit is scoring.query_budget (every scored submission is "
                                   "one query, enforced by the scorer)",
              "trial.max_retries": "re-runs after the harness's faults (a sandbox_error, a lost worker or node) are "
                                   "trial.infra_retries; a method's own failure is never re-run"}

    def __post_init__(self) -> None:
        _check(self.brain in ("offline", "claude", "auto"), "brain", f"must be offline, claude or auto, got {self.brain!r}")
        _check(self.n_researchers >= 1, "n_researchers", f"must be >= 1, got {self.n_researchers}")
        _check(len(self.directions) >= 1, "directions", "needs at least one direction")
        _check(self.progress in ("auto", "rich", "plain"), "progress", f"must be auto, rich or plain, got {self.progress!r}")
        unknown = [b for b in self.baselines if b not in builtin_methods()]
        _check(not unknown, "baselines", f"unknown built-in methods {unknown}; choose from {builtin_methods()}")
        _check("naive" in self.baselines, "baselines", "must include 'naive' (the reference of every campaign)")
        _check(self.campaign_id == "" or all(c.isalnum() or c in "-_" for c in self.campaign_id), "campaign_id",
               f"may hold letters, digits, '-' and '_', got {self.campaign_id!r}")
        n = len(self.scoring.seeds)
        _check(self.trial.timeout_s >= self.trial.seed_timeout_s * n, "trial.timeout_s",
               f"{self.trial.timeout_s:g} s is less than trial.seed_timeout_s x len(scoring.seeds) = "
               f"{self.trial.seed_timeout_s:g} x {n} = {self.trial.seed_timeout_s * n:g} s: the pool would kill "
               "a trial before the sandbox could say which seed overran")
        _check(not self.ray.num_gpus or self.trial.num_gpus <= self.ray.num_gpus, "trial.num_gpus",
               f"asks {self.trial.num_gpus:g} GPUs per trial but ray.num_gpus declares {self.ray.num_gpus}")
        _check(self.w2s.device != "cuda" or self.trial.num_gpus > 0, "trial.num_gpus",
               "is 0 but w2s.device is 'cuda': a trial must reserve the GPU its student runs on")


T = TypeVar("T")


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Merge schema defaults, a YAML preset and dotlist overrides; validate; return a dataclass.

    Raises ConfigError naming the bad key or value, and for a key the schema declares unused
    (`schema.UNUSED`), what to set instead.
    """
    layers = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            layers.append(OmegaConf.load(p))
        except Exception as e:  # yaml syntax errors
            raise ConfigError(f"{p}: cannot parse YAML: {e}") from None
    return _merged(schema, layers, overrides)


def load_written(schema: type[T], path: str | os.PathLike, overrides: list[str] | None = None) -> T:
    """A config as `to_yaml` wrote it (a campaign's config.yaml: every field, those the schema declares
    unused at their defaults), with dotlist overrides: `load_config` of it, less the unused fields."""
    try:
        layer = OmegaConf.load(Path(path))
    except Exception as e:  # missing file, yaml syntax errors
        raise ConfigError(f"{path}: cannot read it as YAML: {e}") from None
    return _written(schema, layer, overrides)


def loads_written(schema: type[T], text: str) -> T:
    """`load_written` of the text `to_yaml` wrote (a config handed to a child process on its stdin)."""
    try:
        layer = OmegaConf.create(text)
    except Exception as e:  # yaml syntax errors
        raise ConfigError(f"cannot read the config as YAML: {e}") from None
    return _written(schema, layer, None)


def _written(schema: type[T], layer, overrides: list[str] | None) -> T:
    for key in getattr(schema, "UNUSED", {}):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(layer, parent, default=None) if parent else layer
        if OmegaConf.is_dict(node) and leaf in node:
            del node[leaf]
    return _merged(schema, [layer], overrides)


def _merged(schema: type[T], layers: list, overrides: list[str] | None) -> T:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        for key, why in getattr(schema, "UNUSED", {}).items():
            if any(OmegaConf.select(layer, key, default=None) is not None for layer in layers):
                raise ConfigError(f"{key} is not used here: {why}")
        merged = OmegaConf.merge(OmegaConf.structured(schema), *layers)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(_plain_message(e)) from None
    except (TypeError, ValueError) as e:  # e.g. a mapping given where the schema has a list
        raise ConfigError(_shape_mismatch(schema, layers) or str(e)) from None


def _shape_mismatch(schema: type, layers: list) -> str | None:
    """The first key whose given value is a list/mapping where the schema has the other (or a scalar)."""
    base = OmegaConf.structured(schema)

    def walk(node: Any, prefix: str) -> str | None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, v in items:
            key = f"{prefix}{k}"
            want = OmegaConf.select(base, key, default=None, throw_on_missing=False)
            kinds = {dict: "a mapping", list: "a list"}
            if want is not None and OmegaConf.is_config(want) and not isinstance(v, (dict, list)):
                return f"{key}: expected {'a list' if OmegaConf.is_list(want) else 'a mapping'}, got {v!r}"
            if want is not None and OmegaConf.is_config(want) and OmegaConf.is_list(want) != isinstance(v, list):
                return f"{key}: expected {'a list' if OmegaConf.is_list(want) else 'a mapping'}, got {kinds[type(v)]}"
            found = walk(v, key + ".")
            if found:
                return found
        return None

    for layer in layers:
        found = walk(OmegaConf.to_container(layer), "")
        if found:
            return found
    return None


def _plain_message(e: OmegaConfBaseException) -> str:
    """OmegaConf's error as a user reads it: the key, what was expected, what was given."""
    key = getattr(e, "full_key", None) or ""
    first = str(e).splitlines()[0]
    value = getattr(e, "value", None) if hasattr(e, "value") else None
    if "is not a ListConfig" in first or "is not a list" in first or "Invalid value assigned: " in first and "List" in first:
        return f"{key}: expected a list ({key}=[...]), got {value!r}" if key else first
    if "is not a DictConfig" in first or "to Dict[" in first or ("Invalid value assigned" in first and "Dict" in first):
        return f"{key}: expected a mapping of keys to values, got {value!r}"
    if "Key '" in first and "not in" in first:
        return f"{key}: unknown key (a typo? see aar_ray/config.py for every setting)" if key else first
    if "Value '" in first and "could not be converted to" in first:
        want = first.rsplit(" ", 1)[-1].lower()
        return f"{key}: expected {'a number' if want in ('float', 'integer') else want} ({want}), got {value!r}"
    return f"{key}: {first}" if key else first


def to_dict(cfg: Any) -> dict:
    """A dataclass config as a plain nested dict (for YAML and MLflow params)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
