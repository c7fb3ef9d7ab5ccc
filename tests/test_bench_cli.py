"""``inpaint-fast bench``: where results are written (never the committed CSV unless asked), the
busy-CPU refusal, plain progress lines off a terminal, and one-line argument errors."""

import hashlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess

import pytest

from inpaint_fast import cli
from inpaint_fast.bench.destination import choose_destination, is_committed_csv, with_default_destination
from inpaint_fast.bench.outcome import Result
from inpaint_fast.bench.progress import CaseLines, progress
from inpaint_fast.bench.report import format_case_line
from inpaint_fast.bench.results import read_rows
from inpaint_fast.bench.timing import Timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join("benchmarks", "results", "benchmarks.csv")
# One case per op: attention at N = 16 (32² input), fusion block level 0 of a 32² image.
TINY = ["--device", "cpu", "--sizes", "32", "--levels", "0", "--batch", "1", "--min-run-time", "0.005",
        "--providers", "reference"]  # fmt: skip
ONE = ["bench", "--op", "attention", "--mode", "fwd", "--quick", *TINY]

pytestmark = pytest.mark.usefixtures("one_thread", "small_ceiling")
SMALL_GEMM = 128


@pytest.fixture
def small_ceiling(monkeypatch):
    """A 128³ GEMM ceiling in place of the CPU's 2048³ (≈ 1 s a call on one thread), so that every
    run here measures one quickly; tests/test_bench_ceiling.py runs the real size."""
    from inpaint_fast.bench import ceilings

    monkeypatch.setitem(ceilings.GEMM_SPECS, "cpu", (SMALL_GEMM, "fp32"))


@pytest.fixture
def busy(monkeypatch):
    """Set how many other processes the bench sees (0 by default: the test machine is shared, so
    its real load must not decide what the tests check)."""

    def set_busy(n: int) -> None:
        monkeypatch.setattr(cli, "_busy_cpus", lambda: n)

    set_busy(0)
    return set_busy


@pytest.fixture
def repo_copy(tmp_path, monkeypatch, busy):
    """A copy of the repository's layout (package marker, committed results CSV) as the current
    directory; returns its root."""
    root = tmp_path / "repo"
    (root / "inpaint_fast").mkdir(parents=True)
    (root / "inpaint_fast" / "__init__.py").write_text("")
    (root / "benchmarks" / "results").mkdir(parents=True)
    shutil.copyfile(os.path.join(REPO, COMMITTED), root / COMMITTED)
    monkeypatch.chdir(root)
    return root


def _digest(path) -> str:
    """sha256 of a file and its row count: what a failed byte-identity check prints."""
    with open(path, "rb") as f:
        data = f.read()
    return f"{hashlib.sha256(data).hexdigest()[:16]} ({len(data.splitlines())} lines)"


def _make_bench_argv():
    """The arguments ``make bench`` passes to ``inpaint-fast`` (the Makefile's bench recipe)."""
    with open(os.path.join(REPO, "Makefile")) as f:
        lines = f.read().splitlines()
    recipe = lines[lines.index("bench: install") + 1]
    words = shlex.split(recipe)
    return words[next(i for i, w in enumerate(words) if w.endswith("/inpaint-fast")) + 1 :]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# where results go


def test_make_bench_leaves_the_committed_csv_alone(repo_copy, busy, capsys):
    """``make bench`` from the repository root, even after its own busy-CPU warning: the tracked CSV
    stays byte-identical, the results land in bench-results/benchmarks.csv, and it says so."""
    argv = _make_bench_argv()
    assert argv[0] == "bench" and "--save" not in argv and "--csv" not in argv, argv
    before = _digest(repo_copy / COMMITTED)
    busy(3)
    rc = cli.main([*argv, *TINY])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "3 other process(es) are running" in captured.err
    assert _digest(repo_copy / COMMITTED) == before
    written = repo_copy / "bench-results" / "benchmarks.csv"
    rows = read_rows(str(written))
    print(captured.out)
    assert {r["kernel"] for r in rows} == {"short_long_attention", "fusion_block", "ceiling_gemm"}, len(rows)
    assert all("3 other processes were running" in r["note"] for r in rows)
    assert f"results upserted into {os.path.join('bench-results', 'benchmarks.csv')} ({len(rows)} rows)" in captured.out


