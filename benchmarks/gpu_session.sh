#!/usr/bin/env bash
# The GPU run in one command of at most 9 minutes (BUDGET_S):
#
#   bash benchmarks/gpu_session.sh             # on the GPU machine: OUT=<folder that comes back>
#   bash benchmarks/gpu_session.sh --dry-run   # every stage on the CPU (make gpu-session-dry-run; CI)
#
# Stages, in priority order (a run cut off by its limit has answered the first questions), each
# with its own time limit, never more than what is left of BUDGET_S:
#   env        nvidia-smi, versions, where CUDA is
#   build      inpaint_fast._C in place for sm_90a only (INPAINT_FAST_CUDA_ARCHS=90a), with ptxas's
#              per-kernel registers/spills/shared memory from that same compile (NVCC_APPEND_FLAGS=
#              --resource-usage) -> resources.txt
#   load       available_backends("cuda") must list triton and cuda
#   tests      the GPU tests of both backends (tests/gpu_cases.py; `-k gpu_run`), four pytest
#              processes at once (CUDA, Triton attention half/fp32, Triton fusion): a missing backend
#              fails instead of skipping (INPAINT_FAST_GPU_TESTS=require), no -x, Triton in its
#              single-configuration mode, one JSON line per test in tests_<group>.jsonl
#   memcheck   compute-sanitizer memcheck over small shapes of every CUDA and Triton kernel
#   bench      benchmarks/bench_gpu_targets.py: the two ceilings, then the performance-target rows, every
#              provider in one process, rows saved after every case -> benchmarks.csv
#   racecheck  compute-sanitizer racecheck (fewer cases), with whatever time is left
# A stage that fails does not stop the run; the exit status is 1 if any stage failed.
#
# What comes back: $OUT/gpu_session.tar.gz (every log, the CSV, the JSON lines, the resource table;
# re-packed every 15 s and after every stage, so a killed run still returns what finished) and
# $OUT/summary.txt (stage table, test counts, failures with their max errors, Triton cache use).
#
# Environment (all optional):
#   OUT               the folder that comes back (default: <work dir>/out)
#   PY                python (default: .venv/bin/python when it has torch, else python3)
#   BUDGET_S          limit of the whole run in seconds (default 540)
#   STAGES            the stages to run, e.g. "load bench racecheck" for a second call on a warm
#                     machine (the in-place build of the first call is still there)
#   TRITON_CACHE_DIR  Triton's cache (default build/triton-cache: the ahead-of-time cache the call
#                     carries, when present; created empty otherwise, so later stages reuse what
#                     the tests compiled). Entries are counted before and after the Triton stages,
#                     and every compile request is logged as a hit or a miss (triton_cache_<stage>
#                     .jsonl, through INPAINT_FAST_TRITON_CACHE_REPORT).
#   BENCH_AUTOTUNE    1: let the Triton attention autotune in the bench stage (every configuration
#                     not in the cache is compiled there); default 0, the single configuration
#   GPU_SESSION_COMMIT  the commit being run, for the summary (for a copy of the tree without .git)
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_session.sh: unknown argument '$arg'; expected --dry-run or --help" >&2; exit 2 ;;
  esac
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=${GPU_SESSION_WORK:-$ROOT/build/gpu_session/$STAMP}
mkdir -p "$WORK"
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"
SUMMARY=$WORK/summary.txt
BUDGET_S=${BUDGET_S:-540}
T0=$(date +%s)
STAGES=${STAGES:-"env build load tests memcheck bench racecheck"}
if ((DRY)); then
  # The CPU path everywhere, even on a machine with a GPU: Triton through its interpreter.
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1 INPAINT_FAST_GPU_TESTS=dry
else
  export INPAINT_FAST_GPU_TESTS=require
fi

