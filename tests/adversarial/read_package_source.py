# expect: failed: LookupError: unreadable: .*world\.py: (FileNotFoundError|PermissionError)
"""Read the world generator and the task builders from the installed package's real location (a
method could exec them to rebuild the labels): not mounted, or not readable, in the sandbox."""
import torch

PATHS = ("__PKG_DIR__/w2s/world.py", "__PKG_DIR__/w2s/tasks.py", "__PKG_DIR__/w2s/realdata.py",
         "__PKG_DIR__/scoring.py")


def run(ctx):
    tried = []
    for path in PATHS:
        try:
            with open(path) as f:
                if "def " in f.read():
                    return torch.full((len(ctx.eval_ids),), 0.5)  # read: the route is open
        except OSError as e:
            tried.append(f"{path}: {type(e).__name__}")
    raise LookupError("unreadable: " + "; ".join(tried))
