r"""The inner stages every method shares: render, fine-tune, measure (paper Algorithm 1, lines 2-4).

:func:`make_inner` is the one place where a flax model becomes pure functions of its
parameters (``nnx.split`` once, ``nnx.merge`` inside the jitted functions) and where the
three stages of an objective evaluation are written:

* ``simulate(key, psi)``: ``K`` scenes from ``q_psi`` rendered through the host callback;
* ``finetune(theta, opt_state, inputs, labels, key)``: ``epsilon`` epochs of minibatch
  training (:func:`~autosim_jax.training.train_epochs`);
* ``measure(theta, inputs, labels)``: mean loss and metric, in minibatches of
  ``val_batch_size`` with the same result as one batch;
* ``measure_and_grad(theta, inputs, labels)``: the same plus ``g_val = dL_val/dtheta``
  (one forward and one backward pass per minibatch).

AutoSimulate's step (:mod:`autosim_jax.autosimulate`), the black-box baselines' objective
(:mod:`autosim_jax.baselines.objective`) and the fresh-model assessment
(:func:`autosim_jax.experiments.make_assessor`) are all built on it, so their image and step
counts, and their numbers, agree.

Example:
  >>> import numpy as np, optax
  >>> from flax import nnx
  >>> from autosim_jax import Field, OutputSpec, SceneSchema, Simulator, from_schema, Task
  >>> class Line:  # renders x, label 2x
  ...     name = "line"
  ...     schema = SceneSchema((Field.continuous("x", -5.0, 5.0),))
  ...     inputs_spec, labels_spec = OutputSpec((1,), np.float32), OutputSpec((1,), np.float32)
  ...     def render(self, scenes, seed):
  ...         x = scenes["x"][:, None].astype(np.float32)
  ...         return x, 2 * x
  >>> sim = Simulator(from_schema(Line.schema), Line())
  >>> task = Task.from_per_sample(lambda o, y: ((o - y) ** 2).sum(-1), lambda o, y: -((o - y) ** 2).sum(-1), "neg_mse")
  >>> inner = make_inner(sim, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), task, optimizer=optax.sgd(0.1),
  ...                    dataset_size=32, batch_size=8, epochs=20)
  >>> _, x, y = inner.simulate(jax.random.key(0), sim.distribution.init())
  >>> theta, _, _ = inner.finetune(inner.theta0, inner.init_opt(inner.theta0), x, y, jax.random.key(1))
  >>> loss, metric = inner.measure(theta, x, y)
  >>> bool(loss < 1e-3)
  True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .simulator import Simulation, Simulator
from .tasks import Task
from .training import train_epochs

PyTree = Any

_NOT_A_MODULE = (
    "model must be a flax nnx.Module (its parameters are the starting theta), got {kind}. "
    "Wrap a function in an nnx.Module, or build it with nnx (e.g. nnx.Linear(..., rngs=nnx.Rngs(0)))."
)
_NON_PARAM_STATE = (
    "model {name} holds state that is not nnx.Param ({kinds} at {paths}). AutoSimulate "
    "differentiates the task loss with respect to every parameter and treats the model as a "
    "pure function of them, so running statistics (BatchNorm) or other mutable variables "
    "cannot be carried: use a normalisation without state (nnx.LayerNorm, nnx.GroupNorm) or "
    "freeze them into constants."
)


def split_model(model: Any) -> tuple[Any, PyTree]:
    """``(graphdef, theta)`` of a flax model whose state is only ``nnx.Param``.

    Raises:
      ValueError: when ``model`` is not an ``nnx.Module`` or holds other state (BatchNorm's
        running statistics, ``nnx.Variable``s), naming the offending paths.

    Example:
      >>> from flax import nnx
      >>> graphdef, theta = split_model(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
      >>> sorted(theta.keys())
      ['bias', 'kernel']
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(_NOT_A_MODULE.format(kind=type(model).__name__))
    graphdef, theta, rest = nnx.split(model, nnx.Param, ...)
    others = jax.tree_util.tree_flatten_with_path(rest)[0]
    if others:
        paths = [jax.tree_util.keystr(p) for p, _ in others[:3]]
        kinds = sorted({type(v).__name__ for v in jax.tree.leaves(rest, is_leaf=lambda x: isinstance(x, nnx.Variable))
                        } or {"variables"})
        raise ValueError(_NON_PARAM_STATE.format(name=type(model).__name__, kinds=", ".join(kinds),
                                                 paths=", ".join(paths)))
    return graphdef, theta


def sum_over_batches(fn: Callable[..., PyTree], inputs: jax.Array, labels: jax.Array,
                     batch_size: int | None) -> PyTree:
    """``fn(inputs, labels)`` summed over minibatches of ``batch_size`` (``None``: one batch).

    ``fn`` must return additive quantities (sums, counts, confusion matrices, gradients of
    sums). Full batches go through one ``lax.scan``; a remainder is one more call, so the
    result equals ``fn`` on the whole set up to float summation order.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(10.0)
      >>> float(sum_over_batches(lambda a, b: jnp.sum(a * b), x, x, 4))  # 3 batches: 4, 4, 2
      285.0
    """
    n = inputs.shape[0]
    if batch_size is None or batch_size >= n:
        return fn(inputs, labels)
    full = n // batch_size

    def body(total, batch):
        return jax.tree.map(jnp.add, total, fn(*batch)), None

    first = fn(inputs[:batch_size], labels[:batch_size])
    chunks = jax.tree.map(lambda a: a[batch_size: full * batch_size].reshape(full - 1, batch_size, *a.shape[1:]),
                          (inputs, labels))
    total, _ = jax.lax.scan(body, first, chunks)
    if n > full * batch_size:
        total = jax.tree.map(jnp.add, total, fn(inputs[full * batch_size:], labels[full * batch_size:]))
    return total


class Inner(NamedTuple):
    """The shared inner stages built by :func:`make_inner` (pure; the stages are jitted).

    Attributes:
      theta0: the model's initial parameters (``nnx.Param`` state).
      init_opt: ``theta -> optimiser state`` of the fine-tuning optimiser.
      predict: ``(theta, inputs) -> logits``.
      per_sample_loss: ``(theta, inputs, labels) -> [N]``.
      mean_loss: ``(theta, inputs, labels) -> scalar``.
      simulate: ``(key, psi) -> Simulation`` of ``dataset_size`` scenes.
      finetune: ``(theta, opt_state, inputs, labels, key) -> (theta, opt_state, last-epoch loss)``.
      measure: ``(theta, inputs, labels) -> (mean loss, metric)``.
      measure_and_grad: ``(theta, inputs, labels) -> ((mean loss, metric), dloss/dtheta)``.
      dataset_size: ``K``.
      train_steps: optimiser steps of one ``finetune`` call.
    """

    theta0: PyTree
    init_opt: Callable[[PyTree], PyTree]
    predict: Callable[[PyTree, jax.Array], jax.Array]
    per_sample_loss: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
    mean_loss: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
    simulate: Callable[[jax.Array, PyTree], Simulation]
    finetune: Callable[..., tuple[PyTree, PyTree, jax.Array]]
    measure: Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    measure_and_grad: Callable[[PyTree, jax.Array, jax.Array], tuple[tuple[jax.Array, jax.Array], PyTree]]
    dataset_size: int
    train_steps: int


def make_inner(
    simulator: Simulator,
    model: nnx.Module,
    task: Task,
    *,
    optimizer: optax.GradientTransformation,
    dataset_size: int,
    batch_size: int,
    epochs: int,
    val_batch_size: int | None = None,
) -> Inner:
    """Builds the render / fine-tune / measure stages for one simulator, model and task.

    Args:
      simulator: the :class:`~autosim_jax.Simulator` to render from.
      model: a flax ``nnx.Module`` whose state is only ``nnx.Param``.
      task: the :class:`~autosim_jax.Task` (loss and metric).
      optimizer: optax optimiser of the fine-tuning.
      dataset_size: ``K``, scenes per ``simulate`` call.
      batch_size: fine-tuning minibatch; must divide ``dataset_size``.
      epochs: fine-tuning epochs per ``finetune`` call.
      val_batch_size: minibatch of ``measure`` / ``measure_and_grad`` (``None``: one batch).

    Returns:
      An :class:`Inner`.

    Raises:
      ValueError: for a model that is not an ``nnx.Module`` or holds non-``Param`` state, or
        sizes that are not positive / do not divide.

    References:
      Behl et al., AutoSimulate (ECCV 2020), Algorithm 1 lines 2-4 and Eq. 1a-1b.
    """
    for name, value in (("dataset_size", dataset_size), ("batch_size", batch_size), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if dataset_size % batch_size:
        raise ValueError(f"dataset_size ({dataset_size}) must be a multiple of batch_size ({batch_size}).")
    if val_batch_size is not None and (not isinstance(val_batch_size, int) or val_batch_size < 1):
        raise ValueError(f"val_batch_size must be None or an integer >= 1, got {val_batch_size!r}.")
    graphdef, theta0 = split_model(model)

    def predict(theta, inputs):
        return nnx.merge(graphdef, theta)(inputs)

    def per_sample_loss(theta, inputs, labels):
        return task.per_sample_loss(predict(theta, inputs), labels)

    def mean_loss(theta, inputs, labels):
        return jnp.mean(per_sample_loss(theta, inputs, labels))

    def sums(theta, inputs, labels):
        logits = predict(theta, inputs)
        return jnp.sum(task.per_sample_loss(logits, labels)), task.metric_stats(logits, labels)

    def finish(loss_sum, stats, n):
        return loss_sum / n, task.metric_from_stats(stats)

    @jax.jit
    def measure(theta, inputs, labels):
        loss_sum, stats = sum_over_batches(functools.partial(sums, theta), inputs, labels, val_batch_size)
        return finish(loss_sum, stats, inputs.shape[0])

    @jax.jit
    def measure_and_grad(theta, inputs, labels):
        def batch(x, y):
            (loss_sum, stats), g = jax.value_and_grad(sums, has_aux=True)(theta, x, y)
            return loss_sum, stats, g

        loss_sum, stats, g = sum_over_batches(batch, inputs, labels, val_batch_size)
        n = inputs.shape[0]
        return finish(loss_sum, stats, n), jax.tree.map(lambda a: a / n, g)

    simulate = jax.jit(lambda key, psi: simulator.simulate(key, psi, dataset_size))
    finetune = jax.jit(functools.partial(train_epochs, mean_loss, optimizer, batch_size=batch_size, epochs=epochs))
    return Inner(theta0, optimizer.init, predict, per_sample_loss, mean_loss, simulate, finetune, measure,
                 measure_and_grad, dataset_size, epochs * (dataset_size // batch_size))
