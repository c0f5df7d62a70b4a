"""Sampling distributions ``q_psi(s)`` over scene fields (paper Sec. 4.1, Eq. 9).

Each family is a :class:`Distribution`: a ``NamedTuple`` of three pure functions over a
parameter pytree ``psi``, built by a factory that captures the static settings (shape,
bounds, number of categories) by closure, in the manner of optax's
``GradientTransformation(init, update)``:

* ``init() -> psi``: the starting parameters (a pytree of float arrays);
* ``sample(key, psi, n) -> scenes``: ``n`` draws, shape ``(n, *shape)`` (a ``dict`` of those
  for a :func:`product`);
* ``log_prob(psi, scenes) -> [n]``: ``log q_psi(s)`` per scene, summed over the field's shape
  (the elements of a field are independent).

Families: :func:`gaussian` (diagonal normal), :func:`bounded` (a normal pushed into the
field's range: logit-normal for ``[low, high]``, shifted log-normal for a half line),
:func:`categorical` (independent logits per element), :func:`histogram` (a categorical over
equal bins of a range, uniform inside a bin), :func:`product` (named fields), and
:func:`from_schema`, which builds the product that a renderer's
:class:`~autosim_jax.schema.SceneSchema` calls for.

``sample`` and ``log_prob`` check ``psi`` against the structure and shapes of ``init()`` at
trace time and raise ``ValueError`` naming the offending leaf (``psi['light'].log_scale``);
when ``psi`` is concrete (not traced) they also reject non-finite values.

Example:
  >>> import jax
  >>> q = product({"light": bounded(0.0, 2.0, loc=0.5, scale=0.1),
  ...              "quality": categorical(3, probs=(0.6, 0.3, 0.1))})
  >>> psi = q.init()
  >>> scenes = q.sample(jax.random.key(0), psi, 4)
  >>> scenes["light"].shape, scenes["quality"].dtype
  ((4,), dtype('int32'))
  >>> q.log_prob(psi, scenes).shape
  (4,)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from autosim_jax.schema import SceneSchema

PyTree = Any
Scenes = Any  # an array (n, *shape), or a dict name -> array for a product

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

_PSI_STRUCTURE = (
    "psi{path} does not match the distribution's parameters: got structure {got}, expected "
    "{expected} (the structure of init()). Build psi with init() and update it leaf by leaf."
)
_PSI_SHAPE = (
    "psi{path} has shape {got}; the distribution expects {expected} (the shape of init()). "
    "A field's shape is fixed when the distribution is built."
)
_PSI_NONFINITE = (
    "psi{path} holds non-finite values ({value}). An optimiser step diverged or an initial "
    "setting is out of range; lower the learning rate or fix the initial setting."
)


class Distribution(NamedTuple):
    """A family ``q_psi(s)`` as a pair of pure functions plus its initial parameters.

    Attributes:
      init: ``() -> psi``, the starting parameters.
      sample: ``(key, psi, n) -> scenes`` with a leading axis of ``n`` (static int).
      log_prob: ``(psi, scenes) -> [n]``, the log-density (log-mass for categories) per scene.
    """

    init: Callable[[], PyTree]
    sample: Callable[[jax.Array, PyTree, int], Scenes]
    log_prob: Callable[[PyTree, Scenes], jax.Array]


class NormalParams(NamedTuple):
    """Parameters of a normal, or of the normal pre-image of a :func:`bounded` field."""

    loc: jax.Array  # shape: the field's shape; mean of the (pre-image) normal
    log_scale: jax.Array  # shape: the field's shape; log standard deviation


class CategoricalParams(NamedTuple):
    """Parameters of independent categoricals, one per element of a field."""

    logits: jax.Array  # (*shape, num_categories); unnormalised log-probabilities


# --------------------------------------------------------------------------- validation


def _path_str(path) -> str:
    return jax.tree_util.keystr(tuple(path))


def _check_psi(psi: PyTree, template: PyTree) -> None:
    """Raises ValueError unless ``psi`` has the structure and leaf shapes of ``template``."""
    got, expected = jax.tree.structure(psi), jax.tree.structure(template)
    if got != expected:
        path = ""
        if isinstance(template, Mapping) and isinstance(psi, Mapping):
            missing = [k for k in template if k not in psi]
            unknown = [k for k in psi if k not in template]
            if missing or unknown:
                raise ValueError(
                    f"psi has fields {sorted(psi)} but the distribution has {sorted(template)} "
                    f"(missing {missing}, unknown {unknown}). Build psi with init()."
                )
            for k in template:  # same keys: find the field whose structure differs
                if jax.tree.structure(psi[k]) != jax.tree.structure(template[k]):
                    path, got, expected = (
                        f"[{k!r}]",
                        jax.tree.structure(psi[k]),
                        jax.tree.structure(template[k]),
                    )
                    break
        raise ValueError(_PSI_STRUCTURE.format(path=path, got=got, expected=expected))
    leaves = jax.tree_util.tree_flatten_with_path(psi)[0]
    for (path, leaf), ref in zip(leaves, jax.tree.leaves(template)):
        if jnp.shape(leaf) != jnp.shape(ref):
            raise ValueError(
                _PSI_SHAPE.format(
                    path=_path_str(path), got=jnp.shape(leaf), expected=jnp.shape(ref)
                )
            )
        if not isinstance(leaf, jax.core.Tracer):
            value = np.asarray(leaf)
            if not np.all(np.isfinite(value)):
                raise ValueError(_PSI_NONFINITE.format(path=_path_str(path), value=value))


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the number of scenes) must be a positive Python int, got {n!r}.")
    return int(n)


def _check_shape(shape) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}.")
    return tuple(int(d) for d in shape)


def _check_scenes(scenes, shape: tuple[int, ...], family: str) -> jax.Array:
    if jnp.ndim(scenes) != 1 + len(shape) or tuple(jnp.shape(scenes)[1:]) != shape:
        raise ValueError(
            f"{family}: scenes have shape {jnp.shape(scenes)}; expected (n, *{shape}) with n the "
            "number of scenes."
        )
    return jnp.asarray(scenes)


def _check_categories(idx: np.ndarray, num_categories: int, shape: tuple[int, ...]) -> None:
    """Raises for a concrete category index outside ``[0, num_categories)``."""
    if idx.ndim != 1 + len(shape) or not np.issubdtype(idx.dtype, np.integer):
        return  # _check_scenes and the dtype check say what is wrong
    bad = (idx < 0) | (idx >= num_categories)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        at = f" at element {where[1:]}" if len(where) > 1 else ""
        raise ValueError(
            f"categorical: scene {where[0]} has category index {int(idx[where])}{at}, outside "
            f"[0, {num_categories}) (the distribution has {num_categories} categories). Scenes "
            "must hold indices into the field's choices, not the choices themselves."
        )


def _checked(init, sample, log_prob) -> Distribution:
    """Wraps raw functions with the psi / n checks of every family."""

    template = []  # the ShapeDtypeStructs of init(), computed on first use

    def check(psi):
        if not template:
            template.append(jax.eval_shape(init))
        _check_psi(psi, template[0])

    def checked_sample(key, psi, n):
        check(psi)
        return sample(key, psi, _check_n(n))

    def checked_log_prob(psi, scenes):
        check(psi)
        return log_prob(psi, scenes)

    return Distribution(init, checked_sample, checked_log_prob)


def _float_dtype():
    return jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64


def _normal_log_pdf(x, loc, log_scale):
    z = (x - loc) * jnp.exp(-log_scale)
    return -0.5 * z**2 - log_scale - _LOG_SQRT_2PI


def _sum_event(x, shape):
    return jnp.sum(x, axis=tuple(range(1, 1 + len(shape))))


# ----------------------------------------------------------------------------- families


def gaussian(shape: Sequence[int] = (), *, loc=0.0, scale=1.0) -> Distribution:
    """A diagonal normal over a field of shape ``shape``.

    .. math:: \\log q_\\psi(s) = \\sum_i \\log \\mathcal{N}(s_i; \\mu_i, e^{2 \\rho_i})

    Args:
      shape: per-scene shape of the field.
      loc: initial mean (broadcast to ``shape``), in the field's units.
      scale: initial standard deviation (positive, broadcast to ``shape``).

    Returns:
      A :class:`Distribution` with ``psi = NormalParams(loc, log_scale)``.

    References:
      Paper Sec. 4.1 (a Gaussian ``q_psi`` over an object's location), Eq. 9.

    Example:
      >>> q = gaussian((2,), loc=1.0, scale=0.5)
      >>> q.sample(jax.random.key(0), q.init(), 3).shape
      (3, 2)
    """
    shape = _check_shape(shape)
    loc0, scale0 = (
        np.broadcast_to(loc, shape).astype(float),
        np.broadcast_to(scale, shape).astype(float),
    )
    if not (np.all(np.isfinite(loc0)) and np.all(scale0 > 0) and np.all(np.isfinite(scale0))):
        raise ValueError(
            f"gaussian: need a finite loc and a positive finite scale, got loc={loc}, "
            f"scale={scale}."
        )

    def init():
        dtype = _float_dtype()
        return NormalParams(jnp.asarray(loc0, dtype), jnp.asarray(np.log(scale0), dtype))

    def sample(key, psi, n):
        eps = jax.random.normal(key, (n, *shape), jnp.result_type(psi.loc))
        return psi.loc + jnp.exp(psi.log_scale) * eps

    def log_prob(psi, scenes):
        x = _check_scenes(scenes, shape, "gaussian")
        return _sum_event(_normal_log_pdf(x, psi.loc, psi.log_scale), shape)

    return _checked(init, sample, log_prob)


def bounded(
    low: float, high: float, shape: Sequence[int] = (), *, loc=None, scale=None
) -> Distribution:
    """A normal pushed through a smooth bijection onto the field's range.

    * ``[low, high]`` both finite: logit-normal, ``s = low + (high - low) sigmoid(u)``;
    * ``[low, inf)`` or ``(-inf, high]``: shifted log-normal, ``s = low + exp(u)`` or
      ``s = high - exp(u)``;
    * ``(-inf, inf)``: :func:`gaussian`.

    with ``u ~ N(psi.loc, exp(psi.log_scale)^2)`` elementwise. ``log_prob`` includes the
    log-Jacobian of the map, so it is the density of ``s`` in the field's units. Samples lie
    strictly inside the range in the working precision: ``sigmoid(u)`` is clipped to
    ``[eps, 1 - eps]`` (``eps`` the dtype's machine epsilon) and the result to the open
    interval, which changes the law only on a tail of probability ``Phi(-16 / sigma)`` in
    float32. ``log_prob`` is ``-inf`` on the bounds and outside the range.

    Args:
      low, high: the field's bounds (``-inf`` / ``inf`` for none); ``low < high``.
      shape: per-scene shape of the field.
      loc: initial median in the field's units (strictly inside the range; default: the
        midpoint, or ``bound -/+ 1`` for a half line, or 0).
      scale: initial spread in the field's units, mapped through the derivative of the
        bijection at ``loc`` (delta method: the standard deviation is about ``scale`` when
        small); default: a pre-image standard deviation of 1.

    Returns:
      A :class:`Distribution` with ``psi = NormalParams(loc, log_scale)`` of the pre-image
      normal.

    References:
      Paper Sec. 4.1, Eq. 9 (the stochastic part ``s ~ q_psi(s)`` of the simulator).

    Example:
      >>> q = bounded(0.0, 2.0, loc=0.5, scale=0.1)
      >>> s = q.sample(jax.random.key(0), q.init(), 1000)
      >>> bool((s > 0).all() and (s < 2).all())
      True
    """
    low, high = float(low), float(high)
    if not low < high:
        raise ValueError(f"bounded: need low < high, got [{low}, {high}].")
    shape = _check_shape(shape)
    lo_fin, hi_fin = np.isfinite(low), np.isfinite(high)
    if not (lo_fin or hi_fin):
        return gaussian(
            shape, loc=0.0 if loc is None else loc, scale=1.0 if scale is None else scale
        )
    if loc is None:
        loc = 0.5 * (low + high) if lo_fin and hi_fin else (low + 1.0 if lo_fin else high - 1.0)
    loc_x = np.broadcast_to(np.asarray(loc, float), shape)
    if not np.all((loc_x > low) & (loc_x < high)):
        raise ValueError(
            f"bounded: the initial loc {loc} must lie strictly inside ({low}, {high})."
        )
    if lo_fin and hi_fin:
        width = high - low
        t = (loc_x - low) / width
        u0 = np.log(t) - np.log1p(-t)
        dx_du = width * t * (1.0 - t)
    else:
        gap = loc_x - low if lo_fin else high - loc_x
        u0 = np.log(gap)
        dx_du = gap
    if scale is None:
        sigma0 = np.ones(shape)
    else:
        scale_x = np.broadcast_to(np.asarray(scale, float), shape)
        if not np.all((scale_x > 0) & np.isfinite(scale_x)):
            raise ValueError(
                f"bounded: the initial scale must be positive and finite, got {scale}."
            )
        sigma0 = scale_x / dx_du

    def init():
        dtype = _float_dtype()
        return NormalParams(jnp.asarray(u0, dtype), jnp.asarray(np.log(sigma0), dtype))

    def open_interval(x):
        lo = (
            jnp.nextafter(jnp.asarray(low, x.dtype), jnp.asarray(high, x.dtype))
            if lo_fin
            else -jnp.inf
        )
        hi = (
            jnp.nextafter(jnp.asarray(high, x.dtype), jnp.asarray(low, x.dtype))
            if hi_fin
            else jnp.inf
        )
        return jnp.clip(x, lo, hi)

    if lo_fin and hi_fin:

        def sample(key, psi, n):
            dtype = jnp.result_type(psi.loc)
            u = psi.loc + jnp.exp(psi.log_scale) * jax.random.normal(key, (n, *shape), dtype)
            eps = jnp.finfo(dtype).eps
            t = jnp.clip(jax.nn.sigmoid(u), eps, 1.0 - eps)
            return open_interval(low + (high - low) * t)

        def log_prob(psi, scenes):
            x = _check_scenes(scenes, shape, "bounded")
            t = (x - low) / (high - low)
            inside = (t > 0) & (t < 1)
            t = jnp.where(inside, t, 0.5)  # a safe value outside the support (no NaN gradients)
            log_t, log_1mt = jnp.log(t), jnp.log1p(-t)
            u = log_t - log_1mt
            log_jac = math.log(high - low) + log_t + log_1mt  # log |ds/du|
            logq = _normal_log_pdf(u, psi.loc, psi.log_scale) - log_jac
            return _sum_event(jnp.where(inside, logq, -jnp.inf), shape)

    else:
        bound, sign = (low, 1.0) if lo_fin else (high, -1.0)

        def sample(key, psi, n):
            dtype = jnp.result_type(psi.loc)
            u = psi.loc + jnp.exp(psi.log_scale) * jax.random.normal(key, (n, *shape), dtype)
            finfo = jnp.finfo(dtype)
            gap = jnp.clip(jnp.exp(jnp.minimum(u, jnp.log(finfo.max) - 1.0)), finfo.tiny)
            return open_interval(bound + sign * gap)

        def log_prob(psi, scenes):
            x = _check_scenes(scenes, shape, "bounded")
            gap = sign * (x - bound)
            inside = gap > 0
            u = jnp.log(jnp.where(inside, gap, 1.0))  # a safe value outside the support
            logq = _normal_log_pdf(u, psi.loc, psi.log_scale) - u
            return _sum_event(jnp.where(inside, logq, -jnp.inf), shape)

    return _checked(init, sample, log_prob)


def categorical(num_categories: int, shape: Sequence[int] = (), *, probs=None) -> Distribution:
    """Independent categoricals over ``num_categories`` choices, one per element of ``shape``.

    Args:
      num_categories: number of choices ``C`` (at least 2).
      shape: per-scene shape of the field (e.g. ``(54,)`` cells).
      probs: initial probabilities, shape ``(C,)`` or ``(*shape, C)``, positive (they are
        normalised); default uniform.

    Returns:
      A :class:`Distribution` with ``psi = CategoricalParams(logits)``, logits of shape
      ``(*shape, C)``; samples are ``int32`` indices of shape ``(n, *shape)``. ``log_prob``
      of an index outside ``[0, C)`` raises ``ValueError`` (naming the scene and the index)
      when the scenes are concrete; under ``jax.jit`` / ``jax.vmap`` they cannot be
      inspected, and such a scene gets ``log q = -inf`` (probability zero, as
      :func:`bounded` gives outside its range), never a finite value.

    References:
      Paper Sec. 5 (a categorical over scene cells) and Eq. 11 for discrete ``q_psi``.

    Example:
      >>> q = categorical(3, (2,), probs=(0.2, 0.3, 0.5))
      >>> q.sample(jax.random.key(0), q.init(), 4).shape
      (4, 2)
    """
    if (
        isinstance(num_categories, bool)
        or not isinstance(num_categories, (int, np.integer))
        or num_categories < 2
    ):
        raise ValueError(
            f"categorical: num_categories must be an int >= 2, got {num_categories!r}."
        )
    num_categories = int(num_categories)
    shape = _check_shape(shape)
    if probs is None:
        logits0 = np.zeros((*shape, num_categories))
    else:
        p = np.asarray(probs, float)
        if p.shape[-1:] != (num_categories,) or not np.all(p > 0) or not np.all(np.isfinite(p)):
            raise ValueError(
                f"categorical: probs must be positive and finite with last axis {num_categories}, "
                f"got {probs!r}. "
                "Give a small positive probability instead of 0 (the logits must stay finite)."
            )
        try:
            p = np.broadcast_to(p, (*shape, num_categories))
        except ValueError:
            raise ValueError(
                f"categorical: probs of shape {p.shape} do not broadcast to "
                f"{(*shape, num_categories)}."
            ) from None
        logits0 = np.log(p / p.sum(-1, keepdims=True))

    def init():
        return CategoricalParams(jnp.asarray(logits0, _float_dtype()))

    def sample(key, psi, n):
        return jax.random.categorical(key, psi.logits, shape=(n, *shape)).astype(jnp.int32)

    def log_prob(psi, scenes):
        if not isinstance(scenes, jax.core.Tracer):
            _check_categories(np.asarray(scenes), num_categories, shape)
        idx = _check_scenes(scenes, shape, "categorical")
        if not jnp.issubdtype(idx.dtype, jnp.integer):
            raise ValueError(
                f"categorical: scenes must be integer category indices, got dtype {idx.dtype}."
            )
        logp = jax.nn.log_softmax(psi.logits, axis=-1)
        logp = jnp.broadcast_to(logp, (idx.shape[0], *logp.shape))
        inside = (idx >= 0) & (idx < num_categories)
        safe = jnp.where(inside, idx, 0)  # a valid index in place of one outside (no NaN gradients)
        picked = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
        return _sum_event(jnp.where(inside, picked, -jnp.inf), shape)

    return _checked(init, sample, log_prob)


def _bounded_bin_masses(low: float, high: float, bins: int, shape: tuple[int, ...], loc, scale) -> np.ndarray:
    """Mass of each of ``bins`` equal bins of ``[low, high]`` under :func:`bounded`'s law with ``loc``, ``scale``."""
    from scipy.special import ndtr  # scipy is a dependency of jax itself; numpy has no normal CDF

    q = bounded(low, high, shape, loc=loc, scale=scale)
    u0, log_sigma = (np.asarray(a, float) for a in q.init())
    t = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    z = (np.log(t) - np.log1p(-t) - u0[..., None]) / np.exp(log_sigma)[..., None]
    cdf = np.concatenate([np.zeros((*shape, 1)), ndtr(z), np.ones((*shape, 1))], axis=-1)
    return np.diff(cdf, axis=-1)


def histogram(low: float, high: float, bins: int, shape: Sequence[int] = (), *, probs=None, loc=None,
              scale=None, floor: float = 0.01) -> Distribution:
    """A piecewise-constant density on ``[low, high]``: a categorical over ``bins`` equal bins,
    uniform inside the chosen bin, independently per element of ``shape``.

    Why: the score-function hypergradient of a :func:`bounded` field is local. It sees only the
    scenes its narrow start draws, and clevr-seg's object positions showed no detectable signal
    from a corner start (``docs/learning.md``). A histogram keeps a floor of mass on every bin, so
    ``d/d logit_b = p_b (E[f | bin b] - E[f])`` compares regions of the whole range, as the
    paper's categorical over object locations does (Sec. 5.2). The within-bin law does not depend
    on psi, so the score, the Fisher information and the KL between two histograms are those of
    the bins' categorical: ``natural_trust_region`` and the entropy bonus treat it as one.

    Args:
      low, high: finite bounds, ``low < high``.
      bins: number of equal bins (at least 2).
      shape: per-scene shape of the field.
      probs: initial bin probabilities, ``(bins,)`` or ``(*shape, bins)``, positive; or
      loc, scale: start from :func:`bounded`'s law with this median and spread (field units):
        its bin masses mixed with a uniform share, ``p = (1 - bins * floor) mass + floor``;
      floor: the least initial probability of a bin with ``loc``/``scale`` (``0 < floor < 1/bins``).
        Default (neither ``probs`` nor ``loc``): uniform.

    Returns:
      A :class:`Distribution` with ``psi = CategoricalParams(logits)``, logits ``(*shape, bins)``;
      samples are float values of shape ``(n, *shape)`` strictly inside ``(low, high)``;
      ``log_prob`` is the density in the field's units (``log p_b - log(bin width)`` per
      element, summed), ``-inf`` outside the range.

    References:
      Paper Sec. 5.2 (a categorical over object locations), Eq. 11 (discrete ``q_psi``).

    Example:
      >>> q = histogram(-3.0, 3.0, 6, loc=2.2, scale=0.3)
      >>> [round(p, 2) for p in jax.nn.softmax(q.init().logits).tolist()]
      [0.01, 0.01, 0.01, 0.01, 0.26, 0.69]
      >>> s = q.sample(jax.random.key(0), q.init(), 1000)
      >>> bool((s > -3).all() and (s < 3).all()), round(float((s > 2.0).mean()), 2)
      (True, 0.7)
    """
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"histogram: need finite low < high, got [{low}, {high}].")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"histogram: bins must be an int >= 2, got {bins!r}.")
    bins, shape = int(bins), _check_shape(shape)
    if probs is not None and (loc is not None or scale is not None):
        raise ValueError("histogram: give either probs or loc/scale for the initial law, not both.")
    if loc is not None or scale is not None:
        if not 0.0 < floor < 1.0 / bins:
            raise ValueError(f"histogram: floor must lie in (0, 1/bins) = (0, {1.0 / bins:.4g}), got {floor}.")
        mass = _bounded_bin_masses(low, high, bins, shape, loc, scale)
        probs = (1.0 - bins * floor) * mass + floor
    cat = categorical(bins, shape, probs=probs)
    width = (high - low) / bins

    def sample(key, psi, n):
        k_bin, k_pos = jax.random.split(key)
        idx = cat.sample(k_bin, psi, n)
        dtype = jnp.result_type(psi.logits)
        x = low + (idx.astype(dtype) + jax.random.uniform(k_pos, idx.shape, dtype)) * width
        lo = jnp.nextafter(jnp.asarray(low, dtype), jnp.asarray(high, dtype))
        hi = jnp.nextafter(jnp.asarray(high, dtype), jnp.asarray(low, dtype))
        return jnp.clip(x, lo, hi)

    def log_prob(psi, scenes):
        x = _check_scenes(scenes, shape, "histogram")
        inside = (x > low) & (x < high)
        idx = jnp.clip(jnp.floor((x - low) / width), 0, bins - 1).astype(jnp.int32)
        logp = jax.nn.log_softmax(psi.logits, axis=-1)
        logp = jnp.broadcast_to(logp, (idx.shape[0], *logp.shape))
        picked = jnp.take_along_axis(logp, idx[..., None], axis=-1)[..., 0] - math.log(width)
        return _sum_event(jnp.where(inside, picked, -jnp.inf), shape)

    return _checked(cat.init, sample, log_prob)


