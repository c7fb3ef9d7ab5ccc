#!/usr/bin/env bash
# The C++ CPU kernels built with AddressSanitizer and UndefinedBehaviorSanitizer, and the op tests
# of the `cpu` backend run against that build (`make sanitize`):
#
#   tests/sanitize.sh [python]        # default python: .venv/bin/python
#   SANITIZE_TESTS="tests/test_fusion_block.py" tests/sanitize.sh     # a narrower set
#
# The sanitized extension is built into build/sanitize/ next to a copy of the Python package, and
# the tests run from there (Python puts the working directory first on sys.path), so they import
# that copy and the normal build is untouched. Python and torch are
# not instrumented, so the ASan runtime is preloaded; leak detection is off (the interpreter keeps
# memory until exit by design). Any report stops the run with a non-zero status: ASan's at the
# first error (halt_on_error), UBSan's because the build passes -fno-sanitize-recover.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
DIR=build/sanitize
TESTS=${SANITIZE_TESTS:-"tests/test_short_long_attention.py tests/test_fusion_block.py tests/test_nonfinite.py tests/test_properties.py"}

mkdir -p "$DIR"
# The package's Python files, fresh each run; the sanitized extension beside them is rebuilt only
# when a source changed (setuptools compares timestamps).
find "$DIR/inpaint_fast" -name '*.py' -delete 2>/dev/null || true
tar --exclude='*.so' --exclude='__pycache__' -cf - inpaint_fast | tar -xf - -C "$DIR"
start=$(date +%s)
if ! INPAINT_FAST_SANITIZE=1 INPAINT_FAST_NO_CUDA=1 "$PY" setup.py build_ext --build-temp "$DIR/tmp" \
    --build-lib "$DIR" >"$DIR/build.log" 2>&1; then
  cat "$DIR/build.log" >&2
  echo "sanitize: the build failed" >&2
  exit 1
fi
echo "sanitize: built $DIR/inpaint_fast/_C*.so with -fsanitize=address,undefined in $(( $(date +%s) - start )) s"

ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=87
ROOT=$PWD
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
cd "$DIR"

# The run must really use the instrumented kernels: the copy's extension, linked to the ASan runtime.
"$PY" - <<'EOF'
import os, subprocess, sys
import inpaint_fast._C as ext
want = os.path.realpath(".")
assert os.path.realpath(ext.__file__).startswith(want), f"sanitize: loaded {ext.__file__}, not the build in {want}"
libs = subprocess.run(["ldd", ext.__file__], capture_output=True, text=True).stdout
assert "libasan" in libs and "libubsan" in libs, f"sanitize: {ext.__file__} is not linked to the sanitizers:\n{libs}"
print(f"sanitize: tests use {ext.__file__}")
EOF

start=$(date +%s)
TEST_PATHS=()
for t in $TESTS; do TEST_PATHS+=("$ROOT/$t"); done
"$PY" -m pytest "${TEST_PATHS[@]}" -q -p no:cacheprovider -k "cpu" -W ignore::RuntimeWarning
echo "sanitize: clean in $(( $(date +%s) - start )) s"
