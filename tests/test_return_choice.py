"""``benchmarks/return_choice.py``: the cross-fitted validation pick read from ``psi_learning.py``
records, against a hand computation, and its summary's paired figures."""

import gzip
import json

import numpy as np
import pytest


@pytest.fixture()
def rc(benchmark_script):
    return benchmark_script("return_choice")


def _assessed(val, test, diverged=()):
    kept = [t for i, t in enumerate(test) if i not in diverged]
    return {"val_metrics": val, "test_metrics": test, "test_metric": float(np.mean(kept)),
            "diverged_models": list(diverged)}


def _record():
    base = {"variant": "_baseline", "seed": 3, "start": {"test_metric": 0.1}, "reference": {"test_metric": 0.5}}
    run = {"variant": "default", "seed": 3, "assessed": {
        "0": _assessed([0.9, 0.9, 0.9, 0.9], [0.0, 0.0, 0.0, 0.0]),  # the start: never a candidate
        "30": _assessed([0.2, 0.6, 0.3, 0.1], [0.3, 0.2, 0.4, 0.2]),
        "60": _assessed([0.5, 0.1, 0.2, 0.4], [0.2, 0.5, 0.3, 0.3]),
        "average_second_half": _assessed([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])}}
    odd = {"variant": "odd", "seed": 3, "assessed": {"30": _assessed([0.1] * 3, [0.1] * 3),
                                                     "60": _assessed([0.1] * 3, [0.1] * 3)}}
    return {"benchmark": "psi_learning", "runs": [base, run, odd]}


def test_crossfit_from_a_record_by_hand(rc):
    (r,) = rc.record_crossfit_runs(_record())  # the run with 3 models per step is skipped
    # models 0-1 pick by val means 30: 0.4, 60: 0.3 -> 30; models 2-3 judge it: (0.4 + 0.2) / 2 = 0.3.
    # models 2-3 pick 30: 0.2, 60: 0.3 -> 60; models 0-1 judge it: (0.2 + 0.5) / 2 = 0.35.
    assert r["picks"] == [30, 60]
    assert r["picked"] == pytest.approx((0.3 + 0.35) / 2)
    # the final psi (step 60) judged by the same halves: models 2-3 0.3, models 0-1 0.35
    assert r["final"] == pytest.approx((0.3 + 0.35) / 2)
    assert r["G"]["picked"] == pytest.approx((0.325 - 0.1) / 0.4)
    assert r["best_step"] == 60 and set(r["G"]["by_step"]) == {"30", "60"}


def test_crossfit_summary_pairs_and_leaves_out_nan(rc):
    runs = [{"G": {"picked": 0.5, "final": 0.3}}, {"G": {"picked": 0.2, "final": 0.4}},
            {"G": {"picked": 0.6, "final": 0.6}}, {"G": {"picked": float("nan"), "final": 0.1}}]
    s = rc.crossfit_summary(runs)
    diff = np.array([0.2, -0.2, 0.0])
    assert s["runs"] == 3 and s["left_out_nan"] == 1
    assert s["picked_minus_final"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert s["picked_minus_final"]["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(3))
    assert (s["picked_minus_final"]["ahead"], s["picked_minus_final"]["behind"]) == (1, 1)


def test_records_mode_writes_the_crossfit(rc, tmp_path):
    record = _record()
    record["gap_closed"] = {"test_metric": {"default": {
        "30": {"per_seed": [0.5], "seeds": [3]}, "60": {"per_seed": [0.55], "seeds": [3]},
        "selected_by_val": {"per_seed": [0.55], "seeds": [3]},
        "average_second_half": {"per_seed": [0.4], "seeds": [3]}}}}
    with gzip.open(tmp_path / "rec.json.gz", "wt") as f:
        json.dump(record, f)
    (tmp_path / "rec.partial.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n{"b": 2}\n'))  # skipped, not parsed
    assert rc.main(["--records", str(tmp_path / "rec*"), "--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["summary"]["average_second_half"]["minus_final"]["mean"] == pytest.approx(0.4 - 0.55)
    assert out["crossfit_summary"]["runs"] == 1 and out["crossfit_runs"][0]["picks"] == [30, 60]
    assert out["command"].startswith("python benchmarks/return_choice.py --records")
