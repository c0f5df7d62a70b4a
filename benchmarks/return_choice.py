"""Which psi should a run return? The final one, the one picked by validation, or an average?

Issue 13 asks that the psi a run returns be never more than 0.05 G below the best psi seen
along it. ``psi_learning.py`` assesses every run at several steps with fresh models, and also
records the assessed point whose models score best on the *validation* set
(``selected_by_val``) and the psi averaged over the run's second half
(``average_second_half``). This script reads every record matching ``--records`` and, over
all runs with at least two assessed points, counts how often each choice is within ``--tol``
of the best assessed point (by test G) and their mean G. No device is needed.

The validation pick is judged with the same fresh models that picked it, so its G is
optimistic by up to about one assessment's noise when the candidates are close (one psi's G
carries about 0.07 with 4 models per psi on clevr-seg at gpu size). So where a record's assessed
steps each hold an even number of models, the pick is also cross-fitted (half the models pick,
the others judge, then the halves swap; :func:`record_crossfit_runs`) and reported paired with the
final psi judged by the same halves. Each choice is reported minus the final psi too, paired by run.

Usage::

    python benchmarks/return_choice.py --records 'benchmarks/results/psi_learning/clevr-seg_gpu_*.json*' \\
        --out benchmarks/results/psi_learning/return_choice_clevr-seg_gpu

Writes ``OUT.json`` (every run's G at its points and for each choice, and the summary; with
``--reassessed`` also ``OUT.png``, G by step per run beside the final psi's and the pick's).

``--reassessed`` reads ``reassess.py`` records instead, whose every candidate step has an even
number of new fresh models with their single metrics, and judges the validation pick of
``autosim run --select-every`` without the winner's curse: the first half of each candidate's
models pick (the best mean validation metric), the other half judge the pick on the test set,
and then the halves swap roles (a cross-fitted pick; the final psi is judged by the same halves).
Records that assess the same step of the same run with other keys pool their models
(:func:`pool_models`), one record's models after the other's.
G needs each seed's start and reference, read from the ``psi_learning.py`` records the
reassessment took them from (``--baselines``, its ``--recorded-baselines``)::

    python benchmarks/return_choice.py \
        --reassessed 'benchmarks/results/psi_learning/reassess_digits-det_gpu_steps_s*.json' \
        --baselines 'benchmarks/results/psi_learning/digits-det_gpu_120steps_det_s*.json.gz' \
        --out benchmarks/results/psi_learning/return_choice_digits-det_gpu_crossfit

Example:
  >>> g = {"30": {"per_seed": [0.2, 0.5], "seeds": [0, 1]}, "60": {"per_seed": [0.4, 0.3], "seeds": [0, 1]},
  ...      "selected_by_val": {"per_seed": [0.4, 0.5], "seeds": [0, 1]}}
  >>> [(r["seed"], r["final"], r["best"], r["selected_by_val"]) for r in runs_of(g)]
  [(0, 0.4, 0.4, 0.4), (1, 0.3, 0.5, 0.5)]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os

import numpy as np
from field_drift import read_record  # psi_learning.py's records, compressed or not
from provenance import command_line  # the record's command, quoted for a shell


def runs_of(g: dict) -> list[dict]:
    """One entry per seed of a variant's ``gap_closed`` record with two or more assessed points:
    its G at each point, at the last (``final``), the best point's, and each recorded choice's."""
    points = sorted(int(k) for k in g if k.isdigit() and k != "0")
    if len(points) < 2:
        return []
    out = []
    for seed in g[str(points[-1])].get("seeds", range(len(g[str(points[-1])]["per_seed"]))):
        at = {}
        for key in [str(p) for p in points] + ["selected_by_val", "average_second_half"]:
            row = g.get(key)
            seeds = list(row.get("seeds", range(len(row["per_seed"])))) if row else []
            if seed in seeds:
                at[key] = row["per_seed"][seeds.index(seed)]
        if not all(str(p) in at for p in points):
            continue
        out.append({"seed": seed, "points": {str(p): at[str(p)] for p in points}, "final": at[str(points[-1])],
                    "best": max(at[str(p)] for p in points), "selected_by_val": at.get("selected_by_val"),
                    "average_second_half": at.get("average_second_half")})
    return out


def _half_means(assessment: dict, metric: str, half: int) -> float:
    """Mean ``metric`` of one half (0: the first, 1: the second) of an assessment's models, the
    models that did not train (``diverged_models``) left out as the assessment leaves them out."""
    values = np.asarray(assessment[f"{metric}_metrics"], dtype=float)
    if len(values) % 2:
        raise ValueError(f"a cross-fitted pick splits each candidate's models in halves; got {len(values)} models")
    m = len(values) // 2
    kept = [i for i in range(half * m, (half + 1) * m) if i not in assessment.get("diverged_models", [])]
    return float(values[kept].mean()) if kept else float("nan")


def pool_models(assessments: list[dict]) -> dict:
    """One assessment from several of the same psi (``reassess.py`` calls with other keys): the
    per-model metrics end to end, ``diverged_models`` renumbered, ``test_metric`` and
    ``val_metric`` the means over the kept models. Each part keeps its own models together, so a
    cross-fitted pick over two equal parts lets one call's models pick and the other's judge.

    Example:
      >>> a = {"val_metrics": [0.2, 0.0], "test_metrics": [0.3, 0.0], "diverged_models": [1]}
      >>> b = {"val_metrics": [0.4, 0.6], "test_metrics": [0.5, 0.7]}
      >>> p = pool_models([a, b])
      >>> p["test_metrics"], p["diverged_models"], round(p["test_metric"], 3)
      ([0.3, 0.0, 0.5, 0.7], [1], 0.5)
    """
    if len(assessments) == 1:
        return assessments[0]
    out = {"val_metrics": [], "test_metrics": [], "diverged_models": []}
    for a in assessments:
        out["diverged_models"] += [len(out["test_metrics"]) + i for i in a.get("diverged_models") or []]
        out["val_metrics"] += list(a["val_metrics"])
        out["test_metrics"] += list(a["test_metrics"])
    kept = [i for i in range(len(out["test_metrics"])) if i not in out["diverged_models"]]
    for metric in ("val", "test"):
        out[f"{metric}_metric"] = float(np.mean([out[f"{metric}_metrics"][i] for i in kept]))
    return out


def cross_fitted_pick(candidates: dict[int, dict]) -> dict:
    """The validation pick among ``candidates`` (step -> assessment with per-model metrics),
    judged by the models that did not pick it, both ways round; higher metrics are better.

    Returns the two picks; the test metric of the pick and of the final (largest) step, each the
    mean over the two judging halves (so that the two are paired); and each step's test metric
    over all its models (``test_metric``) with the best of them (an oracle, not a choice a run
    can make).

    Example:
      >>> a = {30: {"val_metrics": [0.5, 0.3, 0.2, 0.2], "test_metrics": [0.5, 0.3, 0.2, 0.2],
      ...           "test_metric": 0.3},
      ...      60: {"val_metrics": [0.3, 0.0, 0.4, 0.4], "test_metrics": [0.3, 0.0, 0.4, 0.4],
      ...           "test_metric": 0.37, "diverged_models": [1]}}
      >>> r = cross_fitted_pick(a)  # half 1 picks 30 (val 0.4), judged by half 2: 0.2; then 60, judged 0.3
      >>> r["picks"], round(r["picked"], 2), round(r["final"], 2), r["best_step"]
      ([30, 60], 0.25, 0.35, 60)
    """
    steps = sorted(candidates)
    picks, picked, final = [], [], []
    for pick_half in (0, 1):
        step = max(steps, key=lambda s: _half_means(candidates[s], "val", pick_half))
        picks.append(step)
        picked.append(_half_means(candidates[step], "test", 1 - pick_half))
        final.append(_half_means(candidates[steps[-1]], "test", 1 - pick_half))
    means = {s: float(candidates[s]["test_metric"]) for s in steps}
    best = max(steps, key=means.get)
    return {"picks": picks, "picked": float(np.mean(picked)), "final": float(np.mean(final)),
            "best_step": best, "best": means[best], "test_by_step": {str(s): means[s] for s in steps}}


def _crossfit_entry(variant: str, seed: int, candidates: dict[int, dict], baseline: dict) -> dict:
    """:func:`cross_fitted_pick` over one run's ``candidates`` (step -> assessment), also in G against
    ``baseline`` (the seed's recorded start and reference, as ``psi_learning.py``'s ``_baseline`` rows)."""
    from autosim_jax import gap_closed

    r = cross_fitted_pick(candidates)
    start, reference = baseline["start"]["test_metric"], baseline["reference"]["test_metric"]
    g = {k: gap_closed(start, r[k], reference) for k in ("picked", "final", "best")}
    g["by_step"] = {s: gap_closed(start, v, reference) for s, v in r["test_by_step"].items()}
    return {"variant": variant, "seed": seed, **r, "G": g}


def crossfit_runs(reassessed: list[dict], baselines: dict[int, dict]) -> list[dict]:
    """One entry per (variant, seed) of ``reassess.py`` records: :func:`cross_fitted_pick` over
    its reassessed steps, in test metric and in G (``baselines``: seed -> recorded start and
    reference, as ``psi_learning.py``'s ``_baseline`` rows hold them). A step assessed in several
    records is assessed once by all their models (:func:`pool_models`)."""
    by_run: dict[tuple, dict] = {}
    for record in reassessed:
        for row in record["rows"]:
            if "error" not in row:
                by_run.setdefault((row["variant"], row["seed"]), {}).setdefault(row["step"], []).append(
                    row["new"]["learned"])
    by_run = {run: {step: pool_models(a) for step, a in steps.items()} for run, steps in by_run.items()}
    return [_crossfit_entry(variant, seed, candidates, baselines[seed])
            for (variant, seed), candidates in sorted(by_run.items())]


def record_crossfit_runs(record: dict) -> list[dict]:
    """The cross-fitted validation pick of every run of one ``psi_learning.py`` record whose assessed
    steps (two or more, step 0 aside) each hold an even number of fresh models, judged in G against
    the start and reference of the same record. This is ``selected_by_val`` without the winner's curse:
    the models that pick a step do not judge it.

    Example:
      >>> a = lambda v, t: {"val_metrics": v, "test_metrics": t, "test_metric": sum(t) / len(t)}
      >>> rec = {"runs": [
      ...     {"variant": "_baseline", "seed": 0, "start": {"test_metric": 0.2}, "reference": {"test_metric": 0.6}},
      ...     {"variant": "default", "seed": 0, "assessed": {"30": a([0.5, 0.3], [0.4, 0.4]),
      ...                                                  "60": a([0.3, 0.4], [0.5, 0.3]),
      ...                                                  "average_second_half": a([0.1, 0.1], [0.1, 0.1])}}]}
      >>> r, = record_crossfit_runs(rec)  # model 0 picks 30, judged by model 1 (0.4);
      ... # model 1 picks 60, by model 0 (0.5)
      >>> r["picks"], round(r["G"]["picked"], 3), round(r["G"]["final"], 3)
      ([30, 60], 0.625, 0.5)
    """
    baselines = {r["seed"]: r for r in record["runs"] if r["variant"] == "_baseline" and "error" not in r}
    out = []
    for run in record["runs"]:
        if run["variant"] == "_baseline" or "error" in run or run["seed"] not in baselines:
            continue
        candidates = {int(k): a for k, a in run.get("assessed", {}).items() if k.isdigit() and k != "0"}
        if len(candidates) >= 2 and all(a.get("val_metrics") and len(a["val_metrics"]) % 2 == 0
                                        for a in candidates.values()):
            out.append(_crossfit_entry(run["variant"], run["seed"], candidates, baselines[run["seed"]]))
    return out


def paired(diff) -> dict:
    """A choice's G minus the final psi's over runs: the mean, its standard error (``ddof=1``) and the
    runs where the choice is ahead and behind."""
    diff = np.asarray(diff, dtype=float)
    return {"mean": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0,
            "ahead": int((diff > 0).sum()), "behind": int((diff < 0).sum())}


def crossfit_summary(runs: list[dict]) -> dict:
    """The cross-fitted pick's G minus the final psi's (judged by the same halves), over ``runs``;
    a run whose judging half lost every model (NaN) is left out and counted."""
    kept = [r for r in runs if np.isfinite(r["G"]["picked"]) and np.isfinite(r["G"]["final"])]
    return {"runs": len(kept), "left_out_nan": len(runs) - len(kept),
            "mean_G_picked": float(np.mean([r["G"]["picked"] for r in kept])),
            "mean_G_final": float(np.mean([r["G"]["final"] for r in kept])),
            "picked_minus_final": paired([r["G"]["picked"] - r["G"]["final"] for r in kept])}


def summary(runs: list[dict], tol: float) -> dict:
    """Per choice: how often it is within ``tol`` of the run's best assessed point, its mean G, and
    its G minus the final psi's on the same runs (``minus_final``, :func:`paired`), the figure that
    says whether a choice beats simply returning the final psi.

    Example:
      >>> runs = [{"best": 0.8, "final": 0.6, "selected_by_val": 0.8, "average_second_half": 0.7},
      ...         {"best": 0.5, "final": 0.5, "selected_by_val": None, "average_second_half": 0.3}]
      >>> d = summary(runs, tol=0.05)["average_second_half"]
      >>> d["within_tol_of_best"], round(d["minus_final"]["mean"], 3), round(d["minus_final"]["se"], 3)
      (0.0, -0.05, 0.15)
      >>> d["minus_final"]["ahead"], d["runs"]
      (1, 2)
    """
    out = {"runs": len(runs), "tol": tol, "mean_best": float(np.mean([r["best"] for r in runs]))}
    for choice in ("final", "selected_by_val", "average_second_half"):
        have = [r for r in runs if r[choice] is not None]
        out[choice] = {"runs": len(have),
                       "within_tol_of_best": float(np.mean([r[choice] >= r["best"] - tol for r in have])),
                       "mean_G": float(np.mean([r[choice] for r in have])),
                       "mean_G_final_same_runs": float(np.mean([r["final"] for r in have])),
                       "minus_final": paired([r[choice] - r["final"] for r in have])}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", help="a glob of psi_learning.py records (.json or .json.gz)")
    p.add_argument("--reassessed", help="a glob of reassess.py records (the cross-fitted pick; needs --baselines)")
    p.add_argument("--baselines", help="a glob of the psi_learning.py records holding their seeds' start and reference")
    p.add_argument("--tol", type=float, default=0.05, help="how far below the best point still counts (G)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    if (args.records is None) == (args.reassessed is None) or (args.reassessed is None) != (args.baselines is None):
        p.error("give --records, or --reassessed with --baselines")
    if args.reassessed:
        return _main_crossfit(p, args)
    runs, crossfit = [], []
    for path in sorted(glob.glob(args.records)):
        if ".partial.jsonl" in path:  # a run's progress log (also gzipped), not a record
            continue
        record = read_record(path)
        if record.get("benchmark") != "psi_learning":
            continue
        for variant, g in record.get("gap_closed", {}).get("test_metric", {}).items():
            runs += [{"file": os.path.basename(path), "variant": variant, **r} for r in runs_of(g)]
        crossfit += [{"file": os.path.basename(path), **r} for r in record_crossfit_runs(record)]
    if not runs:
        p.error(f"no run with two or more assessed points in {args.records}")
    result = {"benchmark": "return_choice", "date": datetime.date.today().isoformat(), "records": args.records,
              "command": command_line(__file__, argv),
              "summary": summary(runs, args.tol), "runs": runs}
    if crossfit:
        result["crossfit_summary"], result["crossfit_runs"] = crossfit_summary(crossfit), crossfit
    s = result["summary"]
    print(f"{s['runs']} runs; mean G of the best assessed point {s['mean_best']:.3f}")
    for choice in ("final", "selected_by_val", "average_second_half"):
        c = s[choice]
        d = c["minus_final"]
        print(f"  {choice:20s}: within {args.tol} of the best in {c['within_tol_of_best']:.0%} of {c['runs']} runs, "
              f"mean G {c['mean_G']:.3f} (the final psi's on the same runs {c['mean_G_final_same_runs']:.3f}; "
              f"paired {d['mean']:+.3f} +- {d['se']:.3f} s.e., ahead on {d['ahead']}, behind on {d['behind']})")
    if crossfit:
        c = result["crossfit_summary"]
        d = c["picked_minus_final"]
        print(f"  validation pick, cross-fitted (the runs with an even number of models per step): {c['runs']} runs, "
              f"G {c['mean_G_picked']:.3f} against the final psi's {c['mean_G_final']:.3f} judged by the same "
              f"models, paired {d['mean']:+.3f} +- {d['se']:.3f} s.e. (ahead on {d['ahead']}, behind on {d['behind']})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}.json")
    return 0


def _main_crossfit(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--reassessed``: :func:`crossfit_runs` over the records, G by step and per choice, JSON and plot."""
    reassessed = []
    for path in sorted(glob.glob(args.reassessed)):
        with open(path) as f:
            reassessed.append(json.load(f))
    baselines = {}
    for path in sorted(glob.glob(args.baselines)):
        record = read_record(path)
        baselines.update({r["seed"]: r for r in record["runs"] if r["variant"] == "_baseline" and "error" not in r})
    if not reassessed or not baselines:
        p.error(f"no record in {args.reassessed!r} or no baseline in {args.baselines!r}")
    runs = crossfit_runs(reassessed, baselines)
    steps = sorted({s for r in runs for s in r["G"]["by_step"]}, key=int)
    columns = {f"step {s}": [r["G"]["by_step"][s] for r in runs] for s in steps}
    columns.update({k: [r["G"][k] for r in runs] for k in ("final", "picked", "best")})
    table = {"seeds": [r["seed"] for r in runs]}
    for key, g in columns.items():
        table[key] = {"mean": float(np.mean(g)), "std": float(np.std(g, ddof=1)) if len(g) > 1 else 0.0, "per_seed": g}
    result = {"benchmark": "return_choice", "mode": "cross-fitted validation pick", "date": datetime.date.today(
    ).isoformat(), "reassessed": args.reassessed, "baselines": args.baselines, "G_test_metric": table, "runs": runs}
    print(f"{len(runs)} runs (seeds {table['seeds']}); G (test metric), mean +- std over runs [per run]:")
    for key, v in table.items():
        if key != "seeds":
            print(f"  {key:>10}: {v['mean']:+.2f} +- {v['std']:.2f}  [{' '.join(f'{x:+.2f}' for x in v['per_seed'])}]")
    print("  picks (first half, second half): " + ", ".join(f"seed {r['seed']} {r['picks']}" for r in runs))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    _plot_crossfit(result, args.out + ".png")
    print(f"wrote {args.out}.json, {args.out}.png")
    return 0


def _plot_crossfit(result: dict, path: str) -> None:
    """G by step, one line per run, with the final psi's and the cross-fitted pick's G beside."""
    from matplotlib.figure import Figure

    runs, table = result["runs"], result["G_test_metric"]
    steps = sorted(runs[0]["G"]["by_step"], key=int)
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    xs = [int(s) for s in steps]
    for r in runs:
        ax.plot(xs, [r["G"]["by_step"][s] for s in steps], "-o", ms=3, lw=0.8, alpha=0.6, label=f"seed {r['seed']}")
    ax.plot(xs, [table[f"step {s}"]["mean"] for s in steps], "-k", lw=2.2, label="mean")
    right = xs[-1] + (xs[-1] - xs[0]) / 6
    for dx, key, marker in ((0, "final", "s"), (1, "picked", "D")):
        x = right + dx * (xs[-1] - xs[0]) / 5
        ax.plot([x] * len(runs), table[key]["per_seed"], marker, color="grey", ms=4)
        ax.errorbar([x], [table[key]["mean"]], yerr=[table[key]["std"]], fmt=marker, color="k", capsize=3)
    ax.set_xticks(xs + [right, right + (xs[-1] - xs[0]) / 5], steps + ["final", "pick"])
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(1, color="g", lw=0.5, ls="--")
    ax.set_xlabel("outer step")
    ax.set_ylabel("G (test metric), new fresh models")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(f"validation pick among steps {', '.join(steps)}, judged by the other models ({result['date']})",
                 fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
