"""A trial job: one method over the harness's seeds, all seeds in one sandboxed child.

It runs on a pool worker (a Ray task or GPU worker actor). It receives the scorer's payloads
(inputs and weak labels, no labels) and the method source, and returns per-seed predictions or a
readable failure. It computes no metric: only the scorer turns predictions into numbers.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrialSettings:
    """How trial jobs run: resources and limits enforced by the harness."""

    num_gpus: float = 0.0
    """GPUs per trial job (fractional allowed); 0 on CPU presets."""
    num_cpus: float = 1.0
    """CPUs reserved per trial job."""
    timeout_s: float = 1800.0
    """Wall-clock limit of a whole trial job (the pool kills it after)."""
    seed_timeout_s: float = 300.0
    """Wall-clock budget per seed: one sandboxed child runs all seeds under seed_timeout_s x seeds."""
    max_retries: int = 1
    """Re-runs when the worker or node dies."""
    memory_mb: int = 8192
    """Sandbox address-space limit per process."""
    threads: int = 1
    """torch threads inside the sandbox."""


def run_trial(source: str, payloads: list[dict], settings: TrialSettings) -> dict:
    """{'status': 'ok', 'reason': '', 'preds': {seed: [...]}, 'losses': {seed: [...]}, 'layers': [...]}
    or {'status': <failure>, 'reason': 'seed N: ...', 'layers': [...]}.

    One sandboxed child runs the method on every payload's seed (torch, transformers and the
    student load once), under a wall clock of seed_timeout_s per seed for the whole run. The
    payloads share the student and the method settings; each brings its own seed and inputs.
    """
    from aar_ray.sandbox import SandboxLimits, run_method_sandboxed_seeds

    if not payloads:
        raise ValueError("run_trial needs at least one payload")
    first = payloads[0]
    shared = ("student_dir", "student_key", "fidelity", "batch_size", "probe", "device", "dtype")
    for p in payloads[1:]:
        differ = [k for k in shared if p.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"payloads of one trial must share {differ} (seed {p['seed']} differs from seed "
                             f"{first['seed']})")
    seeds = [p["seed"] for p in payloads]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"payloads repeat a seed: {seeds}")
    student = {k: first[k] for k in ("device", "dtype", "student_key") if k in first}
    limits = SandboxLimits(memory_mb=settings.memory_mb, threads=settings.threads)
    with tempfile.TemporaryDirectory(prefix="aar-method-") as d:
        path = Path(d) / "method.py"
        path.write_text(source)
        os.chmod(path, 0o644)
        res = run_method_sandboxed_seeds(path, first["student_dir"], {p["seed"]: p["inputs"] for p in payloads},
                                         probe=first["probe"], fidelity=first["fidelity"],
                                         batch_size=first["batch_size"],
                                         timeout_s=settings.seed_timeout_s * len(payloads), limits=limits, **student)
    if not res.ok:
        return {"status": res.status, "reason": res.reason, "layers": res.layers}
    return {"status": "ok", "reason": "", "preds": {s: res.preds[s].tolist() for s in seeds},
            "losses": {s: [list(x) for x in res.losses[s]] for s in seeds}, "layers": res.layers}
