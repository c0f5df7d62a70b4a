"""The 1-D toy shared by the API tests: scenes x, the "renderer" r(x) = (x, x^2).

(The CLI tests write their own module of it, tests/conftest.py, since subprocesses import it
by name from a temporary directory.)
"""

import numpy as np

from autosim_jax.schema import Field, OutputSpec, SceneSchema


class SquareRenderer:
    """A deterministic host 'renderer' r(x) = (x, x^2)."""

    name = "square"
    schema = SceneSchema((Field.continuous("x", doc="the input value"),))
    inputs_spec = OutputSpec((1,), np.float32)
    labels_spec = OutputSpec((1,), np.float32)

    def render(self, scenes, seed):
        x = np.asarray(scenes["x"], np.float32)[:, None]
        return x.copy(), x**2
