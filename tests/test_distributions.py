"""Tests of autosim_jax.distributions.

Moment tests are probabilistic: fixed keys, n = 200_000 draws, and a tolerance of 5 standard
errors of the statistic (mean: sigma / sqrt(n); variance: sigma^2 sqrt(2 / (n - 1));
frequency: sqrt(p (1 - p) / n)), so a correct implementation fails with probability below
1e-6 per check. Densities are checked against closed forms and by quadrature, in float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autosim_jax.distributions import (
    CategoricalParams,
    Distribution,
    ExploreParams,
    NormalParams,
    bounded,
    categorical,
    describe_psi,
    from_schema,
    gaussian,
    histogram,
    product,
    with_exploration,
)
from autosim_jax.schema import Field, SceneSchema

N = 200_000
SIGMAS = 5.0


def _normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


# ------------------------------------------------------------------------ with_exploration


def _explore_1d():
    return with_exploration(bounded(-3.0, 3.0, loc=2.2, scale=0.3), bounded(-3.0, 3.0, scale=2.4), 0.1)


def test_exploration_density_integrates_to_one_and_is_the_mixture(x64):
    q = _explore_1d()
    x = np.linspace(-3.0, 3.0, 400_001)[1:-1]
    dens = np.exp(np.asarray(q.log_prob(q.init(), x)))
    assert np.trapezoid(dens, x) == pytest.approx(1.0, abs=1e-6)
    base, broad = bounded(-3.0, 3.0, loc=2.2, scale=0.3), bounded(-3.0, 3.0, scale=2.4)
    mix = 0.9 * np.exp(base.log_prob(base.init(), x)) + 0.1 * np.exp(broad.log_prob(broad.init(), x))
    np.testing.assert_allclose(dens, mix, rtol=1e-10, atol=1e-300)


def test_exploration_weight_gradient_matches_closed_form():
    """d/dlogit E[f] = w (1 - w) (E_broad f - E_base f), f = 1[s < 0]: E_base f ~ 0 (the base sits
    at 2.2 +- 0.3), E_broad f = 1/2 (symmetric about 0). Score-function estimate on N = 200000
    scenes; its standard error is below 0.001, the tolerance is 0.005."""
    q = _explore_1d()
    psi = q.init()
    x = q.sample(jax.random.key(2), psi, N)
    f = (x < 0).astype(jnp.float32)
    grad = jax.grad(lambda p: jnp.mean(f * q.log_prob(p, x)))(psi)
    assert float(grad.logit) == pytest.approx(0.1 * 0.9 * 0.5, abs=5e-3)
    assert float((x < 0).mean()) == pytest.approx(0.05, abs=5e-3)  # the broad share reaches the far side


def test_from_schema_explore_wraps_finite_continuous_fields_and_describes_them():
    schema = SceneSchema((Field.continuous("light", 0.0, 2.0), Field.continuous("t", 0.0),
                          Field.categorical("quality", choices=(1, 4))))
    q = from_schema(schema, {"light": {"loc": 1.8, "scale": 0.05}}, explore=0.2)
    psi = q.init()
    assert isinstance(psi["light"], ExploreParams) and isinstance(psi["t"], NormalParams)
    d = describe_psi(schema, psi)
    assert d["light"]["explore"] == pytest.approx(0.2) and d["light"]["median"] == pytest.approx(1.8, rel=1e-5)
    with pytest.raises(ValueError, match=r"explore names \['t'\], which are not continuous fields with a finite"):
        from_schema(schema, explore={"t": 0.1})
    with pytest.raises(ValueError, match=r"weight must lie in \(0, 1\)"):
        from_schema(schema, explore=1.0)


# ----------------------------------------------------------------------------- histogram

_HIST_PROBS = (0.05, 0.1, 0.15, 0.2, 0.2, 0.3)


def test_histogram_density_is_piecewise_constant_and_integrates_to_one(x64):
    q = histogram(-3.0, 3.0, 6, probs=_HIST_PROBS)
    x = np.linspace(-3.0, 3.0, 600_001)[1:-1]
    dens = np.exp(np.asarray(q.log_prob(q.init(), x)))
    assert np.trapezoid(dens, x) == pytest.approx(1.0, abs=1e-5)
    centres = np.arange(-2.5, 3.0, 1.0)
    np.testing.assert_allclose(np.exp(np.asarray(q.log_prob(q.init(), centres))), _HIST_PROBS, rtol=1e-12)
    assert np.all(np.isneginf(np.asarray(q.log_prob(q.init(), np.array([-3.0, 3.0, 7.0])))))


def test_histogram_samples_follow_the_bins_and_are_uniform_inside():
    """Bin frequencies within 5 standard errors sqrt(p (1 - p) / N) of the probabilities; inside
    the last bin (p = 0.3, width 1) the mean is its centre within 5 sqrt(1/12 / (0.3 N))."""
    q = histogram(-3.0, 3.0, 6, probs=_HIST_PROBS)
    x = np.asarray(q.sample(jax.random.key(3), q.init(), N))
    freq = np.histogram(x, bins=np.linspace(-3.0, 3.0, 7))[0] / N
    p = np.asarray(_HIST_PROBS)
    assert np.all(np.abs(freq - p) < SIGMAS * np.sqrt(p * (1 - p) / N))
    last = x[x > 2.0]
    assert abs(last.mean() - 2.5) < SIGMAS * math.sqrt(1 / 12 / last.size)
    assert x.min() > -3.0 and x.max() < 3.0


def test_histogram_start_from_loc_scale_is_the_bounded_law_binned():
    """An independent computation: the bin fractions of N draws of bounded(loc, scale), mixed
    with the floor as documented, within 5 standard errors of histogram's initial probabilities."""
    floor = 0.01
    q = histogram(-3.0, 3.0, 6, loc=2.2, scale=0.3, floor=floor)
    probs = np.asarray(jax.nn.softmax(q.init().logits))
    b = bounded(-3.0, 3.0, loc=2.2, scale=0.3)
    mass = np.histogram(np.asarray(b.sample(jax.random.key(4), b.init(), N)), bins=np.linspace(-3, 3, 7))[0] / N
    expected = (1 - 6 * floor) * mass + floor
    se = (1 - 6 * floor) * np.sqrt(mass * (1 - mass) / N)
    assert np.all(np.abs(probs - expected) <= SIGMAS * se + 1e-6)
    assert probs.min() >= floor - 1e-7 and probs.sum() == pytest.approx(1.0, abs=1e-6)


