"""Step control of psi (autosim_jax/outer.py) against independent computations, in float64.

The Fisher information is built from the distributions' own ``log_prob`` (exact enumeration
for categoricals, Gauss-Hermite quadrature for normals, exact for the polynomial scores of a
normal), not from the closed forms under test. KL and entropy are checked against Monte
Carlo averages of ``log_prob`` with 200,000 samples at 5 standard errors (probabilistic,
fixed key).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from autosim_jax import CategoricalParams, NormalParams, Task, make_autosimulate
from autosim_jax.distributions import categorical, from_schema, gaussian
from autosim_jax.outer import (add_entropy_bonus, chi2_sf, entropy, kl_divergence, natural_gradient,
                               leaf_signal, natural_trust_region, signal_test, signal_test_report, snr_gate)
from autosim_jax.rundir import summarize
from autosim_jax.simulator import Simulator
from toys import SquareRenderer


def _categorical_fisher(logits):
    q = categorical(logits.shape[-1])
    psi = CategoricalParams(logits)
    cats = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    scores = jax.vmap(lambda c: jax.grad(lambda p: q.log_prob(p, c[None])[0])(psi).logits)(cats)
    probs = jax.nn.softmax(logits)
    return jnp.einsum("c,ci,cj->ij", probs, scores, scores)


def _normal_fisher(loc, log_scale):
    q = gaussian()
    psi = NormalParams(jnp.asarray(loc), jnp.asarray(log_scale))
    z, w = np.polynomial.hermite_e.hermegauss(12)  # exact for polynomials of degree <= 23
    x = loc + np.exp(log_scale) * z
    score = jax.vmap(lambda xi: jnp.stack(jax.tree.leaves(jax.grad(lambda p: q.log_prob(p, xi[None])[0])(psi))))(
        jnp.asarray(x))
    return jnp.einsum("k,ki,kj->ij", jnp.asarray(w / w.sum()), score, score)


def test_natural_gradient_is_the_pseudo_inverse_fisher_product(x64):
    logits = jnp.array([0.3, -1.0, 2.0, 0.0])
    g_cat = jnp.array([0.4, -0.1, -0.5, 0.2])  # sums to zero, as every softmax score gradient does
    psi = {"c": CategoricalParams(logits), "x": NormalParams(jnp.array(0.7), jnp.array(-0.4))}
    grad = {"c": CategoricalParams(g_cat), "x": NormalParams(jnp.array(1.3), jnp.array(-0.2))}
    nat, sq = natural_gradient(psi, grad)
    fc = _categorical_fisher(logits)
    np.testing.assert_allclose(nat["c"].logits, jnp.linalg.pinv(fc) @ g_cat, rtol=1e-8, atol=1e-10)
    fx = _normal_fisher(0.7, -0.4)
    np.testing.assert_allclose([nat["x"].loc, nat["x"].log_scale], jnp.linalg.solve(fx, jnp.array([1.3, -0.2])),
                               rtol=1e-8)
    assert float(sq) == pytest.approx(float(g_cat @ jnp.linalg.pinv(fc) @ g_cat
                                            + jnp.array([1.3, -0.2]) @ jnp.linalg.solve(fx, jnp.array([1.3, -0.2]))))


def test_kl_and_entropy_match_monte_carlo(x64):
    """Probabilistic (fixed key): 200k samples, tolerance 5 standard errors of the MC mean."""
    n = 200_000
    for q, p1, p2 in [
        (gaussian(), NormalParams(jnp.array(0.3), jnp.array(-0.2)), NormalParams(jnp.array(-0.5), jnp.array(0.4))),
        (categorical(3), CategoricalParams(jnp.array([0.0, 1.0, -2.0])), CategoricalParams(jnp.array([1.0, 0.0, 0.5]))),
    ]:
        s = q.sample(jax.random.PRNGKey(0), p1, n)
        lp1, lp2 = q.log_prob(p1, s), q.log_prob(p2, s)
        d = lp1 - lp2
        assert abs(float(kl_divergence({"f": p1}, {"f": p2}) - d.mean())) < 5 * float(d.std()) / np.sqrt(n)
        assert abs(float(entropy({"f": p1}) + lp1.mean())) < 5 * float(lp1.std()) / np.sqrt(n)


def test_trust_region_bounds_the_exact_kl_even_for_nearly_empty_categories(x64):
    psi = {"c": CategoricalParams(jnp.log(jnp.array([0.98, 1e-6, 0.02 - 1e-6]))),
           "x": NormalParams(jnp.array(0.0), jnp.array(-3.0))}
    grad = {"c": CategoricalParams(jnp.array([1.0, -0.9, -0.1])), "x": NormalParams(jnp.array(-5.0), jnp.array(1.0))}
    for max_kl in (0.01, 0.2):
        opt = natural_trust_region(learning_rate=1e6, max_kl=max_kl, momentum=0.0)
        updates, state = opt.update(grad, opt.init(psi), psi)
        new = optax.apply_updates(psi, updates)
        kl = float(kl_divergence(psi, new))
        assert kl <= max_kl * 1.001 and kl == pytest.approx(float(state.last_kl))
        # Halvings stop at the first step inside the region: twice that step is outside it.
        twice = jax.tree.map(lambda p, u: p + 2 * u, psi, updates)
        assert float(kl_divergence(psi, twice)) > max_kl
    # Far inside the region the step is the plain natural gradient times the learning rate.
    opt = natural_trust_region(learning_rate=1e-3, max_kl=1.0, momentum=0.0)
    updates, _ = opt.update(grad, opt.init(psi), psi)
    nat, _ = natural_gradient(psi, grad)
    for u, d in zip(jax.tree.leaves(updates), jax.tree.leaves(nat)):
        np.testing.assert_allclose(u, -1e-3 * d, rtol=1e-10)


def test_entropy_bonus_is_relative_to_the_hypergradient(x64):
    psi = {"x": NormalParams(jnp.array(0.0), jnp.array(0.0)), "c": CategoricalParams(jnp.array([2.0, 0.0]))}
    grad = jax.tree.map(lambda a: jnp.ones_like(a), psi)
    for scale in (1e-3, 1e3):
        g = jax.tree.map(lambda a: scale * a, grad)
        out = add_entropy_bonus(psi, g, 0.5)
        diff = jax.tree.map(lambda a, b: a - b, g, out)
        assert float(optax.tree.norm(diff)) == pytest.approx(0.5 * float(optax.tree.norm(g)), rel=1e-10)
        # The bonus ascends the entropy: -diff . dH > 0 would descend it.
        assert float(optax.tree.vdot(diff, jax.grad(entropy)(psi))) > 0


def test_natural_needs_known_families_and_valid_options():
    with pytest.raises(ValueError, match="NormalParams or CategoricalParams"):
        natural_gradient({"w": jnp.ones(2)}, {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="max_kl must be > 0"):
        natural_trust_region(1.0, 0.0)
    with pytest.raises(ValueError, match="momentum"):
        natural_trust_region(1.0, 0.1, momentum=1.0)


def _nan_updates():
    return optax.GradientTransformation(lambda p: optax.EmptyState(),
                                        lambda g, s, p=None: (jax.tree.map(lambda a: a * jnp.nan, g), s))


def test_a_non_finite_update_never_moves_psi():
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    mse = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)  # noqa: E731
    task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
    x = np.full((16, 1), 2.0, np.float32)
    autosim = make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x, x**2), dataset_size=32,
                                batch_size=16, outer_optimizer=_nan_updates())
    state = autosim.init(0)
    new, info = autosim.step(state)
    assert info.psi_updated is False and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(new.psi), jax.tree.leaves(state.psi)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("outer, extra", [("natural", {"max_kl": 0.05}), ("adam", {"entropy_weight": 0.3})])
def test_step_control_options_run_through_make_autosimulate(outer, extra):
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    mse = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)  # noqa: E731
    task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
    x = np.full((16, 1), 2.0, np.float32)
    autosim = make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x, x**2), dataset_size=32,
                                batch_size=16, outer_optimizer=outer, outer_learning_rate=10.0, **extra)
    state = autosim.init(0)
    for _ in range(3):
        state, info = autosim.step(state)
        assert info.psi_updated
    if outer == "natural":
        assert float(state.outer_opt_state.last_kl) <= 0.05 * 1.001


def test_snr_gate_first_step_is_the_positive_part_james_stein_factor():
    """After one step m = (1 - d) g and V = (1 - d)^2 se^2, so the factor is max(0, 1 - z^2 se^2 / g^2)
    whatever d: checked coordinate by coordinate against that closed form (sgd(1): update = -g)."""
    g = jnp.array([1.0, -0.5, 0.2, 0.0, 3.0])
    se = jnp.array([0.1, 0.5, 0.4, 0.3, 1.0])
    for z, d in ((1.0, 0.9), (2.0, 0.5)):
        opt = optax.chain(optax.sgd(1.0), snr_gate(threshold=z, decay=d))
        updates, _ = opt.update({"a": g}, opt.init({"a": g}), None, hypergradient={"a": g},
                                hypergradient_stderr={"a": se})
        factor = np.maximum(0.0, 1.0 - z**2 * np.asarray(se) ** 2 / np.maximum(np.asarray(g) ** 2, 1e-30))
        np.testing.assert_allclose(updates["a"], -np.asarray(g) * factor, rtol=1e-6, atol=1e-7)


def test_snr_gate_per_leaf_is_the_vector_james_stein_factor():
    """per="leaf", first step: one factor max(0, 1 - z^2 n / sum_i g_i^2 / se_i^2) for all n
    coordinates of a leaf (checked against that closed form, a leaf of one coordinate included,
    where it is the per-coordinate factor); and 54 coordinates each 1.5 standard errors away,
    stopped per coordinate at threshold 2, pass together per leaf at threshold 1.2 with the
    factor 1 - 1.2^2 / 1.5^2."""
    g = {"a": jnp.array([1.0, -0.5, 0.2]), "b": jnp.array([0.3])}
    se = {"a": jnp.array([0.1, 0.5, 0.4]), "b": jnp.array([0.2])}
    opt = optax.chain(optax.sgd(1.0), snr_gate(threshold=1.5, decay=0.9, per="leaf"))
    updates, _ = opt.update(g, opt.init(g), None, hypergradient=g, hypergradient_stderr=se)
    for k in ("a", "b"):
        t2 = float(np.sum((np.asarray(g[k]) / np.asarray(se[k])) ** 2))
        factor = max(0.0, 1.0 - 1.5**2 * g[k].size / t2)
        np.testing.assert_allclose(updates[k], -np.asarray(g[k]) * factor, rtol=1e-6)
    many, ones = {"c": jnp.full(54, 3.0)}, {"c": jnp.full(54, 2.0)}  # 1.5 standard errors each
    for per, expected in (("coordinate", 0.0), ("leaf", 1.0 - 1.2**2 / 1.5**2)):
        opt = optax.chain(optax.sgd(1.0), snr_gate(threshold=1.2 if per == "leaf" else 2.0, decay=0.9, per=per))
        updates, _ = opt.update(many, opt.init(many), None, hypergradient=many, hypergradient_stderr=ones)
        np.testing.assert_allclose(updates["c"], -3.0 * expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="per must be"):
        snr_gate(per="field")


def test_snr_gate_stops_pure_noise_and_passes_a_consistent_signal():
    """Coordinate 0: a true gradient of 0 plus noise of standard error 1; coordinate 1: a true
    gradient of 0.5 with the same noise (half a standard error per step). Adam 0.1, 200 steps,
    30 noise draws (fixed keys). Plain Adam's expected travel: the noise coordinate's rms ~ lr
    sqrt(T) = 1.4, the signal's ~ lr T = 20 less Adam's shrinkage. With the default gate
    (threshold 2, decay 0.99; measured 0.056 and 6.3 against 1.16 and 8.6) the noise travels less
    than a tenth of plain Adam's rms, and the signal keeps more than half of its travel."""
    truth, se = jnp.array([0.0, 0.5]), {"a": jnp.ones(2)}

    def travel(gated, noise):
        opt = optax.chain(optax.adam(0.1), snr_gate()) if gated else optax.adam(0.1)

        def step(carry, n):
            params, state = carry
            g = {"a": truth + n}
            extra = {"hypergradient": g, "hypergradient_stderr": se} if gated else {}
            updates, state = opt.update(g, state, params, **extra)
            return (optax.apply_updates(params, updates), state), None

        params = {"a": jnp.zeros(2)}
        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), noise)
        return np.abs(np.asarray(params["a"]))

    noises = [jax.random.normal(jax.random.key(k), (200, 2)) for k in range(30)]
    plain = np.array([travel(False, n) for n in noises])
    gated = np.array([travel(True, n) for n in noises])
    rms = lambda x: float(np.sqrt(np.mean(x**2)))  # noqa: E731
    assert 0.8 < rms(plain[:, 0]) < 2.0, rms(plain[:, 0])  # the random walk the gate is for
    assert rms(gated[:, 0]) < 0.1 * rms(plain[:, 0]), (rms(gated[:, 0]), rms(plain[:, 0]))
    assert gated[:, 1].mean() > 0.5 * plain[:, 1].mean(), (gated[:, 1].mean(), plain[:, 1].mean())


