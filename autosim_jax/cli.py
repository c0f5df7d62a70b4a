"""The ``autosim`` command line: ``list``, ``run`` (here) and ``compare`` (:mod:`autosim_jax.compare`).

``autosim list`` prints the experiments, approximations and renderers.
``autosim run EXPERIMENT`` runs AutoSimulate on a named experiment (or on your own,
``module:attr`` naming an :class:`~autosim_jax.experiments.Experiment`, found from the current
directory or PYTHONPATH) and writes, under ``--out`` only::

    config.json     the resolved configuration: AutoSimConfig as data, seed, size, versions
    metrics.jsonl   one JSON line per outer step (losses, metrics, CG, timings, raw psi)
    checkpoint.npz  the AutoSimState after the last completed step (atomic, see checkpoint.py)
    summary.json    totals, best validation metric (and whose model it is), CG failures, how
                    far psi moved (KL from the start, nats), the fresh-model assessment of the
                    start, learned and reference psi and the gap closed G (at the end)
    psi.json        the start, learned and reference psi in the fields' own units
    assessed.json   cached fresh-model assessments (a resumed run does not redo them)
    tensorboard/    the metrics.jsonl records as TensorBoard scalars (with tensorboardX or
                    tensorboard installed: ``pip install "autosim_jax[tensorboard]"``)
    val_metric.png, psi.png (one panel per field, in its units), samples.png
    spread.png      how spread each element of each field is along the run (1 uniform, 0 one
                    value): one object's collapse, which psi.png's per-field panels hide
    cells.png       a scene/location/quality categorical field (the detection experiments'
                    54 cells) as heat maps: start, learned and reference psi

The run directory (locking, atomic files, checked resume, the step loop) is
:mod:`autosim_jax.rundir`; this module parses, validates every option before the experiment is
built, and prints progress, summaries and plots.

Progress: a bar on a terminal; in a log or a pipe one line every ``--log-every`` steps or
``--log-seconds`` seconds (step, images, validation metric, how far psi has moved from the start
as KL(q_psi || q_start) in nats, with Adam on psi the share of its full rate the step took
(``StepInfo.psi_step_rms`` over the learning rate), CG status, ETA without the first, compiling,
step); the same for
the assessment. With a fresh model per step (``theta_reset_every=1``, the experiments' setting)
the validation metric is that model's after one step's fine-tuning, named so in the progress
and the summary; the fresh-model assessment after the run is psi's measure. Ctrl-C stops
promptly (exit 130) and leaves a resumable directory.

Rendering: ``--render-workers N`` renders each batch with N worker processes
(``--render-backend process``, the default) or Ray actors (``--render-backend ray``, on a local
Ray instance or the cluster at ``--ray-address``); ``--render-timeout S`` turns a batch that
takes longer than S seconds into an error (exit 1, the directory resumable). The pool is
created once, used by the steps, the fresh-model assessment and the sample plot, and closed on
exit, on an error and on Ctrl-C. The renders do not depend on these options (see
:mod:`autosim_jax.render_pool`), so config.json records them in a ``render`` section that
``--resume`` does not compare: a run may continue with another worker count.

Resuming: ``--resume`` continues from the checkpoint with the configuration that started the
run (other result-changing flags are refused, before anything is built); ``--iterations`` and
``--budget-images`` default to the stored ones. A finished run says so and does nothing. The
step is a deterministic function of the state, so a resumed run ends bitwise where an
uninterrupted one would (same device and versions). On a GPU that needs XLA's deterministic
kernels, which ``autosim`` turns on (:func:`deterministic_gpu_ops`).

Example:
  >>> main(["list"])  # doctest: +SKIP
  >>> main(["run", "digits-sim2real", "--iterations", "5", "--out", "/tmp/run"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import sys
import textwrap
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np

# JAX and the modules that import it (autosimulate, distributions, experiments, simulator) are
# imported by the functions that use them, after the flags are parsed and validated: `autosim
# --help` and a refused flag take a fraction of a second instead of JAX's 1.5 s import
# (tests/test_cli.py checks that parsing leaves JAX unimported).
from . import compare
from .checkpoint import TMP_PREFIX
from .config import APPROXIMATIONS
from .render_pool import RenderError
from .rundir import (
    ASSESSED,
    CHECKPOINT,
    CONFIG,
    LOCK,
    METRICS,
    Interrupted,
    Progress,
    RenderFailed,
    RenderOptions,
    RenderPools,
    RunDir,
    RunDirError,
    UsageError,
    add_assess_models_flag,
    add_devices_flag,
    add_progress_flags,
    add_render_flags,
    assess_protocol,
    build_setup,
    cached_assessment,
    check_assess_models,
    check_devices,
    check_out_path,
    check_progress_flags,
    check_render_options,
    check_renderer,
    check_resume_config,
    check_seed,
    check_size,
    failure_line,
    finite_or_none,
    interrupt_guard,
    is_interrupt,
    make_config,
    model_progress,
    psi_from_record,
    psi_record,
    quiet_render_errors,
    resolve_experiment,
    run_loop,
    seed_argument,
    summarize,
    write_json,
)

__all__ = ["RunArgs", "RunDirError", "UsageError", "build_parser", "main", "resolve_experiment", "run_experiment"]

# Config keys whose change alters the results; --resume refuses when any of them differs.
RESULT_KEYS = ("command", "experiment", "renderer", "approximation", "seed", "size", "options")
SAMPLE_IMAGES = 8
PSI_JSON = "psi.json"

_EXISTS = (
    "{out} already holds a run ({what}). Continue it with --resume, or pass another --out "
    "(or delete the directory) to start afresh."
)


def _holds_files(path: str) -> list[str]:
    """The entries of ``path`` other than its lock and stale temporary files."""
    if not os.path.isdir(path):
        return []
    return [n for n in os.listdir(path) if n != LOCK and not n.startswith(TMP_PREFIX)]


# --------------------------------------------------------------------------------- run


@dataclasses.dataclass
class RunArgs:
    """The options of ``autosim run`` (what argparse produces), usable without argparse."""

    approximation: str | None = None
    iterations: int | None = None  # None: the experiment's (or, on --resume, the stored value)
    dataset_size: int | None = None
    finetune_epochs: int | None = None
    psi_trainable: str | None = None  # a regex over psi's leaf paths: the fields to learn (None: all)
    pretrain_rounds: int | None = None  # AutoSimConfig.pretrain_rounds (None: the experiment's)
    reset_inits: int | None = None  # AutoSimConfig.theta_reset_inits (None: the experiment's)
    budget_images: int | None = None
    seed: int = 0
    renderer: str | None = None
    out: str | None = None
    resume: bool = False
    experiment_spec: str | None = None  # how the experiment was named (for config.json)
    assess_images: int | None = None  # None: the experiment's; 0: skip the assessment
    size: str | None = None  # None: the experiment's default (the flag is passed only when given)
    log_every: int | None = None  # progress line every N steps (None: about 20 a run)
    log_seconds: float = 30.0  # ... and at least every S seconds
    render_workers: int = 1  # worker processes / Ray actors (1 and no timeout: in this process)
    render_backend: str | None = None  # "process" or "ray" (None: process when a pool is used)
    ray_address: str | None = None  # with "ray": the cluster (None: a local Ray instance)
    render_timeout: float | None = None  # seconds per batch of K images (None: no limit)
    select_every: int = 0  # also assess the psi of every N-th step; return the best by validation (0: off)
    select_reset: tuple[str, ...] = ()  # fields also tried at their start value in every assessed candidate
    assess_models: int = 1  # fresh models per assessed psi (their mean is reported, with their std)
    devices: int = 1  # AutoSimulate's steps data parallel over this many local devices (autosim_jax.parallel)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the command line resolves to before anything is built."""

    renderer: str
    approximation: str
    out: str
    spec: str
    size: str | None
    render: RenderOptions
    devices: int = 1


