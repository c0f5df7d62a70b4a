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
* ``clevr-det`` and ``digits-det`` (Section 5.2, Tables 3-4): object detection with psi one
  54-way categorical over 3 scenes x 9 locations x 2 render qualities; a CenterNet detector
  on the UNet, mAP@0.5 (:mod:`autosim_jax.detection`, ``docs/detection.md``).

Example:
  >>> sorted(EXPERIMENTS)
  ['clevr-det', 'clevr-seg', 'digits-det', 'digits-sim2real']
  >>> get_experiment("digits-sim2real").renderers
  ('glyphs',)
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from .autosimulate import LOSS_JUMP_FACTOR, AutoSimulate, make_autosimulate
from .config import AutoSimConfig
from .distributions import from_schema
from .inner import make_inner, split_model
from .models import SmallCNN, UNet
from .renderers import get_renderer, load_real_digits
from .simulator import Simulator
from .tasks import Task, classification_task, segmentation_task

SIZES = ("cpu", "gpu")


class ExperimentSetup(NamedTuple):
    """Everything one run needs (see :func:`~autosim_jax.make_autosimulate`)."""

    simulator: Simulator
    model: nnx.Module
    task: Task
    val_data: tuple[np.ndarray, np.ndarray]
    test_data: tuple[np.ndarray, np.ndarray]
    config: AutoSimConfig  # AutoSimulate's options for this experiment and size
    iterations: int  # default number of outer iterations
    assess_images: int  # images a fresh model is trained on to assess a psi
    assess_epochs: int  # epochs of that training
    reference_psi: Any = None  # the "good" psi of the gap-closed measure (None: not known)
    make_model: Callable[[int], nnx.Module] | None = None  # model_seed -> a model like `model` (other inits)
    # the experiment's own options where they differ from the learner's `config` (None: `config`): the
    # assessment's fresh models (inner optimiser, batch sizes; make_assessor) and the baselines'
    # evaluations in `autosim compare` train with them, so that a preset or a variant that tunes
    # AutoSimulate's learner (its K, minibatch, psi step) changes neither the assessment nor the baselines.
    assess_config: AutoSimConfig | None = None
    # random search's and BO's evaluation of a candidate in `autosim compare`: the (images, epochs) of
    # the model each trains from its initialisation (None: the learner's K and fine-tuning epochs). Set
    # where that default was measured blind, every candidate scoring the same (a model that predicts one
    # class scores the same whatever rendered its data): the comparison's default then gives the
    # baselines a reward that says something, at the cost of fewer evaluations in the same budget.
    baseline_evaluation: tuple[int, int] | None = None

    def base_config(self) -> AutoSimConfig:
        """``assess_config``, or ``config`` where that is ``None``: the options of everything in an
        experiment other than AutoSimulate's own learner (see the field's comment)."""
        return self.config if self.assess_config is None else self.assess_config

    def other_inits(self, model_seed: int, n: int | None = None) -> list[nnx.Module]:
        """The ``n - 1`` other initialisations of the model that ``AutoSimConfig.theta_reset_inits = n``
        cycles through (``make_autosimulate``'s ``reset_models``; ``n`` defaults to the config's):
        ``make_model(1000 j + model_seed)`` for ``j = 1 .. n - 1``, so that no two seeds' runs share
        one. ``[]`` for ``n = 1``.

        Example:
          >>> setup = get_experiment("digits-sim2real").build(seed=0)
          >>> [type(m).__name__ for m in setup.other_inits(0, 3)]
          ['SmallCNN', 'SmallCNN']
        """
        n = self.config.theta_reset_inits if n is None else n
        if n > 1 and self.make_model is None:
            raise ValueError(f"theta_reset_inits={n} needs other initialisations of the model, but this "
                             "ExperimentSetup has no make_model; pass make_model (model_seed -> a model like "
                             "`model`), or theta_reset_inits=1.")
        return [self.make_model(1000 * j + model_seed) for j in range(1, n)]

    def make_autosimulate(self, seed: int = 0, config: AutoSimConfig | None = None, *,
                          simulator: Simulator | None = None, model: nnx.Module | None = None,
                          **kwargs: Any) -> AutoSimulate:
        """:func:`~autosim_jax.make_autosimulate` on this experiment: its simulator, model, task and
        validation set, ``config`` (default: the experiment's), and as ``reset_models`` the
        :meth:`other_inits` of model seed ``seed`` that the count of initialisations asks for
        (``theta_reset_inits`` from ``kwargs`` where given there, else ``config``'s), so that
        ``theta_reset_inits > 1`` needs no list built by hand.

        Args:
          seed: the model seed of the other initialisations (``other_inits(seed, n)``); pass the
            run's seed, so that no two seeds' runs share one. It does not seed ``init``.
          config: an :class:`~autosim_jax.AutoSimConfig` (default: ``self.config``).
          simulator: another simulator in place of ``self.simulator`` (one with a render pool,
            another start distribution, ...).
          model: another model in place of ``self.model``. The other initialisations still come
            from ``self.make_model`` (right for ``make_model(i)`` with ``seed=i``); a model of
            another structure with ``theta_reset_inits > 1`` needs its own ``reset_models=``.
          **kwargs: passed on to :func:`~autosim_jax.make_autosimulate`: ``devices``, fields of
            ``config`` to change (``approximation="linear"``, ...), and ``reset_models``, which
            replaces the other initialisations built here (give ``theta_reset_inits - 1`` of them).

        Returns:
          An :class:`~autosim_jax.AutoSimulate`.

        Raises:
          ValueError: as :func:`~autosim_jax.make_autosimulate`, and for ``theta_reset_inits > 1``
            on a setup without ``make_model`` (:meth:`other_inits`).

        Example:
          >>> setup = get_experiment("digits-sim2real").build(seed=0)
          >>> config = setup.config.replace(theta_reset_inits=3)  # the model and 2 others of model seed 0
          >>> autosim = setup.make_autosimulate(0, config, approximation="linear")
          >>> autosim.config.theta_reset_inits, autosim.config.approximation
          (3, 'linear')
        """
        config = self.config if config is None else config
        if "reset_models" not in kwargs:  # the count make_autosimulate will check them against
            n = kwargs.get("theta_reset_inits", config.theta_reset_inits)
            kwargs["reset_models"] = self.other_inits(seed, n)
        return make_autosimulate(self.simulator if simulator is None else simulator,
                                 self.model if model is None else model, self.task, self.val_data,
                                 config, **kwargs)


class Experiment(NamedTuple):
    name: str
    description: str
    renderers: tuple[str, ...]  # valid renderer names; the first is the default
    build: Callable[..., ExperimentSetup]  # build(*, renderer, seed, size) -> ExperimentSetup


# ----------------------------------------------------------------------------- clevr-seg

