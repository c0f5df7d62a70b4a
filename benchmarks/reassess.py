"""Assess recorded psi again with more fresh models: G with less assessment noise (issue 13).

``psi_learning.py`` assesses each learned psi with ``--repeats`` fresh models (2 in most calls)
and records every step's psi. On clevr-seg at gpu size the same seed's default run reaches
nearly the same psi in different calls (the key light's pre-image mean at step 60: -0.33 /
-0.34 / -0.34 for seed 0 in three calls), yet its G moved by up to 0.4 between them: the
assessment, not the run, is most of one seed's noise. This trains ``--repeats`` *new* fresh models
(render and minibatch keys offset by ``--seed-offset``, so they are not the recorded ones again)
on the psi a run held after ``--step`` steps and on each seed's start and reference psi, and
pools them with the recorded models (a mean weighted by the number of models) into G per seed.

Usage (H200, 16 host cores)::

    python benchmarks/reassess.py --experiment clevr-seg --size gpu --step 60 --repeats 4 \\
        --runs benchmarks/results/psi_learning/clevr-seg_gpu_snr_gate_s012.json:default,snr_gate2 \\
        --runs benchmarks/results/psi_learning/clevr-seg_gpu_snr_gate_s34.json:default,snr_gate2 \\
        --jobs 6 --gpus 1 --render-workers 2 --deadline 540 --out $OUT/reassess_clevr-seg_gpu
    python benchmarks/reassess.py --experiment digits-sim2real --size cpu --step 40 --repeats 1 \\
        --runs benchmarks/results/psi_learning/digits-sim2real_cpu_snr_gate.json:default --seeds 0 \\
        --out /tmp/reassess   # smoke, 2-core CPU, about 1 min
    python benchmarks/reassess.py --experiment clevr-det --size gpu --step 60,120 --repeats 4 --assess-epochs 24 \
        --runs benchmarks/results/psi_learning/clevr-det_gpu_120steps.json:default \
        --runs benchmarks/results/psi_learning/clevr-det_gpu_inner_lr1e-3.json:inner_lr1e-3 \
        --jobs 6 --gpus 1 --render-workers 2 --deadline 540 \
        --out $OUT/reassess_clevr-det_gpu   # two steps, one baseline

``--with-reference FIELDS`` also assesses each psi with those fields set to the experiment's
reference psi (what they cost it; session 22: a step-240 clevr-seg psi with colour, material and
shape set back to uniform), and ``--recorded-baselines`` takes the recorded start and reference
instead of training new ones (``--with-start FIELDS`` sets the fields to the start's instead: the
twin ``autosim run --select-reset FIELDS`` would try)::

    python benchmarks/reassess.py --experiment clevr-seg --size gpu --step 240 --repeats 4 \\
        --runs benchmarks/results/psi_learning/clevr-seg_gpu_default_240steps.json:default \\
        --with-reference color,material,shape --recorded-baselines --jobs 6 --gpus 1 --out $OUT/r

``--tied FIELDS`` (repeatable) also assesses each psi with those per-object fields tied across the object
slots (:func:`tie_slots`; session 29: the five ``--select-reset`` picks with their positions tied lose
0.07 on average and seed 4's, whose object 0 walked to the near corner, 0.13)::

    python benchmarks/reassess.py --experiment clevr-seg --size gpu --repeats 4 --recorded-baselines \
        --cli-runs ... --tied position --tied position,shape,rotation,size --seed-offset 6000 --jobs 15 \
        --gpus 1 --render-workers 1 --out $OUT/reassess_picks_tied

``--reference-marginal FACTORS`` (repeatable) also assesses each psi with the 54-cell categorical's
marginal over some of its factors (``scene``, ``location``, ``quality``) set to the reference's, the rest
given them kept; ``--learned-marginal FACTORS`` the reference with the psi's marginal over them
(:func:`with_marginal`, clevr-det and digits-det). ``--twins-only`` assesses the twins alone: at the
``--seed-offset`` of another record its models share that record's render keys and minibatch order (every model
of a seed starts from the seed's one initialisation), though on digits-det that does not pair them: same-key
differences are as noisy as independent ones (session 72), so pool the records (``pooled_gain.py``) rather than
pair them (session 37: the default's psi with a uniform scene or location, and the reference with its (scene,
location) marginal and even qualities)::

    python benchmarks/reassess.py --experiment digits-det --size gpu --step 120 --repeats 2 --recorded-baselines \
        --runs benchmarks/results/psi_learning/digits-det_gpu_120steps_det_s012.json:default \
        --reference-marginal scene --reference-marginal location --seed-offset 5000 --jobs 10 --gpus 1 --out $OUT/r
    python benchmarks/reassess.py ... --learned-marginal scene,location --twins-only --seed-offset 7000 ...

``--cli-runs DIR`` takes an ``autosim run`` directory instead (repeatable): the psi the run
returned (``psi.json``'s selected psi when ``--select-every`` / ``--select-reset`` chose one, its
learned psi otherwise) is assessed again and pooled with the run's own assessment (its judging
models for a selected psi), e.g. the five picks of ``autosim run --select-reset`` (session 27)::

    python benchmarks/reassess.py --experiment clevr-seg --size gpu --repeats 8 \
        --cli-runs benchmarks/results/clevr-seg_gpu_cli_select_reset_final/seed0 \
        --cli-runs benchmarks/results/clevr-seg_gpu_cli_select_reset/seed1 ... --jobs 5 --gpus 1 --out $OUT/r

A run of ``autosim compare`` (``OUT/METHOD/seedS``, e.g. from ``detection_tables.py``'s runs tarball)
is taken the same way: its final psi, pooled with its own fresh models and the comparison's start
and reference ones for that seed; its rows are named after ``METHOD``. ``DIR@STEP`` takes the psi
the run held after step ``STEP`` instead (its ``metrics.jsonl`` record), pooled with the run's own
models of that step where it assessed one (a compare run's points along its budget), e.g. exact
quadratic's psi after 7,680 of digits-det's 30,720 images (step 30; session 33)::

    python benchmarks/reassess.py --experiment digits-det --size gpu --repeats 4 --recorded-baselines \
        --cli-runs $C/autosimulate-exact_quadratic/seed0@30 --cli-runs $C/bo/seed0 ... --out $OUT/r

Only runs of the experiment's own family (not the histogram or broad-share variants) can be
assessed again. Writes ``OUT.json`` (device, versions, command, date, every assessment, G per
seed from the new models alone and pooled with the recorded ones) and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np
from field_drift import flatten, read_runs, trajectory_runs, unflatten  # psi_learning.py's records and their flat psi
from provenance import command_line  # the record's command, quoted for a shell
# the same jobs as psi_learning.py: process pool, GPU, render pool, deadline
from psi_learning import job_progress, job_setup, run_jobs


def _job(spec: dict) -> dict:
    """One process: the new fresh models of one psi (a learned one, or a seed's start or reference)."""
    try:
        t0 = time.perf_counter()
        key_seed = spec["seed"] + spec["seed_offset"]
        with job_setup(spec) as setup:
            import autosim_jax as asj

            assessor = asj.make_assessor(setup, num_images=spec["assess_images"], epochs=spec["assess_epochs"],
                                          repeats=spec["repeats"])
            # a progress line after each fresh model, as psi_learning.py's jobs write: what a --deadline cut leaves
            label = spec["kind"] if spec["kind"] != "learned" else spec["label"]

            def assess(psi):
                return assessor(psi, key_seed, lambda r, m: job_progress(
                    {"variant": label, "seed": spec["seed"]}, t0, f"fresh model {r + 1}/{spec['repeats']} trained"))

            if spec["kind"] in ("start", "reference"):
                new = {spec["kind"]: assess(setup.simulator.distribution.init() if spec["kind"] == "start"
                                            else setup.reference_psi)}
            else:
                new = {"learned": assess(unflatten(spec["psi"], setup.simulator.distribution.init()))}
        return {**{k: v for k, v in spec.items() if k != "psi"}, "new": new, "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - reported in the results, never silently dropped
        return {**{k: v for k, v in spec.items() if k != "psi"}, "error": f"{type(err).__name__}: {str(err)[:2000]}"}


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The options of :func:`assess_jobs`' jobs: assessment budget, processes, GPUs, deadline, output."""
    p.add_argument("--assess-images", type=int, default=None)
    p.add_argument("--assess-epochs", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--gpus", type=int, default=0, help="GPUs to spread the jobs over (0: leave devices alone)")
    p.add_argument("--render-workers", type=int, default=1)
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS")
    p.add_argument("--out", required=True, help="output path without extension")


def job_options(args: argparse.Namespace, *, seed_offset: int) -> dict:
    """What every job of :func:`assess_jobs` shares, from :func:`add_job_arguments`' options."""
    return dict(experiment=args.experiment, size=args.size, repeats=args.repeats, seed_offset=seed_offset,
                assess_images=args.assess_images, assess_epochs=args.assess_epochs,
                gpus=list(range(args.gpus)) or None, render_workers=args.render_workers)


def assess_jobs(common: dict, seeds, learned: list[dict], *, jobs: int, deadline: float | None,
                out: str) -> tuple[list[dict], list[dict]]:
    """Fresh models on each seed's start and reference and on each psi of ``learned``, one job each.

    ``learned`` holds dicts with ``seed``, ``psi`` (flat, as recorded) and ``label`` (what the
    progress line names), and any other keys to carry into the result. ``common``: the options
    every job shares (experiment, size, repeats, seed_offset, assessment budget, GPUs, render
    workers). Returns ``run_jobs``' (results, unfinished specs); ``OUT.partial.jsonl`` keeps
    each result as it comes.
    """
    # the start and the reference are two jobs, so that a seed's baselines take no longer than a learned psi
    specs = [dict(common, kind=kind, seed=s) for s in seeds for kind in ("start", "reference")]
    specs += [dict(common, kind="learned", **item) for item in learned]
    for i, spec in enumerate(specs):
        spec["index"] = i
    t0 = time.perf_counter()

    def report(r: dict, done: int) -> None:
        what = r["kind"] if r["kind"] != "learned" else r["label"]
        state = f"FAILED {r['error'][:300]}" if "error" in r else f"({r['seconds']:.0f} s)"
        print(f"[{time.perf_counter() - t0:7.1f} s] {what} seed {r['seed']} {state} {done}/{len(specs)}", flush=True)

    results, unfinished = run_jobs(_job, specs, jobs=jobs, deadline=deadline, partial_path=out + ".partial.jsonl",
                                   report=report)
    return _joined_baselines(results), unfinished


def _joined_baselines(results: list[dict]) -> list[dict]:
    """``results`` with each seed's ``start`` and ``reference`` results joined into one ``baseline`` result
    (``new``: both assessments; ``seconds``: their sum); a seed whose start or reference failed or is
    missing gets no baseline (the failure stays in ``results``; the missing job is one of the unfinished).

    Example:
      >>> r = _joined_baselines([{"kind": "start", "seed": 0, "new": {"start": 1}, "seconds": 2.0},
      ...                        {"kind": "reference", "seed": 0, "new": {"reference": 3}, "seconds": 1.0},
      ...                        {"kind": "start", "seed": 1, "new": {"start": 4}, "seconds": 2.0}])
      >>> [(x["kind"], x["seed"], x.get("new")) for x in r]
      [('start', 1, {'start': 4}), ('baseline', 0, {'start': 1, 'reference': 3})]
    """
    halves: dict[int, dict[str, dict]] = {}
    for r in results:
        if r["kind"] in ("start", "reference") and "error" not in r:
            halves.setdefault(r["seed"], {})[r["kind"]] = r
    joined = {seed: h for seed, h in halves.items() if len(h) == 2}
    kept = [r for r in results if not (r["kind"] in ("start", "reference") and r["seed"] in joined)]
    return kept + [{**{k: v for k, v in h["start"].items() if k not in ("kind", "index")}, "kind": "baseline",
                    "new": {**h["start"]["new"], **h["reference"]["new"]},
                    "seconds": h["start"]["seconds"] + h["reference"]["seconds"]} for seed, h in joined.items()]


def failures(results: list[dict], unfinished: list[dict]) -> list[dict]:
    """The jobs of :func:`assess_jobs` that raised or missed the deadline, for the JSON (no psi)."""
    late = [{**{k: v for k, v in s.items() if k != "psi"}, "error": "not finished within --deadline"}
            for s in unfinished]
    return [r for r in results if "error" in r] + late


def pooled(old_mean: float, old_n: int, new_mean: float, new_n: int) -> float:
    """The mean over ``old_n + new_n`` models from two means.

    Example:
      >>> pooled(0.3, 2, 0.6, 4)
      0.5
    """
    return (old_n * old_mean + new_n * new_mean) / (old_n + new_n)


def _records(p, args, setup) -> list[dict]:
    """One item per (file, variant, seed, step) of ``--runs`` and ``--step``: its recorded psi
    after that step and its recorded assessments (none where the run did not assess that step:
    its G is then the new models' alone); checked before any job starts. ``setup``: the
    experiment's (seed 0) in this process."""
    import jax

    like = setup.simulator.distribution.init()
    keys = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(like)[0]}
    seeds = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    items = []
    for spec in args.runs:
        try:
            path, record, variants = read_runs(spec, args.experiment, args.size)
        except ValueError as err:
            p.error(str(err))
        if (record.get("assess_images"), record.get("assess_epochs")) != (args.assess_images, args.assess_epochs):
            p.error(f"{path} assessed on --assess-images {record.get('assess_images')} --assess-epochs "
                    f"{record.get('assess_epochs')}; give the same here, or its models cannot be pooled")
        base = {r["seed"]: r for r in record["runs"] if r["variant"] == "_baseline" and "error" not in r}
        for variant in variants:
            runs = [r for r in trajectory_runs(record, variant) if seeds is None or r["seed"] in seeds]
            if not runs:
                p.error(f"{path} holds no run of variant {variant!r}"
                        + (f" for seeds {sorted(seeds)}" if seeds else ""))
            for run in runs:
                if run["seed"] not in base:
                    p.error(f"{path}: no start/reference assessment of seed {run['seed']}")
                for step in args.steps:
                    if len(run["psi"]) < step:
                        p.error(f"{path}: {variant} seed {run['seed']} has {len(run['psi'])} steps, not {step}")
                    flat = run["psi"][step - 1]
                    if set(flat) != keys:
                        p.error(f"{path}: {variant} is not in the experiment's family (its psi has "
                                f"{sorted(set(flat) ^ keys)[:4]} where the start has not, or the reverse)")
                    items.append({"file": os.path.basename(path), "variant": variant, "seed": run["seed"],
                                  # a step the run did not assess has no recorded models: new ones only
                                  "step": step, "psi": flat, "old": run.get("assessed", {}).get(str(step)),
                                  "old_n": (record.get("repeats") or 1) if str(step) in run.get("assessed", {})
                                  else 0, "old_baseline": base[run["seed"]],
                                  "old_baseline_n": record.get("baseline_repeats") or record.get("repeats") or 1})
    return items


def _compare_run(run_dir: str, summary: dict) -> tuple[dict, dict]:
    """An ``autosim compare`` run directory (``OUT/METHOD/seedS``) in the shape of an ``autosim run``
    one: ``(assessment, raw)`` like ``summary.json``'s ``assessment`` and ``psi.json``'s ``raw``. Its
    final psi is ``summary.json``'s ``psi``, its fresh models are in its ``assessed.json`` under the
    final step, the seed's start and reference in ``OUT/start_psi/seedS`` and
    ``OUT/reference_psi/seedS`` (``autosim_jax.compare``'s layout). Raises ``OSError`` /
    ``KeyError`` where a piece is missing."""
    out, seed = os.path.dirname(os.path.dirname(os.path.normpath(run_dir))), os.path.basename(os.path.normpath(run_dir))

    def results(folder: str) -> dict:
        with open(os.path.join(folder, "assessed.json")) as f:
            return json.load(f)

    own, final = results(run_dir), str(summary["iterations"])
    if final not in own["results"]:  # session 68: a call's time limit cut the comparison while it assessed
        raise ValueError(f"the comparison stopped before assessing this run's final psi (step {final}); the same "
                         f"`autosim compare` with --resume --out {out} assesses what is missing (its runs are done)")
    # assessed.json names its models only when there are more than one (rundir.assess_protocol)
    assessment = {"images": own["images"], "epochs": own["epochs"], "models": own.get("models", 1),
                  "learned_psi": {**own["results"][final], "step": int(final)},
                  "start_psi": results(os.path.join(out, "start_psi", seed))["results"]["0"],
                  "reference_psi": results(os.path.join(out, "reference_psi", seed))["results"]["reference"]}
    return assessment, {"learned": summary["psi"]}


def cli_records(p, args, setup) -> list[dict]:
    """One item per ``--cli-runs`` directory: the psi the run returned (selected, else learned),
    flat like :func:`_records`' items, with the run's own assessments as the recorded ones;
    checked before any job starts. ``setup``: the experiment's (seed 0) in this process. A
    directory is an ``autosim run`` one or a run of ``autosim compare`` (``OUT/METHOD/seedS``:
    its final psi, variant ``METHOD``); ``DIR@STEP``: the psi after step ``STEP`` instead, with
    the run's models of that step if it assessed it (:func:`_psi_at_step`)."""
    from autosim_jax.rundir import psi_from_record

    like = setup.simulator.distribution.init()
    budget = (args.assess_images or setup.assess_images, args.assess_epochs or setup.assess_epochs)
    items = []
    for spec in args.cli_runs:
        run_dir, at, step = spec.rpartition("@")
        if not at or not step.isdigit():
            run_dir, step = spec, None
        try:
            with open(os.path.join(run_dir, "config.json")) as f:
                config = json.load(f)
            with open(os.path.join(run_dir, "summary.json")) as f:
                summary = json.load(f)
            if config.get("command") == "compare":  # a run of autosim compare
                a, raw = _compare_run(run_dir, summary)
            else:
                a = summary.get("assessment")
                with open(os.path.join(run_dir, "psi.json")) as f:
                    raw = json.load(f)["raw"]
        except (OSError, ValueError, KeyError) as err:
            p.error(f"--cli-runs {run_dir}: not a finished autosim run or compare run directory with its fresh-model "
                    f"assessments ({type(err).__name__}: {err})")
        size = config.get("size") or "cpu"  # autosim run without --size: the experiments' default size
        if (config.get("experiment"), size) != (args.experiment, args.size):
            p.error(f"--cli-runs {run_dir} is {config.get('experiment')} at {size} size, not "
                    f"{args.experiment} at {args.size}")
        if not a or "reference_psi" not in a:
            p.error(f"--cli-runs {run_dir} has no fresh-model assessment with a reference psi to pool with")
        if (a["images"], a["epochs"]) != budget:
            p.error(f"--cli-runs {run_dir} assessed on {a['images']} images x {a['epochs']} epochs; give "
                    f"--assess-images {a['images']} --assess-epochs {a['epochs']}, or its models cannot be pooled")
        selected = "selected_psi" in a and raw.get("selected") is not None and step is None
        old = a["selected_psi"] if selected else a["learned_psi"]
        returned = (f"{old['step']}+reset" if old.get("reset") else str(old["step"])) if selected else "final"
        psi = psi_from_record(like, raw["selected" if selected else "learned"])
        at_step = int(summary["iterations"])
        if step is not None:
            at_step, record, old = int(step), *_psi_at_step(p, run_dir, int(step))
            psi, returned = psi_from_record(like, record), step
        variant = ("selected" if selected else "learned") if config.get("command") != "compare" else \
            os.path.basename(os.path.dirname(os.path.normpath(run_dir)))
        items.append({"file": os.path.normpath(run_dir), "variant": variant,
                      "returned": returned, "seed": int(config["seed"]), "at_step": step is not None,
                      "step": int(old["step"]) if selected else at_step, "psi": flatten(psi),
                      "old": old, "old_n": a["models"] if old else 0,
                      "old_baseline": {"start": a["start_psi"], "reference": a["reference_psi"]},
                      "old_baseline_n": a["models"]})
    return items


def summary_name(row: dict, steps: list[int]) -> str:
    """The summary group of a row: its variant, and its step where the call names steps (a ``--step`` list,
    or ``--cli-runs DIR@STEP``), so that two steps of one run are not pooled as if they were two seeds; a
    run's selected psi (a step of its own on each seed) stays in its variant's group.

    Example:
      >>> summary_name({"variant": "learned", "step": 120}, [60]), summary_name({"variant": "v", "step": 80}, [60, 80])
      ('learned', 'v step 80')
      >>> summary_name({"variant": "autosimulate-exact_quadratic", "step": 40, "at_step": True}, [60])
      'autosimulate-exact_quadratic step 40'
    """
    return f"{row['variant']} step {row['step']}" if len(steps) > 1 or row.get("at_step") else row["variant"]


def _psi_at_step(p, run_dir: str, step: int) -> tuple[dict, dict | None]:
    """``(raw psi, recorded assessment or None)`` of a run directory after ``step`` outer steps:
    the psi of its ``metrics.jsonl`` record of that step, the fresh models of its ``assessed.json``
    under that step (a compare run's assessed points; the runs share their protocol, checked by
    the caller on the final step's)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        record = next((r for r in map(json.loads, f) if r.get("step") == step and "psi" in r), None)
    if record is None:
        p.error(f"--cli-runs {run_dir}@{step}: its metrics.jsonl holds no psi of step {step}")
    try:
        with open(os.path.join(run_dir, "assessed.json")) as f:
            old = json.load(f)["results"].get(str(step))
    except OSError:
        old = None
    return record["psi"], old and {**old, "step": step}


def _twin(item: dict, suffix: str, psi: dict) -> dict:
    """A twin of a :func:`_records` item: the flat ``psi``, the variant named ``item``'s plus ``suffix``,
    and no recorded models (its G comes from the new ones)."""
    return {**item, "variant": f"{item['variant']}{suffix}", "old": None, "old_n": 0, "psi": psi}


def _probs(logits) -> np.ndarray:
    """A categorical's probabilities from its (unnormalised) logits, over the last axis, in float64."""
    logits = np.asarray(logits, float)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def _field_names(p, option: str, names: str, psi) -> list[str]:
    """The comma list ``names`` of psi fields, each checked to be one of ``psi``'s (``option`` names the
    flag in the error)."""
    fields = [f.strip() for f in names.split(",") if f.strip()]
    unknown = [f for f in fields if f not in psi]
    if unknown or not fields:
        p.error(f"{option}: unknown fields {unknown or '(empty)'}; the experiment's are {sorted(psi)}")
    return fields


def _with_fields(p, option: str, names: str, items: list[dict], values, label: str) -> list[dict]:
    """For each item of :func:`_records`, the same psi with the comma list ``names`` of fields set to
    ``values`` (a psi: the reference for ``--with-reference``, the start for ``--with-start``),
    flat as recorded; no recorded models (``old`` None). ``option`` names the flag in errors."""
    flat = flatten(values)
    fields = _field_names(p, option, names, values)
    prefixes = tuple(f"['{f}']" for f in fields)
    return [_twin(it, f"+{label} {'/'.join(fields)}",
                  {k: (flat[k] if k.startswith(prefixes) else v) for k, v in it["psi"].items()}) for it in items]


def tie_slots(params):
    """One per-object field's psi with every object slot given the law of a slot picked at random:
    the slots' averaged probabilities (``CategoricalParams``; exact), or the normal with the mean and
    variance of the mixture of the slots' pre-image normals (``NormalParams``; the closest normal to
    the mixture in KL(mixture || normal)); a histogram field is a categorical over its bins, so it is
    tied exactly too. The leading axis is the slot. A start and a reference that
    treat the objects alike are unchanged by it; a psi whose slots drifted apart (session 28: seed 4's
    object 0 walked to the floor's near corner, the others spread elsewhere) gets one law that covers
    where the slots stood.

    Example:
      >>> from autosim_jax.distributions import NormalParams
      >>> t = tie_slots(NormalParams(np.array([0.0, 2.0]), np.log(np.array([1.0, 1.0]))))
      >>> t.loc.tolist(), np.exp(t.log_scale).round(4).tolist()
      ([1.0, 1.0], [1.4142, 1.4142])
    """
    from autosim_jax.distributions import CategoricalParams, NormalParams

    if isinstance(params, NormalParams):
        loc, var = np.asarray(params.loc, float), np.exp(2.0 * np.asarray(params.log_scale, float))
        mean = loc.mean(0)
        log_scale = 0.5 * np.log((var + loc**2).mean(0) - mean**2)
        return NormalParams(np.broadcast_to(mean, loc.shape).copy(), np.broadcast_to(log_scale, loc.shape).copy())
    if isinstance(params, CategoricalParams):
        probs = _probs(params.logits)
        return CategoricalParams(np.broadcast_to(np.log(probs.mean(0)), probs.shape).copy())
    raise TypeError(f"tie_slots: a field's psi must be NormalParams or CategoricalParams, got {type(params).__name__}")


# The 54-way cell categorical of clevr-det and digits-det, cell = (scene, location, quality) with the
# quality fastest (autosim_jax.renderers.clevr_det.CELLS; digits-det's backgrounds stand for the scenes).
CELL_FACTORS = {"scene": 3, "location": 9, "quality": 2}


def with_marginal(probs, donor, factors) -> np.ndarray:
    """The cell distribution ``probs`` with its marginal over ``factors`` replaced by ``donor``'s, its
    conditional of the other factors given them kept: ``p'(f, r) = p_donor(f) p(r | f)``, with ``f`` the
    named factors (:data:`CELL_FACTORS`) and ``r`` the others. The other factors' marginal moves with the
    swap where they depend on ``f``; with every factor named ``p'`` is the donor. Session 37: which of
    scene, location and quality holds a learned digits-det psi below the uniform reference (a learned
    psi with the reference's marginal, ``--reference-marginal``, and the reference with a learned one,
    ``--learned-marginal``).

    Example:
      >>> p = np.zeros((3, 9, 2)); p[1, 4, :] = [0.6, 0.2]; p[0, 0, 1] = 0.2  # mostly scene2/centre
      >>> q = with_marginal(p.ravel(), np.full(54, 1 / 54), ["scene"]).reshape(3, 9, 2)
      >>> q.sum((1, 2)).round(4).tolist(), q[1, 4].round(4).tolist(), float(q[2].sum().round(4))
      ([0.3333, 0.3333, 0.3333], [0.25, 0.0833], 0.3333)
    """
    unknown = [f for f in factors if f not in CELL_FACTORS]
    if unknown or not factors:
        raise ValueError(f"unknown cell factors {unknown or '(none)'}; the factors are {list(CELL_FACTORS)}")
    shape = tuple(CELL_FACTORS.values())
    p, donor = (np.asarray(x, float).reshape(shape) for x in (probs, donor))
    if np.any(p < 0) or np.any(donor < 0) or not np.allclose([p.sum(), donor.sum()], 1.0):
        raise ValueError("probs and donor must be distributions over the 54 cells")
    rest = tuple(i for i, f in enumerate(CELL_FACTORS) if f not in factors)
    donor_marginal, marginal = donor.sum(rest, keepdims=True), p.sum(rest, keepdims=True)
    # a factor value the learned psi never takes (its logits are finite, so only in hand-made input)
    # has no conditional to keep: spread the donor's mass uniformly over the rest
    conditional = np.where(marginal > 0, p / np.where(marginal > 0, marginal, 1.0), 1.0 / np.prod(
        [shape[i] for i in rest]))
    return (donor_marginal * conditional).ravel()


def _marginal_twins(p, names: str, items: list[dict], like, reference, *, into: str) -> list[dict]:
    """For each item, a psi between it and the reference over the cell categorical's comma list ``names``
    of :data:`CELL_FACTORS` (:func:`with_marginal`), flat as recorded; no recorded models. ``into="learned"``
    (``--reference-marginal``): the item's psi with the reference's marginal over them; ``"reference"``
    (``--learned-marginal``): the reference with the item's marginal over them. ``like`` and
    ``reference``: the experiment's start and reference psi."""
    from autosim_jax.distributions import CategoricalParams

    option = {"learned": "--reference-marginal", "reference": "--learned-marginal"}[into]
    factors = [f.strip() for f in names.split(",") if f.strip()]
    if not isinstance(like.get("cell"), CategoricalParams) or np.shape(like["cell"].logits) != (54,):
        p.error(f"{option}: the experiment has no 54-way 'cell' categorical (clevr-det and digits-det have)")
    try:
        with_marginal(np.full(54, 1 / 54), np.full(54, 1 / 54), factors)
    except ValueError as err:
        p.error(f"{option}: {err}")
    ref = _probs(reference["cell"].logits)
    out = []
    for it in items:
        psi = unflatten(it["psi"], like)
        probs = _probs(psi["cell"].logits)
        if into == "learned":
            swapped, label = with_marginal(probs, ref, factors), f"+reference {'/'.join(factors)} marginal"
        else:
            swapped, label = with_marginal(ref, probs, factors), f"'s {'/'.join(factors)} marginal in the reference"
        psi = {**psi, "cell": CategoricalParams(np.log(swapped))}
        out.append(_twin(it, label, flatten(psi)))
    return out


def _tied(p, names: str, items: list[dict], like) -> list[dict]:
    """For each item, the same psi with the comma list ``names`` of per-object fields tied across their
    object slots (:func:`tie_slots`), flat as recorded; no recorded models. ``like``: the start psi
    (the fields' families and shapes)."""
    from autosim_jax.distributions import CategoricalParams, NormalParams

    fields = _field_names(p, "--tied", names, like)
    other = [f for f in fields if not isinstance(like[f], (NormalParams, CategoricalParams))]
    if other:
        p.error(f"--tied: {other} are neither normal (or bounded) nor categorical fields; only those can be tied")
    # a field's own shape: a normal's loc has it, a categorical's logits add the categories' axis
    shapes = {f: np.shape(like[f].loc) if isinstance(like[f], NormalParams) else np.shape(like[f].logits)[:-1]
              for f in fields}
    single = [f for f in fields if len(shapes[f]) == 0 or shapes[f][0] < 2]
    if single:
        p.error(f"--tied: {single} have no object slots to tie (shapes {[shapes[f] for f in single]}); give "
                "per-object fields, whose leading axis is the object")
    out = []
    for it in items:
        psi = unflatten(it["psi"], like)
        psi = {**psi, **{f: tie_slots(psi[f]) for f in fields}}
        out.append(_twin(it, f"+tied {'/'.join(fields)}", flatten(psi)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--runs", action="append", default=[], metavar="FILE:VARIANT[,VARIANT]",
                   help="a psi_learning.py OUT.json and variants of it (repeatable)")
    p.add_argument("--cli-runs", action="append", default=[], metavar="DIR",
                   help="an autosim run directory (the psi it returned: selected, else learned) or an autosim "
                   "compare run directory OUT/METHOD/seedS (its final psi); DIR@STEP: the psi after step STEP "
                   "(repeatable)")
    p.add_argument("--step", default="60", help="the recorded psi after this many steps (assessed steps; a comma "
                   "list assesses each, against one start/reference assessment per seed)")
    p.add_argument("--seeds", default=None, help="comma list (default: every seed of the runs)")
    p.add_argument("--repeats", type=int, default=4, help="new fresh models per psi")
    p.add_argument("--with-reference", default=None, metavar="FIELDS",
                   help="comma list of fields: also assess each psi with these fields set to the reference's "
                   "(what they cost it; such a psi has no recorded models, its G is from the new ones)")
    p.add_argument("--with-start", default=None, metavar="FIELDS",
                   help="comma list of fields: also assess each psi with these fields set to the start's (the twin "
                   "that autosim run --select-reset FIELDS would try)")
    p.add_argument("--tied", action="append", default=[], metavar="FIELDS",
                   help="comma list of per-object fields: also assess each psi with these fields tied across the "
                   "object slots (every slot the law of a slot picked at random; tie_slots); repeatable, one "
                   "twin per use")
    p.add_argument("--reference-marginal", action="append", default=[], metavar="FACTORS",
                   help="comma list of the 54-cell categorical's factors (scene, location, quality): also assess each "
                   "psi with its marginal over them set to the reference's, the rest's conditional kept "
                   "(clevr-det, digits-det); repeatable, one twin per use")
    p.add_argument("--learned-marginal", action="append", default=[], metavar="FACTORS",
                   help="the other way round: also assess the reference with each psi's marginal over these factors, "
                   "the reference's conditional of the rest given them kept; repeatable")
    p.add_argument("--twins-only", action="store_true",
                   help="assess the twins alone, not the recorded psi they come from (whose new models, at the same "
                   "--seed-offset, may be in another record; sharing keys does not correlate the models on "
                   "digits-det: pool them, do not pair them, session 72)")
    p.add_argument("--recorded-baselines", action="store_true",
                   help="no new start/reference models: G against the recorded ones alone (cheaper)")
    p.add_argument("--seed-offset", type=int, default=1000,
                   help="added to a seed for the new models' render and minibatch keys (the recorded ones used 0)")
    add_job_arguments(p)
    args = p.parse_args(argv)
    try:
        args.steps = [int(t) for t in args.step.split(",")]
    except ValueError:
        p.error(f"--step must be a comma list of step counts, got {args.step!r}")
    if not args.runs and not args.cli_runs:
        p.error("give --runs FILE:VARIANT or --cli-runs DIR (or both)")
    if args.repeats < 1 or args.seed_offset < 1:
        p.error("--repeats and --seed-offset must be >= 1 (offset 0 would train the recorded models again)")
    import autosim_jax as asj

    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)  # a registered name or module:attr (a plug-in), as the jobs read it
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)  # once: the family and the reference
    items = _records(p, args, setup) + cli_records(p, args, setup)
    twins = []
    if args.with_reference:
        twins += _with_fields(p, "--with-reference", args.with_reference, items, setup.reference_psi, "reference")
    if args.with_start:
        twins += _with_fields(p, "--with-start", args.with_start, items, setup.simulator.distribution.init(), "start")
    for names in args.tied:
        twins += _tied(p, names, items, setup.simulator.distribution.init())
    for into, option in (("learned", args.reference_marginal), ("reference", args.learned_marginal)):
        for names in option:
            twins += _marginal_twins(p, names, items, setup.simulator.distribution.init(), setup.reference_psi,
                                     into=into)
    if args.twins_only:
        if not twins:
            p.error("--twins-only: name the twins (--with-reference, --with-start, --tied, --reference-marginal, "
                    "--learned-marginal)")
        items = twins
    else:
        items += twins
    common = job_options(args, seed_offset=args.seed_offset)
    t0 = time.perf_counter()
    learned = [{"seed": it["seed"], "psi": it["psi"], "item": i,
                "label": f"{it['variant']} step {it.get('returned', it['step'])}"} for i, it in enumerate(items)]
    base_seeds = [] if args.recorded_baselines else sorted({it["seed"] for it in items})
    results, unfinished = assess_jobs(common, base_seeds, learned, jobs=args.jobs,
                                      deadline=args.deadline, out=args.out)
    new_base = {r["seed"]: r["new"] for r in results if r["kind"] == "baseline" and "error" not in r}
    new_learned = {r["item"]: r["new"]["learned"] for r in results if r["kind"] == "learned" and "error" not in r}
    import jax

    rows = []
    for i, it in enumerate(items):
        row = {k: it[k] for k in ("file", "variant", "returned", "seed", "step", "at_step", "old_n", "old_baseline_n")
               if k in it}
        row["old"] = it["old"] and {k: it["old"][k] for k in ("test_metric", "val_metric")}
        # with --recorded-baselines the recorded start and reference stand in for new ones (pooled: 0 new models)
        nb, nl = new_base.get(it["seed"], it["old_baseline"] if args.recorded_baselines else None), new_learned.get(i)
        if nb is None or nl is None:
            row["error"] = "not assessed (see failed)"
            rows.append(row)
            continue
        row["new"] = {"learned": nl, **({} if args.recorded_baselines else nb)}
        for metric in ("test_metric", "val_metric"):
            ob, n, bn = it["old_baseline"], args.repeats, it["old_baseline_n"]
            nbn = 0 if args.recorded_baselines else n
            start = pooled(ob["start"][metric], bn, nb["start"][metric], nbn)
            ref = pooled(ob["reference"][metric], bn, nb["reference"][metric], nbn)
            recorded = it["old"] and asj.gap_closed(ob["start"][metric], it["old"][metric], ob["reference"][metric])
            learned = pooled(it["old"][metric], it["old_n"], nl[metric], n) if it["old"] else nl[metric]
            row[f"G_{metric}"] = {
                "recorded": recorded,
                "new_models": asj.gap_closed(nb["start"][metric], nl[metric], nb["reference"][metric]),
                "pooled": asj.gap_closed(start, learned, ref)}
        rows.append(row)
    summary: dict[str, dict] = {}
    for row in rows:
        if "error" in row:
            continue
        name = summary_name(row, args.steps)
        s = summary.setdefault(name, {"seeds": [], **{k: [] for k in ("recorded", "new_models", "pooled")}})
        s["seeds"].append(row["seed"])
        for k in ("recorded", "new_models", "pooled"):
            s[k].append(row["G_test_metric"][k])
    for s in summary.values():
        for k in ("recorded", "new_models", "pooled"):
            g = np.asarray([x for x in s[k] if x is not None])  # None: a psi without recorded models
            s[k] = {"mean": float(g.mean()) if len(g) else None, "std": float(g.std(ddof=1)) if len(g) > 1 else 0.0,
                    "per_seed": s[k]}
    device = jax.devices()[0]
    record = {"benchmark": "reassess", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "device": f"{device.platform}:{device.device_kind}", "jax_version": jax.__version__,
              "autosim_jax": asj.__version__, "precision": "float32, default matmul", "experiment": args.experiment,
              "size": args.size, "steps": args.steps, "repeats": args.repeats, "seed_offset": args.seed_offset,
              "with_reference": args.with_reference, "with_start": args.with_start, "tied": args.tied,
              "reference_marginal": args.reference_marginal, "learned_marginal": args.learned_marginal,
              "twins_only": args.twins_only,
              "recorded_baselines": args.recorded_baselines,
              "assess_images": args.assess_images, "assess_epochs": args.assess_epochs,
              "summary_G_test_metric": summary, "rows": rows, "wall_seconds": time.perf_counter() - t0,
              "failed": failures(results, unfinished)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    if summary:
        plot(record, args.out + ".png")
    for variant, s in summary.items():
        r = s["recorded"]
        recorded = "-" if r["mean"] is None else f"{r['mean']:+.2f} +- {r['std']:.2f}"
        print(f"{variant:>16}: G recorded {recorded}   "
              f"new models {s['new_models']['mean']:+.2f} +- {s['new_models']['std']:.2f}   "
              f"pooled {s['pooled']['mean']:+.2f} +- {s['pooled']['std']:.2f}  (seeds {s['seeds']})")
    return 1 if record["failed"] else 0


def plot(record: dict, path: str) -> None:
    from matplotlib.figure import Figure

    rows = [r for r in record["rows"] if "error" not in r]
    fig = Figure(figsize=(1.2 + 0.5 * len(rows), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(rows))
    for key, marker in (("recorded", "o"), ("new_models", "s"), ("pooled", "D")):
        ax.plot(xs, [np.nan if r["G_test_metric"][key] is None else r["G_test_metric"][key] for r in rows], marker,
                label=key)
    ax.set_xticks(xs, [f"{r['variant']} s{r['seed']} @{r['step']}" for r in rows], rotation=60, ha="right", fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(0.8, color="g", lw=0.5, ls="--")
    ax.set_ylabel("G (test metric) at the step named")
    ax.legend(fontsize=7)
    ax.set_title(f"{record['experiment']} ({record['size']}): recorded G against {record['repeats']} new models "
                 f"per psi ({record['date']})", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
