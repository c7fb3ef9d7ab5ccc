# The two commands of the README:
#   make bench   — install into .venv and run the quick benchmark of both fused ops vs the reference
#   make test    — install into .venv and run the test suite (pytest + the C++ test through ctest +
#                  the compile-only check of the CUDA sources, `make cuda-check`)
#
# The virtual environment sees the system's packages, so a machine that already has torch (a GPU
# box with a CUDA build) uses it; otherwise $(TORCH) is installed (the CPU wheel by default).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# Pinned: the compile check's manifest (inpaint_fast/triton_kernels/aot_manifest.json) is keyed by the exact
# Triton build. TRITON_LOWEST is the oldest Triton the package supports (the GPU machine's),
# installed beside the venv (build/triton-lowest, first on PYTHONPATH) for its sm_90 compile check.
TRITON ?= triton==3.9.0
TRITON_LOWEST ?= triton==3.6.0
BUILD_DIR ?= build/cmake
SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh inpaint_fast/ops/schemas.inc) setup.py pyproject.toml

.PHONY: install bench test test-python test-cpp cuda-check gpu-session-dry-run clean

install: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q numpy tqdm pillow pytest pytest-benchmark hypothesis matplotlib ninja "setuptools>=64" wheel "$(TRITON)"
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

# Results go to ./bench-results/benchmarks.csv (git-ignored), never into the committed
# benchmarks/results/benchmarks.csv: refreshing that is `inpaint-fast bench --save` or benchmarks/bench_*.py.
bench: install
	$(VENV)/bin/inpaint-fast bench --quick

test: test-python test-cpp cuda-check gpu-compile-check

test-python: install
	$(PY) -m pytest tests -q

test-cpp: install
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > /dev/null
	cmake --build $(BUILD_DIR) -j2
	ctest --test-dir $(BUILD_DIR) --output-on-failure

# nvcc -c (no link) of every csrc/cuda/*.cu for sm_80, sm_90 and sm_90a against the installed torch's
# headers: catches CUDA compile errors on machines without a GPU or a CUDA build of torch (skipped,
# with a message, where nvcc is missing).
cuda-check: install
	csrc/cuda/compile_check.sh $(PY)

# Every stage of benchmarks/gpu_session.sh (the one-call GPU run) on the CPU, at tiny shapes:
# the cpu backend stands in for cuda, Triton runs under its interpreter, compute-sanitizer is
# skipped with a message. Checks the script's plumbing without a GPU (tests/test_gpu_session.py).
gpu-session-dry-run: install
	PY=$(PY) bash benchmarks/gpu_session.sh --dry-run

# Every Triton kernel of both ops compiled ahead of time for sm_90 and sm_80 — each variant and
# each configuration its launcher or autotuner can choose, at PIC's and DFNet's shapes and the GPU
# run's (inpaint_fast/triton_kernels/gpu_run_shapes.py), fp32/fp16/bf16 — without a GPU; fails on a compile
# error, shared memory over the per-block limit, or a spill, and prints one table. Then the same for
# sm_90 with the lowest supported Triton ($(TRITON_LOWEST), the GPU machine's). Resources are cached
# in inpaint_fast/triton_kernels/aot_manifest.json (keyed by Triton's cache hash, which covers the kernel's
# source and line, the Triton build and the specialisation), so only what changed compiles; past
# 120 missing kernels the check stops and asks for a refresh (after changing a kernel or Triton):
#   $(PY) -m inpaint_fast.triton_kernels.aot check --refresh --max-compiles 100000
#   PYTHONPATH=build/triton-lowest $(PY) -m inpaint_fast.triton_kernels.aot check --refresh --targets sm_90 --max-compiles 100000
# GPU_CHECK_PY picks another Python for it.
GPU_CHECK_PY ?= $(PY)
.PHONY: gpu-compile-check
gpu-compile-check: install build/triton-lowest/.installed
	env -u TRITON_INTERPRET $(GPU_CHECK_PY) -m inpaint_fast.triton_kernels.aot check
	env -u TRITON_INTERPRET PYTHONPATH=build/triton-lowest $(GPU_CHECK_PY) -m inpaint_fast.triton_kernels.aot check --targets sm_90

build/triton-lowest/.installed: $(VENV)/.installed
	rm -rf build/triton-lowest
	$(PY) -m pip install -q --no-deps --target build/triton-lowest "$(TRITON_LOWEST)"
	touch $@

# The C++ CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (into build/sanitize,
# beside a copy of the package) and the cpu backend's op, non-finite and property tests run on them.
.PHONY: sanitize
sanitize: install
	tests/sanitize.sh $(PY)

# The property tests' long profile: many more random examples than the fixed set `make test` runs.
.PHONY: test-properties
test-properties: install
	HYPOTHESIS_PROFILE=long $(PY) -m pytest tests/test_properties.py -q

clean:
	rm -rf build $(VENV) *.egg-info inpaint_fast/*.so