def test_gate_and_signal_test_options_are_validated():
    from autosim_jax import AutoSimConfig

    with pytest.raises(ValueError, match="threshold must be > 0"):
        snr_gate(0.0)
    with pytest.raises(ValueError, match="decay"):
        snr_gate(1.0, decay=1.0)
    with pytest.raises(ValueError, match="hold_after must be an int >= 1"):
        signal_test(0)
    with pytest.raises(ValueError, match="alpha must be in"):
        signal_test(5, alpha=1.0)
    for bad, match in (({"outer_snr_gate": -1.0}, "outer_snr_gate"),
                       ({"outer_snr_gate": 1.0, "outer_optimizer": "natural"}, "Fisher"),
                       ({"outer_signal_test_after": -1}, "outer_signal_test_after"),
                       ({"outer_signal_test_alpha": 0.0}, "outer_signal_test_alpha"),
                       ({"outer_signal_test_after": 5, "outer_optimizer": "natural"}, "chained after them"),
                       ({"outer_snr_gate_steps": 5},
                        "outer_snr_gate_steps=5 ends the noise gate, but outer_snr_gate=0"),
                       ({"outer_snr_gate": 1.0, "outer_snr_gate_steps": -1}, "outer_snr_gate_steps")):
        with pytest.raises(ValueError, match=match):
            AutoSimConfig(**bad)
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    mse = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)  # noqa: E731
    task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
    x = np.full((16, 1), 2.0, np.float32)
    for option in ({"outer_snr_gate": 2.0}, {"outer_signal_test_after": 5}):
        name, value = next(iter(option.items()))
        with pytest.raises(ValueError, match=f"{name}={value} is chained after the optimiser the config names"):
            make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x, x**2), dataset_size=32,
                              batch_size=16, outer_optimizer=optax.adam(0.1), **option)


