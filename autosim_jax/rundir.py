"""The run directory: what ``autosim run`` and ``autosim compare`` write, and the one run loop.

A run directory holds one run of one method (AutoSimulate, or a black-box baseline)::

    config.json     what produced the run: format, experiment, renderer, seed, size, the
                    AutoSimConfig as data (``options``), iterations / budget, versions, device
    metrics.jsonl   one JSON line per completed step; line i is step i + 1
    checkpoint.npz  the state after the last completed step (see checkpoint.py)
    summary.json    totals, written when the run has finished (its ``target`` says for what)
    tensorboard/    the records of metrics.jsonl as TensorBoard scalars, when tensorboardX or
                    tensorboard is installed (``pip install "autosim_jax[tensorboard]"``)
    .lock           held (``fcntl.flock``) by the process using the directory; holds its pid

Guarantees, each in one place:

* **Atomic files.** Every file but ``metrics.jsonl`` is written by
  :func:`~autosim_jax.checkpoint.atomic_write` (temporary file, ``fsync``, ``os.replace``,
  ``fsync`` of the directory). ``metrics.jsonl`` is appended one line per step and
  ``fsync``\\ ed *before* the checkpoint is replaced, so after a kill at any point the file
  holds at least ``checkpoint.step`` complete lines. Stale ``.tmp-*`` files of a killed write
  are removed when the directory is next opened.
* **One user at a time.** :meth:`RunDir.open` takes an advisory lock; a second process is
  refused with the holder's pid.
* **Checked resume.** :meth:`RunDir.resume` loads the checkpoint into the structure of a fresh
  state and verifies that line i of ``metrics.jsonl`` is step i + 1, that the lines reach
  the checkpoint's step and (images) agree with it; it drops the lines of an unfinished step.
  Unreadable, truncated or foreign files, and directories written by an older version of the
  package, raise :class:`RunDirError` (a ``ValueError``) saying what to do.
* **One loop.** :func:`run_loop` steps any ``(init, step)`` pair (an
  :class:`~autosim_jax.AutoSimulate` or a baseline's ``BlackBox``), appends a metrics line and
  a checkpoint per step, and reports through callbacks; the CLI's progress and summaries are
  built on it. The same records go to ``tensorboard/`` (:class:`TensorBoardLog`), rewritten
  from ``metrics.jsonl`` at every start so that the two always agree.
* **Render pools outside the results.** ``--render-workers`` / ``--render-backend`` /
  ``--ray-address`` / ``--render-timeout`` (:class:`RenderOptions`) choose where scenes are
  rendered; :class:`RenderPools` creates the pool once, hands it to every setup of the run
  (steps and fresh-model assessments) and closes it on exit, on error and on Ctrl-C (also when
  :func:`interrupt_guard` has to end a stuck process). The renders are the same bitwise for any
  worker count and backend, so config.json records these options in its ``render`` section,
  which ``--resume`` does not compare.

Also here, because both commands use them and neither imports the other's module: resolving
an experiment (a name, or ``module:attr`` found from the current directory) and validating
its renderer and size before the build, :class:`Progress` (a bar on a terminal, lines with an
ETA in a log), :func:`interrupt_guard` (Ctrl-C that stops promptly with exit code 130),
:func:`cached_assessment` (fresh-model assessments stored next to the run) and the render
options and pools.

Example:
  >>> import tempfile
  >>> with RunDir.open(tempfile.mkdtemp()) as run:
  ...     write_json(run.config_path, {"format": FORMAT})
  ...     read_json(run.config_path)["format"] == FORMAT
  True
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import fcntl
import glob
import importlib
import importlib.util
import inspect
import io
import itertools
import json
import logging
import math
import os
import platform
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Self, TextIO

import numpy as np

# JAX, and the modules that import it, are imported by the functions that use them, so that the
# command line parses and validates its flags without importing JAX (autosim_jax/__init__.py).
from .checkpoint import (
    TMP_PREFIX,
    CheckpointError,
    atomic_write,
    leaf_paths,
    load_checkpoint,
    save_checkpoint,
)
from .render_pool import DEFAULT_CHUNK_SIZE, RenderError, RenderPool, make_render_pool

FORMAT = "autosim_jax.run/2"  # config.json's "format"; a directory without it predates this layout
CONFIG, METRICS, CHECKPOINT, SUMMARY, LOCK = "config.json", "metrics.jsonl", "checkpoint.npz", "summary.json", ".lock"
TENSORBOARD = "tensorboard"  # the run directory's TensorBoard event files
SEED_LIMIT = 2**32  # jax.random.PRNGKey(seed) keeps 32 bits: larger seeds would alias smaller ones

_OLD_FORMAT = (
    "{path} was written by an older version of autosim_jax (no \"format\": {fmt!r} key; its options may be "
    "described as optax closures), which this version cannot resume; start a new run with another --out."
)
_RESUME_DIFFERS = (
    "--resume refused: {key} is {new} now but {old} in {path}; a resumed run must use the "
    "configuration that started it (pass the same flags), or start a new run with another --out."
)
_LOCKED = (
    "{path} is in use by another autosim process (pid {pid}, holding {lock}); wait for it to finish, "
    "stop it, or use another --out."
)


class UsageError(ValueError):
    """A request the command line refuses (exit code 2): a bad option or an unusable directory."""


class RunDirError(UsageError):
    """A run directory, or a file in it, that cannot be used; the message says why and what to do."""


class RenderFailed(RuntimeError):
    """The renderer failed during step ``step`` (the checkpoint of step ``step - 1`` is intact)."""

    def __init__(self, step: int, error: RenderError):
        where = (f"renderer {error.renderer!r}" + (f", field {error.field!r}" if error.field else "")
                 + (f", scene {error.scene_index}" if error.scene_index is not None else ""))
        super().__init__(f"rendering failed at step {step} ({where}): {error.message}")
        self.step, self.error = step, error


def failure_line(text: str) -> str:
    r"""``text`` (a render failure's message) on one line, its hints in the command line's terms.

    Example:
      >>> failure_line("did not return within 5 s for scenes 0..7 of 32;\nraise timeout= or fix the renderer.")
      'did not return within 5 s for scenes 0..7 of 32; raise --render-timeout or fix the renderer'
    """
    return " ".join(str(text).split()).replace("raise timeout=", "raise --render-timeout").rstrip(". ")


class Interrupted(Exception):
    """Ctrl-C (SIGINT) stopped the run after step ``step``; the directory is resumable."""

    def __init__(self, step: int):
        super().__init__(f"interrupted after step {step}")
        self.step = step


# ------------------------------------------------------------------------------ checks


def check_seed(seed: Any, flag: str = "--seed") -> int:
    """``seed`` as an int in ``[0, 2**32)``, the range of ``jax.random.PRNGKey``.

    Raises:
      UsageError: for anything else (larger seeds would silently alias smaller ones).

    Example:
      >>> check_seed(7)
      7
      >>> check_seed(2**32)  # doctest: +NORMALIZE_WHITESPACE
      Traceback (most recent call last):
      ...
      autosim_jax.rundir.UsageError: --seed must be an integer in [0, 2**32) (the PRNG key's 32 bits;
      larger seeds would repeat smaller ones), got 4294967296.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise UsageError(f"{flag} must be an integer in [0, 2**32) (the PRNG key's 32 bits; larger seeds would "
                         f"repeat smaller ones), got {seed!r}.")
    return int(seed)


def seed_argument(text: str) -> int:
    """argparse ``type=`` of a seed: :func:`check_seed` of an integer."""
    try:
        return check_seed(int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err) if isinstance(err, UsageError) else
                                         f"must be an integer in [0, 2**32), got {text!r}") from None


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-every`` / ``--log-seconds`` of the commands that print :class:`Progress`."""
    parser.add_argument("--log-every", type=int, default=None, metavar="N",
                        help="without a terminal, print a progress line every N steps (default: about 20 lines a "
                             "run)")
    parser.add_argument("--log-seconds", type=float, default=30.0, metavar="S",
                        help="... and at least every S seconds (default 30)")


def add_assess_models_flag(parser: argparse.ArgumentParser) -> None:
    """``--assess-models`` of the commands that assess a psi with fresh models."""
    parser.add_argument("--assess-models", type=int, default=1, metavar="N",
                        help="fresh models per assessed psi; their mean is reported, with the std over them, "
                             "and a progress line as each model finishes (default 1; on clevr-seg at gpu size one "
                             "seed's G moves by a std of about 0.14 with 2 models, docs/learning.md: 4 or more to "
                             "compare settings)")


def check_assess_models(models: int) -> None:
    """UsageError unless ``--assess-models`` is an integer >= 1."""
    if isinstance(models, bool) or not isinstance(models, int) or models < 1:
        raise UsageError(f"--assess-models must be an integer >= 1, got {models!r}.")


def assess_protocol(images: int, epochs: int, models: int, **more: Any) -> dict:
    """The assessment protocol an ``assessed.json`` is valid for; ``models`` only when > 1, so
    that the files written before ``--assess-models`` existed stay valid.

    Example:
      >>> assess_protocol(64, 3, 1), assess_protocol(64, 3, 4, seed=0)
      ({'images': 64, 'epochs': 3}, {'images': 64, 'epochs': 3, 'models': 4, 'seed': 0})
    """
    return {"images": images, "epochs": epochs, **({"models": models} if models > 1 else {}), **more}


def check_progress_flags(log_every: int | None, log_seconds: float) -> None:
    """UsageError unless ``--log-every`` >= 1 (or unset) and ``--log-seconds`` > 0."""
    if log_every is not None and (isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1):
        raise UsageError(f"--log-every must be an integer >= 1, got {log_every!r}.")
    if not log_seconds > 0:
        raise UsageError(f"--log-seconds must be > 0, got {log_seconds}.")


# ------------------------------------------------------------------------- render pools

RENDER_BACKENDS = ("process", "ray")
_RAY_MISSING = (
    '--render-backend ray needs Ray, which is not installed: pip install "autosim_jax[distributed]" '
    "(ray>=2.9), or use --render-backend process (worker processes on this machine)."
)


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """Where a run renders its scenes (``--render-workers`` etc.); none of it changes the results.

    Attributes:
      workers: worker processes or Ray actors (1: in this process, unless ``timeout`` is set).
      backend: ``"process"`` or ``"ray"``; ``None``: ``"process"`` when a pool is needed.
      address: the Ray cluster (``ray.init(address=...)``); ``None``: a local Ray instance.
      timeout: seconds one batch of K images may take; ``None``: no limit.

    Example:
      >>> RenderOptions().backend_used, RenderOptions(workers=4).backend_used
      ('serial', 'process')
      >>> RenderOptions(timeout=60.0).backend_used  # a hung renderer in this process cannot be stopped
      'process'
    """

    workers: int = 1
    backend: str | None = None
    address: str | None = None
    timeout: float | None = None

    @property
    def backend_used(self) -> str:
        """``"serial"`` (no pool: one worker, no timeout, no backend asked for), else the backend."""
        if self.backend is None and self.workers == 1 and self.timeout is None:
            return "serial"
        return self.backend or "process"

    def to_dict(self) -> dict[str, Any]:
        """config.json's ``render`` section (not compared on --resume: the renders do not depend on it)."""
        return {"workers": self.workers, "backend": self.backend_used, "address": self.address,
                "timeout": self.timeout, "chunk_size": DEFAULT_CHUNK_SIZE}

    def describe(self) -> str:
        """``"2 process workers, timeout 30 s per batch"``, for the start-up line."""
        if self.backend_used == "serial":
            return "in this process"
        where = "Ray actors" if self.backend_used == "ray" else "process workers"
        text = f"{self.workers} {where[:-1] if self.workers == 1 else where}"
        if self.backend_used == "ray":
            text += f" on {self.address}" if self.address else " on a local Ray instance"
        return text + (f", timeout {self.timeout:g} s per batch" if self.timeout is not None else "")


