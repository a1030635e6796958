#!/usr/bin/env bash
# The GPU work of a session in few device calls (device tool: `run`, command `bash bench/gpu_session.sh STAGE`).
#   check    install, the gpu-marked suite, rnncells check, compute-sanitizer x5     (~6 min)
#   bench    rnncells bench on the full preset, JSON + plot                         (long: split by --cell if needed)
#   profile  ncu on training steps of the standard LSTM configuration
# Logs and results go under $OUT (the device tool brings back at most 8 files); a summary is printed last.
# Never touches the card's settings.
set -uo pipefail
stage=${1:?usage: bash bench/gpu_session.sh check|bench|profile [bench args...]}
shift
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
pip install --no-build-isolation --no-deps -q -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
note() { echo "$*" | tee -a "$summary"; }

case "$stage" in
check)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$summary"
  python -m pytest -q -m gpu tests >"$OUT/gpu-tests.log" 2>&1
  note "gpu tests: exit $? ($(tail -n 1 "$OUT/gpu-tests.log"))"
  rnncells check >"$OUT/check.log" 2>&1
  note "rnncells check: exit $? ($(tail -n 1 "$OUT/check.log"))"
  for tool in memcheck racecheck initcheck synccheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 99 python bench/sanitize_target.py >>"$OUT/sanitizers.log" 2>&1
    note "compute-sanitizer $tool: exit $?"
  done
  compute-sanitizer --tool memcheck --error-exitcode 99 python bench/sanitize_target.py "cupy graphs" \
    >>"$OUT/sanitizers.log" 2>&1
  note "compute-sanitizer memcheck, CUDA graphs: exit $?"
  ;;
bench)
  rnncells bench --out "$OUT" --plot "$OUT/ratios.png" "$@" >"$OUT/bench.log" 2>&1
  note "rnncells bench: exit $?"
  tail -n 40 "$OUT/bench.log"
  ;;
profile)
  ncu --target-processes all --launch-skip 200 --launch-count 60 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    python bench/profile_target.py >"$OUT/ncu.txt" 2>&1
  note "ncu: exit $?"
  ;;
*)
  echo "unknown stage $stage" >&2
  exit 2
  ;;
esac
cat "$summary"
