"""The stochastic simulator ``zeta = r(s), s ~ q_psi(s)`` (paper Sec. 4.1, Eq. 9-10).

A :class:`Simulator` couples a :class:`~autosim_jax.distributions.Distribution` (JAX) with a
host :class:`~autosim_jax.schema.Renderer` (numpy). This module is the one place
where the two meet: :meth:`Simulator.simulate` samples scenes in JAX and renders them
through ``jax.pure_callback``, so it runs under ``jax.jit`` and ``jax.vmap``.

* **Purity.** The renderer's seed is drawn from the key inside JAX and passed to the
  callback as an input; the callback reads no global random state, so equal
  ``(key, psi, n)`` give equal renders.
* **Chunks and seeds.** A batch of ``n`` scenes is rendered in chunks of
  ``chunk_size`` scenes (8 by default), one ``renderer.render`` call per chunk with the seed
  :func:`~autosim_jax.render_pool.chunk_seed` ``(seed, chunk index)``. Without a pool the
  chunks run one after the other in this process; with a pool
  (``Simulator(distribution, renderer, pool=make_render_pool(renderer, workers=16))`` or
  ``sim.with_pool(pool)``) they fan out over worker processes or Ray actors. The chunks and
  their seeds do not depend on the pool, so the renders are the same bitwise serially and
  with any number of workers of any backend (same ``chunk_size``). This changed the renders
  of a given seed: before chunking, a batch was one ``render`` call with the seed itself.
* **Batching.** ``vmap_method="broadcast_all"``: under ``jax.vmap`` the callback is called
  once with every argument broadcast to the batch and loops over the batch on the host, one
  batch (of chunks) per batch element with that element's own seed; one host round trip per
  vmapped call (instead of one per element with ``"sequential"``) is the cheapest correct
  choice, and the result equals a Python loop over the batch.
* **Errors.** :meth:`Simulator.render_numpy` is the single place that checks scenes and
  outputs; every failure (the renderer raises, returns a wrong shape or dtype, non-finite
  values, or labels outside ``[0, num_classes)`` of a spec that declares ``num_classes``, or
  the scenes are out of the schema's range; with a pool also a worker that dies
  or a batch past the pool's timeout) becomes a :class:`RenderError` naming the renderer,
  the field and the offending scene (its index in the whole batch) or scene range. Called
  directly it raises that :class:`RenderError`. Through JAX (``simulate``/``render``, eager
  or jitted) the error crosses XLA and reaches the caller as ``jax.errors.JaxRuntimeError``
  (a ``RuntimeError``) whose message ends with the :class:`RenderError` text; wrap the call
  in :func:`reraise_render_errors` to get the :class:`RenderError` itself. Nothing is cached
  or mutated on failure, so the caller's state (``psi``, optimiser state, the jit cache) is
  as it was and the next call runs normally (a pool replaces a worker that died).
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
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from autosim_jax.distributions import Distribution
from autosim_jax.render_pool import RenderError as RenderError
from autosim_jax.render_pool import RenderPool, SerialPool, chunk_bounds, describe_scenes
from autosim_jax.schema import OutputSpec, Renderer, SceneSchema

VMAP_METHOD = "broadcast_all"

_SCENES_STRUCTURE = (
    "Scenes for renderer {renderer!r} do not match its schema: {problem}. The distribution must "
    "produce exactly the schema's fields {names}, each of shape (n, *field.shape), floats for "
    "continuous fields and integer indices for categorical ones (build it with "
    "autosim_jax.distributions.from_schema)."
)


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
      pool: a :class:`~autosim_jax.render_pool.RenderPool` of ``renderer`` (from
        :func:`~autosim_jax.render_pool.make_render_pool`) that renders the chunks of each
        batch, or ``None`` to render them serially in this process. The caller owns the pool
        and closes it; the renders do not depend on it (for its default ``chunk_size``).

    References:
      Paper Eq. 9-10: ``p_psi(zeta) = int_{s: r(s) = zeta} q_psi(s) ds``.

    Example:
      >>> import jax, numpy as np
      >>> from autosim_jax import Field, OutputSpec, SceneSchema, from_schema
      >>> class Light:  # the "image" is the light level 4 times; the label, whether it is above 1
      ...     name, schema = "light", SceneSchema((Field.continuous("light", 0.0, 2.0),))
      ...     inputs_spec, labels_spec = OutputSpec((4,), np.float32), OutputSpec((), np.int32, num_classes=2)
      ...     def render(self, scenes, seed):
      ...         light = scenes["light"]
      ...         return np.repeat(light[:, None], 4, 1).astype(np.float32), (light > 1).astype(np.int32)
      >>> sim = Simulator(from_schema(Light.schema), Light())
      >>> psi = sim.distribution.init()
      >>> scenes, inputs, labels = sim.simulate(jax.random.key(0), psi, 32)
      >>> inputs.shape, labels.shape, sorted(scenes)
      ((32, 4), (32,), ['light'])
      >>> from autosim_jax.render_pool import make_render_pool
      >>> with make_render_pool(sim.renderer, workers=1) as pool:  # workers=16: 16 processes
      ...     same = sim.with_pool(pool).simulate(jax.random.key(0), psi, 32)
      >>> bool((same.inputs == inputs).all())  # the same renders with any pool
      True
    """

    distribution: Distribution
    renderer: Renderer
    pool: RenderPool | None = None

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
        if self.pool is not None:
            if not isinstance(self.pool, RenderPool):
                raise ValueError(
                    f"Simulator: pool must be a RenderPool (make_render_pool(renderer, ...)) or "
                    f"None, got {type(self.pool).__name__}."
                )
            if self.pool.renderer is not self.renderer and self.pool.renderer != self.renderer:
                raise ValueError(
                    f"Simulator: the pool renders with {self.pool.renderer!r}, not this "
                    f"simulator's renderer {self.renderer!r}; build it from the same one: "
                    "make_render_pool(simulator.renderer, ...)."
                )

    @property
    def name(self) -> str:
        """The renderer's name (used in every error message)."""
        return str(getattr(self.renderer, "name", type(self.renderer).__name__))

    def with_pool(self, pool: RenderPool | None) -> Simulator:
        """This simulator, rendering through ``pool`` (``None``: serially in this process).

        The renders are the same bitwise (for the pool's default ``chunk_size``); only where
        they are computed changes. A new simulator is a new static argument, so a function
        jitted over the old one traces once more for it.

        Example (a serial pool here; ``workers=2`` gives two processes, which a renderer
        defined in a module, not in a notebook or doctest, can use):

          >>> import jax, numpy as np
          >>> from autosim_jax import Field, OutputSpec, SceneSchema, from_schema
          >>> class Light:  # the "image" is the light level 4 times; the label, whether it is above 1
          ...     name, schema = "light", SceneSchema((Field.continuous("light", 0.0, 2.0),))
          ...     inputs_spec, labels_spec = OutputSpec((4,), np.float32), OutputSpec((), np.int32, num_classes=2)
          ...     def render(self, scenes, seed):
          ...         light = scenes["light"]
          ...         return np.repeat(light[:, None], 4, 1).astype(np.float32), (light > 1).astype(np.int32)
          >>> sim = Simulator(from_schema(Light.schema), Light())
          >>> from autosim_jax.render_pool import make_render_pool
          >>> with make_render_pool(sim.renderer, workers=1, backend="serial") as pool:
          ...     out = sim.with_pool(pool).simulate(jax.random.key(0), sim.distribution.init(), 16)
          >>> out.inputs.shape
          (16, 4)
        """
        return dataclasses.replace(self, pool=pool)

    # ----------------------------------------------------------------------- host side

    def render_numpy(self, scenes: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders on the host, checking the scenes before and the outputs after.

        This is what the callback of :meth:`render` runs, and the one place for the checks.

        Args:
          scenes: field name -> numpy array ``(n, *field.shape)``.
          seed: the batch's seed (a non-negative Python int, or a numpy integer scalar).

        Returns:
          ``(inputs, labels)`` as numpy arrays of the renderer's declared shapes and dtypes.

        The scenes are rendered in chunks of the pool's ``chunk_size`` (serially when the
        simulator has no pool), chunk ``i`` with seed ``chunk_seed(seed, i)``; see
        :mod:`autosim_jax.render_pool`.

        Raises:
          RenderError: the scenes break the schema, the renderer raises, or an output has the
            wrong shape, dtype, or non-finite values, or a class index outside ``[0,
            num_classes)`` when its :class:`~autosim_jax.schema.OutputSpec` declares
            ``num_classes``; with a pool also a worker that dies or a batch past the pool's
            timeout. It names the renderer, the field and the offending scene (its index in
            the whole batch) or scene range.

        References:
          Paper Eq. 10: ``zeta = r(s)``.

        Example:
          >>> import jax, numpy as np
          >>> from autosim_jax import Field, OutputSpec, SceneSchema, from_schema
          >>> class Light:  # the "image" is the light level 4 times; the label, whether it is above 1
          ...     name, schema = "light", SceneSchema((Field.continuous("light", 0.0, 2.0),))
          ...     inputs_spec, labels_spec = OutputSpec((4,), np.float32), OutputSpec((), np.int32, num_classes=2)
          ...     def render(self, scenes, seed):
          ...         light = scenes["light"]
          ...         return np.repeat(light[:, None], 4, 1).astype(np.float32), (light > 1).astype(np.int32)
          >>> sim = Simulator(from_schema(Light.schema), Light())
          >>> inputs, labels = sim.render_numpy({"light": np.array([0.5, 1.5])}, seed=0)
          >>> labels.tolist()
          [0, 1]
          >>> sim.render_numpy({"light": np.array([0.5, 2.5])}, seed=0)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
          Traceback (most recent call last):
          ...
          autosim_jax.render_pool.RenderError: Renderer 'light' was given invalid scenes (seed 0):
          Scene field 'light' must be a finite value in [0.0, 2.0]; scene 1 has ...
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
            shown = describe_scenes(scenes, index) if isinstance(scenes, Mapping) else None
            raise RenderError(
                f"Renderer {name!r} was given invalid scenes (seed {seed}): {err} Offending scene: "
                f"{shown}",
                renderer=name,
                field=field,
                scene_index=index,
                scenes=shown,
                seed=seed,
            ) from err
        pool = self.pool if self.pool is not None else SerialPool(self.renderer)
        outs = pool.render_chunks(scenes, seed)  # RenderError: raised, died, timed out
        bounds = chunk_bounds(n, pool.chunk_size)
        checked = []
        for j, (what, spec) in enumerate(
            (("inputs", self.renderer.inputs_spec), ("labels", self.renderer.labels_spec))
        ):
            parts = [
                self._check_chunk_output(out, j, what, spec, scenes, n, a, b, seed)
                for out, (a, b) in zip(outs, bounds)
            ]
            value = np.concatenate(parts)  # a copy: Ray's outputs are read-only views
            if np.issubdtype(value.dtype, np.inexact):
                index = _first_bad_scene(~np.isfinite(value))
                if index is not None:
                    shown = describe_scenes(scenes, index)
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
            if spec.num_classes is not None:
                self._check_classes(value, what, spec.num_classes, scenes, n, seed)
            checked.append(value)
        return checked[0], checked[1]

    def _check_classes(self, value, what, num_classes, scenes, n, seed) -> None:
        """Raises a :class:`RenderError` for a class index outside ``[0, num_classes)``."""
        bad = (value < 0) | (value >= num_classes)
        index = _first_bad_scene(bad)
        if index is None:
            return
        at = tuple(int(i) for i in np.argwhere(bad[index])[0]) if bad.ndim > 1 else ()
        shown = describe_scenes(scenes, index)
        raise RenderError(
            f"Renderer {self.name!r} returned {what} {int(value[index][at])} "
            f"{f'at {at} ' if at else ''}for scene {index} of {n} (seed {seed}); its {what}_spec declares "
            f"num_classes={num_classes}, so every value must be a class index in [0, {num_classes}) (an "
            f"out-of-range label gives NaN losses). Fix the renderer, or the spec's num_classes; that "
            f"scene is {shown}.",
            renderer=self.name,
            field=what,
            scene_index=index,
            scenes=shown,
            seed=seed,
        )

    def _check_chunk_output(self, out, j, what, spec, scenes, n, a, b, seed) -> np.ndarray:
        """Output ``j`` (``what``) of the chunk of scenes ``a..b-1``, checked against ``spec``."""
        name = self.name
        where = f"scenes {a}..{b - 1} of {n}" if (a, b) != (0, n) else f"{n} scenes"
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise RenderError(
                f"Renderer {name!r} must return a pair (inputs, labels), got {type(out).__name__}"
                f"{f' of length {len(out)}' if isinstance(out, tuple | list) else ''} for "
                f"{where} (seed {seed}).",
                renderer=name,
                seed=seed,
                scene_range=(a, b),
            )
        value = np.asarray(out[j])
        want_shape, want_dtype = (b - a, *spec.shape), np.dtype(spec.dtype)
        if value.shape != want_shape:
            raise RenderError(
                f"Renderer {name!r} returned {what} of shape {value.shape} for {where}; its "
                f"{what}_spec declares (n, *{tuple(spec.shape)}) = {want_shape} for these "
                f"{b - a} (seed {seed}).",
                renderer=name,
                field=what,
                scenes=describe_scenes({k: v[a:b] for k, v in scenes.items()}),
                seed=seed,
                scene_range=(a, b),
            )
        if value.dtype != want_dtype:
            raise RenderError(
                f"Renderer {name!r} returned {what} of dtype {value.dtype} for {where}; its "
                f"{what}_spec declares {want_dtype} (seed {seed}). Cast in the renderer or fix "
                "the spec.",
                renderer=name,
                field=what,
                scenes=describe_scenes({k: v[a:b] for k, v in scenes.items()}),
                seed=seed,
                scene_range=(a, b),
            )
        return value

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
          >>> import jax, numpy as np
          >>> from autosim_jax import Field, OutputSpec, SceneSchema, from_schema
          >>> class Light:  # the "image" is the light level 4 times; the label, whether it is above 1
          ...     name, schema = "light", SceneSchema((Field.continuous("light", 0.0, 2.0),))
          ...     inputs_spec, labels_spec = OutputSpec((4,), np.float32), OutputSpec((), np.int32, num_classes=2)
          ...     def render(self, scenes, seed):
          ...         light = scenes["light"]
          ...         return np.repeat(light[:, None], 4, 1).astype(np.float32), (light > 1).astype(np.int32)
          >>> sim = Simulator(from_schema(Light.schema), Light())
          >>> scenes = {"light": jax.numpy.array([0.5, 1.5, 1.9])}
          >>> inputs, labels = jax.jit(sim.render)(scenes, jax.numpy.uint32(7))
          >>> inputs.shape, labels.tolist()
          ((3, 4), [0, 1, 1])
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

        The key is split into a scene key and a render key; the batch's seed is
        ``jax.random.bits`` of the render key, and chunk ``i`` of the batch is rendered with
        ``chunk_seed(seed, i)``, so the call is a pure function of ``(key, psi, n)``, the same
        with or without a pool, for any number of workers.

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
          >>> import jax, numpy as np
          >>> from autosim_jax import Field, OutputSpec, SceneSchema, from_schema
          >>> class Light:  # the "image" is the light level 4 times; the label, whether it is above 1
          ...     name, schema = "light", SceneSchema((Field.continuous("light", 0.0, 2.0),))
          ...     inputs_spec, labels_spec = OutputSpec((4,), np.float32), OutputSpec((), np.int32, num_classes=2)
          ...     def render(self, scenes, seed):
          ...         light = scenes["light"]
          ...         return np.repeat(light[:, None], 4, 1).astype(np.float32), (light > 1).astype(np.int32)
          >>> sim = Simulator(from_schema(Light.schema), Light())
          >>> simulate = jax.jit(sim.simulate, static_argnums=2)  # n is static
          >>> scenes, inputs, labels = simulate(jax.random.key(0), sim.distribution.init(), 64)
          >>> inputs.shape, labels.dtype
          ((64, 4), dtype('int32'))
        """
        scene_key, render_key = jax.random.split(key)
        scenes = self.distribution.sample(scene_key, psi, n)
        seed = jax.random.bits(render_key, (), jnp.uint32)
        inputs, labels = self.render(scenes, seed)
        return Simulation(scenes, inputs, labels)

    def simulate_mixture(self, key: jax.Array, psis: Sequence[Any], n: int) -> Simulation:
        """``n`` scenes from the equal mixture of ``q_psi`` over ``psis``, rendered.

        Part ``i`` is :meth:`simulate` of ``psis[i]`` with the ``i``-th key of
        ``jax.random.split(key, len(psis))``, for rows ``[n i / T, n (i + 1) / T)`` (rounded
        down; ``T = len(psis)``), so the parts' sizes differ by at most one. This is the data a
        run's psi trajectory rendered, one psi per step: a model trained on it is the "replay"
        product of a run, beside a model trained on the final psi (issue 13).

        Raises:
          ValueError: for no psi, or more psis than scenes (a part would be empty).

        Example:
          >>> import jax, numpy as np
          >>> from autosim_jax import Field, OutputSpec, SceneSchema, from_schema
          >>> class Light:
          ...     name, schema = "light", SceneSchema((Field.continuous("light", 0.0, 2.0),))
          ...     inputs_spec, labels_spec = OutputSpec((4,), np.float32), OutputSpec((), np.int32, num_classes=2)
          ...     def render(self, scenes, seed):
          ...         light = scenes["light"]
          ...         return np.repeat(light[:, None], 4, 1).astype(np.float32), (light > 1).astype(np.int32)
          >>> sim = Simulator(from_schema(Light.schema), Light())
          >>> psi = sim.distribution.init()
          >>> dark, bright = ({"light": psi["light"]._replace(loc=psi["light"].loc + s)} for s in (-3.0, 3.0))
          >>> mix = jax.jit(sim.simulate_mixture, static_argnums=2)(jax.random.key(0), [dark, bright], 5)
          >>> mix.labels.tolist()  # rows 0-1 from the dark psi, rows 2-4 from the bright one
          [0, 0, 1, 1, 1]
        """
        psis = list(psis)
        if not psis or len(psis) > n:
            raise ValueError(f"simulate_mixture: needs 1 to n={n} psis (one part of the {n} scenes each), "
                             f"got {len(psis)}.")
        bounds = [n * i // len(psis) for i in range(len(psis) + 1)]
        keys = jax.random.split(key, len(psis))
        parts = [self.simulate(k, psi, b - a) for k, psi, a, b in zip(keys, psis, bounds, bounds[1:])]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
