"""Trust: does any route from method code reach a ground-truth label? One row per route.

Every route runs the way a campaign trial runs (the scorer's request, the sandboxed child, the
method runtime's mounts), on a tiny world. A planted method returns predictions only when its route
worked; `reached_label` is true when it did (for the generator, when it rebuilt the labels: val PGR
near 1). The pasted-generator route runs twice: on a public (pinned) world, as the control that
shows the attack is real, and on the installation's secret world. The probing route is the scorer's
side: a hill-climber that edits predictions, against the rounding and the probing watch.
Writes bench/results/trust.json. Run alone: .venv/bin/python bench/trust.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["AAR_TRACKING"] = "off"

from adversarial import support  # noqa: E402
from w2s_helpers import tiny_cfg  # noqa: E402

PLANTED = ("import_label_builders.py", "import_dataset_packages.py", "read_package_source.py", "search_filesystem.py")


def _settings():
    from aar_ray.config import TrialSettings

    return TrialSettings(seed_timeout_s=240, memory_mb=6144, threads=1, timeout_s=480)


def planted_routes(work: Path, cfg) -> dict:
    """Import the label builders or data sets, read the package source, search the disk."""
    import aar_ray
    from aar_ray.sandbox.cli import val_trial
    from aar_ray.w2s.world import secret_seed

    # what the disk search looks for: the world's secret seed, from which every label follows
    values = {"PKG_DIR": Path(aar_ray.__file__).resolve().parent, "SECRET": str(secret_seed())}
    out = {}
    for name in PLANTED:
        method = support.render(support.HERE / name, work, values)
        res, pgrs = val_trial(method, cfg, _settings(), check_source=False)  # the layers alone
        out[name.removesuffix(".py")] = {"reached_label": res.ok, "status": res.status.value,
                                         "detail": res.reason[:300]}
    return out


def generator_routes(work: Path) -> dict:
    """The world generator's public source pasted into a method, trying seeds 0..63."""
    from aar_ray.sandbox.cli import val_trial

    out = {}
    for label, cfg in (("paste_generator_public_world", tiny_cfg("world.seed=7")),
                       ("paste_generator_secret_world", tiny_cfg("world.seed=null"))):
        res, pgrs = val_trial(support.paste_generator(work, cfg, 0, 64), cfg, _settings(), check_source=False)
        mean = sum(pgrs) / len(pgrs) if pgrs else None
        out[label] = {"reached_label": bool(res.ok and mean is not None and mean > 0.9), "status": res.status.value,
                      "val_pgr": mean, "detail": res.reason[:300]}
    return out


def probing_route() -> dict:
    """Edit predictions 3 validation examples at a time, keep what raises the shown score: what it
    learns (val accuracy gained) against what it is worth (test accuracy gained), and the flag."""
    from aar_ray.config import ScoringConfig
    from aar_ray.scoring import Scorer

    scorer = Scorer(tiny_cfg("world.n_entities=300"), ScoringConfig(seeds=[0, 1], query_budget=30))
    kept = support.hill_climb_prober(scorer, "prober", steps=20)
    first, last = scorer.trials["prober0"], scorer.trials[kept]  # where the hill-climb ended
    return {"probing": {"reached_label": False, "queries": 21, "flagged": "prober" in scorer.flagged_researchers(),
                        "followed_flips": scorer.watch.events.get("prober", 0),
                        "val_acc_gain": last.val["acc"] - first.val["acc"],
                        "test_acc_gain": last.test["acc"] - first.test["acc"],
                        "detail": "what editing predictions taught about validation labels is worth nothing on test"}}


def main() -> dict:
    work = Path(tempfile.mkdtemp(prefix="aar-bench-trust-"))
    os.environ.setdefault("AAR_CACHE_DIR", str(work / "cache"))
    t0 = time.time()
    routes = {**planted_routes(work, tiny_cfg()), **generator_routes(work), **probing_route()}
    out = {"routes": routes, "reached_any_label": [k for k, v in routes.items() if v["reached_label"]
                                                   and k != "paste_generator_public_world"],
           "seconds": round(time.time() - t0, 1)}
    dest = ROOT / "bench/results/trust.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    for name, r in routes.items():
        print(f"{name:<32} reached a label: {'YES' if r['reached_label'] else 'no ':<4} {r.get('status', '')}")
    print(f"wrote {dest.relative_to(ROOT)}")
    return out


if __name__ == "__main__":
    main()
