"""Render pools: a batch of scenes cut into fixed-size chunks, rendered serially, by local
processes, or by Ray actors, with the same result bitwise.

Rendering is what an AutoSimulate step waits for (paper Algorithm 1, line 2: sample and
render ``D_train ~ p_psi(zeta)``). A pool fans the chunks of one batch out over workers that
each hold one copy of the renderer, built once and reused across steps:

* ``"serial"``: the chunks in this process, one after the other (what a
  :class:`~autosim_jax.simulator.Simulator` without a pool does);
* ``"process"``: local worker processes started with the ``spawn`` context (safe next to
  JAX's threads), each sent the pickled renderer once. Each worker's BLAS / OpenMP thread
  pools are capped at ``cpu_count // workers`` threads (:data:`THREAD_ENV_VARS`, unless the
  user set them): uncapped, every worker's numpy starts one thread per core, so 16 workers
  ran about 256 threads on 16 cores (``docs/benchmarks.md``, end-to-end step time). The same
  cap is in :data:`RENDER_THREADS_ENV` for renderers that run their own thread pool (the
  Mitsuba backend sizes Dr.Jit's by it);
* ``"ray"``: Ray actors (``num_cpus=1, num_gpus=0``) on a local Ray instance started by the
  pool, or on the cluster that ``ray.init(address=...)`` reaches (``pip install
  "autosim_jax[distributed]"``). Each actor is sent up to two chunks at a time, which hides
  Ray's per-task round trip; a process worker is sent one.

**Seeding (results independent of workers and backend).** A batch of ``n`` scenes is cut
into chunks of ``chunk_size`` consecutive scenes (the last one may be shorter); chunk ``i``
holds scenes ``i * chunk_size`` up to ``min(n, (i + 1) * chunk_size)`` and is rendered by one
call ``renderer.render(chunk_scenes, chunk_seed(seed, i))``. Neither the chunks nor their
seeds depend on the number of workers or on the backend, so serial, 1, 2 or 16 processes and
Ray give the same images and labels bitwise, given a renderer that is a deterministic
function of ``(scenes, seed)`` (one that keeps state between calls, such as a call counter,
is not: each worker holds its own copy). ``chunk_size`` is part of the seeding, like the
seed: pools of different chunk sizes render different noise. This changed the renders of a
given seed: before the pools existed, a batch was one ``render`` call with ``seed`` itself.

**Failures** become a :class:`RenderError`: a renderer that raises (naming the renderer, the
exception and the scene range in the whole batch), a worker that dies (killed, segfault;
naming the scenes it was rendering, or for a Ray actor the up to two chunks it held; the
pool replaces it, so the next call runs normally), and, with ``timeout=``, a batch that is
not done in time (the workers still rendering are killed and replaced). When several chunks
fail, the error of the lowest one is raised, as a serial run would raise it. Checking the scenes
and the outputs against the renderer's schema and specs is the simulator's job
(:meth:`~autosim_jax.simulator.Simulator.render_numpy`); a pool returns what the renderer
returned. Workers ignore SIGINT: on Ctrl-C the parent raises ``KeyboardInterrupt`` (within
``SIGNAL_CHECK_S``, even while its workers hang) and its
exit (``weakref.finalize``, run at interpreter exit) ends them; a worker also exits when its
parent dies. ``close()`` ends them at once.

This module is numpy only (and Ray, imported when asked for): renderers never see JAX.

Example:
  >>> import numpy as np
  >>> from autosim_jax.schema import Field, OutputSpec, SceneSchema
  >>> class Noisy:
  ...     name = "noisy"
  ...     schema = SceneSchema((Field.continuous("x"),))
  ...     inputs_spec = OutputSpec((), np.float32)
  ...     labels_spec = OutputSpec((), np.int32)
  ...     def render(self, scenes, seed):
  ...         noise = np.random.default_rng(seed).normal(size=len(scenes["x"]))
  ...         return (scenes["x"] + noise).astype(np.float32), np.zeros(len(scenes["x"]), np.int32)
  >>> with make_render_pool(Noisy(), chunk_size=4) as pool:
  ...     inputs, labels = pool.render({"x": np.zeros(10)}, seed=7)
  >>> inputs.shape, [b - a for a, b in chunk_bounds(10, 4)]
  ((10,), [4, 4, 2])
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_CHUNK_SIZE = 8
# The thread-pool sizes of numpy's BLAS and OpenMP that a process worker inherits from its
# environment at start (read once, when numpy loads).
# AUTOSIM_RENDER_THREADS carries the same cap to renderers with a thread pool of their own
# (Dr.Jit's, which reads none of the others): they read it with render_threads().
RENDER_THREADS_ENV = "AUTOSIM_RENDER_THREADS"
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   RENDER_THREADS_ENV)
_ENV_LOCK = threading.Lock()  # os.environ is process-wide: one spawn at a time edits it
BACKENDS = ("serial", "process", "ray")
# How long a worker may take to start (import the package, unpickle the renderer).
STARTUP_TIMEOUT_S = 300.0
# How long close() waits for a worker to exit by itself before killing it.
CLOSE_GRACE_S = 2.0
# The longest a pool waits for its workers without returning to the interpreter (_wait_until).
SIGNAL_CHECK_S = 0.5
# Tasks submitted to one Ray actor at a time: the next chunk waits at the actor while the
# driver collects the last one, hiding Ray's per-task round trip (~1 ms on one host). A process
# worker is sent one chunk at a time: a second send could block on a full pipe while the
# worker blocks on sending its result.
RAY_QUEUE_DEPTH = 2

_NOT_PICKLABLE = (
    "make_render_pool: the renderer {renderer!r} cannot be pickled ({error}); the {backend!r} "
    "backend sends a copy of it to every worker. Define its class at module level in a module "
    "the workers can import (not in a notebook cell or a function), keep no open files, locks "
    "or lambdas in its attributes, or use backend='serial'."
)
_RAY_MISSING = (
    'make_render_pool: backend="ray" needs Ray: pip install "autosim_jax[distributed]" '
    "(ray>=2.9), or use backend='process' on one machine."
)
_SERIAL_TIMEOUT = (
    "make_render_pool: backend='serial' renders in this process, which cannot be interrupted "
    "when a renderer hangs; for a timeout use backend='process' (workers=1 renders one chunk "
    "at a time, as serially, and gives the same result)."
)


class RenderError(RuntimeError):
    """A renderer failed, or returned something its specs do not allow.

    Attributes:
      renderer: the renderer's name.
      field: the scene field (``"light"``) or output (``"inputs"``/``"labels"``) at fault,
        or ``None`` when the renderer itself raised, its worker died, or it timed out.
      scene_index: index of the offending scene in its batch, or ``None`` when unknown.
      scenes: the offending scene's values (field -> value), or, when no one scene is
        known, the scenes involved (field -> their values as printed by numpy, truncated).
      seed: the seed of the batch.
      scene_range: ``(start, stop)``, the scenes ``start..stop - 1`` of the batch that the
        failing renderer call was given, or ``None`` when the whole batch is at fault or, for
        a Ray actor that died holding several chunks, when the message lists them.
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
        scene_range: tuple[int, int] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.renderer = renderer
        self.field = field
        self.scene_index = scene_index
        self.scenes = dict(scenes) if scenes is not None else None
        self.seed = seed
        self.scene_range = scene_range
        self.error_id: int | None = None  # set when it crosses a pure_callback

    def __str__(self) -> str:
        if self.error_id is None:
            return self.message
        return f"{self.message} [autosim render error #{self.error_id}]"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained as the ``__cause__``."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


