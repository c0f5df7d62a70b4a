"""Digits on canvases for detection: printed glyphs (simulated) and real handwriting (validation).

The sim-to-real counterpart of :mod:`~autosim_jax.renderers.clevr_det`, with the same
54-cell categorical (3 backgrounds x 9 locations x 2 qualities) as its one scene field.
:class:`DigitCanvasRenderer` draws the glyphs of :mod:`~autosim_jax.renderers.glyphs`
(matplotlib's fonts, rasterised by PIL) on a ``size x size`` grey canvas (values in [0, 1]):

* **scene** (:data:`BACKGROUNDS`): ``scene1`` bright ink on a black ground (as scikit-learn's
  digits), ``scene2`` dark ink on light paper (the opposite polarity), ``scene3`` bright ink
  on a dark ground ruled with grey lines every 6 pixels under a vertical gradient (clutter);
* **location** (:data:`~autosim_jax.renderers.clevr_det.LOCATIONS`): the first digit's
  anchor, on a 3 x 3 grid at 20 / 50 / 80% of the canvas, moved by up to
  :data:`JITTER` of the digit's box; an image holds a second digit, at another anchor drawn
  uniformly, with probability 1/2;
* **quality**: ``low`` rasterises each glyph at 8 x 8 (as scikit-learn's digits are) and
  upsamples it bilinearly to the digit's box; ``high`` area-averages the 64 x 64 drawing
  straight to the box (sharp).

Each digit's class, font, size, stroke, rotation and shear come from the render seed. The
label rows are (class = digit, x0, y0, x1, y1, valid) in canvas pixels: the projection of
the glyph's ink rectangle through the drawing's affine map (exact for an upright glyph).

:func:`real_digit_canvases` places scikit-learn's *real* handwritten digits (8 x 8,
upsampled bilinearly, box = the extent of their nonzero pixels) on scene1's black ground at
uniformly drawn anchors: the validation and test images of the ``digits-det`` experiment.

Example:
  >>> r = DigitCanvasRenderer(image_size=32)
  >>> x, y = r.render({"cell": np.array([0, 53])}, seed=0)
  >>> x.shape, y.shape
  ((2, 32, 32, 1), (2, 2, 6))
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import numpy as np

from ..schema import Field, OutputSpec, SceneSchema
from . import glyphs
from .clevr import BOX_COLUMNS, resample
from .clevr_det import LOCATIONS, QUALITIES, cell_parts

BACKGROUNDS = ("scene1", "scene2", "scene3")
CELLS = tuple(f"{b}/{loc}/{q}" for b in BACKGROUNDS for loc in LOCATIONS for q in QUALITIES)
ANCHOR_FRACTIONS = (0.2, 0.5, 0.8)
BOX_FRACTION = 0.28  # digit box side / canvas side
JITTER = 0.15  # largest shift of a digit, as a fraction of its box side
MAX_DIGITS = 2


def anchors(size: int) -> np.ndarray:
    """``(9, 2)`` pixel centres (x, y) of the locations on a ``size``-pixel canvas."""
    rows, cols = np.divmod(np.arange(9), 3)
    f = np.asarray(ANCHOR_FRACTIONS)
    return np.stack([f[cols], f[rows]], -1) * size


def _background(scene: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(ground image (size, size), ink value) of one background."""
    noise = 0.02 * rng.standard_normal((size, size))
    if scene == 0:
        return np.clip(noise, 0, 1), 1.0
    if scene == 1:
        return np.clip(0.8 + noise, 0, 1), 0.1
    y = np.arange(size)[:, None] * np.ones((1, size))
    ground = 0.1 + 0.15 * y / size + 0.25 * (np.arange(size)[:, None] % 6 == 0) + noise
    return np.clip(ground, 0, 1), 1.0


def _glyph_patch(digit, font, size, stroke, rotation, shear, box: int, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """(ink patch (box, box) in [0, 1], ink rectangle's box (4,) in patch pixels)."""
    ink = glyphs._draw(digit, font, size, stroke, rotation, shear, np.zeros(2), 0.0)  # (64, 64)
    if quality == 0:
        small = ink.reshape(8, 8, 8, 8).mean(axis=(1, 3))
        patch = resample(small[None, :, :, None], box)[0, :, :, 0]
    else:
        patch = resample(ink[None, :, :, None], box)[0, :, :, 0]
    glyph, (cx, cy), height = glyphs._master_glyph(font, digit, int(round(stroke * glyphs._GLYPH_PX)))
    scale = size * glyphs.CANVAS / height
    th = np.radians(rotation)
    a = scale * np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]]) @ np.array([[1.0, -shear], [0, 1]])
    corners = np.array([[0, 0], [glyph.width, 0], [0, glyph.height], [glyph.width, glyph.height]], float)
    out = glyphs.CANVAS / 2 + (corners - [cx, cy]) @ a.T
    k = box / glyphs.CANVAS
    return np.clip(patch, 0, 1), np.concatenate([out.min(0), out.max(0)]) * k


def _paste(canvas: np.ndarray, patch: np.ndarray, x0: int, y0: int, ink: float) -> None:
    """Blends ``patch`` (ink coverage) into ``canvas`` at integer offset (x0, y0), clipped."""
    size, b = canvas.shape[0], patch.shape[0]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + b, size), min(y0 + b, size)
    if xa >= xb or ya >= yb:
        return
    p = patch[ya - y0:yb - y0, xa - x0:xb - x0]
    canvas[ya:yb, xa:xb] = canvas[ya:yb, xa:xb] * (1 - p) + ink * p


