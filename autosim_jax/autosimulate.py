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

Nothing fails silently. :func:`make_autosimulate` checks its options, the model and the
validation set (:func:`~autosim_jax.inner.check_dataset`) before anything is compiled; a step
refuses a state with a non-finite psi or theta (:class:`NonFiniteStateError`, naming the
field), keeps psi when NaN or inf arises inside it (``StepInfo.psi_kept_reason``), and warns
once per instance when it used an unconverged CG solve (:class:`UnconvergedSolveWarning`) or,
with the Hessian, an indefinite system (:class:`IndefiniteCurvatureWarning`).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .config import AutoSimConfig
from .estimators import directional_derivatives, reinforce_gradient
from .inner import Inner, check_dataset, make_inner, split_model
from .outer import add_entropy_bonus, check_families, cross_fitted_line_search, line_search_scales
from .parallel import check_divisible, constrain_batch, make_mesh, replicate, shard_batch
from .simulator import Simulator, reraise_render_errors
from .solve import solve_damped
from .table1 import SolveReport, approximation_vector, curvature_operator
from .tasks import Task
from .trainable import make_partition

_PRETRAIN_STREAM = 0x70726574  # fold_in tag of AutoSimConfig.pretrain_rounds' keys ("pret")

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
    # Where theta_reset_every sends theta after pretraining (AutoSimConfig.pretrain_rounds);
    # None: the random initialisation (a closure constant, not checkpointed).
    theta_anchor: PyTree = None


class Hypergradient(NamedTuple):
    """What :attr:`AutoSimulate.hypergradient` returns (arrays; scalars are 0-d)."""

    grad_psi: PyTree  # dL~/dpsi, a descent direction of the local model (like psi)
    val_loss: jax.Array  # L_val(theta_hat(psi_t))
    val_metric: jax.Array  # the task metric on the validation set at theta_hat(psi_t)
    solve: SolveReport  # how Table 1's vector was obtained
    stderr: PyTree = None  # grad_psi's standard error per coordinate (only for the noise gate or the signal test)
    # [K] per-render values f_k whose mean over q_psi the step descends: grad_psi is their REINFORCE
    # gradient (-(dl_k/dtheta . u) for Table 1's vector u; the render's loss for "no_val")
    objective: jax.Array = None


class StepInfo(NamedTuple):
    """What one :attr:`AutoSimulate.step` did, as Python scalars (``._asdict()`` for JSON)."""

    val_loss: float  # validation loss of the fine-tuned theta_hat(psi_t)
    val_metric: float  # validation metric of theta_hat(psi_t)
    train_loss: float  # mean fine-tuning loss of the last epoch
    psi_grad_norm: float  # ||dL~/dpsi||
    # root mean square over psi's coordinates of this step's change (0 when psi was kept; frozen
    # coordinates count as 0); with Adam, over AutoSimConfig.psi_learning_rate, the share of its
    # full rate the step took (a held or noisy hypergradient: well below 1)
    psi_step_rms: float
    cg_relative_residual: float  # 0 when the approximation has no solve
    cg_converged: bool  # the solve met cg_tol (True when there is no solve)
    cg_indefinite: bool  # negative curvature met (raise the damping)
    cg_model_value: float  # q(u) of Eq. 13a's quadratic; >= 0: the vector is no better than zero
    psi_updated: bool  # False: the step kept psi and the outer optimiser state (psi_kept_reason says why)
    psi_kept_reason: str  # "" when psi_updated, else one of KEPT_REASONS
    train_loss_before: float  # mean loss of the step's renders at the theta it started from
    time_render: float  # seconds of each stage (wall clock, blocked)
    time_train: float
    time_outer: float
    # the multiple of the optimiser's step that AutoSimConfig.outer_line_search chose (0: psi stayed);
    # 1 without the line search
    psi_step_scale: float = 1.0


# Why a step kept psi (StepInfo.psi_kept_reason), in the order they are checked.
KEPT_REASONS = {
    "finetune_nonfinite": "fine-tuning made theta non-finite; theta and its optimiser state were kept too",
    "val_loss_nonfinite": "the validation loss at the fine-tuned theta is non-finite",
    "solve_unusable": "the approximation vector is non-finite or no better than zero (q(u) >= 0)",
    "update_nonfinite": "the psi update (or the outer optimiser state) is non-finite",
}


class AutoSimulateWarning(UserWarning):
    """Base class of AutoSimulate's warnings (each is given once per :func:`make_autosimulate`)."""


