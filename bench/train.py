"""Training benchmark: our fine-tuning loop against HF Trainer, and the recipes on the built-in benchmark.

speed (`cpu`, and `cuda` when a GPU is present): samples/s of `aar_ray.w2s.finetune` (recipe lora)
  and of HF `Trainer` on the same tiny Qwen3 model, data, LoRA adapters, head, batch, epochs and
  precision (fp32 on CPU, bf16 on CUDA), interleaved, best of REPEATS each. `trainer_ratio` is ours
  over Trainer's (target >= 1.0). Peak memory of one run in a fresh process: peak RSS growth on CPU,
  max allocated on CUDA.
acceptance: on the CPU benchmark world (`facts`, experiments/w2s_quick.yaml bases), per recipe the
  ceiling - weak gap and naive PGR over seeds 0-2 (targets for lora: gap >= 0.15, 0 < naive PGR < 1),
  and every built-in's PGR under lora on worlds 0-2, with whether the confidence loss beats naive.
costs: per recipe, seconds and peak RSS growth of one trial (a naive transfer run, baselines cached)
  and of one ceiling fit (strong base on B, then its test predictions), each in a fresh process.
Writes bench/results/train.json. Bases come from the shared cache ($AAR_CACHE_DIR or .aar_cache);
baselines are computed afresh in a temporary cache, so their times are real.
Run alone: .venv/bin/python bench/train.py [speed] [acceptance] [costs]  (all three by default)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory of a `with` block above its start, in MB: max allocated on CUDA; on CPU the peak
    resident set (VmHWM, whose mark is reset at entry through /proc/self/clear_refs)."""

    def __init__(self, device: str = "cpu"):
        self.device, self.mb, self.peak_total_mb = device, 0.0, 0.0

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated() / 2**20
        else:
            self._start = _status_kb("VmRSS") / 1024
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak-RSS mark to the current RSS
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_total_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_total_mb = _status_kb("VmHWM") / 1024
        self.mb = self.peak_total_mb - self._start


def in_fresh_process(*args: str) -> dict:
    """Run `bench/train.py --child ARGS` and return the JSON it prints last: memory is measured in a
    fresh process, where no earlier run's freed-but-kept heap hides what a run needs."""
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


class Clock:
    """Wall seconds and this process's CPU seconds of a `with` block (GPU work synchronised)."""

    def __init__(self, base):
        self.base = base

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        _sync(self.base)
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def _ours(base, data, cfg) -> Clock:
    from aar_ray.w2s.finetune import finetune

    with Clock(base) as clock:
        finetune(base, *data, cfg, "lora", seed=0)
    return clock


def _trainer(base, data, cfg) -> Clock:
    """The same adapters, head, loss, schedule and batches through HF Trainer."""
    import torch
    import torch.nn.functional as F
    from transformers import PrinterCallback, Trainer, TrainingArguments

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
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics; we time the run ourselves
        with Clock(base) as clock:  # Trainer's set-up and our adapter attachment are not timed: in its favour
            trainer.train()
        return clock


def _sync(base) -> None:
    import torch

    if base.model.device.type == "cuda":
        torch.cuda.synchronize()


SPEED_CFG = dict(head="last_token", epochs=2, batch_size=32, lr=1e-3, head_lr=1e-3)


