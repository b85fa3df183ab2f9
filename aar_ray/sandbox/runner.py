"""Harness side of the sandbox: run one method file on a `TrialRequest` in a confined child.

    outcome = run_sandboxed(request, method_path, limits=SandboxLimits())     # -> TrialOutcome
    outcome.status, outcome.reason, outcome.preds[seed], outcome.losses[seed], outcome.layers,
    outcome.device, outcome.dtype                    # the device and dtype the child actually used

    run_method_sandboxed(method_path, student_dir, inputs, probe=..., seed=0)  # one seed, built for you
    run_method_sandboxed_seeds(method_path, student_dir, {0: inputs0, 1: inputs1}, probe=...)

Agent code never enters this process (the process tree is in the package docstring). The harness
side of a trial: the static pre-check (a courtesy; the layers are the defence); a trial directory
with in/ (the request, the method copy, the child's plan: what the sandbox may read) and private/
(root-owned 0700: what the child writes through fds the launcher opened, and logs); the launch;
then it trusts only the launcher's report, its own clock and the attestation the child wrote
before any agent code ran. Predictions come back as a size-capped plain-array record (no pickle,
no zip) and are validated like in-process ones. One child runs every seed of the request.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from aar_ray.config import FinetuneConfig, ProbeConfig
from aar_ray.sandbox import precheck
from aar_ray.sandbox.contract import (INPUT_KEYS, SeedInputs, StudentSpec, TrialLimits, TrialOutcome, TrialRequest,
                                      TrialStatus, layer_names)
from aar_ray.sandbox.runtime import RuntimeView, method_runtime

SANDBOX_USER = "aar-sandbox"
STAGE_DIR = "/run/aar-sandbox"  # empty mountpoint; the launcher mounts a tmpfs over it in a private mount ns
MAX_RESULT_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 16
STATUSES = tuple(s.value for s in TrialStatus)  # what `aar trial` may print (see TrialStatus for each)


class SandboxError(RuntimeError):
    """A required layer is unavailable or the sandbox could not start."""


@dataclass(frozen=True)
class SandboxLimits:
    """The sandbox's policy: every limit and layer beyond the request's own (time, memory, threads in
    `TrialRequest.limits`). They live here, in the harness, never in the trial."""

    oom_mb: int | None = None
    """cgroup memory cap on resident memory, page cache and tmpfs of the whole trial; None: the request's memory_mb."""
    cpu_s: float | None = None
    """CPU-seconds soft rlimit per process (hard = soft + 5); None: the request's timeout x threads."""
    pids: int = 128
    """Processes+threads of one trial (cgroup pids.max)."""
    nproc: int = 1024
    """RLIMIT_NPROC of the sandbox uid, shared by all its concurrent trials (a backstop to pids)."""
    nofile: int = 1024
    """Open files per process."""
    fsize_mb: int = 256
    """Largest file a trial may write (its logs and result on the host disk included)."""
    scratch_mb: int = 512
    """Size of the scratch tmpfs (and of the /tmp tmpfs)."""
    use_bwrap: bool = True
    """Use bubblewrap when the probe says it works."""
    use_landlock: bool = True
    use_seccomp: bool = True
    use_cgroup: bool = True
    require: tuple[str, ...] = ()
    """Layers (config.SANDBOX_LAYERS) that must apply, else the trial is a sandbox_error and no agent code runs;
    a campaign sets them from `sandbox.require` (see requirement.py)."""
    devices: tuple[str, ...] = ()
    """Device files to expose read-write (e.g. /dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm for a GPU trial)."""


class SandboxFailure(RuntimeError):
    """Raised by the engine-facing runner when a sandboxed trial does not return valid predictions."""

    def __init__(self, result: TrialOutcome):
        super().__init__(f"{result.status.value}: {result.reason}")
        self.result = result


# ---- what this machine offers (probed once per process) ----

@dataclass(frozen=True)
class Host:
    uid: int | None  # sandbox uid when we are root (privilege drop), else None
    gid: int | None
    user: str
    bwrap: str | None  # path of a working bwrap, None if unusable
    bwrap_note: str
    landlock_abi: int
    seccomp: bool
    cgroup: bool
    stage: bool  # root with CAP_SYS_ADMIN: can stage read-only trees for the sandbox uid

    def describe(self) -> dict:
        return asdict(self)


