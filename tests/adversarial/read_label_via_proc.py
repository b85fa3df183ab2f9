# expect: failed: RuntimeError: every /proc route was denied
"""Reach the label file and the harness's memory through /proc of the harness and of pid 1."""
import os

import torch


def run(ctx):
    errors = []
    for pid in ("__HARNESS_PID__", "1", str(os.getppid())):
        for tail in ("root__LABEL_PATH__", "cwd", "environ", "cmdline", "maps", "mem", "fd/0"):
            path = f"/proc/{pid}/{tail}"
            try:
                data = open(path, "rb").read(4096)
            except OSError as e:
                errors.append(f"{path}: {type(e).__name__}")
                continue
            if b"__SECRET__" in data or tail.startswith("root"):
                return torch.full((len(ctx.eval_ids),), 0.5)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        errors.append(f"listed pids {pids}")
    except OSError as e:
        errors.append(f"/proc: {type(e).__name__}")
    raise RuntimeError("every /proc route was denied: " + "; ".join(errors[:6]))
