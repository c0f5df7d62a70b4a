"""mAP@0.5: hand-computed cases, the binned additive statistic against faster-coco-eval, COCO JSON;
the CenterNet loss: finite, symmetric (and PSD) Gauss-Newton operator against a dense float64 build."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from autosim_jax import detection as det
from autosim_jax.curvature import gauss_newton_operator
from autosim_jax.inner import sum_over_batches

pytest.importorskip("faster_coco_eval")

BOX_A = [2.0, 2.0, 10.0, 10.0]
BOX_B = [14.0, 3.0, 22.0, 12.0]
FAR = [24.0, 24.0, 30.0, 30.0]


def gt(*boxes):
    """One image's labels from (class, box) pairs, padded to 3 rows."""
    rows = [[c, *b, 1.0] for c, b in boxes] + [[0.0] * 6] * (3 - len(boxes))
    return np.array([rows], np.float32)


def dets(*rows):
    """One image's detections from (class, score, box), sorted by score, padded to 5 rows."""
    rows = sorted(([c, s, *b] for c, s, b in rows), key=lambda r: -r[1]) + [[0.0] * 6] * (5 - len(rows))
    return np.array([rows], np.float32)


ap_stats = jax.jit(det.ap_stats, static_argnums=(2, 3))  # compiled: eager dispatch is slower here


def both(labels, detections, k=2):
    """(binned jitted mAP, faster-coco-eval mAP) of one case."""
    binned = float(det.ap_from_stats(ap_stats(jnp.asarray(detections), jnp.asarray(labels), k)))
    return binned, det.coco_map50(*det.to_coco(labels, detections, ["a", "b"][:k], image_size=32))


# The hand computations use COCO's 101 recall points r and the precision envelope
# p(r) = max precision at recall >= r.
CASES = {
    # every box found, nothing else: precision 1 at every recall.
    "perfect": (gt((0, BOX_A), (1, BOX_B)), dets((0, 0.9, BOX_A), (1, 0.8, BOX_B)), 1.0),
    # nothing detected: AP 0 for every class.
    "empty": (gt((0, BOX_A), (1, BOX_B)), dets(), 0.0),
    # one class, a false positive ranked above the true positive: the PR points are
    # (recall 0, precision 0) then (1, 1/2); the envelope is 1/2 at every r.
    "false positive first": (gt((0, BOX_A)), dets((0, 0.9, FAR), (0, 0.8, BOX_A)), 0.5),
    # a true positive then its duplicate (a false positive: the box is taken): the
    # duplicate comes after recall 1 was reached at precision 1, so AP stays 1.
    "duplicate after": (gt((0, BOX_A)), dets((0, 0.9, BOX_A), (0, 0.8, BOX_A)), 1.0),
    # two boxes of one class: TP on A (0.9), duplicate of A (0.8), TP on B (0.7): points
    # (1/2, 1), (1/2, 1/2), (1, 2/3); envelope 1 for r <= 1/2 (51 points), 2/3 above (50):
    # AP = (51 + 50 * 2/3) / 101.
    "duplicate between": (gt((0, BOX_A), (0, BOX_B)),
                          dets((0, 0.9, BOX_A), (0, 0.8, [2.5, 2.0, 10.0, 10.0]), (0, 0.7, BOX_B)),
                          (51 + 50 * 2 / 3) / 101),
    # right place, wrong class: a false positive of class 1 (no class-1 boxes: not averaged)
    # and nothing for class 0.
    "wrong class": (gt((0, BOX_A)), dets((1, 0.9, BOX_A)), 0.0),
}


@pytest.mark.parametrize("case", CASES)
def test_hand_computed_map(case):
    labels, detections, expected = CASES[case]
    k = 1 if case in ("false positive first", "duplicate after", "duplicate between") else 2
    binned, coco = both(labels, detections, k)
    assert coco == pytest.approx(expected, abs=1e-9)
    assert binned == pytest.approx(expected, abs=1e-6)