def add_render_flags(parser: argparse.ArgumentParser) -> None:
    """``--render-workers``, ``--render-backend``, ``--ray-address``, ``--render-timeout``."""
    parser.add_argument("--render-workers", type=int, default=1, metavar="N",
                        help="render each batch's scenes with N worker processes or Ray actors; the renders are the "
                             "same bitwise for any N, so a --resume may use another N (default 1: in this process)")
    parser.add_argument("--render-backend", choices=RENDER_BACKENDS, default=None,
                        help="where the workers run: process (this machine) or ray (pip install "
                             "'autosim_jax[distributed]') (default process when a pool is used)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="with --render-backend ray, the cluster to join, as ray.init(address=ADDR) takes it, "
                             "e.g. auto (default: start a local Ray instance)")
    parser.add_argument("--render-timeout", type=float, default=None, metavar="S",
                        help="fail with a clear error (exit 1, the directory resumable) when one batch of K images "
                             "takes longer than S seconds (a fresh-model assessment's batch of N images gets N/K "
                             "times as long); with one worker this renders in one worker process, since a hung "
                             "renderer in this process cannot be stopped (default: no limit)")


def check_render_options(workers: Any = 1, backend: str | None = None, address: str | None = None,
                         timeout: Any = None) -> RenderOptions:
    """The render flags, validated before anything is built.

    Raises:
      UsageError: naming the flag, for a worker count < 1, a timeout that is not a positive number,
        an unknown backend, an address without ``--render-backend ray``, or ``ray`` asked for
        but not installed (naming the extra ``autosim_jax[distributed]``).

    Example:
      >>> check_render_options(2)
      RenderOptions(workers=2, backend=None, address=None, timeout=None)
      >>> check_render_options(0)
      Traceback (most recent call last):
      ...
      autosim_jax.rundir.UsageError: --render-workers must be an integer >= 1, got 0.
    """
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UsageError(f"--render-workers must be an integer >= 1, got {workers!r}.")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise UsageError(f"--render-timeout must be a positive number of seconds, got {timeout!r}.")
    if backend is not None and backend not in RENDER_BACKENDS:
        raise UsageError(f"--render-backend must be one of {list(RENDER_BACKENDS)}, got {backend!r}.")
    if address is not None and backend != "ray":
        raise UsageError(f"--ray-address {address} is a Ray cluster's address; pass --render-backend ray with it.")
    if backend == "ray":
        try:
            found = importlib.util.find_spec("ray") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(_RAY_MISSING)
    return RenderOptions(int(workers), backend, address, None if timeout is None else float(timeout))


