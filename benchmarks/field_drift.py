"""Which fields of psi move towards the reference, and which drift away? KL per field along runs.

Reads the psi trajectories that ``benchmarks/psi_learning.py`` records (every step's psi of every
run) and computes, for each scene field, ``KL(q_reference || q_psi_t)`` in closed form
(:func:`~autosim_jax.outer.kl_divergence`; for a bounded field, that of its normal pre-image) at
the start and at the steps asked for. A field the start already has right (KL 0) and that ends
with a positive KL drifted: its hypergradient moved it although the reference is where it was.
No device is needed.

Usage::

    python benchmarks/field_drift.py --experiment clevr-seg --size gpu --steps 30,60 \\
        --runs benchmarks/results/psi_learning/clevr-seg_gpu_lr0.3_s012.json:default,adam_lr0.3 \\
        --out benchmarks/results/psi_learning/field_drift_clevr-seg_gpu

``--runs FILE:VARIANT,VARIANT`` may be repeated (seeds of one variant in several files are
pooled). Writes ``OUT.json`` (per variant, field and step: every seed's KL and the median) and
``OUT.png`` (the median KL of each field against the step, one panel per variant).

``--compare DIR`` reads an ``autosim compare`` directory instead: for each method, the psi it
held at each assessed point of ``compare.json`` (the psi its fresh models were trained on; the
start at 0 images), so that the fields a method got right can be set beside its fresh-model
metric. The "steps" are then images rendered::

    python benchmarks/field_drift.py --experiment clevr-seg --size gpu --compare DIR \
        --out benchmarks/results/compare_clevr-seg_gpu/field_kl
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import sys

import numpy as np
from provenance import command_line  # the record's command, quoted for a shell


def field_kls(reference, psi) -> dict[str, float]:
    """``{field: KL(q_reference[field] || q_psi[field])}`` for every field of the reference."""
    from autosim_jax.outer import kl_divergence

    return {f: float(kl_divergence({f: reference[f]}, {f: psi[f]})) for f in reference}


def flatten(psi) -> dict[str, list]:
    """psi as ``psi_learning.py`` records it: ``keystr(path) -> values`` (flattened lists); the
    inverse of :func:`unflatten`.

    Example:
      >>> import numpy as np
      >>> flatten({"x": np.array([[1.0, 2.0]])})
      {"['x']": [1.0, 2.0]}
    """
    import jax

    return {jax.tree_util.keystr(p): np.asarray(v).ravel().tolist()
            for p, v in jax.tree_util.tree_flatten_with_path(psi)[0]}


def unflatten(flat: dict[str, list], like):
    """A psi like ``like`` from ``psi_learning.py``'s flat record (``keystr(path) -> values``)."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    values = [np.asarray(flat[jax.tree_util.keystr(p)], np.float32).reshape(np.shape(v)) for p, v in leaves]
    return jax.tree_util.tree_unflatten(treedef, values)


def read_record(path: str) -> dict:
    """A ``psi_learning.py`` record: ``path``, or ``path + ".gz"`` where only the compressed copy
    is kept (the records over 50 KB are stored gzip-compressed, so that the working tree stays
    under the 64 MiB a device call copies; ``docs/benchmarks.md``). Every reader of the records
    takes the ``.json`` name through this; the ``.json.gz`` name, the file a user sees, is read too.

    Example:
      >>> import tempfile
      >>> folder = tempfile.mkdtemp()
      >>> with gzip.open(os.path.join(folder, "run.json.gz"), "wt") as f:
      ...     json.dump({"runs": []}, f)
      >>> read_record(os.path.join(folder, "run.json"))
      {'runs': []}
      >>> read_record(os.path.join(folder, "run.json.gz"))
      {'runs': []}
    """
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    if path.endswith(".gz"):
        with gzip.open(path, "rt") as f:
            return json.load(f)
    with open(path) as f:
        return json.load(f)