def plan_run(experiment, args: RunArgs) -> _Plan:
    """Validates every option that needs no build (in well under a second).

    Raises:
      UsageError: naming the flag and the valid values.
    """
    renderer = check_renderer(experiment, args.renderer)
    approximation = args.approximation or APPROXIMATIONS[0]
    if approximation not in APPROXIMATIONS:
        raise UsageError(f"unknown approximation {approximation!r}; valid choices are {list(APPROXIMATIONS)}.")
    for flag in ("iterations", "finetune_epochs", "budget_images"):
        value = getattr(args, flag)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--{flag.replace('_', '-')} must be an integer >= 1, got {value!r}.")
    if args.pretrain_rounds is not None and (isinstance(args.pretrain_rounds, bool)
                                             or not isinstance(args.pretrain_rounds, int) or args.pretrain_rounds < 0):
        raise UsageError(f"--pretrain-rounds must be an integer >= 0 (0: the random initialisation), got "
                         f"{args.pretrain_rounds!r}.")
    if args.reset_inits is not None and (isinstance(args.reset_inits, bool) or not isinstance(args.reset_inits, int)
                                         or args.reset_inits < 1):
        raise UsageError(f"--reset-inits must be an integer >= 1 (1: always the model's own initialisation), got "
                         f"{args.reset_inits!r}.")
    if args.dataset_size is not None and args.dataset_size < 2:
        raise UsageError(f"--dataset-size must be >= 2 (the leave-one-out baseline of the score-function estimator "
                         f"needs two renders per step), got {args.dataset_size}.")
    if args.assess_images is not None and args.assess_images < 0:
        raise UsageError(f"--assess-images must be >= 0 (0 skips the assessment), got {args.assess_images}.")
    if args.psi_trainable is not None:
        try:
            re.compile(args.psi_trainable)
        except re.error as err:
            raise UsageError(f"--psi-trainable {args.psi_trainable!r} is not a valid regular expression ({err}); it "
                             "is searched in each psi path such as ['position'].loc.") from None
    check_assess_models(args.assess_models)
    if isinstance(args.select_every, bool) or not isinstance(args.select_every, int) or args.select_every < 0:
        raise UsageError(f"--select-every must be an integer >= 0 (0: off), got {args.select_every!r}.")
    if isinstance(args.select_reset, str) or any(not isinstance(f, str) or not f for f in args.select_reset) \
            or len(set(args.select_reset)) != len(args.select_reset):
        raise UsageError(f"--select-reset takes distinct field names separated by commas (e.g. color,material), got "
                         f"{args.select_reset!r}.")
    if args.select_reset and args.assess_images == 0:
        raise UsageError("--select-reset chooses among psi by fresh models, but --assess-images 0 skips them; drop "
                         "one of the two.")
    check_progress_flags(args.log_every, args.log_seconds)
    check_seed(args.seed)
    render = check_render_options(args.render_workers, args.render_backend, args.ray_address, args.render_timeout)
    size = check_size(experiment, args.size)
    devices = check_devices(args.devices)
    out = args.out or os.path.join("runs", f"{experiment.name}-{approximation}-seed{args.seed}")
    check_out_path(out)
    if args.resume and not os.path.exists(os.path.join(out, CONFIG)):
        raise UsageError(f"--resume: {out} holds no run ({CONFIG} is missing); drop --resume to start one.")
    return _Plan(renderer, approximation, out, args.experiment_spec or experiment.name, size, render, devices)


def _known_options(args: RunArgs, plan: _Plan) -> dict:
    """The result keys the command line fixes, to check a --resume before building."""
    options: dict[str, Any] = {"approximation": plan.approximation}
    if args.dataset_size is not None:
        options["dataset_size"] = args.dataset_size
    if args.finetune_epochs is not None:
        options["finetune_epochs"] = args.finetune_epochs
    if args.psi_trainable is not None:
        options["psi_trainable"] = args.psi_trainable
    if args.pretrain_rounds is not None:
        options["pretrain_rounds"] = args.pretrain_rounds
    if args.reset_inits is not None:
        options["theta_reset_inits"] = args.reset_inits
    return {"command": "run", "experiment": plan.spec, "renderer": plan.renderer, "approximation": plan.approximation,
            "seed": args.seed, "size": plan.size, "options": options}


def run_experiment(experiment, args: RunArgs, *, stdout=None, stderr=None) -> int:
    """Runs ``experiment`` as ``autosim run`` does; returns the exit code.

    Raises:
      UsageError: for a bad renderer, approximation, option, or run directory (a
        :class:`~autosim_jax.rundir.RunDirError` for the latter).
    """
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    plan = plan_run(experiment, args)
    out = plan.out
    with RunDir.open(out) as run:
        if run.removed_tmp:
            print(f"autosim run: note: removed {len(run.removed_tmp)} stale temporary file(s) of an interrupted "
                  f"write: {', '.join(run.removed_tmp)}", file=stderr)
        old = None
        iterations, budget, assess_images = args.iterations, args.budget_images, args.assess_images
        if args.resume:
            old = run.read_config()
            check_resume_config(out, old, _known_options(args, plan), RESULT_KEYS)
            iterations = iterations or old.get("iterations")
            budget = budget if budget is not None else old.get("budget_images")
            assess_images = assess_images if assess_images is not None else old.get("assess_images")
            target = {"iterations": iterations, "budget_images": budget, "assess_images": assess_images}
            finished = run.is_finished(target)
            if finished is not None:
                print(f"autosim run: {out} is finished ({finished['iterations']} steps, {finished['images']} images; "
                      f"{os.path.join(out, 'summary.json')}); nothing to do. Pass a larger --iterations or "
                      "--budget-images to extend it, or another --out to start afresh.", file=stderr)
                print(_summary_table(finished, old.get("metric", "metric")), file=stdout)
                return 0
        elif _holds_files(out):
            present = [n for n in (CONFIG, METRICS, CHECKPOINT) if os.path.exists(os.path.join(out, n))]
            raise UsageError(_EXISTS.format(out=out, what=", ".join(present) or "other files"))
        try:
            with RenderPools(plan.render, stream=stderr, desc="autosim run") as pools:  # closed on any exit
                return _run(experiment, args, plan, run, old, iterations, budget, assess_images, pools, stdout,
                            stderr)
        except Interrupted as err:
            print(f"\nautosim run: interrupted; {run.checkpoint_path} holds step {err.step}. Continue with --resume.",
                  file=stderr)
            return 130
        except RenderFailed as err:
            print(f"autosim run: error: {failure_line(err)}. The checkpoint of step {err.step - 1} in "
                  f"{run.checkpoint_path} is intact; after fixing the cause, continue with --resume.", file=stderr)
            return 1
        except BaseException as err:  # Ctrl-C while building, assessing or plotting, however it surfaced
            if isinstance(err, RenderError) and not is_interrupt(err):  # in the fresh-model assessment
                print(f"autosim run: error: rendering failed during the fresh-model assessment: "
                      f"{failure_line(err.message)}. Every step is on disk; after fixing the cause, continue with "
                      "--resume (it redoes the assessment only).", file=stderr)
                return 1
            if not is_interrupt(err):
                raise
            print(f"\nautosim run: interrupted; {out} holds every completed step. Continue with --resume.",
                  file=stderr)
            return 130