def add_devices_flag(parser: argparse.ArgumentParser) -> None:
    """``--devices N``: AutoSimulate's steps data parallel over N local devices."""
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="split AutoSimulate's steps (the K renders, fine-tuning minibatches, curvature batch, "
                             "validation set) over N local devices (autosim_jax.parallel); K and the batch sizes "
                             "must be multiples of N. Results equal one device's to float32 rounding, so a "
                             "--resume may use another N (default 1)")


def check_devices(devices: Any) -> int:
    """``--devices``, validated before anything is built (JAX is imported for the device count).

    Raises:
      UsageError: for a count < 1, or more devices than JAX sees.

    Example:
      >>> check_devices(1)
      1
      >>> check_devices(0)
      Traceback (most recent call last):
      ...
      autosim_jax.rundir.UsageError: --devices must be an integer >= 1, got 0.
    """
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise UsageError(f"--devices must be an integer >= 1, got {devices!r}.")
    if devices > 1:
        import jax

        if devices > jax.device_count():
            raise UsageError(f"--devices {devices}: JAX sees {jax.device_count()} device(s) ({device()}); pass "
                             f"--devices <= {jax.device_count()} (on a CPU host, XLA_FLAGS="
                             "--xla_force_host_platform_device_count=N makes N devices).")
    return int(devices)


# Called, each bounded in time, by interrupt_guard's watcher just before it ends a stuck process.
_FORCED_EXIT_CLEANUPS: list[Callable[[], None]] = []
FORCED_CLEANUP_S = 2.0  # the most a forced exit waits for one cleanup


@contextlib.contextmanager
def on_forced_exit(cleanup: Callable[[], None]) -> Iterator[None]:
    """Runs ``cleanup`` (from another thread, at most ``FORCED_CLEANUP_S`` seconds) if
    :func:`interrupt_guard` ends the process with ``os._exit`` while this block is active
    (``os._exit`` skips every ``finally`` and ``atexit``: worker processes would be left behind)."""
    _FORCED_EXIT_CLEANUPS.append(cleanup)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _FORCED_EXIT_CLEANUPS.remove(cleanup)


def _run_forced_exit_cleanups() -> None:
    for cleanup in _FORCED_EXIT_CLEANUPS[:]:  # a copy: the main thread may unregister meanwhile
        thread = threading.Thread(target=cleanup, name="autosim-forced-cleanup", daemon=True)
        thread.start()
        thread.join(FORCED_CLEANUP_S)


def _same_renderer(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # an __eq__ that cannot answer (array fields): not the same
        return False


class RenderPools:
    """The render pool of a run (or of a comparison): created once, shared, closed at the end.

    :meth:`attach` gives a setup whose simulator renders through the pool, creating the pool
    for the first setup and reusing it for every later setup of an equal renderer (the built-in
    renderers are frozen dataclasses, equal across builds; a plug-in renderer that is not equal
    gets a new pool, the old one closed). With ``RenderOptions().backend_used == "serial"``
    nothing changes. Use it as a context manager: :meth:`close` ends the workers on exit, on an
    error and on Ctrl-C; a forced exit by :func:`interrupt_guard` kills them too.

    Example:
      >>> with RenderPools(RenderOptions()) as pools:  # one worker, no timeout: no pool at all
      ...     pools.pool is None
      True
    """

    def __init__(self, options: RenderOptions, *, stream: TextIO | None = None, desc: str = "autosim"):
        self.options, self.stream, self.desc = options, stream, desc
        self.pool: RenderPool | None = None
        self.created = 0  # pools created so far
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def attach(self, setup):
        """``setup`` with ``simulator.with_pool(pool)`` (unchanged for serial rendering).

        Raises:
          UsageError: the renderer cannot go to workers (not picklable, its class not importable
            by a fresh process) or Ray cannot be imported; the message says what to change.
        """
        if self.options.backend_used == "serial":
            return setup
        renderer = setup.simulator.renderer
        if self.pool is None or not _same_renderer(self.pool.renderer, renderer):
            self.close()
            self.pool = self._open(renderer)
        return setup._replace(simulator=setup.simulator.with_pool(self.pool))

    def _open(self, renderer) -> RenderPool:
        o = self.options
        t0 = time.perf_counter()
        try:
            pool = make_render_pool(renderer, workers=o.workers, backend=o.backend_used, address=o.address,
                                    timeout=o.timeout)
        except ImportError as err:
            raise UsageError(str(err)) from None
        except (ValueError, RenderError) as err:
            raise UsageError(f"cannot render with {o.describe()}: {err} (--render-workers 1 without "
                             "--render-timeout renders in this process).") from None
        self.created += 1
        self._stack = contextlib.ExitStack()
        self._stack.callback(pool.close)
        self._stack.enter_context(on_forced_exit(lambda: _kill_pool(pool)))
        if self.stream is not None:
            print(f"{self.desc}: rendering with {o.describe()} (started in {time.perf_counter() - t0:.1f} s)",
                  file=self.stream, flush=True)
        return pool

    @contextlib.contextmanager
    def timeout_scaled(self, factor: float) -> Iterator[None]:
        """The pool's timeout times ``factor`` inside the block (for batches ``factor`` times larger)."""
        pool, base = self.pool, self.options.timeout
        if pool is None or base is None or factor <= 1:
            yield
            return
        pool.timeout = base * factor
        try:
            yield
        finally:
            pool.timeout = base

    def close(self) -> None:
        """Ends the pool's workers (idempotent)."""
        self._stack.close()
        self.pool = None


def _kill_pool(pool: RenderPool) -> None:
    """The forced-exit cleanup: SIGKILL of a process pool's workers (its pipes may be in use by the
    stuck main thread), ``close()`` of a Ray pool (its actors are not this host's children)."""
    if pool.backend == "process":
        for pid in pool.worker_pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    else:
        pool.close()


# ------------------------------------------------------------------------------- files


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically (:func:`~autosim_jax.checkpoint.atomic_write`)."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The JSON in ``path``.

    Raises:
      RunDirError: when the file is missing, empty, truncated or not JSON, naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist{f' ({what})' if what else ''}.") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        why = "it is empty" if not data.strip() else f"{type(err).__name__}: {err}"
        raise RunDirError(f"{path} is not valid JSON ({why}): the file is truncated or corrupt. Restore it, or "
                          "start a new run with another --out.") from None


def remove_stale_tmp(directory: str | os.PathLike) -> list[str]:
    """Deletes the ``.tmp-*`` files that killed atomic writes left in ``directory``; returns their names.

    Call it only while holding the directory's lock (a live writer's temporary file must stay).
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and os.path.isfile(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(name)
    return removed


# ------------------------------------------------------------------------ experiments


def _registry() -> dict[str, Any]:
    from .experiments import EXPERIMENTS

    return EXPERIMENTS


def resolve_experiment(spec: str):
    """A registered experiment by name, or ``module:attr`` naming an Experiment object.

    A module is looked up on ``sys.path`` with the current directory added (as
    ``python -m`` does), so ``autosim run my_module:EXP`` finds ``./my_module.py``.

    Raises:
      UsageError: for an unknown name or an import that fails, listing the valid names.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UsageError(f"cannot load experiment {spec!r} ({type(err).__name__}: {err}); the module must be "
                             "importable from the current directory or PYTHONPATH.") from None
        if not all(hasattr(obj, a) for a in ("name", "description", "renderers", "build")):
            raise UsageError(f"{spec!r} is a {type(obj).__name__}, not an autosim_jax.experiments.Experiment.")
        return obj
    registry = _registry()
    if spec not in registry:
        raise UsageError(
            f"unknown experiment {spec!r}; valid choices are {sorted(registry)} (or module:attr naming an "
            "Experiment of your own)."
        )
    return registry[spec]


def check_renderer(experiment, renderer: str | None) -> str:
    """The renderer to use (default: the experiment's first); UsageError for another one."""
    renderer = renderer or experiment.renderers[0]
    if renderer not in experiment.renderers:
        raise UsageError(f"renderer {renderer!r} is not one of experiment {experiment.name!r}'s renderers "
                         f"{list(experiment.renderers)}.")
    return renderer


def check_size(experiment, size: str | None) -> str | None:
    """``size`` validated against ``experiment.build``'s signature (``None``: the default).

    Raises:
      UsageError: for a size other than cpu / gpu, or one given to a build that takes none.
    """
    if size is None:
        return None
    from .experiments import SIZES

    if size not in SIZES:
        raise UsageError(f"--size must be one of {list(SIZES)}, got {size!r}.")
    try:
        params = inspect.signature(experiment.build).parameters.values()
    except (TypeError, ValueError):
        return size
    if not any(p.name == "size" or p.kind is p.VAR_KEYWORD for p in params):
        raise UsageError(f"experiment {experiment.name!r} has no sizes (its build() takes no size argument); "
                         "drop --size.")
    return size


def build_setup(experiment, *, renderer: str, seed: int, size: str | None):
    """``experiment.build(renderer=..., seed=...)``, with ``size=`` only when one is given
    (plug-in experiments need not accept it)."""
    return experiment.build(renderer=renderer, seed=seed, **({"size": size} if size is not None else {}))


# ------------------------------------------------------------------------------ psi


def psi_record(psi) -> dict[str, list]:
    """psi as JSON: leaf path (``x.loc``) -> its values, flattened.

    Example:
      >>> import jax.numpy as jnp
      >>> psi_record({"x": (jnp.float32(0.5), jnp.zeros(2))})
      {'x.0': [0.5], 'x.1': [0.0, 0.0]}
    """
    import jax

    return {name: np.asarray(leaf).ravel().tolist() for name, leaf in zip(leaf_paths(psi), jax.tree.leaves(psi))}


def psi_from_record(template, record: dict[str, list]):
    """The inverse of :func:`psi_record`, shaped and typed like ``template`` (exact: JSON keeps
    a float32's shortest repr)."""
    import jax

    leaves, treedef = jax.tree.flatten(template)
    return jax.tree.unflatten(treedef, [np.asarray(record[name], np.asarray(leaf).dtype).reshape(np.shape(leaf))
                                        for name, leaf in zip(leaf_paths(template), leaves)])


# ----------------------------------------------------------------------------- config


def versions() -> dict[str, str]:
    """Versions of the packages a run's results depend on."""
    import flax
    import jax
    import optax

    from . import __version__

    return {
        "autosim_jax": __version__, "jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", "?"),
        "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
    }