class ExploreParams(NamedTuple):
    """psi of :func:`with_exploration`: the base family's psi and the broad component's logit."""

    base: Any  # the base family's psi (e.g. NormalParams)
    logit: jax.Array  # logit of w, the share of scenes whose field is drawn from the broad component


def with_exploration(base: Distribution, broad: Distribution, weight: float) -> Distribution:
    """A defensive mixture ``q(s) = (1 - w) q_base(s) + w q_broad(s)`` with ``w`` learned.

    Why: the score-function hypergradient only sees scenes the distribution draws, so a field
    whose start is narrow and far from what helps gets no signal at all (measured on
    clevr-seg's object positions, ``docs/learning.md``). A broad component with a fixed psi
    keeps a share ``w`` of scenes spread over the field's range, and ``d/dw`` compares the two
    components globally: ``E_broad[f] - E_base[f]``. ``w = sigmoid(psi.logit)`` is learned
    with the base's psi; the broad component's psi is its ``init()`` and never changes.

    The mixture is per scene: a scene's whole field (every element of its shape) comes from
    one component, so ``log_prob`` is a log-sum-exp of the two components' summed log
    densities.

    Args:
      base: the learned family (e.g. :func:`bounded`).
      broad: a distribution over the same support, psi fixed at ``broad.init()``.
      weight: the initial ``w`` in ``(0, 1)``.

    Returns:
      A :class:`Distribution` with ``psi = ExploreParams(base_psi, logit)``.

    Example:
      >>> q = with_exploration(bounded(-3.0, 3.0, loc=2.5, scale=0.1), bounded(-3.0, 3.0), 0.2)
      >>> s = q.sample(jax.random.key(0), q.init(), 4000)
      >>> round(float((s < 1.5).mean()), 1)  # the broad share reaches the rest of the range
      0.2
    """
    if not isinstance(base, Distribution) or not isinstance(broad, Distribution):
        raise ValueError("with_exploration: base and broad must be Distributions.")
    if not 0.0 < float(weight) < 1.0:
        raise ValueError(f"with_exploration: weight must lie in (0, 1), got {weight}.")
    logit0 = math.log(weight) - math.log1p(-weight)

    def init():
        return ExploreParams(base.init(), jnp.asarray(logit0, _float_dtype()))

    def sample(key, psi, n):
        k_base, k_broad, k_pick = jax.random.split(key, 3)
        x_base = base.sample(k_base, psi.base, n)
        x_broad = broad.sample(k_broad, broad.init(), n)
        pick = jax.random.bernoulli(k_pick, jax.nn.sigmoid(psi.logit), (n,))
        return jnp.where(pick.reshape((n,) + (1,) * (x_base.ndim - 1)), x_broad, x_base)

    def log_prob(psi, scenes):
        log_base = jax.nn.log_sigmoid(-psi.logit) + base.log_prob(psi.base, scenes)
        log_broad = jax.nn.log_sigmoid(psi.logit) + broad.log_prob(jax.lax.stop_gradient(broad.init()), scenes)
        return jnp.logaddexp(log_base, log_broad)

    return _checked(init, sample, log_prob)


