#!/usr/bin/env bash
# Sets up everything msd_fast needs on a fresh machine, and is fast when it is already done:
#   .venv with the pinned requirements (re-installed only when requirements.txt changes),
#   the C++/CUDA extension (re-built only when setup.py or csrc/ change),
#   Debian's Fashion-MNIST package (as root via apt-get; otherwise it prints the command to run).
# Source it (`. scripts/setup_env.sh`) or run it; it leaves VENV_PY pointing at the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"

# A full disk makes pip fail half-way with "No space left on device"; say so before, with the numbers.
# (pip runs with --no-cache-dir: a cached copy of each wheel would take as much again.)
need_disk_gb() {  # need_disk_gb GB WHAT
  local free_kb
  free_kb="$(df -Pk "$ROOT" | awk 'NR == 2 {print $4}')"
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $(( $1 * 1024 * 1024 )) ]; then
    echo "[setup] warning: $(( free_kb / 1024 )) MB free under $ROOT; about $1 GB is needed for $2:" >&2
    df -h "$ROOT" >&2
  fi
}

if [ ! -x "$VENV_PY" ]; then
  echo "[setup] creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
req_stamp="$(sha1sum requirements.txt | cut -c1-40)"
if [ "$(cat "$VENV/.req-stamp" 2>/dev/null || true)" != "$req_stamp" ]; then
  echo "[setup] installing requirements (torch==2.14.1, torchvision==0.29.1, triton, ...)"
  need_disk_gb 12 "the venv (5.6 GB) and, in CI, the oldest-torch leg (2 GB), builds and test files"
  "$VENV_PY" -m pip install -q --no-cache-dir --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV_PY" -m pip install -q --no-cache-dir -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV_PY" -c "import torch, torchvision, triton, yaml, tqdm, matplotlib, pytest" \
    || { echo "[setup] requirements failed to install" >&2; exit 1; }
  echo "$req_stamp" > "$VENV/.req-stamp"
fi

# The CUDA toolkit, when present, lets setup.py build the .cu sources too (compile-and-link only here).
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
# The stamp lives in the venv: a new venv has no editable install yet, even where an old _C*.so is left.
build_stamp="$(cat setup.py pyproject.toml csrc/* | sha1sum | cut -c1-40)-${CUDA_HOME:-nocuda}-${MSD_FAST_SKIP_EXT:-0}-${MSD_FAST_NO_CUDA:-0}-${MSD_FAST_MARCH:-portable}"
if [ "$(cat "$VENV/.build-stamp" 2>/dev/null || true)" != "$build_stamp" ] \
   || { [ "${MSD_FAST_SKIP_EXT:-0}" != 1 ] && ! ls "$ROOT"/msd_fast/_C*.so >/dev/null 2>&1; }; then
  echo "[setup] building msd_fast (C++ extension${CUDA_HOME:+ with CUDA sources}; nvcc takes a few minutes)"
  start=$(date +%s)
  "$VENV_PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV_PY" -c "import msd_fast" || { echo "[setup] msd_fast failed to install" >&2; exit 1; }
  if [ "${MSD_FAST_SKIP_EXT:-0}" != 1 ] && ! ls "$ROOT"/msd_fast/_C*.so >/dev/null 2>&1; then
    echo "[setup] the C++ extension did not build; see: $VENV_PY -m pip install --no-build-isolation -e . -v" >&2
    exit 1
  fi
  echo "[setup] built in $(( $(date +%s) - start )) s"
  echo "$build_stamp" > "$VENV/.build-stamp"
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "[setup] could not install dataset-fashion-mnist; run: sudo apt-get install dataset-fashion-mnist" >&2
  else
    echo "[setup] Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" \
         "(or pass --data-dir to a folder with the four IDX .gz files)" >&2
  fi
fi
export VENV_PY
