"""The shared inner stages: minibatched validation equals one batch, in float64, for the loss's
gradient and for the metric surrogate's (``val_objective="metric_surrogate"``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from autosim_jax import Field, OutputSpec, SceneSchema, Simulator, from_schema
from autosim_jax.inner import make_inner, sum_over_batches
from autosim_jax.models import UNet
from autosim_jax.tasks import Task, classification_task, segmentation_task
from autosim_jax.trainable import make_partition


class _Pixels:
    """A 'renderer' of 8x8 three-channel images whose pixel classes follow the light."""

    name = "pixels"
    schema = SceneSchema((Field.continuous("light", 0.0, 1.0),))
    inputs_spec = OutputSpec((8, 8, 3), np.float32)
    labels_spec = OutputSpec((8, 8), np.int32, num_classes=4)

    def render(self, scenes, seed):
        rng = np.random.default_rng(seed)
        x = (rng.random((len(scenes["light"]), 8, 8, 3)) * scenes["light"][:, None, None, None]).astype(np.float32)
        return x, (x.sum(-1) * 4 / 3).astype(np.int32).clip(0, 3)


@pytest.mark.parametrize("val_batch_size", [1, 3])
def test_minibatched_validation_equals_one_batch(x64, val_batch_size):
    """g_val, the loss and the mIoU (from summed confusion matrices) of 10 validation images in
    batches of 1 and of 3 (a remainder of 1) equal the one-batch values."""
    sim = Simulator(from_schema(_Pixels.schema), _Pixels())
    model = UNet(in_channels=3, num_classes=4, base_channels=4, rngs=nnx.Rngs(0))
    task = segmentation_task(4)
    common = dict(optimizer=optax.sgd(0.1), dataset_size=8, batch_size=8, epochs=1)
    one = make_inner(sim, model, task, **common)
    mini = make_inner(sim, model, task, val_batch_size=val_batch_size, **common)
    x, y = sim.render_numpy({"light": np.linspace(0.1, 1.0, 10)}, seed=0)
    theta = jax.tree.map(lambda a: a.astype(jnp.float64), one.theta0)
    (l1, m1), g1 = one.measure_and_grad(theta, x, y)
    (l2, m2), g2 = mini.measure_and_grad(theta, x, y)
    assert float(l2) == pytest.approx(float(l1), rel=1e-12) and float(m2) == pytest.approx(float(m1), rel=1e-12)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(mini.measure(theta, x, y)), np.asarray((l1, m1)), rtol=1e-12)


@pytest.mark.parametrize("val_batch_size", [None, 3])  # 3: three batches and a remainder of 1
def test_metric_surrogate_gradient_equals_autodiff_of_the_whole_set(x64, val_batch_size):
    """The two-pass minibatched gradient of 1 - soft mIoU equals jax.grad of the same function
    of all 10 images at once (the independent reference), with all parameters trainable and with
    the decoder's only; the loss and mIoU it reports are those of val_objective='loss'."""
    sim = Simulator(from_schema(_Pixels.schema), _Pixels())
    model = UNet(in_channels=3, num_classes=4, base_channels=4, rngs=nnx.Rngs(0))
    task = segmentation_task(4)
    common = dict(optimizer=optax.sgd(0.1), dataset_size=8, batch_size=8, epochs=1, val_batch_size=val_batch_size)
    x, y = sim.render_numpy({"light": np.linspace(0.1, 1.0, 10)}, seed=0)
    theta = jax.tree.map(lambda a: a.astype(jnp.float64), make_inner(sim, model, task, **common).theta0)
    for partition in (None, make_partition(theta, "dec")):
        inner = make_inner(sim, model, task, val_objective="metric_surrogate", partition=partition, **common)
        point, restrict = (theta, lambda f: f) if partition is None else (
            partition.split(theta)[0], lambda f: partition.restrict(f, partition.split(theta)[1]))
        whole = restrict(lambda t, x, y: task.surrogate_loss(task.surrogate_stats(inner.predict(t, x), y)))
        reference = jax.jit(jax.grad(whole))(point, jnp.asarray(x), jnp.asarray(y))  # one program, not eager ops
        (loss, metric), g = inner.measure_and_grad(theta, x, y)
        assert jax.tree.structure(g) == jax.tree.structure(reference)
        for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(g)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-13)
        assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g)) > 1e-6  # not a zero gradient
        (l0, m0), _ = make_inner(sim, model, task, partition=partition, **common).measure_and_grad(theta, x, y)
        assert (float(loss), float(metric)) == pytest.approx((float(l0), float(m0)), rel=1e-12)


