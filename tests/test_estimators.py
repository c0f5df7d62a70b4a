"""Tests of autosim_jax.estimators.

The statistical tests are probabilistic: each uses a fixed key and a fixed number of samples
K, and compares the estimate with an exact value to within 5 standard errors, the standard
error computed from the sample itself (the per-sample terms (c_k - b_k) grad log q(s_k), whose
mean is the estimate). A correct estimator fails such a check with probability about 6e-7
per component.
"""

import functools
import itertools

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from autosim_jax.distributions import NormalParams, bounded, categorical, from_schema, gaussian
from autosim_jax.estimators import (
    BASELINES,
    METHODS,
    apply_baseline,
    directional_derivatives,
    reinforce_gradient,
    score_function_term,
)
from autosim_jax.schema import Field, OutputSpec, SceneSchema
from autosim_jax.simulator import Simulator

SIGMAS = 5.0


def squared_error(theta, inputs, labels):
    """Per-sample loss of a linear model: l_k = (theta . x_k - y_k)^2 / 2, shape [K]."""
    return 0.5 * (inputs @ theta - labels) ** 2


def _terms(log_prob_fn, psi, scenes, rewards, baseline):
    """Per-sample terms (f_k - b_k) grad_psi log q(s_k): a pytree of leaves (K, *leaf)."""
    centred = apply_baseline(rewards, baseline)
    scores = jax.jacfwd(log_prob_fn)(psi, scenes)  # psi is small: one tangent per parameter
    return jax.tree.map(lambda g: g * centred.reshape(-1, *([1] * (g.ndim - 1))), scores)


def _assert_within_se(estimate, exact, terms):
    """|estimate - exact| <= 5 SE per component, SE = std(terms) / sqrt(K)."""
    for est, ex, t in zip(
        jax.tree.leaves(estimate), jax.tree.leaves(exact), jax.tree.leaves(terms)
    ):
        t = np.asarray(t)
        np.testing.assert_allclose(
            est, t.mean(0), rtol=1e-9, atol=1e-12
        )  # the estimate is their mean
        se = t.std(0, ddof=1) / np.sqrt(t.shape[0])
        assert np.all(np.abs(np.asarray(est) - np.asarray(ex)) <= SIGMAS * se + 1e-12), (
            est,
            ex,
            se,
        )


# ------------------------------------------------------------------- categorical: exact

TABLE_A = np.array([0.5, -1.0, 2.0, 0.0])
TABLE_B = np.array([1.0, 0.3, -0.7, 1.5])


class CellRenderer:
    """Two categorical cells -> features (a, b, a * b) and a label; numpy, through the simulator."""

    name = "cells"
    schema = SceneSchema((Field.categorical("cell", choices=("w", "x", "y", "z"), shape=(2,)),))
    inputs_spec = OutputSpec((3,), np.float64)
    labels_spec = OutputSpec((), np.float64)

    def render(self, scenes, seed):
        a, b = TABLE_A[scenes["cell"][:, 0]], TABLE_B[scenes["cell"][:, 1]]
        return np.stack([a, b, a * b], axis=1), a - 0.5 * b


THETA = np.array([0.3, -0.8, 0.5])
V = np.array([1.0, 0.5, -2.0])


def _exact_categorical_gradient(psi):
    """grad over psi of sum_{c0, c1} q(c0, c1) f(c0, c1), enumerating all 16 cells."""
    combos = np.array(list(itertools.product(range(4), range(4))))
    x, y = CellRenderer().render({"cell": combos}, 0)
    f = directional_derivatives(squared_error, jnp.asarray(THETA), jnp.asarray(V), x, y)

    def expectation(p):
        logp = jax.nn.log_softmax(p["cell"].logits, axis=-1)  # (2, 4)
        return jnp.sum(jnp.exp(logp[0, combos[:, 0]] + logp[1, combos[:, 1]]) * f)

    return jax.grad(expectation)(psi)


@functools.cache
def _cell_batch():
    """One simulated batch of K=40000 (float64; built once, inside an x64 test), its
    directional derivatives, the per-sample scores and the exact gradient."""
    sim = Simulator(
        from_schema(
            CellRenderer.schema, {"cell": {"probs": [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]}}
        ),
        CellRenderer(),
    )
    psi = sim.distribution.init()
    out = jax.jit(sim.simulate, static_argnums=2)(jax.random.key(0), psi, 40_000)
    c = directional_derivatives(
        squared_error, jnp.asarray(THETA), jnp.asarray(V), out.inputs, out.labels
    )
    return sim, psi, out, c, _exact_categorical_gradient(psi)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("baseline", BASELINES)
