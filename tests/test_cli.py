"""The ``inpaint-fast`` command line and the benchmark harness behind ``bench`` (tiny sizes)."""

import csv
import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F

from inpaint_fast import cli
from inpaint_fast.bench import Provider, Sweep, TimingConfig, get_op, results_to_rows, run
from inpaint_fast.bench.gate import compare, make_oracle
from inpaint_fast.bench.results import COLUMNS, read_rows, upsert_rows
from inpaint_fast.bench.timing import peak_memory_mb, quantiles

CPU = torch.device("cpu")
FAST = TimingConfig(min_run_time=0.005, min_reps=2, warmup_time=0.0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny cases: attention at N = 16 (32² input), fusion block levels 0 and 1 of a 16² image.
TINY = ["--quick", "--sizes", "32", "--levels", "0", "--batch", "1", "--min-run-time", "0.005"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parser_accepts_the_documented_flags():
    args = cli.build_parser().parse_args(
        ["bench", "--op", "attention", "--mode", "fwd", "fwd+bwd", "--dtype", "fp32", "--sizes", "256", "512",
         "--providers", "reference,cpu", "--quick", "--device", "cpu", "--no-csv"]
    )  # fmt: skip
    assert args.command == "bench" and args.op == "attention" and args.quick and args.no_csv
    assert cli._split(args.providers) == ["reference", "cpu"]
    assert cli._split(args.mode) == ["fwd", "fwd+bwd"]


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "bench" in capsys.readouterr().out


def test_bad_arguments_are_reported(capsys):
    assert cli.main(["bench", "--device", "cpu", "--providers", "nope", "--no-csv"]) == 2
    assert "unknown provider" in capsys.readouterr().err
    assert cli.main(["bench", "--device", "cpu", "--op", "attention", "--sizes", "30", "--no-csv"]) == 2


def test_modes_expand_per_op():
    attention, fusion = get_op("attention"), get_op("fusion_block")
    assert attention.resolve_modes(["fwd", "train-fwd+bwd"]) == ("fwd", "fwd+bwd")
    assert fusion.resolve_modes(["fwd"]) == ("eval-fwd", "train-fwd")
    assert fusion.resolve_modes(["train-bwd"]) == ("train-bwd",)
    with pytest.raises(ValueError):
        fusion.resolve_modes(["sideways"])


def test_attention_channel_sweep():
    """Full runs add the general (Cq, C, Cp) sweep at 512²; --channels replaces it at every size."""
    device = torch.device("cpu")
    full = cli.plan_bench(cli.build_parser().parse_args(["bench", "--op", "attention", "--sizes", "256", "512"]),
                          device)[0][1]
    shapes = [c.shape for c in full]
    assert "B4-C128-Cq32-Cp128-N1024" in shapes and "B1-C128-Cq32-Cp128-N4096" in shapes
    assert {"B1-C64-Cq16-Cp64-N4096", "B1-C192-Cq48-Cp96-N4096", "B1-C128-Cq32-Cp0-N4096"} <= set(shapes)
    assert not any(s.endswith("N1024") and "Cq32-Cp128" not in s for s in shapes)  # general set at 512² only
    given = cli.plan_bench(cli.build_parser().parse_args(
        ["bench", "--op", "attention", "--sizes", "128", "256", "--channels", "8:24:0", "4:12:6"]), device)[0][1]
    assert [c.shape for c in given] == ["B16-C24-Cq8-Cp0-N256", "B16-C12-Cq4-Cp6-N256",
                                        "B4-C24-Cq8-Cp0-N1024", "B4-C12-Cq4-Cp6-N1024"]
    with pytest.raises(ValueError, match="--channels"):
        cli.plan_bench(cli.build_parser().parse_args(["bench", "--op", "attention", "--channels", "32:128"]), device)


def test_tiny_bench_prints_a_table(capsys):
    rc = cli.main(["bench", "--device", "cpu", "--op", "all", "--mode", "eval-fwd", "fwd+bwd",
                   "--providers", "reference", "--no-csv", *TINY])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    header = next(line for line in out.splitlines() if line.startswith("implementation"))
    for column in ("op", "mode", "shape", "ms", "speedup", "peak MiB"):
        assert column in header
    assert "short_long_attention" in out and "fusion_block" in out
    assert "B1-C128-Cq32-Cp128-N16" in out and "B1-k0-c4-32x32-img32" in out
    assert "upserted" not in out


def test_csv_upsert_replaces_rows(tmp_path, capsys):
    path = str(tmp_path / "results.csv")
    argv = ["bench", "--device", "cpu", "--op", "attention", "--mode", "fwd", "--providers", "reference",
            "--csv", path, *TINY]  # fmt: skip
    assert cli.main(argv) == 0
    everything = read_rows(path)
    # A CPU run also measures the fp32 GEMM ceiling its fraction_of_gemm rows divide by.
    assert {r["kernel"] for r in everything} == {"short_long_attention", "ceiling_gemm"}
    first = [r for r in everything if r["kernel"] == "short_long_attention"]
    assert {r["metric"] for r in first} == {"ms", "tflops", "fraction_of_gemm", "peak_mb", "speedup_vs_reference"}
    assert all(r["status"] == "ok" and r["commit"] and r["device_name"] for r in everything)
    with open(path) as f:
        assert next(csv.reader(f)) == COLUMNS
    assert cli.main(argv) == 0
    second = read_rows(path)
    assert len(second) == len(everything)
    with open(path, "w", newline="") as f:  # keep only the op's rows for the replacement checks below
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(r for r in second if r["kernel"] == "short_long_attention")
    # A later failure of the same measurement replaces all its metrics, and leaves others alone.
    other = dict(first[0], provider="cpu")
    upsert_rows(path, [other])
    failed = dict(first[0], metric="ms", p20="", p50="", p80="", status="wrong", note="bad")
    n = upsert_rows(path, [failed])
    rows = read_rows(path)
    assert n == len(rows) == 2
    assert {(r["provider"], r["status"]) for r in rows} == {("reference", "wrong"), ("cpu", "ok")}


def _wrong_forward(q, x, gamma, pre=None, mask=None, alpha=None):
    from inpaint_fast.reference import short_long_attention

    y, cf = short_long_attention(q, x, gamma, pre, mask, alpha)
    return y * 1.01, cf


def _wrong_gradient(q, x, gamma, pre=None, mask=None, alpha=None):
    from inpaint_fast.reference import short_long_attention

    y, cf = short_long_attention(q.detach(), x, gamma, pre, mask, alpha)  # no gradient reaches q
    return y, cf


def _broken(case, device):
    raise RuntimeError("kernel exploded")


def test_gate_rejects_wrong_providers_and_records_failures():
    bench = get_op("attention")
    cases = bench.cases(Sweep(sizes=(32,), dtypes=("fp32",), modes=(), batch=2), CPU)
    extra = {
        "wrong_fwd": Provider("wrong_fwd", lambda case, device: _wrong_forward),
        "wrong_grad": Provider("wrong_grad", lambda case, device: _wrong_gradient),
        "broken": Provider("broken", _broken),
    }
    results = run(bench, cases, ("fwd", "fwd+bwd"), ("reference", *extra), CPU, FAST, extra_providers=extra)
    status = {(r.provider, r.mode): r for r in results}
    assert status[("reference", "fwd")].status == "ok" and status[("reference", "fwd")].timing is not None
    for mode in ("fwd", "fwd+bwd"):
        r = status[("wrong_fwd", mode)]
        assert r.status == "wrong" and r.timing is None and "y" in r.note
        assert status[("broken", mode)].status == "error" and "kernel exploded" in status[("broken", mode)].note
    assert status[("wrong_grad", "fwd")].status == "ok"  # its forward is right, so it is timed
    bad = status[("wrong_grad", "fwd+bwd")]
    assert bad.status == "wrong" and bad.timing is None and "grad_q" in bad.note
    rows = results_to_rows(results, {"device_name": "test"})
    wrong_rows = [r for r in rows if r["provider"] == "wrong_fwd"]
    assert len(wrong_rows) == 2 and all(r["metric"] == "ms" and "p50" not in r for r in wrong_rows)
    speedup = [r for r in rows if r["provider"] == "reference" and r["metric"] == "speedup_vs_reference"]
    assert speedup and all(math.isclose(r["p50"], 1.0) for r in speedup)


def test_cli_exit_code_flags_wrong_results(monkeypatch, capsys):
    bench = get_op("attention")
    registry = dict(bench.providers())
    registry["reference_wrong"] = Provider("reference_wrong", lambda case, device: _wrong_forward)
    monkeypatch.setattr(type(bench), "providers", lambda self: registry)
    rc = cli.main(["bench", "--device", "cpu", "--op", "attention", "--mode", "fwd", "--providers", "reference",
                   "reference_wrong", "--no-csv", *TINY])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 and "wrong [1]" in captured.out and "correctness gate" in captured.err


def test_fusion_block_gate_checks_running_stats():
    bench = get_op("fusion_block")
    cases = bench.cases(Sweep(sizes=(16,), dtypes=("fp32",), modes=(), batch=2, levels=(1,)), CPU)

    def no_running_update(**kw):
        from inpaint_fast.bench.fusion_block import with_flat_params
        from inpaint_fast.reference import fusion_block

        kw = dict(kw, bn1_running_mean=kw["bn1_running_mean"].clone())  # the caller's buffer is not updated
        return with_flat_params(fusion_block)(**kw)

    extra = {"stale": Provider("stale", lambda case, device: no_running_update)}
    results = run(bench, cases, ("eval-fwd", "train-fwd"), ("reference", "stale"), CPU, FAST, extra_providers=extra)
    by_mode = {(r.provider, r.mode): r.status for r in results}
    assert by_mode[("stale", "eval-fwd")] == "ok"
    assert by_mode[("stale", "train-fwd")] == "wrong"
    assert by_mode[("reference", "train-fwd")] == "ok"


@pytest.mark.parametrize("variant", ["train", "eval"])
def test_fusion_block_inputs_keep_leaky_relu_inputs_off_the_kink(variant):
    """Both LeakyReLUs' inputs (re-stated in fp64) stay KINK_MARGIN from 0, both slopes are used,
    and eval mode normalises with running statistics that are not the batch's."""
    from inpaint_fast.bench.fusion_block import KINK_MARGIN

    bench = get_op("fusion_block")
    for case in bench.cases(Sweep(sizes=(64,), dtypes=("fp32",), modes=(), batch=2, levels=(0, 2)), CPU):
        t = {k: (v.double() if torch.is_tensor(v) else v) for k, v in bench.make_inputs(case, CPU, variant).kwargs.items()}
        train = variant == "train"
        x_k = F.interpolate(t["image"], size=t["feat"].shape[-2:], mode="bilinear", align_corners=False)
        raw = torch.sigmoid(F.conv2d(t["feat"], t["map_weight"], t["map_bias"]))
        z = F.conv2d(torch.cat([x_k, raw], 1), t["conv1_weight"], t["conv1_bias"])
        for bn, conv in (("bn1", "conv2"), ("bn2", None)):
            stats = (None, None) if train else (t[f"{bn}_running_mean"], t[f"{bn}_running_var"])
            v = F.batch_norm(z, *stats, t[f"{bn}_weight"], t[f"{bn}_bias"], train)
            nearest = v.abs().min().item()
            assert nearest >= KINK_MARGIN * (1 - 1e-5), f"{case.shape} {bn}: a LeakyReLU input at {nearest:.3g}"
            assert 0 < (v < 0).double().mean().item() < 1, f"{case.shape} {bn}: one slope unused"
            if not train:
                assert not torch.allclose(t[f"{bn}_running_mean"], z.mean((0, 2, 3)), rtol=1e-3, atol=1e-6)
            if conv:
                z = F.conv2d(F.leaky_relu(v, 0.2), t[f"{conv}_weight"], t[f"{conv}_bias"], padding=1)


def test_gate_judges_mathematically_zero_gradients_at_their_weights_scale():
    """In training mode the conv biases before a BatchNorm have zero gradients: their rounding noise
    passes at the scale of the conv's weight gradient, a real gradient there does not."""
    bench = get_op("fusion_block")
    assert bench.zero_in_exact_arithmetic("eval") == {}
    (case,) = bench.cases(Sweep(sizes=(32,), dtypes=("fp32",), modes=(), batch=2, levels=(1,)), CPU)
    oracle = make_oracle(bench, case, CPU, "train", True)
    judged_at = bench.zero_in_exact_arithmetic("train")
    got = {k: (v.clone() if v is not None else None) for k, v in oracle.values.items()}
    weight_scale = oracle.values["grad_conv1_weight"].abs().max().item()
    big = max(v.abs().max().item() for v in oracle.values.values() if v is not None)
    # Noise 4x the fp32 reference's own (its BN backward sums in double), small next to the weight's.
    noise = 4 * max(oracle.baseline["grad_conv1_bias"], 1e-3 * 1e-3 * big)
    assert noise < 0.5e-3 * weight_scale, (noise, weight_scale)  # half the fp32 gate tolerance (1e-3)
    got["grad_conv1_bias"] = got["grad_conv1_bias"] + noise
    ok, note = compare(got, oracle, torch.float32, judged_at=judged_at)
    assert ok, note
    ok_without, _ = compare(got, oracle, torch.float32)
    assert not ok_without  # judged at its own (zero) scale, that noise would be "wrong"
    got["grad_conv1_bias"] = got["grad_conv1_bias"] + 1e-2 * weight_scale  # a real, wrong gradient
    ok, note = compare(got, oracle, torch.float32, judged_at=judged_at)
    assert not ok and "grad_conv1_bias" in note


def test_quantiles_and_peak_memory():
    assert quantiles([1.0, 2.0, 3.0, 4.0, 5.0]) == [1.8, 3.0, 4.2]
    mb = peak_memory_mb(lambda: torch.ones(4 * 2**20 // 4), CPU)  # 4 MiB
    assert math.isnan(mb) or 3.0 <= mb <= 12.0


def test_readme_table_renders_and_rewrites(tmp_path):
    readme_table = _load_script("readme_table")
    env = {"device_name": "Test CPU (2 threads)", "torch_version": "2.13", "triton_version": "", "cuda_version": "",
           "commit": "abc1234", "timestamp": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    base = dict(kernel="short_long_attention", mode="fwd", dtype="fp32", shape="B1-C128-Cq32-Cp128-N1024", **env)
    rows = [
        dict(base, provider="reference", metric="ms", p20=9.5, p50=10.0, p80=10.5, status="ok"),
        dict(base, provider="cpu", metric="ms", p20=1.9, p50=2.0, p80=2.1, status="ok"),
        dict(base, provider="cpu", metric="speedup_vs_reference", p50=5.0, status="ok"),
        dict(base, provider="reference", metric="peak_mb", p50=64.0, status="ok"),
        dict(base, provider="triton", metric="ms", status="unavailable", note="no GPU"),
    ]
    path = str(tmp_path / "r.csv")
    upsert_rows(path, rows)
    block = readme_table.render(read_rows(path))
    assert "Test CPU (2 threads)" in block and "abc1234" in block
    assert "| op | mode | dtype | shape | reference | cpu | triton | best speedup |" in block
    assert "| attention | fwd | fp32 | B1-C128-Cq32-Cp128-N1024 | 10 | 2 | unavailable | 5.00× (cpu) |" in block
    assert "| 64 |" in block  # the peak-memory table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold numbers\n<!-- bench:end -->\noutro\n")
    assert readme_table.main(["--csv", path, "--readme", str(readme), "--write"]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and "5.00× (cpu)" in text
    assert text.startswith("intro\n<!-- bench:start -->\n") and text.endswith("<!-- bench:end -->\noutro\n")
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers\n")
    assert readme_table.main(["--csv", path, "--readme", str(bare), "--write"]) == 1


def test_commit_is_marked_dirty_when_tracked_files_differ(monkeypatch):
    import subprocess

    from inpaint_fast.bench import env

    def fake_git(status_output):
        def run(*args):
            out = "abc1234\n" if args[0] == "rev-parse" else status_output
            return subprocess.CompletedProcess(["git", *args], 0, out, "")
        return run

    for status, expected in (("", "abc1234"), (" M inpaint_fast/cli.py\n", "abc1234-dirty")):
        monkeypatch.setattr(env, "_git", fake_git(status))
        env._commit.cache_clear()
        assert env._commit() == expected
    env._commit.cache_clear()


def test_cpu_device_name_records_instruction_set_and_threads(monkeypatch):
    # Rows of one CPU model with and without AVX-512 must not share a device name.
    from inpaint_fast.bench import env

    for capability in ("AVX512", "AVX2"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        name = env.device_name(torch.device("cpu"))
        assert name.endswith(f" ({capability}, {torch.get_num_threads()} threads)"), name
