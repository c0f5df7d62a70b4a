"""The library's defaults on the toy of tests/test_autosimulate.py (issue 12 item 5, issue 13).

The toy with nothing but its simulator, model, task and validation set: ``make_autosimulate(sim,
model, task, val)``, only the approximation chosen, 400 outer steps, seeds 0-4, final ``mu``
against the brute-force optimum ``mu*`` (2.026). The start, ``mu = -1``, is 3.0 away.

Measured with these defaults (``benchmarks/toy_defaults.py``, ``docs/defaults.md``; the same
numbers on every run, the toy being deterministic for a seed), final ``|mu - mu*|`` for seeds 0-4:

* exact quadratic: 0.034 0.027 0.032 0.028 0.023 (max 0.034): issue 13's target, asserted;
* linear: 0.060 0.223 0.083 0.018 0.138 (3 of 5 within 0.1, max 0.223);
* approximate quadratic: 0.204 0.351 0.478 0.382 0.411 (0 of 5, max 0.478).

Issue 13 asks for all three rows within 0.1 on 5 seeds. No setting of AutoSimConfig's options
measured does that (docs/defaults.md: Adam on psi stalls once the hypergradient shrinks, the
natural-gradient trust region collapses sigma before mu moves); the linear and approximate
rows are strict xfails of that target, so a change that meets it fails here as XPASS and the
marker should go. Their regression guard is the second test (bounds a little above the
measured worst). With the old defaults (K 64, 1 epoch of Adam 1e-3, Adam 0.05 on psi) every
row ended 2.0-2.5 away. The new options of session 5 (``finetune_schedule``, ``outer_beta2``,
off by default) did not meet the target either (docs/defaults.md); their tests are at the end.
"""

import functools

import numpy as np
import pytest
from flax import nnx
from test_autosimulate import TOY_TASK, VAL, SquareRenderer, _optimal_mu

from autosim_jax import AutoSimConfig, make_autosimulate
from autosim_jax.distributions import from_schema
from autosim_jax.simulator import Simulator

STEPS = 400
SEEDS = (0, 1, 2, 3, 4)
TARGET = 0.1
NOT_YET = "issue 13's toy target, not met by any measured defaults (docs/defaults.md)"


@functools.cache
def _final_errors(approximation: str, outer_snr_gate: float = 0.0) -> tuple[float, ...]:
    """Final |mu - mu*| of each seed with the library's defaults (one compile per row), or with
    the defaults and ``outer_snr_gate`` alone changed."""
    q = from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}})
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    options = {"outer_snr_gate": outer_snr_gate} if outer_snr_gate else {}
    autosim = make_autosimulate(Simulator(q, SquareRenderer()), model, TOY_TASK, VAL, approximation=approximation,
                                **options)
    assert autosim.config == AutoSimConfig(approximation=approximation, **options)  # nothing else set
    mu_star, errors = _optimal_mu(), []
    for seed in SEEDS:
        state = autosim.init(seed)
        for _ in range(STEPS):
            state, _ = autosim.step(state)
        errors.append(abs(float(state.psi["x"].loc) - mu_star))
    return tuple(errors)


@pytest.mark.parametrize("approximation", [
    "exact_quadratic",
    pytest.param("linear", marks=pytest.mark.xfail(strict=True, reason=NOT_YET)),
    pytest.param("approx_quadratic", marks=pytest.mark.xfail(strict=True, reason=NOT_YET)),
])
def test_defaults_end_within_0_1_of_the_optimum_on_5_seeds(approximation):
    errors = _final_errors(approximation)
    assert max(errors) < TARGET, np.round(errors, 3)


@pytest.mark.parametrize("approximation, bound", [("exact_quadratic", 0.1), ("linear", 0.3),
                                                  ("approx_quadratic", 0.6)])
def test_defaults_go_most_of_the_way_from_a_fresh_model(approximation, bound):
    """Regression guard: every seed of every row ends within ``bound`` (measured worst: 0.034,
    0.223, 0.478), i.e. at least 80% of the way from the start."""
    errors = _final_errors(approximation)
    assert max(errors) < bound, np.round(errors, 3)


# --------------------------------------------------------------- the options of session 5