# Every outer step fine-tunes a fresh model (AutoSimConfig.theta_reset_every = 1). Measured
# 2026-12-01 (docs/learning.md, "Co-adaptation"): with the model warm-started across steps,
# digits' class prior collapsed onto the start's dominant digit on 3 of 3 seeds (gpu size,
# G -1.70 +- 0.60 at 60 steps); with a fresh model per step it stayed spread and G was
# +2.06 +- 0.18 (clevr-seg gpu: +0.40 +- 0.13 against +0.13 +- 0.09).
_THETA_RESET_EVERY = 1

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


def _check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; valid choices are {list(SIZES)} (cpu: minutes on 2 cores).")
    return size


def build_clevr_seg(*, renderer: str = "clevr", seed: int = 0, size: str = "cpu", image_size: int | None = None,
                    base_channels: int | None = None) -> ExperimentSetup:
    """The ``clevr-seg`` experiment.

    ``size="cpu"``: 32 px images, a UNet of 8 base channels, K = 64 renders per step on which
    each step's fresh UNet is fine-tuned 16 epochs on minibatches of 16, 160 steps (10,240 images)
    with a psi step decaying as ``0.1 / (1 + t / 30)``, 48 validation / test images, assessments on
    2048 images (about 16 minutes on 2 cores); the fresh models and the baselines keep the options
    of the K = 256 preset before it (``assess_config``). ``size="gpu"``: the paper-scale setting of issue
    17: 64 px, a UNet of 32 base channels, K = 64 renders per step (each step's fresh UNet
    fine-tuned 4 epochs on minibatches of 16), 256 validation / test images, assessments on 2048
    images, 480 steps (30,720 images) of Adam fed each hypergradient's direction only
    (``outer_unit_norm=True``) with a psi step decaying as ``0.1 / (1 + t / 30)``; the fresh models
    that assess a psi and the baselines keep the options of the K = 256 preset before it
    (``assess_config``).

    ``image_size`` and ``base_channels`` replace the size's image side and UNet width and keep
    the rest of its setting (step options, validation set size, assessment budget): for
    studies of which part of a size decides what the step sees
    (``benchmarks/hypergradient_signal.py --image-size --base-channels``).

    Example:
      >>> setup = build_clevr_seg(size="cpu", image_size=16, base_channels=4)
      >>> setup.val_data[0].shape[1:3]
      (16, 16)
    """
    gpu = _check_size(size) == "gpu"
    default_size, n_eval = (64, 256) if gpu else (CLEVR_IMAGE_SIZE, CLEVR_EVAL_IMAGES)
    image_size = default_size if image_size is None else image_size
    base_channels = (32 if gpu else 8) if base_channels is None else base_channels
    for name, value, least in (("image_size", image_size, 8), ("base_channels", base_channels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"build_clevr_seg: {name}={value!r}; give an integer >= {least} (or None for the "
                             f"size's own).")
    if image_size % 2:
        raise ValueError(f"build_clevr_seg: image_size={image_size} is odd; the UNet halves the image once. Give "
                         "an even size, e.g. 32, 48 or 64.")
    render = get_renderer(renderer, image_size=image_size)
    target = Simulator(from_schema(render.schema, CLEVR_TARGET), render)
    psi_target = target.distribution.init()
    # Fixed seeds: the validation and test sets do not depend on the run's seed.
    val = _render_fixed_set(target, psi_target, n_eval, seed=1001)
    test = _render_fixed_set(target, psi_target, n_eval, seed=2002)
    simulator = Simulator(from_schema(render.schema, CLEVR_START), render)
    def make_model(model_seed: int) -> nnx.Module:
        return UNet(in_channels=3, num_classes=4, base_channels=base_channels, rngs=nnx.Rngs(model_seed))

    model = make_model(seed)
    if gpu:
        # The K = 256 preset of sessions 54-59 (`k256`, the fresh models' and baselines' options now):
        # Adam fed each hypergradient's direction only (outer_unit_norm) with the psi step decaying as
        # 0.1 / (1 + t / 60). With raw hypergradients the first steps' ones, up to 600x the later ones,
        # stay in Adam's second moment and hold the psi step at 1-5% of its rate on some seeds (session
        # 51). Over the preset's 120 steps (docs/learning.md, sessions 53-54; 4 fresh models per psi,
        # seeds 0-2) this closes G 0.87 +- 0.05 (0.83 / 0.85 / 0.93; two more draws of seeds 0-1 on
        # another card 0.83 / 0.89) against the raw default's 0.66 +- 0.07 (paired +0.21, ahead on 3 of 3
        # seeds), and 0.64 +- 0.15 at step 60 against 0.44; with seeds 3-4 (session 55) 0.80 +- 0.21
        # against 0.63 +- 0.08, ahead on 4 of 5 (seed 3, whose initialisation pushes the lights darker,
        # 0.43 against 0.52). In the head to head at its 30,720 images it ends above BO, random search
        # and LTS on every seed (session 55). Runs longer than the preset lose it again:
        # at 240 steps 0.66 +- 0.14 (the lights walk off after step 120, a push the noise gate passes)
        # against the raw default's 0.78 +- 0.15; so keep 120 steps or select (`--select-every`).
        # Each step's fresh theta starts from one of 8 initialisations in turn (theta_reset_inits), so
        # that no one initialisation's push (seed 3's darkens the lights, session 14) acts on every
        # step: over seeds 0-4 at 120 steps G 1.00 +- 0.20 (0.90 / 0.81 / 1.05 / 1.32 / 0.91; 4 new
        # fresh models per psi 0.93 +- 0.11, pooled every seed >= 0.80) against 0.80 +- 0.21 with the
        # model's own initialisation only (paired +0.20, seed 3 +0.89, the others -0.04 to +0.12;
        # docs/learning.md session 56). Its psi asks for more samples per pixel, as the target does,
        # so a step's render takes 2-4x as long by step 120.
        k256 = AutoSimConfig(dataset_size=256, batch_size=32, finetune_epochs=2, inner_learning_rate=3e-3,
                             outer_learning_rate=0.1, outer_unit_norm=True, outer_decay_steps=60,
                             curvature_batch_size=64, cg_maxiter=10, val_batch_size=64,
                             theta_reset_every=_THETA_RESET_EVERY, theta_reset_inits=8)
        # Since session 60: K = 64 renders a step, fine-tuned on minibatches of 16 for 4 epochs (the same
        # 16 Adam steps a psi step), four psi steps per image, the rate decaying over 30 steps instead of
        # 60. In the head to head (3 seeds, 30,720 images, 2 fresh models a point; benchmarks/results/
        # compare_clevr-seg_gpu_k64_decay30) it leads K = 256 by +0.053 / +0.048 / +0.066 / +0.017 val
        # mIoU after 1,920-15,360 images and is level after 30,720 (-0.004, s.e. 0.015; G 0.93 +- 0.08
        # against 0.94 +- 0.18), above BO, random search and LTS at every point, BO's best 2x sooner; with
        # seed 3 +0.064 / +0.059 / +0.078 / +0.050 / +0.001 over 4 seeds (docs/learning.md session 60).
        # At K = 64 with the rate decaying over 60 steps the lights walked off once psi's path (the sum
        # of its steps' RMS) passed 2.6-2.7 and it ended 0.033 behind; over 30 steps the whole run spends
        # 2.8-2.9. The fresh models and the baselines keep K = 256's options (assess_config).
        config = k256.replace(dataset_size=64, batch_size=16, finetune_epochs=4, outer_decay_steps=30)
        # The baselines' evaluation: the step's K = 256 renders x 2 epochs from the initialisation scores the
        # background only (0.2389 val mIoU on 49-60 of 60 of random search's and BO's candidates per seed in
        # the session-44 comparison, 3 seeds); 1,024 x 8 scores on 12 of 12 candidates (0.12-0.36, 3 s each)
        # and 2,048 x 8 on 12 of 12 (0.10-0.45, 7 s), 2 seeds on the H200; 1,024 x 8 leaves random search and
        # BO 15 candidates in the 15,360-image comparison where 2,048 x 8 leaves 7
        # (benchmarks/results/baseline_evaluation_gpu/).
        return ExperimentSetup(simulator, model, segmentation_task(4), val, test, config, iterations=480,
                               assess_images=2048, assess_epochs=8, reference_psi=psi_target, make_model=make_model,
                               assess_config=k256, baseline_evaluation=(1024, 8))
    # The K = 256 preset until session 61 (`k256`, the fresh models' and baselines' options now):
    # K = 256 renders per step, as at gpu size: with K = 32 the step saw a signal on the lights
    # only (the object count, shapes and resolution within noise at the start psi) and runs closed
    # G 0.03 +- 0.01; with K = 256 the count and shapes carry one at 32 px and 8 channels alike
    # (docs/learning.md session 30). Each step's fresh theta is fine-tuned 4 epochs (64 Adam
    # steps): 40 steps close 0.62 +- 0.24 on seeds 0-7, every seed >= 0.25, where 2 epochs close
    # 0.07 +- 0.62 on the same seeds (three below 0.01), and 120 steps 0.72 +- 0.12 on seeds 0-4
    # against 2 epochs' 0.36 +- 0.34 on seeds 0-2 (docs/learning.md session 31; about 9 s a step
    # on 2 CPU cores); 8 epochs are level with 4 (0.67 +- 0.20 on seeds 0-7, session 32) at nearly
    # twice the step's time. Assessed on 2048 images: on 512 start and reference lie
    # 0.058 mIoU apart, inside one assessment's noise; on 2048, 0.17 (session 29). Curvature on
    # 8 renders with 5 CG iterations: on 2 CPU cores a full 32-image, 10-iteration Gauss-Newton
    # solve of the UNet costs ~4 s per step, this ~0.5 s.
    k256 = AutoSimConfig(dataset_size=256, batch_size=16, finetune_epochs=4, inner_learning_rate=3e-3,
                         outer_learning_rate=0.1, damping=1e-2, curvature="gauss_newton", curvature_batch_size=8,
                         cg_maxiter=5, cg_tol=1e-3, theta_reset_every=_THETA_RESET_EVERY)
    # Since session 61, as at gpu size: K = 64 renders a step fine-tuned 16 epochs on minibatches of 16
    # (the same 64 Adam steps a psi step), four psi steps per image (160 for K = 256's 10,240 images),
    # the rate decaying as 0.1 / (1 + t / 30). In the cpu head to head (3 seeds, 2 fresh models a point;
    # benchmarks/results/compare_clevr-seg_cpu_k64_decay30) it leads K = 256 by +0.030 / +0.044 / +0.029 /
    # +0.023 val mIoU after 1,280 / 2,560 / 5,120 / 10,240 images (G 0.71 +- 0.35 against 0.43 +- 0.15),
    # is above BO, random search and LTS on every seed at every point and reaches BO's best >= 3.2x
    # sooner (K = 256: 0.8x). It costs 4x the fine-tuning per image: on 2 CPU cores 3.9 s a step against
    # K = 256's 4.5 s, about 10 min for the 160 steps against 3 (docs/learning.md session 61). The fresh
    # models and the baselines keep K = 256's options (assess_config).
    config = k256.replace(dataset_size=64, finetune_epochs=16, outer_decay_steps=30)
    # The baselines' evaluation: K = 256 renders x 4 epochs from the initialisation scores the background
    # only (0.2383 val mIoU for 4 of 5 of BO's candidates on seed 0, docs/learning.md session 40); the
    # assessment's 2,048 x 10 scores (BO G 0.08 +- 0.11 at 10,240 images, 3 seeds).
    return ExperimentSetup(simulator, model, segmentation_task(4), val, test, config, iterations=160,
                           assess_images=2048, assess_epochs=10, reference_psi=psi_target, make_model=make_model,
                           assess_config=k256, baseline_evaluation=(2048, 10))


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


# A hand-set good configuration, the reference of digits' gap-closed measure: every digit,
# large upright glyphs with a moderate stroke, mild blur and noise, full contrast, the small
# shifts and shears of handwriting. Not learned: set by looking at the real digits.
DIGITS_REFERENCE = {
    "digit": {"probs": (0.1,) * 10},
    "size": {"loc": 0.75, "scale": 0.08},
    "rotation": {"loc": 0.0, "scale": 10.0},
    "blur": {"loc": 0.8, "scale": 0.15},
    "noise": {"loc": 0.5, "scale": 0.2},
    "contrast": {"loc": 0.9, "scale": 0.05},
    "shift": {"loc": 0.0, "scale": 0.05},
    "shear": {"loc": 0.0, "scale": 0.15},
    "stroke": {"loc": 0.04, "scale": 0.015},
}


def build_digits_sim2real(*, renderer: str = "glyphs", seed: int = 0, size: str = "cpu") -> ExperimentSetup:
    """The ``digits-sim2real`` experiment: glyphs to real handwritten digits (8x8).

    The real digits are 8x8 whatever the size; ``size="cpu"`` renders K = 64 glyphs per step
    in minibatches of 8 for 240 steps with a psi step decaying as ``0.1 / (1 + t / 120)``, Adam's
    ``outer_beta2=0.99`` fed each hypergradient's direction only (``outer_unit_norm=True``) and the
    noise gate on its first 60 updates (``outer_snr_gate=2``, ``outer_snr_gate_steps=60``), while
    its assessment and ``autosim compare``'s baselines train with the experiment's own options
    (``assess_config``: K = 256, minibatches of 32); ``size="gpu"`` renders K = 1024 glyphs per
    step for a wider CNN for 60 steps and assesses on 8192 images.
    """
    gpu = _check_size(size) == "gpu"
    render = get_renderer(renderer)
    simulator = Simulator(from_schema(render.schema, DIGITS_START), render)
    reference = from_schema(render.schema, DIGITS_REFERENCE).init()
    def make_model(model_seed: int) -> nnx.Module:
        return SmallCNN(in_channels=1, num_classes=10, channels=64 if gpu else 16, rngs=nnx.Rngs(model_seed))

    model = make_model(seed)
    base = AutoSimConfig(dataset_size=1024 if gpu else 256, batch_size=64 if gpu else 32, finetune_epochs=3,
                         inner_learning_rate=3e-3, outer_learning_rate=0.1, damping=1e-2,
                         curvature="gauss_newton", cg_maxiter=10, cg_tol=1e-3, theta_reset_every=_THETA_RESET_EVERY)
    # cpu: the learner takes 4x the psi steps per image (K = 64 renders, minibatches of 8, so each step
    # still fine-tunes 24 Adam steps; 240 steps = the same 15,360 images) with a psi step decaying as
    # 0.1 / (1 + t / 120). Against K = 256 constant (the `base`, which the assessment and the
    # baselines keep), `autosim compare` on 5 seeds: fresh-model val accuracy 0.331 / 0.384 / 0.453 /
    # 0.541 after 1,920 / 3,840 / 7,680 / 15,360 images against 0.246 / 0.266 / 0.348 / 0.537, G
    # 1.61 +- 0.39 against 1.61 +- 0.57, and above LTS's mean at every point where K = 256 was below it
    # at the first two; K = 64 at a constant rate collapsed one seed of three (docs/learning.md,
    # sessions 37-38). And the noise gate (z = 2) on the first 60 psi updates: with 64 renders a step
    # Adam turns the render noise of weak-signal fields into walks in the first tens of steps (seed 0
    # walked the glyphs 0.18 of the canvas off centre by step 30 and lost its first budget point); on
    # 10 seeds the gate halves the spread after 1,920 images (std 0.051 against 0.110, the worst seed
    # 0.248 against 0.169, above LTS on 9 seeds against 6) at no resolved cost (paired -0.003 / -0.009 /
    # -0.028 / -0.004, s.e. 0.03 / 0.03 / 0.03 / 0.012); gated to the end it held the tilt's weak signal
    # and ended lower (session 39). And Adam's second moment on psi remembering ~100 steps (outer_beta2
    # 0.99) instead of ~1,000: with the psi step decaying, a long memory keeps the scale of the early,
    # larger hypergradients and slows the later steps; on 10 seeds paired +0.004 / +0.006 / +0.020 /
    # +0.017 val accuracy after 1,920 / 3,840 / 7,680 / 15,360 images (s.e. 0.002 / 0.002 / 0.005 /
    # 0.006; ahead on 6 / 8 / 8 / 9 seeds of 10), G 1.97 +- 0.60 against 1.88 +- 0.62 (session 42).
    # The damping stays 0.01 with 10 CG iterations. A tenth of it with 30 iterations (session 48) ends
    # ahead on 10 seeds (+0.030 +- 0.008 val, +0.019 +- 0.006 test accuracy, 9 of 10; G 2.13 +- 0.59
    # against 1.97 +- 0.60; 1.8x a run's time) but is behind early (-0.015 +- 0.011 after 960 images):
    # against LTS on seeds 0-4 seed 0 falls back early (0.17 / 0.14 / 0.15 after 960 / 1,920 / 3,840
    # images), above LTS on 3 / 3 / 4 seeds of 5 where this preset is on 5 of 5, and LTS's best is
    # reached after 1,920 images (3.7x) instead of 960 (>= 7.5x; the 5x). Solved at that damping
    # it gains +0.034, with 10 iterations nothing (docs/learning.md, session 48). Holding 0.01 for the
    # gate's 60 steps and 0.001 after (damping_early, session 49) keeps the start to the digit and is
    # +0.074 +- 0.013 ahead after 7,680 images (10 of 10 seeds), but +0.018 +- 0.012 at the end.
    # And Adam fed each hypergradient's direction only (outer_unit_norm, session 51): the first steps'
    # hypergradients, 7-35x the later ones, hold the preset's psi step at 0.08-0.15 of its rate over
    # steps 60-120 (0.28-0.30 with it); on 10 seeds paired +0.002 / +0.021 / +0.041 / +0.104 / -0.002 val
    # accuracy after 960 / 1,920 / 3,840 / 7,680 / 15,360 images (s.e. 0.007 / 0.011 / 0.008 / 0.021 /
    # 0.016; ahead on 10 of 10 seeds at 3,840 and 7,680), the same time per run; against LTS, BO and
    # random search (seeds 0-4) above LTS on 5 of 5 seeds at every point and every baseline's best
    # reached by 960 images, as before (docs/learning.md, session 51).
    config = base if gpu else base.replace(dataset_size=64, batch_size=8, outer_decay_steps=120,
                                           outer_snr_gate=2.0, outer_snr_gate_steps=60, outer_beta2=0.99,
                                           outer_unit_norm=True)
    return ExperimentSetup(
        simulator, model, classification_task(), load_real_digits("validation"), load_real_digits("test"),
        config, iterations=60 if gpu else 240, assess_images=8192 if gpu else 4096, assess_epochs=10,
        reference_psi=reference, make_model=make_model, assess_config=base,
        # cpu: a model trained on K = 256 glyphs x 3 epochs from its initialisation is at chance on the
        # real digits (0.1013 val accuracy exactly) for 50-80% of BO's and random search's first
        # candidates; 1,024 x 10 scores, and lifts their G over 5 seeds from -0.65 to -0.18 +- 0.40 (BO)
        # and -0.10 +- 0.30 (random search; docs/learning.md session 40). gpu: K = 1024 scores 0.05-0.31.
        baseline_evaluation=None if gpu else (1024, 10),
    )


# ------------------------------------------------------------- clevr-det, digits-det

# The hidden target of clevr-det: four locations of the tiled scene, high quality.
CLEVR_DET_TARGET = {"scene2/centre/high": 0.3, "scene2/left/high": 0.25, "scene2/bottom/high": 0.25,
                    "scene2/right/high": 0.2}
# The start spreads its mass the wrong way: mostly the other two scenes at low quality.
CLEVR_DET_START = {"scene1/*/low": 0.55, "scene3/*/low": 0.3, "*": 0.15}
# digits-det: at the gpu size's detector budget (8192 images x 24 epochs) variety wins over
# resemblance: the uniform psi is the best of 7 candidates and the hand-set "looks like the real
# canvases" one (scene1, low quality) is below it (docs/detection.md, sessions 11-13). The start
# puts the objects at one location of one scene, 0.17 mAP@0.5 below the uniform psi on every
# seed (0.227 +- 0.016 against 0.395 +- 0.009, 3 seeds x 2 detectors, H200, 2026-12-01;
# benchmarks/results/detection_reference/digits-det_gpu_start_candidates.json), so the issue's
# +0.15 over the start is reachable and measures the learner.
DIGITS_DET_REFERENCE = {"*": 1.0}
DIGITS_DET_START = {"scene2/centre/*": 1.0}
# The budget at which those were measured (at 4096 x 8 the ranking of start and reference flips
# from seed to seed).
_DIGITS_DET_GPU_ASSESS = (8192, 24)
# Random search's and BO's evaluation at gpu size (ExperimentSetup.baseline_evaluation): a detector
# trained on the step's K = 256 renders from its initialisation finds nothing (validation mAP 0.000
# on every candidate, session 22); 2,048 x 8 is the smallest evaluation measured to score (session 25),
# and with it BO's final psi is level with AutoSimulate's (docs/detection.md, session 27).
_DIGITS_DET_GPU_BASELINE_EVALUATION = (2048, 8)


# A fresh gpu-size detector trained for 8 epochs on 2048 images is far from converged, and its
# mAP@0.5 is as noisy as the whole start-to-reference gap (2026-12-01, H200, 4 seeds x 2 models,
# benchmarks/results/psi_learning/assessment_noise_clevr-det_gpu_e*.json): reference 0.535 +- 0.104
# over seeds (up to 0.11 between two models of one seed), start 0.301. At 24 epochs: reference
# 0.905 +- 0.023 (<= 0.024 between two models), start 0.566, so one assessment's noise is a tenth
# of the gap; the render of the 2048 images, not the training, is most of an assessment's time.
_CLEVR_DET_GPU_ASSESS_EPOCHS = 24


# Random search's and BO's evaluation at cpu size (ExperimentSetup.baseline_evaluation), clevr-det
# and digits-det: a detector trained on the step's K = 32 renders x 2 epochs from its initialisation
# finds nothing (val mAP@0.5 0.000 on 120 of 120 of random search's candidates on digits-det, <= 0.01 on
# clevr-det); 256 x 4 (clevr-det) and 512 x 4 (digits-det) score, 0.00-0.08 and 0.00-0.12 over 20
# candidates (2 seeds; docs/detection.md, session 41). Scoring is not ranking: on clevr-det one detector
# of the assessment's 256 x 15 has a std of 0.054 at a fixed psi, more than random search's candidates
# differ (0.040), so at cpu size no single-detector evaluation orders them (session 46).
_DET_CPU_BASELINE_EVALUATION = ((256, 4), (512, 4))
# clevr-det at gpu size: its own K = 256 x 2 epochs is blind too (random search's and BO's in-run best
# val mAP@0.5 <= 1.3e-4 on every seed, session 10). On the H200 (session 43, random search, 2 seeds)
# 512 x 8 scores on 20 of 20 candidates (0.05-0.26, 4 s each) and 2,048 x 8 on 12 of 12 (0.18-0.60,
# 11 s each, but the start alone scored 0.18 and 0.52 on the two seeds); 512 x 8 leaves random search
# and BO seven candidates in the Tables' budget of 3,840 images where 2,048 x 8 leaves one
# (benchmarks/results/baseline_evaluation_gpu/). Scoring is not ranking: on 4 seeds x 10 candidates
# (session 45) neither 512 x 8 nor 2,048 x 8 orders them as a detector trained like the assessment
# (2,048 x 24, whose two models differ by <= 0.024 against a candidate spread of 0.55-0.77) does:
# Spearman -0.11 +- 0.44 and +0.16 +- 0.24, 512 x 8's pick 5th-9th of 10. So at the Tables' budget
# random search and BO pick at random among their candidates; an evaluation that ranks costs the
# assessment's 2,048 images and leaves them the start and one candidate.
_CLEVR_DET_GPU_BASELINE_EVALUATION = (512, 8)


def _detection_config(gpu: bool) -> AutoSimConfig:
    if gpu:
        return AutoSimConfig(dataset_size=256, batch_size=32, finetune_epochs=2, inner_learning_rate=3e-3,
                             outer_learning_rate=0.1, curvature_batch_size=64, cg_maxiter=10, val_batch_size=64)
    # Adam 1e-2: on 256 target images x 20 epochs the cpu detector reaches val mAP@0.5 0.25
    # (3e-3: 0.15).
    return AutoSimConfig(dataset_size=32, batch_size=16, finetune_epochs=2, inner_learning_rate=1e-2,
                         outer_learning_rate=0.1, damping=1e-2, curvature="gauss_newton", curvature_batch_size=8,
                         cg_maxiter=5, cg_tol=1e-3, val_batch_size=32)


# A fresh clevr-det detector now and then diverges through one minibatch gradient thousands of
# times its median (3 of 72 at gpu size ended at an untrained detector's loss, mAP 0). Clipping
# each gradient to global norm 1 trained all of them: 0 of 24 diverged at cpu size, the others'
# mAP unchanged; 0 of 16 at gpu size, and the test mAP of the start and the reference each 0.05
# higher (4 detectors each, paired; 2026-12-02, benchmarks/results/fresh_model_divergence/).
# It applies to the fine-tuning of the run's detector and to every fresh one of an assessment.
# digits-det keeps the unclipped config its +0.15 target was measured with: at cpu size none of
# 32 detectors diverged with or without clipping, and clipping moved test mAP by -0.01 (noise).
_CLEVR_DET_CLIP_NORM = 1.0


def build_clevr_det(*, renderer: str = "clevr-det", seed: int = 0, size: str = "cpu") -> ExperimentSetup:
    """The ``clevr-det`` experiment: CLEVR objects, psi the 54-cell categorical, mAP@0.5.

    Validation and test images come from :data:`CLEVR_DET_TARGET` (high quality, fixed
    seeds), rendered by ``renderer`` as the training images are: ``"clevr-det"`` (the numpy
    tracer) or ``"mitsuba-det"`` (Mitsuba 3; the same scenes and boxes). ``size="cpu"``:
    32 px, a detector on a UNet of 8 base channels, K = 32, 48 images each; ``"gpu"``: 64 px,
    32 base channels, K = 256, 256 images, assessments on 2048 images x 24 epochs. Every inner
    minibatch gradient (fine-tuning and fresh detectors) is clipped to global norm 1
    (``inner_clip_norm``), which keeps fresh detectors from diverging.
    """
    from .detection import centernet, detection_task
    from .renderers.clevr_det import cell_probs

    gpu = _check_size(size) == "gpu"
    image_size, n_eval = (64, 256) if gpu else (32, 48)
    render = get_renderer(renderer, image_size=image_size)
    target = Simulator(from_schema(render.schema, {"cell": {"probs": cell_probs(CLEVR_DET_TARGET)}}), render)
    psi_target = target.distribution.init()
    val = _render_fixed_set(target, psi_target, n_eval, seed=1001)
    test = _render_fixed_set(target, psi_target, n_eval, seed=2002)
    simulator = Simulator(from_schema(render.schema, {"cell": {"probs": cell_probs(CLEVR_DET_START)}}), render)
    k = len(render.class_names)
    def make_model(model_seed: int) -> nnx.Module:
        return centernet(3, k, 32 if gpu else 8, rngs=nnx.Rngs(model_seed))

    config = _detection_config(gpu).replace(inner_clip_norm=_CLEVR_DET_CLIP_NORM)
    # 240 steps at gpu size: at 120 the runs are still climbing (G 0.80 +- 0.12, 3 of 6 seeds at
    # 0.8), at 240 G is 0.88 +- 0.08 with 5 of 6 (the same runs, docs/detection.md, session 18).
    return ExperimentSetup(simulator, make_model(seed), detection_task(k), val, test, config,
                           iterations=240 if gpu else 40, assess_images=2048 if gpu else 256,
                           assess_epochs=_CLEVR_DET_GPU_ASSESS_EPOCHS if gpu else 15, reference_psi=psi_target,
                           make_model=make_model,
                           baseline_evaluation=(_CLEVR_DET_GPU_BASELINE_EVALUATION if gpu
                                                else _DET_CPU_BASELINE_EVALUATION[0]))


def build_digits_det(*, renderer: str = "digit-canvas", seed: int = 0, size: str = "cpu") -> ExperimentSetup:
    """The ``digits-det`` experiment: glyph digits on canvases, validated on real handwriting.

    Validation and test canvases hold scikit-learn's real digits (its two halves,
    :func:`~autosim_jax.renderers.real_digit_canvases`). ``size="cpu"``: 32 px canvases, 8
    base channels, K = 32, 96 real canvases each; ``"gpu"``: 64 px, 32 base channels, K = 256,
    512 canvases, assessments on 8192 images x 24 epochs. The start (:data:`DIGITS_DET_START`)
    holds one location of one scene; the reference (:data:`DIGITS_DET_REFERENCE`) is uniform
    over the 54 cells, the best psi measured at the gpu budget.
    """
    from .detection import centernet, detection_task
    from .renderers import real_digit_canvases
    from .renderers.clevr_det import cell_probs

    gpu = _check_size(size) == "gpu"
    image_size, n_eval = (64, 512) if gpu else (32, 96)
    render = get_renderer(renderer, image_size=image_size)
    simulator = Simulator(from_schema(render.schema, {"cell": {"probs": cell_probs(DIGITS_DET_START)}}), render)
    reference = from_schema(render.schema, {"cell": {"probs": cell_probs(DIGITS_DET_REFERENCE)}}).init()
    val = real_digit_canvases("validation", n_eval, size=image_size, seed=1)
    test = real_digit_canvases("test", n_eval, size=image_size, seed=2)
    def make_model(model_seed: int) -> nnx.Module:
        return centernet(1, 10, 32 if gpu else 8, rngs=nnx.Rngs(model_seed))

    return ExperimentSetup(simulator, make_model(seed), detection_task(10), val, test, _detection_config(gpu),
                           iterations=120 if gpu else 40, assess_images=_DIGITS_DET_GPU_ASSESS[0] if gpu else 512,
                           assess_epochs=_DIGITS_DET_GPU_ASSESS[1] if gpu else 10, reference_psi=reference,
                           make_model=make_model, baseline_evaluation=_DIGITS_DET_GPU_BASELINE_EVALUATION if gpu
                           else _DET_CPU_BASELINE_EVALUATION[1])


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
    "clevr-det": Experiment(
        "clevr-det",
        "CLEVR object detection, psi one 54-way categorical (3 scenes x 9 locations x 2 qualities), validation "
        "rendered from a hidden target mixture; mAP@0.5",
        ("clevr-det", "mitsuba-det"),
        build_clevr_det,
    ),
    "digits-det": Experiment(
        "digits-det",
        "glyph digits on canvases (54 cells: 3 backgrounds x 9 locations x 2 qualities), validated on "
        "scikit-learn's real handwritten digits placed on canvases; mAP@0.5",
        ("digit-canvas",),
        build_digits_det,
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


_ASSESS_MODEL_FAILS = (
    "make_assessor: model= ({name}) cannot take the experiment's validation inputs, shape {shape}: {error} "
    "Build it for the experiment's images (for the detection experiments detection.centernet(in_channels, "
    "num_classes, base_channels) with the in_channels and num_classes of setup.model)."
)
_ASSESS_MODEL_SHAPE = (
    "make_assessor: model= ({name}) gives outputs of shape {got} for validation inputs {shape}, where the "
    "experiment's model gives {want}; the task's loss and metric read outputs of that shape. For a detector, build "
    "the larger one with detection.centernet(in_channels, num_classes, base_channels) for the same in_channels and "
    "num_classes and a wider base_channels."
)


def _check_assessment_model(setup: ExperimentSetup, model: nnx.Module) -> None:
    """``model`` takes the validation inputs and gives outputs shaped like ``setup.model``'s
    (abstract evaluation of one image: nothing is compiled or run)."""
    x = setup.val_data[0]
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)

    def output_shape(graphdef, theta):
        return jax.eval_shape(lambda t, inputs: nnx.merge(graphdef, t)(inputs), theta, one).shape

    want = output_shape(*split_model(setup.model))
    split = split_model(model)  # a ValueError naming what a model must be
    try:
        got = output_shape(*split)
    except (TypeError, ValueError) as err:
        raise ValueError(_ASSESS_MODEL_FAILS.format(name=type(model).__name__, shape=one.shape, error=err)) from err
    if got != want:
        raise ValueError(_ASSESS_MODEL_SHAPE.format(name=type(model).__name__, got=got, shape=one.shape, want=want))


class DivergedAssessmentWarning(UserWarning):
    """A fresh model of an assessment did not train where its siblings did (:func:`_trained`)."""


# Metrics closer than this count as equal in _trained (a model predicting one class everywhere scores the
# constant prediction's metric up to float32 rounding).
_SAME_METRIC = 1e-4


def constant_prediction_metric(task: Task, labels) -> float | None:
    """The best validation metric of a model that predicts one class everywhere, for a task whose
    labels are class indices (``task.num_classes`` set, integer ``labels``); ``None`` otherwise.

    An untrained network may score below this (clevr-seg's UNet of seed 0: mIoU 0.023 where the
    background everywhere scores 0.2389), so :func:`make_assessor` takes the better of the two as the
    floor a fresh model must beat to count as trained (:func:`_trained`).

    Example:
      >>> from autosim_jax.tasks import segmentation_task
      >>> labels = np.zeros((2, 4, 4), np.int32); labels[:, 0, 0] = 1   # background but one pixel an image
      >>> round(constant_prediction_metric(segmentation_task(2), labels), 4)  # IoU 30/32 and 0, averaged
      0.4688
    """
    labels = np.asarray(labels) if not isinstance(labels, (dict, list, tuple)) else None
    if task.num_classes is None or labels is None or not np.issubdtype(labels.dtype, np.integer):
        return None
    scores = []
    for c in range(task.num_classes):
        logits = jax.nn.one_hot(np.full(labels.shape, c), task.num_classes)
        scores.append(float(task.metric_from_stats(task.metric_stats(logits, labels))))
    return max(scores) if task.higher_is_better else min(scores)


def _trained(losses: np.ndarray, untrained: float, metrics: np.ndarray | None = None,
             untrained_metric: float | None = None, higher_is_better: bool = True) -> np.ndarray:
    """Which of the repeats' fresh models trained. A model did not when its last-epoch loss is
    not finite, or when it is at least ``LOSS_JUMP_FACTOR`` times the lowest of the repeats' and
    either

    * **diverged**: over halfway from that lowest loss back to ``untrained`` (the untrained
      model's loss on the same kind of images); or
    * **collapsed**: over a tenth of the way back, with a validation metric (``metrics``) no
      better than halfway from ``untrained_metric`` (the floor a trained model must beat: the
      untrained model's metric, or a constant prediction's where that is better; see
      :func:`make_assessor`) to the best of its siblings'; or, however low its loss, with a
      metric no better than that floor while a sibling's is (a segmenter that predicts the
      background everywhere has a small loss where the background covers most pixels).

    On clevr-det at gpu size 3 of 72 fresh detectors (24 epochs, Adam 3e-3) ended at a loss of
    ~590, an untrained detector's, beside siblings at 130-220 on the same psi, and at mAP 0
    (docs/detection.md, session 16); one such model moves one psi's G by 0.5-1. On clevr-seg at
    gpu size 2 of ~460 fresh models ended at mIoU 0.01 (background everywhere) with losses of
    0.33 and 0.61 beside siblings at 0.05 and 0.13, a fifth and two fifths of the way back to
    the untrained 1.4 (docs/learning.md, session 21); one moved a G from 0.68 to 0.20. A model
    that merely trained slower (loss 0.49 beside 0.05, mIoU 0.37 beside 0.40-0.50) is kept: its
    metric is the data's. The tenth and the halfway keep models whose losses all lie near zero
    (digits: 0.006 against 0.013, out of an untrained 2.3) from counting by their ratio alone. On
    clevr-seg at gpu size one model of 2 scored mIoU 0.2389, the untrained model's 0.2427, with a
    loss of 0.108 beside its sibling's 0.041 (0.319), a twentieth of the way back to the untrained
    1.36 (sessions 55-56, `compare_clevr-seg_gpu/NOTE.md`): kept by the tenth, so a metric no better
    than the floor counts as collapsed at any loss 2x the lowest. Where the untrained model scores
    below the background-only 0.2389 (seed 0's UNet: 0.023) that floor is the constant prediction's
    (session 58: seed 0's start psi had kept such a model, loss 0.188 beside 0.014-0.016).

    Example:
      >>> _trained(np.array([159.1, 588.1, 168.0, 218.6]), untrained=570.0).tolist()
      [True, False, True, True]
      >>> _trained(np.array([0.0058, 0.0126]), untrained=2.3).tolist()
      [True, True]
      >>> seg = dict(untrained=1.41, untrained_metric=0.023)
      >>> _trained(np.array([0.332, 0.051, 0.046, 0.052]), metrics=np.array([0.009, 0.486, 0.486, 0.478]),
      ...          **seg).tolist()
      [False, True, True, True]
      >>> _trained(np.array([0.493, 0.074, 0.048, 0.056]), metrics=np.array([0.37, 0.40, 0.50, 0.49]),
      ...          **seg).tolist()
      [True, True, True, True]
      >>> _trained(np.array([0.108, 0.041]), untrained=1.36, metrics=np.array([0.2389, 0.3190]),
      ...          untrained_metric=0.2427).tolist()  # clevr-seg gpu, session 56: background only
      [False, True]
      >>> losses, metrics = np.array([0.0156, 0.0144, 0.0159, 0.188]), np.array([0.3236, 0.3229, 0.3212, 0.23889])
      >>> _trained(losses, untrained=1.36, metrics=metrics, untrained_metric=0.23889).tolist()  # session 58
      [True, True, True, False]
    """
    finite = np.isfinite(losses)
    if not finite.any():
        return finite
    lowest = losses[finite].min()
    far = losses > LOSS_JUMP_FACTOR * lowest
    diverged = far & (losses > lowest + 0.5 * (untrained - lowest))
    collapsed = np.zeros_like(finite)
    if metrics is not None and untrained_metric is not None:
        sign = 1.0 if higher_is_better else -1.0
        gain = sign * (np.asarray(metrics) - untrained_metric)  # how far each got from the floor
        best = np.nanmax(np.where(finite, gain, np.nan))
        # (only where a sibling got anywhere: if none beat the untrained model, the data is to blame)
        # (a model at the constant prediction's metric matches the floor to float32 rounding, not exactly)
        collapsed = far & ((losses > lowest + 0.1 * (untrained - lowest)) | (gain <= _SAME_METRIC)) \
            & (gain <= 0.5 * best) \
            & (best > 0)
    return finite & ~diverged & ~collapsed


def make_assessor(setup: ExperimentSetup, *, num_images: int | None = None, epochs: int | None = None,
                  repeats: int = 1, model: nnx.Module | None = None) -> Callable[..., dict[str, float]]:
    """``assess(psi, seed=0)``: trains a *fresh* copy of the task model on ``num_images`` from ``psi``.

    This is the fair comparison of two simulator settings: the same model, initialisation,
    image budget and training schedule, only the data distribution differs. The schedule's
    options (inner optimiser, minibatch, validation batch) are ``setup.base_config()``'s
    (``assess_config``, or ``config`` where that is ``None``): a preset or variant that changes the
    learner's minibatch keeps its fresh models trained as every other method's. (The metric
    logged during AutoSimulate is that of a model warm-started across steps, which improves
    with training time whatever psi does.) Built on the shared inner stages
    (:func:`~autosim_jax.inner.make_inner`) and compiled once, so assessing many psi
    (``autosim compare`` assesses every run at several points) compiles once.

    One fresh model is a noisy measure: on clevr-seg at gpu size the test mIoU of the same psi
    varies by 0.04 (std over 8 seeds, ``benchmarks/results/psi_learning/``), a sixth of the
    start-to-reference gap. ``repeats`` trains that many models (different images and
    minibatch orders) and reports their mean, with the spread.

    ``model`` is the network-size ablation of paper Table 6: psi learned with the setup's
    (small) model, assessed by training another, e.g. a wider detector, on it. It is
    ``setup._replace(model=model)`` after two checks made before anything is compiled or
    rendered: ``model`` is a flax module of ``nnx.Param`` state only, and it maps the
    validation inputs to outputs of the shape ``setup.model`` gives (what the task's loss
    and metric read). The same images, budget and schedule as for the setup's model.

    Args:
      setup: the experiment.
      num_images, epochs: the budget (default: the experiment's ``assess_images`` and
        ``assess_epochs``).
      repeats: fresh models per assessment (``>= 1``); the metrics are their means.
      model: the model to train (``None``: ``setup.model``), with its given initialisation.

    Returns:
      ``assess(psi, seed, on_model=None)`` -> ``{"val_metric": ..., "test_metric": ...}`` of the
      trained model(s). ``on_model(r, metrics)``, when given, is called after each fresh model with
      its repeat index and ``{"val_metric", "test_metric", "seconds"}``: progress through an
      assessment whose models take minutes each. ``psi`` may also be a list of psi, e.g. a run's
      trajectory: the images are then the equal mixture over them
      (:meth:`~autosim_jax.Simulator.simulate_mixture`), what the run rendered, the "replay"
      product of a run; the metrics are those of the trained
      model(s), plus ``"test_metric_std"`` / ``"val_metric_std"`` over the repeats when
      ``repeats > 1``, with each model's ``"val_metrics"`` / ``"test_metrics"`` and
      ``"train_losses"`` (its last epoch's mean training loss) in repeat order. A model whose
      last-epoch loss is non-finite, or above ``LOSS_JUMP_FACTOR`` (2) times the lowest of the
      repeats' and either halfway from it back to the untrained model's loss (on the first
      minibatch) or a tenth of the way with a validation metric no better than halfway from the
      untrained model's (or a constant prediction's, where better) to the best repeat's
      (:func:`_trained`), did not train (diverged or collapsed): it is left out of the means and
      std (NaN if none trained),
      listed in ``"diverged_models"`` and warned about (:class:`DivergedAssessmentWarning`);
      with ``repeats=1`` there is nothing to compare with. Repeat ``r``
      renders with ``PRNGKey(seed + 2 r)`` and orders the minibatches with
      ``PRNGKey(seed + 2 r + 1)``; the model's initialisation is the model's own.

    Raises:
      ValueError: for ``repeats < 1``, or a ``model`` that is not an ``nnx.Module`` of
        parameters, cannot take the validation inputs or gives outputs of another shape.

    Example:
      >>> setup = get_experiment("digits-sim2real").build(seed=0)
      >>> assess = make_assessor(setup, num_images=256, epochs=1)
      >>> sorted(assess(setup.simulator.distribution.init(), seed=0))
      ['test_metric', 'val_metric']

      Table 6's assessment with a larger model than the one psi is learned with (the cpu
      setup's CNN has 16 channels; for the detection experiments a wider
      ``detection.centernet``):

      >>> wide = make_assessor(setup, num_images=256, epochs=1,
      ...                      model=SmallCNN(1, 10, channels=32, rngs=nnx.Rngs(0)))
      >>> sorted(wide(setup.reference_psi, seed=0))
      ['test_metric', 'val_metric']
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}.")
    if model is not None:
        _check_assessment_model(setup, model)
    num_images = num_images or setup.assess_images
    epochs = epochs or setup.assess_epochs
    cfg = setup.base_config()
    model = setup.model if model is None else model
    inner = make_inner(setup.simulator, nnx.clone(model), setup.task, optimizer=cfg.inner_optax(),
                       dataset_size=num_images, batch_size=cfg.batch_size, epochs=epochs,
                       val_batch_size=cfg.val_batch_size)

    simulate_mixture = jax.jit(setup.simulator.simulate_mixture, static_argnums=2)
    first_batch_loss = jax.jit(lambda theta, x, y: inner.mean_loss(theta, x[:cfg.batch_size], y[:cfg.batch_size]))

    @functools.cache
    def metric_floor() -> float:  # the better of the untrained model's and a constant prediction's, once
        untrained = float(inner.measure(inner.theta0, *setup.val_data)[1])
        constant = constant_prediction_metric(setup.task, setup.val_data[1])
        if constant is None:
            return untrained
        return max(untrained, constant) if setup.task.higher_is_better else min(untrained, constant)

    def one(psi, seed: int) -> tuple[float, float, float, float]:
        key = jax.random.PRNGKey(seed)
        _, inputs, labels = (simulate_mixture(key, psi, num_images) if isinstance(psi, (list, tuple))
                             else inner.simulate(key, psi))
        theta, _, loss = inner.finetune(inner.theta0, inner.init_opt(inner.theta0), inputs, labels,
                                        jax.random.PRNGKey(seed + 1))
        untrained = float(first_batch_loss(inner.theta0, inputs, labels)) if repeats > 1 else float("nan")
        return (float(inner.measure(theta, *setup.val_data)[1]), float(inner.measure(theta, *setup.test_data)[1]),
                float(loss), untrained)

    def assess(psi, seed: int = 0, on_model: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
        rows = []
        for r in range(repeats):
            t0 = time.perf_counter()
            rows.append(one(psi, seed + 2 * r))
            if on_model is not None:
                on_model(r, {"val_metric": rows[-1][0], "test_metric": rows[-1][1],
                             "seconds": time.perf_counter() - t0})
        val, test, loss, untrained = np.array(rows).T
        if repeats == 1:
            return {"val_metric": float(val[0]), "test_metric": float(test[0])}
        # A model whose training diverged measures the optimiser, not the data: it is left out
        # of the means, named in the result and warned about; the lists keep every model.
        trained = _trained(loss, float(np.nanmean(untrained)), val, metric_floor(), setup.task.higher_is_better)
        kept = {"val": val[trained], "test": test[trained]}
        out: dict[str, Any] = {f"{m}_metric": float(v.mean()) if v.size else float("nan") for m, v in kept.items()}
        out.update({f"{m}_metric_std": float(v.std()) if v.size else float("nan") for m, v in kept.items()})
        out.update(val_metrics=val.tolist(), test_metrics=test.tolist(), train_losses=loss.tolist())
        if not trained.all():
            out["diverged_models"] = np.flatnonzero(~trained).tolist()
            warnings.warn(f"make_assessor: fresh model(s) {out['diverged_models']} of {repeats} (seed {seed}) did not "
                          f"train: they ended at a loss of {loss[~trained].tolist()}, more than {LOSS_JUMP_FACTOR:g}x "
                          f"the lowest of their siblings ({np.nanmin(loss) if trained.any() else 'none finite'}), "
                          f"either over halfway back to the untrained model's {np.nanmean(untrained):.4g} or with "
                          f"a validation metric ({val[~trained].tolist()}) no better than halfway from the "
                          f"untrained model's (or a constant prediction's) {metric_floor():.4g} to the best "
                          f"sibling's; the metrics are the means over the {int(trained.sum())} others. "
                          f"Clipping each gradient "
                          f"(AutoSimConfig.inner_clip_norm=1 in the experiment's config) stopped such a "
                          f"divergence on clevr-det (docs/detection.md); so may a lower inner_learning_rate.",
                          DivergedAssessmentWarning, stacklevel=2)
        return out

    return assess


def gap_closed(start: float, learned: float, reference: float) -> float:
    """G = (m(learned) - m(start)) / (m(reference) - m(start)): the share of the gap closed.

    1 means the learned psi trains models as good as the reference's, 0 no better than the
    start's, < 0 worse (for either direction of the metric). NaN when the reference and the
    start measure the same (no gap).

    Example:
      >>> gap_closed(0.3, 0.5, 0.55)
      0.8
    """
    gap = reference - start
    return round((learned - start) / gap, 12) if gap != 0 else float("nan")


def assess_psi(setup: ExperimentSetup, psi, *, num_images: int | None = None, epochs: int | None = None,
               seed: int = 0) -> dict[str, float]:
    """One assessment of ``psi`` (see :func:`make_assessor`, which compiles once for many).

    Returns:
      ``{"val_metric": ..., "test_metric": ...}`` of a fresh model trained on ``psi``'s images.
    """
    return make_assessor(setup, num_images=num_images, epochs=epochs)(psi, seed)
