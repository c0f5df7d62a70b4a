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
images of the smallest KL; the total path and the KL at the end; and, per field of psi and quarter
of the run, the field's own path, net displacement and KL at the quarter's end, :func:`field_paths`,
with the displacement ratio of pure noise over a quarter's steps, :func:`null_displacement_ratio`)
and ``OUT.png`` (KL against the path and against the images, a line per run), ``OUT_fields.png``
(:func:`plot_fields`). Prints a line per run.

Example:
  >>> rows = trajectory([{"step": 1, "images": 64, "psi_step_rms": 0.5, "psi_updated": True},
  ...                    {"step": 2, "images": 128, "psi_step_rms": 0.5, "psi_updated": False},
  ...                    {"step": 3, "images": 192, "psi_step_rms": 0.25, "psi_updated": True}],
  ...                   kl=lambda record: 4.0 - record["step"])
  >>> [(r["step"], r["path"], r["kl"]) for r in rows]
  [(1, 0.5, 3.0), (2, 0.5, 2.0), (3, 0.75, 1.0)]
  >>> summarize(rows)["smallest"]
  {'step': 3, 'images': 192, 'path': 0.75, 'kl': 1.0}
  >>> steps = [{"psi": {"a.loc": [1.0], "b.loc": [1.0]}}, {"psi": {"a.loc": [2.0], "b.loc": [0.0]}},
  ...          {"psi": {"a.loc": [3.0], "b.loc": [1.0]}}, {"psi": {"a.loc": [4.0], "b.loc": [0.0]}}]
  >>> paths = field_paths(steps, start={"a.loc": [0.0], "b.loc": [0.0]}, parts=2)
  >>> [(p["steps"], p["path"], p["displacement"]) for p in paths["a"]]  # pushed one way
  [([1, 2], 2.0, 2.0), ([3, 4], 2.0, 2.0)]
  >>> [(p["path"], p["displacement"]) for p in paths["b"]]  # steps that cancel
  [(2.0, 0.0), (2.0, 0.0)]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from itertools import pairwise

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


def field_paths(records: list[dict], start: dict[str, list], parts: int = 4) -> dict[str, list[dict]]:
    """Per field of psi and per span of the run (``parts`` equal spans of its steps, or one a step
    where it has fewer): the field's path, the sum of its steps' RMS over its own coordinates (the
    record's ``psi`` entries named ``FIELD.*``, from ``start``, the start psi's record, to the last
    step), and its displacement, the RMS of its coordinates' change over the span.

    ``displacement / path`` is 1 where every step of the span pushed the field the same way and
    falls towards 0 where its steps cancel (a walk of ``n`` independent steps of equal size gives
    about ``n ** -0.5``; Adam's momentum correlates about 10 consecutive steps). Over all fields
    the coordinate-weighted mean of the squared step sizes is the record's ``psi_step_rms``
    squared."""
    names = list(start)
    fields = sorted({name.split(".")[0] for name in names})
    states = [start] + [record["psi"] for record in records]
    values = {f: np.array([np.concatenate([np.ravel(state[n]) for n in names if n.split(".")[0] == f])
                           for state in states], np.float64) for f in fields}
    bounds = np.linspace(0, len(records), min(parts, len(records)) + 1).round().astype(int)  # no empty span
    out = {}
    for f, x in values.items():
        step_rms = np.sqrt(np.mean(np.diff(x, axis=0) ** 2, axis=1))
        out[f] = [{"steps": [int(a) + 1, int(b)], "path": float(step_rms[a:b].sum()),
                   "displacement": float(np.sqrt(np.mean((x[b] - x[a]) ** 2)))}
                  for a, b in pairwise(bounds)]
    return out


def null_displacement_ratio(steps: int, b2: float = 0.999, coordinates: int = 64, draws: int = 50) -> float:
    """The mean ``displacement / path`` (:func:`field_paths`) of a field of ``coordinates``
    coordinates whose hypergradients are independent standard normal noise over ``steps`` Adam
    steps from a fresh state (``hypergradient_signal.adam_updates`` with the config's
    ``outer_beta2`` ``b2``, a fixed seed): the yardstick a field's ratio is read against; a
    consistent push raises it towards 1.

    Example:
      >>> round(null_displacement_ratio(120), 2)
      0.37
    """
    from hypergradient_signal import adam_updates

    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(draws):
        u = adam_updates(rng.standard_normal((steps, coordinates)), b2)
        ratios.append(np.sqrt(np.mean(u.sum(0) ** 2)) / np.sqrt(np.mean(u**2, axis=1)).sum())
    return float(np.mean(ratios))


def summarize(rows: list[dict]) -> dict:
    """The run's smallest KL (its step, images and path), its total path and its KL at the end."""
    best = min(rows, key=lambda r: r["kl"])
    return {"smallest": dict(best), "total_path": rows[-1]["path"], "end_kl": rows[-1]["kl"]}


def autosimulate_runs(folder: str) -> dict[str, list[dict]]:
    """``{"METHOD/seedS": metrics records}`` for every run directory of the ``autosim compare``
    directory ``folder`` whose records carry ``psi_step_rms`` (AutoSimulate's; the baselines' do not).

    Raises:
      ValueError: ``folder`` holds no such run.
    """
    from field_drift import run_records

    runs = {f"{method}/{seed}": records for method, seed, records in run_records(folder)
            if records and "psi_step_rms" in records[0]}
    if not runs:
        raise ValueError(f"{folder} holds no AutoSimulate run (METHOD/seedS/metrics.jsonl with psi_step_rms)")
    return runs


