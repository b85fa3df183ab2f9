# expect: failed: (PermissionError|OSError|FileNotFoundError)
"""Write to host paths: a directory of the test, and the package's own source."""
import torch


def run(ctx):
    with open("__HOST_DIR__/escaped.txt", "w") as f:
        f.write("escaped")
    return torch.full((len(ctx.eval_ids),), 0.5)
