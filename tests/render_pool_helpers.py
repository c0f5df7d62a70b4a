"""Toy renderers for tests/test_render_pool.py, in a module of their own so that spawned
worker processes and Ray actors can import them (tests/ is on sys.path under pytest; spawned
workers inherit the parent's sys.path, and a Ray pool started by the test passes it on as
PYTHONPATH).

``NoisyRenderer`` draws ``x + noise(seed)``; a scene whose ``x`` equals one of the trigger
values makes the call misbehave, so that a test can aim a failure at one chunk of a batch.
"""

import ctypes
import os
import signal
import time

import numpy as np

from autosim_jax.schema import Field, OutputSpec, SceneSchema

SCHEMA = SceneSchema(
    (
        Field.continuous("x", -1000.0, 1000.0, doc="the value drawn"),
        Field.categorical("kind", choices=(0, 1, 2), doc="copied to the label"),
    )
)

RAISE = 13.0  # the renderer raises ValueError (so does any x above RAISE_ABOVE)
RAISE_ABOVE = 900.0
KILL = 66.0  # the worker process kills itself with SIGKILL
SEGFAULT = 77.0  # the worker process reads address 0
HANG = 99.0  # the renderer sleeps for an hour
SLOW = 55.0  # the renderer sleeps for half a second first (then may still misbehave)


def _misbehave(x: np.ndarray) -> None:
    if np.any(x == SLOW):
        time.sleep(0.5)
    if np.any((x == RAISE) | (x > RAISE_ABOVE)):
        raise ValueError("a scene asked to fail")
    if np.any(x == KILL):
        os.kill(os.getpid(), signal.SIGKILL)
    if np.any(x == SEGFAULT):
        ctypes.string_at(0)
    if np.any(x == HANG):
        time.sleep(3600)


class NoisyRenderer:
    """inputs ``x + N(0, 1)`` drawn from the seed, shape (3,); labels the ``kind`` index."""

    name = "noisy"
    schema = SCHEMA
    inputs_spec = OutputSpec((3,), np.float32)
    labels_spec = OutputSpec((), np.int32)

    def render(self, scenes, seed):
        x = np.asarray(scenes["x"], np.float64)
        _misbehave(x)
        noise = np.random.default_rng(seed).normal(size=(x.shape[0], 3))
        return (x[:, None] + noise).astype(np.float32), np.asarray(scenes["kind"], np.int32)


def scenes(n: int, *, seed: int = 0, **triggers: float) -> dict[str, np.ndarray]:
    """``n`` valid scenes; ``scenes(n, at_5=KILL)`` puts a trigger value at scene 5."""
    rng = np.random.default_rng(seed)
    out = {"x": rng.uniform(-5.0, 5.0, n), "kind": rng.integers(0, 3, n)}
    for name, value in triggers.items():
        out["x"][int(name.removeprefix("at_"))] = value
    return out


class ThreadEnvRenderer(NoisyRenderer):
    """inputs: the worker's OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and
    render_threads() (-1: unset)."""

    name = "thread-env"
    inputs_spec = OutputSpec((4,), np.float32)

    def render(self, scenes, seed):
        n = len(scenes["x"])
        from autosim_jax.render_pool import render_threads

        values = [float(os.environ.get(v, -1)) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")]
        values.append(float(render_threads() or -1))
        return np.tile(np.asarray(values, np.float32), (n, 1)), np.asarray(scenes["kind"], np.int32)
