"""The validation layer at make_autosimulate's boundary and inside a step (issue 15, items 1, 4, 5, 8, 9).

Every bad input is refused before anything is compiled, with a ValueError that names the
argument, the first offending example and the fix; NaN/inf arising inside a step is reported
in StepInfo.psi_kept_reason with the state kept; a step that uses an unconverged (or, with
the Hessian, indefinite) solve warns once per instance. Each test asserts that the message
names the culprit.
"""

import json
import logging
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from autosim_jax import Simulator, Task, classification_task, from_schema, make_autosimulate
from autosim_jax.autosimulate import (
    KEPT_REASONS,
    FinetuneLossJumpWarning,
    IndefiniteCurvatureWarning,
    NonFiniteStateError,
    UnconvergedSolveWarning,
    finetune_loss_jumps,
)
from autosim_jax.checkpoint import load_checkpoint, save_checkpoint
from autosim_jax.rundir import loss_jump_counts
from autosim_jax.schema import Field, OutputSpec, SceneSchema
from autosim_jax.simulator import RenderError
from toys import SquareRenderer


class ColourRenderer:
    """A scene is a colour index; the input its one-hot code, the label the index (3 classes)."""

    name = "colours"
    schema = SceneSchema((Field.categorical("colour", ("red", "green", "blue")),))
    inputs_spec = OutputSpec((3,), np.float32)
    labels_spec = OutputSpec((), np.int32, num_classes=3)

    def __init__(self, bad_label=None):
        self.bad_label = bad_label

    def render(self, scenes, seed):
        c = np.asarray(scenes["colour"])
        labels = c.astype(np.int32)
        if self.bad_label is not None:
            labels[1] = self.bad_label
        return np.eye(3, dtype=np.float32)[c], labels


class UndeclaredColours(ColourRenderer):
    """The same renderer without num_classes in its labels_spec."""

    labels_spec = OutputSpec((), np.int32)


MSE = Task.from_per_sample(
    lambda out, y: jnp.sum((out - y) ** 2, axis=-1), lambda out, y: -jnp.sum((out - y) ** 2, axis=-1), "neg_mse"
)
X_VAL = (2.0 + 0.3 * np.random.default_rng(0).standard_normal(16)).astype(np.float32)[:, None]
SMALL = {"dataset_size": 32, "batch_size": 16}


def _square():
    return Simulator(from_schema(SquareRenderer.schema, {"x": {"loc": -1.0, "scale": 0.5}}), SquareRenderer())


def _colours(renderer=None):
    return Simulator(from_schema(ColourRenderer.schema), renderer or ColourRenderer())


def _linear(n_in=1, n_out=1):
    return nnx.Linear(n_in, n_out, rngs=nnx.Rngs(0))


def _colour_val(labels=(0, 1, 2, 1, 0, 2)):
    labels = np.asarray(labels, np.int32)
    return np.eye(3, dtype=np.float32)[np.clip(labels, 0, 2)], labels


# ---------------------------------------------------------------- val_data (items 4, 5, 8)


@pytest.mark.parametrize(
    "val_data, match",
    [
        ((X_VAL, X_VAL**2, X_VAL), r"val_data must be a pair \(inputs, labels\).*got tuple of length 3"),
        ({"x": X_VAL}, r"val_data must be a pair \(inputs, labels\).*got dict"),
        ((np.array([["a"]] * 4), np.ones((4, 1), np.float32)),
         r"val_data inputs hold strings \(dtype <U1\).*np\.float32"),
        ((X_VAL[:0], X_VAL[:0]), r"val_data is empty \(0 inputs, 0 labels\).*at least one example"),
        ((X_VAL, X_VAL[:-1] ** 2), r"val_data holds 16 inputs but 15 labels"),
        ((X_VAL[:, 0], X_VAL[:, 0]), r"val_data inputs have shape \(16,\); the renderer's inputs are \(n, \*\(1,\)\)"),
        ((np.where(np.arange(16)[:, None] == 5, np.inf, X_VAL), X_VAL**2),
         r"val_data inputs hold non-finite values: example 5 of 16 has inf\b.*fix or drop it"),
        ((X_VAL, np.where(np.arange(16)[:, None] >= 2, np.nan, X_VAL**2).astype(np.float32)),
         r"val_data labels hold non-finite values: example 2 of 16 has nan"),
    ],
    ids=["triple", "dict", "strings", "empty", "lengths", "shape", "inf-input", "nan-label"],
)
def test_bad_val_data_names_the_problem(val_data, match):
    with pytest.raises(ValueError, match=match):
        make_autosimulate(_square(), _linear(), MSE, val_data, **SMALL)


