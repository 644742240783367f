#!/usr/bin/env bash
# The main job: sets everything up (scripts/setup_env.sh), then trains with `python -m msd_fast.train`
# (default: MSD on Fashion-MNIST with a small multi-exit ResNet-18 on the CPU). Arguments are passed on.
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup_env.sh"
exec "$VENV_PY" -m msd_fast.train "$@"
