# expect: failed: (PermissionError|ProcessLookupError)
"""Kill the parent (bwrap's init, the launcher) and the harness itself."""
import os
import signal

import torch


def run(ctx):
    for pid in (os.getppid(), __HARNESS_PID__):
        os.kill(pid, signal.SIGKILL)
    return torch.full((len(ctx.eval_ids),), 0.5)