def test_categorical_mean_equals_enumeration(x64, method, baseline):
    """Probabilistic: K=40000 rendered through the simulator; 5 SE per logit."""
    sim, psi, out, c, exact = _cell_batch()
    estimate = jax.jit(
        lambda p, o: score_function_term(
            sim.distribution.log_prob,
            p,
            o.scenes,
            squared_error,
            jnp.asarray(THETA),
            jnp.asarray(V),
            o.inputs,
            o.labels,
            method=method,
            baseline=baseline,
        )
    )(psi, out)
    _assert_within_se(
        estimate, exact, _terms(sim.distribution.log_prob, psi, out.scenes, c, baseline)
    )


def test_reinforce_categorical_exact(x64):
    """Probabilistic: K=50000; the gradient of E[f(c)] = softmax(logits) . f, 5 SE per logit."""
    q = categorical(5, probs=(0.3, 0.1, 0.2, 0.25, 0.15))
    psi = q.init()
    table = jnp.array([1.0, -2.0, 0.5, 3.0, 0.0])
    s = q.sample(jax.random.key(1), psi, 50_000)
    estimate = reinforce_gradient(q.log_prob, psi, s, table[s])
    exact = jax.grad(lambda p: jnp.sum(jax.nn.softmax(p.logits) * table))(psi)
    _assert_within_se(estimate, exact, _terms(q.log_prob, psi, s, table[s], "leave_one_out"))


# ----------------------------------------------------------------- gaussian: closed form


def _toy_render(s):
    """A differentiable toy renderer r(s) = (s, s^2), labels 0."""
    return jnp.stack([s, s**2], axis=1), jnp.zeros_like(s)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("baseline", BASELINES)
def test_gaussian_matches_closed_form(x64, method, baseline):
    """Probabilistic: K=100000, 5 SE per parameter.

    With x = (s, s^2) and l = (theta . x)^2 / 2, c(s) = (theta . x)(v . x) is a quartic in s,
    whose expectation under N(mu, sigma^2) has a closed form from the normal's moments.
    """
    q = gaussian(loc=0.4, scale=0.8)
    psi = q.init()
    theta, v = jnp.array([0.7, -0.3]), jnp.array([0.2, 1.1])
    s = q.sample(jax.random.key(2), psi, 100_000)
    x, y = _toy_render(s)
    estimate = jax.jit(
        lambda p: score_function_term(
            q.log_prob, p, s, squared_error, theta, v, x, y, method=method, baseline=baseline
        )
    )(psi)

    def closed_form(p):
        mu, sig2 = p.loc, jnp.exp(2 * p.log_scale)
        m2, m3, m4 = mu**2 + sig2, mu**3 + 3 * mu * sig2, mu**4 + 6 * mu**2 * sig2 + 3 * sig2**2
        return (
            theta[0] * v[0] * m2 + (theta[0] * v[1] + theta[1] * v[0]) * m3 + theta[1] * v[1] * m4
        )

    c = directional_derivatives(squared_error, theta, v, x, y)
    _assert_within_se(estimate, jax.grad(closed_form)(psi), _terms(q.log_prob, psi, s, c, baseline))


def test_bounded_matches_reparameterised_gradient(x64):
    """Probabilistic: K=100000 each; the score-function estimate and an independent
    reparameterised estimate (s = low + w sigmoid(loc + sigma eps)) agree within
    5 sqrt(SE_sf^2 + SE_rep^2). Checks the bounded family's log-density and its Jacobian."""
    low, high = 0.0, 2.0
    q = bounded(low, high, loc=0.7, scale=0.3)
    psi = q.init()
    theta, v = jnp.array([1.2, -0.4]), jnp.array([0.5, 1.0])

    def render(s):
        return jnp.stack([jnp.sin(3 * s), s], axis=1), jnp.full_like(s, 0.3)

    s = q.sample(jax.random.key(3), psi, 100_000)
    x, y = render(s)
    sf = score_function_term(q.log_prob, psi, s, squared_error, theta, v, x, y)
    c = directional_derivatives(squared_error, theta, v, x, y)
    sf_terms = _terms(q.log_prob, psi, s, c, "leave_one_out")

    eps = jax.random.normal(jax.random.key(4), (100_000,), jnp.float64)

    def per_sample_c(p):
        s_rep = low + (high - low) * jax.nn.sigmoid(p.loc + jnp.exp(p.log_scale) * eps)
        return directional_derivatives(squared_error, theta, v, *render(s_rep))

    rep_terms = jax.jacfwd(per_sample_c)(psi)
    for est, t_sf, t_rep in zip(
        jax.tree.leaves(sf), jax.tree.leaves(sf_terms), jax.tree.leaves(rep_terms)
    ):
        se = np.sqrt(np.var(t_sf, ddof=1) / t_sf.shape[0] + np.var(t_rep, ddof=1) / t_rep.shape[0])
        assert abs(float(est) - float(np.mean(t_rep))) <= SIGMAS * se, (est, np.mean(t_rep), se)


