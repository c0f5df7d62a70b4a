"""AutoSimConfig.theta_reset_every: theta (and its optimiser state) start again from their
initial values every N outer steps, before that step's fine-tuning; nothing else changes.
AutoSimConfig.pretrain_rounds: those initial values are a model first trained at the start psi."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autosim_jax import AutoSimConfig, ExperimentSetup, Simulator, experiments, from_schema, make_autosimulate
from autosim_jax.tasks import Task
from toys import SquareRenderer

pytestmark = pytest.mark.filterwarnings("ignore::autosim_jax.autosimulate.UnconvergedSolveWarning")

X_VAL = (2.0 + 0.3 * np.random.default_rng(0).standard_normal(32)).astype(np.float32)[:, None]
TASK = Task.from_per_sample(lambda out, y: jnp.sum((out - y) ** 2, axis=-1),
                            lambda out, y: -jnp.sum((out - y) ** 2, axis=-1), "neg_mse")


def _autosim(reset: int, pretrain: int = 0):
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    config = AutoSimConfig(dataset_size=32, batch_size=16, finetune_epochs=2, inner_learning_rate=0.1,
                           cg_maxiter=3, theta_reset_every=reset, pretrain_rounds=pretrain)
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
@pytest.mark.parametrize("option", ["theta_reset_every", "pretrain_rounds"])
def test_counts_must_be_counts(option, bad):
    with pytest.raises(ValueError, match=rf"AutoSimConfig.{option} must be an integer >= 0"):
        AutoSimConfig(**{option: bad})


def _pretrained_by_hand(autosim, seed: int, rounds: int):
    """What pretrain_rounds must do, written out: per round, K renders of the start psi with
    the round's own key and the step's fine-tuning, theta warm across rounds."""
    from autosim_jax.autosimulate import _PRETRAIN_STREAM

    inner, psi = autosim.inner, autosim.init(seed).psi
    theta, opt = inner.theta0, inner.init_opt(inner.theta0)
    for key in jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), _PRETRAIN_STREAM), rounds):
        sim_key, train_key = jax.random.split(key)
        _, x, y = inner.simulate(sim_key, psi)
        theta, opt, _ = inner.finetune(theta, opt, x, y, train_key)
    return theta


def test_pretrain_rounds_train_theta_at_the_start_psi_and_count_the_renders():
    plain, pre = _autosim(0), _autosim(0, pretrain=3)
    s_plain, s_pre = plain.init(0), pre.init(0)
    for a, b in zip(_leaves(s_pre.theta), _leaves(_pretrained_by_hand(pre, 0, 3))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(s_pre.images) == 3 * 32 and int(s_plain.images) == 0
    assert s_pre.theta_anchor is None  # warm theta: no resets, nothing to keep
    # the steps' key stream is that of a run without pretraining, and theta learned the start's
    # renders (new ones; the validation set, at x ~ 2 not -1, is not what it trains for)
    np.testing.assert_array_equal(s_pre.key, s_plain.key)
    _, x, y = pre.inner.simulate(jax.random.PRNGKey(99), s_pre.psi)
    assert float(pre.inner.measure(s_pre.theta, x, y)[0]) < 0.5 * float(plain.inner.measure(s_plain.theta, x, y)[0])


def test_resets_go_back_to_the_pretrained_anchor():
    """With a reset every step, step t >= 1 fine-tunes the anchor (with a fresh optimiser
    state) on its own renders, and the anchor itself never changes."""
    autosim = _autosim(1, pretrain=2)
    state = autosim.init(0)
    anchor = _leaves(state.theta_anchor)
    for a, b in zip(anchor, _leaves(state.theta)):
        np.testing.assert_array_equal(a, b)
    state, _ = autosim.step(state)
    for _ in range(2):
        _, sim_key, train_key = jax.random.split(state.key, 3)
        _, x, y = autosim.inner.simulate(sim_key, state.psi)
        expected, _, _ = autosim.inner.finetune(state.theta_anchor, autosim.inner.init_opt(state.theta_anchor), x, y,
                                                train_key)
        state, info = autosim.step(state)
        for a, b in zip(_leaves(state.theta), _leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(_leaves(state.theta_anchor), anchor):
            np.testing.assert_array_equal(a, b)
    assert int(state.images) == (2 + 3) * 32 and info.psi_updated


def test_the_anchor_survives_a_checkpoint(tmp_path):
    from autosim_jax.checkpoint import load_checkpoint, save_checkpoint

    autosim = _autosim(1, pretrain=1)
    state, _ = autosim.step(autosim.init(0))
    save_checkpoint(tmp_path / "c.npz", state)
    back = load_checkpoint(tmp_path / "c.npz", autosim.init(0))
    for a, b in zip(_leaves(back), _leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert back.theta_anchor is not None


def _cycling(reset: int, others: int, pretrain: int = 0):
    """``_autosim`` whose resets cycle through the model and ``others`` initialisations (seeds 1, 2, ...)."""
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    config = AutoSimConfig(dataset_size=32, batch_size=16, finetune_epochs=2, inner_learning_rate=0.1,
                           cg_maxiter=3, theta_reset_every=reset, pretrain_rounds=pretrain,
                           theta_reset_inits=others + 1)
    return make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), TASK, (X_VAL, X_VAL**2), config,
                             reset_models=[nnx.Linear(1, 1, rngs=nnx.Rngs(j)) for j in range(1, others + 1)])


def test_reset_models_are_cycled_through_by_step_count():
    """reset_models=[m1, m2], N = 1: step t's fresh theta is one fine-tuning of (model, m1, m2)[t % 3]
    on that step's renders; step 0 starts from the model as without reset_models."""
    plain, cycling = _autosim(1), _cycling(1, 2)
    inits = [_leaves(nnx.split(nnx.Linear(1, 1, rngs=nnx.Rngs(j)), nnx.Param)[1]) for j in range(3)]
    s_plain, s_cyc = plain.init(0), cycling.init(0)
    for t in range(5):
        _, sim_key, train_key = jax.random.split(s_cyc.key, 3)
        _, x, y = cycling.inner.simulate(sim_key, s_cyc.psi)
        start = jax.tree.unflatten(jax.tree.structure(s_cyc.theta), [jnp.asarray(a) for a in inits[t % 3]])
        expected, _, _ = cycling.inner.finetune(start, cycling.inner.init_opt(start), x, y, train_key)
        s_cyc, _ = cycling.step(s_cyc)
        s_plain, _ = plain.step(s_plain)
        for a, b in zip(_leaves(s_cyc.theta), _leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        if t == 0:  # the first step fine-tunes the model itself: the same as without reset_models
            for a, b in zip(_leaves(s_cyc.theta), _leaves(s_plain.theta)):
                np.testing.assert_array_equal(a, b)


def test_reset_models_resume_as_the_original_run():
    """The reset a step makes follows from its step count: a new AutoSimulate continuing a state
    after 2 steps ends bit for bit where 4 steps of one instance end."""
    straight = _cycling(1, 2)
    s = straight.init(0)
    for _ in range(4):
        s, _ = straight.step(s)
    first = _cycling(1, 2)
    r = first.init(0)
    for _ in range(2):
        r, _ = first.step(r)
    second = _cycling(1, 2)  # as after a restart: another instance, the saved state
    for _ in range(2):
        r, _ = second.step(r)
    for a, b in zip(_leaves((s.psi, s.theta, s.outer_opt_state)), _leaves((r.psi, r.theta, r.outer_opt_state))):
        np.testing.assert_array_equal(a, b)


def test_reset_models_are_checked_before_anything_compiles():
    with pytest.raises(ValueError, match=r"theta_reset_inits=2 are the initialisations .* theta_reset_every=0 never"):
        _cycling(0, 1)
    with pytest.raises(ValueError, match=r"theta_reset_inits=2 and pretrain_rounds=2 both say where a reset goes"):
        _cycling(1, 1, pretrain=2)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"AutoSimConfig.theta_reset_inits must be an integer >= 1"):
            AutoSimConfig(theta_reset_every=1, theta_reset_inits=bad)
    sim = Simulator(from_schema(SquareRenderer.schema), SquareRenderer())
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    # the config's count and the models given must agree, either way round
    with pytest.raises(ValueError, match=r"theta_reset_inits=3 cycles .* reset_models holds 1\. Pass "
                                         r"theta_reset_inits=2 with these reset_models, or 2 reset_models"):
        make_autosimulate(sim, model, TASK, (X_VAL, X_VAL**2), theta_reset_every=1, theta_reset_inits=3,
                          reset_models=[nnx.Linear(1, 1, rngs=nnx.Rngs(1))])
    with pytest.raises(ValueError, match=r"theta_reset_inits=1 cycles .* reset_models holds 1"):
        make_autosimulate(sim, model, TASK, (X_VAL, X_VAL**2), theta_reset_every=1,
                          reset_models=[nnx.Linear(1, 1, rngs=nnx.Rngs(1))])
    with pytest.raises(ValueError, match=r"reset_models\[0\] is not another initialisation of model"):
        make_autosimulate(sim, model, TASK, (X_VAL, X_VAL**2), theta_reset_every=1, theta_reset_inits=2,
                          reset_models=[nnx.Linear(1, 2, rngs=nnx.Rngs(1))])
    with pytest.raises(ValueError, match=r"reset_models\[0\]: "):
        make_autosimulate(sim, model, TASK, (X_VAL, X_VAL**2), theta_reset_every=1, theta_reset_inits=2,
                          reset_models=[object()])


