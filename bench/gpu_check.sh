#!/usr/bin/env bash
# shellcheck disable=SC2329  # the step functions are called through run_step (bash -c under timeout)
# The one-command GPU check (DESIGN.md section 7), for a machine with an NVIDIA GPU and no network:
#
#   bench/gpu_check.sh            # from anywhere; works in the repository root
#   bench/gpu_check.sh --bench-only   # build, devices, probe, tensor-core tests and the benchmarks only
#
#   1. build and install vggcore with nvcc for the GPU present: pip install --no-build-isolation -v .
#   2. nvidia-smi, and the devices the installed vggcore sees (cuda:0 must be among them)
#   3. the fragment-layout probe (bench/tc_probe.py): what mma.sync and ldmatrix put in each lane, against the
#      PTX ISA tables the emulator implements (a mismatch means the emulator's tests proved the wrong layout)
#   4. the tensor-core tests on cuda:0 (tests/test_tensor_cores.py, test_gpu_planner.py, test_gpu_gemm_plans.py)
#   5. bench/conv.py at batch 128 per precision against cuDNN in the same precision: tf32, bf16 (layers and
#      the whole VGG-16 step against PyTorch bf16 autocast), fp32 (TF32 off on both sides)
#   6. the whole test suite: pytest -q (it parametrises over vc.devices(), so cuda:0 is included)
#   7. compute-sanitizer memcheck over the cuda op tests; racecheck and synccheck over the small-shape ones
#      (the cuda twins of the tests the emulator runs)
#   (6 and 7 are skipped with --bench-only)
#   Between 4 and 5, the input pipeline's GPU figures (issue 14): nvJPEG against Pillow and its decode rate, the
#   training step eager against a CUDA graph (bench/step_graph.py), and the VGG-16 step fed by the DataLoader
#   against the same step fed from memory (bench/pipeline.py --end-to-end).
#
# and writes ONE results file, bench/results/gpu-<date>-<gpu>.md (GPU, driver, CUDA, commit, the step table,
# test and sanitizer summaries, the ptxas register report, the benchmark tables), rewritten after every step
# so a run cut short still leaves one. With $OUT set (the lent-GPU tool), the results file and a tarball of
# the full logs are copied there too. A failing step is recorded and the rest still run; the exit status is
# nonzero when any step failed or timed out.
#
# Time: everything must fit in GPU_CHECK_BUDGET seconds (default 540, inside a 10-minute limit of a 15-minute
# GPU window that includes the machine's start). Each step has its own cap, shortened where needed so that the
# later steps keep a minimum share of the budget; the results file is rewritten after every step.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET, GPU_CHECK_PYTEST_WORKERS (pytest-xdist workers,
# default 8; 0 runs serially), VGG_COMMIT (the commit to report where the tree has no .git).
set -u -o pipefail

BENCH_ONLY=0
for arg in "$@"; do
  case $arg in
    --bench-only) BENCH_ONLY=1 ;;
    -h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (expected --bench-only)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-540}
WORKERS=${GPU_CHECK_PYTEST_WORKERS:-8}
START=$SECONDS
DATE=$(date -u +%Y-%m-%d)

if command -v nvidia-smi >/dev/null 2>&1; then
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null | head -n 1)
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0 2>/dev/null | head -n 1)
else
  GPU_NAME="" DRIVER=""
fi
GPU_NAME=${GPU_NAME:-no GPU found}
DRIVER=${DRIVER:-unknown}
GPU_SLUG=$(printf '%s' "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
RESULTS="bench/results/gpu-$DATE-$GPU_SLUG.md"
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/vggcore-gpu-check.XXXXXX")
mkdir -p bench/results

if [ -n "${VGG_COMMIT:-}" ]; then
  COMMIT=$VGG_COMMIT
elif COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && COMMIT="$COMMIT+dirty"
else
  COMMIT="unknown (no .git here; set VGG_COMMIT)"
fi
export VGG_COMMIT=$COMMIT   # bench/conv.py reports the same one
NVCC_VERSION=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -n 1)
NVCC_VERSION=${NVCC_VERSION:-nvcc not found}