def test_bench_results_are_git_ignored_and_the_committed_csv_is_not():
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs git and the repository's checkout")

    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    assert ignored(cli.DEFAULT_CSV) and ignored(os.path.join("benchmarks", cli.DEFAULT_CSV))
    assert not ignored(cli.COMMITTED_CSV)


def test_save_writes_the_committed_csv_of_a_quiet_machine(repo_copy, capsys):
    before = read_rows(str(repo_copy / COMMITTED))
    assert cli.main([*ONE, "--save"]) == 0
    out = capsys.readouterr().out
    after = read_rows(str(repo_copy / COMMITTED))
    new = [r for r in after if r["kernel"] == "short_long_attention" and r["shape"] == "B1-C128-Cq32-Cp128-N16"]
    ceiling = [r for r in after if r["kernel"] == "ceiling_gemm" and r["device_name"] == new[0]["device_name"]]
    print(out)
    assert {r["metric"] for r in new} >= {"ms", "peak_mb", "fraction_of_gemm"} and all(r["status"] == "ok" for r in new)
    assert {r["metric"] for r in ceiling} == {"ms", "tflops", "peak_mb"}, ceiling
    assert len(after) == len(before) + len(new) + len(ceiling), (len(before), len(new), len(after))
    assert f"results upserted into {COMMITTED}" in out
    assert not (repo_copy / "bench-results").exists()