def read_runs(spec: str, experiment: str, size: str) -> tuple[str, dict, list[str]]:
    """``FILE:VARIANT[,VARIANT]`` -> ``(FILE, its psi_learning.py record, [VARIANT, ...])``.

    Raises:
      ValueError: a malformed ``spec``, or a record of another experiment or size.
    """
    path, _, variants = spec.rpartition(":")
    if not path or not variants:
        raise ValueError(f"--runs {spec!r}: write FILE:VARIANT[,VARIANT]")
    record = read_record(path)
    if (record["experiment"], record["size"]) != (experiment, size):
        raise ValueError(f"{path} is {record['experiment']} at {record['size']} size, not {experiment} at {size}")
    return path, record, variants.split(",")


def trajectory_runs(record: dict, variant: str) -> list[dict]:
    """Every run of ``variant`` in a ``psi_learning.py`` record that holds a psi trajectory: the finished runs,
    and those that ``--deadline`` stopped after their first progress line (under ``failed``, each with
    ``steps_done`` and no assessment; records from session 68 on).

    Example:
      >>> record = {"runs": [{"variant": "a", "seed": 0, "psi": [[0.1]]}, {"variant": "b", "seed": 0, "psi": []}],
      ...           "failed": [{"variant": "a", "seed": 1, "steps_done": 1, "psi": [[0.2]]},
      ...                      {"variant": "a", "seed": 2, "error": "not finished within --deadline 9 s"}]}
      >>> [r["seed"] for r in trajectory_runs(record, "a")]
      [0, 1]
    """
    return [r for r in [*record["runs"], *record.get("failed", [])] if r["variant"] == variant and "psi" in r]


def run_records(folder: str):
    """``(method, "seedS", metrics records)`` for every run directory ``METHOD/seedS/metrics.jsonl``
    of the ``autosim compare`` directory ``folder``, sorted (``start_psi/`` and ``reference_psi/``
    hold assessments only and are passed over)."""
    from autosim_jax.rundir import read_metrics

    for method in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        runs = os.path.join(folder, method)
        for seed_dir in sorted(os.listdir(runs)) if os.path.isdir(runs) else ():
            path = os.path.join(runs, seed_dir, "metrics.jsonl")
            if seed_dir.startswith("seed") and os.path.exists(path):
                yield method, seed_dir, read_metrics(path)[0]


