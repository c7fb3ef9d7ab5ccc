"""The end-to-end training-step benchmark (inpaint_fast/bench/train_step.py): gate, rows, OOM path."""

from __future__ import annotations

import math

import pytest
import torch

from inpaint_fast.bench import train_step
from inpaint_fast.bench.rows import results_to_rows
from inpaint_fast.bench.timing import TimingConfig

TINY = TimingConfig(min_run_time=0.01, min_reps=1, warmup_time=0.0)


def test_gate_accepts_rounding_and_rejects_a_wrong_step():
    ref = {"loss_g": 2.0, "loss_d": 0.5}
    assert train_step._gate({"loss_g": 2.0 * (1 + 1e-5), "loss_d": 0.5}, ref, "off")[0] == "ok"
    status, note = train_step._gate({"loss_g": 2.1, "loss_d": 0.5}, ref, "off")
    assert status == "wrong" and "loss_g" in note
    assert train_step._gate({"loss_g": math.nan, "loss_d": 0.5}, ref, "off")[0] == "wrong"
    assert train_step._gate({"loss_g": 2.05, "loss_d": 0.5}, ref, "bf16")[0] == "ok"  # autocast tolerance
    assert train_step._gate(ref, None, "off")[0] == "unverified"


def test_pic_step_is_gated_timed_and_written_as_rows(monkeypatch):
    """PIC at 96² (the smallest side its discriminators take), reference vs the C++ backend, plus a
    provider whose step returns wrong losses: it must be reported wrong and never timed."""
    real_build = train_step.build_step

    def build(case, backend, device, seed=0):
        if backend == "wrong":
            step, batch = real_build(case, "cpu", device, seed)
            return (lambda: {k: v * 1.5 for k, v in step().items()}), batch
        return real_build(case, backend, device, seed)

    monkeypatch.setattr(train_step, "build_step", build)
    case = train_step.TrainCase("pic", 96, 1)
    results = train_step.run_train_bench([case], ["reference", "cpu", "wrong"], torch.device("cpu"), TINY)
    by = {r.provider: r for r in results}
    assert by["reference"].status == "ok" and by["cpu"].status == "ok", by["cpu"].note
    assert by["wrong"].status == "wrong" and by["wrong"].timing is None
    assert by["cpu"].speedup is not None and by["cpu"].peak_mb == by["cpu"].peak_mb  # not NaN
    rows = results_to_rows(results, {"device_name": "test"})
    metrics = {(r["provider"], r["metric"]) for r in rows}
    assert {("cpu", "ms"), ("cpu", "images_per_s"), ("cpu", "peak_mb"), ("cpu", "speedup_vs_reference")} <= metrics
    ips = next(r for r in rows if r["provider"] == "cpu" and r["metric"] == "images_per_s")
    assert math.isclose(ips["p50"], 1e3 / by["cpu"].timing.p50)


def test_a_failing_provider_is_recorded_not_raised(monkeypatch):
    def build(case, backend, device, seed=0):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 32.00 GiB")

    monkeypatch.setattr(train_step, "build_step", build)
    results = train_step.run_train_bench([train_step.TrainCase("pic", 96, 1)], ["reference"], torch.device("cpu"), TINY)
    assert results[0].status == "oom" and results[0].timing is None