def _box_row(cls: int, box: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    lo = np.clip(box[:2] + [x0, y0], 0, size)
    hi = np.clip(box[2:] + [x0, y0], 0, size)
    valid = bool(np.all(hi - lo >= 1.0))
    return np.array([cls, *lo, *hi, 1.0]) if valid else np.zeros(len(BOX_COLUMNS))


@dataclasses.dataclass(frozen=True)
class DigitCanvasRenderer:
    """Printed digits on ``image_size`` canvases; one scene field, the 54-way ``cell``.

    Args:
      image_size: canvas width and height in pixels (even, at least 16).

    ``render(scenes, seed)`` returns images float32 ``(n, size, size, 1)`` in [0, 1] and box
    labels float32 ``(n, 2, 6)`` (class = digit).
    """

    image_size: int = 32
    max_objects: ClassVar[int] = MAX_DIGITS
    name: ClassVar[str] = "digit-canvas"
    class_names: ClassVar[tuple[str, ...]] = tuple(str(d) for d in range(10))
    schema: SceneSchema = dataclasses.field(init=False, repr=False)
    inputs_spec: OutputSpec = dataclasses.field(init=False, repr=False)
    labels_spec: OutputSpec = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if int(self.image_size) < 16 or self.image_size % 2:
            raise ValueError(f"image_size must be even and at least 16, got {self.image_size}.")
        glyphs.font_paths()
        object.__setattr__(self, "schema", SceneSchema((Field.categorical(
            "cell", CELLS, doc="background/location/quality of the first digit"),)))
        object.__setattr__(self, "inputs_spec", OutputSpec((self.image_size, self.image_size, 1), np.float32))
        object.__setattr__(self, "labels_spec", OutputSpec((MAX_DIGITS, len(BOX_COLUMNS)), np.float32))

    @property
    def box(self) -> int:
        return max(8, int(round(BOX_FRACTION * self.image_size)))

    def render(self, scenes: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders ``scenes["cell"]`` (``(n,)`` indices into :data:`CELLS`)."""
        self.schema.validate(scenes)
        cells = np.asarray(scenes["cell"])
        n, size, b = len(cells), int(self.image_size), self.box
        rng = np.random.default_rng(seed)
        scene, location, quality = cell_parts(cells)
        images = np.empty((n, size, size, 1), np.float32)
        labels = np.zeros((n, MAX_DIGITS, len(BOX_COLUMNS)), np.float32)
        centres = anchors(size)
        for i in range(n):
            canvas, ink = _background(int(scene[i]), size, rng)
            locs = [int(location[i])]
            if rng.random() < 0.5:
                locs.append(int(rng.choice([j for j in range(9) if j != locs[0]])))
            for k, loc in enumerate(locs):
                digit = int(rng.integers(10))
                patch, box = _glyph_patch(
                    digit, glyphs.FONTS[int(rng.integers(len(glyphs.FONTS)))], rng.uniform(0.75, 0.95),
                    rng.uniform(0, 0.03), rng.uniform(-10, 10), rng.uniform(-0.2, 0.2), b, int(quality[i]))
                x0, y0 = np.round(centres[loc] - b / 2 + rng.uniform(-JITTER, JITTER, 2) * b).astype(int)
                _paste(canvas, patch, x0, y0, ink)
                labels[i, k] = _box_row(digit, box, x0, y0, size)
            images[i, :, :, 0] = canvas
        return images, labels


def real_digit_canvases(split: Literal["validation", "test"], n: int, *, size: int = 32,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` canvases holding scikit-learn's real handwritten digits, with their boxes.

    Digits of the ``split`` half of :func:`~autosim_jax.renderers.glyphs.load_real_digits`
    are taken in a seeded random order (reused when ``n`` exceeds the half), scaled from
    0..16 to 0..1, upsampled bilinearly to the digit box and pasted on scene1's black ground
    at uniformly drawn anchors (a second digit with probability 1/2), as
    :class:`DigitCanvasRenderer` places glyphs. A box is the extent of the digit's nonzero
    8 x 8 pixels, scaled to the box.

    Returns:
      ``(images, labels)``: float32 ``(n, size, size, 1)`` and ``(n, 2, 6)``.

    Example:
      >>> x, y = real_digit_canvases("validation", 4)
      >>> x.shape, y.shape, y[:, 0, 5].tolist()
      ((4, 32, 32, 1), (4, 2, 6), [1.0, 1.0, 1.0, 1.0])
    """
    digits, classes = glyphs.load_real_digits(split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.resize(np.arange(len(classes)), 2 * n))
    b = DigitCanvasRenderer(image_size=size).box
    centres = anchors(size)
    images = np.empty((n, size, size, 1), np.float32)
    labels = np.zeros((n, MAX_DIGITS, len(BOX_COLUMNS)), np.float32)
    for i in range(n):
        canvas, ink = _background(0, size, rng)
        locs = list(rng.choice(9, size=2, replace=False))[: 1 + int(rng.random() < 0.5)]
        for k, loc in enumerate(locs):
            j = order[2 * i + k]
            small = digits[j, :, :, 0] / glyphs.MAX_VALUE
            patch = np.clip(resample(small[None, :, :, None], b)[0, :, :, 0], 0, 1)
            ys, xs = np.nonzero(small > 0)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float) * b / 8
            x0, y0 = np.round(centres[loc] - b / 2 + rng.uniform(-JITTER, JITTER, 2) * b).astype(int)
            _paste(canvas, patch, x0, y0, ink)
            labels[i, k] = _box_row(int(classes[j]), box, x0, y0, size)
        images[i, :, :, 0] = canvas
    return images, labels