class _SquareWithJunk(SquareRenderer):
    """The toy with a second scene field, ``junk``, that the renderer ignores: its hypergradient is noise."""

    from autosim_jax.schema import Field, SceneSchema

    schema = SceneSchema((Field.continuous("x", doc="the input value"),
                          Field.continuous("junk", doc="ignored by the renderer")))


def test_snr_gate_keeps_a_field_without_signal_in_place_through_make_autosimulate():
    """End to end (the toy, exact quadratic, Adam 0.1 on psi, 40 steps, 3 seeds): the ignored
    field's mean wanders ungated (a random walk of Adam's steps) and stays within a third of that
    distance with outer_snr_gate=2, while x still moves by more than 1 towards the validation
    data at 2."""
    sim = Simulator(from_schema(_SquareWithJunk.schema, {"x": {"loc": -1.0, "scale": 0.5},
                                                         "junk": {"loc": 0.0, "scale": 1.0}}), _SquareWithJunk())
    mse = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)  # noqa: E731
    task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
    x = (2.0 + 0.3 * np.random.default_rng(0).standard_normal((64, 1))).astype(np.float32)
    drift, moved = {}, {}
    for gate in (0.0, 2.0):
        autosim = make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x, x**2), dataset_size=128,
                                    batch_size=32, finetune_epochs=4, inner_learning_rate=3e-2, outer_snr_gate=gate)
        drift[gate], moved[gate] = [], []
        for seed in range(3):
            state = autosim.init(seed)
            for _ in range(40):
                state, info = autosim.step(state)
            drift[gate].append(abs(float(state.psi["junk"].loc)))
            moved[gate].append(float(state.psi["x"].loc) + 1.0)
    assert np.mean(drift[2.0]) < np.mean(drift[0.0]) / 3, drift
    assert min(moved[2.0]) > 1.0, moved


