"""Multi-seed trials: one sandboxed child runs a method on every seed. Same predictions as one
child per seed and as in process, a failure names its seed, the wall clock covers the whole run,
and aar_ray.trial.run_trial keeps its result format."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adversarial import support  # noqa: E402

from aar_ray.config import ProbeConfig  # noqa: E402
from aar_ray.sandbox import SandboxLimits, run_method_sandboxed, run_method_sandboxed_seeds  # noqa: E402
from aar_ray.w2s.api import MethodContext  # noqa: E402
from aar_ray.w2s.engine import TrialInputs, run_in_process  # noqa: E402
from aar_ray.w2s.methods import resolve  # noqa: E402
from aar_ray.w2s.models import Base  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROBE = ProbeConfig(epochs=3, batch_size=16)
LIMITS = SandboxLimits(memory_mb=6144)
SEEDS = (0, 1, 2)
BY_SEED = '''
import time
import torch

def run(ctx):
    if ctx.seed == __FAIL__:
        __ACTION__
    return torch.rand(len(ctx.eval_ids))  # torch's global RNG: the harness seeds it per seed
'''
TAMPER = '''
import torch

def run(ctx):
    probe = ctx.fit_probe(ctx.features("train", kind="hidden", layer=-1), ctx.weak_labels, standardize=True)
    preds = probe(ctx.features("eval", kind="hidden", layer=-1))
    for p in ctx.student.model.parameters():  # through .data: no version-counter bump
        p.data.mul_(1.5)
    return preds
'''


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return support.make_student(tmp_path_factory.mktemp("multiseed") / "student")


@pytest.fixture(scope="module")
def inputs():
    return {s: support.make_inputs(10 + s) for s in SEEDS}


def _method(tmp_path: Path, src: str, **fill) -> Path:
    for k, v in fill.items():
        src = src.replace(f"__{k}__", str(v))
    path = tmp_path / "method.py"
    path.write_text(src)
    return path


def _in_process(student: Path, method: Path, inputs: dict, seed: int) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32).eval()
    ctx = MethodContext(student=Base(model, AutoTokenizer.from_pretrained(str(student)), "tiny", str(student)),
                        probe=PROBE, seed=seed, fidelity="full", batch_size=32, **inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sandbox's default; keeps float reductions in the same order
    try:
        return run_in_process(method, TrialInputs(ctx, np.arange(support.N_EVAL)))[0]
    finally:
        torch.set_num_threads(threads)


def test_one_child_matches_one_child_per_seed_and_in_process(student, inputs):
    naive = resolve("naive")

    def single(seed):
        return run_method_sandboxed(naive, student, inputs[seed], probe=PROBE, seed=seed, batch_size=32,
                                    timeout_s=300, limits=LIMITS)

    with ThreadPoolExecutor(max_workers=2) as pool:
        multi = pool.submit(run_method_sandboxed_seeds, naive, student, inputs, probe=PROBE, batch_size=32,
                            timeout_s=300, limits=LIMITS)
        singles = dict(zip(SEEDS, pool.map(single, SEEDS)))
        multi = multi.result()
    assert multi.status == "ok", f"{multi.reason}\n{multi.log_tail[-800:]}"
    assert set(multi.preds) == set(multi.losses) == set(SEEDS)
    assert multi.timings["student_reloads"] == 0  # the untouched student is loaded once
    for s in SEEDS:
        assert singles[s].status == "ok", singles[s].reason
        assert multi.preds[s].dtype == torch.float32 and multi.preds[s].shape == (support.N_EVAL,)
        torch.testing.assert_close(multi.preds[s], singles[s].preds, atol=1e-5, rtol=0)
        torch.testing.assert_close(multi.preds[s], _in_process(student, naive, inputs[s], s), atol=1e-5, rtol=0)
        assert [st for st, _ in multi.losses[s]] == [st for st, _ in singles[s].losses]
        assert [v for _, v in multi.losses[s]] == pytest.approx([v for _, v in singles[s].losses], rel=1e-5)
    assert not torch.equal(multi.preds[0], multi.preds[1])  # each seed got its own inputs


def test_a_student_changed_by_one_seed_is_reloaded_for_the_next(student, inputs, tmp_path):
    method = _method(tmp_path, TAMPER)
    two = {s: inputs[s] for s in SEEDS[:2]}
    r = run_method_sandboxed_seeds(method, student, two, probe=PROBE, batch_size=32, timeout_s=300, limits=LIMITS)
    assert r.status == "ok", f"{r.reason}\n{r.log_tail[-800:]}"
    assert r.timings["student_reloads"] == len(two)  # checked after each seed, the last one included
    for s in two:
        torch.testing.assert_close(r.preds[s], _in_process(student, method, inputs[s], s), atol=1e-5, rtol=0)


def test_a_failure_on_one_seed_names_it(student, inputs, tmp_path):
    raising = _method(tmp_path, BY_SEED, FAIL=1, ACTION="raise ValueError('only on this seed')")
    r = run_method_sandboxed_seeds(raising, student, inputs, probe=PROBE, timeout_s=120, limits=LIMITS)
    assert r.status == "failed" and r.preds is None and r.losses == {}
    assert r.reason.startswith("seed 1: run(ctx) raised ValueError: only on this seed (line "), r.reason
    shape = _method(tmp_path, BY_SEED, FAIL=2, ACTION="return torch.rand(len(ctx.eval_ids) + 1)")
    r = run_method_sandboxed_seeds(shape, student, inputs, probe=PROBE, timeout_s=120, limits=LIMITS)
    assert r.status == "invalid_output" and r.reason.startswith("seed 2: ") and "shape" in r.reason, r.reason


def test_the_wall_clock_covers_the_whole_run(student, inputs, tmp_path):
    # every seed alone fits in the limit; together with the start they do not
    sleepy = _method(tmp_path, BY_SEED, FAIL="ctx.seed", ACTION="time.sleep(2.5)")
    r = run_method_sandboxed_seeds(sleepy, student, inputs, probe=PROBE, timeout_s=6, limits=LIMITS)
    assert r.status == "timeout" and "6s (for all 3 seeds together)" in r.reason, r.reason
    assert r.reason.startswith(("seed 0: ", "seed 1: ", "seed 2: ")) and r.wall_s < 25


def test_run_trial_returns_per_seed_lists(student, inputs):
    from aar_ray.trial import TrialSettings, run_trial

    payloads = [{"seed": s, "fidelity": "full", "student_dir": str(student), "student_key": "tiny",
                 "probe": PROBE.__dict__.copy(), "batch_size": 32, "inputs": inputs[s]} for s in SEEDS]
    settings = TrialSettings(seed_timeout_s=60, memory_mb=6144)
    out = run_trial(BY_SEED.replace("__FAIL__", "-1").replace("__ACTION__", "pass"), payloads, settings)
    assert set(out) == {"status", "reason", "preds", "losses", "layers"} and out["status"] == "ok", out
    assert out["reason"] == "" and "subreaper" in out["layers"]
    for s in SEEDS:
        want = torch.rand(support.N_EVAL, generator=torch.Generator().manual_seed(s))
        assert isinstance(out["preds"][s], list) and out["preds"][s] == pytest.approx(want.tolist(), abs=1e-6)
        assert out["losses"][s] == []
    bad = run_trial(BY_SEED.replace("__FAIL__", "1").replace("__ACTION__", "raise KeyError('x')"), payloads, settings)
    assert set(bad) == {"status", "reason", "layers"} and bad["status"] == "failed"
    assert bad["reason"].startswith("seed 1: run(ctx) raised KeyError"), bad["reason"]