# ------------------------------------------------------------------------- pure helpers


def chunk_bounds(n: int, chunk_size: int) -> tuple[tuple[int, int], ...]:
    """The ``(start, stop)`` scene ranges of the chunks of a batch of ``n`` scenes.

    Args:
      n: number of scenes in the batch.
      chunk_size: scenes per chunk; the last chunk holds the remainder.

    Returns:
      ``((0, c), (c, 2c), ..., (m c, n))`` with ``c = chunk_size``.

    Example:
      >>> chunk_bounds(10, 4)
      ((0, 4), (4, 8), (8, 10))
    """
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of scenes, got {chunk_size}.")
    return tuple((a, min(n, a + chunk_size)) for a in range(0, n, chunk_size))


def chunk_seed(seed: int, index: int) -> int:
    """The renderer's seed for chunk ``index`` of a batch rendered with ``seed``.

    The first 32-bit word of ``numpy.random.SeedSequence([seed, index])``: a hash of the
    pair, so that neighbouring chunks and neighbouring batch seeds get unrelated streams.

    Args:
      seed: the batch's seed, a non-negative integer (``Simulator.simulate`` draws a uint32).
      index: the chunk's position in the batch, from 0.

    Returns:
      A Python int in ``[0, 2**32)``.

    Example:
      >>> chunk_seed(7, 0) == chunk_seed(7, 0) != chunk_seed(7, 1)
      True
    """
    seed, index = int(seed), int(index)
    if seed < 0 or index < 0:
        raise ValueError(
            f"chunk_seed: seed and chunk index must be non-negative, got seed {seed}, index "
            f"{index}; pass the seed as an unsigned integer (e.g. seed % 2**32)."
        )
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def render_threads() -> int | None:
    """The thread count a renderer's own thread pool should use in this process, or ``None``.

    A process pool sets :data:`RENDER_THREADS_ENV` in each worker to ``cpu_count // workers``
    (unless the user set it), so that a renderer which starts a thread per core (Mitsuba's
    Dr.Jit) does not oversubscribe the machine when several workers render at once. ``None``
    outside a pool: use every core.

    Example:
      >>> import os
      >>> os.environ[RENDER_THREADS_ENV] = "4"; render_threads()
      4
      >>> del os.environ[RENDER_THREADS_ENV]; render_threads() is None
      True
    """
    value = os.environ.get(RENDER_THREADS_ENV, "")
    return max(1, int(value)) if value.strip().isdigit() else None


