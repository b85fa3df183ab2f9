"""Without bubblewrap (a Kubernetes pod without user namespaces): Landlock, seccomp, the uid and
rlimits must still stop the attacks, and each of Landlock and seccomp must stop them on its own.

Here the label file is world-readable and the trial runs in the host's mount, pid and network
namespaces, so only the layers under test stand between the method and the secret.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adversarial import support  # noqa: E402

from aar_ray.config import ProbeConfig  # noqa: E402
from aar_ray.sandbox import SandboxLimits, host, run_method_sandboxed  # noqa: E402
from aar_ray.sandbox.landlock import abi_version  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.skipif(abi_version() < 4, reason="needs Landlock ABI >= 4 (TCP rules)")

ATTACK = '''
import os, socket, torch

def run(ctx):
    tried = []
    for path in ("{label}", "/proc/1/environ", "/proc/{harness}/environ", "/etc/hostname"):
        try:
            data = open(path, "rb").read()
            if b"{secret}" in data or path == "/etc/hostname":
                return torch.full((len(ctx.eval_ids),), 0.5)
        except OSError as e:
            tried.append(f"{{path}}: {{type(e).__name__}}")
    try:
        os.listdir("/proc")
        return torch.full((len(ctx.eval_ids),), 0.5)
    except OSError as e:
        tried.append(f"/proc: {{type(e).__name__}}")
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"LEAK")
        return torch.full((len(ctx.eval_ids),), 0.5)
    except OSError as e:
        tried.append(f"tcp: {{type(e).__name__}}")
    raise PermissionError("all denied: " + "; ".join(tried))
'''


@pytest.fixture(scope="module")
def world():
    # a world-traversable directory: without bwrap the sandbox uid reads the student in place
    d = Path(tempfile.mkdtemp(prefix="aar-fallback-"))
    os.chmod(d, 0o755)
    student = support.make_student(d / "student")
    secret = "AARSECRET" + os.urandom(6).hex()
    label = d / "labels.txt"
    label.write_text(secret)
    os.chmod(label, 0o644)  # readable by anyone: only the sandbox layers protect it here
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    got: list[str] = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            got.append(conn.recv(100).decode())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    os.environ["AAR_TEST_SECRET"] = secret
    method = d / "attack.py"
    method.write_text(ATTACK.format(label=label, harness=os.getpid(), secret=secret, port=srv.getsockname()[1]))
    yield student, method, got, secret
    os.environ.pop("AAR_TEST_SECRET", None)
    srv.close()
    shutil.rmtree(d, ignore_errors=True)


def test_each_layer_alone_stops_file_proc_and_network_attacks(world):
    student, method, got, secret = world
    cases = {
        "landlock+seccomp": SandboxLimits(use_bwrap=False),
        "landlock only": SandboxLimits(use_bwrap=False, use_seccomp=False),
    }
    if os.geteuid() == 0:  # uid drop and rlimits alone do not stop a world-readable file: Landlock must
        cases["seccomp only"] = SandboxLimits(use_bwrap=False, use_landlock=False)

    def one(item):
        name, lim = item
        return name, run_method_sandboxed(method, student, support.make_inputs(), probe=ProbeConfig(epochs=2), seed=0,
                                          timeout_s=240, limits=lim, check_source=False,
                                          memory_mb=6144)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(one, cases.items()))
    for name in ("landlock+seccomp", "landlock only"):
        r = results[name]
        assert r.status == "failed", (name, r.status, r.reason, r.log_tail[-600:])
        assert re.search(r"PermissionError: all denied: .*labels.txt: PermissionError.*/proc: PermissionError.*"
                         r"tcp: PermissionError", r.reason), (name, r.reason)
        assert not any(layer.startswith("bwrap") for layer in r.layers)
        assert any(layer.startswith("landlock") for layer in r.layers)
    assert any(layer.startswith("seccomp") for layer in results["landlock+seccomp"].layers)
    assert not any(layer.startswith("seccomp") for layer in results["landlock only"].layers)
    if "seccomp only" in results:
        # seccomp alone cannot stop a file read (that is Landlock's and bwrap's job): the trial
        # reads the world-readable file and "succeeds". This documents why the layers stack.
        assert results["seccomp only"].status == "ok", results["seccomp only"].reason
    assert got == [], "a trial reached the host TCP server"
    assert all(secret not in r.reason + r.log_tail for r in results.values())


def test_honest_method_runs_without_bwrap(world):
    student, _, _, _ = world
    naive = Path(__file__).resolve().parent.parent / "aar_ray" / "w2s" / "methods" / "naive.py"
    r = run_method_sandboxed(naive, student, support.make_inputs(), probe=ProbeConfig(epochs=2), seed=0,
                             timeout_s=300, limits=SandboxLimits(use_bwrap=False), memory_mb=6144)
    assert r.status == "ok", (r.reason, r.log_tail[-800:])
    assert any(layer.startswith("landlock") for layer in r.layers) and any(l.startswith("seccomp") for l in r.layers)
    if os.geteuid() == 0 and host().cgroup:
        assert any(layer.startswith("cgroup") for layer in r.layers)
