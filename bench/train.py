"""Training benchmark: our fine-tuning loop against HF Trainer, and the recipes on the built-in benchmark.

speed (`cpu`, and `cuda` when a GPU is present): samples/s of `aar_ray.w2s.finetune` (recipe lora)
  and of HF `Trainer` on the same tiny Qwen3 model, data, LoRA adapters, head, batch, epochs and
  precision (fp32 on CPU, bf16 on CUDA), interleaved, best of REPEATS each. `trainer_ratio` is ours
  over Trainer's (target >= 1.0). Peak memory: RSS growth over the run on CPU (sampled every 5 ms),
  max allocated on CUDA.
acceptance: on the CPU benchmark world (`facts`, experiments/w2s_quick.yaml bases), per recipe the
  ceiling - weak gap and naive PGR over seeds 0-2 (targets for lora: gap >= 0.15, 0 < naive PGR < 1),
  and every built-in's PGR under lora on worlds 0-2, with whether the confidence loss beats naive.
costs: seconds and peak RSS growth of one trial (a naive transfer run, baselines cached) and of one
  seed's baselines (weak + ceiling), per recipe.
Writes bench/results/train.json. Bases come from the shared cache ($AAR_CACHE_DIR or .aar_cache);
baselines are computed afresh in a temporary cache, so their times are real.
Run alone: .venv/bin/python bench/train.py [speed] [acceptance]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
THREADS = 1  # the machine's cores are shared; one thread keeps runs comparable
REPEATS = 3
SEEDS = [0, 1, 2]
WORLDS = [0, 1, 2]
BUILTINS = ["naive", "confidence", "confident_only", "label_smoothing", "bootstrap"]


class PeakMemory:
    """Peak memory above the start of a `with` block, in MB: CUDA max allocated, or sampled RSS."""

    def __init__(self, device: str = "cpu"):
        self.device, self.mb = device, 0.0

    def __enter__(self) -> "PeakMemory":
        import psutil
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._proc, self._stop = psutil.Process(), threading.Event()
        self._start = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.mb = (self._peak - self._start) / 2**20


# ---------- speed: our loop against HF Trainer ----------

def _tiny_qwen(device: str, dtype: str):
    """A randomly initialised Qwen3 (4 layers, d=128) saved and loaded as a Base, the way HF bases load."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
    from tokenizers import Tokenizer, models

    from aar_ray.config import ModelConfig
    from aar_ray.w2s.models import load_base

    path = Path(tempfile.mkdtemp(prefix="aar_bench_qwen_"))
    vocab = {f"w{i}": i for i in range(1024)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w3")),
                                  pad_token="w0", eos_token="w2", unk_token="w3")
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                 max_position_embeddings=64, tie_word_embeddings=True)).save_pretrained(path)
    tok.save_pretrained(path)
    return load_base(ModelConfig(kind="hf", name_or_path=str(path), dtype=dtype), torch.device(device), progress=False)