class UnconvergedSolveWarning(AutoSimulateWarning):
    """A step used a CG solve of Eq. 13a that did not meet ``cg_tol`` within ``cg_maxiter``."""


class IndefiniteCurvatureWarning(AutoSimulateWarning):
    """With ``curvature="hessian"``, a step's damped Hessian ``H + lambda I`` was indefinite."""


class FinetuneLossJumpWarning(AutoSimulateWarning):
    """A step's fine-tuning raised the loss of its own renders ``LOSS_JUMP_FACTOR``-fold or more."""


# Fine-tuning lowers the loss of a step's renders. When clevr-det's warm detector collapsed (gpu
# size, docs/detection.md, session 15) the step's loss went from 158 (the step before) to 375 and
# then to an untrained model's ~570, where it stayed: about 2.4x within one step (estimated from
# consecutive steps; train_loss_before was not recorded then). A factor 2 leaves room for noise.
LOSS_JUMP_FACTOR = 2.0


def finetune_loss_jumps(train_loss: Sequence[float], train_loss_before: Sequence[float], *,
                        factor: float = LOSS_JUMP_FACTOR) -> list[int]:
    """The steps whose fine-tuning raised the loss of their own renders ``factor``-fold or more.

    Fine-tuning (Algorithm 1, line 3) trains theta on the step's renders, so their loss falls:
    :attr:`StepInfo.train_loss` (the last epoch's mean) is below
    :attr:`StepInfo.train_loss_before` (their mean loss at the theta the step started from).
    A step whose fine-tuning multiplied it instead diverged while staying finite (the model
    collapsed to a constant prediction, say), which no check of :data:`KEPT_REASONS` catches, and
    the hypergradient of such a model says nothing about psi. The comparison is within one step,
    on the same renders, so a psi that makes the renders harder does not count.

    Args:
      train_loss, train_loss_before: the two :class:`StepInfo` fields of consecutive steps.
      factor: how many times the loss before counts as a jump (> 1).

    Returns:
      The indices of the steps that jumped (non-finite losses never do: ``KEPT_REASONS`` has them).

    Example:
      >>> finetune_loss_jumps([0.5, 0.4, 9.0, 8.8], [2.0, 0.6, 0.5, 9.1])
      [2]
    """
    if len(train_loss) != len(train_loss_before):
        raise ValueError(f"finetune_loss_jumps: {len(train_loss)} losses after but {len(train_loss_before)} before.")
    if not factor > 1:
        raise ValueError(f"finetune_loss_jumps: factor must be > 1, got {factor!r}.")
    after, before = np.asarray(train_loss, float), np.asarray(train_loss_before, float)
    with np.errstate(invalid="ignore"):
        jumped = np.isfinite(after) & np.isfinite(before) & (after > factor * before)
    return [int(i) for i in np.flatnonzero(jumped)]


_LOSS_JUMP = (
    "AutoSimulate step {step}: fine-tuning raised the loss of the step's own renders {ratio:.1f}-fold ({before:.4g} -> "
    "{after:.4g}); it may have diverged (a collapsed model stays finite, and its hypergradient says nothing about "
    "psi). Lower {lr}, or set theta_reset_every so that theta starts afresh. StepInfo.train_loss and "
    "train_loss_before report every step (finetune_loss_jumps counts them); this warning is given once per "
    "make_autosimulate."
)


class NonFiniteStateError(ValueError):
    """A step was given a state with non-finite psi, theta or optimiser state."""


_NONFINITE_STATE = (
    "AutoSimulate.step: state.{path} holds non-finite values ({value}) at the start of step "
    "{step}{field}; nothing was rendered. A step never writes a non-finite {part} (it keeps the "
    "previous one), so this state came from elsewhere: a checkpoint, or a state built or edited "
    "by hand. Restore an earlier checkpoint, or start again from init(seed)."
)
_UNCONVERGED = (
    "AutoSimulate step {step}: the CG solve of Eq. 13a did not converge ({why}); {action}. To converge, "
    "raise cg_maxiter, raise damping (now {damping}) so that H + lambda I is better conditioned (this changes "
    "the vector itself, not only the solve: check the learned psi's G), or set curvature_batch_size (now "
    "{curv_n}) so that each CG iteration is cheaper and more of them fit in a step. StepInfo.cg_converged "
    "reports every step; this warning is given once per make_autosimulate."
)
_INDEFINITE = (
    "AutoSimulate step {step}: the damped Hessian H + lambda I (damping={damping}) is indefinite: {evidence}, "
    "so the CG vector is at best a saddle point of Eq. 13a's quadratic, not its minimiser; {action}. Raise "
    "damping{above}, or use curvature='gauss_newton' (positive semi-definite). StepInfo.cg_indefinite "
    "reports every step; this warning is given once per make_autosimulate."
)


