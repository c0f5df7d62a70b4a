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

from .curvature import empirical_fisher_operator, gauss_newton_operator, hessian_operator
from .estimators import reinforce_gradient, score_function_term
from .simulator import Simulator, reraise_render_errors
from .solve import solve_damped
from .tasks import Task
from .training import train_epochs

PyTree = Any

APPROXIMATIONS = ("exact_quadratic", "approx_quadratic", "linear", "no_val")
CURVATURES = ("hessian", "gauss_newton", "empirical_fisher")


class AutoSimState(NamedTuple):
    """Everything an outer step needs; a pytree of arrays (checkpoint it as is)."""

    psi: PyTree  # parameters of q_psi (the distribution's init() structure)
    theta: PyTree  # task-model parameters, nnx.Param state
    inner_opt_state: PyTree  # optax state of the fine-tuning optimiser (warm start)
    outer_opt_state: PyTree  # optax state of the psi optimiser
    key: jax.Array  # uint32[2] raw PRNG key, split once per step
    step: jax.Array  # int32[], outer iterations done
    images: jax.Array  # int32[], images rendered so far


class AutoSimulate(NamedTuple):
    """The pair of functions built by :func:`make_autosimulate`, plus evaluation.

    Attributes:
      init: ``init(seed) -> AutoSimState``.
      step: ``step(state) -> (state, info)``; ``info`` is a dict of Python floats: validation
        loss and metric at ``theta_hat(psi_t)``, training loss, CG residual / converged /
        indefinite flags, the norm of the psi gradient, and the wall time of each stage.
      evaluate: ``evaluate(theta, inputs, labels) -> (loss, metric)``, jitted.
      predict: ``predict(theta, inputs) -> logits``, jitted.
      trace_counts: ``() -> dict`` stage name -> number of times it was traced.
    """

    init: Callable[[int], AutoSimState]
    step: Callable[[AutoSimState], tuple[AutoSimState, dict]]
    evaluate: Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    predict: Callable[[PyTree, jax.Array], jax.Array]
    trace_counts: Callable[[], dict]


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; valid choices are {list(choices)}.")
    return value


