"""The paper's detection tables 3-6 (issue 14) in one run: methods, approximations, freezing, network size.

For each experiment (``clevr-det``; ``digits-det`` with ``--experiments``), one process per job,
``--jobs`` at once, spread round-robin over ``--gpus`` GPUs (rendering is serial numpy in each
process, one core per job):

* **Tables 3-4** through ``autosim compare``'s own machinery (``autosim_jax.compare``): every
  (method, approximation, seed) run is one job writing the run directory ``autosim compare``
  would write (``compare._run_method``: the same loop, budget and accounting), then the
  fresh-model assessments of its psi that ``autosim compare`` would make, into the same
  ``assessed.json`` caches. At the end ``autosim compare --resume`` over that directory finds
  every run finished and every assessment cached and writes compare.json / compare.md / the
  plots / cells.png. AutoSimulate's approximations (exact_quadratic, approx_quadratic, linear,
  no_val) against random search, BO and LTS at equal image budgets: fresh-model mAP@0.5 (val,
  test), the gap closed G, images and time to the best in-run validation mAP, images to reach
  each baseline's best fresh-model mAP, and each run's final mass on the target's support
  cells (the reference psi's cells above uniform: clevr-det's 4 ``CLEVR_DET_TARGET`` cells).
* **Table 5** (freezing layers, ``AutoSimConfig.trainable``): AutoSimulate with
  ``--table5-approximation`` and each ``--frozen`` filter, the same budget and seeds; per
  step train / outer / render seconds (medians after the first, compiling, step), the time
  to the best validation mAP, and the fresh-model mAP of the final psi. The "all parameters"
  row is the comparison's own run of that approximation.
* **Table 6** (network size): psi learned with the experiment's detector (UNet base channels
  32 at gpu size, 8 at cpu), assessed by training a detector of ``--large-channels`` on it
  (``make_assessor(..., model=)``): the start, the reference and each Table-3 method's final
  psi, next to the small detector's assessment of the same psi.

Writes ``OUT.json`` (device, JAX version, precision, command, date, the plan, every figure:
the tables, compare.json, the paper's claims and the issue's targets checked, per-job
timings and failures), ``OUT_EXPERIMENT.png`` (the four tables as bar charts), copies of the
comparison's ``compare.md``, ``cells.png`` and ``assessed_vs_images.png`` as
``OUT_EXPERIMENT_compare.md`` etc. (so that the top level holds what a reader opens first), and the
comparison directory ``OUT_runs/EXPERIMENT/compare`` (compare.md, compare.json,
val_vs_images.png, val_vs_time.png, assessed_vs_images.png, cells.png) with per-job logs in
``OUT_runs/EXPERIMENT/logs``. ``--deadline`` stops unfinished jobs so that the JSON is
written in time (they are listed as failed).

Usage (H200 host, 2 GPUs, 32 cores; BO needs the bayesian-optimization wheel, see
docs/detection.md)::

    python benchmarks/detection_tables.py --gpus 2 --jobs 30 --out /root/dt/detection_tables_gpu

Tiny end-to-end check on CPU (9 jobs, 2 at a time; 6 min on this 2-core machine under load)::

    python benchmarks/detection_tables.py --smoke --out /tmp/detection_tables_smoke

Expected GPU wall time of the defaults (clevr-det, gpu size, 3 seeds, 3840 images = 15 steps
of K = 256 per run, fresh models on 2048 images x 8 epochs at 3 points for Table 3's rows,
Table 5 with two frozen depths, Table 6 with 64 base channels): 30 jobs, one wave on 2 H200
with 32 cores. From the known costs (docs/detection.md, benchmarks/results): a clevr-det gpu
step 0.175 s with 16 render workers, 0.09 s of it device work; the first step compiles in
14.8 s; serial rendering of a 64 px clevr-det image 0.5 ms (low quality) to 7 ms (high) on
the 2-core machine, about 1.25x that per core on the GPU host (clevr: 54 against 68 img/s);
an assessment trains 512 minibatches (about 1.5 ms each alone on the H200) on 2048 renders.
Per job, one core each, about 15 jobs sharing a GPU: start-up and the experiment's 512
validation / test renders twice (the run's setup, the assessor's) about 20 s; the step's
compile about 20 s; 15 steps of 256 serial renders (1-2.5 s each as psi moves to high
quality) about 15-35 s; each assessor compiles in about 10 s, each assessment renders and
trains in 5-20 s (the reference psi, all high quality, the most). A Table-3 job (3 small
assessments + 1 large) about 2 min, a Table-4 / Table-5 job 1-1.5 min, a start/reference job
(2 small + 2 large) about 1.5 min; then the final ``autosim compare --resume`` (the gpu
setup's renders, the plots) about 30 s. Expected: 3-4 min, 6 min if contention for cores
and GPUs doubles the per-job times; ``--deadline 480`` (s) caps the job phase, so the run
ends within about 9 min whatever happens. ``--experiments clevr-det,digits-det`` doubles the
jobs (two waves): about 7-10 min, over the window: run digits-det on its own. On one H200
(16 cores), measured: ``--gpus 1 --jobs 15`` ran the 30 jobs of 3 seeds in 485 s (2026-12-01).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import traceback

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell

METHODS = ("autosimulate", "random", "bo", "lts")
APPROXIMATIONS = ("exact_quadratic", "approx_quadratic", "linear", "no_val")
# Table 5: name=regex over parameter paths (the UNet's leaves: enc1a enc1b enc2a enc2b up dec1a dec1b head).
SHOWN_COMPARE_FILES = ("compare.md", "cells.png", "assessed_vs_images.png")
FROZEN = r"decoder=\['(up|dec1a|dec1b|head)'\];head=\['head'\]"
SMOKE = {"size": "cpu", "seeds": 1, "budget_images": 64, "assess_images": 32, "assess_points": 1,
         "large_channels": 16, "frozen": r"head=\['head'\]", "jobs": 2, "gpus": 0, "deadline": 1500.0}


def _log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------- the job processes


def _compare_args(spec: dict, out: str, *, resume: bool, methods=None, approximations=None):
    from autosim_jax.compare import CompareArgs

    return CompareArgs(budget_images=spec["budget_images"], methods=tuple(methods or spec["methods"]),
                       seeds=spec["seeds"], approximations=tuple(approximations or spec["approximations"]),
                       out=out, resume=resume, size=spec["size"], assess_images=spec["assess_images"],
                       assess_points=spec["assess_points"], assess_models=spec.get("assess_models", 1),
                       evaluation_images=spec.get("evaluation_images"), evaluation_epochs=spec.get("evaluation_epochs"),
                       log_seconds=60.0)


def _protocol(spec: dict, setup) -> dict:
    """The assessment protocol of ``autosim compare`` (so that both read and write one cache)."""
    from autosim_jax.rundir import assess_protocol

    return assess_protocol(spec["assess_images"] or setup.assess_images, setup.assess_epochs,
                           spec.get("assess_models", 1))


def _experiment(spec: dict):
    """The registered experiment, or for a Table 5 job one whose config freezes layers."""
    import autosim_jax as asj

    exp = asj.get_experiment(spec["experiment"])
    if spec.get("trainable") is None:
        return exp

    def build(**kwargs):
        setup = exp.build(**kwargs)
        return setup._replace(config=setup.config.replace(trainable=spec["trainable"]))

    return exp._replace(build=build)


def support_cells(schema, reference) -> list[int]:
    """The cells of the scene/location/quality field where the reference psi is above uniform
    (clevr-det: the 4 target cells; also used by ``cell_mass.py``)."""
    from autosim_jax import describe_psi

    probs = np.asarray(describe_psi(schema, reference)["cell"]["probs"])
    return [int(i) for i in np.flatnonzero(probs > 1.0 / probs.size)]


def _mass(schema, psi, support) -> float:
    from autosim_jax import describe_psi

    return float(np.asarray(describe_psi(schema, psi)["cell"]["probs"])[support].sum())


def _large_model(setup, channels: int, seed: int):
    from flax import nnx

    from autosim_jax.detection import centernet

    return centernet(setup.val_data[0].shape[-1], len(setup.simulator.renderer.class_names), channels,
                     rngs=nnx.Rngs(seed))


def _step_times(records: list[dict]) -> dict:
    """Median seconds per step after the first (which compiles), and the first step's."""
    later = records[1:] or records
    return {"first_step": sum(records[0][k] for k in ("time_render", "time_train", "time_other")),
            **{k: float(np.median([r[k] for r in later])) for k in ("time_render", "time_train", "time_other")}}


