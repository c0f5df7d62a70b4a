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

import functools
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
    cm = confusion_matrix(pred, labels, num_classes)
    inter = jnp.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    present = union > 0
    iou = jnp.where(present, inter / jnp.maximum(union, 1), 0.0)
    return iou.sum() / present.sum()


class Task(NamedTuple):
    """A training loss and a validation metric that go together."""

    per_sample_loss: Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> [N]
    metric: Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> scalar
    metric_name: str
    higher_is_better: bool = True


def segmentation_task(num_classes: int) -> Task:
    """Per-pixel cross-entropy to train, mean IoU over ``num_classes`` to validate.

    Example:
      >>> task = segmentation_task(4)
      >>> task.metric_name, task.higher_is_better
      ('mIoU', True)
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    return Task(pixel_cross_entropy, functools.partial(mean_iou, num_classes=num_classes), "mIoU")


def classification_task() -> Task:
    """Cross-entropy to train, accuracy to validate.

    Example:
      >>> classification_task().metric_name
      'accuracy'
    """
    return Task(cross_entropy, accuracy, "accuracy")
