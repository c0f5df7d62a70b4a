"""Tests of the numpy CLEVR-style renderer: contract, determinism, labels against geometry."""

import jax
import numpy as np
import pytest
from matplotlib.path import Path

from autosim_jax.renderers import ClevrRenderer, OutputSpec, SceneSchema, get_renderer
from autosim_jax.renderers import RENDERERS
from autosim_jax.renderers import clevr
from autosim_jax.distributions import from_schema

SIZE = 32


@pytest.fixture(scope="module")
def renderer():
    return ClevrRenderer(image_size=SIZE, max_objects=3)


def _one_object(renderer, shape, position=(0.0, 0.0), size=1, rotation=30.0, **fixed):
    """One scene with a single object (num_objects index 0) in slot 0."""
    k = renderer.max_objects
    pos = np.zeros((k, 2))
    pos[0] = position
    rot = np.zeros(k)
    rot[0] = rotation
    return renderer.example_scenes(
        1, seed=0, num_objects=0, shape=clevr.SHAPES.index(shape), size=size, position=pos,
        rotation=rot, **fixed)


def _pixel_centres(size):
    rows, cols = np.mgrid[0:size, 0:size]
    return np.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _convex_hull(points):
    """Vertices of the convex hull of 2-D points, counter-clockwise (Andrew's monotone chain)."""
    pts = sorted(map(tuple, points))

    def turn(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def _hull_mask(points, size):
    """Pixels whose centre lies in the convex hull of projected world points: the silhouette
    of a convex solid under a pinhole camera."""
    hull = Path(_convex_hull(clevr.project(points, size)))
    return hull.contains_points(_pixel_centres(size)).reshape(size, size)


def test_outputs_have_declared_shapes_dtypes_and_ranges(renderer):
    scenes = renderer.example_scenes(5, seed=0, resolution=0, spp=0)
    images, labels = renderer.render(scenes, seed=0)
    assert images.shape == (5, *renderer.inputs_spec.shape) and images.dtype == np.float32
    assert labels.shape == (5, *renderer.labels_spec.shape) and labels.dtype == np.int32
    assert images.flags.c_contiguous and labels.flags.c_contiguous
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert renderer.name == "clevr" and renderer.inputs_spec.dtype == np.float32


def test_same_seed_same_output_different_seed_different_noise(renderer):
    scenes = renderer.example_scenes(3, seed=1, spp=0, num_objects=2)
    a = renderer.render(scenes, seed=7)
    b = renderer.render(scenes, seed=7)
    c = renderer.render(scenes, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - c[0]).max() > 0.01  # 1 spp: jitter and ambient sampling noise
    np.testing.assert_array_equal(a[1], c[1])  # labels do not depend on the sampling noise


def test_input_scenes_are_not_modified(renderer):
    scenes = renderer.example_scenes(2, seed=2)
    before = {k: v.copy() for k, v in scenes.items()}
    renderer.render(scenes, seed=0)
    for k in scenes:
        np.testing.assert_array_equal(scenes[k], before[k])


def _sphere_mask(center, r, size):
    """Pixels whose centre ray passes within r of the centre (float64 vector algebra)."""
    origin, right, up, forward, tan = clevr.camera_frame()
    xy = _pixel_centres(size)
    u = (2 * xy[:, 0] / size - 1) * tan
    v = (1 - 2 * xy[:, 1] / size) * tan
    d = forward + u[:, None] * right + v[:, None] * up
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    oc = np.asarray(center) - origin
    dist2 = (oc**2).sum() - (d @ oc) ** 2
    return (dist2 < r * r).reshape(size, size)


def test_lone_sphere_label_matches_its_analytic_silhouette():
    size = 48
    renderer = ClevrRenderer(image_size=size, max_objects=2)
    scenes = _one_object(renderer, "sphere", position=(0.7, -0.4))
    labels = renderer.render(scenes, seed=0)[1][0]
    r = clevr.SIZE_RADIUS[1]
    expected = _sphere_mask([0.7, -0.4, r], r, size)
    assert expected.sum() > 50
    assert _iou(labels == 1, expected) > 0.95
    assert set(np.unique(labels)) == {0, 1}


@pytest.mark.parametrize("rotation", [0.0, 25.0, 70.0])
def test_lone_cube_label_matches_its_projected_hull(rotation):
    size = 48
    renderer = ClevrRenderer(image_size=size, max_objects=2)
    scenes = _one_object(renderer, "cube", position=(-0.5, 0.8), rotation=rotation)
    labels = renderer.render(scenes, seed=0)[1][0]
    h = clevr.SIZE_RADIUS[1] / np.sqrt(2)
    th = np.radians(rotation)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    corners = np.array([[x, y, z] for x in (-h, h) for y in (-h, h) for z in (-h, h)]) @ rot.T
    expected = _hull_mask(corners + [-0.5, 0.8, h], size)
    assert _iou(labels == 2, expected) > 0.95
    assert set(np.unique(labels)) == {0, 2}


def test_lone_cylinder_label_matches_its_projected_hull():
    size = 48
    renderer = ClevrRenderer(image_size=size, max_objects=2)
    scenes = _one_object(renderer, "cylinder", position=(1.0, 1.0))
    labels = renderer.render(scenes, seed=0)[1][0]
    r = clevr.SIZE_RADIUS[1]
    phi = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    rim = np.stack([1.0 + r * np.cos(phi), 1.0 + r * np.sin(phi), np.zeros_like(phi)], -1)
    expected = _hull_mask(np.concatenate([rim, rim + [0, 0, 2 * r]]), size)
    assert _iou(labels == 3, expected) > 0.95


def test_nearer_object_wins_where_objects_overlap():
    """A small sphere just in front of a large cube (seen from the camera) hides part of it."""
    size = 48
    renderer = ClevrRenderer(image_size=size, max_objects=2)
    cube = np.array([-1.0, 1.0])
    towards_camera = clevr.CAMERA_ORIGIN[:2] - cube
    sphere = cube + 1.2 * towards_camera / np.linalg.norm(towards_camera)
    scenes = renderer.example_scenes(
        1, seed=0, num_objects=1, shape=[clevr.SHAPES.index("cube"), clevr.SHAPES.index("sphere")],
        size=[1, 0], position=np.stack([cube, sphere]), rotation=[45.0, 0.0])
    labels = renderer.render(scenes, seed=0)[1][0]
    r = clevr.SIZE_RADIUS[0]
    sphere_mask = _sphere_mask([*sphere, r], r, size)
    h = clevr.SIZE_RADIUS[1] / np.sqrt(2)
    corners = np.array([[x, y, z] for x in (-h, h) for y in (-h, h) for z in (-h, h)])
    th = np.radians(45.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    cube_mask = _hull_mask(corners @ rot.T + [*cube, h], size)
    overlap = sphere_mask & cube_mask
    assert overlap.sum() >= 5
    assert (labels[overlap] == 1).mean() > 0.9
    assert (labels[cube_mask & ~sphere_mask] == 2).mean() > 0.9


def test_labels_do_not_depend_on_quality_fields(renderer):
    base = renderer.example_scenes(4, seed=3)
    ref = renderer.render(base, seed=0)[1]
    for name, value in [("spp", 3), ("resolution", 0), ("resolution", 4), ("bounces", 3),
                        ("ambient", 0.0), ("key_light", 2.0)]:
        scenes = dict(base, **{name: np.full_like(base[name], value)})
        np.testing.assert_array_equal(renderer.render(scenes, seed=5)[1], ref, err_msg=name)


def test_mixed_quality_batch_matches_scene_by_scene_labels(renderer):
    scenes = renderer.example_scenes(6, seed=4)
    scenes["spp"] = np.array([0, 1, 2, 0, 1, 2])
    scenes["resolution"] = np.array([0, 1, 2, 3, 4, 0])
    images, labels = renderer.render(scenes, seed=0)
    for i in range(6):
        one = {k: v[i:i + 1] for k, v in scenes.items()}
        np.testing.assert_array_equal(renderer.render(one, seed=0)[1][0], labels[i])
    assert np.isfinite(images).all()


def test_error_decreases_with_samples_per_pixel():
    """Against a 16-spp reference, the mean squared error falls as spp grows (noise ~ 1/spp)."""
    renderer = ClevrRenderer(image_size=SIZE, max_objects=3)
    scenes = renderer.example_scenes(4, seed=5, num_objects=2, resolution=0)
    ref = renderer.render(dict(scenes, spp=np.full(4, 4)), seed=100)[0]
    errors = [np.mean((renderer.render(dict(scenes, spp=np.full(4, s)), seed=1)[0] - ref) ** 2)
              for s in (0, 2)]  # 1 and 4 spp
    assert errors[0] > 1.5 * errors[1]


def test_higher_resolution_is_closer_to_a_high_quality_reference():
    """Rendered below the training size and upsampled, an image is blurred: its error against
    a 128-px, 16-spp reference is larger than that of a 96-px render."""
    renderer = ClevrRenderer(image_size=64, max_objects=3)
    scenes = renderer.example_scenes(3, seed=6, num_objects=2)
    ref = renderer.render(dict(scenes, resolution=np.full(3, 4), spp=np.full(3, 4)), seed=100)[0]
    err = {r: np.mean((renderer.render(dict(scenes, resolution=np.full(3, r)), seed=1)[0] - ref) ** 2)
           for r in (0, 3)}  # 32 and 96 px, 4 spp
    assert err[0] > 1.5 * err[3]


def test_bounces_let_metal_reflect_the_scene():
    """With no bounce left a metal mirror sees black where the floor is; one bounce lights it."""
    renderer = ClevrRenderer(image_size=SIZE, max_objects=2)
    scenes = _one_object(renderer, "sphere", material=clevr.MATERIALS.index("metal"),
                         color=clevr.COLORS.index("gray"))
    imgs = [renderer.render(dict(scenes, bounces=np.array([b])), seed=0) for b in (0, 1)]
    on_sphere = imgs[0][1][0] == 1
    assert imgs[1][0][0][on_sphere].mean() > imgs[0][0][0][on_sphere].mean() + 0.05


def test_lights_brighten_the_image(renderer):
    scenes = renderer.example_scenes(2, seed=7)
    dark = renderer.render(dict(scenes, key_light=np.zeros(2), back_light=np.zeros(2)), seed=0)[0]
    bright = renderer.render(dict(scenes, key_light=np.full(2, 2.0)), seed=0)[0]
    assert bright.mean() > dark.mean() + 0.1
    black = renderer.render(dict(scenes, key_light=np.zeros(2), back_light=np.zeros(2),
                                 ambient=np.zeros(2)), seed=0)[0]
    assert black.max() == 0.0


def test_resample_matrix_keeps_constants_and_averages_blocks():
    for src, dst in [(32, 64), (48, 64), (64, 64), (96, 64), (128, 64), (64, 32)]:
        m = clevr.resample_matrix(src, dst)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
    img = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)
    down = clevr.resample(img, 4)
    np.testing.assert_allclose(down, img.reshape(1, 4, 2, 4, 2, 3).mean(axis=(2, 4)), rtol=1e-6)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("spp"), "missing \\['spp'\\]"),
        (lambda s: s.update(extra=np.zeros(2)), "unknown \\['extra'\\]"),
        (lambda s: s.update(ambient=np.array([0.5, 1.5])), "'ambient' must be"),
        (lambda s: s["position"].__setitem__((1, 0, 0), 3.5), "'position' must be"),
        (lambda s: s.update(position=np.zeros((2, 3, 3))), "'position' has shape"),
        (lambda s: s.update(spp=np.array([0.0, 1.0])), "'spp' is categorical"),
        (lambda s: s.update(spp=np.array([0, 5])), "'spp' must be an index"),
        (lambda s: s.update(shape=np.full((2, 3), -1)), "'shape' must be an index"),
        (lambda s: s.update(rotation=np.array([[0.0, np.nan, 0.0]] * 2)), "'rotation' must be"),
        (lambda s: s.update(key_light=np.array([1, 1])), "'key_light' is continuous"),
        (lambda s: s.update(size=np.zeros((3, 3), int)), "'size' holds 3 scenes"),
    ],
)
def test_bad_scenes_raise_value_error_naming_the_field(renderer, change, match):
    scenes = renderer.example_scenes(2, seed=0)
    change(scenes)
    with pytest.raises(ValueError, match=match):
        renderer.render(scenes, seed=0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="max_objects"):
        ClevrRenderer(max_objects=1)
    with pytest.raises(ValueError, match="image_size"):
        ClevrRenderer(image_size=2)


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_every_registered_renderer_follows_the_protocol(name):
    r = get_renderer(name)
    assert r.name == name
    assert isinstance(r.schema, SceneSchema)
    assert isinstance(r.inputs_spec, OutputSpec) and isinstance(r.labels_spec, OutputSpec)
    # Scenes drawn from the schema's default distribution: the contract, not a renderer's helper.
    q = from_schema(r.schema)
    scenes = {k: np.asarray(v) for k, v in q.sample(jax.random.PRNGKey(0), q.init(), 2).items()}
    x, y = r.render(scenes, seed=0)
    assert x.shape == (2, *r.inputs_spec.shape) and x.dtype == r.inputs_spec.dtype
    assert y.shape == (2, *r.labels_spec.shape) and y.dtype == r.labels_spec.dtype


def test_get_renderer_by_name():
    assert isinstance(get_renderer("clevr", image_size=16), ClevrRenderer)
    assert get_renderer("clevr", image_size=16).inputs_spec.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="valid names are \\['clevr', 'clevr-det', 'digit-canvas', 'glyphs', "
                                         "'mitsuba', 'mitsuba-det'\\]"):
        get_renderer("blender")