def compare_table(folder: str, reference, start, experiment: str, size: str) -> tuple[dict, list[int]]:
    """``KL(reference || psi)`` per field of the psi each method of the ``autosim compare``
    directory ``folder`` held at the assessed points of its ``compare.json`` (the psi its fresh
    models were trained on: :func:`autosim_jax.compare.assessed_record`), the start psi at 0.

    Returns:
      ``({method directory: {field: {str(images): {"per_seed": {seed: kl}}}}}, [0, *points])``.

    Raises:
      ValueError: ``folder`` holds no ``compare.json`` with assessed points, or one of another
        experiment or size.
    """
    from autosim_jax.compare import assessed_record
    from autosim_jax.rundir import psi_from_record

    path = os.path.join(folder, "compare.json")
    if not os.path.exists(path):
        raise ValueError(f"{folder} holds no compare.json: pass the --out directory of an autosim compare run")
    with open(path) as f:
        summary = json.load(f)
    if (summary["experiment"], summary["size"]) != (experiment, size):
        sizes = [f"{x} size" if x else "its own size" for x in (summary["size"], size)]
        raise ValueError(f"{folder} is {summary['experiment']} at {sizes[0]}, not {experiment} at {sizes[1]}")
    points = (summary.get("assessment") or {}).get("thresholds")
    if not points:
        raise ValueError(f"{folder}: its comparison assessed no points (--assess-images 0); nothing to read")
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for method, seed_dir, records in run_records(folder):
        for t in [0, *points]:
            record = assessed_record(records, t, points[-1]) if t else None
            psi = start if record is None else psi_from_record(start, record["psi"])
            for field, kl in field_kls(reference, psi).items():
                cell = table.setdefault(method, {}).setdefault(field, {}).setdefault(str(t), {"per_seed": {}})
                cell["per_seed"][seed_dir.removeprefix("seed")] = kl
    if not table:
        raise ValueError(f"{folder} holds no run directories (METHOD/seedS/metrics.jsonl)")
    return table, [0, *points]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="clevr-seg", help="a registered experiment or a plug-in's module:attr")
    p.add_argument("--size", default="gpu", choices=("cpu", "gpu"))
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", action="append", metavar="FILE:VARIANT[,VARIANT]")
    source.add_argument("--compare", metavar="DIR", help="an autosim compare directory (its assessed points)")
    p.add_argument("--steps", default="30,60", help="comma list of steps (the start, step 0, is always added; "
                   "with --compare the assessed points are read from compare.json)")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    import jax

    import autosim_jax as asj
    from autosim_jax.rundir import resolve_experiment

    steps = [0] + [int(s) for s in args.steps.split(",")]
    exp = resolve_experiment(args.experiment)  # a registered name or a plug-in's module:attr
    setup = exp.build(renderer=exp.renderers[0], seed=0, size=args.size)
    reference, start = setup.reference_psi, setup.simulator.distribution.init()
    table: dict[str, dict[str, dict[str, dict]]] = {}
    if args.compare:
        try:
            table, steps = compare_table(args.compare, reference, start, args.experiment, args.size)
        except ValueError as err:
            p.error(str(err))
    for spec in args.runs or ():
        try:
            path, record, variants = read_runs(spec, args.experiment, args.size)
        except ValueError as err:
            p.error(str(err))
        for variant in variants:
            runs = trajectory_runs(record, variant)
            if not runs:
                p.error(f"{path} holds no trajectory of variant {variant!r}")
            # psi_learning.py's variants that start from the reference with some fields at the start's
            but = record["variants"][variant]["overrides"].get("start_from_reference_but")
            first = start if but is None else {**reference, **{f: start[f] for f in ([but] if isinstance(but, str)
                                                                                      else but)}}
            for run in runs:
                for t in steps:
                    if t > len(run["psi"]):
                        p.error(f"{path}: {variant} seed {run['seed']} has {len(run['psi'])} steps, not {t}")
                    psi = first if t == 0 else unflatten(run["psi"][t - 1], start)
                    for field, kl in field_kls(reference, psi).items():
                        cell = table.setdefault(variant, {}).setdefault(field, {}).setdefault(str(t), {"per_seed": {}})
                        cell["per_seed"][str(run["seed"])] = kl
    for fields in table.values():
        for cells in fields.values():
            for cell in cells.values():
                cell["median"] = float(np.median(list(cell["per_seed"].values())))
    axis = "images" if args.compare else "step"
    record = {"benchmark": "field_drift", "date": datetime.date.today().isoformat(),
              "command": command_line(__file__, argv),
              "jax_version": jax.__version__, "autosim_jax": asj.__version__, "experiment": args.experiment,
              "size": args.size, "steps": steps, "axis": axis, "kl_reference_to_psi": table}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    plot(table, steps, args.out + ".png", f"{args.experiment} ({args.size}): KL(reference || psi_t) per field",
         xlabel=axis)
    fields = sorted(next(iter(table.values())))
    print(f"median KL(reference || psi) per field at {axis} " + " / ".join(map(str, steps)))
    for variant, cells in table.items():
        print(f"{variant}:")
        for field in fields:
            print(f"  {field:>12}: " + " / ".join(f"{cells[field][str(t)]['median']:.3g}" for t in steps))
    return 0


def plot(table: dict, steps: list[int], path: str, title: str, xlabel: str = "step") -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(table), 4.2))
    for i, (variant, cells) in enumerate(table.items()):
        ax = fig.add_subplot(1, len(table), i + 1)
        for field, by_step in sorted(cells.items()):
            ax.plot(steps, [max(by_step[str(t)]["median"], 1e-3) for t in steps], marker="o", label=field)
        ax.set_yscale("log")
        if xlabel == "images":  # a geometric grid of assessed points
            ax.set_xscale("symlog", linthresh=max(steps[1], 1))
            ax.margins(x=0.08)
        ax.set_xlabel(xlabel)
        ax.set_title(variant, fontsize=9)
        if i == 0:
            ax.set_ylabel("median KL(reference || psi_t) (floored at 1e-3)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
