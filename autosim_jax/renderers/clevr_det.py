"""CLEVR-style detection scenes whose one scene field is the paper's 54-cell categorical.

AutoSimulate's detection experiment (Behl et al., ECCV 2020, Section 5.2) learns one
categorical distribution over 3 scenes x 9 object locations x 2 rendering qualities: the
fraction of the training data to render from each cell. :class:`ClevrDetRenderer` is that
simulator over the numpy CLEVR tracer of :mod:`~autosim_jax.renderers.clevr` (a variant of
it, not a copy: it builds CLEVR scenes and calls the tracer's :func:`~autosim_jax.renderers.
clevr.render_images` and :func:`~autosim_jax.renderers.clevr.object_boxes`):

* **scene** (:data:`SCENES`): the floor (albedo and 1-unit tiles, the "clutter" of the
  floor) and the light rig (ambient, key and back light intensities):
  ``scene1`` a grey studio floor under CLEVR's default lights, ``scene2`` a warm tiled floor
  under soft, mostly ambient light, ``scene3`` a dark blue floor under a hard key light and a
  strong back light (dusk);
* **location** (:data:`LOCATIONS`): where the objects stand. The nine anchors form a 3 x 3
  grid on the floor, aligned with the camera so that ``top-left`` appears in the top left of
  the image (``top`` is far from the camera, so objects there look smaller); the objects of
  an image (1 to ``max_objects``) stand on a ring of radius :data:`RING` around the anchor,
  at a random angle, each moved by up to :data:`JITTER` along both floor axes;
* **quality** (:data:`QUALITIES`): ``low`` traces 1 sample per pixel at half the training
  resolution with no metal bounce, then upsamples (bilinear); ``high`` traces 8 samples per
  pixel at the full resolution with 2 bounces. At 64 px a high-quality image costs about
  14 times a low one on one CPU core (7.0 vs 0.51 ms; ``docs/detection.md``).

What is *not* a scene field is drawn from the render seed, independently for every image:
the number of objects, their shapes (the three classes), sizes, colours, materials and
rotations, the ring angle, the jitter, and a +-10% variation of each light. The learned psi is
then exactly the 54 probabilities of the paper.

Labels are the fixed-shape boxes of :func:`~autosim_jax.renderers.clevr.object_boxes`:
``(max_objects, 6)`` rows of (class, x0, y0, x1, y1, valid) in training pixels, class 0 =
sphere, 1 = cube, 2 = cylinder.

Example:
  >>> r = ClevrDetRenderer(image_size=32)
  >>> CELLS[0], CELLS[-1], len(CELLS)
  ('scene1/top-left/low', 'scene3/bottom-right/high', 54)
  >>> x, y = r.render({"cell": np.array([0, 53])}, seed=0)
  >>> x.shape, y.shape
  ((2, 32, 32, 3), (2, 3, 6))
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ..schema import Field, OutputSpec, SceneSchema
from . import clevr


class Look(NamedTuple):
    """One scene: floor and light rig."""

    floor: tuple[float, float, float]  # linear albedo
    checker: float  # contrast of the 1-unit floor tiles (0: plain)
    ambient: float
    key_light: float
    back_light: float


SCENES: dict[str, Look] = {
    "scene1": Look((0.40, 0.40, 0.40), 0.0, ambient=0.35, key_light=1.0, back_light=0.4),
    "scene2": Look((0.55, 0.42, 0.30), 0.55, ambient=0.6, key_light=0.5, back_light=0.15),
    "scene3": Look((0.10, 0.13, 0.25), 0.0, ambient=0.12, key_light=1.6, back_light=0.8),
}
LOCATIONS = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")
QUALITIES = ("low", "high")
CELLS = tuple(f"{s}/{loc}/{q}" for s in SCENES for loc in LOCATIONS for q in QUALITIES)


class Quality(NamedTuple):
    resolution_factor: float  # render resolution / training size
    spp: int
    bounces: int


QUALITY_SETTINGS = {"low": Quality(0.5, 1, 0), "high": Quality(1.0, 8, 2)}

GRID_CENTRE = np.array([0.45, -0.45])  # floor point of the centre anchor (world units)
GRID_STEP = 1.7  # anchor spacing, world units
RING = 0.95  # radius of the ring the objects of an image stand on (0 for a single object)
JITTER = 0.15  # largest shift of an object along each floor axis, world units
LIGHT_VARIATION = 0.1  # relative +- range of each light intensity


def cell_index(scene: int, location: int, quality: int) -> int:
    """Index into :data:`CELLS` of (scene, location, quality) indices.

    Example:
      >>> CELLS[cell_index(1, 4, 1)]
      'scene2/centre/high'
    """
    return (scene * len(LOCATIONS) + location) * len(QUALITIES) + quality


def cell_parts(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scene, location, quality) indices of cell indices (the inverse of :func:`cell_index`)."""
    cells = np.asarray(cells)
    return cells // (len(LOCATIONS) * len(QUALITIES)), (cells // len(QUALITIES)) % len(LOCATIONS), \
        cells % len(QUALITIES)


def cell_probs(weights: dict[str, float], floor: float = 1e-3) -> tuple[float, ...]:
    """54 probabilities putting ``weights`` on named cells (``fnmatch`` patterns) and ``floor`` elsewhere.

    Example:
      >>> p = cell_probs({"scene2/*/high": 1.0})
      >>> round(sum(p), 6), round(p[CELLS.index("scene2/top/high")], 4)
      (1.0, 0.1064)
    """
    import fnmatch

    p = np.full(len(CELLS), float(floor))
    for pattern, w in weights.items():
        hit = [i for i, c in enumerate(CELLS) if fnmatch.fnmatchcase(c, pattern)]
        if not hit:
            raise ValueError(f"cell pattern {pattern!r} matches none of the 54 cells (e.g. {CELLS[0]!r}).")
        p[hit] += w / len(hit)
    return tuple((p / p.sum()).tolist())