class AutoSimulate(NamedTuple):
    """The functions built by :func:`make_autosimulate`.

    Attributes:
      init: ``init(seed) -> AutoSimState`` (with ``AutoSimConfig.pretrain_rounds``, it renders and
        trains theta first).
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


def _inexact(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _inexact(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@jax.jit
def _finite_leaves(tree: PyTree) -> jax.Array:
    """One flag per floating leaf of ``tree`` (in ``tree_flatten_with_path`` order)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _inexact(x)]
    return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def _check_state_finite(state: AutoSimState) -> None:
    """Raises :class:`NonFiniteStateError` naming the first non-finite leaf of psi, theta or
    the optimiser states (one fused reduction on the device; the details only on failure)."""
    parts = {"psi": state.psi, "theta": state.theta, "inner_opt_state": state.inner_opt_state,
             "outer_opt_state": state.outer_opt_state}
    flags = np.asarray(_finite_leaves(parts))
    if flags.all():
        return
    leaves = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(parts)[0] if _inexact(x)]
    path, leaf = leaves[int(np.argmin(flags))]
    value = np.asarray(leaf)
    shown = value.tolist() if value.size <= 6 else f"{int((~np.isfinite(value)).sum())} of {value.size} entries"
    part = path[0].key
    field = f" (scene field {path[1].key!r})" if part == "psi" and len(path) > 1 and hasattr(path[1], "key") else ""
    raise NonFiniteStateError(_NONFINITE_STATE.format(
        path=part + jax.tree_util.keystr(tuple(path[1:])), value=shown, step=int(state.step) + 1, field=field,
        part={"psi": "psi", "theta": "theta"}.get(part, "optimiser state")))


def _split_optimizers(overrides: dict[str, Any]) -> dict[str, optax.GradientTransformation]:
    """Pulls optax transformations passed for ``inner_optimizer`` / ``outer_optimizer``."""
    return {k: overrides.pop(k) for k in ("inner_optimizer", "outer_optimizer")
            if isinstance(overrides.get(k), optax.GradientTransformation)}


def _check_reset_models(model: nnx.Module, reset_models: Sequence[nnx.Module], config: AutoSimConfig) -> list:
    """The parameters of ``reset_models`` (``make_autosimulate``), checked against ``model`` and
    ``config.theta_reset_inits`` (which validated itself against ``theta_reset_every`` and
    ``pretrain_rounds``)."""
    reset_models = list(reset_models)
    if len(reset_models) != config.theta_reset_inits - 1:
        raise ValueError(
            f"AutoSimConfig.theta_reset_inits={config.theta_reset_inits} cycles the resets through the model and "
            f"{config.theta_reset_inits - 1} other initialisation(s), but reset_models holds {len(reset_models)}. "
            f"Pass theta_reset_inits={len(reset_models) + 1} with these reset_models, or "
            f"{config.theta_reset_inits - 1} reset_models (for a registered experiment "
            f"ExperimentSetup.make_autosimulate(seed, config) passes them, from "
            f"ExperimentSetup.other_inits(seed, {config.theta_reset_inits})).")

    def signature(theta):  # path -> (shape, dtype) of every parameter
        return {jax.tree_util.keystr(p): (np.shape(x), jnp.result_type(x))
                for p, x in jax.tree_util.tree_flatten_with_path(theta)[0]}

    graphdef, theta = split_model(model)
    mine = signature(theta)
    out = []
    for i, other in enumerate(reset_models):
        try:
            other_graphdef, other_theta = split_model(other)
        except ValueError as err:
            raise ValueError(f"reset_models[{i}]: {err}") from None
        theirs = signature(other_theta)
        if other_graphdef != graphdef or mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()), key=str)[:2]
            raise ValueError(
                f"reset_models[{i}] is not another initialisation of model: its structure or parameter "
                f"shapes differ (e.g. {diff or 'the module graph'}). Build it with the same constructor and "
                "arguments and another seed, e.g. nnx.Rngs(seed + 1).")
        out.append(other_theta)
    return out


