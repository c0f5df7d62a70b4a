"""The state and the step skeleton shared by the black-box baselines.

Every baseline step evaluates one or more candidate ``psi`` with the shared
:class:`~autosim_jax.baselines.objective.Objective` and then updates its own search state.

Warm start. With ``warm_start=True`` every evaluation of a step starts from the carried
``theta`` (and its optimiser state), as AutoSimulate's fine-tuning does, and the model carried
on is that of the step's best evaluation (``carry``); random search and BO carry only an
improving candidate's model. With ``warm_start=False`` every evaluation starts from the
model's initialisation (Ruiz et al. retrain the task model per policy sample): the objective
is a stationary function of ``psi``, which random search and BO assume.

Defaults, measured on the toy of ``tests/test_baselines.py`` (optimum mu* = 2.03, start -1):

* LTS: ``warm_start=True``. Its samples stay near the policy mean, so the carried model
  follows the policy as AutoSimulate's follows ``psi``; 40 steps reach mu = 1.42. From the
  initialisation each time the reward is flat-to-decreasing around the start (-6.55 at mu = -1,
  -7.78 at 0, -1.93 at 1), and the policy drifted the wrong way (mu = -1.47).
* random search, BO: ``warm_start=False``. A global method's candidates are far apart; a
  model carried from candidate to candidate (or from the incumbent) makes the reward a
  function of the history: carrying every candidate's model, rewards fell from -6.5 to -25
  whatever the candidate and neither method left the start; carrying the incumbent's, BO
  accepted mu = -1.52 over mu = 2.94 because the model it fine-tuned had been trained on
  the good candidate. From the initialisation, BO reached mu = 2.69 in 15 evaluations.

The price of ``warm_start=False``: ``epsilon`` epochs on ``K`` images from scratch is a weaker
model than AutoSimulate's at the same budget, so compare the methods' *learned psi* with
:func:`~autosim_jax.assess_psi` (fresh models on equal budgets), not only their best
validation metric during the search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .objective import Evaluation, Objective
from .space import SearchSpace

PyTree = Any


class BlackBoxState(NamedTuple):
    """The state of a black-box baseline; a pytree of arrays (checkpoint it as is)."""

    psi: PyTree  # the method's current answer (LTS: the policy mean; random / BO: the incumbent)
    theta: PyTree  # task-model parameters carried between steps (warm start)
    inner_opt_state: PyTree  # optax state of the fine-tuning optimiser
    search: PyTree  # method-specific arrays (see each method)
    key: jax.Array  # uint32[2] raw PRNG key, split once per step
    step: jax.Array  # int32[], steps done
    images: jax.Array  # int32[], images rendered so far
    evaluations: jax.Array  # int32[], objective evaluations so far
    train_steps: jax.Array  # int32[], task-model optimiser steps so far


class BlackBox(NamedTuple):
    """``(init, step)`` of a baseline, as :class:`~autosim_jax.AutoSimulate` has.

    Attributes:
      init: ``init(seed) -> BlackBoxState``.
      step: ``step(state) -> (state, info)``; ``info`` holds Python scalars: ``images``,
        ``evaluations``, ``train_steps`` (cumulative), ``val_loss`` / ``val_metric`` /
        ``test_loss`` / ``test_metric`` of the step's best evaluation, ``reward`` (its reward),
        ``time_render`` / ``time_train`` / ``time_other`` (seconds of this step; the test
        metric, a monitor, is timed apart as ``time_monitor``).
      objective: the shared :class:`Objective`.
      space: the :class:`SearchSpace`.
    """

    init: Callable[[int], BlackBoxState]
    step: Callable[[BlackBoxState], tuple[BlackBoxState, dict]]
    objective: Objective
    space: SearchSpace


def initial_state(objective: Objective, psi0: PyTree, search: PyTree, seed: int) -> BlackBoxState:
    zero = jnp.zeros((), jnp.int32)
    theta0 = objective.theta0
    return BlackBoxState(psi0, theta0, objective.init_opt(theta0), search, jax.random.PRNGKey(seed), zero, zero,
                         zero, zero)


def evaluate_candidates(
    objective: Objective, state: BlackBoxState, psis: Sequence[PyTree], keys: jax.Array, *, warm_start: bool
) -> list[Evaluation]:
    """One objective evaluation per candidate, each from the carried (or the initial) model."""
    if warm_start:
        theta, opt_state = state.theta, state.inner_opt_state
    else:
        theta = objective.theta0
        opt_state = objective.init_opt(theta)
    evals = []
    for psi, key in zip(psis, keys):
        sim_key, train_key = jax.random.split(key)
        evals.append(objective.evaluate(psi, theta, opt_state, sim_key, train_key))
    return evals


def finish_step(
    objective: Objective,
    state: BlackBoxState,
    evals: list[Evaluation],
    rewards: Sequence[float],
    *,
    psi: PyTree,
    search: PyTree,
    key: jax.Array,
    warm_start: bool,
    carry: bool = True,
    t_start: float,
    extra: dict | None = None,
) -> tuple[BlackBoxState, dict]:
    """Carries the best evaluation's model (when ``carry``), updates the counters, builds ``info``."""
    best = max(range(len(evals)), key=lambda i: rewards[i])
    ev = evals[best]
    keep = warm_start and carry
    theta, opt_state = (ev.theta, ev.inner_opt_state) if keep else (state.theta, state.inner_opt_state)
    new = BlackBoxState(
        psi, theta, opt_state, search, key, state.step + 1,
        state.images + sum(e.images for e in evals), state.evaluations + len(evals),
        state.train_steps + sum(e.train_steps for e in evals),
    )
    t_test = time.perf_counter()
    test_loss, test_metric = objective.test(ev.theta)
    time_monitor = time.perf_counter() - t_test
    total = time.perf_counter() - t_start - time_monitor
    render = sum(e.time_render for e in evals)
    train = sum(e.time_train for e in evals)
    info = dict(
        images=int(new.images), evaluations=int(new.evaluations), train_steps=int(new.train_steps),
        val_loss=ev.val_loss, val_metric=ev.val_metric, test_loss=test_loss, test_metric=test_metric,
        reward=float(rewards[best]), train_loss=ev.train_loss,
        time_render=render, time_train=train, time_other=max(total - render - train, 0.0), time_monitor=time_monitor,
    )
    info.update(extra or {})
    return new, info
