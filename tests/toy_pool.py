"""The CLI tests' toy experiment with a renderer whose output depends on the seed, for render pools.

conftest's toy renders ``(x, x^2)`` exactly, so any pool would reproduce it; this renderer adds
noise drawn from the chunk's seed to the inputs, so a run is the same only if every chunk gets
the same seed whatever the number of workers. Named ``toy_pool:TOY_POOL`` (``SPEC``); the toy's
module must be importable first (the ``toy_path`` fixture). Spawned render workers import this
module from tests/ (they inherit sys.path; a subprocess needs tests/ on PYTHONPATH).

``AUTOSIM_TOY_HANG_AFTER=N`` in the environment makes a process's renderer hang (sleep an
hour) from its (N + 1)-th call on: with one worker and K = 32 (four chunks of 8), ``8`` hangs
the first chunk of step 3, ``0`` the first chunk of all.
"""

import dataclasses
import itertools
import os
import time

import numpy as np

from autosim_jax.experiments import Experiment
from autosim_jax.schema import Field, OutputSpec, SceneSchema
from autosim_jax.simulator import Simulator

SPEC = "toy_pool:TOY_POOL"
HANG_AFTER = "AUTOSIM_TOY_HANG_AFTER"
NOISE = 0.05

_calls = itertools.count(1)  # render calls in this process


@dataclasses.dataclass(frozen=True)  # equal across builds: one pool serves a whole comparison
class NoisySquareRenderer:
    """inputs ``x + 0.05 N(0, 1)`` drawn from the seed, labels ``x^2``."""

    name = "noisy-square"
    schema = SceneSchema((Field.continuous("x", doc="the input value"),))
    inputs_spec = OutputSpec((1,), np.float32)
    labels_spec = OutputSpec((1,), np.float32)

    def render(self, scenes, seed):
        hang_after = os.environ.get(HANG_AFTER)
        if hang_after is not None and next(_calls) > int(hang_after):
            time.sleep(3600)
        x = np.asarray(scenes["x"], np.float32)[:, None]
        noise = NOISE * np.random.default_rng(seed).standard_normal(x.shape)
        return (x + noise).astype(np.float32), x**2


def build(*, renderer="noisy", seed=0):
    import autosim_toy_experiment

    setup = autosim_toy_experiment.build(seed=seed)
    simulator = Simulator(setup.simulator.distribution, NoisySquareRenderer())
    return setup._replace(simulator=simulator, assess_images=64, assess_epochs=5)


TOY_POOL = Experiment("toy-pool", "the toy with seed-dependent renders", ("noisy",), build)
