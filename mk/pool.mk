# Task pool (issue 4): loopback multi-node Ray cluster, pool tests and benchmark.
# Included by the main Makefile; uses its BIN and exports (HF_HUB_OFFLINE, ...).
CLUSTER_DIR     ?= /tmp/aarc-$(shell id -u)
CLUSTER_WORKERS ?= 2
CLUSTER_GPUS    ?= 4

.PHONY: cluster-local-up cluster-local-down cluster-local-status test-pool bench-pool

# Head (no resources) + $(CLUSTER_WORKERS) worker nodes with $(CLUSTER_GPUS) logical GPUs each, on 127.0.0.1.
cluster-local-up: setup
	$(BIN)/python cluster/local.py up --dir $(CLUSTER_DIR) --workers $(CLUSTER_WORKERS) --gpus-per-worker $(CLUSTER_GPUS)

# Stops only the processes this cluster started (never `ray stop`).
cluster-local-down:
	$(BIN)/python cluster/local.py down --dir $(CLUSTER_DIR)

cluster-local-status:
	$(BIN)/python cluster/local.py status --dir $(CLUSTER_DIR)

test-pool: setup
	$(BIN)/python -m pytest -q tests/test_pool.py tests/test_pool_multinode.py

bench-pool: setup
	$(BIN)/python bench/pool.py