def test_script_refuses_noisy_timings_for_the_committed_csv(tmp_path, monkeypatch, capsys):
    """benchmarks/bench_train_step.py writes the committed CSV by default; while other processes
    load the CPUs it must refuse before timing anything (shown on a copy of the repository layout)."""
    import importlib.util
    import os

    from inpaint_fast.bench import env

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("bench_train_step", os.path.join(repo, "benchmarks",
                                                                                   "bench_train_step.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.RESULTS_CSV == os.path.join(repo, "benchmarks", "results", "benchmarks.csv")
    (tmp_path / "inpaint_fast").mkdir()
    (tmp_path / "inpaint_fast" / "__init__.py").write_text("")
    committed = tmp_path / "benchmarks" / "results" / "benchmarks.csv"
    committed.parent.mkdir(parents=True)
    committed.write_text("kernel\n")
    monkeypatch.setattr(env, "busy_cpus", lambda: 2)
    monkeypatch.setattr(train_step, "run_train_bench", lambda *a, **k: pytest.fail("timed despite the refusal"))
    assert script.main(["--device", "cpu", "--quick", "--csv", str(committed)]) == 2
    err = capsys.readouterr().err
    assert "error: --csv: 2 other process(es)" in err and "--force" in err, err
    assert committed.read_text() == "kernel\n"


# --- --memory-limit: each (case, provider) in a capped child process --------------------------------


@pytest.fixture
def one_thread_children(monkeypatch):
    """Spawned children start torch with one thread (OMP_NUM_THREADS): quick at these sizes, and
    immune to OpenMP threads waiting on each other while the 2-core machine is busy."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.usefixtures("one_thread_children")
def test_a_memory_limit_far_too_small_records_oom_and_the_sweep_survives():
    """A cap 16 MiB above what a child holds once torch and the benchmark are imported: building
    PIC alone takes ~50 MiB, so the reference's child must fail with a real allocation failure,
    recorded as oom with the limit in the note, and the parent goes on to the next provider. (The
    cap is relative to the child's own start, so the failure comes at the same place wherever the
    test runs, not inside some lazily imported module.)"""
    from inpaint_fast.bench.memory_limit import data_in_use_gib, run_limited

    start = run_limited(data_in_use_gib, (), 64)
    assert 0 < start < 4, start
    limit = math.ceil((start + 16 / 1024) * 1024) / 1024  # GiB, to a MiB
    case = train_step.TrainCase("pic", 96, 1)
    results = train_step.run_train_bench([case], ["reference", "cpu"], torch.device("cpu"), TINY,
                                         reps=1, memory_limit_gib=limit)
    by = {r.provider: r for r in results}
    assert by["reference"].status == "oom", by["reference"].note
    assert by["reference"].timing is None and f"memory limit {limit:g} GiB (RLIMIT_DATA)" in by["reference"].note
    assert by["cpu"].status in ("oom", "unverified"), by["cpu"].note  # a number or oom; never a crash
    if by["cpu"].status == "unverified":
        assert "could not run to check it (oom" in by["cpu"].note


@pytest.mark.usefixtures("one_thread_children")
def test_a_generous_memory_limit_runs_normally_in_child_processes():
    case = train_step.TrainCase("pic", 96, 1)
    results = train_step.run_train_bench([case], ["reference", "cpu"], torch.device("cpu"), TINY,
                                         reps=1, memory_limit_gib=8)
    by = {r.provider: r for r in results}
    for r in results:  # Result, timing, peak and losses came back from each child
        assert r.status == "ok", (r.provider, r.note)
        assert r.timing is not None and r.timing.reps == 1 and r.peak_mb == r.peak_mb
        assert "1 timed step" in r.note and "memory limit 8 GiB (RLIMIT_DATA)" in r.note
    assert "within" in by["cpu"].note  # gated on the reference's losses, returned by its child
    assert by["cpu"].speedup is not None


@pytest.mark.usefixtures("one_thread_children")
def test_a_child_killed_by_a_signal_is_a_named_failure():
    import os

    from inpaint_fast.bench.memory_limit import ChildFailed, run_limited

    with pytest.raises(ChildFailed) as info:
        run_limited(os.abort, (), 1.0)
    assert info.value.status == "error" and "killed by SIGABRT" in info.value.note


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 17179869184 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 4096 bytes."),
    MemoryError(),
])  # fmt: skip
def test_host_allocation_failures_are_oom(exc):
    from inpaint_fast.bench.outcome import failure_status

    status, note = failure_status(exc)
    assert status == "oom" and note.startswith("out of memory"), note
    if "17179869184" in str(exc):
        assert "tried to allocate 16.0 GiB" in note
    assert failure_status(ValueError("bad"))[0] == "error"


def test_reps_times_exactly_that_many_steps():
    calls = []
    t = train_step.time_steps(lambda: calls.append(1), torch.device("cpu"), 3)
    assert len(calls) == 3 and t.reps == 3 and t.p20 <= t.p50 <= t.p80
