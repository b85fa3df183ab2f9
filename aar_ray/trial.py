"""A trial job: one method over the harness's seeds, each seed in the sandbox.

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
    timeout_s: float = 300.0
    """Wall-clock limit of a whole trial job (the pool kills it after)."""
    seed_timeout_s: float = 120.0
    """Wall-clock limit of one seed's sandboxed run."""
    max_retries: int = 1
    """Re-runs when the worker or node dies."""
    memory_mb: int = 8192
    """Sandbox address-space limit per process."""
    threads: int = 1
    """torch threads inside the sandbox."""


def run_trial(source: str, payloads: list[dict], settings: TrialSettings) -> dict:
    """{'status': 'ok', 'preds': {seed: [...]}, 'losses': {seed: [...]}, 'layers': [...]} or a failure."""
    from aar_ray.sandbox import SandboxLimits, run_method_sandboxed

    limits = SandboxLimits(memory_mb=settings.memory_mb, threads=settings.threads)
    preds, losses, layers = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="aar-method-") as d:
        path = Path(d) / "method.py"
        path.write_text(source)
        os.chmod(path, 0o644)
        for p in payloads:
            res = run_method_sandboxed(path, p["student_dir"], p["inputs"], probe=p["probe"], seed=p["seed"],
                                       fidelity=p["fidelity"], batch_size=p["batch_size"],
                                       timeout_s=settings.seed_timeout_s, limits=limits,
                                       student_key=p.get("student_key", ""))
            layers = res.layers
            if not res.ok:
                return {"status": res.status, "reason": f"seed {p['seed']}: {res.reason}", "layers": layers}
            preds[p["seed"]] = res.preds.tolist()
            losses[p["seed"]] = [list(x) for x in res.losses]
    return {"status": "ok", "reason": "", "preds": preds, "losses": losses, "layers": layers}
