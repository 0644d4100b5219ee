#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the suite (pass pytest arguments through,
# e.g. `scripts/test.sh -m "not integration"` or `scripts/test.sh -k search`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
