"""Per-kernel registers, spills and shared memory from a CUDA build log (ptxas's resource usage).

    python benchmarks/resource_report.py BUILD_LOG [--allow-none]

benchmarks/gpu_session.sh builds the extension with ``NVCC_APPEND_FLAGS=--resource-usage``, so
ptxas reports every kernel it compiles in that one build (no second compile for the report):

    ptxas info    : Compiling entry function '_ZN...attn_bwd_dq_kernel...' for 'sm_90a'
    ptxas info    : Function properties for _ZN...
        0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    ptxas info    : Used 112 registers, used 1 barriers, 64 bytes smem

This prints one table row per (kernel, target), names demangled with c++filt where it exists and
shortened to the kernel and its template arguments. Shared memory is the static part only: the
kernels' dynamic shared memory is sized at launch (cudaFuncSetAttribute), not known to ptxas.
Exit status 1 when the log has no such lines (the flag did not reach nvcc) unless
``--allow-none`` (a build without CUDA sources, as in the dry run), and the last line counts the
kernels that spill.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from typing import Dict, List

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse(text: str) -> List[Dict[str, object]]:
    """Kernels in the order ptxas compiled them, each with its figures (missing ones as 0)."""
    kernels: List[Dict[str, object]] = []
    current = None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            current = {"mangled": m.group(1), "arch": m.group(2), "registers": 0, "barriers": 0, "smem": 0,
                       "stack": 0, "spill_stores": 0, "spill_loads": 0}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = PROPS.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
            continue
        m = USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            current["barriers"] = int(m.group(2) or 0)
            current["smem"] = int(m.group(3) or 0)
    return kernels


def demangle(names: List[str]) -> List[str]:
    """c++filt's names (unchanged where it is missing), without namespaces and parameter lists."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    out = names
    if tool and names:
        proc = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True)
        if proc.returncode == 0 and len(proc.stdout.splitlines()) == len(names):
            out = proc.stdout.splitlines()
    return [_short(n) for n in out]


def _short(name: str) -> str:
    # "void inpaint_fast::cuda::(anonymous namespace)::attn_fwd_kernel<__nv_bfloat16, 3>(float const*, ...)"
    # -> "attn_fwd_kernel<__nv_bfloat16, 3>"
    if name.startswith("void "):
        name = name[5:]
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list: the first "(" outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            cut = i
            break
    name = name[:cut]
    head, _, _ = name.partition("<")
    return name[len(head.rsplit("::", 1)[0]) + 2:] if "::" in head else name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="build log holding ptxas's --resource-usage output")
    p.add_argument("--allow-none", action="store_true", help="no kernels in the log is not an error")
    args = p.parse_args(argv)
    with open(args.log, errors="replace") as f:
        kernels = parse(f.read())
    if not kernels:
        if args.allow_none:
            print("resource report: no CUDA kernels in this build (a CPU-only torch, or no nvcc)")
            return 0
        print(f"resource report: no 'Compiling entry function' lines in {args.log}; expected ptxas's "
              "--resource-usage output of the CUDA build (NVCC_APPEND_FLAGS=--resource-usage)")
        return 1
    names = demangle([str(k["mangled"]) for k in kernels])
    width = max(len(n) for n in names)
    header = (f"{'kernel':<{width}}  {'arch':<7} {'regs':>4} {'spill st':>8} {'spill ld':>8} {'stack':>5} "
              f"{'smem':>6} {'bar':>3}")
    print("registers / spills (bytes) / stack (bytes) / static shared memory (bytes) per kernel, "
          "from the build's ptxas")
    print(header)
    print("-" * len(header))
    for name, k in zip(names, kernels):
        print(f"{name:<{width}}  {k['arch']:<7} {k['registers']:>4} {k['spill_stores']:>8} {k['spill_loads']:>8} "
              f"{k['stack']:>5} {k['smem']:>6} {k['barriers']:>3}")
    spilling = [n for n, k in zip(names, kernels) if k["spill_stores"] or k["spill_loads"]]
    print(f"{len(kernels)} kernels; {len(spilling)} spill" + (": " + ", ".join(spilling) if spilling else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