def test_histogram_score_function_gradient_matches_closed_form():
    """d/dlogit_b E[s] = p_b (c_b - E[s]) (c_b the bin centre: within-bin draws are uniform).
    The score-function estimate on N scenes, against 5 of its own standard errors per bin."""
    q = histogram(-3.0, 3.0, 6, probs=_HIST_PROBS)
    psi = q.init()
    x = q.sample(jax.random.key(5), psi, N)
    est = np.asarray(jax.grad(lambda ps: jnp.mean(x * q.log_prob(ps, x)))(psi).logits)
    per_scene = np.asarray(jax.vmap(jax.grad(lambda ps, xi: xi * q.log_prob(ps, xi[None])[0]),
                                    (None, 0))(psi, x).logits)
    se = per_scene.std(axis=0) / math.sqrt(N)
    p, c = np.asarray(_HIST_PROBS), np.arange(-2.5, 3.0, 1.0)
    exact = p * (c - (p * c).sum())
    assert np.all(np.abs(est - exact) < SIGMAS * se)


def test_histogram_from_schema_describe_psi_and_step_control():
    from autosim_jax.outer import kl_divergence, natural_gradient

    schema = SceneSchema((Field.continuous("pos", -3.0, 3.0, shape=(2,)), Field.continuous("t", 0.0)))
    q = from_schema(schema, {"pos": {"bins": 6, "loc": 2.2, "scale": 0.3}})
    psi = q.init()
    assert isinstance(psi["pos"], CategoricalParams) and psi["pos"].logits.shape == (2, 6)
    d = describe_psi(schema, psi)["pos"]
    x = np.asarray(q.sample(jax.random.key(6), psi, N)["pos"])
    assert d["family"] == "histogram" and d["edges"] == pytest.approx(np.linspace(-3, 3, 7).tolist())
    std = x.std(axis=0)
    np.testing.assert_allclose(d["mean"], x.mean(axis=0), atol=SIGMAS * std.max() / math.sqrt(N))
    np.testing.assert_allclose(d["std"], std, atol=SIGMAS * std.max() ** 2 * math.sqrt(2 / N) / std.min())
    np.testing.assert_allclose(d["median"], np.median(x, axis=0), atol=0.01)
    np.testing.assert_allclose(d["p05"], np.quantile(x, 0.05, axis=0), atol=0.02)
    # The bins' categorical is the family for the step control (natural gradient, KL).
    nat, sq = natural_gradient({"pos": psi["pos"]}, {"pos": CategoricalParams(jnp.ones((2, 6)) - 1.0)})
    assert float(sq) == 0.0 and float(kl_divergence({"pos": psi["pos"]}, {"pos": psi["pos"]})) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(low=0.0, high=np.inf, bins=4), "finite low < high"),
    (dict(low=0.0, high=1.0, bins=1), "bins must be an int >= 2"),
    (dict(low=0.0, high=1.0, bins=4, probs=(0.25,) * 4, loc=0.5), "either probs or loc/scale"),
    (dict(low=0.0, high=1.0, bins=4, loc=0.5, scale=0.1, floor=0.3), r"floor must lie in \(0, 1/bins\)"),
    (dict(low=0.0, high=1.0, bins=4, probs=(0.5, 0.5, 0.0, 0.0)), "must be positive"),
])
def test_histogram_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        histogram(**kwargs)


