"""make_assessor(..., model=): the network-size ablation of paper Table 6 (issue 14, item 7).

psi is learned with the experiment's (small) detector and assessed by training another,
larger one on it. Checked on clevr-det at cpu size with a tiny budget: the larger model is
the one trained (its parameter count reaches the fine-tuning stages, and the assessment
equals that of the setup with its model replaced), and a model that does not fit the task is
refused before anything is rendered or compiled.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from autosim_jax import experiments
from autosim_jax.detection import centernet
from autosim_jax.experiments import get_experiment, make_assessor

BUDGET = {"num_images": 16, "epochs": 1}


@pytest.fixture(scope="module")
def setup():
    """clevr-det at cpu size (8 base channels) with 8 validation and test images."""
    s = get_experiment("clevr-det").build(seed=0, size="cpu")
    return s._replace(val_data=tuple(a[:8] for a in s.val_data), test_data=tuple(a[:8] for a in s.test_data))


def _params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_the_larger_model_is_the_one_trained(setup, monkeypatch):
    wide = centernet(3, 3, 16, rngs=nnx.Rngs(0))
    assert _params(wide) > 3 * _params(setup.model)
    trained = []
    make_inner = experiments.make_inner

    def spy(simulator, model, *args, **kwargs):
        trained.append(_params(model))
        return make_inner(simulator, model, *args, **kwargs)

    monkeypatch.setattr(experiments, "make_inner", spy)
    make_assessor(setup, **BUDGET)
    assess = make_assessor(setup, model=wide, **BUDGET)
    assert trained == [_params(setup.model), _params(wide)]

    before = jax.tree.map(np.array, nnx.state(wide, nnx.Param))
    psi = setup.reference_psi
    got = assess(psi, seed=0)
    assert set(got) == {"val_metric", "test_metric"} and all(0.0 <= v <= 1.0 for v in got.values())
    # The same assessment as the setup with its model replaced: same images, budget, schedule.
    assert got == make_assessor(setup._replace(model=wide), **BUDGET)(psi, seed=0)
    # A fresh copy is trained: the model passed in keeps its initialisation.
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, nnx.state(wide, nnx.Param)))


# Each model is built when its test runs: built here, at collection, the two centernets cost
# every xdist worker 8 s, the one that never runs this file too.
@pytest.mark.parametrize("build, match", [
    (lambda: centernet(3, 5, 8, rngs=nnx.Rngs(0)), r"outputs of shape \(1, 32, 32, 9\).*model gives \(1, 32, 32, 7\)"),
    (lambda: centernet(1, 3, 8, rngs=nnx.Rngs(0)),
     r"cannot take the experiment's validation inputs, shape \(1, 32, 32, 3\)"),
    (lambda: lambda x: x, "nnx.Module"),
    (lambda: nnx.BatchNorm(3, rngs=nnx.Rngs(0)), "BatchStat"),
])
def test_a_model_that_does_not_fit_is_refused_before_any_work(setup, monkeypatch, build, match):
    model = build()

    def fail(*args, **kwargs):
        raise AssertionError("make_inner reached: the check must come first")

    monkeypatch.setattr(experiments, "make_inner", fail)  # which renders, compiles and trains
    with pytest.raises(ValueError, match=match):
        make_assessor(setup, model=model, **BUDGET)