def test_snr_gate_steps_gates_the_first_updates_only():
    """``outer_snr_gate_steps=2``: the first two updates are the always-gated optimiser's, from the
    third on plain Adam's (the gate sits after Adam, so Adam's state is the same either way)."""
    from autosim_jax import AutoSimConfig

    opts = {name: AutoSimConfig(**kw).outer_optax() for name, kw in (
        ("for2", {"outer_snr_gate": 2.0, "outer_snr_gate_steps": 2}), ("always", {"outer_snr_gate": 2.0}),
        ("plain", {}))}
    psi = {"a": jnp.zeros(2)}
    states = {name: opt.init(psi) for name, opt in opts.items()}
    rng = np.random.default_rng(0)
    for t in range(5):
        g, se = {"a": jnp.asarray(rng.standard_normal(2), jnp.float32)}, {"a": jnp.array([1.0, 0.01])}
        u = {}
        for name, opt in opts.items():
            u[name], states[name] = opt.update(g, states[name], psi, hypergradient=g, hypergradient_stderr=se)
        want = u["always"] if t < 2 else u["plain"]
        np.testing.assert_array_equal(u["for2"]["a"], want["a"])
        if t >= 2:
            assert not np.array_equal(u["always"]["a"], u["plain"]["a"])  # the gate still acts on the other


