"""Checkpoints of a pytree of arrays (an :class:`~autosim_jax.autosimulate.AutoSimState`).

One checkpoint is one ``.npz`` file: the leaves in ``jax.tree.leaves`` order as
``leaf_00000``, ``leaf_00001``, ... and a ``__meta__`` entry, a JSON fingerprint of the
structure (each leaf's path, shape and dtype). Nothing is pickled, so loading a checkpoint
runs no code.

* **Atomic.** :func:`save_checkpoint` writes a temporary file in the same directory,
  ``fsync``\\ s it and ``os.replace``\\ s it over the target (then ``fsync``\\ s the
  directory): a process killed at any point, even by ``SIGKILL``, leaves either the previous
  checkpoint or the new one, never a torn file.
* **Checked.** :func:`load_checkpoint` needs a ``like`` tree (e.g. ``autosim.init(seed)``)
  and raises a ``ValueError`` naming the first leaf whose path, shape or dtype differs, e.g.
  for a checkpoint of another experiment or approximation.
* **Exact.** Values round-trip bitwise; a state restored from a checkpoint continues exactly
  as the state that was saved (the AutoSimulate step is a deterministic function of it).

Example:
  >>> import jax.numpy as jnp, tempfile, os
  >>> tree = {"w": jnp.ones(3), "step": jnp.int32(4)}
  >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
  >>> save_checkpoint(path, tree)
  >>> load_checkpoint(path, tree)["step"]
  Array(4, dtype=int32)
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

FORMAT = "autosim_jax.checkpoint/1"
_META = "__meta__"

_MISMATCH = (
    "Checkpoint {path} does not fit the state it is loaded into: {problem}. It was probably "
    "written by a run of another experiment, approximation or model; load it with the same "
    "configuration that wrote it, or start a fresh run in another directory."
)


def _leaf_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_paths(tree: PyTree) -> list[str]:
    """Dotted names of the leaves of ``tree`` in ``jax.tree.leaves`` order (``psi.x.loc``).

    Example:
      >>> leaf_paths({"a": (1, 2), "b": 3})
      ['a.0', 'a.1', 'b']
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [".".join(_leaf_name(e) for e in path) for path, _ in flat]


def _fingerprint(tree: PyTree) -> list[dict]:
    leaves = jax.tree.leaves(tree)
    out = []
    for name, leaf in zip(leaf_paths(tree), leaves):
        dtype = jnp.result_type(leaf)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            raise ValueError(
                f"Leaf {name!r} is a typed PRNG key; store raw keys (jax.random.key_data) in a checkpointed state."
            )
        out.append({"path": name, "shape": list(np.shape(leaf)), "dtype": np.dtype(dtype).name})
    return out


def save_checkpoint(path: str | os.PathLike, state: PyTree) -> None:
    """Writes ``state`` (a pytree of arrays) to ``path`` atomically.

    Args:
      path: the ``.npz`` file to write (its directory must exist).
      state: a pytree whose leaves are arrays or scalars (no typed PRNG keys).

    Raises:
      ValueError: for a typed PRNG key leaf.

    Example:
      >>> save_checkpoint("run/checkpoint.npz", state)  # doctest: +SKIP
    """
    path = os.fspath(path)
    meta = {"format": FORMAT, "leaves": _fingerprint(state)}
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
    arrays[_META] = np.array(json.dumps(meta))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (not supported on every platform)
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, like: PyTree) -> PyTree:
    """Reads a checkpoint written by :func:`save_checkpoint` into the structure of ``like``.

    Args:
      path: the ``.npz`` file.
      like: a pytree with the expected structure, shapes and dtypes (its values are unused),
        e.g. ``autosim.init(seed)``.

    Returns:
      A pytree of ``like``'s structure holding the saved values as JAX arrays.

    Raises:
      FileNotFoundError: when ``path`` does not exist.
      ValueError: when the file is not a checkpoint, or a leaf's path, shape or dtype
        differs from ``like`` (the message names the first such leaf).

    Example:
      >>> state = load_checkpoint("run/checkpoint.npz", autosim.init(0))  # doctest: +SKIP
    """
    path = os.fspath(path)
    expected = _fingerprint(like)
    with np.load(path, allow_pickle=False) as data:
        if _META not in data.files:
            raise ValueError(f"{path} is not an autosim_jax checkpoint (it has no {_META} entry).")
        meta = json.loads(str(data[_META]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} has checkpoint format {meta.get('format')!r}; this version reads {FORMAT!r}.")
        saved = meta["leaves"]
        problem = None
        for i, (s, e) in enumerate(zip(saved, expected)):
            if s != e:
                problem = (
                    f"leaf {i} is {s['path']} {tuple(s['shape'])} {s['dtype']} in the checkpoint but "
                    f"{e['path']} {tuple(e['shape'])} {e['dtype']} in the state"
                )
                break
        if problem is None and len(saved) != len(expected):
            problem = f"the checkpoint has {len(saved)} leaves, the state {len(expected)}"
        if problem is not None:
            raise ValueError(_MISMATCH.format(path=path, problem=problem))
        arrays = [data[f"leaf_{i:05d}"] for i in range(len(saved))]
    leaves = [jnp.asarray(a, dtype=jnp.result_type(l)) for a, l in zip(arrays, jax.tree.leaves(like))]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)