def describe_scenes(scenes: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Scene values for an error message: one scene's values, or the batch's, truncated.

    Example:
      >>> describe_scenes({"x": np.array([0.5, 1.5])}, 1)
      {'x': 1.5}
    """
    if index is None:
        return {
            name: np.array2string(np.asarray(v), threshold=24, precision=6)
            for name, v in scenes.items()
        }
    return {name: np.asarray(v)[index].tolist() for name, v in scenes.items()}


def _batch_size(scenes: Mapping[str, Any]) -> int:
    if not isinstance(scenes, Mapping) or not scenes:
        raise ValueError(
            "RenderPool.render: scenes must be a non-empty dict of field name -> array of shape "
            f"(n, ...), got {type(scenes).__name__}."
        )
    sizes = {name: np.shape(v)[0] if np.ndim(v) else None for name, v in scenes.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values() or 0 in sizes.values():
        raise ValueError(
            f"RenderPool.render: every scene field must hold the same number (at least one) "
            f"of scenes along its first axis, got {sizes}."
        )
    return int(next(iter(sizes.values())))


def _positive_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1


def _call_renderer(renderer, scenes, seed) -> tuple[bool, Any]:
    """Runs one chunk: ``(True, output)`` or ``(False, (type name, message, traceback))``."""
    try:
        return True, renderer.render(scenes, seed)
    except Exception as err:  # any failure of foreign code is reported, never lost
        return False, (type(err).__name__, str(err), traceback.format_exc())


@dataclasses.dataclass(frozen=True)
class _Chunk:
    index: int
    start: int
    stop: int
    seed: int  # chunk_seed(batch seed, index)


def _ranges(chunks: Sequence[_Chunk]) -> str:
    return ", ".join(f"{c.start}..{c.stop - 1}" for c in sorted(chunks, key=lambda c: c.index))


def _how_it_died(exitcode: int | None) -> str:
    if exitcode is None:
        return "its connection closed"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Progress:
    """The chunks of one call: their outputs so far and the failure of the lowest chunk.

    When chunk ``i`` fails the call still waits for the chunks before ``i`` (and starts no
    chunk after it), then raises the failure of the lowest chunk that failed: the error a
    serial run would raise, whichever worker finished first.
    """

    def __init__(self, chunks: Sequence[_Chunk]):
        self.chunks = list(chunks)  # chunks[i].index == i
        self.pending = collections.deque(self.chunks)
        self.outs: dict[int, Any] = {}
        self.failure: tuple[int, RenderError, BaseException | None] | None = None

    def next_chunk(self) -> _Chunk | None:
        if self.pending and (self.failure is None or self.pending[0].index < self.failure[0]):
            return self.pending.popleft()
        return None

    def fail(self, chunk: _Chunk, error: RenderError, cause: BaseException | None) -> None:
        if self.failure is None or chunk.index < self.failure[0]:
            self.failure = (chunk.index, error, cause)

    def finished(self) -> bool:
        stop = len(self.chunks) if self.failure is None else self.failure[0]
        return all(i in self.outs for i in range(stop))

    def result(self) -> list[Any]:
        if self.failure is not None:
            _, error, cause = self.failure
            raise error from cause
        return [self.outs[i] for i in range(len(self.chunks))]


# ------------------------------------------------------------------------------ pools


class RenderPool:
    """Renders batches of scenes chunk by chunk; see the module docstring.

    Build one with :func:`make_render_pool`. ``render`` and ``render_chunks`` may be called
    from any thread (calls are serialised); ``close`` may be called from any thread at any time.

    Attributes:
      renderer: the renderer (each worker holds a copy).
      backend: ``"serial"``, ``"process"`` or ``"ray"``.
      workers: the number of workers.
      chunk_size: scenes per renderer call (part of the seeding).
      timeout: seconds a whole batch may take, or ``None`` (may be changed between calls).
    """

    backend = ""

    def __init__(self, renderer, *, workers: int, chunk_size: int, timeout: float | None):
        self.renderer = renderer
        self.workers = int(workers)
        self.chunk_size = int(chunk_size)
        self.timeout = None if timeout is None else float(timeout)
        self._lock = threading.Lock()
        self._calls = itertools.count()
        self._closed = False

    @property
    def name(self) -> str:
        """The renderer's name (used in every error message)."""
        return str(getattr(self.renderer, "name", type(self.renderer).__name__))

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """Process ids of the live workers (empty for the serial backend)."""
        return ()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, workers={self.workers}, "
            f"chunk_size={self.chunk_size}, timeout={self.timeout})"
        )

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Ends the workers (idempotent). A closed pool cannot render."""
        self._closed = True

    # ------------------------------------------------------------------ rendering

    def render_chunks(self, scenes: Mapping[str, np.ndarray], seed: int) -> list[Any]:
        """Renders a batch; returns what the renderer returned for each chunk, in order.

        Args:
          scenes: field name -> numpy array ``(n, *field.shape)``.
          seed: the batch's seed, a non-negative integer.

        Returns:
          One entry per chunk of :func:`chunk_bounds` ``(n, self.chunk_size)``: the
          renderer's output for that chunk, unchecked.

        Raises:
          RenderError: the renderer raised, a worker died, or the batch took longer than
            ``timeout``; it names the renderer and the scenes ``a..b`` of the batch.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed; build a new one with make_render_pool().")
        seed = int(seed)
        n = _batch_size(scenes)
        chunks = [
            _Chunk(i, a, b, chunk_seed(seed, i))
            for i, (a, b) in enumerate(chunk_bounds(n, self.chunk_size))
        ]
        scenes = {k: np.asarray(v) for k, v in scenes.items()}
        with self._lock:
            return self._run(scenes, chunks, n, seed)

    def render(self, scenes: Mapping[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Renders a batch: ``(inputs, labels)``, the chunks' outputs concatenated.

        The outputs are not checked against the renderer's specs; a
        :class:`~autosim_jax.simulator.Simulator` built with this pool checks them.

        Args:
          scenes: field name -> numpy array ``(n, *field.shape)``.
          seed: the batch's seed, a non-negative integer.

        Returns:
          ``(inputs, labels)`` numpy arrays with ``n`` rows each.

        Raises:
          RenderError: as :meth:`render_chunks`.

        Example:
          >>> pool.render(scenes, seed=0)  # doctest: +SKIP
        """
        outs = self.render_chunks(scenes, seed)
        return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(2))

    def _run(self, scenes, chunks, n, seed) -> list[Any]:
        raise NotImplementedError

    # -------------------------------------------------------------- error messages

    def _raised(self, chunk, n, seed, scenes, error) -> RenderError:
        kind, message, _ = error
        part = {k: v[chunk.start:chunk.stop] for k, v in scenes.items()}
        shown = describe_scenes(part)
        return RenderError(
            f"Renderer {self.name!r} raised {kind}: {message} while rendering scenes "
            f"{chunk.start}..{chunk.stop - 1} of {n} with seed {seed} (chunk {chunk.index}, "
            f"chunk seed {chunk.seed}); scenes: {shown}",
            renderer=self.name,
            scenes=shown,
            seed=seed,
            scene_range=(chunk.start, chunk.stop),
        )

    def _died(self, chunks, n, seed, pid, how) -> RenderError:
        """A worker died holding ``chunks`` of this call: the one it was rendering, or, for a
        Ray actor, that one and the chunks queued behind it or finished but not yet sent."""
        first = min(chunks, key=lambda c: c.index)
        where = (
            f"scenes {first.start}..{first.stop - 1} of {n} with seed {seed} (chunk "
            f"{first.index}, chunk seed {first.seed})"
            if len(chunks) == 1
            else f"one of the chunks it held, scenes {_ranges(chunks)} of {n} with seed {seed}"
        )
        return RenderError(
            f"A {self.backend} render worker of renderer {self.name!r} (pid {pid}) died ({how}) "
            f"while rendering {where}; nothing of this batch is kept. The pool has replaced the "
            "worker, so the next call runs normally. A renderer that crashes its process "
            "(segfault, out of memory) cannot report why: render those scenes serially to see "
            "it.",
            renderer=self.name,
            seed=seed,
            scene_range=(first.start, first.stop) if len(chunks) == 1 else None,
        )

    def _timed_out(self, running, n, seed, pids) -> RenderError:
        first = min(running, key=lambda c: c.index)
        return RenderError(
            f"Renderer {self.name!r} did not return within {self.timeout:g} s for scenes "
            f"{_ranges(running)} of {n} (seed {seed}); raise timeout= or fix the renderer. The "
            f"workers still rendering (pids {sorted(pids)}) were killed and replaced.",
            renderer=self.name,
            seed=seed,
            scene_range=(first.start, first.stop),
        )


class SerialPool(RenderPool):
    """The chunks in this process, in order (the serial path of the simulator)."""

    backend = "serial"

    def __init__(self, renderer, *, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__(renderer, workers=1, chunk_size=chunk_size, timeout=None)

    def _run(self, scenes, chunks, n, seed):
        outs = []
        for chunk in chunks:
            part = {k: v[chunk.start:chunk.stop] for k, v in scenes.items()}
            try:
                outs.append(self.renderer.render(part, chunk.seed))
            except Exception as err:  # any failure of foreign code becomes one clear error
                error = (type(err).__name__, str(err), "")
                raise self._raised(chunk, n, seed, scenes, error) from err
        return outs


# ----------------------------------------------------------------- process backend


def _keep_off_accelerators() -> None:
    """Hides GPUs from a worker: it renders on the CPU and must not take device memory."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported with the package; no backend is initialised yet
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def _process_worker(conn, renderer_bytes: bytes) -> None:
    """A worker's life: build the renderer once, then render chunks until told to stop.

    Messages in: ``(call, index, scenes, seed)`` or ``None`` (stop). Out: ``("ready", pid)``
    or ``("init_failed", traceback)`` once, then ``(call, index, ok, payload)`` per chunk.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _keep_off_accelerators()
    try:
        renderer = pickle.loads(renderer_bytes)
    except BaseException:
        conn.send(("init_failed", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        call, index, scenes, seed = message
        ok, payload = _call_renderer(renderer, scenes, seed)
        try:
            conn.send((call, index, ok, payload))
        except (BrokenPipeError, OSError):
            return
        except Exception as err:  # the output cannot be pickled
            conn.send((call, index, False, (type(err).__name__, (
                f"the renderer's output cannot be sent back to the parent: {err}"), "")))


@dataclasses.dataclass(eq=False)
class _Worker:
    process: Any  # multiprocessing.Process
    conn: Any  # the parent's end of a duplex Pipe
    pid: int
    ready: bool = False
    call: int | None = None  # the call whose chunk it is rendering, None when idle
    chunk: _Chunk | None = None


def _end_workers(workers: list[_Worker], grace: float) -> None:
    """Asks every worker to stop, kills those still alive after ``grace`` seconds, reaps all."""
    for w in workers:
        try:
            if w.call is None:
                w.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace
    for w in workers:
        if w.call is not None:
            w.process.kill()  # busy: maybe hung, no point in waiting
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
    workers.clear()


def _wait_until(wait: Callable[[float], list], deadline: float | None) -> list:
    """``wait(timeout)`` in slices of at most ``SIGNAL_CHECK_S`` seconds until it returns
    something ready, or ``[]`` once ``deadline`` (``time.monotonic()``; ``None``: never) passes.

    Why slices: Ctrl-C is a process-directed SIGINT, which the kernel may deliver to any thread
    that does not block it (a BLAS or JAX worker thread, say). Python then runs its handler, and
    raises ``KeyboardInterrupt``, only when the main thread next executes bytecode, and a main
    thread blocked in ``poll()`` on a hung renderer never would.
    """
    while True:
        left = SIGNAL_CHECK_S if deadline is None else max(0.0, min(SIGNAL_CHECK_S, deadline - time.monotonic()))
        ready = wait(left)
        if ready or (deadline is not None and time.monotonic() >= deadline):
            return ready


class ProcessPool(RenderPool):
    """Local worker processes (``spawn``), each holding a renderer."""

    backend = "process"

    def __init__(self, renderer, *, workers: int, chunk_size: int, timeout: float | None):
        super().__init__(renderer, workers=workers, chunk_size=chunk_size, timeout=timeout)
        self._context = multiprocessing.get_context("spawn")
        self._renderer_bytes = pickle.dumps(renderer)
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _end_workers, self._workers, CLOSE_GRACE_S)
        try:
            for _ in range(self.workers):
                self._workers.append(self._spawn())
            self._await_ready()
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self._workers)

    def close(self) -> None:
        super().close()
        self._finalizer()

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_process_worker,
            args=(child, self._renderer_bytes),
            name=f"autosim-render-{self.name}",
            daemon=True,
        )
        threads = str(max(1, (os.cpu_count() or 1) // self.workers))
        with _ENV_LOCK:  # spawn copies os.environ at start: set the caps for the child only
            unset = [v for v in THREAD_ENV_VARS if v not in os.environ]
            os.environ.update({v: threads for v in unset})
            try:
                process.start()
            finally:
                for v in unset:
                    os.environ.pop(v, None)
        child.close()
        return _Worker(process, parent, process.pid)

    def _replace(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._spawn()

    def _await_ready(self) -> None:
        """Waits for workers that are starting (the first ones, or replacements)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for w in self._workers:
            while not w.ready:
                handles = [w.conn, w.process.sentinel]
                if not _wait_until(lambda t, h=handles: multiprocessing.connection.wait(h, t), deadline):
                    raise RenderError(
                        f"A process render worker of renderer {self.name!r} did not start within "
                        f"{STARTUP_TIMEOUT_S:g} s.",
                        renderer=self.name,
                    )
                try:
                    message = w.conn.recv()
                except (EOFError, OSError):
                    w.process.join()
                    raise RenderError(
                        f"A process render worker of renderer {self.name!r} died while starting "
                        f"({_how_it_died(w.process.exitcode)}); see its output above.",
                        renderer=self.name,
                    ) from None
                if message[0] == "init_failed":
                    raise RenderError(
                        f"A process render worker could not unpickle renderer {self.name!r}; make "
                        "its class importable by a fresh Python process (module level, in an "
                        "installed module or one on sys.path).",
                        renderer=self.name,
                    ) from RemoteTraceback(message[1])
                w.ready = True

    def _run(self, scenes, chunks, n, seed):
        self._await_ready()
        call = next(self._calls)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        progress = _Progress(chunks)
        while not progress.finished():
            for w in self._workers:
                if not w.ready or w.call is not None:
                    continue
                chunk = progress.next_chunk()
                if chunk is None:
                    break
                part = {k: v[chunk.start:chunk.stop] for k, v in scenes.items()}
                try:
                    w.conn.send((call, chunk.index, part, chunk.seed))
                except OSError:
                    w.process.join()
                    self._replace(w)
                    how = _how_it_died(w.process.exitcode)
                    progress.fail(chunk, self._died([chunk], n, seed, w.pid, how), None)
                    continue
                w.call, w.chunk = call, chunk
            busy = [w for w in self._workers if w.call is not None]
            if not busy:  # every free worker is a replacement that is still starting
                self._await_ready()
                continue
            handles = {h: w for w in busy for h in (w.conn, w.process.sentinel)}
            ready = _wait_until(lambda t, h=list(handles): multiprocessing.connection.wait(h, t), deadline)
            if not ready:  # past the deadline; busy workers of earlier calls are late too
                for w in busy:
                    self._replace(w)
                late = [w.chunk for w in busy if w.call == call] or list(progress.pending)
                raise self._timed_out(late, n, seed, [w.pid for w in busy])
            for w in {handles[h]: None for h in ready}:
                this_call, chunk = w.call == call, w.chunk
                try:
                    if not w.conn.poll():
                        raise EOFError  # the sentinel fired: the process has ended
                    got_call, index, ok, payload = w.conn.recv()
                except (EOFError, OSError):
                    w.process.join()
                    self._replace(w)
                    if this_call:
                        how = _how_it_died(w.process.exitcode)
                        progress.fail(chunk, self._died([chunk], n, seed, w.pid, how), None)
                    continue
                w.call, w.chunk = None, None
                if got_call != call:
                    continue  # a chunk of an earlier call that failed or was interrupted
                if ok:
                    progress.outs[index] = payload
                else:
                    error = self._raised(chunk, n, seed, scenes, payload)
                    progress.fail(chunk, error, RemoteTraceback(payload[2]))
        return progress.result()


# --------------------------------------------------------------------- Ray backend


class _RayWorker:
    """The body of a Ray actor holding one renderer (wrapped by ``ray.remote`` on demand)."""

    def __init__(self, renderer_bytes: bytes):
        _keep_off_accelerators()
        self.renderer = pickle.loads(renderer_bytes)

    def pid(self) -> int:
        return os.getpid()

    def render(self, scenes, seed):
        return _call_renderer(self.renderer, scenes, seed)


def _end_ray(actors: list, owns_ray: bool) -> None:
    import ray

    if not ray.is_initialized():
        actors.clear()
        return
    for actor in actors:
        try:
            ray.kill(actor["handle"], no_restart=True)
        except Exception:  # already gone
            pass
    actors.clear()
    if owns_ray:
        ray.shutdown()


class RayPool(RenderPool):
    """Ray actors (``num_cpus=1, num_gpus=0``), each holding a renderer."""

    backend = "ray"

    def __init__(self, renderer, *, workers: int, chunk_size: int, timeout: float | None,
                 address: str | None):
        super().__init__(renderer, workers=workers, chunk_size=chunk_size, timeout=timeout)
        try:
            import ray
        except ImportError as err:
            raise ImportError(_RAY_MISSING) from err
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False}
            if address is None:
                # A local instance: one CPU per worker even when workers exceed the cores (as
                # the process pool does), and workers that import what this process imports.
                path = os.pathsep.join(p for p in sys.path if p)
                kwargs.update(
                    num_cpus=max(self.workers, os.cpu_count() or 1),
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
            with warnings.catch_warnings():
                # Ray starts its local processes by fork + exec with a preexec_fn, which JAX
                # warns about once its backend is up; only that preexec_fn runs in the forked
                # child before exec. (Building the pool before JAX initialises avoids it.)
                warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
                ray.init(**kwargs)
        self._actor_class = ray.remote(num_cpus=1, num_gpus=0, max_restarts=0)(_RayWorker)
        self._renderer_ref = ray.put(pickle.dumps(renderer))
        self._actors: list[dict[str, Any]] = []
        self._finalizer = weakref.finalize(self, _end_ray, self._actors, self._owns_ray)
        try:
            for _ in range(self.workers):
                self._actors.append(self._spawn())
            self._await_ready()
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(a["pid"] for a in self._actors if a["pid"] is not None)

    def close(self) -> None:
        super().close()
        self._finalizer()

    def _spawn(self) -> dict[str, Any]:
        handle = self._actor_class.remote(self._renderer_ref)
        # "queue": the actor's submitted tasks in order, object ref -> (call, chunk)
        return {"handle": handle, "pid": None, "pid_ref": handle.pid.remote(),
                "queue": collections.OrderedDict()}

    def _replace(self, actor) -> None:
        try:
            self._ray.kill(actor["handle"], no_restart=True)
        except Exception:  # already gone
            pass
        self._actors[self._actors.index(actor)] = self._spawn()

    def _await_ready(self) -> None:
        for actor in self._actors:
            if actor["pid"] is None:
                try:
                    actor["pid"] = self._ray.get(actor["pid_ref"], timeout=STARTUP_TIMEOUT_S)
                except self._ray.exceptions.GetTimeoutError:
                    raise RenderError(
                        f"A Ray render actor of renderer {self.name!r} did not start within "
                        f"{STARTUP_TIMEOUT_S:g} s; each asks for one CPU: ask for no more workers "
                        f"than the cluster's CPUs ({self._ray.cluster_resources().get('CPU')}).",
                        renderer=self.name,
                    ) from None
                except self._ray.exceptions.RayError as err:
                    raise RenderError(
                        f"A Ray render actor could not build renderer {self.name!r}: make its "
                        "class importable on the cluster's workers (module level, installed or "
                        "shipped with a runtime_env).",
                        renderer=self.name,
                    ) from err

    def _run(self, scenes, chunks, n, seed):
        ray = self._ray
        self._await_ready()
        call = next(self._calls)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        progress = _Progress(chunks)
        while not progress.finished():
            self._submit(scenes, progress, call)
            owner = {ref: a for a in self._actors for ref in a["queue"]}
            ready = _wait_until(lambda t, refs=list(owner): ray.wait(refs, num_returns=1, timeout=t)[0], deadline)
            if not ready:  # past the deadline; busy actors of earlier calls are late too
                busy = [a for a in self._actors if a["queue"]]
                running = [next(iter(a["queue"].values())) for a in busy]
                late = [chunk for c, chunk in running if c == call] or list(progress.pending)
                for a in busy:
                    self._replace(a)
                raise self._timed_out(late, n, seed, [a["pid"] for a in busy])
            a = owner[ready[0]]
            try:
                self._collect(a, ready[0], None, scenes, progress, call, n, seed)
            except ray.exceptions.RayError as err:  # the actor died; a renderer's own
                # exceptions come back as (False, ...). Keep what it finished before dying;
                # the rest of its queue died with it, the lowest of those chunks is named.
                lost = [c for k, c in a["queue"].values() if k == call]
                for ref in list(a["queue"]):
                    try:
                        self._collect(a, ref, 0, scenes, progress, call, n, seed)
                        lost = [c for c in lost if c.index not in progress.outs]
                    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                        pass
                self._replace(a)
                if lost:  # Ray may fail a finished task whose reply the actor's death cut off
                    lowest = min(lost, key=lambda c: c.index)
                    how = type(err).__name__
                    progress.fail(lowest, self._died(lost, n, seed, a["pid"], how), err)
        return progress.result()

    def _collect(self, actor, ref, timeout, scenes, progress, call, n, seed) -> None:
        """Reads one finished task of ``actor`` into ``progress`` (raises Ray's errors)."""
        ok, payload = self._ray.get(ref, timeout=timeout)
        got_call, chunk = actor["queue"].pop(ref)
        if got_call != call:
            return  # a chunk of an earlier call that failed or was interrupted
        if ok:
            progress.outs[chunk.index] = payload
        else:
            error = self._raised(chunk, n, seed, scenes, payload)
            progress.fail(chunk, error, RemoteTraceback(payload[2]))

    def _submit(self, scenes, progress: _Progress, call: int) -> None:
        """Tops up every actor's queue to RAY_QUEUE_DEPTH tasks, one round of actors at a time."""
        for depth in range(1, RAY_QUEUE_DEPTH + 1):
            for a in self._actors:
                if len(a["queue"]) >= depth:
                    continue
                chunk = progress.next_chunk()
                if chunk is None:
                    return
                part = {k: v[chunk.start:chunk.stop] for k, v in scenes.items()}
                a["queue"][a["handle"].render.remote(part, chunk.seed)] = (call, chunk)


# --------------------------------------------------------------------------- factory


def make_render_pool(
    renderer,
    *,
    workers: int = 1,
    backend: str | None = None,
    address: str | None = None,
    timeout: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> RenderPool:
    """Builds a render pool: create it once, reuse it across steps, close it at the end.

    Args:
      renderer: a :class:`~autosim_jax.schema.Renderer`; for ``"process"`` and ``"ray"`` it
        must be picklable, its class importable by a fresh Python process. It should be a
        deterministic function of ``(scenes, seed)``.
      workers: number of worker processes or Ray actors (1 for ``"serial"``).
      backend: ``"serial"``, ``"process"`` or ``"ray"``; ``None`` picks ``"serial"`` for one
        worker without a timeout and ``"process"`` otherwise.
      address: for ``"ray"``, the cluster to connect to (``ray.init(address=...)``, e.g.
        ``"auto"`` or ``"ray://head:10001"``); ``None`` starts a local Ray instance. If Ray
        is already initialised the pool uses that connection and leaves it open at close.
        With JAX on a GPU, call ``ray.init`` (or build the pool) before JAX initialises its
        backend.
      timeout: seconds one batch may take before it fails with a :class:`RenderError` and
        the workers still rendering are killed and replaced; ``None`` waits for ever. For a
        timeout around serial rendering use ``backend="process", workers=1``.
      chunk_size: scenes per renderer call; part of the seeding (see the module docstring):
        keep the default to reproduce a :class:`~autosim_jax.simulator.Simulator` without a
        pool.

    Returns:
      A :class:`RenderPool` with ``render(scenes, seed) -> (inputs, labels)`` and ``close()``;
      it is also a context manager.

    Raises:
      ValueError: for a bad option or an unpicklable renderer, naming the fix.
      ImportError: for ``"ray"`` without Ray installed.

    References:
      Paper Algorithm 1, line 2: rendering ``D_train ~ p_psi(zeta)``, the step's main cost.

    Example:
      >>> from autosim_jax.renderers import GlyphRenderer
      >>> with make_render_pool(GlyphRenderer(), backend="serial") as pool:
      ...     x, y = pool.render(GlyphRenderer().example_scenes(3, seed=0), seed=1)
      >>> x.shape, y.shape
      ((3, 8, 8, 1), (3,))
    """
    if not _positive_int(workers):
        raise ValueError(f"make_render_pool: workers must be a positive int, got {workers!r}.")
    if not _positive_int(chunk_size):
        raise ValueError(
            f"make_render_pool: chunk_size must be a positive int, got {chunk_size!r} (the default "
            f"{DEFAULT_CHUNK_SIZE} reproduces the simulator's serial renders)."
        )
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(
            f"make_render_pool: timeout must be a positive number of seconds or None, got "
            f"{timeout!r}."
        )
    if backend is None:
        backend = "serial" if workers == 1 and timeout is None else "process"
    if backend not in BACKENDS:
        raise ValueError(f"make_render_pool: backend must be one of {BACKENDS}, got {backend!r}.")
    if address is not None and backend != "ray":
        raise ValueError(
            f"make_render_pool: address={address!r} is a Ray cluster's address; pass "
            "backend='ray' with it."
        )
    if backend == "serial":
        if workers != 1:
            raise ValueError(
                f"make_render_pool: backend='serial' has one worker, got workers={workers}; use "
                "backend='process' (or 'ray') for more."
            )
        if timeout is not None:
            raise ValueError(_SERIAL_TIMEOUT)
        return SerialPool(renderer, chunk_size=int(chunk_size))
    try:
        pickle.dumps(renderer)
    except Exception as err:
        name = getattr(renderer, "name", type(renderer).__name__)
        raise ValueError(
            _NOT_PICKLABLE.format(renderer=name, error=err, backend=backend)
        ) from err
    options = {"workers": int(workers), "chunk_size": int(chunk_size), "timeout": timeout}
    if backend == "process":
        return ProcessPool(renderer, **options)
    return RayPool(renderer, address=address, **options)
