"""``autosim compare``: AutoSimulate and the black-box baselines head to head (paper Tables 2, 4).

Every method runs on the same experiment, model, fine-tuning options, image budget and seeds,
one after the other, into ``--out``::

    METHOD/seedS/          one run directory per method and seed: metrics.jsonl (one line per
                           step, with psi), checkpoint.npz, config.json, summary.json,
                           assessed.json; AutoSimulate's are written by ``autosim run`` itself
    start_psi/seedS/       assessed.json of the start psi
    compare.json           every row below, with per-seed values, the assessment and reach table
    compare.md             Table 2 (the methods, AutoSimulate with its first approximation),
                           fresh models along the run, images to reach each baseline's best,
                           and, with --approximations, Table 4
    val_vs_images.png, val_vs_time.png, assessed_vs_images.png

Accounting, identical for all methods: ``images`` are counted where the simulator renders,
``time`` is the sum of the steps' render, train and other (psi update, validation) seconds,
excluding the test metric (a monitor) and file I/O. The table gives, per method, mean and
standard deviation over seeds of: the best validation metric over all steps, the images
rendered and the time spent when it was reached, the test metric of that same model, and the
totals. A run stops at the first step that ends with ``images >= --budget-images`` (a step of
LTS renders ``samples x K`` images, so it may overshoot by less than one step; the totals
show it).

Curves: the best validation metric so far against images and against time, the mean over
seeds with the min-max band shaded (each seed interpolated, as a step function, on a common
grid).

Fresh-model assessment (the fair measure of an answer, on by default): a fresh task model is
trained on ``--assess-images`` images x 10 epochs from a psi and evaluated on the validation
and test sets. Table 2's runs are assessed after ``budget / 2^(P-1), ..., budget`` images
(``--assess-points P``), the start psi once per seed, Table 4's other approximations at the
budget. The images-to-reach table (the paper's headline: AutoSimulate reaches Bayesian
optimisation's best with >= 3x fewer images, REINFORCE's with >= 5x fewer) compares these
mean-over-seeds curves; the in-run best-validation column cannot, because AutoSimulate and
LTS warm-start the task model and random search and BO do not. Assessments are cached in each
run directory, so ``--resume`` of a finished comparison only trains what is missing.

Example:
  >>> main(["compare", "digits-sim2real", "--budget-images", "2048", "--out", "/tmp/c"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import time

import numpy as np

from .config import APPROXIMATIONS
from .checkpoint import save_checkpoint
from .cli import (RunArgs, UsageError, _psi_record, _write_json, psi_from_record,
                  resolve_experiment, resume_state, run_experiment)
from .experiments import make_assessor

METHODS = ("autosimulate", "lts", "bo", "random")
DONE = "summary.json"


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
    experiment_spec: str | None = None
    assess_images: int | None = None  # None: 16 x dataset_size; 0: no assessment at all
    assess_points: int = 4  # Table 2 rows: psi assessed after budget/2^(P-1), ..., budget/2, budget images


def _split_choices(text: str, valid: tuple[str, ...], flag: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise UsageError(f"{flag}: unknown {bad or '(empty)'}; valid choices are {list(valid)} (comma-separated).")
    return tuple(dict.fromkeys(items))


def _validate(experiment, args: CompareArgs) -> tuple[str, list[tuple[str, str | None]]]:
    renderer = args.renderer or experiment.renderers[0]
    if renderer not in experiment.renderers:
        raise UsageError(f"renderer {renderer!r} is not one of experiment {experiment.name!r}'s renderers "
                         f"{list(experiment.renderers)}.")
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise UsageError(f"--methods: unknown {bad or '(empty)'}; valid choices are {list(METHODS)}.")
    for a in args.approximations or ():
        if a not in APPROXIMATIONS:
            raise UsageError(f"--approximations: unknown {a!r}; valid choices are {list(APPROXIMATIONS)}.")
    if args.assess_images is not None and args.assess_images < 0:
        raise UsageError(f"--assess-images must be >= 0 (0 skips the assessment), got {args.assess_images}.")
    if args.assess_points < 1:
        raise UsageError(f"--assess-points must be >= 1 (1: the final psi only), got {args.assess_points}.")
    if args.budget_images is None or args.budget_images < 1:
        raise UsageError(f"--budget-images must be >= 1, got {args.budget_images}.")
    if args.seeds < 1 or args.lts_samples < 2 or not args.search_radius > 0:
        raise UsageError(f"need --seeds >= 1, --lts-samples >= 2 and --search-radius > 0, got {args.seeds}, "
                         f"{args.lts_samples}, {args.search_radius}.")
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


def _label(method: str, approximation: str | None) -> str:
    return f"autosimulate ({approximation})" if approximation else method


def _dirname(method: str, approximation: str | None) -> str:
    return f"autosimulate-{approximation}" if approximation else method


def _lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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


def _run_autosimulate(experiment, args: CompareArgs, renderer, approximation, seed, out, config, stderr) -> list[dict]:
    k = config.dataset_size
    run_args = RunArgs(approximation=approximation, iterations=math.ceil(args.budget_images / k),
                       budget_images=args.budget_images, seed=seed, renderer=renderer, out=out,
                       resume=args.resume and os.path.exists(os.path.join(out, "config.json")),
                       experiment_spec=args.experiment_spec, assess_images=0)
    if not (run_args.resume and os.path.exists(os.path.join(out, DONE))):
        code = run_experiment(experiment, run_args, stdout=io.StringIO(), stderr=stderr)
        if code != 0:
            raise RuntimeError(f"autosim run exited with {code} for {out}")
    per_step = config.finetune_epochs * (k // config.batch_size)
    return [_common(r, per_step) for r in _lines(os.path.join(out, "metrics.jsonl"))]


def _build_baseline(method, setup, args: CompareArgs, budget_evaluations: int):
    from . import baselines

    kw = dict(config=setup.config, radius=args.search_radius)
    if method == "lts":
        kw.update(samples_per_step=args.lts_samples, outer_optimizer=setup.config.outer_optax())
    if method == "bo":
        kw.update(max_evaluations=budget_evaluations + 1)
    return baselines.BASELINES[method](setup.simulator, setup.model, setup.task, setup.val_data, setup.test_data, **kw)


def _run_baseline(experiment, args: CompareArgs, renderer, method, seed, out, stderr) -> list[dict]:
    metrics_path, ckpt_path = os.path.join(out, "metrics.jsonl"), os.path.join(out, "checkpoint.npz")
    if args.resume and os.path.exists(os.path.join(out, DONE)):
        return [_common(r) for r in _lines(metrics_path)]
    setup = experiment.build(renderer=renderer, seed=seed)
    k = setup.config.dataset_size
    box = _build_baseline(method, setup, args, math.ceil(args.budget_images / k))
    state = box.init(seed)
    os.makedirs(out, exist_ok=True)
    state, records = resume_state(state, ckpt_path, metrics_path, args.resume)
    _write_json(os.path.join(out, "config.json"), {
        "experiment": args.experiment_spec or experiment.name, "renderer": renderer, "method": method, "seed": seed,
        "budget_images": args.budget_images, "options": setup.config.to_dict(),
        "search_radius": args.search_radius, "lts_samples": args.lts_samples if method == "lts" else None,
        "search_space": list(box.space.names),
    })
    with open(metrics_path, "a") as f:
        while int(state.images) < args.budget_images:
            state, info = box.step(state)
            # psi: the method's answer after this step (assessed later, as AutoSimulate's records).
            record = {"step": int(state.step), **info, "psi": _psi_record(state.psi)}
            f.write(json.dumps(record) + "\n")  # metrics first, then the checkpoint (as autosim run)
            f.flush()
            os.fsync(f.fileno())
            save_checkpoint(ckpt_path, state)
            records.append(record)
    _write_json(os.path.join(out, DONE), {"steps": int(state.step), "images": int(state.images),
                                          "evaluations": int(state.evaluations)})
    return [_common(r) for r in records]


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
    return {c: _stats([s[c] for s in per_seed]) for c in COLUMNS + ASSESSED if c in per_seed[0]}


def _markdown(rows: list[dict], metric: str, title: str) -> str:
    assessed = all("assessed_val_metric" in r["aggregate"] for r in rows)
    head = (f"| method | time to best [s] | images to best | best val {metric} | test {metric} at best | "
            "images | evaluations | train steps | time [s] (render / train / other) |")
    if assessed:
        head += f" fresh model on final psi: val / test {metric} |"
    lines = [f"### {title}", "", head, "|" + " --- |" * (10 if assessed else 9)]

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
            + (f" {pm(r, 'assessed_val_metric', '.4f')} / {pm(r, 'assessed_test_metric', '.4f')} |" if assessed else ""))
    return "\n".join(lines) + "\n"


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


# ------------------------------------------------------------ fresh-model assessment

ASSESSED_FILE = "assessed.json"
# The paper's headline (Sec. 5.1, Table 2): AutoSimulate reaches BO's best validation metric
# with >= 3x fewer rendered images and REINFORCE's (here LTS) with >= 5x fewer.
TARGETS = {"bo": 3.0, "lts": 5.0}


def assess_thresholds(budget: int, points: int) -> list[int]:
    """Image counts after which a run's psi is assessed: ``budget / 2^(points-1), ..., budget``.

    Example:
      >>> assess_thresholds(3840, 4)
      [480, 960, 1920, 3840]
    """
    return [budget // 2**j for j in range(points - 1, -1, -1)]


def _cached(path: str, protocol: dict) -> dict:
    """The assessments stored at ``path`` if they were made with the same protocol, else ``{}``."""
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if all(stored.get(k) == v for k, v in protocol.items()):
            return stored["results"]
    return {}


def _cached_assessment(path: str, key: str, protocol: dict, compute) -> dict:
    """``compute()``, stored under ``key`` in the assessment file ``path`` (or read back from it).

    ``protocol`` (``{"images": n, "epochs": e}``) must match the stored file's, else it is redone.
    """
    cache = _cached(path, protocol)
    if key not in cache:
        cache[key] = compute()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_json(path, {**protocol, "results": cache})
    return cache[key]


def _assess_run(run_dir, records, points, psi0, assess, seed, protocol) -> list[dict]:
    """Fresh-model metrics of the psi a run held once it had rendered each of ``points`` images.

    That psi is the one after the first step that reached the count (for the budget itself,
    the run's final psi). Results are cached in ``RUN/assessed.json`` by step, so
    ``--resume`` does not train them again.
    """
    curve = []
    for t in points:
        record = next((r for r in records if r["images"] >= t), records[-1])
        result = _cached_assessment(os.path.join(run_dir, ASSESSED_FILE), str(record["step"]), protocol,
                                    lambda: assess(psi_from_record(psi0, record["psi"]), seed))
        curve.append({"images": t, "step": record["step"], "images_rendered": record["images"], **result})
    return curve


def _assess_start(out, psi0, assess, seed, protocol) -> dict:
    """The same assessment of the start psi (shared by all methods), cached in ``OUT/start_psi``."""
    return _cached_assessment(os.path.join(out, "start_psi", f"seed{seed}", ASSESSED_FILE), "0", protocol,
                              lambda: assess(psi0, seed))


def _mean_std(results: list[dict]) -> dict:
    return {name: _stats([r[key] for r in results]) for key, name in (("val_metric", "val"), ("test_metric", "test"))}


def _aggregate_curve(per_seed: list[list[dict]]) -> list[dict]:
    return [{"images": points[0]["images"], **_mean_std(list(points))} for points in zip(*per_seed)]


def reach_table(rows: list[dict], start: float, higher: bool) -> list[dict]:
    """Images AutoSimulate needs to reach each baseline's best assessed metric (paper Table 2).

    On the mean-over-seeds curves of fresh-model validation metrics: a baseline's best is its
    best point, reached after ``baseline_images``; AutoSimulate's ``images`` are those of its
    first point at least as good (``None`` if none is); ``ratio = baseline_images / images``.
    A baseline whose best does not beat ``start`` (the start psi's mean) gets no ratio: there
    is nothing to reach. The grid is geometric (factor 2), so a ratio is a power of two and
    bounds the truth only to within a factor of 2; when both reach at the grid's first point
    the ratio is "at least 1" (``resolved`` is False).

    Example:
      >>> row = lambda m, vals: {"method": m, "label": m, "aggregate": {"assessed_curve": [
      ...     {"images": i, "val": {"mean": v, "std": 0.0}} for i, v in zip((100, 200, 400), vals)]}}
      >>> reach_table([row("autosimulate", (0.3, 0.5, 0.6)), row("bo", (0.2, 0.4, 0.45))], 0.1, True)[0]["ratio"]
      2.0
    """
    ours = next((r for r in rows if r["method"] == "autosimulate"), None)
    if ours is None:
        return []
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
        ratio = best["images"] / reached["images"] if reached and beats_start else None
        table.append({
            "baseline": r["label"], "autosimulate": ours["label"], "baseline_best_val": best["val"]["mean"],
            "baseline_images": best["images"], "beats_start": bool(beats_start),
            "images": reached["images"] if reached else None, "ratio": ratio,
            "resolved": ratio is not None and reached["images"] != mine[0]["images"],
            "target_ratio": TARGETS.get(r["method"]),
        })
    return table


def _assessed_markdown(rows: list[dict], assessment: dict, metric: str) -> str:
    ts = assessment["thresholds"]
    start = assessment["start_psi"]["val"]
    lines = [f"### Fresh models along the run: val {metric} (mean ± std over seeds)", "",
             f"A fresh model trained on {assessment['images']} images x {assessment['epochs']} epochs from the psi "
             "each method held after N images (the same protocol for every method; the start psi is column 0).", "",
             "| method | 0 | " + " | ".join(str(t) for t in ts) + " |", "|" + " --- |" * (len(ts) + 2)]
    for r in rows:
        cells = [f"{p['val']['mean']:.4f} ± {p['val']['std']:.4f}" for p in r["aggregate"]["assessed_curve"]]
        lines.append(f"| {r['label']} | {start['mean']:.4f} ± {start['std']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reach_markdown(reach: list[dict], metric: str) -> str:
    if not reach:
        return ""
    lines = [f"### Images to reach each baseline's best fresh-model val {metric}", "",
             "| baseline | its best | after images | AutoSimulate reaches it after | ratio | target |",
             "| --- | --- | --- | --- | --- | --- |"]
    for e in reach:
        got = f"{e['images']}" if e["images"] else "not reached"
        if not e["beats_start"]:
            ratio, verdict = "- (never beat the start psi)", "nothing to reach"
        elif e["ratio"] is None:
            ratio, verdict = "-", "missed"
        else:
            ratio = f"{e['ratio']:.0f}x" if e["resolved"] else f">= {e['ratio']:.0f}x (first grid point)"
            # An unresolved ratio is a lower bound: enough to meet a target, not to miss it.
            met = e["target_ratio"] and e["ratio"] >= e["target_ratio"]
            verdict = "met" if met else ("missed" if e["resolved"] else "unresolved")
        target = f">= {e['target_ratio']:.0f}x: {verdict}" if e["target_ratio"] else "-"
        lines.append(f"| {e['baseline']} | {e['baseline_best_val']:.4f} | {e['baseline_images']} | {got} | {ratio} | "
                     f"{target} |")
    lines += ["", f"AutoSimulate here is {reach[0]['autosimulate']}. The image grid is geometric (factor 2), so a "
              "ratio is known only to within a factor of 2; the spread over seeds is in the table above."]
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


def run_compare(experiment, args: CompareArgs, *, stdout=None, stderr=None) -> int:
    """Runs ``autosim compare``; returns the exit code.

    Raises:
      UsageError: for bad options or a non-empty ``--out`` without ``--resume``.
    """
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    renderer, runs = _validate(experiment, args)
    out = args.out or os.path.join("runs", f"compare-{experiment.name}")
    if not args.resume and os.path.isdir(out) and os.listdir(out):
        raise UsageError(f"{out} is not empty; pass --resume to continue that comparison, or another --out.")
    setup0 = experiment.build(renderer=renderer, seed=0)
    psi0 = setup0.simulator.distribution.init()
    metric, higher = setup0.task.metric_name, bool(setup0.task.higher_is_better)
    assess_images = setup0.assess_images if args.assess_images is None else args.assess_images
    protocol = {"images": assess_images, "epochs": setup0.assess_epochs}
    thresholds = assess_thresholds(args.budget_images, args.assess_points)
    first_approximation = next((a for m, a in runs if m == "autosimulate"), None)
    table2 = [(m, a) for m, a in runs if m != "autosimulate" or a == first_approximation]
    assessors: dict[int, object] = {}

    def assessor(seed: int):
        if seed not in assessors:  # one compilation per seed (the model's initialisation differs)
            assessors[seed] = make_assessor(experiment.build(renderer=renderer, seed=seed), num_images=assess_images,
                                            epochs=setup0.assess_epochs)
        return assessors[seed]

    def assess(psi, seed: int) -> dict:  # builds the seed's assessor only on a cache miss
        return assessor(seed)(psi, seed)

    os.makedirs(out, exist_ok=True)
    rows, curves = [], {}
    for method, approximation in runs:
        label = _label(method, approximation)
        per_seed, curves[label] = [], []
        for seed in range(args.seeds):
            run_dir = os.path.join(out, _dirname(method, approximation), f"seed{seed}")
            print(f"autosim compare: {label}, seed {seed} -> {run_dir}", file=stderr)
            t0 = time.perf_counter()
            if method == "autosimulate":
                records = _run_autosimulate(experiment, args, renderer, approximation, seed, run_dir, setup0.config, stderr)
            else:
                records = _run_baseline(experiment, args, renderer, method, seed, run_dir, stderr)
            s = summarize_run(records, higher)
            if assess_images:
                # The fair test of the answers: fresh models trained on equal budgets from the psi
                # each method held (the best-validation column mixes in how each method trains).
                points = thresholds if (method, approximation) in table2 else thresholds[-1:]
                curve = _assess_run(run_dir, records, points, psi0, assess, seed, protocol)
                s.update(assessed_val_metric=curve[-1]["val_metric"], assessed_test_metric=curve[-1]["test_metric"],
                         assessed_curve=curve)
            s.update(seed=seed, wall_time=time.perf_counter() - t0)
            per_seed.append(s)
            curves[label].append({
                "images": [r["images"] for r in records],
                "time": np.cumsum([r["time_render"] + r["time_train"] + r["time_other"] for r in records]).tolist(),
                "val": np.array([r["val_metric"] for r in records], float),
            })
        rows.append({"label": label, "method": method, "approximation": approximation, "seeds": per_seed,
                     "aggregate": _aggregate(per_seed), "table2": (method, approximation) in table2})
    table2_rows = [r for r in rows if r["table2"]]
    assessment = None
    if assess_images:
        start = [_assess_start(out, psi0, assess, seed, protocol) for seed in range(args.seeds)]
        assessment = {"images": assess_images, "epochs": setup0.assess_epochs, "thresholds": thresholds,
                      "start_psi": {"seeds": start, **_mean_std(start)}}
        for r in table2_rows:
            r["aggregate"]["assessed_curve"] = _aggregate_curve([s["assessed_curve"] for s in r["seeds"]])
        assessment["reach"] = reach_table(table2_rows, assessment["start_psi"]["val"]["mean"], higher)
    result = {
        "experiment": args.experiment_spec or experiment.name, "renderer": renderer, "metric": metric,
        "higher_is_better": higher, "budget_images": args.budget_images, "seeds": args.seeds,
        "options": setup0.config.to_dict(), "lts_samples": args.lts_samples, "search_radius": args.search_radius,
        "rows": rows, "assessment": assessment,
    }
    _write_json(os.path.join(out, "compare.json"), result)
    md = [f"# {result['experiment']}: methods head to head", "",
          f"Budget {args.budget_images} images, {args.seeds} seed(s); mean ± standard deviation over seeds. "
          "Time: render + train + other, without the test metric and file I/O."
          + (f" Last column: fresh models trained on {assess_images} images x {setup0.assess_epochs} epochs from each "
             "run's final psi (the fair comparison of the answers)." if assess_images else ""), "",
          _markdown(table2_rows, metric, "Table 2: methods")]
    if assessment:
        md += [_assessed_markdown(table2_rows, assessment, metric),
               _reach_markdown(assessment["reach"], metric)]
    if args.approximations:
        md.append(_markdown([r for r in rows if r["method"] == "autosimulate"], metric,
                            "Table 4: approximations of AutoSimulate"))
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write("\n".join(md))
    _plot(out, rows, curves, metric, higher)
    if assessment:
        _plot_assessed(out, table2_rows, assessment, metric)
    print("\n".join(md), file=stdout)
    return 0


# ------------------------------------------------------------------------------- CLI


def add_compare_parser(sub) -> None:
    """Adds ``autosim compare`` to the CLI's subparsers."""
    p = sub.add_parser(
        "compare", help="run AutoSimulate and the baselines (LTS, BO, random search) head to head",
        description="Run each method on an experiment under the same image budget and seeds, then write "
                    "compare.md / compare.json (paper Tables 2 and 4) and plots of the validation metric "
                    "against images and time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("experiment", metavar="EXPERIMENT", help="a registered experiment or module:attr")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for every method")
    p.add_argument("--budget-images", type=int, required=True, metavar="N", help="images each run may render")
    p.add_argument("--approximations", default=None,
                   help=f"comma-separated AutoSimulate approximations (of {','.join(APPROXIMATIONS)}); "
                        f"adds the Table 4 ablation (default: {APPROXIMATIONS[0]} only)")
    p.add_argument("--renderer", default=None, help="one of the experiment's renderers (default: its first)")
    p.add_argument("--lts-samples", type=int, default=4, help="LTS policy samples (objective evaluations) per step")
    p.add_argument("--search-radius", type=float, default=3.0,
                   help="half-width of the box around the start psi searched by LTS/BO/random (see baselines/space.py)")
    p.add_argument("--out", default=None, help="output directory (default runs/compare-EXPERIMENT)")
    p.add_argument("--resume", action="store_true", help="continue a comparison in --out (finished runs are reused)")
    p.add_argument("--assess-images", type=int, default=None, metavar="N",
                   help="train fresh models on N images from each run's psi (default 16 x dataset size; 0 skips)")
    p.add_argument("--assess-points", type=int, default=4, metavar="P",
                   help="assess Table 2's runs after budget/2^(P-1), ..., budget/2, budget images (Table 4's "
                        "other approximations at the budget only); gives the images-to-reach table")


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
            search_radius=ns.search_radius, experiment_spec=ns.experiment, assess_images=ns.assess_images,
            assess_points=ns.assess_points)
        return run_compare(experiment, args)
    except UsageError as err:
        print(f"autosim compare: error: {err}", file=sys.stderr)
        return 2
