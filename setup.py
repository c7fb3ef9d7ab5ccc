"""Builds ``inpaint_fast._C``: C++ CPU kernels always; CUDA kernels when torch has CUDA and nvcc exists.

    pip install --no-build-isolation -e .          # build against the installed torch
    INPAINT_FAST_DEBUG=1 ...                         # -O0 -g
    INPAINT_FAST_NO_CUDA=1 ...                       # skip the CUDA sources even where they could build
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("INPAINT_FAST_DEBUG", "0") == "1"


def _want_cuda() -> bool:
    if os.environ.get("INPAINT_FAST_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    cxx_flags = ["-O0", "-g"] if DEBUG else ["-O3"]
    cxx_flags += ["-std=c++17", "-fopenmp"]
    extra = {"cxx": cxx_flags}
    ext_cls = CppExtension
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    if _want_cuda() and cuda_sources:
        ext_cls = CUDAExtension
        sources += cuda_sources
        extra["nvcc"] = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"] + [
            f"-gencode=arch=compute_{a},code=sm_{a}" for a in ("80", "90")
        ]
    return ext_cls(
        name="inpaint_fast._C",
        sources=sources,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["inpaint_fast", "inpaint_fast.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
