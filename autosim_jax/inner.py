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
  (one forward and one backward pass per minibatch), where ``L_val`` is the mean loss, or
  with ``val_objective="metric_surrogate"`` the task's smooth stand-in for its metric.

:func:`check_dataset` checks a real dataset (the validation set) against the renderer, the
model and the task before anything is compiled.

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
import numpy as np
import optax
from flax import nnx

from .config import VAL_OBJECTIVES
from .parallel import constrain_batch
from .simulator import Simulation, Simulator
from .tasks import Task
from .trainable import Partition
from .training import SCHEDULES, train_epochs

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
                     batch_size: int | None, mesh: jax.sharding.Mesh | None = None) -> PyTree:
    """``fn(inputs, labels)`` summed over minibatches of ``batch_size`` (``None``: one batch).

    ``fn`` must return additive quantities (sums, counts, confusion matrices, gradients of
    sums). Full batches go through one ``lax.scan``; a remainder is one more call, so the
    result equals ``fn`` on the whole set up to float summation order. With a ``mesh``
    (:mod:`autosim_jax.parallel`) every minibatch is split over its devices.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(10.0)
      >>> float(sum_over_batches(lambda a, b: jnp.sum(a * b), x, x, 4))  # 3 batches: 4, 4, 2
      285.0
    """
    n = inputs.shape[0]
    if batch_size is None or batch_size >= n:
        return fn(*constrain_batch((inputs, labels), mesh))
    full = n // batch_size

    def body(total, batch):
        return jax.tree.map(jnp.add, total, fn(*batch)), None

    first = fn(*constrain_batch((inputs[:batch_size], labels[:batch_size]), mesh))
    chunks = jax.tree.map(lambda a: a[batch_size: full * batch_size].reshape(full - 1, batch_size, *a.shape[1:]),
                          (inputs, labels))
    total, _ = jax.lax.scan(body, first, constrain_batch(chunks, mesh, axis=1))
    if n > full * batch_size:
        rest = constrain_batch((inputs[full * batch_size:], labels[full * batch_size:]), mesh)
        total = jax.tree.map(jnp.add, total, fn(*rest))
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
    schedule: str = "constant",
    mesh: jax.sharding.Mesh | None = None,
    partition: Partition | None = None,
    val_objective: str = "loss",
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
      schedule: the learning rate within each ``finetune`` call,
        ``"constant"`` or ``"linear_decay"`` (:func:`~autosim_jax.training.train_epochs`).
      mesh: data parallelism (:mod:`autosim_jax.parallel`): fine-tuning and measuring
        minibatches are split over its devices (``None``: one device).
      partition: freezing layers (:mod:`autosim_jax.trainable`, built from ``theta0``):
        ``finetune`` updates only the trainable leaves, its optimiser state (``init_opt``)
        holds only them, and ``measure_and_grad`` returns the gradient with respect to them
        (the tuple ``partition.split(theta)[0]``); ``theta`` stays the full tree. ``None``
        (default): every parameter.
      val_objective: what ``measure_and_grad``'s gradient is of. ``"loss"`` (the paper's
        Eq. 13): the mean of ``task.per_sample_loss`` over the set. ``"metric_surrogate"``:
        ``task.surrogate_loss`` of the set's summed ``task.surrogate_stats`` (for
        segmentation ``1 -`` the soft mean IoU), whose gradient is taken exactly in minibatches
        by the chain rule: one pass sums the statistics, a second sums each minibatch's
        statistics' vector-Jacobian product with ``d surrogate_loss / d stats``. The loss and
        metric it returns are the same either way.

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
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; valid choices are {list(SCHEDULES)}.")
    if val_batch_size is not None and (not isinstance(val_batch_size, int) or val_batch_size < 1):
        raise ValueError(f"val_batch_size must be None or an integer >= 1, got {val_batch_size!r}.")
    if val_objective not in VAL_OBJECTIVES:
        raise ValueError(f"Unknown val_objective {val_objective!r}; valid choices are {list(VAL_OBJECTIVES)}.")
    if val_objective == "metric_surrogate" and (task.surrogate_stats is None or task.surrogate_loss is None):
        raise ValueError(
            f"val_objective='metric_surrogate' needs a task with a smooth stand-in for its metric "
            f"({task.metric_name!r} has none: Task.surrogate_stats and Task.surrogate_loss are None). "
            "Use val_objective='loss', or give the Task both (segmentation_task, classification_task and "
            "detection_task do).")
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
        loss_sum, stats = sum_over_batches(functools.partial(sums, theta), inputs, labels, val_batch_size, mesh)
        return finish(loss_sum, stats, inputs.shape[0])

    def grad_of(fn, theta, *args, has_aux=False):
        """``value_and_grad`` with respect to theta's trainable leaves (all without a partition)."""
        if partition is None:
            return jax.value_and_grad(fn, has_aux=has_aux)(theta, *args)
        trainable, frozen = partition.split(theta)
        return jax.value_and_grad(partition.restrict(fn, frozen), has_aux=has_aux)(trainable, *args)

    @jax.jit
    def measure_and_grad(theta, inputs, labels):
        n = inputs.shape[0]
        if val_objective == "loss":
            def batch(x, y):
                (loss_sum, stats), g = grad_of(sums, theta, x, y, has_aux=True)
                return loss_sum, stats, g

            loss_sum, stats, g = sum_over_batches(batch, inputs, labels, val_batch_size, mesh)
            return finish(loss_sum, stats, n), jax.tree.map(lambda a: a / n, g)

        def forward(x, y):  # pass 1: the loss, the metric and the surrogate's statistics
            logits = predict(theta, x)
            return jnp.sum(task.per_sample_loss(logits, y)), task.metric_stats(logits, y), \
                task.surrogate_stats(logits, y)

        loss_sum, stats, soft = sum_over_batches(forward, inputs, labels, val_batch_size, mesh)
        cotangent = jax.grad(task.surrogate_loss)(soft)

        def backward(x, y):  # pass 2: sum_b (d soft_b / d theta)^T cotangent
            return grad_of(lambda t, x, y: jnp.sum(cotangent * task.surrogate_stats(predict(t, x), y)), theta, x, y)[1]

        g = sum_over_batches(backward, inputs, labels, val_batch_size, mesh)
        return finish(loss_sum, stats, n), g

    simulate = jax.jit(lambda key, psi: simulator.simulate(key, psi, dataset_size))
    if partition is None:
        finetune = jax.jit(functools.partial(train_epochs, mean_loss, optimizer, batch_size=batch_size,
                                             epochs=epochs, schedule=schedule, mesh=mesh))
        init_opt = optimizer.init
    else:
        @jax.jit
        def finetune(theta, opt_state, inputs, labels, key):
            trainable, frozen = partition.split(theta)  # differentiate w.r.t. the trainable leaves only
            trainable, opt_state, loss = train_epochs(partition.restrict(mean_loss, frozen), optimizer, trainable,
                                                      opt_state, inputs, labels, key, batch_size=batch_size,
                                                      epochs=epochs, schedule=schedule, mesh=mesh)
            return partition.merge(trainable, frozen), opt_state, loss

        def init_opt(theta):
            return optimizer.init(partition.split(theta)[0])
    return Inner(theta0, init_opt, predict, per_sample_loss, mean_loss, simulate, finetune, measure,
                 measure_and_grad, dataset_size, epochs * (dataset_size // batch_size))


# ------------------------------------------------------------------------- data checks

_NOT_A_PAIR = (
    "{name} must be a pair (inputs, labels) of arrays with one example per row, got {got}."
)


def _first_bad_row(bad: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """``(example, index within it)`` of the first True of ``bad`` (rows = examples), or None."""
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    return where[0], where[1:]


def _as_numeric(name: str, what: str, value: Any, spec_dtype: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged nested lists
        raise ValueError(f"{name} {what} cannot be read as one array ({err}); pass a numpy or JAX array "
                         f"of shape (n, ...).") from None
    if array.dtype.kind not in "biuf":
        kind = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers"}.get(
            array.dtype.kind, f"dtype {array.dtype}")
        raise ValueError(f"{name} {what} hold {kind} (dtype {array.dtype}), not real numbers; convert them, "
                         f"e.g. np.asarray({what}, np.{np.dtype(spec_dtype).name}) (the renderer's "
                         f"{what}_spec dtype).")
    return array


def _label_classes(task: Task, spec_classes: int | None, out: Any, labels: np.ndarray,
                   name: str) -> tuple[int | None, str]:
    """The class count the labels must respect, and where it comes from (for messages)."""
    model_classes = None
    if out is not None and np.issubdtype(labels.dtype, np.integer) \
            and tuple(out.shape[:-1]) == (1, *labels.shape[1:]):
        model_classes = int(out.shape[-1])
    if task.num_classes is not None and model_classes is not None and model_classes != task.num_classes:
        raise ValueError(f"The model outputs {model_classes} class scores per label of {name}, but "
                         f"task.num_classes is {task.num_classes}; build the model with "
                         f"{task.num_classes} outputs, or the task with num_classes={model_classes}.")
    classes, source = task.num_classes, "task.num_classes"
    if classes is None:
        classes, source = model_classes, "the size of the model's last output axis"
    if spec_classes is not None and classes is not None and spec_classes != classes:
        raise ValueError(f"The renderer's labels_spec declares num_classes={spec_classes}, but {source} is "
                         f"{classes}: the simulated and the validation labels would mean different classes. "
                         "Make them agree.")
    if classes is None and spec_classes is not None:
        classes, source = spec_classes, "the renderer's labels_spec.num_classes"
    return classes, source


def check_dataset(data: Any, simulator: Simulator, task: Task, inner: Inner | None = None, *,
                  name: str = "val_data") -> tuple[jax.Array, jax.Array]:
    """Checks a real dataset ``(inputs, labels)`` before anything is compiled; returns it as arrays.

    Every check names ``name`` (the argument) and says what to change:

    * a pair of arrays of real numbers (not strings or objects), with the same number
      ``n >= 1`` of examples;
    * shapes ``(n, *inputs_spec.shape)`` and ``(n, *labels_spec.shape)`` of the renderer's
      outputs; integer labels where the renderer's labels are integers;
    * finite inputs and labels (an ``inf`` or ``NaN`` makes the validation loss, then psi,
      non-finite), naming the first bad example;
    * with ``inner``: the model applied to one example (``jax.eval_shape``, nothing is
      compiled) and the task's loss on its output give one loss per example;
    * class labels in ``[0, C)``, with ``C`` from ``task.num_classes``, else from the model's
      output (integer labels, outputs ``(*labels, C)``), else from the renderer's
      ``labels_spec.num_classes``; these must agree where several are known.

    Args:
      data: ``(inputs, labels)``.
      simulator: the simulator whose renders the model is trained on.
      task: the task (loss, metric, ``num_classes``).
      inner: the :class:`Inner` stages of the model (``None``: skip the model checks).
      name: the argument's name in messages.

    Returns:
      ``(inputs, labels)`` as JAX arrays.

    Raises:
      ValueError: naming ``name``, the check and the first offending example.

    Example:
      >>> import numpy as np
      >>> from autosim_jax import Field, OutputSpec, SceneSchema, classification_task, from_schema
      >>> class Digits:
      ...     name, schema = "digits", SceneSchema((Field.categorical("digit", tuple(range(3))),))
      ...     inputs_spec, labels_spec = OutputSpec((2,), np.float32), OutputSpec((), np.int32, num_classes=3)
      ...     def render(self, scenes, seed):
      ...         return np.ones((len(scenes["digit"]), 2), np.float32), scenes["digit"].astype(np.int32)
      >>> sim = Simulator(from_schema(Digits.schema), Digits())
      >>> x, y = check_dataset((np.zeros((4, 2)), np.array([0, 1, 2, 1])), sim, classification_task())
      >>> check_dataset((np.zeros((4, 2)), np.array([0, 1, 7, 1])),  # doctest: +NORMALIZE_WHITESPACE
      ...               sim, classification_task())
      Traceback (most recent call last):
      ...
      ValueError: val_data labels must be class indices in [0, 3) (3 classes: the renderer's
      labels_spec.num_classes); example 2 has label 7. Fix or drop that example, or the class count.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        got = type(data).__name__ + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        raise ValueError(_NOT_A_PAIR.format(name=name, got=got))
    spec_in, spec_lab = simulator.renderer.inputs_spec, simulator.renderer.labels_spec
    x = _as_numeric(name, "inputs", data[0], spec_in.dtype)
    y = _as_numeric(name, "labels", data[1], spec_lab.dtype)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{name}: inputs and labels need a leading axis of examples, got shapes {x.shape} and "
                         f"{y.shape}.")
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"{name} is empty ({len(x)} inputs, {len(y)} labels): the validation loss and metric "
                         "would be NaN. Pass at least one example.")
    if len(x) != len(y):
        raise ValueError(f"{name} holds {len(x)} inputs but {len(y)} labels; they must pair up one to one.")
    for what, array, spec in (("inputs", x, spec_in), ("labels", y, spec_lab)):
        if array.shape[1:] != tuple(spec.shape):
            raise ValueError(f"{name} {what} have shape {array.shape}; the renderer's {what} are "
                             f"(n, *{tuple(spec.shape)}), so {name} {what} must be {(len(array), *spec.shape)}.")
    if np.issubdtype(np.dtype(spec_lab.dtype), np.integer) and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} labels have dtype {y.dtype}, but the renderer's labels are "
                         f"{np.dtype(spec_lab.dtype)} (class indices); cast them: labels.astype(np."
                         f"{np.dtype(spec_lab.dtype).name}).")
    for what, array in (("inputs", x), ("labels", y)):
        if array.dtype.kind == "f":
            bad = _first_bad_row(~np.isfinite(array))
            if bad is not None:
                row, at = bad
                raise ValueError(f"{name} {what} hold non-finite values: example {row} of {len(array)} has "
                                 f"{array[(row, *at)]}{f' at {at}' if at else ''}. A non-finite example makes "
                                 "the validation loss, its gradient and then psi non-finite; fix or drop it.")
    out = None
    if inner is not None:
        one_x = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
        one_y = jax.ShapeDtypeStruct((1, *y.shape[1:]), y.dtype)
        try:
            out = jax.eval_shape(inner.predict, inner.theta0, one_x)
        except Exception as err:
            raise ValueError(f"The model fails on one example of {name} inputs (shape {one_x.shape}, dtype "
                             f"{one_x.dtype}, the renderer's inputs_spec): {type(err).__name__}: {err}") from err
        try:
            loss = jax.eval_shape(task.per_sample_loss, out, one_y)
            jax.eval_shape(task.metric_stats, out, one_y)
        except Exception as err:
            raise ValueError(f"The task's loss or metric fails on the model's output (shape {out.shape}) and one "
                             f"example of {name} labels (shape {one_y.shape}, dtype {one_y.dtype}): "
                             f"{type(err).__name__}: {err}") from err
        if tuple(getattr(loss, "shape", ())) != (1,):
            raise ValueError(f"task.per_sample_loss must give one loss per example: for one example of {name} "
                             f"it returned shape {tuple(getattr(loss, 'shape', ()))}, not (1,). Sum or average "
                             "over every axis but the first.")
    classes, source = _label_classes(task, spec_lab.num_classes, out, y, name)
    if classes is not None:
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} labels must be integer class indices ({classes} classes: {source}), got "
                             f"dtype {y.dtype}; cast them with labels.astype(np.int32).")
        bad = _first_bad_row((y < 0) | (y >= classes))
        if bad is not None:
            row, at = bad
            raise ValueError(f"{name} labels must be class indices in [0, {classes}) ({classes} classes: {source}); "
                             f"example {row} has label {y[(row, *at)]}{f' at {at}' if at else ''}. Fix or drop "
                             "that example, or the class count.")
    return jnp.asarray(data[0]), jnp.asarray(data[1])