def product(members: Mapping[str, Distribution]) -> Distribution:
    """Independent named fields: ``q_psi(s) = prod_f q_f(s_f)``.

    Args:
      members: field name -> :class:`Distribution`.

    Returns:
      A :class:`Distribution` whose ``psi`` is a dict of the members' ``psi`` and whose
      scenes are a dict of the members' samples (each ``(n, *shape)``).

    References:
      Paper Sec. 4.1, Eq. 9: ``s ~ q_psi(s)`` holds every scene parameter of the simulator.

    Example:
      >>> q = product({"x": gaussian(), "c": categorical(4)})
      >>> sorted(q.sample(jax.random.key(0), q.init(), 2))
      ['c', 'x']
    """
    if not isinstance(members, Mapping) or not members:
        raise ValueError(
            "product: members must be a non-empty mapping of field name -> Distribution."
        )
    for name, member in members.items():
        if not isinstance(name, str) or not isinstance(member, Distribution):
            raise ValueError(
                f"product: member {name!r} must map a str to a Distribution, got "
                f"{type(member).__name__}."
            )
    members = dict(members)
    names = tuple(members)

    def init():
        return {name: members[name].init() for name in names}

    def sample(key, psi, n):
        keys = jax.random.split(key, len(names))
        return {name: members[name].sample(k, psi[name], n) for name, k in zip(names, keys)}

    def log_prob(psi, scenes):
        if not isinstance(scenes, Mapping) or set(scenes) != set(names):
            got = sorted(scenes) if isinstance(scenes, Mapping) else type(scenes).__name__
            raise ValueError(
                f"product: scenes must be a dict with fields {sorted(names)}, got {got}."
            )
        sizes = {name: jnp.shape(scenes[name])[:1] for name in names}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"product: every field must hold the same number of scenes, got {sizes}."
            )
        total = 0.0
        for name in names:
            try:
                total = total + members[name].log_prob(psi[name], scenes[name])
            except ValueError as err:
                raise ValueError(f"field {name!r}: {err}") from None
        return total

    return _checked(init, sample, log_prob)


