"""``benchmarks/psi_learning.py --baselines-from``: reused start and reference assessments must
have been made with this call's assessment budget as resolved (the experiment's defaults applied),
and a record that does not say which budget it used is refused (session 49 reused 512-image models
against 2,048-image ones because both calls said "the experiment's default"), and their start,
reference, validation/test sets, training options and model must be this call's (recorded since
session 50: a digest, and since session 51 the sets' per-image means, compared within a tolerance)."""

import argparse
import gzip
import json

import pytest
from conftest import BENCHMARKS


@pytest.fixture()
def pl(benchmark_script):
    return benchmark_script("psi_learning")


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
        assert not pl.same_inputs(other, digits_cpu, [4096, 10])
        with pytest.raises(SystemExit, match="differ from this call's"):
            pl.load_baselines(_write(tmp_path, [4096, 10], other), _args(), [0])
    assert pl.load_baselines(_write(tmp_path, [4096, 10], inputs), _args(), [0])[0]["reused_from"]
    # the sets by their means: a last-bit difference between two hosts' renderings is the same set
    assert pl.same_inputs(inputs, digits_cpu._replace(test_data=(x + 1e-6, digits_cpu.test_data[1])), [4096, 10])
    # options the fresh models do not train with (the outer loop's, a field added later) are not compared
    outer = digits_cpu._replace(assess_config=digits_cpu.base_config().replace(damping=0.5, outer_unit_norm=True))
    assert pl.same_inputs(inputs, outer, [4096, 10])


def test_session_50_records_digest_is_still_read():
    """Session 50's records hold a string digest of every config field then (before ``outer_unit_norm``
    existed) and the sets at 8 bits; one of them (clevr-seg cpu, seed 3, made on this 2-core host) is
    still accepted, also for a preset whose outer options changed since, and a changed budget or
    fresh-model option is not. In a child process with XLA's default optimisation:
    the suite's fast-compile flag changes the rendered sets' last bits, which moves that exact digest
    (why the digest since session 51 compares the sets by their means within a tolerance)."""
    import os
    import subprocess
    import sys

    from conftest import optimised_xla_flags

    code = f"""
import gzip, json, sys
sys.path.insert(0, {str(BENCHMARKS)!r})
import psi_learning as pl, autosim_jax as asj
with gzip.open({str(BENCHMARKS / "results" / "psi_learning" / "clevr-seg_cpu_damp0.001_cg50_s3.json.gz")!r}, "rt") as f:
    recorded = next(r for r in json.load(f)["runs"] if r["variant"] == "_baseline")
assert isinstance(recorded["baseline_inputs"], str)
exp = asj.get_experiment("clevr-seg")
setup = exp.build(renderer=exp.renderers[0], seed=0, size="cpu")
setup = setup._replace(config=setup.base_config(), assess_config=None)  # the record's: the cpu preset until session 61
digest, budget, config = recorded["baseline_inputs"], recorded["assess_budget"], recorded["experiment_config"]
outer = setup._replace(config=setup.config.replace(outer_unit_norm=True, outer_decay_steps=60))
fresh = setup._replace(config=setup.config.replace(inner_learning_rate=0.5))
print(pl.same_inputs(digest, setup, budget), pl.same_inputs(digest, setup, [1024, 10]),
      pl.same_inputs(digest, outer, budget, config), pl.same_inputs(digest, outer, budget),
      pl.same_inputs(digest, fresh, budget, config))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True,
                         env={**os.environ, "XLA_FLAGS": optimised_xla_flags()})
    # a preset's outer options changed since (clevr-seg gpu's, session 54) are read from the record's
    # experiment_config; without it the digest moves; a fresh-model option is compared either way
    assert out.stdout.split() == ["True", "False", "True", "False", "False"], out.stderr[-2000:]
