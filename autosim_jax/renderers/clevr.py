"""CLEVR-style scenes rendered by a small numpy ray tracer: the library's default renderer.

Spheres, cubes (rotated about the vertical axis) and capped cylinders stand on a grey floor
and are seen by a fixed camera looking down at 40 degrees, as in the CLEVR dataset
generator (Johnson et al., CVPR 2017) that AutoSimulate optimises in its section 5.1. The
scene fields are the rendering parameters of the paper: ambient, key and back light
intensities, samples per pixel, light bounces, render resolution, and the number,
positions, shapes, materials, colours, rotations and sizes of the objects.

The tracer is plain numpy, vectorised over pixels, samples and scenes: the only Python loops
run over blocks of scenes that share a resolution and spp, object slots, shape kinds and
bounces. It is a real Monte Carlo renderer at small scale, so that quality costs time as it
does in Blender or Mitsuba (at 64 x 64 pixels and 4 spp it takes about half the time of
Mitsuba 3 ``scalar_rgb`` on one core: ``benchmarks/renderer_speed.py``):

* every pixel averages ``spp`` rays jittered uniformly inside it (anti-aliasing noise);
* ambient light comes from a uniform sky and is estimated with one cosine-distributed
  occlusion ray per sample (the sampling noise of a path tracer, falling as ``1/sqrt(spp)``);
* key and back lights are directional with hard shadows (one shadow ray each);
* "rubber" is Lambertian; "metal" is a tinted mirror with a glossy highlight, whose
  reflection ray is traced through the scene for ``bounces`` more bounces (with no bounce
  left it only sees the sky, or black where the scene occludes it);
* the image is rendered at ``resolution`` pixels and resampled (area average down, bilinear
  up) to the fixed training size.

Labels come from a separate 1-sample pass through the centre of each training pixel, so they
are exactly the visible surface and do not depend on the sampling noise:
0 = background (floor), 1 = sphere, 2 = cube, 3 = cylinder.

References:
  Behl et al., AutoSimulate, ECCV 2020, section 5.1 and Fig. 5.

Example:
  >>> renderer = ClevrRenderer(image_size=32, max_objects=3)
  >>> scenes = renderer.example_scenes(2, seed=0)
  >>> images, labels = renderer.render(scenes, seed=0)
  >>> images.shape, images.dtype, labels.shape, labels.dtype
  ((2, 32, 32, 3), dtype('float32'), (2, 32, 32), dtype('int32'))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ..schema import Field, OutputSpec, SceneSchema

# --- Scene vocabulary -------------------------------------------------------------------

SHAPES = ("sphere", "cube", "cylinder")
MATERIALS = ("rubber", "metal")
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
# CLEVR's colours (properties.json, 0..255); CLEVR hands them to Blender as linear
# reflectances, and so do we.
COLOR_RGB = np.array(
    [[87, 87, 87], [173, 35, 35], [42, 75, 215], [29, 105, 20],
     [129, 74, 25], [129, 38, 192], [41, 208, 208], [255, 238, 51]], dtype=np.float32) / 255.0
SIZES = ("small", "large")
# CLEVR uses radii 0.35 / 0.7 on a 480x320 image; at a 64x64 training size a small CLEVR
# object would be about 4 pixels wide, so ours are a little larger.
SIZE_RADIUS = (0.5, 0.8)
CLASS_NAMES = ("background", "sphere", "cube", "cylinder")

SPP_CHOICES = (1, 2, 4, 8, 16)
BOUNCE_CHOICES = (0, 1, 2, 3)
RESOLUTION_CHOICES = (32, 48, 64, 96, 128)

# Object centres lie in [-FLOOR_HALF, FLOOR_HALF]^2, as in CLEVR.
FLOOR_HALF = 3.0
FLOOR_ALBEDO = 0.4

# --- Camera and lights (shared with the Mitsuba backend, so both see the same scene) ------

# CLEVR's camera azimuth and distance, raised from 26 to 40 degrees of elevation so that the
# floor square fills more of a square image; the target is lowered to centre it, and the
# field of view holds all object centres (a large object in a far corner may be cut).
CAMERA_ORIGIN = np.array([6.30, -5.93, 7.26])
CAMERA_TARGET = np.array([0.0, 0.0, -1.0])
CAMERA_UP = np.array([0.0, 0.0, 1.0])
CAMERA_FOV_DEG = 50.0  # horizontal (and vertical: the image is square)

# Unit vectors pointing *towards* the directional lights: the key light comes from the front
# left of the camera and casts visible shadows; the back light rims the objects from behind.
KEY_LIGHT_DIR = np.array([0.3, -1.0, 1.2]) / np.linalg.norm([0.3, -1.0, 1.2])
BACK_LIGHT_DIR = np.array([-1.0, 1.3, 2.4]) / np.linalg.norm([-1.0, 1.3, 2.4])

# Glossy highlight of metals: a normalised Phong lobe, about as sharp as a GGX lobe of
# roughness 0.1 (what the Mitsuba backend uses).
METAL_ROUGHNESS = 0.1
_PHONG_EXPONENT = 2.0 / METAL_ROUGHNESS**2

_EPS = np.float32(1e-3)  # offset of secondary ray origins, against self-intersection
_RAYS_PER_CHUNK = 1 << 18  # bounds memory (a few tens of MB) and keeps arrays in cache
_DT = np.float32

_SKY, _FLOOR = -2, -1  # slot codes of a ray that hit nothing / the floor


def camera_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The pinhole camera: origin, right, up, forward (unit vectors) and tan(fov / 2).

    Image column ``x`` and row ``y`` (pixel centres at ``+0.5``) of an ``R x R`` image look
    along ``forward + tan * ((2 (x + 0.5) / R - 1) right + (1 - 2 (y + 0.5) / R) up)``.

    Example:
      >>> origin, right, up, forward, tan = camera_frame()
      >>> bool(abs(right @ forward) < 1e-12)
      True
    """
    forward = CAMERA_TARGET - CAMERA_ORIGIN
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, CAMERA_UP)
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    return CAMERA_ORIGIN.copy(), right, up, forward, float(np.tan(np.radians(CAMERA_FOV_DEG) / 2))


