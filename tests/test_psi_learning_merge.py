"""``benchmarks/psi_learning.py --merge``: one record from several device calls' records, the
summaries computed again over the union of their runs (session 52: a comparison's seeds ran in
separate calls, each within a call's time limit)."""

import gzip
import json

import pytest


@pytest.fixture()
def pl(benchmark_script):
    return benchmark_script("psi_learning")


def _run(variant, seed, test_metric, points=("4", "average_second_half")):
    info = {"cg_converged": False, "psi_updated": True, "cg_relative_residual": 0.5,
            "time_render": 0.1, "time_train": 0.2, "time_outer": 0.3}
    return {"variant": variant, "seed": seed, "infos": [info] * 4, "psi": [{"a": [float(t)]} for t in range(5)],
            "assessed": {k: {"test_metric": test_metric, "val_metric": test_metric} for k in points}}


def _baseline(seed):
    m = lambda x: {"test_metric": x, "val_metric": x}  # noqa: E731
    return {"variant": "_baseline", "seed": seed, "start": m(0.2), "reference": m(0.6)}


def _record(tmp_path, name, runs, failed=(), steps=4, **options):
    record = {**options, "benchmark": "psi_learning", "date": "2026-12-05", "command": f"call {name}",
              "device": "gpu:X",
              "jax_version": "0", "experiment": "toy", "size": "gpu", "steps": steps, "assess_steps": [4],
              "repeats": 1, "baseline_repeats": 1, "assess_images": None, "assess_epochs": None,
              "precision": "float32", "baselines_from": None, "variants": {"default": {}}, "wall_seconds": 1.0,
              "failed": list(failed), "runs": runs}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_merge_recomputes_g_over_the_union_and_keeps_each_run_once(pl, tmp_path, capsys):
    cut = {"variant": "default", "seed": 1, "error": "not finished within --deadline 5 s"}
    a = _record(tmp_path, "a", [_baseline(0), _baseline(1), _run("default", 0, 0.4)], failed=[cut])
    b = _record(tmp_path, "b", [_baseline(1), _run("default", 1, 0.5)])  # seed 1's baseline again, the same
    pl.main(["--merge", a, b, "--merge-note", "two calls", "--out", str(tmp_path / "m")])
    merged = json.loads(gzip.open(tmp_path / "m.json.gz").read())
    g = merged["gap_closed"]["test_metric"]["default"]["4"]
    assert g["per_seed"] == pytest.approx([0.5, 0.75]) and g["seeds"] == [0, 1]  # (0.4-0.2)/0.4, (0.5-0.2)/0.4
    assert merged["failed"] == []  # seed 1 was cut in one call and finished in the other
    assert merged["merged_from"] == {"records": ["a.json", "b.json"], "note": "two calls"}
    assert merged["command"] == ["call a", "call b"] and (tmp_path / "m.png").exists()
    assert sorted((r["variant"], r["seed"]) for r in merged["runs"]) == [
        ("_baseline", 0), ("_baseline", 1), ("default", 0), ("default", 1)]


def test_merge_refuses_other_settings_and_a_run_twice(pl, tmp_path):
    a = _record(tmp_path, "a", [_baseline(0), _run("default", 0, 0.4)])
    other = _record(tmp_path, "o", [_baseline(1), _run("default", 1, 0.4)], steps=8)
    with pytest.raises(SystemExit, match="differ in steps"):
        pl.main(["--merge", a, other, "--out", str(tmp_path / "m")])
    twice = _record(tmp_path, "t", [_run("default", 0, 0.45)])
    with pytest.raises(SystemExit, match="second run of default seed 0"):
        pl.main(["--merge", a, twice, "--out", str(tmp_path / "m")])
    moved = _record(tmp_path, "s", [dict(_baseline(0), start={"test_metric": 0.3, "val_metric": 0.3})])
    with pytest.raises(SystemExit, match="second run of _baseline seed 0"):
        pl.main(["--merge", a, moved, "--out", str(tmp_path / "m")])


def test_a_merged_record_merges_again_with_its_calls_listed_once_each(pl, tmp_path):
    a = _record(tmp_path, "a", [_baseline(0), _run("default", 0, 0.4)])
    b = _record(tmp_path, "b", [_baseline(1), _run("default", 1, 0.5)])
    pl.main(["--merge", a, b, "--merge-note", "first", "--out", str(tmp_path / "m")])
    c = _record(tmp_path, "c", [_baseline(2), _run("default", 2, 0.6)])
    pl.main(["--merge", str(tmp_path / "m.json.gz"), c, "--merge-note", "second", "--out", str(tmp_path / "m2")])
    merged = json.loads(gzip.open(tmp_path / "m2.json.gz").read())
    assert merged["command"] == ["call a", "call b", "call c"] and merged["device"] == ["gpu:X"]
    assert merged["wall_seconds"] == [1.0, 1.0, 1.0] and merged["baselines_from"] == [None, None, None]
    assert merged["merged_from"] == {"records": ["m.json.gz", "c.json"], "note": "first | second"}
    assert merged["gap_closed"]["test_metric"]["default"]["4"]["per_seed"] == pytest.approx([0.5, 0.75, 1.0])


def test_records_with_and_without_the_average_assessed_are_not_merged(pl, tmp_path):
    """A record of ``--no-assess-average`` holds no fresh models on the second half's average; one written
    before the flag (no ``assess_average`` key) did assess it, so the two are refused together, and records
    that agree merge with every G listed under the seeds it belongs to."""
    old = _record(tmp_path, "old", [_baseline(0), _run("default", 0, 0.4)])  # before session 67: no key
    new = _record(tmp_path, "new", [_baseline(1), _run("default", 1, 0.5, points=("4",))], assess_average=False)
    with pytest.raises(SystemExit, match="differ in assess_average"):
        pl.main(["--merge", old, new, "--out", str(tmp_path / "m")])
    also = _record(tmp_path, "also", [_baseline(2), _run("default", 2, 0.6, points=("4",))], assess_average=False)
    pl.main(["--merge", new, also, "--out", str(tmp_path / "m")])
    merged = json.loads(gzip.open(tmp_path / "m.json.gz").read())
    assert merged["assess_average"] is False
    row = merged["gap_closed"]["test_metric"]["default"]
    assert set(row) == {"4", "selected_by_val"} and row["4"]["seeds"] == [1, 2]
