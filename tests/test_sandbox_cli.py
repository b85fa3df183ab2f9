"""`aar trial`: whatever the method does, the last line is one JSON object and the command exits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aar_ray.sandbox.cli import trial_main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ADV = Path(__file__).resolve().parent / "adversarial"
TINY = ["world.n_entities=60", "world.n_relations=2", "world.n_values=4", "strong.n_layer=1", "strong.d_model=32",
        "strong.n_head=2", "strong.pretrain_steps=20", "strong.facts_pretrain_steps=20", "strong.pretrain_batch=32", "weak.pretrain_steps=20", "weak.facts_pretrain_steps=20",
        "weak.pretrain_batch=32", "probe.epochs=2", "seeds=[0]"]


def _last_json(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert set(out) >= {"status", "reason", "val_pgr", "sandbox", "device", "dtype"}
    assert "test" not in json.dumps(out).lower().replace("pytest", "")
    return out


def test_rejected_by_precheck_before_any_work(capsys, tmp_path):
    m = tmp_path / "m.py"
    m.write_text("import subprocess\n\ndef run(ctx):\n    return subprocess.run(['id'])\n")
    assert trial_main([str(m), "--json"]) == 1
    out = _last_json(capsys)
    assert out["status"] == "rejected" and "line 1: imports 'subprocess'" in out["reason"] and out["val_pgr"] is None


@pytest.mark.parametrize("argv, needle", [
    (["/nonexistent/method.py", "--json"], "neither a built-in"),
    (["naive", "no.such.key=1", "--json"], "config"),
    (["--json", "--timeout-s", "abc"], "bad arguments"),
])
def test_harness_errors_still_end_with_the_json_line(capsys, argv, needle):
    assert trial_main(argv) == 2
    out = _last_json(capsys)
    assert out["status"] == "sandbox_error" and needle in out["reason"]


@pytest.mark.slow
def test_trial_end_to_end_on_the_quick_task(tmp_path):
    """Real engine, tiny task: an honest method gets a val PGR; a sleeper gets its timeout."""
    env = {**os.environ, "AAR_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    prog = "import sys; from aar_ray.sandbox.cli import trial_main; sys.exit(trial_main(sys.argv[1:]))"

    def trial(*argv):
        p = subprocess.run([sys.executable, "-c", prog, *argv, *TINY, "--json"], capture_output=True, text=True,
                           env=env, timeout=600)
        return p.returncode, json.loads(p.stdout.strip().splitlines()[-1]), p.stdout

    rc, out, stdout = trial("naive")
    assert rc == 0 and out["status"] == "ok", out
    assert (out["device"], out["dtype"]) == ("cpu", "float32")  # what the child ran on, from the preset
    assert isinstance(out["val_pgr"], float) and any(layer.startswith("bwrap") or layer.startswith("landlock")
                                                     for layer in out["sandbox"])
    assert "test" not in stdout.lower().replace("pytest", "")
    rc, out, _ = trial(str(ADV / "sleep_past_timeout.py"), "--timeout-s", "8")
    assert rc == 1 and out["status"] == "timeout" and out["val_pgr"] is None