def from_schema(schema: SceneSchema, overrides: Mapping[str, Any] | None = None, *,
                explore: float | Mapping[str, float] | None = None) -> Distribution:
    """The :func:`product` over a renderer's scene fields.

    Bounded (or half-bounded) continuous fields get :func:`bounded`, unbounded ones
    :func:`gaussian`, categorical ones :func:`categorical`.

    Args:
      schema: the renderer's :class:`~autosim_jax.schema.SceneSchema`.
      overrides: field name -> either a :class:`Distribution` (used as is) or a dict of
        keyword arguments of the default family: ``{"loc": ..., "scale": ...}`` in the
        field's units for continuous fields, ``{"probs": ...}`` for categorical ones. Use it
        to start from a deliberately poor setting. A continuous field with a finite range
        whose dict has ``"bins"`` gets a :func:`histogram` instead (``{"bins": 6, "loc": 2.2,
        "scale": 0.3}``: the same start, spread over 6 bins with a floor on each).
      explore: an initial share ``w`` of scenes whose field is drawn from a broad
        logit-normal over the field's whole range (:func:`with_exploration`; ``w`` is then
        learned): one number for every continuous field with a finite range, or a dict
        field -> weight. ``None``: no broad component.

    Returns:
      A :class:`Distribution` whose ``psi`` and scenes are dicts keyed by the schema's names.

    References:
      Paper Sec. 4.1, Eq. 9-10: ``q_psi`` over the inputs ``s`` of the renderer ``r(s)``.

    Example:
      >>> from autosim_jax.schema import Field, SceneSchema
      >>> schema = SceneSchema((Field.continuous("light", 0.0, 2.0),
      ...                       Field.categorical("quality", choices=(1, 4, 16))))
      >>> q = from_schema(schema, {"light": {"loc": 1.8, "scale": 0.05}})
      >>> sorted(q.init())
      ['light', 'quality']
    """
    overrides = dict(overrides or {})
    unknown = [name for name in overrides if name not in schema.names]
    if unknown:
        raise ValueError(
            f"from_schema: overrides for unknown fields {unknown}; the schema has "
            f"{list(schema.names)}."
        )
    finite = [f.name for f in schema.fields if f.kind != "categorical" and np.isfinite([f.low, f.high]).all()]
    if explore is None:
        explore = {}
    elif not isinstance(explore, Mapping):
        explore = {name: explore for name in finite}
    bad = [name for name in explore if name not in finite]
    if bad:
        raise ValueError(f"from_schema: explore names {bad}, which are not continuous fields with a finite range; "
                         f"those are {finite}.")
    members = {}
    for field in schema.fields:
        override = overrides.get(field.name, {})
        if isinstance(override, Distribution):
            members[field.name] = override
            continue
        if not isinstance(override, Mapping):
            raise ValueError(
                f"from_schema: the override of field {field.name!r} must be a Distribution or a "
                "dict of "
                f"keyword arguments, got {type(override).__name__}."
            )
        try:
            if field.kind == "categorical":
                members[field.name] = categorical(field.num_categories, field.shape, **override)
            elif "bins" in override:
                members[field.name] = histogram(field.low, field.high, shape=field.shape, **override)
            else:
                members[field.name] = bounded(field.low, field.high, field.shape, **override)
            if field.name in explore:
                # Pre-image std 1.6 (scale 0.4 x width at the midpoint): close to uniform on the range.
                broad = bounded(field.low, field.high, field.shape, scale=0.4 * (field.high - field.low))
                members[field.name] = with_exploration(members[field.name], broad, explore[field.name])
        except (TypeError, ValueError) as err:
            raise ValueError(f"from_schema: field {field.name!r}: {err}") from None
    return product(members)


