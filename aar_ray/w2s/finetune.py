"""The fine-tuning recipes: a scalar head on a causal LM, trained on soft labels with a method's loss.

recipe 'lora': LoRA adapters (peft) on the shared base, whose own weights stay frozen. The adapters
  are attached for training and for each prediction and taken off afterwards, so the base that
  baselines, seeds and the sandbox's fingerprint share is left exactly as it was found.
recipe 'full': every weight of a float32 copy of the base (the base itself is never written).

The head reads the last real token (inputs are right-padded):
  'last_token'   logit = w . h_last + b, a fresh linear head on the final hidden state (Burns et al.);
  'next_token'   logit = w . softmax(lm_head(h_last)) + b, a fresh linear head on the next-token
                 distribution: what the probe recipe reads, and the default because on the built-in
                 world the property is linear in the predicted value but not in the hidden state
                 (a hidden-state probe's ceiling is 0.69 where the softmax probe's is 0.99);
  'label_words'  logit = lm_head(h_last)[yes] - lm_head(h_last)[no], the LM's own preference between
                 two label words (no new weights; a pretrained LLM starts from its zero-shot guess).

One plain loop (why not HF Trainer: `bench/train.py` measures this loop against Trainer on the same
model, data, batch and precision): AdamW, linear warm-up then linear decay, gradient accumulation,
gradient clipping, autocast in the base's dtype (bf16 on GPUs), optional activation checkpointing.
Every random draw (head and adapter init, order, dropout) comes from the seed, in a forked RNG.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import Callable, Iterator

import torch

from aar_ray.config import FinetuneConfig
from aar_ray.w2s.api import LossFn, reduce_loss, soft_ce
from aar_ray.w2s.student import Base

OnStep = Callable[[int, float], None]


class ScalarHead(torch.nn.Module):
    """(ids, mask) -> one logit per example, read at the last real token of a causal LM."""

    def __init__(self, lm: torch.nn.Module, cfg: FinetuneConfig, tokenizer, seed: int, amp: torch.dtype | None):
        super().__init__()
        self.lm, self.amp = lm, amp  # amp: autocast dtype (the preset's), None for float32
        self.linear: torch.nn.Linear | None = None
        self.label_ids: list[int] = []
        self.read_vocab = cfg.head == "next_token"
        if cfg.head == "label_words":
            self.label_ids = [label_token(tokenizer, w) for w in cfg.label_words]
            return
        out = lm.get_output_embeddings()
        dim = out.out_features if cfg.head == "next_token" else out.in_features
        self.linear = torch.nn.Linear(dim, 1, device=lm.device)  # float32 even on a bf16 base
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # seeded init, independent of the global RNG
            self.linear.weight.copy_(torch.randn(1, dim, generator=g) * 0.01)
            self.linear.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        last = attention_mask.sum(1) - 1  # (B,) index of the last real token
        rows = torch.arange(len(input_ids), device=input_ids.device)
        with _autocast(input_ids.device, self.amp):
            hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                           use_cache=False).last_hidden_state  # (B, T, D)
            h = hidden[rows, last]  # (B, D)
            if self.read_vocab:  # the next-token distribution, which is what the probe recipe reads
                h = torch.softmax(self.lm.get_output_embeddings()(h).float(), dim=-1)  # (B, V)
        if self.linear is not None:
            return self.linear(h.float()).squeeze(-1)  # (B,)
        w = self.lm.get_output_embeddings().weight[self.label_ids]  # (2, D): rows of (no, yes)
        words = h.float() @ w.float().T  # (B, 2) the label words' next-token logits (a shared bias cancels)
        return words[:, 1] - words[:, 0]  # (B,)


def label_token(tokenizer, word: str) -> int:
    """The single token id of a label word; a word that splits into several tokens is an error."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"finetune.label_words: {word!r} is not one known token of the student ({ids})")
    return ids[0]


def _amp_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """Autocast dtype: the base's own low precision (the preset's dtype), or None for float32."""
    dtype = next(model.parameters()).dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (peft's adapter init, dropout) without disturbing the caller's stream."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _lent(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Lend the shared base out and take it back as found: requires_grad flags, and every module's (and
    the config's) attribute table, including the contents of its dicts (submodules, hooks), so that what
    adapters or activation checkpointing attach (e.g. an input-grad hook on the embeddings) comes off."""
    flags = {p: p.requires_grad for p in model.parameters()}
    tables = [(obj, {k: (v, dict(v) if isinstance(v, dict) else None) for k, v in vars(obj).items()})
              for obj in (*model.modules(), model.config)]
    try:
        yield model
    finally:
        for obj, table in tables:
            for key in set(vars(obj)) - set(table):
                del vars(obj)[key]
            for key, (value, contents) in table.items():
                if contents is not None:  # the same dict object, its old contents
                    value.clear()
                    value.update(contents)
                vars(obj)[key] = value
        for p, flag in flags.items():
            p.requires_grad_(flag)


@contextlib.contextmanager
def lora_adapters(model: torch.nn.Module, cfg: FinetuneConfig, state: dict | None = None) -> Iterator[object]:
    """LoRA adapters on `model` (its own weights frozen) for the duration; loads `state` if given."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none")
    with _lent(model), warnings.catch_warnings():
        # peft calls transformers' deprecated `is_gradient_checkpointing`; the warning is theirs, not ours
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        peft_model = get_peft_model(model, lora)
        try:
            if state is not None:
                set_peft_model_state_dict(peft_model, state)
            yield peft_model
        finally:
            peft_model.unload()  # puts the original Linear modules back


