#!/usr/bin/env bash
# The test suite again under the oldest torch and Triton msd_fast supports: torch 2.11.0, torchvision 0.26.0,
# Triton 3.6.0 (what the GPU machines this project is lent run), so a change that only the newer versions
# accept fails here, not on a GPU lease. The C++/CUDA extension is built against torch 2.11's headers and
# libraries (the .cu sources too when nvcc is here), and every test runs on it: the Triton kernels through
# 3.6's interpreter, the ahead-of-time compile gate with 3.6's compiler and ptxas. Run by .ci/run after the
# README's test command.
#     bash scripts/test_oldest.sh [pytest args]
#
# How: the old packages go into .venv-oldest/site (pip --target, first on PYTHONPATH); everything else
# (pytest, the CUDA runtime wheels torch 2.11 loads, ...) comes from the main venv (scripts/setup_env.sh).
# The tree is copied to .venv-oldest/tree (the files git tracks or would track: uncommitted work is tested
# too) and the extension built there, so the main build stays as it is. numpy stays below 2.4: Triton
# 3.6's interpreter turns one-element arrays into Python ints, which numpy 2.4 refuses ("only
# 0-dimensional arrays can be converted to Python scalars"). tests/test_install.py is left out: it
# installs the package into a fresh venv of the main torch, which the main run already does.
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup_env.sh"
PINS=("torch==2.11.0" "torchvision==0.26.0" "triton==3.6.0" "numpy<2.4")
OLD="$ROOT/.venv-oldest"
SITE="$OLD/site"
TREE="$OLD/tree"
stamp="${PINS[*]} for $(cat "$VENV/.req-stamp" 2>/dev/null || echo unknown)"
if [ "$(cat "$OLD/.site-stamp" 2>/dev/null || true)" != "$stamp" ]; then
  echo "[oldest] installing ${PINS[*]} into $SITE"
  rm -rf "$SITE"
  mkdir -p "$OLD"
  need_disk_gb 4 "torch 2.11, torchvision 0.26 and Triton 3.6 (2 GB installed) and the tree's copy"
  "$VENV_PY" -m pip install -q --no-cache-dir --no-deps --target "$SITE" "${PINS[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
fi
export PYTHONPATH="$SITE:$TREE"
"$VENV_PY" - <<'PY'
import numpy, torch, torchvision, triton

got = (torch.__version__.split("+")[0], torchvision.__version__.split("+")[0], triton.__version__)
assert got == ("2.11.0", "0.26.0", "3.6.0"), f"the oldest versions did not load: {got} ({torch.__file__})"
print(f"[oldest] torch {torch.__version__}, torchvision {torchvision.__version__}, triton {triton.__version__}, "
      f"numpy {numpy.__version__}")
PY
echo "$stamp" > "$OLD/.site-stamp"   # only once the pins load: a failed install (a full disk) is retried next run

# A fresh copy of the tree; the extension built for the oldest torch is kept while its sources are unchanged.
build_stamp="$(cat setup.py pyproject.toml csrc/* | sha1sum | cut -c1-40)-${CUDA_HOME:-nocuda}-$stamp"
keep="$OLD/kept-build"
rm -rf "$keep"
if [ "$(cat "$OLD/.build-stamp" 2>/dev/null || true)" = "$build_stamp" ] && ls "$TREE"/msd_fast/_C*.so >/dev/null 2>&1; then
  mkdir -p "$keep" && mv "$TREE"/msd_fast/_C*.so "$keep"/
fi
rm -rf "$TREE"
mkdir -p "$TREE"
git ls-files -z -co --exclude-standard | xargs -0 tar cf - | tar xf - -C "$TREE"
ln -s ../kernels "$TREE/msd_fast/kernels"   # as the package maps it (setup.py: package_dir)
cd "$TREE"
if ls "$keep"/_C*.so >/dev/null 2>&1; then
  mv "$keep"/_C*.so msd_fast/
else
  echo "[oldest] building the extension against torch 2.11${CUDA_HOME:+ (with the CUDA sources)}"
  start=$(date +%s)
  "$VENV_PY" setup.py -q build_ext --inplace > "$OLD/build.log" 2>&1 \
    || { tail -30 "$OLD/build.log" >&2; echo "[oldest] the extension did not build against torch 2.11" >&2; exit 1; }
  echo "[oldest] built in $(( $(date +%s) - start )) s"
  echo "$build_stamp" > "$OLD/.build-stamp"
fi
"$VENV_PY" -c "import msd_fast, torch; from msd_fast import _ext; assert _ext.available(), _ext.why_missing(); \
assert msd_fast.__file__.startswith('$TREE'), msd_fast.__file__"
export TRITON_INTERPRET=1   # as scripts/test.sh: the kernels run on CPU through the interpreter
exec "$VENV_PY" -m pytest -q -p no:cacheprovider -W "ignore:Conversion of an array with ndim:DeprecationWarning" \
  --ignore=tests/test_install.py "$@" tests