@pytest.mark.parametrize("flag", [["--save"], ["--csv", COMMITTED], ["--csv", "elsewhere"]])
def test_noisy_timings_never_replace_the_committed_rows(repo_copy, busy, capsys, flag):
    """While other processes load the CPUs, a write into the committed CSV (by --save, or by a
    --csv naming it, also through a symlink) is refused before anything runs."""
    (repo_copy.parent / "elsewhere").symlink_to(repo_copy / COMMITTED)
    if flag[-1] == "elsewhere":
        flag = ["--csv", str(repo_copy.parent / "elsewhere")]
    before = _digest(repo_copy / COMMITTED)
    busy(2)
    assert cli.main([*ONE, *flag]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    print(captured.err)
    assert len(err) == 2 and err[0].startswith("warning: 2 other process(es)")
    assert err[1].startswith(f"error: {flag[0]}: 2 other process(es)") and "--force" in err[1]
    assert "implementation" not in captured.out  # nothing was timed
    assert _digest(repo_copy / COMMITTED) == before


def test_force_writes_noisy_timings_with_their_caveat(repo_copy, busy, capsys):
    busy(2)
    assert cli.main([*ONE, "--save", "--force"]) == 0
    rows = [r for r in read_rows(str(repo_copy / COMMITTED)) if r["shape"] == "B1-C128-Cq32-Cp128-N16"]
    assert rows and all("2 other processes were running" in r["note"] for r in rows), rows


def test_save_outside_the_repository_root_is_an_error(tmp_path, monkeypatch, busy, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*ONE, "--save"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --save:") and "--csv PATH" in err[0], err
    assert captured.out == "" and os.listdir(tmp_path) == []


def test_no_csv_writes_nothing(repo_copy, capsys):
    before = _digest(repo_copy / COMMITTED)
    assert cli.main([*ONE, "--no-csv"]) == 0
    assert "upserted" not in capsys.readouterr().out
    assert sorted(os.listdir(repo_copy)) == ["benchmarks", "inpaint_fast"]
    assert _digest(repo_copy / COMMITTED) == before


def test_destination_choice(repo_copy):
    assert choose_destination(False, None, True) is None
    default = choose_destination(False, None, False)
    assert (default.path, default.option, default.committed) == (cli.DEFAULT_CSV, "default", False)
    saved = choose_destination(True, None, False)
    assert (saved.path, saved.committed) == (COMMITTED, True)
    assert choose_destination(False, "./benchmarks/../benchmarks/results/benchmarks.csv", False).committed
    assert not choose_destination(False, "benchmarks/results/other.csv", False).committed
    with pytest.raises(ValueError, match=r"^--csv: not allowed with --save"):
        choose_destination(True, "x.csv", False)
    with pytest.raises(ValueError, match=r"^--csv: not allowed with --no-csv"):
        choose_destination(False, "x.csv", True)


@pytest.mark.parametrize("script", ["bench_short_long_attention", "bench_fusion_block"])
def test_sweep_scripts_write_the_committed_csv_explicitly(script, tmp_path, monkeypatch, busy, capsys):
    module = _load_script(script)
    assert module.RESULTS_CSV == os.path.join(REPO, COMMITTED) and is_committed_csv(module.RESULTS_CSV)
    argv = module.bench_argv(["--sizes", "32"])
    assert argv[argv.index("--csv") + 1] == module.RESULTS_CSV, argv
    assert "--csv" not in module.bench_argv(["--no-csv"])
    assert module.bench_argv(["--csv=mine.csv"]).count("--csv") == 0
    assert module.bench_argv(["--csv", "mine.csv"]).count("--csv") == 1
    # ... and so fall under the busy-CPU refusal (shown on a copy: the real file is never at risk).
    copy = tmp_path / "repo"
    (copy / "inpaint_fast").mkdir(parents=True)
    (copy / "inpaint_fast" / "__init__.py").write_text("")
    (copy / "benchmarks" / "results").mkdir(parents=True)
    (copy / COMMITTED).write_text("kernel\n")
    monkeypatch.setattr(module, "RESULTS_CSV", str(copy / COMMITTED))
    busy(1)
    assert cli.main(module.bench_argv([*TINY, "--quick"])) == 2
    assert "error: --csv: 1 other process(es)" in capsys.readouterr().err
    assert (copy / COMMITTED).read_text() == "kernel\n"


def test_with_default_destination_keeps_an_explicit_choice():
    assert with_default_destination(["--quick"], "r.csv") == ["--csv", "r.csv", "--quick"]
    for given in (["--save"], ["--no-csv"], ["--csv", "x.csv"], ["--csv=x.csv"]):
        assert with_default_destination(given, "r.csv") == given


# ---------------------------------------------------------------------------------------------
# progress


LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+) (\S+) (fp32) (\S+): reference (\d+(?:\.\d+)?) ms$")


def test_progress_is_plain_lines_when_not_on_a_terminal(repo_copy, capsys):
    """capsys's streams are not terminals: one numbered line per (case, mode), no tqdm bar."""
    assert cli.main(["bench", "--quick", *TINY, "--no-csv"]) == 0
    captured = capsys.readouterr()
    print(captured.out)
    lines = [m.groups() for m in map(LINE.match, captured.out.splitlines()) if m]
    assert [(int(i), int(n)) for i, n, *_ in lines] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [(k, mode, shape) for _, _, k, mode, _, shape, _ in lines] == [
        ("short_long_attention", "fwd", "B1-C128-Cq32-Cp128-N16"),
        ("short_long_attention", "fwd+bwd", "B1-C128-Cq32-Cp128-N16"),
        ("fusion_block", "eval-fwd", "B1-k0-c4-32x32-img32"),
        ("fusion_block", "train-fwd+bwd", "B1-k0-c4-32x32-img32"),
    ]
    assert captured.out.index("[4/4]") < captured.out.index("implementation")  # progress, then the table
    assert "\r" not in captured.err and "run/s" not in captured.err and "bench:" not in captured.err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal(repo_copy, monkeypatch):
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main([*ONE, "--no-csv"]) == 0
    assert not any(LINE.match(line) for line in out.getvalue().splitlines()), out.getvalue()
    assert "bench" in err.getvalue() and "\r" in err.getvalue(), err.getvalue()


def test_progress_chooses_lines_unless_both_streams_are_terminals():
    for stdout, stderr in ((io.StringIO(), _Terminal()), (_Terminal(), io.StringIO())):
        with progress(3, 1, stdout, stderr) as (bar, on_case):
            assert bar is None and isinstance(on_case, CaseLines)
    with progress(3, 1, _Terminal(), _Terminal()) as (bar, on_case):
        assert on_case is None and hasattr(bar, "update")


class _Recorder:
    def __init__(self):
        self.events = []

    def write(self, text):
        self.events.append(("write", text))

    def flush(self):
        self.events.append(("flush", None))


def _result(provider, mode, ms=None, status="ok"):
    timing = None if ms is None else Timing(ms * 0.9, ms, ms * 1.1)
    return Result("short_long_attention", provider, mode, "fp32", "B1-N16", status, timing=timing)


def test_case_lines_are_flushed_one_per_mode_with_every_provider():
    stream = _Recorder()
    lines = CaseLines(4, stream)
    lines([_result("reference", "fwd", 9.2), _result("reference", "bwd", 20.0),
           _result("cpu", "fwd", 4.2), _result("cpu", "bwd", status="wrong")])  # fmt: skip
    text = "".join(t for kind, t in stream.events if kind == "write")
    assert text.splitlines() == [
        "[1/4] short_long_attention fwd fp32 B1-N16: reference 9.20 ms, cpu 4.20 ms",
        "[2/4] short_long_attention bwd fp32 B1-N16: reference 20.0 ms, cpu wrong",
    ], text
    assert stream.events[-1] == ("flush", None)
    assert sum(kind == "flush" for kind, _ in stream.events) >= 2
    unverified = format_case_line([_result("cpu", "fwd", 1.5, status="unverified")])
    assert unverified.endswith("cpu 1.50 ms (unverified)")


# ---------------------------------------------------------------------------------------------
# argument errors


@pytest.mark.parametrize(
    "args, message",
    [
        (["--op", "bogus"], "error: --op: unknown op 'bogus'; expected attention, fusion_block or all"),
        (["--providers", "nope"], "error: --providers: 'nope': unknown provider; expected reference, cpu, triton, "
                                  "cuda, auto, compile, sdpa or flex"),
        (["--op", "fusion_block", "--providers", "sdpa"], "error: --providers: 'sdpa': unknown provider of "
                                                          "fusion_block; expected reference, cpu, triton, cuda, "
                                                          "auto or compile"),
        (["--dtype", "fp8"], "error: --dtype: unknown dtype 'fp8'; expected fp32, bf16, fp16 or fp64"),
        (["--mode", "sideways"], "error: --mode: unknown mode 'sideways'; expected fwd, bwd or fwd+bwd, "
                                 "optionally prefixed eval- or train-"),
        (["--channels", "32:128"], "error: --channels: expected Cq:C:Cp with non-negative integers, got '32:128'"),
        (["--op", "attention", "--channels", "0:128:0"], "error: --channels: Cq=0, C=128, Cp=0; expected Cq >= 1, "
                                                         "C >= 1 and Cp >= 0"),
        (["--levels", "9"], "error: --levels: fusion block level 9 is out of range; expected 0..5"),
        (["--levels", "one"], "error: --levels: expected integers >= 0, got 'one'"),
        (["--sizes", "30"], "error: --sizes: attention size 30 is not a multiple of 8 (the attention runs at "
                            "input/8); expected multiples of 8"),
        (["--sizes", "-8"], "error: --sizes: expected integers >= 1, got '-8'"),
        (["--batch", "0"], "error: --batch: expected an integer >= 1, got 0"),
        (["--min-run-time", "0"], "error: --min-run-time: expected a positive number of seconds, got 0.0"),
        (["--save", "--csv", "x.csv"], "error: --csv: not allowed with --save; expected one of --csv, --save, "
                                       "--no-csv (they choose where results go)"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_option(args, message, capsys):
    rc = cli.main(["bench", "--device", "cpu", *args])
    captured = capsys.readouterr()
    assert (rc, captured.err.splitlines(), captured.out) == (2, [message], "")


def test_cuda_without_a_gpu_is_one_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = cli.main(["bench", "--device", "cuda", "--no-csv"])
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert (rc, len(err), captured.out) == (2, 1, ""), captured.err
    assert err[0].startswith("error: --device: cuda is not available here") and err[0].endswith("expected cpu")


@pytest.mark.parametrize("args, start", [(["--batch", "x"], "error: argument --batch: invalid int value: 'x'"),
                                         (["--device", "tpu"], "error: argument --device: invalid choice: 'tpu'"),
                                         (["--min-run-time", "fast"], "error: argument --min-run-time:")])
def test_malformed_values_are_one_line_too(args, start, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", *args])
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert (exit_.value.code, len(err), captured.out) == (2, 1, ""), captured.err
    assert err[0].startswith(start), err



# ---------------------------------------------------------------------------------------------
# the GEMM ceiling of a CPU run, and fraction_of_gemm


def test_a_cpu_run_measures_the_gemm_ceiling_and_every_flop_row_gets_its_fraction(repo_copy, capsys):
    """One ceiling row (fp32, sampled before each timed result and at the end), and a
    fraction_of_gemm row for every timed row that counts FLOPs (both ops, every mode), equal to
    tflops / the rate of the ceiling around it, which the row's note states."""
    assert cli.main(["bench", "--quick", *TINY, "--csv", "out.csv"]) == 0
    out = capsys.readouterr().out
    rows = read_rows("out.csv")
    ceiling = {r["metric"]: r for r in rows if r["kernel"] == "ceiling_gemm"}
    assert set(ceiling) == {"ms", "tflops", "peak_mb"}, rows
    gemm = ceiling["tflops"]
    assert (gemm["provider"], gemm["mode"], gemm["dtype"], gemm["shape"], gemm["status"]) == (
        "torch", "fwd", "fp32", f"M{SMALL_GEMM}-N{SMALL_GEMM}-K{SMALL_GEMM}", "ok")
    by_metric = {}
    for r in rows:
        by_metric.setdefault(r["metric"], {})[(r["kernel"], r["provider"], r["mode"], r["shape"])] = r
    timed = {k for k, r in by_metric["ms"].items() if k[0] != "ceiling_gemm" and r["p50"] not in ("", None)}
    assert "fp32 in and out" in gemm["note"], gemm["note"]
    assert f"in {len(timed) + 1} bursts between the op timings" in gemm["note"], (len(timed), gemm["note"])
    ops = {k for k in by_metric["tflops"] if k[0] != "ceiling_gemm"}
    assert {k[2] for k in ops} == {"fwd", "fwd+bwd", "eval-fwd", "train-fwd+bwd"}, ops
    assert set(by_metric["fraction_of_gemm"]) == ops
    for key in ops:
        frac, tflops = by_metric["fraction_of_gemm"][key], by_metric["tflops"][key]
        around = re.search(r"GEMM ceiling around it ([\d.e+-]+) TFLOP/s", frac["note"])
        assert around, (key, frac["note"])
        for q in ("p20", "p50", "p80"):  # the note's rate has 4 significant digits
            assert float(frac[q]) == pytest.approx(float(tflops[q]) / float(around.group(1)), rel=1e-3), key
    header = next(line for line in out.splitlines() if line.startswith("implementation"))
    assert "of GEMM" in header
    # The fusion block's forward counts both: TFLOP/s and GB/s, then the fraction of the GEMM.
    assert re.search(r"^reference\s+fusion_block\s+eval-fwd .* TFLOP/s, [\d.]+ GB/s\s+\d[\d.]*%", out, re.M), out


def test_no_ceiling_without_anything_to_run(monkeypatch):
    """A plan with no steps measures no ceiling (nothing to divide)."""
    import torch

    assert cli._run_plan([], torch.device("cpu"), None, 0) == []


# ---------------------------------------------------------------------------------------------
# bench_fusion_block.py --large-levels


def test_large_levels_runs_exactly_fuse_0_and_fuse_1_at_512(capsys):
    import torch

    module = _load_script("bench_fusion_block")
    argv = module.bench_argv(["--large-levels", "--mode", "eval-fwd", "--no-csv"])
    assert argv[:3] == ["bench", "--op", "fusion_block"] and "--large-levels" not in argv
    ((bench, cases, modes, _),) = cli.plan_bench(cli.build_parser().parse_args(argv), torch.device("cpu"))
    assert [c.shape for c in cases] == ["B1-k0-c4-512x512-img512", "B1-k1-c64-256x256-img512"]
    assert modes == ("eval-fwd",)
    # fuse_0 / fuse_1 at 512², B = 1: the FLOPs and bytes the docs state.
    assert [bench.flops(c, "fwd") for c in cases] == [2224 * 512**2, 2608 * 256**2]
    assert [round(bench.bytes(c, "fwd") / 1e6, 1) for c in cases] == [16.8, 22.3]
    for clash in (["--sizes", "256"], ["--levels=2"]):
        with pytest.raises(ValueError, match=r"^--large-levels: not allowed with --(sizes|levels)"):
            module.bench_argv(["--large-levels", *clash])
        assert module.main(["--large-levels", *clash]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: --large-levels: not allowed"), err


# ---------------------------------------------------------------------------------------------
# plot.py: peak memory against resolution


def _peak_rows():
    """Synthetic CSV rows as bench_train_step.py writes them (an untimed result has only its ms row)."""
    env = {"device_name": "Test CPU (2 threads)", "torch_version": "2.13", "triton_version": "", "cuda_version": "",
           "commit": "abc1234", "timestamp": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    limit = "out of memory; memory limit 16 GiB (RLIMIT_DATA)"
    rows = []

    def add(kernel, provider, mode, shape, mb=None, status="ok", note=""):
        base = dict(kernel=kernel, provider=provider, mode=mode, dtype="fp32", shape=shape, status=status, note=note,
                    **env)
        rows.append(dict(base, metric="ms", p50=None if mb is None else 10.0))
        if mb is not None:
            rows.append(dict(base, metric="peak_mb", p50=mb))

    for side, ref, fused in ((256, 600.0, 580.0), (512, 2600.0, 900.0)):
        add("train_step_pic", "reference", "train-step", f"B1-img{side}", ref)
        add("train_step_pic", "cpu", "train-step", f"B1-img{side}", fused)
        add("train_step_pic", "cpu", "train-step", f"B2-img{side}", 2 * fused)
    add("train_step_pic", "reference", "train-step", "B1-img1024", status="oom", note=limit)
    add("train_step_pic", "cpu", "train-step", "B1-img1024", 2500.0)
    add("completion_pic", "reference", "inference", "B1-img512", 400.0)
    add("completion_pic", "reference", "inference", "B1-img1024", status="oom", note="out of memory")
    add("completion_pic", "cpu", "inference", "B1-img512", 120.0)
    add("completion_pic", "cpu", "inference", "B1-img1024", 300.0)
    add("completion_pic", "triton", "inference", "B1-img512", status="unavailable", note="no GPU")  # no line
    add("train_step_dfnet", "reference", "train-step", "B2-img256", 700.0)  # not in this plot
    return rows


def test_peak_memory_series_reads_points_and_oom_limits(tmp_path):
    from inpaint_fast.bench.results import read_rows, upsert_rows

    plot = _load_script("plot")
    assert plot.memory_limit_mib("out of memory; memory limit 16 GiB (RLIMIT_DATA)") == 16 * 1024
    assert plot.memory_limit_mib("memory limit 512 MiB") == 512 and plot.memory_limit_mib("memory limit 2.5 GB") == 2560
    assert plot.memory_limit_mib("out of memory") is None and plot.memory_limit_mib("") is None
    path = str(tmp_path / "r.csv")
    upsert_rows(path, _peak_rows())  # through the real CSV: empty cells, strings
    series = plot.peak_memory_series(read_rows(path))
    (device,) = series
    assert device == "Test CPU (2 threads)" and sorted(series[device]) == ["completion_pic", "train_step_pic"]
    train = series[device]["train_step_pic"]
    assert sorted(train) == [("cpu", 1, "fp32"), ("cpu", 2, "fp32"), ("reference", 1, "fp32")]
    assert train[("reference", 1, "fp32")] == {"ok": [(256, 600.0), (512, 2600.0)], "oom": [(1024, 16384.0)]}
    assert train[("cpu", 1, "fp32")] == {"ok": [(256, 580.0), (512, 900.0), (1024, 2500.0)], "oom": []}
    completion = series[device]["completion_pic"]
    assert sorted(completion) == [("cpu", 1, "fp32"), ("reference", 1, "fp32")]  # unavailable: no line
    assert completion[("reference", 1, "fp32")] == {"ok": [(512, 400.0)], "oom": [(1024, None)]}


def test_peak_memory_plot_is_written_with_a_stable_name(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from inpaint_fast.bench.results import upsert_rows

    plot = _load_script("plot")
    path = str(tmp_path / "r.csv")
    upsert_rows(path, _peak_rows())
    out = tmp_path / "plots"
    assert plot.main(["--csv", path, "--out", str(out), "--peak-memory"]) == 0
    want = out / "peak_memory_vs_resolution_Test-CPU-2-threads.png"
    assert capsys.readouterr().out.splitlines() == [str(want)]
    assert want.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and want.stat().st_size > 10_000
    # A plain run draws it too, next to the per-group plots; a CSV without such rows has none.
    assert plot.main(["--csv", path, "--out", str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / want.name).exists()
    assert plot.main(["--csv", path, "--out", str(out), "--peak-memory", "--kernel", "fusion_block"]) == 1


def test_cpu_gemm_ab_alternates_the_choices_and_restores_the_environment(monkeypatch, capsys):
    """benchmarks/ab_cpu_gemm.py at a tiny size: one row per (case, pass, choice), both choices
    timed on the same calls, and the variable left as it was."""
    module = _load_script("ab_cpu_gemm")
    monkeypatch.setenv("INPAINT_FAST_CPU_GEMM", "auto")
    seen = []
    times = module.ab(lambda: seen.append(os.environ["INPAINT_FAST_CPU_GEMM"]), ["blas", "auto"], reps=2)
    assert seen == ["blas", "auto"] * 3 and [len(t) for t in times.values()] == [2, 2]
    assert os.environ["INPAINT_FAST_CPU_GEMM"] == "auto"
    assert module.main(["--size", "64", "--reps", "2", "--choices", "blas", "auto"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if not line.startswith(("#", "pass"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (p, f"B1-C128-Cq32-Cp{cp}-N64", c) for cp in (128, 0) for p in ("fwd", "bwd") for c in ("blas", "auto")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows), rows
    assert all(float(r[4]) == 1.0 for r in rows if r[2] == "blas"), rows
    with pytest.raises(SystemExit, match=r"--size 60: expected a multiple of 8"):
        module.main(["--size", "60"])


def test_cpu_gemm_ab_pairs_each_round_with_the_gemm_ceiling(capsys):
    """benchmarks/ab_cpu_gemm.py --ceiling: the GEMM is timed once per round after the choices,
    and each row gets its paired fraction of it (the op's FLOP rate over that round's GEMM rate)."""
    module = _load_script("ab_cpu_gemm")
    order = []
    times = module.ab(lambda: order.append("op"), ["auto"], reps=3, ceiling=lambda: order.append("gemm"))
    assert order == ["op", "gemm"] * 4 and [len(t) for t in times.values()] == [3, 3]
    assert module.main(["--size", "64", "--reps", "2", "--choices", "auto", "--ceiling", "--cp", "0",
                        "--passes", "fwd", "fwd+bwd"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if not line.startswith(("#", "pass"))]
    assert [(r[0], r[2]) for r in rows] == [("fwd", "auto"), ("fwd+bwd", "auto")], rows
    fractions = [float(r[5].rstrip("%")) for r in rows]
    assert all(0 < f < 1000 for f in fractions) and all(float(r[6]) > 0 for r in rows), rows
    with pytest.raises(SystemExit, match=r"--choices: expected at least two values .* \(or one, with --ceiling\)"):
        module.main(["--choices", "auto"])
