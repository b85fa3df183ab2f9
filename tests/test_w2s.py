"""The weak-to-strong engine: metrics, splits, determinism, method losses, configs, training, caching."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aar_ray.config import ConfigError, W2SConfig, WorldConfig, load_config
from aar_ray.w2s import engine, models
from aar_ray.w2s.methods import BUILTINS, load_module, resolve
from aar_ray.w2s.metrics import accuracy, mean_std, pgr
from aar_ray.w2s.tasks import build_task, split_ab
from aar_ray.w2s.world import build_world

from w2s_helpers import tiny_cfg, tiny_qwen_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("AAR_CACHE_DIR", str(d))
    return d


# ---------- metrics ----------

def test_pgr_arithmetic():
    assert pgr(0.6, 0.9, 0.75) == pytest.approx(0.5)
    assert pgr(0.6, 0.9, 0.9) == pytest.approx(1.0)
    assert pgr(0.6, 0.9, 0.6) == pytest.approx(0.0)
    assert pgr(0.6, 0.9, 0.54) == pytest.approx(-0.2)
    assert math.isnan(pgr(0.7, 0.7, 0.8))


def test_accuracy_and_spread():
    probs = torch.tensor([0.9, 0.2, 0.6, 0.4])
    labels = torch.tensor([1, 0, 0, 0])
    assert accuracy(probs, labels) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shape"):
        accuracy(probs, labels[:3])
    ms = mean_std([0.1, 0.2, 0.3])
    assert ms["mean"] == pytest.approx(0.2)
    assert ms["std"] == pytest.approx(0.1)  # sample std, ddof=1
    assert mean_std([0.4]) == {"mean": 0.4, "std": 0.0}


# ---------- world and splits ----------

@pytest.mark.parametrize("task", ["facts", "math", "code"])
def test_splits_are_disjoint_by_group_and_balanced(task):
    t = build_task(tiny_cfg(f"task={task}"))
    groups = {s: set(t.groups[t.split == s]) for s in ("train", "val", "test")}
    assert groups["train"] and groups["val"] and groups["test"]
    assert not groups["train"] & groups["test"]
    assert not groups["train"] & groups["val"]
    assert not groups["val"] & groups["test"]
    for s in ("train", "val", "test"):
        y = t.labels[t.split == s]
        assert int(y.sum()) * 2 == len(y), f"{task}/{s} is not balanced"
    for seed in (0, 1):
        a, b = split_ab(t, seed)
        assert set(a).isdisjoint(b)
        assert sorted(np.concatenate([a, b])) == sorted(t.indices("train"))
        assert set(t.groups[a]).isdisjoint(t.groups[b])  # no entity in both halves
        assert not set(t.groups[np.concatenate([a, b])]) & groups["test"]
    a0, _ = split_ab(t, 0)
    a1, _ = split_ab(t, 1)
    assert set(a0) != set(a1)  # a seed re-draws A/B


def test_world_is_deterministic_and_seeded():
    w1, w2 = build_world(WorldConfig(seed=3)), build_world(WorldConfig(seed=3))
    w3 = build_world(WorldConfig(seed=4))
    assert w1.facts == w2.facts and w1.splits == w2.splits
    assert w1.facts["facts"] != w3.facts["facts"]
    # the weak base sees the configured share of groups
    for kind in ("facts", "math", "code"):
        n_groups = len({f.group for f in w1.facts[kind]})
        assert len(w1.weak_groups[kind]) == round(w1.cfg.weak_fraction * n_groups)


def test_labels_follow_world_properties():
    w = build_world(WorldConfig(seed=0))
    for f in w.facts["facts"][:200]:
        assert f.label == int(f.answer in w.properties[f.prompt[1]])
    math_word = {n: i for i, n in enumerate(w.numbers["math"])}  # the world's opaque number words
    sums = {}
    for f in w.facts["math"]:
        a, b, c = (math_word[t] for t in (f.prompt[0], f.prompt[2], f.answer))
        assert c == a + b
        sums.setdefault(c, set()).add(f.label)
    assert all(len(labels) == 1 for labels in sums.values())  # a property of the sum alone
    code_word = {n: i for i, n in enumerate(w.numbers["code"])}
    for f in w.facts["code"][:200]:
        assert f.label == int(code_word[f.answer] > 48)


# ---------- method losses on hand-made tensors ----------

def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_naive_and_smoothing_losses():
    logits, weak = torch.tensor([2.0, -1.0]), torch.tensor([0.9, 0.3])
    naive = load_module(resolve("naive"))
    assert float(naive.loss(logits, weak, 0.0)) == pytest.approx((_bce(2, 0.9) + _bce(-1, 0.3)) / 2, rel=1e-5)
    ls = load_module(resolve("label_smoothing"))
    eps = ls.EPS
    t = [(1 - eps) * 0.9 + eps / 2, (1 - eps) * 0.3 + eps / 2]
    assert float(ls.loss(logits, weak, 0.5)) == pytest.approx((_bce(2, t[0]) + _bce(-1, t[1])) / 2, rel=1e-5)


def test_confidence_loss_ramps_alpha_and_hardens_to_weak_balance():
    conf = load_module(resolve("confidence"))
    logits = torch.tensor([3.0, 1.0, -1.0, -3.0])
    weak = torch.tensor([0.6, 0.4, 0.7, 0.2])  # half the weak labels are positive
    # at the start alpha = 0: plain cross-entropy to the weak labels
    assert float(conf.loss(logits, weak, 0.0)) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, weak)))
    # after the warm-up alpha = 0.5; the student's top half (logits 3, 1) is hardened to 1
    hard = torch.tensor([1.0, 1.0, 0.0, 0.0])
    target = 0.5 * weak + 0.5 * hard
    assert float(conf.loss(logits, weak, 0.5)) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, target)))
    # mid-ramp: alpha = 0.5 * (0.1 / 0.2) = 0.25
    target = 0.75 * weak + 0.25 * hard
    assert float(conf.loss(logits, weak, 0.1)) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, target)))


def test_confident_only_selects_most_confident():
    co = load_module(resolve("confident_only"))
    weak = torch.tensor([0.5, 0.95, 0.45, 0.1, 0.6, 0.0])
    assert sorted(co.select(weak, 0.5).tolist()) == [1, 3, 5]
    assert co.select(weak, 0.01).tolist() == [5]


def test_bootstrap_mixes_teacher_and_intermediate():
    bs = load_module(resolve("bootstrap"))
    mixed = bs.mix(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5]), 0.25)
    assert torch.allclose(mixed, torch.tensor([0.25, 0.375]))


# ---------- configs ----------

def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="no_such_key"):
        load_config(W2SConfig, None, ["no_such_key=1"])
    with pytest.raises(ConfigError, match="world.seed"):
        load_config(W2SConfig, None, ["world.seed=abc"])
    with pytest.raises(ConfigError, match="world.weak_fraction"):
        load_config(W2SConfig, None, ["world.weak_fraction=1.5"])
    with pytest.raises(ConfigError, match="task"):
        load_config(W2SConfig, None, ["task=poetry"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(W2SConfig, None, ["seeds"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(W2SConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("probe:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match="probe.epochs"):
        load_config(W2SConfig, bad)
    with pytest.raises(ConfigError, match="data_path"):
        load_config(W2SConfig, ROOT / "experiments/w2s_qwen.yaml")  # data_path is ??? (required)
    with pytest.raises(ConfigError, match="methods"):
        engine.run_method(None, "not_a_method")


def test_presets_load():
    cfg = load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml", ["world.seed=5"])
    assert cfg.world.seed == 5 and cfg.task == "facts" and len(cfg.seeds) == 3
    assert set(cfg.methods) == set(BUILTINS)
    q = load_config(W2SConfig, ROOT / "experiments/w2s_qwen.yaml", ["data_path=/x.jsonl"])
    assert q.weak.name_or_path == "Qwen/Qwen1.5-0.5B-Chat" and q.strong.name_or_path == "Qwen/Qwen3-4B-Base"
    assert q.strong.dtype == "bfloat16" and len(q.seeds) == 5
    assert q.recipe == "lora" and q.finetune.head == "last_token"
    assert load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml").recipe == "probe"


# ---------- training ----------

def test_pretraining_changes_parameters_and_learns():
    from transformers import LlamaForCausalLM

    cfg = tiny_cfg()
    task = build_task(cfg)
    torch.manual_seed(0)
    init = LlamaForCausalLM(models._tiny_config(cfg.strong, len(task.tokenizer), task.corpus["strong"].shape[1] + 2))
    trained = models.pretrain(cfg.strong, task.corpus["strong"], len(task.tokenizer), torch.device("cpu"),
                              cfg.strong.steps_for(task.name), progress=False, seed=0)
    moved = [n for (n, p0), (_, p1) in zip(init.named_parameters(), trained.named_parameters()) if not torch.equal(p0, p1)]
    assert len(moved) == len(list(init.parameters()))  # the same seed gives the same init, so every tensor moved


def test_probe_training_changes_weights_and_fits():
    from aar_ray.config import ProbeConfig
    from aar_ray.w2s.api import fit_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).float()
    probe = fit_probe(x, y, ProbeConfig(epochs=30, lr=0.05), seed=0)
    assert abs(float(probe.linear.weight[0, 0])) > 0.5  # far from its ~0.01 init
    assert accuracy(probe(x), y.long()) > 0.95


def test_train_is_deterministic_and_records_losses(cache_dir):
    cfg = tiny_cfg("methods=[naive,confidence]")
    r1 = engine.train(cfg, progress=False).to_json()
    r2 = engine.train(cfg, progress=False).to_json()
    assert r1 == r2
    assert set(r1["methods"]) == {"naive", "confidence"}
    assert r1["seeds"] == [0, 1]
    assert len(r1["methods"]["naive"]["pgr"]["per_seed"]) == 2
    for key in ("weak_acc", "ceiling_acc"):
        assert 0.0 <= r1[key]["mean"] <= 1.0
    res = engine.train(cfg, progress=False)
    seed0 = res.methods["naive"].seeds[0]
    assert len(seed0.losses) == cfg.probe.epochs * math.ceil(len(res.baselines[0].idx_b) / cfg.probe.batch_size)
    assert seed0.pgr["test"] == pytest.approx(pgr(seed0.weak_acc["test"], seed0.ceiling_acc["test"],
                                                  seed0.transfer_acc["test"]))


def test_cache_hit_skips_pretraining_and_baselines(cache_dir, monkeypatch):
    cfg = tiny_cfg("seeds=[0]", "methods=[naive]")
    first = engine.train(cfg, progress=False).to_json()
    assert any((cache_dir / "bases").iterdir()) and any((cache_dir / "baselines").iterdir())

    def boom(*a, **k):
        raise AssertionError("cache miss: work was redone")

    monkeypatch.setattr(models, "pretrain", boom)
    monkeypatch.setattr(engine, "baseline_probe", boom)
    assert engine.train(cfg, progress=False).to_json() == first
    # a result-affecting change is a different key, so it misses
    with pytest.raises(AssertionError, match="cache miss"):
        engine.train(tiny_cfg("seeds=[0]", "methods=[naive]", "weak.facts_pretrain_steps=41"), progress=False)


def test_bases_pretrained_side_by_side_are_the_ones_built_in_process(cache_dir, tmp_path, monkeypatch):
    """prebuild: every missing tiny base of several experiments, once each, in child processes; the cache
    then holds exactly what load_base would have built in process (same thread count: same bits)."""
    from aar_ray.w2s import prebuild

    cfgs = [tiny_cfg("task=facts"), tiny_cfg("task=math"), tiny_cfg("task=math", "seeds=[5]")]  # seeds: same bases
    jobs = prebuild.missing(cfgs)
    assert sorted((j.cfg.task, j.role) for j in jobs) == [("facts", "strong"), ("facts", "weak"),
                                                          ("math", "strong"), ("math", "weak")]
    assert "world 0" in jobs[0].label
    assert all(j.est_s < prebuild.MIN_CHILD_S for j in jobs) and prebuild.prebuild(cfgs) == []  # small: in process
    lines = []
    built = prebuild.prebuild(cfgs, workers=2, log=lambda *a, **k: lines.append(a[0]), min_s=0)
    assert sorted(built) == sorted(j.key for j in jobs) and prebuild.missing(cfgs) == []
    assert lines[0].startswith("[aar] pretraining 4 base(s) in 2 process(es)") and len(lines) == 5
    assert prebuild.prebuild(cfgs, min_s=0) == []  # nothing left to do

    threads = torch.get_num_threads()
    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "in-process"))
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0)) // 2))  # the children's
    try:
        for cfg in cfgs[:2]:
            inproc = engine.prepare(cfg, progress=False)
            monkeypatch.setenv("AAR_CACHE_DIR", str(cache_dir))
            side = engine.prepare(cfg, progress=False)
            monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "in-process"))
            for a, b in ((inproc.weak, side.weak), (inproc.strong, side.strong)):
                assert a.key == b.key and str(cache_dir) in b.path
                sa, sb = a.model.state_dict(), b.model.state_dict()
                assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    finally:
        torch.set_num_threads(threads)


def test_a_base_that_fails_to_pretrain_side_by_side_is_named(tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "not-a-dir"))  # the children cannot write the cache
    from aar_ray.w2s import prebuild

    with pytest.raises(RuntimeError, match=r"pretraining failed for (weak|strong) base of task 'facts' on world 0: exit 1"):
        prebuild.prebuild([tiny_cfg("task=facts")], log=lambda *a, **k: None, min_s=0)


def test_method_file_by_path_and_bad_predictions(cache_dir, tmp_path):
    good = tmp_path / "flip.py"
    good.write_text("import torch\n\ndef run(ctx):\n    return torch.full((len(ctx.eval_ids),), 0.25)\n")
    exp = engine.prepare(tiny_cfg("seeds=[0]"), progress=False)
    r = engine.run_method(exp, str(good))
    assert r.name == "flip" and 0.0 <= r.seeds[0].transfer_acc["test"] <= 1.0
    for body, msg in [("return torch.full((3,), 0.5)", "shape"),
                      ("return torch.full((len(ctx.eval_ids),), float('nan'))", "non-finite"),
                      ("return [0.5] * len(ctx.eval_ids)", "torch.Tensor"),
                      ("return torch.full((len(ctx.eval_ids),), 2.0)", r"\[0, 1\]")]:
        bad = tmp_path / "bad.py"
        bad.write_text(f"import torch\n\ndef run(ctx):\n    {body}\n")
        with pytest.raises(ValueError, match=msg):
            engine.run_method(exp, str(bad))


def test_method_context_holds_no_labels(cache_dir):
    exp = engine.prepare(tiny_cfg("seeds=[0]"), progress=False)
    base = engine.baseline(exp, 0)
    inputs = engine.trial_inputs(exp, 0, base)
    fields = vars(inputs.ctx)
    assert {f for f in fields if "label" in f} == {"weak_labels"}  # the teacher's, nothing else
    # the weak labels are the teacher's soft outputs, not the ground truth
    gt = exp.task.labels[base.idx_b].float()
    assert not torch.equal(inputs.ctx.weak_labels, gt)
    # eval rows mix val and test in a seeded order
    splits = exp.task.split[inputs.eval_idx]
    assert set(splits) == {"val", "test"}
    assert not (splits[: (splits == "val").sum()] == "val").all()


def _tiny_qwen_cfg(tmp_path, *overrides: str) -> W2SConfig:
    """The w2s_qwen preset pointed at tiny local Qwen1.5/Qwen3-shaped models and a small JSONL file."""
    return tiny_qwen_cfg(tmp_path, "seeds=[0]", "probe.epochs=2", *overrides, preset="w2s_qwen")


def test_tiny_qwen_gpu_preset_path(cache_dir, tmp_path):
    """The w2s_qwen preset's code path (HF models by path, jsonl data, its LoRA recipe) on tiny Qwens."""
    cfg = _tiny_qwen_cfg(tmp_path, "weak.dtype=float32", "strong.dtype=float32", "device=cpu",
                         "methods=[naive,confidence]")
    res = engine.train(cfg, progress=False)
    out = res.to_json()
    assert out["task"] == "jsonl:data"
    assert set(out["methods"]) == {"naive", "confidence"}
    assert len(res.methods["naive"].seeds[0].losses) > 0
    assert all(0.0 <= res.methods[m].seeds[0].transfer_acc["test"] <= 1.0 for m in out["methods"])