def test_out_of_range_validation_label_names_the_example():
    """Issue 15, item 5: label 7 in a 3-class task used to give NaN losses and the run went on."""
    x, y = _colour_val((0, 1, 2, 7, 0, 2))
    with pytest.raises(ValueError, match=r"val_data labels must be class indices in \[0, 3\) \(3 classes: "
                                         r"task.num_classes\); example 3 has label 7"):
        make_autosimulate(_colours(), _linear(3, 3), classification_task(3), (x, y), **SMALL)
    # Without task.num_classes or a spec that declares it, the model's output size is used.
    with pytest.raises(ValueError, match=r"\[0, 3\) \(3 classes: the size of the model's last output axis\); "
                                         r"example 3 has label 7"):
        make_autosimulate(_colours(UndeclaredColours()), _linear(3, 3), classification_task(), (x, y), **SMALL)
    with pytest.raises(ValueError, match=r"example 0 has label -1"):
        make_autosimulate(_colours(), _linear(3, 3), classification_task(), _colour_val((-1, 1)), **SMALL)


@pytest.mark.parametrize(
    "renderer, n_out, task, labels, match",
    [
        (ColourRenderer(), 4, classification_task(3), None,
         r"The model outputs 4 class scores per label of val_data, but task.num_classes is 3"),
        (ColourRenderer(), 4, classification_task(4), None,
         r"labels_spec declares num_classes=3, but task.num_classes is 4"),
        (ColourRenderer(), 4, classification_task(), None,
         r"labels_spec declares num_classes=3, but the size of the model's last output axis is 4"),
        (ColourRenderer(), 3, classification_task(), np.array([0.0, 1.0], np.float32),
         r"val_data labels have dtype float32, but the renderer's labels are int32 \(class indices\); cast them"),
    ],
    ids=["model-vs-task", "spec-vs-task", "spec-vs-model", "float-labels"],
)
def test_class_counts_must_agree(renderer, n_out, task, labels, match):
    x, y = _colour_val()
    if labels is not None:
        x, y = x[: len(labels)], labels
    with pytest.raises(ValueError, match=match):
        make_autosimulate(_colours(renderer), _linear(3, n_out), task, (x, y), **SMALL)


def test_model_and_task_are_tried_on_one_example_before_compiling():
    with pytest.raises(ValueError, match=r"The model fails on one example of val_data inputs \(shape \(1, 3\)"):
        make_autosimulate(_colours(), _linear(5, 3), classification_task(), _colour_val(), **SMALL)
    scalar_loss = Task.from_per_sample(lambda out, y: jnp.mean((out - y) ** 2), lambda out, y: -(out - y)[:, 0], "m")
    with pytest.raises(ValueError, match=r"task.per_sample_loss must give one loss per example: .* returned shape "
                                         r"\(\), not \(1,\)"):
        make_autosimulate(_square(), _linear(), scalar_loss, (X_VAL, X_VAL**2), **SMALL)


def test_out_of_range_render_label_stops_the_step_naming_the_scene():
    """Issue 15, item 5, from the renderer: its labels_spec declares 3 classes."""
    autosim = make_autosimulate(_colours(ColourRenderer(bad_label=7)), _linear(3, 3), classification_task(3),
                                _colour_val(), approximation="linear", **SMALL)
    state = autosim.init(0)
    with pytest.raises(RenderError, match=r"Renderer 'colours' returned labels 7 for scene 1 of 32 .*num_classes=3"):
        autosim.step(state)
    assert int(state.step) == 0


# --------------------------------------------------- non-finite state and steps (item 4)


def test_non_finite_psi_from_a_checkpoint_is_named_not_blamed_on_the_renderer(tmp_path):
    autosim = make_autosimulate(_square(), _linear(), MSE, (X_VAL, X_VAL**2), approximation="linear", **SMALL)
    state = autosim.init(0)
    bad = state._replace(psi={"x": state.psi["x"]._replace(loc=jnp.array(jnp.nan))})
    save_checkpoint(tmp_path / "checkpoint.npz", bad)
    loaded = load_checkpoint(tmp_path / "checkpoint.npz", state)
    with pytest.raises(NonFiniteStateError, match=r"state.psi\['x'\].loc holds non-finite values \(nan\) at the "
                                                  r"start of step 1 \(scene field 'x'\); nothing was rendered") as err:
        autosim.step(loaded)
    assert "Renderer" not in str(err.value) and "distribution" not in str(err.value)
    assert isinstance(err.value, ValueError)
    theta_bad = state._replace(theta=jax.tree.map(lambda t: t * jnp.inf, state.theta))
    with pytest.raises(NonFiniteStateError, match=r"state.theta\['bias'\]\.value holds non-finite values"):
        autosim.step(theta_bad)


