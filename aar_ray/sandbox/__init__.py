"""Sandbox for agent-written method code, and the trial boundary it enforces: no labels, no
network, bounded CPU, memory, time and processes, and a harness it cannot tamper with.

The folder is the boundary (one typed request in, one typed outcome out):
    contract.py  TrialRequest / TrialOutcome / TrialStatus: what crosses every process boundary
    trial.py     run_trial(source, request, settings): the pool's job on a Ray worker
    runner.py    run_sandboxed(request, method_path, limits) -> TrialOutcome (harness side; never
                 raises for anything the method does); run_method_sandboxed(_seeds) build the request
                 from loose parts; engine_runner(...) is an aar_ray.w2s.engine.Runner; host() probes
                 which layers this machine offers, once per process
    launch.py    the trusted launcher (root): rlimits, cgroups, uid drop, wall clock, fds; dies with the harness
    requirement.py  which layers a campaign requires (`sandbox.require`), resolved once on the driver
    child.py     inside the sandbox: reads the request, confines itself, runs the method per seed
    cli.py       `aar trial METHOD.py`: one method, exactly as a campaign trial runs it

Process tree of one trial (described here once):
    harness --stdin spec--> launcher anchor (dies with the harness) --> launcher keeper (root,
      subreaper, per-trial cgroups, wall clock; kills the whole trial when the anchor dies)
      --fork, setsid, rlimits, private mount ns with read-only staged binds, setuid--> env -i bwrap
      --unshare-all, cap-drop ALL, disable-userns, ro binds, tmpfs scratch and /tmp--> child
      --Landlock, then seccomp, before any thread--> import torch, read the request --> the method.

Layers, each recorded in TrialOutcome.layers when it applied (the names a campaign can require, in
config.SANDBOX_LAYERS, are uid, rlimits, cgroup, bwrap, landlock, seccomp and method-runtime; a
required one that cannot apply makes the trial a sandbox_error before any agent code runs):
  uid        as root, a dedicated system user `aar-sandbox` (created with useradd if missing; falls
             back to `nobody` only where useradd is absent). Dedicated so that nothing else ever runs
             as it: it owns no files, and RLIMIT_NPROC counts only trials.
  rlimits    AS (torch needs ~4 GiB to import), CPU soft < hard, NOFILE, FSIZE, NPROC (dedicated uid
             only), CORE 0.
  cgroup     (root) per-trial memory, pids and CPU-quota caps; v2 where the unified hierarchy has
             the controllers, else v1.
  bwrap      user, mount, pid, net, ipc, uts and cgroup namespaces; only the interpreter prefix, the
             venv, this package, the student and the trial's inputs are bound (read-only); scratch,
             /tmp and /dev/shm are size-capped tmpfs. Probed once with `bwrap ... /bin/true`; where
             user namespaces are forbidden (Kubernetes pods) the trial runs without it.
  staged-binds / exposed-in-place
             the default interpreter is under /root (0700). Instead of loosening it, the launcher
             (root) binds the needed trees into a tmpfs in a private mount namespace before dropping
             privileges, so the unprivileged bwrap (or, without bwrap, the child) can reach them.
  landlock   file allowlist (not /proc: only /proc/self and /proc/cpuinfo), TCP bind/connect denied,
             signals and abstract unix sockets scoped to the trial. The fallback inside pods.
  seccomp    last: sockets other than AF_UNIX (all sockets without bwrap, whose mount namespace hides
             the host's named sockets), exec, ptrace, process_vm_*, mount family, unshare/setns,
             namespace-creating clone, clone3, bpf, io_uring, perf, userfaultfd, keys, modules.
  subreaper / child-subreaper
             leftover descendants (double-forked setsid daemons included) are found and killed; a
             run() that leaves any behind fails with status leftover_processes.
  precheck   a static AST check that refuses obvious escapes with a line-numbered reason (a
             courtesy; the layers above are the defence).
Results come back as a plain-array record (no pickle, no zip; one header listing every seed, then
each seed's arrays) through an fd the launcher opened as root; the harness trusts only the
launcher's report, its own clock and the child's attestation written before any agent code ran.

This package imports no torch at module level: the launcher imports it and must start fast.
"""
_EXPORTS = {"STATUSES", "SandboxError", "SandboxFailure", "SandboxLimits", "engine_runner", "host", "request_for",
            "run_method_sandboxed", "run_method_sandboxed_seeds", "run_sandboxed"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Lazy: the sandboxed child imports this package too, and needs none of the harness side."""
    if name in _EXPORTS:
        from aar_ray.sandbox import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'aar_ray.sandbox' has no attribute {name!r}")
