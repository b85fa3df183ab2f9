"""Shared test setup: offline hubs, no telemetry, GPU tests skipped without a GPU."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def campaign_cache(tmp_path_factory):
    """The base and baseline cache the campaign tests share (see test_campaign.shared_cache)."""
    return tmp_path_factory.mktemp("campaign-cache")


QUICK = Path(__file__).resolve().parents[1] / "experiments/w2s_quick.yaml"


@pytest.fixture(scope="session")
def _benchmark_bases(request):
    """Every full-size base the collected `benchmark_bases` tests need, pretrained once, side by side in
    one process per core (aar_ray/w2s/prebuild.py), into the cache those tests read (the default one)."""
    from aar_ray.config import W2SConfig, load_config
    from aar_ray.w2s import prebuild

    pairs = sorted({p for item in request.session.items for m in item.iter_markers("benchmark_bases") for p in m.args})
    cfgs = [load_config(W2SConfig, QUICK, [f"task={p.split('@')[0]}", f"world.seed={p.split('@')[1]}"]) for p in pairs]
    prebuild.prebuild(cfgs)
    assert not prebuild.missing(cfgs), "pretrained, yet not in the cache"
    return pairs


@pytest.fixture(autouse=True)
def _needs_benchmark_bases(request):
    if request.node.get_closest_marker("benchmark_bases") is not None:
        request.getfixturevalue("_benchmark_bases")