PY=${PY:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
export PY

# ---- CUDA: CUDA_HOME from where nvcc really lives -----------------------------------------
# torch guesses CUDA_HOME from `which nvcc`; a wrapper script such as /usr/local/bin/nvcc (it execs
# /usr/local/cuda-13.0/bin/nvcc) makes that /usr/local, and the link fails (`cannot find -lcudart`).
# readlink does not see through a script, so ask nvcc: its dry run prints its own directory (_HERE_).
CUDA_NOTE=""
find_cuda() {
  local nvcc here
  if [[ -n ${CUDA_HOME:-} && -x ${CUDA_HOME}/bin/nvcc ]]; then
    CUDA_NOTE="CUDA_HOME=$CUDA_HOME (from the environment)"
  else
    nvcc=$(command -v nvcc || true)
    if [[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc; fi
    if [[ -z $nvcc ]]; then
      CUDA_NOTE="nvcc not found on PATH or at /usr/local/cuda/bin/nvcc: the CUDA kernels cannot be built"
      return 1
    fi
    here=$("$nvcc" -dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)
    [[ -n $here ]] || here=$(dirname "$(readlink -f "$nvcc")")
    CUDA_HOME=$(cd "$here/.." && pwd -P)
    CUDA_NOTE="CUDA_HOME=$CUDA_HOME (nvcc $nvcc runs $here/nvcc)"
  fi
  if ! compgen -G "$CUDA_HOME/lib64/libcudart.so*" >/dev/null && ! compgen -G "$CUDA_HOME/targets/*/lib/libcudart.so*" >/dev/null; then
    CUDA_NOTE="$CUDA_NOTE; but no libcudart.so under $CUDA_HOME/lib64 or $CUDA_HOME/targets/*/lib: expected one there (the extension links -lcudart)"
    return 1
  fi
  export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
}
find_cuda
SANITIZER=""
for s in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer" "$(command -v compute-sanitizer || true)"; do
  if [[ -n $s && -x $s ]]; then SANITIZER=$s; break; fi
done

# ---- Triton: the carried cache, single configuration for the tests ------------------------
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$ROOT/build/triton-cache}
if [[ -d $TRITON_CACHE_DIR ]]; then CACHE_CARRIED=yes; else CACHE_CARRIED=no; fi
mkdir -p "$TRITON_CACHE_DIR"
cache_entries() { find "$TRITON_CACHE_DIR" -mindepth 1 -maxdepth 1 -type d | wc -l; }
CACHE_START=$(cache_entries)
# A new entry is a kernel compiled in this run: a miss of the carried cache. Per compile request,
# hit or miss and seconds: inpaint_fast.triton_kernels reports them through Triton's compilation listener
# into INPAINT_FAST_TRITON_CACHE_REPORT (one JSON line each; set per stage by run_stage).
cache_report() {  # stage name -> "N cache hits, M misses (S s compiling)"
  "$PY" - "$WORK/triton_cache_$1.jsonl" <<'EOF' 2>&1
import json, os, sys
path = sys.argv[1]
if not os.path.exists(path):
    print("no Triton compile requests recorded")
    sys.exit()
lines = [json.loads(x) for x in open(path) if x.strip()]
misses = [x for x in lines if not x.get("hit")]
seconds = sum(x.get("seconds", 0) for x in misses)
print(f"{len(lines) - len(misses)} Triton cache hits, {len(misses)} misses ({seconds:.0f} s compiling)")
EOF
}
export INPAINT_FAST_TRITON_AUTOTUNE=0
# The tests poison outputs through PyTorch's deterministic mode (tests/gpu_cases.py poisoned()),
# under which cuBLAS calls warn without a fixed workspace; this one also makes them deterministic.
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}

# ---- stage bookkeeping, packing ------------------------------------------------------------
declare -A STATUS NOTE SECS LIMIT
ORDER=()
pack() {  # one archive of everything under $WORK, replaced atomically (the packer loop and the
  # stages both pack: each writes its own temporary file, named by its process id)
  local tmp=$OUT/.gpu_session.$BASHPID.tmp
  cp "$SUMMARY" "$OUT/.summary.$BASHPID.tmp" 2>/dev/null && mv -f "$OUT/.summary.$BASHPID.tmp" "$OUT/summary.txt"
  tar -czf "$tmp" --warning=no-file-changed -C "$(dirname "$WORK")" --exclude=out "$(basename "$WORK")" 2>/dev/null
  # Status 1 is GNU tar's "a log grew while it was read": the archive is still whole.
  if (($? <= 1)) && [[ -s $tmp ]]; then mv -f "$tmp" "$OUT/gpu_session.tar.gz"; else rm -f "$tmp"; fi
}
write_summary() {
  {
    echo "gpu_session $STAMP ($( ((DRY)) && echo "dry run on the CPU" || echo GPU)) commit ${GPU_SESSION_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    echo "elapsed $(($(date +%s) - T0)) s of BUDGET_S=$BUDGET_S; archive: gpu_session.tar.gz ($(basename "$WORK")/)"
    printf '%-10s %-8s %6s %6s  %s\n' stage status s limit note
    local s
    for s in "${ORDER[@]}"; do printf '%-10s %-8s %6s %6s  %s\n' "$s" "${STATUS[$s]}" "${SECS[$s]:-}" "${LIMIT[$s]:-}" "${NOTE[$s]:-}"; done
    [[ -f $WORK/summary_extra.txt ]] && cat "$WORK/summary_extra.txt"
  } >"$SUMMARY"
}
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
FAILED=0
run_stage() {  # name, cap (s), function
  local name=$1 cap=$2 fn=$3 limit start rc
  limit=$(($(left) - 5))  # 5 s to pack at the end
  ((limit > cap)) && limit=$cap
  ORDER+=("$name")
  LIMIT[$name]=$limit
  if ((limit < 20)); then
    STATUS[$name]=skipped NOTE[$name]="out of time (${limit}s left of BUDGET_S)"
    FAILED=1
    write_summary; pack
    return
  fi
  STATUS[$name]=running
  write_summary; pack
  echo "=== $name (limit ${limit}s) ==="
  start=$(date +%s)
  STAGE_LIMIT=$limit INPAINT_FAST_TRITON_CACHE_REPORT=$WORK/triton_cache_$name.jsonl "$fn" >"$WORK/$name.log" 2>&1
  rc=$?
  SECS[$name]=$(($(date +%s) - start))
  if ((rc == 0)); then STATUS[$name]=ok; elif ((rc == 124 || rc == 137)); then STATUS[$name]=TIMEOUT; FAILED=1; else STATUS[$name]=FAILED; FAILED=1; fi
  [[ -f $WORK/$name.note ]] && NOTE[$name]=$(tr '\n' ' ' <"$WORK/$name.note")
  echo "--- $name: ${STATUS[$name]} (rc=$rc) in ${SECS[$name]}s; log $WORK/$name.log"
  tail -n 15 "$WORK/$name.log"
  write_summary; pack
}
PACKER=""
( while sleep 15; do pack; done ) &
PACKER=$!
trap '[[ -n $PACKER ]] && kill "$PACKER" 2>/dev/null; write_summary; pack' EXIT

# ---- stages ----------------------------------------------------------------------------------
stage_env() {
  echo "dry run: $DRY; budget ${BUDGET_S}s; stages: $STAGES; work dir $WORK"
  echo "cuda: $CUDA_NOTE"
  echo "compute-sanitizer: ${SANITIZER:-not found}"
  timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 ||
    echo "nvidia-smi: not available"
  timeout 10 nvcc --version 2>&1 | tail -n 2
  echo "cpus: $(nproc); python: $PY"
  timeout 60 "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "triton", "numpy", "setuptools", "ninja", "pytest"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - reported, the stages that need it will fail
        print(name, "NOT IMPORTABLE:", exc)
import torch
print("torch cuda", torch.version.cuda, "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("fp32 matmul precision", torch.get_float32_matmul_precision())
# The carried Triton cache hits only if it was built by this very Triton build (same version, same
# libtriton binary): a mismatch here means every Triton kernel compiles on the device.
import json, os
try:
    from inpaint_fast.triton_kernels.aot import INDEX_FILE, triton_build_key
    here = triton_build_key()
    path = os.path.join(os.environ.get("TRITON_CACHE_DIR", ""), INDEX_FILE)
    built = json.load(open(path)).get("triton_build", "?") if os.path.exists(path) else "no index"
    print("triton build", here, "| carried cache built by", built, "(match)" if built == here else "(MISMATCH)")
except Exception as exc:  # noqa: BLE001 - reported only
    print("triton build: not determined:", exc)
EOF
  echo "triton cache: $TRITON_CACHE_DIR (carried: $CACHE_CARRIED, $CACHE_START entries)"
  echo "commit: ${GPU_SESSION_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo "unknown (no .git)")}"
  local gpu
  gpu=$(timeout 10 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  echo "${gpu:-no GPU}; ${CUDA_NOTE%% (*}" >"$WORK/env.note"
}

stage_build() {
  local log=$WORK/build.log.raw rc=0
  if ((DRY)); then
    # Out of place: the dry run must not replace the inpaint_fast/_C*.so other processes have
    # loaded; objects persist under build/ so a second dry run only relinks.
    timeout "$STAGE_LIMIT" env INPAINT_FAST_CUDA_ARCHS=90a NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} --resource-usage" \
      MAX_JOBS="$(nproc)" "$PY" setup.py -q build_ext --build-temp "$ROOT/build/gpu_session_temp" \
      --build-lib "$ROOT/build/gpu_session_lib" >"$log" 2>&1 || rc=$?
  else
    rm -f inpaint_fast/_C*.so
    timeout "$STAGE_LIMIT" env INPAINT_FAST_CUDA_ARCHS=90a NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} --resource-usage" \
      MAX_JOBS="$(nproc)" "$PY" setup.py -q build_ext --inplace >"$log" 2>&1 || rc=$?
  fi
  grep -v "Compile time = " "$log"  # ptxas's per-kernel compile times: noise
  echo "build: rc=$rc"
  "$PY" benchmarks/resource_report.py "$log" $( ((DRY)) && echo --allow-none) >"$WORK/resources.txt" || { ((rc)) || rc=1; }
  cat "$WORK/resources.txt"
  tail -n 1 "$WORK/resources.txt" >"$WORK/build.note"
  return "$rc"
}

stage_load() {
  timeout -k 5 "$STAGE_LIMIT" "$PY" - "$DRY" <<'EOF'
import os
import sys
import torch
import inpaint_fast
from inpaint_fast._extension import extension_error, has_kernel
from inpaint_fast.backends import registry

dry = sys.argv[1] == "1"
device = "cpu" if dry else "cuda"
wanted = ["triton", "cpu"] if dry else ["triton", "cuda"]
err = extension_error()
print("extension:", "loaded" if not err else err)
for op in ("short_long_attention_fwd", "short_long_attention_bwd", "fusion_block_fwd", "fusion_block_bwd"):
    print(op, "CUDA kernel:", has_kernel(op, "CUDA"), "| CPU kernel:", has_kernel(op, "CPU"))
available = inpaint_fast.available_backends(device)
print(f"available_backends({device!r}):", available)
missing = [b for b in wanted if b not in available]
for b in missing:
    for op in ("short_long_attention", "fusion_block"):
        print(f"  {b} on {device} for {op}: {registry(op).why_not(b, torch.device(device), torch.float32) or 'ok'}")
note = f"available on {device}: {', '.join(available)}" + (f"; MISSING {', '.join(missing)}" if missing else "")
print(note)
with open(os.path.join(os.environ["WORK"], "load.note"), "w") as f:
    f.write(note + "\n")
sys.exit(1 if missing else 0)
EOF
}

# Four pytest processes at once: the Triton ones are bound by compiling (one CPU core each), the
# CUDA one by the GPU; the two Triton attention groups split its cases by dtype ("fp32" in the id
# or not), which together cover every test of the file.
TEST_GROUPS=(
  "cuda|tests/test_cuda_kernels.py|gpu_run"
  "triton_attn_half|tests/test_triton_short_long_attention.py|gpu_run and not fp32"
  "triton_attn_fp32|tests/test_triton_short_long_attention.py|gpu_run and fp32"
  "triton_fusion|tests/test_triton_fusion_block.py|gpu_run"
)
stage_tests() {
  local spec name file expr pids=() rc=0 i before
  before=$(cache_entries)
  for spec in "${TEST_GROUPS[@]}"; do
    IFS='|' read -r name file expr <<<"$spec"
    rm -f "$WORK/tests_$name.jsonl"
    INPAINT_FAST_GPU_REPORT=$WORK/tests_$name.jsonl timeout -k 10 "$STAGE_LIMIT" "$PY" -m pytest "$file" -k "$expr" \
      -p no:cacheprovider -v -rfE --tb=short --durations=10 --junitxml="$WORK/tests_$name.xml" \
      >"$WORK/tests_$name.log" 2>&1 &
    pids+=($!)
  done
  i=0
  : >"$WORK/tests.note"
  for spec in "${TEST_GROUPS[@]}"; do
    IFS='|' read -r name file expr <<<"$spec"
    local grc=0
    wait "${pids[$i]}" || grc=$?
    i=$((i + 1))
    ((grc == 0)) || rc=$grc
    local last
    last=$(grep -E "^=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s" "$WORK/tests_$name.log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
    [[ -n $last ]] || last="no pytest summary (rc=$grc$( ((grc == 124 || grc == 137)) && echo ", killed at the time limit"))"
    if [[ $last == *skipped* ]]; then  # a module-level importorskip, say: a skip hides what the run must show
      last="$last (a GPU-run test must not skip: FAILED)"
      rc=1
    fi
    echo "$name: $last" | tee -a "$WORK/tests.note"
    grep -E "^(FAILED|ERROR) " "$WORK/tests_$name.log" | head -n 40
  done
  echo "triton cache: $before entries before, $(cache_entries) after; $(cache_report tests)" | tee -a "$WORK/tests.note"
  return "$rc"
}

stage_memcheck() {
  if ((DRY)); then
    echo "compute-sanitizer skipped (dry run: no GPU); running its case script on the CPU instead" | tee "$WORK/memcheck.note"
    timeout "$STAGE_LIMIT" "$PY" benchmarks/gpu_sanitize.py --dry-run
    return
  fi
  if [[ -z $SANITIZER ]]; then
    echo "compute-sanitizer not found (looked in $CUDA_HOME/bin, $CUDA_HOME/compute-sanitizer, PATH)" | tee "$WORK/memcheck.note"
    return 1
  fi
  # Without the caching allocator every tensor is its own allocation, so memcheck sees an access
  # past a tensor's end instead of into a neighbour's pooled block.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$STAGE_LIMIT" "$SANITIZER" --tool memcheck --error-exitcode 1 \
    --print-limit 30 "$PY" benchmarks/gpu_sanitize.py
  local rc=$?
  { grep -E "ERROR SUMMARY|gpu_sanitize:" "$WORK/memcheck.log" 2>/dev/null | tail -n 2; cache_report memcheck; } |
    tr '\n' ' ' >"$WORK/memcheck.note"
  return $rc
}

stage_racecheck() {
  if ((DRY)); then
    echo "compute-sanitizer racecheck skipped (dry run: no GPU); running its case script (--quick) on the CPU instead" |
      tee "$WORK/racecheck.note"
    timeout "$STAGE_LIMIT" "$PY" benchmarks/gpu_sanitize.py --dry-run --quick
    return
  fi
  if [[ -z $SANITIZER ]]; then
    echo "compute-sanitizer not found" | tee "$WORK/racecheck.note"
    return 1
  fi
  timeout -k 10 "$STAGE_LIMIT" "$SANITIZER" --tool racecheck --racecheck-report analysis --error-exitcode 1 \
    --print-limit 30 "$PY" benchmarks/gpu_sanitize.py --quick
  local rc=$?
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|gpu_sanitize:" "$WORK/racecheck.log" 2>/dev/null | tail -n 2 | tr '\n' ' ' >"$WORK/racecheck.note"
  return $rc
}

stage_bench() {
  local rc=0 before
  before=$(cache_entries)
  local tune=()
  if [[ ${BENCH_AUTOTUNE:-0} == 1 ]]; then tune=(-u INPAINT_FAST_TRITON_AUTOTUNE); fi
  timeout -k 10 "$STAGE_LIMIT" env "${tune[@]}" "$PY" benchmarks/bench_gpu_targets.py --csv "$WORK/benchmarks.csv" \
    $( ((DRY)) && echo --dry-run) || rc=$?
  local rows=0
  [[ -f $WORK/benchmarks.csv ]] && rows=$(($(wc -l <"$WORK/benchmarks.csv") - 1))
  echo "$rows CSV rows; Triton autotune ${BENCH_AUTOTUNE:-0}; cache +$(($(cache_entries) - before)) entries, $(cache_report bench)" |
    tee "$WORK/bench.note"
  return "$rc"
}

# ---- the run -----------------------------------------------------------------------------------
export WORK DRY
# Caps (seconds) per stage; each stage also gets no more than what is left of BUDGET_S.
declare -A CAP=([env]=20 [build]=210 [load]=40 [tests]=180 [memcheck]=90 [bench]=150 [racecheck]=120)
if ((DRY)); then CAP=([env]=20 [build]=240 [load]=40 [tests]=240 [memcheck]=60 [bench]=120 [racecheck]=60); fi
for s in $STAGES; do
  if [[ -z ${CAP[$s]:-} ]]; then echo "gpu_session.sh: unknown stage '$s'; expected some of: ${!CAP[*]}" >&2; exit 2; fi
done
for s in $STAGES; do run_stage "$s" "${CAP[$s]}" "stage_$s"; done

{
  cat "$WORK"/triton_cache_*.jsonl >"$WORK/triton_cache_all.jsonl" 2>/dev/null
  echo "triton cache $TRITON_CACHE_DIR: carried $CACHE_CARRIED with $CACHE_START entries, $(cache_entries) at the end;" \
    "whole run: $(cache_report all)"
  if compgen -G "$WORK/tests_*.jsonl" >/dev/null; then
    "$PY" - "$WORK"/tests_*.jsonl <<'EOF'
import json, sys
rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
bad = [r for r in rows if r["failed"]]
print(f"parity tests reported: {len(rows)}, failing: {len(bad)}")
for r in bad[:30]:
    print(f"  {r['case']}:")
    for f in r["failed"][:6]:
        print(f"    {f}")
EOF
  fi
} >"$WORK/summary_extra.txt" 2>&1
write_summary
kill "$PACKER" 2>/dev/null
PACKER=""
pack
cat "$SUMMARY"
exit $FAILED