# ---------------------------------------------------------------------- method agreement


def _mlp_problem(key, k=13):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    theta = {
        "w1": jax.random.normal(k1, (5, 8)),
        "b1": jax.random.normal(k2, (8,)),
        "w2": jax.random.normal(k3, (8,)),
    }
    v = jax.tree.map(lambda t: jax.random.normal(k4, t.shape, t.dtype), theta)
    inputs = jax.random.normal(k5, (k, 5))
    labels = jnp.sin(jnp.arange(k, dtype=inputs.dtype))

    def loss(th, x, y):
        return (jnp.tanh(x @ th["w1"] + th["b1"]) @ th["w2"] - y) ** 2

    return theta, v, inputs, labels, loss


def test_jvp_and_per_sample_agree_in_float64(x64):
    theta, v, inputs, labels, loss = _mlp_problem(jax.random.key(0))
    derivs = jax.jit(directional_derivatives, static_argnames=("per_sample_loss_fn", "method"))
    c_jvp = derivs(loss, theta, v, inputs, labels, method="jvp")
    c_ps = derivs(loss, theta, v, inputs, labels, method="per_sample")
    assert c_jvp.dtype == jnp.float64
    np.testing.assert_allclose(c_jvp, c_ps, rtol=1e-12, atol=1e-12)
    # ... and against the dense Jacobian of the raveled problem
    flat, unravel = jax.flatten_util.ravel_pytree(theta)
    jac = jax.jacrev(lambda f: loss(unravel(f), inputs, labels))(flat)
    np.testing.assert_allclose(
        c_jvp, jac @ jax.flatten_util.ravel_pytree(v)[0], rtol=1e-12, atol=1e-12
    )

    q = gaussian((5,))
    scenes = inputs  # any K samples of the field
    estimate = jax.jit(score_function_term, static_argnums=(0, 3), static_argnames="method")
    g = [
        estimate(q.log_prob, q.init(), scenes, loss, theta, v, inputs, labels, method=m)
        for m in METHODS
    ]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), *g)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_size", [1, 4, 12, 13, 100])
def test_chunked_equals_unchunked_in_float64(x64, method, chunk_size):
    """K=13: chunks of 1 and 12 leave remainders 0 and 1, 4 leaves 1, 13 and 100 are one pass."""
    theta, v, inputs, labels, loss = _mlp_problem(jax.random.key(3))
    derivs = jax.jit(
        directional_derivatives, static_argnames=("per_sample_loss_fn", "method", "chunk_size")
    )
    whole = derivs(loss, theta, v, inputs, labels, method=method)
    chunked = derivs(loss, theta, v, inputs, labels, method=method, chunk_size=chunk_size)
    assert chunked.shape == (13,) and chunked.dtype == jnp.float64
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)

    q = gaussian((5,))
    estimate = jax.jit(score_function_term, static_argnums=(0, 3), static_argnames="chunk_size")
    g = [
        estimate(q.log_prob, q.init(), inputs, loss, theta, v, inputs, labels, chunk_size=c)
        for c in (None, chunk_size)
    ]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), *g)


