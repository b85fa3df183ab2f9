"""Fast sandbox tests: the pre-check, each kernel layer on its own in a bare subprocess, the status
classification on scripted launcher reports, and which layers this machine offers."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from aar_ray.sandbox import STATUSES, SandboxLimits, host
from aar_ray.sandbox.landlock import abi_version
from aar_ray.sandbox.precheck import check
from aar_ray.sandbox.runner import _classify
from aar_ray.w2s.methods import BUILTINS, resolve

PY = sys.executable


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-I", "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


# ---- static pre-check ----

@pytest.mark.parametrize("name", BUILTINS)
def test_precheck_passes_builtins(name):
    assert check(resolve(name).read_text()) == []


@pytest.mark.parametrize("src, needle", [
    ("import socket", "line 1: imports 'socket', which opens network connections"),
    ("import os\nos.system('id')", "line 2: calls os.system"),
    ("from os import fork", "imports os.fork"),
    ("x = open('/proc/1/environ').read()", "names the host path '/proc/1/environ'"),
    ("eval('1')", "calls eval()"),
    ("().__class__.__base__.__subclasses__()", "uses __subclasses__"),
    ("def run(ctx:\n  pass", "syntax error"),
])
def test_precheck_names_the_line_and_the_reason(src, needle):
    findings = check(src)
    assert any(needle in f for f in findings), findings


# ---- Landlock and seccomp, each alone, in a bare interpreter ----

@pytest.mark.skipif(abi_version() < 1, reason="no Landlock in this kernel")
def test_landlock_allows_only_the_allowlist(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    out = _run(f"""
        import os, sys, socket
        from aar_ray.sandbox import landlock
        a = landlock.restrict(read=[sys.base_prefix, sys.prefix, {str(Path(__file__).parent.parent)!r}, "/usr/lib",
                                    {str(tmp_path / 'ok.txt')!r}], write=[])
        print(open({str(tmp_path / 'ok.txt')!r}).read())
        for p in ("/etc/hostname", "/proc/1/cmdline", {str(tmp_path)!r} + "/new.txt"):
            try:
                open(p, "a" if p.endswith("new.txt") else "r").close(); print("OPEN", p)
            except PermissionError:
                print("denied", p)
        try:
            os.listdir("/proc"); print("OPEN /proc")
        except PermissionError:
            print("denied /proc")
        if a.net:
            try:
                socket.create_connection(("127.0.0.1", 9), timeout=1); print("OPEN tcp")
            except PermissionError:
                print("denied tcp")
            except OSError as e:
                print("OPEN tcp", e)
        print(a.describe())
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "fine"
    assert "OPEN" not in out.stdout, out.stdout
    assert out.stdout.count("denied") == (5 if abi_version() >= 4 else 4)


def test_seccomp_denies_sockets_exec_ptrace_and_namespaces():
    out = _run("""
        import ctypes, os, socket, subprocess
        from aar_ray.sandbox import seccomp
        seccomp.apply(allow_unix_sockets=True)
        libc = ctypes.CDLL(None, use_errno=True)
        socket.socketpair()                                  # unix sockets stay (DataLoader workers)
        socket.socket(socket.AF_UNIX).close()
        for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
            try:
                socket.socket(fam, socket.SOCK_DGRAM); print("OPEN", fam)
            except PermissionError:
                print("denied socket")
        try:
            subprocess.run(["/bin/true"]); print("OPEN exec")
        except PermissionError:
            print("denied exec")
        for name, call in (("ptrace", lambda: libc.ptrace(16, os.getppid(), None, None)),
                           ("unshare", lambda: libc.unshare(0x10000000)),
                           ("clone-newuser", lambda: libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)),
                           ("io_uring", lambda: libc.syscall(425, 1, None)),
                           ("bpf", lambda: libc.syscall(321, 0, None, 0)),
                           ("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))):
            rc = call()
            print(("denied " if rc == -1 and ctypes.get_errno() == 1 else f"OPEN rc={rc} ") + name)
        pid = os.fork()                                      # plain fork and threads still work
        if pid == 0:
            os._exit(7)
        print("fork", os.waitpid(pid, 0)[1] >> 8)
    """)
    assert out.returncode == 0, out.stderr
    assert "OPEN" not in out.stdout, out.stdout
    assert out.stdout.count("denied") == 10 and "fork 7" in out.stdout, out.stdout


# ---- classification of scripted launcher reports (no processes) ----

def _trial(tmp_path, err: str | None = None) -> Path:
    (tmp_path / "private").mkdir(exist_ok=True)
    if err is not None:
        (tmp_path / "private" / "error.json").write_text(err)
    return tmp_path


