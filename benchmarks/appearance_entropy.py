"""Do runs lose G when per-object categoricals collapse? Entropy of chosen fields against G, over every recorded run.

On clevr-seg the start and the reference share the uniform colour and material of every object
(the shapes differ: the start favours one), so the hypergradient carries little signal for those
two; in 240-step runs they end one-hot-like on the seeds that lose their gain (docs/learning.md,
session 22). This script reads
``psi_learning.py`` records and, at each assessed point of each run, the mean *normalised*
entropy of ``--fields`` (each categorical row's entropy over ``log C``, averaged over the rows
and the fields: 1 for the uniform mix, 0 for one-hot) beside the run's G there. It gives the
Spearman correlation of entropy and G over all points, and of their changes between a run's
consecutive assessed points, split at ``--after`` steps (before it both move with the step count;
after it the fields may have collapsed), with a two-sided permutation p-value. No device is
needed.

Usage::

    python benchmarks/appearance_entropy.py --experiment clevr-seg --size gpu \\
        --records 'benchmarks/results/psi_learning/clevr-seg_gpu_*.json*' --fields color,material \\
        --after 60 --out benchmarks/results/psi_learning/appearance_entropy_clevr-seg_gpu

Writes ``OUT.json`` (every point, the correlations, the mean entropy per variant and step) and
``OUT.png`` (entropy against step for every run, coloured by G; the changes' scatter).

Example:
  >>> import numpy as np
  >>> round(normalised_entropy(np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])), 3)
  0.5
  >>> spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40]), permutations=0)[0]
  1.0
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os

import numpy as np

from field_drift import read_record, unflatten  # the records' reader and their flat psi
from provenance import command_line  # the record's command, quoted for a shell


def normalised_entropy(probs: np.ndarray) -> float:
    """Mean over the rows of ``probs`` (``(..., C)``) of ``H(row) / log C``."""
    p = np.clip(np.asarray(probs, float), 1e-12, 1.0)
    return float(np.mean(-(p * np.log(p)).sum(-1) / np.log(p.shape[-1])))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):  # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray, *, permutations: int = 10000, seed: int = 0) -> tuple[float, float | None]:
    """Spearman's rho of ``x`` and ``y`` and its two-sided permutation p-value (None with 0 permutations)."""
    if len(x) < 3:
        return float("nan"), None
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if not permutations:
        return rho, None
    rng = np.random.default_rng(seed)
    null = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(permutations)])
    return rho, float((1 + np.sum(np.abs(null) >= abs(rho))) / (1 + permutations))