def ensure_sandbox_user() -> tuple[int, int, str]:
    """The dedicated unprivileged account, created (system user, no home, no shell) if missing.

    A dedicated uid rather than `nobody`: nobody is shared with NFS squashing and other daemons,
    and nothing else should ever own a process or file as aar-sandbox.
    """
    try:
        pw = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        if os.path.exists(useradd):
            subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                            "/usr/sbin/nologin", "--user-group", SANDBOX_USER], check=False, capture_output=True)
        try:
            pw = pwd.getpwnam(SANDBOX_USER)
        except KeyError:  # no useradd (minimal image): fall back to nobody, still unprivileged
            pw = pwd.getpwnam("nobody")
    if pw.pw_uid == 0:
        raise SandboxError(f"user {pw.pw_name} has uid 0")
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def _caps_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _probe_bwrap(uid: int | None, gid: int | None) -> tuple[str | None, str]:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return None, "bwrap not installed (Debian package bubblewrap)"
    cmd = ["/usr/bin/env", "-i", bwrap, *_BWRAP_FLAGS, "--ro-bind", "/", "/", "--proc", "/proc", "/bin/true"]
    try:
        p = subprocess.run(cmd, env={}, capture_output=True, text=True, timeout=20, user=uid, group=gid,
                           extra_groups=[] if uid is not None else None, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"bwrap probe failed: {e}"
    if p.returncode != 0:  # typical in Kubernetes pods: user namespaces forbidden
        return None, f"bwrap unusable here: {p.stderr.strip()[:200]}"
    return bwrap, "ok"


def _seccomp_available() -> bool:
    try:
        from aar_ray.sandbox import seccomp
        seccomp._load_pyseccomp()
        return True
    except (ImportError, OSError, AttributeError):
        return False


def _cgroup_available() -> bool:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").is_file():
        return {"memory", "pids"} <= set((root / "cgroup.controllers").read_text().split()) and os.access(root, os.W_OK)
    return all(os.access(root / c, os.W_OK) and (root / c / "cgroup.procs").is_file() for c in ("memory", "pids"))


@functools.lru_cache(maxsize=1)
def host() -> Host:
    """Probe the layers once: which apply here, and why not where they do not."""
    from aar_ray.sandbox import landlock

    root = os.geteuid() == 0
    uid = gid = None
    user = pwd.getpwuid(os.geteuid()).pw_name
    if root:
        uid, gid, user = ensure_sandbox_user()
    stage = root and bool(_caps_eff() & (1 << 21))  # CAP_SYS_ADMIN
    if stage:
        os.makedirs(STAGE_DIR, mode=0o755, exist_ok=True)
    bwrap, note = _probe_bwrap(uid, gid)
    return Host(uid, gid, user, bwrap, note, landlock.abi_version(), _seccomp_available(),
                root and _cgroup_available(), stage)


_BWRAP_FLAGS = ["--unshare-all", "--unshare-user", "--die-with-parent", "--cap-drop", "ALL", "--disable-userns",
                "--new-session", "--hostname", "aar-sandbox"]


# ---- building one trial ----

def _system_ro() -> list[str]:
    """System trees the child needs: shared libraries and the CPU topology torch reads; no /usr/bin,
    nothing of /etc beyond ld.so.cache."""
    return [p for p in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/etc/ld.so.cache", "/sys/devices/system/cpu")
            if os.path.exists(p)]


def _child_argv(view: RuntimeView, spec: str) -> list[str]:
    """The interpreter with no site and no environment (`-I -S`), importing from the method runtime
    view only (see runtime.py): what a method's process can import is decided here, by the path and
    the mounts, not by a check of its source."""
    code = (f"import sys; sys.path[:] = {view.sys_path()!r}; import runpy; "
            "runpy.run_module('aar_ray.sandbox.child', run_name='__main__', alter_sys=True)")
    return [view.python, "-I", "-S", "-c", code, spec]


def _child_env(threads: int, home: str) -> dict[str, str]:
    n = str(threads)
    return {"HOME": home, "TMPDIR": "/tmp", "PATH": "/nonexistent", "LANG": "C.UTF-8", "USER": SANDBOX_USER,
            "LOGNAME": SANDBOX_USER, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n}


def _plan(h: Host, lim: SandboxLimits, trial: Path, request: TrialRequest) -> tuple[dict, dict, list, bool]:
    """(launcher spec, child spec, layers planned, bwrap used) for one trial."""
    launcher, layers = _plan_launcher(h, lim, trial, request)
    use_bwrap = lim.use_bwrap and h.bwrap is not None
    plan = _plan_bwrap if use_bwrap else _plan_direct
    paths = plan(h, lim, trial, os.path.realpath(request.student.path), launcher, layers, request.limits.threads,
                 method_runtime())
    child = {"request": paths["in"], "method": f"{paths['in']}/method.py", "student": paths["student"],
             "scratch": paths["scratch"],
             "landlock": {"read": paths["ro"] + ["/proc/self", "/proc/cpuinfo", "/dev/urandom", "/dev/random",
                                                 "/dev/zero"],
                          "write": paths["rw"] + ["/dev/null"], "devices": list(lim.devices)}
             if lim.use_landlock and h.landlock_abi >= 1 else None,
             "seccomp": lim.use_seccomp and h.seccomp, "unix_sockets": use_bwrap,  # host sockets hidden by bwrap
             "require": list(lim.require), "out_fd": 3, "err_fd": 4, "attest_fd": 5, "progress_fd": 6}
    launcher["require"] = list(lim.require)
    return launcher, child, layers, use_bwrap


def _plan_launcher(h: Host, lim: SandboxLimits, trial: Path, request: TrialRequest) -> tuple[dict, list]:
    """The launcher's part: result fds, wall clock, uid, rlimits and cgroup caps."""
    priv, threads, timeout_s = trial / "private", request.limits.threads, request.timeout_s
    layers: list[str] = []
    launcher = {"fds": {"1": str(priv / "stdout.log"), "2": str(priv / "stderr.log"), "3": str(priv / "out.bin"),
                        "4": str(priv / "error.json"), "5": str(priv / "attest.json"),
                        "6": str(priv / "progress.log")},
                "timeout_s": timeout_s, "uid": h.uid, "gid": h.gid, "cwd": "/"}
    cpu = int(lim.cpu_s if lim.cpu_s is not None else timeout_s * threads) + 1
    mem = request.limits.memory_mb << 20
    launcher["rlimits"] = {"as": [mem, mem], "cpu": [cpu, cpu + 5], "nofile": [lim.nofile, lim.nofile],
                           "fsize": [lim.fsize_mb << 20, lim.fsize_mb << 20], "core": [0, 0]}
    if h.uid is not None:  # NPROC counts every process of the uid: only meaningful for a dedicated uid
        launcher["rlimits"]["nproc"] = [lim.nproc, lim.nproc]
        layers.append(f"uid:{h.user}({h.uid})")
    layers.append("rlimits(as,cpu,nofile,fsize,core" + (",nproc" if h.uid is not None else "") + ")")
    if lim.use_cgroup and h.cgroup:
        launcher["cgroup"] = {"memory": (lim.oom_mb or request.limits.memory_mb) << 20, "pids": lim.pids,
                              "cpus": threads}
    layers.append("env-cleared")
    return launcher, layers


def _plan_bwrap(h: Host, lim: SandboxLimits, trial: Path, student: str, launcher: dict, layers: list,
                threads: int, view: RuntimeView) -> dict:
    """Namespaces: only the method runtime (at its real paths), the inputs and the student are bound,
    read-only; the interpreter's own site-packages is covered by an empty tmpfs; tmpfs scratch."""
    binds = {"python": (view.python, view.python), "stdlib": (view.stdlib, view.stdlib), "rt": (view.root, view.root),
             **{f"lib{i}": (p, p) for i, p in enumerate(view.libs)},
             **{f"site{i}": (p, p) for i, p in enumerate(view.targets)},
             "in": (str(trial / "in"), "/aar/in"), "student": (student, "/aar/student")}
    if h.stage:  # bwrap runs as the sandbox uid: give it sources it can reach
        launcher["stage"] = {"dir": STAGE_DIR, "binds": [[src, name] for name, (src, _) in binds.items()]}
        binds = {name: (f"{STAGE_DIR}/{name}", dst) for name, (_, dst) in binds.items()}
        layers.append("staged-binds")
    argv = ["/usr/bin/env", "-i", h.bwrap, *_BWRAP_FLAGS]
    for p in _system_ro():
        argv += ["--ro-bind", p, p]
    for link in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
    argv += ["--dev", "/dev", "--proc", "/proc",
             "--perms", "0700", "--size", str(lim.scratch_mb << 20), "--tmpfs", "/aar/scratch",
             "--perms", "0700", "--size", str(lim.scratch_mb << 20), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(lim.scratch_mb << 20), "--tmpfs", "/dev/shm"]
    # after the tmpfs mounts: a runtime that lives under /tmp (a checkout in /tmp) stays visible,
    # read-only, inside the fresh /tmp
    for src, dst in binds.values():
        argv += ["--ro-bind", src, dst]
    for d in view.hidden:
        argv += ["--perms", "0555", "--size", "4096", "--tmpfs", d]
    for d in lim.devices:
        argv += ["--dev-bind", d, d]
    for k, v in _child_env(threads, "/aar/scratch").items():
        argv += ["--setenv", k, v]
    argv += ["--chdir", "/aar/scratch", "--", *_child_argv(view, "/aar/in/spec.json")]
    launcher.update(argv=argv, env={})
    layers.append("bwrap(" + ",".join(["unshare-all", "cap-drop", "disable-userns", "ro-binds", "tmpfs"]) + ")")
    layers.append("method-runtime")
    ro = [view.python, *view.libs, view.stdlib, view.root, *view.targets, "/aar/in", "/aar/student", *_system_ro()]
    return {"in": "/aar/in", "student": "/aar/student", "scratch": "/aar/scratch", "ro": ro,
            "rw": ["/aar/scratch", "/tmp", "/dev/shm"]}


def _plan_direct(h: Host, lim: SandboxLimits, trial: Path, student: str, launcher: dict, layers: list,
                 threads: int, view: RuntimeView) -> dict:
    """No namespaces (bwrap unusable, e.g. in a pod): the child sees the host's paths; Landlock lets it
    read the method runtime, its inputs and the student, and nothing else; seccomp confines it."""
    scratch = trial / "scratch"
    scratch.mkdir(mode=0o700)
    if h.uid is not None:
        os.chown(scratch, h.uid, h.gid)
    inn = str(trial / "in")
    if h.stage:
        launcher["expose"] = [view.python, *view.libs, view.stdlib, view.root, *view.targets, inn, student]
        layers.append("exposed-in-place")
    launcher.update(argv=_child_argv(view, f"{inn}/spec.json"), env=_child_env(threads, str(scratch)),
                    cwd=str(scratch), check_readable=[view.python, view.stdlib, f"{inn}/spec.json", student,
                                                      str(scratch)])
    layers.append("method-runtime")
    return {"in": inn, "student": student, "scratch": str(scratch), "ro": [*view.readable(), inn, student,
                                                                            *_system_ro()],
            "rw": [str(scratch)]}


def _share_student(student: str) -> None:
    """Make the student's files readable by the sandbox uid (others: r, dirs: rx).

    transformers writes model.safetensors with mode 0600, so a root-built cache is unreadable by an
    unprivileged uid. Weights are what the trial is meant to read; labels never live here.
    """
    for d, _, files in os.walk(student):
        for path, want in [(d, 0o005)] + [(os.path.join(d, f), 0o004) for f in files]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):  # never chmod through a link: its target may be anything
                continue
            if st.st_mode & want != want:
                os.chmod(path, (st.st_mode & 0o7777) | want)


