"""Inside the sandbox: `python -I -m aar_ray.sandbox_child SPEC.json` runs one method file.

Protocol with the harness (aar_ray.sandbox.runner), through fds the launcher opened:
  fd 5  attestation: JSON {"layers": [...]} (plus "error" if confinement or loading failed),
        written after Landlock and seccomp are applied and the student is loaded, before any
        agent code runs, then closed (the agent cannot reach it afterwards);
  fd 3  result: a plain-array record, no pickle: one JSON line {"format": "aar-preds-v1",
        "dtype", "shape", "losses": K, "timings"}, then the predictions' raw little-endian bytes,
        then the losses as float64 (K, 2) rows of [step, loss];
  fd 4  error: JSON {"type", "message"} when run(ctx) raises, returns a non-tensor or leaves
        processes behind;
  exit  0 after a result, 1 after an error, 2 when the sandbox itself could not be set up.
Everything after the method is imported is untrusted: the harness re-validates the result and
treats the error record only as a claim that fails the trial.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

PR_SET_CHILD_SUBREAPER = 36


def _write_json(fd: int, obj: dict) -> None:
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj))


def _confine(spec: dict) -> list[str]:
    """Landlock, then seccomp last, then become a subreaper; before any thread exists."""
    import ctypes

    from aar_ray.sandbox import landlock, seccomp

    layers = []
    if spec.get("landlock"):
        ll = spec["landlock"]
        layers.append(landlock.restrict(ll["read"], ll["write"], devices=ll.get("devices", [])).describe())
    if ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
        layers.append("child-subreaper")  # so a double-forked daemon reparents to us and is found below
    if spec.get("seccomp"):
        unix = bool(spec.get("unix_sockets"))
        seccomp.apply(allow_unix_sockets=unix)
        layers.append(f"seccomp({'unix-sockets-only' if unix else 'no-sockets'},no-exec,no-ptrace,no-mount,no-ns,"
                      "no-bpf,no-io_uring)")
    return layers


def _leftover_children() -> int:
    """Reap finished children, SIGKILL the rest; returns how many were still running."""
    import signal

    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    alive = set()
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/children") as f:
            alive |= {int(p) for p in f.read().split()}
    for p in alive:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(alive)


def _lazy_base(spec: dict):
    """A `Base` whose model and tokenizer load on first use.

    Loading the student means importing transformers (seconds); a method that fails before it
    touches the model fails in the time torch takes to import. The load runs inside the already
    confined process, exactly as it would eagerly.
    """
    import torch

    from aar_ray.w2s.models import Base

    class LazyBase(Base):
        def __init__(self):  # Base's own __init__ would assign the fields these properties replace
            self.key, self.path = spec.get("student_key", ""), spec["student"]
            self._model = self._tok = None

        @property
        def model(self):
            if self._model is None:
                from transformers import AutoModelForCausalLM
                try:
                    self._model = AutoModelForCausalLM.from_pretrained(
                        self.path, dtype=getattr(torch, spec.get("dtype", "float32"))).to(spec["device"]).eval()
                except Exception as e:  # noqa: BLE001
                    raise StudentLoadError(f"could not load the student from {self.path}: {e}") from None
            return self._model

        @property
        def tokenizer(self):
            if self._tok is None:
                from transformers import AutoTokenizer
                tok = AutoTokenizer.from_pretrained(self.path)
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                tok.padding_side = "right"
                self._tok = tok
            return self._tok

    return LazyBase()


class StudentLoadError(RuntimeError):
    pass


def _load_context(spec: dict):
    import torch

    from aar_ray.config import ProbeConfig
    from aar_ray.w2s.api import MethodContext

    torch.set_num_threads(spec["threads"])
    inputs = torch.load(spec["inputs"], weights_only=True)
    return MethodContext(student=_lazy_base(spec), train_ids=inputs["train_ids"], train_mask=inputs["train_mask"],
                         weak_labels=inputs["weak_labels"], eval_ids=inputs["eval_ids"], eval_mask=inputs["eval_mask"],
                         probe=ProbeConfig(**spec["probe"]), seed=spec["seed"], fidelity=spec["fidelity"],
                         batch_size=spec["batch_size"])


def _error(spec: dict, kind: str, message: str) -> None:
    try:
        _write_json(spec["err_fd"], {"type": kind, "message": message[:2000]})
    except OSError:
        pass


def main(argv: list[str]) -> int:
    sys.dont_write_bytecode = True  # -I ignores PYTHONDONTWRITEBYTECODE; the inputs are read-only anyway
    t0 = time.monotonic()
    with open(argv[0]) as f:
        spec = json.load(f)
    layers: list[str] = []
    try:
        layers = _confine(spec)
        timings = {"confine_s": time.monotonic() - t0}
        ctx = _load_context(spec)
        timings["load_s"] = time.monotonic() - t0 - timings["confine_s"]
    except Exception as e:  # noqa: BLE001 - a layer that cannot apply, or a broken student, stops the trial
        _write_json(spec["attest_fd"], {"layers": layers, "error": f"{type(e).__name__}: {e}"[:2000]})
        return 2
    _write_json(spec["attest_fd"], {"layers": layers})

    # ---- agent code from here on ----
    import importlib.util

    import numpy as np
    import torch

    main_pid = os.getpid()
    try:
        mspec = importlib.util.spec_from_file_location("aar_method", spec["method"])
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
        if not callable(getattr(module, "run", None)):
            raise AttributeError("the method file defines no run(ctx) function")
        torch.manual_seed(spec["seed"])
        t1 = time.monotonic()
        preds = module.run(ctx)
        timings["run_s"] = time.monotonic() - t1
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the trial too
        if os.getpid() != main_pid:  # a forked copy unwinding: it has nothing to report
            os._exit(1)
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"line {fr.lineno} of the method" for fr in reversed(tb) if fr.filename == spec["method"]), "")
        msg = str(e) if str(e) else repr(e)
        _error(spec, type(e).__name__, f"{msg}{f' ({where})' if where else ''}")
        return 1
    if os.getpid() != main_pid:  # a forked copy returning from run(): only the main process reports
        os._exit(0)
    if not isinstance(preds, torch.Tensor):
        _error(spec, "InvalidOutput", f"run(ctx) must return a torch.Tensor, got {type(preds).__name__}")
        return 1
    left = _leftover_children()
    if left:
        _error(spec, "LeftoverProcesses", f"run(ctx) returned with {left} process(es) still running "
                                          "(a daemon or an unjoined worker); they were killed")
        return 1
    if not preds.is_floating_point():
        _error(spec, "InvalidOutput", f"run(ctx) must return floating-point probabilities, got {preds.dtype}")
        return 1
    wide = preds.dtype == torch.float64
    preds = preds.detach().cpu().to(torch.float64 if wide else torch.float32).contiguous().numpy()
    preds = preds.astype("<f8" if wide else "<f4", copy=False)  # (N_eval,) little-endian, as the header says
    losses = np.asarray([[float(s), float(v)] for s, v in ctx.losses], dtype="<f8").reshape(-1, 2)
    head = {"format": "aar-preds-v1", "dtype": str(preds.dtype), "shape": list(preds.shape), "losses": len(losses),
            "timings": timings}
    with os.fdopen(spec["out_fd"], "wb") as f:
        f.write(json.dumps(head).encode() + b"\n" + preds.tobytes() + losses.tobytes())
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: atexit hooks are the method's, not ours