def _run(experiment, args: RunArgs, plan: _Plan, run: RunDir, old: dict | None, iterations, budget, assess_images,
         pools: RenderPools, stdout, stderr) -> int:
    t0 = time.perf_counter()
    print(f"autosim run: building {plan.spec} (renderer {plan.renderer}"
          + (f", size {plan.size}" if plan.size else "") + "; validation and test data, model) ...",
          file=stderr, flush=True)
    setup = build_setup(experiment, renderer=plan.renderer, seed=args.seed, size=plan.size)
    print(f"autosim run: built in {time.perf_counter() - t0:.1f} s", file=stderr, flush=True)
    changes: dict[str, Any] = {"approximation": plan.approximation}
    if args.dataset_size is not None:
        changes["dataset_size"] = args.dataset_size
    if args.finetune_epochs is not None:
        changes["finetune_epochs"] = args.finetune_epochs
    if args.psi_trainable is not None:
        changes["psi_trainable"] = args.psi_trainable
    if args.pretrain_rounds is not None:
        changes["pretrain_rounds"] = args.pretrain_rounds
    if args.reset_inits is not None:
        changes["theta_reset_inits"] = args.reset_inits
    k, b = changes.get("dataset_size", setup.config.dataset_size), setup.config.batch_size
    if k % b:
        changes["batch_size"] = math.gcd(k, b)
        print(f"autosim run: note: batch_size {b} does not divide dataset_size {k}: using batch_size "
              f"{changes['batch_size']}", file=stderr)
    try:
        run_config = setup.config.replace(**changes)
    except ValueError as err:
        hint = ""
        inits, rounds = (changes.get(k, getattr(setup.config, k)) for k in ("theta_reset_inits", "pretrain_rounds"))
        if inits > 1 and rounds:  # the config's message names its fields; a CLI user needs the flags
            hint = (f" On the command line: --reset-inits 1 or --pretrain-rounds 0 (the experiment's preset has "
                    f"theta_reset_inits={setup.config.theta_reset_inits}, pretrain_rounds="
                    f"{setup.config.pretrain_rounds}).")
        raise UsageError(str(err) + hint) from None
    iterations = iterations or setup.iterations
    assess_images = setup.assess_images if assess_images is None else assess_images
    target = {"iterations": iterations, "budget_images": budget, "assess_images": assess_images}
    metric, higher = setup.task.metric_name, bool(setup.task.higher_is_better)
    config = make_config(command="run", experiment=plan.spec, renderer=plan.renderer, seed=args.seed, size=plan.size,
                         options=run_config.to_dict(), iterations=iterations, budget_images=budget,
                         assess_images=assess_images, metric=metric, higher_is_better=higher,
                         render=plan.render.to_dict(), parallel={"devices": plan.devices})
    if old is not None:
        check_resume_config(run.path, old, config, RESULT_KEYS)
        if old.get("render") is not None and old["render"] != config["render"]:
            print(f"autosim run: note: rendering with {plan.render.describe()} now (was {old['render']}); the renders "
                  "are the same bitwise.", file=stderr)
        if (old.get("parallel") or {}).get("devices", 1) != plan.devices:
            print(f"autosim run: note: data parallel over {plan.devices} device(s) now (was "
                  f"{(old.get('parallel') or {}).get('devices', 1)}); the results agree to float32 rounding, not "
                  "bitwise.", file=stderr)
        for key in ("versions", "device"):
            if old.get(key) != config[key]:
                print(f"autosim run: note: {key} changed since the run started ({old.get(key)} -> {config[key]}); "
                      "the continuation is not bitwise that of an uninterrupted run.", file=stderr)
    check_select_reset(setup.simulator.distribution.init(), args.select_reset)
    setup = pools.attach(setup)  # the render pool of the steps, the assessment and the samples
    try:
        autosim = setup.make_autosimulate(args.seed, run_config,
                                          devices=plan.devices if plan.devices > 1 else None)
    except ValueError as err:
        raise UsageError(f"the experiment's setup is invalid: {err}") from None
    write_json(run.config_path, config)
    x_test, y_test = setup.test_data

    def monitor(state) -> dict:
        test_loss, test_metric = autosim.inner.measure(state.theta, x_test, y_test)
        return {"test_loss": float(test_loss), "test_metric": float(test_metric)}

    progress: list[Progress] = []
    cg = {"unconverged": 0, "no_descent": 0, "steps": 0, "kept": 0}

    def count_cg(record: dict) -> None:
        cg["steps"] += 1
        cg["unconverged"] += not record["cg_converged"]
        solved = record["cg_relative_residual"] != 0.0 or not record["cg_converged"]
        cg["no_descent"] += solved and record["cg_model_value"] >= 0
        cg["kept"] += not record.get("psi_updated", True)

    def on_start(state, records) -> None:
        for r in records:
            count_cg(r)
        print(f"autosim run: {plan.spec} / {plan.approximation} / {plan.renderer} / seed {args.seed} -> {run.path}"
              + (f" (resuming at step {int(state.step)})" if args.resume else "")
              + "; compiling the first step ...", file=stderr, flush=True)
        progress.append(Progress(iterations, desc="autosim run", stream=stderr,
                                 initial=min(int(state.step), iterations),
                                 every=args.log_every, seconds=args.log_seconds))

    # How far psi has moved, KL(q_psi || q_start) in nats: the live sign that psi learns. The val
    # metric beside it is of the step's own model, which with a fresh theta per step (the
    # experiments' theta_reset_every=1) has had one step's fine-tuning: at clevr-seg's gpu size it
    # predicts background only and its mIoU stays constant for the whole run. psi's measure is the
    # fresh-model assessment after the run.
    import jax
    import optax

    from .outer import check_families, find_state, kl_divergence

    psi_start = setup.simulator.distribution.init()
    try:
        check_families(psi_start, "autosim run's progress")
        moved = jax.jit(lambda psi: kl_divergence(psi, psi_start))
    except ValueError:  # a mixture (with_exploration) has no closed-form KL: the lines go without it
        moved = None
    val_text = f"val {metric}" + (" (the step's fresh model)" if run_config.theta_reset_every == 1 else "")

    def on_step(record: dict, state) -> None:
        count_cg(record)
        cg_text = _cg_status(cg, plan.approximation)
        postfix = {metric: f"{record['val_metric']:.4g}", "images": record["images"], "CG": cg_text}
        kl_text = ""
        if moved is not None:
            postfix["psi KL"] = f"{float(moved(state.psi)):.3g}"
            kl_text = f" psi {postfix['psi KL']} nats from the start,"
        # The psi step's share of Adam's full rate: well below 1 when the hypergradient's sign flips
        # (noise) or when Adam's second moment still remembers larger early hypergradients
        # (docs/learning.md, session 38: digits-det's runs at 0.1-0.3 from step 20 on).
        adam = (find_state(state.outer_opt_state, optax.ScaleByAdamState)
                if run_config.outer_optimizer == "adam" else None)
        if adam is not None:  # its count is the updates applied; this one used the rate at count - 1
            lr = run_config.psi_learning_rate(max(int(adam.count) - 1, 0))
            postfix["psi step"] = f"{record['psi_step_rms'] / lr:.2f}"
            kl_text += f" psi step {postfix['psi step']} of Adam's rate,"
        progress[0].update(f"{record['images']} images, {val_text} {record['val_metric']:.4g},{kl_text} {cg_text}",
                           postfix=postfix)

    if run_config.pretrain_rounds:  # inside init(seed), before the first step: minutes at gpu size
        print(f"autosim run: pretraining theta: {run_config.pretrain_rounds} rounds of {run_config.dataset_size} "
              f"renders x {run_config.finetune_epochs} epochs at the start psi ...", file=stderr, flush=True)
    try:
        result = run_loop(autosim, run, seed=args.seed, resume=args.resume, iterations=iterations,
                          budget_images=budget, monitor=monitor, on_start=on_start, on_step=on_step)
    finally:
        for p in progress:
            p.close()
    summary = summarize(result.records, higher=higher, stopped_by=result.stopped_by, state=result.state,
                        target=target)
    if moved is not None:
        summary["psi_kl_from_start"] = float(moved(result.state.psi))
    summary.update(psi_step_report(result.records, run_config))
    every = run_config.theta_reset_every
    summary["val_metric_model"] = {0: "warm-started", 1: "fresh per step"}.get(every, f"reset every {every} steps")
    reference = setup.reference_psi
    if assess_images and result.records:
        with pools.timeout_scaled(math.ceil(assess_images / run_config.dataset_size)):  # one batch of N images
            summary["assessment"] = _assess(setup._replace(config=run_config), run, result, reference, args.seed,
                                            assess_images, stderr, args)
        summary["gap_closed"] = summary["assessment"].get("gap_closed", {}).get("val_metric")
        if "selected_psi" in summary["assessment"]:
            summary["selected_step"] = summary["assessment"]["selected_psi"]["step"]
            summary["selected_reset"] = summary["assessment"]["selected_psi"]["reset"]
    selected = summary.get("selected_step")
    psi_doc = _psi_document(setup, result.initial.psi, result.state.psi, reference,
                            None if selected is None else psi_at(result, selected, summary["selected_reset"]))
    write_json(os.path.join(run.path, PSI_JSON), psi_doc)
    summary["psi_in_field_units"] = {k: psi_doc[k] for k in ("start", "learned", "reference", "selected")
                                     if k in psi_doc}
    _write_plots(run.path, result.records, setup, result.initial.psi, result.state.psi, reference, args.seed, stderr)
    write_json(run.summary_path, summary)  # last: a summary marks the run finished
    print(_summary_table(summary, metric), file=stdout)
    return 0


