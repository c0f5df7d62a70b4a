"""The CLI tests' toy experiment (conftest's ``autosim_toy_experiment``) with a reference psi.

The reference is the validation data's own law (x ~ N(2, 0.3^2)), so the gap closed G is
defined; the assessment is small (64 images x 5 epochs) to keep the tests fast. Named as
``toy_reference:TOY_REF`` (``module:attr``); the toy's module must be importable first (the
``toy_path`` fixture).
"""

import numpy as np

from autosim_jax.distributions import NormalParams
from autosim_jax.experiments import Experiment

SPEC = "toy_reference:TOY_REF"


def build(*, renderer="square", seed=0, size="cpu"):  # one size: the benchmark scripts' jobs name it
    import autosim_toy_experiment

    if size != "cpu":
        raise ValueError(f"the toy has one size, cpu; got {size!r}")

    setup = autosim_toy_experiment.build(renderer=renderer, seed=seed)
    x = setup.simulator.distribution.init()["x"]
    reference = {"x": NormalParams(x.loc * 0 + 2.0, x.log_scale * 0 + np.float32(np.log(0.3)))}
    return setup._replace(reference_psi=reference, assess_images=64, assess_epochs=5)


TOY_REF = Experiment("toy-ref", "the toy with a reference psi", ("square",), build)
