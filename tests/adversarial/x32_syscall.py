# expect: crashed: SIGSYS
"""Dodge the seccomp filter through the x32 syscall ABI (socket = 0x40000000 | 41 on x86_64)."""
import ctypes

import torch


def run(ctx):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(0x40000000 | 41, 2, 1, 0)  # x32 socket(AF_INET, SOCK_STREAM, 0)
    if fd < 0:
        raise PermissionError(f"x32 socket refused: errno {ctypes.get_errno()}")
    return torch.full((len(ctx.eval_ids),), 0.5)