def psi_step_report(records: list[dict], config) -> dict:
    """How fast psi moved, for Adam on psi: the median psi step's share of Adam's full rate in each
    quarter of the run (``StepInfo.psi_step_rms`` over :meth:`AutoSimConfig.psi_learning_rate`, 1:
    every coordinate moved by the rate), and the largest hypergradient norm of the first 8 steps
    over the median of the rest; with ``AutoSimConfig.outer_line_search``, also the mean scale the line
    search chose in each quarter (``StepInfo.psi_step_scale``) and the share of steps it left psi where it
    was (scale 0). ``{}`` for another optimiser or fewer than 16 records.

    Why: a few early hypergradients hundreds of times the later ones set Adam's second moment, and
    the psi step then runs at a few percent of its rate for the rest of the run (clevr-seg at gpu
    size, seed 0: 1%; ``docs/learning.md``, session 51), which the metric alone does not show.

    Example:
      >>> from autosim_jax import AutoSimConfig
      >>> records = [{"step": t + 1, "psi_step_rms": 0.1 if t < 4 else 0.001, "psi_grad_norm": 50.0 if t < 4 else 0.1}
      ...            for t in range(16)]
      >>> report = psi_step_report(records, AutoSimConfig(outer_learning_rate=0.1))
      >>> report["psi_step_share_by_quarter"], report["psi_grad_norm_early_over_later"]
      ([1.0, 0.01, 0.01, 0.01], 500.0)
    """
    if config.outer_optimizer != "adam" or len(records) < 16 or "psi_step_rms" not in records[0]:
        return {}
    # record t's update is Adam's (t-1)-th (a step that kept psi applied none; the rate is then one step late)
    share = [r["psi_step_rms"] / config.psi_learning_rate(max(int(r["step"]) - 1, 0)) for r in records]
    norms = [r["psi_grad_norm"] for r in records]
    later = float(np.median(norms[8:]))
    report = {"psi_step_share_by_quarter": [round(float(np.median(q)), 4) for q in np.array_split(share, 4)],
              "psi_grad_norm_early_over_later": float(max(norms[:8]) / later) if later > 0 else float("inf")}
    if config.outer_line_search and "psi_step_scale" in records[0]:
        scales = np.array([r["psi_step_scale"] for r in records])
        report["line_search_scale_by_quarter"] = [round(float(np.mean(q)), 3) for q in np.array_split(scales, 4)]
        report["line_search_stayed"] = round(float(np.mean(scales == 0)), 3)
    return report


def _cg_status(cg: dict, approximation: str) -> str:
    kept = f", psi kept {cg['kept']}" if cg["kept"] else ""
    if approximation != "exact_quadratic":
        return "CG: no solve" + kept
    if not cg["unconverged"] and not cg["no_descent"]:
        return f"CG ok {cg['steps']}/{cg['steps']}" + kept
    return (f"CG unconverged {cg['unconverged']}/{cg['steps']}"
            + (f", no better than zero {cg['no_descent']}" if cg["no_descent"] else "") + kept)


def _assess(setup, run: RunDir, result, reference, seed: int, n: int, stderr, args: RunArgs) -> dict:
    """Fresh models trained on equal budgets from the start, learned and reference psi (the fair test).

    Cached in ``assessed.json`` (keys ``"0"`` for the start, the step for the learned psi,
    ``"reference"``), so an interrupted or resumed run does not train them again. The result's
    ``images_rendered`` counts every fresh model's renders (cached ones too: they were rendered
    for this run), ``images_rendered_selection`` the part that only ``--select-every`` /
    ``--select-reset`` needed (their extra candidates and the judging of the pick).
    """
    from .experiments import gap_closed, make_assessor
    from .simulator import reraise_render_errors

    epochs, models = setup.assess_epochs, args.assess_models
    protocol = assess_protocol(n, epochs, models, seed=seed)
    final, reset = int(result.state.step), tuple(args.select_reset)
    psis = [("start_psi", "0", result.initial.psi), ("learned_psi", str(final), result.state.psi)]
    if reference is not None:
        psis.append(("reference_psi", "reference", reference))
    # --select-every N: the psi of every N-th step too; the one whose fresh model scores best on
    # the *validation* set is returned as the selected psi (docs/learning.md: worth its images
    # where runs lose their gain late, as clevr-seg's at 240 steps; level with the final psi on
    # digits-det, whose runs keep it, session 33). --select-reset F,G: each of those psi (the final one
    # included) also with the fields F, G set back to their start value, a candidate of its own
    # (docs/learning.md, sessions 24-25: on clevr-seg at gpu size validation picks the better of a
    # psi and its colour/material reset as the test set would, 16 of 16 times).
    checks = [int(r["step"]) for r in result.records if args.select_every and r["step"] % args.select_every == 0
              and r["step"] != final]
    psis += [(f"step_{step}", str(step), psi_at(result, step)) for step in checks]
    twins = [step for step in checks + [final] if reset and _moved(psi_at(result, step), result.initial.psi, reset)]
    if reset and len(twins) < len(checks) + 1:  # a twin equal to its psi would only repeat its assessment
        print(f"autosim run: note: --select-reset {','.join(reset)}: the psi of step(s) "
              f"{sorted(set(checks + [final]) - set(twins))} already hold(s) these fields at the start; no twin "
              "for them", file=stderr)
    psis += [(f"step_{step}+reset", f"{step}+reset:{','.join(reset)}", psi_at(result, step, reset)) for step in twins]
    each = "a fresh model" if models == 1 else f"{models} fresh models (their mean)"
    print(f"autosim run: assessing {len(psis)} psi ({', '.join(p[0].replace('_', ' ') for p in psis)}): {each} "
          f"on {n} images x {epochs} epochs each", file=stderr, flush=True)
    progress = Progress(len(psis), desc="autosim run: assessing", stream=stderr, unit="psi", every=1,
                        seconds=args.log_seconds)
    assessor: list = []

    def assess(psi, at_seed: int = seed, name: str = "selected psi"):
        if not assessor:
            assessor.append(make_assessor(setup, num_images=n, epochs=epochs, repeats=models))
        with quiet_render_errors(), reraise_render_errors():
            return assessor[0](psi, at_seed, model_progress(f"autosim run: assessing {name}", models, stderr))

    out: dict[str, Any] = {"images": n, "epochs": epochs, "models": models}
    metric = setup.task.metric_name
    try:
        for name, key, psi in psis:
            value, cached = cached_assessment(os.path.join(run.path, ASSESSED), key, protocol,
                                              lambda psi=psi, name=name: assess(psi, name=name.replace("_", " ")))
            out[name] = value
            progress.update(f"{name.replace('_', ' ')}: val {metric} {value['val_metric']:.4g}, test "
                            f"{value['test_metric']:.4g}" + (" (cached)" if cached else ""))
    finally:
        progress.close()
    selecting = bool(checks or twins)
    if selecting:
        candidates = {(step, ()): out.pop(f"step_{step}") for step in checks}
        candidates[(final, ())] = out["learned_psi"]
        candidates.update({(step, reset): out.pop(f"step_{step}+reset") for step in twins})
        sign = 1 if setup.task.higher_is_better else -1
        best, best_reset = max(candidates, key=lambda c: sign * candidates[c]["val_metric"])
        out["checked_steps"] = {f"{step}+reset" if r else str(step): v for (step, r), v in sorted(candidates.items())}
        out["reset_fields"] = list(reset)  # what "+reset" in those keys sets back to the start
        # The models that picked the best checked psi would also judge it too kindly (their own
        # noise is part of why it won), so the selected psi is judged by new fresh models: other
        # render and minibatch keys than every assessment above.
        key = f"selected_{best}" + (f"+reset:{','.join(best_reset)}" if best_reset else "")
        value, cached = cached_assessment(os.path.join(run.path, ASSESSED), key, protocol,
                                          lambda: assess(psi_at(result, best, best_reset), seed + 2 * models))
        out["selected_psi"] = {"step": best, "reset": list(best_reset), **value}
        print(f"autosim run: selected the psi of step {best}{_reset_text(best_reset)} by validation; judged by "
              f"{each} of its own: val {metric} {value['val_metric']:.4g}, test {value['test_metric']:.4g}"
              + (" (cached)" if cached else ""), file=stderr, flush=True)
    # Each fresh model renders its own n images (make_assessor): what the assessment cost, and the
    # share of it that only the selection needed (issue 13: a check's images count in the budget).
    judged = len(psis) + selecting
    out["images_rendered"] = judged * models * n
    out["images_rendered_selection"] = (judged - (3 if reference is not None else 2)) * models * n
    if reference is not None:
        out["gap_closed"] = {
            m: finite_or_none(gap_closed(out["start_psi"][m], out["learned_psi"][m], out["reference_psi"][m]))
            for m in ("val_metric", "test_metric")}
        if selecting:
            out["gap_closed_selected"] = {
                m: finite_or_none(gap_closed(out["start_psi"][m], out["selected_psi"][m], out["reference_psi"][m]))
                for m in ("val_metric", "test_metric")}
    return out