def _required_missing(lim: SandboxLimits, layers: list[str]) -> list[str]:
    names = layer_names(layers)
    return [r for r in lim.require if r not in names]


def _read_capped(path: Path, cap: int) -> bytes | None:
    try:
        if path.stat().st_size > cap:
            return None
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _tail(path: Path, n: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


RESULT_FORMAT = "aar-preds-v2"
RESULT_DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8"}


def _record_header(blob: bytes, seeds: list[int]) -> dict | None:
    """The record's JSON header if it is well formed and lists exactly `seeds`, in order."""
    head, sep, _ = blob[:MAX_HEADER_BYTES].partition(b"\n")
    try:
        h = json.loads(head) if sep else None
    except ValueError:
        return None
    if not (isinstance(h, dict) and h.get("format") == RESULT_FORMAT and isinstance(h.get("seeds"), list)
            and [e.get("seed") if isinstance(e, dict) else None for e in h["seeds"]] == seeds):
        return None
    for e in h["seeds"]:
        if not (type(e["seed"]) is int and e.get("dtype") in RESULT_DTYPES and isinstance(e.get("shape"), list)
                and len(e["shape"]) <= 2 and all(type(d) is int and 0 <= d <= 1 << 28 for d in e["shape"])
                and type(e.get("losses")) is int and 0 <= e["losses"] <= 1 << 24):
            return None
    h["_body"] = len(head) + 1
    return h


def _load_result(path: Path, n_eval: Mapping[int, int]) -> tuple[dict, dict, str | None, dict, int | None]:
    """({seed: preds}, {seed: losses}, problem, timings, seed the problem is about) from the child's
    plain-array record, size-capped.

    The record is one JSON header line {"format": "aar-preds-v2", "seeds": [{"seed", "dtype",
    "shape", "losses": K}, ...], "timings"}, then, per seed in header order, the raw little-endian
    predictions followed by the losses as float64 (K, 2). The header must list exactly the seeds
    asked for, in order, and the body must have exactly the size it implies. No pickle and no zip:
    nothing in it can run code or decompress into a bomb.
    """
    import numpy as np
    import torch

    from aar_ray.w2s.api import validate_predictions

    seeds = list(n_eval)
    blob = _read_capped(path, MAX_RESULT_BYTES)
    if blob is None:
        return {}, {}, f"result file is larger than {MAX_RESULT_BYTES >> 20} MiB", {}, None
    if not blob:
        return {}, {}, "the method wrote no predictions (did it exit before run() returned?)", {}, None
    h = _record_header(blob, seeds)
    if h is None:
        return {}, {}, (f"the result file is not a {RESULT_FORMAT} record of seeds {seeds} (the harness reads plain "
                        "arrays only)"), {}, None
    sizes = [(math.prod(e["shape"]), np.dtype(RESULT_DTYPES[e["dtype"]])) for e in h["seeds"]]
    body = memoryview(blob)[h["_body"]:]
    if len(body) != sum(n * dt.itemsize + e["losses"] * 16 for (n, dt), e in zip(sizes, h["seeds"])):
        return {}, {}, "the result record's size does not match its header", {}, None
    preds, losses, off = {}, {}, 0
    for (n, dt), e in zip(sizes, h["seeds"]):
        p = torch.from_numpy(np.frombuffer(body, dt, count=n, offset=off).astype(np.float32).reshape(e["shape"]))
        off += n * dt.itemsize
        try:
            preds[e["seed"]] = validate_predictions(p, n_eval[e["seed"]])
        except ValueError as err:
            return {}, {}, str(err), {}, e["seed"]
        rows = np.frombuffer(body, "<f8", count=2 * e["losses"], offset=off).reshape(-1, 2)
        off += e["losses"] * 16
        losses[e["seed"]] = [(int(st), float(v)) for st, v in rows.tolist()]
    t = h.get("timings")
    timings = {str(k)[:40]: float(v) for k, v in list(t.items())[:64] if isinstance(v, (int, float))} \
        if isinstance(t, dict) else {}
    return preds, losses, None, timings, None


def _child_error(path: Path) -> tuple[str, str, object] | None:
    """(type, message, seed it claims) of the child's error record."""
    blob = _read_capped(path, 1 << 16)
    if not blob:
        return None
    try:
        d = json.loads(blob)
        return str(d.get("type", "Error"))[:80], str(d.get("message", ""))[:600], d.get("seed")
    except (ValueError, AttributeError):
        return "Error", "the method's error record is unreadable", None


def _current_seed(priv: Path, seeds: list[int], err: tuple | None) -> int | None:
    """The seed a failure happened in, as the child claims it (error record, else its last progress
    line); None when it names none of `seeds`. Only ever used to word a failure."""
    if err and type(err[2]) is int and err[2] in seeds:
        return err[2]
    for line in reversed(_tail(priv / "progress.log", 4096).splitlines()):
        word, _, n = line.partition(" ")
        if word == "seed" and n.lstrip("-").isdigit() and int(n) in seeds:
            return int(n)
    return None


def _attestation(path: Path) -> tuple[list[str], str | None]:
    """(layers the child applied, setup error) from the record it closed before running agent code."""
    blob = _read_capped(path, 1 << 16)
    if not blob:
        return [], "the sandbox child did not start (no attestation)"
    try:
        d = json.loads(blob)
        return [str(x) for x in d.get("layers", [])][:20], (str(d["error"])[:2000] if d.get("error") else None)
    except (ValueError, AttributeError, TypeError):
        return [], "the sandbox child's attestation is unreadable"


def _student_claim(priv: Path) -> tuple[str, str]:
    """(device, dtype) the child last said it holds the student on ("student DEVICE DTYPE" progress
    lines: once at start, again after loading it); ('', '') when it said nothing."""
    for line in reversed(_tail(priv / "progress.log", 4096).splitlines()):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "student":
            return parts[1][:16], parts[2][:16]
    return "", ""


def _classify(rep: dict, lim: SandboxLimits, memory_mb: int, cpu_soft: float, trial: Path,
              n_eval: Mapping[int, int], bwrap: bool, timeout_s: float) -> tuple:
    """(status, reason, {seed: preds}, {seed: losses}, timings, seed a failure is about) from trusted
    facts first (launcher report), the child's own claims last.

    A failure is about the seed the harness found invalid in the record, else the one the child
    says it was running, else the first seed (where nothing ran yet, a run of its own fails too).
    """
    priv = trial / "private"
    rc, sig = rep.get("rc"), rep.get("signal")
    if bwrap and rc is not None and rc > 128:  # bwrap exits 128+N when its child dies of signal N
        sig, rc = rc - 128, None
    err = _child_error(priv / "error.json")
    seeds = list(n_eval)
    current = _current_seed(priv, seeds, err)
    if current is None and seeds:
        current = seeds[0]

    def _no(status: TrialStatus, reason: str, seed: int | None = current):
        return status, reason, None, {}, {}, seed

    S = TrialStatus
    if rep.get("timed_out"):
        extra = f"; the process limit ({lim.pids}) was hit {rep['pids_max_hits']} times" if rep.get("pids_max_hits") else ""
        whole = f" (for all {len(seeds)} seeds together)" if len(seeds) > 1 else ""
        return _no(S.TIMEOUT, f"wall-clock limit of {timeout_s:g}s{whole} reached; every process of the trial was "
                              f"killed{extra}")
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and rep.get("cpu_s", 0) >= cpu_soft - 0.5):
        return _no(S.CPU_LIMIT, f"CPU limit of {cpu_soft:g} CPU-seconds reached (used {rep.get('cpu_s', 0):.1f}s)")
    if rep.get("oom_kills"):
        return _no(S.MEMORY_LIMIT, f"killed by the out-of-memory killer at the {lim.oom_mb or memory_mb} MiB "
                                   "memory cap")
    if err and (err[0] == "MemoryError" or "can't allocate memory" in err[1] or "not enough memory" in err[1]):
        return _no(S.MEMORY_LIMIT, f"memory limit of {memory_mb} MiB reached: {err[0]}: {err[1]}")
    if rep.get("pids_max_hits") and (rc or sig):
        what = f"{err[0]}: {err[1]}" if err else f"exit {rc}" if rc else f"signal {sig}"
        return _no(S.PIDS_LIMIT, f"process limit of {lim.pids} reached ({rep['pids_max_hits']} refused forks); {what}")
    if sig:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXFSZ:
            return _no(S.FAILED, f"file size limit of {lim.fsize_mb} MiB exceeded (SIGXFSZ)")
        if sig == signal.SIGSYS:
            return _no(S.CRASHED, "killed by SIGSYS: it made a system call the sandbox forbids outright "
                                  "(e.g. through the x32 or i386 syscall ABI)")
        return _no(S.CRASHED, f"the method's process was killed by {name}")
    if err:
        if err[0] == "LeftoverProcesses":
            return _no(S.LEFTOVER_PROCESSES, err[1])
        if err[0] == "InvalidOutput":
            return _no(S.INVALID_OUTPUT, err[1])
        return _no(S.FAILED, f"run(ctx) raised {err[0]}: {err[1]}")
    if rc:
        return _no(S.FAILED, f"the method's process exited with status {rc} without an error record")
    if rep.get("leftovers_killed"):
        return _no(S.LEFTOVER_PROCESSES, f"{rep['leftovers_killed']} processes outlived run() and were killed")
    preds, losses, problem, timings, bad_seed = _load_result(priv / "out.bin", n_eval)
    if problem:
        return _no(S.INVALID_OUTPUT, problem, current if bad_seed is None else bad_seed)
    return S.OK, "predictions validated", preds, losses, timings, None


