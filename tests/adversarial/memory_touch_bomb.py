# expect: memory_limit: (out-of-memory killer|memory limit)
"""Allocate and touch memory until something stops it (the cgroup's OOM killer)."""
import torch


def run(ctx):
    hoard = []
    while True:
        hoard.append(torch.ones(1 << 25, dtype=torch.uint8))  # 32 MiB, written
