"""Builds ``inpaint_fast._C``: C++ CPU kernels always; CUDA kernels when torch has CUDA and nvcc exists.

    pip install --no-build-isolation -e .          # build against the installed torch
    INPAINT_FAST_DEBUG=1 ...                         # -O0 -g
    INPAINT_FAST_SANITIZE=1 ...                      # CPU kernels with AddressSanitizer + UBSan (`make sanitize`)
    INPAINT_FAST_NO_CUDA=1 ...                       # skip the CUDA sources even where they could build
    INPAINT_FAST_CUDA_ARCHS="90a" ...                # machine code for these targets only (default: csrc/cuda/architectures.txt)
"""

import glob
import os
import re

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("INPAINT_FAST_DEBUG", "0") == "1"
# Undefined behaviour aborts at the first report (no recovery), so a test run under the
# sanitizers fails on it; frame pointers keep ASan's stack traces whole.
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
SANITIZE = os.environ.get("INPAINT_FAST_SANITIZE", "0") == "1"


def _architectures(path: str = os.path.join(HERE, "csrc", "cuda", "architectures.txt")) -> dict:
    """{"sm": [...], "ptx": [...]} from csrc/cuda/architectures.txt, the one list of CUDA targets
    (CMakeLists.txt and csrc/cuda/compile_check.sh read it too)."""
    targets = {"sm": [], "ptx": []}
    with open(path) as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if words:
                targets[words[0]] += words[1:]
    return targets


def _default_gencode() -> list:
    targets = _architectures()
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in targets["sm"]] + [
        f"-gencode=arch=compute_{a},code=compute_{a}" for a in targets["ptx"]]


def _gencode_from_env() -> list:
    """The default targets, or those INPAINT_FAST_CUDA_ARCHS names ("90a", "80 90a", "80,90"): one
    machine-code target each and no PTX. Each target costs a full device compile of every kernel,
    so a build for one known GPU (benchmarks/gpu_session.sh builds "90a" for the H200) takes a
    fraction of the default list's time; the extension then runs on that architecture only."""
    value = os.environ.get("INPAINT_FAST_CUDA_ARCHS", "").replace(",", " ").split()
    if not value:
        return _default_gencode()
    bad = [a for a in value if not re.fullmatch(r"[0-9]{2,3}[af]?", a)]
    if bad:
        raise SystemExit(f"INPAINT_FAST_CUDA_ARCHS: {' '.join(bad)}: expected compute capabilities such as "
                         "\"90a\" or \"80 90\" (digits, optionally followed by a or f)")
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in value]


def _want_cuda() -> bool:
    if os.environ.get("INPAINT_FAST_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    cxx_flags = ["-O0", "-g"] if DEBUG else ["-O1", "-g"] if SANITIZE else ["-O3"]
    # -fno-trapping-math: the row kernels' selects vectorise in every target clone (why: csrc/cpu/simd.h).
    cxx_flags += ["-std=c++17", "-fopenmp", "-fno-trapping-math"] + (SANITIZE_FLAGS if SANITIZE else [])
    extra = {"cxx": cxx_flags}
    ext_cls = CppExtension
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    if _want_cuda() and cuda_sources:
        ext_cls = CUDAExtension
        sources += cuda_sources
        # No -std here: torch.utils.cpp_extension adds the standard its own headers need under nvcc
        # (C++17 up to torch 2.12; C++20 from 2.13, whose c10 headers use default bit-field
        # initializers, an error in nvcc's C++17 mode), and nvcc refuses two -std flags.
        extra["nvcc"] = (["-O0", "-g", "-lineinfo"] if DEBUG else ["-O3", "-lineinfo"]) + [
            "--expt-relaxed-constexpr"
        ] + _gencode_from_env()
    # Headers (and the schema file csrc/ops.cpp includes), so that editing one rebuilds the sources.
    depends = sorted(glob.glob(os.path.join(csrc, "*.h")) + glob.glob(os.path.join(csrc, "cpu", "*.h"))
                     + glob.glob(os.path.join(csrc, "cuda", "*.cuh"))
                     + glob.glob(os.path.join("inpaint_fast", "ops", "schemas.inc")))
    return ext_cls(
        name="inpaint_fast._C",
        sources=sources,
        depends=depends,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] + (SANITIZE_FLAGS if SANITIZE else []),
    )


setup(
    packages=find_packages(include=["inpaint_fast", "inpaint_fast.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
