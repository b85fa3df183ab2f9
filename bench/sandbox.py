"""Sandbox start-up overhead against an unsandboxed trial.

Times the fixed start-up cost of the layers (an empty interpreter, plain and through the
launcher and bwrap), then the same trial (a tiny random Llama student, the built-in `naive` method, and a constant
method that isolates start-up) four ways, median of REPEATS runs each:
  in_process     run(ctx) in this process, model already loaded (the engine's trusted path)
  subprocess     the sandbox child's code in a plain child process, every layer off (same imports,
                 same lazily loaded student): the unsandboxed trial
  sandbox        the full sandbox (uid, rlimits, cgroups, bwrap, Landlock, seccomp)
  sandbox_no_bwrap  the fallback used where user namespaces are forbidden (Landlock, seccomp)
Writes bench/results/sandbox.json and prints a one-screen summary.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adversarial import support  # noqa: E402

from aar_ray.config import ProbeConfig  # noqa: E402
from aar_ray.sandbox import SandboxLimits, host, request_for, run_method_sandboxed  # noqa: E402
from aar_ray.w2s.api import MethodContext  # noqa: E402
from aar_ray.w2s.engine import TrialInputs, run_in_process  # noqa: E402
from aar_ray.w2s.methods import resolve  # noqa: E402
from aar_ray.w2s.models import Base  # noqa: E402

REPEATS = int(os.environ.get("AAR_BENCH_REPEATS", "3"))
PROBE = ProbeConfig(epochs=3, batch_size=16)
CONST = "import torch\n\ndef run(ctx):\n    return torch.full((len(ctx.eval_ids),), 0.5)\n"


def plain_child(work: Path, student: Path, method: Path, inputs: dict) -> None:
    """The sandbox child's own code path with every layer off: same imports, same lazy student."""
    d = work / "plain"
    d.mkdir(exist_ok=True)
    (d / "method.py").write_text(method.read_text())
    request_for(student, {0: inputs}, probe=PROBE).write(d)
    fds = [os.open(d / n, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) for n in ("out", "err", "attest", "progress")]
    spec = {"request": str(d), "method": str(d / "method.py"), "student": str(student), "scratch": str(d),
            "landlock": None, "seccomp": False, "out_fd": fds[0], "err_fd": fds[1], "attest_fd": fds[2],
            "progress_fd": fds[3]}
    (d / "spec.json").write_text(json.dumps(spec))
    try:
        subprocess.run([sys.executable, "-I", "-m", "aar_ray.sandbox.child", str(d / "spec.json")], check=True,
                       pass_fds=fds, capture_output=True, cwd=d, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    finally:
        for fd in fds:
            os.close(fd)


def _interleaved(fs: dict) -> dict[str, tuple[float, list[float]]]:
    """Median seconds per variant; variants alternate within each repeat so load drift hits all alike."""
    runs: dict[str, list[float]] = {k: [] for k in fs}
    for _ in range(REPEATS):
        for k, f in fs.items():
            t0 = time.monotonic()
            f()
            runs[k].append(time.monotonic() - t0)
    return {k: (statistics.median(v), v) for k, v in runs.items()}


def bare_startup(work: Path, student: Path) -> dict[str, tuple[float, list[float]]]:
    """`python -I -c pass` plain, and through launcher + bwrap (no torch): the fixed cost of the layers."""
    from aar_ray.sandbox.runner import _launch, _plan

    def sandboxed(use_bwrap: bool):
        def f():
            trial = Path(tempfile.mkdtemp(prefix="t", dir=work))
            os.chmod(trial, 0o711)
            (trial / "in").mkdir(mode=0o755)
            (trial / "private").mkdir(mode=0o700)
            (trial / "in" / "spec.json").write_text("{}")
            os.chmod(trial / "in" / "spec.json", 0o644)
            request = request_for(student, {0: support.make_inputs()}, probe=PROBE, seed_timeout_s=60)
            launcher, *_ = _plan(host(), SandboxLimits(use_bwrap=use_bwrap), trial, request)
            i = launcher["argv"].index("-m")
            launcher["argv"] = launcher["argv"][:i] + ["-c", "pass"]
            rep = _launch(launcher, 60)
            assert rep.get("rc") == 0, rep
        return f

    py = [sys.executable, "-I", "-c", "pass"]
    return _interleaved({"python": lambda: subprocess.run(py, check=True), "launcher+bwrap": sandboxed(True),
                         "launcher, no bwrap": sandboxed(False)})


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="aar-bench-"))
    os.chmod(work, 0o755)
    student = support.make_student(work / "student")
    inputs = support.make_inputs()
    const = work / "const.py"
    const.write_text(CONST)
    naive = resolve("naive")
    h = host()
    results: dict = {}
    for label, method in (("const", const), ("naive", naive)):
        row = {}
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(student)).eval()
        ctx_args = dict(student=Base(model, AutoTokenizer.from_pretrained(str(student)), "", str(student)),
                        probe=PROBE, seed=0, **inputs)
        in_process = lambda: run_in_process(method, TrialInputs(MethodContext(**ctx_args), np.arange(support.N_EVAL)))  # noqa: E731

        def sandboxed(lim):
            def f():
                r = run_method_sandboxed(method, student, inputs, probe=PROBE, seed=0, timeout_s=300, limits=lim)
                assert r.ok, r.reason
                row.setdefault("layers_" + ("bwrap" if lim.use_bwrap else "no_bwrap"), r.layers)
            return f

        row.update(_interleaved({"in_process": in_process,
                                 "subprocess": lambda: plain_child(work, student, method, inputs),
                                 "sandbox": sandboxed(SandboxLimits()),
                                 "sandbox_no_bwrap": sandboxed(SandboxLimits(use_bwrap=False))}))
        results[label] = row
    startup = bare_startup(work, student)
    out = {
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                 "machine": platform.machine(), "kernel": platform.release(), "sandbox": h.describe()},
        "repeats": REPEATS,
        "startup": {k: {"median_s": round(v[0], 3), "runs_s": [round(x, 3) for x in v[1]]} for k, v in startup.items()},
        "trials": {m: {k: ({"median_s": round(v[0], 3), "runs_s": [round(x, 3) for x in v[1]]}
                           if isinstance(v, tuple) else v) for k, v in row.items()} for m, row in results.items()},
    }
    for m, row in results.items():
        out["trials"][m]["overhead_vs_subprocess_s"] = round(row["sandbox"][0] - row["subprocess"][0], 3)
        out["trials"][m]["overhead_no_bwrap_vs_subprocess_s"] = round(row["sandbox_no_bwrap"][0] - row["subprocess"][0], 3)
    dest = ROOT / "bench" / "results" / "sandbox.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")

    print(f"sandbox start-up overhead (median of {REPEATS}; {out['host']['cpus']} CPUs, kernel {platform.release()})")
    print(f"{'method':<8} {'in-process':>11} {'subprocess':>11} {'sandbox':>9} {'no-bwrap':>9} {'overhead':>9}")
    for m, row in results.items():
        print(f"{m:<8} {row['in_process'][0]:>10.2f}s {row['subprocess'][0]:>10.2f}s {row['sandbox'][0]:>8.2f}s "
              f"{row['sandbox_no_bwrap'][0]:>8.2f}s {out['trials'][m]['overhead_vs_subprocess_s']:>+8.2f}s")
    b = {k: v[0] for k, v in startup.items()}
    print(f"bare start-up (python -I -c pass): plain {b['python']:.3f}s, launcher+bwrap {b['launcher+bwrap']:.3f}s "
          f"(+{b['launcher+bwrap'] - b['python']:.3f}s), launcher without bwrap {b['launcher, no bwrap']:.3f}s")
    print("layers:", ", ".join(results["naive"].get("layers_bwrap", [])))
    print(f"wrote {dest.relative_to(ROOT)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