# -------------------------------------------------------------------- psi in field units

_GRID_Z = np.linspace(-10.0, 10.0, 4001)  # standard-normal abscissae of describe_psi's quadrature
_GRID_W = np.exp(-0.5 * _GRID_Z**2) / math.sqrt(2.0 * math.pi) * (_GRID_Z[1] - _GRID_Z[0])
_Z95 = 1.6448536269514722  # Phi^-1(0.95)


def _json_value(x: Any) -> Any:
    return x if isinstance(x, (bool, int, float, str)) or x is None else str(x)


def _out(a: np.ndarray) -> Any:
    a = np.asarray(a, float)
    return float(a) if a.ndim == 0 else a.tolist()


def _field_params(name: str, params: Any, kind: str) -> tuple[np.ndarray, ...]:
    if kind == "categorical":
        logits = getattr(params, "logits", None)
        if logits is None and isinstance(params, (tuple, list)) and len(params) == 1:
            logits = params[0]
        if logits is None:
            raise ValueError(f"describe_psi: psi[{name!r}] is not CategoricalParams(logits) (from_schema's "
                             f"categorical family), got {type(params).__name__}.")
        return (np.asarray(logits, float),)
    loc, log_scale = getattr(params, "loc", None), getattr(params, "log_scale", None)
    if loc is None and isinstance(params, (tuple, list)) and len(params) == 2:
        loc, log_scale = params
    if loc is None or log_scale is None:
        raise ValueError(f"describe_psi: psi[{name!r}] is not NormalParams(loc, log_scale) (from_schema's "
                         f"continuous family), got {type(params).__name__}.")
    return np.asarray(loc, float), np.asarray(log_scale, float)


