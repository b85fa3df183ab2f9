# expect: failed: LookupError: secret not in any environment
"""Read the harness's environment: our own, pid 1's (bwrap keeps its caller's) and the parent's."""
import os

import torch


def run(ctx):
    if "__SECRET__" in repr(dict(os.environ)):
        return torch.full((len(ctx.eval_ids),), 0.5)
    tried = []
    for pid in ("1", str(os.getppid()), "__HARNESS_PID__", "self"):
        try:
            if b"__SECRET__" in open(f"/proc/{pid}/environ", "rb").read():
                return torch.full((len(ctx.eval_ids),), 0.5)
            tried.append(f"{pid}: readable, no secret")
        except OSError as e:
            tried.append(f"{pid}: {type(e).__name__}")
    raise LookupError(f"secret not in any environment ({'; '.join(tried)})")