def make_autosimulate(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    val_data: tuple[jax.Array, jax.Array],
    config: AutoSimConfig | None = None,
    *,
    devices: int | Any | None = None,
    reset_models: Sequence[nnx.Module] = (),
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
      devices: data parallelism over local devices (:mod:`autosim_jax.parallel`): ``None``
        or 1 (default) runs on one device, unchanged; ``N`` (the first N of ``jax.devices()``)
        or a list of devices splits the K renders, each fine-tuning minibatch, the
        curvature batch and the validation set (when its size is a multiple of N) over
        them, with psi and theta replicated. Results equal the single-device ones to float32
        rounding (the sums are added in another order). ``dataset_size``, ``batch_size`` and
        ``curvature_batch_size`` must be multiples of N.
      reset_models: the ``AutoSimConfig.theta_reset_inits - 1`` other initialisations of
        ``model`` (the same structure, other parameters) that ``theta_reset_every``'s resets
        cycle through: reset ``j`` (at step ``j N``) starts theta again from
        ``(model, *reset_models)[j % theta_reset_inits]``, so that what one initialisation
        favours does not push every step the same way (``benchmarks/init_bias.py``). Default
        ``()``: always ``model``. Which one a reset uses follows from the step count, so a
        resumed run resets as the original did.
      **overrides: fields of ``config`` to change (``approximation="linear"``, ...).
        ``inner_optimizer`` / ``outer_optimizer`` also accept an optax transformation,
        used as given instead of the one the config names.

    Returns:
      An :class:`AutoSimulate`.

    Raises:
      ValueError: before anything is compiled, for unknown or invalid options (``trainable`` or ``psi_trainable``
        not a valid regular expression or matching no parameter path, ``devices``
        more than JAX sees, or not dividing ``dataset_size``, ``batch_size`` or
        ``curvature_batch_size``), a model that
        is not an ``nnx.Module`` or holds non-``Param`` state, or validation data that is not
        a pair of numeric arrays, is empty, holds ``inf``/``NaN``, does not match the
        renderer's outputs or the model, or has class labels outside ``[0, C)``
        (:func:`~autosim_jax.inner.check_dataset`; each message names the argument, the
        first offending example and the fix).

    Warns:
      UnconvergedSolveWarning: the first time a step's CG solve misses ``cg_tol`` (says
        what to change); every step reports it in ``StepInfo.cg_converged``.
      IndefiniteCurvatureWarning: with ``curvature="hessian"``, the first time ``H + lambda
        I`` shows negative curvature (``StepInfo.cg_indefinite``).

    ``step`` raises :class:`NonFiniteStateError` (a ``ValueError``) for a state whose psi,
    theta or optimiser state is non-finite (e.g. loaded from a bad checkpoint), naming the
    field. NaN or inf arising inside a step is caught there: the step keeps psi and the outer
    optimiser state (and theta, if fine-tuning diverged) and says why in
    ``StepInfo.psi_kept_reason`` (see :data:`KEPT_REASONS`).

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
      >>> int(state.step), int(state.images), info.psi_updated, info.cg_converged
      (1, 32, True, True)
      >>> bad = make_autosimulate(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task,  # doctest: +NORMALIZE_WHITESPACE
      ...                         (x_val[:0], x_val[:0]))
      Traceback (most recent call last):
      ...
      ValueError: val_data is empty (0 inputs, 0 labels): the validation loss and metric would be NaN.
      Pass at least one example.
    """
    optimizers = _split_optimizers(overrides)
    config = (config or AutoSimConfig()).replace(**overrides)
    mesh = make_mesh(devices)
    curv_n = config.curvature_batch_size or config.dataset_size
    n_dev = 1 if mesh is None else mesh.size
    for what, value, fix in (
            ("dataset_size (K, renders per step)", config.dataset_size,
             f"Pass dataset_size={max(n_dev, config.dataset_size // n_dev * n_dev)} (autosim run --dataset-size)"),
            ("batch_size", config.batch_size, f"Pass a batch_size that is a multiple of {n_dev}"),
            ("curvature_batch_size", curv_n, f"Pass a curvature_batch_size that is a multiple of {n_dev}")):
        check_divisible(mesh, what, value, f"{fix}, or fewer devices (autosim --devices).")
    inner_optimizer = optimizers.get("inner_optimizer") or config.inner_optax()
    outer_optimizer = optimizers.get("outer_optimizer") or config.outer_optax()
    # the noise gate and the signal test read the hypergradient's standard error
    with_stderr = bool(config.outer_snr_gate or config.outer_signal_test_after)
    if with_stderr and "outer_optimizer" in optimizers:
        option = (f"outer_snr_gate={config.outer_snr_gate}" if config.outer_snr_gate
                  else f"outer_signal_test_after={config.outer_signal_test_after}")
        raise ValueError(
            f"AutoSimConfig.{option} is chained after the optimiser the config names ('adam' or 'sgd'), not "
            f"after an optax transformation passed as outer_optimizer. Pass {option.split('=')[0]}=0, or name "
            "the optimiser (outer_optimizer='adam', outer_learning_rate=...).")
    # The closed forms (Fisher, KL, entropy) exist for the plain families only: refuse other
    # parameterisations (e.g. from_schema's explore mixtures) here, not at the first step's trace.
    if "outer_optimizer" not in optimizers and config.outer_optimizer == "natural":
        check_families(simulator.distribution.init(), "outer_optimizer='natural'")
    if config.entropy_weight:
        check_families(simulator.distribution.init(), f"entropy_weight={config.entropy_weight}")
    # Freezing layers (Table 5): fine-tuning, g_val, the curvature and the score-function term act
    # on the trainable leaves only, closing over the frozen ones (autosim_jax/trainable.py).
    partition = None if config.trainable is None else make_partition(split_model(model)[1], config.trainable)
    reset_thetas = _check_reset_models(model, reset_models, config)
    # The fields of q_psi to learn (AutoSimConfig.psi_trainable): a mask with psi's structure.
    psi_mask = (None if config.psi_trainable is None else
                make_partition(simulator.distribution.init(), config.psi_trainable, "psi_trainable").mask_tree())
    inner = make_inner(simulator, model, task, optimizer=inner_optimizer, dataset_size=config.dataset_size,
                       batch_size=config.batch_size, epochs=config.finetune_epochs,
                       val_batch_size=config.val_batch_size, schedule=config.finetune_schedule, mesh=mesh,
                       partition=partition, val_objective=config.val_objective)
    x_val, y_val = check_dataset(val_data, simulator, task, inner, name="val_data")
    if mesh is not None:  # the validation set split over the devices when it divides, else on each of them
        place = shard_batch if x_val.shape[0] % mesh.size == 0 else replicate
        x_val, y_val = place((x_val, y_val), mesh)
    distribution = simulator.distribution
    traces = {"simulate": 0, "finetune": 0, "outer": 0}
    warned: set[type] = set()  # each warning once per instance
    # (theta0, its optimiser state), where theta_reset_every sends theta back; arrays are
    # immutable, so every reset shares them.
    initial_thetas = ([replicate((theta, inner.init_opt(theta)), mesh) for theta in (inner.theta0, *reset_thetas)]
                      if config.theta_reset_every and not config.pretrain_rounds else None)
    init_opt = jax.jit(inner.init_opt)  # a reset to the pretrained anchor: its fresh optimiser state

    def init(seed: int) -> AutoSimState:
        psi, key = distribution.init(), jax.random.PRNGKey(seed)
        theta = pretrain(key, psi) if config.pretrain_rounds else inner.theta0
        return replicate(AutoSimState(
            psi=psi,
            theta=theta,
            inner_opt_state=inner.init_opt(theta),
            outer_opt_state=outer_optimizer.init(psi),
            key=key,
            step=jnp.zeros((), jnp.int32),
            images=jnp.asarray(config.pretrain_rounds * config.dataset_size, jnp.int32),
            theta_anchor=theta if config.pretrain_rounds and config.theta_reset_every else None,
        ), mesh)

    def pretrain(key, psi) -> PyTree:
        """``theta`` after ``config.pretrain_rounds`` of the step's render-and-fine-tune at ``psi``.

        The rounds' keys come from their own stream of ``key`` (``fold_in``), so the steps that
        follow draw exactly the renders of a run without pretraining.
        """
        theta, opt_state = replicate((inner.theta0, inner.init_opt(inner.theta0)), mesh)
        keys = jax.random.split(jax.random.fold_in(key, _PRETRAIN_STREAM), config.pretrain_rounds)
        for i, round_key in enumerate(keys):
            sim_key, train_key = jax.random.split(round_key)
            with reraise_render_errors():
                _, inputs, labels = jax.block_until_ready(shard_batch(simulate(sim_key, psi), mesh))
            theta, opt_state, _, _, theta_ok = finetune(theta, opt_state, inputs, labels, train_key)
            if not bool(theta_ok):
                raise FloatingPointError(
                    f"AutoSimConfig.pretrain_rounds: round {i + 1} of {config.pretrain_rounds} made theta non-finite "
                    f"(fine-tuning diverged at inner_learning_rate={config.inner_learning_rate}). Lower "
                    f"inner_learning_rate, or pass pretrain_rounds=0.")
        return theta

    def hypergradient(psi, theta, scenes, inputs, labels, damping: float | None = None) -> Hypergradient:
        """Algorithm 1, lines 4-7: g_val, Table 1's vector u, and dL~/dpsi = -S(u).

        ``damping`` (``None``: ``config.damping``) is the Levenberg ``lambda`` of the solve.
        """
        damping = config.damping if damping is None else damping
        at_newton_point = config.val_gradient_at == "newton_point"
        if at_newton_point:  # g_val is taken at the Newton point below; here theta_hat's metrics only
            val_loss, val_metric = inner.measure(theta, x_val, y_val)
        else:
            (val_loss, val_metric), g_val = inner.measure_and_grad(theta, x_val, y_val)
        if config.approximation == "no_val":
            losses = inner.per_sample_loss(theta, inputs, labels)
            grad = reinforce_gradient(distribution.log_prob, psi, scenes, losses, baseline=config.baseline,
                                      return_stderr=with_stderr)
            grad, stderr = grad if with_stderr else (grad, None)
            return Hypergradient(grad, val_loss, val_metric, SolveReport.no_solve(), stderr, losses)
        predict, per_sample_loss, point = inner.predict, inner.per_sample_loss, theta
        if partition is not None:  # g_val is already the trainable leaves' gradient
            point, frozen = partition.split(theta)
            predict, per_sample_loss = partition.restrict(predict, frozen), partition.restrict(per_sample_loss, frozen)

        def make_operator(at):
            return lambda: curvature_operator(config.curvature, predict, task.per_sample_loss, at,
                                              *constrain_batch((inputs[:curv_n], labels[:curv_n]), mesh))

        newton = None
        if at_newton_point:  # Eq. 13 where the Newton step lands (config.py; no partition there)
            g_tr = jax.grad(inner.mean_loss)(point, inputs, labels)
            newton = solve_damped(make_operator(point)(), g_tr, damping, tol=config.cg_tol,
                                  maxiter=config.cg_maxiter)
            point = jax.tree.map(jnp.subtract, point, newton.x)
            _, g_val = inner.measure_and_grad(point, x_val, y_val)
        u, report = approximation_vector(config.approximation, g_val, make_operator(point), damping=damping,
                                          cg_tol=config.cg_tol, cg_maxiter=config.cg_maxiter)
        if newton is not None:
            report = report.and_(SolveReport.of_solve(newton))
        # Eq. 11 with the rewards c_k = dl_k/dtheta . u (estimators.score_function_term's two stages)
        c = jax.lax.stop_gradient(directional_derivatives(per_sample_loss, point, u, inputs, labels,
                                                          method=config.estimator))
        s = reinforce_gradient(distribution.log_prob, psi, scenes, c, baseline=config.baseline,
                               return_stderr=with_stderr)
        s, stderr = s if with_stderr else (s, None)
        return Hypergradient(jax.tree.map(jnp.negative, s), val_loss, val_metric, report, stderr, -c)

    @jax.jit
    def simulate(key, psi):
        traces["simulate"] += 1
        return inner.simulate(key, psi)

    def keep_if(ok, new, old):
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

    @jax.jit
    def finetune(theta, opt_state, inputs, labels, key):
        traces["finetune"] += 1
        # The renders' loss before fine-tuning tells a fine-tuning that diverged (finetune_loss_jumps).
        # One forward pass over them costs at most 1/(3 finetune_epochs) of the fine-tuning, which
        # is 4% of a clevr-det step at gpu size (0.024 of 0.61 s, median, H200, session 15; the
        # render is 88%). One minibatch instead was too noisy: a toy at its optimum read 2.2x.
        loss_before, _ = inner.measure(theta, inputs, labels)
        new_theta, new_opt_state, train_loss = inner.finetune(theta, opt_state, inputs, labels, key)
        # Diverged fine-tuning (a NaN or inf in theta) is not carried into the next step.
        theta_ok = _all_finite((new_theta, new_opt_state))
        return (keep_if(theta_ok, new_theta, theta), keep_if(theta_ok, new_opt_state, opt_state), train_loss,
                loss_before, theta_ok)

    # The damping is static: a schedule (AutoSimConfig.damping_at) compiles once per value, and a
    # constant one folds into the program exactly as before the schedule existed.
    @functools.partial(jax.jit, static_argnames="damping")
    def outer(psi, outer_opt_state, theta, scenes, inputs, labels, theta_ok, step_count, damping):
        traces["outer"] += 1
        hg = hypergradient(psi, theta, scenes, inputs, labels, damping)

        def propose(grad, stderr):  # the optimiser's update from one hypergradient, and its new state
            if config.entropy_weight:
                grad = add_entropy_bonus(psi, grad, config.entropy_weight)
            if psi_mask is not None:  # frozen fields get no gradient (Adam's moments stay zero) and never move
                grad = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grad, psi_mask)
            extra = {"hypergradient": grad, "hypergradient_stderr": stderr} if with_stderr else {}
            return outer_optimizer.update(grad, outer_opt_state, psi, **extra)

        updates, new_opt_state = propose(hg.grad_psi, hg.stderr)
        scale = jnp.float32(1.0)
        if config.outer_line_search:  # how far to go, judged on the half of the renders that did not propose it
            def search():
                half, proposals = config.dataset_size // 2, []
                for part in (slice(None, half), slice(half, None)):
                    g = reinforce_gradient(distribution.log_prob, psi, jax.tree.map(lambda x, p=part: x[p], scenes),
                                           hg.objective[part], baseline=config.baseline, return_stderr=with_stderr)
                    proposals.append(propose(*(g if with_stderr else (g, None)))[0])
                return cross_fitted_line_search(distribution.log_prob, psi, scenes, hg.objective, *proposals,
                                                line_search_scales(config.outer_line_search),
                                                config.outer_line_search_min_ess).scale

            # on the first outer_line_search_steps steps only (0: all), Adam's own step after them, not computed
            scale = (search() if not config.outer_line_search_steps else
                     jax.lax.cond(step_count < config.outer_line_search_steps, search, lambda: jnp.float32(1.0)))
            updates = jax.tree.map(lambda u: scale * u, updates)
        new_psi = optax.apply_updates(psi, updates)
        if psi_mask is not None:
            new_psi = jax.tree.map(lambda new, old, m: new if m else old, new_psi, psi, psi_mask)
        # Only a finite step along a usable vector moves psi: a diverged fine-tuning, a
        # non-finite validation loss, a vector no better than zero (q(u) >= 0: an indefinite or
        # diverged solve) or a non-finite update keeps psi and the optimiser state.
        val_ok = jnp.isfinite(hg.val_loss) | (config.approximation == "no_val")
        ok = hg.solve.usable & _all_finite((new_psi, new_opt_state)) & theta_ok & val_ok
        # The flags as separate outputs: stacking them changed XLA's fusion of the optimiser
        # update (a last-bit difference in Adam's second moment against earlier versions).
        checks = (theta_ok, val_ok, hg.solve.usable, ok)
        return keep_if(ok, new_psi, psi), keep_if(ok, new_opt_state, outer_opt_state), hg, checks, scale

    def warn_about_solve(step_number: int, info: StepInfo, solve: SolveReport, damping: float) -> None:
        if config.approximation != "exact_quadratic":
            return
        action = ("psi was updated along its vector" if info.psi_updated
                  else f"psi was kept ({info.psi_kept_reason})")
        if config.curvature == "hessian" and info.cg_indefinite:
            if IndefiniteCurvatureWarning in warned:
                return
            warned.add(IndefiniteCurvatureWarning)
            min_curv = float(solve.min_curvature)
            if min_curv <= 0:
                evidence = f"CG met the curvature p^T (H + lambda I) p / p^T p = {min_curv:.3g} <= 0"
                above = f" above {damping - min_curv:.3g} (damping minus that curvature)"
            else:
                evidence = "u^T (H + lambda I) u <= 0 for CG's vector u"
                above = ""
            warnings.warn(_INDEFINITE.format(step=step_number, damping=damping, evidence=evidence,
                                             action=action, above=above), IndefiniteCurvatureWarning, stacklevel=3)
        elif not info.cg_converged and UnconvergedSolveWarning not in warned:
            warned.add(UnconvergedSolveWarning)
            curv = (f"{config.curvature_batch_size}" if config.curvature_batch_size
                    else f"None: all {config.dataset_size} renders")
            if info.cg_relative_residual > config.cg_tol or not np.isfinite(info.cg_relative_residual):
                why = (f"relative residual {info.cg_relative_residual:.3g} > cg_tol={config.cg_tol} after "
                       f"cg_maxiter={config.cg_maxiter} iterations")
            else:
                why = "it met negative curvature: the damped system is not positive definite"
            warnings.warn(_UNCONVERGED.format(step=step_number, why=why, action=action, damping=damping,
                                              curv_n=curv), UnconvergedSolveWarning, stacklevel=3)

    lr_text = ("the learning rate of the inner_optimizer passed" if "inner_optimizer" in optimizers
               else f"inner_learning_rate (now {config.inner_learning_rate})")

    def warn_about_loss_jump(step_number: int, info: StepInfo) -> None:
        if FinetuneLossJumpWarning in warned or not finetune_loss_jumps([info.train_loss], [info.train_loss_before]):
            return
        warned.add(FinetuneLossJumpWarning)
        warnings.warn(_LOSS_JUMP.format(step=step_number, ratio=info.train_loss / info.train_loss_before,
                                        before=info.train_loss_before, after=info.train_loss, lr=lr_text),
                      FinetuneLossJumpWarning, stacklevel=3)

    @jax.jit
    def step_rms(new_psi, old_psi):
        change = jax.tree.leaves(jax.tree.map(jnp.subtract, new_psi, old_psi))
        return jnp.sqrt(sum(jnp.sum(c * c) for c in change) / sum(c.size for c in change))

    def step(state: AutoSimState) -> tuple[AutoSimState, StepInfo]:
        _check_state_finite(state)
        key, sim_key, train_key = jax.random.split(state.key, 3)
        t0 = time.perf_counter()
        with reraise_render_errors():
            scenes, inputs, labels = jax.block_until_ready(shard_batch(simulate(sim_key, state.psi), mesh))
        t1 = time.perf_counter()
        theta, inner_state = state.theta, state.inner_opt_state
        reset = config.theta_reset_every
        if reset and int(state.step) and int(state.step) % reset == 0:  # the host knows the step count
            theta, inner_state = (initial_thetas[int(state.step) // reset % len(initial_thetas)]
                                  if state.theta_anchor is None else (state.theta_anchor, init_opt(state.theta_anchor)))
        theta, inner_state, train_loss, loss_before, theta_ok = jax.block_until_ready(
            finetune(theta, inner_state, inputs, labels, train_key)
        )
        t2 = time.perf_counter()
        if config.outer_renders == "independent":  # fold_in: the shared default's key stream is unchanged
            with reraise_render_errors():
                scenes, inputs, labels = jax.block_until_ready(
                    shard_batch(simulate(jax.random.fold_in(sim_key, 1), state.psi), mesh))
        t_outer = time.perf_counter()
        damping = config.damping_at(int(state.step))
        psi, outer_state, hg, checks, scale = jax.block_until_ready(
            outer(state.psi, state.outer_opt_state, theta, scenes, inputs, labels, theta_ok, state.step,
                  damping=damping)
        )
        t3 = time.perf_counter()
        checks = [bool(c) for c in checks]  # theta, validation loss, solve, and all of them with the update
        reason = "" if checks[-1] else list(KEPT_REASONS)[checks.index(False)]
        renders = config.dataset_size * (2 if config.outer_renders == "independent" else 1)
        new_state = AutoSimState(psi, theta, inner_state, outer_state, key, state.step + 1,
                                 state.images + renders, state.theta_anchor)
        info = StepInfo(
            val_loss=float(hg.val_loss), val_metric=float(hg.val_metric), train_loss=float(train_loss),
            psi_grad_norm=float(optax.tree.norm(hg.grad_psi)), psi_step_rms=float(step_rms(psi, state.psi)),
            cg_relative_residual=float(hg.solve.relative_residual), cg_converged=bool(hg.solve.converged),
            cg_indefinite=bool(hg.solve.indefinite), cg_model_value=float(hg.solve.model_value),
            psi_updated=not reason, psi_kept_reason=reason, train_loss_before=float(loss_before),
            time_render=(t1 - t0) + (t_outer - t2), time_train=t2 - t1, time_outer=t3 - t_outer,
            psi_step_scale=float(scale),
        )
        warn_about_solve(int(new_state.step), info, hg.solve, damping)
        warn_about_loss_jump(int(new_state.step), info)
        return new_state, info

    return AutoSimulate(init, step, jax.jit(hypergradient), inner, config, lambda: dict(traces))
