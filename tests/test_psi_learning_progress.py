"""``benchmarks/psi_learning.py``'s jobs say how far they got: a progress line on stderr (the call's log)
every eighth of the psi steps and after each fresh model, so that a job stopped by ``--deadline``
still shows where it was (session 67 lost a device call whose six jobs left nothing behind), and keeps
its psi trajectory so far for the record's ``failed`` entry; and ``--no-assess-average`` trains no models
on the second half's average psi."""

import importlib
import json
import pathlib
import re
import time

import pytest
from conftest import TOY_MODULE

# the toy's 5 CG iterations stop a hair above its cg_tol on some steps; psi_learning records that per step
pytestmark = pytest.mark.filterwarnings("ignore::autosim_jax.autosimulate.UnconvergedSolveWarning")


@pytest.fixture()
def measure(benchmark_script, toy_path):
    """``measure(**spec)``: one psi_learning job's measurements (``_measure``) of the toy experiment."""
    pl, setup = benchmark_script("psi_learning"), importlib.import_module(TOY_MODULE).TOY.build()
    base = {"variant": "default", "seed": 0, "index": 0, "repeats": 1, "assess_images": 64, "assess_epochs": 2}
    return lambda **spec: pl._measure({**base, **spec}, setup, time.perf_counter())


def test_a_job_reports_its_psi_steps_and_each_fresh_model(measure, capsys):
    out = measure(steps=16, assess_steps=[8, 16], repeats=2)
    lines = capsys.readouterr().err.splitlines()
    ours = [line for line in lines if re.match(r"\[ *\d+\.\d s\] default seed 0: ", line)]
    said = [line.split(": ", 1)[1] for line in ours]
    assert said == ([f"psi step {t}/16" for t in range(2, 17, 2)]
                    + [f"{what}: fresh model {r} trained" for what in ("step 8", "step 16", "the second half's average")
                       for r in (1, 2)])
    seconds = [float(re.match(r"\[ *(\d+\.\d) s\]", line).group(1)) for line in ours]
    assert seconds == sorted(seconds)  # the job's own clock
    assert set(out["assessed"]) == {"8", "16", "average_second_half"} and len(out["psi"]) == 16


def test_no_assess_average_trains_no_models_on_the_second_halfs_average(measure, capsys):
    out = measure(steps=4, assess_steps=[4], assess_average=False)
    assert set(out["assessed"]) == {"4"}
    assert capsys.readouterr().err.count("fresh model") == 1


def test_a_job_keeps_its_trajectory_at_each_progress_line_for_a_deadline_cut(measure, benchmark_script, tmp_path):
    pl, path = benchmark_script("psi_learning"), str(tmp_path / "3.json")
    out = measure(steps=16, assess_steps=[16], assess_average=False, trajectory_to=path)
    saved = json.loads(pathlib.Path(path).read_text())
    assert saved["psi"] == out["psi"] and len(saved["infos"]) == 16  # the last write: after step 16
    assert saved["infos"][-1]["psi_updated"] == out["infos"][-1]["psi_updated"]
    spec = {"variant": "default", "seed": 0, "index": 3, "steps": 20, "trajectory_to": path}
    entry = pl.unfinished_entry(spec, 500)
    assert entry["steps_done"] == 16 and entry["psi"] == out["psi"] and "assessed" not in entry
    assert entry["error"] == ("not finished within --deadline 500 s (its trajectory to step 16 of 20 kept, "
                              "no assessment)")
    # a job stopped before its first progress line (or a baseline job) leaves no file: the plain entry
    bare = pl.unfinished_entry({**spec, "trajectory_to": str(tmp_path / "none.json")}, 500)
    assert bare == {"variant": "default", "seed": 0, "index": 3, "seconds": 500,
                    "error": "not finished within --deadline 500 s"}
