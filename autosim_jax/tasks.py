"""Training losses and validation metrics of the two tasks, as pure jit-able functions.

* segmentation (CLEVR): :func:`pixel_cross_entropy` to train, :func:`mean_iou` to validate;
* classification (digits): :func:`cross_entropy` to train, :func:`accuracy` to validate.

Losses are per sample (shape ``[N]``): the REINFORCE and directional-derivative estimators
need one loss per simulated scene; take ``.mean()`` for the training objective. A
:class:`Task` bundles a loss with its metric; build one with :func:`segmentation_task` or
:func:`classification_task`. Shapes are checked at trace time and a mismatch raises a
``ValueError`` naming both shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

_SHAPE_MISMATCH = (
    "{fn}: logits of shape {logits} do not match labels of shape {labels}; expected logits "
    "{expect} and integer labels of the same shape without the last (class) axis."
)
_PRED_NOT_INT = (
    "{fn}: got predictions of shape {shape} and dtype {dtype}, the shape of the labels, so they are "
    "read as class predictions, which must be integers. Pass logits (*batch, num_classes) or "
    "jnp.argmax(logits, -1)."
)


def _check_logits(fn: str, logits: jax.Array, labels: jax.Array, batch_ndim: int) -> None:
    """Raises a ValueError unless logits are ``labels.shape + (C,)``, ``batch_ndim`` batch axes."""
    lshape, yshape = jnp.shape(logits), jnp.shape(labels)
    if len(yshape) != batch_ndim or len(lshape) != batch_ndim + 1 or lshape[:-1] != yshape:
        expect = "(N, H, W, C)" if batch_ndim == 3 else "(N, C)"
        raise ValueError(_SHAPE_MISMATCH.format(fn=fn, logits=lshape, labels=yshape, expect=expect))
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        dtype = jnp.result_type(labels)
        raise ValueError(f"{fn}: labels must be integer class indices, got dtype {dtype}.")


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of each image, averaged over its pixels.

    Args:
      logits: ``(N, H, W, C)`` per-pixel class scores.
      labels: ``(N, H, W)`` integer classes in ``[0, C)``.

    Returns:
      ``(N,)`` per-image mean over the ``H * W`` pixels.

    Example:
      >>> import jax.numpy as jnp
      >>> pixel_cross_entropy(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 4), int)).shape
      (2,)
    """
    _check_logits("pixel_cross_entropy", logits, labels, batch_ndim=3)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(axis=(1, 2))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of each example.

    Args:
      logits: ``(N, C)`` class scores.
      labels: ``(N,)`` integer classes in ``[0, C)``.

    Returns:
      ``(N,)`` per-example losses.

    Example:
      >>> import jax.numpy as jnp
      >>> cross_entropy(jnp.zeros((3, 10)), jnp.arange(3)).shape
      (3,)
    """
    _check_logits("cross_entropy", logits, labels, batch_ndim=1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _predictions(fn: str, logits_or_pred: jax.Array, labels: jax.Array) -> jax.Array:
    """Integer predictions shaped like ``labels``: argmax of logits, or the predictions as given."""
    pshape, yshape = jnp.shape(logits_or_pred), jnp.shape(labels)
    if pshape == yshape:
        dtype = jnp.result_type(logits_or_pred)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(_PRED_NOT_INT.format(fn=fn, shape=pshape, dtype=dtype))
        return logits_or_pred
    if len(pshape) != len(yshape) + 1 or pshape[:-1] != yshape:
        raise ValueError(
            f"{fn}: logits or predictions of shape {pshape} do not match labels of shape {yshape}; "
            f"expected logits {yshape + ('num_classes',)} or integer predictions {yshape}."
        )
    return jnp.argmax(logits_or_pred, axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of correct predictions over all of ``labels`` (examples, or pixels).

    Args:
      logits: ``(*batch, C)`` class scores, or integer predictions ``(*batch,)``.
      labels: ``(*batch,)`` integer classes.

    Returns:
      A scalar in ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(accuracy(jnp.array([[2.0, 0.0], [2.0, 0.0]]), jnp.array([0, 1])))
      0.5
    """
    pred = _predictions("accuracy", logits, labels)
    return jnp.mean(pred == labels)


