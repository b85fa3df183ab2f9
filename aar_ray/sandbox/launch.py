"""The trusted launcher: `python -I -m aar_ray.sandbox.launch` reads a JSON spec on stdin, runs one
sandboxed command and prints one JSON report on stdout.

It is a separate, single-threaded process so that fork-then-setup is safe (the harness may be a
multi-threaded Ray worker) and so that it can be a subreaper without changing the harness.

It is two processes, so that nothing the trial started outlives the harness, however the harness
ends (the trial's own timeout, the pool's timeout or cancel, `ray job stop`, a killed worker or node):
  anchor  the harness's child: dies with it (parent-death signal SIGKILL). Ray kills a worker's
          direct children with SIGKILL when it exits, so the anchor holds no state worth cleaning up;
  keeper  the anchor's child, which runs the steps below; the anchor's death reaches it as SIGTERM
          (parent-death signal), on which it kills every process of the trial (process group, cgroup,
          and the orphans reparented to it as subreaper) and exits. The sandboxed command dies with the
          keeper too (parent-death signal SIGKILL, set after the uid drop, which would clear it); under
          bubblewrap its pid namespace, and every process in it, dies with it.
Steps of the keeper:
  1. make itself a child subreaper; as root, create per-trial cgroups (memory, pids, cpu);
  2. fork; in the child: new session, join the cgroups, (as root) stage the read-only trees in a
     private mount namespace so that the unprivileged uid can bind them even from a 0700 home,
     point fds 0-6 at files it opened itself, set rlimits, drop to the sandbox uid, close every
     other fd and exec the command with an empty environment;
  3. wait with a wall-clock deadline, then SIGKILL every leftover descendant (cgroup members and
     orphans reparented to it) and report exit status, CPU time, limit hits and leftovers.
The sandboxed process can signal none of this: it runs as another uid, in other namespaces.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
RLIMITS = {"as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "nofile": resource.RLIMIT_NOFILE,
           "fsize": resource.RLIMIT_FSIZE, "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}
CGROUP_ROOT = Path("/sys/fs/cgroup")
_libc = ctypes.CDLL(None, use_errno=True)
_ended = False  # set by SIGTERM in the keeper: the harness is gone, so the trial ends now


def die_with(parent: int, sig: int) -> bool:
    """Have the kernel send `sig` when `parent` exits; False if it has exited already."""
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return os.getppid() == parent


def _on_sigterm(*_: object) -> None:
    global _ended
    _ended = True


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {src} on {dst}")


# ---- cgroups (root only): v2 where the unified hierarchy has the controllers, else v1 ----

def _sweep(parent: Path) -> None:
    """Remove empty trial cgroups a killed launcher left behind (rmdir fails on populated ones).

    Only old ones: a concurrent launcher's new cgroup is empty until its child joins.
    """
    for d in parent.glob("t*-*"):
        try:
            if time.time() - d.stat().st_mtime > 3600:
                d.rmdir()
        except OSError:
            pass


class Cgroups:
    """Per-trial cgroups capping memory, pids and CPU; `kill()` empties them."""

    def __init__(self, name: str, memory: int, pids: int, cpus: float):
        self.dirs: dict[str, Path] = {}
        ctrl = CGROUP_ROOT / "cgroup.controllers"
        if ctrl.is_file():
            self.v2 = True
            parent = CGROUP_ROOT / "aar-sandbox"
            parent.mkdir(exist_ok=True)
            have = set(ctrl.read_text().split())
            (CGROUP_ROOT / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in ("memory", "pids", "cpu")
                                                                          if c in have))
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in ("memory", "pids", "cpu")
                                                                   if c in have))
            _sweep(parent)
            d = parent / name
            d.mkdir()
            self.dirs = {"unified": d}
            (d / "memory.max").write_text(str(memory))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(pids))
            (d / "cpu.max").write_text(f"{int(cpus * 100000)} 100000")
            return
        self.v2 = False
        for c in ("memory", "pids", "cpu", "cpuacct"):
            if not (CGROUP_ROOT / c / "cgroup.procs").is_file():
                continue
            d = CGROUP_ROOT / c / "aar-sandbox" / name
            d.parent.mkdir(exist_ok=True)
            _sweep(d.parent)
            d.mkdir()
            self.dirs[c] = d
        if "memory" in self.dirs:
            (self.dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory))
        if "pids" in self.dirs:
            (self.dirs["pids"] / "pids.max").write_text(str(pids))
        if "cpu" in self.dirs:
            (self.dirs["cpu"] / "cpu.cfs_period_us").write_text("100000")
            (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
        if not {"memory", "pids"} <= set(self.dirs):
            self.remove()
            raise OSError("cgroup v1 memory and pids controllers are not both mounted")

    def controllers(self) -> list[str]:
        return ["memory", "pids", "cpu"] if self.v2 else sorted(set(self.dirs) - {"cpuacct"})

    def join(self, pid: int) -> None:
        for d in self.dirs.values():
            (d / "cgroup.procs").write_text(str(pid))

    def procs(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            try:
                out |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return out

    def _stat(self, ctrl: str, file: str, key: str) -> int:
        d = self.dirs.get("unified" if self.v2 else ctrl)
        try:
            for line in (d / file).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
        except (OSError, TypeError, ValueError):
            pass
        return 0

    def cpu_s(self) -> float:
        if self.v2:
            return self._stat("cpu", "cpu.stat", "usage_usec") / 1e6
        try:
            return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        except (KeyError, OSError, ValueError):
            return 0.0

    def oom_kills(self) -> int:
        return self._stat("memory", "memory.events" if self.v2 else "memory.oom_control", "oom_kill")

    def pids_max_hits(self) -> int:
        return self._stat("pids", "pids.events", "max")

    def kill(self) -> None:
        if self.v2 and (self.dirs["unified"] / "cgroup.kill").exists():
            (self.dirs["unified"] / "cgroup.kill").write_text("1")
        for p in self.procs():
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # members still exiting
                    time.sleep(0.02)


# ---- the forked child: set up and exec ----

def _private_mounts() -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _bind_ro(src: str, dst: str) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_REC)


def _stage(stage: dict) -> None:
    """Private mount namespace with a tmpfs at stage['dir'] holding read-only binds of the sources.

    bwrap, running as the sandbox uid, then binds them from there: it can reach trees under a 0700
    home (the default pyenv interpreter lives in /root) without any permission change on the host.
    """
    _private_mounts()
    top = stage["dir"]
    _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for src, name in stage["binds"]:
        _bind_ro(src, os.path.join(top, name))


def _blocked_ancestor(path: str) -> str | None:
    """The topmost directory above `path` that others may not traverse (e.g. /root, mode 0700)."""
    parts = os.path.realpath(path).split("/")[1:-1]
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _expose_in_place(paths: list[str]) -> None:
    """Without bwrap: make `paths` reachable by the sandbox uid at their own paths.

    Each directory that blocks traversal is covered, in a private mount namespace, by a tmpfs
    holding read-only binds of just the needed trees: the rest of it (say the rest of /root)
    disappears for the trial instead of opening up.
    """
    _private_mounts()
    by_cover: dict[str, list[tuple[str, int]]] = {}
    for p in paths:
        cover = _blocked_ancestor(p)
        if cover is not None:  # hold the source open: the cover hides its path
            by_cover.setdefault(cover, []).append((os.path.realpath(p), os.open(p, os.O_PATH | os.O_CLOEXEC)))
    for cover in sorted(by_cover, key=len):
        _mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for real, fd in by_cover[cover]:
            _bind_ro(f"/proc/self/fd/{fd}", real)
            os.close(fd)


def _child(spec: dict, cg: Cgroups | None, err_w: int, keeper: int) -> None:
    """Runs in the forked child; never returns (exec or _exit)."""
    try:
        os.setsid()
        if cg is not None:
            cg.join(os.getpid())
        uid, gid = spec.get("uid"), spec.get("gid")
        # fds 0-2 and the protocol fds point at files the launcher opened itself, as root, before
        # any mount hides them. The child writes through them; they stay root-owned 0600.
        files = {0: ("/dev/null", os.O_RDONLY)}
        for fd, path in spec["fds"].items():
            files[int(fd)] = (path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err_w = fcntl.fcntl(err_w, fcntl.F_DUPFD_CLOEXEC, 512)  # out of the way of fds 0..N
        high = {}
        for fd, (p, flags) in files.items():
            o = os.open(p, flags | os.O_CLOEXEC, 0o600)
            high[fd] = fcntl.fcntl(o, fcntl.F_DUPFD_CLOEXEC, 256)
            os.close(o)
        if spec.get("stage"):
            _stage(spec["stage"])
        elif spec.get("expose"):
            _expose_in_place(spec["expose"])
        for fd, o in high.items():
            os.dup2(o, fd, inheritable=True)
            os.close(o)
        for name, (soft, hard) in spec["rlimits"].items():
            resource.setrlimit(RLIMITS[name], (soft, hard))
        if uid is not None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError(f"privilege drop to uid {uid} did not take")
        if not die_with(keeper, signal.SIGKILL):  # after the uid drop, which clears it
            raise OSError("the sandbox launcher exited before the trial started")
        for p in spec.get("check_readable", []):
            if not os.access(p, os.R_OK):
                raise PermissionError(f"sandbox uid {os.getuid()} cannot read {p} (without bubblewrap the trial reads "
                                      "the interpreter, venv, inputs and student at their host paths)")
        os.chdir(spec.get("cwd", "/"))
        os.closerange(max(files) + 1, err_w)
        os.closerange(err_w + 1, 65536)
        os.execve(spec["argv"][0], spec["argv"], spec.get("env", {}))
    except BaseException as e:  # noqa: BLE001 - report any setup failure to the parent, then die
        try:
            os.write(err_w, f"{type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(127)


# ---- the parent: wait, kill leftovers, report ----

LEFTOVER_GRACE_S = 1.0  # how long a descendant may take to finish exiting after the trial's process exited


def _children_of_self() -> set[int]:
    pids: set[int] = set()
    me = os.getpid()
    try:
        for t in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{t}/children") as f:
                pids |= {int(p) for p in f.read().split()}
    except OSError:
        pass
    return pids


def _reap() -> list[tuple[int, int, object]]:
    out = []
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, status, ru))


def _exited(pid: int) -> bool:
    """Whether `pid` is gone or a zombie: a process that has exited (and waits to be reaped) outlived
    nothing, and signalling it succeeds, so it must not count as a leftover."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _live(cg: Cgroups | None) -> set[int]:
    _reap()  # a descendant that exited as the main process did is a zombie here, not a leftover
    return {p for p in _children_of_self() | (cg.procs() if cg else set()) if not _exited(p)}