def _toy_setup(inits: int) -> ExperimentSetup:
    """The toy as a registered experiment's setup: resets every step through ``inits`` initialisations."""
    sim = Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())
    config = AutoSimConfig(dataset_size=32, batch_size=16, finetune_epochs=2, inner_learning_rate=0.1,
                           cg_maxiter=3, theta_reset_every=1, theta_reset_inits=inits)

    def make_model(model_seed: int) -> nnx.Module:
        return nnx.Linear(1, 1, rngs=nnx.Rngs(model_seed))

    val = (X_VAL, X_VAL**2)
    return ExperimentSetup(sim, make_model(0), TASK, val, val, config, iterations=4, assess_images=32,
                           assess_epochs=1, make_model=make_model)


def test_setup_make_autosimulate_cycles_the_other_inits_of_its_seed():
    """setup.make_autosimulate(seed) with theta_reset_inits=3 runs bit for bit as make_autosimulate
    with reset_models=setup.other_inits(seed, 3), where the call without them raises; another seed's
    other initialisations give other thetas once a reset uses one."""
    setup = _toy_setup(3)
    with pytest.raises(ValueError, match=r"theta_reset_inits=3 cycles .* reset_models holds 0"):
        make_autosimulate(setup.simulator, setup.model, setup.task, setup.val_data, setup.config)
    explicit = make_autosimulate(setup.simulator, setup.model, setup.task, setup.val_data, setup.config,
                                 reset_models=setup.other_inits(7, 3))
    helper, other_seed = setup.make_autosimulate(7), setup.make_autosimulate(8)
    assert helper.config == setup.config
    s_exp, s_help, s_other = explicit.init(0), helper.init(0), other_seed.init(0)
    for t in range(4):  # steps 1 and 2 start from the other initialisations, step 3 from the model again
        s_exp, _ = explicit.step(s_exp)
        s_help, _ = helper.step(s_help)
        s_other, _ = other_seed.step(s_other)
        for a, b in zip(_leaves((s_exp.psi, s_exp.theta)), _leaves((s_help.psi, s_help.theta))):
            np.testing.assert_array_equal(a, b)
        if t == 1:  # the first reset to an other initialisation: seed 1007's, not 1008's
            assert not all(np.array_equal(a, b) for a, b in zip(_leaves(s_help.theta), _leaves(s_other.theta)))