def confusion_matrix(pred: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Counts ``cm[i, j]`` of pixels (or examples) of true class ``i`` predicted as ``j``.

    Built as one contraction of one-hot encodings (int32, exact). Labels or predictions outside
    ``[0, num_classes)`` one-hot to zeros, so such pixels (e.g. a void label 255) count nowhere.

    Args:
      pred: integer predictions, any shape.
      labels: integer labels of the same shape.
      num_classes: number of classes ``K`` (static).

    Returns:
      ``(K, K)`` int32 counts.

    Example:
      >>> import jax.numpy as jnp
      >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), 2).tolist()
      [[1, 1], [0, 1]]
    """
    y = jax.nn.one_hot(jnp.ravel(labels), num_classes, dtype=jnp.int32)
    p = jax.nn.one_hot(jnp.ravel(pred), num_classes, dtype=jnp.int32)
    return jnp.einsum("ni,nj->ij", y, p, preferred_element_type=jnp.int32)


def mean_iou(logits_or_pred: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Mean intersection-over-union over the classes present, from one confusion matrix.

    .. math::
        \\mathrm{IoU}_k = \\frac{\\mathrm{cm}_{kk}}{\\sum_j \\mathrm{cm}_{kj}
        + \\sum_i \\mathrm{cm}_{ik} - \\mathrm{cm}_{kk}}, \\qquad
        \\mathrm{mIoU} = \\frac{1}{|P|} \\sum_{k \\in P} \\mathrm{IoU}_k

    where ``P`` is the set of classes that appear in the labels or in the prediction (union
    > 0); classes absent from both are excluded rather than scored 0 or 1. The confusion matrix
    pools every pixel of the batch (the dataset-level mIoU, not a mean of per-image mIoUs).
    Labels outside ``[0, num_classes)`` are ignored (see :func:`confusion_matrix`); if no pixel
    is left the result is NaN.

    Args:
      logits_or_pred: ``(*batch, num_classes)`` logits, or integer predictions ``(*batch,)``.
      labels: ``(*batch,)`` integer classes, e.g. ``(N, H, W)``.
      num_classes: number of classes ``K``; static under ``jax.jit``.

    Returns:
      A scalar in ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> pred, labels = jnp.array([0, 0, 1, 1]), jnp.array([0, 1, 1, 1])
      >>> round(float(mean_iou(pred, labels, num_classes=3)), 4)  # (1/2 + 2/3) / 2; no class 2
      0.5833
    """
    pred = _predictions("mean_iou", logits_or_pred, labels)
    return _iou_from_confusion(confusion_matrix(pred, labels, num_classes))