STEP_NAMES=()
STEP_STATUS=()
STEP_SECONDS=()
FAILED=0

# run_step NAME CAP RESERVE LOG CMD...: runs CMD with a timeout of min(CAP, what the budget leaves after
# RESERVE seconds kept for later steps), output to LOG; records ok / FAILED (exit N) / TIMEOUT / SKIPPED.
run_step() {
  local name=$1 cap=$2 reserve=$3 log=$4
  shift 4
  local left=$((BUDGET - (SECONDS - START) - reserve))
  local limit=$cap
  [ "$left" -lt "$limit" ] && limit=$left
  local status rc t0=$SECONDS
  if [ "$limit" -lt 10 ]; then
    status="SKIPPED (the ${BUDGET} s budget is spent)"
    echo "skipped, no time left" >"$log"
  else
    echo "== $name (limit ${limit} s) =="
    timeout -k 15 "$limit" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
      0) status="ok" ;;
      124 | 137) status="TIMEOUT after ${limit} s" ;;
      *) status="FAILED (exit $rc)" ;;
    esac
    tail -n 5 "$log" | sed 's/^/    /'
  fi
  [ "$status" = "ok" ] || FAILED=1
  STEP_NAMES+=("$name")
  STEP_STATUS+=("$status")
  STEP_SECONDS+=($((SECONDS - t0)))
  echo "   -> $status ($((SECONDS - t0)) s)"
  write_results
}

# the last lines of a log inside a fenced block (or a note when the log is missing)
log_tail() {
  local file=$1 lines=$2
  echo '```text'
  if [ -s "$file" ]; then tail -n "$lines" "$file"; else echo "(no output)"; fi
  echo '```'
}

# the summary lines compute-sanitizer and pytest print at the end
sanitizer_summary() {
  local file=$1
  echo '```text'
  if [ -s "$file" ]; then
    local summary
    summary=$(grep -E '(ERROR|RACECHECK|SYNCCHECK|LEAK) SUMMARY|^=+ (Error|ERROR|Warning|Race|Invalid|Barrier)' "$file" |
      head -n 20)
    summary+=$'\n'$(grep -E '[0-9]+ (passed|failed|error)|no tests ran' "$file" | tail -n 1)
    if [ -n "${summary//[[:space:]]/}" ]; then echo "$summary"; else tail -n 10 "$file"; fi
  else
    echo "(no output)"
  fi
  echo '```'
}

# ptxas's per-kernel registers, shared memory and spills from the build log (-Xptxas -v), demangled
ptxas_report() {
  "$PY" bench/ptxas_report.py "$LOGDIR/build.log"
}

