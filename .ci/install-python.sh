#!/usr/bin/env bash
# Installs torch==2.13.0 (first, pinned: a bare `torch` requirement would pull a CUDA build) and then
# the package with its dev extra into the venv whose bin/ is $1. With uv (installed into the venv
# from the package index) when it works: the same pins, bytecode compiled, in ~60 s against ~140 s for
# pip on 2 cores.
# uv reads none of pip's settings, so pip's index, extra indexes and find-links (its config files and
# PIP_* variables) are handed to it; anything failing on the uv path falls back to pip.
set -euo pipefail
BIN=$1
cd "$(dirname "$0")/.."
pip_q=(-q --disable-pip-version-check)

pip_setting() {  # a pip setting as pip sees it (env or config files), or nothing
  "$BIN/pip" config list 2>/dev/null | sed -n "s/^\(:env:\|global\|install\)\.$1='\(.*\)'$/\2/p" | tail -1
}

with_uv() {
  "$BIN/pip" install "${pip_q[@]}" uv || return 1
  # pip picks the best match across all its indexes; uv, unless told, only from the first that has a package.
  # pip also compiles every module to bytecode at install; uv, unless told, does not. Without the .pyc
  # files every new process (each sandboxed trial child, whose site-packages is read-only) compiles
  # torch and transformers again: it made the test suite twice as slow.
  local args=(--python "$BIN/python" --quiet --index-strategy unsafe-best-match --compile-bytecode) extra=()
  for u in $(pip_setting extra-index-url); do
    [ "${u#file://}" = "$u" ] || [ -d "${u#file://}" ] || continue  # a local index that is not here
    extra+=("$u")
  done
  for d in $(pip_setting find-links); do [ ! -e "$d" ] || args+=(--find-links "$d"); done
  # index URLs may carry credentials (https://user:token@mirror/...): in uv's environment, never on a
  # command line that any process on the machine can read
  local idx
  idx=$(pip_setting index-url)
  export UV_DEFAULT_INDEX="${idx:-https://pypi.org/simple}" UV_INDEX="${extra[*]}"
  "$BIN/python" -m uv pip install "${args[@]}" torch==2.13.0 &&
    "$BIN/python" -m uv pip install "${args[@]}" -e '.[dev]'
}

if ! with_uv; then
  echo "note: installing with uv failed; installing with pip" >&2
  "$BIN/pip" install "${pip_q[@]}" torch==2.13.0
  "$BIN/pip" install "${pip_q[@]}" -e '.[dev]'
fi
