# expect: failed: PermissionError: unshare
"""Create a user namespace to regain capabilities inside it."""
import ctypes

import torch

CLONE_NEWUSER = 0x10000000


def run(ctx):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise PermissionError(f"unshare refused: errno {ctypes.get_errno()}")
    return torch.full((len(ctx.eval_ids),), 0.5)
