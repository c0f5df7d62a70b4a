"""Checkpoints of a pytree of arrays (an :class:`~autosim_jax.autosimulate.AutoSimState`).

One checkpoint is one ``.npz`` file: the leaves in ``jax.tree.leaves`` order as
``leaf_00000``, ``leaf_00001``, ... and a ``__meta__`` entry, a JSON fingerprint of the
structure (each leaf's path, shape and dtype). Nothing is pickled, so loading a checkpoint
runs no code.

* **Atomic.** :func:`save_checkpoint` writes through :func:`atomic_write`, the package's
  one atomic-write helper (``autosim_jax.rundir`` writes every JSON file with it too): a
  temporary ``.tmp-*`` file in the same directory, ``fsync``\\ ed, ``os.replace``\\ d over
  the target, then the directory ``fsync``\\ ed. A process killed at any point, even by
  ``SIGKILL``, leaves either the previous file or the new one, never a torn file (at worst a
  stale ``.tmp-*`` file, which the run directory removes at its next start).
* **Checked.** :func:`load_checkpoint` needs a ``like`` tree (e.g. ``autosim.init(seed)``)
  and raises a ``ValueError`` naming the first leaf whose path, shape or dtype differs, e.g.
  for a checkpoint of another experiment or approximation, and a :class:`CheckpointError`
  (a ``ValueError``) for a file that is empty, truncated, corrupt or not a checkpoint at all.
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
import zipfile
from collections.abc import Callable
from typing import IO, Any

import numpy as np

# JAX is imported by the functions that use it: rundir (and through it the command line's
# parser) needs atomic_write and TMP_PREFIX without importing JAX (see autosim_jax/__init__.py).

PyTree = Any

FORMAT = "autosim_jax.checkpoint/1"
_META = "__meta__"

_MISMATCH = (
    "Checkpoint {path} does not fit the state it is loaded into: {problem}. It was probably "
    "written by a run of another experiment, approximation or model; load it with the same "
    "configuration that wrote it, or start a fresh run in another directory."
)


TMP_PREFIX = ".tmp-"  # temporary files of atomic_write; stale ones are safe to delete
_UMASK = os.umask(0o022)  # read the process's umask (there is no getter) ...
os.umask(_UMASK)  # ... and put it back: atomic_write gives files the mode open() would


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint: empty, truncated, corrupt, or another format."""


_UNREADABLE = (
    "{path} is not a readable autosim_jax checkpoint ({why}). It may have been truncated by a "
    "full disk or a copy that did not finish, or it is another file; restore it from a backup, "
    "or start a fresh run in another directory."
)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Writes ``path`` atomically and durably: a reader sees the old file or the new, never a mix.

    ``write(f)`` fills a temporary file ``.tmp-NAME-*`` in the same directory (binary mode);
    it is flushed and ``fsync``\\ ed, ``os.replace``\\ d over ``path``, and the directory is
    ``fsync``\\ ed so that the rename itself survives a power cut. On an exception the
    temporary file is removed; a process killed mid-write leaves it behind (``.tmp-*``), with
    ``path`` untouched.

    Args:
      path: the file to write (its directory must exist).
      write: ``f -> None``, writes the whole content to the binary file ``f``.

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp(), "a.txt")
      >>> atomic_write(path, lambda f: f.write(b"hello"))
      >>> path.read_text()
      'hello'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.path.basename(path)}-", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make every result file private
        with os.fdopen(fd, "wb") as f:
            write(f)
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
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [".".join(_leaf_name(e) for e in path) for path, _ in flat]


def _fingerprint(tree: PyTree) -> list[dict]:
    import jax
    import jax.numpy as jnp

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
      >>> import os, tempfile, jax.numpy as jnp
      >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
      >>> save_checkpoint(path, {"psi": jnp.arange(3.0), "step": jnp.int32(7)})
      >>> int(load_checkpoint(path, {"psi": jnp.zeros(3), "step": jnp.int32(0)})["step"])
      7
    """
    import jax

    path = os.fspath(path)
    meta = {"format": FORMAT, "leaves": _fingerprint(state)}
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
    arrays[_META] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


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
      CheckpointError: (a ``ValueError``) when the file is empty, truncated, corrupt or not
        an ``.npz`` checkpoint of this package.
      ValueError: when a leaf's path, shape or dtype differs from ``like`` (the message
        names the first such leaf).

    Example:
      >>> import os, tempfile, jax.numpy as jnp
      >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
      >>> save_checkpoint(path, {"w": jnp.ones(2)})
      >>> load_checkpoint(path, {"w": jnp.zeros(3)})
      Traceback (most recent call last):
      ...
      ValueError: ...
    """
    import jax
    import jax.numpy as jnp

    path = os.fspath(path)
    expected = _fingerprint(like)
    try:
        # numpy leaks the file it opens when the zip is corrupt: hand it one that we close.
        with open(path, "rb") as f:
            head = f.read(4)
            if not head.startswith(b"PK"):  # every .npz is a zip archive; refuse before numpy guesses
                why = "the file is empty" if not head else f"it starts with {head!r}, not a .npz (zip) archive"
                raise CheckpointError(_UNREADABLE.format(path=path, why=why))
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                if _META not in data.files:
                    raise CheckpointError(f"{path} is not an autosim_jax checkpoint (it has no {_META} entry).")
                meta = json.loads(str(data[_META]))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    found = meta.get("format") if isinstance(meta, dict) else None
                    raise CheckpointError(f"{path} has checkpoint format {found!r}; this version reads {FORMAT!r}.")
                saved = meta.get("leaves")
                if not isinstance(saved, list) or not all(
                        isinstance(x, dict) and {"path", "shape", "dtype"} <= set(x) for x in saved):
                    raise CheckpointError(_UNREADABLE.format(path=path, why="its structure record is malformed"))
                arrays = [data[f"leaf_{i:05d}"] for i in range(len(saved))]
    except (CheckpointError, FileNotFoundError):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError, ValueError) as err:
        # numpy's own ValueErrors (a corrupt array header, pickled data) carry advice that does
        # not apply here: allow_pickle=True would run code from the file.
        raise CheckpointError(_UNREADABLE.format(path=path, why=f"{type(err).__name__}: {err}")) from None
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
    leaves = [jnp.asarray(a, dtype=jnp.result_type(l)) for a, l in zip(arrays, jax.tree.leaves(like))]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)
