"""The adversarial suite: every planted method in tests/adversarial/ fails with its specific reason,
the attack leaves no trace on the host, and an honest trial running at the same time is unharmed.

All planted methods run once, concurrently, in a module fixture (the pre-check off, so the layers
alone must hold); each then gets its own assertions.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adversarial import support  # noqa: E402

import aar_ray  # noqa: E402
from aar_ray.config import ProbeConfig  # noqa: E402
from aar_ray.sandbox import SandboxLimits, host, run_method_sandboxed  # noqa: E402
from aar_ray.sandbox.precheck import check  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PKG = Path(aar_ray.__file__).resolve().parent
SECRET = "AARSECRET" + os.urandom(6).hex()
BASE = SandboxLimits(pids=32, scratch_mb=64, fsize_mb=256)
SPECIAL = {  # planted method -> (limits, timeout_s): the default timeout is generous for a loaded 2-core box
    "infinite_loop.py": (replace(BASE, cpu_s=4), 240),
    "sleep_past_timeout.py": (BASE, 10),
    "memory_touch_bomb.py": (replace(BASE, oom_mb=700), 240),
}
HONEST = '''
import os
import torch

def run(ctx):
    x = ctx.features("train", kind="hidden", layer=-1)          # (N, D)
    torch.save(x, os.path.join(os.getcwd(), "feats.pt"))       # scratch is writable
    with open("/tmp/note.txt", "w") as f:                      # so is a private /tmp
        f.write("ok")
    probe = ctx.fit_probe(x, ctx.weak_labels, standardize=True)
    return probe(ctx.features("eval", kind="hidden", layer=-1))
'''


class Servers:
    """TCP, UDP and unix-socket listeners on the host; they record anything that reaches them."""

    def __init__(self, tmp: Path):
        self.got: list[str] = []
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.tcp.settimeout(0.2)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        tmp.mkdir(mode=0o777)
        os.chmod(tmp, 0o777)
        self.unix_path = str(tmp / "daemon.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen()
        self.unix.settimeout(0.2)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in (self.tcp, self.udp, self.unix)]
        for t in self.threads:
            t.start()

    def _serve(self, s: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                if s.type == socket.SOCK_DGRAM:
                    self.got.append(s.recvfrom(1024)[0].decode(errors="replace"))
                else:
                    conn, _ = s.accept()
                    self.got.append("connection")
                    conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        for s in (self.tcp, self.udp, self.unix):
            s.close()


def _daemons() -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and Path(f"/proc/{p}/comm").read_text().strip() == "aardaemon":
                out.append(int(p))
        except OSError:
            pass
    return out


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """Run every planted method (and one honest method) concurrently; collect results and host state."""
    tmp = tmp_path_factory.mktemp("arena")
    student = support.make_student(tmp / "student")
    secret_dir = tmp / "scorer"
    secret_dir.mkdir(mode=0o700)
    label_file = secret_dir / "labels.pt"
    label_file.write_text(SECRET)
    os.chmod(label_file, 0o600)
    host_dir = tmp / "host"
    host_dir.mkdir(mode=0o777)
    os.chmod(host_dir, 0o777)
    marker = tmp / "marker"
    servers = Servers(tmp / "sock")
    os.environ["AAR_TEST_SECRET"] = SECRET  # the harness's own environment must not reach a trial
    guarded = [PKG / "sandbox" / "runner.py", PKG / "w2s" / "engine.py", label_file]
    before = _digest(guarded)
    values = {"LABEL_PATH": label_file, "HARNESS_PID": os.getpid(), "SECRET": SECRET, "TCP_PORT": servers.tcp.getsockname()[1],
              "UDP_PORT": servers.udp.getsockname()[1], "UNIX_SOCK": servers.unix_path, "HOST_DIR": host_dir,
              "PKG_DIR": PKG, "MARKER": marker}
    rendered = tmp / "methods"
    rendered.mkdir()
    jobs = {p.name: support.render(p, rendered, values) for p in support.planted()}
    honest = rendered / "honest_during_attacks.py"
    honest.write_text(HONEST)
    jobs[honest.name] = honest
    inputs = support.make_inputs()

    def one(name: str):
        limits, timeout = SPECIAL.get(name, (BASE, 240))
        return name, run_method_sandboxed(jobs[name], student, inputs, probe=ProbeConfig(epochs=2), seed=0,
                                          timeout_s=timeout, limits=limits, check_source=False,
                                          memory_mb=6144, threads=1)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(one, sorted(jobs, key=lambda n: n != honest.name)))
    wall = time.monotonic() - t0
    time.sleep(0.2)
    state = {"daemons": _daemons(), "got": list(servers.got), "after": _digest(guarded), "before": before,
             "marker": marker.exists(), "host_dir": sorted(os.listdir(host_dir)), "wall": wall}
    servers.close()
    os.environ.pop("AAR_TEST_SECRET", None)
    return results, state


@pytest.mark.parametrize("name", [p.name for p in support.planted()])
def test_planted_method_fails_with_its_reason(arena, name):
    results, _ = arena
    if name == "x32_syscall.py" and platform.machine() != "x86_64":
        pytest.skip("the x32 syscall ABI exists on x86_64 only")
    want_status, want_reason = support.expectation(support.HERE / name)
    r = results[name]
    assert r.status == want_status, f"{name}: {r.status}: {r.reason}\n{r.log_tail[-800:]}"
    assert re.search(want_reason, r.reason), f"{name}: reason {r.reason!r} does not match {want_reason!r}"
    assert r.preds == {}
    assert SECRET not in r.reason + r.log_tail


def test_every_layer_applied_to_every_planted_trial(arena):
    results, _ = arena
    h = host()
    if os.geteuid() != 0 or h.bwrap is None:
        pytest.skip("all layers apply only as root with working bubblewrap (CI on Debian)")
    for name, r in results.items():
        kinds = {layer.split("(")[0].split(":")[0] for layer in r.layers}
        if r.status == "timeout" and "landlock" not in kinds:
            continue  # killed before the child reported (not expected, but not a layer failure)
        assert {"uid", "rlimits", "bwrap", "cgroup", "subreaper", "landlock", "seccomp"} <= kinds, (name, r.layers)


def test_attacks_leave_no_trace_on_the_host(arena):
    _, state = arena
    assert state["got"] == [], "a planted method reached a host server"
    assert state["daemons"] == [], "a double-forked daemon outlived its trial"
    assert state["after"] == state["before"], "harness, package or label files changed"
    assert not state["marker"], "a pickle payload ran in the harness"
    assert state["host_dir"] == [], "a planted method wrote outside its scratch"


def test_honest_trial_unharmed_by_concurrent_attacks(arena):
    results, state = arena
    r = results["honest_during_attacks.py"]
    assert r.status == "ok", f"{r.status}: {r.reason}\n{r.log_tail[-800:]}"
    assert r.preds[0].shape == (support.N_EVAL,) and len(r.losses[0]) > 0
    print(f"adversarial arena: {len(results)} trials in {state['wall']:.1f}s")
    for name, res in sorted(results.items(), key=lambda kv: -kv[1].wall_s):
        print(f"  {res.wall_s:6.1f}s {res.cpu_s:6.1f} cpu-s  {name:<28} {res.status:<18} {res.reason[:90]}")


def test_precheck_rejects_planted_methods_with_a_readable_reason(tmp_path):
    # a courtesy layer: the static check names the line. Resource and output-validation cases
    # (NaN, wrong shape, sleeping, spinning, allocating, writing to a /tmp path) need not trip it.
    benign = {"return_nan.py", "wrong_shape.py", "sleep_past_timeout.py", "infinite_loop.py", "memory_bomb.py",
              "memory_touch_bomb.py", "fill_disk.py", "write_outside_scratch.py",
              "read_package_source.py"}  # a plain path outside every known prefix: the mounts stop it
    values = {"LABEL_PATH": "/var/lib/aar-scorer/labels.pt", "HARNESS_PID": 4242, "SECRET": "s", "TCP_PORT": 1,
              "UDP_PORT": 2, "UNIX_SOCK": "/run/x.sock", "HOST_DIR": "/tmp/x", "MARKER": "/tmp/m",
              # wherever the checkout lives (CI clones outside every well-known prefix)
              "PKG_DIR": "/checkout/src/aar_ray"}
    for p in support.planted():
        findings = check(support.render(p, tmp_path, values).read_text())
        if p.name in benign:
            continue
        assert findings, f"{p.name} passed the pre-check"
        assert all(re.match(r"line \d+: ", f) for f in findings), findings
