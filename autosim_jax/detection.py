r"""Object detection as an AutoSimulate task: a CenterNet head, its smooth loss, decoding and mAP@0.5.

The detector is the library's :class:`~autosim_jax.models.UNet` with ``K + 4`` output
channels (:func:`centernet`): per pixel, ``K`` class-heatmap logits, the log width and height
of a box centred there, and the sub-pixel offset of that centre (CenterNet, Zhou et al. 2019,
at output stride 1). Labels are the renderers' fixed-shape box rows ``(M, 6)`` = (class, x0,
y0, x1, y1, valid) in pixels (:data:`~autosim_jax.renderers.clevr.BOX_COLUMNS`).

**Loss** (:func:`centernet_loss`, per sample, dense and smooth): no NMS, no matching, no
``max`` over predictions, so that the Hessian and Gauss-Newton operators of
:mod:`autosim_jax.curvature` are well defined (the loss is convex in the network outputs,
hence the Gauss-Newton matrix is positive semi-definite):

.. math::
    \ell = \frac{1}{\max(1, n)} \Big[ \sum_{h,w,c} (1 + \alpha Y_{hwc})
    \,\mathrm{BCE}(z_{hwc} + b, Y_{hwc})
    + \lambda_s \sum_j \lVert s_{p_j} - \log(w_j, h_j) \rVert^2
    + \lambda_o \sum_j \lVert o_{p_j} - (c_j - p_j) \rVert^2 \Big]

with ``Y`` the Gaussian heatmap targets of the ``n`` valid boxes (``sigma = max(0.5,
sqrt(w h) / 6)``, exactly 1 at the pixel ``p_j`` holding centre ``c_j``), a fixed prior
``b = -4`` on the heatmap logits (CenterNet's bias initialisation, as a constant), ``alpha =
10``, ``lambda_s = lambda_o = 1``; the size and offset terms read the outputs at the centre
pixels only (a gather with label-given indices, linear in the outputs).

**Decoding** (:func:`decode`, for evaluation): sigmoid heatmaps, peaks = 3 x 3 local maxima,
the top ``k`` over pixels and classes, boxes from offset and size.

**Metric** (the contract of :class:`~autosim_jax.tasks.Task`: statistics additive over
validation minibatches). mAP is not a mean over images, but its ingredients are sums: after
matching the decoded detections of each image to its boxes (greedily by score, IoU >= 0.5,
same class, each box once: COCO's rule), the counts of true and false positives per class
and per *score bin* (10 000 bins on [0, 1]) and the number of boxes per class add up over
batches. :func:`ap_from_stats` turns the summed counts into COCO's 101-point interpolated
AP@0.5 per class and averages over the classes that have boxes. It equals the exact COCO
value up to the order of detections within one score bin (``tests/test_detection_map.py``
checks it against faster-coco-eval). So the jitted loop and the fresh-model assessment
report mAP@0.5 itself, minibatched, with no host round trip; :func:`coco_map50` computes the
exact figure with faster-coco-eval (extra ``[detection]``) from the COCO JSON that
:func:`to_coco` writes.

Example:
  >>> import jax.numpy as jnp
  >>> task = detection_task(num_classes=3)
  >>> labels = jnp.array([[[1, 4.0, 4.0, 12.0, 10.0, 1.0], [0, 0, 0, 0, 0, 0]]])
  >>> out = perfect_outputs(labels, 3, size=16)
  >>> float(task.metric(out, labels))
  1.0
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .models import UNet
from .tasks import Task

HEATMAP_PRIOR = -4.0  # added to the heatmap logits (CenterNet's bias initialisation)
POSITIVE_WEIGHT = 10.0  # alpha: extra weight of pixels near object centres
SIZE_WEIGHT = 1.0
OFFSET_WEIGHT = 1.0
SCORE_BINS = 10_000
IOU_THRESHOLD = 0.5
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds

FASTER_COCO_EVAL_MISSING = (
    'mAP with COCO JSON needs faster-coco-eval: pip install "autosim_jax[detection]" '
    "(the jitted task metric needs nothing extra)."
)


def centernet(in_channels: int, num_classes: int, base_channels: int = 16, *, rngs: nnx.Rngs,
              param_dtype=jnp.float32) -> UNet:
    """The detector: a :class:`~autosim_jax.models.UNet` with ``num_classes + 4`` output channels.

    Example:
      >>> centernet(3, 3, 4, rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 3))).shape
      (1, 8, 8, 7)
    """
    return UNet(in_channels, num_classes + 4, base_channels, rngs=rngs, param_dtype=param_dtype)


def _check(outputs, labels, num_classes, fn):
    if outputs.ndim != 4 or outputs.shape[-1] != num_classes + 4:
        raise ValueError(f"{fn}: outputs must be (N, H, W, num_classes + 4) = (N, H, W, {num_classes + 4}), "
                         f"got {outputs.shape}; build the model with detection.centernet(..., num_classes).")
    if labels.ndim != 3 or labels.shape[-1] != 6 or labels.shape[0] != outputs.shape[0]:
        raise ValueError(f"{fn}: labels must be box rows (N, M, 6) = (class, x0, y0, x1, y1, valid) for the "
                         f"{outputs.shape[0]} outputs, got {labels.shape}.")


def _centres(labels, h, w):
    """Centres (N, M, 2) (x, y), their pixels (N, M) flat index, sizes (N, M, 2), valid (N, M)."""
    valid = labels[..., 5] > 0
    lo, hi = labels[..., 1:3], labels[..., 3:5]
    c = (lo + hi) / 2
    pix = jnp.clip(jnp.floor(c), 0, jnp.array([w - 1, h - 1], c.dtype)).astype(jnp.int32)
    return c, pix, pix[..., 1] * w + pix[..., 0], jnp.maximum(hi - lo, 1e-3), valid


def heatmap_targets(labels: jax.Array, num_classes: int, height: int, width: int) -> jax.Array:
    """Gaussian class heatmaps ``(N, H, W, K)`` of box labels ``(N, M, 6)``; 1 at each centre pixel.

    Example:
      >>> y = heatmap_targets(jnp.array([[[2, 4.0, 4.0, 8.0, 8.0, 1.0]]]), 3, 12, 12)
      >>> float(y[0, 6, 6, 2]), float(y[0, 6, 6, 0])
      (1.0, 0.0)
    """
    c, pix, flat, wh, valid = _centres(labels, height, width)
    sigma = jnp.maximum(0.5, jnp.sqrt(wh[..., 0] * wh[..., 1]) / 6)  # (N, M)
    ys, xs = jnp.arange(height) + 0.5, jnp.arange(width) + 0.5
    d2 = (xs[None, None, None, :] - c[..., 0, None, None]) ** 2 + (ys[None, None, :, None] - c[..., 1, None, None]) ** 2
    g = jnp.exp(-d2 / (2 * sigma[..., None, None] ** 2))  # (N, M, H, W)
    at_centre = (jnp.arange(height)[None, None, :, None] == pix[..., 1, None, None]) & \
                (jnp.arange(width)[None, None, None, :] == pix[..., 0, None, None])
    g = jnp.where(at_centre, 1.0, g) * valid[..., None, None]
    onehot = jax.nn.one_hot(labels[..., 0].astype(jnp.int32), num_classes, dtype=g.dtype)  # (N, M, K)
    return jnp.max(g[..., None] * onehot[:, :, None, None, :], axis=1)


def centernet_loss(outputs: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Per-sample CenterNet loss ``[N]`` (see the module docstring); smooth and convex in ``outputs``.

    Example:
      >>> labels = jnp.array([[[0, 2.0, 2.0, 6.0, 6.0, 1.0]]])
      >>> centernet_loss(jnp.zeros((1, 8, 8, 5)), labels, 1).shape
      (1,)
    """
    _check(outputs, labels, num_classes, "centernet_loss")
    n, h, w, _ = outputs.shape
    y = jax.lax.stop_gradient(heatmap_targets(labels, num_classes, h, w)).astype(outputs.dtype)
    z = outputs[..., :num_classes] + HEATMAP_PRIOR
    bce = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
    heat = jnp.sum((1 + POSITIVE_WEIGHT * y) * bce, axis=(1, 2, 3))
    c, pix, flat, wh, valid = _centres(labels, h, w)
    at = jnp.take_along_axis(outputs.reshape(n, h * w, -1), flat[..., None], axis=1)  # (N, M, K + 4)
    size = jnp.sum((at[..., num_classes:num_classes + 2] - jnp.log(wh)) ** 2, -1)
    offset = jnp.sum((at[..., num_classes + 2:] - (c - pix)) ** 2, -1)
    regress = jnp.sum(jnp.where(valid, SIZE_WEIGHT * size + OFFSET_WEIGHT * offset, 0.0), -1)
    return (heat + regress) / jnp.maximum(1.0, valid.sum(-1))