# ------------------------------------------------------------------------------ gaussian


def test_gaussian_moments_match_parameters():
    """Probabilistic: n=200000, mean and variance within 5 standard errors per element."""
    mu, sigma = np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 1.0])
    q = gaussian((3,), loc=mu, scale=sigma)
    s = np.asarray(q.sample(jax.random.key(0), q.init(), N), np.float64)
    assert s.shape == (N, 3)
    np.testing.assert_array_less(np.abs(s.mean(0) - mu), SIGMAS * sigma / math.sqrt(N))
    np.testing.assert_array_less(
        np.abs(s.var(0, ddof=1) - sigma**2), SIGMAS * sigma**2 * math.sqrt(2 / (N - 1))
    )


def test_gaussian_log_prob_closed_form(x64):
    q = gaussian((2, 2), loc=[[0.0, 1.0], [2.0, -1.0]], scale=[[1.0, 0.5], [2.0, 3.0]])
    psi = q.init()
    x = np.random.default_rng(0).normal(size=(5, 2, 2))
    mu, sigma = np.asarray(psi.loc), np.exp(np.asarray(psi.log_scale))
    expected = _normal_logpdf(x, mu, sigma).sum(axis=(1, 2))
    np.testing.assert_allclose(q.log_prob(psi, x), expected, rtol=1e-12)


def test_gaussian_score_closed_form(x64):
    """d log N / d mu = (x - mu) / sigma^2, d log N / d log sigma = (x - mu)^2 / sigma^2 - 1."""
    q = gaussian(loc=0.3, scale=1.7)
    psi = q.init()
    x = jnp.array([0.0, 1.0, -2.5])
    jac = jax.jacrev(q.log_prob)(psi, x)
    sigma = 1.7
    np.testing.assert_allclose(jac.loc, (x - 0.3) / sigma**2, rtol=1e-12)
    np.testing.assert_allclose(jac.log_scale, (x - 0.3) ** 2 / sigma**2 - 1, rtol=1e-12)


# ------------------------------------------------------------------------------- bounded


@pytest.mark.parametrize("loc,scale", [(0.5, None), (2.5, 0.8), (-0.5, 0.3)])
def test_bounded_density_integrates_to_one(x64, loc, scale):
    low, high = -1.0, 3.0
    q = bounded(low, high, loc=loc, scale=scale)
    x = np.linspace(low, high, 400_001)[1:-1]
    dens = np.exp(np.asarray(q.log_prob(q.init(), x)))
    assert np.trapezoid(dens, x) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("low,high", [(0.5, np.inf), (-np.inf, -0.5)])
