# expect: failed: PermissionError: ptrace
"""Attach to the parent and to the harness with ptrace (to read their memory)."""
import ctypes
import os

import torch

PTRACE_ATTACH = 16


def run(ctx):
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in (os.getppid(), __HARNESS_PID__):
        if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
            raise PermissionError(f"ptrace of pid {pid} refused: errno {ctypes.get_errno()}")
    return torch.full((len(ctx.eval_ids),), 0.5)
