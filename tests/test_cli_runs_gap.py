"""benchmarks/cli_runs_gap.py: G per run directory, a cut run's borrowed reference, clear errors."""

import json

import pytest
from conftest import BENCHMARKS, load_benchmark

gap = load_benchmark("cli_runs_gap")


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch):
    """The script imports its group summary from benchmarks/detection_tables.py, as when run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def _run(root, name, *, seed, start, learned, reference=None, step=40, experiment="clevr-seg"):
    """A run directory as `autosim run` leaves it (the two files the script reads)."""
    d = root / name
    d.mkdir()
    results = {"0": {"test_metric": sum(start) / len(start), "test_metrics": start},
               str(step): {"test_metric": sum(learned) / len(learned), "test_metrics": learned}}
    if reference is not None:
        results["reference"] = {"test_metric": reference, "test_metrics": [reference]}
    (d / "assessed.json").write_text(json.dumps({"images": 2048, "epochs": 10, "models": len(start),
                                                 "seed": seed, "results": results}))
    (d / "config.json").write_text(json.dumps({"experiment": experiment, "size": "cpu", "device": "cpu"}))
    return str(d)


def test_gap_per_run_and_group_summary(tmp_path):
    a = _run(tmp_path, "a", seed=0, start=[0.3, 0.3], learned=[0.4, 0.4], reference=0.5)
    b = _run(tmp_path, "b", seed=1, start=[0.2, 0.2], learned=[0.2, 0.2], reference=0.6)
    out = gap.table({"g": [a, b]})["g"]
    assert [r["G"] for r in out["rows"]] == pytest.approx([0.5, 0.0])
    assert out["G"]["mean"] == pytest.approx(0.25)
    assert out["G"]["std"] == pytest.approx(0.5 ** 0.5 / 2)
    assert out["seeds"] == [0, 1] and out["incomplete"] == []


def test_a_cut_run_borrows_only_an_identical_start_assessment(tmp_path):
    donor = _run(tmp_path, "donor", seed=3, start=[0.29, 0.34], learned=[0.3, 0.3], reference=0.48)
    cut = _run(tmp_path, "cut", seed=3, start=[0.29, 0.34], learned=[0.40, 0.40], step=120)
    other_start = _run(tmp_path, "other", seed=3, start=[0.29, 0.35], learned=[0.40, 0.40], step=120)
    out = gap.table({"cut": [cut, other_start]}, donors=[donor])["cut"]
    borrowed, orphan = out["rows"]
    assert borrowed["reference_from"] == donor
    assert borrowed["G"] == pytest.approx((0.40 - 0.315) / (0.48 - 0.315))
    assert orphan["G"] is None and out["incomplete"] == [other_start]
    assert out["G"]["n"] == 1


def test_errors_name_the_directory_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no assessed.json"):
        gap.read_run(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="matches no directory"):
        gap.parse_group(f"x={tmp_path}/nothing*")
    with pytest.raises(ValueError, match="LABEL=GLOB"):
        gap.parse_group("no-equals-sign")


def test_main_writes_json_and_plot(tmp_path, capsys):
    _run(tmp_path, "r0", seed=0, start=[0.3], learned=[0.45], reference=0.5)
    out = tmp_path / "out" / "gap"
    assert gap.main(["--group", f"one={tmp_path}/r*", "--out", str(out)]) == 0
    doc = json.loads((tmp_path / "out" / "gap.json").read_text())
    assert doc["groups"]["one"]["G"]["mean"] == pytest.approx(0.75)
    assert (tmp_path / "out" / "gap.png").stat().st_size > 0
    assert "0.75" in capsys.readouterr().out
