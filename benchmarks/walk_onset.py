"""How far has psi travelled when its fields walk off? KL to the reference against the path length.

On clevr-seg at gpu size the lights come near the reference and then walk off again, after the
same number of psi steps whatever the renders a step (docs/learning.md, session 59). This script
asks whether the distance psi has travelled sets the onset instead: for every step of every run of
one or more ``autosim compare`` directories it takes the summed ``KL(q_reference || q_psi_t)`` of
some fields (:func:`field_drift.field_kls`) and the path length so far, the sum of the steps'
``psi_step_rms`` (the root mean square of each psi update over psi's coordinates, which
``metrics.jsonl`` records; a step that kept psi adds 0). No device is needed.

Usage (from ``benchmarks/``)::

    python walk_onset.py --experiment clevr-seg --size gpu --fields ambient,key_light,back_light \\
        --compare "preset=DIR_A" --compare "K64=DIR_B" --out results/walk_onset_clevr-seg_gpu

Writes ``OUT.json`` (per label and seed: every step's images, path and KL; the step, path and
images of the smallest KL; the total path and the KL at the end) and ``OUT.png`` (KL against the
path and against the images, a line per run). Prints a line per run.

Example:
  >>> rows = trajectory([{"step": 1, "images": 64, "psi_step_rms": 0.5, "psi_updated": True},
  ...                    {"step": 2, "images": 128, "psi_step_rms": 0.5, "psi_updated": False},
  ...                    {"step": 3, "images": 192, "psi_step_rms": 0.25, "psi_updated": True}],
  ...                   kl=lambda record: 4.0 - record["step"])
  >>> [(r["step"], r["path"], r["kl"]) for r in rows]
  [(1, 0.5, 3.0), (2, 0.5, 2.0), (3, 0.75, 1.0)]
  >>> summarize(rows)["smallest"]
  {'step': 3, 'images': 192, 'path': 0.75, 'kl': 1.0}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Callable

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell


def trajectory(records: list[dict], kl: Callable[[dict], float]) -> list[dict]:
    """One row per step of a run's ``metrics.jsonl`` records: its step, images, the path length so
    far (the sum of ``psi_step_rms`` over the steps that updated psi) and ``kl(record)``."""
    path, rows = 0.0, []
    for record in records:
        if record.get("psi_updated", True):
            path += float(record["psi_step_rms"])
        rows.append({"step": int(record["step"]), "images": int(record["images"]), "path": path,
                     "kl": float(kl(record))})
    return rows


def summarize(rows: list[dict]) -> dict:
    """The run's smallest KL (its step, images and path), its total path and its KL at the end."""
    best = min(rows, key=lambda r: r["kl"])
    return {"smallest": dict(best), "total_path": rows[-1]["path"], "end_kl": rows[-1]["kl"]}


def compare_runs(folder: str, reference, start, fields: list[str]) -> dict[str, list[dict]]:
    """``{"METHOD/seedS": rows}`` for every run directory of the ``autosim compare`` directory
    ``folder`` whose records carry ``psi_step_rms`` (AutoSimulate's; the baselines' do not).

    Raises:
      ValueError: ``folder`` holds no such run, or a field not in the reference.
    """
    from autosim_jax.rundir import psi_from_record
    from field_drift import field_kls, run_records

    unknown = sorted(set(fields) - set(reference))
    if unknown:
        raise ValueError(f"--fields {','.join(unknown)}: not fields of the reference psi; choose from "
                         f"{', '.join(sorted(reference))}")

    def kl(record):
        kls = field_kls(reference, psi_from_record(start, record["psi"]))
        return sum(kls[f] for f in fields)

    runs = {f"{method}/{seed}": trajectory(records, kl) for method, seed, records in run_records(folder)
            if records and "psi_step_rms" in records[0]}
    if not runs:
        raise ValueError(f"{folder} holds no AutoSimulate run (METHOD/seedS/metrics.jsonl with psi_step_rms)")
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg", help="a registered experiment or a plug-in's module:attr")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--fields", default="ambient,key_light,back_light", help="comma list; their KLs are summed")
    p.add_argument("--compare", action="append", required=True, metavar="LABEL=DIR",
                   help="an autosim compare directory and its label (repeat for several)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    import jax

    import autosim_jax as asj
    from autosim_jax.rundir import resolve_experiment

    exp = resolve_experiment(args.experiment)
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)
    reference, start = setup.reference_psi, setup.simulator.distribution.init()
    fields = args.fields.split(",")
    table = {}
    for spec in args.compare:
        label, sep, folder = spec.rpartition("=")  # a label may hold "=" (K = 256)
        if not sep or not label or not folder:
            p.error(f"--compare {spec!r}: write LABEL=DIR")
        try:
            runs = compare_runs(folder, reference, start, fields)
        except ValueError as err:
            p.error(str(err))
        table[label] = {run: {"summary": summarize(rows), "steps": [{**r, "path": float(f"{r['path']:.5g}"),
                                                                      "kl": float(f"{r['kl']:.5g}")} for r in rows]}
                        for run, rows in runs.items()}
        for run, entry in table[label].items():
            s = entry["summary"]
            print(f"{label} {run}: total path {s['total_path']:.2f}; smallest KL {s['smallest']['kl']:.3g} at step "
                  f"{s['smallest']['step']} (path {s['smallest']['path']:.2f}, {s['smallest']['images']} images); "
                  f"at the end {s['end_kl']:.3g}")
    record = {"benchmark": "walk_onset", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "jax_version": jax.__version__, "autosim_jax": asj.__version__, "experiment": args.experiment,
              "size": args.size, "fields": fields, "runs": table}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    plot(table, args.out + ".png", f"{args.experiment} ({args.size}): KL(reference || psi_t), {' + '.join(fields)}")
    return 0


def plot(table: dict, path: str, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    colours = [f"C{i}" for i in range(10)]
    for colour, (label, runs) in zip(colours, table.items()):
        for i, entry in enumerate(runs.values()):
            rows = entry["steps"]
            kl = np.maximum([r["kl"] for r in rows], 1e-3)
            for ax, x in zip(axes, ("path", "images")):
                ax.plot([r[x] for r in rows], kl, color=colour, lw=1, alpha=0.8, label=label if i == 0 else None)
            best = entry["summary"]["smallest"]
            axes[0].plot(best["path"], max(best["kl"], 1e-3), "o", color=colour, ms=4)
    for ax, x in zip(axes, ("path length (sum of the psi steps' RMS)", "images rendered")):
        ax.set_yscale("log")
        ax.set_xlabel(x)
    axes[0].set_ylabel("KL(reference || psi_t), floored at 1e-3 (dot: each run's smallest)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