def device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '?')} x{jax.device_count()}"


def make_config(*, command: str, experiment: str, renderer: str, seed: int, size: str | None, options: dict,
                iterations: int | None, budget_images: int | None, **extra: Any) -> dict:
    """config.json of a run: the ``format`` key, what produced it, ``options`` (an
    ``AutoSimConfig.to_dict()``), ``extra`` (method-specific keys), versions and device."""
    return {
        "format": FORMAT, "command": command, "experiment": experiment, "renderer": renderer, "seed": seed,
        "size": size, "approximation": options.get("approximation"), "options": options,
        "iterations": iterations, "budget_images": budget_images, **extra,
        "versions": versions(), "device": device(),
    }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def first_difference(old: dict, new: dict, keys: Sequence[str]) -> tuple[str, Any, Any] | None:
    """The first dotted key (``options.finetune_epochs``) under ``keys`` whose value differs.

    Only the keys present in ``new`` are compared inside a dict, so a partial ``new`` (the
    options known from the command line before the experiment is built) can be checked early.
    """
    old_flat = _flatten({k: old.get(k) for k in keys})
    new_flat = _flatten({k: new[k] for k in keys if k in new})
    for key in sorted(new_flat):
        if old_flat.get(key, "<absent>") != new_flat[key]:
            return key, old_flat.get(key, "<absent>"), new_flat[key]
    return None


# ------------------------------------------------------------------------ the directory


@dataclasses.dataclass
class RunDir:
    """An open, locked run directory (see :meth:`open`)."""

    path: str
    _lock_fd: int | None = dataclasses.field(default=None, repr=False)
    removed_tmp: list[str] = dataclasses.field(default_factory=list)

    @property
    def config_path(self) -> str:
        return os.path.join(self.path, CONFIG)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, METRICS)

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.path, CHECKPOINT)

    @property
    def summary_path(self) -> str:
        return os.path.join(self.path, SUMMARY)

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str | os.PathLike) -> Iterator[RunDir]:
        """Creates ``path`` if needed, locks it for this process, removes stale ``.tmp-*`` files.

        Raises:
          RunDirError: when ``path`` is a file, or another process holds the lock (naming
            its pid).
        """
        path = os.fspath(path)
        check_out_path(path)
        os.makedirs(path, exist_ok=True)
        fd = acquire_lock(path)
        run = cls(path, fd)
        try:
            run.removed_tmp = remove_stale_tmp(path)
            yield run
        finally:
            release_lock(fd)

    def read_config(self) -> dict:
        """config.json, checked to be of this version's format.

        Raises:
          RunDirError: when it is missing, corrupt, or written by an older version.
        """
        return read_config(self.path)

    def is_finished(self, target: dict) -> dict | None:
        """The summary of a finished run with this ``target``, else ``None``."""
        return finished_summary(self.path, target)

    def finished_records(self, summary: dict) -> list[dict]:
        """The metrics records of a finished run (its ``summary``), verified to be all its steps.

        Raises:
          RunDirError: when ``metrics.jsonl`` does not hold exactly the summary's steps.
        """
        records, lines = read_metrics(self.metrics_path)
        if len(records) != summary.get("iterations") or lines != len(records):
            raise RunDirError(f"{self.metrics_path} holds {len(records)} steps ({lines} lines) but {SUMMARY} says the "
                              f"run finished after {summary.get('iterations')}; the directory was edited. Delete "
                              f"{SUMMARY} to let --resume check it against the checkpoint, or start afresh.")
        return records

    def resume(self, initial) -> tuple[Any, list[dict]]:
        """The state to continue from and the metrics lines it accounts for.

        Loads ``checkpoint.npz`` into the structure of ``initial`` (a run killed before its
        first checkpoint continues from ``initial``), verifies ``metrics.jsonl`` against it
        (line i is step i + 1, the lines reach the checkpoint's step, the images agree) and
        cuts the file to the checkpoint's step (the line of an unfinished step, or a torn
        line, goes).

        Raises:
          RunDirError: for an unreadable or foreign checkpoint, or metrics that disagree with it.
        """
        state = initial
        if os.path.exists(self.checkpoint_path):
            try:
                state = load_checkpoint(self.checkpoint_path, initial)
            except CheckpointError as err:
                raise RunDirError(str(err)) from None
            except ValueError as err:  # another experiment's, approximation's or method's checkpoint
                raise RunDirError(str(err)) from None
        keep = int(state.step)
        records, lines = read_metrics(self.metrics_path)
        if len(records) < keep:
            raise RunDirError(f"{self.metrics_path} holds {len(records)} complete steps but the checkpoint is at step "
                              f"{keep}; the run directory is inconsistent (a file was replaced or edited). Start a "
                              "new run with another --out.")
        if len(records) > keep + 1:
            raise RunDirError(f"{self.metrics_path} holds {len(records)} steps but the checkpoint is at step {keep}: "
                              "the checkpoint is older than the metrics (a file was replaced). Start a new run with "
                              "another --out.")
        records = records[:keep]
        if records and hasattr(state, "images") and records[-1].get("images") != int(state.images):
            raise RunDirError(f"{self.metrics_path}: step {keep} rendered {records[-1].get('images')} images but the "
                              f"checkpoint says {int(state.images)}; the files come from different runs. Start a new "
                              "run with another --out.")
        if lines != len(records):
            atomic_write(self.metrics_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))
        return state, records


