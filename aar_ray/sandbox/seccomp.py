"""The seccomp layer, applied last inside the sandbox child (pyseccomp over libseccomp).

Default allow, with a deny list of what a training job never needs and an escape often does:
non-unix sockets (and unix ones too when there is no mount namespace to hide the host's named
sockets; torch DataLoader workers need them, so with bubblewrap they stay), exec, tracing, mounts,
new namespaces, kernel modules and keys, bpf, io_uring, perf, userfaultfd. Syscalls of another
ABI (x32, i386) kill the process (libseccomp's bad-arch action): status "crashed", SIGSYS.
Denied calls fail with EPERM (EACCES for exec, ENOSYS for clone3 so glibc falls back to clone,
whose flags seccomp can inspect), so a method sees a readable Python exception, not a dead process.
"""
from __future__ import annotations

import ctypes.util
import errno
import socket

CLONE_NS_FLAGS = {  # namespace-creating clone() flags
    "CLONE_NEWTIME": 0x00000080, "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000, "CLONE_NEWNET": 0x40000000,
}

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns", "bpf", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init", "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
)
EXEC = ("execve", "execveat")


def _load_pyseccomp():
    """Import pyseccomp without its find_library() calls, which exec ldconfig (denied in here)."""
    real = ctypes.util.find_library
    ctypes.util.find_library = lambda name: {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}.get(name) or real(name)
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = real
    return pyseccomp


def apply(allow_unix_sockets: bool, deny_exec: bool = True) -> list[str]:
    """Load the filter into this process; returns the denied syscalls (for the layer record)."""
    sc = _load_pyseccomp()
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)  # also filter any thread that already exists
    eperm, denied = sc.ERRNO(errno.EPERM), []
    if allow_unix_sockets:
        f.add_rule(eperm, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
        denied.append("socket(!AF_UNIX)")
    else:
        f.add_rule(eperm, "socket")
        denied.append("socket")
    for name in DENIED + (EXEC if deny_exec else ()):
        try:
            f.add_rule(sc.ERRNO(errno.EACCES) if name in EXEC else eperm, name)
        except OSError:  # syscall unknown to this libseccomp/arch: nothing to deny
            continue
        denied.append(name)
    for flag in CLONE_NS_FLAGS.values():
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags live in a struct seccomp cannot read
    denied += ["clone(CLONE_NEW*)", "clone3"]
    f.load()
    return denied
