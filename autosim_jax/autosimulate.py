r"""The AutoSimulate outer step (paper Algorithm 1, Eq. 12-13, Table 1).

One outer iteration at ``psi_t``:

1. **simulate**: sample ``K`` scenes ``s_k ~ q_psi`` and render them (host callback);
2. **fine-tune**: train the task model for ``epsilon`` epochs on them, warm-started from the
   previous ``theta`` (optax), giving ``theta_hat(psi_t)``;
3. **outer**: ``g_val`` on the validation set, a vector ``u`` chosen by the approximation of
   Table 1, the score-function term ``S(u) = d/dpsi E_q[dl/dtheta] . u`` (Eq. 11), and an
   optax step on ``psi``.

The three stages are separately jitted (the renderer runs on the host between them, and the
caller gets the wall time of each); none of them retraces from one step to the next.

Signs (Table 1). Every approximation is a local model ``L~(psi) = L_val + Delta_theta(psi)^T
g_val`` (Eq. 2) with a *descent* step ``Delta_theta`` of the training loss. With ``g_tr(psi)
= dL_train(theta_hat, psi)/dtheta`` and ``dg_tr/dpsi . u = S(u)``:

============================  ===============================  ===========================
approximation                 ``Delta_theta``                  ``dL~/dpsi``
============================  ===============================  ===========================
``exact_quadratic``           ``-(H + lambda I)^-1 g_tr``      ``-S((H + lambda I)^-1 g_val)``
``approx_quadratic``          ``-H g_tr``                      ``-S(H g_val)``
``linear``                    ``-g_tr``                        ``-S(g_val)``
``no_val``                    (no validation)                  ``+dE_q[l]/dpsi``
============================  ===============================  ===========================

Table 1 prints the approximate-quadratic derivative with a plus sign, i.e. ``Delta_theta =
+H g_tr``. For a positive definite ``H`` that step *increases* the training loss
(``g_tr^T H g_tr > 0``), so it cannot stand for training; we use ``-H g_tr``, a descent
direction like the other rows, which makes all three validation rows descend
``L_val`` (``tests/test_autosimulate.py`` shows it on a toy with a known optimum). ``no_val``
follows the text ("does not use the real validation set at all and just finds data which
gives minimum model loss"): it descends ``E_{s~q_psi}[l(r(s), theta_hat)]`` by REINFORCE.
Psi is updated by ``psi <- optax_step(dL~/dpsi)``, so a plain SGD outer optimiser gives Eq.
13b, ``psi + alpha S(v)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .config import AutoSimConfig
from .estimators import reinforce_gradient, score_function_term
from .inner import Inner, make_inner
from .outer import add_entropy_bonus
from .simulator import Simulator, reraise_render_errors
from .table1 import SolveReport, approximation_vector, curvature_operator
from .tasks import Task

PyTree = Any


class AutoSimState(NamedTuple):
    """Everything an outer step needs; a pytree of arrays (checkpoint it as is)."""

    psi: PyTree  # parameters of q_psi (the distribution's init() structure)
    theta: PyTree  # task-model parameters, nnx.Param state
    inner_opt_state: PyTree  # optax state of the fine-tuning optimiser (warm start)
    outer_opt_state: PyTree  # optax state of the psi optimiser
    key: jax.Array  # uint32[2] raw PRNG key, split once per step
    step: jax.Array  # int32[], outer iterations done
    images: jax.Array  # int32[], images rendered so far


class Hypergradient(NamedTuple):
    """What :attr:`AutoSimulate.hypergradient` returns (arrays; scalars are 0-d)."""

    grad_psi: PyTree  # dL~/dpsi, a descent direction of the local model (like psi)
    val_loss: jax.Array  # L_val(theta_hat(psi_t))
    val_metric: jax.Array  # the task metric on the validation set at theta_hat(psi_t)
    solve: SolveReport  # how Table 1's vector was obtained


class StepInfo(NamedTuple):
    """What one :attr:`AutoSimulate.step` did, as Python scalars (``._asdict()`` for JSON)."""

    val_loss: float  # validation loss of the fine-tuned theta_hat(psi_t)
    val_metric: float  # validation metric of theta_hat(psi_t)
    train_loss: float  # mean fine-tuning loss of the last epoch
    psi_grad_norm: float  # ||dL~/dpsi||
    cg_relative_residual: float  # 0 when the approximation has no solve
    cg_converged: bool  # the solve met cg_tol (True when there is no solve)
    cg_indefinite: bool  # negative curvature met (raise the damping)
    cg_model_value: float  # q(u) of Eq. 13a's quadratic; >= 0: the vector is no better than zero
    psi_updated: bool  # False: the step kept psi (unusable solve, or a non-finite update)
    time_render: float  # seconds of each stage (wall clock, blocked)
    time_train: float
    time_outer: float


class AutoSimulate(NamedTuple):
    """The functions built by :func:`make_autosimulate`.

    Attributes:
      init: ``init(seed) -> AutoSimState``.
      step: ``step(state) -> (state, StepInfo)``: one outer iteration of Algorithm 1.
      hypergradient: ``(psi, theta, scenes, inputs, labels) -> Hypergradient``, jitted and
        pure: the outer stage on renders of your own (Algorithm 1, lines 4-7).
      inner: the shared :class:`~autosim_jax.inner.Inner` stages (``measure(theta, x, y)``,
        ``predict``, ...).
      config: the :class:`~autosim_jax.AutoSimConfig` in use.
      trace_counts: ``() -> dict`` stage name -> number of times it was traced.
    """

    init: Callable[[int], AutoSimState]
    step: Callable[[AutoSimState], tuple[AutoSimState, StepInfo]]
    hypergradient: Callable[..., Hypergradient]
    inner: Inner
    config: AutoSimConfig
    trace_counts: Callable[[], dict]


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _split_optimizers(overrides: dict[str, Any]) -> dict[str, optax.GradientTransformation]:
    """Pulls optax transformations passed for ``inner_optimizer`` / ``outer_optimizer``."""
    return {k: overrides.pop(k) for k in ("inner_optimizer", "outer_optimizer")
            if isinstance(overrides.get(k), optax.GradientTransformation)}


def _check_val_data(simulator: Simulator, val_data) -> tuple[jax.Array, jax.Array]:
    if not isinstance(val_data, (tuple, list)) or len(val_data) != 2:
        raise ValueError(f"val_data must be a pair (inputs, labels), got {type(val_data).__name__}"
                         + (f" of length {len(val_data)}" if isinstance(val_data, (tuple, list)) else "") + ".")
    x_val, y_val = (jnp.asarray(a) for a in val_data)
    spec_in, spec_lab = simulator.renderer.inputs_spec, simulator.renderer.labels_spec
    if x_val.shape[1:] != tuple(spec_in.shape) or y_val.shape[1:] != tuple(spec_lab.shape) or len(x_val) != len(y_val):
        raise ValueError(
            f"val_data shapes {x_val.shape} / {y_val.shape} do not match the renderer's outputs "
            f"(n, *{spec_in.shape}) / (n, *{spec_lab.shape}) with the same n."
        )
    return x_val, y_val


def make_autosimulate(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    val_data: tuple[jax.Array, jax.Array],
    config: AutoSimConfig | None = None,
    **overrides: Any,
) -> AutoSimulate:
    r"""Builds AutoSimulate's ``(init, step)`` for one simulator, model, task and validation set.

    Args:
      simulator: a :class:`~autosim_jax.Simulator` (distribution ``q_psi`` + host renderer).
      model: a flax ``nnx.Module`` whose state is only ``nnx.Param`` (its current
        parameters are the starting ``theta``).
      task: a :class:`~autosim_jax.Task` (per-sample loss and metric on logits).
      val_data: ``(inputs, labels)`` of the (real) validation set.
      config: an :class:`~autosim_jax.AutoSimConfig` (default ``AutoSimConfig()``).
      **overrides: fields of ``config`` to change (``approximation="linear"``, ...).
        ``inner_optimizer`` / ``outer_optimizer`` also accept an optax transformation,
        used as given instead of the one the config names.

    Returns:
      An :class:`AutoSimulate`.

    Raises:
      ValueError: for unknown or invalid options, a model that is not an ``nnx.Module`` or
        holds non-``Param`` state, or validation data whose shapes do not match the
        renderer's outputs.

    References:
      Behl et al., AutoSimulate (ECCV 2020): Algorithm 1, Eq. 11-13, Table 1.

    Example:
      >>> import numpy as np
      >>> from autosim_jax import Field, OutputSpec, SceneSchema, Simulator, Task, from_schema
      >>> class Square:  # a scene is a number x; the renderer returns (x, x^2)
      ...     name = "square"
      ...     schema = SceneSchema((Field.continuous("x"),))
      ...     inputs_spec = labels_spec = OutputSpec((1,), np.float32)
      ...     def render(self, scenes, seed):
      ...         x = scenes["x"][:, None].astype(np.float32)
      ...         return x, x ** 2
      >>> sim = Simulator(from_schema(Square.schema), Square())
      >>> mse = lambda out, y: ((out - y) ** 2).sum(-1)
      >>> task = Task.from_per_sample(mse, lambda out, y: -mse(out, y), "neg_mse")
      >>> x_val = np.full((16, 1), 2.0, np.float32)
      >>> autosim = make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, (x_val, x_val ** 2),
      ...                             dataset_size=32, batch_size=16)
      >>> state = autosim.init(0)
      >>> state, info = autosim.step(state)
      >>> int(state.step), info.cg_converged in (True, False)
      (1, True)
    """
    optimizers = _split_optimizers(overrides)
    config = (config or AutoSimConfig()).replace(**overrides)
    inner_optimizer = optimizers.get("inner_optimizer") or config.inner_optax()
    outer_optimizer = optimizers.get("outer_optimizer") or config.outer_optax()
    x_val, y_val = _check_val_data(simulator, val_data)
    inner = make_inner(simulator, model, task, optimizer=inner_optimizer, dataset_size=config.dataset_size,
                       batch_size=config.batch_size, epochs=config.finetune_epochs,
                       val_batch_size=config.val_batch_size)
    distribution = simulator.distribution
    curv_n = config.curvature_batch_size or config.dataset_size
    traces = {"simulate": 0, "finetune": 0, "outer": 0}

    def init(seed: int) -> AutoSimState:
        psi = distribution.init()
        return AutoSimState(
            psi=psi,
            theta=inner.theta0,
            inner_opt_state=inner_optimizer.init(inner.theta0),
            outer_opt_state=outer_optimizer.init(psi),
            key=jax.random.PRNGKey(seed),
            step=jnp.zeros((), jnp.int32),
            images=jnp.zeros((), jnp.int32),
        )

    def hypergradient(psi, theta, scenes, inputs, labels) -> Hypergradient:
        """Algorithm 1, lines 4-7: g_val, Table 1's vector u, and dL~/dpsi = -S(u)."""
        (val_loss, val_metric), g_val = inner.measure_and_grad(theta, x_val, y_val)
        if config.approximation == "no_val":
            losses = inner.per_sample_loss(theta, inputs, labels)
            grad = reinforce_gradient(distribution.log_prob, psi, scenes, losses, baseline=config.baseline)
            return Hypergradient(grad, val_loss, val_metric, SolveReport.no_solve())
        u, report = approximation_vector(
            config.approximation, g_val,
            lambda: curvature_operator(config.curvature, inner.predict, task.per_sample_loss, theta,
                                       inputs[:curv_n], labels[:curv_n]),
            damping=config.damping, cg_tol=config.cg_tol, cg_maxiter=config.cg_maxiter,
        )
        s = score_function_term(distribution.log_prob, psi, scenes, inner.per_sample_loss, theta, u, inputs, labels,
                                method=config.estimator, baseline=config.baseline)
        return Hypergradient(jax.tree.map(jnp.negative, s), val_loss, val_metric, report)

    @jax.jit
    def simulate(key, psi):
        traces["simulate"] += 1
        return inner.simulate(key, psi)

    @jax.jit
    def finetune(theta, opt_state, inputs, labels, key):
        traces["finetune"] += 1
        return inner.finetune(theta, opt_state, inputs, labels, key)

    @jax.jit
    def outer(psi, outer_opt_state, theta, scenes, inputs, labels):
        traces["outer"] += 1
        hg = hypergradient(psi, theta, scenes, inputs, labels)
        grad = hg.grad_psi
        if config.entropy_weight:
            grad = add_entropy_bonus(psi, grad, config.entropy_weight)
        updates, new_opt_state = outer_optimizer.update(grad, outer_opt_state, psi)
        new_psi = optax.apply_updates(psi, updates)
        # A vector no better than zero (q(u) >= 0: an indefinite or diverged solve) or a
        # non-finite update never moves psi: the step keeps psi and the optimiser state.
        ok = hg.solve.usable & _all_finite((new_psi, new_opt_state))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        return keep(new_psi, psi), keep(new_opt_state, outer_opt_state), hg, ok

    def step(state: AutoSimState) -> tuple[AutoSimState, StepInfo]:
        key, sim_key, train_key = jax.random.split(state.key, 3)
        t0 = time.perf_counter()
        with reraise_render_errors():
            scenes, inputs, labels = jax.block_until_ready(simulate(sim_key, state.psi))
        t1 = time.perf_counter()
        theta, inner_state, train_loss = jax.block_until_ready(
            finetune(state.theta, state.inner_opt_state, inputs, labels, train_key)
        )
        t2 = time.perf_counter()
        psi, outer_state, hg, ok = jax.block_until_ready(outer(state.psi, state.outer_opt_state, theta, scenes,
                                                               inputs, labels))
        t3 = time.perf_counter()
        new_state = AutoSimState(psi, theta, inner_state, outer_state, key, state.step + 1,
                                 state.images + config.dataset_size)
        info = StepInfo(
            val_loss=float(hg.val_loss), val_metric=float(hg.val_metric), train_loss=float(train_loss),
            psi_grad_norm=float(optax.tree.norm(hg.grad_psi)),
            cg_relative_residual=float(hg.solve.relative_residual), cg_converged=bool(hg.solve.converged),
            cg_indefinite=bool(hg.solve.indefinite), cg_model_value=float(hg.solve.model_value), psi_updated=bool(ok),
            time_render=t1 - t0, time_train=t2 - t1, time_outer=t3 - t2,
        )
        return new_state, info

    return AutoSimulate(init, step, jax.jit(hypergradient), inner, config, lambda: dict(traces))
