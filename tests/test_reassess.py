"""benchmarks/reassess.py's and field_value.py's ``--cli-runs``: the psi an ``autosim run`` directory returned, read
back for new fresh models (issue 13, session 27), on a real run of the CLI tests' toy.

The script imports its siblings (``field_drift``, ``psi_learning``), so it is imported with
``benchmarks/`` on ``sys.path``, as tests/test_benchmark_doctests.py does.
"""

import argparse
import json
import pathlib
import shutil

import numpy as np
import pytest
from toy_reference import SPEC as TOY_REF  # the toy with a reference psi and a 64-image assessment

from autosim_jax.cli import main

_BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


@pytest.fixture()
def reassess(monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(_BENCHMARKS))
    return importlib.import_module("reassess")


@pytest.fixture(scope="module")
def runs(toy_path, tmp_path_factory):
    """Two finished toy runs: one returns a psi chosen by --select-every, one its final psi."""
    root = tmp_path_factory.mktemp("cli_runs")
    assert main(["run", TOY_REF, "--iterations", "4", "--select-every", "2", "--assess-models", "2",
                 "--out", str(root / "selected")]) == 0
    assert main(["run", TOY_REF, "--iterations", "3", "--seed", "1", "--out", str(root / "final")]) == 0
    return root


def _args(dirs, **over):
    base = {"cli_runs": [str(d) for d in dirs], "experiment": TOY_REF, "size": "cpu", "assess_images": None,
            "assess_epochs": None}
    return argparse.Namespace(**{**base, **over})


def _setup():
    import toy_reference

    return toy_reference.build()


def test_cli_runs_give_the_returned_psi_and_the_runs_own_assessments(reassess, runs):
    from field_drift import unflatten

    from autosim_jax.rundir import psi_from_record

    setup = _setup()
    items = reassess.cli_records(argparse.ArgumentParser(), _args([runs / "selected", runs / "final"]), setup)
    assert [it["variant"] for it in items] == ["selected", "learned"]
    for it, name in zip(items, ("selected", "final")):
        summary = json.loads((runs / name / "summary.json").read_text())
        raw = json.loads((runs / name / "psi.json").read_text())["raw"]
        a = summary["assessment"]
        key = "selected" if name == "selected" else "learned"
        # the flat psi the jobs rebuild is the run's returned psi, bit for bit
        back = unflatten(it["psi"], setup.simulator.distribution.init())
        want = psi_from_record(setup.simulator.distribution.init(), raw[key])
        assert all(np.array_equal(x, y) for x, y in zip(np.asarray(back["x"]), np.asarray(want["x"])))
        assert it["old"] == (a["selected_psi"] if key == "selected" else a["learned_psi"])
        assert it["old_n"] == it["old_baseline_n"] == a["models"]
        assert it["old_baseline"] == {"start": a["start_psi"], "reference": a["reference_psi"]}
        assert it["seed"] == json.loads((runs / name / "config.json").read_text())["seed"]
    assert items[0]["returned"] == str(json.loads((runs / "selected" / "summary.json").read_text())["selected_step"])
    assert items[1]["returned"] == "final" and items[1]["step"] == 3 and items[1]["seed"] == 1


def test_cli_runs_are_checked_before_any_job(reassess, runs, tmp_path, capsys):
    setup, p = _setup(), argparse.ArgumentParser(prog="reassess.py")
    bad = tmp_path / "half"
    shutil.copytree(runs / "final", bad)
    (bad / "summary.json").unlink()  # an unfinished run
    cases = [(_args([bad]), "not a finished autosim run or compare run directory"),
             (_args([runs / "final"], experiment="clevr-seg", size="gpu"), "not clevr-seg at gpu"),
             (_args([runs / "final"], assess_images=128), "--assess-images 64 --assess-epochs 5")]
    for args, message in cases:
        with pytest.raises(SystemExit):
            reassess.cli_records(p, args, setup)
        assert message in capsys.readouterr().err, message
    with pytest.raises(SystemExit):
        reassess.main(["--experiment", TOY_REF, "--out", str(tmp_path / "o")])
    assert "give --runs FILE:VARIANT or --cli-runs DIR" in capsys.readouterr().err


