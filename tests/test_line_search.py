"""The cross-fitted line search on the local model of Eq. 6 (autosim_jax/outer.py).

The importance estimate is checked against closed forms for a Gaussian (the mean of x^2 under a
moved Gaussian, and the weights' effective sample size), the choice of scale against the minimiser
of a known quadratic, and the cross-fitting against what it is for: over 200 independent draws of
a pure-noise objective, a step proposed from a half's own samples is valued below zero on those
samples on nearly every draw, and near zero (within 3 standard errors of the draws' mean) on the
other half; a real slope is valued below zero on the other half too. Last, the option through
``make_autosimulate``: the applied step is the optimiser's update times the chosen scale, exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from autosim_jax import AutoSimConfig, Task, make_autosimulate
from autosim_jax.distributions import from_schema, gaussian
from autosim_jax.estimators import reinforce_gradient
from autosim_jax.outer import cross_fitted_line_search, importance_change, line_search_scales
from autosim_jax.simulator import Simulator
from toys import SquareRenderer


def _moved_gaussian_second_moment(loc, scale):
    return loc**2 + scale**2


def _gaussian_ess(loc, scale):
    """1 / E_q[(p/q)^2] for p = N(loc, scale^2), q = N(0, 1) (finite for scale^2 < 2)."""
    return scale * np.sqrt(2 - scale**2) * np.exp(-(loc**2) / (2 - scale**2))


def test_importance_change_matches_the_closed_form():
    """N(0, 1) samples valued under N(0.4, 0.8^2): E[x^2] moves from 1 to 0.8, and the effective
    sample size tends to 1 / E_q[w^2] = 0.829. 20 batches of 10,000 samples: their mean estimate
    within 4 standard errors of the closed form (fixed keys), the ESS within 0.01."""
    q = gaussian()
    psi = q.init()
    new = psi._replace(loc=jnp.float32(0.4), log_scale=jnp.log(jnp.float32(0.8)))
    expected = _moved_gaussian_second_moment(0.4, 0.8) - 1.0
    changes, esses = [], []
    for i in range(20):
        s = q.sample(jax.random.key(i), psi, 10_000)
        change, ess = importance_change(q.log_prob, psi, new, s, s**2)
        changes.append(float(change))
        esses.append(float(ess))
    stderr = np.std(changes, ddof=1) / np.sqrt(len(changes))
    assert abs(np.mean(changes) - expected) < 4 * stderr, (np.mean(changes), expected, stderr)
    assert abs(np.mean(esses) - _gaussian_ess(0.4, 0.8)) < 0.01, np.mean(esses)
    same, ess_same = importance_change(q.log_prob, psi, psi, s, s**2)  # no move: no change, every sample
    assert abs(float(same)) < 1e-5 and abs(float(ess_same) - 1.0) < 1e-5


@pytest.mark.parametrize("target, scale", [(0.125, 0.5), (0.5, 2.0), (1.0, 2.0)])
def test_line_search_takes_the_scale_nearest_the_minimum_within_the_ess_floor(target, scale):
    """f = (x - target)^2 under N(loc, 1) is least at loc = target. A proposed step of +0.25 in loc
    at scales (0, 0.5, 1, 2, 4) reaches loc 0, 0.125, 0.25, 0.5, 1; scale 4 (ESS exp(-1) = 0.37)
    is below the 0.5 floor, so a target at 1 is met as far as the floor allows (2). 65,536 samples:
    neighbouring candidates differ by >= 5 standard errors of their values."""
    q = gaussian()
    psi = q.init()
    s = q.sample(jax.random.key(0), psi, 65_536)
    up = psi._replace(loc=jnp.float32(0.25), log_scale=jnp.float32(0.0))
    result = cross_fitted_line_search(q.log_prob, psi, s, (s - target) ** 2, up, up, line_search_scales(4.0))
    assert float(result.scale) == scale, result
    assert float(result.values[0]) == 0.0 and float(result.ess[0]) == pytest.approx(1.0, abs=1e-5)
    assert float(result.ess[-1]) < 0.5 < float(result.ess[-2])


def _sgd_step_from(q, psi, samples, objective, lr=0.3):
    grad = reinforce_gradient(q.log_prob, psi, samples, objective)
    return jax.tree.map(lambda g: -lr * g, grad)


def test_cross_fitting_values_a_noise_step_near_zero_and_a_real_slope_below_it():
    """200 draws of K = 64 from N(0, 1). Pure noise (f independent of x): each half's own SGD step is
    valued below zero on its own samples on >= 95% of draws (it descends their noise), and the
    held-out value's mean over draws is within 3 standard errors of zero. A real slope (f = x plus
    the same noise): the held-out value is below zero on its mean by more than 3 standard errors."""
    q = gaussian()
    psi = q.init()

    def one_draw(key):
        k1, k2 = jax.random.split(key)
        s = q.sample(k1, psi, 64)
        noise = jax.random.normal(k2, (64,))
        held_out = []
        for f in (noise, s + noise):
            first = _sgd_step_from(q, psi, s[:32], f[:32])
            second = _sgd_step_from(q, psi, s[32:], f[32:])
            held_out.append(cross_fitted_line_search(q.log_prob, psi, s, f, first, second, (0.0, 1.0)).values[1])
        first = _sgd_step_from(q, psi, s[:32], noise[:32])
        own = importance_change(q.log_prob, psi, optax.apply_updates(psi, first), s[:32], noise[:32])[0]
        return own, *held_out

    in_fold, noise_held_out, slope_held_out = map(
        np.asarray, jax.jit(jax.vmap(one_draw))(jax.random.split(jax.random.key(100), 200)))
    assert np.mean(in_fold < 0) >= 0.95, np.mean(in_fold < 0)
    noise_se = np.std(noise_held_out, ddof=1) / np.sqrt(200)
    assert abs(np.mean(noise_held_out)) < 3 * noise_se, (np.mean(noise_held_out), noise_se)
    slope_se = np.std(slope_held_out, ddof=1) / np.sqrt(200)
    assert np.mean(slope_held_out) < -3 * slope_se, (np.mean(slope_held_out), slope_se)


def _toy(**options):
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    mse = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)  # noqa: E731
    task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
    x = np.full((16, 1), 2.0, np.float32)
    return make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x, x**2), dataset_size=32,
                             batch_size=16, **options)


def test_the_applied_step_is_the_optimisers_update_times_the_chosen_scale():
    """From the same state, one step with the line search and one without: the psi change of the
    first is the chosen scale times the second's (float32 rounding), the optimiser states are equal
    to the bit (the scale does not touch them), and along 8 steps the scale is one of the five
    tried and not always 1."""
    searched, plain = _toy(outer_line_search=2.0), _toy()
    state, scales = searched.init(0), []
    for _ in range(8):
        new, info = searched.step(state)
        ref, ref_info = plain.step(state)
        assert info.psi_step_scale in line_search_scales(2.0) and ref_info.psi_step_scale == 1.0
        for a, b, p in zip(jax.tree.leaves(new.psi), jax.tree.leaves(ref.psi), jax.tree.leaves(state.psi)):
            np.testing.assert_allclose(np.asarray(a) - np.asarray(p), info.psi_step_scale * (np.asarray(b) - np.asarray(p)),
                                       rtol=1e-5, atol=1e-7)
        for a, b in zip(jax.tree.leaves(new.outer_opt_state), jax.tree.leaves(ref.outer_opt_state)):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        scales.append(info.psi_step_scale)
        state = new
    assert set(scales) != {1.0}, scales


def test_line_search_steps_ends_the_search():
    """With outer_line_search_steps=4 the first 4 steps take the search's scale (not all of them 1 on
    this toy) and every later step Adam's own (scale 1, the plain step from the same state to the bit)."""
    searched, plain = _toy(outer_line_search=2.0, outer_line_search_steps=4), _toy()
    state, scales = searched.init(0), []
    for _ in range(7):
        new, info = searched.step(state)
        scales.append(info.psi_step_scale)
        if len(scales) > 4:
            ref, _ = plain.step(state)
            for a, b in zip(jax.tree.leaves(new.psi), jax.tree.leaves(ref.psi)):
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        state = new
    assert set(scales[:4]) != {1.0} and scales[4:] == [1.0, 1.0, 1.0], scales