def run_sandboxed(request: TrialRequest, method_path: str | os.PathLike, *, limits: SandboxLimits | None = None,
                  check_source: bool = True, work_dir: str | os.PathLike | None = None,
                  keep: bool = False) -> TrialOutcome:
    """Run `run(ctx)` of one method file on every seed of `request` in ONE sandboxed child; never
    raises for anything the method does.

    The child imports the method once and, per seed (in the request's order), calls
    torch.manual_seed(seed) and run() on a fresh MethodContext. The request's wall clock (its
    seed_timeout_s x seeds) and every other limit cover the whole run. The outcome is OK only if every
    seed returned valid predictions; a failed run stops at its first failing seed, which a multi-seed
    trial's reason names first ("seed 1: ..."). Raises ValueError only for a harness bug (no student).
    """
    lim = limits or SandboxLimits()
    t0 = time.monotonic()
    source = Path(method_path).read_text()
    if check_source:
        findings = precheck.check(source, Path(method_path).name)
        if findings:
            return TrialOutcome.failure(TrialStatus.REJECTED, "static pre-check: " + "; ".join(findings[:5]),
                                        ("precheck",))
    student = os.path.realpath(request.student.path)
    if not os.path.isdir(student):
        raise ValueError(f"the student {request.student.path} is not a directory")
    refused = _refuse_early(request, lim, student)
    if refused is not None:
        return refused
    base = Path(work_dir) if work_dir else Path(tempfile.gettempdir())
    trial = Path(tempfile.mkdtemp(prefix="aar-trial-", dir=base))
    try:
        outcome = _run_in(trial, request, source, lim, check_source)
        return dataclasses.replace(outcome, wall_s=round(time.monotonic() - t0, 3))
    finally:
        if not keep:
            shutil.rmtree(trial, ignore_errors=True)


