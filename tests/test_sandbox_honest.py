"""Honest methods run unchanged under the sandbox: every built-in gives the same predictions as in
process, and the engine can use the sandbox as its runner."""
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
from aar_ray.sandbox import SandboxFailure, SandboxLimits, engine_runner, run_method_sandboxed  # noqa: E402
from aar_ray.w2s.api import MethodContext  # noqa: E402
from aar_ray.w2s.engine import TrialInputs, run_in_process  # noqa: E402
from aar_ray.w2s.methods import BUILTINS, resolve  # noqa: E402
from aar_ray.w2s.models import Base  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROBE = ProbeConfig(epochs=3, batch_size=16)
MEM = 6144  # MiB per trial


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return support.make_student(tmp_path_factory.mktemp("honest") / "student")


def _ctx(student: Path, inputs: dict) -> MethodContext:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32).eval()
    return MethodContext(student=Base(model, AutoTokenizer.from_pretrained(str(student)), "tiny", str(student)),
                         probe=PROBE, seed=3, fidelity="full", batch_size=32, **inputs)


def test_builtins_match_in_process_predictions(student):
    inputs = support.make_inputs(1)

    def sandboxed(name):
        return name, run_method_sandboxed(resolve(name), student, inputs, probe=PROBE, seed=3, batch_size=32,
                                          timeout_s=300, memory_mb=MEM)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(sandboxed, BUILTINS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sandbox's default; keeps float reductions in the same order
    try:
        for name in BUILTINS:
            r = results[name]
            assert r.status == "ok" and r.failed_seed is None, f"{name}: {r.status}: {r.reason}\n{r.log_tail[-800:]}"
            ctx = _ctx(student, inputs)
            ref, ref_losses = run_in_process(resolve(name), TrialInputs(ctx, np.arange(support.N_EVAL)))
            preds, losses = r.preds[3], r.losses[3]
            assert preds.dtype == torch.float32 and preds.shape == (support.N_EVAL,)
            torch.testing.assert_close(preds, ref, atol=1e-5, rtol=1e-4, msg=name)
            assert len(losses) == len(ref_losses) > 0
            assert losses[0][1] == pytest.approx(ref_losses[0][1], rel=1e-4)
            assert r.timings.get("run_s", 0) > 0
    finally:
        torch.set_num_threads(threads)


def test_engine_runner_returns_predictions_or_raises_sandbox_failure(student, tmp_path):
    inputs = support.make_inputs(2)
    ctx = _ctx(student, inputs)
    run = engine_runner(timeout_s=300, memory_mb=MEM)
    preds, losses = run(resolve("naive"), TrialInputs(ctx, np.arange(support.N_EVAL)))
    assert preds.shape == (support.N_EVAL,) and losses
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef run(ctx):\n    raise ValueError('nope')\n")
    with pytest.raises(SandboxFailure) as e:
        run(bad, TrialInputs(ctx, np.arange(support.N_EVAL)))
    assert e.value.result.status == "failed" and "ValueError: nope (line 4 of the method)" in e.value.result.reason
