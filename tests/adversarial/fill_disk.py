# expect: failed: (No space left|File too large)
"""Fill the scratch disk (and, if it were the host disk, everyone else's)."""
import os

import torch


def run(ctx):
    block = b"\0" * (8 << 20)
    i = 0
    while True:
        with open(os.path.join(os.getcwd(), f"fill{i}.bin"), "wb") as f:
            for _ in range(64):
                f.write(block)
        i += 1
    return torch.zeros(len(ctx.eval_ids))