def _describe_histogram(field, logits: np.ndarray) -> dict[str, Any]:
    """describe_psi's entry for a :func:`histogram` field: bin edges and masses, moments and
    quantiles in closed form (piecewise-uniform density, piecewise-linear CDF)."""
    if logits.shape[:-1] != field.shape or not np.isfinite([field.low, field.high]).all():
        raise ValueError(f"describe_psi: psi[{field.name!r}] is CategoricalParams of shape {logits.shape}; a "
                         f"histogram over field {field.name!r} needs shape {(*field.shape, 'bins')} and a "
                         "finite range.")
    z = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    edges = np.linspace(field.low, field.high, probs.shape[-1] + 1)
    width, centres = edges[1] - edges[0], 0.5 * (edges[1:] + edges[:-1])
    mean = (probs * centres).sum(-1)
    std = np.sqrt(np.maximum((probs * (centres**2 + width**2 / 12.0)).sum(-1) - mean**2, 0.0))
    cdf = np.concatenate([np.zeros((*probs.shape[:-1], 1)), np.cumsum(probs, -1)], -1)

    def quantile(q):
        flat = cdf.reshape(-1, cdf.shape[-1])
        return np.array([np.interp(q, c, edges) for c in flat]).reshape(probs.shape[:-1])

    return dict(family="histogram", low=field.low, high=field.high, edges=edges.tolist(), bin_probs=probs.tolist(),
                mean=_out(mean), std=_out(std), median=_out(quantile(0.5)), p05=_out(quantile(0.05)),
                p95=_out(quantile(0.95)), method="closed form")


