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
carries about 0.07 with 4 models per psi on clevr-seg at gpu size).

Usage::

    python benchmarks/return_choice.py --records 'benchmarks/results/psi_learning/clevr-seg_gpu_*.json*' \\
        --out benchmarks/results/psi_learning/return_choice_clevr-seg_gpu

Writes ``OUT.json`` (every run's G at its points and for each choice, and the summary).

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


def summary(runs: list[dict], tol: float) -> dict:
    out = {"runs": len(runs), "tol": tol, "mean_best": float(np.mean([r["best"] for r in runs]))}
    for choice in ("final", "selected_by_val", "average_second_half"):
        have = [r for r in runs if r[choice] is not None]
        out[choice] = {"runs": len(have),
                       "within_tol_of_best": float(np.mean([r[choice] >= r["best"] - tol for r in have])),
                       "mean_G": float(np.mean([r[choice] for r in have])),
                       "mean_G_final_same_runs": float(np.mean([r["final"] for r in have]))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", required=True, help="a glob of psi_learning.py records (.json or .json.gz)")
    p.add_argument("--tol", type=float, default=0.05, help="how far below the best point still counts (G)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    runs = []
    for path in sorted(glob.glob(args.records)):
        if path.endswith(".partial.jsonl"):
            continue
        record = read_record(path[:-3] if path.endswith(".gz") else path)
        if record.get("benchmark") != "psi_learning":
            continue
        for variant, g in record.get("gap_closed", {}).get("test_metric", {}).items():
            runs += [{"file": os.path.basename(path), "variant": variant, **r} for r in runs_of(g)]
    if not runs:
        p.error(f"no run with two or more assessed points in {args.records}")
    result = {"benchmark": "return_choice", "date": datetime.date.today().isoformat(), "records": args.records,
              "summary": summary(runs, args.tol), "runs": runs}
    s = result["summary"]
    print(f"{s['runs']} runs; mean G of the best assessed point {s['mean_best']:.3f}")
    for choice in ("final", "selected_by_val", "average_second_half"):
        c = s[choice]
        print(f"  {choice:20s}: within {args.tol} of the best in {c['within_tol_of_best']:.0%} of {c['runs']} runs, "
              f"mean G {c['mean_G']:.3f} (the final psi's on the same runs {c['mean_G_final_same_runs']:.3f})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
