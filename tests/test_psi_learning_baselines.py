"""``benchmarks/psi_learning.py --baselines-from``: reused start and reference assessments must
have been made with this call's assessment budget as resolved (the experiment's defaults applied),
and a record that does not say which budget it used is refused (session 49 reused 512-image models
against 2,048-image ones because both calls said "the experiment's default"), and their start,
reference, validation/test sets, training options and model must be this call's (a digest of them,
recorded since session 50)."""

import argparse
import gzip
import json
import pathlib

import pytest

_BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def pl(monkeypatch):
    import importlib
    monkeypatch.syspath_prepend(str(_BENCHMARKS))
    return importlib.import_module("psi_learning")


@pytest.fixture(scope="module")
def digits_cpu():
    import autosim_jax as asj
    exp = asj.get_experiment("digits-sim2real")
    return exp.build(renderer=exp.renderers[0], seed=0, size="cpu")


@pytest.fixture
def inputs(pl, digits_cpu):
    return pl.baseline_inputs(digits_cpu, [4096, 10])


def _write(tmp_path, budget=None, inputs=None):
    base = {"variant": "_baseline", "seed": 0, "start": {"test_metric": 0.2}, "reference": {"test_metric": 0.5}}
    if budget is not None:
        base["assess_budget"] = budget
    if inputs is not None:
        base["baseline_inputs"] = inputs
    path = tmp_path / "old.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"experiment": "digits-sim2real", "size": "cpu", "repeats": 2, "baseline_repeats": 2,
                   "runs": [base]}, f)
    return str(path)


def _args(**kw):
    return argparse.Namespace(**{"experiment": "digits-sim2real", "size": "cpu", "repeats": 2, "baseline_repeats": None,
                                 "assess_images": None, "assess_epochs": None, **kw})


def test_baselines_are_reused_only_with_the_resolved_budget(pl, tmp_path, inputs):
    # digits-sim2real cpu assesses on 4,096 images x 10 epochs by default
    reused = pl.load_baselines(_write(tmp_path, [4096, 10], inputs), _args(), [0])
    assert reused[0]["start"]["test_metric"] == 0.2 and reused[0]["index"] == -1
    assert pl.load_baselines(_write(tmp_path, [4096, 10], inputs), _args(assess_images=4096), [0])
    with pytest.raises(SystemExit, match=r"assessed with \[\(512, 10\)\].*this call assesses with \[4096, 10\]"):
        pl.load_baselines(_write(tmp_path, [512, 10], inputs), _args(), [0])
    with pytest.raises(SystemExit, match=r"this call assesses with \[1024, 10\]"):
        pl.load_baselines(_write(tmp_path, [4096, 10], inputs), _args(assess_images=1024), [0])
    with pytest.raises(SystemExit, match="does not record the assessment budget"):
        pl.load_baselines(_write(tmp_path), _args(), [0])
    with pytest.raises(SystemExit, match=r"no start/reference assessment for seeds \[1\]"):
        pl.load_baselines(_write(tmp_path, [4096, 10], inputs), _args(), [0, 1])


def test_baselines_are_refused_when_the_experiment_changed_what_they_assessed(pl, tmp_path, digits_cpu, inputs):
    with pytest.raises(SystemExit, match="does not record what its start and reference were assessed on"):
        pl.load_baselines(_write(tmp_path, [4096, 10]), _args(), [0])
    # each input the digest covers moves it: the reference psi, a test label, the fresh models' options
    import jax
    x, y = digits_cpu.test_data
    y = y.copy()
    y[0] = (y[0] + 1) % 10
    changed = [digits_cpu._replace(reference_psi=jax.tree.map(lambda a: a + 1e-3, digits_cpu.reference_psi)),
               digits_cpu._replace(test_data=(x, y)),
               digits_cpu._replace(assess_config=digits_cpu.base_config().replace(inner_learning_rate=0.5))]
    for setup in changed:
        other = pl.baseline_inputs(setup, [4096, 10])
        assert other != inputs
        with pytest.raises(SystemExit, match="differ from this call's"):
            pl.load_baselines(_write(tmp_path, [4096, 10], other), _args(), [0])
    # the images at 8 bits: a last-bit difference between two hosts' renderings keeps the digest
    assert pl.baseline_inputs(digits_cpu._replace(test_data=(x + 1e-6, digits_cpu.test_data[1])), [4096, 10]) == inputs
