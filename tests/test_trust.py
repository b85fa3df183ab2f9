"""Ground truth that method code cannot rebuild, run exactly as `aar trial` (the campaign's path) runs a
method: the scorer's request, the sandboxed child, the method runtime's mounts.

The generator route is shown both ways: with the world's seed pinned (public) the pasted
generator rebuilds every label; with the installation's secret seed it cannot, and the trial fails
with its reason. The attack is real; the secret seed is what stops it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from aar_ray.config import TrialSettings
from aar_ray.sandbox.contract import TrialStatus

from adversarial import support
from w2s_helpers import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = TrialSettings(seed_timeout_s=240, memory_mb=6144, threads=1, timeout_s=480)

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust-cache")
    old = os.environ.get("AAR_CACHE_DIR")
    os.environ["AAR_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("AAR_CACHE_DIR")
    else:
        os.environ["AAR_CACHE_DIR"] = old


@pytest.mark.slow
def test_pasted_generator_rebuilds_a_public_world_but_not_the_secret_one(cache, tmp_path):
    from aar_ray.sandbox.cli import val_trial
    from aar_ray.w2s.world import secret_seed

    public = tiny_cfg("world.seed=7")
    method = support.paste_generator(tmp_path, public, 0, 64)
    out, pgrs = val_trial(method, public, SETTINGS, check_source=False)  # the layers alone, no pre-check
    assert out.status is TrialStatus.OK, f"{out.reason}\n{out.log_tail[-600:]}"
    assert min(pgrs) > 0.9  # a public world gives its labels away to anyone with the generator's source

    secret = tiny_cfg("world.seed=null")  # unset: this installation's secret one
    assert secret.world.seed is None and secret_seed() >= 64  # (62 random bits: never in a small range)
    out, pgrs = val_trial(method, secret, SETTINGS, check_source=False)
    assert out.status is TrialStatus.FAILED and pgrs == []
    assert "LookupError: no world seed in 0..63 rebuilds this student's vocabulary" in out.reason, out.reason
    # the secret file is where only the harness reads it: 0600 in a 0700 directory, never mounted
    private = cache / "private"
    assert oct(private.stat().st_mode & 0o777) == "0o700"
    assert oct((private / "world_seed").stat().st_mode & 0o777) == "0o600"


@pytest.mark.slow
@pytest.mark.benchmark_bases("facts@0")
def test_seed_and_split_pickers_score_no_better_than_honest(tmp_path):
    """Choosing seeds or guessing splits cannot pay: every seed counts, and val and test are mixed."""
    from aar_ray.config import W2SConfig, load_config
    from aar_ray.sandbox.cli import val_trial
    from aar_ray.w2s.methods import resolve

    # the benchmark's world 0 (bases shared with the benchmark tests), where naive recovers part of the
    # gap on both seeds (val PGR 0.22 and 0.26); tiny worlds are too small for a stable one
    cfg = load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml", ["world.seed=0", "seeds=[0,1]", "torch_threads=1"])
    naive = resolve("naive").read_text()
    picker = tmp_path / "seed_picker.py"
    picker.write_text(naive.replace("def run(ctx) -> torch.Tensor:", "def _naive(ctx):") + '''

def run(ctx):
    # do well on a "lucky" seed only, as if the harness would report the best one
    return _naive(ctx) if ctx.seed == 0 else torch.full((len(ctx.eval_ids),), 0.5)
''')
    splitter = tmp_path / "split_guesser.py"
    splitter.write_text(naive.replace("def run(ctx) -> torch.Tensor:", "def _naive(ctx):") + '''

def run(ctx):
    # treat the first 30% of eval rows as validation and invest only there (there is no such order)
    p = _naive(ctx)
    n = int(0.3 * len(p))
    return torch.cat([(p[:n] > 0.5).float(), torch.full((len(p) - n,), 0.5)])
''')
    _, honest = val_trial(resolve("naive"), cfg, SETTINGS, check_source=True)
    assert min(honest) > 0.1, honest  # otherwise "no better than honest" would say nothing
    for method in (picker, splitter):
        out, pgrs = val_trial(method, cfg, SETTINGS, check_source=True)
        assert out.status is TrialStatus.OK and len(pgrs) == len(honest) == len(cfg.seeds)
        assert sum(pgrs) / len(pgrs) < sum(honest) / len(honest), (method.name, pgrs, honest)
