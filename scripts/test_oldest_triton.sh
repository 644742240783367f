#!/usr/bin/env bash
# The Triton kernels' tests again under the oldest Triton msd_fast supports (3.6.0: what torch 2.11 ships,
# and what the GPU machines this project is lent run), so a kernel change that only the newer Triton accepts
# fails here, not on a GPU lease: the interpreter tests against the float64 reference
# (tests/test_triton_kernel.py) and the ahead-of-time compile gate with that Triton's own compiler and ptxas
# (tests/test_compile_gate.py: every launch configuration for sm_80 and sm_90, no spills), and the GPU
# sweep's plan loop through the interpreter (tests/test_bench_kernel_sweep.py).
#
# The old Triton goes into a folder of its own (.venv-triton-oldest/, put first on PYTHONPATH); torch and
# everything else come from the main venv (scripts/setup_env.sh). numpy stays below 2.4 there: Triton 3.6's
# interpreter turns one-element arrays into Python ints, which numpy 2.4 refuses ("only 0-dimensional
# arrays can be converted to Python scalars"); Triton 3.8 no longer does. Run by .ci/run after the test suite.
#     bash scripts/test_oldest_triton.sh [pytest args]
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup_env.sh"
OLDEST="${MSD_FAST_OLDEST_TRITON:-3.6.0}"
OVERLAY="$ROOT/.venv-triton-oldest"
stamp="triton==$OLDEST numpy<2.4 for $(cat "$VENV/.req-stamp" 2>/dev/null || echo unknown)"
if [ "$(cat "$OVERLAY/.stamp" 2>/dev/null || true)" != "$stamp" ]; then
  echo "[oldest-triton] installing triton==$OLDEST (and numpy<2.4) into $OVERLAY"
  rm -rf "$OVERLAY"
  "$VENV_PY" -m pip install -q --no-deps --target "$OVERLAY" "triton==$OLDEST" "numpy<2.4" 2>&1 \
    | grep -v "is ignored: it is neither" || true
  echo "$stamp" > "$OVERLAY/.stamp"
fi
export PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
"$VENV_PY" - "$OLDEST" <<'EOF'
import sys

import numpy
import torch
import triton

assert triton.__version__ == sys.argv[1], f"expected triton {sys.argv[1]}, got {triton.__version__} ({triton.__file__})"
print(f"[oldest-triton] triton {triton.__version__}, numpy {numpy.__version__}, torch {torch.__version__}")
EOF
export TRITON_INTERPRET=1   # the compile gate's tests unset it for the compiles they run
exec "$VENV_PY" -m pytest -q -p no:cacheprovider -W "ignore:Conversion of an array with ndim:DeprecationWarning" \
  "$@" tests/test_triton_kernel.py tests/test_compile_gate.py tests/test_bench_kernel_sweep.py
