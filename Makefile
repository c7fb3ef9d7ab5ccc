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
BUILD_DIR ?= build/cmake
SOURCES := $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml

.PHONY: install bench test test-python test-cpp cuda-check clean

install: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q numpy tqdm pillow pytest pytest-benchmark ninja "setuptools>=64" wheel triton
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

# Results go to ./bench-results/benchmarks.csv (git-ignored), never into the committed
# benchmarks/results/benchmarks.csv: refreshing that is `inpaint-fast bench --save` or benchmarks/bench_*.py.
bench: install
	$(VENV)/bin/inpaint-fast bench --quick

test: test-python test-cpp cuda-check

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

clean:
	rm -rf build $(VENV) *.egg-info inpaint_fast/*.so
