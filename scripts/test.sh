#!/usr/bin/env bash
# The test command: sets up .venv with the test tools if needed, runs the static gates (ruff
# check, ruff format --check, mypy), then the suite. Arguments go to pytest, e.g.
# `scripts/test.sh -m "not integration"` or `scripts/test.sh -k search`; RAG_SKIP_GATES=1 skips
# the gates for a quick local run (CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
if [ "${RAG_SKIP_GATES:-0}" != "1" ]; then
  echo "== ruff check" >&2
  .venv/bin/ruff check .
  echo "== ruff format --check" >&2
  .venv/bin/ruff format --check .
  echo "== mypy" >&2
  .venv/bin/mypy
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
