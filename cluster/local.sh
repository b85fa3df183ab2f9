#!/usr/bin/env bash
# Loopback multi-node Ray cluster: `cluster/local.sh up|down|status|kill-node NAME [options]`.
# The logic lives in local.py (process groups, state file, readiness); this is the shell entry point.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
exec "$py" "$here/local.py" "$@"