def test_half_bounded_density_integrates_to_one(x64, low, high):
    """Quadrature on x = bound +/- e^t (dx = e^t dt), t in [-40, 40]."""
    q = bounded(low, high, loc=2.0 if np.isfinite(low) else -3.0, scale=0.7)
    t = np.linspace(-40.0, 40.0, 200_001)
    bound, sign = (low, 1.0) if np.isfinite(low) else (high, -1.0)
    x = bound + sign * np.exp(t)
    dens = np.exp(np.asarray(q.log_prob(q.init(), x))) * np.exp(t)
    assert np.trapezoid(dens, t) == pytest.approx(1.0, abs=1e-6)


def test_bounded_log_prob_is_minus_inf_outside_the_range(x64):
    for q, outside in (
        (bounded(0.0, 1.0), [0.0, 1.0, -0.5, 2.0]),
        (bounded(0.5, np.inf), [0.5, 0.0]),
    ):
        logq = q.log_prob(q.init(), jnp.asarray(outside))
        assert np.all(np.asarray(logq) == -np.inf)
        points = jnp.asarray([0.75, *outside])
        grads = jax.grad(lambda p, q=q, x=points: q.log_prob(p, x)[0])(q.init())
        assert all(np.isfinite(g) for g in jax.tree.leaves(grads))


def test_bounded_log_prob_closed_form(x64):
    """Logit-normal density: N(logit t; mu, sigma) / (w t (1 - t)), t = (x - low) / w."""
    low, high = 2.0, 5.0
    q = bounded(low, high, (2,), loc=[3.0, 4.5], scale=[0.2, 0.4])
    psi = q.init()
    x = np.array([[2.5, 4.9], [3.3, 3.0]])
    t = (x - low) / (high - low)
    mu, sigma = np.asarray(psi.loc), np.exp(np.asarray(psi.log_scale))
    expected = (
        _normal_logpdf(np.log(t / (1 - t)), mu, sigma) - np.log((high - low) * t * (1 - t))
    ).sum(1)
    np.testing.assert_allclose(q.log_prob(psi, x), expected, rtol=1e-12)


def test_bounded_median_and_scale_in_field_units():
    """Probabilistic: n=200000; P(s < loc) = 1/2 within 5 SE; std = scale within 3%.

    The 3% is the delta method's error at this small scale, not a sampling tolerance."""
    q = bounded(0.0, 2.0, loc=1.6, scale=0.02)
    s = np.asarray(q.sample(jax.random.key(1), q.init(), N), np.float64)
    assert abs((s < 1.6).mean() - 0.5) < SIGMAS * 0.5 / math.sqrt(N)
    assert s.std() == pytest.approx(0.02, rel=0.03)


@pytest.mark.parametrize(
    "low,high", [(0.0, 2.0), (1000.0, 1000.001), (0.0, np.inf), (-np.inf, 7.0), (1e4, np.inf)]
)
@pytest.mark.parametrize("loc_u,log_scale", [(0.0, 0.0), (60.0, 0.0), (-60.0, 0.0), (0.0, 4.0)])
def test_bounded_samples_strictly_inside_in_float32(low, high, loc_u, log_scale):
    """Even for pre-image parameters that saturate the map in float32."""
    q = bounded(low, high)
    psi = NormalParams(jnp.float32(loc_u), jnp.float32(log_scale))
    s = np.asarray(q.sample(jax.random.key(2), psi, 20_000))
    assert s.dtype == np.float32
    assert np.all(np.isfinite(s)) and np.all(s > low) and np.all(s < high)
    SceneSchema((Field.continuous("x", low, high),)).validate({"x": s})
    assert np.all(np.isfinite(np.asarray(q.log_prob(psi, s))))


def test_bounded_unbounded_is_gaussian():
    q = bounded(-np.inf, np.inf, loc=1.0, scale=2.0)
    np.testing.assert_allclose(q.init().loc, 1.0)
    np.testing.assert_allclose(np.exp(q.init().log_scale), 2.0, rtol=1e-6)


# --------------------------------------------------------------------------- categorical


def test_categorical_frequencies_match_probabilities():
    """Probabilistic: n=200000, each frequency within 5 SE = 5 sqrt(p (1 - p) / n)."""
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    q = categorical(3, (2,), probs=probs)
    s = np.asarray(q.sample(jax.random.key(3), q.init(), N))
    assert s.shape == (N, 2) and s.dtype == np.int32
    freq = np.stack([(s == c).mean(0) for c in range(3)], axis=-1)
    np.testing.assert_array_less(np.abs(freq - probs), SIGMAS * np.sqrt(probs * (1 - probs) / N))