def test_snr_gate_from_gates_the_later_updates_only():
    """``outer_snr_gate_from=2``: the first two updates are plain Adam's; from the third on each is
    Adam's scaled by a gate whose averages start at the third update (checked against ``snr_gate``
    applied by hand to plain Adam's updates from there)."""
    from autosim_jax import AutoSimConfig
    from autosim_jax.outer import snr_gate

    late = AutoSimConfig(outer_snr_gate=2.0, outer_snr_gate_from=2).outer_optax()
    plain = AutoSimConfig().outer_optax()
    by_hand = snr_gate(2.0, decay=0.99)
    psi = {"a": jnp.zeros(3)}
    s_late, s_plain, s_hand = late.init(psi), plain.init(psi), by_hand.init(psi)
    rng = np.random.default_rng(1)
    gated = 0
    for t in range(6):
        g = {"a": jnp.asarray(rng.standard_normal(3) + np.array([5.0, 0.0, 0.0]), jnp.float32)}
        se = {"a": jnp.ones(3)}
        u_late, s_late = late.update(g, s_late, psi, hypergradient=g, hypergradient_stderr=se)
        u_plain, s_plain = plain.update(g, s_plain, psi)
        want = u_plain
        if t >= 2:
            want, s_hand = by_hand.update(u_plain, s_hand, psi, hypergradient=g, hypergradient_stderr=se)
            gated += int(np.any(np.asarray(want["a"]) != np.asarray(u_plain["a"])))
        np.testing.assert_allclose(u_late["a"], want["a"], rtol=1e-6, atol=0)
    assert gated == 4  # the gate acted on every update from the third (the noise coordinates shrink)


