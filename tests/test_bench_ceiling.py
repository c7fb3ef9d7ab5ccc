"""The GEMM ceiling and ``fraction_of_gemm`` (inpaint_fast/bench/ceilings.py, outcome.py, rows.py,
report.py), and the fusion block's FLOP count checked against the reference's own aten calls."""

import math
import os
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from inpaint_fast.bench import FusionBlockBench, ShortLongAttentionBench, Sweep, results_to_rows, run
from inpaint_fast.bench import ceilings
from inpaint_fast.bench.ceilings import GemmCeiling, gemm_spec, measure_ceilings
from inpaint_fast.bench.fusion_block import LEVEL_CHANNELS, fusion_block_bytes, fusion_block_flops, fusion_block_macs
from inpaint_fast.bench.outcome import Result, find_gemm_ceiling, fraction_of_gemm
from inpaint_fast.bench.passes import make_callable
from inpaint_fast.bench.report import format_table
from inpaint_fast.bench.timing import Timing, TimingConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
ENV = {"device_name": "Test CPU (2 threads)", "torch_version": "2.13", "triton_version": "", "cuda_version": "",
       "commit": "abc1234", "timestamp": "2026-01-01T00:00:00+00:00"}  # fmt: skip
TINY_CONFIG = TimingConfig(min_run_time=0.005, min_reps=3, warmup_time=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def _ceiling(ms=(90.0, 100.0, 120.0), n=2048):
    """A timed fp32 GEMM ceiling: 2·n³ FLOPs in ``ms``."""
    return Result("ceiling_gemm", "torch", "fwd", "fp32", f"M{n}-N{n}-K{n}", timing=Timing(*ms, 6), flops=2.0 * n**3)


def _op(ms=(8.0, 10.0, 12.5), flops=1e9):
    return Result("short_long_attention", "cpu", "fwd", "fp32", "B1-C128-Cq32-Cp128-N4096", timing=Timing(*ms, 5),
                  flops=flops, peak_mb=3.0)


def _metric(rows, kernel, metric):
    (row,) = [r for r in rows if r["kernel"] == kernel and r["metric"] == metric]
    return row


# ---------------------------------------------------------------------------------------------
# fraction_of_gemm


def test_fraction_of_gemm_rows_divide_the_op_rate_by_the_ceiling_median():
    ceiling, op = _ceiling(), _op()
    rows = results_to_rows([op, ceiling], ENV)
    gemm_rate = 2.0 * 2048**3 / 100.0e-3  # FLOP/s at the ceiling's median
    frac = _metric(rows, "short_long_attention", "fraction_of_gemm")
    want = (1e9 / 12.5e-3 / gemm_rate, 1e9 / 10.0e-3 / gemm_rate, 1e9 / 8.0e-3 / gemm_rate)
    assert [frac["p20"], frac["p50"], frac["p80"]] == pytest.approx(want, rel=1e-12)
    assert frac["p20"] <= frac["p50"] <= frac["p80"]
    # ... which is what the CSV's own tflops rows give: op tflops.pX / ceiling tflops.p50.
    tflops = _metric(rows, "short_long_attention", "tflops")
    assert frac["p50"] == pytest.approx(tflops["p50"] / _metric(rows, "ceiling_gemm", "tflops")["p50"], rel=1e-12)
    # The ceiling's own row is an ordinary result: ms, tflops, peak_mb, and no fraction of itself.
    assert {r["metric"] for r in rows if r["kernel"] == "ceiling_gemm"} == {"ms", "tflops", "peak_mb"}
    assert [r["metric"] for r in rows if r["kernel"] == "short_long_attention"] == [
        "ms", "tflops", "fraction_of_gemm", "peak_mb"]


def test_fraction_of_gemm_rows_are_absent_without_a_timed_ceiling():
    op = _op()
    assert "fraction_of_gemm" not in {r["metric"] for r in results_to_rows([op], ENV)}
    wrong = Result("ceiling_gemm", "torch", "fwd", "fp32", "M2048-N2048-K2048", status="wrong", note="bad GEMM")
    assert find_gemm_ceiling([op, wrong]) is None
    assert "fraction_of_gemm" not in {r["metric"] for r in results_to_rows([op, wrong], ENV)}
    # An untimed op, or one that counts no FLOPs (the copy ceiling's GB/s), gets none either.
    untimed = Result("short_long_attention", "cpu", "fwd", "fp32", "B1", status="oom")
    bytes_only = Result("fusion_block", "cpu", "eval-fwd", "fp32", "B1", timing=Timing(1, 1, 1), nbytes=1e6)
    assert fraction_of_gemm(untimed, _ceiling()) is None and fraction_of_gemm(bytes_only, _ceiling()) is None
    # An explicit ceiling works for rows saved apart from it (case by case).
    assert "fraction_of_gemm" in {r["metric"] for r in results_to_rows([op], ENV, ceiling=_ceiling())}


def test_the_table_shows_the_fraction_as_a_percentage():
    table = format_table([_op(), _ceiling()])
    header, _, op_line, ceiling_line = table.splitlines()[:4]
    assert "of GEMM" in header
    gemm_rate = 2.0 * 2048**3 / 100.0e-3
    assert f"  {100 * 1e9 / 10.0e-3 / gemm_rate:.1f}%  " in op_line, table  # 58.2%
    assert "%" not in ceiling_line and "TFLOP/s" in ceiling_line
    assert "of GEMM" in format_table([_op()]) and "%" not in format_table([_op()])


# ---------------------------------------------------------------------------------------------
# the ceiling itself


def test_ceiling_specs():
    assert gemm_spec(CPU) == (2048, "fp32")
    assert gemm_spec(torch.device("cuda")) == (8192, "bf16")  # unchanged: the GPU targets divide by it
    assert GemmCeiling.for_run(torch.device("cuda")) is None
    ceiling = GemmCeiling.for_run(CPU)
    assert (ceiling.n, ceiling.dtype) == (2048, "fp32") and ceiling.times == []  # nothing runs until sampled
    with pytest.raises(ValueError, match="CPU only"):
        GemmCeiling(torch.device("cuda"))


def test_gemm_ceiling_pools_its_bursts_into_one_result():
    ceiling = GemmCeiling(CPU, TimingConfig(min_run_time=0.005, min_reps=7, warmup_time=0.0), n=64)
    ceiling.sample()
    ceiling.sample()
    assert ceiling.bursts == 2 and len(ceiling.times) >= 4
    res = ceiling.result()
    assert (res.kernel, res.provider, res.mode, res.dtype, res.shape, res.status) == (
        "ceiling_gemm", "torch", "fwd", "fp32", "M64-N64-K64", "ok")
    assert res.flops == 2.0 * 64**3 and res.timing.reps == len(ceiling.times) >= 7  # topped up to min_reps
    assert 0 < res.timing.p20 <= res.timing.p50 <= res.timing.p80
    assert f"{torch.get_num_threads()} threads; {res.timing.reps} calls in 3 bursts" in res.note


def test_gemm_ceiling_at_its_real_size():
    """The CPU ceiling of a run: 2048³ fp32, spot-checked, one burst and the final one."""
    ceiling = GemmCeiling.for_run(CPU, TimingConfig(min_run_time=0.001, min_reps=2, warmup_time=0.0))
    res = ceiling.result()
    assert res.status == "ok", res.note
    assert res.shape == "M2048-N2048-K2048" and res.dtype == "fp32" and res.timing.reps >= 2


def test_a_wrong_gemm_is_reported_and_not_timed(monkeypatch):
    monkeypatch.setattr(ceilings, "_gemm_call", lambda device, n, dtype: (lambda: None, "GEMM block max err 9"))
    ceiling = GemmCeiling(CPU, TINY_CONFIG, n=64)
    ceiling.sample()
    res = ceiling.result()
    assert (res.status, res.note, res.timing, ceiling.times) == ("wrong", "GEMM block max err 9", None, [])
    assert "fraction_of_gemm" not in {r["metric"] for r in results_to_rows([_op(), res], ENV)}


def test_the_gpu_runs_ceilings_stay_tiny_on_the_cpu():
    """bench_gpu_targets.py --dry-run (gpu_session.sh --dry-run) calls measure_ceilings on the CPU:
    a 256³ bf16 GEMM and an 8 MiB copy, as before."""
    gemm, copy = measure_ceilings(CPU, TINY_CONFIG)
    assert (gemm.kernel, gemm.dtype, gemm.shape, gemm.status) == ("ceiling_gemm", "bf16", "M256-N256-K256", "ok")
    assert (copy.kernel, copy.shape, copy.status) == ("ceiling_copy", f"bytes{8 * 2**20}", "ok")


def test_the_runner_samples_the_ceiling_before_every_timed_result():
    class Counting:
        samples = 0

        def sample(self):
            self.samples += 1
            return self.samples - 1

    counting = Counting()
    bench = FusionBlockBench()
    cases = bench.cases(Sweep(sizes=(8,), dtypes=("fp32",), modes=(), batch=1, levels=(0, 1)), CPU)
    results = run(bench, cases, ("eval-fwd", "train-fwd"), ("reference",), CPU, TINY_CONFIG, ceiling=counting)
    assert counting.samples == len(cases) * 2 and all(r.status == "ok" for r in results)
    assert [r.ceiling_burst for r in results] == list(range(len(results)))  # each its own, in order


def test_each_fraction_divides_by_the_ceiling_bursts_around_its_result():
    """A machine that slows down through the run: each result is set against the two bursts
    around it, not against the run's pooled median."""
    ceiling = GemmCeiling(CPU, TINY_CONFIG, n=64)
    ceiling._call = lambda: None  # the bursts' times are scripted below
    ceiling.burst_times = [[1.0, 1.0], [3.0, 3.0], [5.0]]  # seconds per call: the machine slows
    flops = 2.0 * 64**3
    assert ceiling.rate_around(0) == pytest.approx(flops / 2000.0)  # median of 1, 1, 3, 3 s = 2 s
    assert ceiling.rate_around(1) == pytest.approx(flops / 3000.0)  # 3, 3, 5
    assert ceiling.rate_around(2) == pytest.approx(flops / 5000.0)  # the last burst alone
    assert ceiling.rate_around(3) is None
    early, late, untimed = _op(), _op(), _op()
    early.ceiling_burst, late.ceiling_burst = 0, 1
    ceiling.attach([early, late, untimed])
    assert (early.ceiling_rate, late.ceiling_rate, untimed.ceiling_rate) == (
        ceiling.rate_around(0), ceiling.rate_around(1), None)
    pooled = _ceiling()
    op_rate = early.flops / early.timing.p50
    assert fraction_of_gemm(early, pooled)[1] == pytest.approx(op_rate / early.ceiling_rate)
    assert fraction_of_gemm(late, pooled)[1] == pytest.approx(op_rate / late.ceiling_rate)
    assert fraction_of_gemm(untimed, pooled)[1] == pytest.approx(op_rate / (pooled.flops / pooled.timing.p50))
    # The CSV states the rate each fraction divides by, so it can be recomputed from the file.
    rows = results_to_rows([late, pooled], ENV)
    frac = _metric(rows, "short_long_attention", "fraction_of_gemm")
    assert f"GEMM ceiling around it {late.ceiling_rate / 1e9:.4g} TFLOP/s" in frac["note"]
    tflops = _metric(rows, "short_long_attention", "tflops")
    assert frac["p50"] == pytest.approx(tflops["p50"] / (late.ceiling_rate / 1e9), rel=1e-12)


def test_a_real_run_attaches_a_rate_to_every_timed_result():
    ceiling = GemmCeiling(CPU, TimingConfig(min_run_time=0.004, min_reps=3, warmup_time=0.0), n=64)
    bench = FusionBlockBench()
    cases = bench.cases(Sweep(sizes=(8,), dtypes=("fp32",), modes=(), batch=1, levels=(1,)), CPU)
    results = run(bench, cases, ("eval-fwd",), ("reference", "cpu"), CPU, TINY_CONFIG, ceiling=ceiling)
    gemm = ceiling.result()
    ceiling.attach(results)
    assert gemm.status == "ok" and ceiling.bursts == len(results) + 1, (gemm.note, ceiling.bursts)
    assert all(r.ceiling_rate and r.ceiling_rate > 0 for r in results), [(r.provider, r.ceiling_rate) for r in results]


# ---------------------------------------------------------------------------------------------
# the fusion block's FLOP count


class _AtenCalls(TorchDispatchMode):
    """Every aten call below autograd, with its tensor arguments' and outputs' shapes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.calls.append((func.overloadpacket.__name__, [a.shape for a in args if isinstance(a, torch.Tensor)],
                           [o.shape for o in outs if isinstance(o, torch.Tensor)]))
        return out


def _brute_force_macs(bench, case, variant, pass_):
    """Multiply-adds per pixel of ``pass_`` counted from the reference's own calls: its
    convolutions by FlopCounterMode (2 FLOPs a multiply-add, forward and both gradients), one per
    BatchNorm input element forward and two per element backward, four per output value of a
    bilinear resize that changes the size."""
    from torch.utils.flop_counter import FlopCounterMode

    call = make_callable(bench.oracle(), bench.make_inputs(case, CPU, variant), pass_)
    with FlopCounterMode(display=False) as counter:
        call()
    with _AtenCalls() as aten:
        call()
    conv_names = {"convolution", "convolution_backward"}
    counted = {str(k).split(".")[1] for k in counter.get_flop_counts()["Global"]}
    assert counted <= conv_names, counted  # nothing else counted: the convs are the whole of it
    bn = sum(ins[0].numel() for name, ins, _ in aten.calls if name == "native_batch_norm")
    bn += 2 * sum(ins[0].numel() for name, ins, _ in aten.calls if name == "native_batch_norm_backward")
    resize = sum(4 * outs[0].numel() for name, ins, outs in aten.calls
                 if name == "upsample_bilinear2d" and ins[0][-2:] != outs[0][-2:])
    assert not any(name == "upsample_bilinear2d_backward" for name, _, _ in aten.calls)  # the image gets no grad
    pixels = case.param("B") * case.param("h") * case.param("w")
    return {"conv": counter.get_total_flops() / 2 / pixels, "bn": bn / pixels, "resize": resize / pixels}


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("variant", ["eval", "train"])
def test_fusion_block_flops_match_a_count_of_the_reference(level, variant):
    bench = FusionBlockBench()
    (case,) = bench.cases(Sweep(sizes=(16,), dtypes=("fp32",), modes=(), batch=2, levels=(level,)), CPU)
    B, c, h, w, H, W = (case.param(k) for k in ("B", "c", "h", "w", "H", "W"))
    for pass_ in ("fwd", "bwd", "fwd+bwd"):
        counted = _brute_force_macs(bench, case, variant, pass_)
        assert fusion_block_macs(c, level > 0, pass_) == pytest.approx(counted), (pass_, counted)
        assert bench.flops(case, pass_) == fusion_block_flops(B, c, h, w, H, W, pass_)
        assert bench.flops(case, pass_) == pytest.approx(2 * B * h * w * sum(counted.values()))


def test_fusion_block_flops_per_pixel_of_dfnets_large_levels():
    """The numbers docs/fusion_block.md and benchmarks/README.md state (Cm = 32, A = 3)."""
    per_pixel = {p: (2 * sum(fusion_block_macs(4, False, p).values()), 2 * sum(fusion_block_macs(64, True, p).values()))
                 for p in ("fwd", "bwd", "fwd+bwd")}
    assert per_pixel == {"fwd": (2224, 2608), "bwd": (4448, 5168), "fwd+bwd": (6672, 7776)}
    assert fusion_block_macs(4, False, "fwd")["conv"] == 1077  # the "≈ 1 100 multiply-adds per pixel"
    with pytest.raises(ValueError):
        fusion_block_macs(4, False, "sideways")


def test_fusion_block_cost_table_in_the_docs_matches_the_formulas():
    with open(os.path.join(REPO, "docs", "fusion_block.md")) as f:
        text = f.read()
    cost = text[text.index("## Cost"):text.index("## Sizes in DFNet")]
    rows = re.findall(r"^\| fuse_(\d) \| (\d+) \| (\d+)×\d+ \| ([\d ]+) / ([\d ]+) \| ([\d.]+) \| ([\d. ]+) \| "
                      r"([\d. ]+) \| ([\d.]+) \|$", cost, re.M)
    assert [int(r[0]) for r in rows] == list(range(6)), cost
    num = lambda s: float(s.replace(" ", ""))  # noqa: E731
    for k, c, h, fwd_pp, bwd_pp, mb, fwd_m, bwd_m, intensity in rows:
        k, c, h = int(k), int(c), int(h)
        assert (c, h) == (LEVEL_CHANNELS[k], 512 >> k)
        f, b = (fusion_block_flops(1, c, h, h, 512, 512, p) for p in ("fwd", "bwd"))
        nbytes = fusion_block_bytes(1, c, h, h, 512, 512, 4)
        assert (num(fwd_pp), num(bwd_pp)) == (f / h / h, b / h / h)
        for stated, value in ((mb, nbytes / 1e6), (fwd_m, f / 1e6), (bwd_m, b / 1e6), (intensity, f / nbytes)):
            assert num(stated) == pytest.approx(value, rel=5e-3), (k, stated, value)


def test_attention_rows_get_tflops_and_the_fraction_in_every_mode():
    bench = ShortLongAttentionBench()
    cases = bench.cases(Sweep(sizes=(32,), dtypes=("fp32",), modes=(), batch=1, channels=((8, 12, 12),)), CPU)
    results = run(bench, cases, ("fwd", "bwd", "fwd+bwd"), ("reference",), CPU, TINY_CONFIG)
    rows = results_to_rows(results + [_ceiling()], ENV)
    fractions = {r["mode"]: r for r in rows if r["metric"] == "fraction_of_gemm"}
    assert sorted(fractions) == ["bwd", "fwd", "fwd+bwd"]
    for r in results:
        assert r.flops == bench.flops(cases[0], r.mode) and not math.isnan(fractions[r.mode]["p50"])