def test_categorical_log_prob_is_log_softmax(x64):
    logits = np.random.default_rng(0).normal(size=(4, 5))
    q = categorical(5, (4,))
    idx = np.random.default_rng(1).integers(0, 5, size=(7, 4))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = log_softmax[np.arange(4), idx].sum(1)
    np.testing.assert_allclose(
        q.log_prob(CategoricalParams(jnp.asarray(logits)), idx), expected, rtol=1e-12
    )


def test_categorical_log_prob_of_an_out_of_range_index():
    """Issue 15, item 5: a concrete index outside [0, C) raises naming the scene; traced (under
    jit, where it cannot raise) it has probability zero, log q = -inf, never NaN."""
    q = categorical(3, (2,))
    idx = np.array([[0, 1], [2, 0], [1, 7]])
    with pytest.raises(ValueError, match=r"categorical: scene 2 has category index 7 at element \(1,\), outside "
                                         r"\[0, 3\)"):
        q.log_prob(q.init(), idx)
    with pytest.raises(ValueError, match=r"field 'c': categorical: scene 0 has category index -1, outside"):
        product({"c": categorical(3)}).log_prob({"c": categorical(3).init()}, {"c": np.array([-1, 0])})
    traced = np.asarray(jax.jit(q.log_prob)(q.init(), jnp.asarray(idx)))
    np.testing.assert_allclose(traced[:2], 2 * np.log(1 / 3), rtol=1e-6)
    assert traced[2] == -np.inf
    grad = jax.grad(lambda p: jax.jit(q.log_prob)(p, jnp.asarray(idx))[:2].sum())(q.init())
    assert np.all(np.isfinite(grad.logits))


def test_categorical_54_cells():
    q = categorical(2, (54,))
    s = q.sample(jax.random.key(0), q.init(), 16)
    assert s.shape == (16, 54)
    np.testing.assert_allclose(q.log_prob(q.init(), s), 54 * np.log(0.5), rtol=1e-5)


# ---------------------------------------------------------------------- product / schema


def test_product_mixes_fields_and_sums_log_probs(x64):
    members = {"light": bounded(0.0, 2.0), "pos": gaussian((2,)), "quality": categorical(3)}
    q = product(members)
    psi = q.init()
    assert set(psi) == set(members)
    s = q.sample(jax.random.key(0), psi, 6)
    assert s["light"].shape == (6,) and s["pos"].shape == (6, 2) and s["quality"].shape == (6,)
    expected = sum(members[k].log_prob(psi[k], s[k]) for k in members)
    np.testing.assert_allclose(q.log_prob(psi, s), expected, rtol=1e-12)


def test_from_schema_chooses_families_and_overrides():
    schema = SceneSchema(
        (
            Field.continuous("light", 0.0, 2.0),
            Field.continuous("offset", shape=(3,)),
            Field.continuous("size", low=0.1),
            Field.categorical("cells", choices=("empty", "car"), shape=(54,)),
        )
    )
    custom = gaussian((3,), loc=5.0)
    q = from_schema(
        schema,
        {"light": {"loc": 1.9, "scale": 0.01}, "offset": custom, "cells": {"probs": (0.9, 0.1)}},
    )
    psi = q.init()
    assert isinstance(psi["light"], NormalParams) and isinstance(psi["cells"], CategoricalParams)
    assert psi["offset"].loc.shape == (3,) and psi["cells"].logits.shape == (54, 2)
    np.testing.assert_allclose(psi["offset"].loc, 5.0)
    np.testing.assert_allclose(jax.nn.softmax(psi["cells"].logits)[:, 0], 0.9, rtol=1e-6)
    s = q.sample(jax.random.key(0), psi, 64)
    assert schema.validate({k: np.asarray(v) for k, v in s.items()}) == 64
    assert np.median(np.asarray(s["light"])) > 1.85  # the deliberately poor start


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"nope": {}}, "unknown fields"),
        ({"light": {"loc": 3.0}}, "'light'.*strictly inside"),
        ({"light": {"colour": 1}}, "'light'"),
        ({"quality": {"probs": (1.0, 0.0, 0.0)}}, "'quality'.*positive"),
        ({"light": 0.5}, "Distribution or a dict"),
    ],
)
def test_from_schema_rejects_bad_overrides(overrides, match):
    schema = SceneSchema(
        (Field.continuous("light", 0.0, 2.0), Field.categorical("quality", choices=(1, 4, 16)))
    )
    with pytest.raises(ValueError, match=match):
        from_schema(schema, overrides)


