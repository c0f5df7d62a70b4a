r"""Freezing layers (paper Table 5): the trainable subset of ``theta`` picked by a regular expression.

``AutoSimConfig.trainable`` is a regular expression matched (``re.search``) against each
parameter's path, ``jax.tree_util.keystr`` of ``theta``'s leaves (for an nnx model e.g.
``"['up2']['conv']['kernel'].value"``). :func:`make_partition` turns it into a
:class:`Partition`: ``split(theta) -> (trainable, frozen)`` (two tuples of leaves) and its
inverse ``merge``. AutoSimulate then differentiates only with respect to ``trainable``,
closing over ``frozen``: fine-tuning updates only those leaves (the optimiser state holds
only them), and ``g_val``, the curvature operator with its CG solve and the score-function
term's per-sample gradients all live in the trainable subspace, so the solve's dimension and
cost shrink with it. ``theta`` itself stays the full tree.

``AutoSimConfig.psi_trainable`` splits ``psi`` the same way (paths such as
``"['position'].loc"``): only the matching leaves of ``q_psi`` are learned, the others keep
their start values (fields a researcher knows, or a study of one field at a time).

Example:
  >>> import jax.numpy as jnp
  >>> theta = {"head": {"w": jnp.ones(2)}, "body": {"w": jnp.zeros(3)}}
  >>> part = make_partition(theta, "head")
  >>> part.paths
  ("['head']['w']",)
  >>> trainable, frozen = part.split(theta)
  >>> [t.shape for t in trainable], [f.shape for f in frozen]
  ([(2,)], [(3,)])
  >>> part.merge(trainable, frozen)["body"]["w"].shape
  (3,)
  >>> make_partition(theta, "tail")  # doctest: +NORMALIZE_WHITESPACE
  Traceback (most recent call last):
  ...
  ValueError: AutoSimConfig.trainable='tail' matches none of theta's 2 paths (such as ['body']['w'],
  ['head']['w']). It is a regular expression searched (re.search) in each path; pass one that matches
  the layers to fine-tune, or None for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any

_BAD_REGEX = (
    "AutoSimConfig.{option}={pattern!r} is not a valid regular expression ({error}). It is searched "
    "(re.search) in each of {tree}'s paths, such as {examples}; pass a valid one, or None for all of them."
)
_NO_MATCH = (
    "AutoSimConfig.{option}={pattern!r} matches none of {tree}'s {n} paths (such as {examples}). It is a "
    "regular expression searched (re.search) in each path; pass one that matches the {what}, or None for all "
    "of them."
)
# option -> (the tree it splits, what its matching leaves are)
_OPTIONS = {"trainable": ("theta", "layers to fine-tune"), "psi_trainable": ("psi", "fields of q_psi to learn")}


class Partition(NamedTuple):
    """The trainable / frozen split of a parameter tree (built by :func:`make_partition`).

    Attributes:
      paths: the trainable leaves' paths (``jax.tree_util.keystr``), in tree order.
      mask: one bool per leaf of ``theta`` (tree order): trainable or not.
      treedef: ``theta``'s tree structure.
    """

    paths: tuple[str, ...]
    mask: tuple[bool, ...]
    treedef: Any

    def split(self, theta: PyTree) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """``(trainable, frozen)``: tuples of ``theta``'s leaves, in tree order."""
        leaves = self.treedef.flatten_up_to(theta)
        return (tuple(x for x, m in zip(leaves, self.mask) if m),
                tuple(x for x, m in zip(leaves, self.mask) if not m))

    def merge(self, trainable: tuple[jax.Array, ...], frozen: tuple[jax.Array, ...]) -> PyTree:
        """The full tree from its two parts (the inverse of :meth:`split`)."""
        trainable, frozen = iter(trainable), iter(frozen)
        return self.treedef.unflatten([next(trainable) if m else next(frozen) for m in self.mask])

    def mask_tree(self) -> PyTree:
        """The tree of ``True`` (trainable) / ``False`` (frozen) leaves, with ``theta``'s structure."""
        return self.treedef.unflatten(list(self.mask))

    def restrict(self, fn: Callable[..., Any], frozen: tuple[jax.Array, ...]) -> Callable[..., Any]:
        """``fn(theta, *args)`` as a function of the trainable leaves, ``frozen`` held fixed."""
        return lambda trainable, *args: fn(self.merge(trainable, frozen), *args)


def make_partition(theta: PyTree, pattern: str, option: str = "trainable") -> Partition:
    """The :class:`Partition` of ``theta`` whose trainable leaves' paths match ``pattern``.

    Args:
      theta: the model's parameters (a pytree), or ``psi`` for ``option="psi_trainable"``.
      pattern: a regular expression, searched (``re.search``) in each leaf's
        ``jax.tree_util.keystr`` path.
      option: the :class:`~autosim_jax.AutoSimConfig` field ``pattern`` came from
        (``"trainable"`` or ``"psi_trainable"``), named in the errors.

    Returns:
      A :class:`Partition`.

    Raises:
      ValueError: for an invalid expression, or one that matches no leaf; the message
        names ``AutoSimConfig.<option>`` and shows some of the paths.

    References:
      Behl et al., AutoSimulate (ECCV 2020), Table 5 (freezing layers).
    """
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(theta)
    paths = [jax.tree_util.keystr(p) for p, _ in with_paths]
    examples = ", ".join(paths[:3] + (["..."] if len(paths) > 4 else []) + paths[-1:] * (len(paths) > 3))
    tree, what = _OPTIONS[option]
    try:
        regex = re.compile(pattern)
    except (re.error, TypeError) as err:
        raise ValueError(_BAD_REGEX.format(option=option, pattern=pattern, error=err, tree=tree,
                                           examples=examples)) from None
    mask = tuple(regex.search(p) is not None for p in paths)
    if not any(mask):
        raise ValueError(_NO_MATCH.format(option=option, pattern=pattern, tree=tree, n=len(paths), examples=examples,
                                          what=what))
    return Partition(tuple(p for p, m in zip(paths, mask) if m), mask, treedef)
