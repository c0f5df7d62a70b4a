"""autosim_jax.processes.map_in_processes: results, errors, deaths, the deadline, and exit.

The jobs are builtins (``operator.neg``, ``int``, ``time.sleep``, ``os._exit``), so that the
spawned processes import nothing from this file.
"""

import multiprocessing
import operator
import os
import subprocess
import sys
import textwrap
import time

import pytest

from autosim_jax.processes import map_in_processes


def test_every_job_once_with_its_index():
    out = {i: (ok, v) for i, ok, v in map_in_processes(operator.neg, [1, 2, 3], processes=2)}
    assert out == {0: (True, -1), 1: (True, -2), 2: (True, -3)}
    assert multiprocessing.active_children() == []


def test_an_error_and_a_death_are_reported_and_the_rest_run():
    out = {i: (ok, v) for i, ok, v in map_in_processes(int, ["7", "x", "8"], processes=3)}
    assert out[0] == (True, 7) and out[2] == (True, 8)
    ok, (error, text) = out[1]
    assert not ok and error.startswith("ValueError: invalid literal")  # the job's own exception
    assert "Traceback" in text and error in text  # and its traceback
    ((_, ok, (error, text)),) = map_in_processes(os._exit, [3], processes=1)
    assert not ok and "exit code 3" in error and error == text


def test_the_deadline_kills_running_jobs_and_starts_no_more():
    t0 = time.monotonic()
    out = list(map_in_processes(time.sleep, [0, 60, 60], processes=2, deadline=15))
    assert [(i, ok) for i, ok, _ in out] == [(0, True)]  # job 2 started after job 0 ended; both cut
    assert time.monotonic() - t0 < 15 + 10  # the deadline plus the kill's grace, not 60 s
    assert multiprocessing.active_children() == []


def test_the_interpreter_exits_after_a_deadline():
    # Session 52: concurrent.futures' executor with max_tasks_per_child=1 started a replacement
    # worker after the first job ended; killed at the deadline were only the workers it held then,
    # and the interpreter's exit waited on the replacement for ever.
    script = textwrap.dedent("""
        import time
        from autosim_jax.processes import map_in_processes
        if __name__ == "__main__":
            print(sorted(i for i, ok, _ in map_in_processes(time.sleep, [0, 60], processes=2, deadline=10)))
    """)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0]"
    assert time.monotonic() - t0 < 45


def test_closing_early_kills_the_running_jobs():
    jobs = map_in_processes(time.sleep, [0, 60], processes=2)
    assert next(jobs)[:2] == (0, True)
    jobs.close()  # as a caller's break or exception would
    assert multiprocessing.active_children() == []


def test_processes_below_one_is_refused():
    with pytest.raises(ValueError, match="processes=0"):
        next(map_in_processes(operator.neg, [1], processes=0))