# ---------------------------------------------------------------------- psi in field units


def _describe(setup, psi) -> dict | None:
    import jax

    from .distributions import describe_psi

    try:
        return describe_psi(setup.simulator.renderer.schema, jax.tree.map(np.asarray, psi))
    except ValueError:
        return None  # a distribution that is not from_schema's families: psi.json keeps the raw values


def _psi_document(setup, start, learned, reference, selected=None) -> dict:
    """psi.json: the start, learned (final), reference and, with ``--select-every`` or
    ``--select-reset``, selected psi, each in field units and raw (``psi_record``, loadable with
    ``psi_from_record``)."""
    named = [("start", start), ("learned", learned), ("reference", reference)]
    named += [("selected", selected)] if selected is not None else []
    return {
        "units": "each field in its own units (autosim_jax.describe_psi): mean/std/quantiles of continuous "
                 "fields, probabilities per category of categorical ones",
        **{name: _describe(setup, psi) if psi is not None else None for name, psi in named},
        "raw": {name: psi_record(psi) if psi is not None else None for name, psi in named},
    }


def psi_at(result, step: int, reset: Sequence[str] = ()):
    """The psi a run held after ``step`` outer steps (its final state's, or its record's), with the
    fields named in ``reset`` set back to the run's start value."""
    if step == int(result.state.step):
        psi = result.state.psi
    else:
        record = next(r for r in result.records if r["step"] == step)
        psi = psi_from_record(result.initial.psi, record["psi"])
    return {**psi, **{field: result.initial.psi[field] for field in reset}} if reset else psi


def _moved(psi, start, fields: Sequence[str]) -> bool:
    """Whether any of ``fields`` differs between ``psi`` and ``start`` (dicts of pytrees).

    >>> _moved({"a": np.zeros(2), "b": np.ones(2)}, {"a": np.zeros(2), "b": np.zeros(2)}, ["a"])
    False
    >>> _moved({"a": np.zeros(2), "b": np.ones(2)}, {"a": np.zeros(2), "b": np.zeros(2)}, ["a", "b"])
    True
    """
    import jax

    return any(not np.array_equal(x, y) for f in fields
               for x, y in zip(jax.tree.leaves(psi[f]), jax.tree.leaves(start[f]), strict=True))


def check_select_reset(psi, fields: Sequence[str]) -> None:
    """Raises :class:`UsageError` unless every name in ``fields`` is a field of ``psi`` (a dict).

    >>> check_select_reset({"light": 0.0, "color": 1.0}, ["color"])
    >>> check_select_reset({"light": 0.0}, ["colour"])
    Traceback (most recent call last):
    ...
    autosim_jax.rundir.UsageError: --select-reset: no field 'colour' in psi; its fields are ['light'].
    """
    if not fields:
        return
    if not isinstance(psi, dict):
        raise UsageError(f"--select-reset needs a psi that is a dict of fields (as from_schema builds); this "
                         f"experiment's psi is a {type(psi).__name__}.")
    for field in fields:
        if field not in psi:
            raise UsageError(f"--select-reset: no field {field!r} in psi; its fields are {sorted(psi)}.")


def _field_list(text: str) -> tuple[str, ...]:
    """``--select-reset``'s value, ``"color, material"`` -> ``("color", "material")``; an empty
    name stays, for :func:`plan_run` to name."""
    return tuple(name.strip() for name in text.split(","))


def _reset_text(reset: Sequence[str]) -> str:
    return f" with {', '.join(reset)} at the start" if reset else ""


def _field_text(entry: dict) -> str:
    """One field's distribution in a few characters: ``0.42 ± 0.05``, ``16 (0.45)`` or ``uniform``."""
    if entry["kind"] == "continuous":
        mean, std = float(np.mean(entry["mean"])), float(np.mean(entry["std"]))
        decimals = int(np.clip(2 - math.floor(math.log10(max(std, 1e-12))), 0, 6))  # 3 digits of the std
        return f"{round(mean, decimals) + 0.0:.{decimals}f} ± {std:.{decimals}f}"
    probs = np.asarray(entry["probs"]).reshape(-1, len(entry["choices"])).mean(0)
    if probs.max() - probs.min() < 1e-3:
        return f"uniform over {len(probs)}"
    top = int(np.argmax(probs))
    return f"{entry['choices'][top]} ({probs[top]:.2f})"


def _psi_rows(summary: dict) -> list[tuple[str, str]]:
    described = summary.get("psi_in_field_units") or {}
    start, learned, ref = described.get("start"), described.get("learned"), described.get("reference")
    if not start or not learned:
        return []
    rows = [("psi in field units", "start -> learned" + (" (reference)" if ref else "")
             + "; mean ± std, or most likely (p)")]
    for name in learned:
        shaped = " (mean of elements)" if learned[name]["shape"] else ""
        rows.append((f"  {name}{shaped}", f"{_field_text(start[name])} -> {_field_text(learned[name])}"
                     + (f" ({_field_text(ref[name])})" if ref else "")))
    narrowed = _narrowed_elements(learned, ref or start)
    if narrowed:
        rows.append((f"  elements under half the {'reference' if ref else 'start'}'s spread (spread.png)",
                     "; ".join(narrowed)))
    return rows


def _narrowed_elements(learned: dict, base: dict, most: int = 6) -> list[str]:
    """The elements of fields with several (one per object, say) whose spread
    (:func:`~autosim_jax.distributions.field_spread`) the learned psi has narrowed to under half
    of ``base``'s (the reference's, else the start's), least spread first: the row averages them
    away, and on clevr-seg such a collapse of one object's field cost most of a run's gap
    (docs/learning.md, session 28).

    Example:
      >>> uniform = {"kind": "categorical", "shape": [2], "probs": [[0.5, 0.5], [0.5, 0.5]]}
      >>> learned = {"m": {**uniform, "probs": [[0.99, 0.01], [0.5, 0.5]]}}
      >>> _narrowed_elements(learned, {"m": uniform})
      ['m[0] 0.08 (1.00)']
    """
    from .distributions import field_spread

    found = []
    for name, entry in learned.items():
        if not entry["shape"] or name not in base:
            continue
        got, was = field_spread(entry), field_spread(base[name])
        if got is None or was is None:
            continue
        for index in np.ndindex(*np.shape(got)):
            if got[index] < 0.5 * was[index]:
                found.append((float(got[index]), f"{name}{list(index)} {got[index]:.2f} ({was[index]:.2f})"))
    return [text for _, text in sorted(found)[:most]]