def test_linear_decay_scales_the_t_th_of_T_updates_by_T_minus_t_over_T():
    """With SGD the decayed fine-tuning equals SGD at rate lr (T - t) / T by hand (float64)."""
    import jax
    import jax.numpy as jnp
    import optax

    from autosim_jax.training import train_epochs

    x = jnp.linspace(-1.0, 1.0, 8)[:, None]
    y = 3.0 * x
    loss = lambda w, x, y: jnp.mean((x * w - y) ** 2)  # noqa: E731
    opt, w0, key = optax.sgd(0.1), jnp.zeros(()), jax.random.PRNGKey(0)
    w, _, _ = train_epochs(loss, opt, w0, opt.init(w0), x, y, key, batch_size=4, epochs=3, schedule="linear_decay")
    manual, t = w0, 0
    for epoch_key in jax.random.split(key, 3):
        order = jax.random.permutation(epoch_key, 8).reshape(2, 4)
        for idx in order:
            manual = manual - 0.1 * (6 - t) / 6 * jax.grad(loss)(manual, x[idx], y[idx])
            t += 1
    np.testing.assert_allclose(w, manual, rtol=1e-12)
    w_const, _, _ = train_epochs(loss, opt, w0, opt.init(w0), x, y, key, batch_size=4, epochs=3)
    assert not np.isclose(w, w_const)


def test_new_options_are_validated_and_recorded():
    config = AutoSimConfig(finetune_schedule="linear_decay", outer_beta2=0.99)
    assert config.to_dict()["finetune_schedule"] == "linear_decay"
    assert AutoSimConfig.from_dict(config.to_dict()) == config
    for bad in ({"finetune_schedule": "cosine"}, {"outer_beta2": 1.0}, {"outer_beta2": 0.0}):
        with pytest.raises(ValueError, match="finetune_schedule|outer_beta2"):
            AutoSimConfig(**bad)
    # outer_beta2 is Adam's b2 (0.999 is optax's default: the old optimiser exactly)
    import jax.numpy as jnp
    import optax
    g, p = {"a": jnp.array([0.3, -2.0])}, {"a": jnp.zeros(2)}
    for b2 in (0.999, 0.9):
        ours = AutoSimConfig(outer_beta2=b2).outer_optax()
        ref = optax.adam(0.1, b2=b2)
        s1, s2 = ours.init(p), ref.init(p)
        for _ in range(3):
            u1, s1 = ours.update(g, s1)
            u2, s2 = ref.update(g, s2)
        np.testing.assert_array_equal(u1["a"], u2["a"])


def test_outer_warmup_steps_ramps_the_psi_step_linearly_and_combines_with_the_decay():
    """``outer_warmup_steps=3``: the t-th SGD update is ``-lr min(1, (t + 1) / 3)`` times the gradient,
    times ``1 / (1 + t / 2)`` with ``outer_decay_steps=2``; Adam's first update, +-lr without it, is
    lr / 3 (so one noisy hypergradient no longer moves every coordinate by the full rate); the
    natural step and negative values are refused."""
    import jax.numpy as jnp

    g, p = {"a": jnp.array([1.0, -3.0])}, {"a": jnp.zeros(2)}
    for decay in (0, 2):
        sgd = AutoSimConfig(outer_optimizer="sgd", outer_learning_rate=0.3, outer_warmup_steps=3,
                            outer_decay_steps=decay).outer_optax()
        state = sgd.init(p)
        for t in range(5):
            u, state = sgd.update(g, state)
            factor = min(1.0, (t + 1) / 3) / ((1 + t / decay) if decay else 1.0)
            np.testing.assert_allclose(u["a"], -0.3 * factor * g["a"], rtol=1e-6)
            # the rate the progress lines divide by (StepInfo.psi_step_rms / psi_learning_rate)
            cfg = AutoSimConfig(outer_learning_rate=0.3, outer_warmup_steps=3, outer_decay_steps=decay)
            assert cfg.psi_learning_rate(t) == pytest.approx(0.3 * factor, rel=1e-6)
    adam = AutoSimConfig(outer_learning_rate=0.3, outer_warmup_steps=3).outer_optax()
    u, _ = adam.update(g, adam.init(p))
    np.testing.assert_allclose(np.abs(u["a"]), 0.1, rtol=1e-4)
    assert AutoSimConfig.from_dict(AutoSimConfig(outer_warmup_steps=10).to_dict()).outer_warmup_steps == 10
    for bad, match in (({"outer_warmup_steps": -1}, "outer_warmup_steps"),
                       ({"outer_warmup_steps": 10, "outer_optimizer": "natural"}, "outer_warmup_steps.*max_kl nats")):
        with pytest.raises(ValueError, match=match):
            AutoSimConfig(**bad)
    with pytest.raises(ValueError, match="psi_learning_rate: outer_optimizer='natural' takes steps in KL units"):
        AutoSimConfig(outer_optimizer="natural").psi_learning_rate(0)