@pytest.mark.parametrize("options, match", [
    ({"outer_snr_gate_from": 5}, "outer_snr_gate_from=5 starts the noise gate, but outer_snr_gate=0"),
    ({"outer_snr_gate": 2.0, "outer_snr_gate_from": 60, "outer_snr_gate_steps": 60}, "never act"),
    ({"outer_snr_gate": 2.0, "outer_snr_gate_from": -1}, "outer_snr_gate_from must be an integer >= 0")])
def test_snr_gate_from_refuses_what_would_not_gate(options, match):
    from autosim_jax import AutoSimConfig

    with pytest.raises(ValueError, match=match):
        AutoSimConfig(**options)


@pytest.mark.parametrize("gate_steps, gate_from", [(0, 0), (3, 0), (0, 2)])
def test_gated_and_decaying_runs_resume_from_a_checkpoint_bitwise(tmp_path, gate_steps, gate_from):
    """The gate's state (its averages), the signal test's (its sums, verdicts and start) and the
    decay's step count live in the outer optimiser's state, so 2 steps + checkpoint + 2 steps
    equals 4 uninterrupted steps to the last bit (also with the gate ending after step 3, or starting
    at step 2, across the checkpoint)."""
    from autosim_jax.checkpoint import load_checkpoint, save_checkpoint

    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    mse = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)  # noqa: E731
    task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
    x = np.full((16, 1), 2.0, np.float32)
    autosim = make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x, x**2), dataset_size=32,
                                batch_size=16, outer_snr_gate=1.0, outer_decay_steps=3, outer_signal_test_after=1,
                                outer_signal_test_alpha=0.5, outer_snr_gate_steps=gate_steps,
                                outer_snr_gate_from=gate_from)
    straight = autosim.init(0)
    for _ in range(4):
        straight, _ = autosim.step(straight)
    state = autosim.init(0)
    for _ in range(2):
        state, _ = autosim.step(state)
    save_checkpoint(tmp_path / "c.npz", state)
    state = load_checkpoint(tmp_path / "c.npz", autosim.init(0))
    for _ in range(2):
        state, _ = autosim.step(state)
    for a, b in zip(jax.tree.leaves((straight.psi, straight.outer_opt_state)),
                    jax.tree.leaves((state.psi, state.outer_opt_state))):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert float(jnp.abs(straight.psi["x"].loc + 1.0)) > 0  # psi moved


