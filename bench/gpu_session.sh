#!/usr/bin/env bash
# A GPU session's work on a machine with no network, sized for a lease of about 15 minutes of device time (its
# start included) and one command of at most 10 minutes (device tool: `run`, timeout_s 600):
#   bash bench/gpu_session.sh            the lease's plan, most telling first:
#                                        smoke suite bench-standard memcheck racecheck bench-small
#   bash bench/gpu_session.sh STEP...    those steps, in that order; also bench-large, bench-variants, profile
# The plan takes a fresh machine's first call (timeout_s 600); if the machine is still warm and status leaves
# 3 minutes or more, a second call can take DEADLINE=<seconds left - 60> and one more step, then give_back.
# Each step runs under its own cap, cut to what is left of DEADLINE seconds (default 540) from the start, and is
# skipped with under 30 s left: the command ends, its summary printed last, inside the tool's limit.  Steps write
# under $OUT, at most 8 files with the plan (summary.txt: the probe, then a line a step; smoke.log, suite.log,
# bench.log, a JSON record per bench step, sanitizer.log, ncu.txt).  The checkout runs from PYTHONPATH: nothing is
# installed.  Never touches the card's settings.
set -uo pipefail
OUT=${OUT:-gpu-out}
DEADLINE=${DEADLINE:-540}
PY=${PYTHON:-python3}  # the GPU machine's python3 holds CuPy and torch; it may have no `python`
mkdir -p "$OUT"
summary="$OUT/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
note() { echo "$*" | tee -a "$summary"; }

# run NAME CAP LOG COMMAND...: one step under min(CAP, what is left) seconds, which it finds in STEP_LIMIT, its
# output to LOG, a line to the summary
run() {
  local name=$1 cap=$2 log=$3 start=$SECONDS
  shift 3
  local left=$((DEADLINE - SECONDS - 10))
  if [ "$left" -lt 30 ]; then
    note "$name: skipped (${left}s left of ${DEADLINE}s)"
    return 0
  fi
  local limit=$((cap < left ? cap : left))
  echo "=== $name" >>"$log"
  STEP_LIMIT=$limit timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1  # a command or a function
  local rc=$? what
  what="exit $rc"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="TIMED OUT after ${limit}s"
  note "$name: $what ($((SECONDS - start))s; $(tail -n 1 "$log"))"
}

probe() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ("numpy", "cupy", "torch", "pytest", "xdist", "pytest_timeout", "matplotlib", "ml_dtypes"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "present"))
    except Exception as e:
        print(m, "MISSING:", type(e).__name__, e)
try:
    import cupy
    print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
    import torch
    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
    from rnncells._kernels import cuda_include_dir  # NVRTC compiles the half-precision kernels against these
    print("cuda_fp16.h in", cuda_include_dir())
except Exception as e:
    print("probe:", type(e).__name__, e)
EOF
  for tool in nvcc compute-sanitizer ncu; do echo "$tool: $(command -v "$tool" || echo MISSING)"; done
}

# The gpu-marked tests, spread over 8 processes where pytest-xdist is there (each compiles the kernels it launches;
# CuPy's disk cache shares them), each test cut at 120 s where pytest-timeout is (a hung kernel ends its process,
# and xdist starts another), and the session ended in time to print its summary where --session-timeout exists.
suite() {
  local args=(-o addopts="" -q -rfE -p no:cacheprovider -m gpu)
  "$PY" -c "import xdist" 2>/dev/null && args+=(-n 8)
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    args+=(--timeout 120 --timeout-method thread)
    local session=$((STEP_LIMIT > 60 ? STEP_LIMIT - 30 : STEP_LIMIT / 2))  # time left to print the summary
    "$PY" -m pytest --help 2>/dev/null | grep -q -- --session-timeout && args+=(--session-timeout "$session")
  fi
  "$PY" -m pytest "${args[@]}" tests
}

bench() {  # bench GROUP [rnncells bench args]: one group's rows, a JSON record under $OUT
  "$PY" -m rnncells bench --device cuda --group "$@" --out "$OUT"
}

sanitize() {  # sanitize TOOL TARGET [MATCH]: the rows of one backend under compute-sanitizer, float32
  compute-sanitizer --tool "$1" --error-exitcode 99 "$PY" bench/sanitize_target.py "$2" "${3:-}" float32
}

step() {
  case "$1" in
  smoke) run smoke 120 "$OUT/smoke.log" "$PY" bench/smoke.py ;;
  suite) run "gpu suite" 240 "$OUT/suite.log" suite ;;
  bench-standard) run "bench standard" 200 "$OUT/bench.log" bench standard ;;
  bench-small) run "bench small batch" 400 "$OUT/bench.log" bench small --precision fp32 ;;
  bench-large) run "bench large" 200 "$OUT/bench.log" bench large ;;
  bench-variants) run "bench variants" 300 "$OUT/bench.log" bench variants --precision fp32 ;;
  memcheck)  # every variant, forward and backward: eager, graphed, persistent
    for target in cupy "cupy graphs" "cupy persistent"; do
      run "memcheck $target" 60 "$OUT/sanitizer.log" sanitize memcheck "$target"
    done
    ;;
  racecheck)  # the kernels whose threads share memory: layernorm.cu's, lstm_ln_*_step, the persistent kernels
    run "racecheck layer_norm" 60 "$OUT/sanitizer.log" sanitize racecheck cupy layer_norm=True
    run "racecheck persistent" 60 "$OUT/sanitizer.log" sanitize racecheck "cupy persistent" candidate=sigmoid
    ;;
  profile)  # --clock-control none: ncu would otherwise lock the clocks to base
    run profile 300 "$OUT/ncu.txt" ncu --clock-control none --target-processes all --launch-skip 200 --launch-count 60 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis "$PY" bench/profile_target.py
    ;;
  *)
    echo "unknown step $1" >&2
    return 2
    ;;
  esac
}
export -f probe suite bench sanitize
export PY OUT

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(smoke suite bench-standard memcheck racecheck bench-small)
for s in "${steps[@]}"; do
  case "$s" in
  smoke | suite | bench-standard | bench-small | bench-large | bench-variants | memcheck | racecheck | profile) ;;
  *)
    echo "unknown step $s (steps: smoke suite bench-standard bench-small bench-large bench-variants memcheck" \
      "racecheck profile)" >&2
    exit 2
    ;;
  esac
done
timeout 60 bash -c probe >>"$summary" 2>&1
for s in "${steps[@]}"; do step "$s"; done
files=$(find "$OUT" -type f | wc -l)
[ "$files" -gt 8 ] && note "warning: $files files under $OUT; the device tool brings back 8"
echo "---"
cat "$summary"