def check_out_path(path: str) -> None:
    """Raises RunDirError when ``path`` exists and is not a directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"--out {path} is a file, not a directory; pass a directory (new or holding a run).")


def acquire_lock(path: str) -> int:
    """Takes the advisory lock of the directory ``path``; returns its file descriptor.

    Raises:
      RunDirError: naming the holder's pid when another process holds it.
    """
    lock_path = os.path.join(path, LOCK)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        try:
            holder = os.pread(fd, 64, 0).decode().strip() or "unknown"
        except (OSError, UnicodeDecodeError):
            holder = "unknown"
        os.close(fd)
        raise RunDirError(_LOCKED.format(path=path, pid=holder, lock=lock_path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def read_config(path: str) -> dict:
    """config.json of the run directory ``path``, checked to be of this version's format.

    Raises:
      RunDirError: when it is missing, corrupt, or was written by an older version.
    """
    config_path = os.path.join(path, CONFIG)
    config = read_json(config_path, "the run's configuration")
    if not isinstance(config, dict):
        raise RunDirError(f"{config_path} holds a {type(config).__name__}, not a run configuration; start a new run "
                          "with another --out.")
    if config.get("format") != FORMAT:
        if "format" in config:
            raise RunDirError(f"{config_path} has format {config['format']!r}; this version of autosim_jax reads "
                              f"{FORMAT!r}. Start a new run with another --out.")
        raise RunDirError(_OLD_FORMAT.format(path=config_path, fmt=FORMAT))
    if isinstance(config.get("options"), dict):
        # An option added after this run was written is absent from its file; every new
        # AutoSimConfig option defaults to the behaviour before it existed, so the run used
        # the default (e.g. finetune_schedule, outer_beta2 of session 5).
        from .config import AutoSimConfig

        config["options"] = {**AutoSimConfig().to_dict(), **config["options"]}
    return config


def check_resume_config(path: str, old: dict, new: dict, keys: Sequence[str]) -> None:
    """Raises RunDirError naming the first of ``keys`` (dotted) where ``new`` differs from ``old``."""
    diff = first_difference(old, new, keys)
    if diff is not None:
        key, old_value, new_value = diff
        raise RunDirError(_RESUME_DIFFERS.format(key=key, old=json.dumps(old_value), new=json.dumps(new_value),
                                                 path=os.path.join(path, CONFIG)))


def finished_summary(path: str, target: dict) -> dict | None:
    """The summary.json of the run in ``path`` when it finished with this ``target``, else None."""
    summary_path = os.path.join(path, SUMMARY)
    if not os.path.exists(summary_path):
        return None
    summary = read_json(summary_path, "the run's summary")
    return summary if isinstance(summary, dict) and summary.get("target") == target else None


def read_metrics(path: str) -> tuple[list[dict], int]:
    """The complete, in-sequence records of ``metrics.jsonl`` and the number of lines it holds.

    A torn last line (a write killed mid-line) is not a record.

    Raises:
      RunDirError: when a line other than the last is not JSON, or line i is not step i + 1
        (two runs wrote into the directory at once, or it was edited).
    """
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i == len(lines) - 1:
                break  # a line torn by a kill: the step did not finish
            raise RunDirError(f"{path}: line {i + 1} is not JSON but later lines are; the file is corrupt. Start a "
                              "new run with another --out.") from None
        if not isinstance(record, dict) or record.get("step") != i + 1:
            got = record.get("step") if isinstance(record, dict) else record
            raise RunDirError(f"{path}: line {i + 1} is step {got!r}, expected step {i + 1}; two runs wrote into this "
                              "directory at once, or it was edited. Start a new run with another --out.")
        records.append(record)
    return records, len(lines)


# ------------------------------------------------------------------------------ TensorBoard

PSI_SCALARS = 16  # elements of a psi leaf written as scalars (the first ones of a larger leaf)
_TAG_RENAMES = {"wall_time": "time/wall"}
_EVENT_FILES = "events.out.tfevents.*"
_writer_count = itertools.count(1)


def _event_writer_api():
    """``(EventFileWriter, Event, SessionLog, Summary)`` of tensorboardX (a small package: numpy and
    protobuf), else of tensorboard's TensorFlow-free writer; ``None`` when neither is installed."""
    try:
        from tensorboardX.event_file_writer import EventFileWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary
    except ImportError:
        try:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            return None
    return EventFileWriter, Event, SessionLog, Summary


def tensorboard_available() -> bool:
    """Whether :class:`TensorBoardLog` can write (tensorboardX or tensorboard is installed)."""
    return _event_writer_api() is not None