def project(points: np.ndarray, resolution: int) -> np.ndarray:
    """Pixel coordinates ``(x, y)`` of world points in an image of ``resolution`` pixels.

    Args:
      points: ``(..., 3)`` world points in front of the camera.
      resolution: image width and height in pixels.

    Returns:
      ``(..., 2)`` continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``).

    Example:
      >>> np.round(project(CAMERA_TARGET, 64), 6)  # the image centre
      array([32., 32.])
    """
    origin, right, up, forward, tan = camera_frame()
    rel = np.asarray(points, np.float64) - origin
    depth = rel @ forward
    u = rel @ right / (depth * tan)
    v = rel @ up / (depth * tan)
    return np.stack([(u + 1) * resolution / 2, (1 - v) * resolution / 2], axis=-1)


# --- Schema -------------------------------------------------------------------------------

def clevr_schema(max_objects: int = 4) -> SceneSchema:
    """The scene fields of a CLEVR-style scene with up to ``max_objects`` objects.

    Per-object fields have shape ``(max_objects,)`` (positions ``(max_objects, 2)``); only the
    first ``num_objects`` slots are drawn, the rest must still hold valid values.

    Example:
      >>> clevr_schema(3)["position"].shape
      (3, 2)
    """
    k = int(max_objects)
    if k < 2:
        raise ValueError(f"max_objects must be at least 2 (num_objects is a categorical field "
                         f"over 1..max_objects and needs two choices), got {max_objects}.")
    return SceneSchema((
        Field.continuous("ambient", 0.0, 1.0, doc="radiance of the uniform sky (ambient light)"),
        Field.continuous("key_light", 0.0, 2.0, doc="key light irradiance / pi (directional, hard shadows)"),
        Field.continuous("back_light", 0.0, 1.0, doc="back light irradiance / pi (directional, from behind)"),
        Field.categorical("spp", SPP_CHOICES, doc="samples per pixel (jittered, Monte Carlo ambient)"),
        Field.categorical("bounces", BOUNCE_CHOICES, doc="extra bounces traced after a metal surface"),
        Field.categorical("resolution", RESOLUTION_CHOICES,
                          doc="render width = height in pixels, before resampling to the training size"),
        Field.categorical("num_objects", tuple(range(1, k + 1)), doc="objects drawn (the first slots)"),
        Field.continuous("position", -FLOOR_HALF, FLOOR_HALF, shape=(k, 2),
                         doc="object centre (x, y) on the floor, world units"),
        Field.categorical("shape", SHAPES, shape=(k,), doc="object shape; the label class is index + 1"),
        Field.categorical("material", MATERIALS, shape=(k,), doc="rubber (diffuse) or metal (mirror)"),
        Field.categorical("color", COLORS, shape=(k,), doc="CLEVR colour"),
        Field.continuous("rotation", 0.0, 360.0, shape=(k,), doc="rotation about the vertical axis, degrees"),
        Field.categorical("size", SIZES, shape=(k,), doc=f"object radius {SIZE_RADIUS} (cube half-side r/sqrt 2)"),
    ))


def example_clevr_scenes(schema: SceneSchema, n: int, seed: int, **fixed: Any) -> dict[str, np.ndarray]:
    """Draws ``n`` plausible CLEVR scenes: uniform objects, default lights and quality.

    Objects are uniform over the floor and the categorical choices; lights are near
    (ambient 0.35, key 1.0, back 0.4); quality is 4 spp, 1 bounce, 64 pixels. Keyword
    arguments replace whole fields by the given per-scene value, broadcast to the batch;
    categorical values are category indices, as everywhere in a scene batch (``spp=0`` is
    1 sample per pixel, ``num_objects=0`` one object).

    Example:
      >>> s = example_clevr_scenes(clevr_schema(2), 3, seed=0, num_objects=1)
      >>> s["num_objects"].tolist()
      [1, 1, 1]
    """
    rng = np.random.default_rng(seed)
    k = schema["shape"].shape[0]

    def cat(name, shape=()):
        return rng.integers(0, schema[name].num_categories, size=(n, *shape))

    scenes = {
        "ambient": rng.uniform(0.25, 0.45, n),
        "key_light": rng.uniform(0.8, 1.2, n),
        "back_light": rng.uniform(0.2, 0.6, n),
        "spp": np.full(n, SPP_CHOICES.index(4)),
        "bounces": np.full(n, BOUNCE_CHOICES.index(1)),
        "resolution": np.full(n, RESOLUTION_CHOICES.index(64)),
        "num_objects": cat("num_objects"),
        "position": rng.uniform(-FLOOR_HALF, FLOOR_HALF, (n, k, 2)),
        "shape": cat("shape", (k,)),
        "material": cat("material", (k,)),
        "color": cat("color", (k,)),
        "rotation": rng.uniform(0.0, 360.0, (n, k)),
        "size": cat("size", (k,)),
    }
    for name, value in fixed.items():
        field = schema[name]
        dtype = np.int64 if field.kind == "categorical" else np.float64
        scenes[name] = np.broadcast_to(np.asarray(value, dtype), (n, *field.shape)).copy()
    return scenes


class SceneObject(NamedTuple):
    """One drawn object, in world units: what both backends build their geometry from."""

    shape: int  # index into SHAPES; the label class is shape + 1
    center: np.ndarray  # (3,) centre of the object (the floor is z = 0)
    radius: float  # sphere / cylinder radius; a cube's half-side is radius / sqrt(2)
    half_extent: float  # half-side of a cube, radius otherwise (cylinder half-height = radius)
    rotation_deg: float  # about +z, counter-clockwise seen from above
    albedo: np.ndarray  # (3,) linear reflectance
    metal: bool


