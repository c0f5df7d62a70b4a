"""The ``autosim`` command line: list what exists, run an experiment into a run directory.

``autosim list`` prints the experiments, approximations and renderers.
``autosim run EXPERIMENT`` runs AutoSimulate on a named experiment (or on your own,
``module:attr`` naming an :class:`~autosim_jax.experiments.Experiment`) and writes, under
``--out`` only::

    config.json     the resolved configuration (optimisers described by their hyperparameters)
    metrics.jsonl   one JSON line per outer step (losses, metrics, CG, timings, psi by field)
    checkpoint.npz  the AutoSimState after the last completed step (atomic, see checkpoint.py)
    summary.json    totals and the best validation metric (at the end)
    val_metric.png, psi.png, samples.png

The outer step is pure; this module owns files, progress bars, plots and checkpoints.

Resuming. Each step appends its metrics line *before* the checkpoint is replaced, so after
an interruption ``metrics.jsonl`` holds at least ``checkpoint.step`` complete lines;
``--resume`` keeps exactly that many and continues from the checkpoint. The step is a
deterministic function of the state, so a resumed run ends bitwise where an uninterrupted
one would (same device and versions).

Example:
  >>> main(["list"])  # doctest: +SKIP
  >>> main(["run", "digits-sim2real", "--iterations", "5", "--out", "/tmp/run"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import contextlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .autosimulate import make_autosimulate
from .config import APPROXIMATIONS
from .checkpoint import leaf_paths, load_checkpoint, save_checkpoint
from .experiments import make_assessor
from .simulator import RenderError, reraise_render_errors

CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.npz", "summary.json"
# Config keys whose change alters the results; --resume refuses when any of them differs.
RESULT_KEYS = ("experiment", "renderer", "approximation", "seed", "options")
SAMPLE_IMAGES = 8

_EXISTS = (
    "{out} already holds a run ({what}). Continue it with --resume, or pass another --out "
    "(or delete the directory) to start afresh."
)
_RESUME_DIFFERS = (
    "--resume refused: {key} is {new} now but {old} in {path}; a resumed run must use the "
    "configuration that started it (pass the same flags), or start a new run with another --out."
)


class UsageError(Exception):
    """A bad command line (exit code 2)."""


class _DropRenderErrorLogs(logging.Filter):
    """Drops JAX's "pure_callback failed" log record (a traceback) of a RenderError: the CLI
    reports that error itself, in one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], RenderError))


@contextlib.contextmanager
def _quiet_render_errors():
    logger, flt = logging.getLogger("jax._src.callback"), _DropRenderErrorLogs()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


# ------------------------------------------------------------------------- experiments


def _registry() -> dict[str, Any]:
    from . import experiments

    return experiments.EXPERIMENTS


