"""Scene schemas: the contract between a host renderer and the distributions over its scenes.

A renderer declares the fields of the scenes it draws (names, per-scene shapes, valid
ranges) and the shapes of what it returns. The distributions of
:mod:`autosim_jax.distributions` are built from these declarations, and the simulator checks
every batch against them before calling the renderer. This module is plain numpy: renderers
never import JAX.

A batch of ``n`` scenes is a ``dict`` mapping each field name to an array of shape
``(n, *field.shape)``: float for continuous fields, integer category indices for
categorical ones.

Example:
  >>> schema = SceneSchema((
  ...     Field.continuous("light", low=0.0, high=2.0),
  ...     Field.categorical("quality", choices=(1, 4, 16)),
  ... ))
  >>> scenes = {"light": np.array([0.5, 1.5]), "quality": np.array([0, 2])}
  >>> schema.validate(scenes)
  2
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

import numpy as np

Kind = Literal["continuous", "categorical"]


@dataclasses.dataclass(frozen=True)
class Field:
    """One named scene parameter.

    Attributes:
      name: key of the field in a scene batch.
      kind: ``"continuous"`` (real values in ``[low, high]``) or ``"categorical"`` (integer
        indices in ``[0, len(choices))``).
      shape: per-scene shape, e.g. ``()`` for a scalar, ``(6, 2)`` for six 2-D positions.
      low, high: inclusive bounds of a continuous field (``-inf``/``inf`` for unbounded).
      choices: the values that the category indices of a categorical field stand for
        (numbers such as samples per pixel, or names such as ``"metal"``).
      doc: what the field means to the renderer, with units.
    """

    name: str
    kind: Kind
    shape: tuple[int, ...] = ()
    low: float = -np.inf
    high: float = np.inf
    choices: tuple[Any, ...] = ()
    doc: str = ""

    def __post_init__(self):
        if self.kind not in ("continuous", "categorical"):
            raise ValueError(f"Field {self.name!r}: kind must be 'continuous' or 'categorical', got {self.kind!r}.")
        if self.kind == "continuous" and not self.low < self.high:
            raise ValueError(f"Field {self.name!r}: need low < high, got [{self.low}, {self.high}].")
        if self.kind == "categorical" and len(self.choices) < 2:
            raise ValueError(f"Field {self.name!r}: a categorical field needs at least two choices.")

    @classmethod
    def continuous(cls, name: str, low: float = -np.inf, high: float = np.inf,
                   shape: tuple[int, ...] = (), doc: str = "") -> Field:
        """A real-valued field bounded to ``[low, high]``."""
        return cls(name, "continuous", tuple(shape), float(low), float(high), (), doc)

    @classmethod
    def categorical(cls, name: str, choices: tuple[Any, ...], shape: tuple[int, ...] = (),
                    doc: str = "") -> Field:
        """A field whose values are indices into ``choices``."""
        return cls(name, "categorical", tuple(shape), choices=tuple(choices), doc=doc)

    @property
    def num_categories(self) -> int:
        return len(self.choices)

    @property
    def bounded(self) -> bool:
        """True when both bounds of a continuous field are finite."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high))

    def check(self, values: np.ndarray, n: int | None = None) -> np.ndarray:
        """Validates one field of a batch; returns it as a numpy array.

        Raises:
          ValueError: naming the field, the expected shape or range, and the offending
            scene index and value.
        """
        values = np.asarray(values)
        if values.ndim != 1 + len(self.shape) or tuple(values.shape[1:]) != self.shape:
            raise ValueError(
                f"Scene field {self.name!r} has shape {values.shape}; expected (n, *{self.shape}) "
                "with n the number of scenes."
            )
        if n is not None and values.shape[0] != n:
            raise ValueError(
                f"Scene field {self.name!r} holds {values.shape[0]} scenes but other fields hold {n}; "
                "every field of a batch must have the same leading size."
            )
        if self.kind == "categorical":
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(
                    f"Scene field {self.name!r} is categorical and must hold integer indices, got "
                    f"dtype {values.dtype}."
                )
            bad = (values < 0) | (values >= self.num_categories)
            what = f"an index in [0, {self.num_categories})"
        else:
            if not np.issubdtype(values.dtype, np.floating):
                raise ValueError(
                    f"Scene field {self.name!r} is continuous and must hold floats, got dtype {values.dtype}."
                )
            bad = ~np.isfinite(values) | (values < self.low) | (values > self.high)
            what = f"a finite value in [{self.low}, {self.high}]"
        if bad.any():
            flat = np.argwhere(bad)[0]
            raise ValueError(
                f"Scene field {self.name!r} must be {what}; scene {int(flat[0])} has "
                f"{values[tuple(flat)]!r} at index {tuple(int(i) for i in flat[1:])}. Fix the "
                "distribution that produced it (its support must lie inside the field's range)."
            )
        return values


