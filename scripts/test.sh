#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup_env.sh) and runs the whole test suite.
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup_env.sh"
export TRITON_INTERPRET=1   # the Triton kernels run on CPU through the interpreter in the tests
exec "$VENV_PY" -m pytest -q -p no:cacheprovider "$@" tests