def _chi2_sf_even(x: float, dof: int) -> float:
    """The closed form for even ``dof``: ``exp(-x / 2) sum_{k < dof / 2} (x / 2)^k / k!``."""
    import math

    return math.exp(-x / 2) * sum((x / 2) ** k / math.factorial(k) for k in range(dof // 2))


def test_chi2_sf_matches_the_closed_form_for_even_degrees_of_freedom():
    for x, dof in ((0.5, 2), (3.0, 4), (12.0, 8), (40.0, 32)):
        np.testing.assert_allclose(float(chi2_sf(jnp.array(x), dof)), _chi2_sf_even(x, dof), rtol=1e-5)


def test_leaf_signal_holds_its_level_for_a_categoricals_logits():
    """Without signal a uniform categorical row's summed gradient is N(0, s^2 (I - 11^T / C)) (every
    softmax score sums to zero over the row) and each coordinate's variance is s^2 (1 - 1 / C).
    Over 4000 draws of 4 rows (fixed key) the corrected test (classes=C) rejects at level 0.05 in
    0.05 +- 4 binomial standard errors (0.014) for C = 2 and 8, and a leaf of independent
    coordinates (classes=0) too; treating the rows' coordinates as independent (classes=0 on the
    logits) would reject twice as often for C = 2 (measured 0.105; 0.062 for C = 8)."""
    draws = 4000
    for c in (2, 8):
        proj = np.eye(c) - 1.0 / c
        g = jax.random.normal(jax.random.key(c), (draws, 4, c)) @ jnp.asarray(proj)
        var = jnp.full((4, c), 1.0 - 1.0 / c)
        p = jax.vmap(lambda x: leaf_signal(x, var, c)[2])(g)
        assert abs(float(jnp.mean(p < 0.05)) - 0.05) < 4 * np.sqrt(0.05 * 0.95 / draws), (c, float(jnp.mean(p < 0.05)))
        if c == 2:
            naive = jax.vmap(lambda x: leaf_signal(x, var, 0)[2])(g)
            assert float(jnp.mean(naive < 0.05)) > 0.08, float(jnp.mean(naive < 0.05))
    g = jax.random.normal(jax.random.key(1), (draws, 5))
    p = jax.vmap(lambda x: leaf_signal(x, jnp.ones(5))[2])(g)
    assert abs(float(jnp.mean(p < 0.05)) - 0.05) < 4 * np.sqrt(0.05 * 0.95 / draws)


def test_signal_test_evidence_crosses_a_spent_level_and_the_held_leaf_goes_to_its_start():
    """Three steps of given g and se (sgd(0.1) under the test, hold_after=3, alpha=0.05). After each
    step t every leaf's p-value is the chi-square survival of sum_i (sum_s g_si)^2 / sum_s se_si^2
    with the leaf's size as degrees of freedom (closed form above), and a leaf has evidence from
    the first step with p_t <= alpha / (t (t + 1)), for good: leaf b crosses at step 1 (p 1.5e-3 <=
    0.025), leaf c at step 1 only (p 0.011 <= 0.025) and fades (p 0.66 at step 3) but keeps its
    evidence, leaf a never crosses. Before step 3 every leaf moves by the optimiser's update; at
    step 3 the leaf without evidence gets start - params, and no step after."""
    g = [{"a": jnp.array([0.4, -0.2]), "b": jnp.array([2.0, 3.0]), "c": jnp.array([3.0, 0.0])},
         {"a": jnp.array([-0.5, 0.3]), "b": jnp.array([1.0, 2.5]), "c": jnp.array([-2.0, 0.5])},
         {"a": jnp.array([0.2, 0.1]), "b": jnp.array([1.5, 2.0]), "c": jnp.array([-0.5, 1.0])}]
    se = {"a": jnp.array([1.0, 0.5]), "b": jnp.array([1.0, 1.0]), "c": jnp.array([1.0, 1.0])}
    opt = optax.chain(optax.sgd(0.1), signal_test(hold_after=3, alpha=0.05))
    psi = {k: jnp.zeros(2) for k in "abc"}
    state = opt.init(psi)
    evidence_by_step = []
    for t, gt in enumerate(g, start=1):
        updates, state = opt.update(gt, state, psi, hypergradient=gt, hypergradient_stderr=se)
        report = signal_test_report(state[1])
        for k in "abc":
            x = float(np.sum(np.sum([np.asarray(s[k]) for s in g[:t]], 0) ** 2 / (t * np.asarray(se[k]) ** 2)))
            np.testing.assert_allclose(report[f"['{k}']"]["p_value"], _chi2_sf_even(x, 2), rtol=1e-4)
        evidence_by_step.append({k: report[f"['{k}']"]["evidence"] for k in "abc"})
        if t < 3:  # before hold_after: the optimiser's update for every leaf
            np.testing.assert_allclose(updates["a"], -0.1 * np.asarray(gt["a"]), rtol=1e-6)
        psi = optax.apply_updates(psi, updates)
    assert evidence_by_step == [{"a": False, "b": True, "c": True}] * 3, evidence_by_step
    assert report["['c']"]["p_value"] > 0.5  # faded, evidence kept
    assert report["['a']"]["held"] and not report["['b']"]["held"] and not report["['c']"]["held"], report
    np.testing.assert_array_equal(psi["a"], 0.0)  # back at its start
    np.testing.assert_allclose(psi["b"], -0.1 * np.sum([np.asarray(s["b"]) for s in g], 0), rtol=1e-6)
    updates, state = opt.update(g[0], state, psi, hypergradient=g[0], hypergradient_stderr=se)
    np.testing.assert_array_equal(updates["a"], 0.0)  # held: no step until it gains evidence
    assert signal_test_report(optax.adam(0.1).init(psi)) is None


def test_signal_test_releases_pure_noise_at_most_at_its_level_and_passes_a_half_standard_error_signal():
    """400 runs of 100 steps (hold_after=40, alpha=0.1, Adam 0.1), fixed keys. A leaf of 4
    coordinates of pure noise (se 1) gains evidence by chance with probability at most alpha (the
    spent levels sum to alpha; the union bound is loose, so fewer): the fraction released is below
    0.1 + 4 binomial standard errors (0.06; measured 0.065), and every held one is at its start to
    the last bit. A
    leaf of 4 coordinates with half a standard error of signal per step (z ~ 0.5 sqrt(t) each) is
    held in fewer than 1% of the runs by step 100."""
    truth = {"noise": jnp.zeros(4), "signal": jnp.full(4, 0.5)}
    se = {"noise": jnp.ones(4), "signal": jnp.ones(4)}
    opt = optax.chain(optax.adam(0.1), signal_test(hold_after=40, alpha=0.1))

    def run(key):
        def step(carry, k):
            params, state = carry
            ka, kb = jax.random.split(k)
            g = {"noise": jax.random.normal(ka, (4,)), "signal": truth["signal"] + jax.random.normal(kb, (4,))}
            updates, state = opt.update(g, state, params, hypergradient=g, hypergradient_stderr=se)
            return (optax.apply_updates(params, updates), state), None

        params = {"noise": jnp.zeros(4), "signal": jnp.zeros(4)}
        (params, state), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, 100))
        return params, state[1].held

    params, held = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 400))
    noise_held = np.asarray(held["noise"])
    assert 1 - noise_held.mean() < 0.1 + 4 * np.sqrt(0.1 * 0.9 / 400), noise_held.mean()
    np.testing.assert_array_equal(np.asarray(params["noise"])[noise_held], 0.0)
    assert np.asarray(held["signal"]).mean() < 0.01, np.asarray(held["signal"]).mean()