def test_soft_iou_is_the_hard_iou_for_confident_logits_and_soft_accuracy_adds_up():
    """With one-hot logits the soft mIoU is the mIoU; the soft accuracy's statistics add up over
    batches to the one-batch mean probability of the right class."""
    task = segmentation_task(3)
    labels = jax.random.randint(jax.random.key(1), (4, 5, 5), 0, 3)
    pred = jax.random.randint(jax.random.key(2), (4, 5, 5), 0, 3)
    confident = 60.0 * jax.nn.one_hot(pred, 3)
    assert 1.0 - float(task.surrogate_loss(task.surrogate_stats(confident, labels))) == pytest.approx(
        float(task.metric(confident, labels)), abs=1e-6)
    cls = classification_task()
    logits, y = jax.random.normal(jax.random.key(0), (11, 5)), jnp.arange(11) % 5
    summed = sum_over_batches(cls.surrogate_stats, logits, y, 4)
    expected = 1.0 - jnp.mean(jax.nn.softmax(logits)[jnp.arange(11), y])
    assert float(cls.surrogate_loss(summed)) == pytest.approx(float(expected), rel=1e-6)


def test_metric_surrogate_needs_a_task_that_has_one():
    sim = Simulator(from_schema(_Pixels.schema), _Pixels())
    model = UNet(in_channels=3, num_classes=4, base_channels=4, rngs=nnx.Rngs(0))
    seg = segmentation_task(4)
    bare = Task(seg.per_sample_loss, seg.metric_stats, seg.metric_from_stats, "mIoU")
    common = dict(optimizer=optax.sgd(0.1), dataset_size=8, batch_size=8, epochs=1)
    with pytest.raises(ValueError, match=r"'mIoU' has none.*Task.surrogate_stats"):
        make_inner(sim, model, bare, val_objective="metric_surrogate", **common)
    with pytest.raises(ValueError, match=r"Unknown val_objective 'miou'.*'loss', 'metric_surrogate'"):
        make_inner(sim, model, seg, val_objective="miou", **common)


def test_accuracy_statistics_add_up_over_batches():
    task = classification_task()
    logits = jax.random.normal(jax.random.key(0), (11, 5))
    labels = jnp.arange(11) % 5
    summed = sum_over_batches(task.metric_stats, logits, labels, 4)
    assert float(task.metric_from_stats(summed)) == pytest.approx(float(task.metric(logits, labels)))


def test_inner_clip_norm_clips_each_gradient_before_the_optimiser():
    """inner_clip_norm=c scales a gradient of global norm > c down to norm c (optax's
    clip_by_global_norm), then the configured optimiser steps; 0 leaves it alone."""
    from autosim_jax import AutoSimConfig

    grads = {"w": jnp.array([3.0, 4.0])}  # global norm 5
    params = {"w": jnp.zeros(2)}
    for clip, expected in ((0.0, [-3.0, -4.0]), (1.0, [-0.6, -0.8]), (10.0, [-3.0, -4.0])):
        opt = AutoSimConfig(inner_optimizer="sgd", inner_learning_rate=1.0, inner_clip_norm=clip).inner_optax()
        updates, _ = opt.update(grads, opt.init(params), params)
        np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"inner_clip_norm must be >= 0"):
        AutoSimConfig(inner_clip_norm=-1.0)
