"""Bayesian optimisation with the ``bayesian-optimization`` package (the paper's BO baseline).

The package (``bayes_opt``, extra ``[baselines]``) is imported lazily. It optimises the
reward over the shared box of :mod:`~autosim_jax.baselines.space` (continuous coordinates:
continuous fields' ``loc`` and every categorical logit), with its Gaussian process (Matern
5/2, normalised targets) and the upper-confidence-bound acquisition.

The history of observations lives in the state as fixed-size arrays (``X [max_evaluations,
d]``, ``y``, ``count``), and each step rebuilds the optimiser from them with a seed drawn
from the state's key, so a step is a deterministic function of its state and the CLI's
checkpoints and ``--resume`` work as for AutoSimulate. Step 0 evaluates the start ``psi``,
the next ``initial_points`` steps uniform random points of the box (the package's
``init_points``), and every later step the package's suggestion.

Acquisition cost: the package maximises UCB by L-BFGS-B with finite-difference gradients
(``d + 1`` GP predictions per gradient) from ``n_smart = 10`` starts, which dominates a
step in high dimension. On clevr-seg's 93-coordinate box with 43 observations (2 cores),
10 starts took 8.9-9.7 s per suggestion (up to 80 s per step while other runs shared the
cores), 1 start 0.9-1.4 s, and both reached the same UCB value in the two seeds tried; 0
starts (the best of 10,000 random points only) took 0.05 s but a lower UCB (0.41 vs 0.46).
So ``acquisition_restarts`` defaults to 1.

Observation noise: the reward is noisy (a fresh render and fine-tuning each time, and, with
warm start, a model that keeps training), so ``noise`` is added to the GP's diagonal
(``alpha``, in the units of the normalised targets) instead of the package's ``1e-6``.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..simulator import Simulator
from ..tasks import Task
from .common import BlackBox, BlackBoxState, evaluate_candidates, finish_step, initial_state
from ..config import AutoSimConfig
from .objective import make_objective
from .space import make_search_space

_MISSING = (
    "The 'bo' baseline needs the bayesian-optimization package: pip install 'autosim_jax[baselines]' "
    "(or pip install bayesian-optimization). Import failed: {err}"
)


def _import_bayes_opt():
    try:
        import bayes_opt
        from bayes_opt import acquisition
    except ImportError as err:
        raise ImportError(_MISSING.format(err=err)) from err
    return bayes_opt, acquisition


def make_bayesopt(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    val_data,
    test_data=None,
    *,
    max_evaluations: int = 256,
    initial_points: int = 3,
    kappa: float = 2.576,
    noise: float = 1e-2,
    warm_start: bool = False,
    reward: str = "metric",
    radius: float = 3.0,
    include_scales: bool = False,
    acquisition_restarts: int = 1,
    config: AutoSimConfig | None = None,
) -> BlackBox:
    """Builds BO's ``(init, step)``; ``search`` holds ``(X, y, count, best_reward)``.

    Args:
      max_evaluations: size of the stored history (a step past it raises ``ValueError``).
      initial_points: random points after the start before the GP is used.
      kappa: UCB exploration weight (the package's default).
      noise: GP ``alpha`` (see the module docstring).
      acquisition_restarts: L-BFGS-B starts of the acquisition maximiser (the package's
        ``n_smart``, default 10 there; see the module docstring); 0 keeps only its 10,000
        random candidates.
      others: see :func:`~autosim_jax.baselines.make_lts`.

    Raises:
      ImportError: without the ``bayesian-optimization`` package, naming the extra.

    References:
      Snoek, Larochelle, Adams (NeurIPS 2012); Nogueira, bayesian-optimization (2014-);
      AutoSimulate Sec. 5.
    """
    bayes_opt, acquisition = _import_bayes_opt()
    from sklearn.exceptions import ConvergenceWarning  # a dependency of bayes_opt

    if max_evaluations < 2 or initial_points < 0:
        raise ValueError(f"need max_evaluations >= 2 and initial_points >= 0, got {max_evaluations}, {initial_points}.")
    if acquisition_restarts < 0:
        raise ValueError(f"acquisition_restarts must be >= 0 (0: random candidates only), got {acquisition_restarts}.")
    objective = make_objective(simulator, model, task, val_data, test_data, config, reward=reward)
    psi0 = simulator.distribution.init()
    space = make_search_space(psi0, radius=radius, include_scales=include_scales,
                              schema=simulator.renderer.schema)
    d = space.dim
    keys = [f"x{i:04d}" for i in range(d)]  # sortable names: the package's order is ours
    pbounds = {k: (float(lo), float(hi)) for k, lo, hi in zip(keys, space.lower, space.upper)}
    lower, upper = jnp.asarray(space.lower), jnp.asarray(space.upper)
    decode = jax.jit(space.decode)
    uniform = jax.jit(lambda key: jax.random.uniform(key, lower.shape, lower.dtype, lower, upper))

    class BoundedUCB(acquisition.UpperConfidenceBound):
        """UCB whose maximiser runs ``acquisition_restarts`` L-BFGS-B starts (the package's 10 is slow)."""

        def suggest(self, gp, target_space, n_random=10_000, n_smart=10, fit_gp=True, random_state=None):
            return super().suggest(gp, target_space, n_random=n_random, n_smart=acquisition_restarts,
                                   fit_gp=fit_gp, random_state=random_state)

    def suggest(xs: np.ndarray, ys: np.ndarray, seed: int) -> np.ndarray:
        bo = bayes_opt.BayesianOptimization(
            f=None, pbounds=pbounds, acquisition_function=BoundedUCB(kappa=kappa),
            random_state=seed, verbose=0, allow_duplicate_points=True)
        bo.set_gp_params(alpha=noise)
        # The package prints (to stdout) a note for each duplicate point; keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # Length scales at their bounds on a handful of points are expected.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for x, y in zip(xs, ys):
                bo.register(params=np.asarray(x, float), target=float(y))
            s = bo.suggest()
        return np.asarray([s[k] for k in keys], np.float64)

    def init(seed: int) -> BlackBoxState:
        dtype = space.encode(psi0).dtype
        search = (jnp.zeros((max_evaluations, d), dtype), jnp.zeros((max_evaluations,), dtype),
                  jnp.zeros((), jnp.int32), jnp.full((), -jnp.inf, dtype))
        return initial_state(objective, psi0, search, seed)

    def step(state: BlackBoxState) -> tuple[BlackBoxState, dict]:
        t_start = time.perf_counter()
        xs, ys, count, best = state.search
        n = int(count)
        if n >= max_evaluations:
            raise ValueError(f"BO's history is full ({max_evaluations} evaluations); build it with a larger "
                             "max_evaluations.")
        key, prop_key, eval_key = jax.random.split(state.key, 3)
        if n == 0:
            x = space.encode(psi0)
        elif n <= initial_points:
            x = uniform(prop_key)
        else:
            seed = int(jax.random.randint(prop_key, (), 0, 2**31 - 1))
            x = jnp.asarray(suggest(np.asarray(xs[:n]), np.asarray(ys[:n]), seed), xs.dtype)
        candidate = decode(x)
        (ev,) = evaluate_candidates(objective, state, [candidate], eval_key[None], warm_start=warm_start)
        r = objective.reward(ev)
        improved = r > float(best)
        search = (xs.at[n].set(x), ys.at[n].set(r), count + 1, jnp.where(improved, jnp.asarray(r, best.dtype), best))
        return finish_step(objective, state, [ev], [r], psi=candidate if improved else state.psi, search=search,
                           key=key, warm_start=warm_start, carry=improved, t_start=t_start,
                           extra=dict(best_reward=float(search[3]), improved=bool(improved),
                                      suggested=n > initial_points))

    return BlackBox(init, step, objective, space)
