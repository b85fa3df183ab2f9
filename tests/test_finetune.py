"""The fine-tuning recipes (lora, full): real tiny runs, no mocks.

One tiny world and its two pretrained bases are shared by the whole module (seconds to build).
GPU tests at the end import only torch, transformers, peft, omegaconf and the package.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from aar_ray.config import ConfigError, FinetuneConfig, ModelConfig, W2SConfig, load_config
from aar_ray.sandbox.child import _fingerprint
from aar_ray.w2s import cache, engine
from aar_ray.w2s.api import baseline_probe
from aar_ray.w2s.finetune import finetune, label_token
from aar_ray.w2s.methods import BUILTINS, load_module, resolve
from aar_ray.w2s.metrics import accuracy, pgr
from aar_ray.w2s.models import features, load_base
from aar_ray.w2s.tasks import split_ab

from w2s_helpers import make_tiny_hf_model, tiny_cfg, tiny_qwen_cfg, tiny_qwens, write_jsonl

WORLD = ("seeds=[0]", "world.n_entities=200")
FT = FinetuneConfig(epochs=8, lr=3e-3, full_lr=3e-3, head_lr=0.1, batch_size=16, lora_dropout=0.1)


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AAR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield engine.prepare(tiny_cfg(*WORLD), progress=False)


def _with(exp, **changes) -> engine.Experiment:
    """The shared experiment under other config values (recipe, finetune): same task and bases."""
    return replace(exp, cfg=replace(exp.cfg, **changes))


def _half_b(exp, seed: int = 0):
    """Half B's inputs and ground truth: a learnable target for the strong base."""
    _, b = split_ab(exp.task, seed)
    return exp.task.input_ids[b], exp.task.attention_mask[b], exp.task.labels[b].float()


def _snapshot(model) -> dict:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


# ---------- the recipes ----------

@pytest.mark.parametrize("recipe", ["lora", "full"])
def test_recipe_trains_what_it_should_and_leaves_the_base_bit_identical(exp, recipe):
    base = exp.strong
    ids, mask, y = _half_b(exp)
    before, fp = _snapshot(base.model), _fingerprint(base.model)
    losses: list[float] = []
    student = finetune(base, ids, mask, y, FT, recipe, seed=0, on_step=lambda s, v: losses.append(v))
    after = base.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)
    assert _fingerprint(base.model) == fp  # modules, hooks, modes, requires_grad, config: as found
    assert not any("lora" in n for n, _ in base.model.named_modules())
    head_init = torch.randn(1, student.model.linear.in_features, generator=torch.Generator().manual_seed(0)) * 0.01
    assert not torch.equal(student.model.linear.weight.detach(), head_init)
    if recipe == "lora":
        n_layers = base.model.config.num_hidden_layers
        lora_b = [v for k, v in student.adapter.items() if "lora_B" in k]
        assert len(lora_b) == n_layers * len(FT.target_modules)
        assert all(v.abs().sum() > 0 for v in lora_b)  # peft starts B at zero: every adapter learned
    else:
        trained = dict(student.model.lm.named_parameters())
        assert set(trained) == set(dict(base.model.named_parameters()))
        assert all(not torch.equal(trained[n], before[n]) for n in trained)  # every weight moved
    assert len(losses) == FT.epochs * math.ceil(len(ids) / FT.batch_size)
    k = len(losses) // 4
    assert sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k  # it fits (lora: 0.66 -> 0.48, full: 0.66 -> 0.29)
    assert accuracy(student(ids, mask), y.long()) > 0.7  # 86 examples; lora reaches 0.78, full 0.93


def test_finetune_is_deterministic_for_a_seed_and_keeps_the_global_rng(exp):
    ids, mask, y = _half_b(exp)
    rng = torch.random.get_rng_state()
    runs = []
    for seed in (3, 3, 4):
        losses: list[float] = []
        student = finetune(exp.strong, ids, mask, y, FT, "lora", seed, epochs=3, on_step=lambda s, v: losses.append(v))
        runs.append((student(ids, mask), losses))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])
    assert torch.equal(torch.random.get_rng_state(), rng)  # dropout and adapter init used a forked RNG


def test_each_recipe_reads_its_own_learning_rate(exp):
    ids, mask, y = _half_b(exp)
    still = replace(FT, epochs=1, lr=1e-12, full_lr=1e-12, head_lr=1e-12)
    for recipe, own, other in (("lora", "lr", "full_lr"), ("full", "full_lr", "lr")):
        base = finetune(exp.strong, ids, mask, y, still, recipe, 0)(ids, mask)
        assert torch.equal(base, finetune(exp.strong, ids, mask, y, replace(still, **{other: 1e-2}), recipe, 0)(ids, mask))
        assert not torch.allclose(base, finetune(exp.strong, ids, mask, y, replace(still, **{own: 1e-2}), recipe, 0)(ids, mask))