def test_signal_test_sends_a_field_without_signal_back_through_make_autosimulate():
    """End to end (the toy with an ignored field, exact quadratic, Adam 0.1, holds from step 20,
    40 steps, 3 seeds): the ignored field ends exactly at its start on every seed, x (which has
    evidence) still moves by more than 1 towards the validation data at 2, and the report (and a
    run's summary.json) names the held leaves."""
    sim = Simulator(from_schema(_SquareWithJunk.schema, {"x": {"loc": -1.0, "scale": 0.5},
                                                         "junk": {"loc": 0.0, "scale": 1.0}}), _SquareWithJunk())
    mse = lambda out, y: jnp.sum((out - y) ** 2, axis=-1)  # noqa: E731
    task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
    x = (2.0 + 0.3 * np.random.default_rng(0).standard_normal((64, 1))).astype(np.float32)
    autosim = make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x, x**2), dataset_size=128,
                                batch_size=32, finetune_epochs=4, inner_learning_rate=3e-2,
                                outer_signal_test_after=20)
    start = sim.distribution.init()
    for seed in range(3):
        state = autosim.init(seed)
        for _ in range(40):
            state, info = autosim.step(state)
        report = signal_test_report(state.outer_opt_state)
        assert report["['junk'].loc"]["held"] and not report["['x'].loc"]["held"], report
        assert report["['x'].loc"]["evidence"] and not report["['junk'].loc"]["evidence"], report
        np.testing.assert_array_equal(state.psi["junk"].loc, start["junk"].loc)
        assert float(state.psi["x"].loc) + 1.0 > 1.0, float(state.psi["x"].loc)
    summary = summarize([], higher=True, stopped_by="iterations", state=state, target={})  # summary.json's entry
    assert "['junk'].loc" in summary["signal_test"]["held_at_start"], summary["signal_test"]
    assert "['x'].loc" not in summary["signal_test"]["held_at_start"]
