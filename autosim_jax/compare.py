"""``autosim compare``: AutoSimulate and the black-box baselines head to head (paper Tables 2, 4).

Every method runs on the same experiment, model, fine-tuning options, image budget and seeds,
one after the other (or ``--jobs N`` runs at once, each in a spawned process of its own with its
own render pool, and then the assessments of N seeds at once; the results are the same, only the
wall time changes), into ``--out``::

    METHOD/seedS/          one run directory per method and seed (autosim_jax.rundir: locked,
                           config.json, metrics.jsonl with psi per step, checkpoint.npz,
                           summary.json when finished, assessed.json); AutoSimulate runs
                           in this process through the same loop as ``autosim run``
    start_psi/seedS/       assessed.json of the start psi
    reference_psi/seedS/   assessed.json of the experiment's reference psi (when it has one)
    compare.json           every row below, with per-seed values, the assessment and reach table
    compare.md             Table 2 (the methods, AutoSimulate with its first approximation),
                           fresh models along the run, the gap closed G, images to reach each
                           baseline's best, and, with --approximations, Table 4
    val_vs_images.png, val_vs_time.png, assessed_vs_images.png
    cells.png              when a scene field is a scene/location/quality categorical (the
                           detection experiments' 54 cells): start, each method's final psi
                           and the reference psi as 3 x 9 x 2 heat maps (cell_grid)

Accounting, identical for all methods: ``images`` are counted where the simulator renders,
``time`` is the sum of the steps' render, train and other (psi update, validation) seconds,
excluding the test metric (a monitor) and file I/O. The table gives, per method, mean and
standard deviation over seeds of: the best validation metric over all steps, the images
rendered and the time spent when it was reached, the test metric of that same model, and the
totals. A run stops at the first step that ends with ``images >= --budget-images`` (a step of
LTS renders ``samples x K`` images and one of random search or BO ``--evaluation-images``, so
either may overshoot by less than one step; the totals show it, and the reach table charges a
psi the images it cost).

Curves: the best validation metric so far against images and against time, the mean over
seeds with the min-max band shaded (each seed interpolated, as a step function, on a common
grid).

Fresh-model assessment (the fair measure of an answer, on by default): a fresh task model is
trained on ``--assess-images`` images x the experiment's epochs from a psi and evaluated on
the validation and test sets. Table 2's runs are assessed after ``budget / 2^(P-1), ...,
budget`` images (``--assess-points P``; ``--assess-at N,...`` adds counts between them, since the
geometric grid knows an images-to-reach ratio only to within a factor of 2) on the psi each method
held having rendered at most that many (:func:`record_within`: its last update within the budget,
the start psi before its first), the start psi (and the reference psi) once per seed, Table 4's
other approximations at the budget. The gap closed ``G = (m(final) - m(start)) /
(m(reference) - m(start))`` of each run's final psi is tabulated per method (mean ± std over
seeds) when the experiment has a reference psi. The images-to-reach table (the paper's
headline: AutoSimulate reaches Bayesian optimisation's best with >= 3x fewer images,
REINFORCE's with >= 5x fewer) compares these mean-over-seeds curves; the in-run
best-validation column cannot, because AutoSimulate and LTS warm-start the task model and
random search and BO do not. Assessments are cached, so ``--resume`` of a finished
comparison only trains what is missing.

Rendering: ``--render-workers``, ``--render-backend``, ``--ray-address`` and
``--render-timeout`` as for ``autosim run``. One pool serves every run and assessment of the
comparison (a new one only for a renderer that does not compare equal to the last, as a
plug-in renderer without ``__eq__`` across builds); each run's config.json records the options
in its ``render`` section, which ``--resume`` does not compare. Every run directory also gets
``tensorboard/`` when tensorboardX or tensorboard is installed (``tensorboard --logdir OUT``
shows the methods side by side).

Example:
  >>> main(["compare", "digits-sim2real", "--budget-images", "2048", "--out", "/tmp/c"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import sys
import textwrap
import time

import numpy as np

# JAX and the modules that import it are imported by the functions that use them, after the
# flags are parsed and validated (see autosim_jax/cli.py).
from .checkpoint import TMP_PREFIX, atomic_write
from .config import APPROXIMATIONS
from .processes import map_in_processes
from .render_pool import RenderError
from .rundir import ASSESSED as ASSESSED_FILE
from .rundir import (
    CONFIG,
    LOCK,
    Interrupted,
    Progress,
    RenderFailed,
    RenderPools,
    RunDir,
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
    check_progress_flags,
    check_render_options,
    check_renderer,
    check_resume_config,
    check_seed,
    check_size,
    failure_line,
    finite_or_none,
    interrupt_guard,
    is_assessed,
    is_interrupt,
    make_config,
    model_progress,
    psi_from_record,
    quiet_render_errors,
    read_config,
    remove_stale_tmp,
    resolve_experiment,
    run_loop,
    summarize,
    write_json,
)

METHODS = ("autosimulate", "lts", "bo", "random")
# Config keys of a compare run directory whose change alters its results (--resume refuses).
RESULT_KEYS = ("command", "experiment", "renderer", "method", "approximation", "seed", "size", "options",
               "budget_images", "search_radius", "lts_samples", "search_scales", "evaluation_images",
               "evaluation_epochs")
# The baselines that evaluate every candidate from the model's initialisation (baselines/common.py).
FROM_SCRATCH = ("random", "bo")
# What --resume checks before the setup is built: all but the evaluation, whose default is the setup's.
_KEYS_BEFORE_BUILD = tuple(k for k in RESULT_KEYS if k not in ("evaluation_images", "evaluation_epochs"))


@dataclasses.dataclass
class CompareArgs:
    """The options of ``autosim compare`` (what argparse produces), usable without argparse."""

    budget_images: int
    methods: tuple[str, ...] = METHODS
    seeds: int = 3
    approximations: tuple[str, ...] | None = None  # None: AutoSimulate's default only, no Table 4
    out: str | None = None
    renderer: str | None = None
    resume: bool = False
    lts_samples: int = 4
    search_radius: float = 3.0
    search_scales: bool = False  # the baselines also search each continuous field's log-scale
    # random search and BO: images and fine-tuning epochs of one evaluation (None: the experiment's
    # ``baseline_evaluation`` where it sets one, else its own K and epochs; _resolve_evaluation)
    evaluation_images: int | None = None
    evaluation_epochs: int | None = None
    experiment_spec: str | None = None
    assess_images: int | None = None  # None: the experiment's; 0: no assessment at all
    assess_points: int = 4  # Table 2 rows: psi assessed after budget/2^(P-1), ..., budget/2, budget images
    assess_at: tuple[int, ...] = ()  # more image counts to assess Table 2's runs after (between the geometric points)
    assess_models: int = 1  # fresh models per assessed psi (their mean)
    size: str | None = None  # None: the experiment's default (passed to build only when given)
    log_every: int | None = None
    log_seconds: float = 30.0
    render_workers: int = 1  # as autosim run's RunArgs
    render_backend: str | None = None
    ray_address: str | None = None
    render_timeout: float | None = None
    devices: int = 1  # AutoSimulate's steps data parallel over this many local devices (not the baselines)
    jobs: int = 1  # runs at once, each in a process of its own (1: one after the other in this process)


def _split_choices(text: str, valid: tuple[str, ...], flag: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise UsageError(f"{flag}: unknown {bad or '(empty)'}; valid choices are {list(valid)} (comma-separated).")
    return tuple(dict.fromkeys(items))


def _image_counts(text: str) -> tuple[int, ...]:
    """``--assess-at``'s comma list of image counts (argparse's ``type``: a bad one is a usage error).

    Example:
      >>> _image_counts("5120, 2560")
      (2560, 5120)
    """
    try:
        counts = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma list of image counts, e.g. 5120 or 2560,5120; got {text!r}") from None
    if not counts:
        raise argparse.ArgumentTypeError("give at least one image count, e.g. 5120")
    return counts


def _validate(experiment, args: CompareArgs) -> tuple[str, list[tuple[str, str | None]]]:
    """Every option that needs no build; returns the renderer and the (method, approximation) runs."""
    renderer = check_renderer(experiment, args.renderer)
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise UsageError(f"--methods: unknown {bad or '(empty)'}; valid choices are {list(METHODS)}.")
    for a in args.approximations or ():
        if a not in APPROXIMATIONS:
            raise UsageError(f"--approximations: unknown {a!r}; valid choices are {list(APPROXIMATIONS)}.")
    if args.assess_images is not None and args.assess_images < 0:
        raise UsageError(f"--assess-images must be >= 0 (0 skips the assessment), got {args.assess_images}.")
    check_assess_models(args.assess_models)
    if args.assess_points < 1:
        raise UsageError(f"--assess-points must be >= 1 (1: the final psi only), got {args.assess_points}.")
    if args.budget_images is None or args.budget_images < 1:
        raise UsageError(f"--budget-images must be >= 1, got {args.budget_images}.")
    outside = [n for n in args.assess_at if not 1 <= n <= args.budget_images]
    if outside:
        raise UsageError(f"--assess-at: {outside} outside 1..--budget-images ({args.budget_images}); each point is an "
                         "image count within the budget, e.g. --assess-at 5120 for a 3x ratio to a best after 15360.")
    if args.seeds < 1 or args.lts_samples < 2 or not args.search_radius > 0:
        raise UsageError(f"need --seeds >= 1, --lts-samples >= 2 and --search-radius > 0, got {args.seeds}, "
                         f"{args.lts_samples}, {args.search_radius}.")
    for flag, value in (("--evaluation-images", args.evaluation_images),
                        ("--evaluation-epochs", args.evaluation_epochs)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1 (or left out: the experiment's default), got {value}.")
    if args.evaluation_images is not None and args.evaluation_images > args.budget_images:
        raise UsageError(f"--evaluation-images {args.evaluation_images} is more than --budget-images "
                         f"{args.budget_images}: random search and BO could not make one evaluation.")
    check_seed(args.seeds - 1, "--seeds (seeds 0 .. N-1)")
    check_size(experiment, args.size)
    check_progress_flags(args.log_every, args.log_seconds)
    _render_options(args)
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1 (1: the runs one after the other in this process), got {args.jobs}.")
    if args.jobs > 1 and args.devices > 1:
        raise UsageError("--jobs > 1 runs each run in a process of its own, which would claim every device: use "
                         "--devices 1 with --jobs, or --jobs 1 with --devices.")
    if args.jobs > 1 and args.render_backend == "ray":
        raise UsageError("--jobs > 1 with --render-backend ray would start one Ray instance per run: use "
                         "--render-backend process with --jobs, or --jobs 1 with Ray.")
    check_devices(args.devices)
    if "bo" in args.methods:
        try:
            import bayes_opt  # noqa: F401
        except ImportError:
            raise UsageError("method 'bo' needs the bayesian-optimization package: pip install "
                             "'autosim_jax[baselines]' (or drop bo from --methods).") from None
    runs = []
    for m in args.methods:
        if m == "autosimulate":
            runs += [(m, a) for a in (args.approximations or (APPROXIMATIONS[0],))]
        else:
            runs.append((m, None))
    return renderer, runs


def _render_options(args: CompareArgs):
    return check_render_options(args.render_workers, args.render_backend, args.ray_address, args.render_timeout)


def _label(method: str, approximation: str | None) -> str:
    return f"autosimulate ({approximation})" if approximation else method


def _dirname(method: str, approximation: str | None) -> str:
    return f"autosimulate-{approximation}" if approximation else method


def _common(record: dict, train_steps_per_step: int | None = None) -> dict:
    """The fields every method's records share (AutoSimulate's ``time_outer`` is its "other")."""
    other = record.get("time_other", record.get("time_outer", 0.0))
    return {
        "step": record["step"], "images": record["images"],
        "evaluations": record.get("evaluations", record["step"]),
        "train_steps": record.get("train_steps", (train_steps_per_step or 0) * record["step"]),
        "val_metric": record["val_metric"], "test_metric": record["test_metric"],
        "time_render": record["time_render"], "time_train": record["time_train"], "time_other": other,
        "psi": record["psi"],
    }


def _evaluation_config(method: str, config, args: CompareArgs):
    """The config whose K and epochs one evaluation of ``method`` uses: ``--evaluation-images`` /
    ``--evaluation-epochs`` for random search and BO (which train each candidate's model from its
    initialisation, so AutoSimulate's few fine-tuning steps may score nothing, e.g. a detector),
    the experiment's own otherwise."""
    if method not in FROM_SCRATCH:
        return config
    try:
        return config.replace(dataset_size=args.evaluation_images or config.dataset_size,
                              finetune_epochs=args.evaluation_epochs or config.finetune_epochs)
    except ValueError as err:
        raise UsageError(f"--evaluation-images {args.evaluation_images} / --evaluation-epochs "
                         f"{args.evaluation_epochs} do not fit the experiment's config: {err}") from None


def _resolve_evaluation(args: CompareArgs, setup) -> CompareArgs:
    """``args`` with random search's and BO's evaluation made explicit for ``setup``.

    Each of ``--evaluation-images`` / ``--evaluation-epochs`` not given takes the experiment's
    ``baseline_evaluation`` (set where its own K and epochs leave the model blind), else its own
    (``setup.base_config()``). A value equal to the experiment's own K or epochs is stored as ``None``,
    as before the defaults existed, so that those comparisons resume.

    Raises:
      UsageError: when one evaluation would render more than ``--budget-images``.
    """
    base = setup.base_config()
    default_images, default_epochs = setup.baseline_evaluation or (None, None)
    images = args.evaluation_images or default_images
    epochs = args.evaluation_epochs or default_epochs
    # (a given --evaluation-images is checked in _validate)
    if images is not None and images > args.budget_images and any(m in FROM_SCRATCH for m in args.methods):
        raise UsageError(
            f"random search and BO evaluate a candidate on {images} images x {epochs or base.finetune_epochs} epochs "
            f"by the experiment's default for them (its own {base.dataset_size} x {base.finetune_epochs} leaves the "
            "model blind), "
            f"more than --budget-images {args.budget_images}: they could not make one evaluation. Raise "
            f"--budget-images, or pass --evaluation-images N (e.g. {base.dataset_size}, the experiment's own).")
    return dataclasses.replace(args, evaluation_images=None if images == base.dataset_size else images,
                               evaluation_epochs=None if epochs == base.finetune_epochs else epochs)


def _evaluation_sentence(args: CompareArgs, runs, setup) -> str:
    """compare.md's words on how random search and BO scored a candidate ("" without them)."""
    if not any(m in FROM_SCRATCH for m, _ in runs):
        return ""
    own = setup.base_config()
    used = _evaluation_config("random", own, args)
    return (f" Random search and BO score a candidate by a model trained from its initialisation on "
            f"{used.dataset_size} images x {used.finetune_epochs} epochs"
            + (" (the experiment's own K and epochs)." if (used.dataset_size, used.finetune_epochs)
               == (own.dataset_size, own.finetune_epochs) else
               f" (the experiment's own: {own.dataset_size} x {own.finetune_epochs})."))


def _build_method(method: str, approximation: str | None, setup, args: CompareArgs, budget_evaluations: int,
                  seed: int):
    """``(init, step)`` of one method on ``setup`` (built with ``seed``): AutoSimulate, or a baseline's BlackBox."""
    if method == "autosimulate":
        return setup.make_autosimulate(seed, setup.config.replace(approximation=approximation),
                                       devices=args.devices if args.devices > 1 else None)
    from . import baselines

    # the baselines train with the experiment's own options, not those tuned for AutoSimulate's learner
    base = setup.base_config()
    kw = {"config": _evaluation_config(method, base, args), "radius": args.search_radius,
          "include_scales": args.search_scales}
    if method == "lts":
        kw.update(samples_per_step=args.lts_samples, outer_optimizer=base.outer_optax())
    if method == "bo":
        kw.update(max_evaluations=budget_evaluations + 1)
    return baselines.BASELINES[method](setup.simulator, setup.model, setup.task, setup.val_data, setup.test_data, **kw)


def _known(experiment, args: CompareArgs, renderer: str, method: str, approximation: str | None, seed: int) -> dict:
    """The result keys of one run that the command line fixes (checked on --resume before any build)."""
    return {"command": "compare", "experiment": args.experiment_spec or experiment.name, "renderer": renderer,
            "method": method, "approximation": approximation, "seed": seed, "size": args.size,
            "budget_images": args.budget_images, "search_radius": args.search_radius,
            "lts_samples": args.lts_samples if method == "lts" else None,
            # None unless set, so that run directories written before the flag existed resume.
            "search_scales": (args.search_scales or None) if method != "autosimulate" else None,
            **_evaluation_keys(method, args)}


def _evaluation_keys(method: str, args: CompareArgs) -> dict:
    """``evaluation_images`` / ``evaluation_epochs`` of a run's config: None unless set for a
    from-scratch baseline, so that run directories written before the flags existed resume."""
    scratch = method in FROM_SCRATCH
    return {"evaluation_images": args.evaluation_images if scratch else None,
            "evaluation_epochs": args.evaluation_epochs if scratch else None}


def _check_resume(experiment, args: CompareArgs, renderer: str, runs, out: str, keys=RESULT_KEYS) -> None:
    """Every existing run directory's config against the command line (``keys`` of it), before any run."""
    for method, approximation in runs:
        for seed in range(args.seeds):
            run_dir = os.path.join(out, _dirname(method, approximation), f"seed{seed}")
            if os.path.exists(os.path.join(run_dir, CONFIG)):
                check_resume_config(run_dir, read_config(run_dir),
                                    _known(experiment, args, renderer, method, approximation, seed), keys)


def _method_config(setup, method: str):
    """The options ``method`` runs with: AutoSimulate's own config, a baseline's the experiment's
    (``setup.base_config()``)."""
    return setup.config if method == "autosimulate" else setup.base_config()


def _options(setup, method: str, approximation: str | None) -> dict:
    """:func:`_method_config` with its approximation, as the run directory's ``options``."""
    own = _method_config(setup, method)
    return own.replace(approximation=approximation).to_dict() if approximation else own.to_dict()


def _run_method(experiment, args: CompareArgs, renderer: str, method: str, approximation: str | None, seed: int,
                out: str, label: str, pools: RenderPools, stderr) -> list[dict]:
    """One method and seed in the run directory ``out`` through rundir's loop (reused when finished)."""
    with RunDir.open(out) as run:
        resume = os.path.exists(run.config_path)
        if resume and not args.resume:
            raise UsageError(f"{out} already holds a run; pass --resume to continue the comparison, or another --out.")
        spec = args.experiment_spec or experiment.name
        known = _known(experiment, args, renderer, method, approximation, seed)
        old = None
        if resume:
            old = run.read_config()
            check_resume_config(out, old, known, RESULT_KEYS)
            finished = run.is_finished(old.get("target")) if old.get("target") is not None else None
            if finished is not None:  # done with these flags: its records, nothing run again
                # ... and with the experiment's options of today: a preset changed since the run (clevr-seg
                # gpu's in session 60) is refused, not reported as the new preset's.
                setup = build_setup(experiment, renderer=renderer, seed=seed, size=args.size)
                check_resume_config(out, old, {"options": _options(setup, method, approximation)}, ("options",))
                return [_common(r, old.get("train_steps_per_step")) for r in run.finished_records(finished)]
        setup = pools.attach(build_setup(experiment, renderer=renderer, seed=seed, size=args.size))
        k = setup.config.dataset_size
        iterations = math.ceil(args.budget_images / k) if method == "autosimulate" else None
        k_evaluation = _evaluation_config(method, _method_config(setup, method), args).dataset_size
        box = _build_method(method, approximation, setup, args, math.ceil(args.budget_images / k_evaluation), seed)
        per_step = setup.config.finetune_epochs * (k // setup.config.batch_size) if method == "autosimulate" else None
        target = {"iterations": iterations, "budget_images": args.budget_images}
        config = make_config(command="compare", experiment=spec, renderer=renderer, seed=seed, size=args.size,
                             options=_options(setup, method, approximation), iterations=iterations,
                             budget_images=args.budget_images,
                             method=method, search_radius=args.search_radius,
                             search_scales=(args.search_scales or None) if method != "autosimulate" else None,
                             **_evaluation_keys(method, args),
                             lts_samples=args.lts_samples if method == "lts" else None,
                             search_space=list(box.space.names) if hasattr(box, "space") else None,
                             train_steps_per_step=per_step, target=target, render=pools.options.to_dict(),
                             parallel={"devices": args.devices if method == "autosimulate" else 1})
        config["approximation"] = approximation
        if old is not None:
            check_resume_config(out, old, config, RESULT_KEYS)
        write_json(run.config_path, config)
        monitor = None
        if method == "autosimulate":
            x_test, y_test = setup.test_data

            def monitor(state) -> dict:
                test_loss, test_metric = box.inner.measure(state.theta, x_test, y_test)
                return {"test_loss": float(test_loss), "test_metric": float(test_metric)}

        progress: list[Progress] = []
        metric = setup.task.metric_name
        watch = _blind_watch(method, label, seed, metric, stderr)

        def on_start(state, records) -> None:
            progress.append(Progress(args.budget_images, desc=f"autosim compare: {label}, seed {seed}", stream=stderr,
                                     initial=min(int(state.images), args.budget_images), unit="images",
                                     every=(args.log_every or 0) * k or None, seconds=args.log_seconds))

        def on_step(record: dict, state) -> None:
            p = progress[0]
            done = min(record["images"], args.budget_images)
            status = f"step {record['step']}, val {metric} {record['val_metric']:.4g}"
            if "cg_converged" in record and approximation == "exact_quadratic":
                status += ", CG " + ("ok" if record["cg_converged"] else "unconverged")
            p.update(status, n=done - p.done, postfix={metric: f"{record['val_metric']:.4g}"})
            watch(record["val_metric"])

        try:
            result = run_loop(box, run, seed=seed, resume=resume, iterations=iterations,
                              budget_images=args.budget_images, monitor=monitor, on_start=on_start, on_step=on_step)
        finally:
            for p in progress:
                p.close()
        summary = summarize(result.records, higher=bool(setup.task.higher_is_better), stopped_by=result.stopped_by,
                            state=result.state, target=target)
        if hasattr(result.state, "evaluations"):
            summary["evaluations"] = int(result.state.evaluations)
        write_json(run.summary_path, summary)
        return [_common(r, per_step) for r in result.records]


BLIND_SHARE = 0.8  # the share of a run's steps that scored one value exactly for its search to count as blind


def blind_reward(records: list[dict]) -> float | None:
    """The in-run validation metric that at least :data:`BLIND_SHARE` of a run's steps scored
    exactly, or None.

    For a baseline this is its search's reward, so a repeated one means the search chose blind: a
    model that predicts one class scores the same to the last bit whatever psi rendered its data. On
    clevr-seg at cpu size every candidate's model, trained from its initialisation for 4 epochs on
    256 renders, predicts the background only: 0.2383 mIoU for 4 candidates of 5 (session 40).

    Example:
      >>> blind_reward([{"val_metric": v} for v in (0.2383, 0.2383, 0.2383, 0.2383, 0.2391)])
      0.2383
      >>> blind_reward([{"val_metric": v} for v in (0.2383, 0.2383, 0.25, 0.26, 0.27)]) is None
      True
    """
    if len(records) < 2:
        return None
    value, count = collections.Counter(r["val_metric"] for r in records).most_common(1)[0]
    return value if count >= BLIND_SHARE * len(records) else None


def _blind_fix(method: str) -> str:
    return ("pass --evaluation-images N --evaluation-epochs E so that each candidate's model learns what the metric "
            "sees (an experiment of your own can make them its default: ExperimentSetup.baseline_evaluation)"
            if method in FROM_SCRATCH else
            "its reward is its warm model's metric after each candidate's fine-tuning, which did not move")


BLIND_AFTER = 5  # steps of a baseline with one reward before the run warns that its search has no signal


def _blind_watch(method: str, label: str, seed: int, metric: str, stream):
    """``update(val_metric)`` for each step of a baseline's run: warns once on ``stream`` when its first
    :data:`BLIND_AFTER` steps are blind (:func:`blind_reward`), early enough to stop the run and change
    the options."""
    seen: list[dict] = []

    def update(value: float) -> None:
        if method == "autosimulate" or len(seen) >= BLIND_AFTER:
            return
        seen.append({"val_metric": value})
        if len(seen) == BLIND_AFTER and (blind := blind_reward(seen)) is not None:
            print(f"autosim compare: warning: {label}, seed {seed}: its first {BLIND_AFTER} steps scored val {metric} "
                  f"{blind:.4g} (most of them exactly): its search has no signal so far; {_blind_fix(method)}",
                  file=stream, flush=True)

    return update


def _blind_markdown(rows: list[dict], metric: str) -> str:
    """A note under Table 2 naming each baseline whose evaluations were blind (:func:`blind_reward`), and the fix."""
    lines = []
    for r in rows:
        seeds = [s for s in r["seeds"] if s.get("blind_reward") is not None]
        if r["method"] == "autosimulate" or not seeds:
            continue
        fix = _blind_fix(r["method"])
        lines.append(f"**Blind search:** at least {BLIND_SHARE:.0%} of the evaluations of {r['label']} scored val "
                     f"{metric} {seeds[0]['blind_reward']:.4g} exactly on seed(s) "
                     f"{', '.join(str(s['seed']) for s in seeds)}, so its choices there carried no signal; {fix}.")
    return "\n".join(lines) + ("\n" if lines else "")


def summarize_run(records: list[dict], higher: bool) -> dict:
    """Best validation metric of one run, and the images, time and test metric at it."""
    vals = np.array([r["val_metric"] for r in records], float)
    time_cum = np.cumsum([r["time_render"] + r["time_train"] + r["time_other"] for r in records])
    best = int(np.nanargmax(vals) if higher else np.nanargmin(vals))
    last = records[-1]
    return {
        "best_val_metric": float(vals[best]), "test_metric_at_best": records[best]["test_metric"],
        "images_to_best": records[best]["images"], "time_to_best": float(time_cum[best]),
        "evaluations_to_best": records[best]["evaluations"],
        "images": last["images"], "evaluations": last["evaluations"], "train_steps": last["train_steps"],
        "time": float(time_cum[-1]),
        "time_render": float(sum(r["time_render"] for r in records)),
        "time_train": float(sum(r["time_train"] for r in records)),
        "time_other": float(sum(r["time_other"] for r in records)),
    }


ASSESSED = ("assessed_val_metric", "assessed_test_metric")
COLUMNS = ("best_val_metric", "test_metric_at_best", "images_to_best", "time_to_best", "images", "evaluations",
           "train_steps", "time", "time_render", "time_train", "time_other")


def _stats(values) -> dict:
    """Mean and sample standard deviation (0 for one seed) over seeds."""
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def _aggregate(per_seed: list[dict]) -> dict:
    agg = {c: _stats([s[c] for s in per_seed]) for c in COLUMNS + ASSESSED if c in per_seed[0]}
    if "gap_closed" in per_seed[0]:  # None where a seed's start and reference measure the same
        g = [s["gap_closed"] for s in per_seed if s["gap_closed"] is not None]
        agg["gap_closed"] = {**(_stats(g) if g else {"mean": None, "std": None}), "seeds": len(g)}
    return agg


def _markdown(rows: list[dict], metric: str, title: str) -> str:
    assessed = all("assessed_val_metric" in r["aggregate"] for r in rows)
    head = (f"| method | time to best [s] | images to best | best val {metric} | test {metric} at best | "
            "images | evaluations | train steps | time [s] (render / train / other) |")
    gap = all("gap_closed" in r["aggregate"] for r in rows)
    if assessed:
        head += f" fresh model on final psi: val / test {metric} |"
    if gap:
        head += " gap closed G |"
    lines = [f"### {title}", "", head, "|" + " --- |" * (9 + assessed + gap)]

    def pm(row, c, fmt):
        a = row["aggregate"][c]
        return f"{a['mean']:{fmt}} ± {a['std']:{fmt}}"

    for r in rows:
        a = r["aggregate"]
        lines.append(
            f"| {r['label']} | {pm(r, 'time_to_best', '.1f')} | {pm(r, 'images_to_best', '.0f')} | "
            f"{pm(r, 'best_val_metric', '.4f')} | {pm(r, 'test_metric_at_best', '.4f')} | {a['images']['mean']:.0f} | "
            f"{a['evaluations']['mean']:.0f} | {a['train_steps']['mean']:.0f} | {a['time']['mean']:.1f} "
            f"({a['time_render']['mean']:.1f} / {a['time_train']['mean']:.1f} / {a['time_other']['mean']:.1f}) |"
            + (f" {pm(r, 'assessed_val_metric', '.4f')} / {pm(r, 'assessed_test_metric', '.4f')} |" if assessed else "")
            + (f" {_gap_text(a['gap_closed'])} |" if gap else ""))
    return "\n".join(lines) + "\n"


def _gap_text(g: dict) -> str:
    if g["mean"] is None:
        return "n/a (no gap)"
    return f"{g['mean']:.3f} ± {g['std']:.3f}"


def _plot(out: str, rows: list[dict], curves: dict, metric: str, higher: bool) -> None:
    from matplotlib.figure import Figure

    for xkey, xlabel, name in (("images", "images rendered", "val_vs_images.png"),
                               ("time", "time (render + train + other) [s]", "val_vs_time.png")):
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
        for r in rows:
            runs = curves[r["label"]]
            xs = [np.asarray(c[xkey], float) for c in runs]
            grid = np.linspace(0.0, max(x[-1] for x in xs), 200)
            ys = []
            for x, c in zip(xs, runs):
                best = np.maximum.accumulate(c["val"]) if higher else np.minimum.accumulate(c["val"])
                idx = np.searchsorted(x, grid, side="right") - 1  # step function: the last value reached
                ys.append(np.where(idx >= 0, best[np.clip(idx, 0, None)], np.nan))
            ys = np.array(ys)
            keep = ~np.all(np.isnan(ys), axis=0)
            with np.errstate(all="ignore"):
                mean = np.nanmean(ys[:, keep], axis=0)
            line, = ax.plot(grid[keep], mean, label=r["label"])
            if len(runs) > 1:
                ax.fill_between(grid[keep], np.nanmin(ys[:, keep], axis=0), np.nanmax(ys[:, keep], axis=0),
                                color=line.get_color(), alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"best validation {metric} so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("mean over seeds, min-max shaded")
        fig.savefig(os.path.join(out, name), dpi=100)


# ------------------------------------------------ the 54-cell categorical as a heat map

CELLS_PNG = "cells.png"


def cell_grid(field) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None:
    """The axes of a categorical field whose choices form a ``scene/location/quality`` grid.

    The detection experiments' psi is one categorical over 3 scenes x 9 locations x 2
    qualities (paper Sec. 5.2), its choices named ``"scene2/top-left/high"``. A field is such a
    grid when it is a scalar categorical field, every choice is a string of three
    ``/``-separated parts, and the choices are the full product of the parts' distinct values
    in row-major order (scene slowest, quality fastest). This looks at the schema's field only,
    never at the experiment's name.

    Args:
      field: a :class:`~autosim_jax.schema.Field`.

    Returns:
      ``(scenes, locations, qualities)``, each in order of first appearance, or ``None``.

    Example:
      >>> from autosim_jax.renderers.clevr_det import detection_schema
      >>> [len(a) for a in cell_grid(detection_schema()["cell"])]
      [3, 9, 2]
    """
    if field.kind != "categorical" or field.shape or not all(isinstance(c, str) for c in field.choices):
        return None
    parts = [c.split("/") for c in field.choices]
    if any(len(p) != 3 for p in parts):
        return None
    axes = tuple(tuple(dict.fromkeys(p[i] for p in parts)) for i in range(3))
    product = [[a, b, c] for a in axes[0] for b in axes[1] for c in axes[2]]
    return axes if product == parts else None


def _cell_image(probs: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, int, int]:
    """One panel's matrix: a row of blocks per scene, a block per quality (NaN gaps between).

    Each block shows the locations as a square grid when their number is a square (9: the
    3 x 3 anchors as they appear in the image), else as one row.
    """
    s, l, q = shape
    side = round(float(np.sqrt(l)))
    bh, bw = (side, side) if side * side == l else (1, l)
    img = np.full((s * (bh + 1) - 1, q * (bw + 1) - 1), np.nan)
    p = np.asarray(probs, float).reshape(s, l, q)
    for i in range(s):
        for k in range(q):
            img[i * (bh + 1):i * (bh + 1) + bh, k * (bw + 1):k * (bw + 1) + bw] = p[i, :, k].reshape(bh, bw)
    return img, bh, bw


def write_cell_maps(out: str, schema, panels: list[tuple[str, dict | None]], *, title: str = "") -> str | None:
    """``cells.png``: every scene/location/quality categorical of ``schema`` as heat maps.

    One row of panels per such field (see :func:`cell_grid`), one panel per entry of
    ``panels`` (e.g. the start, the learned and the target psi): a block row per scene, a
    block column per quality, the locations of a block laid out as in the image (3 x 3 for
    the 9 anchors), each cell printed in percent. All panels share one colour scale.

    Args:
      out: the directory to write ``cells.png`` into.
      schema: the renderer's :class:`~autosim_jax.schema.SceneSchema`.
      panels: ``(title, described)`` pairs, ``described`` as :func:`~autosim_jax.describe_psi`
        returns it (``None`` entries are left out).
      title: a line above the panels.

    Returns:
      The path written, or ``None`` when ``schema`` has no such field (nothing is written).
    """
    from matplotlib.figure import Figure

    fields = [(f, cell_grid(f)) for f in schema.fields]
    fields = [(f, axes) for f, axes in fields if axes is not None]
    panels = [(name, d) for name, d in panels if d is not None]
    if not fields or not panels:
        return None
    maps = [[np.asarray(d[f.name]["probs"], float) for _, d in panels] for f, _ in fields]
    vmax = max(float(m.max()) for row in maps for m in row)
    fig = Figure(figsize=(2.6 * len(panels) + 0.8, 3.4 * len(fields) + 0.5), layout="constrained")
    axes_grid = fig.subplots(len(fields), len(panels), squeeze=False)
    for (field, (scenes, locations, qualities)), row, axes in zip(fields, maps, axes_grid):
        shape = (len(scenes), len(locations), len(qualities))
        for ax, (name, _), probs in zip(axes, panels, row):
            img, bh, bw = _cell_image(probs, shape)
            im = ax.imshow(img, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            for (y, x), v in np.ndenumerate(img):
                if np.isfinite(v):
                    ax.text(x, y, f"{100 * v:.0f}", ha="center", va="center", fontsize=5,
                            color="white" if v < 0.6 * vmax else "black")
            ax.set_yticks([i * (bh + 1) + (bh - 1) / 2 for i in range(shape[0])], scenes, fontsize=7)
            ax.set_xticks([k * (bw + 1) + (bw - 1) / 2 for k in range(shape[2])], qualities, fontsize=7)
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            top = max(range(len(probs)), key=lambda j: probs[j])
            ax.set_title(f"{name}\nmost: {field.choices[top]} {100 * probs[top]:.0f}%", fontsize=7)
        axes[0].set_ylabel(field.name, fontsize=8)
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="probability")
    head = ("each block: the locations as they appear in the image (3 x 3 anchors); "
            "numbers: percent of the renders")
    width = 45 * len(panels) + 20
    fig.suptitle("\n".join(textwrap.fill(t, width) for t in (title, head) if t), fontsize=8)
    path = os.path.join(out, CELLS_PNG)
    fig.savefig(path, dpi=110)
    return path


def _plot_cells(out: str, setup, psi0, reference, rows: list[dict], records_of: dict) -> str | None:
    """cells.png of a comparison: start, each method's final psi (mean of the seeds' cell
    probabilities) and the reference (target) psi, for experiments with a cell-grid field."""
    import jax

    from .distributions import describe_psi

    schema = setup.simulator.renderer.schema
    if not any(cell_grid(f) for f in schema.fields):
        return None

    def describe(psi):
        try:
            return describe_psi(schema, jax.tree.map(np.asarray, psi))
        except ValueError:  # not from_schema's families
            return None

    grid = [f.name for f in schema.fields if cell_grid(f)]
    panels = [("start psi", describe(psi0))]
    for r in rows:
        finals = [records_of[(r["method"], r["approximation"], s["seed"])] for s in r["seeds"]]
        described = [describe(psi_from_record(psi0, recs[-1]["psi"])) for recs in finals if recs]
        if not described or any(d is None for d in described):
            continue
        mean = {name: {"probs": np.mean([d[name]["probs"] for d in described], axis=0)} for name in grid}
        panels.append((f"{r['label']} (final, mean of {len(described)} seed{'s' * (len(described) > 1)})", mean))
    if reference is not None:
        panels.append(("target (reference psi)", describe(reference)))
    return write_cell_maps(out, schema, panels, title="learned categorical of each method next to the target's")


# ------------------------------------------------------------ fresh-model assessment

# The paper's headline (Sec. 5.1, Table 2): AutoSimulate reaches BO's best validation metric
# with >= 3x fewer rendered images and REINFORCE's (here LTS) with >= 5x fewer.
TARGETS = {"bo": 3.0, "lts": 5.0}


def assess_thresholds(budget: int, points: int, extra: tuple[int, ...] = ()) -> list[int]:
    """Image counts after which a run's psi is assessed: ``budget / 2^(points-1), ..., budget``,
    and the counts ``extra`` (``--assess-at``) between them, in order.

    A geometric grid bounds an images-to-reach ratio only to within a factor of 2 (a best reached
    at 7,680 of a grid 3,840 / 7,680 says 2x-4x); a point at ``budget / 3`` tells whether 3x is met.

    Example:
      >>> assess_thresholds(3840, 4)
      [480, 960, 1920, 3840]
      >>> assess_thresholds(15360, 3, extra=(5120, 3840))
      [3840, 5120, 7680, 15360]
    """
    return sorted({budget // 2**j for j in range(points - 1, -1, -1)} | set(extra))


def record_within(records: list[dict], images: int) -> dict | None:
    """The record of the psi a run held having rendered at most ``images`` images: its last update
    within that budget, or None before its first (it holds the start psi). A method that updates
    every 4,096 images holds its start psi at 960 and 1,920 images, not its first update's psi:
    every method is judged at an equal budget.

    Example:
      >>> runs = [{"step": 1, "images": 1024}, {"step": 2, "images": 2048}]
      >>> [None if r is None else r["step"] for r in (record_within(runs, n) for n in (960, 1920, 4096))]
      [None, 1, 2]
    """
    within = [r for r in records if r["images"] <= images]
    return within[-1] if within else None


def assessed_record(records: list[dict], images: int, budget: int) -> dict | None:
    """The record assessed at grid point ``images``: :func:`record_within`, except that the budget's
    point is the run's final psi (an AutoSimulate run takes ``ceil(budget / K)`` steps, so it may pass
    the budget by less than one update), which Table 2's last columns and G judge."""
    return records[-1] if images >= budget else record_within(records, images)


def _mean_std(results: list[dict]) -> dict:
    return {name: _stats([r[key] for r in results]) for key, name in (("val_metric", "val"), ("test_metric", "test"))}


def _aggregate_curve(per_seed: list[list[dict]]) -> list[dict]:
    """Mean and std over seeds at each grid point. ``images`` is the grid point; ``images_rendered``
    what the assessed psi cost (:func:`record_within`'s update, the most over seeds; 0 for the start
    psi), which the images-to-reach table charges."""
    return [{"images": points[0]["images"],
             "images_rendered": max(p.get("images_rendered", p["images"]) for p in points),
             **_mean_std(list(points))} for points in zip(*per_seed)]


def reach_table(rows: list[dict], start: float, higher: bool) -> list[dict]:
    """Images AutoSimulate needs to reach each baseline's best assessed metric (paper Table 2).

    On the mean-over-seeds curves of fresh-model validation metrics: a baseline's best is its
    best point; AutoSimulate's reach is its first point at least as good (``None`` if none is).
    Each point is charged the images its psi cost (``images_rendered``: the psi assessed at a
    grid point is the one after the method's last update within it, :func:`record_within`, so a
    method that updates every 4,096 images has spent 4,096 at the grid's 7,680), not the grid
    point itself: ``baseline_images`` and ``images`` are those, ``ratio = baseline_images /
    images``. A baseline whose best does not beat ``start`` (the start psi's mean) gets no ratio:
    there is nothing to reach. A ratio bounds the truth only to within the grid's spacing (a
    factor of 2 on the geometric grid; ``--assess-at`` adds points, :func:`assess_thresholds`);
    when both reach at the grid's first point the ratio is "at least" (``resolved`` is False).

    Example:
      >>> row = lambda m, vals: {"method": m, "label": m, "aggregate": {"assessed_curve": [
      ...     {"images": i, "val": {"mean": v, "std": 0.0}} for i, v in zip((100, 200, 400), vals)]}}
      >>> reach_table([row("autosimulate", (0.3, 0.5, 0.6)), row("bo", (0.2, 0.4, 0.45))], 0.1, True)[0]["ratio"]
      2.0
    """
    ours = next((r for r in rows if r["method"] == "autosimulate"), None)
    if ours is None:
        return []

    def spent(point: dict) -> int:  # curves written before 2026-12-04 carry the grid point only
        return point.get("images_rendered", point["images"])

    sign = 1.0 if higher else -1.0
    mine = ours["aggregate"]["assessed_curve"]
    table = []
    for r in rows:
        if r["method"] == "autosimulate":
            continue
        theirs = r["aggregate"]["assessed_curve"]
        best = max(theirs, key=lambda p: sign * p["val"]["mean"])  # the first of equal bests
        beats_start = sign * best["val"]["mean"] > sign * start
        reached = next((p for p in mine if sign * p["val"]["mean"] >= sign * best["val"]["mean"]), None)
        ratio = spent(best) / spent(reached) if reached and beats_start else None
        table.append({
            "baseline": r["label"], "autosimulate": ours["label"], "baseline_best_val": best["val"]["mean"],
            "baseline_images": spent(best), "baseline_grid_images": best["images"], "beats_start": bool(beats_start),
            "images": spent(reached) if reached else None, "grid_images": reached["images"] if reached else None,
            "ratio": ratio, "resolved": ratio is not None and reached["images"] != mine[0]["images"],
            "target_ratio": TARGETS.get(r["method"]),
        })
    return table


def _assessed_markdown(rows: list[dict], assessment: dict, metric: str) -> str:
    ts = assessment["thresholds"]
    start = assessment["start_psi"]["val"]
    lines = [f"### Fresh models along the run: val {metric} (mean ± std over seeds)", "",
             (f"A fresh model trained on {assessment['images']} images x {assessment['epochs']} epochs from the psi "
             "each method held having rendered at most N images, i.e. after its last update within N (the same "
             "protocol for every method; the start psi is column 0, and a method's column before its first update; "
             "the images each psi cost are in the reach table below and in compare.json's `images_rendered`)."), "",
             "| method | 0 | " + " | ".join(str(t) for t in ts) + " |", "|" + " --- |" * (len(ts) + 2)]
    for r in rows:
        cells = [f"{p['val']['mean']:.4f} ± {p['val']['std']:.4f}" for p in r["aggregate"]["assessed_curve"]]
        lines.append(f"| {r['label']} | {start['mean']:.4f} ± {start['std']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reach_markdown(reach: list[dict], metric: str) -> str:
    if not reach:
        return ""
    lines = [f"### Images to reach each baseline's best fresh-model val {metric}", "",
             ("| baseline | its best | after images (grid point) | AutoSimulate reaches it after (grid point) | ratio "
              "| target |"),
             "| --- | --- | --- | --- | --- | --- |"]
    for e in reach:
        got = f"{e['images']} ({e.get('grid_images', e['images'])})" if e["images"] is not None else "not reached"
        if not e["beats_start"]:
            ratio, verdict = "- (never beat the start psi)", "nothing to reach"
        elif e["ratio"] is None:
            ratio, verdict = "-", "missed"
        else:
            ratio = f"{e['ratio']:.3g}x" if e["resolved"] else f">= {e['ratio']:.3g}x (first grid point)"
            # An unresolved ratio is a lower bound: enough to meet a target, not to miss it.
            met = e["target_ratio"] and e["ratio"] >= e["target_ratio"]
            verdict = "met" if met else ("missed" if e["resolved"] else "unresolved")
        target = f">= {e['target_ratio']:.0f}x: {verdict}" if e["target_ratio"] else "-"
        lines.append(f"| {e['baseline']} | {e['baseline_best_val']:.4f} | {e['baseline_images']} "
                     f"({e.get('baseline_grid_images', e['baseline_images'])}) | {got} | {ratio} | {target} |")
    lines += ["", (f"AutoSimulate here is {reach[0]['autosimulate']}. Images are those each assessed psi cost, i.e. "
              "the method's last update within the grid point (in brackets). A ratio is known only to "
              "within the grid's "
              "spacing (a factor of 2 between its geometric points; `--assess-at N` adds points, e.g. a third of a "
              "baseline's best for 3x); the spread over seeds is in the table above.")]
    return "\n".join(lines) + "\n"


def _plot_assessed(out: str, rows: list[dict], assessment: dict, metric: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    start = assessment["start_psi"]["val"]
    ax.axhline(start["mean"], color="gray", ls="--", lw=1, label="start psi")
    ax.axhspan(start["mean"] - start["std"], start["mean"] + start["std"], color="gray", alpha=0.15)
    for r in rows:
        curve = r["aggregate"]["assessed_curve"]
        ax.errorbar([p["images"] for p in curve], [p["val"]["mean"] for p in curve],
                    yerr=[p["val"]["std"] for p in curve], marker="o", capsize=3, label=r["label"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images rendered by the method")
    ax.set_ylabel(f"fresh-model validation {metric}")
    ax.set_title(f"fresh model, {assessment['images']} images x {assessment['epochs']} epochs; mean ± std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "assessed_vs_images.png"), dpi=100)


def _assessment_plan(runs, table2, records_of, thresholds, seeds, has_reference):
    """Every assessment the comparison needs: (where, key, what, seed, (method, approximation) or None)."""
    jobs = []
    for seed in range(seeds):
        jobs.append(("start_psi", "0", "start psi", seed, None))
        if has_reference:
            jobs.append(("reference_psi", "reference", "reference psi", seed, None))
    for method, approximation in runs:
        points = thresholds if (method, approximation) in table2 else thresholds[-1:]
        for seed in range(seeds):
            records = records_of[(method, approximation, seed)]
            for t in points:
                record = assessed_record(records, t, thresholds[-1])
                if record is not None:  # before its first update a run holds the start psi, assessed above
                    jobs.append(((method, approximation), str(record["step"]),
                                 f"{_label(method, approximation)} after {t} images", seed, record))
    return jobs


def run_compare(experiment, args: CompareArgs, *, stdout=None, stderr=None) -> int:
    """Runs ``autosim compare``; returns the exit code.

    Raises:
      UsageError: for bad options, a non-empty ``--out`` without ``--resume``, or an
        unusable run directory (:class:`~autosim_jax.rundir.RunDirError`).
    """
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    renderer, runs = _validate(experiment, args)
    out = args.out or os.path.join("runs", f"compare-{experiment.name}")
    with RunDir.open(out) as top:  # checks --out is not a file; one comparison per directory at a time
        held = [n for n in os.listdir(out) if n != LOCK and not n.startswith(TMP_PREFIX)]
        if not args.resume and held:
            raise UsageError(f"{out} is not empty; pass --resume to continue that comparison, or another --out.")
        for sub in ("start_psi", "reference_psi"):  # the run directories clean themselves when opened
            for seed_dir in (os.listdir(os.path.join(out, sub)) if os.path.isdir(os.path.join(out, sub)) else ()):
                remove_stale_tmp(os.path.join(out, sub, seed_dir))
        try:
            with RenderPools(_render_options(args), stream=stderr, desc="autosim compare") as pools:
                return _compare(experiment, args, renderer, runs, top.path, pools, stdout, stderr)
        except RenderFailed as err:
            print(f"autosim compare: error: {failure_line(err)}. The run's checkpoint of step {err.step - 1} is "
                  "intact; after fixing the cause, continue with --resume.", file=stderr)
            return 1
        except BaseException as err:
            if isinstance(err, RenderError) and not is_interrupt(err):  # in a fresh-model assessment
                print(f"autosim compare: error: rendering failed during a fresh-model assessment: "
                      f"{failure_line(err.message)}. Every run and earlier assessment is on disk; after fixing the "
                      "cause, continue with --resume.", file=stderr)
                return 1
            if not (isinstance(err, Interrupted) or is_interrupt(err)):
                raise
            print(f"\nautosim compare: interrupted; {out} holds every completed step and assessment. Continue with "
                  "--resume.", file=stderr)
            return 130


def _run_in_process(job: tuple) -> None:
    """One run of ``--jobs`` (see :func:`_map_in_processes`).

    The process builds its own setup and render pool; the run directory holds everything it
    did, which the parent reads back as a finished run (``_run_method``).
    """
    spec, args, renderer, method, approximation, seed, run_dir = job
    with RenderPools(_render_options(args), stream=sys.stderr, desc="autosim compare") as pools:
        _run_method(resolve_experiment(spec), args, renderer, method, approximation, seed, run_dir,
                    _label(method, approximation), pools, sys.stderr)


def _run_parallel(experiment, args: CompareArgs, renderer: str, runs, out: str, stderr) -> list[str]:
    """Every run of the comparison, ``args.jobs`` at a time in spawned processes (``--jobs``).

    Returns one line per run that failed (empty when all finished). Runs before this process
    builds anything, so that JAX is initialised only in the workers while they run.
    """
    spec = args.experiment_spec or experiment.name
    jobs = [(spec, args, renderer, m, a, seed, os.path.join(out, _dirname(m, a), f"seed{seed}"))
            for m, a in runs for seed in range(args.seeds)]
    print(f"autosim compare: {len(jobs)} runs, {min(args.jobs, len(jobs))} at a time in processes of their own "
          f"(each with {args.render_workers} render worker(s))", file=stderr, flush=True)
    failures = []
    for i, (job, error) in enumerate(_map_in_processes(_run_in_process, jobs, args.jobs), 1):
        label, seed = _label(job[3], job[4]), job[5]
        if error is not None:
            failures.append(f"{label}, seed {seed} ({job[6]}): {error}")
        print(f"autosim compare: run {i}/{len(jobs)}: {label}, seed {seed} "
              + ("failed" if error else "finished"), file=stderr, flush=True)
    return failures


def _map_in_processes(fn, jobs: list, processes: int):
    """Yields ``(job, error)`` as each job ends: ``fn(job)``, ``processes`` jobs at a time in
    spawned processes (:func:`~autosim_jax.processes.map_in_processes`); ``error`` is ``None`` or
    the job's error as one line (the caller names the job). Ctrl-C or an error here kills the
    running jobs: their run directories hold every finished step (``--resume``)."""
    for index, ok, value in map_in_processes(fn, jobs, processes=processes):
        yield jobs[index], (None if ok else value[0].rstrip("."))


def _compare(experiment, args: CompareArgs, renderer: str, runs, out: str, pools: RenderPools, stdout,
             stderr) -> int:
    def build():
        t0 = time.perf_counter()
        print(f"autosim compare: building {args.experiment_spec or experiment.name} (renderer {renderer}"
              + (f", size {args.size}" if args.size else "") + ") ...", file=stderr, flush=True)
        setup = build_setup(experiment, renderer=renderer, seed=0, size=args.size)
        print(f"autosim compare: built in {time.perf_counter() - t0:.1f} s; {len(runs) * args.seeds} runs of "
              f"{args.budget_images} images each", file=stderr, flush=True)
        return setup

    # The runs' processes and the assessments' share the device with this one once it has built
    # its setup: every process takes device memory as it needs it (effective where JAX starts here).
    if args.jobs > 1:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.resume:  # a mismatch the command line shows is refused before the (slow at gpu size) build
        _check_resume(experiment, args, renderer, runs, out, _KEYS_BEFORE_BUILD)
    setup0 = None
    if any(m in FROM_SCRATCH for m, _ in runs):
        # the baselines' evaluation is the experiment's; _evaluation_sentence checks it fits the batch size
        setup0 = build()
        args = _resolve_evaluation(args, setup0)
        print(f"autosim compare:{_evaluation_sentence(args, runs, setup0)}", file=stderr, flush=True)
    if args.resume:  # and the evaluation, which the setup resolved
        _check_resume(experiment, args, renderer, runs, out)
    if args.jobs > 1:
        failures = _run_parallel(experiment, args, renderer, runs, out, stderr)
        if failures:
            print(f"autosim compare: error: {len(failures)} run(s) failed in their processes:\n  "
                  + "\n  ".join(failures) + "\nEvery finished step is on disk; after fixing the cause, continue "
                  "with --resume.", file=stderr)
            return 1
        args = dataclasses.replace(args, resume=True)  # the runs just written are read back below
    setup0 = setup0 or build()
    psi0 = setup0.simulator.distribution.init()
    reference = setup0.reference_psi
    metric, higher = setup0.task.metric_name, bool(setup0.task.higher_is_better)
    assess_images = setup0.assess_images if args.assess_images is None else args.assess_images
    protocol = assess_protocol(assess_images, setup0.assess_epochs, args.assess_models)
    thresholds = assess_thresholds(args.budget_images, args.assess_points, args.assess_at)
    first_approximation = next((a for m, a in runs if m == "autosimulate"), None)
    table2 = [(m, a) for m, a in runs if m != "autosimulate" or a == first_approximation]

    # 1. The runs, one after the other (each resumable, a finished one read back).
    overall = Progress(len(runs) * args.seeds, desc="autosim compare", stream=stderr, unit="run", every=1,
                       seconds=args.log_seconds, bar=False)
    records_of: dict = {}
    rows, curves = [], {}
    for method, approximation in runs:
        label = _label(method, approximation)
        per_seed, curves[label] = [], []
        for seed in range(args.seeds):
            run_dir = os.path.join(out, _dirname(method, approximation), f"seed{seed}")
            print(f"autosim compare: {label}, seed {seed} -> {run_dir}", file=stderr, flush=True)
            t0 = time.perf_counter()
            records = _run_method(experiment, args, renderer, method, approximation, seed, run_dir, label, pools,
                                  stderr)
            records_of[(method, approximation, seed)] = records
            s = summarize_run(records, higher)
            s.update(seed=seed, wall_time=time.perf_counter() - t0)
            if method != "autosimulate" and (blind := blind_reward(records)) is not None:
                s["blind_reward"] = blind  # named under Table 2 (the run itself warns after its first steps)
            per_seed.append(s)
            curves[label].append({
                "images": [r["images"] for r in records],
                "time": np.cumsum([r["time_render"] + r["time_train"] + r["time_other"] for r in records]).tolist(),
                "val": np.array([r["val_metric"] for r in records], float),
            })
            overall.update(f"{label}, seed {seed}: best val {metric} {s['best_val_metric']:.4g} after "
                           f"{s['images_to_best']} images")
        rows.append({"label": label, "method": method, "approximation": approximation, "seeds": per_seed,
                     "table2": (method, approximation) in table2})
    overall.close()

    # 2. Fresh-model assessments (cached in the run directories).
    table2_rows = [r for r in rows if r["table2"]]
    assessment = None
    if assess_images:
        assessment = _assess_all(experiment, args, renderer, runs, table2, records_of, thresholds, psi0, reference,
                                 protocol, rows, out, metric, higher, pools, stderr)
    for r in rows:
        r["aggregate"] = _aggregate(r["seeds"])
        if assessment and r["table2"]:
            r["aggregate"]["assessed_curve"] = _aggregate_curve([s["assessed_curve"] for s in r["seeds"]])
    if assessment:
        assessment["reach"] = reach_table(table2_rows, assessment["start_psi"]["val"]["mean"], higher)
    result = {
        "experiment": args.experiment_spec or experiment.name, "renderer": renderer, "metric": metric,
        "higher_is_better": higher, "budget_images": args.budget_images, "seeds": args.seeds, "size": args.size,
        "options": setup0.config.to_dict(), "baseline_options": setup0.base_config().to_dict(),
        "lts_samples": args.lts_samples, "search_radius": args.search_radius,
        "search_scales": args.search_scales, "assess_models": args.assess_models,
        "evaluation_images": args.evaluation_images, "evaluation_epochs": args.evaluation_epochs,
        "rows": rows, "assessment": assessment,
    }
    write_json(os.path.join(out, "compare.json"), result)
    has_g = bool(assessment) and reference is not None
    md = [f"# {result['experiment']}: methods head to head", "",
          f"Budget {args.budget_images} images, {args.seeds} seed(s); mean ± standard deviation over seeds. "
          "Time: render + train + other, without the test metric and file I/O."
          + (f" Last columns: fresh models trained on {assess_images} images x {setup0.assess_epochs} epochs from "
             "each run's final psi (the fair comparison of the answers"
             + (f"; the mean of {args.assess_models} models per psi" if args.assess_models > 1 else "") + ")"
             if assess_images else "")
          + ("; G: the share of the gap between the start and the reference psi that the final psi closes."
             if has_g else "." if assess_images else "")
          + ("" if not assess_images or reference is not None else
             " The experiment has no reference psi, so the gap closed G is not defined.")
          + _evaluation_sentence(args, runs, setup0), "",
          _markdown(table2_rows, metric, "Table 2: methods"), _blind_markdown(table2_rows, metric)]
    if assessment:
        md += [_assessed_markdown(table2_rows, assessment, metric), _reach_markdown(assessment["reach"], metric)]
    if args.approximations:
        md.append(_markdown([r for r in rows if r["method"] == "autosimulate"], metric,
                            "Table 4: approximations of AutoSimulate"))
    write_text = "\n".join(md)
    atomic_write(os.path.join(out, "compare.md"), lambda f: f.write(write_text.encode()))
    _plot(out, rows, curves, metric, higher)
    if assessment:
        _plot_assessed(out, table2_rows, assessment, metric)
    _plot_cells(out, setup0, psi0, reference, rows, records_of)
    print(write_text, file=stdout)
    return 0


def _seed_assessor(experiment, renderer: str, seed: int, args: CompareArgs, protocol: dict, pools: RenderPools):
    """``assess(psi)``: fresh models on ``psi`` with seed ``seed``'s setup (compiled once per seed,
    as the model's initialisation differs between seeds)."""
    from .experiments import make_assessor
    from .simulator import reraise_render_errors

    setup = pools.attach(build_setup(experiment, renderer=renderer, seed=seed, size=args.size))
    assessor = make_assessor(setup, num_images=protocol["images"], epochs=protocol["epochs"],
                             repeats=protocol.get("models", 1))
    factor = math.ceil(protocol["images"] / setup.config.dataset_size)

    def assess(psi, on_model=None) -> dict:
        with quiet_render_errors(), reraise_render_errors(), pools.timeout_scaled(factor):  # one batch of N images
            return assessor(psi, seed, on_model)

    return assess


def _assess_in_process(job: tuple) -> None:
    """One seed's missing assessments of ``--jobs`` (see :func:`_map_in_processes`).

    Each result lands in its run directory's assessment file, where the parent reads it back
    (and redoes, in its own process, what a failed process left missing).
    """
    spec, args, renderer, seed, protocol, items = job
    todo = [(path, key, psi) for path, key, psi in items if not is_assessed(path, key, protocol)]
    with RenderPools(_render_options(args), stream=sys.stderr, desc="autosim compare") as pools:
        assess = _seed_assessor(resolve_experiment(spec), renderer, seed, args, protocol, pools)
        t0 = time.perf_counter()
        for i, (path, key, psi) in enumerate(todo, 1):
            where = os.path.basename(os.path.dirname(os.path.dirname(path)))  # METHOD of METHOD/seedS/
            report = model_progress(f"autosim compare: assessing seed {seed}: {i}/{len(todo)} ({where}, {key})",
                                    protocol.get("models", 1), sys.stderr)
            value, _ = cached_assessment(path, key, protocol, lambda psi=psi, report=report: assess(psi, report))
            print(f"autosim compare: assessing seed {seed}: {i}/{len(todo)} ({where}, {key}): val "
                  f"{value['val_metric']:.4g}, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def _assess_all(experiment, args, renderer, runs, table2, records_of, thresholds, psi0, reference, protocol, rows,
                out, metric, higher, pools: RenderPools, stderr) -> dict:
    from .experiments import gap_closed

    # Seed by seed: a renderer that is not equal across builds gets a new pool per seed (RenderPools),
    # which closes the last one, so a seed's assessor is never used again once the next is built.
    jobs = []
    for where, key, what, seed, record in sorted(
            _assessment_plan(runs, table2, records_of, thresholds, args.seeds, reference is not None),
            key=lambda job: job[3]):
        if record is None:
            path = os.path.join(out, where, f"seed{seed}", ASSESSED_FILE)
            psi = psi0 if where == "start_psi" else reference
        else:
            path = os.path.join(out, _dirname(*where), f"seed{seed}", ASSESSED_FILE)
            psi = psi_from_record(psi0, record["psi"])
        jobs.append((where, key, what, seed, path, psi))
    missing = sorted({seed for _, key, _, seed, path, _ in jobs if not is_assessed(path, key, protocol)})
    if args.jobs > 1 and missing:  # each seed's assessments in a process of its own, then read back below
        import jax

        spec = args.experiment_spec or experiment.name
        groups = [(spec, args, renderer, s, protocol,
                   [(path, key, jax.tree.map(np.asarray, psi)) for _, key, _, seed, path, psi in jobs if seed == s])
                  for s in missing]
        for group, error in _map_in_processes(_assess_in_process, groups, args.jobs):
            print(f"autosim compare: assessments of seed {group[3]} "
                  + (f"failed in their process ({error}); what is missing is done here" if error
                     else "done in a process of their own"), file=stderr, flush=True)
    assessors: dict = {}

    def assess(psi, seed: int, on_model) -> dict:  # builds the seed's assessor only on a cache miss
        if seed not in assessors:
            assessors[seed] = _seed_assessor(experiment, renderer, seed, args, protocol, pools)
        return assessors[seed](psi, on_model)

    progress = Progress(len(jobs), desc="autosim compare: assessing", stream=stderr, unit="assessment",
                        every=args.log_every or None, seconds=args.log_seconds)
    results: dict = {}
    try:
        for where, key, what, seed, path, psi in jobs:
            report = model_progress(f"autosim compare: assessing {what}, seed {seed}", protocol.get("models", 1),
                                    stderr)
            value, cached = cached_assessment(path, key, protocol,
                                              lambda psi=psi, seed=seed, report=report: assess(psi, seed, report))
            results[(where, key, seed)] = value
            progress.update(f"{what}, seed {seed}: val {metric} {value['val_metric']:.4g}"
                            + (" (cached)" if cached else ""))
    finally:
        progress.close()
    start = [results[("start_psi", "0", s)] for s in range(args.seeds)]
    assessment = {"images": protocol["images"], "epochs": protocol["epochs"], "thresholds": thresholds,
                  "start_psi": {"seeds": start, **_mean_std(start)}}
    if reference is not None:
        ref = [results[("reference_psi", "reference", s)] for s in range(args.seeds)]
        assessment["reference_psi"] = {"seeds": ref, **_mean_std(ref)}
    for row in rows:
        where = (row["method"], row["approximation"])
        points = thresholds if where in table2 else thresholds[-1:]
        for s in row["seeds"]:
            records = records_of[(*where, s["seed"])]
            curve = []
            for t in points:
                record = assessed_record(records, t, thresholds[-1])
                value = (results[("start_psi", "0", s["seed"])] if record is None
                         else results[(where, str(record["step"]), s["seed"])])
                curve.append({"images": t, "step": record["step"] if record else 0,
                              "images_rendered": record["images"] if record else 0, **value})
            s.update(assessed_val_metric=curve[-1]["val_metric"], assessed_test_metric=curve[-1]["test_metric"],
                     assessed_curve=curve)
            if reference is not None:
                s["gap_closed"] = finite_or_none(gap_closed(start[s["seed"]]["val_metric"], s["assessed_val_metric"],
                                                            ref[s["seed"]]["val_metric"]))
    return assessment


# ------------------------------------------------------------------------------- CLI


def add_compare_parser(sub) -> None:
    """Adds ``autosim compare`` to the CLI's subparsers."""
    p = sub.add_parser(
        "compare", help="run AutoSimulate and the baselines (LTS, BO, random search) head to head",
        description="Run each method on an experiment under the same image budget and seeds, then write "
                    "compare.md / compare.json (paper Tables 2 and 4) and plots of the validation metric "
                    "against images and time.")
    p.add_argument("experiment", metavar="EXPERIMENT", help="a registered experiment or module:attr")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for every method (default 3)")
    p.add_argument("--budget-images", type=int, required=True, metavar="N", help="images each run may render")
    p.add_argument("--approximations", default=None,
                   help=f"comma-separated AutoSimulate approximations (of {','.join(APPROXIMATIONS)}); "
                        f"adds the Table 4 ablation (default: {APPROXIMATIONS[0]} only)")
    p.add_argument("--renderer", default=None, help="one of the experiment's renderers (default: its first)")
    p.add_argument("--size", choices=("cpu", "gpu"), default=None,
                   help="the experiment's size (default: the experiment's own, cpu for the built-in ones)")
    p.add_argument("--lts-samples", type=int, default=4,
                   help="LTS policy samples (objective evaluations) per step (default 4)")
    p.add_argument("--search-radius", type=float, default=3.0,
                   help="half-width of the box around the start psi searched by LTS/BO/random (see baselines/space.py; "
                        "default 3.0)")
    p.add_argument("--search-scales", action="store_true",
                   help="LTS/BO/random also search each continuous field's log-scale, as AutoSimulate learns it "
                        "(doubles those coordinates; default: the means only, scales at the start's)")
    p.add_argument("--evaluation-images", type=int, default=None, metavar="N",
                   help="random search and BO: images rendered per evaluation (default: the experiment's "
                        "baseline_evaluation where it sets one, e.g. 1024 for digits-sim2real and 2048 for clevr-seg "
                        "at cpu size, else the experiment's K). They train each candidate's model from its "
                        "initialisation, so with few images and epochs a model that predicts one class scores the "
                        "same everywhere and the search is blind; at the same --budget-images, N trades evaluations "
                        "for a reward that says something")
    p.add_argument("--evaluation-epochs", type=int, default=None, metavar="E",
                   help="random search and BO: fine-tuning epochs per evaluation (default: the experiment's "
                        "baseline_evaluation where it sets one, else the experiment's)")
    p.add_argument("--out", default=None, help="output directory (default runs/compare-EXPERIMENT)")
    p.add_argument("--resume", action="store_true", help="continue a comparison in --out (finished runs are reused)")
    p.add_argument("--assess-images", type=int, default=None, metavar="N",
                   help="train fresh models on N images from each run's psi (default: the experiment's; 0 skips)")
    p.add_argument("--assess-points", type=int, default=4, metavar="P",
                   help="assess Table 2's runs after budget/2^(P-1), ..., budget/2, budget images (Table 4's "
                        "other approximations at the budget only); gives the images-to-reach table (default 4)")
    p.add_argument("--assess-at", type=_image_counts, default=(), metavar="N[,N...]",
                   help="also assess Table 2's runs after these image counts (between the geometric points: the "
                        "reach table's ratios are known to within the grid's spacing, so --assess-at 5120 tells "
                        "whether a best after 15360 is reached 3x sooner); with --resume only psi that no earlier "
                        "point held are trained on")
    add_assess_models_flag(p)
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N of the comparison's runs at once, each in a process of its own (with its own "
                        "--render-workers pool: N x W render processes in all), then its fresh-model assessments, "
                        "a process per seed; the results are those of --jobs 1. On one GPU the processes share it "
                        "(default 1: everything one after the other in this process)")
    add_progress_flags(p)
    add_render_flags(p)
    add_devices_flag(p)


def compare_main(ns: argparse.Namespace) -> int:
    """Runs the parsed ``autosim compare`` command; prints usage errors (exit code 2)."""
    try:
        experiment = resolve_experiment(ns.experiment)
        args = CompareArgs(
            budget_images=ns.budget_images, methods=_split_choices(ns.methods, METHODS, "--methods"),
            seeds=ns.seeds,
            approximations=(_split_choices(ns.approximations, APPROXIMATIONS, "--approximations")
                            if ns.approximations else None),
            out=ns.out, renderer=ns.renderer, resume=ns.resume, lts_samples=ns.lts_samples,
            search_radius=ns.search_radius, search_scales=ns.search_scales, evaluation_images=ns.evaluation_images,
            evaluation_epochs=ns.evaluation_epochs, experiment_spec=ns.experiment, assess_images=ns.assess_images,
            assess_points=ns.assess_points, assess_at=ns.assess_at, assess_models=ns.assess_models, size=ns.size,
            log_every=ns.log_every, log_seconds=ns.log_seconds,
            render_workers=ns.render_workers, render_backend=ns.render_backend, ray_address=ns.ray_address,
            render_timeout=ns.render_timeout, devices=ns.devices, jobs=ns.jobs)
        out = args.out or "the output directory"
        with interrupt_guard(f"autosim compare: interrupted; {out} holds every completed step. Continue with "
                             "--resume.", stream=sys.stderr):
            return run_compare(experiment, args)
    except UsageError as err:
        print(f"autosim compare: error: {err}", file=sys.stderr)
        return 2
