"""Data parallelism over local devices with ``jax.sharding`` (GSPMD): the few helpers it needs.

AutoSimulate's step is data parallel along the ``K`` renders of a step and the validation
examples: ``make_autosimulate(..., devices=N)`` builds a 1-D :class:`~jax.sharding.Mesh` of N
local devices with one axis, ``"data"``; the rendered batch (scenes, inputs, labels) and the
validation set are placed with ``NamedSharding(mesh, P("data"))`` (split along their leading
axis), psi, theta and the optimiser states are replicated (``P()``), and the existing jitted
stages partition themselves (XLA's SPMD partitioner inserts the all-reduces of the gradient
sums). :func:`constrain_batch` adds ``with_sharding_constraint`` where the partitioner would
otherwise keep a slice on one device: each fine-tuning minibatch (a random gather of the
renders), each validation minibatch and the curvature batch (the first
``curvature_batch_size`` renders, all on the first device otherwise).

``devices=None`` (or 1) builds no mesh and every helper is the identity: the single-device
step is the same program as before, bitwise. With N devices the sums over the batch are
added in another order (per device, then across devices), so results equal the
single-device ones to float32 rounding, not bitwise (``tests/test_parallel.py``).

Example:
  >>> mesh = make_mesh(None)  # the default: no mesh, nothing changes
  >>> mesh is None and shard_batch({"x": [1.0]}, mesh) == {"x": [1.0]}
  True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
PyTree = Any

_TOO_MANY = (
    "devices={n} asks for more devices than JAX sees ({count}: {kinds}). Pass devices <= {count}; on a CPU "
    "host, XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX starts) makes N CPU devices."
)
_NOT_DIVISIBLE = (
    "{what} ({value}) must be a multiple of the device count ({n}) for data parallelism over devices={n}: "
    "every device takes an equal share of the batch. {fix}"
)


def make_mesh(devices: int | Sequence[jax.Device] | None) -> Mesh | None:
    """A 1-D mesh (axis ``"data"``) over ``devices``; ``None`` for one device (no sharding).

    Args:
      devices: ``None`` or ``1`` (single device, the default path), a count ``N`` (the first
        N of ``jax.devices()``), or a sequence of ``jax.Device``.

    Raises:
      ValueError: for a count < 1, more devices than JAX sees, or an empty or repeated list.

    Example:
      >>> make_mesh(1) is None
      True
      >>> make_mesh(0)
      Traceback (most recent call last):
      ...
      ValueError: devices must be None, an integer >= 1 or a sequence of jax.Device, got 0.
    """
    if devices is None:
        return None
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int(devices)
        if n < 1:
            raise ValueError(f"devices must be None, an integer >= 1 or a sequence of jax.Device, got {devices!r}.")
        available = jax.devices()
        if n > len(available):
            kinds = ", ".join(sorted({f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in available}))
            raise ValueError(_TOO_MANY.format(n=n, count=len(available), kinds=kinds))
        chosen = available[:n]
    elif isinstance(devices, Sequence) and devices and all(isinstance(d, jax.Device) for d in devices):
        chosen = list(devices)
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"devices lists a device more than once: {chosen}.")
    else:
        raise ValueError(f"devices must be None, an integer >= 1 or a sequence of jax.Device, got {devices!r}.")
    if len(chosen) == 1:
        return None
    return Mesh(np.array(chosen), (DATA_AXIS,))


def device_count(mesh: Mesh | None) -> int:
    """Devices of ``mesh`` (1 for ``None``)."""
    return 1 if mesh is None else mesh.size


def check_divisible(mesh: Mesh | None, what: str, value: int, fix: str) -> None:
    """Raises ``ValueError`` naming ``what`` and ``fix`` unless ``value`` splits evenly over ``mesh``."""
    n = device_count(mesh)
    if value % n:
        raise ValueError(_NOT_DIVISIBLE.format(what=what, value=value, n=n, fix=fix))


def _spec(ndim: int, axis: int) -> P:
    return P(*([None] * axis), DATA_AXIS) if ndim > axis else P()


def shard_batch(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """``tree``'s leaves placed on ``mesh`` split along their leading axis (scalars replicated);
    the identity for ``mesh=None``. Every leading axis must be a multiple of the device count."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, _spec(np.ndim(x), 0))), tree)


def replicate(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """``tree`` replicated on every device of ``mesh`` (``P()``); the identity for ``mesh=None``."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P()))


def constrain_batch(tree: PyTree, mesh: Mesh | None, axis: int = 0) -> PyTree:
    """Inside a jitted function: ``tree``'s leaves split over ``mesh`` along ``axis`` (the batch
    axis; 1 for a stack of minibatches). The identity for ``mesh=None`` and for a leaf whose
    ``axis`` is not a multiple of the device count (it is left to the partitioner)."""
    if mesh is None:
        return tree

    def one(x):
        if np.ndim(x) <= axis or x.shape[axis] % mesh.size:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, _spec(np.ndim(x), axis)))

    return jax.tree.map(one, tree)
