"""A multi-node Ray cluster on loopback: one head and N worker nodes with logical GPUs.

    python cluster/local.py up [--workers 2] [--gpus-per-worker 4] [--dir /tmp/aarc-$UID]
    python cluster/local.py status | down | kill-node w1

Every node is its own `ray start --block` process group with its own --temp-dir under --dir, and
the state file (<dir>/cluster.json) records those groups. `down` and `kill-node` signal only those
groups (plus stragglers whose command line names our --dir), never `ray stop`, so Ray clusters of
other users on the same machine are left alone.

The head gets no CPUs or GPUs, so all work lands on worker nodes and killing one is a real node loss.
GCS health checks are tightened (about 1.5 s to declare a node dead instead of ~30 s) so that
node-loss tests and retries finish in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

HOST = "127.0.0.1"
# Why these numbers: a dead node is declared after period x threshold (~1.5 s); the initial delay
# keeps slow starts on a loaded 2-core box from being mistaken for deaths.
FAST_FAILURE_ENV = {
    "RAY_health_check_initial_delay_ms": "2000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
# Every node: no token auth. The cluster listens on loopback only, and drivers that pass an explicit
# address never send a token (Ray 2.60 enables token auth only for auto-detected clusters), so a
# token-mode head would reject our own worker nodes and drivers.
NODE_ENV = {"RAY_AUTH_MODE": "disabled"}
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is ~75 MB; the default (30% of RAM per node) is far too big here


@dataclass
class Node:
    name: str
    pgid: int
    log: str
    num_cpus: int
    num_gpus: int


@dataclass
class ClusterState:
    address: str
    dir: str
    nodes: list[Node]

    def save(self) -> None:
        path = Path(self.dir) / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=2))

    @staticmethod
    def load(root: Path) -> Optional["ClusterState"]:
        path = root / "cluster.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return ClusterState(address=raw["address"], dir=raw["dir"], nodes=[Node(**n) for n in raw["nodes"]])


def default_dir() -> Path:
    # Short on purpose: Ray's unix socket paths live under it and must stay below ~107 characters.
    return Path(os.environ.get("AAR_CLUSTER_DIR", f"/tmp/aarc-{os.getuid()}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _start_node(root: Path, name: str, args: list[str], num_cpus: int, num_gpus: int,
                extra_env: dict[str, str]) -> Node:
    temp_dir = root / name
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}.log"
    cmd = [sys.executable, __file__, "_ray-start", "--block", f"--node-ip-address={HOST}", f"--temp-dir={temp_dir}",
           f"--node-name={name}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
           f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats",
           "--min-worker-port=0", "--max-worker-port=0",
           f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args]
    with open(log, "wb") as out:
        # A new session makes the node one process group, so it can be stopped (or crashed) as a unit.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **NODE_ENV, **extra_env})
    return Node(name=name, pgid=proc.pid, log=str(log), num_cpus=num_cpus, num_gpus=num_gpus)


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"Ray head did not open {HOST}:{port} within {timeout_s:.0f} s")


def alive_nodes(address: str) -> list[dict]:
    """Ray's view of the live nodes (connects as a short-lived driver)."""
    import ray

    connect(address, log_to_driver=False, logging_level="ERROR")
    try:
        return [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()


def _wait_nodes(address: str, expected: int, timeout_s: float) -> None:
    import ray

    connect(address, log_to_driver=False, logging_level="ERROR")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(n["Alive"] for n in ray.nodes()) >= expected:
                return
            time.sleep(0.3)
    finally:
        ray.shutdown()
    raise TimeoutError(f"only some of {expected} Ray nodes came up within {timeout_s:.0f} s")


def up(root: Path, workers: int, gpus_per_worker: int, cpus_per_worker: int, timeout_s: float = 120.0) -> ClusterState:
    """Start head + workers and return once Ray sees all of them alive."""
    if ClusterState.load(root) is not None:
        raise RuntimeError(f"a cluster is already recorded in {root}/cluster.json; run `down` first")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    state = ClusterState(address=f"{HOST}:{port}", dir=str(root), nodes=[])
    try:
        head_args = ["--head", f"--node-ip-address={HOST}", f"--port={port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}"]
        state.nodes.append(_start_node(root, "head", head_args, 0, 0, FAST_FAILURE_ENV))
        state.save()  # saved at once, so `down` can clean up even if a later step fails
        _wait_port(port, timeout_s)
        for i in range(1, workers + 1):
            state.nodes.append(_start_node(root, f"w{i}", [f"--address={state.address}"],
                                           cpus_per_worker, gpus_per_worker, {}))
            state.save()
        _wait_nodes(state.address, workers + 1, timeout_s)
    except BaseException:
        down(root)
        raise
    return state


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_groups(pgids: list[int], grace_s: float = 3.0) -> None:
    """SIGTERM the nodes' process groups together, SIGKILL what is left after grace_s.

    A SIGTERMed `ray start --block` drains for up to 30 s; nothing here needs draining, so we cap it.
    """
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_group_alive(p) for p in pgids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pgid in pgids:
        _signal_group(pgid, signal.SIGKILL)


def _pids_mentioning(text: str) -> list[int]:
    """Our stragglers: processes whose command line names our cluster dir (each node's --temp-dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_node(root: Path, name: str) -> None:
    """Crash one node: SIGKILL its whole process group, no goodbye to the GCS."""
    state = ClusterState.load(root)
    if state is None:
        raise RuntimeError(f"no cluster recorded in {root}")
    node = next((n for n in state.nodes if n.name == name), None)
    if node is None:
        raise ValueError(f"no node {name!r}; nodes: {[n.name for n in state.nodes]}")
    _signal_group(node.pgid, signal.SIGKILL)
    for pid in _pids_mentioning(str(Path(root) / name) + "/"):
        _kill_pid(pid)


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def down(root: Path) -> None:
    """Stop every node we started, then any straggler naming our dir, then remove our temp dirs."""
    state = ClusterState.load(root)
    if state is not None:
        stop_groups([node.pgid for node in state.nodes])
    # SIGKILLed processes take a moment to go, and a raylet may have forked a worker just before it
    # died: sweep until none is left (bounded), so `down` returns with the machine clean
    deadline = time.monotonic() + 15.0
    while (left := _pids_mentioning(str(root) + "/")) and time.monotonic() < deadline:
        for pid in left:
            _kill_pid(pid)
        time.sleep(0.2)
    if state is not None:
        for node in state.nodes:
            shutil.rmtree(Path(root) / node.name, ignore_errors=True)
        (Path(root) / "cluster.json").unlink(missing_ok=True)


def status(root: Path) -> int:
    state = ClusterState.load(root)
    if state is None:
        print(f"no cluster recorded in {root}")
        return 1
    print(f"address {state.address}  (export RAY_ADDRESS={state.address})")
    for n in state.nodes:
        print(f"  {n.name:5s} pgid={n.pgid:<7d} {'up' if _group_alive(n.pgid) else 'DOWN':4s} "
              f"cpus={n.num_cpus} gpus={n.num_gpus} log={n.log}")
    try:
        nodes = alive_nodes(state.address)
    except Exception as err:  # the head is gone: report, do not crash the status command
        print(f"  ray: unreachable ({type(err).__name__})")
        return 1
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    print(f"  ray: {len(nodes)} live nodes, {gpus:g} GPUs")
    return 0


def keep_loopback() -> None:
    """Make this process's Ray keep 127.0.0.1 as 127.0.0.1.

    Ray 2.60 rewrites loopback hosts (in --node-ip-address, --address and ray.init's address) to the
    host's outward IP so that other machines can reach the node. This cluster must be reachable from
    this machine only, so every node and every driver of it patches that one resolver first.
    """
    from ray._private import services

    resolve = services.resolve_ip_for_localhost
    if getattr(resolve, "_aar_loopback", False):
        return
    patched = lambda host: HOST if services.is_localhost(host) else resolve(host)  # noqa: E731
    patched._aar_loopback = True  # type: ignore[attr-defined]
    services.resolve_ip_for_localhost = patched


def connect(address: str, **init_kwargs: object) -> None:
    """ray.init as a driver of a cluster started by `up` (any process, not only this script)."""
    import ray
    from ray._raylet import Config

    keep_loopback()
    # Match the cluster's auth mode. A earlier local `ray.init()` in this process (or its parent)
    # sets RAY_AUTH_MODE=token in os.environ; a token-mode driver on this no-auth cluster gets its
    # actors killed at creation. Config.initialize re-reads the mode, as Ray does when it sets it.
    os.environ.update(NODE_ENV)
    Config.initialize("")
    ray.init(address=address, **init_kwargs)


def ray_start_on_loopback(argv: list[str]) -> None:
    """`ray start ARGV` in this process, with loopback kept (see keep_loopback)."""
    from ray.scripts.scripts import main as ray_cli

    keep_loopback()
    sys.argv = ["ray", "start", *argv]
    ray_cli()


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_ray-start"]:  # how up() launches each node (see ray_start_on_loopback)
        ray_start_on_loopback(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status", "kill-node"])
    p.add_argument("node", nargs="?", help="node name for kill-node (w1, w2, ...)")
    p.add_argument("--dir", type=Path, default=default_dir(), help="state, logs and Ray temp dirs (short path)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpus-per-worker", type=int, default=4, help="logical GPUs per worker node")
    p.add_argument("--cpus-per-worker", type=int, default=1)
    a = p.parse_args(argv)
    if a.command == "up":
        state = up(a.dir, a.workers, a.gpus_per_worker, a.cpus_per_worker)
        print(f"up: {len(state.nodes)} nodes; export RAY_ADDRESS={state.address}")
        return 0
    if a.command == "down":
        down(a.dir)
        print(f"down: {a.dir}")
        return 0
    if a.command == "kill-node":
        if not a.node:
            p.error("kill-node needs a node name")
        kill_node(a.dir, a.node)
        return 0
    return status(a.dir)


if __name__ == "__main__":
    sys.exit(main())