def scene_objects(scenes: dict[str, np.ndarray], index: int) -> list[SceneObject]:
    """The objects drawn in scene ``index`` of a validated batch.

    Example:
      >>> s = example_clevr_scenes(clevr_schema(2), 1, seed=0, num_objects=1, shape=0)
      >>> [SHAPES[o.shape] for o in scene_objects(s, 0)]  # num_objects index 1: two objects
      ['sphere', 'sphere']
    """
    objects = []
    for k in range(int(scenes["num_objects"][index]) + 1):
        shape = int(scenes["shape"][index, k])
        radius = SIZE_RADIUS[int(scenes["size"][index, k])]
        # CLEVR shrinks cubes by sqrt(2) so that a cube and a sphere of one size look alike.
        half = radius / np.sqrt(2.0) if SHAPES[shape] == "cube" else radius
        x, y = (float(v) for v in scenes["position"][index, k])
        objects.append(SceneObject(
            shape=shape, center=np.array([x, y, half]), radius=radius, half_extent=half,
            rotation_deg=float(scenes["rotation"][index, k]),
            albedo=COLOR_RGB[int(scenes["color"][index, k])].astype(np.float64),
            metal=MATERIALS[int(scenes["material"][index, k])] == "metal"))
    return objects


# --- Resampling to the training size --------------------------------------------------------

@functools.lru_cache(maxsize=64)
def resample_matrix(src: int, dst: int) -> np.ndarray:
    """``(dst, src)`` linear map resampling one image axis: area average down, bilinear up.

    Applied to both axes (``A @ img @ A.T``) it turns a ``src x src`` image into ``dst x dst``.
    Each row sums to one, so a constant image stays constant.

    Example:
      >>> resample_matrix(4, 2)
      array([[0.5, 0.5, 0. , 0. ],
             [0. , 0. , 0.5, 0.5]], dtype=float32)
    """
    if src == dst:
        m = np.eye(dst)
    elif src > dst:
        # Output pixel j covers input [j s, (j + 1) s) with s = src / dst; weights are overlaps.
        edges = np.arange(dst + 1) * (src / dst)
        lo = np.maximum(edges[:-1, None], np.arange(src)[None, :])
        hi = np.minimum(edges[1:, None], np.arange(src)[None, :] + 1)
        m = np.clip(hi - lo, 0, None) / (src / dst)
    else:
        # Bilinear between input pixel centres, clamped at the border (align_corners=False).
        x = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, src - 1)
        w = x - i0
        m = np.zeros((dst, src))
        np.add.at(m, (np.arange(dst), i0), 1 - w)
        np.add.at(m, (np.arange(dst), i1), w)
    m = m.astype(np.float32)
    m.setflags(write=False)
    return m


def resample(images: np.ndarray, dst: int) -> np.ndarray:
    """Resamples ``(n, src, src, c)`` images to ``(n, dst, dst, c)`` (see :func:`resample_matrix`).

    Example:
      >>> resample(np.ones((1, 8, 8, 3), np.float32), 4).shape
      (1, 4, 4, 3)
    """
    src = images.shape[1]
    if src == dst:
        return np.array(images, np.float32)
    m = resample_matrix(src, dst)
    planes = np.moveaxis(np.asarray(images, np.float32), -1, 1)  # (n, c, src, src)
    out = m @ planes @ m.T
    return np.ascontiguousarray(np.moveaxis(out, 1, -1))


# --- The tracer -----------------------------------------------------------------------------
#
# Rays are held as (3, *B) arrays of x, y, z rows. A render traces a dense block B = (m, P) of
# m scenes with the same resolution and spp; every per-scene quantity is then gathered with
# ``img = arange(m)[:, None]`` and broadcasts over the P rays of its scene for free. Rays that
# need more work (candidates of one object, metal reflections) are compacted to 1-D, with
# ``img`` then holding each ray's scene.

class _Batch(NamedTuple):
    """Per-scene arrays of a block of scenes, in the layout the tracer gathers from."""

    ambient: np.ndarray  # (m,) float32
    key: np.ndarray  # (m,)
    back: np.ndarray  # (m,)
    bounces: np.ndarray  # (m,) int
    active: np.ndarray  # (m, K) bool: slot drawn
    shape: np.ndarray  # (m, K) int
    center: np.ndarray  # (m, K, 3) float32
    size: np.ndarray  # (m, K) radius (sphere, cylinder) or half-side (cube)
    cos: np.ndarray  # (m, K) cos of the rotation
    sin: np.ndarray  # (m, K)
    bound2: np.ndarray  # (m, K) squared bounding-sphere radius for culling; -inf: empty slot
    albedo: np.ndarray  # (m, K, 3)
    metal: np.ndarray  # (m, K) bool
    floor: np.ndarray  # (m, 3) float32 floor albedo
    checker: np.ndarray | None  # (m,) float32 contrast of 1-unit floor tiles; None: a plain floor


def _batch(scenes: dict[str, np.ndarray], sel: np.ndarray, floor: np.ndarray | None = None,
           checker: np.ndarray | None = None) -> _Batch:
    k = scenes["shape"].shape[1]
    shape = scenes["shape"][sel].astype(np.int64)
    radius = np.asarray(SIZE_RADIUS, _DT)[scenes["size"][sel]]
    is_cube = shape == SHAPES.index("cube")
    size = np.where(is_cube, radius / np.sqrt(_DT(2)), radius).astype(_DT)
    # Bounding spheres: a sphere is its own; a cube's circumradius is sqrt(3) half-sides; a
    # cylinder of height 2r has circumradius sqrt(2) r. The 1% margin covers rounding.
    bound2 = size**2 * np.select([shape == 0, is_cube], [_DT(1), _DT(3)], _DT(2)) * _DT(1.02)
    center = np.concatenate([scenes["position"][sel].astype(_DT), size[..., None]], axis=-1)
    theta = np.radians(scenes["rotation"][sel]).astype(_DT)
    active = np.arange(k)[None, :] <= scenes["num_objects"][sel][:, None]
    return _Batch(
        ambient=scenes["ambient"][sel].astype(_DT), key=scenes["key_light"][sel].astype(_DT),
        back=scenes["back_light"][sel].astype(_DT),
        bounces=np.asarray(BOUNCE_CHOICES)[scenes["bounces"][sel]], active=active,
        shape=shape, center=center, size=size, cos=np.cos(theta), sin=np.sin(theta),
        bound2=np.where(active, bound2, -np.inf).astype(_DT), albedo=COLOR_RGB[scenes["color"][sel]],
        metal=np.asarray([m == "metal" for m in MATERIALS])[scenes["material"][sel]],
        floor=(np.full((len(sel), 3), FLOOR_ALBEDO, _DT) if floor is None else np.asarray(floor, _DT)[sel]),
        checker=None if checker is None or not np.any(np.asarray(checker)[sel]) else np.asarray(checker, _DT)[sel])


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _normalize(v):
    return v / np.sqrt(_dot(v, v))


