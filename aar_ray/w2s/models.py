"""Base models: tiny transformers pretrained on the world (cached), or HF models by path or name.

A tiny base is a `transformers` Llama config with a word-level tokenizer built from the world's
vocabulary, so everything works offline. Pretraining runs once per (world, task, model config) and
is cached on disk by content key.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from dataclasses import asdict
from functools import lru_cache

import torch
import torch.nn.functional as F

from aar_ray.config import ModelConfig
from aar_ray.w2s import cache
from aar_ray.w2s.student import Base, features, load_tokenizer, quiet_transformers, resolve_device  # noqa: F401
from aar_ray.w2s.world import SPECIALS, World

PRETRAIN_VERSION = 2  # bump when pretraining code changes what a cached base contains


@lru_cache(maxsize=8)
def _world_tokenizer_cached(words: tuple[str, ...]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>", padding_side="right")


def world_tokenizer(world: World):
    """Word-level tokenizer over the world's vocabulary: every name and number is one token."""
    words = tuple(world.vocab)
    assert words[: len(SPECIALS)] == tuple(SPECIALS)
    return _world_tokenizer_cached(words)


def _tiny_config(cfg: ModelConfig, vocab_size: int, max_len: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=4 * cfg.d_model,
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                       num_key_value_heads=cfg.n_head, max_position_embeddings=max_len,
                       tie_word_embeddings=cfg.tie_embeddings, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _dtype(cfg: ModelConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def base_key(cfg: ModelConfig, task, role: str) -> str:
    """The cache key of a tiny base: what its pretraining reads (the task's corpus, its role, its config)."""
    return cache.content_key("base", PRETRAIN_VERSION, task.fingerprint, role, asdict(cfg))


def is_built(key: str) -> bool:
    """Whether the tiny base with this key is pretrained and cached."""
    return (cache.path_for("bases", key) / "config.json").is_file()


def load_base(cfg: ModelConfig, device: torch.device, task=None, role: str = "strong", progress: bool = True) -> Base:
    """The base for `role` ('weak' | 'strong'): pretrained-and-cached if tiny, loaded if HF."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    if cfg.kind == "hf":
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, dtype=_dtype(cfg)).to(device).eval()
        return Base(model, load_tokenizer(cfg), f"hf:{cfg.name_or_path}:{cfg.dtype}", cfg.name_or_path)
    if task is None or role not in task.corpus:
        raise ValueError(f"a tiny {role} base needs a built-in world task with a pretraining corpus")
    key = base_key(cfg, task, role)
    path = cache.path_for("bases", key)
    if not is_built(key):
        with cache.building(path) as tmp:
            model = pretrain(cfg, task.corpus[role], len(task.tokenizer), device, cfg.steps_for(task.name),
                             desc=f"pretrain {role} base ({task.name})", progress=progress)
            model.save_pretrained(tmp)
            task.tokenizer.save_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_dtype(cfg)).to(device).eval()
    return Base(model, task.tokenizer, key, str(path))


def pretrain(cfg: ModelConfig, corpus: torch.Tensor, vocab_size: int, device: torch.device, steps: int, desc: str = "pretrain",
             progress: bool = True, seed: int = 0) -> torch.nn.Module:
    """Next-token pretraining on the world's facts; the loss is on each fact's answer token.

    corpus: (M, L) token ids laid out as [<bos>, prompt..., answer, <eos>].
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_tiny_config(cfg, vocab_size, corpus.shape[1] + 2)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    corpus = corpus.to(device)
    g = torch.Generator().manual_seed(seed)
    bar = _progress(desc, steps, progress)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(corpus), (min(cfg.pretrain_batch, len(corpus)),), generator=g).to(device)
        batch = corpus[idx]  # (B, L) = [<bos>, prompt..., answer, <eos>]
        # Only the answer is knowledge (a prompt's names are arbitrary), so the loss reads the
        # last prompt position alone; the LM head runs on (B, d), not (B, L, d).
        hidden = model.model(input_ids=batch[:, :-2]).last_hidden_state[:, -1]  # (B, d)
        loss = F.cross_entropy(model.lm_head(hidden), batch[:, -2])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(step, loss.item())
    bar.close()
    return model.eval()


class _progress:
    """A rich progress bar on a TTY, a few log lines otherwise."""

    def __init__(self, desc: str, total: int, enabled: bool):
        self.desc, self.total, self.enabled = desc, total, enabled
        self.t0 = time.time()
        self._rich = None
        if enabled and os.isatty(2):
            from rich.progress import Progress
            self._rich = Progress(transient=True)
            self._rich.start()
            self._task = self._rich.add_task(desc, total=total)

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=step + 1, description=f"{self.desc} loss={loss:.3f}")
        elif (step + 1) % max(1, self.total // 4) == 0:
            print(f"[aar] {self.desc}: step {step + 1}/{self.total} loss={loss:.3f} ({time.time() - self.t0:.0f}s)",
                  flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