@pytest.mark.parametrize("rep, err, bwrap, want", [
    ({"timed_out": True, "rc": None, "signal": 9}, None, False, "timeout"),
    ({"rc": 128 + signal.SIGXCPU}, None, True, "cpu_limit"),
    ({"signal": signal.SIGKILL, "cpu_s": 10.2}, None, False, "cpu_limit"),
    ({"signal": signal.SIGKILL, "cpu_s": 1.0, "oom_kills": 1}, None, False, "memory_limit"),
    ({"rc": 1}, '{"type": "MemoryError", "message": ""}', True, "memory_limit"),
    ({"rc": 1, "pids_max_hits": 40}, '{"type": "BlockingIOError", "message": "[Errno 11]"}', True, "pids_limit"),
    ({"rc": 128 + signal.SIGSEGV}, None, True, "crashed"),
    ({"rc": 1}, '{"type": "ValueError", "message": "bad"}', True, "failed"),
    ({"rc": 1}, '{"type": "LeftoverProcesses", "message": "1 left"}', True, "leftover_processes"),
    ({"rc": 1}, "not json at all", True, "failed"),
    ({"rc": 0, "leftovers_killed": 2}, None, False, "leftover_processes"),
    ({"rc": 0}, None, True, "invalid_output"),  # exited 0 but wrote nothing
])
def test_classify_trusts_the_launcher_first(tmp_path, rep, err, bwrap, want):
    rep = {"rc": None, "signal": None, "cpu_s": 0.0, **rep}
    status, reason, preds, losses, _, seed = _classify(rep, SandboxLimits(), 8192, 10.0, _trial(tmp_path, err), {0: 5},
                                                       bwrap, 30)
    assert status == want and status in STATUSES and reason and preds is None and seed == 0


