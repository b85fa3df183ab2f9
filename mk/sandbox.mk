# The method sandbox (issue 6): probe the layers, run the adversarial suite, time the overhead.
# Included by the top-level Makefile, which defines BIN and `setup`.
#   make sandbox-probe     which layers apply on this machine, and why not where they do not; records
#                          them as this installation's (sandbox.require=[auto]) on its first run
#   make sandbox-test      the sandbox tests (adversarial suite, honest methods, fallbacks)
#   make sandbox-bench     start-up overhead vs an unsandboxed trial -> bench/results/sandbox.json

.PHONY: sandbox-probe sandbox-test sandbox-bench

sandbox-probe: setup
	$(BIN)/python -c 'import json; from aar_ray.sandbox import host; print(json.dumps(host().describe(), indent=2))'
	$(BIN)/python -c 'from aar_ray.sandbox.requirement import installed; print("installation layers ([auto]):", ", ".join(installed()))'

sandbox-test: setup
	$(BIN)/python -m pytest -q tests/test_sandbox_unit.py tests/test_sandbox_adversarial.py \
	  tests/test_sandbox_honest.py tests/test_sandbox_fallback.py tests/test_sandbox_cli.py \
	  tests/test_sandbox_lifecycle.py

sandbox-bench: setup
	$(BIN)/python bench/sandbox.py
