"""CPU micro-benchmarks with pytest-benchmark: ``pytest benchmarks/ --benchmark-only``.

Small shapes, a handful of cases, the reference against this package's ``cpu`` backend. The
inputs, providers and correctness gate are those of ``inpaint-fast bench`` (inpaint_fast.bench),
so the two never drift apart; every provider is checked against the reference before it is timed.

pytest-benchmark times with ``time.perf_counter`` around the call, which is only right on CPU
(asynchronous CUDA launches would need a synchronise in the timed call), so this file is CPU-only;
GPU numbers come from ``inpaint-fast bench`` (device events). Compare runs with
``--benchmark-autosave`` / ``--benchmark-compare``.
"""

import pytest
import torch

from inpaint_fast.bench import Sweep, get_op
from inpaint_fast.bench.gate import gate, make_oracle
from inpaint_fast.bench.passes import make_callable

CPU = torch.device("cpu")

# (op, mode, sweep): attention at N = 256 (128² input) and 1024 (256²); fusion block levels 1, 3.
CASES = [
    ("attention", "fwd", Sweep(sizes=(128,), dtypes=("fp32",), modes=(), batch=1)),
    ("attention", "fwd+bwd", Sweep(sizes=(128,), dtypes=("fp32",), modes=(), batch=1)),
    ("attention", "fwd", Sweep(sizes=(256,), dtypes=("fp32",), modes=(), batch=1)),
    ("fusion_block", "eval-fwd", Sweep(sizes=(256,), dtypes=("fp32",), modes=(), batch=1, levels=(1,))),
    ("fusion_block", "eval-fwd", Sweep(sizes=(256,), dtypes=("fp32",), modes=(), batch=1, levels=(3,))),
    ("fusion_block", "train-fwd+bwd", Sweep(sizes=(256,), dtypes=("fp32",), modes=(), batch=1, levels=(1,))),
]
PROVIDERS = ["reference", "cpu"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op,mode,sweep", CASES, ids=[f"{o}-{m}-{s.sizes[0]}-{s.levels}" for o, m, s in CASES])
def test_cpu(benchmark, op, mode, sweep, provider):
    bench = get_op(op)
    (case,) = bench.cases(sweep, CPU)
    variant, pass_ = bench.split_mode(mode)
    with_grad = pass_ != "fwd"
    oracle = make_oracle(bench, case, CPU, variant, with_grad)
    fn, verdict = gate(bench, case, variant, bench.providers()[provider], oracle, "", not with_grad, with_grad, CPU, 0)
    status, note = verdict["grad" if with_grad else "fwd"]
    if status in ("unavailable", "unsupported"):
        pytest.skip(f"{provider}: {note}")
    assert status == "ok", f"{provider} failed the correctness gate: {note}"
    benchmark.group = f"{bench.kernel} {mode} {case.shape}"
    # FLOPs and bytes per call (the formulas of inpaint-fast bench): a rate is extra_info / the time.
    benchmark.extra_info.update(kernel=bench.kernel, mode=mode, shape=case.shape, threads=torch.get_num_threads(),
                                flops=bench.flops(case, pass_), bytes=bench.bytes(case, pass_))
    benchmark(make_callable(fn, bench.make_inputs(case, CPU, variant), pass_))