def _step_once(**kw):
    options = {"approximation": "linear", **SMALL}
    options.update(kw)
    val = options.pop("val", (X_VAL, X_VAL**2))
    autosim = make_autosimulate(_square(), _linear(), MSE, val, **options)
    state = autosim.init(0)
    new, info = autosim.step(state)
    return state, new, info


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_diverged_finetuning_keeps_theta_and_psi_and_says_so():
    state, new, info = _step_once(inner_optimizer=optax.scale(jnp.nan))
    assert info.psi_kept_reason == "finetune_nonfinite" and not info.psi_updated and info.psi_step_rms == 0.0
    assert _same(new.theta, state.theta) and _same(new.inner_opt_state, state.inner_opt_state)
    assert _same(new.psi, state.psi) and int(new.step) == 1
    assert np.isfinite(info.val_loss)  # measured at the kept theta


def test_non_finite_validation_loss_keeps_psi_and_says_so():
    """Finite but huge validation inputs overflow the squared error (1e30^2 > float32 max)."""
    val = (np.full((4, 1), 1e30, np.float32), np.zeros((4, 1), np.float32))
    state, new, info = _step_once(val=val)
    assert info.psi_kept_reason == "val_loss_nonfinite" and not np.isfinite(info.val_loss) and info.psi_step_rms == 0.0
    assert _same(new.psi, state.psi) and _same(new.outer_opt_state, state.outer_opt_state)


def test_non_finite_update_keeps_psi_and_says_so():
    state, new, info = _step_once(outer_optimizer=optax.scale(jnp.inf))
    assert info.psi_kept_reason == "update_nonfinite" and not info.psi_updated and info.psi_step_rms == 0.0
    assert _same(new.psi, state.psi)


def test_step_info_is_json_scalars():
    _, _, info = _step_once()
    record = json.loads(json.dumps(info._asdict()))
    assert record["psi_kept_reason"] == "" and record["psi_updated"] is True
    assert all(isinstance(v, (bool, int, float, str)) for v in record.values())
    assert set(KEPT_REASONS) == {"finetune_nonfinite", "val_loss_nonfinite", "solve_unusable", "update_nonfinite"}


# ------------------------------------------------------------------ warnings (items 1, 9)


def _steps_recording(autosim, steps):
    state, infos = autosim.init(0), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            state, info = autosim.step(state)
            infos.append(info)
    return infos, [w for w in caught if issubclass(w.category, UserWarning)]


def test_unconverged_solve_warns_once_with_what_to_change():
    autosim = make_autosimulate(_square(), _linear(), MSE, (X_VAL, X_VAL**2), cg_maxiter=1, cg_tol=1e-12, **SMALL)
    infos, caught = _steps_recording(autosim, 3)
    assert not any(i.cg_converged for i in infos)
    assert [w.category for w in caught] == [UnconvergedSolveWarning]  # once, not every step
    message = str(caught[0].message)
    for part in ("step 1", "did not converge", "cg_maxiter=1", "raise cg_maxiter", "raise damping (now 0.01)",
                 "curvature_batch_size (now None: all 32 renders)", "once per make_autosimulate"):
        assert part in message, (part, message)
    assert caught[0].filename == __file__  # points at the caller's step()
    # A second instance warns again; pytest.warns sees it whatever pyproject's filters say.
    with pytest.warns(UnconvergedSolveWarning, match="did not converge"):
        make_autosimulate(_square(), _linear(), MSE, (X_VAL, X_VAL**2), cg_maxiter=1, cg_tol=1e-12,
                          **SMALL).step(autosim.init(0))


def test_converged_solves_do_not_warn():
    autosim = make_autosimulate(_square(), _linear(), MSE, (X_VAL, X_VAL**2), cg_maxiter=20, cg_tol=1e-4, **SMALL)
    infos, caught = _steps_recording(autosim, 2)
    assert all(i.cg_converged for i in infos) and caught == []


class TanhNet(nnx.Module):
    """A one-hidden-layer net: its squared-error Hessian is indefinite (the affine toy's is not)."""

    def __init__(self, rngs):
        self.hidden, self.out = nnx.Linear(1, 16, rngs=rngs), nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def test_indefinite_hessian_warns_once_with_the_damping_it_needs():
    """Issue 15, item 9: with curvature='hessian' a saddle-point solve is no longer silent."""
    autosim = make_autosimulate(_square(), TanhNet(nnx.Rngs(0)), MSE, (X_VAL, X_VAL**2), curvature="hessian",
                                damping=1e-4, cg_maxiter=20, cg_tol=1e-6, finetune_epochs=2, **SMALL)
    infos, caught = _steps_recording(autosim, 2)
    assert all(i.cg_indefinite for i in infos)
    assert [w.category for w in caught] == [IndefiniteCurvatureWarning]
    message = str(caught[0].message)
    for part in ("H + lambda I (damping=0.0001) is indefinite", "saddle point", "curvature='gauss_newton'"):
        assert part in message, (part, message)
    curvature, above = re.search(r"p / p\^T p = (-[0-9.e-]+) <= 0.*Raise damping above ([0-9.e-]+) \(damping minus",
                                 message).groups()
    assert float(above) == pytest.approx(1e-4 - float(curvature), rel=1e-2)