def _job(spec: dict) -> dict:
    """One process; a failure comes back as ``{"error": ...}`` so that it cannot lose the others."""
    t0 = time.perf_counter()
    if spec["gpus"]:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(spec["index"] % spec["gpus"])
    _log(f"  start {spec['name']} (pid {os.getpid()}"
         + (f", GPU {os.environ['CUDA_VISIBLE_DEVICES']})" if spec["gpus"] else ")"))
    try:
        out = {"run": _run_job, "psi0": _psi0_job}[spec["kind"]](spec)
    except Exception as err:  # noqa: BLE001 - reported in the JSON, never dropped
        out = {"error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-3000:]}
    return {**_identity(spec), **out, "seconds": time.perf_counter() - t0}


def _identity(spec: dict) -> dict:
    return {k: spec.get(k) for k in ("name", "kind", "experiment", "seed", "method", "approximation", "variant")}


def _run_job(spec: dict) -> dict:
    """A compare run (or a Table 5 run) and the assessments ``autosim compare`` makes of it."""
    from autosim_jax import compare
    from autosim_jax.experiments import make_assessor
    from autosim_jax.rundir import (
        ASSESSED,
        RenderOptions,
        RenderPools,
        build_setup,
        cached_assessment,
        psi_from_record,
    )

    exp = _experiment(spec)
    method, approximation, seed = spec["method"], spec["approximation"], spec["seed"]
    setup = build_setup(exp, renderer=exp.renderers[0], seed=seed, size=spec["size"])
    # random search's and BO's evaluation as autosim compare resolves it (the experiment's default)
    args = compare._resolve_evaluation(_compare_args(spec, spec["compare_dir"], resume=spec["resume"]), setup)
    with open(spec["log"], "a") as log, RenderPools(RenderOptions()) as pools:
        records = compare._run_method(exp, args, exp.renderers[0], method, approximation, seed, spec["run_dir"],
                                      compare._label(method, approximation), pools, log)
    _log(f"  {spec['name']}: {len(records)} steps, {records[-1]['images']} images; assessing")
    psi0 = setup.simulator.distribution.init()
    protocol = _protocol(spec, setup)
    assess = []

    def small(psi):
        if not assess:
            assess.append(make_assessor(setup, num_images=protocol["images"], epochs=protocol["epochs"],
                                        repeats=protocol.get("models", 1)))
        return assess[0](psi, seed)

    # compare's plan: the psi held having rendered at most each threshold (the final psi at the budget),
    # keyed by its step; the start psi (key "0") before the first update.
    assessed = {}
    for t in spec["thresholds"]:
        record = compare.assessed_record(records, t, spec["thresholds"][-1])
        psi = psi0 if record is None else psi_from_record(psi0, record["psi"])
        key = "0" if record is None else str(record["step"])
        assessed[t], _ = cached_assessment(os.path.join(spec["run_dir"], ASSESSED), key, protocol,
                                           lambda psi=psi: small(psi))
    final = psi_from_record(psi0, records[-1]["psi"])
    schema = setup.simulator.renderer.schema
    out = {"trainable": spec.get("trainable"), "steps": len(records), "images": records[-1]["images"],
           "step_seconds": _step_times(records),
           "summary": compare.summarize_run(records, bool(setup.task.higher_is_better)),
           "assessed": {str(t): v for t, v in assessed.items()},
           "mass_on_support": _mass(schema, final, support_cells(schema, setup.reference_psi))}
    if spec.get("large_channels"):
        out["large"] = _large_assessment(setup, spec, final, protocol, compare._dirname(method, approximation))
    return out


def _large_assessment(setup, spec: dict, psi, protocol: dict, where: str) -> dict:
    """Table 6: a detector of ``large_channels`` trained on ``psi`` (cached per experiment / psi / seed)."""
    from autosim_jax.experiments import make_assessor
    from autosim_jax.rundir import cached_assessment

    channels, seed = spec["large_channels"], spec["seed"]
    path = os.path.join(spec["table6_dir"], f"{where}_seed{seed}.json")

    def compute():
        model = _large_model(setup, channels, seed)
        return make_assessor(setup, num_images=protocol["images"], epochs=protocol["epochs"], model=model,
                             repeats=protocol.get("models", 1))(psi, seed)

    value, _ = cached_assessment(path, "large", {**protocol, "base_channels": channels}, compute)
    return value


def _psi0_job(spec: dict) -> dict:
    """The start and reference psi of one seed: the small detector's assessments (into
    compare's caches) and the large detector's (Table 6)."""
    from autosim_jax.experiments import make_assessor
    from autosim_jax.rundir import ASSESSED, build_setup, cached_assessment

    exp = _experiment(spec)
    seed = spec["seed"]
    setup = build_setup(exp, renderer=exp.renderers[0], seed=seed, size=spec["size"])
    protocol = _protocol(spec, setup)
    assess = make_assessor(setup, num_images=protocol["images"], epochs=protocol["epochs"],
                           repeats=protocol.get("models", 1))
    schema = setup.simulator.renderer.schema
    support = support_cells(schema, setup.reference_psi)
    out = {"support": [schema["cell"].choices[i] for i in support]}
    for where, key, psi in (("start_psi", "0", setup.simulator.distribution.init()),
                            ("reference_psi", "reference", setup.reference_psi)):
        path = os.path.join(spec["compare_dir"], where, f"seed{seed}", ASSESSED)
        out[where] = {"small": cached_assessment(path, key, protocol, lambda psi=psi: assess(psi, seed))[0],
                      "mass_on_support": _mass(schema, psi, support)}
        if spec.get("large_channels"):
            out[where]["large"] = _large_assessment(setup, spec, psi, protocol, where)
        _log(f"  {spec['name']}: {where} assessed")
    return out


# ------------------------------------------------------------------------------- plan


def _parse_frozen(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, sep, regex = item.partition("=")
        if not sep or not name or not regex:
            raise SystemExit(f"--frozen: expected NAME=REGEX;NAME=REGEX, got {item!r}")
        out[name] = regex
    return out


def plan(args) -> list[dict]:
    """Every job, the longest first (Table 3 runs assess at several points and for Table 6)."""
    from autosim_jax.compare import _dirname, assess_thresholds

    thresholds = assess_thresholds(args.budget_images, args.assess_points)
    specs = []
    for name in args.experiments:
        root = os.path.join(args.out + "_runs", name)
        common = {"experiment": name, "size": args.size, "seeds": args.seeds, "budget_images": args.budget_images,
                  "methods": args.methods, "approximations": args.approximations,
                  "assess_images": args.assess_images, "assess_points": args.assess_points,
                  "assess_models": args.assess_models, "evaluation_images": args.evaluation_images,
                  "evaluation_epochs": args.evaluation_epochs, "resume": args.resume, "gpus": args.gpus,
                  "compare_dir": os.path.join(root, "compare"),
                  "table6_dir": os.path.join(root, "table6")}
        runs = [(m, None) for m in args.methods if m != "autosimulate"]
        if "autosimulate" in args.methods:
            runs = [("autosimulate", a) for a in args.approximations] + runs
        table3 = [r for r in runs if r[0] != "autosimulate" or r[1] == args.approximations[0]]
        for seed in range(args.seeds):
            specs.append(dict(common, kind="psi0", name=f"{name}/start+reference/seed{seed}", seed=seed,
                              large_channels=args.large_channels))
            for m, a in runs:
                t3 = (m, a) in table3
                specs.append(dict(common, kind="run", name=f"{name}/{_dirname(m, a)}/seed{seed}", seed=seed,
                                  method=m, approximation=a, thresholds=thresholds if t3 else thresholds[-1:],
                                  large_channels=args.large_channels if t3 else 0,
                                  run_dir=os.path.join(common["compare_dir"], _dirname(m, a), f"seed{seed}")))
            for variant, regex in args.frozen.items():
                a = args.table5_approximation
                t5_dir = os.path.join(root, "table5", variant)
                specs.append(dict(common, kind="run", name=f"{name}/table5-{variant}/seed{seed}", seed=seed,
                                  method="autosimulate", approximation=a, approximations=(a,),
                                  methods=("autosimulate",), trainable=regex, variant=variant,
                                  thresholds=thresholds[-1:], large_channels=0, compare_dir=t5_dir,
                                  run_dir=os.path.join(t5_dir, _dirname("autosimulate", a), f"seed{seed}")))
    order = {"psi0": 1, "run": 2}
    specs.sort(key=lambda s: (-len(s.get("thresholds", ())) - bool(s.get("large_channels")), order[s["kind"]]))
    for i, s in enumerate(specs):
        s["index"] = i
        s["log"] = os.path.join(args.out + "_runs", s["experiment"], "logs", s["name"].split("/", 1)[1]
                                .replace("/", "_") + ".log")
    return specs


# ------------------------------------------------------------------------- the tables


def mean_std(values) -> dict:
    """``{"mean", "std" (ddof=1; 0 for one value), "per_seed"}`` of ``values``, ``None`` entries left out.

    Example:
      >>> mean_std([1.0, None, 3.0])
      {'mean': 2.0, 'std': 1.4142135623730951, 'per_seed': [1.0, None, 3.0]}
    """
    v = np.asarray([x for x in values if x is not None], float)
    return {"mean": float(v.mean()) if v.size else None, "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "per_seed": [None if x is None else float(x) for x in values]}


def _finish_compare(name: str, args, results: list[dict]) -> tuple[dict | None, str | None]:
    """``autosim compare --resume`` over the jobs' directory: every run finished, every assessment cached."""
    from autosim_jax import compare, get_experiment

    ok = {(r["method"], r["approximation"], r["seed"]) for r in results
          if r["kind"] == "run" and r.get("variant") is None and "error" not in r}
    seeds_ok = {r["seed"] for r in results if r["kind"] == "psi0" and "error" not in r}
    if len(seeds_ok) < args.seeds:
        return None, f"start/reference assessments missing for seeds {sorted(set(range(args.seeds)) - seeds_ok)}"
    full = lambda m, a: all((m, a, s) in ok for s in range(args.seeds))
    approximations = [a for a in args.approximations if "autosimulate" in args.methods and full("autosimulate", a)]
    methods = [m for m in args.methods if (m == "autosimulate" and approximations) or full(m, None)]
    if not methods:
        return None, "no method finished on every seed"
    out = os.path.join(args.out + "_runs", name, "compare")
    spec = {"budget_images": args.budget_images, "seeds": args.seeds, "size": args.size,
            "assess_images": args.assess_images, "assess_points": args.assess_points,
            "assess_models": args.assess_models, "evaluation_images": args.evaluation_images,
            "evaluation_epochs": args.evaluation_epochs, "methods": methods, "approximations": approximations}
    log_path = os.path.join(args.out + "_runs", name, "logs", "compare_resume.log")
    with open(log_path, "w") as log:
        md = io.StringIO()
        code = compare.run_compare(get_experiment(name), _compare_args(spec, out, resume=True), stdout=md, stderr=log)
    if code != 0:
        return None, f"autosim compare --resume exited {code} (see {log_path})"
    with open(os.path.join(out, "compare.json")) as f:
        return json.load(f), None


def _claims(table4: list[dict]) -> dict:
    """The paper's Sec. 5.3 claims on the approximations, checked on the means over seeds: a
    claim holds when its approximation is among those attaining the extreme (``attained_by``)."""
    rows = {r["approximation"]: r for r in table4}
    checks = (("approx_quadratic", "images_to_best", min, "approximate quadratic uses the fewest images to best"),
              ("approx_quadratic", "time_to_best", min, "approximate quadratic takes the least time to best"),
              ("linear", "fresh_test", max, "linear reaches the best fresh-model test mAP"),
              ("no_val", "fresh_test", min, "no-validation is worst (fresh-model test mAP)"))
    out = {}
    for approximation, key, extreme, claim in checks:
        values = {a: r[key]["mean"] for a, r in rows.items() if r[key]["mean"] is not None}
        if approximation not in values or len(values) < 2:
            continue
        best = extreme(values.values())
        attained = [a for a, v in values.items() if v == best]
        out[f"{approximation}_{key}"] = {"claim": claim, "holds": approximation in attained,
                                         "attained_by": attained, "values": values}
    return out


def tables(name: str, args, results: list[dict], cmp: dict | None) -> dict:
    """Tables 3-6 of one experiment from the jobs' results and compare.json."""
    mine = [r for r in results if r["experiment"] == name and "error" not in r]
    psi0 = {r["seed"]: r for r in mine if r["kind"] == "psi0"}
    runs = {(r["method"], r["approximation"], r.get("variant"), r["seed"]): r for r in mine if r["kind"] == "run"}
    out: dict = {"support_cells": next(iter(psi0.values()))["support"] if psi0 else None}
    seeds = range(args.seeds)

    def row(method, approximation, variant=None, cmp_row=None):
        rs = [runs.get((method, approximation, variant, s)) for s in seeds]
        get = lambda f: [f(r) if r else None for r in rs]
        last = str(args.budget_images)
        d = {"method": method, "approximation": approximation, "seeds_finished": sum(r is not None for r in rs),
             "fresh_val": mean_std(get(lambda r: r["assessed"].get(last, {}).get("val_metric"))),
             "fresh_test": mean_std(get(lambda r: r["assessed"].get(last, {}).get("test_metric"))),
             "mass_on_support": mean_std(get(lambda r: r["mass_on_support"])),
             "images_to_best": mean_std(get(lambda r: r["summary"]["images_to_best"])),
             "time_to_best": mean_std(get(lambda r: r["summary"]["time_to_best"])),
             "best_val_in_run": mean_std(get(lambda r: r["summary"]["best_val_metric"])),
             "time_total": mean_std(get(lambda r: r["summary"]["time"])),
             "images_total": mean_std(get(lambda r: r["summary"]["images"])),
             "step_seconds": {k: mean_std(get(lambda r, k=k: r["step_seconds"][k])) for k in
                              ("first_step", "time_render", "time_train", "time_other")}}
        if cmp_row is not None and "gap_closed" in cmp_row["aggregate"]:
            d["gap_closed_val"] = cmp_row["aggregate"]["gap_closed"]
            d["gap_closed_val"]["per_seed"] = [s.get("gap_closed") for s in cmp_row["seeds"]]
        return d

    cmp_rows = {(r["method"], r["approximation"]): r for r in (cmp or {}).get("rows", [])}
    first = args.approximations[0] if "autosimulate" in args.methods else None
    t3 = [(m, first if m == "autosimulate" else None) for m in args.methods]
    out["table3"] = [row(m, a, cmp_row=cmp_rows.get((m, a))) for m, a in t3]
    out["table4"] = [row("autosimulate", a, cmp_row=cmp_rows.get(("autosimulate", a))) for a in args.approximations
                     ] if "autosimulate" in args.methods else []
    out["claims"] = _claims(out["table4"])
    start = [psi0[s]["start_psi"] if s in psi0 else None for s in seeds]
    ref = [psi0[s]["reference_psi"] if s in psi0 else None for s in seeds]
    out["start_psi"] = {k: mean_std([p["small"][f"{k}_metric"] if p else None for p in start]) for k in ("val", "test")}
    out["reference_psi"] = {k: mean_std([p["small"][f"{k}_metric"] if p else None for p in ref])
                            for k in ("val", "test")}
    out["start_psi"]["mass_on_support"] = mean_std([p["mass_on_support"] if p else None for p in start])
    out["reference_psi"]["mass_on_support"] = mean_std([p["mass_on_support"] if p else None for p in ref])
    if cmp and cmp.get("assessment"):
        out["reach"] = cmp["assessment"].get("reach")

    # Table 5: the comparison's run of that approximation is the "all parameters" row.
    a5 = args.table5_approximation
    t5 = [dict(row("autosimulate", a5), variant="all", trainable=None)] if a5 in args.approximations else []
    t5 += [dict(row("autosimulate", a5, variant=v), variant=v, trainable=rx) for v, rx in args.frozen.items()]
    out["table5"] = t5

    # Table 6: the same psi assessed with the small (learning) detector and a larger one.
    if args.large_channels:
        last = str(args.budget_images)
        psis = [("start psi", [(p["small"], p.get("large")) if p else None for p in start]),
                ("reference psi", [(p["small"], p.get("large")) if p else None for p in ref])]
        for m, a in t3:
            rs = [runs.get((m, a, None, s)) for s in seeds]
            psis.append((f"{m} ({a})" if a else m, [(r["assessed"][last], r.get("large")) if r else None for r in rs]))

        def metric(per_seed, i, key):
            return [p[i][key] if p and p[i] else None for p in per_seed]

        t6 = []
        for label, per_seed in psis:
            entry = {"psi": label}
            for i, model in enumerate(("small", "large")):
                entry[model] = {k: mean_std(metric(per_seed, i, f"{k}_metric")) for k in ("val", "test")}
                trio = zip(metric(psis[0][1], i, "val_metric"), metric(per_seed, i, "val_metric"),
                           metric(psis[1][1], i, "val_metric"), strict=True)
                entry[f"gap_closed_val_{model}"] = mean_std([None if None in x or x[2] == x[0] else
                                                             (x[1] - x[0]) / (x[2] - x[0]) for x in trio])
            t6.append(entry)
        out["table6"] = {"small_base_channels": 32 if args.size == "gpu" else 8,
                         "large_base_channels": args.large_channels, "rows": t6}

    # The targets.
    learned = out["table3"][0] if out["table3"] and out["table3"][0]["method"] == "autosimulate" else None
    if learned:
        if name == "clevr-det":
            m = learned["mass_on_support"]["per_seed"]
            gs = learned.get("gap_closed_val", {}).get("per_seed", [])
            out["targets"] = {
                "mass_on_support_ge_0.7_every_seed": bool(m) and all(x is not None and x >= 0.7 for x in m),
                "gap_closed_ge_0.8_every_seed": bool(gs) and all(x is not None and x >= 0.8 for x in gs),
                "seeds": args.seeds}
        elif name == "digits-det":
            d = [None if a is None or b is None else a - b for a, b in
                 zip(learned["fresh_test"]["per_seed"], out["start_psi"]["test"]["per_seed"], strict=True)]
            out["targets"] = {"test_map_over_start": mean_std(d),
                              "beats_start_by_0.15_every_seed": all(x is not None and x >= 0.15 for x in d)}
    return out


def plot(name: str, t: dict, path: str, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 4)

    def bars(ax, labels, means, stds, ylabel, hlines=()):
        x = np.arange(len(labels))
        ax.bar(x, [m if m is not None else np.nan for m in means], yerr=stds, capsize=3, color="C0", alpha=0.8)
        for y, lab, c in hlines:
            if y is not None:
                ax.axhline(y, ls="--", lw=1, color=c, label=lab)
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(ylabel, fontsize=8)
        if hlines:
            ax.legend(fontsize=7)

    rows = t["table3"] + [r for r in t["table4"] if r["approximation"] != t["table4"][0]["approximation"]] \
        if t["table4"] else t["table3"]
    labels = [f"AS {r['approximation']}" if r["method"] == "autosimulate" else r["method"] for r in rows]
    hl = [(t["start_psi"]["test"]["mean"], "start psi", "gray"), (t["reference_psi"]["test"]["mean"], "reference", "k")]
    bars(axes[0], labels, [r["fresh_test"]["mean"] for r in rows], [r["fresh_test"]["std"] for r in rows],
         "fresh-model test mAP@0.5", hl)
    axes[0].set_title("Tables 3-4: final psi", fontsize=9)
    def not_run(ax, text):
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])

    if t["support_cells"]:
        bars(axes[1], labels, [r["mass_on_support"]["mean"] for r in rows],
             [r["mass_on_support"]["std"] for r in rows], "mass on the target's support cells",
             [(t["start_psi"]["mass_on_support"]["mean"], "start psi", "gray"), (0.7, "target 0.7", "r")])
    else:  # digits-det: the validation images are real, no cell of the categorical is the target's
        not_run(axes[1], "no target cells:\nthe validation and test\nimages are real")
    axes[1].set_title("Tables 3-4: learned categorical", fontsize=9)
    ax = axes[2]
    if t["table5"]:
        x = np.arange(len(t["table5"]))
        bottom = np.zeros(len(x))
        for k, c in (("time_render", "C2"), ("time_train", "C1"), ("time_other", "C3")):
            v = np.array([r["step_seconds"][k]["mean"] or 0.0 for r in t["table5"]])
            ax.bar(x, v, bottom=bottom, color=c, label=k.replace("time_other", "time_outer"))
            bottom += v
        ax.set_xticks(x, [r["variant"] for r in t["table5"]], fontsize=8)
        ax.set_ylabel("median seconds per step", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
        ax2 = ax.twinx()
        ax2.errorbar(x, [r["fresh_test"]["mean"] if r["fresh_test"]["mean"] is not None else np.nan
                         for r in t["table5"]], [r["fresh_test"]["std"] for r in t["table5"]], color="k", marker="o",
                     ls="none", capsize=3)
        ax2.set_ylabel("fresh-model test mAP@0.5 (dots)", fontsize=8)
    ax.set_title("Table 5: freezing layers", fontsize=9)
    ax = axes[3]
    if "table6" in t:
        rows6 = t["table6"]["rows"]
        x = np.arange(len(rows6))
        for off, key, lab in ((-0.2, "small", f"{t['table6']['small_base_channels']} ch (learns psi)"),
                              (0.2, "large", f"{t['table6']['large_base_channels']} ch")):
            ax.bar(x + off, [r[key]["test"]["mean"] if r[key]["test"]["mean"] is not None else np.nan
                             for r in rows6], 0.4, yerr=[r[key]["test"]["std"] for r in rows6], capsize=3, label=lab)
        ax.set_xticks(x, [r["psi"] for r in rows6], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("fresh-model test mAP@0.5", fontsize=8)
        ax.legend(fontsize=7)
    else:
        not_run(ax, "not run\n(--large-channels 0)")
    ax.set_title("Table 6: network size", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


def _print_tables(name: str, t: dict) -> None:
    f = lambda d: "-" if d["mean"] is None else f"{d['mean']:.3f}±{d['std']:.3f}"
    _log(f"\n== {name}: start psi test mAP {f(t['start_psi']['test'])}, reference {f(t['reference_psi']['test'])}; "
         f"support {t['support_cells']}")
    _log(f"{'row':<28} {'fresh test':>13} {'G (val)':>13} {'mass':>13} {'img->best':>10} {'s->best':>9}")
    for r in t["table3"] + t["table4"]:
        label = f"AS {r['approximation']}" if r["method"] == "autosimulate" else r["method"]
        _log(f"{label:<28} {f(r['fresh_test']):>13} {f(r.get('gap_closed_val', {'mean': None})):>13} "
             f"{f(r['mass_on_support']):>13} {r['images_to_best']['mean'] or 0:>10.0f} "
             f"{r['time_to_best']['mean'] or 0:>9.1f}")
    for r in t["table5"]:
        s = r["step_seconds"]
        _log(f"T5 {r['variant']:<25} test {f(r['fresh_test'])}  step train {f(s['time_train'])} s, outer "
             f"{f(s['time_other'])} s")
    for r in t.get("table6", {}).get("rows", []):
        _log(f"T6 {r['psi']:<25} small {f(r['small']['test'])}  large {f(r['large']['test'])}")
    for c in t["claims"].values():
        _log(f"claim {c['claim']}: {'holds' if c['holds'] else 'does not hold'} (extreme: "
             f"{', '.join(c['attained_by'])})")
    if "targets" in t:
        _log(f"targets: {t['targets']}")


# -------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", default="clevr-det", help="comma list of clevr-det, digits-det")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--budget-images", type=int, default=3840, help="images each run may render")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--approximations", default=",".join(APPROXIMATIONS), help="the first is Table 3's AutoSimulate")
    p.add_argument("--assess-images", type=int, default=None, help="fresh-model images (default: the experiment's)")
    p.add_argument("--assess-points", type=int, default=3, help="Table 3 rows assessed after budget/2^(P-1) .. budget")
    p.add_argument("--assess-models", type=int, default=1,
                   help="fresh detectors per assessed psi, their mean (>= 4 on clevr-det: docs/detection.md, "
                        "session 16)")
    p.add_argument("--evaluation-images", type=int, default=None,
                   help="random search and BO: images per evaluation (autosim compare's flag; default: the "
                        "experiment's baseline_evaluation, else K)")
    p.add_argument("--evaluation-epochs", type=int, default=None,
                   help="random search and BO: fine-tuning epochs per evaluation (default: the experiment's)")
    p.add_argument("--table5-approximation", default="exact_quadratic")
    p.add_argument("--frozen", default=FROZEN, help="Table 5: NAME=REGEX;... (regex over parameter paths; '' none)")
    p.add_argument("--large-channels", type=int, default=64, help="Table 6: the larger detector's UNet base channels "
                   "(0: no Table 6)")
    p.add_argument("--jobs", type=int, default=None, help="processes at once (default: one per job, at most the cores)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to spread the jobs over (0: leave devices alone)")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds after which unfinished jobs are stopped")
    p.add_argument("--resume", action="store_true", help="reuse the finished runs and assessments under OUT_runs")
    p.add_argument("--smoke", action="store_true", help="tiny cpu run: " + ", ".join(f"{k}={v}" for k, v in
                                                                                     SMOKE.items()))
    p.add_argument("--out", required=True, help="output prefix: OUT.json, OUT_EXPERIMENT.png, OUT_runs/")
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    args.experiments = [e for e in args.experiments.split(",") if e]
    args.methods = tuple(m for m in args.methods.split(",") if m)
    args.approximations = tuple(a for a in args.approximations.split(",") if a)
    args.frozen = _parse_frozen(args.frozen) if isinstance(args.frozen, str) else args.frozen
    bad = [e for e in args.experiments if e not in ("clevr-det", "digits-det")]
    bad += [m for m in args.methods if m not in METHODS] + [a for a in args.approximations if a not in APPROXIMATIONS]
    if (bad or not args.methods or args.seeds < 1 or args.budget_images < 1 or args.assess_points < 1
            or args.assess_models < 1):
        p.error(f"unknown or invalid: {bad or 'seeds, budget, assess points or assess models'}")
    if "bo" in args.methods:
        try:
            import bayes_opt  # noqa: F401
        except ImportError:
            p.error("method bo needs the bayesian-optimization package (carry its wheel, docs/detection.md), or drop "
                    "bo from --methods")
    if not args.resume and any(os.path.exists(os.path.join(args.out + "_runs", e)) for e in args.experiments):
        p.error(f"{args.out}_runs already holds runs: pass --resume to reuse them, or another --out")
    for var, value in (("XLA_PYTHON_CLIENT_PREALLOCATE", "false"), ("OMP_NUM_THREADS", "1"),
                       ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1")):
        os.environ.setdefault(var, value)  # inherited by the job processes: one core each, shared GPUs
    from autosim_jax.cli import deterministic_gpu_ops

    deterministic_gpu_ops()  # inherited too: a job's run is a function of its seed on the GPU (from session 22 on)
    specs = plan(args)
    for e in args.experiments:
        os.makedirs(os.path.join(args.out + "_runs", e, "logs"), exist_ok=True)
    jobs = args.jobs or min(len(specs), os.cpu_count() or 1)
    t0 = time.perf_counter()
    _log(f"detection_tables: {len(specs)} jobs, {jobs} at a time, gpus {args.gpus}, size {args.size}, seeds "
         f"{args.seeds}, budget {args.budget_images} images, deadline {args.deadline:.0f} s")
    results, pending = [], {s["name"]: s for s in specs}
    pool = mp.get_context("spawn").Pool(jobs, maxtasksperchild=1)
    try:
        it = pool.imap_unordered(_job, specs)
        while pending:
            try:
                r = it.next(timeout=max(1.0, args.deadline - (time.perf_counter() - t0)))
            except mp.TimeoutError:
                _log(f"[{time.perf_counter() - t0:7.1f} s] deadline: stopping {len(pending)} unfinished jobs")
                break
            pending.pop(r["name"])
            results.append(r)
            status = f"FAILED {r['error'][:300]}" if "error" in r else "done"
            _log(f"[{time.perf_counter() - t0:7.1f} s] {status} {r['name']} ({r['seconds']:.0f} s) "
                 f"{len(results)}/{len(specs)}")
    finally:
        pool.terminate()
        pool.join()
    results += [{**_identity(s), "error": "not finished before --deadline", "seconds": None} for s in pending.values()]
    jobs_seconds = time.perf_counter() - t0

    import jax

    import autosim_jax as asj

    per_experiment = {}
    for name in args.experiments:
        _log(f"[{time.perf_counter() - t0:7.1f} s] {name}: autosim compare --resume (every run and assessment cached)")
        cmp, why = _finish_compare(name, args, [r for r in results if r["experiment"] == name])
        t = tables(name, args, results, cmp)
        t["compare"] = cmp
        t["compare_dir"] = os.path.join(args.out + "_runs", name, "compare")
        if why:
            t["compare_error"] = why
            _log(f"  {name}: no compare.json: {why}")
        per_experiment[name] = t
        for kept in SHOWN_COMPARE_FILES:  # beside OUT.json: the tables and plots a reader opens first
            if os.path.exists(os.path.join(t["compare_dir"], kept)):
                shutil.copyfile(os.path.join(t["compare_dir"], kept), f"{args.out}_{name}_{kept}")
        plot(name, t, f"{args.out}_{name}.png", f"{name} ({args.size}), {args.seeds} seed(s), budget "
             f"{args.budget_images} images")
        _print_tables(name, t)
    device = jax.devices()[0]
    record = {
        "benchmark": "detection_tables", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(__file__, argv),
        "device": f"{device.platform}:{device.device_kind}", "devices": jax.device_count(), "gpus_used": args.gpus,
        "host_cpus": os.cpu_count(), "jobs_at_once": jobs, "jax_version": jax.__version__,
        "autosim_jax": asj.__version__, "precision": f"float32, matmul precision "
        f"{jax.config.jax_default_matmul_precision or 'default'}",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "timing": "time_* and *_to_best: seconds of render + train + other (psi update, validation) per compare's "
                  "accounting, measured while the other jobs shared the CPU cores and GPUs",
        "experiments": per_experiment,
        "jobs": [{k: v for k, v in r.items() if k in ("name", "seconds", "error")} for r in results],
        "failed": [r for r in results if "error" in r],
        "jobs_seconds": jobs_seconds, "wall_seconds": time.perf_counter() - t0,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    _log(f"[{time.perf_counter() - t0:7.1f} s] wrote {args.out}.json, {args.out}_*.png and {args.out}_runs/ "
         f"({len(record['failed'])} failed jobs)")
    return 0 if not record["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
