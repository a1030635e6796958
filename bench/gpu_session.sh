#!/usr/bin/env bash
# The GPU work of a session, for a machine with no network and at most 10 minutes a command
# (device tool: `run`, command `bash bench/gpu_session.sh STAGE [bench args]`).
#   check    probe, install, smoke script, the gpu-marked suite, compute-sanitizer memcheck and racecheck (~8 min)
#   bench    probe, install, rnncells bench with the given args, e.g. --cell lstm --group standard
#   profile  probe, install, ncu on training steps of the standard LSTM configuration
# Each step runs under its own timeout and writes one file under $OUT; a stage leaves at most
# 8 files there, and summary.txt (one line a step) is printed last.  Never touches the card's settings.
set -uo pipefail
stage=${1:?usage: bash bench/gpu_session.sh check|bench|profile [bench args...]}
shift
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
export PYTHONUNBUFFERED=1
note() { echo "$*" | tee -a "$summary"; }
# step NAME SECONDS LOG COMMAND...: run one step under its timeout, its output to LOG, a line to the summary
step() {
  local name=$1 limit=$2 log=$3 start=$SECONDS
  shift 3
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local what="exit $rc"
  [ "$rc" -eq 124 ] && what="TIMED OUT after ${limit}s"
  note "$name: $what ($((SECONDS - start))s; $(tail -n 1 "$log"))"
  return "$rc"
}

# 1. probe (versions, driver, cuDNN, and which tools are here)
probe() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ("numpy", "cupy", "torch", "pytest", "pytest_benchmark", "cuda.pathfinder", "matplotlib", "ml_dtypes"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "present"))
    except Exception as e:
        print(m, "MISSING:", type(e).__name__, e)
try:
    import cupy
    print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
    import torch
    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
except Exception as e:
    print("probe:", type(e).__name__, e)
try:  # NVRTC compiles the half-precision kernels against these headers
    import sys
    sys.path.insert(0, ".")
    from rnncells._kernels import cuda_include_dir
    print("cuda_fp16.h in", cuda_include_dir())
except Exception as e:
    print("cuda headers:", type(e).__name__, e)
EOF
  for tool in nvcc compute-sanitizer ncu; do echo "$tool: $(command -v "$tool" || echo MISSING)"; done
}
export -f probe
step probe 30 "$OUT/probe.txt" bash -c probe

# 2. install without network; a checkout on PYTHONPATH works too
if ! step install 90 "$OUT/install.log" pip install --no-build-isolation --no-deps -e .; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  note "install: falling back to PYTHONPATH=$PYTHONPATH"
fi

case "$stage" in
check)
  step smoke 120 "$OUT/smoke.log" python bench/smoke.py
  step "gpu suite" 240 "$OUT/gpu-suite.log" \
    python -m pytest -o addopts="" -q -rfE -m gpu --junitxml="$OUT/gpu-suite.xml" tests
  for target in cupy "cupy graphs" "cupy persistent"; do
    step "memcheck $target" 120 "$OUT/sanitizer.log" \
      compute-sanitizer --tool memcheck --error-exitcode 99 python bench/sanitize_target.py "$target"
  done
  # the kernels whose threads share memory and meet at __syncthreads(): layernorm.cu's and lstm_ln_*_step
  step "racecheck layer_norm" 120 "$OUT/sanitizer.log" \
    compute-sanitizer --tool racecheck --error-exitcode 99 python bench/sanitize_target.py cupy layer_norm=True
  # the persistent kernels' shared weights and partial sums (the sigmoid candidate's rows: both peepholes, all flags)
  step "racecheck persistent" 120 "$OUT/sanitizer.log" \
    compute-sanitizer --tool racecheck --error-exitcode 99 python bench/sanitize_target.py "cupy persistent" \
    candidate=sigmoid
  ;;
bench)
  step bench 540 "$OUT/bench.log" python -m rnncells bench --out "$OUT" --plot "$OUT/ratios.png" "$@"
  tail -n 40 "$OUT/bench.log"
  ;;
profile)
  step ncu 400 "$OUT/ncu.txt" ncu --target-processes all --launch-skip 200 --launch-count 60 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis python bench/profile_target.py
  ;;
*)
  echo "unknown stage $stage" >&2
  exit 2
  ;;
esac
echo "---"
cat "$summary"