def _refuse_early(request: TrialRequest, lim: SandboxLimits, student: str) -> TrialOutcome | None:
    """A sandbox_error before anything starts: a GPU without its device files, an unreadable student."""
    if request.student.device != "cpu" and not lim.devices:
        return TrialOutcome.failure(TrialStatus.SANDBOX_ERROR, f"device {request.student.device!r} needs its device "
                                    "files in SandboxLimits.devices (e.g. /dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm)")
    if host().uid is not None:
        try:
            _share_student(student)
        except OSError as e:
            return TrialOutcome.failure(TrialStatus.SANDBOX_ERROR, "student files are not readable by the sandbox "
                                        f"uid and cannot be made so: {e}")
    return None


def _run_in(trial: Path, request: TrialRequest, source: str, lim: SandboxLimits, check_source: bool) -> TrialOutcome:
    """Lay out the trial directory, launch the child, and read what came back."""
    h = host()
    os.chmod(trial, 0o711)  # traversable, not listable; private/ below is 0700
    (trial / "in").mkdir(mode=0o755)
    (trial / "private").mkdir(mode=0o700)
    request.write(trial / "in")
    (trial / "in" / "method.py").write_text(source)
    launcher, child, layers, bwrap = _plan(h, lim, trial, request)
    expected = layers + (["cgroup"] if "cgroup" in launcher else []) + ["subreaper"] \
        + (["landlock"] if child["landlock"] else []) + (["seccomp"] if child["seccomp"] else [])
    missing = _required_missing(lim, expected)
    if missing:  # refuse before any agent code runs
        return TrialOutcome.failure(TrialStatus.SANDBOX_ERROR, f"required sandbox layers are unavailable here: "
                                    f"{missing} (bwrap: {h.bwrap_note}; landlock ABI {h.landlock_abi})", tuple(expected))
    (trial / "in" / "spec.json").write_text(json.dumps(child))
    for f in (trial / "in").iterdir():
        os.chmod(f, 0o644)
    rep = _launch(launcher, request.timeout_s)
    priv = trial / "private"
    child_layers, setup_error = _attestation(priv / "attest.json")
    layers = tuple((["precheck"] if check_source else []) + layers + rep.get("layers", []) + child_layers)
    log = _tail(priv / "stderr.log") + _tail(priv / "stdout.log", 1000)
    device, dtype = _student_claim(priv)
    if rep.get("error") or (setup_error and not rep.get("timed_out")):
        return TrialOutcome(TrialStatus.SANDBOX_ERROR, rep.get("error") or setup_error, layers, device, dtype,
                            log_tail=log)
    n_eval = {s.seed: s.n_eval for s in request.seeds}
    status, reason, preds, losses, timings, failed = _classify(
        rep, lim, request.limits.memory_mb, launcher["rlimits"]["cpu"][0], trial, n_eval, bwrap, request.timeout_s)
    missing = _required_missing(lim, list(layers))
    if missing:  # a required layer did not apply: whatever happened is the harness's fault, never a result
        status, reason, preds, losses = (TrialStatus.SANDBOX_ERROR, f"required sandbox layers did not apply: {missing}"
                                         f" (the method's own outcome: {status.value}: {reason})", None, {})
    if failed is not None and len(n_eval) > 1:
        reason = f"seed {failed}: {reason}"
    return TrialOutcome(status, reason, layers, device, dtype, preds or {},
                        {s: tuple(v) for s, v in (losses or {}).items()}, cpu_s=float(rep.get("cpu_s", 0.0)),
                        log_tail=log, timings=timings or {}, failed_seed=failed)


