"""What did ``autosim run --select-every N [--select-reset F,G]`` choose, and was it right?

Reads the ``summary.json`` of finished ``autosim run`` directories that assessed candidates
(``assessment.checked_steps``) and gives, per run, the gap closed G of every candidate (each
checked step's psi and, with ``--select-reset``, its twin with the fields back at the start),
the validation pick, and how the pick's *new* fresh models judge it. G is computed from the
run's own start and reference assessments (``autosim_jax.experiments.gap_closed``); a
candidate's G uses the models that also picked it, so only the pick's new-model G is free of
the winner's curse. No device is needed.

Usage::

    python benchmarks/selection_runs.py benchmarks/results/clevr-seg_gpu_cli_select_reset/seed* \\
        --out benchmarks/results/clevr-seg_gpu_cli_select_reset/selection

Writes ``OUT.json`` (every candidate's G by metric, the pick, the shortfall) and ``OUT.png``
(G of each candidate by step, as it is and reset, one panel per run), and prints a table.

Example:
  >>> a = {"start_psi": {"test_metric": 0.3}, "reference_psi": {"test_metric": 0.5},
  ...      "learned_psi": {"test_metric": 0.45},
  ...      "checked_steps": {"60": {"test_metric": 0.4}, "60+reset": {"test_metric": 0.42},
  ...                        "120": {"test_metric": 0.45}},
  ...      "selected_psi": {"step": 60, "reset": ["color"], "test_metric": 0.41}}
  >>> row = candidates(a, "test_metric")
  >>> row["G"], row["picked"], row["picked_G_new_models"], row["best"]
  ({'60': 0.5, '60+reset': 0.6, '120': 0.75}, '60+reset', 0.55, '120')
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np

from autosim_jax.experiments import gap_closed


def candidates(assessment: dict, metric: str) -> dict:
    """G of every candidate of one run's ``assessment`` (``summary.json``), the validation pick
    (``picked``, its G by the candidate's models and by new ones) and the best candidate by
    ``metric`` with the pick's shortfall from it."""
    start, ref = assessment["start_psi"][metric], assessment["reference_psi"][metric]
    g = {k: round(gap_closed(start, v[metric], ref), 4) for k, v in assessment["checked_steps"].items()}
    sel = assessment["selected_psi"]
    picked = str(sel["step"]) + ("+reset" if sel["reset"] else "")
    best = max(g, key=g.get)
    new = round(gap_closed(start, sel[metric], ref), 4)
    return {"G": g, "picked": picked, "picked_G": g[picked], "picked_G_new_models": new, "best": best,
            "best_G": g[best], "shortfall_new_models": round(g[best] - new, 4),
            "learned_G": round(gap_closed(start, assessment["learned_psi"][metric], ref), 4)}


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.2), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], rows):
        g = row["test_metric"]["G"]
        for suffix, label, style in (("", "as it is", "o-"), ("+reset", "reset", "s--")):
            steps = sorted(int(k.split("+")[0]) for k in g if k.endswith("+reset") == bool(suffix))
            ax.plot(steps, [g[f"{s}{suffix}"] for s in steps], style, label=label)
        ax.axhline(row["test_metric"]["picked_G_new_models"], color="k", lw=0.8, ls=":",
                   label=f"pick {row['test_metric']['picked']}, new models")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axhline(1, color="grey", lw=0.5, ls="--")
        ax.set_title(row["run"], fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("G (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="autosim run directories (each with a summary.json)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        with open(os.path.join(run, "summary.json")) as f:
            a = json.load(f).get("assessment", {})
        if "checked_steps" not in a or "reference_psi" not in a:
            raise SystemExit(f"{run}: summary.json has no assessed candidates with a reference; run with "
                             "--select-every N or --select-reset FIELDS on an experiment with a reference psi")
        rows.append({"run": os.path.basename(os.path.normpath(run)),
                     **{m: candidates(a, m) for m in ("val_metric", "test_metric")}})
    # the candidates of every run, in step order (a run may lack one, e.g. a twin equal to its psi)
    keys = sorted({k for r in rows for k in r["test_metric"]["G"]}, key=lambda k: (int(k.split("+")[0]), k))
    print("| run | " + " | ".join(keys) + " | pick (its G) | pick, new models | final |")
    for r in rows:
        t = r["test_metric"]
        print(f"| {r['run']} | " + " | ".join(f"{t['G'][k]:.2f}" if k in t["G"] else "-" for k in keys)
              + f" | {t['picked']} ({t['picked_G']:.2f}) | {t['picked_G_new_models']:.2f} | {t['learned_G']:.2f} |")
    new = np.array([r["test_metric"]["picked_G_new_models"] for r in rows])
    final = np.array([r["test_metric"]["learned_G"] for r in rows])
    summary = {"picked_new_models": {"mean": float(new.mean()), "std": float(new.std())},
               "final": {"mean": float(final.mean()), "std": float(final.std())}}
    print(f"pick (new models) {new.mean():.2f} +- {new.std():.2f}; final psi {final.mean():.2f} +- {final.std():.2f}")
    with open(args.out + ".json", "w") as f:
        json.dump({"benchmark": "selection_runs", "date": datetime.date.today().isoformat(), "runs": args.runs,
                   "rows": rows, "summary": summary}, f, indent=1)
    _plot(rows, args.out + ".png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