@pytest.mark.gpu
def test_tiny_qwen_on_cuda_bf16(cache_dir, tmp_path):
    cfg = _tiny_qwen_cfg(tmp_path, "device=cuda", "methods=[naive]")
    exp = engine.prepare(cfg, progress=False)
    assert next(exp.strong.model.parameters()).dtype == torch.bfloat16
    assert next(exp.strong.model.parameters()).is_cuda
    assert engine.run_method(exp, "naive").seeds[0].transfer_acc["test"] >= 0.0


def test_jsonl_errors_are_clear(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": 1}\nnot json\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:2: invalid JSON"):
        build_task(load_config(W2SConfig, None, ["task=jsonl", f"data_path={p}"]))
    p.write_text('{"text": "a", "label": 3}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:1: .*label"):
        build_task(load_config(W2SConfig, None, ["task=jsonl", f"data_path={p}"]))


def test_cli_w2s_writes_json_and_rejects_bad_overrides(cache_dir, tmp_path):
    from w2s_helpers import TINY

    out = tmp_path / "res.json"
    env = {**__import__("os").environ, "AAR_CACHE_DIR": str(cache_dir), "AAR_TRACKING": "off"}
    proc = subprocess.run([sys.executable, "-m", "aar_ray", "w2s", str(ROOT / "experiments/w2s_quick.yaml"), *TINY,
                           "methods=[naive]", "seeds=[0]", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"task", "seeds", "weak_acc", "ceiling_acc", "methods"}
    assert set(data["methods"]["naive"]) == {"transfer_acc", "pgr"}
    assert set(data["methods"]["naive"]["pgr"]) == {"mean", "std", "per_seed"}
    assert "naive" in proc.stdout and "PGR" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "aar_ray", "w2s", str(ROOT / "experiments/w2s_quick.yaml"),
                          "world.weak_fraction=7"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert "world.weak_fraction" in bad.stderr