# ------------------------------------------------------------------------------ summary


def _summary_table(s: dict, metric: str) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [("iterations", s["iterations"]), ("images rendered", s["images"]), ("stopped by", s["stopped_by"]),
            ("wall time [s]", s["wall_time"])]
    total = sum(s.get(f"time_{k}", 0.0) for k in ("render", "train", "outer")) or 1.0
    for k in ("render", "train", "outer"):
        rows.append((f"  {k} [s]", f"{s.get('time_' + k, 0.0):.3f} ({100 * s.get('time_' + k, 0.0) / total:.0f}%)"))
    if "best_val_metric" in s:
        # With a fresh theta per step these are one step's fine-tuning, not psi's worth (the
        # fresh models below are): said in the rows' names.
        of = " of a step's fresh model" if s.get("val_metric_model") == "fresh per step" else ""
        rows += [(f"start val {metric}{of} (after step 1's fine-tuning)", s["start_val_metric"]),
                 (f"best val {metric}{of}", f"{s['best_val_metric']:.4f} (step {s['best_step']})"),
                 (f"test {metric} at best", s["test_metric_at_best"])]
        if of and s["best_step"] == 1 and s["iterations"] > 1:
            # clevr-seg at cpu size: every step's model predicts the background only (0.2383 on every
            # step) while psi closes 0.6 of the gap; a flat in-run metric is not a run that learned nothing.
            rows.append(("  no later step's model scored higher",
                         "one step's fine-tuning is too short to show psi's worth; the fresh models below measure it"))
    if "psi_kl_from_start" in s:  # summaries written before 2026-12-03 do not have it
        rows.append(("psi moved, KL(q_psi || q_start)", f"{s['psi_kl_from_start']:.4g} nats"))
    if "psi_step_share_by_quarter" in s:
        quarters, ratio = s["psi_step_share_by_quarter"], s["psi_grad_norm_early_over_later"]
        held = (f"; the first 8 steps' hypergradients reached {ratio:.0f}x the later median and Adam's second "
                f"moment still holds them (outer_unit_norm feeds Adam their direction only)"
                if quarters[-1] < 0.05 and ratio > 20 else "")
        rows.append(("psi step, share of Adam's rate by quarter", " / ".join(f"{q:.2f}" for q in quarters) + held))
    if "line_search_scale_by_quarter" in s:
        rows.append(("line search, mean scale by quarter", " / ".join(f"{q:.2f}" for q in s["line_search_scale_by_quarter"])
                     + f"; psi stayed on {s['line_search_stayed']:.0%} of steps"))
    if s.get("cg_solves"):
        bad, worse = s["cg_unconverged_steps"], s["cg_no_descent_steps"]
        residual = (f" (relative residual median {s['cg_relative_residual_median']:.2g}, max "
                    f"{s['cg_relative_residual_max']:.2g})" if bad and "cg_relative_residual_median" in s else "")
        if worse:
            advice = "; raise cg_maxiter or the damping in the experiment's AutoSimConfig"
        elif bad:
            # On digits-sim2real (cpu) solving to cg_tol (50 iterations) gave the same G at 1.5x the time,
            # and 10x the damping, which converges in the same 10, lost most of the gain (docs/learning.md,
            # session 47): a truncated solve is not a failed one, and the damping is not a free fix.
            advice = ("; truncated, every vector better than zero (more cg_maxiter solves it to cg_tol; a larger "
                      "damping changes the step itself)")
        else:
            advice = ""
        rows.append(("CG solves", f"{s['cg_solves'] - bad}/{s['cg_solves']} converged" + residual
                     + (f", {worse} no better than zero" if worse else "") + advice))
    if s.get("psi_kept_steps"):
        rows.append(("steps that kept psi", f"{s['psi_kept_steps']} (an unusable solve or a non-finite update)"))
    if s.get("finetune_loss_jump_steps"):
        jumps = (f"{s['finetune_loss_jump_steps']} steps raised their renders' loss "
                 f"{s['finetune_loss_jump_factor']:g}x "
                 f"or more (first at step {s['first_finetune_loss_jump_step']}); lower inner_learning_rate")
        rows.append(("fine-tuning loss jumps", jumps))
    if "assessment" in s:
        a = s["assessment"]
        models = a.get("models", 1)
        rows.append((f"fresh model, {a['images']} images" if models == 1 else
                     f"{models} fresh models, {a['images']} images", f"val / test {metric}"
                     + ("" if models == 1 else " (mean +- std over the models)")))

        def pair(v: dict) -> str:
            if models == 1:
                return f"{v['val_metric']:.4f} / {v['test_metric']:.4f}"
            diverged = v.get("diverged_models", [])  # make_assessor left them out of the means
            return (f"{v['val_metric']:.4f} +- {v['val_metric_std']:.4f} / "
                    f"{v['test_metric']:.4f} +- {v['test_metric_std']:.4f}"
                    + (f" ({len(diverged)} of {models} diverged, left out)" if diverged else ""))

        for name in ("start_psi", "learned_psi", "reference_psi"):
            if name in a:
                rows.append((f"  {name.replace('_', ' ')}", pair(a[name])))
        if "selected_psi" in a:
            sel = a["selected_psi"]
            picked = f"{sel['step']}+reset" if sel.get("reset") else str(sel["step"])
            for key, value in a.get("checked_steps", {}).items():  # what validation chose among
                step, _, reset = key.partition("+")
                rows.append((f"    candidate: step {step}{_reset_text(a.get('reset_fields', ())) if reset else ''}",
                             pair(value) + ("  <- picked by val" if key == picked else "")))
            rows.append((f"  selected psi (step {sel['step']}{_reset_text(sel.get('reset', ()))}, new models)",
                         pair(sel)))
        if "images_rendered" in a:  # summaries written before 2026-12-03 do not have it
            rows.append(("  images rendered for them", f"{a['images_rendered']:,}"
                         + (f" ({a['images_rendered_selection']:,} for the selection)"
                            if a["images_rendered_selection"] else "")))
        for key, label in (("gap_closed", "gap closed G (val / test)"),
                           ("gap_closed_selected", "  ... by the selected psi")):
            if key in a:
                g = a[key]
                rows.append((label, " / ".join("n/a" if g[m] is None else f"{g[m]:.3f}"
                                               for m in ("val_metric", "test_metric"))))
    rows += _psi_rows(s)
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {fmt(value)}" for name, value in rows)


# ------------------------------------------------------------------------------- plots


def _class_names(renderer, count: int) -> list[str]:
    names = getattr(renderer, "class_names", None) or getattr(sys.modules.get(type(renderer).__module__),
                                                              "CLASS_NAMES", None)
    names = [str(n) for n in names] if names else []
    return [names[i] if i < len(names) else str(i) for i in range(count)]


