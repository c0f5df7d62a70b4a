"""Tests of the glyph renderer and of the real digits it stands in for."""

import sys

import numpy as np
import pytest

from autosim_jax.renderers import GlyphRenderer, get_renderer, load_real_digits
from autosim_jax.renderers import glyphs


@pytest.fixture(scope="module")
def renderer():
    return GlyphRenderer()


def _centre_of_mass(img):
    img = img[..., 0]
    rows, cols = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    return np.array([(cols * img).sum(), (rows * img).sum()]) / img.sum()


def test_outputs_have_declared_shapes_dtypes_and_ranges(renderer):
    scenes = renderer.example_scenes(20, seed=0)
    images, labels = renderer.render(scenes, seed=0)
    assert images.shape == (20, 8, 8, 1) and images.dtype == np.float32
    assert labels.shape == (20,) and labels.dtype == np.int32
    assert images.flags.c_contiguous and labels.flags.c_contiguous
    assert 0.0 <= images.min() and images.max() <= 16.0 and images.max() > 10.0
    np.testing.assert_array_equal(labels, scenes["digit"])
    assert renderer.labels_spec.shape == () and renderer.name == "glyphs"


def test_every_font_draws_every_digit(renderer):
    assert set(glyphs.font_paths()) == set(glyphs.FONTS)
    n = 10 * len(glyphs.FONTS)
    scenes = renderer.example_scenes(n, seed=0, noise=0.0)
    scenes["digit"] = np.tile(np.arange(10), len(glyphs.FONTS))
    scenes["font"] = np.repeat(np.arange(len(glyphs.FONTS)), 10)
    images = renderer.render(scenes, seed=0)[0]
    ink = images.sum(axis=(1, 2, 3))
    assert ink.min() > 20.0  # no blank glyph (a font without digits would draw boxes or nothing)
    # Digits differ within a font.
    per_font = images.reshape(len(glyphs.FONTS), 10, -1)
    assert np.all(np.abs(per_font[:, 1] - per_font[:, 8]).sum(axis=-1) > 10.0)


def test_same_seed_same_output_and_noise_follows_the_seed(renderer):
    scenes = renderer.example_scenes(5, seed=1, noise=1.0)
    a, b, c = (renderer.render(scenes, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[0] - c[0]).max() > 0.5
    quiet = dict(scenes, noise=np.zeros(5))
    np.testing.assert_array_equal(renderer.render(quiet, seed=3)[0], renderer.render(quiet, seed=4)[0])


def test_fields_change_the_glyph_as_documented(renderer):
    base = renderer.example_scenes(1, seed=2, digit=8, font=0, noise=0.0, size=0.6, stroke=0.02,
                                   rotation=0.0, shear=0.0, shift=[0.0, 0.0], blur=0.2, contrast=1.0)

    def draw(**changes):
        return renderer.render(dict(base, **{k: np.asarray([v]) for k, v in changes.items()}), seed=0)[0][0]

    ref = draw()
    right_down = _centre_of_mass(draw(shift=[0.2, 0.2])) - _centre_of_mass(ref)
    assert right_down[0] > 1.0 and right_down[1] > 1.0  # x right, y down, in 8-px units
    assert draw(size=1.0).sum() > 1.3 * ref.sum()
    assert draw(stroke=0.1).sum() > 1.3 * ref.sum()
    np.testing.assert_allclose(draw(contrast=0.5), 0.5 * ref, rtol=1e-5)
    assert draw(blur=1.5).max() < 0.8 * ref.max()
    assert np.abs(draw(rotation=30.0) - ref).sum() > 5.0
    assert np.abs(draw(shear=0.4) - ref).sum() > 5.0


def test_glyphs_are_a_sim_to_real_source_for_the_real_digits(renderer):
    """A nearest-centroid classifier fitted on 2000 glyphs of the example configuration
    recognises the real validation digits far above chance (10%): measured 62.6%."""
    from sklearn.neighbors import NearestCentroid

    x, y = renderer.render(renderer.example_scenes(2000, seed=0), seed=0)
    x_val, y_val = load_real_digits("validation")
    clf = NearestCentroid().fit(x.reshape(len(x), -1), y)
    accuracy = (clf.predict(x_val.reshape(len(x_val), -1)) == y_val).mean()
    assert accuracy > 0.5


def test_real_digits_split_in_stratified_disjoint_halves():
    x_val, y_val = load_real_digits("validation")
    x_test, y_test = load_real_digits("test")
    assert x_val.shape == (898, 8, 8, 1) and x_test.shape == (899, 8, 8, 1)
    assert x_val.dtype == np.float32 and y_val.dtype == np.int32
    assert x_val.max() == 16.0 and x_val.min() == 0.0
    assert np.abs(np.bincount(y_val) - np.bincount(y_test)).max() <= 1
    # Together the halves are the whole set, each digit once.
    from sklearn.datasets import load_digits

    full = load_digits()
    both = np.concatenate([x_val, x_test]).reshape(-1, 64)
    key = lambda a: np.lexsort(a.T[::-1])  # noqa: E731
    np.testing.assert_array_equal(both[key(both)], full.data[key(full.data)])
    again = load_real_digits("validation")
    np.testing.assert_array_equal(again[0], x_val)
    with pytest.raises(ValueError, match="'validation' or 'test'"):
        load_real_digits("train")


def test_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"autosim_jax\[experiments\]"):
        load_real_digits("validation")


def test_missing_pillow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"autosim_jax\[experiments\]"):
        GlyphRenderer()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("blur"), "missing \\['blur'\\]"),
        (lambda s: s.update(digit=np.array([10, 0])), "'digit' must be an index"),
        (lambda s: s.update(digit=np.array([1.0, 2.0])), "'digit' is categorical"),
        (lambda s: s.update(size=np.array([0.1, 0.5])), "'size' must be"),
        (lambda s: s.update(shift=np.zeros(2)), "'shift' has shape"),
        (lambda s: s.update(contrast=np.array([1, 1])), "'contrast' is continuous"),
        (lambda s: s.update(noise=np.array([np.inf, 0.0])), "'noise' must be"),
    ],
)
def test_bad_scenes_raise_value_error_naming_the_field(renderer, change, match):
    scenes = renderer.example_scenes(2, seed=0)
    change(scenes)
    with pytest.raises(ValueError, match=match):
        renderer.render(scenes, seed=0)


def test_get_renderer_builds_the_glyph_renderer():
    assert isinstance(get_renderer("glyphs"), GlyphRenderer)
