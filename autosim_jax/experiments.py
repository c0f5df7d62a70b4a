"""Named experiments: a renderer, a psi space with a deliberately poor start, a model and data.

Experiments are data, not algorithms: each one builds an :class:`ExperimentSetup` that
:func:`~autosim_jax.make_autosimulate` (and later the baselines) consume unchanged.

* ``clevr-seg`` (paper Section 5.1): semantic segmentation of sphere / cube / cylinder with
  the built-in CLEVR-style renderer (or Mitsuba 3). The validation and test sets are
  rendered once from a fixed *target* configuration that the learner never sees, with
  different seeds; the metric is mean IoU. The start is dark, noisy, low-resolution, with
  objects crowded in a corner and nearly all spheres.
* ``digits-sim2real`` (the sim-to-real setting of Section 5.2): digit classification from
  glyphs rendered with matplotlib's fonts; validation and test are the two halves of
  scikit-learn's *real* handwritten digits; the metric is accuracy. The start is small,
  blurred, noisy, strongly rotated glyphs with a class prior skewed to one digit.

Example:
  >>> sorted(EXPERIMENTS)
  ['clevr-seg', 'digits-sim2real']
  >>> get_experiment("digits-sim2real").renderers
  ('glyphs',)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .distributions import from_schema
from .models import SmallCNN, UNet
from .renderers import get_renderer, load_real_digits
from .simulator import Simulator
from .tasks import Task, classification_task, segmentation_task
from .training import train_epochs


class ExperimentSetup(NamedTuple):
    """Everything one run needs (see :func:`~autosim_jax.make_autosimulate`)."""

    simulator: Simulator
    model: nnx.Module
    task: Task
    val_data: tuple[np.ndarray, np.ndarray]
    test_data: tuple[np.ndarray, np.ndarray]
    options: dict[str, Any]  # keyword arguments of make_autosimulate at CPU size
    iterations: int  # default number of outer iterations


class Experiment(NamedTuple):
    name: str
    description: str
    renderers: tuple[str, ...]  # valid renderer names; the first is the default
    build: Callable[..., ExperimentSetup]  # build(*, renderer, seed) -> ExperimentSetup


# ----------------------------------------------------------------------------- clevr-seg

CLEVR_IMAGE_SIZE = 32
CLEVR_EVAL_IMAGES = 48

# The configuration the validation and test images come from (never shown to the learner).
CLEVR_TARGET = {
    "ambient": {"loc": 0.45, "scale": 0.05},
    "key_light": {"loc": 1.2, "scale": 0.1},
    "back_light": {"loc": 0.4, "scale": 0.05},
    "spp": {"probs": (0.01, 0.01, 0.2, 0.58, 0.2)},
    "bounces": {"probs": (0.01, 0.7, 0.28, 0.01)},
    "resolution": {"probs": (0.01, 0.01, 0.49, 0.48, 0.01)},
    "num_objects": {"probs": (0.01, 0.3, 0.39, 0.3)},
    "position": {"loc": 0.0, "scale": 1.2},
    "shape": {"probs": (1 / 3, 1 / 3, 1 / 3)},
    "size": {"probs": (0.5, 0.5)},
}
# A deliberately poor start: dark, 1 spp, 32 px, a corner, almost only spheres.
CLEVR_START = {
    "ambient": {"loc": 0.08, "scale": 0.03},
    "key_light": {"loc": 0.3, "scale": 0.1},
    "back_light": {"loc": 0.05, "scale": 0.03},
    "spp": {"probs": (0.8, 0.05, 0.05, 0.05, 0.05)},
    "bounces": {"probs": (0.85, 0.05, 0.05, 0.05)},
    "resolution": {"probs": (0.8, 0.05, 0.05, 0.05, 0.05)},
    "num_objects": {"probs": (0.85, 0.05, 0.05, 0.05)},
    "position": {"loc": 2.2, "scale": 0.3},
    "shape": {"probs": (0.9, 0.05, 0.05)},
}


def _render_fixed_set(simulator: Simulator, psi, n: int, seed: int):
    """Renders a fixed evaluation set from ``psi`` (numpy, on the host)."""
    scenes = simulator.distribution.sample(jax.random.PRNGKey(seed), psi, n)
    return simulator.render_numpy(jax.tree.map(np.asarray, scenes), seed)


def build_clevr_seg(*, renderer: str = "clevr", seed: int = 0) -> ExperimentSetup:
    """The ``clevr-seg`` experiment at CPU size (32 px images, a UNet of 8 convolutions)."""
    render = get_renderer(renderer, image_size=CLEVR_IMAGE_SIZE)
    target = Simulator(from_schema(render.schema, CLEVR_TARGET), render)
    psi_target = target.distribution.init()
    # Fixed seeds: the validation and test sets do not depend on the run's seed.
    val = _render_fixed_set(target, psi_target, CLEVR_EVAL_IMAGES, seed=1001)
    test = _render_fixed_set(target, psi_target, CLEVR_EVAL_IMAGES, seed=2002)
    simulator = Simulator(from_schema(render.schema, CLEVR_START), render)
    model = UNet(in_channels=3, num_classes=4, base_channels=8, rngs=nnx.Rngs(seed))
    # Curvature on a quarter of the batch with 5 CG iterations: on 2 CPU cores a full
    # 32-image, 10-iteration Gauss-Newton solve of the UNet costs ~4 s per step, this ~0.5 s.
    options = dict(
        dataset_size=32, batch_size=16, finetune_epochs=2, inner_optimizer=optax.adam(3e-3),
        outer_optimizer=optax.adam(0.1), damping=1e-2, curvature="gauss_newton", curvature_batch_size=8,
        cg_maxiter=5, cg_tol=1e-3,
    )
    return ExperimentSetup(simulator, model, segmentation_task(4), val, test, options, iterations=40)


# ----------------------------------------------------------------------- digits-sim2real

DIGITS_START = {
    "digit": {"probs": (0.05, 0.55, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05)},
    "size": {"loc": 0.6, "scale": 0.05},
    "rotation": {"loc": 25.0, "scale": 5.0},
    "blur": {"loc": 0.7, "scale": 0.1},
    "noise": {"loc": 1.2, "scale": 0.2},
    "contrast": {"loc": 0.6, "scale": 0.05},
    # Narrow (not poor) starts for the geometric nuisances: the field ranges are wide.
    "shift": {"loc": 0.0, "scale": 0.03},
    "shear": {"loc": 0.0, "scale": 0.1},
    "stroke": {"loc": 0.015, "scale": 0.01},
}


def build_digits_sim2real(*, renderer: str = "glyphs", seed: int = 0) -> ExperimentSetup:
    """The ``digits-sim2real`` experiment: glyphs to real handwritten digits (8x8)."""
    render = get_renderer(renderer)
    simulator = Simulator(from_schema(render.schema, DIGITS_START), render)
    model = SmallCNN(in_channels=1, num_classes=10, channels=16, rngs=nnx.Rngs(seed))
    options = dict(
        dataset_size=256, batch_size=32, finetune_epochs=3, inner_optimizer=optax.adam(3e-3),
        outer_optimizer=optax.adam(0.1), damping=1e-2, curvature="gauss_newton", cg_maxiter=10, cg_tol=1e-3,
    )
    return ExperimentSetup(
        simulator, model, classification_task(), load_real_digits("validation"), load_real_digits("test"),
        options, iterations=60,
    )


EXPERIMENTS: dict[str, Experiment] = {
    "clevr-seg": Experiment(
        "clevr-seg",
        "CLEVR-style segmentation (sphere/cube/cylinder), validation rendered from a hidden target; mIoU",
        ("clevr", "mitsuba"),
        build_clevr_seg,
    ),
    "digits-sim2real": Experiment(
        "digits-sim2real",
        "digit glyphs rendered from fonts, validated on scikit-learn's real handwritten digits; accuracy",
        ("glyphs",),
        build_digits_sim2real,
    ),
}


def get_experiment(name: str) -> Experiment:
    """The registered experiment called ``name``.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"Unknown experiment {name!r}; valid choices are {sorted(EXPERIMENTS)}.") from None