def test_binned_map_matches_faster_coco_eval_on_random_detections():
    """Random images (3 classes, up to 3 boxes, 10 scored detections near them, 20% of the wrong class).

    The binned statistic differs from COCO only in the order of detections that share one of
    the 10 000 score bins (with 1000 bins this case differs by 2e-3); with 10^5 bins there is
    no tie here and the two agree to float32 rounding.
    """
    rng = np.random.default_rng(0)
    n, m, k = 40, 3, 10
    lo = rng.uniform(0, 20, (n, m, 2))
    labels = np.concatenate([rng.integers(0, 3, (n, m, 1)), lo, lo + rng.uniform(3, 10, (n, m, 2)),
                             (rng.random((n, m, 1)) < 0.8)], -1).astype(np.float32)
    labels[labels[..., 5] == 0] = 0
    pick = rng.integers(0, m, (n, k))
    base = np.take_along_axis(labels, pick[..., None], 1)
    boxes = base[..., 1:5] + rng.normal(0, 1.5, (n, k, 4))
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 0.5)  # decode never gives x1 < x0
    cls = np.where(rng.random((n, k)) < 0.8, base[..., 0], rng.integers(0, 3, (n, k)))
    scores = rng.random((n, k))
    order = np.argsort(-scores, 1)
    d = np.concatenate([cls[..., None], scores[..., None], boxes], -1)
    d = np.take_along_axis(d, order[..., None], 1).astype(np.float32)
    binned = float(det.ap_from_stats(ap_stats(jnp.asarray(d), jnp.asarray(labels), 3)))
    coco = det.coco_map50(*det.to_coco(labels, d, "abc", image_size=32))
    assert 0.2 < coco < 0.95
    assert binned == pytest.approx(coco, abs=1e-3)
    fine = float(det.ap_from_stats(ap_stats(jnp.asarray(d), jnp.asarray(labels), 3, 100_000)))
    assert fine == pytest.approx(coco, abs=1e-6)
    # Additive: statistics summed over minibatches of 7 images give the same number.
    # compiled, as ap_stats above: an eager scan of ap_stats took 4 s
    summed = jax.jit(lambda x, y: sum_over_batches(lambda xb, yb: det.ap_stats(xb, yb, 3), x, y, 7))
    stats = summed(jnp.asarray(d), jnp.asarray(labels))
    assert float(det.ap_from_stats(stats)) == binned


def test_decoded_perfect_outputs_and_coco_json_round_trip(tmp_path):
    labels = np.zeros((3, 3, 6), np.float32)
    labels[0, 0] = [2, 3.2, 4.1, 11.0, 9.5, 1]
    labels[1, :2] = [[0, 1.0, 1.0, 7.0, 6.0, 1], [1, 9.0, 8.0, 15.0, 15.5, 1]]
    out = det.perfect_outputs(jnp.asarray(labels), 3, size=16)
    d = np.asarray(det.decode(out, 3, k=5))
    task = det.detection_task(3, top_k=5)
    assert float(task.metric(out, jnp.asarray(labels))) == 1.0
    gt_path, dt_path = det.write_coco(str(tmp_path / "val"), labels, d, ["sphere", "cube", "cylinder"],
                                      image_size=16)
    with open(gt_path) as f:
        assert len(json.load(f)["annotations"]) == 3
    assert det.coco_map50(gt_path, dt_path) == pytest.approx(1.0)


class TinyDetector(nnx.Module):
    """Two float64 tanh convolutions: a nonlinear net small enough for a dense Jacobian."""

    def __init__(self, classes, rngs):
        kw = dict(padding="SAME", param_dtype=jnp.float64, dtype=jnp.float64, rngs=rngs)
        self.a = nnx.Conv(1, 2, (3, 3), **kw)
        self.b = nnx.Conv(2, classes + 4, (1, 1), **kw)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def test_centernet_loss_has_a_finite_symmetric_psd_gauss_newton_operator(x64):
    """G built column by column through the operator's matvec equals J^T H_out J from a dense
    Jacobian of the outputs and a dense Hessian of the loss in the outputs (float64); it is
    finite, symmetric and positive semi-definite (the loss is convex in the outputs)."""
    graphdef, params = nnx.split(TinyDetector(2, nnx.Rngs(0)), nnx.Param)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 1), jnp.float64)
    labels = jnp.array([[[0, 0.5, 0.2, 2.5, 2.0, 1], [1, 1.5, 1.0, 4.0, 3.5, 1]],
                        [[1, 0.5, 2.0, 2.5, 4.0, 1], [0, 0, 0, 0, 0, 0]]], jnp.float64)

    def predict(p, xx):
        return nnx.merge(graphdef, p)(xx)

    def out_loss(o, y):
        return jnp.mean(det.centernet_loss(o, y, 2))

    @jax.jit  # one compile instead of hundreds of eager dispatches (5 s instead of 13 s here)
    def build(p):
        op = gauss_newton_operator(predict, out_loss, p, x, labels)
        flat, unravel = ravel_pytree(p)
        G = jax.vmap(lambda v: ravel_pytree(op.matvec(unravel(v)))[0])(jnp.eye(flat.size)).T
        out0 = predict(p, x)
        J = jax.jacobian(lambda f: predict(unravel(f), x).ravel())(flat)
        H = jax.hessian(lambda o: out_loss(o.reshape(out0.shape), labels))(out0.ravel())
        return G, J.T @ H @ J

    G, dense = build(params)
    assert bool(jnp.all(jnp.isfinite(G)))
    np.testing.assert_allclose(G, G.T, atol=1e-10 * float(jnp.abs(G).max()))
    np.testing.assert_allclose(G, dense, rtol=1e-8, atol=1e-10 * float(jnp.abs(dense).max()))
    assert float(jnp.linalg.eigvalsh((G + G.T) / 2).min()) > -1e-9 * float(jnp.abs(G).max())
    # The loss itself: finite, with a finite gradient, at a point far from the targets too.
    g = jax.jit(jax.grad(lambda p: out_loss(predict(p, x) * 50.0, labels)))(params)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
