#!/usr/bin/env bash
# Regenerates constraints.txt, the lock file scripts/setup.sh installs from, out of the versions
# installed in .venv (run it after changing a dependency in pyproject.toml and installing it).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Pinned versions of every dependency (main and dev): scripts/setup.sh installs with"
  echo "# 'pip install -c constraints.txt', so two fresh clones get the same versions."
  echo "# Regenerate with scripts/lock.sh after changing pyproject.toml."
  .venv/bin/python -m pip list --format=freeze --exclude-editable \
    | grep -v -E '^(rag-platform|pip|setuptools|wheel)(==| @)' \
    | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins" >&2