def compare_runs(folder: str, reference, start, fields: list[str], parts: int = 4) -> dict[str, dict]:
    """``{"METHOD/seedS": {"rows": rows, "fields": paths, "start_kl": kls}}`` for every run of
    :func:`autosimulate_runs`: the rows of :func:`trajectory` (the summed KL of ``fields``), each
    field's path and displacement over ``parts`` spans (:func:`field_paths`) with its own
    ``KL(q_reference || q_psi)`` at the span's last step (``"kl"``), and each field's KL at the start.

    Raises:
      ValueError: ``folder`` holds no such run, or a field not in the reference.
    """
    from field_drift import field_kls

    from autosim_jax.rundir import psi_from_record, psi_record

    unknown = sorted(set(fields) - set(reference))
    if unknown:
        raise ValueError(f"--fields {','.join(unknown)}: not fields of the reference psi; choose from "
                         f"{', '.join(sorted(reference))}")

    def kl(record):
        kls = field_kls(reference, psi_from_record(start, record["psi"]))
        return sum(kls[f] for f in fields)

    def with_kls(records):
        paths = field_paths(records, psi_record(start), parts)
        for i, span in enumerate(next(iter(paths.values()))):
            kls = field_kls(reference, psi_from_record(start, records[span["steps"][1] - 1]["psi"]))
            for f in paths:
                paths[f][i]["kl"] = kls[f]
        return paths

    start_kl = field_kls(reference, start)
    return {run: {"rows": trajectory(records, kl), "fields": with_kls(records), "start_kl": start_kl}
            for run, records in autosimulate_runs(folder).items()}


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
        table[label] = {run: {"summary": summarize(run_["rows"]),
                              "steps": [{**r, "path": float(f"{r['path']:.5g}"), "kl": float(f"{r['kl']:.5g}")}
                                        for r in run_["rows"]],
                              "fields": run_["fields"], "start_kl": run_["start_kl"]}
                        for run, run_ in runs.items()}
        for run, entry in table[label].items():
            s = entry["summary"]
            totals = {f: sum(span["path"] for span in spans) for f, spans in entry["fields"].items()}
            low, high = min(totals, key=totals.get), max(totals, key=totals.get)
            print(f"{label} {run}: total path {s['total_path']:.2f}; smallest KL {s['smallest']['kl']:.3g} at step "
                  f"{s['smallest']['step']} (path {s['smallest']['path']:.2f}, {s['smallest']['images']} images); "
                  f"at the end {s['end_kl']:.3g}; each field's own path {totals[low]:.2f} ({low}) to "
                  f"{totals[high]:.2f} ({high})")
    span_lengths = {b - a + 1 for runs in table.values() for run in runs.values()
                    for a, b in (span["steps"] for span in next(iter(run["fields"].values())))}
    record = {"benchmark": "walk_onset", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "jax_version": jax.__version__, "autosim_jax": asj.__version__, "experiment": args.experiment,
              "size": args.size, "fields": fields, "runs": table,
              "outer_beta2": setup.config.outer_beta2,
              "null_displacement_ratio": {str(n): null_displacement_ratio(n, setup.config.outer_beta2)
                                          for n in sorted(span_lengths)}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    plot(table, args.out + ".png", f"{args.experiment} ({args.size}): KL(reference || psi_t), {' + '.join(fields)}")
    plot_fields(table, record["null_displacement_ratio"], args.out + "_fields.png",
                f"{args.experiment} ({args.size}): each field of psi by span of the run, mean over seeds")
    return 0


def plot_fields(table: dict, null: dict[str, float], path: str, title: str) -> None:
    """Per label: each field's ``displacement / path`` by span (pure noise's ratio dotted) and its
    ``KL(q_reference || q_psi)`` at the start and each span's end, means over the label's runs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6 * len(table)), layout="constrained")
    axes = fig.subplots(len(table), 2, squeeze=False)
    for (ratio_ax, kl_ax), (label, runs) in zip(axes, table.items()):
        fields = list(next(iter(runs.values()))["fields"])
        spans = len(next(iter(runs.values()))["fields"][fields[0]])
        for i, f in enumerate(fields):
            ratio = np.mean([[s["displacement"] / s["path"] if s["path"] else np.nan for s in r["fields"][f]]
                             for r in runs.values()], axis=0)
            kl = np.mean([[r["start_kl"][f]] + [s["kl"] for s in r["fields"][f]] for r in runs.values()], axis=0)
            style = {"color": f"C{i % 10}", "ls": "-" if i < 10 else "--", "marker": ".", "label": f}
            ratio_ax.plot(range(1, spans + 1), ratio, **style)
            kl_ax.plot(range(spans + 1), np.maximum(kl, 1e-3), **style)
        for n, value in null.items():
            ratio_ax.axhline(value, color="k", ls=":", lw=1)
            ratio_ax.annotate(f"pure noise, {n} steps", (1, value), fontsize=7, va="bottom")
        ratio_ax.set(xlabel="span of the run", ylabel="displacement / path", ylim=(0, 1.02),
                     xticks=range(1, spans + 1), title=f"{label}: 1 = pushed one way throughout the span")
        kl_ax.set(xlabel="end of span (0: the start)", ylabel="KL(reference || psi), floored at 1e-3",
                  yscale="log", xticks=range(spans + 1), title=f"{label}: KL to the reference")
        kl_ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


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
