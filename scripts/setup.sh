#!/usr/bin/env bash
# Creates .venv and installs rag-platform with its test tools. Idempotent: a second run only
# checks. torch is installed first and pinned: a CPU build of 2.13.0 lies on this machine's disk,
# while any other torch request would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${RAG_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.rag-platform-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
echo "rag-platform installed in $VENV" >&2