def resolve_experiment(spec: str):
    """A registered experiment by name, or ``module:attr`` naming an Experiment object.

    Raises:
      UsageError: for an unknown name or an import that fails, listing the valid names.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UsageError(f"cannot load experiment {spec!r} ({type(err).__name__}: {err}).") from None
        if not all(hasattr(obj, a) for a in ("name", "description", "renderers", "build")):
            raise UsageError(f"{spec!r} is a {type(obj).__name__}, not an autosim_jax.experiments.Experiment.")
        return obj
    registry = _registry()
    if spec not in registry:
        raise UsageError(
            f"unknown experiment {spec!r}; valid choices are {sorted(registry)} (or module:attr naming an "
            "Experiment of your own)."
        )
    return registry[spec]


# ------------------------------------------------------------------------------ config


def _is_transformation(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "init") and hasattr(obj, "update")


def describe(obj: Any) -> Any:
    """A JSON description of options: optax optimisers by name, learning rate and hyperparameters.

    An optax ``GradientTransformation`` is a pair of closures; the factories' names and the
    values they close over (learning rate, betas, schedule parameters) describe it fully, so
    two optimisers with equal descriptions update equally.

    Example:
      >>> import optax
      >>> describe({"opt": optax.sgd(0.1)})["opt"]["learning_rate"]
      0.1
    """
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if _is_transformation(obj):
        spec = _describe(obj.update, 1)
        lr = _find_learning_rate(spec)
        return {"name": _transform_name(spec), **({"learning_rate": lr} if lr is not None else {}), "spec": spec}
    return _describe(obj, 0)


def _describe(obj: Any, depth: int) -> Any:
    if depth > 12:
        return "..."
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        if np.ndim(obj) == 0:
            return _describe(np.asarray(obj).item(), depth + 1)
        return np.asarray(obj).tolist() if np.size(obj) <= 16 else f"array{tuple(np.shape(obj))} {np.dtype(obj.dtype)}"
    if isinstance(obj, dict):
        return {str(k): _describe(v, depth + 1) for k, v in obj.items()}
    if _is_transformation(obj):
        return _describe(obj.update, depth + 1)
    if isinstance(obj, list | tuple):
        return [_describe(v, depth + 1) for v in obj]
    if callable(obj) and hasattr(obj, "__code__"):
        qualname = getattr(obj, "__qualname__", getattr(obj, "__name__", "function"))
        factory = qualname.split(".<locals>")[0]
        params = {}
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            try:
                params[name] = cell.cell_contents
            except ValueError:  # a cell not yet filled (e.g. a closure over a later local)
                params[name] = "<empty>"
        if factory == "with_extra_args_support" and "tx" in params:  # optax wrapper: describe the inner one
            return _describe(params["tx"], depth + 1)
        if factory == "chain" and "update_fns" in params:
            return {"chain": _describe(params["update_fns"], depth + 1)}
        return {factory: {k: _describe(v, depth + 1) for k, v in params.items()}} if params else factory
    return re.sub(r" at 0x[0-9a-f]+", "", repr(obj))


def _transform_name(desc: Any) -> str:
    if isinstance(desc, dict) and "chain" in desc:
        return "chain(" + ", ".join(_transform_name(d) for d in desc["chain"]) + ")"
    if isinstance(desc, dict) and len(desc) == 1:
        return next(iter(desc))
    return str(desc)


def _find_learning_rate(desc: Any) -> Any:
    """The learning rate inside a described optax chain (``-step_size`` of its ``scale``)."""
    if isinstance(desc, dict):
        for key, value in desc.items():
            if key == "learning_rate":
                return value
            if key == "scale" and isinstance(value, dict) and isinstance(value.get("step_size"), float):
                return -value["step_size"]
            found = _find_learning_rate(value)
            if found is not None:
                return found
    elif isinstance(desc, list):
        for value in desc:
            found = _find_learning_rate(value)
            if found is not None:
                return found
    return None


def _versions() -> dict[str, str]:
    import flax
    import optax

    from . import __version__

    return {
        "autosim_jax": __version__, "jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", "?"),
        "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '?')} x{jax.device_count()}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _first_difference(old: dict, new: dict) -> tuple[str, Any, Any] | None:
    old_flat = _flatten({k: old.get(k) for k in RESULT_KEYS})
    new_flat = _flatten({k: new.get(k) for k in RESULT_KEYS})
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key, "<absent>") != new_flat.get(key, "<absent>"):
            return key, old_flat.get(key, "<absent>"), new_flat.get(key, "<absent>")
    return None


# --------------------------------------------------------------------------------- run


@dataclasses.dataclass
class RunArgs:
    """The options of ``autosim run`` (what argparse produces), usable without argparse."""

    approximation: str | None = None
    iterations: int | None = None
    dataset_size: int | None = None
    finetune_epochs: int | None = None
    budget_images: int | None = None
    seed: int = 0
    renderer: str | None = None
    out: str | None = None
    resume: bool = False
    experiment_spec: str | None = None  # how the experiment was named (for config.json)
    assess_images: int | None = None  # None: 16 x dataset_size; 0: skip the assessment


def _psi_record(psi) -> dict[str, list]:
    return {name: np.asarray(leaf).ravel().tolist() for name, leaf in zip(leaf_paths(psi), jax.tree.leaves(psi))}


def psi_from_record(template, record: dict[str, list]):
    """The inverse of the ``psi`` field of a metrics line, shaped and typed like ``template``.

    JSON keeps a float32's shortest repr, so the round trip is exact.
    """
    leaves, treedef = jax.tree.flatten(template)
    return jax.tree.unflatten(treedef, [np.asarray(record[name], np.asarray(leaf).dtype).reshape(np.shape(leaf))
                                        for name, leaf in zip(leaf_paths(template), leaves)])


def _truncate_metrics(path: str, keep: int) -> list[dict]:
    """Keeps the first ``keep`` lines of metrics.jsonl (those of checkpointed steps)."""
    records = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if len(records) == keep:
                    break
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    if len(records) != keep:
        raise UsageError(f"{path} holds {len(records)} complete steps but the checkpoint is at step {keep}; "
                         "the run directory is inconsistent, start afresh with another --out.")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return records


def resume_state(initial, ckpt_path: str, metrics_path: str, resume: bool) -> tuple[Any, list[dict]]:
    """The state to continue from and the metrics lines it accounts for.

    Without ``resume``: ``(initial, [])``. With it: the checkpoint (checked against
    ``initial``'s structure) and ``metrics.jsonl`` cut to its step; a run killed before its
    first checkpoint starts again from ``initial`` with no lines.

    Raises:
      UsageError: when the checkpoint does not match ``initial`` (another experiment's run).
    """
    if not resume:
        return initial, []
    if not os.path.exists(ckpt_path):
        return initial, _truncate_metrics(metrics_path, 0)
    try:
        state = load_checkpoint(ckpt_path, initial)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return state, _truncate_metrics(metrics_path, int(state.step))


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs stay clean).
    return tqdm(total=total, initial=initial, disable=None, unit="step", dynamic_ncols=True, file=sys.stderr)


def run_experiment(experiment, args: RunArgs, *, stdout=None, stderr=None) -> int:
    """Runs ``experiment`` as ``autosim run`` does; returns the exit code.

    Raises:
      UsageError: for a bad renderer, approximation, option, or run directory.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    renderer = args.renderer or experiment.renderers[0]
    if renderer not in experiment.renderers:
        raise UsageError(
            f"renderer {renderer!r} is not one of experiment {experiment.name!r}'s renderers "
            f"{list(experiment.renderers)}."
        )
    approximation = args.approximation or APPROXIMATIONS[0]
    if approximation not in APPROXIMATIONS:
        raise UsageError(f"unknown approximation {approximation!r}; valid choices are {list(APPROXIMATIONS)}.")
    for flag in ("iterations", "dataset_size", "finetune_epochs", "budget_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")
    if args.assess_images is not None and args.assess_images < 0:
        raise UsageError(f"--assess-images must be >= 0 (0 skips the assessment), got {args.assess_images}.")
    out = args.out or os.path.join("runs", f"{experiment.name}-{approximation}-seed{args.seed}")
    config_path, metrics_path, ckpt_path = (os.path.join(out, n) for n in (CONFIG, METRICS, CHECKPOINT))
    if args.resume:
        if not os.path.exists(config_path):
            raise UsageError(f"--resume: {out} holds no run ({CONFIG} is missing); drop --resume to start one.")
    elif os.path.isdir(out) and os.listdir(out):
        present = [n for n in (CONFIG, METRICS, CHECKPOINT) if os.path.exists(os.path.join(out, n))]
        raise UsageError(_EXISTS.format(out=out, what=", ".join(present) or "other files"))

    setup = experiment.build(renderer=renderer, seed=args.seed)
    changes: dict[str, Any] = {"approximation": approximation}
    notes = []
    if args.dataset_size is not None:
        changes["dataset_size"] = args.dataset_size
    if args.finetune_epochs is not None:
        changes["finetune_epochs"] = args.finetune_epochs
    k, b = changes.get("dataset_size", setup.config.dataset_size), setup.config.batch_size
    if k % b:
        changes["batch_size"] = math.gcd(k, b)
        notes.append(f"batch_size {b} does not divide dataset_size {k}: using batch_size {changes['batch_size']}")
    run_config = setup.config.replace(**changes)
    iterations = args.iterations or setup.iterations
    config = {
        "experiment": args.experiment_spec or experiment.name,
        "renderer": renderer,
        "approximation": approximation,
        "seed": args.seed,
        "options": run_config.to_dict(),
        "iterations": iterations,
        "budget_images": args.budget_images,
        "metric": setup.task.metric_name,
        "higher_is_better": bool(setup.task.higher_is_better),
        "versions": _versions(),
        "device": _device(),
    }
    if args.resume:
        with open(config_path) as f:
            old = json.load(f)
        diff = _first_difference(old, config)
        if diff is not None:
            key, old_value, new_value = diff
            raise UsageError(_RESUME_DIFFERS.format(key=key, old=json.dumps(old_value), new=json.dumps(new_value),
                                                    path=config_path))
        for key in ("versions", "device"):
            if old.get(key) != config[key]:
                print(f"autosim run: note: {key} changed since the run started ({old.get(key)} -> {config[key]}); "
                      "the continuation is not bitwise that of an uninterrupted run.", file=stderr)
    for note in notes:
        print(f"autosim run: note: {note}", file=stderr)

    autosim = make_autosimulate(setup.simulator, setup.model, setup.task, setup.val_data, run_config)
    initial = autosim.init(args.seed)
    os.makedirs(out, exist_ok=True)
    state, records = resume_state(initial, ckpt_path, metrics_path, args.resume)
    _write_json(config_path, config)

    higher = bool(setup.task.higher_is_better)
    x_test, y_test = setup.test_data
    budget = args.budget_images
    wall0 = records[-1]["wall_time"] if records else 0.0
    start = time.perf_counter()
    print(f"autosim run: {config['experiment']} / {approximation} / {renderer} / seed {args.seed} -> {out}"
          + (f" (resuming at step {int(state.step)})" if args.resume else ""), file=stderr)
    bar = _progress(iterations, min(int(state.step), iterations))
    stopped_by = "iterations"
    try:
        with open(metrics_path, "a") as metrics_file:
            while int(state.step) < iterations:
                if budget is not None and int(state.images) >= budget:
                    stopped_by = "budget_images"
                    break
                step_no = int(state.step) + 1
                t0 = time.perf_counter()
                try:
                    with _quiet_render_errors():
                        state, step_info = autosim.step(state)
                    info = step_info._asdict()
                except RenderError as err:
                    bar.close()
                    where = (f"renderer {err.renderer!r}" + (f", field {err.field!r}" if err.field else "")
                             + (f", scene {err.scene_index}" if err.scene_index is not None else ""))
                    print(f"autosim run: rendering failed at step {step_no} ({where}): {err.message}\n"
                          f"The checkpoint of step {step_no - 1} in {ckpt_path} is intact; after fixing the cause, "
                          "continue with --resume.", file=stderr)
                    return 1
                test_loss, test_metric = autosim.inner.measure(state.theta, x_test, y_test)
                record = {
                    "step": int(state.step), "images": int(state.images),
                    **{k: info[k] for k in ("val_loss", "val_metric")},
                    "test_loss": float(test_loss), "test_metric": float(test_metric),
                    **{k: v for k, v in info.items() if k not in ("val_loss", "val_metric")},
                    "time_step": time.perf_counter() - t0,
                    "wall_time": wall0 + time.perf_counter() - start,
                    "psi": _psi_record(state.psi),
                }
                metrics_file.write(json.dumps(record) + "\n")  # metrics first, then the checkpoint
                metrics_file.flush()
                os.fsync(metrics_file.fileno())
                save_checkpoint(ckpt_path, state)
                records.append(record)
                bar.set_postfix({setup.task.metric_name: f"{record['val_metric']:.4g}", "images": record["images"]},
                                refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        print(f"\nautosim run: interrupted; {ckpt_path} holds step {int(state.step)}. Continue with --resume.",
              file=stderr)
        return 130
    bar.close()
    if budget is not None and int(state.images) >= budget and int(state.step) < iterations:
        stopped_by = "budget_images"

    summary = _summary(records, higher, stopped_by, state)
    if args.assess_images != 0 and records:
        summary["assessment"] = _assess(setup._replace(config=run_config), initial.psi, state.psi, args, stderr)
    _write_json(os.path.join(out, SUMMARY), summary)
    _write_plots(out, records, setup, initial.psi, state.psi, args.seed, stderr)
    print(_summary_table(summary, setup.task.metric_name), file=stdout)
    return 0


def _assess(setup, psi0, psi1, args: RunArgs, stderr) -> dict:
    """Fresh models trained on equal budgets from the start and the learned psi (the fair test)."""
    n, epochs = args.assess_images or setup.assess_images, setup.assess_epochs
    print(f"autosim run: assessing: a fresh model on {n} images x {epochs} epochs from the start "
          "and from the learned psi ...", file=stderr)
    assess = make_assessor(setup, num_images=n, epochs=epochs)
    return {"images": n, "epochs": epochs, "start_psi": assess(psi0, args.seed),
            "learned_psi": assess(psi1, args.seed)}


def _summary(records: list[dict], higher: bool, stopped_by: str, state) -> dict:
    summary: dict[str, Any] = {
        "iterations": int(state.step), "images": int(state.images), "stopped_by": stopped_by,
        "wall_time": records[-1]["wall_time"] if records else 0.0,
    }
    for k in ("time_render", "time_train", "time_outer"):
        summary[k] = float(sum(r[k] for r in records))
    if records:
        vals = [r["val_metric"] for r in records]
        best = int(np.nanargmax(vals) if higher else np.nanargmin(vals))
        summary.update(
            start_val_metric=vals[0], best_val_metric=vals[best], best_step=records[best]["step"],
            best_images=records[best]["images"], test_metric_at_best=records[best]["test_metric"],
            final_val_metric=vals[-1], final_test_metric=records[-1]["test_metric"],
            cg_unconverged_steps=sum(not r["cg_converged"] for r in records),
        )
    summary["psi"] = _psi_record(state.psi)
    return summary


def _summary_table(s: dict, metric: str) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [("iterations", s["iterations"]), ("images rendered", s["images"]), ("stopped by", s["stopped_by"]),
            ("wall time [s]", s["wall_time"])]
    total = s["time_render"] + s["time_train"] + s["time_outer"] or 1.0
    for k in ("render", "train", "outer"):
        rows.append((f"  {k} [s]", f"{s['time_' + k]:.3f} ({100 * s['time_' + k] / total:.0f}%)"))
    if "best_val_metric" in s:
        rows += [(f"start val {metric}", s["start_val_metric"]),
                 (f"best val {metric}", f"{s['best_val_metric']:.4f} (step {s['best_step']})"),
                 (f"test {metric} at best", s["test_metric_at_best"])]
    if "assessment" in s:
        a = s["assessment"]
        rows.append((f"fresh model, {a['images']} images", f"val / test {metric}"))
        for name in ("start_psi", "learned_psi"):
            rows.append((f"  {name.replace('_', ' ')}", f"{a[name]['val_metric']:.4f} / {a[name]['test_metric']:.4f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {fmt(value)}" for name, value in rows)


# ------------------------------------------------------------------------------- plots


def _write_plots(out: str, records: list[dict], setup, psi0, psi1, seed: int, stderr) -> None:
    from matplotlib.figure import Figure

    metric = setup.task.metric_name
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, xkey, xlabel in zip(fig.subplots(1, 2), ("images", "wall_time"), ("images rendered", "wall time [s]")):
        xs = [r[xkey] for r in records]
        ax.plot(xs, [r["val_metric"] for r in records], marker=".", label="validation")
        ax.plot(xs, [r["test_metric"] for r in records], ls="--", alpha=0.7, label="test")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{metric} of the fine-tuned model")
    fig.savefig(os.path.join(out, "val_metric.png"), dpi=100)

    names = list(records[0]["psi"]) if records else list(_psi_record(psi0))
    ncols = min(4, max(1, len(names)))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        values = np.array([[*_psi_record(psi0)[name]]] + [r["psi"][name] for r in records])
        ax.plot([0, *steps], values[:, :10])
        ax.set_title(name + (f" ({values.shape[1]} values, first 10)" if values.shape[1] > 10 else ""), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names):]:
        ax.axis("off")
    fig.suptitle("psi by field (the distribution's own parametrisation) against outer step")
    fig.savefig(os.path.join(out, "psi.png"), dpi=100)

    fig = Figure(figsize=(1.4 * SAMPLE_IMAGES, 3.4), layout="constrained")
    try:
        key = jax.random.PRNGKey(seed)
        with _quiet_render_errors(), reraise_render_errors():
            renders = [jax.block_until_ready(setup.simulator.simulate(key, psi, SAMPLE_IMAGES)) for psi in (psi0, psi1)]
    except RenderError as err:
        print(f"autosim run: samples.png: rendering failed: {err.message}", file=stderr)
        ax = fig.subplots()
        ax.text(0.5, 0.5, f"rendering failed:\n{err.message[:200]}", ha="center", va="center", wrap=True)
        ax.axis("off")
        fig.savefig(os.path.join(out, "samples.png"), dpi=100)
        return
    inputs = [np.asarray(r.inputs) for r in renders]
    labels = [np.asarray(r.labels) for r in renders]
    if inputs[0].ndim == 4 and inputs[0].shape[-1] in (1, 3):
        segmentation = labels[0].ndim == 3 and np.issubdtype(labels[0].dtype, np.integer)
        if segmentation:  # label maps under the images
            fig.set_size_inches(1.4 * SAMPLE_IMAGES, 6.2)
        axes = fig.subplots(4 if segmentation else 2, SAMPLE_IMAGES, squeeze=False)
        if segmentation:
            top = max(int(np.max(y)) for y in labels)
            for row, (label, y) in enumerate(zip(("labels, first", "labels, learned"), labels), start=2):
                for col in range(SAMPLE_IMAGES):
                    axes[row, col].imshow(y[col], cmap="tab10", vmin=0, vmax=max(top, 9), interpolation="nearest")
                    axes[row, col].set_xticks([])
                    axes[row, col].set_yticks([])
                axes[row, 0].set_ylabel(label)
        for row, (label, x) in enumerate(zip(("first psi", "learned psi"), inputs)):
            lo, hi = float(np.min(x)), float(np.max(x))
            for col in range(SAMPLE_IMAGES):
                ax = axes[row, col]
                if x.shape[-1] == 3:
                    ax.imshow(np.clip(x[col], 0.0, 1.0) if hi <= 1.0 and lo >= 0.0 else (x[col] - lo) / (hi - lo or 1))
                else:
                    ax.imshow(x[col, ..., 0], cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(label)
    else:  # not images: histograms of the input values
        ax = fig.subplots()
        for label, x in zip(("first psi", "learned psi"), inputs):
            ax.hist(x.ravel(), bins=20, alpha=0.6, label=label)
        ax.set_xlabel(f"input values (inputs of shape {inputs[0].shape[1:]} are not images)")
        ax.legend()
    fig.suptitle(f"renders from the first and the learned psi (seed {seed})")
    fig.savefig(os.path.join(out, "samples.png"), dpi=100)


# ---------------------------------------------------------------------------- commands


def _list(stdout) -> int:
    from .renderers import RENDERERS

    print("experiments:", file=stdout)
    for name, exp in sorted(_registry().items()):
        print(f"  {name:<18} {exp.description}", file=stdout)
        print(f"  {'':<18} renderers: {', '.join(exp.renderers)} (default {exp.renderers[0]})", file=stdout)
    print("approximations:", file=stdout)
    for i, name in enumerate(APPROXIMATIONS):
        print(f"  {name}{' (default)' if i == 0 else ''}", file=stdout)
    print("renderers:", file=stdout)
    for name, make in sorted(RENDERERS.items()):
        doc = (make.__doc__ or "").strip().splitlines()
        print(f"  {name:<18} {doc[0] if doc else ''}", file=stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autosim", description="AutoSimulate in JAX: learn a simulator's sampling distribution.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list experiments, approximations and renderers")
    run = sub.add_parser(
        "run", help="run AutoSimulate on an experiment",
        description="Run AutoSimulate on an experiment into a run directory (config.json, metrics.jsonl, "
                    "checkpoint.npz, summary.json, plots). Defaults come from the experiment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("experiment", metavar="EXPERIMENT",
                     help="a registered experiment (see `autosim list`), or module:attr naming an "
                          "autosim_jax.experiments.Experiment of your own (importable from PYTHONPATH)")
    run.add_argument("--approximation", choices=APPROXIMATIONS, default=None,
                     help=f"Table 1 approximation (default {APPROXIMATIONS[0]})")
    run.add_argument("--iterations", type=int, default=None, help="outer iterations (default: the experiment's)")
    run.add_argument("--dataset-size", type=int, default=None,
                     help="K, images rendered per step (default: the experiment's). When the experiment's "
                          "batch size does not divide K, the batch size becomes gcd(K, batch size), with a note")
    run.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning epochs per step")
    run.add_argument("--budget-images", type=int, default=None, metavar="N",
                     help="stop once N images have been rendered (or at --iterations, whichever comes first)")
    run.add_argument("--seed", type=int, default=0, help="seed of the model init and of the run's PRNG key")
    run.add_argument("--renderer", default=None, help="one of the experiment's renderers (default: its first)")
    run.add_argument("--out", default=None, help="run directory (default runs/EXPERIMENT-APPROXIMATION-seedS)")
    run.add_argument("--assess-images", type=int, default=None, metavar="N",
                     help="after the run, train fresh models on N images from the start psi and from the learned "
                          "psi and report their validation/test metric (default 16 x dataset size; 0 skips)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its checkpoint (same configuration required)")
    # --- autosim compare: AutoSimulate vs the baselines (the parser and the command live in compare.py) ---
    from .compare import add_compare_parser

    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``autosim`` and ``python -m autosim_jax``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if args.command == "list":
        try:
            return _list(sys.stdout)
        except BrokenPipeError:  # `autosim list | head`: the reader left; not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if args.command == "compare":  # --- autosim compare (see compare.py) ---
        from .compare import compare_main

        return compare_main(args)
    try:
        experiment = resolve_experiment(args.experiment)
        run_args = RunArgs(
            approximation=args.approximation, iterations=args.iterations, dataset_size=args.dataset_size,
            finetune_epochs=args.finetune_epochs, budget_images=args.budget_images, seed=args.seed,
            renderer=args.renderer, out=args.out, resume=args.resume, experiment_spec=args.experiment,
            assess_images=args.assess_images)
        return run_experiment(experiment, run_args)
    except UsageError as err:
        print(f"autosim run: error: {err}", file=sys.stderr)
        return 2