def tensorboard_scalars(record: dict) -> dict[str, float]:
    """The TensorBoard scalars of one metrics.jsonl record: tag -> value.

    Every number and boolean of the record but ``step`` (the x axis), under a tag grouped by its
    first word (``val_metric`` -> ``val/metric``, ``time_render`` -> ``time/render``,
    ``cg_converged`` -> ``cg/converged``; ``wall_time`` -> ``time/wall``), and the raw psi
    leaves under ``psi/`` (``psi/x.loc``; ``psi/x.loc/0`` ... for the first ``PSI_SCALARS``
    elements of a larger leaf).

    Example:
      >>> tensorboard_scalars({"step": 3, "images": 96, "val_metric": 0.5, "cg_converged": True,
      ...                      "psi": {"x.loc": [1.0], "p.logits": [0.0, 2.0]}})  # doctest: +NORMALIZE_WHITESPACE
      {'images': 96.0, 'val/metric': 0.5, 'cg/converged': 1.0, 'psi/x.loc': 1.0, 'psi/p.logits/0': 0.0,
       'psi/p.logits/1': 2.0}
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, (str, dict, list, tuple)) or value is None:
            continue
        if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
            out[_TAG_RENAMES.get(key, key.replace("_", "/", 1))] = float(value)
    for name, values in (record.get("psi") or {}).items():
        values = list(values)
        if len(values) == 1:
            out[f"psi/{name}"] = float(values[0])
        else:
            out.update({f"psi/{name}/{i}": float(v) for i, v in enumerate(values[:PSI_SCALARS])})
    return out


class TensorBoardLog:
    """The records of ``metrics.jsonl`` as TensorBoard scalars in ``RUN/tensorboard/``.

    Opened by :func:`run_loop` with the records a resume kept: it writes them all into a new
    event file, then removes the older event files, so that the directory holds exactly the
    records of ``metrics.jsonl`` (a step cut off by a kill and redone after ``--resume`` does not
    appear twice), then one event per step, flushed with the step. The x axis is the step; an
    event's time is the run's ``wall_time`` (TensorBoard's "relative" axis is the run's time,
    without the pauses between resumes). ``tensorboard --logdir RUN`` (or a comparison's
    ``--out``) shows them.

    Build it with :meth:`open`, which returns ``None`` when neither tensorboardX nor tensorboard
    is installed (``pip install "autosim_jax[tensorboard]"``).
    """

    def __init__(self, directory: str, records: Sequence[dict] = (), *, api=None):
        self.directory = directory
        writer_cls, self._event, self._session_log, self._summary = api or _event_writer_api()
        os.makedirs(directory, exist_ok=True)
        older = glob.glob(os.path.join(glob.escape(directory), _EVENT_FILES))
        last_wall = records[-1].get("wall_time", 0.0) if records else 0.0
        self._base = time.time() - (last_wall if isinstance(last_wall, (int, float)) else 0.0)
        self._writer = writer_cls(directory, filename_suffix=f".{os.getpid()}.{next(_writer_count)}")
        # A START at the first step discards earlier events of these steps in files left behind.
        self._writer.add_event(self._event(wall_time=self._base, step=1,
                                           session_log=self._session_log(status=self._session_log.START)))
        for record in records:
            self._add(record)
        self._writer.flush()
        for path in older:  # all their records are in the new file now
            with contextlib.suppress(OSError):
                os.unlink(path)

    @classmethod
    def open(cls, run_path: str, records: Sequence[dict] = ()) -> TensorBoardLog | None:
        """The log of the run directory ``run_path`` holding ``records``; ``None`` without a writer package."""
        api = _event_writer_api()
        return None if api is None else cls(os.path.join(run_path, TENSORBOARD), records, api=api)

    def _add(self, record: dict) -> None:
        wall = record.get("wall_time")
        values = [self._summary.Value(tag=tag, simple_value=value)
                  for tag, value in tensorboard_scalars(record).items()]
        self._writer.add_event(self._event(
            wall_time=self._base + wall if isinstance(wall, (int, float)) else time.time(),
            step=int(record["step"]), summary=self._summary(value=values)))

    def write(self, record: dict) -> None:
        """One step's record, on disk when this returns."""
        self._add(record)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()



# ----------------------------------------------------------------------------- run loop


class _DropRenderErrorLogs(logging.Filter):
    """Drops JAX's "pure_callback failed" log record (a traceback) of a RenderError or of a Ctrl-C
    inside a callback: the caller reports either itself, in one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (RenderError, KeyboardInterrupt)))


@contextlib.contextmanager
def quiet_render_errors():
    """Silences JAX's logged traceback of a RenderError raised inside a callback."""
    logger, flt = logging.getLogger("jax._src.callback"), _DropRenderErrorLogs()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


class LoopResult(NamedTuple):
    """What :func:`run_loop` did."""

    initial: Any  # method.init(seed): the start state (its psi is the start psi)
    state: Any  # the state after the last completed step
    records: list[dict]  # every metrics line of the run, resumed ones included
    stopped_by: str  # "iterations" or "budget_images"
    resumed_at: int  # the step the loop started from


def _step_info(info: Any) -> dict:
    return info._asdict() if hasattr(info, "_asdict") else dict(info)


def _relay_warnings(caught: list, told: set) -> None:
    """AutoSimulate's warnings (an unconverged or indefinite solve) become one stderr note per
    kind per run: the progress line and the summary already count the steps they concern.
    Other warnings are re-issued unchanged."""
    from .autosimulate import AutoSimulateWarning

    for w in caught:
        if issubclass(w.category, AutoSimulateWarning):
            if w.category not in told:
                told.add(w.category)
                print(f"autosim: note: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def run_loop(
    method: Any,
    run: RunDir,
    *,
    seed: int,
    resume: bool,
    iterations: int | None = None,
    budget_images: int | None = None,
    monitor: Callable[[Any], dict] | None = None,
    on_start: Callable[[Any, list[dict]], None] | None = None,
    on_step: Callable[[dict, Any], None] | None = None,
    tensorboard: bool = True,
) -> LoopResult:
    """Steps ``method`` in the run directory ``run`` until ``iterations`` or ``budget_images``.

    Per step: ``state, info = method.step(state)``, a record ``{"step", "images", **info,
    **monitor(state), "time_step", "wall_time", "psi"}`` appended to ``metrics.jsonl`` (flushed
    and ``fsync``\\ ed), then ``checkpoint.npz`` replaced, then the record written to
    TensorBoard, then ``on_step(record, state)``.

    Args:
      method: an ``(init, step)`` pair: an :class:`~autosim_jax.AutoSimulate` (``info`` a
        ``StepInfo``) or a baseline's ``BlackBox`` (``info`` a dict); its state has ``step``,
        ``images`` and ``psi``.
      run: the open :class:`RunDir`.
      seed: ``method.init(seed)``.
      resume: continue from the directory's checkpoint (:meth:`RunDir.resume`).
      iterations: stop once ``state.step >= iterations`` (``None``: no limit).
      budget_images: stop once ``state.images >= budget_images`` (``None``: no limit).
      monitor: ``state -> dict`` of extra record fields (e.g. the test metric), not timed.
      on_start: ``(state, records)`` after the resume, before the first step.
      on_step: ``(record, state)`` after each step is on disk.
      tensorboard: also write the records to ``tensorboard/`` (:class:`TensorBoardLog`) when
        tensorboardX or tensorboard is installed.

    Returns:
      A :class:`LoopResult`.

    Raises:
      RenderFailed: the renderer failed (the last checkpoint is intact).
      Interrupted: Ctrl-C (SIGINT); the directory holds every completed step.
      RunDirError: from the resume.
    """
    from .autosimulate import AutoSimulateWarning

    if iterations is None and budget_images is None:
        raise ValueError("run_loop needs iterations or budget_images (else it never stops).")
    initial = method.init(seed)
    state, records = run.resume(initial) if resume else (initial, [])
    resumed_at = int(state.step)
    if on_start is not None:
        on_start(state, records)
    wall0 = records[-1].get("wall_time", 0.0) if records else 0.0
    start = time.perf_counter()
    stopped_by = "iterations"
    board = None
    told: set[type] = set()
    try:
        board = TensorBoardLog.open(run.path, records) if tensorboard else None
        with open(run.metrics_path, "a") as metrics:
            while True:
                if budget_images is not None and int(state.images) >= budget_images:
                    stopped_by = "budget_images"
                    break
                if iterations is not None and int(state.step) >= iterations:
                    break
                t0 = time.perf_counter()
                try:
                    with quiet_render_errors(), warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", AutoSimulateWarning)
                        new_state, info = method.step(state)
                    _relay_warnings(caught, told)
                except RenderError as err:
                    raise RenderFailed(int(state.step) + 1, err) from None
                except Exception as err:
                    if is_interrupt(err):  # Ctrl-C inside a host callback reaches us wrapped by XLA
                        raise Interrupted(int(state.step)) from None
                    raise
                time_step = time.perf_counter() - t0
                record = {"step": int(new_state.step), "images": int(new_state.images), **_step_info(info),
                          **(monitor(new_state) if monitor is not None else {}),
                          "time_step": time_step, "wall_time": wall0 + time.perf_counter() - start,
                          "psi": psi_record(new_state.psi)}
                metrics.write(json.dumps(record) + "\n")  # metrics first, then the checkpoint
                metrics.flush()
                os.fsync(metrics.fileno())
                save_checkpoint(run.checkpoint_path, new_state)
                state = new_state
                records.append(record)
                if board is not None:
                    board.write(record)
                if on_step is not None:
                    on_step(record, state)
    except KeyboardInterrupt:
        raise Interrupted(int(state.step)) from None
    finally:
        if board is not None:
            board.close()
    return LoopResult(initial, state, records, stopped_by, resumed_at)


