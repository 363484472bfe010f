#!/usr/bin/env bash
# Set up (first time) and run the demo: organ guidance + automatic tumor segmentation on a generated CT phantom.
# Extra arguments go to `crcseg demo` (e.g. --sample ts-example, -o OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/crcseg demo "$@"