# ---------------------------------------------------------------------------- validation


def _q():
    return product({"light": bounded(0.0, 2.0), "quality": categorical(3)})


def test_psi_with_wrong_shape_names_the_field():
    q = _q()
    psi = q.init()
    psi["light"] = NormalParams(jnp.zeros(2), jnp.zeros(()))
    with pytest.raises(ValueError, match=r"psi\['light'\]\.loc has shape \(2,\)"):
        q.sample(jax.random.key(0), psi, 3)
    with pytest.raises(ValueError, match=r"psi\['light'\]\.loc"):
        jax.jit(q.log_prob)(psi, q.sample(jax.random.key(0), q.init(), 3))


def test_psi_with_wrong_structure_names_the_field():
    q = _q()
    psi = q.init()
    with pytest.raises(ValueError, match=r"missing \['quality'\]"):
        q.sample(jax.random.key(0), {"light": psi["light"]}, 3)
    psi["quality"] = (psi["quality"].logits,)
    with pytest.raises(ValueError, match=r"psi\['quality'\] does not match"):
        q.sample(jax.random.key(0), psi, 3)


def test_non_finite_psi_raises_when_concrete():
    q = _q()
    psi = q.init()
    psi["quality"] = CategoricalParams(jnp.array([0.0, jnp.inf, 0.0]))
    with pytest.raises(ValueError, match=r"psi\['quality'\]\.logits holds non-finite"):
        q.log_prob(psi, q.sample(jax.random.key(0), q.init(), 3))


def test_bad_arguments_raise_value_error():
    q = _q()
    with pytest.raises(ValueError, match="positive Python int"):
        q.sample(jax.random.key(0), q.init(), 0)
    with pytest.raises(ValueError, match="field 'light'.*shape"):
        q.log_prob(q.init(), {"light": jnp.zeros((3, 2)), "quality": jnp.zeros(3, jnp.int32)})
    with pytest.raises(ValueError, match="fields"):
        q.log_prob(q.init(), {"light": jnp.zeros(3)})
    with pytest.raises(ValueError, match="integer"):
        categorical(3).log_prob(categorical(3).init(), jnp.zeros(3))
    with pytest.raises(ValueError, match="low < high"):
        bounded(1.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        gaussian(scale=0.0)
    with pytest.raises(ValueError, match="num_categories"):
        categorical(1)
    with pytest.raises(ValueError, match="Distribution"):
        product({"x": 1.0})


# ------------------------------------------------------------------------------ jit/vmap


def test_jit_matches_eager_and_vmap_matches_loop():
    q = product(
        {"light": bounded(0.0, 2.0, (2,)), "pos": gaussian(), "quality": categorical(4, (3,))}
    )
    psi = q.init()
    key = jax.random.key(5)
    sample = jax.jit(q.sample, static_argnums=2)
    log_prob = jax.jit(q.log_prob)
    eager = q.sample(key, psi, 8)
    jax.tree.map(np.testing.assert_array_equal, eager, sample(key, psi, 8))

    keys = jax.random.split(key, 4)
    batched = jax.jit(jax.vmap(q.sample, in_axes=(0, None, None)), static_argnums=2)(keys, psi, 8)
    for i, k in enumerate(keys):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_array_equal(a[i], b), batched, sample(k, psi, 8)
        )

    # a batch of parameters (e.g. a population of candidates) through vmap
    psis = jax.tree.map(lambda x: jnp.stack([x, x + 0.1, x - 0.2]), psi)
    lp = jax.jit(jax.vmap(q.log_prob, in_axes=(0, None)))(psis, eager)
    for i in range(3):
        np.testing.assert_allclose(
            lp[i], log_prob(jax.tree.map(lambda x, i=i: x[i], psis), eager), rtol=1e-6
        )


def test_distribution_is_a_namedtuple_of_functions():
    q = gaussian()
    assert isinstance(q, Distribution) and q._fields == ("init", "sample", "log_prob")
