"""Small configs and local tiny HF models for fast engine tests."""
from __future__ import annotations

import json
from pathlib import Path

from aar_ray.config import W2SConfig, load_config

ROOT = Path(__file__).resolve().parents[1]

# A tiny world and tiny bases: seconds, not minutes. Not a benchmark: gaps here mean nothing. Its
# seed is pinned (a public world) so tests are deterministic; tests/test_trust.py covers the secret one.
TINY = [
    "world.seed=0", "world.n_entities=60", "world.n_relations=2", "world.n_values=8", "world.math_max=12",
    "world.code_functions=8", "world.code_inputs=12", "world.statements=false",  # a plain per-value world
    "weak.pretrain_steps=40", "weak.facts_pretrain_steps=40", "weak.pretrain_batch=64", "weak.pretrain_lr=0.01",
    "strong.d_model=32", "strong.n_layer=1", "strong.n_head=2", "strong.pretrain_steps=80", "strong.facts_pretrain_steps=150", "strong.pretrain_batch=64", "strong.pretrain_lr=0.01",
    "probe.epochs=30", "probe.lr=0.05", "seeds=[0,1]", "torch_threads=1",
]


def assert_benchmark_room(gap: float, naive_pgr: dict, context: object) -> None:
    """The benchmark's properties on one world (tests/test_benchmark.py): a real weak-to-ceiling gap,
    and naive PGR (mean and std over seeds) with room on both sides and a spread small enough that an
    improvement is not noise. The bounds are the issue's (gap >= 0.25, naive between 0.10 and 0.45,
    measured on worlds 0-2 and two secret worlds: bench/results/headroom.json) with slack below for a
    world never tuned on: world 4's naive val PGR is 0.097 +- 0.040."""
    assert gap >= 0.25, context
    assert 0.05 < naive_pgr["mean"] < 0.45, context
    assert naive_pgr["std"] <= 0.12, context


def tiny_cfg(*overrides: str) -> W2SConfig:
    return load_config(W2SConfig, None, TINY + list(overrides))


def make_tiny_hf_model(path: Path, arch: str, words: list[str], hidden: int = 32) -> Path:
    """A randomly initialised Qwen-family causal LM with a word-level tokenizer, saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words) - set(specials)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                  pad_token="<pad>")
    cls_cfg, cls_model = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    cfg = cls_cfg(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, head_dim=hidden // 2,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    model = cls_model(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_jsonl(path: Path, n: int = 48) -> list[str]:
    """A small binary dataset: label 1 iff the sentence mentions a 'warm' colour."""
    warm, cool = ["red", "orange", "yellow"], ["blue", "green", "violet"]
    words = set()
    with path.open("w") as fh:
        for i in range(n):
            label = i % 2
            colour = (warm if label else cool)[i % 3]
            text = f"item{i % 12} is {colour}"
            words.update(text.split())
            fh.write(json.dumps({"text": text, "label": label, "group": f"g{i // 2}"}) + "\n")
    return sorted(words)


def tiny_qwens(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A small JSONL dataset and tiny Qwen1.5-shaped (weak) and Qwen3-shaped (strong) models over its words."""
    words = write_jsonl(tmp_path / "data.jsonl")
    weak = make_tiny_hf_model(tmp_path / "qwen15", "qwen2", words, hidden=16)
    strong = make_tiny_hf_model(tmp_path / "qwen3", "qwen3", words, hidden=32)
    return tmp_path / "data.jsonl", weak, strong


def tiny_qwen_cfg(tmp_path: Path, *overrides: str, preset: str = "w2s_qwen_tiny") -> W2SConfig:
    """A Qwen preset pointed at tiny local Qwens and a small JSONL file."""
    data, weak, strong = tiny_qwens(tmp_path)
    return load_config(W2SConfig, ROOT / f"experiments/{preset}.yaml", [
        f"data_path={data}", f"weak.name_or_path={weak}", f"strong.name_or_path={strong}", *overrides])


def run_request(source: str, request) -> dict:
    """Predictions {seed: list of floats} of a method run the way a trial job does (in-process here:
    trusted built-ins; the sandbox is tested on its own). Lists, so a test can tamper with them."""
    from aar_ray.sandbox.trial import run_trusted

    return {s: p.tolist() for s, p in run_trusted(source, request).preds.items()}


def keys_of(obj) -> list:
    """Every key of a JSON object, at any depth (to check nothing is named like a label)."""
    if isinstance(obj, dict):
        return [k for k, v in obj.items() for k in (k, *keys_of(v))]
    if isinstance(obj, list):
        return [k for v in obj for k in keys_of(v)]
    return []