def request_for(student_dir: str | os.PathLike, inputs_by_seed: Mapping[int, Mapping[str, object]], *,
                probe: ProbeConfig, fidelity: str = "full", batch_size: int = 256, seed_timeout_s: float = 600.0,
                memory_mb: int = 8192, threads: int = 1, device: str = "cpu", dtype: str = "float32",
                student_key: str = "", recipe: str = "probe", finetune: FinetuneConfig | None = None) -> TrialRequest:
    """A TrialRequest from loose parts (tests, benchmarks, `engine_runner`); campaigns get theirs from the scorer."""
    seeds = tuple(SeedInputs(seed, **{k: inputs[k] for k in INPUT_KEYS}) for seed, inputs in inputs_by_seed.items())
    return TrialRequest(seeds=seeds, student=StudentSpec(str(student_dir), student_key, device, dtype), probe=probe,
                        recipe=recipe, finetune=finetune or FinetuneConfig(), fidelity=fidelity,
                        batch_size=int(batch_size),
                        limits=TrialLimits(seed_timeout_s=seed_timeout_s, memory_mb=memory_mb, threads=threads))


def run_method_sandboxed(method_path: str | os.PathLike, student_dir: str | os.PathLike, inputs: Mapping[str, object],
                         *, seed: int, timeout_s: float = 600.0, limits: SandboxLimits | None = None,
                         check_source: bool = True, work_dir: str | os.PathLike | None = None, keep: bool = False,
                         **request: object) -> TrialOutcome:
    """One seed: `run_sandboxed` on `request_for(student_dir, {seed: inputs}, seed_timeout_s=timeout_s,
    **request)` (request: probe, fidelity, batch_size, memory_mb, threads, device, dtype, student_key)."""
    req = request_for(student_dir, {int(seed): inputs}, seed_timeout_s=timeout_s, **request)
    return run_sandboxed(req, method_path, limits=limits, check_source=check_source, work_dir=work_dir, keep=keep)


