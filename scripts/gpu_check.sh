#!/usr/bin/env bash
# One command for a bare CUDA machine (a system python3 that already holds torch and Triton, no network):
#   builds the extension in place, runs the CUDA test suite, then the GPU benchmarks (loss and training
#   throughput), and writes everything under OUTDIR with a summary table at the end.
#
#   bash scripts/gpu_check.sh [OUTDIR]          # default OUTDIR: gpu_check_out/
#   PYTHON=python3.12 bash scripts/gpu_check.sh  # another interpreter
#   STEPS="build tests kernel" bash scripts/gpu_check.sh OUT   # a subset (default: build tests train kernel loss;
#                                                # opt-in: lmstep, the early-exit LM step, needs transformers)
#   TESTS_K="graph or sync" ...                  # only the CUDA tests matching this pytest -k expression
#   KERNEL_SWEEP=1 ...                           # also sweep the loss kernel's tilings (bench_kernel --sweep;
#                                                # its timeout T_KERNEL then defaults to 250 s instead of 90)
# Under the device tool's 10 minutes per command: STEPS="build tests kernel" KERNEL_SWEEP=1 (at most
# 80 + 250 + 250 s; the kernel benchmark saves after every shape and sweep plan, the tests' JUnit XML survives its
# limit), then, as the 15 minutes of device time allow, STEPS="loss train" on the same warm
# machine (~6 min; the build stays; the training step met its targets on the H200 and matters least now);
# then python -m bench.gpu_summary OUT1 OUT2 --commit merges the two folders.
#
# Budget: under 10 minutes on one H100/H200 with the build (each step has its own timeout, T_* variables
# override them, so one slow step cannot eat the others' time). At most 8 files land in OUTDIR (the device
# tool's limit): the log, steps.txt, cuda_tests.xml, three train_cuda_*.json, the kernel and the loss JSON
# (summary.json is written where the results are committed: python -m bench.gpu_summary OUT --commit). Nothing is downloaded. Commit OUTDIR's JSON as bench/results/gpu/ with
# `python -m bench.gpu_summary OUTDIR --commit` (it names the GPU) and regenerate the README with
# `python -m bench.report`.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$(mkdir -p "${1:-gpu_check_out}" && cd "${1:-gpu_check_out}" && pwd)"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
export TRITON_INTERPRET=0        # compile the Triton kernels for the GPU (the CPU tests interpret them)
export PYTHONUNBUFFERED=1
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
STEPS=" ${STEPS:-build tests train kernel loss} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
declare -A STATUS

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" \
  || { echo "python/torch/triton not importable with $PY"; exit 2; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device visible to torch"; exit 2; }

if want build; then
  step "build (pip install --no-build-isolation --no-deps -e .)"
  t0=$(date +%s)
  if timeout 300 "$PY" -m pip install -q --no-build-isolation --no-deps -e . ; then STATUS[build]=ok; else STATUS[build]=FAILED; fi
  echo "build: ${STATUS[build]} in $(( $(date +%s) - t0 )) s"
  "$PY" -c "import msd_fast, msd_fast._ext as e; print('extension:', e.available(), '| CUDA sources:', e.has_cuda())" || STATUS[build]=FAILED
fi

if want tests; then
  step "CUDA tests (tests/test_cuda.py${TESTS_K:+ -k \"$TESTS_K\"})"
  # SIGINT at the limit (then KILL 20 s later): pytest stops as on Ctrl-C and still writes the JUnit XML of
  # the tests it ran, so a suite cut short reports what passed and failed instead of nothing.
  if timeout -s INT -k 20 "${T_TESTS:-250}" "$PY" -m pytest -q -p no:cacheprovider -rs --durations=8 tests/test_cuda.py \
       ${TESTS_K:+-k "$TESTS_K"} --junitxml="$OUT/cuda_tests.xml"; then STATUS[cuda_tests]=ok; else STATUS[cuda_tests]=FAILED; fi
fi

# Training throughput (bench/bench_train.py): baseline vs msd_fast defaults, without the CUDA graph, without
# compile (resnet18), the GPU's busy share per configuration; one JSON per (model, batch).
train() {  # model batch timeout
  step "training throughput: $1, batch $2"
  if timeout "$3" "$PY" -m bench.bench_train --models "$1" --batch "$2" --variants gpu-check \
       --out "$OUT/train_cuda_$1_b$2.json"; then STATUS[train_$1_b$2]=ok; else STATUS[train_$1_b$2]=FAILED; fi
}
if want train; then
  train resnet18 128 "${T_R128:-150}"
  train msdnet1 64 "${T_MSD:-140}"  # one more row than the others: the channels-last toggle
  train resnet18 512 "${T_R512:-120}"
fi

if want kernel; then
  step "the loss's device time from CUDA graphs, and the host's costs (bench/bench_kernel.py)"
  sweep=(); t_kernel=90
  if [ "${KERNEL_SWEEP:-0}" = 1 ]; then sweep=(--sweep); t_kernel=250; fi   # 21 plans x 2 shapes: ~3-4 min
  if timeout "${T_KERNEL:-$t_kernel}" "$PY" -m bench.bench_kernel "${sweep[@]}" \
       --out "$OUT/kernel_cuda_gpu_check.json"; then
    STATUS[bench_kernel]=ok; else STATUS[bench_kernel]=FAILED; fi
fi

if want loss; then
  step "loss benchmark, eager calls (bench/bench_loss.py --grid gpu-check)"
  if timeout "${T_LOSS:-120}" "$PY" -m bench.bench_loss --grid gpu-check --out "$OUT/loss_cuda_gpu_check.json"; then
    STATUS[bench_loss]=ok; else STATUS[bench_loss]=FAILED; fi
fi

if want lmstep; then  # opt-in (STEPS="... lmstep"): needs transformers on the machine
  step "early-exit LM step benchmark (bench/bench_lm_step.py, bf16)"
  if timeout "${T_LMSTEP:-300}" "$PY" -m bench.bench_lm_step --device cuda --dtype bfloat16 --hidden 2048 --layers 16 \
      --vocab 128256 --batch 8 --seq 1024 --out "$OUT/lm_step_cuda.json"; then
    STATUS[bench_lm_step]=ok; else STATUS[bench_lm_step]=FAILED; fi
fi

step "summary"
printf '%s\n' "${!STATUS[@]}" | sort | while read -r k; do echo "$k: ${STATUS[$k]}"; done > "$OUT/steps.txt"
cat "$OUT/steps.txt"
"$PY" -m bench.gpu_summary "$OUT" --no-json || true
grep -q FAILED "$OUT/steps.txt" && exit 1
exit 0