def make_autosimulate(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    val_data: tuple[jax.Array, jax.Array],
    *,
    approximation: str = "exact_quadratic",
    dataset_size: int = 64,
    batch_size: int = 32,
    finetune_epochs: int = 1,
    inner_optimizer: optax.GradientTransformation | None = None,
    outer_optimizer: optax.GradientTransformation | None = None,
    damping: float = 1e-2,
    curvature: str = "gauss_newton",
    curvature_batch_size: int | None = None,
    cg_maxiter: int = 10,
    cg_tol: float = 1e-3,
    estimator: str = "jvp",
    baseline: str | None = "leave_one_out",
) -> AutoSimulate:
    r"""Builds AutoSimulate's ``(init, step)`` for one simulator, model, task and validation set.

    Args:
      simulator: a :class:`~autosim_jax.Simulator` (distribution ``q_psi`` + host renderer).
      model: a flax ``nnx.Module`` whose state is only ``nnx.Param`` (its current
        parameters are the starting ``theta``).
      task: a :class:`~autosim_jax.tasks.Task` (per-sample loss and metric on logits).
      val_data: ``(inputs, labels)`` of the (real) validation set, used whole for ``g_val``.
      approximation: one of ``"exact_quadratic"``, ``"approx_quadratic"``, ``"linear"``,
        ``"no_val"`` (Table 1; see the module docstring for the signs).
      dataset_size: ``K``, scenes rendered per outer step.
      batch_size: fine-tuning minibatch size (``K`` must be a multiple of it).
      finetune_epochs: ``epsilon`` epochs of fine-tuning per step.
      inner_optimizer: optax optimiser of ``theta`` (default ``adam(1e-3)``).
      outer_optimizer: optax optimiser of ``psi`` (default ``adam(5e-2)``).
      damping: Levenberg ``lambda`` of ``H + lambda I`` (Section 4.2), ``>= 0``.
      curvature: ``"gauss_newton"`` (positive semi-definite, cheaper, default),
        ``"hessian"`` (the paper's exact ``H``; may need more damping) or
        ``"empirical_fisher"`` (mean outer product of per-sample gradients; positive
        semi-definite, a cruder proxy, see :func:`~autosim_jax.empirical_fisher_operator`).
      curvature_batch_size: compute the curvature on the first this-many rendered samples
        (Hessian-free practice) instead of all ``K``.
      cg_maxiter, cg_tol: CG iterations and relative tolerance for Eq. 13a.
      estimator: ``"jvp"`` or ``"per_sample"`` (see :func:`~autosim_jax.score_function_term`).
      baseline: control variate of the score-function estimator.

    Returns:
      An :class:`AutoSimulate`.

    Raises:
      ValueError: for unknown options, a negative damping, a batch size that does not divide
        ``K``, or validation data whose shapes do not match the renderer's outputs.

    References:
      Behl et al., AutoSimulate (ECCV 2020): Algorithm 1, Eq. 11-13, Table 1.

    Example:
      >>> autosim = make_autosimulate(sim, model, task, (x_val, y_val))  # doctest: +SKIP
      >>> state = autosim.init(0)  # doctest: +SKIP
      >>> state, info = autosim.step(state)  # doctest: +SKIP
    """
    _choice(approximation, APPROXIMATIONS, "approximation")
    _choice(curvature, CURVATURES, "curvature")
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    if batch_size < 1 or dataset_size % batch_size:
        raise ValueError(
            f"dataset_size ({dataset_size}) must be a positive multiple of batch_size ({batch_size}); "
            "every rendered image should be trained on."
        )
    if finetune_epochs < 1 or cg_maxiter < 1:
        raise ValueError(f"finetune_epochs and cg_maxiter must be >= 1, got {finetune_epochs} and {cg_maxiter}.")
    if curvature_batch_size is not None and not 1 <= curvature_batch_size <= dataset_size:
        raise ValueError(f"curvature_batch_size must be in [1, dataset_size={dataset_size}], got {curvature_batch_size}.")
    x_val, y_val = (jnp.asarray(a) for a in val_data)
    spec_in, spec_lab = simulator.renderer.inputs_spec, simulator.renderer.labels_spec
    if x_val.shape[1:] != tuple(spec_in.shape) or y_val.shape[1:] != tuple(spec_lab.shape) or len(x_val) != len(y_val):
        raise ValueError(
            f"val_data shapes {x_val.shape} / {y_val.shape} do not match the renderer's outputs "
            f"(n, *{spec_in.shape}) / (n, *{spec_lab.shape}) with the same n."
        )
    inner_optimizer = inner_optimizer or optax.adam(1e-3)
    outer_optimizer = outer_optimizer or optax.adam(5e-2)
    graphdef, theta0 = nnx.split(model, nnx.Param)
    distribution = simulator.distribution
    curv_n = curvature_batch_size or dataset_size
    traces = {"simulate": 0, "finetune": 0, "outer": 0}

    def predict(theta, inputs):
        return nnx.merge(graphdef, theta)(inputs)

    def per_sample_loss(theta, inputs, labels):
        return task.per_sample_loss(predict(theta, inputs), labels)

    def mean_loss(theta, inputs, labels):
        return jnp.mean(per_sample_loss(theta, inputs, labels))

    def val_objective(theta):
        logits = predict(theta, x_val)
        return jnp.mean(task.per_sample_loss(logits, y_val)), logits

    def init(seed: int) -> AutoSimState:
        psi = distribution.init()
        return AutoSimState(
            psi=psi,
            theta=theta0,
            inner_opt_state=inner_optimizer.init(theta0),
            outer_opt_state=outer_optimizer.init(psi),
            key=jax.random.PRNGKey(seed),
            step=jnp.zeros((), jnp.int32),
            images=jnp.zeros((), jnp.int32),
        )

    @jax.jit
    def simulate(key, psi):
        traces["simulate"] += 1
        return simulator.simulate(key, psi, dataset_size)

    @jax.jit
    def finetune(theta, opt_state, inputs, labels, key):
        """Epsilon epochs of minibatch training on the K rendered samples (Algorithm 1, line 3)."""
        traces["finetune"] += 1
        return train_epochs(mean_loss, inner_optimizer, theta, opt_state, inputs, labels, key,
                            batch_size=batch_size, epochs=finetune_epochs)

    @jax.jit
    def outer(psi, outer_opt_state, theta, scenes, inputs, labels):
        """g_val, the approximation's vector, the score-function term and the psi update."""
        traces["outer"] += 1
        # One forward pass over the validation set serves the loss, its gradient and the metric.
        (val_loss, val_logits), g_val = jax.value_and_grad(val_objective, has_aux=True)(theta)
        val_metric = task.metric(val_logits, y_val)
        residual, converged, indefinite = jnp.float32(0), jnp.bool_(True), jnp.bool_(False)
        if approximation == "no_val":
            losses = per_sample_loss(theta, inputs, labels)
            grad_psi = reinforce_gradient(distribution.log_prob, psi, scenes, losses, baseline=baseline)
        else:
            if approximation == "linear":
                u = g_val
            else:
                xc, yc = inputs[:curv_n], labels[:curv_n]
                if curvature == "hessian":
                    op = hessian_operator(mean_loss, theta, xc, yc)
                elif curvature == "empirical_fisher":
                    op = empirical_fisher_operator(per_sample_loss, theta, xc, yc)
                else:
                    op = gauss_newton_operator(
                        predict, lambda out, y: jnp.mean(task.per_sample_loss(out, y)), theta, xc, yc
                    )
                if approximation == "approx_quadratic":
                    u = op.matvec(g_val)
                else:
                    sol = solve_damped(op, g_val, damping, tol=cg_tol, maxiter=cg_maxiter)
                    u, residual, converged, indefinite = sol.x, sol.relative_residual, sol.converged, sol.indefinite
            s = score_function_term(
                distribution.log_prob, psi, scenes, per_sample_loss, theta, u, inputs, labels,
                method=estimator, baseline=baseline,
            )
            grad_psi = jax.tree.map(jnp.negative, s)
        updates, outer_opt_state = outer_optimizer.update(grad_psi, outer_opt_state, psi)
        info = dict(
            val_loss=val_loss, val_metric=val_metric, cg_relative_residual=residual, cg_converged=converged,
            cg_indefinite=indefinite, psi_grad_norm=optax.tree.norm(grad_psi),
        )
        return optax.apply_updates(psi, updates), outer_opt_state, info

    def step(state: AutoSimState) -> tuple[AutoSimState, dict]:
        key, sim_key, train_key = jax.random.split(state.key, 3)
        t0 = time.perf_counter()
        with reraise_render_errors():
            scenes, inputs, labels = jax.block_until_ready(simulate(sim_key, state.psi))
        t1 = time.perf_counter()
        theta, inner_state, train_loss = jax.block_until_ready(
            finetune(state.theta, state.inner_opt_state, inputs, labels, train_key)
        )
        t2 = time.perf_counter()
        psi, outer_state, info = jax.block_until_ready(outer(state.psi, state.outer_opt_state, theta, scenes, inputs, labels))
        t3 = time.perf_counter()
        new_state = AutoSimState(psi, theta, inner_state, outer_state, key, state.step + 1, state.images + dataset_size)
        info = {k: (bool(v) if v.dtype == jnp.bool_ else float(v)) for k, v in info.items()}
        info.update(train_loss=float(train_loss), time_render=t1 - t0, time_train=t2 - t1, time_outer=t3 - t2)
        return new_state, info

    @jax.jit
    def evaluate(theta, inputs, labels):
        logits = predict(theta, inputs)
        return jnp.mean(task.per_sample_loss(logits, labels)), task.metric(logits, labels)

    return AutoSimulate(init, step, evaluate, jax.jit(predict), lambda: dict(traces))