@contextlib.contextmanager
def _checkpointing(lm: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Activation checkpointing for the duration: recompute activations in backward to save memory."""
    if not enabled:
        yield
        return
    # non-reentrant checkpointing needs no input that requires grad (LoRA freezes the embeddings)
    lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        lm.activation_checkpointing_disable()


@contextlib.contextmanager
def _trainable(base: Base, cfg: FinetuneConfig, recipe: str) -> Iterator[tuple[torch.nn.Module, Callable]]:
    """The LM to train and a function that returns its adapter weights (None for 'full')."""
    if recipe == "full":
        lm = copy.deepcopy(base.model).float().requires_grad_(True)  # float32 master weights
        with _checkpointing(lm, cfg.gradient_checkpointing):
            yield lm, lambda: None
        return
    from peft import get_peft_model_state_dict

    with lora_adapters(base.model, cfg) as peft_model, _checkpointing(base.model, cfg.gradient_checkpointing):
        yield base.model, lambda: {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def train_loop(model: ScalarHead, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
               cfg: FinetuneConfig, epochs: int, lr: float, seed: int, loss_fn: LossFn = soft_ce,
               sample_weight: torch.Tensor | None = None, on_step: OnStep | None = None) -> None:
    """Train the model's trainable parameters on ids/mask (N, T) toward soft targets (N,) in [0, 1]."""
    from transformers import get_linear_schedule_with_warmup

    device = model.lm.device
    head = list(model.linear.parameters()) if model.linear is not None else []
    body = [p for p in model.lm.parameters() if p.requires_grad]
    groups = [{"params": body, "lr": lr}] + ([{"params": head, "lr": cfg.head_lr}] if head else [])
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=True)  # one kernel for all tensors
    n, bs = len(ids), cfg.batch_size
    total = epochs * math.ceil(math.ceil(n / bs) / cfg.grad_accum)  # optimizer steps
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * total), total)
    targets = targets.float().to(device)
    weight = None if sample_weight is None else sample_weight.float().to(device)
    g = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    for _ in range(epochs):
        batches = torch.randperm(n, generator=g).split(bs)
        for k in range(0, len(batches), cfg.grad_accum):
            micro = batches[k:k + cfg.grad_accum]
            step_loss = torch.zeros((), device=device)
            for idx in micro:
                width = int(mask[idx].sum(1).max())  # right padding: drop the batch's all-pad columns
                logits = model(ids[idx, :width].to(device), mask[idx, :width].to(device))  # (B,)
                idx = idx.to(device)
                per = loss_fn(logits, targets[idx], step / total)  # scalar or (B,)
                loss = reduce_loss(per, None if weight is None else weight[idx]) / len(micro)
                loss.backward()
                step_loss += loss.detach()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(body + head, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(step, step_loss.item())  # one host sync per optimizer step
            step += 1
    model.eval()


@torch.no_grad()
def predict_logits(model: ScalarHead, ids: torch.Tensor, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits (N,) in float32 on CPU, batch by batch."""
    device, out = model.lm.device, []
    model.eval()
    for i in range(0, len(ids), batch_size):
        b_mask = mask[i:i + batch_size]
        width = int(b_mask.sum(1).max())
        out.append(model(ids[i:i + batch_size, :width].to(device), b_mask[:, :width].to(device)).cpu())
    return torch.cat(out)


class Student:
    """A fine-tuned student: `student(ids, mask)` gives P(label = 1), shape (N,).

    'full' owns its trained copy. 'lora' keeps only its adapter and head weights and attaches them
    to the shared base for the duration of each call.
    """

    def __init__(self, base: Base, cfg: FinetuneConfig, recipe: str, model: ScalarHead, adapter: dict | None):
        self.base, self.cfg, self.recipe, self.model, self.adapter = base, cfg, recipe, model, adapter

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.adapter is None:
            return predict_logits(self.model, ids, mask, self.cfg.eval_batch_size)  # (N,)
        # the adapters' throwaway init (overwritten by self.adapter) must not draw from the caller's RNG
        with _seeded(0, self.base.model.device), lora_adapters(self.base.model, self.cfg, self.adapter):
            return predict_logits(self.model, ids, mask, self.cfg.eval_batch_size)  # (N,)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(ids, mask))  # (N,) P(label = 1)


def finetune(base: Base, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig,
             recipe: str, seed: int, loss_fn: LossFn = soft_ce, epochs: int | None = None, lr: float | None = None,
             sample_weight: torch.Tensor | None = None, on_step: OnStep | None = None) -> Student:
    """Fine-tune `base` with `recipe` ('lora' | 'full') on ids/mask (N, T) toward soft targets (N,).

    `loss_fn(logits, targets, progress)` may return per-example values (B,), averaged with
    `sample_weight` exactly as `fit_probe` does. The base is left bit-identical.
    """
    if recipe not in ("lora", "full"):
        raise ValueError(f"finetune: recipe must be 'lora' or 'full', got {recipe!r}")
    epochs = epochs or cfg.epochs
    lr = lr if lr is not None else cfg.lr if recipe == "lora" else cfg.full_lr
    with _seeded(seed, base.model.device), _trainable(base, cfg, recipe) as (lm, adapter):
        model = ScalarHead(lm, cfg, base.tokenizer, seed, _amp_dtype(base.model))
        train_loop(model, ids, mask, targets, cfg, epochs, lr, seed, loss_fn, sample_weight, on_step)
        return Student(base, cfg, recipe, model, adapter())