def describe_psi(source: Any, psi: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    r"""What ``psi`` means in each scene field's own units (JSON-ready).

    ``psi`` holds the parameters of :func:`from_schema`'s families, which are not in the
    field's units: a continuous field's ``NormalParams`` describe the normal *pre-image* ``u``
    of the value ``s = f(u)`` (:func:`bounded`), a categorical field's logits are unnormalised.
    This reports, per field:

    * **continuous**: ``mean``, ``std``, ``median``, ``p05``, ``p95`` of ``s`` in the field's
      units (arrays as nested lists for a field with a shape). The quantiles are exact
      (``f`` is monotone: ``f(loc + z sigma)``). Moments: closed form for an unbounded field
      (``mean = loc``, ``std = sigma``) and for a half line (log-normal: ``mean = low +
      exp(loc + sigma^2 / 2)``, ``var = (exp(sigma^2) - 1) exp(2 loc + sigma^2)``, mirrored
      for ``(-inf, high]``); for ``[low, high]`` (logit-normal, no closed form) by the
      trapezoid rule on ``z in [-10, 10]`` with 4001 points of ``u = loc + sigma z``
      (``method`` says which). The trapezoid rule is spectrally accurate for this smooth,
      rapidly decaying integrand while the grid resolves the sigmoid, i.e. for ``sigma``
      up to about 50; ``tests/test_distributions_describe.py`` checks it against
      sampling.
    * **categorical**: ``probs`` (``softmax(logits)``, shape ``(*shape, C)``) and the
      ``choices`` they refer to, as the schema names them.

    Args:
      source: the :class:`~autosim_jax.schema.SceneSchema` the distribution was built
        from, or a renderer (``.schema``) or a :class:`~autosim_jax.Simulator`
        (``.renderer.schema``).
      psi: a dict field -> parameters (``NormalParams`` / ``CategoricalParams``, or their
        values as sequences), e.g. ``from_schema(schema).init()``.

    Returns:
      ``{field: {"kind", "shape", "doc", ...}}`` in the schema's order, plus ``low``/``high``
      (``None`` for an infinite bound), ``mean``, ``std``, ``median``, ``p05``, ``p95``,
      ``method`` for continuous fields, ``choices`` and ``probs`` for categorical ones. A field
      of ``from_schema(..., explore=...)`` also has ``explore`` (the broad component's share
      ``w``); its other statistics are then those of the learned (base) component. A
      :func:`histogram` field (``CategoricalParams`` on a continuous field) has ``family:
      "histogram"``, ``edges`` and ``bin_probs``, and its moments and quantiles in closed form.

    Raises:
      ValueError: when ``psi`` lacks a field of the schema or a field's parameters are not
        those of :func:`from_schema`'s default family (e.g. an override distribution).

    Example:
      >>> from autosim_jax.schema import Field, SceneSchema
      >>> schema = SceneSchema((Field.continuous("light", 0.0, 2.0),
      ...                       Field.categorical("quality", choices=(1, 4, 16))))
      >>> q = from_schema(schema, {"light": {"loc": 1.0, "scale": 0.1},
      ...                          "quality": {"probs": (0.5, 0.25, 0.25)}})
      >>> d = describe_psi(schema, q.init())
      >>> round(d["light"]["median"], 6), round(d["light"]["std"], 2)
      (1.0, 0.1)
      >>> d["quality"]["choices"], [round(p, 2) for p in d["quality"]["probs"]]
      ([1, 4, 16], [0.5, 0.25, 0.25])
    """
    schema = source
    if not isinstance(schema, SceneSchema):
        schema = getattr(source, "schema", None) or getattr(getattr(source, "renderer", None), "schema", None)
    if not isinstance(schema, SceneSchema):
        raise ValueError(f"describe_psi: source must be a SceneSchema, a renderer or a Simulator, got "
                         f"{type(source).__name__}.")
    if not isinstance(psi, Mapping):
        raise ValueError(f"describe_psi: psi must be a dict field -> parameters, got {type(psi).__name__}.")
    missing = [f.name for f in schema.fields if f.name not in psi]
    if missing:
        raise ValueError(f"describe_psi: psi has no parameters for the fields {missing} of the schema.")
    out: dict[str, dict[str, Any]] = {}
    for field in schema.fields:
        entry: dict[str, Any] = {"kind": field.kind, "shape": list(field.shape), "doc": field.doc}
        if field.kind == "categorical":
            (logits,) = _field_params(field.name, psi[field.name], "categorical")
            if logits.shape != (*field.shape, field.num_categories):
                raise ValueError(f"describe_psi: psi[{field.name!r}].logits has shape {logits.shape}, expected "
                                 f"{(*field.shape, field.num_categories)}.")
            z = logits - logits.max(axis=-1, keepdims=True)
            probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
            entry.update(choices=[_json_value(c) for c in field.choices], probs=probs.tolist())
            out[field.name] = entry
            continue
        params = psi[field.name]
        if isinstance(params, ExploreParams):  # with_exploration: the base component, plus its share
            entry["explore"] = float(1.0 / (1.0 + np.exp(-float(params.logit))))
            params = params.base
        if isinstance(params, CategoricalParams):  # a histogram over the field's range
            entry.update(_describe_histogram(field, np.asarray(params.logits, float)))
            out[field.name] = entry
            continue
        loc, log_scale = _field_params(field.name, params, "continuous")
        if loc.shape != field.shape or log_scale.shape != field.shape:
            raise ValueError(f"describe_psi: psi[{field.name!r}] has shapes {loc.shape} / {log_scale.shape}, "
                             f"expected {field.shape}.")
        sigma = np.exp(log_scale)
        low, high = field.low, field.high
        lo_fin, hi_fin = bool(np.isfinite(low)), bool(np.isfinite(high))
        if lo_fin and hi_fin:
            def f(u):  # the logistic as 0.5 (1 + tanh(u / 2)): no overflow for a wide pre-image
                return low + (high - low) * 0.5 * (1.0 + np.tanh(0.5 * u))
            u = loc[..., None] + sigma[..., None] * _GRID_Z
            s = f(u)
            mean = (s * _GRID_W).sum(-1)
            std = np.sqrt(np.maximum(((s - mean[..., None]) ** 2 * _GRID_W).sum(-1), 0.0))
            method = "quadrature"
        elif lo_fin or hi_fin:
            bound, sign = (low, 1.0) if lo_fin else (high, -1.0)

            def f(u):
                return bound + sign * np.exp(u)
            mean = bound + sign * np.exp(loc + 0.5 * sigma**2)
            std = np.sqrt(np.expm1(sigma**2)) * np.exp(loc + 0.5 * sigma**2)
            method = "closed form"
        else:
            def f(u):
                return u
            mean, std, method = loc, sigma, "closed form"
        lo_q, hi_q = f(loc - _Z95 * sigma), f(loc + _Z95 * sigma)
        if hi_fin and not lo_fin:  # s = high - e^u decreases in u
            lo_q, hi_q = hi_q, lo_q
        entry.update(low=low if lo_fin else None, high=high if hi_fin else None, mean=_out(mean), std=_out(std),
                     median=_out(f(loc)), p05=_out(lo_q), p95=_out(hi_q), method=method)
        out[field.name] = entry
    return out


def field_spread(entry: Mapping[str, Any]) -> np.ndarray | None:
    """How spread each element of one field of :func:`describe_psi` is: 1 as spread as the
    uniform law over the field's range or choices, 0 a single value.

    A categorical element's normalised entropy ``-sum p log p / log C``; a continuous element
    with a finite range ``[low, high]``, its standard deviation over the uniform's,
    ``std / ((high - low) / sqrt(12))`` (a law wider than the uniform, e.g. two modes at the
    ends, exceeds 1). ``None`` for a field without a finite range (its spread has no scale
    to compare with). On clevr-seg, per-object fields that collapse to one value (an object's
    material, colour or position) cost most of the gap that long runs lose
    (``docs/learning.md``, sessions 22-28); ``autosim run``'s ``spread.png`` draws this.

    Args:
      entry: ``describe_psi(...)[field]``.

    Returns:
      An array of the field's shape (``()`` for a scalar field), or ``None``.

    Example:
      >>> from autosim_jax.schema import Field, SceneSchema
      >>> schema = SceneSchema((Field.continuous("light", 0.0, 2.0),
      ...                       Field.categorical("colour", choices=("red", "blue"), shape=(2,))))
      >>> q = from_schema(schema, {"light": {"loc": 1.0, "scale": 0.1}})
      >>> d = describe_psi(schema, q.init())
      >>> round(float(field_spread(d["light"])), 2)  # std about 0.1 against the uniform's 2 / sqrt(12)
      0.17
      >>> field_spread(d["colour"]).tolist()  # the uniform start of a categorical
      [1.0, 1.0]
    """
    if entry["kind"] == "categorical":
        p = np.asarray(entry["probs"], float)
        logs = np.log(np.where(p > 0, p, 1.0))
        return -(p * logs).sum(-1) / math.log(p.shape[-1]) if p.shape[-1] > 1 else np.zeros(p.shape[:-1])
    low, high = entry.get("low"), entry.get("high")
    if low is None or high is None:
        return None
    return np.asarray(entry["std"], float) / ((high - low) / math.sqrt(12.0))