@pytest.mark.parametrize("approximation", ["no_val", "linear"])
def test_line_search_with_other_approximations_keeps_frozen_fields(approximation):
    """The search's objective is each approximation's own (the renders' loss for no_val, Table 1's vector
    otherwise) and a field frozen by psi_trainable never moves: 4 steps, the scale one of those tried,
    the frozen log-scale equal to its start to the bit."""
    autosim = _toy(outer_line_search=2.0, approximation=approximation, psi_trainable=r"\['x'\]\.loc")
    state = start = autosim.init(0)
    for _ in range(4):
        state, info = autosim.step(state)
        assert info.psi_updated and info.psi_step_scale in line_search_scales(2.0)
    assert np.asarray(state.psi["x"].log_scale).tobytes() == np.asarray(start.psi["x"].log_scale).tobytes()


@pytest.mark.parametrize("options, match", [
    ({"outer_line_search": -1.0}, "outer_line_search must be >= 0"),
    ({"outer_line_search": 2.0, "outer_line_search_min_ess": 0.0}, "outer_line_search_min_ess must be > 0"),
    ({"outer_line_search": 2.0, "outer_line_search_min_ess": 1.5}, r"must be in \(0, 1\]"),
    ({"outer_line_search": 2.0, "dataset_size": 2, "batch_size": 2}, "dataset_size >= 4"),
    ({"outer_line_search": 2.0, "outer_optimizer": "natural"}, "'natural' sizes its step by max_kl"),
    ({"outer_line_search_steps": 60}, "outer_line_search=0 has none"),
    ({"outer_line_search": 2.0, "outer_line_search_steps": -1}, "outer_line_search_steps must be an integer >= 0"),
])
def test_line_search_options_are_validated(options, match):
    with pytest.raises(ValueError, match=match):
        AutoSimConfig(**options)


def test_line_search_refuses_too_few_samples():
    q = gaussian()
    s = q.sample(jax.random.key(0), q.init(), 3)
    with pytest.raises(ValueError, match="at least 4 samples"):
        cross_fitted_line_search(q.log_prob, q.init(), s, s, q.init(), q.init(), (0.0, 1.0))
