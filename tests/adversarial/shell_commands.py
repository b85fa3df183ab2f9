# expect: failed: (PermissionError|FileNotFoundError)
"""import os and run shell commands."""
import os
import subprocess

import torch


def run(ctx):
    rc = os.system("cat /etc/passwd > /tmp/x")
    out = subprocess.check_output(["/bin/sh", "-c", "id; cat /proc/1/environ"])
    return torch.full((len(ctx.eval_ids),), 0.5 if rc == 0 and out else 0.4)
