"""Freezing layers (paper Table 5): AutoSimConfig.trainable, autosim_jax/trainable.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree
from toys import SquareRenderer

from autosim_jax.autosimulate import make_autosimulate
from autosim_jax.config import AutoSimConfig
from autosim_jax.distributions import from_schema
from autosim_jax.inner import split_model
from autosim_jax.simulator import Simulator
from autosim_jax.table1 import curvature_operator
from autosim_jax.tasks import Task
from autosim_jax.trainable import make_partition

pytestmark = pytest.mark.filterwarnings("ignore::autosim_jax.autosimulate.UnconvergedSolveWarning")

X_VAL = (2.0 + 0.3 * np.random.default_rng(0).standard_normal(32)).astype(np.float32)[:, None]
MSE = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)
TASK = Task.from_per_sample(MSE, lambda out, y: -MSE(out, y), "neg_mse")


class TwoLayer(nnx.Module):
    def __init__(self, rngs, dtype=jnp.float32, width=4, n_in=1, n_out=1):
        self.dense1 = nnx.Linear(n_in, width, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.dense2 = nnx.Linear(width, n_out, rngs=rngs, param_dtype=dtype, dtype=dtype)

    def __call__(self, x):
        return self.dense2(jnp.tanh(self.dense1(x)))


def _toy(**kw):
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    options = {"dataset_size": 32, "batch_size": 16, "finetune_epochs": 1, "inner_optimizer": optax.adam(0.05),
               "cg_maxiter": 4, "cg_tol": 1e-6, "damping": 1e-2}
    options.update(kw)
    return make_autosimulate(sim, TwoLayer(nnx.Rngs(0)), TASK, (X_VAL, X_VAL ** 2), **options)


def _run(autosim, steps=2):
    state = autosim.init(0)
    for _ in range(steps):
        state, info = autosim.step(state)
    return state, info


def test_frozen_leaves_never_change():
    autosim = _toy(trainable="dense2", estimator="per_sample")
    state0 = autosim.init(0)
    state, info = _run(autosim)
    assert info.psi_updated
    assert not np.array_equal(ravel_pytree(state.psi)[0], ravel_pytree(state0.psi)[0])
    part = make_partition(state.theta, "dense2")
    (trainable, frozen), (trainable0, frozen0) = part.split(state.theta), part.split(state0.theta)
    assert len(trainable) == len(frozen) == 2
    for a, b in zip(frozen, frozen0, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(trainable, trainable0, strict=True):
        assert not np.array_equal(a, b)
    # The optimiser state holds only the trainable leaves (Adam: count, mu and nu of 2 leaves); g_val is their gradient.
    assert len(jax.tree.leaves(state.inner_opt_state)) == 1 + 2 * 2
    _, g_val = autosim.inner.measure_and_grad(state.theta, jnp.asarray(X_VAL), jnp.asarray(X_VAL ** 2))
    full = jax.grad(autosim.inner.mean_loss)(state.theta, jnp.asarray(X_VAL), jnp.asarray(X_VAL ** 2))
    for a, b in zip(g_val, part.split(full)[0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_matching_everything_equals_the_default_bitwise():
    default, _ = _run(_toy())
    everything, _ = _run(_toy(trainable="."))
    for a, b in zip(jax.tree.leaves((default.psi, default.theta)), jax.tree.leaves((everything.psi, everything.theta)),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def _dense_block(mat, mask_flat):
    idx = np.flatnonzero(mask_flat)
    return mat[np.ix_(idx, idx)]


@pytest.mark.parametrize("kind", ["hessian", "gauss_newton"])
def test_restricted_curvature_is_the_trainable_block(x64, kind):
    """The operator on the trainable subset equals the dense float64 block of the full curvature."""
    graphdef, params = split_model(TwoLayer(nnx.Rngs(1), jnp.float64, width=3, n_in=2, n_out=2))
    k1, k2 = jax.random.split(jax.random.key(2))
    x = jax.random.normal(k1, (6, 2), jnp.float64)
    y = jax.random.normal(k2, (6, 2), jnp.float64)
    predict = lambda p, inputs: nnx.merge(graphdef, p)(inputs)
    flat, unravel = ravel_pytree(params)
    mean_loss = lambda f: jnp.mean(MSE(predict(unravel(f), x), y))
    if kind == "hessian":
        full = jax.jit(jax.hessian(mean_loss))(flat)
    else:
        J = jax.jit(jax.jacobian(lambda f: predict(unravel(f), x)))(flat).reshape(-1, flat.size)
        out = predict(params, x)
        H_out = jax.jit(jax.hessian(lambda o: jnp.mean(MSE(o.reshape(out.shape), y))))(out.ravel())
        full = J.T @ H_out @ J

    part = make_partition(params, r"dense2.*kernel")
    assert len(part.paths) == 1
    trainable, frozen = part.split(params)
    mask_flat = ravel_pytree(part.treedef.unflatten(
        [jnp.full(leaf.shape, m) for leaf, m in zip(jax.tree.leaves(params), part.mask)]))[0]
    op = curvature_operator(kind, part.restrict(predict, frozen), MSE, trainable, x, y)
    t_flat, t_unravel = ravel_pytree(trainable)
    column = jax.jit(jax.vmap(lambda e: ravel_pytree(op.matvec(t_unravel(e)))[0], out_axes=1))
    np.testing.assert_allclose(column(jnp.eye(t_flat.size, dtype=jnp.float64)), _dense_block(full, mask_flat),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("option, pattern, match, a_path", [
    ("trainable", "dense(", "not a valid regular expression", "['dense1']['bias']"),
    ("trainable", "conv", "matches none of theta's 4 paths", "['dense1']['bias']"),
    ("psi_trainable", "loc(", "not a valid regular expression", "['x'].loc"),
    ("psi_trainable", "position", "matches none of psi's 2 paths", "['x'].loc"),
])
def test_bad_filters_raise_before_compiling(option, pattern, match, a_path):
    with pytest.raises(ValueError, match=match) as err:
        _toy(**{option: pattern})
    assert f"AutoSimConfig.{option}" in str(err.value) and a_path in str(err.value)
    with pytest.raises(ValueError, match=f"AutoSimConfig.{option} must be None"):
        AutoSimConfig(**{option: 3})


def test_config_records_the_filter():
    config = AutoSimConfig(trainable="dense2")
    assert config.to_dict()["trainable"] == "dense2"
    old = {k: v for k, v in config.to_dict().items() if k != "trainable"}  # a run written before the option
    assert AutoSimConfig.from_dict(old).trainable is None
    with pytest.raises(ValueError, match="AutoSimConfig.trainable"):
        AutoSimConfig(trainable=3)


def test_psi_trainable_learns_the_matching_fields_only():
    """One step from the same state: the learned leaf moves exactly as in a run that learns
    every field (Adam's update of a leaf depends on that leaf's gradient alone), the other
    leaf keeps its start value bit for bit, on every step."""
    full, part = _toy(), _toy(psi_trainable=r"\.loc")
    state0 = part.init(0)
    (full1, _), (part1, info) = _run(full, steps=1), _run(part, steps=1)
    assert info.psi_updated
    assert float(part1.psi["x"].loc) != float(state0.psi["x"].loc)
    np.testing.assert_allclose(part1.psi["x"].loc, full1.psi["x"].loc, rtol=1e-6)
    assert float(full1.psi["x"].log_scale) != float(state0.psi["x"].log_scale)
    part3, _ = _run(part, steps=3)
    np.testing.assert_array_equal(part3.psi["x"].log_scale, state0.psi["x"].log_scale)
