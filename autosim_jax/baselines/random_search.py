"""Random search over the shared box of psi (the paper used scikit-learn's random search).

Step 0 evaluates the start ``psi`` (as AutoSimulate's first step does); every later step
draws one candidate uniformly from the box ``start +- radius`` of
:mod:`~autosim_jax.baselines.space` (``jax.random.uniform``: scikit-learn's
``ParameterSampler`` with uniform distributions draws the same thing, so it is not needed)
and evaluates it once. The incumbent ``psi`` is the candidate with the best reward so far.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from ..simulator import Simulator
from ..tasks import Task
from .common import BlackBox, BlackBoxState, evaluate_candidates, finish_step, initial_state
from ..config import AutoSimConfig
from .objective import make_objective
from .space import make_search_space


def make_random_search(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    val_data,
    test_data=None,
    *,
    warm_start: bool = False,
    reward: str = "metric",
    radius: float = 3.0,
    include_scales: bool = False,
    config: AutoSimConfig | None = None,
) -> BlackBox:
    """Builds random search's ``(init, step)``; ``search`` holds the incumbent's reward.

    Args: see :func:`~autosim_jax.baselines.make_lts` (the same objective and search space).

    References:
      Bergstra and Bengio, "Random search for hyper-parameter optimization" (JMLR 2012);
      AutoSimulate Sec. 5.
    """
    objective = make_objective(simulator, model, task, val_data, test_data, config, reward=reward)
    psi0 = simulator.distribution.init()
    space = make_search_space(psi0, radius=radius, include_scales=include_scales,
                              schema=simulator.renderer.schema)
    lower, upper = jnp.asarray(space.lower), jnp.asarray(space.upper)

    @jax.jit
    def propose(key, first):
        x = jax.random.uniform(key, lower.shape, lower.dtype, lower, upper)
        return space.decode(jnp.where(first, space.encode(psi0), x))

    def init(seed: int) -> BlackBoxState:
        return initial_state(objective, psi0, jnp.full((), -jnp.inf, jnp.result_type(float)), seed)

    def step(state: BlackBoxState) -> tuple[BlackBoxState, dict]:
        t_start = time.perf_counter()
        key, prop_key, eval_key = jax.random.split(state.key, 3)
        candidate = propose(prop_key, state.step == 0)
        (ev,) = evaluate_candidates(objective, state, [candidate], eval_key[None], warm_start=warm_start)
        r = objective.reward(ev)
        improved = r > float(state.search)
        psi = candidate if improved else state.psi
        best = jnp.asarray(r if improved else state.search, state.search.dtype)
        return finish_step(objective, state, [ev], [r], psi=psi, search=best, key=key, warm_start=warm_start,
                           carry=improved, t_start=t_start,
                           extra=dict(best_reward=float(best), improved=bool(improved)))

    return BlackBox(init, step, objective, space)