def summarize(records: list[dict], *, higher: bool, stopped_by: str, state, target: dict) -> dict:
    """summary.json of a run: totals, best / final validation metric, CG failures, target, psi.

    ``start_val_metric`` is the validation metric after the *first step's* fine-tuning on the
    start psi (the first record), not of an untrained model; the fresh-model assessment is
    the fair measure of the start psi.
    """
    summary: dict[str, Any] = {
        "target": target, "iterations": int(state.step), "images": int(state.images), "stopped_by": stopped_by,
        "wall_time": records[-1].get("wall_time", 0.0) if records else 0.0,
    }
    time_keys = sorted({k for r in records for k in r if k.startswith("time_") and k != "time_step"})
    for k in time_keys or ("time_render", "time_train", "time_outer"):
        summary[k] = float(sum(r.get(k, 0.0) for r in records))
    if records:
        vals = [r["val_metric"] for r in records]
        best = int(np.nanargmax(vals) if higher else np.nanargmin(vals)) if not np.all(np.isnan(vals)) else 0
        summary.update(
            start_val_metric=vals[0], start_val_metric_is="after the first step's fine-tuning on the start psi",
            best_val_metric=vals[best], best_step=records[best]["step"], best_images=records[best]["images"],
            test_metric_at_best=records[best].get("test_metric"),
            final_val_metric=vals[-1], final_test_metric=records[-1].get("test_metric"),
        )
        summary.update(cg_counts(records))
        summary.update(loss_jump_counts(records))
    summary["psi"] = psi_record(state.psi)
    from .outer import signal_test_report

    verdicts = signal_test_report(getattr(state, "outer_opt_state", None))
    if verdicts is not None:  # AutoSimConfig.outer_signal_test_after: the leaves held at their start
        summary["signal_test"] = {"held_at_start": [leaf for leaf, v in verdicts.items() if v["held"]],
                                  "evidence": [leaf for leaf, v in verdicts.items() if v["evidence"]],
                                  "p_values": {leaf: v["p_value"] for leaf, v in verdicts.items()}}
    return summary


def cg_counts(records: Sequence[dict]) -> dict[str, float]:
    """Steps whose CG solve did not converge, whose vector was no better than zero
    (``cg_model_value >= 0`` with a solve), and (when recorded) that kept psi unchanged; the
    median and largest relative residual of the solves; ``{}`` for records without a solve report."""
    if not records or "cg_converged" not in records[0]:
        return {}
    solved = [r for r in records if r.get("cg_relative_residual", 0.0) != 0.0 or not r["cg_converged"]]
    counts = {"cg_unconverged_steps": sum(not r["cg_converged"] for r in records),
              "cg_no_descent_steps": sum(r.get("cg_model_value", -1.0) >= 0 for r in solved),
              "cg_solves": len(solved)}
    residuals = [r["cg_relative_residual"] for r in solved if np.isfinite(r.get("cg_relative_residual", np.nan))]
    if residuals:  # how far from cg_tol the unconverged ones stopped (a truncated solve, or a failed one)
        counts.update(cg_relative_residual_median=float(np.median(residuals)),
                      cg_relative_residual_max=float(np.max(residuals)))
    if "psi_updated" in records[0]:  # AutoSimulate versions that keep psi on an unusable step
        counts["psi_kept_steps"] = sum(not r["psi_updated"] for r in records)
    return counts


def loss_jump_counts(records: Sequence[dict]) -> dict[str, Any]:
    """Steps whose fine-tuning raised its own renders' loss (:func:`~autosim_jax.autosimulate.finetune_loss_jumps`)
    and the first of them; ``{}`` for records without ``train_loss_before`` (written before it existed)."""
    from .autosimulate import LOSS_JUMP_FACTOR, finetune_loss_jumps

    if not records or "train_loss_before" not in records[0]:
        return {}
    jumps = finetune_loss_jumps([r["train_loss"] for r in records], [r["train_loss_before"] for r in records])
    return {"finetune_loss_jump_steps": len(jumps), "finetune_loss_jump_factor": LOSS_JUMP_FACTOR,
            "first_finetune_loss_jump_step": records[jumps[0]]["step"] if jumps else None}


# -------------------------------------------------------------------------- assessments

ASSESSED = "assessed.json"


def _assessment_cache(path: str, protocol: dict) -> dict:
    """The results stored in the assessment file ``path`` under this ``protocol`` (else none)."""
    if os.path.exists(path):
        stored = read_json(path, "cached assessments")
        # A file without "models" holds one model per psi (assess_protocol leaves the key out then).
        if (isinstance(stored, dict) and all(stored.get(k) == v for k, v in protocol.items())
                and stored.get("models", 1) == protocol.get("models", 1)):
            return dict(stored.get("results", {}))
    return {}


def is_assessed(path: str, key: str, protocol: dict) -> bool:
    """Whether :func:`cached_assessment` would read ``key`` back from ``path`` without computing."""
    return key in _assessment_cache(path, protocol)


