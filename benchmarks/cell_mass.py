"""Where a learned scene/location/quality categorical puts its mass, step by step (issue 14).

Reads the psi trajectories that ``benchmarks/psi_learning.py`` records for a detection experiment
(every step's psi of every run) and computes, for each seed, the probability of named groups of
cells at every step: the reference psi's support (``target``: the cells the reference puts above
uniform, clevr-det's 4 target cells; none where the reference is uniform, as on digits-det) and
any ``--group NAME=PATTERN[,PATTERN]`` given as ``fnmatch`` patterns over the cell names (e.g.
``scene2-high=scene2/*/high``); and the effective number of cells, exp(entropy). Beside them, the
gap closed G that the record holds for the same seeds, so that mass and fresh-model mAP are read
together. No device is needed.

Usage::

    python benchmarks/cell_mass.py --experiment clevr-det --size gpu \\
        --runs benchmarks/results/psi_learning/clevr-det_gpu_clip1_240_s012.json:default \\
        --runs benchmarks/results/psi_learning/clevr-det_gpu_clip1_240_s345.json:default \\
        --group scene2-high='scene2/*/high' --out benchmarks/results/psi_learning/cell_mass_clevr-det_gpu_240

Writes ``OUT/cell_mass.json`` (per seed: every group's mass and the effective cells at every
step, G at each assessed point; mean +- std over seeds, ``ddof=1``, at those points),
``OUT/mass.png`` (each group's mass and the effective cells against the step, a line per seed)
and ``OUT/cells.png`` (3 x 9 x 2 heat maps of the start, each seed's last psi and the reference,
:func:`autosim_jax.compare.write_cell_maps`).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os

import numpy as np
from detection_tables import mean_std, support_cells
from field_drift import read_runs, trajectory_runs, unflatten  # psi_learning.py's records
from provenance import command_line  # the record's command, quoted for a shell


def group_cells(choices, patterns: list[str]) -> list[int]:
    """Indices of the cells whose name matches any of ``patterns`` (``fnmatch``, case-sensitive).

    Example:
      >>> group_cells(["scene1/left/low", "scene2/left/high", "scene2/top/high"], ["scene2/*/high"])
      [1, 2]
    """
    hit = [i for i, c in enumerate(choices) if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    if not hit:
        raise ValueError(f"patterns {patterns} match none of the {len(choices)} cells (e.g. {choices[0]!r})")
    return hit


def effective_cells(probs) -> float:
    """The exponential of a categorical's entropy: how many equally likely cells hold as much
    uncertainty (1 for one-hot, the number of cells for uniform). Zero-probability cells add nothing.

    Example:
      >>> round(effective_cells([0.5, 0.5, 0.0, 0.0]), 6), round(effective_cells([0.25] * 4), 6)
      (2.0, 4.0)
    """
    p = np.asarray(probs, float)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-det")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--runs", action="append", required=True, metavar="FILE:VARIANT",
                   help="a psi_learning.py OUT.json and one variant (repeat to pool seeds of several files)")
    p.add_argument("--group", action="append", default=[], metavar="NAME=PATTERN[,PATTERN]",
                   help="a group of cells by fnmatch patterns over the cell names (repeatable)")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    import jax

    import autosim_jax as asj
    from autosim_jax.compare import cell_grid, write_cell_maps

    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)  # a registered name or a plug-in's module:attr
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)
    schema, start, reference = setup.simulator.renderer.schema, setup.simulator.distribution.init(), setup.reference_psi
    field = next((f for f in schema.fields if cell_grid(f)), None)
    if field is None or reference is None:
        p.error(f"{args.experiment} has no scene/location/quality field or no reference psi")

    def probs(psi) -> np.ndarray:
        return np.asarray(asj.describe_psi(schema, psi)[field.name]["probs"], float)

    support = support_cells(schema, reference)  # empty where the reference is uniform (digits-det)
    groups = {"target": support} if support else {}
    for spec in args.group:
        name, _, patterns = spec.partition("=")
        if not name or not patterns:
            p.error(f"--group {spec!r}: write NAME=PATTERN[,PATTERN]")
        try:
            groups[name] = group_cells(field.choices, patterns.split(","))
        except ValueError as err:
            p.error(f"--group {spec!r}: {err}")

    seeds: dict[str, dict] = {}
    last: dict[str, dict] = {}
    for spec in args.runs:
        try:
            path, record, variants = read_runs(spec, args.experiment, args.size)
        except ValueError as err:
            p.error(str(err))
        if len(variants) != 1:
            p.error(f"--runs {spec!r}: give one variant per --runs")
        gap = record["gap_closed"]["test_metric"].get(variants[0], {})
        for run in trajectory_runs(record, variants[0]):
            traj = [probs(start)] + [probs(unflatten(flat, start)) for flat in run["psi"]]
            g = {point: cell["per_seed"][cell["seeds"].index(run["seed"])] for point, cell in gap.items()
                 if run["seed"] in cell["seeds"]}
            seeds[str(run["seed"])] = {"file": path, "steps": len(run["psi"]), "G": g,
                                       "mass": {n: [float(q[idx].sum()) for q in traj] for n, idx in groups.items()},
                                       "effective_cells": [effective_cells(q) for q in traj]}
            last[str(run["seed"])] = asj.describe_psi(schema, unflatten(run["psi"][-1], start))
    if not seeds:
        p.error("no run with a psi trajectory in --runs")
    seeds = dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))
    points = sorted({k for s in seeds.values() for k in s["G"]},
                    key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else k))
    summary = {"G": {k: mean_std([s["G"][k] for s in seeds.values() if k in s["G"]]) for k in points},
               "mass": {n: {k: mean_std([s["mass"][n][int(k)] for s in seeds.values() if int(k) < len(s["mass"][n])])
                            for k in ["0", *(k for k in points if k.isdigit())]} for n in groups},
               "effective_cells": {k: mean_std([s["effective_cells"][int(k)] for s in seeds.values()
                                                if int(k) < len(s["effective_cells"])])
                                   for k in ["0", *(k for k in points if k.isdigit())]}}
    out = {"benchmark": "cell_mass", "date": datetime.date.today().isoformat(),
           "command": command_line(__file__, argv),
           "jax_version": jax.__version__, "autosim_jax": asj.__version__, "experiment": args.experiment,
           "size": args.size, "groups": {n: [field.choices[i] for i in idx] for n, idx in groups.items()},
           "summary": summary, "seeds": seeds}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cell_mass.json"), "w") as f:
        json.dump(out, f, indent=1)
    plot(out, os.path.join(args.out, "mass.png"))
    write_cell_maps(args.out, schema, [("start", asj.describe_psi(schema, start)),
                                       *((f"seed {s}, step {seeds[s]['steps']}", d) for s, d in last.items()),
                                       ("reference", asj.describe_psi(schema, reference))],
                    title=f"{args.experiment} ({args.size}): the last psi of each seed")
    for name, by_point in summary["mass"].items():
        print(f"mass on {name:>12}: " + "  ".join(f"{k}: {v['mean']:.2f} +- {v['std']:.2f}"
                                                  for k, v in by_point.items()))
    print("effective cells      : " + "  ".join(f"{k}: {v['mean']:.1f} +- {v['std']:.1f}"
                                              for k, v in summary["effective_cells"].items()))
    print("G (fresh models)     : " + "  ".join(f"{k}: {v['mean']:.2f} +- {v['std']:.2f}"
                                              for k, v in summary["G"].items()))
    return 0


def plot(record: dict, path: str) -> None:
    from matplotlib.figure import Figure

    groups = list(record["groups"])
    fig = Figure(figsize=(4.4 * (len(groups) + 1), 3.8), layout="constrained")
    axes = fig.subplots(1, len(groups) + 1, squeeze=False)[0]
    for i, s in enumerate(record["seeds"].values()):
        axes[-1].plot(s["effective_cells"], color=f"C{i}", lw=1.2)
    axes[-1].set_yscale("log")
    axes[-1].set_yticks([1, 2, 5, 10, 20, 50], ["1", "2", "5", "10", "20", "50"], minor=False)
    axes[-1].set_yticks([], minor=True)
    axes[-1].set_ylim(0.9, 60)
    axes[-1].set_xlabel("outer step")
    axes[-1].set_title("effective cells, exp(entropy)", fontsize=9)
    for ax, name in zip(axes, groups):
        for i, (seed, s) in enumerate(record["seeds"].items()):
            g = s["G"].get(str(s["steps"]))
            ax.plot(s["mass"][name], color=f"C{i}", lw=1.2,
                    label=f"seed {seed}" + (f" (G {g:.2f} at {s['steps']})" if g is not None else ""))
        ax.axhline(0.7, ls="--", lw=1, color="k")
        ax.set_ylim(0, 1)
        ax.set_xlabel("outer step")
        ax.set_title(f"mass on {name} ({len(record['groups'][name])} cells)", fontsize=9)
    if groups:
        axes[0].set_ylabel("probability")
        axes[-2].legend(fontsize=7)
    fig.suptitle(f"{record['experiment']} ({record['size']}): the learned categorical's mass (dashed: 0.7)",
                 fontsize=10)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
