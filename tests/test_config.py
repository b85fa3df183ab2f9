"""One home for configuration: every class in aar_ray/config.py, cross-field checks naming both keys,
unused W2S fields refused in campaigns, registries as the one list of names, plain error messages."""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from aar_ray import config as C
from aar_ray.config import CampaignConfig, ConfigError, W2SConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments/quick.yaml"


def test_every_config_class_lives_in_config_py_with_a_docstring_per_field():
    classes = [c for _, c in inspect.getmembers(C, inspect.isclass)
               if dataclasses.is_dataclass(c) and c.__module__ == "aar_ray.config"]
    names = {c.__name__ for c in classes}
    assert {"W2SConfig", "CampaignConfig", "ScoringConfig", "ResearcherBudget", "CampaignBudget", "TrialSettings",
            "PoolConfig", "ClaudeConfig", "RayConnect", "ProbeConfig", "ModelConfig", "WorldConfig"} <= names
    source = Path(C.__file__).read_text()
    for cls in classes:
        body = source[source.index(f"class {cls.__name__}"):]
        for f in dataclasses.fields(cls):  # each field is followed by its one-line docstring
            assert re.search(rf"\n    {f.name}: [^\n]+\n(?:        [^\n]*\n)*    \"\"\"", body), \
                f"{cls.__name__}.{f.name} has no docstring"
    # nothing else in the package defines a config dataclass
    for path in (ROOT / "aar_ray").rglob("*.py"):
        if path.name != "config.py":
            assert not re.search(r"^class \w+(Config|Budget|Settings)\b", path.read_text(), re.M), path


def test_one_dollar_cap_and_one_token_cap():
    assert not {"max_dollars", "max_tokens_total"} & {f.name for f in dataclasses.fields(C.ClaudeConfig)}
    with pytest.raises(ConfigError, match="claude.max_dollars: unknown key"):
        load_config(CampaignConfig, QUICK, ["claude.max_dollars=3"])
    assert load_config(CampaignConfig, QUICK, ["researcher.dollars=3"]).researcher.dollars == 3


@pytest.mark.parametrize("key", ["w2s.seeds=[1,2]", "w2s.methods=[naive]", "w2s.name=x", "w2s.fidelity=quick"])
def test_w2s_fields_a_campaign_ignores_are_refused(key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key.split('=')[0])} is not used here: "):
        load_config(CampaignConfig, QUICK, [key])


def test_cross_field_checks_name_both_keys():
    with pytest.raises(ConfigError, match=r"trial.timeout_s: 100 s is less than trial.seed_timeout_s x "
                                          r"len\(scoring.seeds\) = 240 x 3 = 720 s"):
        load_config(CampaignConfig, QUICK, ["trial.timeout_s=100"])
    with pytest.raises(ConfigError, match="trial.num_gpus: asks 2 GPUs per trial but ray.num_gpus declares 1"):
        load_config(CampaignConfig, QUICK, ["ray.num_gpus=1", "trial.num_gpus=2"])
    with pytest.raises(ConfigError, match="trial.num_gpus: is 0 but w2s.device is 'cuda'"):
        load_config(CampaignConfig, QUICK, ["w2s.device=cuda"])


@pytest.mark.parametrize("override, message", [
    ("scoring.seeds=0", "scoring.seeds: expected a list (scoring.seeds=[...]), got 0"),
    ("scoring.seeds={a: 1}", "scoring.seeds: expected a list, got a mapping"),
    ("trial.timeout_s=abc", "trial.timeout_s: expected a number (float), got 'abc'"),
    ("n_researchers=x", "n_researchers: expected a number (integer), got 'x'"),
    ("pool.weights=3", "pool.weights: expected a mapping of keys to values, got 3"),
])
def test_type_errors_say_what_is_expected_without_omegaconf_jargon(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(CampaignConfig, QUICK, [override])
    assert str(e.value) == message
    assert not re.search(r"AnyNode|ListConfig|DictConfig|full_key|object_type", str(e.value))


def test_names_come_from_their_registries():
    from aar_ray.agents.offline import DIRECTIONS
    from aar_ray.w2s.methods import BUILTINS, METHODS_DIR
    from aar_ray.w2s.tasks import TASKS

    assert set(BUILTINS) == {p.stem for p in METHODS_DIR.glob("*.py")} - {"__init__"} and BUILTINS[0] == "naive"
    assert C.task_names() == sorted(TASKS) and C.research_directions() == list(DIRECTIONS)
    assert CampaignConfig().baselines == list(BUILTINS) and W2SConfig().methods == list(BUILTINS)
    with pytest.raises(ConfigError, match=r"unknown task 'nope'; choose " + ", ".join(sorted(TASKS))):
        load_config(W2SConfig, None, ["task=nope"])
    with pytest.raises(ConfigError, match=r"baselines: unknown built-in methods \['foo'\]"):
        load_config(CampaignConfig, QUICK, ["baselines=[naive,foo]"])


def test_every_preset_loads_and_its_trials_fit_the_pool_timeout():
    for preset in sorted((ROOT / "experiments").glob("*.yaml")):
        schema = W2SConfig if preset.name.startswith("w2s_") else CampaignConfig
        where = "" if schema is W2SConfig else "w2s."
        # the values a user passes on the command line for presets that need them (data, local model dirs)
        given = [f"{where}data_path=/x.jsonl"] + ([f"{where}weak.name_or_path=/w", f"{where}strong.name_or_path=/s"]
                                                  if "tiny" in preset.name else [])
        cfg = load_config(schema, preset, given)
        if schema is CampaignConfig:
            assert cfg.trial.timeout_s >= cfg.trial.seed_timeout_s * len(cfg.scoring.seeds), preset.name
