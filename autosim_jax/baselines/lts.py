r"""Learning to Simulate (Ruiz, Schulter, Chandraker; ICLR 2019), the paper's main baseline.

The whole generate-train-validate pipeline is a black box ``R(psi)`` (the validation reward
of a model trained on data rendered from ``q_psi``). A Gaussian *policy* over the searched
coordinates of ``psi`` (see :mod:`~autosim_jax.baselines.space`), mean ``x_t`` and fixed
standard deviation ``sigma``, proposes ``N`` simulator settings per step, as Ruiz et al.
sample the simulator parameters from their policy:

.. math::
   x_n \sim \mathcal{N}(x_t, \sigma^2 I), \qquad
   \nabla_{x} \mathbb{E}[R] \approx \frac{1}{N} \sum_n (R(x_n) - b_t)\,
   \nabla_{x} \log \mathcal{N}(x_n; x_t, \sigma^2 I)

(:func:`~autosim_jax.reinforce_gradient`), with the moving-average baseline ``b_{t+1} =
beta b_t + (1 - beta) mean_n R(x_n)`` (``b_0`` = the first step's mean reward). Each
``R(x_n)`` is one objective evaluation: render ``K`` scenes from ``q_{x_n}``, fine-tune,
measure (:mod:`~autosim_jax.baselines.objective`). ``x`` ascends the estimate with the same
optax optimiser AutoSimulate uses for ``psi``.

Sampling the scenes' own log-density instead (the whole dataset as the action, ``log pi =
sum_k log q_psi(s_k)``) is the other reading of REINFORCE here; it was not chosen because
one reward per ``K`` scenes then multiplies a sum of ``K`` score terms, whose variance grows
with ``K``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..estimators import reinforce_gradient
from ..simulator import Simulator
from ..tasks import Task
from .common import BlackBox, BlackBoxState, evaluate_candidates, finish_step, initial_state
from ..config import AutoSimConfig
from .objective import make_objective
from .space import make_search_space


def make_lts(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    val_data,
    test_data=None,
    *,
    samples_per_step: int = 4,
    policy_scale: float = 1.0,
    baseline_decay: float = 0.9,
    outer_optimizer: optax.GradientTransformation | None = None,
    warm_start: bool = True,
    reward: str = "metric",
    radius: float = 3.0,
    include_scales: bool = False,
    config: AutoSimConfig | None = None,
) -> BlackBox:
    """Builds the LTS baseline's ``(init, step)``.

    Args:
      simulator, model, task, val_data, test_data: as for
        :func:`~autosim_jax.baselines.make_objective`.
      samples_per_step: ``N`` policy samples (objective evaluations) per step, ``>= 2``.
      policy_scale: ``sigma`` of the Gaussian policy, in the encoding's units.
      baseline_decay: ``beta`` of the moving-average baseline, in ``[0, 1)``.
      outer_optimizer: optax optimiser of the policy mean (default ``adam(5e-2)``, as
        AutoSimulate's default for ``psi``).
      warm_start: see :mod:`~autosim_jax.baselines.common`.
      reward: ``"metric"`` or ``"neg_loss"``.
      radius, include_scales: the search space (:func:`make_search_space`); the policy is
        not clipped to the box, which only fixes which coordinates are searched.
      config: the :class:`~autosim_jax.AutoSimConfig` whose render / fine-tune options the
        objective shares with AutoSimulate.

    Returns:
      A :class:`~autosim_jax.baselines.BlackBox`; ``search`` holds ``(opt_state, baseline)``.

    References:
      Ruiz et al., "Learning to Simulate" (ICLR 2019), Sec. 3; AutoSimulate Sec. 5
      ("REINFORCE (LTS)").
    """
    if samples_per_step < 2:
        raise ValueError("samples_per_step must be >= 2 (the policy gradient compares samples), "
                         f"got {samples_per_step}.")
    if not policy_scale > 0:
        raise ValueError(f"policy_scale must be > 0, got {policy_scale}.")
    if not 0 <= baseline_decay < 1:
        raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}.")
    objective = make_objective(simulator, model, task, val_data, test_data, config, reward=reward)
    psi0 = simulator.distribution.init()
    space = make_search_space(psi0, radius=radius, include_scales=include_scales,
                              schema=simulator.renderer.schema)
    outer_optimizer = outer_optimizer or optax.adam(5e-2)
    n, d = samples_per_step, space.dim

    def log_policy(x, samples):  # [N] log N(x_n; x, sigma^2 I)
        z = (samples - x) / policy_scale
        return -0.5 * jnp.sum(z**2, axis=-1) - d * (jnp.log(policy_scale) + 0.5 * jnp.log(2 * jnp.pi))

    @jax.jit
    def propose(key, psi):
        x = space.encode(psi)
        samples = x + policy_scale * jax.random.normal(key, (n, d), x.dtype)
        return x, samples, jax.vmap(space.decode)(samples)

    @jax.jit
    def update(x, opt_state, samples, rewards, baseline):
        baseline = jnp.where(jnp.isnan(baseline), jnp.mean(rewards), baseline)
        grad = reinforce_gradient(log_policy, x, samples, rewards, baseline=baseline)
        updates, opt_state = outer_optimizer.update(-grad, opt_state, x)
        x = optax.apply_updates(x, updates)
        new_baseline = baseline_decay * baseline + (1 - baseline_decay) * jnp.mean(rewards)
        return space.decode(x), opt_state, new_baseline, jnp.linalg.norm(grad)

    def init(seed: int) -> BlackBoxState:
        search = (outer_optimizer.init(space.encode(psi0)), jnp.full((), jnp.nan, jnp.result_type(float)))
        return initial_state(objective, psi0, search, seed)

    def step(state: BlackBoxState) -> tuple[BlackBoxState, dict]:
        t_start = time.perf_counter()
        key, prop_key, eval_key = jax.random.split(state.key, 3)
        x, samples, psis = propose(prop_key, state.psi)
        candidates = [jax.tree.map(lambda a, i=i: a[i], psis) for i in range(n)]
        evals = evaluate_candidates(objective, state, candidates, jax.random.split(eval_key, n), warm_start=warm_start)
        rewards = [objective.reward(e) for e in evals]
        opt_state, baseline = state.search
        psi, opt_state, baseline, grad_norm = update(x, opt_state, samples, jnp.asarray(rewards, x.dtype),
                                                     baseline.astype(x.dtype))
        extra = dict(mean_reward=float(sum(rewards) / n), baseline=float(baseline), policy_grad_norm=float(grad_norm))
        return finish_step(objective, state, evals, rewards, psi=psi, search=(opt_state, baseline), key=key,
                           warm_start=warm_start, t_start=t_start, extra=extra)

    return BlackBox(init, step, objective, space)