def test_outer_decay_late_switches_the_psi_steps_decay_from_the_rate_reached():
    """``outer_decay_late_from=F, outer_decay_late_steps=L``: SGD's t-th update is ``-r(t) g`` with
    ``r(t) = lr / (1 + t / D)`` before ``F`` and ``r(F) / (1 + (t - F) / L)`` from ``F`` on (``r`` continuous
    at ``F``; with ``D = 0`` constant before it), with the warm-up on top; the two come together."""
    import jax.numpy as jnp

    g, p = {"a": jnp.array([1.0, -3.0])}, {"a": jnp.zeros(2)}
    for decay, warmup in ((0, 0), (4, 0), (4, 2)):
        config = AutoSimConfig(outer_optimizer="sgd", outer_learning_rate=0.3, outer_decay_steps=decay,
                               outer_warmup_steps=warmup, outer_decay_late_from=3, outer_decay_late_steps=2)
        sgd = config.outer_optax()
        state = sgd.init(p)
        for t in range(7):
            u, state = sgd.update(g, state)
            early = (lambda n: 1 / (1 + n / decay) if decay else 1.0)
            factor = early(t) if t < 3 else early(3) / (1 + (t - 3) / 2)
            factor *= min(1.0, (t + 1) / warmup) if warmup else 1.0
            np.testing.assert_allclose(u["a"], -0.3 * factor * g["a"], rtol=1e-6)
            assert config.psi_learning_rate(t) == pytest.approx(0.3 * factor, rel=1e-6)
    # before the switch the schedule is the one-decay schedule
    one = AutoSimConfig(outer_decay_steps=60)
    late = one.replace(outer_decay_late_from=60, outer_decay_late_steps=30)
    before = [one.psi_learning_rate(t) for t in range(60)]
    assert [late.psi_learning_rate(t) for t in range(60)] == pytest.approx(before, rel=1e-6)
    assert late.psi_learning_rate(90) == pytest.approx(0.025) and one.psi_learning_rate(90) == pytest.approx(0.04)
    assert AutoSimConfig.from_dict(late.to_dict()) == late
    for bad, match in (({"outer_decay_late_from": 60}, "come together"),
                       ({"outer_decay_late_steps": 30}, "come together"),
                       ({"outer_decay_late_from": -1, "outer_decay_late_steps": 30}, "outer_decay_late_from"),
                       ({"outer_decay_late_from": 60, "outer_decay_late_steps": 30, "outer_optimizer": "natural"},
                        "outer_decay_late_from.*max_kl nats")):
        with pytest.raises(ValueError, match=match):
            AutoSimConfig(**bad)


