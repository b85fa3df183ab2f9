"""Sandbox for agent-written method code: no labels, no network, bounded CPU, memory, time and
processes, and a harness it cannot tamper with.

    run_method_sandboxed(method_path, student_dir, inputs, probe=..., seed=..., timeout_s=..., limits=...)
        -> SandboxResult(status, reason, preds, losses, layers, ...)     (runner.py; never raises for
                                                                          anything the method does)
    run_method_sandboxed_seeds(method_path, student_dir, {seed: inputs, ...}, probe=..., timeout_s=...)
        -> SandboxResult with preds {seed: tensor}, losses {seed: [...]}: ONE child runs every seed
           (torch, transformers and the student load once); timeout_s covers the whole run; ok only
           if every seed is; a failure's reason starts with its seed ("seed 1: ...")
    engine_runner(timeout_s, limits)   an aar_ray.w2s.engine.Runner; raises SandboxFailure(result)
    host()                             which layers this machine offers, probed once per process

Process tree of one trial (runner.py -> launch.py -> bwrap -> aar_ray/sandbox_child.py):
    harness --stdin spec--> launcher (root, subreaper, per-trial cgroups, wall clock)
      --fork, setsid, rlimits, private mount ns with read-only staged binds, setuid--> env -i bwrap
      --unshare-all, cap-drop ALL, disable-userns, ro binds, tmpfs scratch and /tmp--> child
      --Landlock, then seccomp, before any thread--> import torch, load inputs --> the method.

Layers, each recorded in SandboxResult.layers when it applied:
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
from aar_ray.sandbox.runner import (STATUSES, SandboxError, SandboxFailure, SandboxLimits, SandboxResult,
                                    engine_runner, host, run_method_sandboxed, run_method_sandboxed_seeds)

__all__ = ["STATUSES", "SandboxError", "SandboxFailure", "SandboxLimits", "SandboxResult", "engine_runner", "host",
           "run_method_sandboxed", "run_method_sandboxed_seeds"]
