"""Multi-seed trials: one sandboxed child runs a method on every seed. Same predictions as one
child per seed and as in process, a failure names its seed, the wall clock covers the whole run,
and run_trial returns a typed TrialOutcome that says which device and dtype the child used."""
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
from aar_ray.sandbox import SandboxLimits, request_for, run_method_sandboxed, run_method_sandboxed_seeds  # noqa: E402
from aar_ray.sandbox.contract import TrialOutcome, TrialStatus  # noqa: E402
from aar_ray.w2s.api import MethodContext  # noqa: E402
from aar_ray.w2s.engine import TrialInputs, run_in_process  # noqa: E402
from aar_ray.w2s.methods import resolve  # noqa: E402
from aar_ray.w2s.models import Base  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROBE = ProbeConfig(epochs=3, batch_size=16)
MEM = 6144  # MiB per trial
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
                                    timeout_s=300, memory_mb=MEM)

    with ThreadPoolExecutor(max_workers=2) as pool:
        multi = pool.submit(run_method_sandboxed_seeds, naive, student, inputs, probe=PROBE, batch_size=32,
                            timeout_s=300, memory_mb=MEM)
        singles = dict(zip(SEEDS, pool.map(single, SEEDS)))
        multi = multi.result()
    assert multi.status == "ok", f"{multi.reason}\n{multi.log_tail[-800:]}"
    assert set(multi.preds) == set(multi.losses) == set(SEEDS)
    assert multi.timings["student_reloads"] == 0  # the untouched student is loaded once
    for s in SEEDS:
        assert singles[s].status == "ok", singles[s].reason
        assert multi.preds[s].dtype == torch.float32 and multi.preds[s].shape == (support.N_EVAL,)
        torch.testing.assert_close(multi.preds[s], singles[s].preds[s], atol=1e-5, rtol=0)
        torch.testing.assert_close(multi.preds[s], _in_process(student, naive, inputs[s], s), atol=1e-5, rtol=0)
        assert [st for st, _ in multi.losses[s]] == [st for st, _ in singles[s].losses[s]]
        assert [v for _, v in multi.losses[s]] == pytest.approx([v for _, v in singles[s].losses[s]], rel=1e-5)
    assert not torch.equal(multi.preds[0], multi.preds[1])  # each seed got its own inputs


def test_a_student_changed_by_one_seed_is_reloaded_for_the_next(student, inputs, tmp_path):
    method = _method(tmp_path, TAMPER)
    two = {s: inputs[s] for s in SEEDS[:2]}
    r = run_method_sandboxed_seeds(method, student, two, probe=PROBE, batch_size=32, timeout_s=300, memory_mb=MEM)
    assert r.status == "ok", f"{r.reason}\n{r.log_tail[-800:]}"
    assert r.timings["student_reloads"] == len(two)  # checked after each seed, the last one included
    for s in two:
        torch.testing.assert_close(r.preds[s], _in_process(student, method, inputs[s], s), atol=1e-5, rtol=0)


def test_a_failure_on_one_seed_names_it(student, inputs, tmp_path):
    raising = _method(tmp_path, BY_SEED, FAIL=1, ACTION="raise ValueError('only on this seed')")
    r = run_method_sandboxed_seeds(raising, student, inputs, probe=PROBE, timeout_s=120, memory_mb=MEM)
    assert r.status is TrialStatus.FAILED and r.preds == {} and r.losses == {} and r.failed_seed == 1
    assert r.reason.startswith("seed 1: run(ctx) raised ValueError: only on this seed (line "), r.reason
    shape = _method(tmp_path, BY_SEED, FAIL=2, ACTION="return torch.rand(len(ctx.eval_ids) + 1)")
    r = run_method_sandboxed_seeds(shape, student, inputs, probe=PROBE, timeout_s=120, memory_mb=MEM)
    assert r.status == "invalid_output" and r.reason.startswith("seed 2: ") and "shape" in r.reason, r.reason


def test_the_wall_clock_covers_the_whole_run(student, inputs, tmp_path):
    # every seed alone fits in the limit; together with the start they do not
    sleepy = _method(tmp_path, BY_SEED, FAIL="ctx.seed", ACTION="time.sleep(2.5)")
    r = run_method_sandboxed_seeds(sleepy, student, inputs, probe=PROBE, timeout_s=6, memory_mb=MEM)
    assert r.status == "timeout" and "6s (for all 3 seeds together)" in r.reason, r.reason
    assert r.reason.startswith(("seed 0: ", "seed 1: ", "seed 2: ")) and r.wall_s < 25