write_results() {
  local i overall="PASS"
  [ "$FAILED" -ne 0 ] && overall="FAIL"
  {
    echo "# GPU check: $GPU_NAME, $DATE"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: $COMMIT"
    echo "- GPU: $GPU_NAME; driver $DRIVER; nvcc: CUDA $NVCC_VERSION"
    echo "- host: $(uname -n), $(nproc) cores, $(uname -sr); $("$PY" --version 2>&1)"
    [ -s "$LOGDIR/devices.log" ] && echo "- installed vggcore: $(head -n 2 "$LOGDIR/devices.log" | paste -sd ' ')"
    echo "- script: bench/gpu_check.sh, budget ${BUDGET} s, elapsed $((SECONDS - START)) s; overall: **$overall**"
    echo
    echo "| step | status | seconds |"
    echo "|:---|:---|---:|"
    for i in "${!STEP_NAMES[@]}"; do
      echo "| ${STEP_NAMES[$i]} | ${STEP_STATUS[$i]} | ${STEP_SECONDS[$i]} |"
    done
    echo
    echo "## nvidia-smi"
    echo
    log_tail "$LOGDIR/nvidia-smi.log" 40
    echo
    echo "## Build: pip install --no-build-isolation -v ."
    echo
    grep -E 'vggcore: CUDA backend|CMAKE_CUDA_ARCHITECTURES|Successfully installed|error:' "$LOGDIR/build.log" 2>/dev/null |
      head -n 20 | sed 's/^/    /'
    echo
    if [ -s "$LOGDIR/build.log" ]; then
      echo "ptxas register and spill report (-Xptxas -v):"
      echo
      ptxas_report
    fi
    echo
    echo "## Fragment-layout probe: bench/tc_probe.py --device cuda:0"
    echo
    log_tail "$LOGDIR/probe.log" 300
    echo
    echo "## Tensor-core tests on cuda:0"
    echo
    log_tail "$LOGDIR/tc-tests.log" 30
    echo
    echo "## Input pipeline and training step on cuda:0 (issue 14)"
    echo
    echo "nvJPEG against Pillow and the decode rate (tests/test_decode.py -k nvjpeg, pipeline.py --decode-throughput):"
    echo
    log_tail "$LOGDIR/decode.log" 30
    echo
    echo "The training step eager against a CUDA graph (bench/step_graph.py):"
    echo
    log_tail "$LOGDIR/step-graph.log" 30
    echo
    if [ -s "$LOGDIR/e2e.md" ]; then
      sed -e 's/^# /### /' -e 's/^## /### /' "$LOGDIR/e2e.md"
    else
      echo "End-to-end VGG-16 step, data included against from memory (bench/pipeline.py --end-to-end):"
      echo
      log_tail "$LOGDIR/e2e.log" 30
    fi
    echo
    echo "## Tests: pytest -q (whole suite)"
    echo
    log_tail "$LOGDIR/pytest.log" 40
    echo
    echo "## compute-sanitizer"
    echo
    echo "memcheck runs over every cuda test of tests/test_ops.py; racecheck and synccheck over the cuda twins of the"
    echo "small-shape tests the emulator runs. memcheck sees accesses outside whole allocations: an overrun that stays"
    echo "inside a block of vggcore's caching allocator (rounded up to its size class) goes unseen."
    for tool in memcheck racecheck synccheck; do
      echo
      echo "### $tool"
      echo
      sanitizer_summary "$LOGDIR/sanitizer-$tool.log"
    done
    echo
    for p in tf32 bf16 fp32; do
      echo "## Benchmark: bench/conv.py --batch 128 --precision $p"
      echo
      if [ -s "$LOGDIR/bench-$p.md" ]; then
        sed -e 's/^# /### /' -e 's/^## /### /' "$LOGDIR/bench-$p.md"
      else
        log_tail "$LOGDIR/bench-$p.log" 40
      fi
      echo
    done
    echo
    echo "## Logs"
    echo
    echo "Full logs: $LOGDIR (build.log, probe.log, tc-tests.log, pytest.log, bench-*.log, sanitizer-*.log)$([ -n "${OUT:-}" ] && echo "; copied to \$OUT/gpu-check-logs.tar.gz")."
  } >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RESULTS" "$OUT/" 2>/dev/null
    tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$LOGDIR" . 2>/dev/null
  fi
}

echo "vggcore GPU check: $GPU_NAME (driver $DRIVER), commit $COMMIT; results -> $RESULTS; logs in $LOGDIR"

