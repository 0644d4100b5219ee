#!/usr/bin/env bash
# One command on a fresh clone: install, materialize the demo tenants (sec-filings, scifact),
# start the API, ask each tenant's sample question and print the cited answers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rag-platform demo "$@"