def test_run_trial_returns_a_typed_outcome(student, inputs):
    from aar_ray.sandbox.trial import run_trial

    request = request_for(student, inputs, probe=PROBE, batch_size=32, seed_timeout_s=60, memory_mb=MEM,
                          student_key="tiny")
    out = run_trial(BY_SEED.replace("__FAIL__", "-1").replace("__ACTION__", "pass"), request, SandboxLimits())
    assert isinstance(out, TrialOutcome) and out.status is TrialStatus.OK, out.reason
    assert out.reason == "predictions validated" and "subreaper" in out.layers and out.failed_seed is None
    assert (out.device, out.dtype) == ("cpu", "float32")  # the child reports what it ran on
    for s in SEEDS:
        want = torch.rand(support.N_EVAL, generator=torch.Generator().manual_seed(s))
        assert out.preds[s].tolist() == pytest.approx(want.tolist(), abs=1e-6)
        assert out.losses[s] == ()
    bad = run_trial(BY_SEED.replace("__FAIL__", "1").replace("__ACTION__", "raise KeyError('x')"), request,
                    SandboxLimits())
    assert bad.status is TrialStatus.FAILED and bad.preds == {} and bad.failed_seed == 1
    assert bad.reason.startswith("seed 1: run(ctx) raised KeyError"), bad.reason


def test_the_child_loads_the_student_on_the_requested_device_and_dtype(student, inputs):
    """The request's dtype reaches the child: a bf16 request on CPU runs the student in bf16 and says so."""
    from aar_ray.sandbox.trial import run_trial

    src = resolve("naive").read_text()
    for dtype in ("bfloat16", "float32"):
        request = request_for(student, {0: inputs[0]}, probe=PROBE, batch_size=32, seed_timeout_s=120, memory_mb=MEM,
                              dtype=dtype)
        out = run_trial(src, request, SandboxLimits())
        assert out.status is TrialStatus.OK, f"{out.reason}\n{out.log_tail[-800:]}"
        assert (out.device, out.dtype) == ("cpu", dtype)


def test_a_gpu_request_on_a_worker_without_a_gpu_fails_before_the_child(student, inputs):
    from aar_ray.sandbox.trial import run_trial

    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has a GPU")
    request = request_for(student, {0: inputs[0]}, probe=PROBE, device="cuda")
    out = run_trial(resolve("naive").read_text(), request, SandboxLimits())
    assert out.status is TrialStatus.SANDBOX_ERROR and "no GPU device node" in out.reason and out.device == ""


def test_the_preset_recipe_reaches_the_child_and_lora_runs_sandboxed(student, inputs):
    """recipe=lora travels in the request: the sandboxed child fine-tunes (peft is in the method
    runtime) exactly as the same request does in process, and not as the probe recipe would."""
    from aar_ray.config import FinetuneConfig
    from aar_ray.sandbox.trial import run_trial, run_trusted

    src = resolve("naive").read_text()
    lora = request_for(student, {0: inputs[0]}, probe=PROBE, batch_size=32, seed_timeout_s=240, memory_mb=MEM,
                       recipe="lora", finetune=FinetuneConfig(epochs=1, batch_size=16))
    out = run_trial(src, lora, SandboxLimits())
    assert out.status is TrialStatus.OK, f"{out.reason}\n{out.log_tail[-800:]}"
    ref = run_trusted(src, lora)
    torch.testing.assert_close(out.preds[0], ref.preds[0], atol=1e-4, rtol=0)
    probe = run_trusted(src, lora.replace(recipe="probe"))
    assert not torch.allclose(out.preds[0], probe.preds[0], atol=1e-3)
    assert len(out.losses[0]) == len(ref.losses[0]) != len(probe.losses[0])


@pytest.mark.gpu
def test_a_gpu_trial_runs_its_child_on_cuda(student, inputs):
    """On a CUDA machine (no Ray needed): the sandboxed child loads the student on the GPU, in bf16."""
    from aar_ray.sandbox.trial import run_trial

    request = request_for(student, {0: inputs[0]}, probe=PROBE, batch_size=32, seed_timeout_s=300, memory_mb=32768,
                          device="cuda", dtype="bfloat16")
    out = run_trial(resolve("naive").read_text(), request, SandboxLimits())
    assert out.status is TrialStatus.OK, f"{out.reason}\n{out.log_tail[-800:]}"
    assert out.device.startswith("cuda") and out.dtype == "bfloat16"
