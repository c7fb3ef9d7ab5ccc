"""Small shapes through every CUDA and Triton kernel, for compute-sanitizer (benchmarks/gpu_session.sh).

    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py [--backends cuda triton] [--quick]
    python benchmarks/gpu_sanitize.py --dry-run          # the same calls on the CPU (cpu backend, interpreter)

The cases are the GPU tests' own small ones (tests/gpu_cases.py: attention at N ≤ 128 with and
without pre, the fusion block at h·w ≤ 256, eval and training, every dtype spec), so the sanitizer
sees every kernel of every dtype at the tails of its tiles, and the Triton kernels are the ones
the tests compiled (no compile inside the sanitizer's slow process). Each call runs forward and
backward and synchronises; nothing is compared (the tests do that): the sanitizer's report is the
result. One line per case is printed and flushed, so a run cut off by its time limit shows how far
it got. ``--quick`` (racecheck, the slowest tool): one case per kernel family and dtype spec.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["cuda", "triton"], choices=["cuda", "triton"])
    p.add_argument("--quick", action="store_true", help="fewer cases (for racecheck)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU: cpu backend for cuda, Triton's interpreter")
    args = p.parse_args(argv)
    if args.dry_run:
        os.environ["INPAINT_FAST_GPU_TESTS"] = "dry"
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))

    import torch

    import gpu_cases as gc
    import op_samples as samples
    import inpaint_fast

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA GPU is visible; expected one (or pass --dry-run)", file=sys.stderr)
        return 2

    def pick(cases, key):
        if not args.quick:
            return cases
        seen, out = set(), []
        for c in cases:  # one case per (kernel family, dtype spec)
            k = key(c)
            if k not in seen:
                seen.add(k)
                out.append(c)
        return out

    attn = pick(gc.sanitizer_attn_cases(), lambda c: (c[1], c[2]))
    fusion = pick(gc.sanitizer_fusion_cases(), lambda c: (c[1], c[2], c[0][-1]))
    if not attn or not fusion:
        print(f"gpu_sanitize: {len(attn)} attention and {len(fusion)} fusion cases; expected some of each "
              "(tests/gpu_cases.py sanitizer_*_cases)", file=sys.stderr)
        return 2
    calls, missing = 0, []
    start = time.perf_counter()
    for backend in args.backends:
        for op in ("short_long_attention", "fusion_block"):
            reason = gc.unavailable(op, backend)
            if reason:
                missing.append(f"{backend} cannot run {op}: {reason}")
        if missing:
            continue
        name = gc.backend_name(backend)
        for case in attn:
            shape, spec, with_pre, layout = case
            dtype, precision = gc.parse_spec(spec)
            with gc.matmul_precision(precision):
                inputs = [None if t is None else t.to(gc.DEVICE).requires_grad_(True)
                          for t in samples.attention_sample_inputs(shape, dtype, with_pre, layout)]
                y, cf = inpaint_fast.short_long_attention(*inputs, backend=name)
                loss = y.float().square().sum() + (cf.float().square().sum() if cf is not None else 0)
                loss.backward()
            _sync(torch)
            calls += 1
            print(f"sanitize {backend}: attention {gc.attn_id(case)}: ran", flush=True)
        for case in fusion:
            shape, spec, training, layout = case
            dtype, precision = gc.parse_spec(spec)
            with gc.matmul_precision(precision):
                feat, image, params = gc.fusion_inputs(shape, dtype, layout)
                p = samples.fusion_params_clone(params, leaves=True)
                f, im = feat.clone().requires_grad_(True), image.clone().requires_grad_(True)
                out, alpha, raw = inpaint_fast.fusion_block(f, im, p, training=training, backend=name)
                (out.float().square().sum() + alpha.float().sum() + raw.float().sum()).backward()
            _sync(torch)
            calls += 1
            print(f"sanitize {backend}: fusion {gc.fusion_id(case)}: ran", flush=True)
    print(f"gpu_sanitize: {calls} forward+backward calls through {', '.join(args.backends)} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    for line in missing:
        print(f"gpu_sanitize: {line}", file=sys.stderr)
    return 1 if missing else 0


def _sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
