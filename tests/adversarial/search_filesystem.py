# expect: failed: LookupError: no label file
"""Walk the visible filesystem for anything that holds the labels.

Prunes the system libraries and Python's own library trees so the test stays fast; everything
else visible (the root, /aar, /tmp, the venv's top, ...) is read.
"""
import os

import torch

SKIP = {"proc", "sys", "dev", "usr", "site-packages", "python3.11"}


def run(ctx):
    seen = 0
    for root, dirs, files in os.walk("/", onerror=lambda e: None):
        dirs[:] = [d for d in dirs if d not in SKIP]
        for f in files:
            seen += 1
            try:
                with open(os.path.join(root, f), "rb") as fh:
                    if b"__SECRET__" in fh.read(1 << 20):
                        return torch.full((len(ctx.eval_ids),), 0.5)
            except OSError:
                pass
    raise LookupError(f"no label file among {seen} files")