def _rows(v, ndim):
    """A (3,) vector as a (3, 1, ..., 1) array that broadcasts against (3, *B) rays."""
    return np.asarray(v, _DT).reshape((3,) + (1,) * ndim)


def _hit_sphere(o, d, c, r):
    """Nearest t > eps of 1-D rays (3, N) against spheres (centres (3, N), radii (N,))."""
    oc = o - c
    b = _dot(oc, d)
    disc = b * b - (_dot(oc, oc) - r * r)
    sq = np.sqrt(np.maximum(disc, 0))
    t = -b - sq
    t = np.where(t > _EPS, t, -b + sq)  # origin inside: not for our rays, but exact anyway
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf).astype(_DT)
    return t, (o + np.where(np.isfinite(t), t, 0) * d - c) / r


def _hit_cube(o, d, c, h, cos, sin):
    """Slab test in the cube's frame (rotated by -theta about z around its centre)."""
    p = o - c
    lo = np.stack([cos * p[0] + sin * p[1], -sin * p[0] + cos * p[1], p[2]])
    ld = np.stack([cos * d[0] + sin * d[1], -sin * d[0] + cos * d[1], d[2]])
    ld = np.where(np.abs(ld) < 1e-12, _DT(1e-12), ld)
    inv = 1 / ld
    t1 = (-h - lo) * inv
    t2 = (h - lo) * inv
    tn = np.minimum(t1, t2)
    t_near = tn.max(axis=0)
    t_far = np.maximum(t1, t2).min(axis=0)
    t = np.where(t_near > _EPS, t_near, t_far)
    t = np.where((t_far >= t_near) & (t > _EPS), t, np.inf).astype(_DT)
    # The face hit is on the axis whose near slab distance is the largest.
    axis = tn.argmax(axis=0)
    cols = np.arange(lo.shape[1])
    ln = np.zeros_like(lo)
    ln[axis, cols] = -np.sign(ld[axis, cols])
    n = np.stack([cos * ln[0] - sin * ln[1], sin * ln[0] + cos * ln[1], ln[2]])
    return t, n


def _hit_cylinder(o, d, c, r):
    """Vertical cylinder of radius r from z = c_z - r to c_z + r, with both caps."""
    p = o - c
    a = d[0] * d[0] + d[1] * d[1]
    a = np.where(a < 1e-12, _DT(1e-12), a)
    b = p[0] * d[0] + p[1] * d[1]
    disc = b * b - a * (p[0] * p[0] + p[1] * p[1] - r * r)
    sq = np.sqrt(np.maximum(disc, 0))
    t_side = (-b - sq) / a
    t_side = np.where(t_side > _EPS, t_side, (-b + sq) / a)
    z_side = p[2] + t_side * d[2]
    t_side = np.where((disc >= 0) & (t_side > _EPS) & (np.abs(z_side) <= r), t_side, np.inf)
    dz = np.where(np.abs(d[2]) < 1e-12, _DT(1e-12), d[2])
    t_lo, t_hi = (-r - p[2]) / dz, (r - p[2]) / dz
    t_cap = np.minimum(t_lo, t_hi)  # the cap plane met first, unless it lies behind the origin
    t_cap = np.where(t_cap > _EPS, t_cap, np.maximum(t_lo, t_hi))
    qx, qy = p[0] + t_cap * d[0], p[1] + t_cap * d[1]
    t_cap = np.where((t_cap > _EPS) & (qx * qx + qy * qy <= r * r), t_cap, np.inf)
    side = t_side <= t_cap
    t = np.minimum(t_side, t_cap).astype(_DT)
    q = p + np.where(np.isfinite(t), t, 0) * d
    zero = np.zeros_like(r)
    n = np.where(side, np.stack([q[0] / r, q[1] / r, zero]), np.stack([zero, zero, np.sign(q[2])]))
    return t, n.astype(_DT)


