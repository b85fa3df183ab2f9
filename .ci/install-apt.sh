#!/usr/bin/env bash
# Installs the Debian packages listed in .ci/apt/*.txt (one per line, # comments), where apt exists
# and we are root. Quiet and idempotent: does nothing when they are all present.
set -euo pipefail
cd "$(dirname "$0")"
pkgs=$(cat apt/*.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \n' '\n' | grep -v '^$' | sort -u || true)
[ -n "$pkgs" ] || exit 0
missing=()
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: Debian packages missing (${missing[*]}); install them for the full sandbox and test suite" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