def anchors() -> np.ndarray:
    """``(9, 2)`` floor positions of :data:`LOCATIONS`, on a grid aligned with the camera.

    Example:
      >>> a = anchors()
      >>> px = clevr.project(np.c_[a, np.zeros(9)], 64)
      >>> bool(px[0, 0] < px[1, 0] < px[2, 0] and px[0, 1] < px[3, 1] < px[6, 1])  # left to right, top to bottom
      True
    """
    _, right, _, forward, _ = clevr.camera_frame()
    r = right[:2] / np.linalg.norm(right[:2])
    f = forward[:2] / np.linalg.norm(forward[:2])
    rows, cols = np.divmod(np.arange(9), 3)
    return GRID_CENTRE + GRID_STEP * ((cols - 1)[:, None] * r - (rows - 1)[:, None] * f)


def detection_schema() -> SceneSchema:
    """The one scene field: the 54-way ``cell`` (scene x location x quality)."""
    return SceneSchema((Field.categorical(
        "cell", CELLS, doc="scene/location/quality: floor and lights, where the objects stand, render cost"),))


@dataclasses.dataclass(frozen=True)
class ClevrDetRenderer:
    """Detection images of CLEVR objects, one scene field: the 54-cell categorical.

    Args:
      image_size: training width and height in pixels (even, at least 8).
      max_objects: at most this many objects per image (the box label rows).

    ``render(scenes, seed)`` returns images float32 ``(n, size, size, 3)`` in [0, 1] and box
    labels float32 ``(n, max_objects, 6)`` (see the module docstring). The seed drives the
    objects, the light variation, the pixel jitter and the ambient sampling.
    """

    image_size: int = 64
    max_objects: int = 3
    name: ClassVar[str] = "clevr-det"
    class_names: ClassVar[tuple[str, ...]] = clevr.SHAPES
    schema: SceneSchema = dataclasses.field(init=False, repr=False)
    inputs_spec: OutputSpec = dataclasses.field(init=False, repr=False)
    labels_spec: OutputSpec = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if int(self.image_size) < 8 or self.image_size % 2:
            raise ValueError(f"image_size must be even and at least 8, got {self.image_size}.")
        if int(self.max_objects) < 2:
            raise ValueError(f"max_objects must be at least 2, got {self.max_objects}.")
        object.__setattr__(self, "schema", detection_schema())
        object.__setattr__(self, "inputs_spec", OutputSpec((self.image_size, self.image_size, 3), np.float32))
        object.__setattr__(self, "labels_spec", OutputSpec((self.max_objects, len(clevr.BOX_COLUMNS)), np.float32))

    def clevr_scenes(self, cells: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """The CLEVR scenes, floors and render settings of ``cells`` (objects drawn from ``rng``)."""
        n, k = len(cells), int(self.max_objects)
        scene, location, quality = cell_parts(cells)
        looks = [SCENES[name] for name in SCENES]
        num = rng.integers(0, k, n)  # num_objects index: 1..k objects
        angle = rng.uniform(0, 2 * np.pi, n)[:, None] + 2 * np.pi * np.arange(k)[None, :] / (num[:, None] + 1)
        ring = np.where(num[:, None] > 0, RING, 0.0)
        position = (anchors()[location][:, None, :] + ring[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1)
                    + rng.uniform(-JITTER, JITTER, (n, k, 2)))
        vary = rng.uniform(1 - LIGHT_VARIATION, 1 + LIGHT_VARIATION, (3, n))
        setting = [QUALITY_SETTINGS[QUALITIES[q]] for q in quality]
        scenes = {
            "ambient": vary[0] * np.array([looks[s].ambient for s in scene]),
            "key_light": vary[1] * np.array([looks[s].key_light for s in scene]),
            "back_light": vary[2] * np.array([looks[s].back_light for s in scene]),
            "bounces": np.array([clevr.BOUNCE_CHOICES.index(q.bounces) for q in setting]),
            "num_objects": num,
            "position": position,
            "shape": rng.integers(0, len(clevr.SHAPES), (n, k)),
            "material": rng.integers(0, len(clevr.MATERIALS), (n, k)),
            "color": rng.integers(0, len(clevr.COLORS), (n, k)),
            "rotation": rng.uniform(0, 360, (n, k)),
            "size": rng.integers(0, len(clevr.SIZES), (n, k)),
        }
        return {
            "scenes": scenes,
            "resolution": np.array([max(4, int(round(q.resolution_factor * self.image_size))) for q in setting]),
            "spp": np.array([q.spp for q in setting]),
            "floor": np.array([looks[s].floor for s in scene], np.float32).reshape(n, 3),
            "checker": np.array([looks[s].checker for s in scene], np.float32),
        }

    def render(self, scenes: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders ``scenes["cell"]`` (``(n,)`` indices into :data:`CELLS`).

        Returns:
          ``(images, boxes)``: float32 ``(n, size, size, 3)`` and ``(n, max_objects, 6)``.
        """
        self.schema.validate(scenes)
        rng = np.random.default_rng(seed)
        c = self.clevr_scenes(np.asarray(scenes["cell"]), rng)
        images = clevr.render_images(c["scenes"], size=int(self.image_size), resolution=c["resolution"],
                                     spp=c["spp"], rng=rng, floor=c["floor"], checker=c["checker"])
        return images, clevr.object_boxes(c["scenes"], int(self.image_size))
