"""Task registry: balanced binary examples with train/val/test splits, split by group.

A task builder takes the experiment config and returns `TaskData`. The built-in tasks come from
the synthetic world (`facts` is the primary task, `math` and `code` the held-out ones); `jsonl`
loads users' data; `humaneval` and `champ` are the real-data held-out tasks of the GPU preset
(see `realdata.py`). Train splits into half A (the weak supervisor's ground truth) and half B (the
student's; B's labels are used only for the ceiling), re-drawn per seed by `split_ab`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aar_ray.config import ConfigError, W2SConfig
from aar_ray.w2s.world import World, build_world


@dataclass
class TaskData:
    name: str
    input_ids: torch.Tensor  # (N, T) long, right-padded
    attention_mask: torch.Tensor  # (N, T) long
    labels: torch.Tensor  # (N,) long in {0, 1}; ground truth, never handed to methods
    groups: np.ndarray  # (N,) entity / problem id; splits never share a group
    split: np.ndarray  # (N,) 'train' | 'val' | 'test'
    texts: list[str]
    tokenizer: object  # a transformers tokenizer
    # pretraining corpora for tiny bases: (prompt+answer) token ids; answer is the last token
    corpus: dict[str, torch.Tensor] = field(default_factory=dict)  # 'strong' | 'weak' -> (M, T+1)
    fingerprint: str = ""  # content identity of the data, for cache keys

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


TaskBuilder = Callable[[W2SConfig], TaskData]
TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    def deco(fn: TaskBuilder) -> TaskBuilder:
        TASKS[name] = fn
        return fn
    return deco


def build_task(cfg: W2SConfig) -> TaskData:
    if cfg.task not in TASKS:
        raise ConfigError(f"task: unknown task {cfg.task!r}; registered: {sorted(TASKS)}")
    return TASKS[cfg.task](cfg)


def split_ab(task: TaskData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of half A and half B of the train split, by group, re-drawn per seed."""
    train = task.indices("train")
    groups = np.unique(task.groups[train])
    perm = np.random.default_rng([seed, 7]).permutation(groups)
    a_groups = set(perm[: len(perm) // 2].tolist())
    in_a = np.array([g in a_groups for g in task.groups[train]])
    return train[in_a], train[~in_a]


def _balance(labels: np.ndarray, split: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep-mask that makes every split exactly balanced by dropping majority-class examples."""
    keep = np.ones(len(labels), dtype=bool)
    for s in np.unique(split):
        idx = np.flatnonzero(split == s)
        pos, neg = idx[labels[idx] == 1], idx[labels[idx] == 0]
        big, small = (pos, neg) if len(pos) > len(neg) else (neg, pos)
        drop = rng.choice(big, size=len(big) - len(small), replace=False)
        keep[drop] = False
    return keep


def _world_task(cfg: W2SConfig, kind: str) -> TaskData:
    from aar_ray.w2s.models import world_tokenizer

    world: World = build_world(cfg.world)
    tok = world_tokenizer(world)
    facts = world.facts[kind]
    vocab = tok.get_vocab()
    bos, eos = vocab["<bos>"], vocab["<eos>"]
    prompts = torch.tensor([[bos] + [vocab[w] for w in f.prompt] for f in facts])  # (N, T)
    labels = np.array([f.label for f in facts])
    groups = np.array([f.group for f in facts])
    split = np.array([world.splits[kind][g] for g in groups])
    keep = _balance(labels, split, np.random.default_rng([cfg.world.seed, 11]))

    def lines(role: str) -> torch.Tensor:  # (M, T+2) = [<bos>, prompt..., answer, <eos>]
        return torch.tensor([[bos] + [vocab[w] for w in p] + [vocab[a], eos] for p, a in world.corpora[kind][role]])

    return TaskData(
        name=kind,
        input_ids=prompts[keep],
        attention_mask=torch.ones_like(prompts[keep]),
        labels=torch.from_numpy(labels[keep]),
        groups=groups[keep],
        split=split[keep],
        texts=[f.text for f, k in zip(facts, keep) if k],
        tokenizer=tok,
        corpus={"strong": lines("strong"), "weak": lines("weak")},
        fingerprint=f"world:{kind}:{cfg.world}",
    )


@register_task("facts")
def facts_task(cfg: W2SConfig) -> TaskData:
    """Primary task: 'does <person> <relation> a <value> with <property>?' from the knowledge base."""
    return _world_task(cfg, "facts")


@register_task("math")
def math_task(cfg: W2SConfig) -> TaskData:
    """Held-out math: a property of an arithmetic expression's value."""
    return _world_task(cfg, "math")


@register_task("code")
def code_task(cfg: W2SConfig) -> TaskData:
    """Held-out code: a property of a tiny program's executed output."""
    return _world_task(cfg, "code")


@register_task("jsonl")
def jsonl_task(cfg: W2SConfig) -> TaskData:
    """Users' data: one JSON object per line with "text", "label" (0/1), optional "group" and "split".

    Without "split", groups (or single examples) are split test/val/train by `world.seed` in the
    proportions of `world.test_fraction` and `world.val_fraction`.
    """
    path = Path(cfg.data_path)
    if not path.is_file():
        raise ConfigError(f"data_path: file not found: {path}")
    return _load_jsonl(cfg, path, f"jsonl:{path.stem}")


@register_task("humaneval")
def humaneval_task(cfg: W2SConfig) -> TaskData:
    """Real-data held-out code verification: HumanEval candidates labelled by running their tests."""
    from aar_ray.w2s import realdata

    return _load_jsonl(cfg, realdata.dataset_path("humaneval"), "humaneval")


@register_task("champ")
def champ_task(cfg: W2SConfig) -> TaskData:
    """Real-data held-out math verification: CHAMP problems with right and plausibly wrong answers."""
    from aar_ray.w2s import realdata

    return _load_jsonl(cfg, realdata.dataset_path("champ"), "champ")


def _load_jsonl(cfg: W2SConfig, path: Path, name: str) -> TaskData:
    from aar_ray.w2s.models import load_tokenizer

    rows = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"data_path: {path}:{n}: invalid JSON: {e.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("label") not in (0, 1, True, False):
                raise ConfigError(f"data_path: {path}:{n}: each line needs a string 'text' and a 0/1 'label'")
            if "split" in row and row["split"] not in ("train", "val", "test"):
                raise ConfigError(f"data_path: {path}:{n}: split must be train, val or test, got {row['split']!r}")
            rows.append(row)
    if len(rows) < 8:
        raise ConfigError(f"data_path: {path} has {len(rows)} examples; need at least 8")
    group_names = [str(r.get("group", i)) for i, r in enumerate(rows)]
    uniq = {g: i for i, g in enumerate(dict.fromkeys(group_names))}
    groups = np.array([uniq[g] for g in group_names])
    labels = np.array([int(r["label"]) for r in rows])
    rng = np.random.default_rng([cfg.world.seed, 13])
    if all("split" in r for r in rows):
        split = np.array([r["split"] for r in rows])
    else:
        from aar_ray.w2s.world import _split_groups
        gsplit = _split_groups(rng, sorted(uniq.values()), cfg.world)
        split = np.array([gsplit[g] for g in groups])
    keep = _balance(labels, split, rng)
    tok = load_tokenizer(cfg.strong)
    texts = [r["text"] for r, k in zip(rows, keep) if k]
    enc = tok(texts, padding="longest", truncation=True, max_length=cfg.max_length, return_tensors="pt")
    import hashlib
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return TaskData(
        name=name,
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        labels=torch.from_numpy(labels[keep]),
        groups=groups[keep],
        split=split[keep],
        texts=texts,
        tokenizer=tok,
        fingerprint=f"jsonl:{digest}:{cfg.max_length}:left:{cfg.world.seed}",
    )