@pytest.mark.parametrize("recipe", ["lora", "full"])
def test_activation_checkpointing_changes_memory_not_results(exp, recipe):
    ids, mask, y = _half_b(exp)
    fp = _fingerprint(exp.strong.model)
    plain = finetune(exp.strong, ids, mask, y, replace(FT, epochs=2), recipe, 0)(ids, mask)
    ckpt = finetune(exp.strong, ids, mask, y, replace(FT, epochs=2, gradient_checkpointing=True), recipe, 0)(ids, mask)
    torch.testing.assert_close(ckpt, plain, atol=1e-5, rtol=0)  # recomputed activations, same dropout masks
    assert _fingerprint(exp.strong.model) == fp  # the checkpointing switches were taken back off the base


def test_sample_weight_is_respected(exp):
    ids, mask, y = _half_b(exp)
    odd = torch.arange(len(y)) % 2 == 1
    weight = (~odd).float()
    flipped = torch.where(odd, 1 - y, y)

    def per_example(logits, t, progress):
        return F.binary_cross_entropy_with_logits(logits, t, reduction="none")

    def fit(targets, w):
        return finetune(exp.strong, ids, mask, targets, FT, "full", 0, per_example, epochs=2, sample_weight=w)(ids, mask)

    # rows of weight 0 do not count: flipping their targets changes nothing, bit for bit
    assert torch.equal(fit(y, weight), fit(flipped, weight))
    assert not torch.allclose(fit(flipped, torch.ones(len(y))), fit(y, weight))


def test_label_words_head_reads_the_lm_and_checks_its_words(tmp_path):
    words = write_jsonl(tmp_path / "d.jsonl")
    base = load_base(ModelConfig(kind="hf", name_or_path=str(make_tiny_hf_model(tmp_path / "m", "qwen3", words))),
                     torch.device("cpu"))
    enc = base.tokenizer(["item1 is red", "item2 is blue now", "item3 is green"], padding="longest", return_tensors="pt")
    cfg = FinetuneConfig(head="label_words", label_words=["blue", "red"], epochs=1, lr=1e-9)
    student = finetune(base, enc["input_ids"], enc["attention_mask"], torch.tensor([1.0, 0.0, 0.0]), cfg, "lora", 0)
    with torch.no_grad():  # lr ~ 0: the head is the LM's own zero-shot preference, red over blue
        logits = base.model(**enc).logits[torch.arange(3), enc["attention_mask"].sum(1) - 1]  # (3, V)
    red, blue = label_token(base.tokenizer, "red"), label_token(base.tokenizer, "blue")
    assert torch.allclose(student.logits(enc["input_ids"], enc["attention_mask"]), logits[:, red] - logits[:, blue],
                          atol=1e-4)
    with pytest.raises(ValueError, match="label_words.*purple"):
        finetune(base, enc["input_ids"], enc["attention_mask"], torch.ones(3), replace(cfg, label_words=["purple", "red"]),
                 "lora", 0)


@pytest.mark.parametrize("override, key", [
    ("recipe=qlora", "recipe"), ("finetune.head=cls", "finetune.head"), ("finetune.grad_accum=0", "finetune.grad_accum"),
    ("finetune.label_words=[yes,yes]", "finetune.label_words"), ("finetune.warmup=1.0", "finetune.warmup")])
def test_config_is_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(W2SConfig, None, [override])


# ---------- baselines and methods under each recipe ----------

def _todays_builtin(name: str, ctx) -> torch.Tensor:
    """The built-ins as they were before recipes: probes fit with ctx.fit_probe on ctx.features."""
    m, x = load_module(resolve(name)), ctx.features("train")
    if name == "confident_only":
        idx = m.select(ctx.weak_labels)
        return ctx.fit_probe(x[idx], ctx.weak_labels[idx], loss_fn=m.loss)(ctx.features("eval"))
    probe = ctx.fit_probe(x, ctx.weak_labels, loss_fn=m.loss)
    if name == "bootstrap":
        probe = ctx.fit_probe(x, m.mix(ctx.weak_labels, probe(x)), loss_fn=m.loss, seed_offset=1)
    return probe(ctx.features("eval"))


def test_probe_recipe_reproduces_todays_baselines_and_builtins_exactly(exp):
    cfg = exp.cfg
    base = engine.baseline(exp, 0)
    # the probe's cache key is the pre-recipe one, so cached probe baselines stay valid
    key = cache.content_key("baseline", engine.BASELINE_VERSION, exp.task.fingerprint, exp.weak.key, exp.strong.key,
                            asdict(cfg.probe), 0)
    assert torch.equal(cache.load("baselines", key)["weak_labels"], base.weak_labels)
    probe, _ = baseline_probe(exp.weak, *exp.weak_inputs(base.idx_a), exp.task.labels[base.idx_a], cfg.probe, 0,
                              cfg.batch_size_features)
    ids_b, mask_b = exp.weak_inputs(base.idx_b)
    assert torch.equal(base.weak_labels, probe(features(exp.weak, ids_b, mask_b, cfg.probe.features)))
    for name in BUILTINS:
        new, _ = engine.run_in_process(resolve(name), engine.trial_inputs(exp, 0, base))
        assert torch.equal(new, _todays_builtin(name, engine.trial_inputs(exp, 0, base).ctx)), name


