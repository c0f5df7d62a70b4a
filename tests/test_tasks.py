"""Losses and metrics against hand-computed values, numpy references and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autosim_jax import tasks



def _numpy_miou(pred, labels, num_classes):
    """Reference mIoU: a Python loop over classes, skipping classes absent from both arrays."""
    ious = []
    for k in range(num_classes):
        inter = np.sum((pred == k) & (labels == k))
        union = np.sum((pred == k) | (labels == k))
        if union > 0:
            ious.append(inter / union)
    return np.mean(ious)


def test_mean_iou_hand_computed():
    labels = jnp.array([[[0, 0, 1], [1, 2, 2]]])  # (1, 2, 3)
    pred = jnp.array([[[0, 1, 1], [1, 2, 0]]])
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2;
    # class 3 absent from both and excluded.
    expected = (1 / 3 + 2 / 3 + 1 / 2) / 3
    assert float(tasks.mean_iou(pred, labels, num_classes=4)) == pytest.approx(expected, rel=1e-6)
    logits = jax.nn.one_hot(pred, 4) * 5.0  # argmax of the logits is pred
    assert float(tasks.mean_iou(logits, labels, num_classes=4)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_iou_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=(3, 7, 6))  # class 4 never appears in the labels
    logits = rng.normal(size=(3, 7, 6, 5))
    got = tasks.mean_iou(jnp.asarray(logits), jnp.asarray(labels), num_classes=5)
    want = _numpy_miou(logits.argmax(-1), labels, 5)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    cm = tasks.confusion_matrix(jnp.asarray(logits.argmax(-1)), jnp.asarray(labels), 5)
    want_cm = np.zeros((5, 5), int)
    np.add.at(want_cm, (labels.ravel(), logits.argmax(-1).ravel()), 1)
    np.testing.assert_array_equal(cm, want_cm)


def test_mean_iou_perfect_and_ignored_labels():
    labels = jnp.array([[0, 1], [3, 3]])
    assert float(tasks.mean_iou(jax.nn.one_hot(labels, 4), labels, num_classes=4)) == 1.0
    # A void label (255) counts nowhere, whatever is predicted there.
    with_void = jnp.array([[0, 1], [3, 255]])
    assert float(tasks.mean_iou(jnp.array([[0, 1], [3, 2]]), with_void, num_classes=4)) == 1.0
    assert np.isnan(float(tasks.mean_iou(jnp.zeros(3, int), jnp.full(3, 255), num_classes=4)))


def test_accuracy():
    labels = jnp.array([0, 1, 2, 2])
    logits = jnp.array([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 0, 3.0]])
    assert float(tasks.accuracy(logits, labels)) == 0.75
    assert float(tasks.accuracy(jax.nn.one_hot(labels, 3), labels)) == 1.0
    assert float(tasks.accuracy(jnp.array([0, 1, 1, 2]), labels)) == 0.75  # integer predictions
    rng = np.random.default_rng(0)
    seg_logits, seg_labels = rng.normal(size=(2, 5, 5, 3)), rng.integers(0, 3, (2, 5, 5))
    got = tasks.accuracy(jnp.asarray(seg_logits), jnp.asarray(seg_labels))
    np.testing.assert_allclose(float(got), np.mean(seg_logits.argmax(-1) == seg_labels), rtol=1e-6)


def test_pixel_cross_entropy_matches_optax(x64):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 4, 5, 6)))
    labels = jnp.asarray(rng.integers(0, 6, (3, 4, 5)))
    got = tasks.pixel_cross_entropy(logits, labels)
    assert got.shape == (3,)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(got, per_pixel.reshape(3, -1).mean(axis=1), rtol=1e-12)


def test_cross_entropy_matches_optax(x64):
    rng = np.random.default_rng(1)
    logits, labels = jnp.asarray(rng.normal(size=(7, 10))), jnp.asarray(rng.integers(0, 10, 7))
    want = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(tasks.cross_entropy(logits, labels), want, rtol=1e-12)


def test_jit_and_vmap():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(4, 2, 6, 6, 3)), jnp.float32)  # 4 batches of 2 images
    labels = jnp.asarray(rng.integers(0, 3, (4, 2, 6, 6)))
    task = tasks.segmentation_task(3)
    losses = jax.jit(jax.vmap(task.per_sample_loss))(logits, labels)
    metrics = jax.jit(jax.vmap(task.metric))(logits, labels)
    assert losses.shape == (4, 2) and metrics.shape == (4,)
    for b in range(4):
        want_loss = tasks.pixel_cross_entropy(logits[b], labels[b])
        want_miou = _numpy_miou(np.argmax(logits[b], -1), np.asarray(labels[b]), 3)
        np.testing.assert_allclose(losses[b], want_loss, rtol=1e-6)
        np.testing.assert_allclose(metrics[b], want_miou, rtol=1e-6)
    jitted = jax.jit(tasks.mean_iou, static_argnames="num_classes")
    np.testing.assert_allclose(jitted(logits[0], labels[0], num_classes=3), metrics[0], rtol=1e-6)


def test_tasks_bundle():
    seg, cls = tasks.segmentation_task(4), tasks.classification_task()
    assert (seg.metric_name, seg.higher_is_better) == ("mIoU", True)
    assert (cls.metric_name, cls.higher_is_better) == ("accuracy", True)
    assert cls.per_sample_loss(jnp.zeros((3, 10)), jnp.arange(3)).shape == (3,)
    labels = jnp.array([[[0, 1], [2, 3]]])
    assert float(seg.metric(jax.nn.one_hot(labels, 4), labels)) == 1.0
    with pytest.raises(ValueError, match="num_classes"):
        tasks.segmentation_task(0)


@pytest.mark.parametrize(
    "fn, logits_shape, labels_shape",
    [
        (tasks.pixel_cross_entropy, (2, 4, 4, 3), (2, 4, 5)),
        (tasks.pixel_cross_entropy, (2, 4, 4, 3), (2, 4, 4, 3)),
        (tasks.cross_entropy, (5, 10), (4,)),
        (tasks.cross_entropy, (5, 10), (5, 1)),
        (tasks.accuracy, (5, 10), (4,)),
        (lambda lg, y: tasks.mean_iou(lg, y, 3), (2, 4, 4, 3), (2, 4)),
    ],
)
def test_shape_mismatch_names_both_shapes(fn, logits_shape, labels_shape):
    with pytest.raises(ValueError) as err:
        fn(jnp.zeros(logits_shape), jnp.zeros(labels_shape, int))
    assert str(logits_shape) in str(err.value) and str(labels_shape) in str(err.value)


def test_float_labels_and_predictions_are_refused():
    with pytest.raises(ValueError, match="integer"):
        tasks.cross_entropy(jnp.zeros((3, 4)), jnp.zeros(3))
    with pytest.raises(ValueError, match="integers"):
        tasks.accuracy(jnp.zeros(3), jnp.zeros(3, int))


def test_num_classes_of_the_tasks():
    assert tasks.segmentation_task(4).num_classes == 4
    assert tasks.classification_task().num_classes is None
    assert tasks.classification_task(10).num_classes == 10
    plain = tasks.Task.from_per_sample(lambda o, y: (o - y) ** 2, lambda o, y: -((o - y) ** 2), "neg_mse")
    assert plain.num_classes is None and plain.higher_is_better
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="num_classes must be a positive int or None"):
            tasks.classification_task(bad)
    with pytest.raises(ValueError, match=r"num_classes must be a positive int, got None"):
        tasks.segmentation_task(None)