def _box_size(log_size: jax.Array, h: int, w: int) -> jax.Array:
    """Width and height from the outputs' log size, clipped to [e^-3, 2 max(h, w)]: the boxes :func:`decode`
    makes, and so the ones :func:`soft_detection_stats` scores."""
    return jnp.exp(jnp.clip(log_size, -3.0, jnp.log(2.0 * max(h, w))))


def decode(outputs: jax.Array, num_classes: int, k: int = 20) -> jax.Array:
    """The ``k`` best detections of each image: ``(N, k, 6)`` rows (class, score, x0, y0, x1, y1).

    Scores are the sigmoid heatmaps at 3 x 3 local maxima, sorted in decreasing order (a
    peak-free image pads with score-0 rows). Boxes are clipped to the image.

    Example:
      >>> labels = jnp.array([[[1, 4.0, 4.0, 12.0, 10.0, 1.0]]])
      >>> d = decode(perfect_outputs(labels, 3, size=16), 3, k=2)
      >>> d[0, 0].tolist()
      [1.0, 1.0, 4.0, 4.0, 12.0, 10.0]
    """
    n, h, w, ch = outputs.shape
    if ch != num_classes + 4:
        raise ValueError(f"decode: outputs must have num_classes + 4 = {num_classes + 4} channels, got {ch}.")
    p = jax.nn.sigmoid(outputs[..., :num_classes] + HEATMAP_PRIOR)
    peak = jax.lax.reduce_window(p, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    scores = jnp.where(p >= peak, p, 0.0).reshape(n, -1)
    k = min(int(k), h * w * num_classes)
    top, idx = jax.lax.top_k(scores, k)
    cls, pix = idx % num_classes, idx // num_classes
    reg = jnp.take_along_axis(outputs.reshape(n, h * w, ch), pix[..., None], axis=1)[..., num_classes:]
    centre = jnp.stack([pix % w, pix // w], -1).astype(outputs.dtype) + reg[..., 2:]
    half = _box_size(reg[..., :2], h, w) / 2
    lo = jnp.clip(centre - half, 0, jnp.array([w, h], outputs.dtype))
    hi = jnp.clip(centre + half, 0, jnp.array([w, h], outputs.dtype))
    return jnp.concatenate([cls[..., None].astype(outputs.dtype), top[..., None], lo, hi], -1)


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU ``(..., P, Q)`` of boxes ``(..., P, 4)`` and ``(..., Q, 4)`` given as (x0, y0, x1, y1)."""
    lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = jnp.prod(jnp.clip(hi - lo, 0), -1)
    area = lambda x: jnp.prod(jnp.clip(x[..., 2:] - x[..., :2], 0), -1)  # noqa: E731
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def match(detections: jax.Array, labels: jax.Array, iou_threshold: float = IOU_THRESHOLD) -> jax.Array:
    """True-positive flags ``(N, k)`` of score-sorted detections ``(N, k, 6)`` against boxes ``(N, M, 6)``.

    COCO's greedy rule: in decreasing score, a detection takes the still unmatched box of its
    class with the highest IoU, if that IoU is at least ``iou_threshold``; otherwise it is a
    false positive. Detections of score 0 (padding) are neither.
    """
    iou = box_iou(detections[..., 2:], labels[..., 1:5])  # (N, k, M)
    same = (detections[..., 0, None] == labels[..., None, :, 0]) & (labels[..., None, :, 5] > 0)
    iou = jnp.where(same, iou, -1.0)

    def one_image(iou_i):
        def step(taken, row):
            cand = jnp.where(taken, -1.0, row)
            j = jnp.argmax(cand)
            hit = cand[j] >= iou_threshold
            return taken.at[j].set(taken[j] | hit), hit

        return jax.lax.scan(step, jnp.zeros(iou_i.shape[1], bool), iou_i)[1]

    return jax.vmap(one_image)(iou)


def ap_stats(detections: jax.Array, labels: jax.Array, num_classes: int, bins: int = SCORE_BINS):
    """Additive statistics of AP@0.5: ``(tp (K, B), fp (K, B), boxes (K,))`` int32 counts."""
    tp = match(detections, labels)
    score = detections[..., 1]
    real = score > 0
    b = jnp.clip((score * bins).astype(jnp.int32), 0, bins - 1)
    cls = detections[..., 0].astype(jnp.int32)
    flat = (cls * bins + b).ravel()
    count = lambda m: jnp.zeros(num_classes * bins, jnp.int32).at[flat].add(m.ravel().astype(jnp.int32))  # noqa: E731
    gt = jnp.zeros(num_classes, jnp.int32).at[labels[..., 0].astype(jnp.int32).ravel()].add(
        (labels[..., 5] > 0).ravel().astype(jnp.int32))
    return (count(real & tp).reshape(num_classes, bins), count(real & ~tp).reshape(num_classes, bins), gt)


def ap_from_stats(stats) -> jax.Array:
    """mAP@0.5 (COCO's 101-point interpolation, mean over classes with boxes) from :func:`ap_stats`.

    Returns 0 when no class has a box.
    """
    tp, fp, gt = stats
    tp_c = jnp.cumsum(tp[:, ::-1], -1).astype(jnp.float32)  # decreasing score
    fp_c = jnp.cumsum(fp[:, ::-1], -1).astype(jnp.float32)
    n = jnp.maximum(gt, 1).astype(jnp.float32)[:, None]
    recall = tp_c / n
    dets = tp_c + fp_c
    precision = jnp.where(dets > 0, tp_c / jnp.maximum(dets, 1), 0.0)
    envelope = jax.lax.cummax(precision[:, ::-1], axis=1)[:, ::-1]

    def one(rec, env):
        i = jnp.searchsorted(rec, jnp.asarray(_RECALL_POINTS, rec.dtype), side="left")
        return jnp.mean(jnp.where(i < rec.shape[0], env[jnp.minimum(i, rec.shape[0] - 1)], 0.0))

    ap = jax.vmap(one)(recall, envelope)
    has = gt > 0
    return jnp.where(has.any(), jnp.sum(jnp.where(has, ap, 0.0)) / jnp.maximum(has.sum(), 1), 0.0)


def soft_detection_stats(outputs: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """``[2, K + 1]``, additive over batches and differentiable: the statistics of a smooth stand-in for mAP@0.5.

    Columns ``0..K-1``: per class, the soft intersection ``sum p * y`` and soft union
    ``sum p + y - p * y`` of the sigmoid heatmap ``p`` with the boxes' centre pixels ``y``
    (the pixels that :func:`decode` must make its peaks; :func:`heatmap_targets` ``>= 1``).
    Column ``K``: the sum over valid boxes of the IoU between the box the outputs put at the
    box's centre pixel (its width and height, clipped as :func:`decode` clips them) and the
    box itself, both centred there, and the number of valid boxes. A detection counts in
    mAP@0.5 when its peak is at the right place for the right class and its box overlaps by
    IoU >= 0.5; these are the soft counts of both. With :func:`perfect_outputs` both IoUs are 1.

    Example:
      >>> labels = jnp.array([[[1, 4.0, 4.0, 12.0, 10.0, 1.0]]])
      >>> soft_detection_stats(perfect_outputs(labels, 2, size=16), labels, 2).round(3).tolist()
      [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    """
    _check(outputs, labels, num_classes, "soft_detection_stats")
    n, h, w, _ = outputs.shape
    y = (jax.lax.stop_gradient(heatmap_targets(labels, num_classes, h, w)) >= 1).astype(outputs.dtype)
    p = jax.nn.sigmoid(outputs[..., :num_classes] + HEATMAP_PRIOR)
    inter = jnp.sum(p * y, (0, 1, 2))
    union = jnp.sum(p + y, (0, 1, 2)) - inter
    c, pix, flat, wh, valid = _centres(labels, h, w)
    at = jnp.take_along_axis(outputs.reshape(n, h * w, -1), flat[..., None], axis=1)  # (N, M, K + 4)
    pred = _box_size(at[..., num_classes:num_classes + 2], h, w)
    overlap = jnp.prod(jnp.minimum(pred, wh), -1)
    iou = overlap / (jnp.prod(pred, -1) + jnp.prod(wh, -1) - overlap)
    boxes = jnp.stack([jnp.sum(jnp.where(valid, iou, 0.0)), jnp.sum(valid).astype(outputs.dtype)])
    return jnp.concatenate([jnp.stack([inter, union]), boxes[:, None]], axis=1)


def soft_detection_loss(stats: jax.Array) -> jax.Array:
    """``1 -`` (the soft centre IoU, mean over classes) x (the mean box IoU) from summed
    :func:`soft_detection_stats`: 0 for outputs that decode to the labels when every class has
    a box, near 1 for an untrained detector. Stricter than mAP@0.5 on where a peak sits: a peak
    one pixel off its box's centre pixel counts nothing here, though its box may still overlap
    by IoU >= 0.5 and count in mAP. A class without boxes has soft IoU 0 whatever the outputs do (only its
    false peaks lower it further), as in :func:`~autosim_jax.tasks.soft_iou_loss`.

    Example:
      >>> float(soft_detection_loss(jnp.array([[1.0, 2.0, 1.5], [2.0, 2.0, 2.0]])))  # (3/4) x (3/4)
      0.4375
    """
    heat = jnp.mean(stats[0, :-1] / jnp.maximum(stats[1, :-1], 1e-12))
    return 1.0 - heat * stats[0, -1] / jnp.maximum(stats[1, -1], 1.0)


def detection_task(num_classes: int, *, top_k: int = 20, bins: int = SCORE_BINS) -> Task:
    """The CenterNet loss to train, mAP@0.5 (binned, additive) to validate, and
    :func:`soft_detection_stats` / :func:`soft_detection_loss` as the metric's smooth surrogate
    (``AutoSimConfig(val_objective="metric_surrogate")``).

    Args:
      num_classes: ``K``; the model outputs ``K + 4`` channels (:func:`centernet`).
      top_k: detections kept per image for the metric (COCO keeps 100).
      bins: score bins of the additive AP statistics.

    Example:
      >>> detection_task(3).metric_name
      'mAP@0.5'
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")

    def loss(outputs, labels):
        return centernet_loss(outputs, labels, num_classes)

    def stats(outputs, labels):
        _check(outputs, labels, num_classes, "detection_task metric")
        return ap_stats(decode(outputs, num_classes, top_k), labels, num_classes, bins)

    def soft_stats(outputs, labels):
        return soft_detection_stats(outputs, labels, num_classes)

    # num_classes stays None: the labels are box rows, not class indices into the outputs.
    return Task(loss, stats, ap_from_stats, "mAP@0.5", higher_is_better=True, surrogate_stats=soft_stats,
                surrogate_loss=soft_detection_loss)


def perfect_outputs(labels: jax.Array, num_classes: int, size: int) -> jax.Array:
    """Network outputs that decode exactly to ``labels`` (for tests and examples)."""
    labels = jnp.asarray(labels, jnp.float32)
    y = heatmap_targets(labels, num_classes, size, size)
    logit = jnp.where(y >= 1, 30.0, -30.0) - HEATMAP_PRIOR
    c, pix, flat, wh, valid = _centres(labels, size, size)
    n, m = labels.shape[:2]
    reg = jnp.zeros((n, size * size, 4)).at[jnp.arange(n)[:, None], flat].set(
        jnp.where(valid[..., None], jnp.concatenate([jnp.log(wh), c - pix], -1), 0.0))
    return jnp.concatenate([logit, reg.reshape(n, size, size, 4)], -1)


# ------------------------------------------------------------------------- COCO JSON

def to_coco(labels: np.ndarray, detections: np.ndarray | None, class_names: Sequence[str], *,
            image_size: int | tuple[int, int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO ground truth (a dict) and detection results (a list) of an assessment.

    Args:
      labels: ``(N, M, 6)`` box rows; image ``i`` gets id ``i + 1``, class ``c`` category ``c + 1``.
      detections: ``(N, k, 6)`` rows (class, score, x0, y0, x1, y1) from :func:`decode`
        (score-0 rows are dropped), or ``None``.
      class_names: the category names.
      image_size: width = height, or (width, height).

    Example:
      >>> gt, dt = to_coco(np.array([[[0, 1, 2, 5, 6, 1]]]), None, ["a"], image_size=8)
      >>> gt["annotations"][0]["bbox"], dt
      ([1.0, 2.0, 4.0, 4.0], [])
    """
    w, h = (image_size, image_size) if np.ndim(image_size) == 0 else image_size
    labels = np.asarray(labels, float)
    gt = {"images": [{"id": i + 1, "width": int(w), "height": int(h)} for i in range(len(labels))],
          "categories": [{"id": c + 1, "name": str(name)} for c, name in enumerate(class_names)],
          "annotations": []}
    for i, j in zip(*np.nonzero(labels[..., 5] > 0)):
        c, x0, y0, x1, y1, _ = labels[i, j].tolist()
        gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": int(i) + 1,
                                  "category_id": int(c) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                  "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    results = []
    if detections is not None:
        det = np.asarray(detections, float)
        for i, j in zip(*np.nonzero(det[..., 1] > 0)):
            c, s, x0, y0, x1, y1 = det[i, j].tolist()
            results.append({"image_id": int(i) + 1, "category_id": int(c) + 1, "score": s,
                            "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return gt, results


def coco_map50(ground_truth: dict[str, Any] | str, results: list[dict[str, Any]] | str) -> float:
    """mAP@0.5 (area all, 100 detections) by faster-coco-eval, from COCO dicts or JSON files.

    Returns 0.0 for an empty result list (faster-coco-eval reports -1 there) and -1.0 when
    the ground truth holds no box.
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as err:
        raise ImportError(FASTER_COCO_EVAL_MISSING) from err
    if isinstance(results, (str, os.PathLike)):
        with open(results) as f:
            results = json.load(f)
    quiet = lambda *args, **kwargs: None  # noqa: E731
    gt = COCO(ground_truth, print_function=quiet)
    if not gt.dataset.get("annotations"):
        return -1.0
    if not results:
        return 0.0
    ev = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return max(0.0, float(ev.stats[1]))


def write_coco(path: str, labels: np.ndarray, detections: np.ndarray | None, class_names: Sequence[str], *,
               image_size: int) -> tuple[str, str]:
    """Writes ``PATH_gt.json`` and ``PATH_dt.json`` (see :func:`to_coco`); returns their paths."""
    gt, dt = to_coco(labels, detections, class_names, image_size=image_size)
    paths = (f"{path}_gt.json", f"{path}_dt.json")
    for p, obj in zip(paths, (gt, dt)):
        with open(p, "w") as f:
            json.dump(obj, f)
    return paths
