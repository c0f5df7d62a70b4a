"""Does a cheap candidate evaluation rank random search's candidates as a costlier one does?

``autosim compare --methods random`` draws its candidates from the seed alone (the proposal key
chain does not depend on ``--evaluation-images`` / ``--evaluation-epochs``), so two comparisons of
the same experiment and seeds with different evaluations score *the same candidates*. This reads
their run directories (``OUT/random/seedS/metrics.jsonl``: one record per candidate, its reward
the validation metric of a model trained from its initialisation on N renders x E epochs) and
reports, per seed and pooled, Spearman's rank correlation between each evaluation and the
reference one (the costliest, or ``--reference``), and where each evaluation's pick (its best
candidate) ranks under the reference: what a random search or BO driven by the cheap evaluation
gives up (session 45: clevr-det at gpu size, 512 x 8 against a detector trained like the
assessment's, 2,048 x 24).

Usage (after the three comparisons ran with ``--seeds 4 --assess-images 0``)::

    python benchmarks/evaluation_ranking.py --runs 512x8=DIR1 --runs 2048x8=DIR2 --runs 2048x24=DIR3 \\
        --out benchmarks/results/baseline_evaluation_gpu/ranking_clevr-det

Candidates are checked to be the same where the records can show it: wherever both runs kept a
new best, the psi they hold must be equal (the first candidate, the start psi, always is).

Example (two made-up evaluations of three candidates on one seed):
  >>> s = spearman([0.1, 0.3, 0.2], [0.5, 0.9, 0.6])
  >>> float(s)
  1.0
  >>> pick_rank([0.1, 0.3, 0.2], [0.5, 0.6, 0.9])   # the cheap pick is the reference's 2nd best
  2
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform

import numpy as np
import scipy.stats  # installed with jax


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties by average rank; NaN where
    either is constant, as for a blind evaluation)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(x, y).statistic)


def pick_rank(cheap, reference) -> int:
    """Rank (1 = best) under ``reference`` of the candidate ``cheap`` scores highest."""
    pick = int(np.argmax(cheap))
    return int(1 + np.sum(np.asarray(reference) > reference[pick]))


def read_candidates(run_dir: str) -> tuple[list[float], list[dict | None]]:
    """Per candidate of one random-search run: its reward and, where it became the new best, the
    psi (the candidate itself; otherwise the run's record holds the previous best, so ``None``)."""
    rewards, psis = [], []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for record in map(json.loads, f):
            if "reward" not in record:
                continue
            rewards.append(float(record["reward"]))
            psis.append(record.get("psi") if record.get("improved") else None)
    return rewards, psis


def _same_psi(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def collect(runs: dict[str, str], method: str) -> dict[int, dict[str, list[float]]]:
    """``{seed: {label: rewards}}`` over the seeds every run has, cut to the fewest candidates
    any run of that seed evaluated; raises if two runs evaluated different candidates."""
    seeds = None
    for label, out in runs.items():
        found = {int(os.path.basename(p)[4:]) for p in glob.glob(os.path.join(out, method, "seed*"))}
        if not found:
            raise ValueError(f"--runs {label}={out}: no {method}/seedS directories there; give the --out of "
                             f"an `autosim compare --methods {method}` run")
        seeds = found if seeds is None else seeds & found
    table = {}
    for seed in sorted(seeds):
        per = {label: read_candidates(os.path.join(out, method, f"seed{seed}")) for label, out in runs.items()}
        n = min(len(r) for r, _ in per.values())
        labels = list(per)
        for i in range(n):
            held = [(label, per[label][1][i]) for label in labels if per[label][1][i] is not None]
            for (la, pa), (lb, pb) in zip(held, held[1:]):
                if not _same_psi(pa, pb):
                    raise ValueError(f"seed {seed}, candidate {i + 1}: {la} and {lb} evaluated different psi; "
                                     "the runs must share the experiment, size, method and seed")
        table[seed] = {label: per[label][0][:n] for label in labels}
    return table


def summarise(table: dict[int, dict[str, list[float]]], reference: str) -> dict:
    """Per seed and pooled: each evaluation's Spearman with ``reference`` and its pick's rank there."""
    labels = [label for label in next(iter(table.values())) if label != reference]
    per_seed = []
    for seed, scores in table.items():
        ref = scores[reference]
        per_seed.append({
            "seed": seed, "candidates": len(ref), "rewards": scores,
            "reference_pick": int(np.argmax(ref)) + 1,
            **{label: {"spearman": spearman(scores[label], ref), "pick": int(np.argmax(scores[label])) + 1,
                       "pick_rank_under_reference": pick_rank(scores[label], ref),
                       "pick_reference_reward": float(ref[int(np.argmax(scores[label]))]),
                       "reference_best": float(max(ref))} for label in labels}})
    pooled = {}
    for label in labels:
        rho = np.array([s[label]["spearman"] for s in per_seed])
        pooled[label] = {
            "spearman_mean": float(np.nanmean(rho)),
            "spearman_std": float(np.nanstd(rho, ddof=1)) if np.sum(~np.isnan(rho)) > 1 else float("nan"),
            "pick_ranks": [s[label]["pick_rank_under_reference"] for s in per_seed],
            "pick_shortfall_mean": float(np.mean([s[label]["reference_best"] - s[label]["pick_reference_reward"]
                                                  for s in per_seed]))}
    return {"reference": reference, "per_seed": per_seed, "pooled": pooled}


def plot(summary: dict, path: str, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(summary["pooled"])
    fig, axes = plt.subplots(1, len(labels), figsize=(max(6.0, 4.5 * len(labels)), 4.2), squeeze=False)
    ref = summary["reference"]
    for ax, label in zip(axes[0], labels):
        for s in summary["per_seed"]:
            x, y = s["rewards"][label], s["rewards"][ref]
            line = ax.plot(x, y, "o", ms=5, alpha=0.8, label=f"seed {s['seed']} (rho {s[label]['spearman']:+.2f})")
            pick = s[label]["pick"] - 1
            ax.plot(x[pick], y[pick], "*", ms=14, color=line[0].get_color(), mec="k")
        p = summary["pooled"][label]
        ax.set(xlabel=f"{label}: in-run val {metric}", ylabel=f"{ref}: in-run val {metric}",
               title=f"{label} vs {ref}: mean rho {p['spearman_mean']:+.2f}")
        ax.legend(fontsize=7)
    fig.suptitle("one point per random-search candidate (one model each); star: the cheaper evaluation's pick",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", action="append", required=True, metavar="LABEL=DIR",
                        help="an `autosim compare` --out directory and a label for its evaluation (repeatable)")
    parser.add_argument("--method", default="random", help="the baseline whose run directories to read")
    parser.add_argument("--reference", help="the label to rank against (default: the last --runs)")
    parser.add_argument("--device", default="", help="where the comparisons ran, recorded as given")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.png")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, out = spec.partition("=")
        if not sep or not os.path.isdir(out):
            parser.error(f"--runs {spec!r}: give LABEL=DIR with DIR an `autosim compare` output directory")
        runs[label] = out
    reference = args.reference or list(runs)[-1]
    if reference not in runs or len(runs) < 2:
        parser.error("give at least two --runs and a --reference among their labels")
    with open(os.path.join(runs[reference], "compare.json")) as f:
        record = json.load(f)
    summary = summarise(collect(runs, args.method), reference)
    result = {"benchmark": "rank agreement of candidate evaluations (random search's candidates, same seeds)",
              "date": datetime.date.today().isoformat(), "experiment": record.get("experiment"),
              "metric": record.get("metric"), "host": platform.node(),
              "device": args.device, "runs": {label: _settings(out) for label, out in runs.items()}, **summary}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(summary, args.out + ".png", result["metric"] or "metric")
    for label, p in summary["pooled"].items():
        print(f"{label} vs {reference}: Spearman {p['spearman_mean']:+.2f} +- {p['spearman_std']:.2f} over "
              f"{len(summary['per_seed'])} seeds; its pick ranks {p['pick_ranks']} under {reference} "
              f"(mean shortfall {p['pick_shortfall_mean']:.3f})")


def _settings(out: str) -> dict:
    """The comparison's size, budget and candidate evaluation, from its ``compare.json``."""
    try:
        with open(os.path.join(out, "compare.json")) as f:
            record = json.load(f)
    except OSError:
        return {}
    keys = ("experiment", "size", "seeds", "budget_images", "evaluation_images", "evaluation_epochs")
    return {k: record.get(k) for k in keys}


if __name__ == "__main__":
    main()
