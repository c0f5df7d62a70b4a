"""The registered experiments build real setups; the assessment of psi is deterministic."""

import functools

import jax
import numpy as np
import pytest
from conftest import run_autosim_optimised

from autosim_jax.experiments import EXPERIMENTS, assess_psi, build_clevr_seg, get_experiment


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown experiment 'mnist'; valid choices are "
                                         r"\['clevr-det', 'clevr-seg', 'digits-det', 'digits-sim2real'\]"):
        get_experiment("mnist")


@functools.cache
def _build(name, renderer, seed):
    """An experiment's setup, built once per (name, renderer, seed): the tests below only read it."""
    return get_experiment(name).build(renderer=renderer, seed=seed)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_setups_match_their_renderers(name):
    setup = _build(name, get_experiment(name).renderers[0], 0)
    spec_in, spec_lab = setup.simulator.renderer.inputs_spec, setup.simulator.renderer.labels_spec
    for x, y in (setup.val_data, setup.test_data):
        assert x.shape[1:] == spec_in.shape and y.shape[1:] == spec_lab.shape and len(x) == len(y)
        assert np.isfinite(x).all()
    assert setup.config.dataset_size % setup.config.batch_size == 0
    if setup.baseline_evaluation is not None:  # random search's and BO's default in autosim compare
        images, epochs = setup.baseline_evaluation
        base = setup.base_config()
        assert base.replace(dataset_size=images, finetune_epochs=epochs).dataset_size == images
        assert (images, epochs) != (base.dataset_size, base.finetune_epochs)
    # make_model(seed) rebuilds the setup's model (the same seed: the same parameters); another
    # seed gives another initialisation of the same structure (make_autosimulate's reset_models).
    from autosim_jax.inner import split_model

    same, other = split_model(setup.make_model(0)), split_model(setup.make_model(1))
    mine = split_model(setup.model)
    assert same[0] == mine[0] == other[0]
    for a, b, c in zip(jax.tree.leaves(mine[1]), jax.tree.leaves(same[1]), jax.tree.leaves(other[1])):
        np.testing.assert_array_equal(a, b)
        assert a.shape == c.shape
    assert any(not np.array_equal(a, c) for a, c in zip(jax.tree.leaves(mine[1]), jax.tree.leaves(other[1])))


def test_clevr_eval_sets_are_fixed_and_distinct():
    """Validation and test come from the hidden target with their own seeds, not the run's."""
    a = _build("clevr-seg", "clevr", 0)
    b = _build("clevr-seg", "clevr", 7)
    np.testing.assert_array_equal(a.val_data[0], b.val_data[0])
    assert not np.array_equal(a.val_data[0], a.test_data[0])
    # Every class appears in the evaluation labels.
    assert set(np.unique(a.val_data[1])) == {0, 1, 2, 3}


def test_clevr_seg_takes_an_image_size_and_unet_width_and_keeps_the_rest_of_its_size():
    """hypergradient_signal.py's --image-size / --base-channels: the renders, the evaluation sets
    and the model change; the step's options and the evaluation set's size are the size's own."""
    own = build_clevr_seg(size="cpu")
    small = build_clevr_seg(size="cpu", image_size=16, base_channels=4)
    assert small.val_data[0].shape == (own.val_data[0].shape[0], 16, 16, 3)
    assert small.test_data[1].shape == (own.test_data[1].shape[0], 16, 16)
    assert small.model.enc1a.out_features == 4 and own.model.enc1a.out_features == 8
    assert small.config == own.config
    assert small.make_model(3).enc1a.out_features == 4
    assert small.simulator.renderer.image_size == 16
    for kwargs, message in (({"image_size": 15}, "image_size=15 is odd"), ({"image_size": 4}, "image_size=4"),
                            ({"base_channels": 0}, "base_channels=0"), ({"image_size": 16.0}, "image_size=16.0")):
        with pytest.raises(ValueError, match=message):
            build_clevr_seg(size="cpu", **kwargs)


def test_assess_psi_is_deterministic():
    setup = _build("digits-sim2real", "glyphs", 0)
    psi = setup.simulator.distribution.init()
    r1 = assess_psi(setup, psi, num_images=128, epochs=2)
    r2 = assess_psi(setup, psi, num_images=128, epochs=2)
    assert r1 == r2
    assert 0.0 <= r1["val_metric"] <= 1.0 and 0.0 <= r1["test_metric"] <= 1.0


