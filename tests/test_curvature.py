"""Curvature operators against dense float64 references built with jax.hessian / jax.jacobian."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import autosim_jax as asj


class TinyNet(nnx.Module):
    """A small tanh conv + dense classifier: nonlinear, so the Hessian has cross terms."""

    def __init__(self, rngs, dtype=jnp.float64):
        self.conv = nnx.Conv(1, 3, (3, 3), rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.dense1 = nnx.Linear(3 * 4 * 4, 6, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.dense2 = nnx.Linear(6, 4, rngs=rngs, param_dtype=dtype, dtype=dtype)

    def __call__(self, x):
        h = jnp.tanh(self.conv(x)).reshape(x.shape[0], -1)
        return self.dense2(jnp.tanh(self.dense1(h)))


def _problem(seed=0, n=8, dtype=jnp.float64):
    """Returns (predict_fn, output_loss_fn, loss_fn, params, inputs, labels) of a tiny network."""
    graphdef, params = nnx.split(TinyNet(nnx.Rngs(seed), dtype), nnx.Param)
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    inputs = jax.random.normal(k1, (n, 4, 4, 1), dtype)
    labels = jax.random.randint(k2, (n,), 0, 4)

    def predict_fn(p, x):
        return nnx.merge(graphdef, p)(x)

    def output_loss_fn(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def loss_fn(p, x, y):
        return output_loss_fn(predict_fn(p, x), y)

    return predict_fn, output_loss_fn, loss_fn, params, inputs, labels


def _dense_hessian(loss_fn, params, *args):
    flat, unravel = ravel_pytree(params)
    # Jitted, as are the other references and products below: one XLA compilation instead of
    # dispatching the forward-over-reverse graph op by op (8 s of the test on 2 cores).
    return jax.jit(jax.hessian(lambda f, *a: loss_fn(unravel(f), *a)))(flat, *args)


def _rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("mode", ["fwd_rev", "rev_rev", "rev_fwd"])
def test_hvp_modes_match_dense_hessian(x64, mode):
    _, _, loss_fn, params, x, y = _problem()
    H = _dense_hessian(loss_fn, params, x, y)
    flat, unravel = ravel_pytree(params)
    hvp = jax.jit(lambda v: asj.hvp(loss_fn, params, v, x, y, mode=mode))
    for seed in range(3):
        v_flat = jax.random.normal(jax.random.key(seed), flat.shape, jnp.float64)
        assert _rel_err(ravel_pytree(hvp(unravel(v_flat)))[0], H @ v_flat) < 1e-10


def test_hessian_operator_dense_form_is_the_symmetric_hessian(x64):
    _, _, loss_fn, params, x, y = _problem()
    H = _dense_hessian(loss_fn, params, x, y)
    dense = jax.jit(lambda p: asj.hessian_operator(loss_fn, p, x, y).as_dense())(params)
    assert _rel_err(dense, H) < 1e-10
    np.testing.assert_allclose(dense, dense.T, rtol=0, atol=1e-12)


def test_linearised_operator_matches_hvp(x64):
    _, _, loss_fn, params, x, y = _problem(seed=3)
    flat, unravel = ravel_pytree(params)
    op = asj.hessian_operator(loss_fn, params, x, y)
    for seed in range(3):
        v = unravel(jax.random.normal(jax.random.key(seed), flat.shape, jnp.float64))
        assert _rel_err(ravel_pytree(op.matvec(v))[0], ravel_pytree(asj.hvp(loss_fn, params, v, x, y))[0]) < 1e-12


def test_stored_bytes_counts_linearisation_residuals(x64):
    predict_fn, output_loss_fn, loss_fn, params, x, y = _problem()
    h = asj.hessian_operator(loss_fn, params, x, y)
    g = asj.gauss_newton_operator(predict_fn, output_loss_fn, params, x, y)
    # Residuals hold at least the batch's activations; and they are plain float64 arrays.
    assert h.stored_bytes() > 8 * x.size and h.stored_bytes() % 8 == 0
    assert g.stored_bytes() > 8 * x.size
    assert asj.CurvatureOperator.from_matvec(lambda v: v, params).stored_bytes() is None
    # Readable under jit too (XLA may keep a few constants out of the residuals there).
    under_jit = jax.eval_shape(lambda p: jnp.zeros(asj.hessian_operator(loss_fn, p, x, y).stored_bytes()), params)
    assert 8 * x.size < under_jit.shape[0] <= h.stored_bytes()


def test_damped_operator_adds_lambda_identity(x64):
    _, _, loss_fn, params, x, y = _problem()
    op = asj.hessian_operator(loss_fn, params, x, y)
    dense, damped = op.as_dense(), op.damped(0.5).damped(0.25).as_dense()
    np.testing.assert_allclose(damped - dense, 0.75 * jnp.eye(dense.shape[0]), atol=1e-12)


def test_gauss_newton_matches_dense_jt_h_j(x64):
    predict_fn, output_loss_fn, _, params, x, y = _problem(seed=5)
    flat, unravel = ravel_pytree(params)
    outputs = predict_fn(params, x)
    J = jax.jit(jax.jacobian(lambda f: predict_fn(unravel(f), x).ravel()))(flat)  # (outputs, params)
    H_out = jax.jit(jax.hessian(lambda o: output_loss_fn(o.reshape(outputs.shape), y)))(outputs.ravel())
    G = J.T @ H_out @ J
    dense = asj.gauss_newton_operator(predict_fn, output_loss_fn, params, x, y).as_dense()
    assert _rel_err(dense, G) < 1e-10
    # Positive semi-definite for the convex cross-entropy (up to rounding).
    assert float(jnp.linalg.eigvalsh(dense).min()) > -1e-12


def test_gauss_newton_equals_hessian_for_a_linear_model(x64):
    """For a model linear in its parameters the network term of the Hessian vanishes: G = H."""
    w = jnp.arange(6.0, dtype=jnp.float64).reshape(3, 2) / 10
    x = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64)
    y = jnp.array([0, 1, 1, 0, 1])
    predict = lambda w, x: x @ w  # noqa: E731
    ce = lambda o, y: optax.softmax_cross_entropy_with_integer_labels(o, y).mean()  # noqa: E731
    G = asj.gauss_newton_operator(predict, ce, w, x, y).as_dense()
    H = asj.hessian_operator(lambda w, x, y: ce(predict(w, x), y), w, x, y).as_dense()
    assert _rel_err(G, H) < 1e-12


def test_empirical_fisher_matches_mean_outer_product_of_per_example_gradients(x64):
    predict_fn, _, _, params, x, y = _problem(seed=7)
    flat, unravel = ravel_pytree(params)

    def per_example(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(predict_fn(p, x), y)

    # Independent reference: vmapped per-example gradients, one example at a time.
    grad_i = jax.grad(lambda f, xi, yi: per_example(unravel(f), xi[None], yi[None])[0])
    grads = jax.jit(jax.vmap(grad_i, in_axes=(None, 0, 0)))(flat, x, y)
    F = grads.T @ grads / x.shape[0]
    op = asj.empirical_fisher_operator(per_example, params, x, y)
    dense = jax.jit(lambda p: asj.empirical_fisher_operator(per_example, p, x, y).as_dense())(params)
    assert _rel_err(dense, F) < 1e-10
    np.testing.assert_allclose(dense, dense.T, rtol=0, atol=1e-12)
    assert float(jnp.linalg.eigvalsh(dense).min()) > -1e-12
    # Rank at most N: the N per-example gradients span it.
    assert int(jnp.sum(jnp.linalg.eigvalsh(dense) > 1e-10 * jnp.abs(dense).max())) <= x.shape[0]
    assert op.stored_bytes() > 8 * x.size


def test_empirical_fisher_rejects_reduced_losses():
    _, _, loss_fn, params, x, y = _problem(dtype=jnp.float32)
    with pytest.raises(ValueError, match="one loss per example, a 1-D array; got shape \\(\\)"):
        asj.empirical_fisher_operator(loss_fn, params, x, y)


def test_hutchinson_diagonal_is_unbiased():
    """Probabilistic: Rademacher probes on a fixed 6x6 matrix, 20000 probes, fixed key.

    Entry i of the estimate has standard deviation sqrt(sum_{j!=i} A_ij^2 / n); we allow
    5 standard errors (a false failure has probability < 1e-5 per entry).
    """
    A = jax.random.normal(jax.random.key(0), (6, 6))
    A = A + A.T
    op = asj.CurvatureOperator.from_matvec(lambda v: A @ v, jnp.zeros(6))
    n = 20000
    est = asj.hutchinson_diagonal(op, jax.random.key(1), n)
    off = jnp.sum(A**2, axis=1) - jnp.diag(A) ** 2
    se = jnp.sqrt(off / n)
    assert bool(jnp.all(jnp.abs(est - jnp.diag(A)) < 5 * se))


def test_operators_do_not_retrace():
    _, _, loss_fn, params, x, y = _problem(dtype=jnp.float32)
    traces = []

    @jax.jit
    def product(p, v):
        traces.append(1)
        return asj.hessian_operator(loss_fn, p, x, y).damped(1e-2).matvec(v)

    product(params, params)
    v2 = jax.tree.map(lambda a: 2 * a, params)
    jax.block_until_ready(product(params, v2))
    assert len(traces) == 1


def test_hvp_rejects_bad_modes_and_vectors():
    _, _, loss_fn, params, x, y = _problem(dtype=jnp.float32)
    with pytest.raises(ValueError, match="Unknown hvp mode 'fwd_fwd'"):
        asj.hvp(loss_fn, params, params, x, y, mode="fwd_fwd")
    with pytest.raises(ValueError, match="same tree structure"):
        asj.hvp(loss_fn, params, [1.0], x, y)
    bad = jax.tree.map(lambda a: jnp.zeros(a.shape + (1,)), params)
    with pytest.raises(ValueError, match="has shape"):
        asj.hvp(loss_fn, params, bad, x, y)


@pytest.mark.parametrize("damping", [-1.0, float("nan"), float("inf")])
def test_damped_rejects_bad_damping(damping):
    op = asj.CurvatureOperator.from_matvec(lambda v: v, jnp.zeros(2))
    with pytest.raises(ValueError, match="damping must be finite and >= 0"):
        op.damped(damping)