def cached_assessment(path: str, key: str, protocol: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``compute()`` stored under ``key`` in the assessment file ``path``, or read back from it.

    ``protocol`` (``{"images": n, "epochs": e}``) must match the stored file's, else every
    entry is redone. Returns ``(result, cached)``.
    """
    cache = _assessment_cache(path, protocol)
    if key in cache:
        return cache[key], True
    cache[key] = compute()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json(path, {**protocol, "results": cache})
    return cache[key], False


def finite_or_none(x: float | None) -> float | None:
    """``x``, or ``None`` for NaN / inf (JSON has neither)."""
    return x if x is None or math.isfinite(x) else None


# ----------------------------------------------------------------------------- progress


def model_progress(prefix: str, models: int, stream: TextIO) -> Callable[[int, dict], None] | None:
    """``on_model`` for :func:`~autosim_jax.experiments.make_assessor`'s ``assess``: one line per
    fresh model when an assessment trains several (``--assess-models``), since each may take
    minutes; ``None`` for one model, whose assessment's own line says it.

    Example:
      >>> import sys
      >>> report = model_progress("autosim run: assessing learned psi", 2, sys.stdout)
      >>> report(0, {"val_metric": 0.51234, "test_metric": 0.5, "seconds": 61.2})
      autosim run: assessing learned psi: fresh model 1/2: val 0.5123, test 0.5, 61 s
      >>> model_progress("autosim run: assessing learned psi", 1, sys.stdout) is None
      True
    """
    if models <= 1:
        return None

    def report(r: int, metrics: dict) -> None:
        print(f"{prefix}: fresh model {r + 1}/{models}: val {metrics['val_metric']:.4g}, test "
              f"{metrics['test_metric']:.4g}, {metrics['seconds']:.0f} s", file=stream, flush=True)

    return report


def _columns(stream: TextIO) -> int:
    """The terminal width of ``stream`` (0 for a pseudo-terminal without a size, where a bar draws nothing)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return str(datetime.timedelta(seconds=seconds)) if seconds >= 60 else f"{seconds}s"


class Progress:
    """Progress of a long phase: a tqdm bar on a terminal, one line every N items or S seconds otherwise.

    The ETA leaves out the first item done in this process (it compiles): it is the mean time
    of the later items times the items left, shown from the second item on.

    Args:
      total: items (steps, runs, assessments) in the phase.
      desc: what is progressing (``"autosim run"``); starts every line.
      stream: where to write (a terminal gets a bar).
      initial: items already done (a resumed run).
      unit: what an item is (``"step"``).
      every: a line at least every this many items (default: about 20 lines a phase).
      seconds: and at least every this many seconds.
      bar: force the bar (``True``) or lines (``False``); default ``stream.isatty()``.
    """

    def __init__(self, total: int, *, desc: str, stream: TextIO, initial: int = 0, unit: str = "step",
                 every: int | None = None, seconds: float = 30.0, bar: bool | None = None):
        self.total, self.desc, self.stream, self.unit = total, desc, stream, unit
        self.done = self.initial = initial
        self.every = every or max(1, math.ceil(max(total - initial, 1) / 20))
        self.seconds = seconds
        self._first_done: float | None = None  # when the first item of this process finished
        self._items_after_first = 0
        self._last_line_item, self._last_line_time = initial, time.monotonic()
        self._bar = None
        if bar is None:
            bar = bool(getattr(stream, "isatty", lambda: False)()) and _columns(stream) > 0
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, file=stream, desc=desc)

    def eta(self) -> float | None:
        """Seconds left, from the items after the first; ``None`` before there are any."""
        if self._first_done is None or self._items_after_first == 0:
            return None
        rate = (time.monotonic() - self._first_done) / self._items_after_first
        return rate * max(self.total - self.done, 0)

    def update(self, status: str = "", n: int = 1, *, postfix: dict | None = None) -> None:
        """``n`` more items done; ``status`` (``"96 images, val 0.41, CG ok"``) goes on the line."""
        now = time.monotonic()
        self.done += n
        if self._first_done is None:
            self._first_done = now
        else:
            self._items_after_first += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
            return
        due = (self.done - self._last_line_item >= self.every or now - self._last_line_time >= self.seconds
               or self.done >= self.total or self.done - n == self.initial)
        if due:
            self.line(status)

    def line(self, status: str = "") -> None:
        """Writes one progress line now (lines mode) or a note above the bar."""
        eta = self.eta()
        eta_text = (f"ETA {_duration(eta)}" if eta is not None
                    else "ETA after the first (compiling) " + self.unit)
        text = (f"{self.desc}: {self.unit} {self.done}/{self.total}" + (f", {status}" if status else "")
                + f", {eta_text}")
        self._last_line_item, self._last_line_time = self.done, time.monotonic()
        self.write(text)

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------------------- interrupts


_SIGINT_SEEN = threading.Event()  # set by interrupt_guard's handler


def is_interrupt(err: BaseException) -> bool:
    """Whether ``err`` is how a Ctrl-C surfaced: a ``KeyboardInterrupt``, or any error raised
    after SIGINT under :func:`interrupt_guard` (on CPU, JAX runs host callbacks such as the
    renderer in the calling thread, so the ``KeyboardInterrupt`` is raised inside the callback
    and reaches the caller as a ``JaxRuntimeError``)."""
    return isinstance(err, KeyboardInterrupt) or _SIGINT_SEEN.is_set() or (
        type(err).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and "KeyboardInterrupt" in str(err))


@contextlib.contextmanager
def interrupt_guard(message: str, *, stream: TextIO | None = None, grace: float = 3.0) -> Iterator[None]:
    """Makes Ctrl-C (SIGINT) stop the process promptly, even while Python code cannot run.

    SIGINT raises ``KeyboardInterrupt`` in the main thread as usual, which the run loop turns
    into :class:`Interrupted` (also when it surfaces wrapped, see :func:`is_interrupt`). But
    while the main thread waits inside a jitted computation (a renderer that hangs in its
    callback, a long compile) Python cannot run that handler. A
    watcher thread, woken through ``signal.set_wakeup_fd``, therefore ends the process with
    exit code 130 after ``message`` if the main thread has not left this block ``grace``
    seconds after the signal (at once on a second Ctrl-C). That is as safe as ``kill -9``:
    every file of a run directory is written atomically or appended and ``fsync``\\ ed before
    the checkpoint, so the directory stays resumable. Before that exit it runs the cleanups
    registered with :func:`on_forced_exit` (the render pools' workers), each for at most
    ``FORCED_CLEANUP_S`` seconds.

    Outside the main thread (where signals cannot be handled) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stream = stream or sys.stderr
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    done = threading.Event()
    _SIGINT_SEEN.clear()

    def on_sigint(signum, frame):
        _SIGINT_SEEN.set()
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        signalled_at = None
        while not done.is_set():
            timeout = None if signalled_at is None else max(0.0, signalled_at + grace - time.monotonic())
            ready, _, _ = select.select([read_fd], [], [], timeout)
            if done.is_set():
                return
            if ready:
                data = os.read(read_fd, 64)
                if signal.SIGINT not in data:
                    continue
                if signalled_at is None and data.count(signal.SIGINT) == 1:
                    signalled_at = time.monotonic()
                    continue
            elif signalled_at is None:
                continue
            with contextlib.suppress(Exception):
                stream.write(f"\n{message}\n")
                stream.flush()
            _run_forced_exit_cleanups()  # worker processes: os._exit skips every finally
            os._exit(130)

    watcher = threading.Thread(target=watch, name="autosim-interrupt-guard", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(OSError):
            os.write(write_fd, b"\0")
        watcher.join()
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGINT, old_handler)
        _SIGINT_SEEN.clear()
        os.close(read_fd)
        os.close(write_fd)