def test_outer_unit_norm_feeds_the_optimiser_the_hypergradient_direction_only():
    """``outer_unit_norm=True``: Adam's updates equal ``optax.adam`` on ``g / |g|`` (global norm over
    the psi tree), so a first hypergradient 500x the later ones (clevr-seg gpu's seed 0, session 51)
    no longer holds the later steps down: after it and 20 unit steps of the same direction the
    plain Adam step is below 0.1 of the rate, the normalised one at the full rate; SGD steps have
    length ``lr``; the noise gate chained after still gets the raw hypergradient; the natural step
    and a non-bool are refused."""
    import jax
    import jax.numpy as jnp
    import optax

    p = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    d = {"a": jnp.array([0.6, 0.0]), "b": jnp.array([-0.8])}  # unit global norm
    grads = [jax.tree.map(lambda x: 500.0 * x, d)] + [d] * 20
    plain, unit = AutoSimConfig().outer_optax(), AutoSimConfig(outer_unit_norm=True).outer_optax()
    ref = optax.adam(0.1)
    s_plain, s_unit, s_ref = plain.init(p), unit.init(p), ref.init(p)
    for g in grads:
        u_plain, s_plain = plain.update(g, s_plain, p)
        u_unit, s_unit = unit.update(g, s_unit, p)
        u_ref, s_ref = ref.update(jax.tree.map(lambda x: x / optax.tree.norm(g), g), s_ref, p)
        np.testing.assert_allclose(u_unit["a"], u_ref["a"], rtol=1e-5, atol=1e-9)
    assert float(jnp.abs(u_plain["b"][0])) < 0.01  # 0.1 of the rate 0.1
    np.testing.assert_allclose(np.abs(u_unit["b"]), 0.1, rtol=1e-3)
    sgd = AutoSimConfig(outer_optimizer="sgd", outer_learning_rate=0.3, outer_unit_norm=True).outer_optax()
    u, _ = sgd.update(grads[0], sgd.init(p), p)
    np.testing.assert_allclose(float(optax.tree.norm(u)), 0.3, rtol=1e-5)
    gated = AutoSimConfig(outer_unit_norm=True, outer_snr_gate=2.0).outer_optax()
    se = jax.tree.map(lambda x: 1e3 * jnp.ones_like(x), d)  # pure noise: the gate closes
    u, _ = gated.update(d, gated.init(p), p, hypergradient=d, hypergradient_stderr=se)
    assert float(optax.tree.norm(u)) == 0.0
    assert AutoSimConfig.from_dict(AutoSimConfig(outer_unit_norm=True).to_dict()).outer_unit_norm is True
    for bad, match in (({"outer_unit_norm": 1}, "outer_unit_norm must be True or False"),
                       ({"outer_unit_norm": True, "outer_optimizer": "natural"}, "outer_unit_norm.*max_kl nats")):
        with pytest.raises(ValueError, match=match):
            AutoSimConfig(**bad)


def test_outer_decay_steps_is_an_inverse_time_schedule_of_the_psi_step():
    """SGD with ``outer_decay_steps=2``: the t-th update (t = 0, 1, ...) is ``-lr / (1 + t / 2)``
    times the gradient, a resumed optimiser state continues the schedule, and Adam gets the
    same factor (its normalised step of a constant gradient is the learning rate)."""
    import jax.numpy as jnp

    g, p = {"a": jnp.array([1.0, -3.0])}, {"a": jnp.zeros(2)}
    sgd = AutoSimConfig(outer_optimizer="sgd", outer_learning_rate=0.3, outer_decay_steps=2).outer_optax()
    state = sgd.init(p)
    for t in range(4):
        u, state = sgd.update(g, state)
        np.testing.assert_allclose(u["a"], -0.3 / (1 + t / 2) * g["a"], rtol=1e-6)
    adam = AutoSimConfig(outer_learning_rate=0.3, outer_decay_steps=2).outer_optax()
    state = adam.init(p)
    for t in range(3):
        u, state = adam.update(g, state)
        np.testing.assert_allclose(np.abs(u["a"]), 0.3 / (1 + t / 2), rtol=1e-4)
    assert AutoSimConfig.from_dict({**AutoSimConfig(outer_decay_steps=20).to_dict()}).outer_decay_steps == 20
    for bad, match in (({"outer_decay_steps": -1}, "outer_decay_steps"),
                       ({"outer_decay_steps": 10, "outer_optimizer": "natural"}, "max_kl nats")):
        with pytest.raises(ValueError, match=match):
            AutoSimConfig(**bad)


def test_the_noise_gate_brings_the_linear_row_to_the_target():
    """The defaults with ``outer_snr_gate=2``: the linear row ends within 0.1 of the optimum on 5
    of 5 seeds (measured 0.019-0.037, docs/defaults.md session 12; the defaults alone: 3 of 5),
    and the exact row stays there (0.034-0.058)."""
    for approximation in ("linear", "exact_quadratic"):
        errors = _final_errors(approximation, outer_snr_gate=2.0)
        assert max(errors) < TARGET, (approximation, np.round(errors, 3))
