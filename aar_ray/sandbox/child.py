"""Inside the sandbox: `python -I -m aar_ray.sandbox.child SPEC.json` runs one method file on
each seed of a `TrialRequest` (read from the folder SPEC names), one after the other, in this one
confined process. SPEC is the sandbox's plan for this child (where things are mounted, which
layers to apply, which fds to write); the request is the trial's, unchanged since the scorer built it.

The method module is imported once; each seed gets torch.manual_seed(seed), a fresh MethodContext
(its own inputs, losses and feature cache) and a fresh tokenizer. The student model is loaded at
most once and shared by the seeds as long as it is demonstrably untouched (same modules, tensors,
flags, version counters and value checksums as when loaded); a method that fine-tunes or patches
it makes the next seed load a fresh copy. torch's thread count, grad mode and the cwd are reset
before every seed.

Protocol with the harness (aar_ray.sandbox.runner), through fds the launcher opened:
  fd 5  attestation: JSON {"layers": [...]} (plus "error" if confinement or loading failed),
        written after Landlock and seccomp are applied and the inputs are loaded, before any
        agent code runs, then closed (the agent cannot reach it afterwards);
  fd 6  progress: a line "seed N" written before each seed runs (so that a timeout, crash or
        limit can be attributed to a seed; a claim, like everything after agent code starts), and
        "student DEVICE DTYPE" at start and again once the student is loaded (what it ran on);
  fd 3  result, once every seed succeeded: a plain-array record, no pickle: one JSON line
        {"format": "aar-preds-v2", "seeds": [{"seed", "dtype", "shape", "losses": K}, ...],
        "timings"}, then for each seed in that order its predictions' raw little-endian bytes
        followed by its losses as float64 (K, 2) rows of [step, loss];
  fd 4  error: JSON {"type", "message", "seed"} when run(ctx) raises, returns invalid
        predictions or leaves processes behind; the first failing seed stops the run;
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


class _Student:
    """The loaded student model, shared by the seeds while it stays as loaded.

    `take()` loads it on first use (importing transformers, inside the already confined process)
    and records a fingerprint; `check()` after a seed drops it when the method changed it, so the
    next seed loads a fresh copy, exactly as a run of its own would.
    """

    def __init__(self, spec: dict, request):
        self.spec, self.path, self.want = spec, spec["student"], request.student  # path: where it is mounted
        self.model = None
        self.fingerprint = None

    def take(self):
        if self.model is None:
            import torch
            from transformers import AutoModelForCausalLM
            try:
                self.model = AutoModelForCausalLM.from_pretrained(
                    self.path, dtype=getattr(torch, self.want.dtype)).to(self.want.device).eval()
            except Exception as e:  # noqa: BLE001
                raise StudentLoadError(f"could not load the student from {self.path}: {e}") from None
            self.fingerprint = _fingerprint(self.model)
            p = next(self.model.parameters())
            _progress(self.spec, f"student {p.device} {str(p.dtype).removeprefix('torch.')}")
        return self.model

    def check(self) -> bool:
        """After a seed: keep the model if untouched; returns whether it was dropped."""
        if self.model is None:
            return False
        try:
            same = _fingerprint(self.model) == self.fingerprint
        except Exception:  # noqa: BLE001 - a model too mangled to fingerprint is not reused
            same = False
        if not same:
            import gc

            import torch
            self.model = self.fingerprint = None
            gc.collect()
            if self.want.device.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.empty_cache()
        return not same


def _fingerprint(model) -> tuple:
    """What a method could change in the student: the module tree, each module's attributes, hooks
    and mode, every parameter and buffer (identity, storage, shape, dtype, device, requires_grad,
    version counter) and their values (float64 sum and sum of squares, in chunks, which also
    catches writes through `.data` that bypass the version counter), and the config."""
    import itertools

    import torch

    tree = []
    for name, m in model.named_modules(remove_duplicate=False):
        tree.append((name, id(m), type(m), m.training, tuple(sorted(m.__dict__)),
                     *(len(getattr(m, h, ())) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                        "_backward_pre_hooks", "_state_dict_hooks",
                                                        "_load_state_dict_pre_hooks"))))
    tensors = list(itertools.chain(model.named_parameters(remove_duplicate=False),
                                   model.named_buffers(remove_duplicate=False)))
    meta = [(n, id(t), t.data_ptr(), tuple(t.shape), t.dtype, str(t.device), t.requires_grad, t._version)
            for n, t in tensors]
    sums = []
    with torch.no_grad():
        for _, t in tensors:
            flat = t.detach().reshape(-1)
            for i in range(0, max(flat.numel(), 1), 1 << 22):
                c = flat[i:i + (1 << 22)].to(torch.float64)
                sums.append(torch.stack([c.sum(), (c * c).sum()]))
    values = torch.cat(sums).cpu().tolist() if sums else []
    return tuple(tree), tuple(meta), tuple(values), model.config.to_json_string()


def _lazy_base(student: _Student):
    """A `Base` whose model (shared through `student`) and tokenizer (its own) load on first use.

    Loading the student means importing transformers (seconds); a method that fails before it
    touches the model fails in the time torch takes to import. The load runs inside the already
    confined process, exactly as it would eagerly.
    """
    from aar_ray.w2s.student import Base

    class LazyBase(Base):
        def __init__(self):  # Base's own __init__ would assign the fields these properties replace
            self.key, self.path = student.want.key, student.path
            self._tok = None

        @property
        def model(self):
            return student.take()

        @property
        def tokenizer(self):
            if self._tok is None:
                from aar_ray.config import ModelConfig
                from aar_ray.w2s.student import load_tokenizer
                self._tok = load_tokenizer(ModelConfig(kind="hf", name_or_path=self.path))
            return self._tok

    return LazyBase()


class StudentLoadError(RuntimeError):
    pass


def _context(seed_inputs, request, student: _Student):
    from aar_ray.w2s.api import MethodContext

    return MethodContext(student=_lazy_base(student), **seed_inputs.tensors(), probe=request.probe,
                         seed=seed_inputs.seed, fidelity=request.fidelity, batch_size=request.batch_size,
                         recipe=request.recipe, finetune_cfg=request.finetune)


def _prepare(spec: dict):
    """Confine this process, then read the request and check its device: (request, layers).
    Raises with the layers applied so far in `_prepare.layers` when any of it fails."""
    _prepare.layers = _confine(spec)  # before torch starts any thread
    missing = [n for n in spec.get("require", ()) if n in ("landlock", "seccomp")
               and not any(layer.startswith(n) for layer in _prepare.layers)]
    if missing:  # fail closed: no agent code runs without a layer the harness requires
        raise RuntimeError(f"required sandbox layers did not apply in the child: {missing}")
    import torch

    from aar_ray.sandbox.contract import TrialRequest

    request = TrialRequest.read(spec["request"])
    torch.set_num_threads(request.limits.threads)
    device = request.student.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"the trial asks for device {device!r} but no CUDA device is visible in the sandbox")
    return request, _prepare.layers


def _error(spec: dict, kind: str, message: str, seed: int | None = None) -> None:
    try:
        _write_json(spec["err_fd"], {"type": kind, "message": message[:2000], "seed": seed})
    except OSError:
        pass


def _progress(spec: dict, line: str) -> None:
    try:
        os.write(spec["progress_fd"], f"{line}\n".encode())
    except (OSError, KeyError):
        pass


def main(argv: list[str]) -> int:
    sys.dont_write_bytecode = True  # -I ignores PYTHONDONTWRITEBYTECODE; the inputs are read-only anyway
    t0 = time.monotonic()
    with open(argv[0]) as f:
        spec = json.load(f)
    _prepare.layers = []
    try:
        request, layers = _prepare(spec)
    except Exception as e:  # noqa: BLE001 - a layer that cannot apply, or an unreadable request, stop the trial
        _write_json(spec["attest_fd"], {"layers": _prepare.layers, "error": f"{type(e).__name__}: {e}"[:2000]})
        return 2
    _write_json(spec["attest_fd"], {"layers": layers})
    _progress(spec, f"student {request.student.device} {request.student.dtype}")
    timings = {"setup_s": time.monotonic() - t0}

    # ---- agent code from here on ----
    main_pid = os.getpid()
    try:  # the method file is imported once, before the first seed
        t1 = time.monotonic()
        module = _import_method(spec["method"])
        timings["import_s"] = time.monotonic() - t1
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the trial too
        return _raised(spec, main_pid, e, None)
    student = _Student(spec, request)
    records: list[tuple[dict, bytes]] = []
    timings["run_s"] = 0.0
    for seed_inputs in request.seeds:
        seed = seed_inputs.seed
        try:
            t1 = time.monotonic()
            preds, losses = _run_one(spec, request, module, seed_inputs, student)
            timings[f"run_s.seed{seed}"] = time.monotonic() - t1
            timings["run_s"] += timings[f"run_s.seed{seed}"]
        except BaseException as e:  # noqa: BLE001
            return _raised(spec, main_pid, e, seed)
        if os.getpid() != main_pid:  # a forked copy returning from run(): only the main process reports
            os._exit(0)
        problem = _invalid(preds, seed_inputs.n_eval)
        if problem:
            _error(spec, *problem, seed)
            return 1
        records.append(_record(seed, preds, losses))
        del preds
        timings["student_reloads"] = timings.get("student_reloads", 0) + student.check()
    timings |= _throughput(request, timings["run_s"])
    head = {"format": "aar-preds-v2", "seeds": [h for h, _ in records], "timings": timings}
    with os.fdopen(spec["out_fd"], "wb") as f:
        f.write(json.dumps(head).encode() + b"\n" + b"".join(body for _, body in records))
    return 0


def _throughput(request, run_s: float) -> dict:
    """Training examples per second over every seed, and the GPU memory the run peaked at (MiB)."""
    import torch

    n = sum(int(s.train_ids.shape[0]) for s in request.seeds)
    out = {"samples_per_s": n / run_s if run_s > 0 else 0.0}
    if request.student.device.startswith("cuda") and torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _import_method(path: str):
    import importlib.util

    mspec = importlib.util.spec_from_file_location("aar_method", path)
    module = importlib.util.module_from_spec(mspec)
    sys.modules["aar_method"] = module  # as an import would: a method's dataclasses look themselves up there
    mspec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise AttributeError("the method file defines no run(ctx) function")
    return module


def _run_one(spec: dict, request, module, seed_inputs, student: _Student):
    """One seed: reset what a previous seed may have changed, then run(ctx). -> (preds, losses)."""
    import torch

    _progress(spec, f"seed {seed_inputs.seed}")
    os.chdir(spec["scratch"])
    torch.set_num_threads(request.limits.threads)
    torch.set_grad_enabled(True)
    ctx = _context(seed_inputs, request, student)
    torch.manual_seed(seed_inputs.seed)
    return module.run(ctx), list(ctx.losses)


def _raised(spec: dict, main_pid: int, e: BaseException, seed: int | None) -> int:
    if os.getpid() != main_pid:  # a forked copy unwinding: it has nothing to report
        os._exit(1)
    tb = traceback.extract_tb(e.__traceback__)
    where = next((f"line {fr.lineno} of the method" for fr in reversed(tb) if fr.filename == spec["method"]), "")
    msg = str(e) if str(e) else repr(e)
    _error(spec, type(e).__name__, f"{msg}{f' ({where})' if where else ''}", seed)
    return 1


def _invalid(preds, n_eval: int) -> tuple[str, str] | None:
    """(kind, message) when run() returned no usable predictions or left processes behind."""
    import torch

    from aar_ray.w2s.api import validate_predictions

    if not isinstance(preds, torch.Tensor):
        return "InvalidOutput", f"run(ctx) must return a torch.Tensor, got {type(preds).__name__}"
    left = _leftover_children()
    if left:
        return "LeftoverProcesses", (f"run(ctx) returned with {left} process(es) still running (a daemon or an "
                                     "unjoined worker); they were killed")
    try:  # a courtesy that stops a bad run early; the harness validates the record itself
        validate_predictions(preds, n_eval)
    except ValueError as e:
        return "InvalidOutput", str(e)
    return None


def _record(seed: int, preds, losses: list) -> tuple[dict, bytes]:
    """One seed's entry of the plain-array result record: (header, raw bytes)."""
    import numpy as np
    import torch

    wide = preds.dtype == torch.float64
    p = preds.detach().cpu().to(torch.float64 if wide else torch.float32).contiguous().numpy()
    p = p.astype("<f8" if wide else "<f4", copy=False)  # little-endian, as the header says
    rows = np.asarray([[float(s), float(v)] for s, v in losses], dtype="<f8").reshape(-1, 2)
    return {"seed": seed, "dtype": str(p.dtype), "shape": list(p.shape), "losses": len(rows)}, p.tobytes() + rows.tobytes()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: atexit hooks are the method's, not ours