def test_with_start_gives_the_select_reset_twin(reassess, runs, capsys):
    """``--with-start FIELDS``: the returned psi with the fields at the start's, as the twin of
    ``autosim run --select-reset FIELDS`` (cli.psi_at with the reset fields) has them."""
    from field_drift import flatten

    setup, p = _setup(), argparse.ArgumentParser(prog="reassess.py")
    items = reassess.cli_records(p, _args([runs / "final"]), setup)
    start = setup.simulator.distribution.init()
    (twin,) = reassess._with_fields(p, "--with-start", "x", items, start, "start")
    assert twin["variant"] == "learned+start x" and twin["old"] is None and twin["old_n"] == 0
    assert twin["psi"] == flatten(start) != items[0]["psi"]  # the run moved x; its twin has the start's
    assert twin["seed"] == items[0]["seed"] and twin["returned"] == items[0]["returned"]
    with pytest.raises(SystemExit):
        reassess._with_fields(p, "--with-start", "x,colour", items, start, "start")
    assert "--with-start: unknown fields ['colour']; the experiment's are ['x']" in capsys.readouterr().err


def test_field_value_takes_the_psi_that_cli_runs_returned(runs, monkeypatch, capsys):
    """``field_value.py --cli-runs``: each run's returned psi by seed, checked before any job."""
    import importlib

    monkeypatch.syspath_prepend(str(_BENCHMARKS))
    field_value = importlib.import_module("field_value")
    reassess = importlib.import_module("reassess")
    setup, p = _setup(), argparse.ArgumentParser(prog="field_value.py")
    dirs = [runs / "selected", runs / "final"]
    source, found = field_value.returned_psi(p, _args(dirs, runs=None, seeds=None, step=60), setup)
    want = {it["seed"]: it["psi"] for it in reassess.cli_records(p, _args(dirs), setup)}
    assert found == want and sorted(found) == [0, 1] and source == ", ".join(map(str, dirs))
    _, only = field_value.returned_psi(p, _args(dirs, runs=None, seeds="1", step=60), setup)
    assert only == {1: want[1]}
    cases = [(_args([runs / "final", runs / "final"], runs=None, seeds=None, step=60),
              "more than one run of seed(s) [1]"),
             (_args(dirs, runs="x.json:default", seeds=None, step=60), "give --runs FILE:VARIANT or --cli-runs DIR"),
             (_args(dirs, runs=None, seeds="7", step=60), "holds no run for seeds [7]")]
    for args, message in cases:
        with pytest.raises(SystemExit):
            field_value.returned_psi(p, args, setup)
        assert message in capsys.readouterr().err, message


def test_cli_runs_take_a_run_of_autosim_compare(reassess, toy_path, tmp_path):
    """A run directory of ``autosim compare`` (``OUT/METHOD/seedS``): its final psi, its own fresh
    models and the comparison's start and reference models of that seed; the rows named after the
    method (issue 14: digits-det's runs, more detectors per psi without training the others again)."""
    from autosim_jax.rundir import psi_from_record

    out = tmp_path / "c"
    assert main(["compare", TOY_REF, "--methods", "autosimulate,random", "--seeds", "2", "--budget-images", "64",
                 "--assess-points", "1", "--out", str(out)]) == 0
    dirs = [out / "autosimulate-exact_quadratic" / "seed0", out / "random" / "seed1"]
    setup = _setup()
    items = reassess.cli_records(argparse.ArgumentParser(), _args(dirs), setup)
    assert [(it["variant"], it["seed"], it["returned"]) for it in items] == [
        ("autosimulate-exact_quadratic", 0, "final"), ("random", 1, "final")]

    def assessed(folder):
        return json.loads((folder / "assessed.json").read_text())

    for it, run in zip(items, dirs):
        summary = json.loads((run / "summary.json").read_text())
        final = psi_from_record(setup.simulator.distribution.init(), summary["psi"])
        assert it["psi"] == reassess.flatten(final) and it["step"] == summary["iterations"]
        own = assessed(run)
        assert {k: v for k, v in it["old"].items() if k != "step"} == own["results"][str(summary["iterations"])]
        assert it["old_n"] == it["old_baseline_n"] == own.get("models", 1) == 1  # compare's default, one model
        seed = f"seed{it['seed']}"
        assert it["old_baseline"] == {"start": assessed(out / "start_psi" / seed)["results"]["0"],
                                      "reference": assessed(out / "reference_psi" / seed)["results"]["reference"]}
