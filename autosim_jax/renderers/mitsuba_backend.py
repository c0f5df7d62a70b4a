"""The CLEVR-style scenes of :mod:`.clevr`, rendered by Mitsuba 3 (an optional extra).

Same scene fields, camera, lights, geometry and class map as :class:`.clevr.ClevrRenderer`,
drawn by a physically based path tracer instead of the small numpy one: rubber is Mitsuba's
``diffuse``, metal a GGX ``roughconductor`` tinted by the object colour, the sky a
``constant`` emitter and the key and back lights ``directional`` emitters. The ``path``
integrator runs with ``max_depth = bounces + 2`` (camera ray, direct light, then ``bounces``
indirect bounces), so that ``bounces = 0`` lets a metal see the sky only, as in the numpy
renderer. With bounces left Mitsuba also carries light between diffuse surfaces, which the
numpy renderer does not: its images are a little brighter near objects.

Labels come from a second pass through the pixel centres (a ``stratified`` sampler with
``jitter=False`` and one sample), with every shape given a diffuse reflectance that encodes
its class, read back by the ``aov`` integrator's ``albedo`` output. That is exact at pixel
centres, works the same in every variant (``shape_index`` is a position in
``scene.shapes()`` in scalar variants but a registry id in JIT variants), and would survive
Mitsuba merging shapes of equal material, since those have the same class. Scenes are still
loaded with ``optimize=False`` so that nothing is merged. Mitsuba's ``cylinder`` has no caps:
each cylinder gets a ``disk`` on top (the bottom one is never visible).

Detection labels (``labels="boxes"``) are the numpy renderer's: :func:`.clevr.object_boxes`,
the projection of the same scene geometry through the same camera, so the two backends give
identical ``(max_objects, 6)`` boxes by construction. What a test must establish is that
Mitsuba's camera is that camera: :func:`instance_masks` traces one more pass in which each
object slot gets its own code (the floor and the sky read -1), and
``tests/test_renderer_mitsuba.py`` checks that each object's box has IoU >= 0.9 with the
pixel extent of that object in Mitsuba's mask (:func:`mask_boxes`).

The 54-cell detection scenes of :mod:`.clevr_det` are rendered by
:class:`MitsubaDetRenderer` (``"mitsuba-det"``): :meth:`.clevr_det.ClevrDetRenderer.clevr_scenes`
builds the scenes, :func:`scene_dict` takes their render size, samples per pixel, floor albedo
and 1-unit checker tiles (a ``checkerboard`` texture), and the boxes are again
:func:`.clevr.object_boxes`.

Mitsuba is imported when a renderer is built, so this module imports without it.

Example:
  >>> renderer = MitsubaRenderer(image_size=16, max_objects=2)
  >>> images, labels = renderer.render(renderer.example_scenes(1, seed=0), seed=0)
  >>> images.shape, labels.shape
  ((1, 16, 16, 3), (1, 16, 16))
  >>> MitsubaRenderer(image_size=16, max_objects=2, labels="boxes").render(
  ...     renderer.example_scenes(1, seed=0), seed=0)[1].shape
  (1, 2, 6)
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import numpy as np

from . import clevr
from .clevr_det import ClevrDetRenderer
from ..render_pool import render_threads
from ..schema import OutputSpec, SceneSchema

MITSUBA_MISSING = (
    'The Mitsuba backend needs Mitsuba 3 (and Dr.Jit): pip install "autosim_jax[mitsuba]". '
    "The built-in numpy renderers (get_renderer('clevr'), or 'clevr-det' for 'mitsuba-det') draw the "
    "same scenes without it."
)
LLVM_TOO_OLD = (
    "Mitsuba variant {variant!r} needs libLLVM >= 19 (Dr.Jit found {found}); without it the "
    "process aborts at the first render. Falling back to 'scalar_rgb'."
)

# The label pass gives each shape the diffuse reflectance (class + 1) / _CODE; a ray that hits
# nothing reads 0 and decodes to the background.
_CODE = 8.0

# Pixels per side of the image blocks Mitsuba renders in parallel (see scene_dict).
_BLOCK_SIZE = 8


def _import_mitsuba():
    try:
        import drjit as dr
        import mitsuba as mi
    except ImportError as err:
        raise ImportError(MITSUBA_MISSING) from err
    threads = render_threads()  # in a pool worker: its share of the cores, not all of them
    if threads is not None and dr.thread_count() != threads:
        dr.set_thread_count(threads)
    return mi, dr


def select_variant(requested: str = "scalar_rgb") -> str:
    """The Mitsuba variant to render with: ``requested`` when it can run here.

    ``llvm_*`` variants need libLLVM >= 19 (older ones abort the process at the first render,
    which no ``try`` can catch), so they are only chosen after checking
    ``drjit.detail.llvm_version()``; otherwise this warns and returns ``"scalar_rgb"``.

    Args:
      requested: an RGB variant listed by ``mitsuba.variants()``.

    Raises:
      ImportError: when Mitsuba is not installed (naming the extra to install).
      ValueError: for a variant this Mitsuba build lacks or one that is not RGB.

    Example:
      >>> select_variant("scalar_rgb")
      'scalar_rgb'
    """
    mi, dr = _import_mitsuba()
    if requested not in mi.variants() or not requested.endswith("_rgb"):
        rgb = [v for v in mi.variants() if v.endswith("_rgb")]
        raise ValueError(f"Mitsuba variant {requested!r} is not available; choose one of {rgb}.")
    if requested.startswith("llvm"):
        found = None
        try:
            found = tuple(dr.detail.llvm_version())
        except Exception:  # no LLVM at all: drjit raises rather than returning a version
            pass
        if found is None or found < (19,):
            warnings.warn(LLVM_TOO_OLD.format(variant=requested, found=found), RuntimeWarning,
                          stacklevel=2)
            return "scalar_rgb"
    if requested.startswith("cuda") and not dr.has_backend(dr.JitBackend.CUDA):
        warnings.warn(f"Mitsuba variant {requested!r} needs a CUDA device; falling back to "
                      "'scalar_rgb'.", RuntimeWarning, stacklevel=2)
        return "scalar_rgb"
    return requested


def _rgb(value) -> dict:
    return {"type": "rgb", "value": [float(v) for v in np.broadcast_to(value, 3)]}


# Half-side of the square floor: large enough to fill the view up to the top of the image.
_FLOOR_HALF = 200.0


def scene_dict(scenes: dict[str, np.ndarray], index: int, *, labels: bool = False,
               instances: bool = False, image_size: int = 64, resolution: int | None = None,
               spp: int | None = None, floor: Any = None, checker: float = 0.0) -> dict:
    """The Mitsuba scene dictionary of scene ``index`` of a validated CLEVR batch.

    Args:
      scenes: a batch valid for :func:`.clevr.clevr_schema` (``resolution`` and ``spp`` may
        be missing when both are given as arguments, as for :mod:`.clevr_det`'s scenes).
      index: which scene of the batch.
      labels: build the label pass instead (class-coded diffuse shapes, ``aov`` integrator,
        one unjittered sample through each pixel centre of an ``image_size`` film).
      instances: build the instance pass (as ``labels``, but object slot ``k`` of ``K``
        gets the code ``(k + 1) / (K + 1)`` and the floor 0; see :func:`instance_masks`).
      image_size: film size of the label pass (the RGB pass uses the scene's resolution).
      resolution: film width = height of the RGB pass in pixels (default: the scene's
        ``resolution`` field).
      spp: samples per pixel of the RGB pass (default: the scene's ``spp`` field).
      floor: linear RGB albedo of the floor, 3 values (or one) in ``[0, 1]`` (default:
        :data:`.clevr.FLOOR_ALBEDO`).
      checker: contrast in ``[0, 1)`` of 1-unit floor tiles: the tile ``[i, i + 1) x [j, j + 1)``
        is darker by this fraction when ``i + j`` is odd, as in :func:`.clevr.render_images`
        (0: a plain floor).

    Returns:
      A dict for ``mitsuba.load_dict(..., optimize=False)``; plain Python values and Mitsuba
      transforms only (the current variant must be set).

    Raises:
      ValueError: for a resolution or spp below 1, a floor albedo outside ``[0, 1]`` or a
        checker contrast outside ``[0, 1)``.

    Example:
      >>> d = scene_dict(clevr.example_clevr_scenes(clevr.clevr_schema(2), 1, 0), 0)
      >>> d["integrator"]["type"]
      'path'
      >>> d = scene_dict(clevr.example_clevr_scenes(clevr.clevr_schema(2), 1, 0), 0, resolution=16, spp=2,
      ...                floor=[0.55, 0.42, 0.3], checker=0.5)
      >>> d["sensor"]["film"]["width"], d["floor"]["bsdf"]["reflectance"]["type"]
      (16, 'checkerboard')
    """
    mi, _ = _import_mitsuba()
    T = mi.ScalarTransform4f
    labels = labels or instances
    slots = np.shape(scenes["shape"])[1]
    if (resolution is not None and int(resolution) < 1) or (spp is not None and int(spp) < 1):
        raise ValueError(f"resolution and spp must be at least 1, got {resolution} and {spp}.")
    floor = np.broadcast_to(clevr.FLOOR_ALBEDO if floor is None else np.asarray(floor, float), 3)
    if not np.all((floor >= 0) & (floor <= 1)):
        raise ValueError(f"floor albedo must lie in [0, 1], got {floor.tolist()}.")
    if not 0 <= float(checker) < 1:
        raise ValueError(f"checker contrast must lie in [0, 1), got {checker}.")
    if labels:
        res, spp = image_size, 1
    else:
        res = (int(resolution) if resolution is not None
               else clevr.RESOLUTION_CHOICES[int(scenes["resolution"][index])])
        spp = int(spp) if spp is not None else clevr.SPP_CHOICES[int(scenes["spp"][index])]
    sampler = ({"type": "stratified", "sample_count": 1, "jitter": False} if labels
               else {"type": "independent", "sample_count": spp})
    # A fixed block size: left at 0, Mitsuba halves its blocks until there is one per thread,
    # and a pixel's sampler seed depends on its block, so the image would change with the
    # thread count (a pool worker gets its share of the cores; measured: 2 workers on the
    # 16-core host rendered other images than one process).
    integrator = ({"type": "aov", "aovs": "albedo:albedo"} if labels else
                  {"type": "path", "max_depth": clevr.BOUNCE_CHOICES[int(scenes["bounces"][index])] + 2})
    d: dict[str, Any] = {
        "type": "scene",
        "integrator": {**integrator, "block_size": _BLOCK_SIZE},
        "sensor": {
            "type": "perspective", "fov": clevr.CAMERA_FOV_DEG, "fov_axis": "x",
            "near_clip": 0.01, "far_clip": 1000.0,
            "to_world": T().look_at(origin=clevr.CAMERA_ORIGIN.tolist(),
                                    target=clevr.CAMERA_TARGET.tolist(), up=clevr.CAMERA_UP.tolist()),
            # A box filter: each sample counts for its own pixel only, as in the numpy renderer.
            "film": {"type": "hdrfilm", "width": res, "height": res, "rfilter": {"type": "box"},
                     "pixel_format": "rgb", "component_format": "float32"},
            "sampler": sampler,
        },
    }

    def bsdf(cls: int, albedo, metal: bool, slot: int = -1) -> dict:
        if instances:
            return {"type": "diffuse", "reflectance": _rgb((slot + 1) / (slots + 1))}
        if labels:
            return {"type": "diffuse", "reflectance": _rgb((cls + 1) / _CODE)}
        if metal:
            return {"type": "roughconductor", "distribution": "ggx", "alpha": clevr.METAL_ROUGHNESS,
                    "specular_reflectance": _rgb(albedo)}
        return {"type": "diffuse", "reflectance": _rgb(albedo)}

    d["floor"] = {"type": "rectangle", "to_world": T().scale([_FLOOR_HALF, _FLOOR_HALF, 1.0]),
                  "bsdf": bsdf(0, floor, False)}
    if checker and not labels:
        # The rectangle's uv is (x / F + 1) / 2 for half-side F, and Mitsuba's checkerboard
        # has 2 x 2 tiles per uv unit with color0 where both uv fractions are <= 0.5: mapping
        # uv to (x / 2, y / 2) makes its tiles the numpy tracer's 1-unit ones, color0 where
        # floor(x) + floor(y) is even.
        d["floor"]["bsdf"]["reflectance"] = {
            "type": "checkerboard", "color0": _rgb(floor), "color1": _rgb(floor * (1 - float(checker))),
            "to_uv": T().translate([-_FLOOR_HALF / 2, -_FLOOR_HALF / 2, 0.0])
            .scale([_FLOOR_HALF, _FLOOR_HALF, 1.0])}
    for k, obj in enumerate(clevr.scene_objects(scenes, index)):
        material = bsdf(obj.shape + 1, obj.albedo, obj.metal, slot=k)
        x, y, z = (float(v) for v in obj.center)
        kind = clevr.SHAPES[obj.shape]
        if kind == "sphere":
            d[f"object_{k}"] = {"type": "sphere", "center": [x, y, z], "radius": obj.radius,
                                "bsdf": material}
        elif kind == "cube":
            d[f"object_{k}"] = {
                "type": "cube", "bsdf": material,
                "to_world": T().translate([x, y, z]).rotate([0.0, 0.0, 1.0], obj.rotation_deg)
                .scale([obj.half_extent] * 3)}
        else:
            h = obj.half_extent
            d[f"object_{k}"] = {"type": "cylinder", "p0": [x, y, z - h], "p1": [x, y, z + h],
                                "radius": obj.radius, "bsdf": material}
            d[f"object_{k}_cap"] = {"type": "disk", "bsdf": material,
                                    "to_world": T().translate([x, y, z + h]).scale([obj.radius, obj.radius, 1.0])}
    if not labels:
        d["sky"] = {"type": "constant", "radiance": _rgb(scenes["ambient"][index])}
        # Irradiance pi * I makes a white diffuse surface facing the light as bright as I,
        # the numpy renderer's convention.
        for name, direction, field in (("key", clevr.KEY_LIGHT_DIR, "key_light"),
                                       ("back", clevr.BACK_LIGHT_DIR, "back_light")):
            d[f"{name}_light"] = {"type": "directional", "direction": (-direction).tolist(),
                                  "irradiance": _rgb(np.pi * float(scenes[field][index]))}
    return d


def instance_masks(scenes: dict[str, np.ndarray], image_size: int, *, variant: str = "scalar_rgb") -> np.ndarray:
    """Which object slot Mitsuba sees through each pixel centre: ``(n, size, size)`` int32.

    One unjittered sample per pixel centre through Mitsuba's own camera (the ``aov``
    integrator's ``albedo`` of slot-coded diffuse shapes, exact at pixel centres); ``-1``
    where the ray meets the floor or nothing. Occlusion is Mitsuba's: a slot's pixels are
    the visible part of that object.

    Args:
      scenes: CLEVR scenes (the fields :func:`scene_dict` reads; ``resolution`` and ``spp``
        are not needed), e.g. those of :meth:`.clevr_det.ClevrDetRenderer.clevr_scenes`.
      image_size: width and height of the masks.
      variant: the Mitsuba variant (see :func:`select_variant`).

    Returns:
      int32 ``(n, image_size, image_size)``: slot index ``k`` or ``-1``.

    Example:
      >>> s = clevr.example_clevr_scenes(clevr.clevr_schema(2), 1, seed=0, num_objects=0)
      >>> m = instance_masks(s, 16)
      >>> m.shape, sorted(np.unique(m).tolist())
      ((1, 16, 16), [-1, 0])
    """
    mi, _ = _import_mitsuba()
    mi.set_variant(select_variant(variant))
    n, slots = np.shape(scenes["shape"])
    masks = np.empty((n, image_size, image_size), np.int32)
    for i in range(n):
        scene = mi.load_dict(scene_dict(scenes, i, instances=True, image_size=image_size), optimize=False)
        code = np.array(mi.render(scene, seed=0), dtype=np.float32)[..., 0]
        masks[i] = np.rint(code * (slots + 1)).astype(np.int32) - 1
    return masks


def mask_boxes(masks: np.ndarray, slots: int) -> np.ndarray:
    """The pixel extent of each slot in instance masks: ``(n, slots, 4)`` float ``x0, y0, x1, y1``.

    Pixel ``i`` spans ``[i, i + 1)``, as in :func:`.clevr.object_boxes`; a slot with no
    pixels gets NaN.

    Example:
      >>> m = np.full((1, 4, 4), -1); m[0, 1:3, 2] = 0
      >>> mask_boxes(m, 2)[0].tolist()
      [[2.0, 1.0, 3.0, 3.0], [nan, nan, nan, nan]]
    """
    masks = np.asarray(masks)
    out = np.full((masks.shape[0], slots, 4), np.nan)
    for i, k in np.ndindex(masks.shape[0], slots):
        rows, cols = np.nonzero(masks[i] == k)
        if rows.size:
            out[i, k] = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
    return out


@dataclasses.dataclass(frozen=True)
class MitsubaRenderer:
    """CLEVR-style segmentation (or detection) scenes rendered by Mitsuba 3's path tracer.

    Args:
      image_size: width and height of the returned images and label maps (the training size).
      max_objects: object slots per scene, as in :class:`.clevr.ClevrRenderer`.
      variant: Mitsuba variant; ``"scalar_rgb"`` needs nothing else. ``"llvm_ad_rgb"`` is
        only used when libLLVM >= 19 is found (see :func:`select_variant`).
      labels: ``"segmentation"`` (class maps from Mitsuba's label pass, the default) or
        ``"boxes"`` (float32 ``(max_objects, 6)`` rows of :func:`.clevr.object_boxes`, the
        numpy renderer's boxes of the same scenes; no label pass is traced).

    Raises:
      ImportError: when Mitsuba is not installed (naming the ``autosim_jax[mitsuba]`` extra).

    Example:
      >>> r = MitsubaRenderer(image_size=16, max_objects=2)
      >>> x, y = r.render(r.example_scenes(2, seed=0), seed=0)
      >>> x.shape, y.dtype
      ((2, 16, 16, 3), dtype('int32'))
    """

    image_size: int = 64
    max_objects: int = 4
    variant: str = "scalar_rgb"
    labels: str = "segmentation"
    name: ClassVar[str] = "mitsuba"
    schema: SceneSchema = dataclasses.field(init=False, repr=False)
    inputs_spec: OutputSpec = dataclasses.field(init=False, repr=False)
    labels_spec: OutputSpec = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        clevr.declare_scene_and_outputs(self)
        object.__setattr__(self, "variant", select_variant(self.variant))

    def example_scenes(self, n: int, seed: int, **fixed: Any) -> dict[str, np.ndarray]:
        """Plausible scenes (see :func:`.clevr.example_clevr_scenes`)."""
        return clevr.example_clevr_scenes(self.schema, n, seed, **fixed)

    def render_linear(self, scenes: dict[str, np.ndarray], seed: int) -> list[np.ndarray]:
        """Linear RGB renders at each scene's own resolution (no resampling, no tone map).

        Args:
          scenes: a batch valid for ``self.schema``.
          seed: seeds the samplers (scene ``i`` gets the ``i``-th integer drawn from it).

        Returns:
          One float32 ``(res_i, res_i, 3)`` array per scene.
        """
        self.schema.validate(scenes)
        seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(scenes["spp"]))
        return _render_linear(scenes, seeds, self.variant)

    def render(self, scenes: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders a batch of scenes (one Mitsuba scene at a time).

        Args:
          scenes: field name -> ``(n, *field.shape)`` array, as declared by ``self.schema``.
          seed: seeds Mitsuba's samplers; the same seed gives the same images.

        Returns:
          ``(images, labels)``: float32 ``(n, H, W, 3)`` in ``[0, 1]``, and int32 ``(n, H, W)``
          class maps or (``labels="boxes"``) float32 ``(n, max_objects, 6)`` boxes.

        Raises:
          ValueError: for scenes that do not match the schema, naming the field.
        """
        n = self.schema.validate(scenes)
        mi, _ = _import_mitsuba()
        size = int(self.image_size)
        images = _training_images(self.render_linear(scenes, seed), size)
        if self.labels == "boxes":
            return images, clevr.object_boxes(scenes, size)
        labels = np.empty((n, size, size), np.int32)
        for i in range(n):
            scene = mi.load_dict(scene_dict(scenes, i, labels=True, image_size=size), optimize=False)
            code = np.array(mi.render(scene, seed=0), dtype=np.float32)[..., 0]
            labels[i] = np.clip(np.rint(code * _CODE) - 1, 0, len(clevr.CLASS_NAMES) - 1)
        return images, labels


def _render_linear(scenes: dict[str, np.ndarray], seeds: np.ndarray, variant: str,
                   **per_scene: np.ndarray) -> list[np.ndarray]:
    """Linear RGB renders of each scene at its own film size, scene ``i`` with seed ``seeds[i]``.

    ``per_scene``: ``(n, ...)`` arrays of :func:`scene_dict`'s keyword arguments (``resolution``,
    ``spp``, ``floor``, ``checker``); scene ``i`` gets row ``i`` of each.
    """
    mi, _ = _import_mitsuba()
    mi.set_variant(variant)  # process-global in Mitsuba: set before every use
    out = []
    for i, s in enumerate(seeds):
        d = scene_dict(scenes, i, **{k: v[i] for k, v in per_scene.items()})
        scene = mi.load_dict(d, optimize=False)
        out.append(np.array(mi.render(scene, seed=int(s)), dtype=np.float32)[..., :3])
    return out


def _training_images(linear: list[np.ndarray], size: int) -> np.ndarray:
    """Tone-mapped float32 ``(n, size, size, 3)``: each render resampled to the training size as
    the numpy tracer resamples its own (area average down, bilinear up)."""
    images = np.empty((len(linear), size, size, 3), np.float32)
    for i, x in enumerate(linear):
        images[i] = clevr.resample(x[None], size)[0]
    return np.ascontiguousarray(clevr.tonemap(images))


@dataclasses.dataclass(frozen=True)
class MitsubaDetRenderer(ClevrDetRenderer):
    """The clevr-det scenes (the 54-cell categorical) rendered by Mitsuba 3's path tracer.

    A variant of :class:`.clevr_det.ClevrDetRenderer` with the same schema
    (:func:`.clevr_det.detection_schema`), the same scenes
    (:meth:`~.clevr_det.ClevrDetRenderer.clevr_scenes`, drawn from the render seed first, so
    that one seed gives both backends the same objects and lights) and the same boxes
    (:func:`.clevr.object_boxes`). Mitsuba traces each scene's floor albedo, its 1-unit
    checker tiles and its light rig, at the cell's quality: ``low`` renders 1 sample per pixel
    at half the training size with no bounce, then upsamples bilinearly as the numpy path
    does; ``high`` 8 samples per pixel at the full size with 2 bounces
    (:data:`.clevr_det.QUALITY_SETTINGS`).

    Args:
      image_size: training width and height in pixels (even, at least 8).
      max_objects: at most this many objects per image (the box label rows).
      variant: Mitsuba variant (see :func:`select_variant`).

    Raises:
      ImportError: when Mitsuba is not installed (naming the ``autosim_jax[mitsuba]`` extra).

    Example:
      >>> r = MitsubaDetRenderer(image_size=16)
      >>> x, y = r.render({"cell": np.array([0, 53])}, seed=0)
      >>> x.shape, x.dtype, y.shape
      ((2, 16, 16, 3), dtype('float32'), (2, 3, 6))
    """

    variant: str = "scalar_rgb"
    name: ClassVar[str] = "mitsuba-det"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "variant", select_variant(self.variant))

    def render(self, scenes: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders ``scenes["cell"]`` (``(n,)`` indices into :data:`.clevr_det.CELLS`).

        Args:
          scenes: ``{"cell": (n,) int}``, as declared by ``self.schema``.
          seed: draws the objects and light variation, then seeds Mitsuba's samplers; the
            same seed gives the same images.

        Returns:
          ``(images, boxes)``: float32 ``(n, size, size, 3)`` in ``[0, 1]`` and float32
          ``(n, max_objects, 6)``.

        Raises:
          ValueError: for scenes that do not match the schema, naming the field.
        """
        self.schema.validate(scenes)
        rng = np.random.default_rng(seed)
        c = self.clevr_scenes(np.asarray(scenes["cell"]), rng)
        # Sampler seeds drawn after the scenes, where the numpy renderer draws its jitter: the
        # scenes, and so the boxes, are those of clevr-det for the same seed.
        seeds = rng.integers(0, 2**31 - 1, size=len(c["spp"]))
        linear = _render_linear(c["scenes"], seeds, self.variant, resolution=c["resolution"], spp=c["spp"],
                                floor=c["floor"], checker=c["checker"])
        size = int(self.image_size)
        return _training_images(linear, size), clevr.object_boxes(c["scenes"], size)