def speed(device: str) -> dict:
    """Ours against Trainer. On CPU the ratio is of process CPU time: both run single-threaded in this
    process (no dataloader workers), and the machine's other users inflate wall time at random."""
    from aar_ray.config import FinetuneConfig

    base = _tiny_qwen(device, "bfloat16" if device == "cuda" else "float32")
    data = _speed_data()
    cfg = FinetuneConfig(**SPEED_CFG)
    _ours(base, data, cfg), _trainer(base, data, cfg)  # warm-up: imports, kernels, allocator
    runs: dict[str, list] = {"ours": [], "trainer": []}
    for _ in range(REPEATS):  # interleaved, so background load hits both alike
        runs["ours"].append(_ours(base, data, cfg))
        runs["trainer"].append(_trainer(base, data, cfg))
    mem = {k: in_fresh_process("speed", k, device)["mb"] for k in runs}
    samples = len(data[0]) * cfg.epochs
    wall = {k: min(c.wall for c in v) for k, v in runs.items()}
    cpu = {k: min(c.cpu for c in v) for k, v in runs.items()}
    timer = cpu if device == "cpu" else wall
    return {
        "samples_per_s": samples / timer["ours"], "trainer_samples_per_s": samples / timer["trainer"],
        "trainer_ratio": timer["trainer"] / timer["ours"], "timer": "process CPU time" if device == "cpu" else "wall",
        "trainer_ratio_wall": wall["trainer"] / wall["ours"], "wall_samples_per_s": samples / wall["ours"],
        "trainer_wall_samples_per_s": samples / wall["trainer"], "peak_mem_mb": mem["ours"],
        "trainer_peak_mem_mb": mem["trainer"], "wall_s": {k: [c.wall for c in v] for k, v in runs.items()},
        "cpu_s": {k: [c.cpu for c in v] for k, v in runs.items()}, "samples": samples, "batch_size": cfg.batch_size,
        "seq_len": data[0].shape[1], "precision": "bf16 autocast" if device == "cuda" else "fp32",
        "model": "Qwen3, 4 layers, d=128, vocab 1024; LoRA r=8 on 7 projections; last-token head"}


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
    bases = [engine.baseline(exp, s) for s in SEEDS]
    weak, ceil = [b.weak_acc["test"] for b in bases], [b.ceiling_acc["test"] for b in bases]
    out = {"weak_acc": _mean_std(weak), "ceiling_acc": _mean_std(ceil),
           "gap": _mean_std([c - w for c, w in zip(ceil, weak)]),
           "baseline_s_per_seed": (time.perf_counter() - t0) / len(SEEDS), "methods": {}}
    for m in methods:
        r = engine.run_method(exp, m)
        pgrs = [s.pgr["test"] for s in r.seeds]
        out["methods"][m] = {"pgr": {**_mean_std(pgrs), "per_seed": pgrs},
                             "trial_s": sum(s.seconds for s in r.seeds) / len(r.seeds)}
        print(f"  {recipe} world {world} {m:<16} PGR {out['methods'][m]['pgr']['mean']:+.3f} ± "
              f"{out['methods'][m]['pgr']['std']:.3f}  ({out['methods'][m]['trial_s']:.1f} s/trial)", flush=True)
    print(f"  {recipe} world {world}: weak {out['weak_acc']['mean']:.3f} ceiling {out['ceiling_acc']['mean']:.3f} "
          f"gap {out['gap']['mean']:.3f} ({out['baseline_s_per_seed']:.1f} s of baselines per seed)", flush=True)
    return out


def acceptance() -> dict:
    runs = {"probe": {0: world_run("probe", 0, ["naive", "confidence"])}, "full": {0: world_run("full", 0, ["naive"])},
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


# ---------- costs: one trial and one ceiling per recipe, each in a fresh process ----------

def costs() -> dict:
    out = {r: {"trial": in_fresh_process("trial", r), "ceiling": in_fresh_process("ceiling", r)}
           for r in ("probe", "lora", "full")}
    for r, c in out.items():
        print(f"  {r:<5} trial {c['trial']['s']:.1f} s, +{c['trial']['mb']:.0f} MB RSS "
              f"(process peak {c['trial']['peak_total_mb']:.0f} MB); ceiling fit {c['ceiling']['s']:.1f} s, "
              f"+{c['ceiling']['mb']:.0f} MB", flush=True)
    return out


def child(args: list[str]) -> dict:
    """One measured run in this (fresh) process: 'speed ours|trainer DEVICE', 'trial RECIPE' (a naive
    transfer run on world 0, seed 0, baselines cached) or 'ceiling RECIPE' (the strong base fit on B)."""
    import torch

    torch.set_num_threads(THREADS)
    if args[0] == "speed":
        import peft  # noqa: F401 - imported before the measured block, as in the timed runs
        from transformers import Trainer  # noqa: F401

        from aar_ray.config import FinetuneConfig

        base, data, cfg = _tiny_qwen(args[2], "bfloat16" if args[2] == "cuda" else "float32"), _speed_data(), \
            FinetuneConfig(**SPEED_CFG)
        with PeakMemory(args[2]) as mem:
            clock = (_ours if args[1] == "ours" else _trainer)(base, data, cfg)
        return {"mb": mem.mb, "peak_total_mb": mem.peak_total_mb, "s": clock.wall}
    from aar_ray.w2s import engine

    exp = _experiment(args[1], 0, ["naive"])
    t0 = time.perf_counter()
    if args[0] == "trial":
        engine.baseline(exp, 0)
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            engine.run_method(exp, "naive", seeds=[0])
    else:
        b = engine.split_ab(exp.task, 0)[1]
        test = exp.task.indices("test")
        with PeakMemory() as mem:
            ceiling = engine.fit_baseline(exp, exp.strong, exp.task.input_ids[b], exp.task.attention_mask[b],
                                          exp.task.labels[b], 0)
            ceiling(exp.task.input_ids[test], exp.task.attention_mask[test])
    return {"mb": mem.mb, "peak_total_mb": mem.peak_total_mb, "s": time.perf_counter() - t0}


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
    if "costs" in parts:
        out["costs"] = costs()
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
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(sys.argv[2:])))
    else:
        main(sys.argv[1:] or ["speed", "acceptance", "costs"])
