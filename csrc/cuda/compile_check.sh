#!/usr/bin/env bash
# Compile-only check of the CUDA sources for machines without a GPU or a CUDA build of torch (CI):
# runs `nvcc -c` (no link) on every csrc/cuda/*.cu for sm_80, sm_90 and sm_90a against the
# installed torch's headers, so a compile error in a .cu file fails `make test`.
#
#   csrc/cuda/compile_check.sh [python]          # default python: .venv/bin/python, else python3
#   INPAINT_FAST_CUDA_CHECK_JOBS=2               # files compiled in parallel (default: 2)
#   INPAINT_FAST_CUDA_CHECK_ARCHS="80 90a"       # a cheaper arch set (default: the `sm` line of architectures.txt)
#   INPAINT_FAST_CUDA_CHECK_EXTRA="--resource-usage" INPAINT_FAST_CUDA_CHECK_VERBOSE=1
#                                                # extra nvcc flags; print nvcc's output on success
#
# Why these flags:
#  * -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE: the CPU wheel ships c10/cuda headers but not the generated
#    c10/cuda/impl/cuda_cmake_macros.h (it exists only in CUDA builds, where it defines
#    C10_CUDA_BUILD_SHARED_LIBS, used for dllexport on Windows only). This macro is c10's own switch
#    to skip that include; the real CUDA build (setup.py / CMake) does not need it.
#  * The kernels include c10/cuda and ATen core headers only, never ATen/cuda/CUDAContext.h, which
#    needs cuBLAS/cuSPARSE headers that a bare CUDA toolkit lacks.
#  * The -D__CUDA_NO_HALF_* flags and the C++ standard are torch.utils.cpp_extension's own (its
#    COMMON_NVCC_FLAGS, and the -std its BuildExtension passes nvcc; INPAINT_FAST_CUDA_CHECK_STD
#    overrides it), so the check compiles what the build does.
#  * One nvcc call per file with every -gencode: the host-side parse of the torch headers, the
#    slow part, is shared by the architectures.
#  * -Werror all-warnings: a warning in our sources (or one the headers raise under these flags)
#    fails the check rather than scrolling by.
set -euo pipefail

cd "$(dirname "$0")/../.."
PY=${1:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then
  echo "cuda-check: nvcc not found (set NVCC=...); skipping the CUDA compile check" >&2
  exit 0
fi

TORCH_FLAGS_LINE=$("$PY" - <<'EOF'
import inspect
import os
import re
import sys

import torch.utils.cpp_extension as ce

flags = ["-I" + p for p in ce.include_paths()]
flags += [f for f in ce.COMMON_NVCC_FLAGS if f != "--expt-relaxed-constexpr"]
# The standard BuildExtension hands nvcc: it sets `cuda_cflags = ['-std=c++NN']` in its ninja
# path (C++17 up to torch 2.12, C++20 from 2.13). Read from that assignment alone, so that a
# changed layout fails loudly instead of compiling against another standard than the build. (A
# fixed standard of our own cannot serve both: torch 2.13's c10 headers need C++20 under nvcc.)
std = os.environ.get("INPAINT_FAST_CUDA_CHECK_STD", "")
if not std:
    found = set(re.findall(r"cuda_cflags\s*=\s*\[\s*'-std=(c\+\+\d+)'", inspect.getsource(ce.BuildExtension)))
    if len(found) != 1:
        sys.exit(f"cuda-check: cannot tell which C++ standard torch {ce.torch.__version__}'s BuildExtension gives "
                 f"nvcc (found {sorted(found) or 'none'}); set INPAINT_FAST_CUDA_CHECK_STD=c++17 or c++20")
    std = found.pop()
flags.append("-std=" + std)
print(" ".join(flags))
EOF
) || exit 1
read -r -a TORCH_FLAGS <<<"$TORCH_FLAGS_LINE"

# The machine-code targets of the build (csrc/cuda/architectures.txt, as setup.py reads it).
ARCHS=${INPAINT_FAST_CUDA_CHECK_ARCHS:-$(sed -n 's/#.*//; s/^sm[[:space:]]\+//p' csrc/cuda/architectures.txt)}
GENCODE=()
for a in $ARCHS; do GENCODE+=("-gencode=arch=compute_${a},code=sm_${a}"); done
JOBS=${INPAINT_FAST_CUDA_CHECK_JOBS:-2}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

shopt -s nullglob
SOURCES=(csrc/cuda/*.cu)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "cuda-check: no csrc/cuda/*.cu files"
  exit 0
fi

compile_one() {
  local src=$1 start end
  start=$(date +%s)
  if "$NVCC" -c "$src" -o "$OUT/$(basename "$src").o" -O3 --expt-relaxed-constexpr -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
    -Werror all-warnings "${TORCH_FLAGS[@]}" "${GENCODE[@]}" ${INPAINT_FAST_CUDA_CHECK_EXTRA:-} >"$OUT/$(basename "$src").log" 2>&1; then
    end=$(date +%s)
    echo "cuda-check: ok   $src (sm_${ARCHS// /, sm_}) in $((end - start)) s"
    if [[ "${INPAINT_FAST_CUDA_CHECK_VERBOSE:-0}" == 1 ]]; then cat "$OUT/$(basename "$src").log"; fi
  else
    cat "$OUT/$(basename "$src").log" >&2
    echo "cuda-check: FAIL $src" >&2
    return 1
  fi
}
export -f compile_one
export NVCC OUT ARCHS
export TORCH_FLAGS_STR="${TORCH_FLAGS[*]}" GENCODE_STR="${GENCODE[*]}"

# Arrays do not cross `xargs bash -c`; rebuild them from the exported strings in each job.
start=$(date +%s)
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} bash -c '
  read -r -a TORCH_FLAGS <<<"$TORCH_FLAGS_STR"; read -r -a GENCODE <<<"$GENCODE_STR"; compile_one "$1"' _ {}
end=$(date +%s)
echo "cuda-check: ${#SOURCES[@]} files compiled in $((end - start)) s"