def _plot_psi(out: str, records: list[dict], setup, psi0, psi1, reference) -> None:
    """psi.png: one panel per field in its units, the reference dashed (see describe_psi)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    schema = setup.simulator.renderer.schema
    steps = [0, *[r["step"] for r in records]]
    psis = [psi0, *[psi_from_record(psi0, r["psi"]) for r in records]] if records else [psi0, psi1]
    described = [_describe(setup, p) for p in psis]
    ref = _describe(setup, reference) if reference is not None else None
    if any(d is None for d in described):  # not from_schema's families: raw leaves, as before
        names = list(psi_record(psi0))
        ncols = min(4, max(1, len(names)))
        fig = Figure(figsize=(3.4 * ncols, 2.6 * -(-len(names) // ncols)), layout="constrained")
        axes = np.atleast_1d(fig.subplots(-(-len(names) // ncols), ncols, squeeze=False)).ravel()
        for ax, name in zip(axes, names):
            ax.plot(steps, [psi_record(p)[name][:10] for p in psis])
            ax.set_title(f"{name} (raw psi)", fontsize=8)
            ax.set_xlabel("step", fontsize=8)
        for ax in axes[len(names):]:
            ax.axis("off")
        fig.savefig(os.path.join(out, "psi.png"), dpi=100)
        return
    fields = list(schema.fields)
    ncols = min(4, len(fields))
    nrows = -(-len(fields) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, field in zip(axes, fields):
        entries = [d[field.name] for d in described]
        if field.kind == "continuous":
            mean = np.array([np.ravel(e["mean"]) for e in entries])
            lo = np.array([np.ravel(e["p05"]) for e in entries])
            hi = np.array([np.ravel(e["p95"]) for e in entries])
            shown = min(mean.shape[1], 6)
            for j in range(shown):
                label = f"[{j}]" if mean.shape[1] > 1 else "mean"
                line, = ax.plot(steps, mean[:, j], label=label)
                if mean.shape[1] == 1:
                    ax.fill_between(steps, lo[:, j], hi[:, j], color=line.get_color(), alpha=0.2, label="5-95%")
                if ref is not None:
                    ax.axhline(np.ravel(ref[field.name]["mean"])[j], color=line.get_color(), ls="--", lw=1,
                               label="reference" if j == 0 else None)
            bounds = f"[{field.low:g}, {field.high:g}]"
            ax.set_ylabel(f"value in {bounds}", fontsize=7)
            extra = f", first {shown} of {mean.shape[1]}" if mean.shape[1] > shown else ""
            ax.set_title(field.name + (f" {field.shape}{extra}" if field.shape else ""), fontsize=9)
        else:
            choices = [str(c) for c in field.choices]
            probs = np.array([np.asarray(e["probs"]).reshape(-1, len(choices)).mean(0) for e in entries])
            order = np.argsort(-probs[-1])[:10]
            for j in order:
                line, = ax.plot(steps, probs[:, j], label=choices[j])
                if ref is not None:
                    r = np.asarray(ref[field.name]["probs"]).reshape(-1, len(choices)).mean(0)
                    ax.axhline(r[j], color=line.get_color(), ls="--", lw=1)
            ax.set_ylim(0, 1)
            ax.set_ylabel("probability", fontsize=7)
            ax.set_title(field.name + (" (mean over elements)" if field.shape else "")
                         + (f", top {len(order)} of {len(choices)}" if len(order) < len(choices) else ""), fontsize=9)
        ax.set_xlabel("step", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncols=2 if field.kind == "categorical" else 1)
    for ax in axes[len(fields):]:
        ax.axis("off")
    title = ("psi in each field's units against outer step (continuous: mean and 5-95% range; categorical: "
             "probabilities)" + ("; dashed: the reference psi" if ref is not None else ""))
    fig.suptitle(textwrap.fill(title, 55 * ncols), fontsize=9)
    fig.savefig(os.path.join(out, "psi.png"), dpi=100)
    _plot_spread(out, steps, described, ref, fields)


def _plot_spread(out: str, steps: list[int], described: list[dict], ref: dict | None, fields) -> None:
    """spread.png: how spread each element of each field is along the run (``field_spread``: 1 as
    the uniform law, 0 one value), the reference dashed. psi.png averages a per-object
    categorical over its objects and shows a per-object continuous field by its means, so one
    object's collapse (clevr-seg's first object going to rubber, or to one spot on the floor,
    docs/learning.md) shows only here."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from .distributions import field_spread

    shown = [f for f in fields if field_spread(described[0][f.name]) is not None]
    if not shown:
        return
    ncols = min(4, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, field in zip(axes, shown):
        spread = np.array([np.ravel(field_spread(d[field.name])) for d in described])
        index = list(np.ndindex(*field.shape)) or [()]
        for j in range(min(spread.shape[1], 8)):
            line, = ax.plot(steps, spread[:, j], label=str(list(index[j])) if field.shape else None)
            if ref is not None:
                ax.axhline(np.ravel(field_spread(ref[field.name]))[j], color=line.get_color(), ls="--", lw=1)
        extra = f", first 8 of {spread.shape[1]}" if spread.shape[1] > 8 else ""
        ax.set_title(field.name + (f" {field.shape}{extra}" if field.shape else ""), fontsize=9)
        ax.set_ylim(0, max(1.05, float(np.nanmax(spread)) * 1.05))
        ax.set_xlabel("step", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if field.shape:
            ax.legend(fontsize=6, ncols=2, title="element", title_fontsize=6)
    for ax in axes[len(shown):]:
        ax.axis("off")
    title = ("spread of each field's elements against outer step: 1 = as spread as the uniform law over the "
             "field's range or choices, 0 = one value (autosim_jax.field_spread)"
             + ("; dashed: the reference psi" if ref is not None else ""))
    fig.suptitle(textwrap.fill(title, 55 * ncols), fontsize=9)
    fig.savefig(os.path.join(out, "spread.png"), dpi=100)


def _write_plots(out: str, records: list[dict], setup, psi0, psi1, reference, seed: int, stderr) -> None:
    import jax
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .compare import write_cell_maps
    from .simulator import reraise_render_errors

    metric = setup.task.metric_name
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

    _plot_psi(out, records, setup, psi0, psi1, reference)
    # cells.png: only for a scene/location/quality categorical field (the detection experiments)
    write_cell_maps(out, setup.simulator.renderer.schema,
                    [(name, _describe(setup, p)) for name, p in
                     (("start psi", psi0), ("learned psi", psi1), ("target (reference psi)", reference))
                     if p is not None],
                    title="the learned categorical next to the start's and the target's")

    fig = Figure(figsize=(1.4 * SAMPLE_IMAGES, 3.6), layout="constrained")
    try:
        key = jax.random.PRNGKey(seed)
        simulate = jax.jit(setup.simulator.simulate, static_argnums=2)  # one compile (eager: one per op, ~10 s)
        with quiet_render_errors(), reraise_render_errors():
            renders = [jax.block_until_ready(simulate(key, psi, SAMPLE_IMAGES)) for psi in (psi0, psi1)]
    except RenderError as err:
        print(f"autosim run: samples.png: rendering failed: {err.message}", file=stderr)
        ax = fig.subplots()
        ax.text(0.5, 0.5, f"rendering failed:\n{err.message[:200]}", ha="center", va="center", wrap=True)
        ax.axis("off")
        fig.savefig(os.path.join(out, "samples.png"), dpi=100)
        return
    inputs = [np.asarray(r.inputs) for r in renders]
    labels = [np.asarray(r.labels) for r in renders]
    integer_labels = np.issubdtype(labels[0].dtype, np.integer)
    renderer = setup.simulator.renderer
    if inputs[0].ndim == 4 and inputs[0].shape[-1] in (1, 3):
        segmentation = labels[0].ndim == 3 and integer_labels
        if segmentation:  # label maps under the images
            fig.set_size_inches(1.4 * SAMPLE_IMAGES, 6.6)
        axes = fig.subplots(4 if segmentation else 2, SAMPLE_IMAGES, squeeze=False)
        if segmentation:
            top = max(int(np.max(y)) for y in labels)
            count = max(top + 1, 2)
            for row, (label, y) in enumerate(zip(("labels, start", "labels, learned"), labels), start=2):
                for col in range(SAMPLE_IMAGES):
                    axes[row, col].imshow(y[col], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
                    axes[row, col].set_xticks([])
                    axes[row, col].set_yticks([])
                axes[row, 0].set_ylabel(label)
            from matplotlib import colormaps

            cmap = colormaps["tab10"]
            handles = [Patch(color=cmap(i / 9), label=name) for i, name in enumerate(_class_names(renderer, count))]
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=8,
                       title="label classes")
        for row, (label, x, y) in enumerate(zip(("start psi", "learned psi"), inputs, labels)):
            lo, hi = float(np.min(x)), float(np.max(x))
            for col in range(SAMPLE_IMAGES):
                ax = axes[row, col]
                if x.shape[-1] == 3:
                    ax.imshow(np.clip(x[col], 0.0, 1.0) if hi <= 1.0 and lo >= 0.0 else (x[col] - lo) / (hi - lo or 1))
                else:
                    ax.imshow(x[col, ..., 0], cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if not segmentation and y.ndim == 1:  # classification: the class of each image
                    value = int(y[col]) if integer_labels else float(y[col])
                    name = _class_names(renderer, value + 1)[value] if integer_labels and value >= 0 else f"{value:g}"
                    ax.set_title(f"class {name}", fontsize=8)
            axes[row, 0].set_ylabel(label)
    else:  # not images: histograms of the input values
        ax = fig.subplots()
        for label, x in zip(("start psi", "learned psi"), inputs):
            ax.hist(x.ravel(), bins=20, alpha=0.6, label=label)
        ax.set_xlabel(f"input values (inputs of shape {inputs[0].shape[1:]} are not images)")
        ax.legend(title="renders from")
    fig.suptitle(f"renders from the start and the learned psi (seed {seed})")
    fig.savefig(os.path.join(out, "samples.png"), dpi=100)


# ---------------------------------------------------------------------------- commands


def _list(stdout) -> int:
    from .experiments import EXPERIMENTS
    from .renderers import RENDERERS

    print("experiments:", file=stdout)
    for name, exp in sorted(EXPERIMENTS.items()):
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
                    "checkpoint.npz, summary.json, psi.json, plots). Defaults come from the experiment.")
    run.add_argument("experiment", metavar="EXPERIMENT",
                     help="a registered experiment (see `autosim list`), or module:attr naming an "
                          "autosim_jax.experiments.Experiment of your own (found in the current directory or on "
                          "PYTHONPATH)")
    run.add_argument("--approximation", choices=APPROXIMATIONS, default=None,
                     help=f"Table 1 approximation (default {APPROXIMATIONS[0]})")
    run.add_argument("--iterations", type=int, default=None,
                     help="outer iterations (default: the experiment's; on --resume the stored value)")
    run.add_argument("--dataset-size", type=int, default=None,
                     help="K, images rendered per step, >= 2 (default: the experiment's). When the experiment's "
                          "batch size does not divide K, the batch size becomes gcd(K, batch size), with a note")
    run.add_argument("--finetune-epochs", type=int, default=None,
                     help="fine-tuning epochs per step (default: the experiment's)")
    run.add_argument("--psi-trainable", default=None, metavar="REGEX",
                     help="learn only the fields of psi whose path matches REGEX (re.search in paths such as "
                          "['position'].loc, ['key_light'].log_scale; e.g. 'position|key_light'); the others keep the "
                          "start's values (default: every field)")
    run.add_argument("--pretrain-rounds", type=int, default=None, metavar="N",
                     help="train theta first for N rounds of the step's render-and-fine-tune at the start psi (the "
                          "renders count in the images); resets of a fresh theta per step then start from it "
                          "(AutoSimConfig.pretrain_rounds; default: the experiment's, 0 for the built-in ones)")
    run.add_argument("--reset-inits", type=int, default=None, metavar="N",
                     help="each step's fresh theta starts from one of N initialisations of the model in turn, so "
                          "that no one initialisation's bias pushes every step (AutoSimConfig.theta_reset_inits; "
                          "default: the experiment's: 8 for clevr-seg at gpu size, 1 otherwise)")
    run.add_argument("--budget-images", type=int, default=None, metavar="N",
                     help="stop once N images have been rendered, or at --iterations, whichever comes first "
                          "(default: no budget)")
    run.add_argument("--seed", type=seed_argument, default=0,
                     help="seed of the model init and of the run's PRNG key, in [0, 2**32) (default 0)")
    run.add_argument("--renderer", default=None, help="one of the experiment's renderers (default: its first)")
    run.add_argument("--size", choices=("cpu", "gpu"), default=None,
                     help="the experiment's size: cpu (minutes on 2 cores) or gpu (paper scale) (default: the "
                          "experiment's own, cpu for the built-in ones)")
    run.add_argument("--out", default=None, help="run directory (default runs/EXPERIMENT-APPROXIMATION-seedS)")
    run.add_argument("--assess-images", type=int, default=None, metavar="N",
                     help="after the run, train fresh models on N images from the start, the learned and (when the "
                          "experiment has one) the reference psi, and report the gap closed (default: the "
                          "experiment's; 0 skips)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its checkpoint (same configuration required)")
    run.add_argument("--select-every", type=int, default=0, metavar="N",
                     help="also assess the psi after every N-th step and report the one whose fresh model does best "
                          "on the validation set as the selected psi, judged by new fresh models and written to "
                          "psi.json (each check, and the judging, trains --assess-models more; default 0: off)")
    run.add_argument("--select-reset", type=_field_list, default=(), metavar="FIELD[,FIELD]",
                     help="also try each assessed candidate (the final psi, and with --select-every the checked "
                          "ones) with these fields of psi set back to their start value, e.g. color,material for "
                          "fields the start already has right; the selection above chooses among them all "
                          "(each candidate trains --assess-models more)")
    add_assess_models_flag(run)
    add_progress_flags(run)
    add_render_flags(run)
    add_devices_flag(run)
    compare.add_compare_parser(sub)
    return parser


def deterministic_gpu_ops(environ: MutableMapping[str, str] = os.environ) -> None:
    """Ask XLA for deterministic GPU kernels (``--xla_gpu_deterministic_ops=true`` in ``XLA_FLAGS``).

    Without it a GPU may sum a reduction in another order from one process to the next, and the
    outer loop amplifies the last bit: two 12-step clevr-seg runs of one seed in one device call
    were 6e-8 apart after the first step and 1e-3 after the third; with it, three runs in two
    calls agreed bitwise on every step, and the step took as long (docs/learning.md, session 22).
    It must be set before JAX starts its GPU backend (a process that has already computed on the
    GPU keeps its kernels; child processes inherit the setting). A value the user put in
    ``XLA_FLAGS`` is left as it is. CPU runs are deterministic either way.

    Args:
      environ: the environment to change (the process's own by default).

    Example:
      >>> env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
      >>> deterministic_gpu_ops(env); env["XLA_FLAGS"]
      '--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true'
      >>> env = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}   # the user's choice stands
      >>> deterministic_gpu_ops(env); env["XLA_FLAGS"]
      '--xla_gpu_deterministic_ops=false'
    """
    flags = environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
        environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``autosim`` and ``python -m autosim_jax``; returns the exit code.

    After a Ctrl-C (exit code 130) the process ends here, at once, with ``os._exit(130)``:
    a renderer that hung inside a JAX callback may still hold a thread, and finalising the
    interpreter under it can crash (SIGSEGV, seen once in CI right after the "interrupted"
    message). Every file of the run directory is already on disk by then.
    """
    code = _main(argv)
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
    return code


def _main(argv: Sequence[str] | None) -> int:
    deterministic_gpu_ops()  # before anything computes: a GPU run is then a function of its seed
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
    if args.command == "compare":
        return compare.compare_main(args)
    try:
        experiment = resolve_experiment(args.experiment)
        run_args = RunArgs(
            approximation=args.approximation, iterations=args.iterations, dataset_size=args.dataset_size,
            finetune_epochs=args.finetune_epochs, psi_trainable=args.psi_trainable,
            pretrain_rounds=args.pretrain_rounds, reset_inits=args.reset_inits, budget_images=args.budget_images,
            seed=args.seed,
            renderer=args.renderer, out=args.out, resume=args.resume, experiment_spec=args.experiment,
            assess_images=args.assess_images, size=args.size, log_every=args.log_every,
            log_seconds=args.log_seconds, render_workers=args.render_workers, render_backend=args.render_backend,
            ray_address=args.ray_address, render_timeout=args.render_timeout, select_every=args.select_every,
            select_reset=tuple(args.select_reset), assess_models=args.assess_models, devices=args.devices)
        out = args.out or "the run directory"
        with interrupt_guard(f"autosim run: interrupted; {out} holds every completed step. Continue with --resume.",
                             stream=sys.stderr):
            return run_experiment(experiment, run_args)
    except UsageError as err:
        print(f"autosim run: error: {err}", file=sys.stderr)
        return 2
