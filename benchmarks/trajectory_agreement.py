"""Does a seed fix its run? The psi trajectories of one variant and seed from several calls, compared.

On a CPU a ``psi_learning.py`` run is a function of its seed and options. On a GPU the float32
rounding of a reduction may differ from one call to the next (another kernel chosen, another
order of summation), and the outer loop can amplify a difference in the last bit into another
run. This script reads two or more records of the same experiment (``FILE:VARIANT``), and for
every seed they share gives, after each step, the largest absolute difference between any two
calls' psi over every entry of psi; and at ``--kl-step`` how far apart the runs are as
distributions: per field, the median over pairs of calls of ``KL(q_a || q_b)`` for the same seed,
beside the median over pairs of seeds within one call (a difference in the last bit that stays
small, or runs that branch). No device is needed.

Usage::

    python benchmarks/trajectory_agreement.py --experiment clevr-seg --size gpu \\
        --runs benchmarks/results/psi_learning/clevr-seg_gpu_staged25.json:default \\
        --runs benchmarks/results/psi_learning/clevr-seg_gpu_inits8_s012.json:default \\
        --kl-step 60 --out benchmarks/results/psi_learning/trajectory_agreement_clevr-seg_gpu

Writes ``OUT.json`` (per seed: the difference after every step, the first step where it
exceeds 1e-3, the KL between calls at ``--kl-step``; the calls compared) and ``OUT.png`` (the
difference against the step, log scale, one line per seed).

Example:
  >>> import numpy as np
  >>> a = [{"x": [0.0, 1.0]}, {"x": [0.5, 1.0]}]
  >>> b = [{"x": [0.0, 1.0]}, {"x": [0.5, 1.25]}]
  >>> [float(d) for d in max_difference([a, b])]
  [0.0, 0.25]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os

import numpy as np

from field_drift import field_kls, read_runs, trajectory_runs, unflatten  # the records' readers and per-field KL


def max_difference(trajectories: list[list[dict]]) -> np.ndarray:
    """After each step (up to the shortest trajectory), the largest ``|psi_a - psi_b|`` over every
    entry of psi and every pair of trajectories; each trajectory is a list of flat psi dicts (name
    -> list), as ``psi_learning.py`` records them."""
    steps = min(len(t) for t in trajectories)

    def flat(p: dict) -> np.ndarray:
        return np.concatenate([np.ravel(np.asarray(p[k], float)) for k in sorted(p)])

    out = np.zeros(steps)
    for a, b in itertools.combinations(trajectories, 2):
        out = np.maximum(out, [np.max(np.abs(flat(a[t]) - flat(b[t]))) for t in range(steps)])
    return out


def kl_between(calls: list[dict], seeds: list[int], step: int, experiment: str, size: str) -> dict:
    """Per field, the median ``KL(q_a || q_b)`` at ``step`` over pairs of calls of the same seed and
    over pairs of seeds within one call; and per seed the KL summed over fields for each pair of
    calls (in ``itertools.combinations`` order of the calls)."""
    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(experiment)  # a registered name or a plug-in's module:attr
    like = exp.build(renderer=exp.renderers[0], seed=0, size=size).simulator.distribution.init()
    psi = {(i, s): unflatten(c["runs"][s][step - 1], like) for i, c in enumerate(calls) for s in seeds}
    same = {s: [field_kls(psi[a, s], psi[b, s]) for a, b in itertools.combinations(range(len(calls)), 2)]
            for s in seeds}
    other = [field_kls(psi[i, a], psi[i, b]) for i in range(len(calls)) for a, b in itertools.combinations(seeds, 2)]
    fields = {f: {"same_seed_other_call": float(np.median([d[f] for v in same.values() for d in v])),
                  "other_seed_same_call": float(np.median([d[f] for d in other])) if other else None}
              for f in like}
    return {"step": step, "fields": fields,
            "total_same_seed_other_call": {str(s): [float(sum(d.values())) for d in v] for s, v in same.items()},
            "total_other_seed_same_call": [float(sum(d.values())) for d in other]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--runs", action="append", required=True, metavar="FILE:VARIANT",
                   help="a record and the variant to read from it; two or more")
    p.add_argument("--kl-step", type=int, default=None,
                   help="also compare the calls' psi at this step as distributions (per-field KL)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("--runs: give two or more FILE:VARIANT to compare")
    calls = []
    for spec in args.runs:
        path, record, variants = read_runs(spec, args.experiment, args.size)
        if len(variants) != 1:
            p.error(f"--runs {spec!r}: one variant per file")
        runs = {r["seed"]: r["psi"] for r in trajectory_runs(record, variants[0])}
        if not runs:
            p.error(f"{path} has no recorded run of variant {variants[0]!r}")
        calls.append({"file": os.path.basename(path), "variant": variants[0], "runs": runs,
                      "command": record["command"]})
    seeds = sorted(set.intersection(*(set(c["runs"]) for c in calls)))
    if not seeds:
        p.error("the records share no seed")
    result = {"benchmark": "trajectory_agreement", "date": datetime.date.today().isoformat(),
              "experiment": args.experiment, "size": args.size,
              "calls": [{k: c[k] for k in ("file", "variant", "command")} for c in calls], "seeds": {}}
    for seed in seeds:
        d = max_difference([c["runs"][seed] for c in calls])
        over = np.flatnonzero(d > 1e-3)
        result["seeds"][str(seed)] = {"max_difference_after_step": [float(x) for x in d],
                                      "first_step_over_1e-3": int(over[0]) + 1 if over.size else None}
        print(f"seed {seed}: after step 1 {d[0]:.1e}, step 2 {d[min(1, len(d) - 1)]:.1e}, "
              f"step {len(d)} {d[-1]:.1e}; "
              f"first over 1e-3 at step {result['seeds'][str(seed)]['first_step_over_1e-3']}")
    if args.kl_step is not None:
        result["kl_at_step"] = kl_between(calls, seeds, args.kl_step, args.experiment, args.size)
        for field, row in result["kl_at_step"]["fields"].items():
            print(f"  KL at step {args.kl_step}, {field:12s}: same seed, other call {row['same_seed_other_call']:8.3f}"
                  f"   other seed, same call {row['other_seed_same_call']:8.3f}")
        for seed, total in result["kl_at_step"]["total_same_seed_other_call"].items():
            print(f"  KL at step {args.kl_step}, seed {seed}, summed over fields, per pair of calls: "
                  + " ".join(f"{x:.1f}" for x in total))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    for seed, r in result["seeds"].items():
        d = np.asarray(r["max_difference_after_step"])
        ax.semilogy(np.arange(1, len(d) + 1), np.maximum(d, 1e-12), label=f"seed {seed}")
    ax.set_xlabel("outer step")
    ax.set_ylabel("max |psi_a - psi_b| over the calls")
    ax.set_title(f"{args.experiment} {args.size}: {len(calls)} calls of the same seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(args.out + ".png", dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