def test_lora_baselines_are_their_own_cache_entries(exp, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "finetune", lambda *a, **k: calls.append(a[5]) or finetune(*a, **k))
    lora = _with(exp, recipe="lora", finetune=replace(FT, epochs=2))
    first = engine.baseline(lora, 0)
    assert calls == ["lora", "lora"]  # weak and ceiling, both fine-tuned
    assert not torch.equal(first.weak_labels, engine.baseline(exp, 0).weak_labels)  # not the probe's entry
    assert engine.baseline(lora, 0).weak_acc == first.weak_acc and len(calls) == 2  # cached
    engine.baseline(_with(lora, finetune=replace(FT, epochs=2, lr=1e-3)), 0)
    assert len(calls) == 4  # a recipe setting is part of the key


def test_fit_dispatches_on_the_recipe(exp):
    inputs = engine.trial_inputs(_with(exp, recipe="full", finetune=replace(FT, epochs=2)), 0, engine.baseline(exp, 0))
    ctx = inputs.ctx
    rows = torch.arange(0, len(ctx.weak_labels), 2)
    student = ctx.fit(rows=rows, sample_weight=torch.ones(len(ctx.weak_labels)))
    assert len(ctx.losses) == 2 * math.ceil(len(rows) / FT.batch_size)
    assert student.predict("train").shape == ctx.weak_labels.shape
    assert torch.equal(student.predict("eval"), student(ctx.eval_ids, ctx.eval_mask))
    with pytest.raises(ValueError, match="which"):
        student.predict("test")
    ctx.recipe = "probe"
    assert len(ctx.fit().predict("eval")) == len(ctx.eval_ids)
    assert len(ctx.losses) == 2 * math.ceil(len(rows) / FT.batch_size) + ctx.epochs * math.ceil(
        len(ctx.weak_labels) / ctx.probe.batch_size)


def test_builtins_run_end_to_end_under_lora(exp):
    lora = _with(exp, recipe="lora", finetune=replace(FT, epochs=3), methods=["naive", "bootstrap"])
    for name in lora.cfg.methods:
        res = engine.run_method(lora, name)
        s = res.seeds[0]
        assert s.pgr["test"] == pytest.approx(pgr(s.weak_acc["test"], s.ceiling_acc["test"], s.transfer_acc["test"]))
        assert math.isfinite(s.pgr["test"]) and res.predictions[0].std() > 0
        steps = 3 * math.ceil(len(engine.baseline(lora, 0).idx_b) / FT.batch_size)
        assert len(s.losses) == steps * (2 if name == "bootstrap" else 1)


def test_tiny_qwen_preset_runs_lora_end_to_end(tmp_path, monkeypatch):
    """experiments/w2s_qwen_tiny.yaml: the GPU preset's recipe and code path (HF Qwens by path, JSONL)."""
    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_qwen_cfg(tmp_path, "methods=[naive]")
    assert cfg.recipe == "lora" and cfg.finetune.head == "last_token" and cfg.strong.kind == "hf"
    res = engine.train(cfg, progress=False)
    for name in cfg.methods:
        s = res.methods[name].seeds[0]
        assert 0.0 <= s.transfer_acc["test"] <= 1.0 and s.losses
        assert len(s.losses) == cfg.finetune.epochs * math.ceil(
            math.ceil(len(res.baselines[0].idx_b) / cfg.finetune.batch_size) / cfg.finetune.grad_accum)


# ---------- GPU ----------

@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["lora", "full"])
def test_tiny_qwen_finetunes_on_cuda_in_bf16(tmp_path, recipe):
    data, _, strong = tiny_qwens(tmp_path)
    base = load_base(ModelConfig(kind="hf", name_or_path=str(strong), dtype="bfloat16"), torch.device("cuda"))
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    texts = [r["text"] for r in rows]
    enc = base.tokenizer(texts, padding="longest", return_tensors="pt")
    y = torch.tensor([float(r["label"]) for r in rows])
    seen = []  # a projection's output: its matmul's precision and device (a 'full' copy inherits the hook)
    hook = base.model.get_decoder().layers[0].self_attn.q_proj.register_forward_hook(
        lambda m, i, out: seen.append((out.dtype, out.device.type)))
    before = _snapshot(base.model)
    cfg = FinetuneConfig(head="last_token", epochs=2, batch_size=8, grad_accum=2, gradient_checkpointing=True)
    student = finetune(base, enc["input_ids"], enc["attention_mask"], y, cfg, recipe, 0)
    hook.remove()
    assert seen and set(seen) == {(torch.bfloat16, "cuda")}  # autocast in the preset's dtype, on the GPU
    assert student.model.amp == torch.bfloat16
    trained = [p for p in student.model.lm.parameters() if p.requires_grad] if recipe == "full" else list(
        student.adapter.values())
    assert all(p.is_cuda for p in trained)
    assert all(p.dtype == torch.float32 for p in trained)  # fp32 master weights and adapters
    assert all(torch.equal(before[n], t) for n, t in base.model.state_dict().items())
    assert next(base.model.parameters()).dtype == torch.bfloat16
    probs = student(enc["input_ids"], enc["attention_mask"])
    assert probs.shape == (len(texts),) and torch.isfinite(probs).all()