@pytest.mark.slow
def test_clevr_seg_runs_end_to_end_with_assessment(tmp_path):
    # `autosim run` in a process of its own at XLA's default optimisation level, like the detection
    # experiments' test: alone on 2 cores 36 s against 43 s at the suite's fast-compile level (session 36).
    proc = run_autosim_optimised("run", "clevr-seg", "--approximation", "linear", "--iterations", "2",
                                 "--dataset-size", "8", "--assess-images", "16", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "learned psi" in proc.stdout and "start psi" in proc.stdout


def test_assessor_repeats_average_independent_fresh_models():
    """repeats=2 is the mean of the single assessments with seeds s and s + 2 (each repeat
    renders and orders its own minibatches), and reports the spread."""
    from autosim_jax.experiments import make_assessor

    setup = _build("digits-sim2real", "glyphs", 0)
    psi = setup.simulator.distribution.init()
    one = make_assessor(setup, num_images=256, epochs=1)
    two = make_assessor(setup, num_images=256, epochs=1, repeats=2)
    reported = []  # on_model: each fresh model's metrics as it finishes, in repeat order
    a, b, both = one(psi, 3), one(psi, 5), two(psi, 3, lambda r, m: reported.append((r, m)))
    assert [r for r, _ in reported] == [0, 1] and all(m["seconds"] > 0 for _, m in reported)
    assert [m["test_metric"] for _, m in reported] == pytest.approx([a["test_metric"], b["test_metric"]], abs=1e-6)
    assert both["test_metric"] == pytest.approx((a["test_metric"] + b["test_metric"]) / 2, abs=1e-6)
    assert both["test_metric_std"] == pytest.approx(abs(a["test_metric"] - b["test_metric"]) / 2, abs=1e-6)
    # each model on its own, in repeat order, so that one failed training is not hidden in a mean
    assert both["test_metrics"] == pytest.approx([a["test_metric"], b["test_metric"]], abs=1e-6)
    assert both["val_metrics"] == pytest.approx([a["val_metric"], b["val_metric"]], abs=1e-6)
    assert len(both["train_losses"]) == 2 and all(np.isfinite(both["train_losses"]))
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        make_assessor(setup, repeats=0)


def test_assess_config_keeps_the_assessment_when_a_variant_changes_the_learners_minibatch():
    """A variant whose learner fine-tunes on minibatches of 16 (the experiment's: 32) trains its
    fresh models as the experiment does once ``assess_config`` holds the experiment's config: the
    same metrics to the bit, on the same images; without it the assessment follows the variant."""
    from autosim_jax.experiments import make_assessor

    setup = _build("digits-sim2real", "glyphs", 0)
    psi = setup.simulator.distribution.init()
    experiment = setup.base_config()  # the experiment's own options (its cpu learner runs minibatches of 8)
    assert experiment.batch_size == 32 and setup.config.batch_size == 8
    small = experiment.replace(dataset_size=128, batch_size=16)
    def assess(s):  # 2 models: their training losses are reported (the metrics sit at chance this early)
        return make_assessor(s, num_images=128, epochs=2, repeats=2)(psi, 0)

    base = assess(setup._replace(config=experiment, assess_config=None))
    assert assess(setup) == base  # the preset's own learner options do not reach its assessment
    assert assess(setup._replace(config=small, assess_config=experiment)) == base
    followed = assess(setup._replace(config=small, assess_config=None))
    assert followed["train_losses"] != base["train_losses"]  # 8 Adam steps an epoch instead of 4: other models


def test_a_diverged_fresh_model_is_left_out_named_and_warned_about(monkeypatch):
    """A repeat whose training ends far above its siblings' loss (here: its finetune made to
    return the untrained theta with a 10x loss) does not enter the means; the lists keep it."""
    import autosim_jax.experiments as ex

    setup = _build("digits-sim2real", "glyphs", 0)
    psi = setup.simulator.distribution.init()
    healthy = ex.make_assessor(setup, num_images=256, epochs=1)(psi, 3)
    make_inner, calls = ex.make_inner, []

    def failing_second_model(*args, **kwargs):
        inner = make_inner(*args, **kwargs)

        def finetune(theta, opt_state, inputs, labels, key):
            theta_new, opt_new, loss = inner.finetune(theta, opt_state, inputs, labels, key)
            calls.append(None)
            return (theta, opt_state, 10 * loss) if len(calls) == 2 else (theta_new, opt_new, loss)

        return inner._replace(finetune=finetune)

    monkeypatch.setattr(ex, "make_inner", failing_second_model)
    with pytest.warns(ex.DivergedAssessmentWarning, match=r"fresh model\(s\) \[1\] of 2"):
        out = ex.make_assessor(setup, num_images=256, epochs=1, repeats=2)(psi, 3)
    assert out["diverged_models"] == [1]
    assert out["test_metric"] == pytest.approx(healthy["test_metric"], abs=1e-6)  # model 0 alone
    assert out["test_metric_std"] == 0.0 and len(out["test_metrics"]) == 2
    assert out["train_losses"][1] > 2 * out["train_losses"][0]


def test_a_collapsed_fresh_model_is_told_from_a_slow_one():
    """The clevr-seg cases of docs/learning.md (session 21): a model at the untrained metric with
    a loss a fifth of the way back is left out; one that trained slower (its metric near its
    siblings') is kept; so is every model where none beat the untrained one, and the metric's
    direction is honoured."""
    from autosim_jax.experiments import _trained

    losses = np.array([0.332, 0.051, 0.046, 0.052])
    metrics = np.array([0.009, 0.486, 0.486, 0.478])
    assert _trained(losses, 1.41).tolist() == [True] * 4  # the loss alone does not tell it
    assert _trained(losses, 1.41, metrics, 0.023).tolist() == [False, True, True, True]
    slow = np.array([0.37, 0.40, 0.50, 0.49])
    assert _trained(np.array([0.493, 0.074, 0.048, 0.056]), 1.41, slow, 0.023).all()
    assert _trained(losses, 1.41, np.full(4, 0.02), 0.023).all()  # nobody trained: the data's doing
    # a lower-is-better metric (an error rate): the collapsed model sits at the untrained error
    assert _trained(losses, 1.41, 1 - metrics, 1 - 0.023, higher_is_better=False).tolist() == [False, True, True, True]


def test_a_model_at_the_untrained_metric_is_collapsed_at_any_loss_twice_the_lowest():
    """Sessions 55-56 (clevr-seg gpu): a background-only segmenter (mIoU 0.2389, the untrained
    model's 0.2427) with a loss of 0.108 beside 0.041, a twentieth of the way back to 1.36. The
    tenth alone kept it; at or below the untrained metric it is left out, while a model that
    learned something at the same losses, or one at the untrained metric with a loss under 2x the
    lowest, is kept, and so is every model where no sibling learned."""
    from autosim_jax.experiments import _trained

    losses, seg = np.array([0.108, 0.041]), dict(untrained=1.36, untrained_metric=0.2427)
    assert _trained(losses, metrics=np.array([0.2389, 0.3190]), **seg).tolist() == [False, True]
    assert _trained(losses, metrics=np.array([0.2900, 0.3190]), **seg).tolist() == [True, True]  # learned: kept
    assert _trained(np.array([0.070, 0.041]), metrics=np.array([0.2389, 0.3190]), **seg).all()  # under 2x
    assert _trained(losses, metrics=np.array([0.2389, 0.2410]), **seg).all()  # no sibling beat the untrained
    # lower is better: at or above the untrained error
    assert _trained(losses, metrics=1 - np.array([0.2389, 0.3190]), untrained=1.36, untrained_metric=1 - 0.2427,
                    higher_is_better=False).tolist() == [False, True]


def test_the_assessor_judges_its_models_by_the_untrained_models_loss_and_metric(monkeypatch):
    """make_assessor hands ``_trained`` every model's loss and validation metric, the untrained
    model's first-minibatch loss and its validation metric (measured once), and the task's
    direction."""
    import autosim_jax.experiments as ex
    from autosim_jax.inner import make_inner

    setup = _build("digits-sim2real", "glyphs", 0)
    seen = []

    def spy(losses, untrained, metrics=None, untrained_metric=None, higher_is_better=True):
        seen.append((losses, untrained, metrics, untrained_metric, higher_is_better))
        return np.ones(len(losses), bool)

    monkeypatch.setattr(ex, "_trained", spy)
    assess = ex.make_assessor(setup, num_images=64, epochs=1, repeats=2)
    psi = setup.simulator.distribution.init()
    out = assess(psi, 0)
    assess(psi, 4)  # a second call: it must see the same untrained metric (measured once)
    losses, untrained, metrics, untrained_metric, higher = seen[0]
    assert (losses.tolist() == pytest.approx(out["train_losses"])
            and metrics.tolist() == pytest.approx(out["val_metrics"]))
    inner = make_inner(setup.simulator, setup.model, setup.task, optimizer=setup.config.inner_optax(), dataset_size=64,
                       batch_size=setup.config.batch_size, epochs=1, val_batch_size=setup.config.val_batch_size)
    assert untrained_metric == pytest.approx(float(inner.measure(inner.theta0, *setup.val_data)[1]), abs=1e-6)
    assert np.isfinite(untrained) and untrained > max(out["train_losses"])
    assert higher is setup.task.higher_is_better and seen[1][3] == untrained_metric


def test_a_segmenters_floor_is_the_better_of_the_untrained_model_and_a_constant_prediction(monkeypatch):
    """Session 58: seed 0's UNet scores mIoU 0.023 untrained, below the background everywhere (0.2389 at
    gpu size), so a background-only model beat that floor and was kept; make_assessor now hands
    ``_trained`` the better of the two, here the constant prediction's (every class tried)."""
    import autosim_jax.experiments as ex

    setup = _build("clevr-seg", "clevr", 0)
    labels = np.asarray(setup.val_data[1])
    constant = ex.constant_prediction_metric(setup.task, labels)
    by_class = []
    for c in range(4):  # the mIoU of predicting class c everywhere, from the confusion counts by hand
        iou = [np.sum((labels == k) & (c == k)) / np.sum((labels == k) | (c == k)) for k in range(4)]
        by_class.append(np.mean(iou))
    assert constant == pytest.approx(max(by_class), abs=1e-6) and int(np.argmax(by_class)) == 0  # the background
    seen = []
    monkeypatch.setattr(ex, "_trained", lambda losses, untrained, metrics=None, untrained_metric=None,
                        higher_is_better=True: seen.append(untrained_metric) or np.ones(len(losses), bool))
    monkeypatch.setattr(ex, "constant_prediction_metric", lambda task, y: 0.99)  # above any untrained model
    ex.make_assessor(setup, num_images=16, epochs=1, repeats=2)(setup.simulator.distribution.init(), 0)
    assert seen == [0.99]


def test_assessor_trains_on_the_mixture_of_a_list_of_psi(monkeypatch):
    """A list of psi (a run's trajectory) is assessed on the equal mixture of its members,
    rendered once per repeat with the assessment's whole budget."""
    from autosim_jax.experiments import make_assessor
    from autosim_jax.simulator import Simulator

    setup = _build("digits-sim2real", "glyphs", 0)
    start, reference = setup.simulator.distribution.init(), setup.reference_psi
    calls, mixture = [], Simulator.simulate_mixture

    def spy(self, key, psis, n):
        calls.append((len(psis), n))
        return mixture(self, key, psis, n)

    monkeypatch.setattr(Simulator, "simulate_mixture", spy)
    assess = make_assessor(setup, num_images=128, epochs=1)
    got = assess([start, reference, reference], 0)
    assert calls == [(3, 128)]  # traced once: the 3-member mixture of 128 images
    assert got == assess([start, reference, reference], 0) and 0.0 <= got["test_metric"] <= 1.0
    assert got != assess(start, 0)


def test_clevr_seg_gpu_preset_is_k64_with_the_k256_assessment():
    """Session 60: the clevr-seg gpu preset renders K = 64 a step (4 epochs on minibatches of 16: the
    16 Adam steps of K = 256's 2 epochs on 32) for 480 steps with the psi step decaying over 30, while
    the fresh models that assess a psi and the baselines keep K = 256's options (``assess_config``),
    so that the head to head's start, reference and baselines stay those of the committed records.
    Built at 16 px (``image_size`` keeps the rest of the size's setting, and no option checked here
    depends on it): the test took 29 s with the 64 px build, 10 s with this one (session 75)."""
    setup = build_clevr_seg(size="gpu", image_size=16)
    c, k256 = setup.config, setup.base_config()
    assert (c.dataset_size, c.batch_size, c.finetune_epochs, c.outer_decay_steps, setup.iterations) == (64, 16, 4, 30,
                                                                                                       480)
    assert (k256.dataset_size, k256.batch_size, k256.finetune_epochs, k256.outer_decay_steps) == (256, 32, 2, 60)
    assert (c.finetune_epochs * c.dataset_size // c.batch_size
            == k256.finetune_epochs * k256.dataset_size // k256.batch_size)
    assert c == k256.replace(dataset_size=64, batch_size=16, finetune_epochs=4, outer_decay_steps=30)
    assert setup.baseline_evaluation == (1024, 8)


def test_clevr_seg_cpu_preset_is_k64_with_the_k256_assessment():
    """Session 61, as at gpu size: the clevr-seg cpu preset renders K = 64 a step (16 epochs on
    minibatches of 16: K = 256's 64 Adam steps a psi step) for 160 steps (K = 256's 10,240 images)
    with the psi step decaying over 30, while the fresh models and the baselines keep K = 256's
    options, so that the cpu head to head's start, reference and baselines stay the committed ones."""
    setup = build_clevr_seg(size="cpu")
    c, k256 = setup.config, setup.base_config()
    assert (c.dataset_size, c.batch_size, c.finetune_epochs, c.outer_decay_steps, setup.iterations) == (64, 16, 16, 30,
                                                                                                       160)
    assert (k256.dataset_size, k256.batch_size, k256.finetune_epochs, k256.outer_decay_steps) == (256, 16, 4, 0)
    assert c.dataset_size * setup.iterations == 256 * 40
    assert (c.finetune_epochs * c.dataset_size // c.batch_size
            == k256.finetune_epochs * k256.dataset_size // k256.batch_size)
    assert c == k256.replace(dataset_size=64, finetune_epochs=16, outer_decay_steps=30)
    assert (setup.assess_images, setup.assess_epochs, setup.baseline_evaluation) == (2048, 10, (2048, 10))