# The steps. Each is a function run by run_step in a child bash under `timeout` (hence export -f). The
# benchmark runs before the sanitizers: it is the measurement a GPU window is for, while the sanitizer steps are the ones
# that can be cut short without losing their findings so far (their logs keep what they saw).
# Minimum seconds kept for the steps after each one: the probe and tensor-core tests come first, then the three
# benchmarks share what is left but 150 s (0 with --bench-only) kept for the whole suite and the sanitizers.
export PY WORKERS LOGDIR
build() {
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install --no-build-isolation --no-index -v .
}
devices() {
  # -P keeps the repository root off sys.path, so the installed package (with its _C) is the one imported
  "$PY" -P -c 'import sys, vggcore as vc
d = vc.devices()
name = vc._C.cuda_device_name(0) if vc.cuda_available() else None
print(f"vggcore {vc.__version__} at {vc.__file__}: devices {d}; cuda:0 = {name}")
sys.exit(0 if "cuda:0" in d else "cuda:0 is not among vggcore.devices(): the cuda tests and benchmark cannot run")'
}
pytest_all() {
  local args=() cores threads
  cores=$(nproc)
  threads=$cores
  if [ "$WORKERS" -gt 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then
    args=(-n "$WORKERS")
    threads=$((cores / WORKERS))
    [ "$threads" -ge 1 ] || threads=1
  fi
  # OpenMP threads per worker, so that workers x threads stays near the core count
  OMP_NUM_THREADS=$threads "$PY" -P -m pytest -q "${args[@]}"
}
sanitize() {
  local tool=$1
  shift
  compute-sanitizer --tool "$tool" --error-exitcode 86 --target-processes all --print-limit 50 \
    "$PY" -P -m pytest -q "$@"
}
probe() {
  "$PY" -P bench/tc_probe.py --device cuda:0
}
tc_tests() {
  "$PY" -P -m pytest -q -k "cuda" tests/test_tensor_cores.py tests/test_gpu_planner.py tests/test_gpu_gemm_plans.py
}
bench() {
  local precision=$1 budget=$2
  shift 2
  "$PY" bench/conv.py --batch 128 --precision "$precision" --reps 5 --burst-ms 20 --time-budget "$budget" \
    --out "$LOGDIR/bench-$precision.md" "$@"
}
decode_check() { "$PY" -P -m pytest -q -s -k nvjpeg tests/test_decode.py && "$PY" bench/pipeline.py --decode-throughput --device cuda:0 --images 64 --reps 2 --folder "$LOGDIR/photos"; }
# Issue 14's end-to-end figure: the paper's VGG-16 training step (fp32, batch 64) fed by the DataLoader with all
# the machine's cores against the same step fed from memory. 320 generated JPEGs are 5 batches an epoch, so epoch
# restarts do not dominate; 8 steps a pass, best of 2 passes of each.
e2e_check() {
  "$PY" -P bench/pipeline.py --end-to-end --device cuda:0 --config D --width 1 --fc-width 4096 --e2e-batch 64 \
    --steps 8 --reps 2 --images 320 --max-workers "$(nproc)" --folder "$LOGDIR/photos-e2e" --append "$LOGDIR/e2e.md"
}
export -f build devices probe tc_tests pytest_all sanitize bench decode_check e2e_check

run_step "build + install" 300 285 "$LOGDIR/build.log" build

{ nvidia-smi 2>&1 || echo "nvidia-smi failed or is missing"; } >"$LOGDIR/nvidia-smi.log"

run_step "vggcore sees cuda:0" 60 285 "$LOGDIR/devices.log" devices
run_step "fragment-layout probe (bench/tc_probe.py)" 60 270 "$LOGDIR/probe.log" probe
run_step "tensor-core tests on cuda:0" 120 240 "$LOGDIR/tc-tests.log" tc_tests
run_step "nvJPEG vs Pillow and decode images/s (tests/test_decode.py -k nvjpeg, pipeline.py --decode-throughput)" 60 230 "$LOGDIR/decode.log" decode_check
run_step "bench/step_graph.py (training step: eager vs CUDA graph)" 60 220 "$LOGDIR/step-graph.log" "$PY" -P bench/step_graph.py --device cuda:0
run_step "bench/pipeline.py --end-to-end (VGG-16 step fed by the loader vs from memory)" 90 200 "$LOGDIR/e2e.log" e2e_check

# The benchmarks, the issue's measurement, in order of importance; each step's cap is its share of what is left
# (the reserve keeps time for the later steps), and conv.py shares its cap among its sections.
REST=$((BENCH_ONLY ? 0 : 150))
left=$((BUDGET - (SECONDS - START) - REST))
run_step "bench/conv.py --precision tf32 (layers)" $((left / 3 > 60 ? left / 3 : 60)) $((REST + 2 * left / 3)) \
  "$LOGDIR/bench-tf32.log" bench tf32 $((left / 3 > 90 ? left / 3 - 20 : 60)) --no-net
left=$((BUDGET - (SECONDS - START) - REST))
run_step "bench/conv.py --precision bf16 (layers, VGG-16 step)" $((left / 2 > 60 ? left / 2 : 60)) \
  $((REST + left / 2)) "$LOGDIR/bench-bf16.log" bench bf16 $((left / 2 > 90 ? left / 2 - 20 : 60))
left=$((BUDGET - (SECONDS - START) - REST))
run_step "bench/conv.py --precision fp32 (layers)" $((left > 60 ? left : 60)) "$REST" "$LOGDIR/bench-fp32.log" \
  bench fp32 $((left > 90 ? left - 20 : 60)) --no-net

if [ "$BENCH_ONLY" -eq 1 ]; then
  write_results
  echo
  echo "results: $RESULTS (--bench-only; overall: $([ "$FAILED" -eq 0 ] && echo PASS || echo FAIL), $((SECONDS - START)) s)"
  [ -n "${OUT:-}" ] && echo "copied to \$OUT: $(basename "$RESULTS"), gpu-check-logs.tar.gz"
  exit "$FAILED"
fi
run_step "pytest -q (whole suite)" 200 75 "$LOGDIR/pytest.log" pytest_all

# the cuda twins of the small-shape tests (the ones the emulator runs), for the slow sanitizer tools
# (sim test ids carry the emulator schedule after the device: "sim-linear-float32-...", "cuda:0-float32-...")
"$PY" -P -m pytest -q --co tests/test_ops.py 2>/dev/null | "$PY" -c '
import re, sys
ids = [line.strip() for line in sys.stdin if "::" in line]
sim = re.compile(r"(?<=[\[-])sim(?:-(?:linear|reverse|random(?::\d+)?))?(?=[\]-])")
small = {sim.sub("DEVICE", i) for i in ids if sim.search(i)}
seen = set()
for i in ids:
    if "cuda:0" in i and i.replace("cuda:0", "DEVICE") in small and i not in seen:
        seen.add(i)
        print(i)' >"$LOGDIR/small-cuda-tests.txt"
SMALL_TESTS=()
mapfile -t SMALL_TESTS <"$LOGDIR/small-cuda-tests.txt"

run_step "compute-sanitizer memcheck (cuda tests of test_ops.py)" 150 45 "$LOGDIR/sanitizer-memcheck.log" \
  sanitize memcheck tests/test_ops.py -k cuda
if [ "${#SMALL_TESTS[@]}" -gt 0 ]; then
  run_step "compute-sanitizer racecheck (${#SMALL_TESTS[@]} small cuda tests)" 120 20 \
    "$LOGDIR/sanitizer-racecheck.log" sanitize racecheck "${SMALL_TESTS[@]}"
  run_step "compute-sanitizer synccheck (${#SMALL_TESTS[@]} small cuda tests)" 90 0 \
    "$LOGDIR/sanitizer-synccheck.log" sanitize synccheck "${SMALL_TESTS[@]}"
else
  for tool in racecheck synccheck; do
    echo "no small cuda tests were collected (is cuda:0 missing from vggcore.devices()?)" \
      >"$LOGDIR/sanitizer-$tool.log"
    STEP_NAMES+=("compute-sanitizer $tool")
    STEP_STATUS+=("SKIPPED (no cuda tests collected)")
    STEP_SECONDS+=(0)
  done
  FAILED=1
fi

write_results
echo
echo "results: $RESULTS (overall: $([ "$FAILED" -eq 0 ] && echo PASS || echo FAIL), $((SECONDS - START)) s)"
[ -n "${OUT:-}" ] && echo "copied to \$OUT: $(basename "$RESULTS"), gpu-check-logs.tar.gz"
exit "$FAILED"