def test_chunked_pytree_batch():
    """Inputs and labels as pytrees (a dict and a tuple) are sliced leaf by leaf."""
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    theta = jax.random.normal(k1, (3,))
    inputs = {"a": jax.random.normal(k2, (10, 3)), "b": jax.random.normal(k3, (10,))}
    labels = (jnp.arange(10.0), jnp.ones(10))

    def loss(th, x, y):
        return (x["a"] @ th + x["b"] - y[0] * y[1]) ** 2

    whole = directional_derivatives(loss, theta, theta, inputs, labels)
    chunked = directional_derivatives(loss, theta, theta, inputs, labels, chunk_size=3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_chunked_temp_memory_does_not_grow_with_k(method):
    """XLA's buffer assignment: chunks of 16 need the same temporaries at K=64 and K=4096
    (within 10%), where one pass needs about 64 times more at K=4096 than at K=64."""
    theta = {"w1": jnp.ones((5, 256)), "b1": jnp.ones(256), "w2": jnp.ones(256)}

    def loss(th, x, y):
        return (jnp.tanh(x @ th["w1"] + th["b1"]) @ th["w2"] - y) ** 2

    def temp_bytes(k, chunk_size):
        fn = functools.partial(
            directional_derivatives, loss, method=method, chunk_size=chunk_size
        )
        compiled = jax.jit(fn).lower(theta, theta, jnp.ones((k, 5)), jnp.ones(k)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(4096, 16) <= 1.1 * temp_bytes(64, 16)
    assert temp_bytes(4096, None) >= 32 * temp_bytes(64, None)


# ------------------------------------------------------------------------------ baseline


def test_leave_one_out_baseline_keeps_mean_and_cuts_variance(x64):
    """Probabilistic: R=400 independent estimates of K=32 samples each, with
    c(s) = 10 + s under N(0, 1) (a large common offset); d/dpsi E[c] = (1, 0).

    The mean of the R estimates is within 5 SE (SE = std / sqrt(R)) of the exact value with
    and without the baseline, and the leave-one-out baseline cuts the variance of the mu
    component by far more than half (theory: Var[s^2] / Var[(10 + s) s] = 3 / 103, about
    0.03; asserted < 0.2) and that of the log-sigma component (theory about 0.04).
    """
    q = gaussian()
    psi = q.init()

    def loss(theta, x, y):
        return 0.5 * theta**2 * x  # dl/dtheta . v = theta v x = x at theta = v = 1

    def estimate(key, baseline):
        s = q.sample(key, psi, 32)
        return score_function_term(
            q.log_prob,
            psi,
            s,
            loss,
            jnp.float64(1.0),
            jnp.float64(1.0),
            10.0 + s,
            s,
            baseline=baseline,
        )

    keys = jax.random.split(jax.random.key(5), 400)
    runs = {
        str(b): jax.jit(jax.vmap(lambda k, b=b: estimate(k, b)))(keys)
        for b in ("leave_one_out", None)
    }
    runs["10.0"] = jax.jit(jax.vmap(lambda k: estimate(k, jnp.float64(10.0))))(
        keys
    )  # a fixed baseline
    exact = NormalParams(1.0, 0.0)
    for run in runs.values():
        for est, ex in zip(run, exact):
            assert abs(float(est.mean()) - ex) <= SIGMAS * float(est.std(ddof=1)) / np.sqrt(400)
    ratio = [float(a.var() / b.var()) for a, b in zip(runs["leave_one_out"], runs["None"])]
    assert ratio[0] < 0.2 and ratio[1] < 0.2, ratio


# ---------------------------------------------------------------- pipeline, jit, tracing


def test_simulate_and_estimate_under_jit_and_vmap_equal_a_loop(x64):
    sim = Simulator(from_schema(CellRenderer.schema), CellRenderer())
    psi = sim.distribution.init()

    def step(key, p):
        out = sim.simulate(key, p, 64)
        return score_function_term(
            sim.distribution.log_prob,
            p,
            out.scenes,
            squared_error,
            jnp.asarray(THETA),
            jnp.asarray(V),
            out.inputs,
            out.labels,
        )

    keys = jax.random.split(jax.random.key(6), 4)
    batched = jax.jit(jax.vmap(step, in_axes=(0, None)))(keys, psi)
    one = jax.jit(step)
    for i, key in enumerate(keys):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-12, atol=1e-14),
            batched,
            one(key, psi),
        )


@pytest.mark.parametrize("method", METHODS)
def test_no_retracing_on_second_call(method):
    theta, v, inputs, labels, loss = _mlp_problem(jax.random.key(1))
    q = gaussian((5,))
    chex.clear_trace_counter()  # keyed by the function's code: shared by the two parameters

    @jax.jit
    @chex.assert_max_traces(n=1)
    def estimate(psi, theta, v, scenes, inputs, labels):
        return score_function_term(
            q.log_prob, psi, scenes, loss, theta, v, inputs, labels, method=method
        )

    estimate(q.init(), theta, v, inputs, inputs, labels)
    shifted = jax.tree.map(lambda x: x + 1.0, (q.init(), theta, v))
    estimate(*shifted, inputs * 2, inputs, labels + 1)


# ---------------------------------------------------------------------------- validation


