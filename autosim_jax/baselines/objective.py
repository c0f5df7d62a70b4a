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
  >>> objective = make_objective(sim, model, task, val, test, AutoSimConfig(dataset_size=32,
  ...                            batch_size=16, finetune_epochs=2))  # doctest: +SKIP
  >>> ev = objective.evaluate(psi, objective.theta0, objective.init_opt(objective.theta0),
  ...                         sim_key, train_key)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from flax import nnx

from ..config import AutoSimConfig
from ..inner import make_inner
from ..simulator import Simulator, reraise_render_errors
from ..tasks import Task

PyTree = Any


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
    config: AutoSimConfig | None = None,
    *,
    reward: str = "metric",
) -> Objective:
    """Builds the objective evaluation (render K, fine-tune, measure) of one experiment.

    Args:
      simulator, model, task, val_data: as for :func:`~autosim_jax.make_autosimulate`.
      test_data: ``(inputs, labels)`` for :attr:`Objective.test` (``None``: test is NaN).
      config: the :class:`~autosim_jax.AutoSimConfig` whose ``dataset_size``, ``batch_size``,
        ``finetune_epochs``, inner optimiser and ``val_batch_size`` the objective shares with
        AutoSimulate (default ``AutoSimConfig()``).
      reward: ``"metric"`` (the validation metric, negated when lower is better) or
        ``"neg_loss"`` (minus the validation loss).

    Returns:
      An :class:`Objective`.

    Raises:
      ValueError: for an unknown reward.

    References:
      Paper Eq. 1a-1b; the black-box view of Sec. 2 and the baselines of Sec. 5.
    """
    if reward not in REWARDS:
        raise ValueError(f"Unknown reward {reward!r}; valid choices are {list(REWARDS)}.")
    config = config or AutoSimConfig()
    inner = make_inner(simulator, model, task, optimizer=config.inner_optax(), dataset_size=config.dataset_size,
                       batch_size=config.batch_size, epochs=config.finetune_epochs,
                       val_batch_size=config.val_batch_size)
    sign = 1.0 if task.higher_is_better else -1.0

    def evaluate(psi, theta, opt_state, sim_key, train_key) -> Evaluation:
        t0 = time.perf_counter()
        with reraise_render_errors():
            _, inputs, labels = jax.block_until_ready(inner.simulate(sim_key, psi))
        t1 = time.perf_counter()
        theta, opt_state, train_loss = jax.block_until_ready(inner.finetune(theta, opt_state, inputs, labels,
                                                                            train_key))
        t2 = time.perf_counter()
        val_loss, val_metric = jax.block_until_ready(inner.measure(theta, *val_data))
        t3 = time.perf_counter()
        return Evaluation(theta, opt_state, float(val_loss), float(val_metric), float(train_loss),
                          inner.dataset_size, inner.train_steps, t1 - t0, t2 - t1, t3 - t2)

    def test(theta):
        if test_data is None:
            return float("nan"), float("nan")
        loss, metric = inner.measure(theta, *test_data)
        return float(loss), float(metric)

    def reward_fn(ev: Evaluation) -> float:
        return sign * ev.val_metric if reward == "metric" else -ev.val_loss

    return Objective(inner.theta0, inner.init_opt, evaluate, test, reward_fn, inner.dataset_size)
