#!/usr/bin/env bash
# Creates .venv and installs rag-platform from the lock file (constraints.txt). Idempotent: a
# second run only checks. `--dev` adds the test tools (pytest, ruff, mypy, pre-commit and the
# local LLM used by the tests, whose llama.cpp build takes ~7 min on a new machine); the demo
# needs none of them. torch is installed first and pinned: a CPU build of 2.13.0 lies on this
# machine's disk, while any other torch request would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${RAG_VENV:-.venv}"
extras=""
if [ "${1:-}" = "--dev" ]; then
  extras="[dev]"
  # The web connector's tests crawl Debian's python3-doc HTML (served on loopback).
  if [ ! -f /usr/share/doc/python3.11/html/library/json.html ] && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
    $apt_get update -qq && $apt_get install -y -qq python3-doc >/dev/null \
      || echo "warning: python3-doc not installed; the web connector tests will skip" >&2
  fi
  # The alert rules are checked with promtool (Debian's prometheus package; its daemon is not
  # started here).
  if ! command -v promtool >/dev/null && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
    $apt_get update -qq && DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq prometheus >/dev/null \
      || echo "warning: prometheus (promtool) not installed; the alert-rule tests will skip" >&2
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
locked="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
stamp="$VENV/.rag-platform-installed"
# The stamp names what was installed: "<hash>" or "<hash>[dev]"; a dev install also serves a
# plain one.
if [ -f "$stamp" ]; then
  have="$(cat "$stamp")"
  if [ "$have" = "${locked}${extras}" ] || [ "$have" = "${locked}[dev]" ]; then
    exit 0
  fi
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c constraints.txt "torch==2.13.0"
if [ -n "$extras" ]; then
  # llama.cpp (the dev extra's local LLM) is built for a portable AVX2 CPU, not -march=native: on
  # a CPU that reports AMX where the kernel does not grant AMX state (VMs, sandboxes), the native
  # build's AMX kernels die with SIGILL on the first token. CMAKE_ARGS set by the caller wins.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
  # pip's wheel cache keys a locally built wheel by its source, not by CMAKE_ARGS: a native wheel
  # built earlier on this machine would be reused, AMX kernels and all. So llama.cpp is built here
  # without the cache (its dependencies come with the install below); installed, it is kept.
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --no-deps -c constraints.txt \
    llama-cpp-python
fi
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".${extras}"
echo "${locked}${extras}" > "$stamp"
echo "rag-platform${extras} installed in $VENV" >&2