@dataclasses.dataclass(frozen=True)
class SceneSchema:
    """The ordered fields of a renderer's scenes."""

    fields: tuple[Field, ...]

    def __post_init__(self):
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"SceneSchema has duplicate field names: {names}.")

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"No field {name!r}; the schema has {self.names}.")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def validate(self, scenes: dict[str, Any]) -> int:
        """Checks a batch of scenes against the schema; returns the number of scenes.

        Raises:
          ValueError: for a missing or unknown field, a wrong shape or dtype, or a value out
            of range (the message names the field and the scene).
        """
        if not isinstance(scenes, dict):
            raise ValueError(f"Scenes must be a dict of field name -> array, got {type(scenes).__name__}.")
        missing = [n for n in self.names if n not in scenes]
        unknown = [n for n in scenes if n not in self.names]
        if missing or unknown:
            raise ValueError(
                f"Scene fields do not match the schema: missing {missing}, unknown {unknown}; "
                f"expected exactly {list(self.names)}."
            )
        n = None
        for f in self.fields:
            n = f.check(scenes[f.name], n).shape[0]
        return int(n)


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """Per-scene shape and numpy dtype of one renderer output (inputs or labels).

    Attributes:
      shape: per-scene shape, e.g. ``(64, 64, 3)`` for an image, ``()`` for one label.
      dtype: numpy dtype of the values.
      num_classes: for an output of class indices (a label map, a digit), the number of
        classes ``C``: every value must then lie in ``[0, C)``, and
        :meth:`~autosim_jax.Simulator.render_numpy` rejects a render with a label outside
        (such a label gives NaN losses, not an error, further down). ``None`` (default): the
        values are not class indices, or are not range-checked (e.g. a void label 255).

    Example:
      >>> OutputSpec((8, 8), np.int32, num_classes=4).num_classes
      4
      >>> OutputSpec((8, 8), np.float32, num_classes=4)
      Traceback (most recent call last):
      ...
      ValueError: OutputSpec: num_classes=4 declares class indices, which need an integer dtype, got float32.
    """

    shape: tuple[int, ...]
    dtype: Any
    num_classes: int | None = None

    def __post_init__(self):
        if self.num_classes is None:
            return
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)) \
                or self.num_classes < 1:
            raise ValueError(f"OutputSpec: num_classes must be None or an int >= 1, got {self.num_classes!r}.")
        if not np.issubdtype(np.dtype(self.dtype), np.integer):
            raise ValueError(f"OutputSpec: num_classes={self.num_classes} declares class indices, which need an "
                             f"integer dtype, got {np.dtype(self.dtype)}.")


class Renderer(Protocol):
    """A deterministic host renderer ``r(s)`` (paper Eq. 9-10): numpy in, numpy out.

    ``render(scenes, seed)`` draws ``n`` scenes and returns ``(inputs, labels)`` with shapes
    ``(n, *inputs_spec.shape)`` and ``(n, *labels_spec.shape)``. Given the same scenes and
    seed it returns the same arrays (the seed drives pixel sampling noise), so that the
    simulator can call it through ``jax.pure_callback``.
    """

    name: str
    schema: SceneSchema
    inputs_spec: OutputSpec
    labels_spec: OutputSpec

    def render(self, scenes: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
        ...
