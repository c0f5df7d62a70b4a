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
a logit can move a probability from 0.05 to ~0.9 and a bounded field's ``loc`` covers most
of the field's range.

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


def make_search_space(psi0: PyTree, *, radius: float = 3.0, include_scales: bool = False) -> SearchSpace:
    """The box ``psi0 +- radius`` over the searched coordinates of ``psi0``.

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

    def encode(psi):
        return ravel_pytree(psi)[0][idx]

    def decode(x):
        return unravel(flat0.at[idx].set(jnp.asarray(x, flat0.dtype)))

    return SearchSpace(encode, decode, x0 - radius, x0 + radius, tuple(names))
