"""AutoSimConfig.theta_reset_every: theta (and its optimiser state) start again from their
initial values every N outer steps, before that step's fine-tuning; nothing else changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autosim_jax import AutoSimConfig, Simulator, from_schema, make_autosimulate
from autosim_jax.tasks import Task
from toys import SquareRenderer

pytestmark = pytest.mark.filterwarnings("ignore::autosim_jax.autosimulate.UnconvergedSolveWarning")

X_VAL = (2.0 + 0.3 * np.random.default_rng(0).standard_normal(32)).astype(np.float32)[:, None]
TASK = Task.from_per_sample(lambda out, y: jnp.sum((out - y) ** 2, axis=-1),
                            lambda out, y: -jnp.sum((out - y) ** 2, axis=-1), "neg_mse")


def _autosim(reset: int):
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    config = AutoSimConfig(dataset_size=32, batch_size=16, finetune_epochs=2, inner_learning_rate=0.1,
                           cg_maxiter=3, theta_reset_every=reset)
    return make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), TASK, (X_VAL, X_VAL**2), config)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_reset_every_two_restarts_theta_at_steps_two_and_four():
    """With N = 2, step t in {2, 4} fine-tunes from the initial theta: its theta equals one
    fine-tuning of theta0 on that step's renders (the same keys); other steps continue warm."""
    warm, reset = _autosim(0), _autosim(2)
    s_warm, s_reset = warm.init(0), reset.init(0)
    theta0 = _leaves(s_reset.theta)
    for t in range(5):
        if t in (2, 4):  # what a reset step must do: fine-tune theta0 with the step's own keys
            _, sim_key, train_key = jax.random.split(s_reset.key, 3)
            _, x, y = reset.inner.simulate(sim_key, s_reset.psi)
            fresh = reset.init(0)
            expected, _, _ = reset.inner.finetune(fresh.theta, fresh.inner_opt_state, x, y, train_key)
        s_warm, _ = warm.step(s_warm)
        s_reset, _ = reset.step(s_reset)
        if t in (2, 4):
            for a, b in zip(_leaves(s_reset.theta), _leaves(expected)):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        if t < 2:  # identical to the warm run until the first reset
            for a, b in zip(_leaves(s_reset.theta), _leaves(s_warm.theta)):
                np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(s_reset.theta), _leaves(s_warm.theta)))
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(s_reset.theta), theta0))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_theta_reset_every_must_be_a_count(bad):
    with pytest.raises(ValueError, match=r"AutoSimConfig.theta_reset_every must be an integer >= 0"):
        AutoSimConfig(theta_reset_every=bad)
