#!/usr/bin/env bash
# Set up (first time) and run the demo: organ guidance + automatic tumor segmentation on a generated CT phantom.
# --points: point prompts instead (simulated clicks, a box and one prompt to 3D with the shipped U-SAM demonstration
# model; prints Dice per number of clicks). Extra arguments go to `crcseg demo` (e.g. --points, --mri,
# --sample ts-example, -o OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/crcseg demo "$@"
