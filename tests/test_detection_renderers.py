"""Detection labels of the renderers against analytic projections and the traced label maps;
the 54-cell categorical's score-function term against its closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autosim_jax.distributions import from_schema
from autosim_jax.estimators import score_function_term
from autosim_jax.renderers import clevr
from autosim_jax.renderers.clevr_det import (CELLS, ClevrDetRenderer, cell_index, cell_parts, cell_probs,
                                             detection_schema)
from autosim_jax.schema import OutputSpec
from autosim_jax.simulator import Simulator
from test_estimators import _assert_within_se, _terms, squared_error


def one_object(shape, size_index, position, rotation=0.0):
    s = clevr.example_clevr_scenes(clevr.clevr_schema(2), 1, seed=0, num_objects=0, shape=shape, size=size_index,
                                   rotation=rotation)
    s["position"][0, 0] = position
    return s


def sphere_extent(centre, radius, size):
    """Exact image box of a sphere: the camera planes tangent to it.

    A column x is the plane through the camera of normal n = right - a forward with
    a = tan(fov/2) (2 x / size - 1); it touches the sphere where (c.n)^2 = R^2 |n|^2, i.e.
    a^2 (cf^2 - R^2) - 2 a cr cf + cr^2 - R^2 = 0 with cr = c.right, cf = c.forward (c
    relative to the camera); rows likewise with up (and y pointing down).
    """
    origin, right, up, forward, tan = clevr.camera_frame()
    c = np.asarray(centre) - origin
    cf = c @ forward

    def roots(axis):
        ca = c @ axis
        return np.sort(np.roots([cf**2 - radius**2, -2 * ca * cf, ca**2 - radius**2]).real)

    ax, ay = roots(right), roots(up)
    x = (ax / tan + 1) * size / 2
    y = (1 - ay[::-1] / tan) * size / 2
    return np.array([x[0], y[0], x[1], y[1]])


@pytest.mark.parametrize("position", [(0.0, 0.0), (2.5, -2.0), (-2.8, 2.6)])
@pytest.mark.parametrize("size_index", [0, 1])
def test_sphere_box_is_its_exact_projected_extent(position, size_index):
    s = one_object(0, size_index, position)
    r = clevr.SIZE_RADIUS[size_index]
    box = clevr.object_boxes(s, 64)[0, 0]
    exact = sphere_extent([*position, r], r, 64)
    assert box[0] == 0 and box[5] == 1
    np.testing.assert_allclose(box[1:5], exact, atol=0.01)  # the 64 x 128 grid is within 3e-4 R


@pytest.mark.parametrize("shape", [0, 1, 2])
@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_boxes_bound_the_traced_silhouette(shape, rotation):
    """The label pass traces one ray per pixel centre: the object's pixels lie inside its box,
    and the box is at most 1.5 pixels wider on any side (1 between pixel centres, plus a
    corner that falls between two rows of centres, as a rotated cube's does)."""
    size = 96
    s = one_object(shape, 1, (0.7, -0.4), rotation)
    box = clevr.object_boxes(s, size)[0, 0]
    labels = clevr.ClevrRenderer(image_size=size, max_objects=2).render(s, seed=0)[1][0]
    rows, cols = np.nonzero(labels == shape + 1)
    seen = np.array([cols.min() + 0.5, rows.min() + 0.5, cols.max() + 0.5, rows.max() + 0.5])
    assert np.all(box[1:3] <= seen[:2]) and np.all(box[3:5] >= seen[2:])
    assert np.all(np.abs(box[1:5] - seen) <= 1.5)


def test_box_label_mode_and_clipping():
    r = clevr.ClevrRenderer(image_size=32, max_objects=3, labels="boxes")
    assert r.labels_spec == OutputSpec((3, 6), np.float32)
    s = r.example_scenes(6, seed=2)
    images, boxes = r.render(s, seed=0)
    assert images.shape == (6, 32, 32, 3) and boxes.shape == (6, 3, 6)
    drawn = np.arange(3)[None] <= s["num_objects"][:, None]
    assert np.all(boxes[~drawn] == 0)
    valid = boxes[..., 5] == 1
    assert np.all(boxes[valid][:, 1:5] >= 0) and np.all(boxes[valid][:, 1:5] <= 32)
    np.testing.assert_array_equal(boxes[valid][:, 0], s["shape"][valid])
    with pytest.raises(ValueError, match="labels must be"):
        clevr.ClevrRenderer(labels="masks")


def test_detection_scenes_cells_and_boxes():
    r = ClevrDetRenderer(image_size=32)
    assert len(CELLS) == 54 and CELLS[cell_index(2, 8, 1)] == "scene3/bottom-right/high"
    cells = np.arange(54)
    np.testing.assert_array_equal(cell_index(*cell_parts(cells)), cells)
    images, boxes = r.render({"cell": cells}, seed=3)
    again = r.render({"cell": cells}, seed=3)
    np.testing.assert_array_equal(images, again[0])
    assert np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 1
    assert np.all(boxes[..., 5].sum(1) >= 1)  # every image holds at least one visible object
    # The objects of a location stand around its anchor: box centres of 'left' are left of 'right'.
    _, loc, _ = cell_parts(cells)
    cx = np.where(boxes[..., 5] == 1, (boxes[..., 1] + boxes[..., 3]) / 2, np.nan)
    assert np.nanmean(cx[loc == 3]) < 16 < np.nanmean(cx[loc == 5])


def test_glyph_boxes_bound_the_ink():
    from autosim_jax.renderers.glyphs_det import DigitCanvasRenderer, _glyph_patch

    for quality in (0, 1):
        patch, box = _glyph_patch(3, "DejaVuSans", 0.9, 0.0, 0.0, 0.0, 16, quality)
        rows, cols = np.nonzero(patch > 0.05)
        ink = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        # high: area-averaged, within a pixel; low: 8 x 8 then bilinear up, blurred by one cell (2 px)
        assert np.all(np.abs(box - ink) <= (2.5 if quality == 0 else 1.0)), (quality, box, ink)
    r = DigitCanvasRenderer(image_size=32)
    images, boxes = r.render({"cell": np.array([cell_index(0, loc, 1) for loc in range(9)])}, seed=0)
    for img, rows in zip(images[..., 0], boxes):
        covered = np.zeros_like(img, bool)
        for c, x0, y0, x1, y1, v in rows:
            if v:
                covered[max(0, int(y0) - 1):int(np.ceil(y1)) + 1, max(0, int(x0) - 1):int(np.ceil(x1)) + 1] = True
        assert not np.any((img > 0.3) & ~covered)  # all bright ink lies in a box (+1 px)


class TableRenderer:
    """The 54-cell field of the detection scenes -> a fixed feature row and label per cell."""

    name = "cell-table"
    schema = detection_schema()
    inputs_spec = OutputSpec((3,), np.float64)
    labels_spec = OutputSpec((), np.float64)
    table = np.random.default_rng(0).normal(size=(54, 4))

    def render(self, scenes, seed):
        t = self.table[scenes["cell"]]
        return t[:, :3], t[:, 3]


def test_54_cell_score_function_term_matches_closed_form(x64):
    """Probabilistic: K = 60000 scenes of the 54-way categorical (clevr-det's start psi),
    rendered through the simulator; the estimate is within 5 standard errors of the exact
    gradient of E_q[c(s)] = sum_j softmax(logits)_j c_j (c = dl/dtheta . v of cell j), for
    every one of the 54 logits, with and without the leave-one-out baseline."""
    sim = Simulator(from_schema(TableRenderer.schema, {"cell": {"probs": cell_probs(
        {"scene1/*/low": 0.55, "scene3/*/low": 0.3, "*": 0.15})}}), TableRenderer())
    psi = sim.distribution.init()
    out = jax.jit(sim.simulate, static_argnums=2)(jax.random.key(0), psi, 60_000)
    theta, v = jnp.array([0.3, -0.8, 0.5]), jnp.array([1.0, 0.5, -2.0])
    x, y = jnp.asarray(TableRenderer.table[:, :3]), jnp.asarray(TableRenderer.table[:, 3])
    per_cell = jax.jvp(lambda t: squared_error(t, x, y), (theta,), (v,))[1]  # (54,)
    exact = jax.grad(lambda p: jnp.sum(jax.nn.softmax(p["cell"].logits) * per_cell))(psi)
    for baseline in (None, "leave_one_out"):
        estimate = score_function_term(sim.distribution.log_prob, psi, out.scenes, squared_error, theta, v,
                                       out.inputs, out.labels, baseline=baseline)
        c = per_cell[out.scenes["cell"]]
        _assert_within_se(estimate, exact, _terms(sim.distribution.log_prob, psi, out.scenes, c, baseline))
