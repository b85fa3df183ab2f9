"""A trial job: one method over the request's seeds, all seeds in one sandboxed child.

It runs on a pool worker (a Ray task or GPU worker actor). It receives the scorer's `TrialRequest`
(inputs and weak labels, no labels) and the method source, and returns a `TrialOutcome`: per-seed
predictions or a readable failure. It computes no metric: only the scorer turns predictions into
numbers. Nothing here imports Ray or MLflow, so a CUDA machine without them can run a trial.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import tempfile
from pathlib import Path

from aar_ray.sandbox.contract import TrialOutcome, TrialRequest, TrialStatus
from aar_ray.sandbox.runner import SandboxLimits, run_sandboxed

NVIDIA_CONTROL = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


def gpu_device_files(visible: str | None = None) -> tuple[str, ...]:
    """The device nodes of the GPUs this worker was given (Ray sets CUDA_VISIBLE_DEVICES from the
    job's num_gpus) plus the control nodes CUDA needs; none of the other GPUs'.

    Raises RuntimeError when the visible GPUs cannot be mapped to device nodes (UUIDs, or none).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None:
        nodes = sorted(p for p in glob.glob("/dev/nvidia[0-9]*"))
    else:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if not all(v.isdigit() for v in ids):
            raise RuntimeError(f"CUDA_VISIBLE_DEVICES={visible!r} does not name GPUs by index; cannot pick their "
                               "device nodes")
        nodes = [f"/dev/nvidia{v}" for v in ids]
    nodes = [n for n in nodes if os.path.exists(n)]
    if not nodes:
        raise RuntimeError(f"the trial asks for a GPU but this worker has no GPU device node "
                           f"(CUDA_VISIBLE_DEVICES={visible!r})")
    return tuple(nodes) + tuple(n for n in NVIDIA_CONTROL if os.path.exists(n))


def run_trial(source: str, request: TrialRequest, limits: SandboxLimits, check_source: bool = True) -> TrialOutcome:
    """The pool's job: the method in `source` on every seed of `request`, in one sandboxed child.

    A GPU request (student device 'cuda...') gets exactly this worker's GPUs exposed in the sandbox;
    on a worker without one it fails before any child starts, saying so. `check_source=False` skips
    the static pre-check (a courtesy; the layers still apply).
    """
    if request.student.device.startswith("cuda"):
        try:
            limits = dataclasses.replace(limits, devices=gpu_device_files())
        except RuntimeError as e:
            return TrialOutcome.failure(TrialStatus.SANDBOX_ERROR, str(e))
    with tempfile.TemporaryDirectory(prefix="aar-method-") as d:
        path = Path(d) / "method.py"
        path.write_text(source)
        os.chmod(path, 0o644)
        return run_sandboxed(request, path, limits=limits, check_source=check_source)


def run_trusted(source: str, request: TrialRequest) -> TrialOutcome:
    """The same job without the sandbox, in this process: for trusted code only (the built-ins and
    the harness's own compositions, in benchmarks and tests). The student loads once, on the
    request's device and in its dtype; each seed gets a fresh context and torch.manual_seed(seed)."""
    import tempfile as tf

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aar_ray.w2s.api import MethodContext
    from aar_ray.w2s.api import validate_predictions
    from aar_ray.w2s.methods import load_module
    from aar_ray.w2s.models import Base

    with tf.TemporaryDirectory() as d:
        path = Path(d) / "method.py"
        path.write_text(source)
        module = load_module(path)
    st = request.student
    model = AutoModelForCausalLM.from_pretrained(st.path, dtype=getattr(torch, st.dtype)).to(st.device).eval()
    base = Base(model, AutoTokenizer.from_pretrained(st.path), st.key, st.path)
    preds, losses = {}, {}
    for s in request.seeds:
        ctx = MethodContext(base, **s.tensors(), probe=request.probe, seed=s.seed, fidelity=request.fidelity,
                            batch_size=request.batch_size, recipe=request.recipe, finetune_cfg=request.finetune)
        torch.manual_seed(s.seed)
        preds[s.seed] = validate_predictions(module.run(ctx), s.n_eval)
        losses[s.seed] = tuple(ctx.losses)
    return TrialOutcome(TrialStatus.OK, "trusted, in process", (), st.device, st.dtype, preds, losses)