def _intersect(sb: _Batch, o, d, img, *, any_hit: bool, mask=None):
    """Rays (3, *B) (origins and directions broadcast) of scenes ``img`` against the scene.

    Returns ``(t, normal (3, *B), slot)`` of the nearest hit (slot -1 floor, -2 sky), or with
    ``any_hit`` a bool array of the rays blocked by anything, the floor included. Rays outside
    ``mask`` are not traced (reported unblocked).
    """
    shape = np.broadcast_shapes(o.shape[1:], d.shape[1:], np.shape(img))
    ob, db = np.broadcast_to(o, (3, *shape)), np.broadcast_to(d, (3, *shape))
    img_b = np.broadcast_to(img, shape)
    going_down = np.broadcast_to(d[2] < -1e-9, shape)
    if any_hit:
        blocked = going_down.copy() if mask is None else going_down & mask
    else:
        dz = np.where(going_down, d[2], -1)
        best = np.where(going_down, -o[2] / dz, np.inf).astype(_DT)
        slot = np.where(going_down, _FLOOR, _SKY)
        normal = np.zeros((3, *shape), _DT)
        normal[2] = 1
    parallel = all(n == 1 for n in d.shape[1:])
    if parallel:
        # Parallel rays (to a directional light): project the origins once onto a plane
        # across the direction; each object's cull is then a 2-D disc test there.
        l = d.reshape(3)
        e1 = np.cross(l, [1.0, 0.0, 0.0] if abs(l[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 = (e1 / np.linalg.norm(e1)).astype(_DT)
        e2 = np.cross(l, e1).astype(_DT)
        o_u, o_v = (_dot(_rows(e, o.ndim - 1), o) for e in (e1, e2))
    # A dense block (img = arange(m)[:, None]) has its scenes sorted by decreasing object
    # count, so the scenes that draw slot k are a prefix of it: slot k is tested on views of
    # that prefix only. Compacted rays test every slot (an empty one has bound2 = -inf).
    dense = np.ndim(img) == 2
    for k in range(sb.shape.shape[1]):
        if dense:
            m_k = int(sb.active[:, k].sum())
            if m_k == 0:
                break
            pre = (slice(None), slice(0, m_k))
            o_k = o[pre] if o.shape[1] > 1 else o
            d_k = d[pre] if d.shape[1] > 1 else d
            img_k = img[:m_k]
        else:
            o_k, d_k, img_k = o, d, img
        # Bounding-sphere cull over all rays; only the few candidates go on to the exact
        # test of their shape.
        c = sb.center[img_k, k]
        if parallel:
            du = (o_u[:m_k] if dense and o_u.shape[0] > 1 else o_u) - c @ e1
            dv = (o_v[:m_k] if dense and o_v.shape[0] > 1 else o_v) - c @ e2
            du *= du
            dv *= dv
            du += dv
            keep = du < sb.bound2[img_k, k]
        else:
            oc = o_k - np.moveaxis(c, -1, 0)
            b = _dot(oc, d_k)
            c2 = _dot(oc, oc)
            c2 -= sb.bound2[img_k, k]
            # Hit the sphere's line, and the sphere is ahead or around the origin.
            keep = b * b > c2
            keep &= (b < 0) | (c2 < 0)
        cand = np.nonzero(keep)
        if mask is not None:
            cand = tuple(ci[mask[cand]] for ci in cand)
        if cand[0].size == 0:
            continue
        ii = img_b[cand]
        kinds = sb.shape[ii, k]
        for s in range(len(SHAPES)):
            m = kinds == s
            if not m.any():
                continue
            j = tuple(ci[m] for ci in cand)
            jj = ii[m]
            oj, dj, cj, size = ob[(slice(None), *j)], db[(slice(None), *j)], sb.center[jj, k].T, sb.size[jj, k]
            if s == 0:
                t, nrm = _hit_sphere(oj, dj, cj, size)
            elif s == 1:
                t, nrm = _hit_cube(oj, dj, cj, size, sb.cos[jj, k], sb.sin[jj, k])
            else:
                t, nrm = _hit_cylinder(oj, dj, cj, size)
            if any_hit:
                blocked[j] |= np.isfinite(t)
            else:
                better = t < best[j]
                jb = tuple(x[better] for x in j)
                best[jb] = t[better]
                normal[(slice(None), *jb)] = nrm[:, better]
                slot[jb] = k
    if any_hit:
        return blocked
    return best, normal, slot


def _random_directions(rng, shape):
    """Uniform unit vectors (3, *shape)."""
    u = rng.random((2, *shape), dtype=_DT)
    z = 2 * u[0] - 1
    rxy = np.sqrt(np.maximum(1 - z * z, 0))
    phi = _DT(2 * np.pi) * u[1]
    return np.stack([rxy * np.cos(phi), rxy * np.sin(phi), z])


def _radiance(sb: _Batch, o, d, img, depth_left, rng):
    """Linear RGB radiance (3, *B) arriving along rays (3, *B) of scenes ``img``.

    ``depth_left`` (broadcast to B) counts the bounces a metal reflection may still trace.
    """
    t, nrm, slot = _intersect(sb, o, d, img, any_hit=False)
    shape = t.shape
    nd = len(shape)
    sky = slot == _SKY
    any_sky = bool(sky.any())
    # Most rays hit the floor: start from it and gather object properties for the rest only.
    on_obj = np.nonzero(slot >= 0)
    img_obj, slot_obj = np.broadcast_to(img, shape)[on_obj], slot[on_obj]
    albedo = np.empty((3, *shape), _DT)
    albedo[...] = np.moveaxis(sb.floor[img], -1, 0)  # (3, *B): img broadcasts against B
    if sb.checker is not None:  # 1-unit tiles, every other one darker by the scene's contrast
        q = o + np.where(np.isfinite(t), t, 0) * d
        odd = (np.floor(q[0]) + np.floor(q[1])) % 2 == 1
        albedo *= np.where(odd, 1 - sb.checker[img], _DT(1))
    albedo[(slice(None), *on_obj)] = sb.albedo[img_obj, slot_obj].T
    metal = np.zeros(shape, bool)
    metal[on_obj] = sb.metal[img_obj, slot_obj]
    p_off = o + (np.where(sky, 0, t) if any_sky else t) * d  # secondary rays start just outside
    p_off += _EPS * nrm
    lights = ((KEY_LIGHT_DIR, sb.key[img]), (BACK_LIGHT_DIR, sb.back[img]))

    # Rubber and floor (computed for every ray: cheaper than compacting the few metal ones
    # out): directional lights with shadow rays, and the sky by one occlusion ray.
    irr = np.zeros(shape, _DT)
    for ldir, inten in lights:
        cos = _dot(_rows(ldir, nd), nrm)
        lit = (cos > 0) & (inten > 0)
        shadow = _intersect(sb, p_off, _rows(ldir, nd), img, any_hit=True, mask=lit)
        irr += np.where(lit & ~shadow, inten * cos, 0)
    # n + a uniform unit vector is cosine-distributed about n, so the ambient estimate is just
    # the sky radiance times the visibility of that direction.
    # (A unit vector opposite to n gives a zero sum, with probability zero in exact arithmetic
    # but not in float32: fall back to n itself there rather than divide by zero.)
    ao_dir = nrm + _random_directions(rng, shape)
    ao_dir = _normalize(np.where(_dot(ao_dir, ao_dir) > 1e-12, ao_dir, nrm))
    irr += np.where(_intersect(sb, p_off, ao_dir, img, any_hit=True), 0, sb.ambient[img])
    color = albedo * irr

    # Metal: a tinted mirror (traced deeper while bounces are left) and a glossy highlight.
    mi = np.nonzero(metal)
    if mi[0].size:
        ig = np.broadcast_to(img, shape)[mi]
        nm, pm = nrm[(slice(None), *mi)], p_off[(slice(None), *mi)]
        dm = np.broadcast_to(d, (3, *shape))[(slice(None), *mi)]
        refl = dm - 2 * _dot(dm, nm) * nm
        left = np.broadcast_to(depth_left, shape)[mi]
        incoming = np.empty_like(refl)
        deeper = left > 0
        if deeper.any():
            incoming[:, deeper] = _radiance(sb, pm[:, deeper], refl[:, deeper], ig[deeper],
                                            left[deeper] - 1, rng)
        if not deeper.all():
            last = ~deeper
            blocked = _intersect(sb, pm[:, last], refl[:, last], ig[last], any_hit=True)
            incoming[:, last] = np.where(blocked, 0, sb.ambient[ig[last]])
        spec = np.zeros(ig.size, _DT)
        for ldir, inten in lights:
            # Clipped at 1: a grazing hit's normal can come out slightly off unit length in
            # float32, and cos^200 of 1.6 overflows to inf (seen once in 10^5 metal renders).
            cos_r = np.minimum(_dot(_rows(ldir, 1), refl), _DT(1))
            cos_n = _dot(_rows(ldir, 1), nm)
            power = np.broadcast_to(inten, shape)[mi]
            # The lobe is negligible beyond 60 degrees (cos^200 < 1e-60): trace only inside.
            lobe = np.flatnonzero((cos_r > 0.5) & (cos_n > 0) & (power > 0))
            if lobe.size:
                shadow = _intersect(sb, pm[:, lobe], _rows(ldir, 1), ig[lobe], any_hit=True)
                phong = _DT((_PHONG_EXPONENT + 2) / 2) * cos_r[lobe] ** _DT(_PHONG_EXPONENT) * cos_n[lobe]
                spec[lobe] += np.where(shadow, 0, power[lobe] * phong)
        color[(slice(None), *mi)] = albedo[(slice(None), *mi)] * (incoming + spec)
    return np.where(sky, sb.ambient[img], color) if any_sky else color


def tonemap(linear: np.ndarray) -> np.ndarray:
    """Linear radiance to display values in [0, 1]: clip, then a 2.2 display gamma.

    Both backends share it, so that their images look alike.

    Example:
      >>> tonemap(np.array([0.0, 1.0, 4.0], np.float32))
      array([0., 1., 1.], dtype=float32)
    """
    return np.clip(linear, 0, 1) ** _DT(1 / 2.2)


def _camera_rays(cols, rows, res):
    """Unit directions (3, *cols.shape) through continuous pixel positions of res x res images."""
    _, right, up, forward, tan = camera_frame()
    nd = np.ndim(cols)
    u = (2 * cols / _DT(res) - 1) * _DT(tan)
    v = (1 - 2 * rows / _DT(res)) * _DT(tan)
    return _normalize(_rows(forward, nd) + u * _rows(right, nd) + v * _rows(up, nd))


def _render_block(sb: _Batch, res: int, spp: int, size: int, rng) -> np.ndarray:
    """Linear images (m, size, size, 3) of m scenes sharing one resolution and spp."""
    m = sb.shape.shape[0]
    rows, cols = np.divmod(np.repeat(np.arange(res * res), spp), res)  # samples adjacent
    jitter = rng.random((2, m, rows.size), dtype=_DT)
    dirs = _camera_rays(cols.astype(_DT) + jitter[0], rows.astype(_DT) + jitter[1], res)
    img = np.arange(m)[:, None]
    rad = _radiance(sb, _rows(CAMERA_ORIGIN, 2), dirs, img, sb.bounces[img], rng)
    # Box-filter the samples into their pixels, then resample to the training size.
    pixels = rad.reshape(3, m, res, res, spp).mean(-1, dtype=_DT)
    return resample(np.ascontiguousarray(pixels.transpose(1, 2, 3, 0)), size)


def _label_pass(scenes, size):
    """Class map (n, size, size) from one ray through each training pixel centre."""
    n = scenes["shape"].shape[0]
    order = np.argsort(-scenes["num_objects"], kind="stable")  # see _intersect
    sb = _batch(scenes, order)
    rows, cols = np.divmod(np.arange(size * size), size)
    dirs = _camera_rays((cols + 0.5).astype(_DT)[None], (rows + 0.5).astype(_DT)[None], size)
    img = np.arange(n)[:, None]
    _, _, slot = _intersect(sb, _rows(CAMERA_ORIGIN, 2), dirs, img, any_hit=False)
    labels = np.empty((n, size * size), np.int32)
    labels[order] = np.where(slot >= 0, sb.shape[img, np.maximum(slot, 0)] + 1, 0)
    return labels.reshape(n, size, size)


def render_images(scenes: dict[str, np.ndarray], *, size: int, resolution: np.ndarray, spp: np.ndarray,
                  rng: np.random.Generator, floor: np.ndarray | None = None,
                  checker: np.ndarray | None = None) -> np.ndarray:
    """Tone-mapped images ``(n, size, size, 3)`` of validated scenes, at any resolution and spp.

    The one render loop of :class:`ClevrRenderer` and of the detection scenes of
    :mod:`~autosim_jax.renderers.clevr_det` (which render at resolutions outside the
    ``resolution`` field's choices and on floors of their own): scenes of one (resolution,
    spp) are traced together, about ``_RAYS_PER_CHUNK`` rays at once, then resampled to
    ``size``.

    Args:
      scenes: a batch of :func:`clevr_schema` scenes (already validated).
      size: the training size of the returned images.
      resolution: ``(n,)`` render width = height in pixels of each scene.
      spp: ``(n,)`` samples per pixel of each scene.
      rng: drives the pixel jitter and the Monte Carlo ambient light.
      floor: ``(n, 3)`` linear floor albedo of each scene (default: grey ``FLOOR_ALBEDO``).
      checker: ``(n,)`` contrast in ``[0, 1)`` of 1-unit floor tiles (default: none).

    Example:
      >>> s = example_clevr_scenes(clevr_schema(2), 2, seed=0)
      >>> x = render_images(s, size=16, resolution=np.array([8, 16]), spp=np.array([1, 2]),
      ...                   rng=np.random.default_rng(0), floor=np.array([[0.6, 0.3, 0.2]] * 2))
      >>> x.shape
      (2, 16, 16, 3)
    """
    n = scenes["shape"].shape[0]
    res_of, spp_of = np.broadcast_to(resolution, (n,)), np.broadcast_to(spp, (n,))
    images = np.empty((n, size, size, 3), np.float32)
    for res, s in sorted(set(zip(res_of.tolist(), spp_of.tolist()))):
        group = np.flatnonzero((res_of == res) & (spp_of == s))
        group = group[np.argsort(-scenes["num_objects"][group], kind="stable")]  # see _intersect
        per_chunk = max(1, _RAYS_PER_CHUNK // (res * res * s))
        for start in range(0, group.size, per_chunk):
            sel = group[start:start + per_chunk]
            images[sel] = _render_block(_batch(scenes, sel, floor, checker), res, s, size, rng)
    return np.ascontiguousarray(tonemap(images))


# --- Box labels -----------------------------------------------------------------------------

BOX_COLUMNS = ("class", "x0", "y0", "x1", "y1", "valid")


_OUTLINE_POINTS = 512


@functools.lru_cache(maxsize=1)
def _unit_outlines() -> np.ndarray:
    """``(3 shapes, 512, 3)`` points whose projections bound each shape's silhouette (unit size).

    Cube: its 8 corners (exact: a convex polytope projects to the hull of its vertices);
    cylinder: its two cap circles at 256 angles (the convex hull of the caps is the cylinder;
    the box is short by at most ``1 - cos(pi / 256)``, 8e-5 of the radius). The sphere's row
    is unused: its outline depends on where the camera is (see :func:`_sphere_outlines`).
    Rows are padded by repeating points.
    """
    cube = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    a = np.linspace(0, 2 * np.pi, _OUTLINE_POINTS // 2, endpoint=False)
    circle = np.stack([np.cos(a), np.sin(a), np.ones_like(a)], -1)
    cylinder = np.concatenate([circle, circle * [1, 1, -1]])
    return np.stack([np.zeros((_OUTLINE_POINTS, 3)), np.resize(cube, (_OUTLINE_POINTS, 3)), cylinder])


def _sphere_outlines(centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``(..., 512, 3)`` points of the circle along which the camera's rays graze each sphere.

    A point ``p`` of the sphere is on the silhouette when ``(p - c) . (p - o) = 0``, i.e.
    ``(p - c) . w = R^2`` with ``w = o - c``: the circle of centre ``c + (R^2 / d^2) w`` and
    radius ``R sqrt(1 - R^2 / d^2)`` across ``w`` (``d = |w|``). Its projection is the
    silhouette; 512 points bound it to ``1 - cos(pi / 512)``, 2e-5 of the radius.
    """
    w = CAMERA_ORIGIN - centre
    d2 = np.sum(w * w, -1, keepdims=True)
    wh = w / np.sqrt(d2)
    e1 = np.cross(wh, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    e2 = np.cross(wh, e1)
    r2 = radius[..., None] ** 2
    mid = centre + r2 / d2 * w
    rho = np.sqrt(r2 * (1 - r2 / d2))
    a = np.linspace(0, 2 * np.pi, _OUTLINE_POINTS, endpoint=False)[:, None]
    return mid[..., None, :] + rho[..., None, :] * (np.cos(a) * e1[..., None, :] + np.sin(a) * e2[..., None, :])


def object_boxes(scenes: dict[str, np.ndarray], size: int, min_side: float = 1.0) -> np.ndarray:
    """Box labels of every object slot: the projected extent of each object, in pixels.

    A box is the axis-aligned bound of the object's whole silhouette (amodal: an occluded
    object keeps its full box), clipped to the image: the projection of the sphere's grazing
    circle, of the cube's corners, of the cylinder's cap circles. Row ``k`` of a scene describes slot
    ``k``; its columns are :data:`BOX_COLUMNS`: the class (the shape index into
    :data:`SHAPES`, 0 = sphere), ``x0, y0, x1, y1`` in pixels of the ``size x size`` image
    (pixel ``i`` spans ``[i, i + 1)``, as in :func:`project`) and ``valid`` (1 for a drawn
    object whose clipped box is at least ``min_side`` pixels wide and high, else 0; an invalid
    row is all zeros).

    Args:
      scenes: a batch of :func:`clevr_schema` scenes.
      size: image width and height in pixels.
      min_side: the smallest visible side of a valid box, pixels.

    Returns:
      float32 ``(n, max_objects, 6)``.

    Example:
      >>> s = example_clevr_scenes(clevr_schema(2), 1, seed=0, num_objects=0, shape=0, size=1,
      ...                          position=[[0.0, 0.0], [0.0, 0.0]])
      >>> b = object_boxes(s, 64)[0]
      >>> b[:, 5].tolist(), b[0, 0].item()  # one sphere drawn, slot 1 empty
      ([1.0, 0.0], 0.0)
    """
    shape = np.asarray(scenes["shape"], np.int64)
    n, k = shape.shape
    radius = np.asarray(SIZE_RADIUS)[scenes["size"]]
    half = np.where(shape == SHAPES.index("cube"), radius / np.sqrt(2.0), radius)  # (n, k)
    theta = np.radians(np.asarray(scenes["rotation"], float))
    c, s = np.cos(theta), np.sin(theta)
    unit = _unit_outlines()[shape]  # (n, k, P, 3)
    x = c[..., None] * unit[..., 0] - s[..., None] * unit[..., 1]
    y = s[..., None] * unit[..., 0] + c[..., None] * unit[..., 1]
    centre = np.concatenate([np.asarray(scenes["position"], float), half[..., None]], -1)  # (n, k, 3)
    world = centre[..., None, :] + half[..., None, None] * np.stack([x, y, unit[..., 2]], -1)
    world = np.where((shape == 0)[..., None, None], _sphere_outlines(centre, half), world)
    uv = project(world, size)  # (n, k, P, 2)
    lo = np.clip(uv.min(axis=2), 0, size)
    hi = np.clip(uv.max(axis=2), 0, size)
    drawn = np.arange(k)[None, :] <= np.asarray(scenes["num_objects"])[:, None]
    valid = drawn & np.all(hi - lo >= min_side, axis=-1)
    boxes = np.concatenate([shape[..., None], lo, hi, np.ones((n, k, 1))], -1)
    return np.where(valid[..., None], boxes, 0).astype(np.float32)


def declare_scene_and_outputs(renderer) -> None:
    """Sets the schema and output specs of a frozen CLEVR-scene renderer (numpy or Mitsuba)."""
    if int(renderer.image_size) < 4:
        raise ValueError(f"image_size must be at least 4 pixels, got {renderer.image_size}.")
    size = renderer.image_size
    object.__setattr__(renderer, "schema", clevr_schema(renderer.max_objects))
    object.__setattr__(renderer, "inputs_spec", OutputSpec((size, size, 3), np.float32))
    if getattr(renderer, "labels", "segmentation") == "boxes":
        spec = OutputSpec((renderer.max_objects, len(BOX_COLUMNS)), np.float32)
    elif getattr(renderer, "labels", "segmentation") == "segmentation":
        spec = OutputSpec((size, size), np.int32, num_classes=len(CLASS_NAMES))
    else:
        raise ValueError(f"labels must be 'segmentation' or 'boxes', got {renderer.labels!r}.")
    object.__setattr__(renderer, "labels_spec", spec)


@dataclasses.dataclass(frozen=True)
class ClevrRenderer:
    """CLEVR-style segmentation scenes, rendered by the numpy ray tracer of this module.

    Args:
      image_size: width and height of the returned images and label maps (the training size).
      max_objects: object slots per scene (the ``num_objects`` field picks 1..max_objects).
      labels: ``"segmentation"`` (class maps, the default) or ``"boxes"`` (detection labels
        of fixed shape ``(max_objects, 6)``: one row per object slot, see
        :func:`object_boxes`; the images are the same).

    ``render(scenes, seed)`` returns images float32 ``(n, image_size, image_size, 3)`` in
    ``[0, 1]`` and labels int32 ``(n, image_size, image_size)`` with classes
    :data:`CLASS_NAMES`. The seed drives the pixel jitter and the ambient sampling only.

    Example:
      >>> r = ClevrRenderer(image_size=16, max_objects=2)
      >>> x, y = r.render(r.example_scenes(1, seed=1), seed=0)
      >>> x.shape, y.shape, bool(0.0 <= x.min() <= x.max() <= 1.0)
      ((1, 16, 16, 3), (1, 16, 16), True)
    """

    image_size: int = 64
    max_objects: int = 4
    labels: str = "segmentation"
    name: ClassVar[str] = "clevr"
    schema: SceneSchema = dataclasses.field(init=False, repr=False)
    inputs_spec: OutputSpec = dataclasses.field(init=False, repr=False)
    labels_spec: OutputSpec = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        declare_scene_and_outputs(self)

    def example_scenes(self, n: int, seed: int, **fixed: Any) -> dict[str, np.ndarray]:
        """Plausible scenes for examples and tests (see :func:`example_clevr_scenes`)."""
        return example_clevr_scenes(self.schema, n, seed, **fixed)

    def render(self, scenes: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders a batch of scenes.

        Args:
          scenes: field name -> ``(n, *field.shape)`` array, as declared by ``self.schema``.
          seed: drives the pixel jitter and the Monte Carlo ambient light.

        Returns:
          ``(images, labels)``: float32 ``(n, H, W, 3)`` in ``[0, 1]``, and int32 ``(n, H, W)``
          class maps (``labels="segmentation"``) or float32 ``(n, max_objects, 6)`` boxes
          (``labels="boxes"``, see :func:`object_boxes`).

        Raises:
          ValueError: for scenes that do not match the schema (missing field, wrong shape or
            dtype, value out of range), naming the field.
        """
        n = self.schema.validate(scenes)
        scenes = {k: np.asarray(v) for k, v in scenes.items()}
        size = int(self.image_size)
        images = render_images(scenes, size=size, resolution=np.asarray(RESOLUTION_CHOICES)[scenes["resolution"]],
                               spp=np.asarray(SPP_CHOICES)[scenes["spp"]], rng=np.random.default_rng(seed))
        if self.labels == "boxes":
            return images, object_boxes(scenes, size)
        labels = np.empty((n, size, size), np.int32)
        per_chunk = max(1, _RAYS_PER_CHUNK // (size * size))
        for start in range(0, n, per_chunk):
            sel = np.arange(start, min(n, start + per_chunk))
            labels[sel] = _label_pass({k: v[sel] for k, v in scenes.items()}, size)
        return images, np.ascontiguousarray(labels)
