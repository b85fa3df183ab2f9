"""Typed configuration: frozen dataclasses validated by OmegaConf, loaded from YAML presets.

This module is the single source of defaults. Core code receives dataclass instances
(`OmegaConf.to_object`), never a DictConfig. A bad key or value raises `ConfigError`
naming the key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TASK_NAMES = ("facts", "math", "code", "jsonl", "humaneval", "champ")


class ConfigError(ValueError):
    """A configuration file, override or value is invalid; the message names what."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class WorldConfig:
    """The built-in synthetic world: fictional entities, arithmetic and tiny programs."""

    seed: int = 0
    """Seed of the world: its entities, facts, programs and the fixed val/test split."""
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
    """Put general statements about values ('Vessa is coastal') in the pretraining corpora."""
    weak_fraction: float = 0.25
    """Share of the world (entities, problems) in the weak base's pretraining corpus."""
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
    """Optimizer steps of pretraining on the world corpus (tiny)."""
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
        _check(self.pretrain_steps >= 1, "pretrain_steps", f"must be >= 1, got {self.pretrain_steps}")
        _check(self.dtype in ("float32", "bfloat16"), "dtype", f"must be 'float32' or 'bfloat16', got {self.dtype!r}")


def _weak_default() -> ModelConfig:
    return ModelConfig(n_layer=2, d_model=32, n_head=2, pretrain_steps=600, pretrain_lr=3e-3)


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
    methods: list[str] = field(default_factory=lambda: ["naive", "confidence", "confident_only", "label_smoothing", "bootstrap"])
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
        _check(self.task in TASK_NAMES, "task", f"unknown task {self.task!r}; choose {', '.join(TASK_NAMES)}")
        _check(self.task != "jsonl" or bool(self.data_path), "data_path", "is required when task == 'jsonl'")
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", f"has duplicates: {list(self.seeds)}")
        _check(len(self.methods) >= 1, "methods", "needs at least one method")
        _check(self.fidelity in ("quick", "full"), "fidelity", f"must be 'quick' or 'full', got {self.fidelity!r}")
        _check(self.device in ("auto", "cpu", "cuda"), "device", f"must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        _check(self.recipe in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}, got {self.recipe!r}")


T = TypeVar("T")


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Merge schema defaults, a YAML preset and dotlist overrides; validate; return a dataclass.

    Raises ConfigError naming the bad key or value.
    """
    base = OmegaConf.structured(schema)
    layers = [base]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            layers.append(OmegaConf.load(p))
        except Exception as e:  # yaml syntax errors
            raise ConfigError(f"{p}: cannot parse YAML: {e}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None


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
