# expect: memory_limit: memory limit
"""Reserve address space without bound (untouched pages: only the address-space limit sees it)."""
import torch


def run(ctx):
    hoard = []
    while True:
        hoard.append(torch.empty(1 << 28, dtype=torch.uint8))  # 256 MiB each