def _settle(cg: Cgroups | None, grace_s: float) -> None:
    """Give descendants that are already on their way out (a sandbox's namespace init exits just after
    the process it ran) `grace_s` to finish exiting, so that only a process that stays is a leftover."""
    end = time.monotonic() + grace_s
    while _live(cg) and time.monotonic() < end:
        time.sleep(0.02)


def _kill_tree(cg: Cgroups | None, main: int | None) -> int:
    """SIGKILL every remaining live descendant until none is left; returns how many were killed."""
    killed: set[int] = set()
    for _ in range(500):
        pids = _live(cg)
        if main is not None:
            pids.discard(main)
        if not pids:
            break
        if cg is not None:
            cg.kill()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed.add(p)
            except ProcessLookupError:
                pass
        _reap()
        time.sleep(0.01)
    return len(killed)


def _cgroups(spec: dict, report: dict) -> Cgroups | None:
    c = spec.get("cgroup")
    if not c:
        return None
    try:
        cg = Cgroups(f"t{os.getpid()}-{os.urandom(4).hex()}", c["memory"], c["pids"], c["cpus"])
    except OSError as e:
        report["cgroup_error"] = str(e)
        return None
    report["layers"].append("cgroup(" + ",".join(cg.controllers()) + ")")
    return cg