def points_of(record: dict, sim, start, fields: list[str]) -> list[dict]:
    """One dict per assessed point (step >= 1) of each run of ``record`` whose psi is in the
    experiment's own family: variant, seed, step, G (test metric), the fields' entropy."""
    import autosim_jax as asj

    g_all = record.get("gap_closed", {}).get("test_metric", {})
    out = []
    for run in record["runs"]:
        g = g_all.get(run["variant"])
        if "psi" not in run or not g:
            continue
        for key in sorted((k for k in g if k.isdigit() and k != "0"), key=int):
            row, step = g[key], int(key)
            seeds = list(row.get("seeds", range(len(row["per_seed"]))))
            if run["seed"] not in seeds or step > len(run["psi"]):
                continue
            try:
                described = asj.describe_psi(sim, unflatten(run["psi"][step - 1], start))
            except KeyError:  # another family (histogram or broad-share variants)
                break
            out.append({"variant": run["variant"], "seed": run["seed"], "step": step,
                        "G": row["per_seed"][seeds.index(run["seed"])],
                        "entropy": float(np.mean([normalised_entropy(described[f]["probs"]) for f in fields]))})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--records", required=True, help="a glob of psi_learning.py records (.json or .json.gz)")
    p.add_argument("--fields", default="color,material", help="comma list of categorical fields")
    p.add_argument("--after", type=int, default=60, help="split the changes at this step")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    import autosim_jax as asj

    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)  # a registered name or a plug-in's module:attr
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)
    sim, start = setup.simulator, setup.simulator.distribution.init()
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    kinds = asj.describe_psi(sim, start)
    bad = [f for f in fields if f not in kinds or "probs" not in kinds[f]]
    if bad or not fields:
        p.error(f"--fields: {bad or '(empty)'} are not categorical fields of {args.experiment}")
    points = []
    for path in sorted({q.removesuffix(".gz") for q in glob.glob(args.records) if not q.endswith(".partial.jsonl")}):
        record = read_record(path)
        if (record.get("benchmark"), record.get("experiment"), record.get("size")) != \
                ("psi_learning", args.experiment, args.size):
            continue
        points += [{"file": os.path.basename(path), **pt} for pt in points_of(record, sim, start, fields)]
    if not points:
        p.error(f"no assessed point of {args.experiment} at {args.size} size in {args.records}")
    runs: dict[tuple, list[dict]] = {}
    for pt in points:
        runs.setdefault((pt["file"], pt["variant"], pt["seed"]), []).append(pt)
    changes = [{"to_step": b["step"], "dH": b["entropy"] - a["entropy"], "dG": b["G"] - a["G"]}
               for pts in runs.values() for a, b in zip(pts, pts[1:])]

    def corr(xs, ys):
        rho, pval = spearman(np.array(xs), np.array(ys))
        return {"n": len(xs), "spearman": rho, "p": pval}

    late = [c for c in changes if c["to_step"] > args.after]
    result = {
        "benchmark": "appearance_entropy", "date": datetime.date.today().isoformat(),
        "command": command_line(__file__, argv),
        "experiment": args.experiment, "size": args.size, "fields": fields, "after": args.after,
        "records": len({pt["file"] for pt in points}), "runs": len(runs),
        "entropy_vs_G": corr([pt["entropy"] for pt in points], [pt["G"] for pt in points]),
        "changes_all": corr([c["dH"] for c in changes], [c["dG"] for c in changes]),
        f"changes_after_{args.after}": corr([c["dH"] for c in late], [c["dG"] for c in late]),
        "mean_entropy": {v: {str(s): float(np.mean([pt["entropy"] for pt in points
                                                    if pt["variant"] == v and pt["step"] == s]))
                             for s in sorted({pt["step"] for pt in points if pt["variant"] == v})}
                         for v in sorted({pt["variant"] for pt in points})},
        "points": points, "changes": changes}
    for key in ("entropy_vs_G", "changes_all", f"changes_after_{args.after}"):
        c = result[key]
        print(f"{key:>18}: Spearman {c['spearman']:+.2f} over {c['n']} (permutation p {c['p']:.2g})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, runs, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png ({result['records']} records, {len(runs)} runs, "
          f"{len(points)} points)")
    return 0


def plot(result: dict, runs: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    for pts in runs.values():
        ax.plot([pt["step"] for pt in pts], [pt["entropy"] for pt in pts], color="0.8", lw=0.6, zorder=1)
    sc = ax.scatter([pt["step"] for pt in result["points"]], [pt["entropy"] for pt in result["points"]],
                    c=[pt["G"] for pt in result["points"]], cmap="viridis", vmin=-0.2, vmax=1.0, s=14, zorder=2)
    fig.colorbar(sc, ax=ax, label="G at that point")
    ax.set_xlabel("step")
    ax.set_ylabel(f"normalised entropy of {', '.join(result['fields'])}")
    ax.set_title("every assessed point of every run", fontsize=9)
    after = result["after"]
    for late, colour, label in ((False, "C0", f"to a step <= {after}"), (True, "C3", f"to a step > {after}")):
        cs = [c for c in result["changes"] if (c["to_step"] > after) == late]
        bx.scatter([c["dH"] for c in cs], [c["dG"] for c in cs], s=14, color=colour, label=f"{label} ({len(cs)})")
    bx.axhline(0, color="k", lw=0.5)
    bx.axvline(0, color="k", lw=0.5)
    bx.set_xlabel("change of the normalised entropy (a run's consecutive assessed points)")
    bx.set_ylabel("change of G")
    bx.legend(fontsize=8)
    c = result[f"changes_after_{after}"]
    bx.set_title(f"after step {after}: Spearman {c['spearman']:+.2f} (n {c['n']}, permutation p {c['p']:.2g})",
                 fontsize=9)
    fig.suptitle(f"{result['experiment']} ({result['size']}): collapsed per-object fields and G "
                 f"({result['date']})", fontsize=10)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