def _speed_data(n: int = 1024, length: int = 32):
    """Random token sequences of one length (no padding, so neither loop can skip work) and soft labels."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1024, (n, length), generator=g)
    return ids, torch.ones_like(ids), torch.rand(n, generator=g)


def _ours(base, data, cfg) -> float:
    from aar_ray.w2s.finetune import finetune

    t0 = time.perf_counter()
    finetune(base, *data, cfg, "lora", seed=0)
    _sync(base)
    return time.perf_counter() - t0


def _trainer(base, data, cfg) -> float:
    """The same adapters, head, loss, schedule and batches through HF Trainer."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer, TrainingArguments

    from aar_ray.w2s.finetune import ScalarHead, lora_adapters

    ids, mask, y = data

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "attention_mask": mask[i], "labels": y[i]}

    class Model(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, input_ids, attention_mask, labels):
            logits = self.head(input_ids, attention_mask)  # (B,)
            return {"loss": F.binary_cross_entropy_with_logits(logits, labels.float()), "logits": logits}

    steps = cfg.epochs * -(-len(ids) // (cfg.batch_size * cfg.grad_accum))
    cuda = base.model.device.type == "cuda"
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="aar_bench_trainer_"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear", warmup_steps=int(cfg.warmup * steps),
        max_grad_norm=cfg.max_grad_norm, bf16=cuda, use_cpu=not cuda, logging_strategy="no", save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    with lora_adapters(base.model, cfg):
        model = Model(ScalarHead(base.model, cfg, base.tokenizer, 0, amp=None))  # Trainer autocasts (bf16=...)
        trainer = Trainer(model=model, args=args, train_dataset=Rows())
        t0 = time.perf_counter()
        trainer.train()
        _sync(base)
        return time.perf_counter() - t0


def _sync(base) -> None:
    import torch

    if base.model.device.type == "cuda":
        torch.cuda.synchronize()


def speed(device: str) -> dict:
    from aar_ray.config import FinetuneConfig

    base = _tiny_qwen(device, "bfloat16" if device == "cuda" else "float32")
    data = _speed_data()
    cfg = FinetuneConfig(head="last_token", epochs=2, batch_size=32, lr=1e-3, head_lr=1e-3)
    _ours(base, data, cfg), _trainer(base, data, cfg)  # warm-up: imports, kernels, allocator
    ours, theirs, mem = [], [], {}
    for _ in range(REPEATS):  # interleaved, so background load hits both alike
        with PeakMemory(device) as m:
            ours.append(_ours(base, data, cfg))
        mem["ours"] = max(mem.get("ours", 0.0), m.mb)
        with PeakMemory(device) as m:
            theirs.append(_trainer(base, data, cfg))
        mem["trainer"] = max(mem.get("trainer", 0.0), m.mb)
    samples = len(data[0]) * cfg.epochs
    out = {"samples_per_s": samples / min(ours), "trainer_samples_per_s": samples / min(theirs),
           "peak_mem_mb": mem["ours"], "trainer_peak_mem_mb": mem["trainer"], "seconds": ours, "trainer_seconds": theirs,
           "samples": samples, "batch_size": cfg.batch_size, "seq_len": data[0].shape[1],
           "precision": "bf16 autocast" if device == "cuda" else "fp32", "model": "Qwen3 4 layers d=128 vocab 1024"}
    out["trainer_ratio"] = out["samples_per_s"] / out["trainer_samples_per_s"]
    return out


# ---------- acceptance: the recipes on the built-in benchmark ----------

def _experiment(recipe: str, world: int, methods: list[str]):
    from aar_ray.config import W2SConfig, load_config
    from aar_ray.w2s import engine

    cfg = load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml", [
        f"recipe={recipe}", f"world.seed={world}", f"methods=[{','.join(methods)}]", f"seeds={SEEDS}",
        f"torch_threads={THREADS}"])
    return engine.prepare(cfg, progress=False)


def _mean_std(xs: list[float]) -> dict:
    from aar_ray.w2s.metrics import mean_std

    return mean_std(xs)


def world_run(recipe: str, world: int, methods: list[str]) -> dict:
    """Baselines and methods of one (recipe, world) over SEEDS, with their costs."""
    from aar_ray.w2s import engine

    exp = _experiment(recipe, world, methods)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        bases = [engine.baseline(exp, s) for s in SEEDS]
    weak, ceil = [b.weak_acc["test"] for b in bases], [b.ceiling_acc["test"] for b in bases]
    out = {"weak_acc": _mean_std(weak), "ceiling_acc": _mean_std(ceil),
           "gap": _mean_std([c - w for c, w in zip(ceil, weak)]),
           "baseline_s_per_seed": (time.perf_counter() - t0) / len(SEEDS), "baseline_peak_rss_mb": mem.mb,
           "methods": {}}
    for m in methods:
        with PeakMemory() as mem:
            r = engine.run_method(exp, m)
        pgrs = [s.pgr["test"] for s in r.seeds]
        out["methods"][m] = {"pgr": {**_mean_std(pgrs), "per_seed": pgrs},
                             "trial_s": sum(s.seconds for s in r.seeds) / len(r.seeds), "trial_peak_rss_mb": mem.mb}
        print(f"  {recipe} world {world} {m:<16} PGR {out['methods'][m]['pgr']['mean']:+.3f} ± "
              f"{out['methods'][m]['pgr']['std']:.3f}  ({out['methods'][m]['trial_s']:.1f} s/trial)", flush=True)
    print(f"  {recipe} world {world}: weak {out['weak_acc']['mean']:.3f} ceiling {out['ceiling_acc']['mean']:.3f} "
          f"gap {out['gap']['mean']:.3f} ({out['baseline_s_per_seed']:.1f} s of baselines per seed)", flush=True)
    return out


