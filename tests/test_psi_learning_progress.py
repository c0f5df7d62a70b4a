"""``benchmarks/psi_learning.py``'s jobs say how far they got: a progress line on stderr (the call's log)
every eighth of the psi steps and after each fresh model, so that a job stopped by ``--deadline``
still shows where it was (session 67 lost a device call whose six jobs left nothing behind)."""

import importlib
import re
import time

import pytest
from conftest import TOY_MODULE


# the toy's 5 CG iterations stop a hair above its cg_tol on some steps; psi_learning records that per step
@pytest.mark.filterwarnings("ignore::autosim_jax.autosimulate.UnconvergedSolveWarning")
def test_a_job_reports_its_psi_steps_and_each_fresh_model(benchmark_script, toy_path, capsys):
    pl = benchmark_script("psi_learning")
    setup = importlib.import_module(TOY_MODULE).TOY.build()
    spec = {"variant": "default", "seed": 0, "index": 0, "steps": 16, "assess_steps": [8, 16], "repeats": 2,
            "assess_images": 64, "assess_epochs": 2}
    out = pl._measure(spec, setup, time.perf_counter())
    lines = capsys.readouterr().err.splitlines()
    ours = [line for line in lines if re.match(r"\[ *\d+\.\d s\] default seed 0: ", line)]
    said = [line.split(": ", 1)[1] for line in ours]
    assert said == ([f"psi step {t}/16" for t in range(2, 17, 2)]
                    + [f"{what}: fresh model {r} trained" for what in ("step 8", "step 16", "the second half's average")
                       for r in (1, 2)])
    seconds = [float(re.match(r"\[ *(\d+\.\d) s\]", line).group(1)) for line in ours]
    assert seconds == sorted(seconds)  # the job's own clock
    assert set(out["assessed"]) == {"8", "16", "average_second_half"} and len(out["psi"]) == 16


@pytest.mark.filterwarnings("ignore::autosim_jax.autosimulate.UnconvergedSolveWarning")
def test_no_assess_average_trains_no_models_on_the_second_halfs_average(benchmark_script, toy_path, capsys):
    pl = benchmark_script("psi_learning")
    setup = importlib.import_module(TOY_MODULE).TOY.build()
    spec = {"variant": "default", "seed": 0, "index": 0, "steps": 4, "assess_steps": [4], "repeats": 1,
            "assess_images": 64, "assess_epochs": 2, "assess_average": False}
    out = pl._measure(spec, setup, time.perf_counter())
    assert set(out["assessed"]) == {"4"}
    assert capsys.readouterr().err.count("fresh model") == 1