def make_assessor(setup: ExperimentSetup, *, num_images: int, epochs: int) -> Callable[..., dict[str, float]]:
    """``assess(psi, seed=0)``: trains a *fresh* copy of the task model on ``num_images`` from ``psi``.

    This is the fair comparison of two simulator settings: the same model, initialisation,
    image budget and training schedule, only the data distribution differs. (The metric
    logged during AutoSimulate is that of a model warm-started across steps, which improves
    with training time whatever psi does.) The renderer call, the training loop and the
    metric are jitted once here, so assessing many psi (``autosim compare`` assesses every
    run at several points) compiles once.

    Returns:
      ``assess(psi, seed)`` -> ``{"val_metric": ..., "test_metric": ...}`` of the trained
      model; ``seed`` picks the rendered images (``PRNGKey(seed)``) and the minibatch order
      (``PRNGKey(seed + 1)``), the model's initialisation is the setup's.

    Example:
      >>> setup = get_experiment("digits-sim2real").build(seed=0)  # doctest: +SKIP
      >>> assess = make_assessor(setup, num_images=1024, epochs=5)  # doctest: +SKIP
      >>> assess(setup.simulator.distribution.init(), seed=0)  # doctest: +SKIP
      {'val_metric': 0.17..., 'test_metric': 0.17...}
    """
    graphdef, theta0 = nnx.split(nnx.clone(setup.model), nnx.Param)
    optimizer = setup.options["inner_optimizer"]

    def loss(theta, x, y):
        return jnp.mean(setup.task.per_sample_loss(nnx.merge(graphdef, theta)(x), y))

    simulate = jax.jit(setup.simulator.simulate, static_argnums=2)
    train = jax.jit(functools.partial(train_epochs, loss, optimizer, batch_size=setup.options["batch_size"], epochs=epochs))
    metric = jax.jit(lambda th, x, y: setup.task.metric(nnx.merge(graphdef, th)(x), y))

    def assess(psi, seed: int = 0) -> dict[str, float]:
        _, inputs, labels = simulate(jax.random.PRNGKey(seed), psi, num_images)
        theta, _, _ = train(theta0, optimizer.init(theta0), inputs, labels, jax.random.PRNGKey(seed + 1))
        return {
            "val_metric": float(metric(theta, *setup.val_data)),
            "test_metric": float(metric(theta, *setup.test_data)),
        }

    return assess


def assess_psi(setup: ExperimentSetup, psi, *, num_images: int, epochs: int, seed: int = 0) -> dict[str, float]:
    """One assessment of ``psi`` (see :func:`make_assessor`, which compiles once for many).

    Returns:
      ``{"val_metric": ..., "test_metric": ...}`` of a fresh model trained on ``psi``'s images.
    """
    return make_assessor(setup, num_images=num_images, epochs=epochs)(psi, seed)