def test_setup_make_autosimulate_passes_its_arguments_on(monkeypatch):
    """config (default the setup's), simulator, model and every other keyword reach make_autosimulate;
    the count of other initialisations follows a theta_reset_inits override; reset_models= replaces them."""
    setup = _toy_setup(1)
    built = setup.make_autosimulate(0, setup.config.replace(cg_maxiter=5), approximation="linear",
                                    theta_reset_inits=2)
    assert (built.config.cg_maxiter, built.config.approximation) == (5, "linear")
    assert built.config.theta_reset_inits == 2
    assert setup.make_autosimulate().config == setup.config
    bare = setup._replace(make_model=None)  # no other initialisations to be had: said before anything is built
    with pytest.raises(ValueError, match=r"theta_reset_inits=2 needs other initialisations .* no make_model"):
        bare.make_autosimulate(0, theta_reset_inits=2)
    with pytest.raises(ValueError, match=r"reset_models\[0\] is not another initialisation of model"):
        _toy_setup(2).make_autosimulate(0, model=nnx.Linear(1, 1, use_bias=False, rngs=nnx.Rngs(0)))

    calls = []
    monkeypatch.setattr(experiments, "make_autosimulate", lambda *args, **kwargs: calls.append((args, kwargs)))
    setup = _toy_setup(3)
    sim, model = setup.simulator.with_pool(None), setup.make_model(5)
    setup.make_autosimulate(5, simulator=sim, model=model, devices=None)
    (args, kwargs), = calls
    assert args[0] is sim and args[1] is model and args[2:] == (setup.task, setup.val_data, setup.config)
    assert kwargs["devices"] is None and len(kwargs["reset_models"]) == 2
    for got, want in zip(kwargs["reset_models"], setup.other_inits(5, 3)):
        for a, b in zip(_leaves(nnx.state(got, nnx.Param)), _leaves(nnx.state(want, nnx.Param))):
            np.testing.assert_array_equal(a, b)
    mine = [setup.make_model(1), setup.make_model(2)]
    setup.make_autosimulate(0, reset_models=mine)
    assert calls[-1][1]["reset_models"] is mine