class Task(NamedTuple):
    """A training loss and a validation metric that go together.

    The metric is computed from *additive statistics* so that a validation set too large
    for one batch can be measured in minibatches with exactly the one-batch result:
    ``metric(logits, labels) = metric_from_stats(sum over batches of metric_stats(...))``
    (mIoU sums confusion matrices, accuracy sums correct counts and sizes).

    Attributes:
      per_sample_loss: ``(logits, labels) -> [N]`` training loss of each example.
      metric_stats: ``(logits, labels) -> array`` additive over batches.
      metric_from_stats: ``stats -> scalar``.
      metric_name: for logs and plots.
      higher_is_better: the metric's direction.
      num_classes: for a task whose labels are class indices into the last axis of the
        model's outputs, the number of classes ``C``;
        :func:`~autosim_jax.make_autosimulate` then checks that the validation labels lie in
        ``[0, C)`` and that the model outputs ``C`` scores (an out-of-range label gives a NaN
        loss, not an error, inside the step). ``None``: not declared; for integer labels and
        outputs shaped ``(*labels, C)`` the class count is then read from the model.
      surrogate_stats: ``(logits, labels) -> array``, additive over batches and differentiable:
        the statistics of a smooth stand-in for the metric (soft counts from the softmax
        probabilities instead of the argmax's hard ones). ``None``: the task has none.
      surrogate_loss: ``stats -> scalar`` to minimise, from the summed ``surrogate_stats``
        (e.g. ``1 -`` the soft mean IoU). With ``AutoSimConfig(val_objective="metric_surrogate")``
        the step's ``g_val`` is its gradient instead of the mean loss's
        (:func:`~autosim_jax.inner.make_inner`).

    Example:
      >>> import jax.numpy as jnp
      >>> task = Task.from_per_sample(lambda out, y: (out - y) ** 2, lambda out, y: -(out - y) ** 2, "neg_mse")
      >>> float(task.metric(jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0])))
      -2.0
    """

    per_sample_loss: Callable[[jax.Array, jax.Array], jax.Array]
    metric_stats: Callable[[jax.Array, jax.Array], jax.Array]
    metric_from_stats: Callable[[jax.Array], jax.Array]
    metric_name: str
    higher_is_better: bool = True
    num_classes: int | None = None
    surrogate_stats: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    surrogate_loss: Callable[[jax.Array], jax.Array] | None = None

    def metric(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """The metric of one batch."""
        return self.metric_from_stats(self.metric_stats(logits, labels))

    @classmethod
    def from_per_sample(cls, per_sample_loss, per_sample_metric, metric_name: str,
                        higher_is_better: bool = True, num_classes: int | None = None) -> Task:
        """A task whose metric is the mean of ``per_sample_metric(logits, labels) -> [N]``."""

        def stats(logits, labels):
            m = jnp.asarray(per_sample_metric(logits, labels), jnp.float32)
            return jnp.stack([jnp.sum(m), jnp.float32(m.size)])

        return cls(per_sample_loss, stats, lambda s: s[0] / s[1], metric_name, higher_is_better,
                   _check_num_classes(num_classes, allow_none=True))


def _iou_from_confusion(cm: jax.Array) -> jax.Array:
    inter = jnp.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    present = union > 0
    iou = jnp.where(present, inter / jnp.maximum(union, 1), 0.0)
    return iou.sum() / present.sum()


def soft_iou_stats(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``[2, C]``: per class, the soft intersection ``sum p * y`` and the soft union
    ``sum p + y - p * y`` over all pixels, with ``p`` the softmax probabilities and ``y`` the
    one-hot labels. Additive over batches and differentiable; with one-hot ``p`` they are the
    hard counts of :func:`mean_iou`.

    Example:
      >>> labels = jnp.array([[0, 1, 1]])
      >>> soft_iou_stats(100.0 * jax.nn.one_hot(labels, 2), labels).round(3).tolist()
      [[1.0, 2.0], [1.0, 2.0]]
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(_SHAPE_MISMATCH.format(fn="soft_iou_stats", logits=logits.shape, labels=labels.shape,
                                                expect=labels.shape + ("num_classes",)))
    p = jax.nn.softmax(logits, axis=-1)
    y = jax.nn.one_hot(labels, logits.shape[-1], dtype=p.dtype)
    axes = tuple(range(logits.ndim - 1))
    inter = jnp.sum(p * y, axes)
    return jnp.stack([inter, jnp.sum(p + y, axes) - inter])


def soft_iou_loss(stats: jax.Array) -> jax.Array:
    """``1 -`` the soft mean IoU over classes from summed :func:`soft_iou_stats`.

    Every class counts (the hard :func:`mean_iou` skips a class absent from both labels and
    predictions): a class absent from the labels has soft IoU 0 whatever the model does, so it
    shifts the loss by a constant and adds nothing to its gradient.

    Example:
      >>> float(soft_iou_loss(jnp.array([[1.0, 2.0], [1.0, 2.0]])))
      0.0
    """
    return 1.0 - jnp.mean(stats[0] / stats[1])


def segmentation_task(num_classes: int) -> Task:
    """Per-pixel cross-entropy to train, mean IoU over ``num_classes`` to validate; the soft
    mean IoU (:func:`soft_iou_stats`, :func:`soft_iou_loss`) as the metric's surrogate.

    Example:
      >>> task = segmentation_task(4)
      >>> task.metric_name, task.higher_is_better
      ('mIoU', True)
    """
    num_classes = _check_num_classes(num_classes, allow_none=False)

    def stats(logits, labels):
        return confusion_matrix(_predictions("mean_iou", logits, labels), labels, num_classes)

    return Task(pixel_cross_entropy, stats, _iou_from_confusion, "mIoU", num_classes=num_classes,
                surrogate_stats=soft_iou_stats, surrogate_loss=soft_iou_loss)


def classification_task(num_classes: int | None = None) -> Task:
    """Cross-entropy to train, accuracy to validate.

    Args:
      num_classes: the number of classes ``C`` (labels in ``[0, C)``), or ``None`` to read it
        from the model's output at :func:`~autosim_jax.make_autosimulate`.

    Example:
      >>> classification_task().metric_name
      'accuracy'
      >>> classification_task(10).num_classes
      10
    """

    def correct(logits, labels):
        return _predictions("accuracy", logits, labels) == labels

    def soft_correct(logits, labels):  # the probability of the right class: the soft accuracy's count
        p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), labels[..., None].astype(jnp.int32), -1)
        return jnp.stack([jnp.sum(p), jnp.asarray(p.size, p.dtype)])

    return Task.from_per_sample(cross_entropy, correct, "accuracy", num_classes=num_classes)._replace(
        surrogate_stats=soft_correct, surrogate_loss=lambda s: 1.0 - s[0] / s[1])


def _check_num_classes(num_classes, *, allow_none: bool) -> int | None:
    if num_classes is None and allow_none:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int{' or None' if allow_none else ''}, "
                         f"got {num_classes!r}.")
    return num_classes
