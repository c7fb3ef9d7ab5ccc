"""The completion benchmark (inpaint_fast/bench/completion.py, benchmarks/bench_completion.py):
``inpaint-fast inpaint --model pic``'s pipeline, the known-pixel check, rows, the script."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from inpaint_fast.bench import completion
from inpaint_fast.bench.rows import results_to_rows

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("bench_completion", os.path.join(REPO, "benchmarks",
                                                                                   "bench_completion.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_a_small_completion_is_ok_exact_and_written_as_rows():
    results = completion.run_completion_bench([128], ["reference", "cpu"], torch.device("cpu"), reps=1)
    by = {r.provider: r for r in results}
    for r in results:
        assert (r.kernel, r.mode, r.dtype, r.shape) == ("completion_pic", "inference", "fp32", "B1-img128")
        assert r.status == "ok", (r.provider, r.note)
        assert "all 12288 known pixels equal the input exactly" in r.note and "1 timed run" in r.note
        assert r.timing is not None and r.timing.reps == 1 and r.peak_mb == r.peak_mb  # not NaN
    assert by["cpu"].speedup is not None
    rows = results_to_rows(results, {"device_name": "test"})
    metrics = {(r["provider"], r["metric"]) for r in rows}
    assert {(p, m) for p in ("reference", "cpu") for m in ("ms", "images_per_s", "peak_mb")} <= metrics
    assert ("cpu", "speedup_vs_reference") in metrics
    ips = next(r for r in rows if r["provider"] == "cpu" and r["metric"] == "images_per_s")
    assert math.isclose(ips["p50"], 1e3 / by["cpu"].timing.p50)


def test_the_measured_pipeline_keeps_the_known_pixels_of_the_input():
    """What the row's status rests on: inpaint_pic's output equals the input where mask = 1."""
    run, image, mask = completion._build(128, "cpu", torch.device("cpu"), 0)
    out = run()
    assert out.shape == (1, 3, 128, 128)
    known = mask[0, 0] == 1
    assert torch.equal(out[0][:, known], image[0][:, known])
    assert not torch.equal(out[0][:, ~known], image[0][:, ~known])  # the hole was completed


def test_known_pixels_that_differ_make_the_row_wrong():
    image, mask = completion.synthetic_inputs(64)
    out = image.clone()
    assert completion.known_pixels_status(out, image, mask)[0] == "ok"
    out[0, 1, 0, 0] += 1e-7
    out[0, :, 5, 7] = math.nan
    out[0, :, 32, 32] = 0.0  # inside the hole: not checked
    status, note = completion.known_pixels_status(out, image, mask)
    assert status == "wrong" and note.startswith("2 of the 3072 known pixels differ"), note


def test_sizes_and_backends_the_command_refuses_are_recorded():
    cpu = torch.device("cpu")
    res = completion.measure_completion(100, "cpu", cpu)
    assert res.status == "unsupported" and "--size: PIC" in res.note and res.timing is None
    res = completion.measure_completion(128, "nope", cpu)
    assert res.status == "unavailable" and "--backend" in res.note


def test_script_writes_rows_and_refuses_noisy_timings_for_the_committed_csv(tmp_path, monkeypatch, capsys):
    from inpaint_fast.bench import env
    from inpaint_fast.bench.results import read_rows

    script = _script()
    assert script.RESULTS_CSV == os.path.join(REPO, "benchmarks", "results", "benchmarks.csv")
    out = tmp_path / "rows.csv"
    assert script.main(["--device", "cpu", "--sizes", "96", "--providers", "cpu", "--csv", str(out)]) == 0
    rows = read_rows(str(out))
    assert {r["metric"] for r in rows} == {"ms", "images_per_s", "peak_mb"}
    assert {(r["kernel"], r["mode"], r["shape"], r["status"]) for r in rows} == {
        ("completion_pic", "inference", "B1-img96", "ok")}
    assert script.main(["--device", "cpu", "--sizes", "100", "--no-csv"]) == 2
    assert "error: --sizes: PIC" in capsys.readouterr().err

    (tmp_path / "repo" / "inpaint_fast").mkdir(parents=True)
    (tmp_path / "repo" / "inpaint_fast" / "__init__.py").write_text("")
    committed = tmp_path / "repo" / "benchmarks" / "results" / "benchmarks.csv"
    committed.parent.mkdir(parents=True)
    committed.write_text("kernel\n")
    monkeypatch.setattr(env, "busy_cpus", lambda: 2)
    monkeypatch.setattr(completion, "run_completion_bench", lambda *a, **k: pytest.fail("timed despite the refusal"))
    assert script.main(["--device", "cpu", "--sizes", "96", "--csv", str(committed)]) == 2
    err = capsys.readouterr().err
    assert "error: --csv: 2 other process(es)" in err and "--force" in err, err
    assert committed.read_text() == "kernel\n"
