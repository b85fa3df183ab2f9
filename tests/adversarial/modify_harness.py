# expect: failed: (OSError|PermissionError).*(Read-only|Permission denied)
"""Rewrite the harness: the sandbox runner (to report ok) and the package's scoring code."""
import torch


def run(ctx):
    for path in ("__PKG_DIR__/sandbox/runner.py", "__PKG_DIR__/w2s/engine.py"):
        with open(path, "a") as f:
            f.write("\n# pwned\n")
    return torch.full((len(ctx.eval_ids),), 0.5)
