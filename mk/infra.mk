# Clusters and infrastructure (issue 9): Ray cluster launcher wrappers, job submission, offline checks.
# Included by the top-level Makefile, which defines BIN and `setup`.
#   make cluster-up [CLUSTER=cluster/aws-gpu-large.yaml]   start or update a launcher cluster
#   make submit PRESET=standard RAY_ADDRESS=http://127.0.0.1:8265 [ARGS='key=value ...']
#   make cluster-down
#   make infra-validate                                    offline checks of cluster/ and infra/

CLUSTER ?= cluster/aws-gpu.yaml
PRESET ?= quick
# Where `ray job submit` sends the job; empty leaves it to Ray (its RAY_ADDRESS env, else a local cluster).
RAY_ADDRESS ?=
# `key=value` overrides of the preset, e.g. on KubeRay (pods run as uid 1000: no uid drop, no cgroups, no bwrap)
#   ARGS='sandbox.require=[rlimits,landlock,seccomp,method-runtime]'
ARGS ?=
# Variables the cluster's Ray processes get (cluster/*.yaml loads this file before `ray start`).
CLUSTER_ENV := .aar_cache/cluster.env
CLUSTER_ENV_VARS := MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD ANTHROPIC_API_KEY

.PHONY: cluster-env cluster-up cluster-down submit infra-validate

# Written from your shell's environment on every run, mode 600, in a git-ignored folder; values are
# shell-quoted, so any character survives. Unset variables are left out.
cluster-env: setup
	@mkdir -p $(dir $(CLUSTER_ENV))
	@umask 077; $(BIN)/python -c 'import os, shlex; ks = "$(CLUSTER_ENV_VARS)".split(); \
	print("".join(f"export {k}={shlex.quote(os.environ[k])}\n" for k in ks if os.environ.get(k)), end="")' \
	> $(CLUSTER_ENV)
	@test -n "$$MLFLOW_TRACKING_URI" || echo "note: MLFLOW_TRACKING_URI is unset; each cluster node would log to its own local store" >&2

cluster-up: cluster-env
	$(BIN)/ray up -y $(CLUSTER)

cluster-down: setup
	$(BIN)/ray down -y $(CLUSTER)

# `aar submit` wraps `ray job submit`: the working directory is uploaded without what .gitignore lists,
# results go to a lasting home (AAR_HOME, default this checkout; never Ray's temporary copy), and runs
# carry this checkout's git SHA. MLFLOW_TRACKING_URI, when set here, goes with the job (not a secret;
# credentials travel only through cluster.env or a Secret).
submit: setup
	$(strip $(BIN)/aar submit experiments/$(PRESET).yaml $(foreach a,$(ARGS),'$(a)') $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)))

infra-validate: setup
	$(BIN)/python -m pytest -q tests/test_infra.py