def acceptance() -> dict:
    runs = {"probe": {0: world_run("probe", 0, ["naive"])}, "full": {0: world_run("full", 0, ["naive"])},
            "lora": {w: world_run("lora", w, BUILTINS) for w in WORLDS}}
    out: dict = {r: {f"world{w}": v for w, v in per.items()} for r, per in runs.items()}
    lora0, full0 = runs["lora"][0], runs["full"][0]
    naive = {r: runs[r][0]["methods"]["naive"]["pgr"]["mean"] for r in ("lora", "full")}
    out["targets"] = {
        "lora_gap": lora0["gap"]["mean"], "lora_gap_ge_0.15": lora0["gap"]["mean"] >= 0.15,
        "lora_naive_pgr": naive["lora"], "lora_naive_pgr_in_(0,1)": 0 < naive["lora"] < 1,
        "full_gap": full0["gap"]["mean"], "full_gap_ge_0.15": full0["gap"]["mean"] >= 0.15,
        "full_naive_pgr": naive["full"], "full_naive_pgr_in_(0,1)": 0 < naive["full"] < 1,
    }
    margin = {f"world{w}": runs["lora"][w]["methods"]["confidence"]["pgr"]["mean"]
              - runs["lora"][w]["methods"]["naive"]["pgr"]["mean"] for w in WORLDS}
    out["ordering"] = {"confidence_minus_naive_pgr": margin, "confidence_beats_naive": all(v > 0 for v in margin.values()),
                       "gap": {f"world{w}": runs["lora"][w]["gap"]["mean"] for w in WORLDS}}
    return out


def _provenance() -> dict:
    import peft
    import torch
    import transformers

    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout)
    return {"git_sha": sha, "dirty": dirty, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpus": os.cpu_count(), "threads": THREADS}


def main(parts: list[str]) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    dest = ROOT / "bench/results/train.json"
    out = json.loads(dest.read_text()) if dest.is_file() else {}
    shared = Path(os.environ.get("AAR_CACHE_DIR") or ROOT / ".aar_cache")
    tmp = Path(tempfile.mkdtemp(prefix="aar_bench_train_"))
    (shared / "bases").mkdir(parents=True, exist_ok=True)
    (tmp / "bases").symlink_to(shared / "bases")  # shared pretrained bases, fresh baselines
    os.environ["AAR_CACHE_DIR"] = str(tmp)
    t0 = time.perf_counter()
    if "speed" in parts:
        out["cpu"] = speed("cpu")
        out.update({k: out["cpu"][k] for k in ("samples_per_s", "trainer_samples_per_s", "trainer_ratio", "peak_mem_mb")})
        if torch.cuda.is_available():
            out["cuda"] = speed("cuda")
        _print_speed(out)
    if "acceptance" in parts:
        out["acceptance"] = acceptance()
        _print_acceptance(out["acceptance"])
    out["provenance"] = {**_provenance(), "seconds": time.perf_counter() - t0, "parts": parts}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")
    return out


def _print_speed(out: dict) -> None:
    for dev in ("cpu", "cuda"):
        if dev in out:
            s = out[dev]
            print(f"{dev}: ours {s['samples_per_s']:.0f} samples/s, Trainer {s['trainer_samples_per_s']:.0f} samples/s, "
                  f"ratio {s['trainer_ratio']:.2f} (target >= 1.0); peak mem {s['peak_mem_mb']:.0f} MB "
                  f"(Trainer {s['trainer_peak_mem_mb']:.0f} MB)")


def _print_acceptance(acc: dict) -> None:
    print("targets:", json.dumps(acc["targets"]))
    print("ordering:", json.dumps(acc["ordering"]))


if __name__ == "__main__":
    main(sys.argv[1:] or ["speed", "acceptance"])