def test_classify_refuses_a_pickle_in_the_result_file(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/ran",))

    _trial(tmp_path)
    (tmp_path / "private" / "out.bin").write_bytes(pickle.dumps({"preds": Boom()}))
    status, reason, *_ = _classify({"rc": 0}, SandboxLimits(), 8192, 10.0, tmp_path, {0: 5}, True, 30)
    assert status == "invalid_output" and "plain arrays only" in reason
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("head, body, want", [
    ({"dtype": "float32", "shape": [5], "losses": 1}, np.full(5, 0.25, "<f4").tobytes() + np.array([[0, 0.7]], "<f8").tobytes(),
     "ok"),
    ({"dtype": "float64", "shape": [5, 1], "losses": 0}, np.full(5, 0.5, "<f8").tobytes(), "ok"),
    ({"dtype": "float32", "shape": [5], "losses": 0}, np.full(6, 0.5, "<f4").tobytes(), "size does not match"),
    ({"dtype": "int64", "shape": [5], "losses": 0}, np.zeros(5, "<i8").tobytes(), "plain arrays only"),
    ({"dtype": "float32", "shape": [4], "losses": 0}, np.full(4, 0.5, "<f4").tobytes(), "shape (5,)"),
    ({"dtype": "float32", "shape": [5], "losses": 0}, np.array([0.1, 0.2, np.nan, 0.4, 0.5], "<f4").tobytes(),
     "non-finite"),
    ({"dtype": "float32", "shape": [5], "losses": 0}, np.full(5, 1.5, "<f4").tobytes(), "in [0, 1]"),
])
def test_result_record_is_parsed_strictly(tmp_path, head, body, want):
    from aar_ray.sandbox.runner import RESULT_FORMAT, _load_result

    f = tmp_path / "out.bin"
    f.write_bytes(json.dumps({"format": RESULT_FORMAT, "seeds": [{"seed": 7, **head}]}).encode() + b"\n" + body)
    preds, losses, problem, _, seed = _load_result(f, {7: 5})
    if want == "ok":
        assert problem is None and preds[7].shape == (5,) and preds[7].dtype == torch.float32 and seed is None
        assert losses == {7: [(0, 0.7)] if head["losses"] else []}
    else:
        assert preds == {} and want in problem, problem


def _two_seeds(first: np.ndarray, second: np.ndarray, order=(0, 1)) -> bytes:
    seeds = [{"seed": s, "dtype": "float32", "shape": list(a.shape), "losses": 1} for s, a in zip(order, (first, second))]
    loss = np.array([[0, 0.5]], "<f8").tobytes()
    return json.dumps({"format": "aar-preds-v2", "seeds": seeds}).encode() + b"\n" + first.astype("<f4").tobytes() \
        + loss + second.astype("<f4").tobytes() + loss


def test_multi_seed_record_names_the_invalid_seed(tmp_path):
    from aar_ray.sandbox.runner import _classify, _load_result

    f = tmp_path / "out.bin"
    f.write_bytes(_two_seeds(np.full(5, 0.25), np.full(4, 0.5)))
    preds, _, problem, _, seed = _load_result(f, {0: 5, 1: 5})
    assert seed == 1 and "shape (5,)" in problem and preds == {}
    f.write_bytes(_two_seeds(np.full(5, 0.25), np.full(5, 0.5)))
    preds, losses, problem, _, seed = _load_result(f, {0: 5, 1: 5})
    assert problem is None and set(preds) == {0, 1} and losses[1] == [(0, 0.5)]
    assert "not a aar-preds-v2 record of seeds [1, 0]" in _load_result(f, {1: 5, 0: 5})[2]  # order matters
    assert "of seeds [0, 1, 2]" in _load_result(f, {0: 5, 1: 5, 2: 5})[2]  # a missing seed too
    _trial(tmp_path, '{"type": "ValueError", "message": "boom", "seed": 2}')
    (tmp_path / "private" / "progress.log").write_text("seed 0\nseed 1\n")
    assert _classify({"rc": 1}, SandboxLimits(), 8192, 10.0, tmp_path, {0: 5, 1: 5, 2: 5}, True, 30)[5] == 2
    (tmp_path / "private" / "error.json").unlink()
    rep = {"timed_out": True, "rc": None, "signal": 9}
    status, reason, *_, seed = _classify(rep, SandboxLimits(), 8192, 10.0, tmp_path, {0: 5, 1: 5, 2: 5}, True, 30)
    assert status == "timeout" and seed == 1 and "for all 3 seeds together" in reason


# ---- this machine ----

def test_all_layers_available_on_a_root_debian_host():
    h = host()
    if os.geteuid() != 0:
        pytest.skip("privilege drop and cgroups need root")
    assert h.uid not in (None, 0) and h.user
    assert h.bwrap, h.bwrap_note  # .ci/apt/sandbox.txt installs bubblewrap
    assert h.landlock_abi >= 6 and h.seccomp and h.cgroup and h.stage


def test_bwrap_probe_reports_why_it_cannot_be_used(monkeypatch, tmp_path):
    from aar_ray.sandbox import runner

    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(runner.shutil, "which", lambda name: str(fake) if name == "bwrap" else None)
    path, note = runner._probe_bwrap(None, None)
    assert path is None and "uid map: Permission denied" in note
    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    assert runner._probe_bwrap(None, None) == (None, "bwrap not installed (Debian package bubblewrap)")


def test_required_layers_are_checked_before_anything_runs(tmp_path):
    from aar_ray.config import ProbeConfig
    from aar_ray.sandbox import run_method_sandboxed

    m = tmp_path / "m.py"
    m.write_text("def run(ctx):\n    raise SystemExit('must not run')\n")
    (tmp_path / "student").mkdir()
    inputs = {k: torch.zeros(2, 3, dtype=torch.long) for k in ("train_ids", "train_mask", "eval_ids", "eval_mask")}
    inputs["weak_labels"] = torch.zeros(2)
    r = run_method_sandboxed(m, tmp_path / "student", inputs, probe=ProbeConfig(), seed=0, timeout_s=5,
                             limits=SandboxLimits(use_bwrap=False, use_seccomp=False, require=("bwrap", "seccomp")))
    assert r.status == "sandbox_error" and "['bwrap', 'seccomp']" in r.reason and r.wall_s < 5


# ---- failing closed: which layers a campaign requires ----

def _host(**changes):
    from dataclasses import replace

    from aar_ray.sandbox.runner import Host

    root = Host(uid=999, gid=995, user="aar-sandbox", bwrap="/usr/bin/bwrap", bwrap_note="ok", landlock_abi=7,
                seccomp=True, cgroup=True, stage=True)
    return replace(root, **changes)


POD = dict(uid=None, gid=None, user="ray", bwrap=None, bwrap_note="bwrap unusable here: setting up uid map: denied",
           cgroup=False, stage=False)  # a KubeRay pod: uid 1000, no user namespaces


def test_auto_is_the_installations_first_probe_and_a_weaker_host_refuses(tmp_path, monkeypatch):
    from aar_ray.config import SANDBOX_LAYERS, SandboxConfig
    from aar_ray.sandbox.requirement import SandboxUnavailable, resolve

    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "install"))
    assert resolve(SandboxConfig(), _host()).required == SANDBOX_LAYERS  # recorded by this first probe
    assert json.loads((tmp_path / "install/private/sandbox_layers.json").read_text())["layers"] == list(SANDBOX_LAYERS)
    with pytest.raises(SandboxUnavailable) as err:  # the same installation, later run as an unprivileged user
        resolve(SandboxConfig(), _host(**POD))
    msg = str(err.value)
    assert msg.startswith("this host cannot apply the required sandbox layers uid, cgroup, bwrap (uid: the harness "
                          "runs as ray, not root"), msg
    assert "setting up uid map: denied" in msg and "sandbox_layers.json" in msg
    assert "sandbox.allow_degraded=true" in msg and "sandbox.require=[rlimits,landlock,seccomp,method-runtime]" in msg
    less = resolve(SandboxConfig(allow_degraded=True), _host(**POD))
    assert less.required == ("rlimits", "landlock", "seccomp", "method-runtime")
    assert less.missing == ("uid", "cgroup", "bwrap") and "DEGRADED" in less.describe()
    pod = resolve(SandboxConfig(require=["rlimits", "landlock", "seccomp", "method-runtime"]), _host(**POD))
    assert pod.required == less.required and not pod.missing
    with pytest.raises(SandboxUnavailable, match="layers landlock .*the kernel has no Landlock"):
        resolve(SandboxConfig(require=["landlock", "seccomp"]), _host(**POD, landlock_abi=0))
    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "pod-install"))  # installed in the pod: auto is its layers
    assert resolve(SandboxConfig(), _host(**POD)).required == less.required


