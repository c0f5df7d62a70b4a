"""Tests of the Mitsuba 3 backend: same scenes, same labels as the numpy renderer."""

import sys

import numpy as np
import pytest

from autosim_jax.renderers import ClevrRenderer, MitsubaRenderer, get_renderer
from autosim_jax.renderers import clevr, mitsuba_backend

SIZE = 32


@pytest.fixture(scope="module")
def renderers():
    return ClevrRenderer(image_size=SIZE, max_objects=4), MitsubaRenderer(image_size=SIZE, max_objects=4)


def _fast(scenes):
    """32 px, 1 spp: labels do not depend on quality, and the tests stay fast."""
    n = len(scenes["spp"])
    return dict(scenes, resolution=np.zeros(n, int), spp=np.zeros(n, int))


def test_outputs_have_declared_shapes_dtypes_and_ranges(renderers):
    _, mit = renderers
    images, labels = mit.render(_fast(mit.example_scenes(3, seed=0)), seed=0)
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.float32
    assert labels.shape == (3, SIZE, SIZE) and labels.dtype == np.int32
    assert images.flags.c_contiguous and labels.flags.c_contiguous
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.mean() > 0.2
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert mit.name == "mitsuba" and mit.schema == clevr.clevr_schema(4)


def test_labels_agree_with_the_numpy_renderer(renderers):
    """Same camera and geometry: the class maps agree on >= 99% of the pixels of 12 random
    scenes with up to 4 overlapping objects (measured: all pixels)."""
    ours, mit = renderers
    scenes = _fast(ours.example_scenes(12, seed=1))
    scenes["num_objects"] = np.full(12, 3)  # four objects, so that they overlap
    y_np = ours.render(scenes, seed=0)[1]
    y_mi = mit.render(scenes, seed=0)[1]
    assert (y_np > 0).mean() > 0.05
    assert (y_np == y_mi).mean() >= 0.99
    for i in range(12):
        assert (y_np[i] == y_mi[i]).mean() >= 0.97


def test_backends_agree_on_brightness(renderers):
    """Same lights and materials: the mean of each image agrees to within 0.05 (of 1)."""
    ours, mit = renderers
    one = ours.example_scenes(1, seed=2, resolution=0, spp=2, bounces=0)
    scenes = {k: np.repeat(v, 4, axis=0) for k, v in one.items()}  # one scene, four skies
    scenes["ambient"] = np.array([0.1, 0.3, 0.5, 0.8])
    means_np = ours.render(scenes, seed=0)[0].mean(axis=(1, 2, 3))
    means_mi = mit.render(scenes, seed=0)[0].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(means_mi, means_np, atol=0.05)
    assert np.all(np.diff(means_mi) > 0)  # a brighter sky gives a brighter image


def test_same_seed_same_output_different_seed_different_noise(renderers):
    _, mit = renderers
    scenes = _fast(mit.example_scenes(2, seed=3))
    a, b, c = (mit.render(scenes, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - c[0]).max() > 0.01
    np.testing.assert_array_equal(a[1], c[1])


def test_error_decreases_with_samples_per_pixel(renderers):
    _, mit = renderers
    scenes = mit.example_scenes(2, seed=4, resolution=0)
    ref = mit.render(dict(scenes, spp=np.full(2, 4)), seed=100)[0]
    errors = [np.mean((mit.render(dict(scenes, spp=np.full(2, s)), seed=1)[0] - ref) ** 2) for s in (0, 2)]
    assert errors[0] > 1.5 * errors[1]


def test_cylinders_get_a_cap():
    scenes = clevr.example_clevr_scenes(clevr.clevr_schema(2), 1, seed=0, shape=2, num_objects=0)
    d = mitsuba_backend.scene_dict(scenes, 0)
    assert d["object_0"]["type"] == "cylinder" and d["object_0_cap"]["type"] == "disk"
    assert d["integrator"] == {"type": "path", "max_depth": 3}  # 1 bounce (example default)
    labels = mitsuba_backend.scene_dict(scenes, 0, labels=True, image_size=8)
    assert labels["integrator"]["type"] == "aov" and labels["sensor"]["sampler"]["jitter"] is False


def test_llvm_variant_is_only_chosen_with_llvm_19():
    import drjit as dr

    try:
        version = tuple(dr.detail.llvm_version())
    except Exception:
        version = None
    if version is not None and version >= (19,):
        assert mitsuba_backend.select_variant("llvm_ad_rgb") == "llvm_ad_rgb"
    else:
        with pytest.warns(RuntimeWarning, match="libLLVM >= 19"):
            assert mitsuba_backend.select_variant("llvm_ad_rgb") == "scalar_rgb"
    with pytest.raises(ValueError, match="not available"):
        MitsubaRenderer(variant="scalar_spectral")


def test_missing_mitsuba_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mitsuba", None)  # makes `import mitsuba` raise
    with pytest.raises(ImportError, match=r'pip install "autosim_jax\[mitsuba\]"'):
        MitsubaRenderer()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("color"), "missing \\['color'\\]"),
        (lambda s: s.update(back_light=np.array([2.5, 0.0])), "'back_light' must be"),
        (lambda s: s.update(bounces=np.array([0.0, 1.0])), "'bounces' is categorical"),
        (lambda s: s.update(material=np.zeros((2, 5), int)), "'material' has shape"),
    ],
)
def test_bad_scenes_raise_value_error_naming_the_field(renderers, change, match):
    _, mit = renderers
    scenes = mit.example_scenes(2, seed=0)
    change(scenes)
    with pytest.raises(ValueError, match=match):
        mit.render(scenes, seed=0)


def test_get_renderer_builds_the_mitsuba_backend():
    r = get_renderer("mitsuba", image_size=16, max_objects=2)
    assert isinstance(r, MitsubaRenderer) and r.variant == "scalar_rgb"
