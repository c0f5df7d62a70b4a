"""The search space the black-box baselines share: a flat, boxed encoding of ``psi``.

``psi`` is the distribution's own pytree (``NormalParams(loc, log_scale)`` per continuous
field, ``CategoricalParams(logits)`` per categorical one). The encoding keeps the
coordinates that say *where* the mass is and fixes the others at the start's values:

* continuous fields: ``loc`` (the mean of the normal pre-image of :func:`bounded`, i.e. in
  logit / log space for bounded fields) is searched; ``log_scale`` is fixed unless
  ``include_scales=True`` (it doubles the dimension and random search / BO degrade fast
  with dimension);
* categorical fields: every logit is a continuous coordinate (``probs = softmax(logits)``;
  the softmax is shift-invariant, so one direction of each field is redundant, which is
  harmless inside a box).

Each coordinate lives in ``[start - radius, start + radius]``: with the default ``radius=3``
a logit can move a probability from 0.05 to ~0.9. Given the renderer's ``schema``, the
``loc`` of every field bounded on both sides is searched over at least ``[-4, 4]`` in the
logit of its pre-image as well, i.e. means from 1.8% to 98.2% of the field's range: the
baselines then search the same space as AutoSimulate, not only a box around a start that
may sit far from every good setting (digits' start blur could not reach the real digits'
blur before).

Example:
  >>> from autosim_jax.distributions import product, gaussian, categorical
  >>> q = product({"x": gaussian(loc=-1.0), "c": categorical(3)})
  >>> space = make_search_space(q.init(), radius=2.0)
  >>> space.names
  ('c.logits[0]', 'c.logits[1]', 'c.logits[2]', 'x.loc')
  >>> float(space.decode(space.encode(q.init()))["x"].loc)
  -1.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..checkpoint import leaf_paths

PyTree = Any


class SearchSpace(NamedTuple):
    """A boxed flat encoding of psi (see the module docstring).

    Attributes:
      encode: ``psi -> float[d]``.
      decode: ``float[d] -> psi`` (fixed coordinates at the start's values); jit-compatible.
      lower, upper: ``float[d]`` numpy bounds of the box.
      names: ``d`` coordinate names, e.g. ``"spp.logits[3]"``.
    """

    encode: Callable[[PyTree], jax.Array]
    decode: Callable[[jax.Array], PyTree]
    lower: np.ndarray
    upper: np.ndarray
    names: tuple[str, ...]

    @property
    def dim(self) -> int:
        return len(self.names)


# Logit half-width that a bounded field's pre-image mean is always searched over.
FIELD_COVER = 4.0


def make_search_space(psi0: PyTree, *, radius: float = 3.0, include_scales: bool = False,
                      schema: Any = None) -> SearchSpace:
    """The box ``psi0 +- radius`` over the searched coordinates of ``psi0``, widened to cover
    the range of every field bounded on both sides when ``schema`` is given.

    Args:
      psi0: the start (a ``from_schema`` distribution's ``init()``).
      radius: half-width of the box around the start, in psi's own coordinates.
      include_scales: also search the ``log_scale`` coordinates.
      schema: the renderer's :class:`~autosim_jax.SceneSchema` (``None``: the box alone).

    Raises:
      ValueError: for a non-positive radius or a psi with nothing to search.
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}.")
    flat0, unravel = ravel_pytree(psi0)
    names, mask = [], []
    for path, leaf in zip(leaf_paths(psi0), jax.tree.leaves(psi0)):
        size = int(np.size(leaf))
        searched = include_scales or not path.endswith("log_scale")
        for i in range(size):
            mask.append(searched)
            if searched:
                names.append(path if np.ndim(leaf) == 0 else f"{path}[{i}]")
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise ValueError("psi has no searchable coordinate (only log_scale leaves; pass include_scales=True).")
    x0 = np.asarray(flat0)[idx]
    lower, upper = x0 - radius, x0 + radius
    if schema is not None:
        bounded = {f"{f.name}.loc" for f in schema.fields
                   if f.kind == "continuous" and np.isfinite(f.low) and np.isfinite(f.high)}
        covered = np.array([n.split("[")[0] in bounded for n in names])
        lower = np.where(covered, np.minimum(lower, -FIELD_COVER), lower)
        upper = np.where(covered, np.maximum(upper, FIELD_COVER), upper)

    def encode(psi):
        return ravel_pytree(psi)[0][idx]

    def decode(x):
        return unravel(flat0.at[idx].set(jnp.asarray(x, flat0.dtype)))

    return SearchSpace(encode, decode, lower, upper, tuple(names))