@pytest.mark.parametrize("override, needle", [
    ("sandbox.require=[bwrap,nsjail]", "sandbox.require: unknown layers ['nsjail']"),
    ("sandbox.require=[auto,uid]", "or [auto] alone"),
    ("trial.max_retries=3", "trial.max_retries is not used here: re-runs after the harness's faults"),
])
def test_sandbox_and_retry_settings_are_checked(override, needle):
    from aar_ray.config import CampaignConfig, ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(CampaignConfig, None, [override])


def test_an_unprivileged_user_cannot_start_what_requires_root(tmp_path):
    """Run as `nobody` (as the KubeRay image runs as uid 1000): a campaign requiring the uid drop and
    cgroups refuses before anything starts, and so does `aar trial`, each saying how to accept less."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as nobody")
    work = Path(tempfile.mkdtemp(prefix="aar-nobody-"))
    os.chmod(work, 0o777)
    root = Path(__file__).resolve().parents[1]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(root), "AAR_CACHE_DIR": str(work / "cache"),
           "AAR_RUNS_DIR": str(work / "runs"), "AAR_MLFLOW_DIR": str(work / "mlflow"), "HF_HUB_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "HOME": str(work)}
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-m", "aar_ray"]
    require = "sandbox.require=[uid,rlimits,cgroup,seccomp]"
    try:
        p = subprocess.run([*nobody, "campaign", str(root / "experiments/quick.yaml"), require], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "aar: this host cannot apply the required sandbox layers uid, cgroup" in p.stderr, p.stderr
        assert "sandbox.allow_degraded=true" in p.stderr and not (work / "runs").exists()
        p = subprocess.run([*nobody, "trial", "naive", require, "--json"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert p.returncode == 2 and out["status"] == "sandbox_error", out
        assert out["reason"].startswith("this host cannot apply the required sandbox layers uid, cgroup"), out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_child_that_exited_with_the_trial_is_reaped_not_counted_as_a_leftover():
    """A descendant that exited as the main process did is a zombie when the keeper looks (more so on a
    loaded host): it outlived nothing and is reaped; a live one is killed and counted. (Counting zombies
    failed the naive baseline as leftover_processes now and then: found by `aar replay`.)"""
    import time

    from aar_ray.sandbox import launch

    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:  # a fresh process: _kill_tree reaps and signals its own children only
        os.close(r)
        zombie = os.fork()
        if zombie == 0:
            os._exit(0)
        while not launch._exited(zombie):
            time.sleep(0.01)
        live = os.fork()
        if live == 0:
            time.sleep(60)
            os._exit(0)
        exiting = os.fork()
        if exiting == 0:  # on its way out when the trial's process ends (a namespace's init, on a busy host)
            time.sleep(0.3)
            os._exit(0)
        launch._settle(None, launch.LEFTOVER_GRACE_S)  # waits for `exiting`, not for `live`
        os.write(w, f"{launch._kill_tree(None, None)} {int(os.path.exists(f'/proc/{zombie}'))}".encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(helper, 0)
    assert out == "1 0"  # the live child killed and counted; the zombie and the one that exited late reaped
