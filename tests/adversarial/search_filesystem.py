# expect: failed: LookupError: no label file
"""Walk the visible filesystem for anything that holds the labels.

Prunes the system libraries and Python's own library trees so the test stays fast; everything
else visible (the root, /aar, /tmp, the venv's top, ...) is read.
"""
import os

import torch

SKIP = {"proc", "sys", "dev", "usr", "site-packages", "python3.11"}


def run(ctx):
    seen = set()
    # from the root, and from the places a listing of / may not show (Landlock lets paths be read
    # without their parents being listable)
    for top in ("/", "/aar", os.getcwd(), "/tmp", "/work", "/root", "/home", "/var", "/run"):
        for root, dirs, files in os.walk(top, onerror=lambda e: None):
            dirs[:] = [d for d in dirs if d not in SKIP]
            for f in files:
                path = os.path.join(root, f)
                if path in seen:
                    continue
                seen.add(path)
                try:
                    with open(path, "rb") as fh:
                        if b"__SECRET__" in fh.read(1 << 20):
                            return torch.full((len(ctx.eval_ids),), 0.5)
                except OSError:
                    pass
    raise LookupError(f"no label file among {len(seen)} files")
