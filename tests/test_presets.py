"""Every preset in experiments/ runs where the README says: one tiny trial of each on this CPU box,
through a campaign trial's path (the campaign's start-time decisions, then Scorer.request -> run_trial
in the sandbox -> Scorer.score; `aar trial` for the W2S presets). GPU presets run their tiny variants:
tiny Qwen-shaped models in place of the real ones, and the CPU where the Ray cluster has no GPU."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aar_ray.config import CampaignConfig, load_config

from w2s_helpers import TINY, make_tiny_hf_model, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (ROOT / "experiments").glob("*.yaml"))
TINY_WORLD = [o for o in TINY if not o.startswith(("seeds", "torch_threads"))]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A shared cache, tiny Qwen-shaped models and a small JSONL file (for the real-model presets), and a
    local Ray the way `aar campaign` starts one here (no GPU on this box)."""
    import ray

    from aar_ray.campaign.driver import connect_ray

    d = tmp_path_factory.mktemp("presets")
    old = {k: os.environ.get(k) for k in ("AAR_CACHE_DIR", "AAR_MLFLOW_DIR")}
    os.environ.update(AAR_CACHE_DIR=str(d / "cache"), AAR_MLFLOW_DIR=str(d / "mlflow"))
    words = write_jsonl(d / "data.jsonl")
    models = {"weak": make_tiny_hf_model(d / "qwen15", "qwen2", words, hidden=16),
              "strong": make_tiny_hf_model(d / "qwen3", "qwen3", words, hidden=32)}
    connect_ray(load_config(CampaignConfig, ROOT / "experiments/standard.yaml", ["ray.num_cpus=2"]), "presets")
    yield {"data": d / "data.jsonl", **models}
    ray.shutdown()
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _raw(preset: str):
    from omegaconf import OmegaConf

    return OmegaConf.load(ROOT / "experiments" / preset)


def _kind(preset: str) -> str:
    return "campaign" if "scoring" in _raw(preset) else "w2s"


def tiny(preset: str, box: dict, prefix: str) -> list[str]:
    """Overrides that shrink `preset` to one tiny trial: the tiny world, or tiny Qwens on the JSONL file.
    `prefix`: 'w2s.' for a campaign preset."""
    from omegaconf import OmegaConf

    raw = _raw(preset)
    if OmegaConf.select(raw, f"{prefix}strong.kind") == "hf":
        return [f"{prefix}data_path={box['data']}", f"{prefix}weak.name_or_path={box['weak']}",
                f"{prefix}strong.name_or_path={box['strong']}", f"{prefix}max_length=16", f"{prefix}probe.epochs=2",
                f"{prefix}batch_size_features=64"]
    return [f"{prefix}{o}" for o in TINY_WORLD]


def test_every_preset_is_covered():
    assert {_kind(p) for p in PRESETS} == {"campaign", "w2s"} and len(PRESETS) >= 5


@pytest.mark.parametrize("preset", [p for p in PRESETS if _kind(p) == "campaign"])
def test_campaign_preset_runs_a_trial_here(box, preset):
    """What `aar campaign` decides at start (sandbox layers, GPUs from the Ray cluster), then one trial."""
    from aar_ray.campaign.driver import cluster_gpus, fit_to_cluster, sandbox_requirement
    from aar_ray.sandbox.cli import scored_trial
    from aar_ray.sandbox.runner import SandboxLimits
    from aar_ray.w2s.methods import resolve

    cfg = load_config(CampaignConfig, ROOT / "experiments" / preset, [*tiny(preset, box, "w2s."), "scoring.seeds=[0,1]"])
    asked = cfg.trial.num_gpus
    cfg, note = fit_to_cluster(cfg, *cluster_gpus())
    if asked:  # a GPU preset on a Ray cluster without GPUs: CPU trials, and the campaign says so
        assert cfg.trial.num_gpus == 0 and note and "trials run on the CPU" in note
    limits = SandboxLimits(require=sandbox_requirement(cfg).required)
    out, pgrs = scored_trial(resolve("naive"), cfg.w2s, cfg.scoring, cfg.trial, limits, True, "quick")
    assert out.ok, (out.status, out.reason, out.log_tail[-1500:])
    assert out.device == "cpu" and out.dtype == cfg.w2s.strong.dtype and set(out.sandbox) == set(limits.require)
    assert len(pgrs) == 2


@pytest.mark.parametrize("preset", [p for p in PRESETS if _kind(p) == "w2s"])
def test_w2s_preset_runs_a_trial_here(box, preset, capsys):
    """`aar trial naive experiments/<preset>.yaml ...`, as the README shows it."""
    from aar_ray.sandbox.cli import trial_main

    code = trial_main(["naive", str(ROOT / "experiments" / preset), *tiny(preset, box, ""), "seeds=[0]", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["status"] == "ok", out
    assert out["device"] == "cpu" and isinstance(out["val_pgr"], float)


def test_logical_gpus_are_told_from_real_ones(box):
    """This box's Ray has no GPU; one started with logical GPUs (`ray.num_gpus=2`) has no CUDA behind them."""
    import subprocess
    import sys

    from aar_ray.campaign.driver import cluster_gpus

    assert cluster_gpus() == (0.0, True)
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this box has CUDA devices: its GPUs are not logical")
    code = ("import ray; ray.init(address='local', num_cpus=1, num_gpus=2, include_dashboard=False, log_to_driver=False); "
            "from aar_ray.campaign.driver import cluster_gpus; print(cluster_gpus()); ray.shutdown()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.stdout.strip().splitlines()[-1] == "(2.0, False)", p.stdout + p.stderr


def test_the_cluster_decides_where_gpu_trials_run():
    """Pure: GPU requests fitted to the cluster at start, or refused naming the key."""
    from aar_ray.campaign.driver import CampaignError, fit_to_cluster

    std = load_config(CampaignConfig, ROOT / "experiments/standard.yaml")
    assert std.trial.num_gpus == 0.25 and std.w2s.device == "auto"
    cfg, note = fit_to_cluster(std, 0.0, True)  # a laptop: no GPU
    assert cfg.trial.num_gpus == 0 and "no GPU: trials run on the CPU" in note
    cfg, note = fit_to_cluster(std, 4.0, False)  # logical GPUs: reserved for scheduling, run on the CPU
    assert (cfg.trial.num_gpus, cfg.w2s.device) == (0.25, "cpu") and "logical" in note
    assert fit_to_cluster(std, 8.0, True) == (std, None)  # real GPUs: as asked
    cuda = load_config(CampaignConfig, ROOT / "experiments/standard.yaml", ["w2s.device=cuda"])
    for gpus, physical in ((0.0, True), (4.0, False)):
        with pytest.raises(CampaignError, match="trial.num_gpus=0.25 with w2s.device=cuda"):
            fit_to_cluster(cuda, gpus, physical)
    big = load_config(CampaignConfig, ROOT / "experiments/gpu.yaml", ["w2s.data_path=x", "trial.num_gpus=2"])
    with pytest.raises(CampaignError, match=r"trial.num_gpus=2 asks more GPUs per trial than the Ray cluster has \(1\)"):
        fit_to_cluster(big, 1.0, True)
