"""benchmarks/selection_runs.py on run directories written by hand (no experiment runs).

The script is loaded from its file (benchmarks/ is no package and not on the test path).
"""

import json
import pathlib

import pytest
from conftest import load_benchmark

sr = load_benchmark("selection_runs")


def _run_dir(root: pathlib.Path, name: str, assessment: dict) -> str:
    path = root / name
    path.mkdir()
    (path / "summary.json").write_text(json.dumps({"assessment": assessment}))
    return str(path)


def _assessment(at60: float, at60_reset: float, final: float, picked_new: float, pick: str) -> dict:
    def m(v):
        return {"val_metric": v, "test_metric": v}

    step, _, reset = pick.partition("+")
    return {"start_psi": m(0.3), "reference_psi": m(0.5), "learned_psi": m(final),
            "checked_steps": {"60": m(at60), "60+reset": m(at60_reset), "120": m(final)},
            "selected_psi": {"step": int(step), "reset": ["color"] if reset else [], **m(picked_new)}}


def test_main_tabulates_each_runs_candidates_and_the_pick(tmp_path, capsys):
    """Two runs: G of each candidate from the run's own start and reference, the pick's G by its
    own models and by new ones, the shortfall from the best candidate, and the mean over runs."""
    runs = [_run_dir(tmp_path, "seed0", _assessment(0.40, 0.42, 0.45, 0.44, "120")),
            _run_dir(tmp_path, "seed1", _assessment(0.35, 0.48, 0.40, 0.46, "60+reset"))]
    out = tmp_path / "sel"
    assert sr.main([*runs, "--out", str(out)]) == 0
    record = json.loads((out.with_suffix(".json")).read_text())
    first, second = (r["test_metric"] for r in record["rows"])
    assert first["G"] == {"60": 0.5, "60+reset": 0.6, "120": 0.75}
    assert (first["picked"], first["picked_G_new_models"], first["shortfall_new_models"]) == ("120", 0.7, 0.05)
    assert (second["picked"], second["picked_G"], second["picked_G_new_models"]) == ("60+reset", 0.9, 0.8)
    assert record["summary"]["picked_new_models"]["mean"] == pytest.approx(0.75)
    assert record["summary"]["final"]["mean"] == pytest.approx(0.625)
    assert out.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| seed1 | 0.25 | 0.90 | 0.50 | 60+reset (0.90) | 0.80 | 0.50 |" in printed


def test_the_table_aligns_runs_with_different_candidates(tmp_path, capsys):
    """A run whose psi at 60 held the reset fields at the start has no twin there: a dash, the
    columns stay in step order."""
    full = _assessment(0.40, 0.42, 0.45, 0.44, "120")
    short = _assessment(0.35, 0.48, 0.40, 0.46, "120")
    del short["checked_steps"]["60+reset"]
    runs = [_run_dir(tmp_path, "a", short), _run_dir(tmp_path, "b", full)]
    assert sr.main([*runs, "--out", str(tmp_path / "sel")]) == 0
    printed = capsys.readouterr().out
    assert "| run | 60 | 60+reset | 120 |" in printed
    assert "| a | 0.25 | - | 0.50 |" in printed


def test_main_names_a_run_without_candidates(tmp_path):
    plain = _assessment(0.40, 0.42, 0.45, 0.44, "120")
    del plain["checked_steps"]
    run = _run_dir(tmp_path, "plain", plain)
    with pytest.raises(SystemExit, match="plain: summary.json has no assessed candidates"):
        sr.main([run, "--out", str(tmp_path / "sel")])