def _refused(spec: dict, cg: Cgroups | None) -> str | None:
    """Why the trial must not start: a required layer that the launcher applies could not apply."""
    need = set(spec.get("require", ()))
    applied = {"cgroup": cg is not None, "uid": spec.get("uid") is not None}
    missing = [n for n, ok in applied.items() if n in need and not ok]
    return f"required sandbox layers could not apply: {missing}" if missing else None


def _wait(pid: int, deadline: float, report: dict) -> int:
    """Wait for the sandboxed command; at the deadline, or when the harness is gone, kill its process
    group. Returns its wait status."""
    while True:
        for p, st, ru in _reap():
            if p == pid:
                report["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 3)
                report["maxrss_mb"] = round(ru.ru_maxrss / 1024, 1)
                return st
        if _ended or time.monotonic() > deadline:
            report["ended_by_harness" if _ended else "timed_out"] = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def launch(spec: dict) -> dict:
    t0 = time.monotonic()
    report: dict = {"rc": None, "signal": None, "timed_out": False, "error": None, "leftovers_killed": 0,
                    "oom_kills": 0, "pids_max_hits": 0, "cpu_s": 0.0, "maxrss_mb": 0.0, "layers": []}
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
        report["layers"].append("subreaper")
    cg = _cgroups(spec, report)
    report["error"] = _refused(spec, cg) or ("the harness ended before the trial started" if _ended else None)
    if report["error"]:
        if cg is not None:
            cg.remove()
        return report
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    keeper = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _child(spec, cg, err_w, keeper)
    os.close(err_w)
    msg = b""
    while chunk := os.read(err_r, 4096):  # EOF at exec (CLOEXEC) or after the child reports a failure
        msg += chunk
    os.close(err_r)
    if msg:
        report["error"] = "sandbox setup failed: " + msg.decode(errors="replace")
    status = _wait(pid, t0 + float(spec["timeout_s"]), report)
    if not (report["timed_out"] or report.get("ended_by_harness")):
        _settle(cg, LEFTOVER_GRACE_S)
    report["leftovers_killed"] = _kill_tree(cg, None)
    if os.WIFSIGNALED(status):
        report["signal"] = os.WTERMSIG(status)
    else:
        report["rc"] = os.WEXITSTATUS(status)
    if cg is not None:
        report["oom_kills"], report["pids_max_hits"] = cg.oom_kills(), cg.pids_max_hits()
        report["cpu_s"] = max(report["cpu_s"], round(cg.cpu_s(), 3))  # includes processes nobody waited for
        cg.remove()
    report["wall_s"] = round(time.monotonic() - t0, 3)
    return report


def _keep(spec: dict, anchor: int) -> int:
    """The keeper: run the trial, print the report (to the harness, if it is still there)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    if not die_with(anchor, signal.SIGTERM):
        _on_sigterm()
    try:
        report = launch(spec)
    except Exception as e:  # noqa: BLE001 - the harness must always get a report
        report = {"error": f"launcher failed: {type(e).__name__}: {e}"}
    try:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
    except OSError:  # the harness is gone; the trial is cleaned up all the same
        pass
    return 0


def main() -> int:
    spec = json.loads(sys.stdin.read())
    harness = spec.get("harness_pid")
    if harness is not None and not die_with(int(harness), signal.SIGKILL):
        return 1  # the harness is gone already: start nothing
    anchor = os.getpid()
    keeper = os.fork()
    if keeper == 0:
        os._exit(_keep(spec, anchor))
    _, status = os.waitpid(keeper, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
