r"""One objective evaluation, shared by every black-box baseline: render, fine-tune, measure.

``L_val(theta_hat(psi))`` (paper Eq. 1a) at one ``psi``:

1. render ``K`` images: ``s_k ~ q_psi``, ``r(s_k)`` (the only call of the simulator; it is
   where images are counted);
2. fine-tune the task model for ``epsilon`` epochs on them, with the same optimiser, batch
   size, shuffling and jitted scan as AutoSimulate's fine-tuning (Algorithm 1, line 3), from
   a given ``theta`` (warm start) or from the model's initialisation;
3. measure the validation loss and metric on the whole validation set.

Given AutoSimulate's keys, an evaluation at ``psi_t`` reproduces AutoSimulate's ``theta_hat``
and validation metric of that step (``tests/test_baselines.py`` checks it), so the
baselines and AutoSimulate differ only in how they choose ``psi``.

Example:
  >>> objective = make_objective(sim, model, task, val, test, dataset_size=32, batch_size=16,
  ...                            finetune_epochs=2, inner_optimizer=optax.adam(1e-3))  # doctest: +SKIP
  >>> ev = objective.evaluate(psi, objective.theta0, objective.init_opt(objective.theta0),
  ...                         sim_key, train_key)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..simulator import Simulator, reraise_render_errors
from ..tasks import Task
from ..training import train_epochs

PyTree = Any

# The keyword arguments of make_autosimulate that the objective shares with it.
OBJECTIVE_KEYS = ("dataset_size", "batch_size", "finetune_epochs", "inner_optimizer")


def objective_options(options: dict) -> dict:
    """The subset of an experiment's ``options`` (make_autosimulate's kwargs) the objective takes."""
    return {k: options[k] for k in OBJECTIVE_KEYS if k in options}


class Evaluation(NamedTuple):
    """The result of one objective evaluation."""

    theta: PyTree  # fine-tuned task-model parameters
    inner_opt_state: PyTree  # optax state after fine-tuning
    val_loss: float
    val_metric: float
    train_loss: float  # mean minibatch loss of the last epoch
    images: int  # images rendered (K)
    train_steps: int  # optimiser steps of the task model (epochs x K / batch)
    time_render: float  # seconds
    time_train: float
    time_measure: float


class Objective(NamedTuple):
    """The shared evaluation built by :func:`make_objective`.

    Attributes:
      theta0: the model's initial parameters (``nnx.Param`` state).
      init_opt: ``theta -> inner optimiser state``.
      evaluate: ``(psi, theta, opt_state, sim_key, train_key) -> Evaluation``.
      test: ``theta -> (test_loss, test_metric)`` as Python floats (monitoring only).
      reward: ``Evaluation -> float``, larger is better (the metric, or minus it when lower is
        better, or minus the validation loss).
      dataset_size: ``K``.
    """

    theta0: PyTree
    init_opt: Callable[[PyTree], PyTree]
    evaluate: Callable[..., Evaluation]
    test: Callable[[PyTree], tuple[float, float]]
    reward: Callable[[Evaluation], float]
    dataset_size: int


REWARDS = ("metric", "neg_loss")


def make_objective(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    val_data: tuple[jax.Array, jax.Array],
    test_data: tuple[jax.Array, jax.Array] | None = None,
    *,
    dataset_size: int = 64,
    batch_size: int = 32,
    finetune_epochs: int = 1,
    inner_optimizer: optax.GradientTransformation | None = None,
    reward: str = "metric",
) -> Objective:
    """Builds the objective evaluation (render K, fine-tune, measure) of one experiment.

    Args:
      simulator, model, task, val_data: as for :func:`~autosim_jax.make_autosimulate`.
      test_data: ``(inputs, labels)`` for :attr:`Objective.test` (``None``: test is NaN).
      dataset_size, batch_size, finetune_epochs, inner_optimizer: as for
        :func:`~autosim_jax.make_autosimulate` (same defaults).
      reward: ``"metric"`` (the validation metric, negated when lower is better) or
        ``"neg_loss"`` (minus the validation loss).

    Returns:
      An :class:`Objective`.

    Raises:
      ValueError: for an unknown reward or a batch size that does not divide ``K``.

    References:
      Paper Eq. 1a-1b; the black-box view of Sec. 2 and the baselines of Sec. 5.
    """
    if reward not in REWARDS:
        raise ValueError(f"Unknown reward {reward!r}; valid choices are {list(REWARDS)}.")
    if batch_size < 1 or dataset_size % batch_size:
        raise ValueError(f"dataset_size ({dataset_size}) must be a positive multiple of batch_size ({batch_size}).")
    if finetune_epochs < 1:
        raise ValueError(f"finetune_epochs must be >= 1, got {finetune_epochs}.")
    inner_optimizer = inner_optimizer or optax.adam(1e-3)
    graphdef, theta0 = nnx.split(model, nnx.Param)
    x_val, y_val = (jnp.asarray(a) for a in val_data)
    sign = 1.0 if task.higher_is_better else -1.0

    def predict(theta, inputs):
        return nnx.merge(graphdef, theta)(inputs)

    def mean_loss(theta, inputs, labels):
        return jnp.mean(task.per_sample_loss(predict(theta, inputs), labels))

    simulate = jax.jit(lambda key, psi: simulator.simulate(key, psi, dataset_size))

    # The same training loop as make_autosimulate's fine-tuning (one function for both).
    finetune = jax.jit(functools.partial(train_epochs, mean_loss, inner_optimizer, batch_size=batch_size,
                                         epochs=finetune_epochs))

    @jax.jit
    def measure(theta, inputs, labels):
        logits = predict(theta, inputs)
        return jnp.mean(task.per_sample_loss(logits, labels)), task.metric(logits, labels)

    def evaluate(psi, theta, opt_state, sim_key, train_key) -> Evaluation:
        t0 = time.perf_counter()
        with reraise_render_errors():
            _, inputs, labels = jax.block_until_ready(simulate(sim_key, psi))
        t1 = time.perf_counter()
        theta, opt_state, train_loss = jax.block_until_ready(finetune(theta, opt_state, inputs, labels, train_key))
        t2 = time.perf_counter()
        val_loss, val_metric = jax.block_until_ready(measure(theta, x_val, y_val))
        t3 = time.perf_counter()
        return Evaluation(theta, opt_state, float(val_loss), float(val_metric), float(train_loss), dataset_size,
                          finetune_epochs * (dataset_size // batch_size), t1 - t0, t2 - t1, t3 - t2)

    def test(theta):
        if test_data is None:
            return float("nan"), float("nan")
        loss, metric = measure(theta, *(jnp.asarray(a) for a in test_data))
        return float(loss), float(metric)

    def reward_fn(ev: Evaluation) -> float:
        return sign * ev.val_metric if reward == "metric" else -ev.val_loss

    return Objective(theta0, inner_optimizer.init, evaluate, test, reward_fn, dataset_size)