def test_refused_before_anything_is_compiled(caplog):
    """The checks trace at most (jax.eval_shape); nothing reaches XLA before the error."""
    sim, model, colours, classifier = _square(), _linear(), _colours(), _linear(3, 3)  # built (and compiled) first
    bad = (np.where(np.arange(16)[:, None] == 5, np.inf, X_VAL), X_VAL**2)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match="example 5 of 16"):
            make_autosimulate(sim, model, MSE, bad, **SMALL)
        with pytest.raises(ValueError, match="example 3 has label 7"):
            make_autosimulate(colours, classifier, classification_task(3), _colour_val((0, 1, 2, 7)), **SMALL)
    assert not [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]


@pytest.mark.parametrize("options", [{"outer_optimizer": "natural"}, {"entropy_weight": 0.3}])
def test_closed_form_steps_refuse_an_exploration_mixture_before_any_work(options):
    """The natural gradient and the entropy bonus have no closed form for with_exploration's
    mixture: make_autosimulate says so (naming the option and the field), not the first step."""

    class Bounded(SquareRenderer):
        schema = SceneSchema((Field.continuous("x", -3.0, 3.0),))

    sim = Simulator(from_schema(Bounded.schema, explore=0.1), Bounded())
    with pytest.raises(ValueError, match=r"psi leaf at \['x'\]\.logit is a .*with_exploration"):
        make_autosimulate(sim, _linear(), MSE, (X_VAL, X_VAL**2), **SMALL, **options)


# ------------------------------------------------------- a fine-tuning that diverges but stays finite


def _sgd_jolted_at(update: int, by: float) -> optax.GradientTransformation:
    """SGD (0.05) whose ``update``-th update also shifts every parameter by ``by``: a finite divergence."""

    def init(params):
        return {"count": jnp.zeros((), jnp.int32)}

    def update_fn(grads, state, params=None):
        shift = jnp.where(state["count"] == update, by, 0.0)
        return jax.tree.map(lambda g: -0.05 * g + shift, grads), {"count": state["count"] + 1}

    return optax.GradientTransformation(init, update_fn)


def test_finetune_loss_jumps_compares_each_step_with_its_own_start():
    after = [0.5, 0.4, 9.0, 8.8, np.nan, 1.0, 3.0]
    before = [2.0, 0.6, 0.5, 9.1, 0.5, np.inf, 1.0]
    # step 2 tripled-plus its loss; a dead model's next steps (3) no longer rise; non-finite never counts
    assert finetune_loss_jumps(after, before) == [2, 6]
    assert finetune_loss_jumps(after, before, factor=5.0) == [2]
    with pytest.raises(ValueError, match="factor must be > 1"):
        finetune_loss_jumps(after, before, factor=1.0)
    with pytest.raises(ValueError, match="7 losses after but 6 before"):
        finetune_loss_jumps(after, before[:-1])


def test_a_finite_divergence_of_the_fine_tuning_warns_once_and_is_counted():
    """A model that collapses stays finite, so no kept-psi check sees it (clevr-det's warm detector,
    docs/detection.md, session 15); fine-tuning that raises its own renders' loss is reported."""
    plain = make_autosimulate(_square(), _linear(), MSE, (X_VAL, X_VAL**2), approximation="linear",
                              inner_optimizer=optax.sgd(0.05), **SMALL)
    infos, caught = _steps_recording(plain, 8)
    assert caught == [] and finetune_loss_jumps([i.train_loss for i in infos],
                                                [i.train_loss_before for i in infos]) == []

    jolted = make_autosimulate(_square(), _linear(), MSE, (X_VAL, X_VAL**2), approximation="linear",
                               inner_optimizer=_sgd_jolted_at(8, 5.0), **SMALL)
    infos, caught = _steps_recording(jolted, 8)
    after, before = [i.train_loss for i in infos], [i.train_loss_before for i in infos]
    jumps = finetune_loss_jumps(after, before)
    assert len(jumps) == 1 and np.all(np.isfinite(after)), (after, before)  # the jolted step only
    assert [w.category for w in caught] == [FinetuneLossJumpWarning]
    message = str(caught[0].message)
    for part in (f"step {jumps[0] + 1}:", "raised the loss of the step's own renders",
                 "Lower the learning rate of the inner_optimizer passed", "theta_reset_every",
                 "once per make_autosimulate"):
        assert part in message, (part, message)
    records = [{"step": n + 1, **info._asdict()} for n, info in enumerate(infos)]
    assert loss_jump_counts(records) == {"finetune_loss_jump_steps": 1, "finetune_loss_jump_factor": 2.0,
                                         "first_finetune_loss_jump_step": jumps[0] + 1}
