#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with everything the demo and tests need.
# Idempotent: re-installs only when pyproject.toml or setup.py changed since the last successful setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.setup-stamp
wanted="$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "== setting up .venv with $("$PYTHON" --version) (first time: a few minutes, PyTorch is large) =="
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch is pinned in pyproject.toml (torch==2.14.1, torchvision==0.29.1)
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import OrganGuidanceLib.guidance, totalsegmentator.map_to_binary, slicer, torch" \
  || { echo "setup failed: the environment cannot import the project's dependencies" >&2; exit 1; }
echo "$wanted" > "$stamp"