def run_method_sandboxed_seeds(method_path: str | os.PathLike, student_dir: str | os.PathLike,
                               inputs_by_seed: Mapping[int, Mapping[str, object]], *, timeout_s: float = 600.0,
                               limits: SandboxLimits | None = None, check_source: bool = True,
                               work_dir: str | os.PathLike | None = None, keep: bool = False,
                               **request: object) -> TrialOutcome:
    """Every seed in ONE child: `run_sandboxed` on a request whose whole wall clock is `timeout_s`."""
    req = request_for(student_dir, inputs_by_seed, seed_timeout_s=timeout_s / len(inputs_by_seed), **request)
    return run_sandboxed(req, method_path, limits=limits, check_source=check_source, work_dir=work_dir, keep=keep)


def _launch(spec: dict, timeout_s: float) -> dict:
    """Start the trusted launcher and return its report (it enforces the deadline; we back it up).

    The launcher dies with this process (parent-death signal): a killed Ray worker, whatever killed
    it, takes the trial's every process with it (see launch.py).
    """
    spec = {**_injected_fault(spec), "harness_pid": os.getpid()}
    try:
        p = subprocess.run(_launcher_argv(), input=json.dumps(spec), capture_output=True, text=True, env={},
                           timeout=timeout_s + 60, start_new_session=True, close_fds=True)
    except subprocess.TimeoutExpired:
        return {"error": "the sandbox launcher itself did not finish; it was killed"}
    lines = p.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"the sandbox launcher gave no report (exit {p.returncode}): {p.stderr.strip()[-500:]}"}


