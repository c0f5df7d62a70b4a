"""Jobs in spawned processes of their own, a few at a time, that can be stopped.

``autosim compare --jobs`` and the benchmarks' ``--jobs`` run whole experiments side by side,
each in a process of its own: its device memory is freed when it ends, and it may start a
render pool of its own (a daemonic ``multiprocessing.Pool`` worker may not). A job that is
still running when the caller stops (a deadline, an error, Ctrl-C) is killed, and the caller
returns at once.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: with ``max_tasks_per_child=1`` it
starts a replacement worker each time a job ends, and a replacement started after the caller
killed the workers it could see waits for work for ever; the interpreter's exit then joins it
(session 52: ``psi_learning.py --deadline`` wrote its summary and never exited). Here there is
one process per job and the parent holds every one of them.

Example (``fn`` must be importable by the spawned process, as for any spawn):
  >>> import operator
  >>> sorted(value for _, ok, value in map_in_processes(operator.neg, [1, 2, 3], processes=2))
  [-3, -2, -1]
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .render_pool import _how_it_died, _wait_until

# How long a stopped job may take to end before it is killed (its render workers end on their own
# when their connection to it closes).
_GRACE_S = 2.0


def _child(conn, fn: Callable[[Any], Any], item: Any) -> None:
    # Several jobs share a GPU: each takes memory as it needs it instead of JAX's default 75% per
    # process. Set before ``fn`` imports JAX.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        outcome = (True, fn(item))
    except BaseException as err:  # noqa: BLE001 - the parent names the job and decides
        outcome = (False, _failure(err))
    try:
        conn.send(outcome)
    except Exception as err:  # noqa: BLE001 - the value cannot be pickled
        conn.send((False, _failure(err)))
    conn.close()


def _failure(err: BaseException) -> tuple[str, str]:
    # (the error as the job raised it, the traceback): callers print the first, log the second
    return f"{type(err).__name__}: {err}", traceback.format_exc()


def _stop(process) -> None:
    process.terminate()
    process.join(_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join()


def map_in_processes(fn: Callable[[Any], Any], items: Iterable[Any], *, processes: int,
                     deadline: float | None = None) -> Iterator[tuple[int, bool, Any]]:
    """Yields ``(index, ok, value)`` for each of ``items`` as its job ends, in the order they end.

    ``fn(items[index])`` runs in a spawned process of its own, at most ``processes`` at once.
    ``ok`` is True and ``value`` what ``fn`` returned, or ``ok`` is False and ``value`` is
    ``(error, traceback)``: the job's exception as ``"Type: message"`` and its traceback, or twice
    a line saying how its process died (a signal, an exit code).

    ``deadline`` (seconds from the first call to ``next``; ``None``: no limit): the jobs still
    running then are killed and the iteration ends; jobs not yet started never start. The caller
    tells the unfinished by the indices it did not receive. Closing the iterator early (``break``,
    an exception in the caller, Ctrl-C) kills the running jobs the same way.

    Raises:
      ValueError: ``processes`` below 1.
    """
    if processes < 1:
        raise ValueError(f"map_in_processes: processes={processes}; pass at least 1")
    context = multiprocessing.get_context("spawn")
    waiting = list(enumerate(items))[::-1]  # popped from the end: in order
    running: dict[Any, tuple[int, Any]] = {}  # the parent's end of each job's pipe -> (index, process)
    end = None if deadline is None else time.monotonic() + deadline
    try:
        while waiting or running:
            while waiting and len(running) < processes:
                index, item = waiting.pop()
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(send, fn, item), name=f"job-{index}")
                process.start()
                send.close()  # the child's end: once the child is gone, receive reads EOF
                running[receive] = (index, process)
            ready = _wait_until(lambda timeout: multiprocessing.connection.wait(list(running), timeout), end)
            if not ready:
                return  # the deadline
            for conn in ready:
                index, process = running.pop(conn)
                try:
                    ok, value = conn.recv()
                except EOFError:
                    process.join()
                    died = f"the job's process died before it returned ({_how_it_died(process.exitcode)})"
                    ok, value = False, (died, died)
                conn.close()
                process.join()
                yield index, ok, value
    finally:
        for conn, (_, process) in running.items():
            _stop(process)
            conn.close()
