"""The student as a method sees it: a loaded base model with its tokenizer, and what a probe reads.

Everything here is what a sandboxed method needs to load and read the student, and nothing else:
it imports no world, task or dataset code (the sandbox mounts this file, not those; see
`aar_ray/sandbox/runtime.py`). Building and pretraining tiny bases lives in `models.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aar_ray.config import ModelConfig


@dataclass
class Base:
    """A frozen base model with its tokenizer; `key` identifies its weights."""

    model: torch.nn.Module
    tokenizer: object
    key: str
    path: str  # directory holding weights + tokenizer (loadable by from_pretrained)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


def quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-shard bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(cfg: ModelConfig):
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    conf = Path(cfg.name_or_path) / "tokenizer_config.json"
    generic = conf.is_file() and json.loads(conf.read_text()).get("tokenizer_class") in (
        "TokenizersBackend", "PreTrainedTokenizerFast")
    # A generic tokenizer.json (ours, or any custom one) must load as itself: AutoTokenizer would pick
    # the model family's tokenizer class from config.json and ignore the file.
    tok = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(cfg.name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    tok.truncation_side = "left"  # probes read the last real token: a text over max_length keeps its end
    return tok


@torch.no_grad()
def features(base: Base, input_ids: torch.Tensor, attention_mask: torch.Tensor, kind: str = "softmax",
             layer: int = -1, batch_size: int = 256) -> torch.Tensor:
    """What a probe reads at each example's last real token, as float32 on CPU.

    kind='softmax': the next-token distribution, (N, V). kind='logits': the next-token logits, (N, V).
    kind='hidden': hidden state of `layer`, (N, D).
    """
    if kind not in ("softmax", "logits", "hidden"):
        raise ValueError(f"features kind must be 'softmax', 'logits' or 'hidden', got {kind!r}")
    device = next(base.model.parameters()).device
    out = []
    last = attention_mask.sum(1) - 1  # (N,) index of the last real token
    for i in range(0, len(input_ids), batch_size):
        ids, mask = input_ids[i:i + batch_size].to(device), attention_mask[i:i + batch_size].to(device)
        res = base.model(input_ids=ids, attention_mask=mask, output_hidden_states=(kind == "hidden"))
        rows = torch.arange(len(ids), device=device)
        pos = last[i:i + batch_size].to(device)
        if kind == "softmax":
            out.append(torch.softmax(res.logits[rows, pos].float(), dim=-1).cpu())  # (B, V)
        elif kind == "logits":
            out.append(res.logits[rows, pos].float().cpu())  # (B, V)
        else:
            out.append(res.hidden_states[layer][rows, pos].float().cpu())  # (B, D)
    return torch.cat(out)
