"""The detection task's smooth stand-in for mAP@0.5 (``val_objective="metric_surrogate"``): its value on
outputs whose answer is known, its additivity over batches, and its two-pass hypergradient input
against autodiff of the whole validation set in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from autosim_jax import Simulator, from_schema
from autosim_jax.detection import (
    centernet,
    detection_task,
    perfect_outputs,
    soft_detection_loss,
    soft_detection_stats,
)
from autosim_jax.inner import make_inner, sum_over_batches
from autosim_jax.renderers.glyphs_det import DigitCanvasRenderer

# two images of 16 x 16, classes 0 and 1 both present, one padding row
LABELS = jnp.array([[[0, 2.0, 2.0, 8.0, 10.0, 1.0], [1, 9.0, 6.0, 15.0, 14.0, 1.0]],
                    [[1, 4.0, 3.0, 12.0, 9.0, 1.0], [0, 0.0, 0.0, 0.0, 0.0, 0.0]]])


def loss(outputs, labels=LABELS):
    return float(soft_detection_loss(soft_detection_stats(outputs, labels, 2)))


def test_perfect_outputs_score_zero_and_an_untrained_detector_nearly_one():
    perfect = perfect_outputs(LABELS, 2, size=16)
    assert loss(perfect) == pytest.approx(0.0, abs=1e-6)
    # zero outputs: every pixel at the prior's sigmoid(-4) = 0.018, boxes of size e^0 = 1 px
    assert loss(jnp.zeros_like(perfect)) > 0.95


def test_box_term_is_the_iou_of_centred_boxes():
    """Width predicted twice the box's, height right: IoU 1/2 for each box; the heatmap term is untouched."""
    out = perfect_outputs(LABELS, 2, size=16)
    out = out.at[..., 2].add(jnp.log(2.0))  # channel K = 2: the log width, everywhere
    stats = soft_detection_stats(out, LABELS, 2)
    assert float(stats[1, -1]) == 3.0  # valid boxes
    assert float(stats[0, -1]) == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_allclose(np.asarray(stats[:, :2]), np.asarray(soft_detection_stats(
        perfect_outputs(LABELS, 2, size=16), LABELS, 2)[:, :2]), rtol=1e-6)
    assert loss(out) == pytest.approx(0.5, rel=1e-6)


def test_a_peak_of_the_wrong_class_or_place_costs_its_class():
    """The second image's box given to class 0 instead of 1: class 0 gains a false peak (1 true of 2 peaks, soft
    IoU 1/2) and class 1 misses one of its 2 centres (1/2); the boxes stay right, so the loss is 1 - 1/2."""
    wrong = LABELS.at[1, 0, 0].set(0.0)
    out = perfect_outputs(wrong, 2, size=16)
    stats = soft_detection_stats(out, LABELS, 2)
    np.testing.assert_allclose(np.asarray(stats[0, :2] / stats[1, :2]), [1 / 2, 1 / 2], rtol=1e-6)
    assert loss(out) == pytest.approx(0.5, rel=1e-6)


def test_statistics_add_over_batches():
    out = jax.random.normal(jax.random.key(0), (2, 16, 16, 6))
    whole = soft_detection_stats(out, LABELS, 2)
    halves = soft_detection_stats(out[:1], LABELS[:1], 2) + soft_detection_stats(out[1:], LABELS[1:], 2)
    np.testing.assert_allclose(np.asarray(halves), np.asarray(whole), rtol=1e-6)
    summed = sum_over_batches(lambda o, y: soft_detection_stats(o, y, 2), out, LABELS, 1)
    np.testing.assert_allclose(np.asarray(summed), np.asarray(whole), rtol=1e-6)


def test_metric_surrogate_gradient_equals_autodiff_of_the_whole_set(x64):
    """make_inner's two-pass minibatched gradient of the detection surrogate (3 batches of 2 and a remainder)
    equals jax.grad of the same function of all 7 validation images at once, in float64; a step along its
    negative lowers the surrogate."""
    renderer = DigitCanvasRenderer(image_size=16)
    sim = Simulator(from_schema(renderer.schema), renderer)
    task = detection_task(10)
    model = centernet(1, 10, 4, rngs=nnx.Rngs(0))
    common = dict(optimizer=optax.sgd(0.1), dataset_size=8, batch_size=8, epochs=1, val_batch_size=2)
    inner = make_inner(sim, model, task, val_objective="metric_surrogate", **common)
    x, y = sim.simulate(jax.random.key(1), sim.distribution.init(), 7)[1:]
    theta = jax.tree.map(lambda a: a.astype(jnp.float64), inner.theta0)

    @jax.jit  # one program, not hundreds of eagerly compiled primitives (the test 21.5 s -> 8 s alone)
    def whole(t):
        return task.surrogate_loss(task.surrogate_stats(inner.predict(t, x), y))

    reference = jax.grad(whole)(theta)  # differentiates the jitted program
    _, g = inner.measure_and_grad(theta, x, y)
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(g)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-8, atol=1e-14)
    norm2 = sum(float(jnp.sum(a * a)) for a in jax.tree.leaves(g))
    assert norm2 > 0
    stepped = jax.tree.map(lambda t, d: t - 1e-3 / np.sqrt(norm2) * d, theta, g)
    assert float(whole(stepped)) < float(whole(theta))