def test_validation_errors():
    theta, v, inputs, labels, loss = _mlp_problem(jax.random.key(2))
    q = gaussian((5,))
    args = (q.log_prob, q.init(), inputs, loss, theta, v, inputs, labels)
    with pytest.raises(
        ValueError, match=r"Unknown method 'hvp'; valid choices are \('jvp', 'per_sample'\)"
    ):
        score_function_term(*args, method="hvp")
    with pytest.raises(
        ValueError, match=r"Unknown baseline 'mean'; valid choices are \('leave_one_out', None\)"
    ):
        score_function_term(*args, baseline="mean")
    with pytest.raises(ValueError, match=r"K=13"):
        score_function_term(q.log_prob, q.init(), inputs[:7], loss, theta, v, inputs, labels)
    with pytest.raises(ValueError, match=r"one leading axis K"):
        score_function_term(q.log_prob, q.init(), inputs, loss, theta, v, inputs, labels[:5])
    with pytest.raises(ValueError, match=r"v leaf \['b1'\] has shape \(3,\)"):
        directional_derivatives(loss, theta, {**v, "b1": jnp.zeros(3)}, inputs, labels)
    with pytest.raises(ValueError, match="v must have the same tree structure"):
        directional_derivatives(loss, theta, [v["w1"]], inputs, labels)
    for bad in (0, -4, 2.0, True, "8"):
        with pytest.raises(ValueError, match=r"chunk_size must be None .* or a positive int"):
            score_function_term(*args, chunk_size=bad)
    with pytest.raises(ValueError, match=r"chunk_size must be .*got 0"):
        directional_derivatives(loss, theta, v, inputs, labels, method="per_sample", chunk_size=0)
    with pytest.raises(ValueError, match=r"returned shape \(\)"):
        directional_derivatives(lambda *a: loss(*a).sum(), theta, v, inputs, labels)
    with pytest.raises(ValueError, match=r"rewards must have shape \[K\]"):
        reinforce_gradient(q.log_prob, q.init(), inputs, jnp.zeros((13, 2)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        reinforce_gradient(q.log_prob, q.init(), inputs[:1], jnp.zeros(1))
    with pytest.raises(ValueError, match=r"shape \(\) or \(13,\)"):
        reinforce_gradient(q.log_prob, q.init(), inputs, jnp.zeros(13), baseline=jnp.zeros(3))


def test_apply_baseline_leave_one_out(x64):
    r = jnp.array([1.0, 4.0, -2.0, 5.0])
    expected = [r[i] - jnp.mean(jnp.delete(r, i)) for i in range(4)]
    np.testing.assert_allclose(apply_baseline(r), expected, rtol=1e-14)
    np.testing.assert_array_equal(apply_baseline(r, None), r)


def test_reinforce_standard_error_matches_an_independent_computation(x64):
    """``return_stderr``: the gradient is unchanged, and each coordinate's standard error equals
    the sample std (ddof 1) over sqrt(K) of the K terms (f_k - b_k) d/dpsi log q(s_k), with the
    scores written out by hand: Gaussian (x - mu) / sigma^2 and (x - mu)^2 / sigma^2 - 1 for
    (loc, log_scale); categorical onehot(s) - p for the logits. Float64, 512 samples."""
    q = gaussian(loc=0.5, scale=2.0)
    psi = q.init()
    s = q.sample(jax.random.key(0), psi, 512)
    r = jnp.sin(s)
    g, se = reinforce_gradient(q.log_prob, psi, s, r, return_stderr=True)
    np.testing.assert_allclose(g.loc, reinforce_gradient(q.log_prob, psi, s, r).loc, rtol=1e-12)
    x, rr = np.asarray(s, np.float64), np.asarray(r, np.float64)
    b = rr - (rr.sum() - rr) / (len(x) - 1)
    terms = np.stack([b * (x - 0.5) / 4.0, b * ((x - 0.5) ** 2 / 4.0 - 1.0)], 1)
    np.testing.assert_allclose([g.loc, g.log_scale], terms.mean(0), rtol=1e-9)
    np.testing.assert_allclose([se.loc, se.log_scale], terms.std(0, ddof=1) / np.sqrt(len(x)), rtol=1e-9)

    c = categorical(4, probs=(0.1, 0.2, 0.3, 0.4))
    psi = c.init()
    s = c.sample(jax.random.key(1), psi, 512)
    r = (s == 2).astype(jnp.float64) + 0.1 * s
    g, se = reinforce_gradient(c.log_prob, psi, s, r, baseline=None, return_stderr=True)
    p = np.asarray(jax.nn.softmax(psi.logits))
    terms = np.asarray(r)[:, None] * (np.eye(4)[np.asarray(s)] - p)
    np.testing.assert_allclose(g.logits, terms.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(se.logits, terms.std(0, ddof=1) / np.sqrt(len(s)), rtol=1e-9)