def _launcher_argv() -> list[str]:
    """The launcher of this very package, found by path: `-I` ignores PYTHONPATH, and an installed copy
    may not be the checkout that runs the harness."""
    root = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {root!r}); import runpy; "
            "runpy.run_module('aar_ray.sandbox.launch', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-I", "-c", code]


FAULT_DIR_ENV = "AAR_FAULT_DIR"


def _injected_fault(spec: dict) -> dict:
    """Tests of the harness's retries only: while $AAR_FAULT_DIR/launch-once exists, the one launch that
    removes it hands the real launcher a spec without its command, so it fails as a broken install would."""
    d = os.environ.get(FAULT_DIR_ENV)
    if not d:
        return spec
    try:
        os.unlink(os.path.join(d, "launch-once"))
    except FileNotFoundError:
        return spec
    return {k: v for k, v in spec.items() if k != "argv"}


def engine_runner(timeout_s: float = 600.0, limits: SandboxLimits | None = None, check_source: bool = True,
                  memory_mb: int = 8192, threads: int = 1):
    """An `aar_ray.w2s.engine.Runner` that runs every method through the sandbox, on the device and
    in the dtype the engine loaded the student. Raises SandboxFailure (carrying the TrialOutcome)
    when the trial is not ok."""
    def run(method_path: Path, trial_inputs) -> tuple[object, list]:
        ctx = trial_inputs.ctx
        req = request_for(ctx.student.path, {ctx.seed: {k: getattr(ctx, k) for k in INPUT_KEYS}}, probe=ctx.probe,
                          fidelity=ctx.fidelity, batch_size=ctx.batch_size, seed_timeout_s=timeout_s,
                          memory_mb=memory_mb, threads=threads, recipe=ctx.recipe, finetune=ctx.finetune_cfg,
                          **student_settings(ctx.student))
        res = run_sandboxed(req, method_path, limits=limits, check_source=check_source)
        if not res.ok:
            raise SandboxFailure(res)
        return res.preds[ctx.seed], list(res.losses[ctx.seed])
    return run


def student_settings(student) -> dict:
    """device, dtype and key of a loaded `Base`, for the child to load the same model."""
    p = next(student.model.parameters())
    device = p.device.type if p.device.index is None else f"{p.device.type}:{p.device.index}"
    return {"device": device, "dtype": str(p.dtype).removeprefix("torch."), "student_key": student.key}
