#!/usr/bin/env bash
# GPU checks of the V4 attention kernels in one command, within a total time budget:
#
#   bash bench/kernels/run_gpu.sh
#
# 1. the real-shape tests (pytest -m gpu: Flash/Pro shapes, 64k/128k/1M contexts);
# 2. the decode benchmark (bench/kernels/decode.py -> var/bench/kernels.json);
# 3. with the time left, the small-shape kernel tests on CUDA (pytest -m "not gpu").
#
# Needs only this repository and a CUDA GPU: if no Python with CUDA torch and triton is
# found, torch, triton and pytest are installed from PyPI into var/gpu-venv first.
# Everything is printed and also kept under var/bench/gpu-run/ (and copied to $OUT when
# that is set). TIERGATE_GPU_BUDGET_S sets the total budget in seconds (default 450).
set -uo pipefail

cd "$(dirname "$0")/../.."
START=$(date +%s)
BUDGET=${TIERGATE_GPU_BUDGET_S:-450}
LOGS=var/bench/gpu-run
mkdir -p "$LOGS"

left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { printf '\n=== %s (%ss left)\n' "$*" "$(left)"; }

has_cuda_torch() {
  "$1" -c 'import sys, torch, triton; sys.exit(0 if torch.cuda.is_available() else 1)' \
    >/dev/null 2>&1
}

say "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
  --format=csv 2>&1 || echo "nvidia-smi not available"

say "python"
PY=""
for cand in "${PYTHON:-}" var/gpu-venv/bin/python .venv/bin/python python3 python; do
  [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
  if has_cuda_torch "$cand"; then PY=$cand; break; fi
done
if [ -z "$PY" ]; then
  echo "no Python with CUDA torch and triton: installing torch triton pytest from PyPI"
  if python3 -m venv var/gpu-venv >/dev/null 2>&1; then
    PY=var/gpu-venv/bin/python
    "$PY" -m pip install --quiet --upgrade pip >/dev/null 2>&1
    "$PY" -m pip install --quiet torch triton pytest numpy 2>&1 | tail -5
  else
    PY=python3
    "$PY" -m pip install --quiet --user torch triton pytest numpy 2>&1 | tail -5 ||
      "$PY" -m pip install --quiet --break-system-packages torch triton pytest numpy 2>&1 | tail -5
  fi
  if ! has_cuda_torch "$PY"; then
    echo "FAILED: $PY has no CUDA torch + triton after installing; nothing measured"
    exit 2
  fi
fi
"$PY" -c 'import pytest' >/dev/null 2>&1 || "$PY" -m pip install --quiet pytest 2>&1 | tail -2
"$PY" - <<'EOF'
import platform, torch, triton
p = torch.cuda.get_device_properties(0)
print(f"python {platform.python_version()}  torch {torch.__version__}  triton {triton.__version__}"
      f"  cuda {torch.version.cuda}")
print(f"gpu {p.name}  cc {p.major}.{p.minor}  {p.multi_processor_count} SMs"
      f"  {p.total_memory / 2**30:.0f} GiB")
EOF

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfEs --durations=10)

say "1. real-shape kernel tests (pytest -m gpu)"
T1=$(($(left) - 150))
[ "$T1" -gt 200 ] && T1=200
RC1=skipped
if [ "$T1" -gt 30 ]; then
  timeout -s INT -k 15 "$T1" "${PYTEST[@]}" tests/engines/kernels -m gpu 2>&1 |
    tee "$LOGS/test_gpu.log"
  RC1=${PIPESTATUS[0]}
fi

say "2. decode benchmark"
T2=$(($(left) - 70))
RC2=skipped
if [ "$T2" -gt 30 ]; then
  timeout -s INT -k 15 "$T2" "$PY" bench/kernels/decode.py --budget-s $((T2 - 45)) 2>&1 |
    tee "$LOGS/bench.log"
  RC2=${PIPESTATUS[0]}
fi

say "3. small-shape kernel tests on CUDA (pytest -m 'not gpu')"
T3=$(($(left) - 5))
RC3=skipped
if [ "$T3" -gt 30 ]; then
  timeout -s INT -k 10 "$T3" "${PYTEST[@]}" tests/engines/kernels -m "not gpu" \
    --ignore=tests/engines/kernels/test_imports.py --ignore=tests/engines/kernels/test_compile_sm90.py \
    2>&1 | tee "$LOGS/test_small.log"
  RC3=${PIPESTATUS[0]}
fi

say "results JSON (var/bench/kernels.json)"
cat var/bench/kernels.json 2>/dev/null || echo "no JSON written"

say "summary"
echo "real-shape tests rc=$RC1  benchmark rc=$RC2  small-shape tests rc=$RC3" |
  tee "$LOGS/summary.txt"
echo "elapsed $(($(date +%s) - START))s of a ${BUDGET}s budget" | tee -a "$LOGS/summary.txt"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/gpu-run"
  cp "$LOGS"/* "$OUT/gpu-run/" 2>/dev/null
  cp var/bench/kernels.json "$OUT/" 2>/dev/null
fi
[ "$RC1" = 0 ] && [ "$RC2" = 0 ] && { [ "$RC3" = 0 ] || [ "$RC3" = skipped ]; }
