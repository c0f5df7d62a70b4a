"""The stochastic simulator ``zeta = r(s), s ~ q_psi(s)`` (paper Sec. 4.1, Eq. 9-10).

A :class:`Simulator` couples a :class:`~autosim_jax.distributions.Distribution` (JAX) with a
host :class:`~autosim_jax.schema.Renderer` (numpy). This module is the one place
where the two meet: :meth:`Simulator.simulate` samples scenes in JAX and renders them
through ``jax.pure_callback``, so it runs under ``jax.jit`` and ``jax.vmap``.

* **Purity.** The renderer's seed is drawn from the key inside JAX and passed to the
  callback as an input; the callback reads no global random state, so equal
  ``(key, psi, n)`` give equal renders.
* **Batching.** ``vmap_method="broadcast_all"``: under ``jax.vmap`` the callback is called
  once with every argument broadcast to the batch and loops over the batch on the host, one
  ``render`` call per batch element with that element's own seed. A renderer draws a whole
  batch of scenes with one seed, so batches cannot be merged into one ``render`` call; one
  host round trip per vmapped call (instead of one per element with ``"sequential"``) is
  the cheapest correct choice, and the result equals a Python loop over the batch.
* **Errors.** :meth:`Simulator.render_numpy` is the single place that checks scenes and
  outputs; every failure (the renderer raises, returns a wrong shape or dtype, or non-finite
  values, or the scenes are out of the schema's range) becomes a :class:`RenderError` naming
  the renderer, the field and the offending scene's values. Called directly it raises that
  :class:`RenderError`. Through JAX (``simulate``/``render``, eager or jitted) the error
  crosses XLA and reaches the caller as ``jax.errors.JaxRuntimeError`` (a
  ``RuntimeError``) whose message ends with the :class:`RenderError` text; wrap the call in
  :func:`reraise_render_errors` to get the :class:`RenderError` itself. Nothing is cached or
  mutated on failure, so the caller's state (``psi``, optimiser state, the jit cache) is as
  it was and the next call runs normally.
* **Precision.** 64-bit scenes and outputs cross the callback as ``uint32`` words: JAX
  converts callback arguments and results with the x64 setting of the callback's own
  thread, so under a thread-local ``jax.enable_x64(True)`` float64 scenes would otherwise
  reach the renderer rounded to float32.
* **Derivatives.** The renderer is a black box: differentiating ``inputs``/``labels`` with
  respect to ``psi`` raises JAX's "Pure callbacks do not support JVP" error rather than
  returning a silent zero; the derivative with respect to ``psi`` comes from the
  score-function estimators of :mod:`autosim_jax.estimators`.
* **Accounting.** No counter lives in the pure function: a caller counts ``n`` images per
  ``simulate`` call.

Example:
  >>> import numpy as np, jax
  >>> from autosim_jax.distributions import from_schema
  >>> from autosim_jax.schema import Field, OutputSpec, SceneSchema
  >>> class Toy:
  ...     name = "toy"
  ...     schema = SceneSchema((Field.continuous("light", 0.0, 2.0),))
  ...     inputs_spec = OutputSpec((4,), np.float32)
  ...     labels_spec = OutputSpec((), np.int32)
  ...     def render(self, scenes, seed):
  ...         x = np.repeat(scenes["light"][:, None], 4, axis=1).astype(np.float32)
  ...         return x, (scenes["light"] > 1).astype(np.int32)
  >>> sim = Simulator(from_schema(Toy.schema), Toy())
  >>> out = jax.jit(sim.simulate, static_argnums=2)(jax.random.key(0), sim.distribution.init(), 8)
  >>> out.inputs.shape, out.labels.shape
  ((8, 4), (8,))
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import re
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from autosim_jax.distributions import Distribution
from autosim_jax.schema import OutputSpec, Renderer, SceneSchema

VMAP_METHOD = "broadcast_all"

_SCENES_STRUCTURE = (
    "Scenes for renderer {renderer!r} do not match its schema: {problem}. The distribution must "
    "produce exactly the schema's fields {names}, each of shape (n, *field.shape), floats for "
    "continuous fields and integer indices for categorical ones (build it with "
    "autosim_jax.distributions.from_schema)."
)


class RenderError(RuntimeError):
    """A renderer failed, or returned something its specs do not allow.

    Attributes:
      renderer: the renderer's name.
      field: the scene field (``"light"``) or output (``"inputs"``/``"labels"``) at fault,
        or ``None`` when the renderer itself raised.
      scene_index: index of the offending scene in its batch, or ``None`` when unknown.
      scenes: the offending scene's values (field -> value), or, when no one scene is
        known, the whole batch (field -> its values as printed by numpy, truncated).
      seed: the seed the renderer was called with.
    """

    def __init__(
        self,
        message: str,
        *,
        renderer: str,
        field: str | None = None,
        scene_index: int | None = None,
        scenes: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.renderer = renderer
        self.field = field
        self.scene_index = scene_index
        self.scenes = dict(scenes) if scenes is not None else None
        self.seed = seed
        self.error_id: int | None = None  # set when it crosses a pure_callback

    def __str__(self) -> str:
        if self.error_id is None:
            return self.message
        return f"{self.message} [autosim render error #{self.error_id}]"


# Host-side log of the RenderErrors raised inside callbacks, so that reraise_render_errors()
# can hand back the structured error after XLA has turned it into a JaxRuntimeError. It is a
# small bounded diagnostic record, never read by any computation.
_RECENT_ERRORS: collections.OrderedDict[int, RenderError] = collections.OrderedDict()
_RECENT_LOCK = threading.Lock()
_ERROR_IDS = itertools.count(1)
_MAX_RECENT = 32
_ERROR_ID_PATTERN = re.compile(r"\[autosim render error #(\d+)\]")


def _remember(err: RenderError) -> None:
    with _RECENT_LOCK:
        err.error_id = next(_ERROR_IDS)
        _RECENT_ERRORS[err.error_id] = err
        while len(_RECENT_ERRORS) > _MAX_RECENT:
            _RECENT_ERRORS.popitem(last=False)


@contextlib.contextmanager
def reraise_render_errors():
    """Turns a render failure that crossed XLA back into its :class:`RenderError`.

    Inside a ``jax.pure_callback`` an exception reaches the caller as
    ``jax.errors.JaxRuntimeError``; within this context such an error, when it came from a
    :class:`Simulator`, is re-raised as the original :class:`RenderError` (with its
    attributes), chained to the runtime error. Other exceptions pass through unchanged.

    References:
      Paper Sec. 4.1: the renderer ``r(s)`` of Eq. 9 is a non-differentiable host program.

    Example:
      >>> with reraise_render_errors():
      ...     pass  # e.g. jax.block_until_ready(jitted_step(key, psi))
    """
    try:
        yield
    # JAX 0.10 raises JaxRuntimeError from a function's first call but a plain ValueError
    # ("INTERNAL: CpuCallback error ...") from its fast path on later calls; the pattern
    # check below lets every other ValueError pass through untouched.
    except (jax.errors.JaxRuntimeError, ValueError) as exc:
        match = _ERROR_ID_PATTERN.search(str(exc))
        with _RECENT_LOCK:
            err = _RECENT_ERRORS.get(int(match.group(1))) if match else None
        if err is None:
            raise
        raise err from exc


class Simulation(NamedTuple):
    """One simulated batch."""

    scenes: Any  # dict field -> (n, *field.shape): the sampled s_k
    inputs: jax.Array  # (n, *renderer.inputs_spec.shape): r(s_k), the model's inputs
    labels: jax.Array  # (n, *renderer.labels_spec.shape): the ground truth of r(s_k)


def _format_scene(scenes: Mapping[str, np.ndarray], index: int | None) -> dict[str, Any]:
    if index is None:
        return {
            name: np.array2string(np.asarray(v), threshold=24, precision=6)
            for name, v in scenes.items()
        }
    return {name: np.asarray(v)[index].tolist() for name, v in scenes.items()}


def _first_bad_scene(bad: np.ndarray) -> int | None:
    rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)) if bad.ndim else np.array([])
    return int(rows[0]) if rows.size else None


def _check_scene_structure(renderer_name: str, schema: SceneSchema, scenes) -> int:
    """Trace-time check of field names, shapes and dtype kinds; returns n."""
    names = list(schema.names)
    if not isinstance(scenes, Mapping):
        problem = f"got {type(scenes).__name__}, not a dict"
        raise ValueError(
            _SCENES_STRUCTURE.format(renderer=renderer_name, problem=problem, names=names)
        )
    missing = [k for k in names if k not in scenes]
    unknown = [k for k in scenes if k not in names]
    if missing or unknown:
        problem = f"missing {missing}, unknown {unknown}"
        raise ValueError(
            _SCENES_STRUCTURE.format(renderer=renderer_name, problem=problem, names=names)
        )
    n = None
    for field in schema.fields:
        shape, dtype = jnp.shape(scenes[field.name]), jnp.result_type(scenes[field.name])
        if (
            len(shape) != 1 + len(field.shape)
            or tuple(shape[1:]) != field.shape
            or shape[0] < 1
            or (n is not None and shape[0] != n)
        ):
            problem = (
                f"field {field.name!r} has shape {shape}, expected ({n or 'n'}, *{field.shape})"
            )
            raise ValueError(
                _SCENES_STRUCTURE.format(renderer=renderer_name, problem=problem, names=names)
            )
        want = jnp.integer if field.kind == "categorical" else jnp.floating
        if not jnp.issubdtype(dtype, want):
            problem = f"field {field.name!r} ({field.kind}) has dtype {dtype}"
            raise ValueError(
                _SCENES_STRUCTURE.format(renderer=renderer_name, problem=problem, names=names)
            )
        n = shape[0]
    return int(n)


# 64-bit arrays cross the callback as uint32 words, bitcast on either side. JAX
# canonicalises callback arguments and results with the x64 setting of the thread that runs
# the callback, which is not the caller's thread: under a thread-local
# ``jax.enable_x64(True)`` float64 scenes would reach the renderer rounded to float32, and a
# float64 result would fail JAX's dtype check. uint32 is never canonicalised.


def _pack(value: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(value, jnp.uint32) if value.dtype.itemsize > 4 else value


def _unpack(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.itemsize <= 4:
        return value
    return np.ascontiguousarray(value).view(dtype)[..., 0]


def _transport_struct(shape: tuple[int, ...], dtype: np.dtype) -> jax.ShapeDtypeStruct:
    if dtype.itemsize <= 4:
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct((*shape, dtype.itemsize // 4), np.uint32)


def _to_transport(value: np.ndarray) -> np.ndarray:
    if value.dtype.itemsize <= 4:
        return value
    value = np.ascontiguousarray(value)
    return value.view(np.uint32).reshape(*value.shape, value.dtype.itemsize // 4)


def _from_transport(value: jax.Array, dtype: np.dtype) -> jax.Array:
    return value if dtype.itemsize <= 4 else jax.lax.bitcast_convert_type(value, dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class Simulator:
    """A sampling distribution ``q_psi(s)`` and a deterministic host renderer ``r(s)``.

    Attributes:
      distribution: ``q_psi`` over the renderer's scene fields; its scenes must match
        ``renderer.schema`` (checked when the simulator is built).
      renderer: a host renderer following the
        :class:`~autosim_jax.schema.Renderer` protocol.

    References:
      Paper Eq. 9-10: ``p_psi(zeta) = int_{s: r(s) = zeta} q_psi(s) ds``.

    Example:
      >>> sim = Simulator(distribution, renderer)  # doctest: +SKIP
      >>> scenes, inputs, labels = sim.simulate(jax.random.key(0), psi, 32)  # doctest: +SKIP
    """

    distribution: Distribution
    renderer: Renderer

    def __post_init__(self):
        if not isinstance(self.distribution, Distribution):
            raise ValueError(
                "Simulator: distribution must be a Distribution, got "
                f"{type(self.distribution).__name__}."
            )
        for attr in ("schema", "inputs_spec", "labels_spec", "render"):
            if not hasattr(self.renderer, attr):
                raise ValueError(
                    f"Simulator: the renderer {self.name!r} has no {attr!r}; see the Renderer "
                    "protocol."
                )
        for attr in ("inputs_spec", "labels_spec"):
            if not isinstance(getattr(self.renderer, attr), OutputSpec):
                raise ValueError(
                    f"Simulator: renderer {self.name!r}: {attr} must be an OutputSpec."
                )
        shapes = jax.eval_shape(
            lambda k: self.distribution.sample(k, self.distribution.init(), 1), jax.random.key(0)
        )
        _check_scene_structure(self.name, self.renderer.schema, shapes)

    @property
    def name(self) -> str:
        """The renderer's name (used in every error message)."""
        return str(getattr(self.renderer, "name", type(self.renderer).__name__))

    # ----------------------------------------------------------------------- host side

    def render_numpy(self, scenes: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders on the host, checking the scenes before and the outputs after.

        This is what the callback of :meth:`render` runs, and the one place for the checks.

        Args:
          scenes: field name -> numpy array ``(n, *field.shape)``.
          seed: the renderer's seed (a Python int, or a numpy integer scalar).

        Returns:
          ``(inputs, labels)`` as numpy arrays of the renderer's declared shapes and dtypes.

        Raises:
          RenderError: the scenes break the schema, the renderer raises, or an output has the
            wrong shape, dtype, or non-finite values; it names the renderer, the field and the
            offending scene.

        References:
          Paper Eq. 10: ``zeta = r(s)``.

        Example:
          >>> scenes = {"light": np.array([0.5])}
          >>> inputs, labels = sim.render_numpy(scenes, seed=0)  # doctest: +SKIP
        """
        name, schema = self.name, self.renderer.schema
        seed = int(seed)
        scenes = (
            {k: np.asarray(v) for k, v in scenes.items()} if isinstance(scenes, Mapping) else scenes
        )
        try:
            n = schema.validate(scenes)
        except ValueError as err:
            field, index = None, None
            if isinstance(scenes, Mapping):
                for f in schema.fields:
                    values = scenes.get(f.name)
                    if values is None:
                        continue
                    try:
                        f.check(values)
                    except ValueError:
                        field = f.name
                        if f.kind == "categorical" and np.issubdtype(values.dtype, np.integer):
                            index = _first_bad_scene((values < 0) | (values >= f.num_categories))
                        elif f.kind == "continuous" and np.issubdtype(values.dtype, np.floating):
                            index = _first_bad_scene(
                                ~np.isfinite(values) | (values < f.low) | (values > f.high)
                            )
                        break
            shown = _format_scene(scenes, index) if isinstance(scenes, Mapping) else None
            raise RenderError(
                f"Renderer {name!r} was given invalid scenes (seed {seed}): {err} Offending scene: "
                f"{shown}",
                renderer=name,
                field=field,
                scene_index=index,
                scenes=shown,
                seed=seed,
            ) from err
        try:
            out = self.renderer.render(scenes, seed)
        except Exception as err:  # any failure of foreign code becomes one clear error
            shown = _format_scene(scenes, None)
            raise RenderError(
                f"Renderer {name!r} raised {type(err).__name__}: {err} while rendering {n} scenes "
                "with seed "
                f"{seed}; scenes: {shown}",
                renderer=name,
                scenes=shown,
                seed=seed,
            ) from err
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise RenderError(
                f"Renderer {name!r} must return a pair (inputs, labels), got {type(out).__name__}"
                f"{f' of length {len(out)}' if isinstance(out, tuple | list) else ''} (seed "
                f"{seed}).",
                renderer=name,
                seed=seed,
            )
        checked = []
        for what, value, spec in (
            ("inputs", out[0], self.renderer.inputs_spec),
            ("labels", out[1], self.renderer.labels_spec),
        ):
            value = np.asarray(value)
            want_shape, want_dtype = (n, *spec.shape), np.dtype(spec.dtype)
            if value.shape != want_shape:
                raise RenderError(
                    f"Renderer {name!r} returned {what} of shape {value.shape} for {n} scenes; its "
                    f"{what}_spec "
                    f"declares (n, *{tuple(spec.shape)}) = {want_shape} (seed {seed}).",
                    renderer=name,
                    field=what,
                    scenes=_format_scene(scenes, None),
                    seed=seed,
                )
            if value.dtype != want_dtype:
                raise RenderError(
                    f"Renderer {name!r} returned {what} of dtype {value.dtype}; its {what}_spec "
                    "declares "
                    f"{want_dtype} (seed {seed}). Cast in the renderer or fix the spec.",
                    renderer=name,
                    field=what,
                    scenes=_format_scene(scenes, None),
                    seed=seed,
                )
            if np.issubdtype(value.dtype, np.inexact):
                index = _first_bad_scene(~np.isfinite(value))
                if index is not None:
                    shown = _format_scene(scenes, index)
                    raise RenderError(
                        f"Renderer {name!r} returned non-finite {what} for scene {index} of {n} "
                        f"(seed {seed}); "
                        f"that scene is {shown}.",
                        renderer=name,
                        field=what,
                        scene_index=index,
                        scenes=shown,
                        seed=seed,
                    )
            checked.append(value)
        return checked[0], checked[1]

    def _callback(self, dtypes, scene_dtypes, scenes, seed):
        """Host side of :meth:`render`; loops over the leading vmap axes (broadcast_all).

        ``dtypes`` (outputs) and ``scene_dtypes`` are fixed at trace time: the callback may run
        on another thread, where a thread-local ``jax.enable_x64`` of the caller does not hold.
        """
        seed = np.asarray(seed)
        batch = seed.shape
        scenes = {k: _unpack(np.asarray(v), scene_dtypes[k]) for k, v in scenes.items()}
        specs = (self.renderer.inputs_spec, self.renderer.labels_spec)
        n = next(iter(scenes.values())).shape[len(batch)]
        outs = [np.empty((*batch, n, *s.shape), d) for s, d in zip(specs, dtypes)]
        for idx in np.ndindex(*batch):
            try:
                result = self.render_numpy({k: v[idx] for k, v in scenes.items()}, seed[idx])
            except RenderError as err:
                if batch:
                    err.message += f" (vmapped batch element {idx})"
                _remember(err)
                raise
            for o, r in zip(outs, result):
                o[idx] = r
        return tuple(_to_transport(o) for o in outs)

    # ------------------------------------------------------------------------ JAX side

    def render(self, scenes, seed) -> tuple[jax.Array, jax.Array]:
        """Renders a batch of scenes through ``jax.pure_callback`` (jit/vmap safe).

        Args:
          scenes: field name -> array ``(n, *field.shape)``.
          seed: a ``uint32`` scalar (traced or concrete), the renderer's seed.

        Returns:
          ``(inputs, labels)`` with shapes ``(n, *spec.shape)`` and the specs' dtypes
          (canonicalised: float64 becomes float32 unless x64 is on).

        Raises:
          ValueError: at trace time, when the scenes do not match the schema's structure.

        References:
          Paper Eq. 10: ``zeta = r(s)``, the deterministic, non-differentiable renderer.

        Example:
          >>> inputs, labels = sim.render(scenes, jnp.uint32(7))  # doctest: +SKIP
        """
        n = _check_scene_structure(self.name, self.renderer.schema, scenes)
        seed = jnp.asarray(seed)
        if seed.shape != () or not jnp.issubdtype(seed.dtype, jnp.integer):
            raise ValueError(
                f"render: seed must be an integer scalar, got shape {seed.shape}, dtype "
                f"{seed.dtype}."
            )
        seed = seed.astype(jnp.uint32)
        dtypes = tuple(
            np.dtype(jax.dtypes.canonicalize_dtype(spec.dtype))
            for spec in (self.renderer.inputs_spec, self.renderer.labels_spec)
        )
        result_shapes = tuple(
            _transport_struct((n, *spec.shape), dtype)
            for spec, dtype in zip((self.renderer.inputs_spec, self.renderer.labels_spec), dtypes)
        )
        scenes = {k: jnp.asarray(v) for k, v in scenes.items()}
        scene_dtypes = {k: np.dtype(v.dtype) for k, v in scenes.items()}
        packed = {k: _pack(v) for k, v in scenes.items()}
        inputs, labels = jax.pure_callback(
            functools.partial(self._callback, dtypes, scene_dtypes),
            result_shapes,
            packed,
            seed,
            vmap_method=VMAP_METHOD,
        )
        return _from_transport(inputs, dtypes[0]), _from_transport(labels, dtypes[1])

    def simulate(self, key: jax.Array, psi, n: int) -> Simulation:
        """Samples ``n`` scenes from ``q_psi`` and renders them.

        The key is split into a scene key and a render key; the renderer's seed is
        ``jax.random.bits`` of the render key, so the call is a pure function of
        ``(key, psi, n)``.

        Args:
          key: a JAX PRNG key.
          psi: the distribution's parameters.
          n: number of scenes (a static Python int; mark it static under ``jax.jit``).

        Returns:
          A :class:`Simulation` ``(scenes, inputs, labels)``; the caller counts ``n`` rendered
          images.

        References:
          Paper Algorithm 1, line 2: sample a dataset of size K, ``D_train ~ p_psi(zeta)``.

        Example:
          >>> scenes, inputs, labels = sim.simulate(jax.random.key(0), psi, 64)  # doctest: +SKIP
        """
        scene_key, render_key = jax.random.split(key)
        scenes = self.distribution.sample(scene_key, psi, n)
        seed = jax.random.bits(render_key, (), jnp.uint32)
        inputs, labels = self.render(scenes, seed)
        return Simulation(scenes, inputs, labels)
